//! The bench's report: what one run measured, and how it reads.

use serde::Serialize;

use super::Floor;

/// What one run measured. `--json` prints it as one line.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub jobs: usize,
    pub concurrency: usize,
    pub prefetch: u16,
    pub latency_ms: u64,
    /// Steady publishing rate, when one was asked for.
    pub rate: Option<u32>,
    pub backlog: bool,
    pub queue_type: String,
    /// Distinct outcomes received (one per job when all went well).
    pub outcomes: usize,
    /// Outcomes with status `sent`.
    pub sent: usize,
    /// Outcomes received again (at-least-once delivery; expected 0 on a quiet run).
    pub duplicates: usize,
    /// Publishes that the broker did not confirm.
    pub publish_failures: usize,
    /// From the first publish to the last confirm.
    pub publish_secs: f64,
    /// Throughput from the first outcome to the last: the worker's sustained rate.
    pub jobs_per_sec: f64,
    /// Throughput from the first publish (with `--backlog`: the worker's start) to the last
    /// outcome.
    pub end_to_end_jobs_per_sec: f64,
    /// The worker's CPU time (user + system, all threads) per job.
    pub worker_cpu_us_per_job: f64,
    /// The worker's CPU time over the measured window: from when it started consuming (with
    /// `--backlog`: from its start) to the last outcome.
    pub worker_cpu_secs: f64,
    /// The worker's peak resident memory (VmHWM).
    pub worker_peak_rss_mib: f64,
    /// The worker's whole life from getrusage after it exited: start-up, the run and the drain.
    pub worker_lifetime_cpu_secs: f64,
    /// Publish to outcome, as seen by the bench (nearest-rank percentiles).
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// The bench's own job publishes, issue to confirm: the broker alone, no worker involved.
    pub publish_confirm_p99_ms: f64,
    pub publish_confirm_max_ms: f64,
    /// Jobs whose outcome came more than [`super::stalls::LATE_MS`] after their publish.
    pub late_jobs: usize,
    /// The runs of late jobs, the longest first (see [`super::stalls`]).
    pub stalls: Vec<super::stalls::Stall>,
    /// How busy the whole machine was over the measured window (100 = every core).
    pub machine_busy_pct: f64,
    /// Of that, the worker's share and this process's (publisher, simulator, collector), in
    /// percent of the whole machine; the rest is the broker and anything else running.
    pub worker_busy_pct: f64,
    pub bench_busy_pct: f64,
    pub cores: usize,
    /// The worker's tokio worker threads when set with `--worker-threads` (default: one per
    /// core).
    pub worker_threads: Option<usize>,
    /// `/proc/loadavg` before the run: other work on the machine skews every figure.
    pub loadavg_before: String,
    /// When the run started (UTC, RFC 3339), so results files can be matched to builds.
    pub measured_at: String,
    /// Set when the child was the floor worker (`--floor`), not `wxdispatch run`.
    pub floor: Option<Floor>,
    /// With `--redis-url`: what the run cost the shared Redis.
    pub redis: Option<super::redis_stats::RedisCost>,
    /// With `--authorizers`: how many, and the simulator's token calls.
    pub authorizers: Option<super::platform::Calls>,
    /// The worker's `/metrics` body when every outcome had arrived, in bytes (0: not read).
    pub metrics_bytes: usize,
    /// The distinct `appid` label values in it.
    pub metrics_appids: usize,
}

/// The value at quantile `q` of sorted values (nearest rank), 0 when empty.
pub(super) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints the readable report (without `--json`).
pub(super) fn print(r: &Report) {
    let rate = match r.rate {
        Some(x) => format!("published steadily at {x} jobs/s"),
        None => "published as fast as confirmed".into(),
    };
    println!(
        "wxdispatch bench: {} jobs, concurrency {}, prefetch {}, simulator latency {} ms, {} queues, {}{}",
        r.jobs,
        r.concurrency,
        r.prefetch,
        r.latency_ms,
        r.queue_type,
        rate,
        if r.backlog {
            ", worker started on the backlog"
        } else {
            ""
        }
    );
    if let Some(floor) = r.floor {
        println!(
            "  FLOOR: the child was the {} floor worker (libraries only), not `wxdispatch run`",
            floor.as_str()
        );
    }
    println!("  load average before        {}", r.loadavg_before);
    if let Some(c) = &r.redis {
        println!(
            "  shared Redis               {:.4} commands/job ({} in all, {} script calls), {:.1} µs of its CPU/job",
            c.commands_per_job, c.commands, c.script_calls, c.cpu_us_per_job
        );
    }
    println!(
        "  outcomes                   {} of {} ({} sent, {} duplicates)",
        r.outcomes, r.jobs, r.sent, r.duplicates
    );
    println!(
        "  throughput                 {:.0} jobs/s first to last outcome; {:.0} jobs/s end to end",
        r.jobs_per_sec, r.end_to_end_jobs_per_sec
    );
    println!(
        "  worker CPU                 {:.1} µs/job ({:.2} s; {:.2} s over its whole life)",
        r.worker_cpu_us_per_job, r.worker_cpu_secs, r.worker_lifetime_cpu_secs
    );
    println!(
        "  worker peak RSS            {:.1} MiB",
        r.worker_peak_rss_mib
    );
    println!(
        "  /metrics                   {} bytes, {} appid label values",
        r.metrics_bytes, r.metrics_appids
    );
    if let Some(a) = &r.authorizers {
        println!(
            "  authorizers                {}{}; token calls before the first job: {} component, {} authorizer; in the run: {} authorizer",
            a.authorizers,
            if a.tokens_stored {
                " (tokens stored)"
            } else {
                ""
            },
            a.startup_component_token_calls,
            a.startup_authorizer_token_calls,
            a.authorizer_token_calls
        );
    }
    println!(
        "  publish → outcome latency  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
    println!(
        "  job publish → confirm      p99 {:.1} ms, max {:.1} ms (the broker alone)",
        r.publish_confirm_p99_ms, r.publish_confirm_max_ms
    );
    if r.late_jobs > 0 {
        println!(
            "  late jobs (> {:.0} ms)       {} in {} stall(s)",
            super::stalls::LATE_MS,
            r.late_jobs,
            r.stalls.len()
        );
        for s in &r.stalls {
            println!(
                "    at {:.1} s ({}): {} jobs, outcome max {:.0} ms, job publish confirm max {:.0} ms",
                s.at_s, s.at_utc, s.jobs, s.max_ms, s.max_publish_confirm_ms
            );
        }
    }
    println!(
        "  machine ({} cores)          {:.0} % busy: worker {:.0} %, bench (publisher, simulator, collector) {:.0} %, the rest (broker, others) {:.0} %",
        r.cores,
        r.machine_busy_pct,
        r.worker_busy_pct,
        r.bench_busy_pct,
        (r.machine_busy_pct - r.worker_busy_pct - r.bench_busy_pct).max(0.0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentiles: p50 of 1..=100 is 50, p99 is 99, and edge cases are safe.
    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
