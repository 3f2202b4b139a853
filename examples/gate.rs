//! What pacing and counting one send costs the worker in the local and the shared mode, without
//! a broker or an HTTP send: `SENDS` sends through one account's gate (admit, pace, count) from
//! `TASKS` concurrent tasks, at a rate far above what they reach. Prints this process's CPU per
//! send and, in the shared mode, the Redis commands and Redis CPU per send (from `INFO`).
//!
//!     cargo run --release --example gate -- local 200000
//!     cargo run --release --example gate -- shared 200000 redis://127.0.0.1:6379/0

use std::sync::Arc;
use std::time::{Duration, Instant};

use wxdispatch::account::AccountGate;
use wxdispatch::account::RedisLink;
use wxdispatch::metrics::Metrics;

const TASKS: usize = 128;

fn cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

async fn redis_info(url: &str) -> (u64, f64) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .unwrap();
    let commands = stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .filter(|(n, _)| *n != "info")
        .filter_map(|(_, r)| {
            r.split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let secs = info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    (commands, secs)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("local", String::as_str);
    let sends: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let url = args
        .get(3)
        .cloned()
        .unwrap_or("redis://127.0.0.1:6379/0".into());
    let appid = format!("wxgate{:010x}", rand::random::<u64>() & 0xff_ffff_ffff);
    let link = (mode == "shared").then(|| Arc::new(RedisLink::new(&url)));
    let gate = Arc::new(AccountGate::with_shared(
        &appid,
        1_000_000,
        None,
        Duration::from_secs(600),
        Arc::new(Metrics::new()),
        link,
        1,
    ));
    let before = if mode == "shared" {
        Some(redis_info(&url).await)
    } else {
        None
    };
    let (cpu0, t0) = (cpu(), Instant::now());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let gate = gate.clone();
        let n = sends / TASKS + usize::from(t < sends % TASKS);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                assert_eq!(gate.admit(), wxdispatch::account::Admission::Go);
                let r = gate.reservation(false);
                gate.pace_within(Duration::from_secs(3)).await.unwrap();
                r.sent().await;
                // A send's own work would yield here too.
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    gate.close().await;
    let (cpu_used, wall) = (cpu() - cpu0, t0.elapsed());
    print!(
        "{mode}: {sends} sends in {:.2} s, {:.2} µs CPU/send",
        wall.as_secs_f64(),
        cpu_used.as_secs_f64() * 1e6 / sends as f64
    );
    if let Some((c0, s0)) = before {
        let (c1, s1) = redis_info(&url).await;
        print!(
            "; Redis: {:.4} commands/send, {:.3} µs of its CPU/send",
            (c1 - c0) as f64 / sends as f64,
            (s1 - s0) * 1e6 / sends as f64
        );
    }
    println!();
}
