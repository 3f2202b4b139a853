//! `wxdispatch bench`: the whole pipeline on the local broker, measured.
//!
//! A benchmark of the worker alone would flatter it: in production every job costs a publish
//! with a confirm, a delivery, an HTTP send, an outcome published with a confirm and an ack.
//! So the bench runs exactly that. It publishes jobs with pipelined confirms to a jobs queue,
//! a worker consumes them and sends each one to an embedded WeChat simulator, publishes the
//! outcome with a confirm and acks, and the bench consumes the outcomes.
//!
//! The worker is this same binary started as a child process (`wxdispatch run`, configured
//! through `WXD_*`), so its CPU time and peak memory can be read on their own from `/proc`,
//! apart from the broker, the simulator and the publisher, which all share the machine with it.
//!
//! With `--floor`, the child is [`floor`]'s worker stripped to its libraries instead, so the
//! same harness measures what lapin (and reqwest) alone cost per job on this machine.
//!
//! Every run uses its own queue names (`wxdispatch.bench.<run>.*`) and deletes them afterwards.
//! The method and the measured figures are in `docs/BENCHMARKS.md`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::Connection;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

use crate::amqp::{self, Publisher};
use crate::config::{Config, LogFormat, QueueType};
use crate::tools::mock::{Behaviour, MockConfig, MockServer};

mod child;
pub(crate) mod floor;
mod platform;
mod procfs;
mod redis_stats;
mod report;
mod stalls;
mod traffic;

use child::{spawn_worker, stop_worker, wait_consuming};
pub(crate) use floor::Floor;
use procfs::{machine_cpu, proc_cpu, proc_status_kib, self_cpu};
use report::{Report, percentile};
use traffic::{collect, delete_topology, publish_all};

const APPID: &str = "wxbench0000000000";
const SECRET: &str = "bench-secret-not-real";

/// `wxdispatch bench`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Jobs to publish.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// The worker's sends in flight (WXD_CONCURRENCY).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// The worker's AMQP prefetch (WXD_PREFETCH).
    #[arg(long, default_value_t = 512)]
    pub prefetch: u16,
    /// Simulator latency per send, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Publish steadily at R jobs per second (for latency) instead of as fast as confirmed.
    #[arg(long, value_name = "R")]
    pub rate: Option<std::num::NonZeroU32>,
    /// Publish every job first, then start the worker on the backlog (for memory).
    #[arg(long)]
    pub backlog: bool,
    /// Queue type of the jobs, outcomes and dead-letter queues.
    #[arg(long, default_value = "quorum", value_parser = ["quorum", "classic"])]
    pub queue_type: String,
    /// The account's rate limit given to the worker (WXD_RATE_PER_SEC); very high by default,
    /// so the pipeline itself is measured.
    #[arg(long, default_value_t = 1_000_000)]
    pub account_rate: u32,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 1024)]
    pub publish_window: usize,
    /// Give up waiting for outcomes after this many seconds (default: 60 plus 1 s per 500 jobs,
    /// or the publishing time at --rate plus 60 s).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Tokio worker threads of the worker process (TOKIO_WORKER_THREADS; default one per
    /// core).
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// Run a worker stripped to its libraries instead of `wxdispatch run`: `amqp` consumes,
    /// publishes an outcome with a confirm and acks; `amqp-http` also sends each job to the
    /// simulator. What the real worker costs above this floor is wxdispatch's own logic.
    #[arg(long, value_enum, value_name = "PART")]
    pub floor: Option<Floor>,
    /// Share the account's rate and count through this Redis (WXD_REDIS_URL), and report the
    /// commands and CPU the run cost it.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Send as a third-party platform for N authorizers (component mode), the jobs spread
    /// evenly over them: the simulator and Redis (--redis-url, default the local one) know
    /// them before the worker starts; their tokens are fetched on first use.
    #[arg(long, value_name = "N")]
    pub authorizers: Option<std::num::NonZeroUsize>,
    /// With --authorizers: store a valid access token for each in Redis beforehand, as a
    /// platform that has been running has, so the run measures the steady state rather than
    /// every authorizer's first token fetch.
    #[arg(long, requires = "authorizers")]
    pub tokens_stored: bool,
    /// Print one JSON object on stdout instead of the readable report.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark and prints the report.
pub(crate) async fn run_bench(config_file: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let base = Config::load(config_file)?;
    crate::logging::init_with_default(LogFormat::Text, "warn");
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.prefetch > 0, "--prefetch must be at least 1");
    anyhow::ensure!(args.account_rate > 0, "--account-rate must be at least 1");
    // The time alone collides when two benches start in the same millisecond (two tests at
    // once did): they would share queues and split each other's outcomes.
    let run = format!(
        "{:x}{:04x}",
        chrono::Utc::now().timestamp_millis() & 0xff_ffff,
        rand::random::<u16>()
    );
    let mut config = base;
    config.amqp.jobs_queue = format!("wxdispatch.bench.{run}.jobs");
    config.amqp.outcomes_exchange = format!("wxdispatch.bench.{run}.outcomes");
    config.amqp.outcomes_queue = format!("wxdispatch.bench.{run}.outcomes");
    config.amqp.dead_queue = format!("wxdispatch.bench.{run}.dead");
    config.amqp.jobs_queue_type = match args.queue_type.as_str() {
        "classic" => QueueType::Classic,
        _ => QueueType::Quorum,
    };

    let conn = amqp::connect(&config.amqp.url, "wxdispatch-bench-publish")
        .await
        .context("cannot reach RabbitMQ (is it running? set WXD_AMQP_URL)")?;
    let publisher = Publisher::new(&conn, &config).await?;
    amqp::topology::declare(publisher.channel(), &config).await?;
    let result = measure(&conn, &publisher, &config, &run, &args).await;
    delete_topology(&conn, &config).await;
    let _ = conn.close(200, "bye".into()).await;
    let report = result?;

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report::print(&report);
    }
    anyhow::ensure!(
        report.publish_failures == 0,
        "{} publishes were not confirmed by the broker",
        report.publish_failures
    );
    anyhow::ensure!(
        report.outcomes == report.jobs,
        "only {} of {} outcomes arrived in time",
        report.outcomes,
        report.jobs
    );
    Ok(())
}

async fn measure(
    conn: &Connection,
    publisher: &Publisher,
    config: &Config,
    run: &str,
    args: &Args,
) -> anyhow::Result<Report> {
    let mock = MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(APPID.into(), SECRET.into())],
            behaviour: Behaviour {
                latency_ms: args.latency_ms,
                // Each authorizer's catalogue is fetched on its first job, as in production;
                // one account's single fetch makes no difference, so only then.
                private_templates: args.authorizers.map(|_| platform::catalogue()),
                ..Behaviour::default()
            },
            push: None,
        },
    )
    .await
    .context("cannot start the simulator")?;
    let platform_redis = args
        .redis_url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let platform = match args.authorizers {
        Some(n) => {
            Some(platform::prepare(&mock, &platform_redis, run, n.get(), args.tokens_stored).await?)
        }
        None => None,
    };
    let result = measure_with(conn, publisher, config, run, args, &mock, platform.as_ref()).await;
    if platform.is_some()
        && let Err(e) = platform::cleanup(&platform_redis, run).await
    {
        tracing::warn!(error = %e, run, "could not delete this run's Redis keys (wxdispatch:*<run>*)");
    }
    mock.stop();
    let mut report = result?;
    if let (Some(r), Some(p)) = (report.authorizers.as_mut(), platform.as_ref()) {
        r.authorizers = p.authorizers.len();
    }
    Ok(report)
}

/// The run itself, once the simulator (and the platform) are ready.
async fn measure_with(
    conn: &Connection,
    publisher: &Publisher,
    config: &Config,
    run: &str,
    args: &Args,
    mock: &MockServer,
    platform: Option<&platform::Platform>,
) -> anyhow::Result<Report> {
    let n = args.jobs;
    let measured_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let loadavg_before = procfs::loadavg();
    let http_addr = free_addr()?;
    let redis_url = args
        .redis_url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let worker_platform = platform.map(|p| (p, redis_url.as_str()));

    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or_else(|| match args.rate {
        Some(r) => 60 + (n as u64).div_ceil(u64::from(r.get())),
        None => 60 + n as u64 / 500,
    }));
    // The collector consumes on its own connection, so a publisher slowed by flow control
    // never delays the timestamps of arriving outcomes.
    let collect_conn = amqp::connect(&config.amqp.url, "wxdispatch-bench-collect").await?;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let confirmed_at: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let t0 = Instant::now();
    let t0_utc = chrono::Utc::now();
    let collector = {
        let ch = collect_conn.create_channel().await?;
        let consumer = ch
            .basic_consume(
                config.amqp.outcomes_queue.as_str().into(),
                "wxdispatch-bench-collect".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let prefix = format!("{run}-");
        tokio::spawn(collect(ch, consumer, prefix, n, t0, timeout))
    };
    let probe = conn.create_channel().await?;

    let mut worker = None;
    let mut cpu_base = Duration::ZERO;
    let mut redis_before = None;
    let mut startup_calls = None;
    if let Some(url) = &args.redis_url
        && !args.backlog
    {
        redis_before = Some(redis_stats::read(url).await?);
    }
    if !args.backlog {
        let (child, pid) =
            spawn_worker(config, args, &mock.base_url(), &http_addr, worker_platform)?;
        worker = Some((child, pid));
        let (child, pid) = worker.as_mut().expect("just set");
        wait_consuming(&probe, &config.amqp.jobs_queue, child).await?;
        if platform.is_some() {
            // Anything the start-up does per authorizer would show in the counts by now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            startup_calls = Some(platform::token_calls(mock));
        }
        cpu_base = proc_cpu(*pid).unwrap_or_default();
    }

    let mut machine_before = machine_cpu();
    let mut self_before = self_cpu();
    let publish_start = t0.elapsed();
    let failures = publish_all(
        publisher,
        config,
        run,
        args,
        (&sent_at, &confirmed_at),
        t0,
        platform,
    )
    .await;
    let publish_secs = (t0.elapsed() - publish_start).as_secs_f64();
    if !args.json {
        eprintln!("published {n} jobs in {publish_secs:.2} s (each confirmed)");
    }

    let window_start = if args.backlog {
        // Only the drain is measured: the machine's and this process's CPU start here too.
        machine_before = machine_cpu();
        self_before = self_cpu();
        if let Some(url) = &args.redis_url {
            redis_before = Some(redis_stats::read(url).await?);
        }
        let start = t0.elapsed();
        let (child, pid) =
            spawn_worker(config, args, &mock.base_url(), &http_addr, worker_platform)?;
        worker = Some((child, pid));
        start
    } else {
        publish_start
    };
    let (mut child, pid) = worker.expect("the worker was started");
    let collected = collector.await.context("the collector panicked")??;
    let window = t0.elapsed() - window_start;
    let worker_cpu = proc_cpu(pid).unwrap_or_default().saturating_sub(cpu_base);
    let peak_rss_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let machine_after = machine_cpu();
    let self_after = self_cpu();
    // After the window: the scrape's own cost is not measured. The floor worker has none.
    let (metrics_bytes, metrics_appids) = match args.floor {
        None => platform::scrape(&http_addr).await.unwrap_or_default(),
        Some(_) => (0, 0),
    };
    let lifetime_cpu = stop_worker(&mut child, pid).await;
    // After the worker stopped: what it settled with Redis on the way out counts too.
    let redis = match (&args.redis_url, redis_before) {
        (Some(url), Some(before)) => Some(redis_stats::cost(
            before,
            redis_stats::read(url).await?,
            collected.unique,
        )),
        _ => None,
    };
    let _ = collect_conn.close(200, "bye".into()).await;
    let authorizers = platform.map(|_| {
        let (component, authorizer) = startup_calls.unwrap_or_default();
        platform::Calls {
            authorizers: 0,
            tokens_stored: args.tokens_stored,
            startup_component_token_calls: component,
            startup_authorizer_token_calls: authorizer,
            authorizer_token_calls: platform::token_calls(mock).1,
        }
    });

    let mut latencies: Vec<u64> = collected
        .arrived_ns
        .iter()
        .zip(sent_at.iter())
        .filter(|(a, _)| **a != 0)
        .map(|(a, s)| a.saturating_sub(s.load(Ordering::Relaxed)))
        .collect();
    latencies.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let sent_ns: Vec<u64> = sent_at.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    let since_sent = |at: u64, i: usize| (at != 0).then(|| ms(at.saturating_sub(sent_ns[i])));
    let outcome_ms: Vec<Option<f64>> = (0..n)
        .map(|i| since_sent(collected.arrived_ns[i], i))
        .collect();
    let confirm_ms: Vec<Option<f64>> = (0..n)
        .map(|i| since_sent(confirmed_at[i].load(Ordering::Relaxed), i))
        .collect();
    let mut confirms: Vec<u64> = confirm_ms
        .iter()
        .flatten()
        .map(|&m| (m * 1e6) as u64)
        .collect();
    confirms.sort_unstable();
    let late_jobs = outcome_ms
        .iter()
        .filter(|m| m.is_some_and(|m| m > stalls::LATE_MS))
        .count();
    let first = collected.first_ns.unwrap_or(0);
    let last = collected.last_ns.unwrap_or(0);
    let secs = |ns: u64| (ns as f64 / 1e9).max(1e-9);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let (busy, total) = match (machine_before, machine_after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => ((b1 - b0) as f64, (t1 - t0) as f64),
        _ => (0.0, 1.0),
    };
    let window_cpu_capacity = window.as_secs_f64() * cores as f64;
    let pct = |cpu: Duration| 100.0 * cpu.as_secs_f64() / window_cpu_capacity.max(1e-9);
    Ok(Report {
        jobs: n,
        concurrency: args.concurrency,
        prefetch: args.prefetch,
        latency_ms: args.latency_ms,
        rate: args.rate.map(|r| r.get()),
        backlog: args.backlog,
        queue_type: args.queue_type.clone(),
        outcomes: collected.unique,
        sent: collected.statuses.get("send.sent").copied().unwrap_or(0),
        duplicates: collected.duplicates,
        publish_failures: failures,
        publish_secs,
        jobs_per_sec: collected.unique.saturating_sub(1) as f64 / secs(last.saturating_sub(first)),
        end_to_end_jobs_per_sec: collected.unique as f64
            / secs(last.saturating_sub(window_start.as_nanos() as u64)),
        worker_cpu_us_per_job: worker_cpu.as_secs_f64() * 1e6 / n as f64,
        worker_cpu_secs: worker_cpu.as_secs_f64(),
        worker_peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        worker_lifetime_cpu_secs: lifetime_cpu.as_secs_f64(),
        latency_p50_ms: ms(percentile(&latencies, 0.50)),
        latency_p99_ms: ms(percentile(&latencies, 0.99)),
        latency_max_ms: ms(latencies.last().copied().unwrap_or(0)),
        publish_confirm_p99_ms: ms(percentile(&confirms, 0.99)),
        publish_confirm_max_ms: ms(confirms.last().copied().unwrap_or(0)),
        late_jobs,
        stalls: stalls::find(&sent_ns, &outcome_ms, &confirm_ms, t0_utc),
        machine_busy_pct: 100.0 * busy / total,
        worker_busy_pct: pct(worker_cpu),
        bench_busy_pct: pct(self_after.saturating_sub(self_before)),
        cores,
        worker_threads: args.worker_threads.map(|n| n.get()),
        loadavg_before,
        measured_at,
        floor: args.floor,
        redis,
        authorizers,
        metrics_bytes,
        metrics_appids,
    })
}

/// A free local address for the worker's `/metrics`, so the bench can read it.
fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::traffic::job_body;

    /// Job bodies are valid jobs whose id the collector can map back to the job's index.
    #[test]
    fn job_bodies_parse_and_carry_their_index() {
        let v: serde_json::Value = serde_json::from_slice(&job_body("abc", 17, None)).unwrap();
        assert_eq!(v["id"], "abc-17");
        assert_eq!(v["data"]["User"]["color"], "#173177");
    }
}
