//! What a run cost the shared Redis (`--redis-url`): its commands, from `INFO commandstats`,
//! and its CPU time, from `INFO cpu`, read before the worker starts and after it stopped.
//! Commands run inside a Lua script count too (Redis counts them in commandstats), so a lease
//! call is its `EVALSHA` plus the `TIME`, `GET`, `SET` and `INCRBY` inside. The server is
//! shared: anything else using it during the run is counted as well.

use anyhow::Context;
use serde::Serialize;

/// One reading of the server's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Reading {
    /// Every command's `calls`, the `INFO` that reads them excepted.
    commands: u64,
    /// `EVAL` and `EVALSHA` calls: the round trips of the scripts.
    scripts: u64,
    /// `used_cpu_user + used_cpu_sys`, seconds.
    cpu_secs: f64,
}

/// The difference of two readings, per job.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RedisCost {
    pub commands: u64,
    pub script_calls: u64,
    pub commands_per_job: f64,
    pub script_calls_per_job: f64,
    pub cpu_secs: f64,
    pub cpu_us_per_job: f64,
}

pub(super) async fn read(url: &str) -> anyhow::Result<Reading> {
    let client = redis::Client::open(url).context("--redis-url")?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .context("cannot reach Redis (--redis-url)")?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await?;
    let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut c).await?;
    Ok(parse(&stats, &cpu))
}

fn parse(stats: &str, cpu: &str) -> Reading {
    let mut r = Reading::default();
    for line in stats.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = rest
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if name == "info" {
            continue;
        }
        r.commands += calls;
        if name == "eval" || name == "evalsha" {
            r.scripts += calls;
        }
    }
    for line in cpu.lines() {
        if let Some(v) = line
            .strip_prefix("used_cpu_user:")
            .or_else(|| line.strip_prefix("used_cpu_sys:"))
        {
            r.cpu_secs += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    r
}

pub(super) fn cost(before: Reading, after: Reading, jobs: usize) -> RedisCost {
    let commands = after.commands.saturating_sub(before.commands);
    let script_calls = after.scripts.saturating_sub(before.scripts);
    let cpu_secs = (after.cpu_secs - before.cpu_secs).max(0.0);
    let n = jobs.max(1) as f64;
    RedisCost {
        commands,
        script_calls,
        commands_per_job: commands as f64 / n,
        script_calls_per_job: script_calls as f64 / n,
        cpu_secs,
        cpu_us_per_job: cpu_secs * 1e6 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_summed_without_the_info_that_reads_them() {
        let stats = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=5\r\ncmdstat_time:calls=10,usec=1\r\ncmdstat_info:calls=99,usec=1\r\ncmdstat_incrby:calls=3,usec=1\r\n";
        let cpu = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\nused_cpu_sys_children:9\r\n";
        let r = parse(stats, cpu);
        assert_eq!((r.commands, r.scripts), (23, 10));
        assert!((r.cpu_secs - 3.5).abs() < 1e-9);
        let c = cost(Reading::default(), r, 230);
        assert!((c.commands_per_job - 0.1).abs() < 1e-9);
    }
}
