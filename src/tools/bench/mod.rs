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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;

use crate::amqp::{self, Publisher};
use crate::cli::BenchArgs;
use crate::config::{Config, LogFormat, QueueType};
use crate::mock::{Behaviour, MockConfig, MockServer};

pub mod floor;
pub use floor::Floor;

const APPID: &str = "wxbench0000000000";
const SECRET: &str = "bench-secret-not-real";

/// What one run measured. `--json` prints it as one line.
#[derive(Debug, Serialize)]
pub struct Report {
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
}

/// Runs the benchmark and prints the report.
pub async fn run(config_file: Option<&Path>, args: BenchArgs) -> anyhow::Result<()> {
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
    config.jobs_queue = format!("wxdispatch.bench.{run}.jobs");
    config.outcomes_exchange = format!("wxdispatch.bench.{run}.outcomes");
    config.outcomes_queue = format!("wxdispatch.bench.{run}.outcomes");
    config.dead_queue = format!("wxdispatch.bench.{run}.dead");
    config.jobs_queue_type = match args.queue_type.as_str() {
        "classic" => QueueType::Classic,
        _ => QueueType::Quorum,
    };

    let conn = amqp::connect(&config.amqp_url, "wxdispatch-bench-publish")
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
        print_report(&report);
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
    args: &BenchArgs,
) -> anyhow::Result<Report> {
    let n = args.jobs;
    let measured_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mock = MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(APPID.into(), SECRET.into())],
            behaviour: Behaviour {
                latency_ms: args.latency_ms,
                ..Behaviour::default()
            },
            push: None,
        },
    )
    .await
    .context("cannot start the simulator")?;

    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or_else(|| match args.rate {
        Some(r) => 60 + (n as u64).div_ceil(u64::from(r.get())),
        None => 60 + n as u64 / 500,
    }));
    // The collector consumes on its own connection, so a publisher slowed by flow control
    // never delays the timestamps of arriving outcomes.
    let collect_conn = amqp::connect(&config.amqp_url, "wxdispatch-bench-collect").await?;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let collector = {
        let ch = collect_conn.create_channel().await?;
        let consumer = ch
            .basic_consume(
                config.outcomes_queue.as_str().into(),
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
    if !args.backlog {
        let (child, pid) = spawn_worker(config, args, &mock.base_url())?;
        worker = Some((child, pid));
        let (child, pid) = worker.as_mut().expect("just set");
        wait_consuming(&probe, &config.jobs_queue, child).await?;
        cpu_base = proc_cpu(*pid).unwrap_or_default();
    }

    let mut machine_before = machine_cpu();
    let mut self_before = self_cpu();
    let publish_start = t0.elapsed();
    let failures = publish_all(publisher, config, run, args, &sent_at, t0).await;
    let publish_secs = (t0.elapsed() - publish_start).as_secs_f64();
    if !args.json {
        eprintln!("published {n} jobs in {publish_secs:.2} s (each confirmed)");
    }

    let window_start = if args.backlog {
        // Only the drain is measured: the machine's and this process's CPU start here too.
        machine_before = machine_cpu();
        self_before = self_cpu();
        let start = t0.elapsed();
        let (child, pid) = spawn_worker(config, args, &mock.base_url())?;
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
    let lifetime_cpu = stop_worker(&mut child, pid).await;
    mock.stop();
    let _ = collect_conn.close(200, "bye".into()).await;

    let mut latencies: Vec<u64> = collected
        .arrived_ns
        .iter()
        .zip(sent_at.iter())
        .filter(|(a, _)| **a != 0)
        .map(|(a, s)| a.saturating_sub(s.load(Ordering::Relaxed)))
        .collect();
    latencies.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
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
        machine_busy_pct: 100.0 * busy / total,
        worker_busy_pct: pct(worker_cpu),
        bench_busy_pct: pct(self_after.saturating_sub(self_before)),
        cores,
        worker_threads: args.worker_threads.map(|n| n.get()),
        loadavg_before,
        measured_at,
        floor: args.floor,
    })
}

/// The body of job `i`: the demo's realistic template send, with an id the collector can map
/// back to `i`.
fn job_body(run: &str, i: usize) -> Vec<u8> {
    crate::demo::sample(&format!("{run}-{i}"), &format!("obench{run}x{i}"))
}

/// Publishes every job with confirms, `publish_window` awaiting their confirm at once, paced
/// at `--rate` if given. Records when each publish was issued. Returns the unconfirmed count.
async fn publish_all(
    publisher: &Publisher,
    config: &Config,
    run: &str,
    args: &BenchArgs,
    sent_at: &[AtomicU64],
    t0: Instant,
) -> usize {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let start = tokio::time::Instant::now();
    let rate = args.rate.map(|r| f64::from(r.get()));
    futures_util::stream::iter(0..args.jobs)
        .then(|i| async move {
            if let Some(r) = rate {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / r)).await;
            }
            i
        })
        .map(|i| {
            let body = job_body(run, i);
            let props = props.clone();
            async move {
                sent_at[i].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                publisher
                    .publish("", &config.jobs_queue, &body, props)
                    .await
            }
        })
        .buffer_unordered(args.publish_window.max(1))
        .fold(
            0,
            |failed, r| async move { failed + usize::from(r.is_err()) },
        )
        .await
}

/// What the collector saw. Times are nanoseconds since the bench's `t0`.
struct Collected {
    /// When job `i`'s outcome arrived (0: not yet).
    arrived_ns: Vec<u64>,
    unique: usize,
    duplicates: usize,
    /// Outcome counts by routing key (`send.sent`, ...).
    statuses: BTreeMap<String, usize>,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
}

/// Consumes outcomes until every job has one or `timeout` passes. Jobs are matched by the
/// outcome's `correlation_id` (the job id, `<run>-<i>`), so no outcome body is parsed here.
async fn collect(
    ch: Channel,
    mut consumer: lapin::Consumer,
    prefix: String,
    n: usize,
    t0: Instant,
    timeout: Duration,
) -> anyhow::Result<Collected> {
    let mut got = Collected {
        arrived_ns: vec![0; n],
        unique: 0,
        duplicates: 0,
        statuses: BTreeMap::new(),
        first_ns: None,
        last_ns: None,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    while got.unique < n {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let d = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(e).context("outcome consumer failed"),
            Ok(None) | Err(_) => break,
        };
        let now = (t0.elapsed().as_nanos() as u64).max(1);
        let index = d
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|c| {
                c.as_str()
                    .strip_prefix(prefix.as_str())?
                    .parse::<usize>()
                    .ok()
            })
            .filter(|i| *i < n);
        let Some(i) = index else { continue };
        if got.arrived_ns[i] != 0 {
            got.duplicates += 1;
            continue;
        }
        got.arrived_ns[i] = now;
        got.unique += 1;
        got.first_ns.get_or_insert(now);
        got.last_ns = Some(now);
        *got.statuses
            .entry(d.routing_key.as_str().to_string())
            .or_default() += 1;
    }
    let _ = ch.close(200, "bye".into()).await;
    Ok(got)
}

/// Starts `wxdispatch run` as a child, configured for this run only through `WXD_*` (any
/// `WXD_*` of this process's environment is dropped, so a stray setting cannot skew it).
fn spawn_worker(
    config: &Config,
    args: &BenchArgs,
    api_base: &str,
) -> anyhow::Result<(tokio::process::Child, u32)> {
    let exe = std::env::current_exe().context("cannot find this executable to start a worker")?;
    let mut cmd = tokio::process::Command::new(exe);
    match args.floor {
        None => cmd.arg("run"),
        Some(floor) => cmd.args(["bench-floor", floor.as_str()]),
    };
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WXD_") {
            cmd.env_remove(k);
        }
    }
    let queue_type = match config.jobs_queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    cmd.env("WXD_AMQP_URL", &config.amqp_url)
        .env("WXD_JOBS_QUEUE", &config.jobs_queue)
        .env("WXD_JOBS_QUEUE_TYPE", queue_type)
        .env("WXD_OUTCOMES_EXCHANGE", &config.outcomes_exchange)
        .env("WXD_OUTCOMES_QUEUE", &config.outcomes_queue)
        .env("WXD_DEAD_QUEUE", &config.dead_queue)
        .env("WXD_API_BASE", api_base)
        .env("WXD_APPID", APPID)
        .env("WXD_SECRET", SECRET)
        .env("WXD_RATE_PER_SEC", args.account_rate.to_string())
        .env("WXD_CONCURRENCY", args.concurrency.to_string())
        .env("WXD_PREFETCH", args.prefetch.to_string())
        .env("WXD_HTTP_ADDR", "127.0.0.1:0")
        .env("WXD_DRAIN_TIMEOUT_SECS", "10")
        .env("WXD_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .env_remove("TOKIO_WORKER_THREADS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    if let Some(n) = args.worker_threads {
        cmd.env("TOKIO_WORKER_THREADS", n.to_string());
    }
    let child = cmd.spawn().context("cannot start the worker process")?;
    let pid = child.id().context("the worker exited at once")?;
    Ok((child, pid))
}

/// Waits until the worker consumes from the jobs queue (or fails if it exits first).
async fn wait_consuming(
    probe: &Channel,
    queue: &str,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the worker exited before consuming ({status}); see its log above");
        }
        let q = probe
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        if q.consumer_count() > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not start consuming within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the worker with SIGTERM (it drains and exits), and returns its lifetime CPU time.
async fn stop_worker(child: &mut tokio::process::Child, pid: u32) -> Duration {
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        tracing::warn!("the worker did not exit 30 s after SIGTERM; killing it");
        let _ = child.kill().await;
    }
    // The only child this process reaps, so RUSAGE_CHILDREN is the worker's.
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

/// Deletes this run's queues and exchange. A delete can cost the channel or even the
/// connection (RabbitMQ 3.10 once closed it with INTERNAL_ERROR while deleting a quorum queue,
/// leaving the rest behind), so if the channel did not survive, it starts over once on a fresh
/// connection (deleting is idempotent) and otherwise says what is left.
async fn delete_topology(conn: &Connection, config: &Config) {
    let mut fresh = None;
    for attempt in 0..2 {
        let c = if attempt == 0 && conn.status().connected() {
            conn
        } else {
            match amqp::connect(&config.amqp_url, "wxdispatch-bench-cleanup").await {
                Ok(c) => fresh.insert(c),
                Err(_) => break,
            }
        };
        let Ok(ch) = c.create_channel().await else {
            continue;
        };
        amqp::topology::delete(&ch, config).await;
        if ch.status().connected() {
            let _ = ch.close(200, "bye".into()).await;
            if let Some(c) = fresh {
                let _ = c.close(200, "bye".into()).await;
            }
            return;
        }
    }
    tracing::warn!(
        queues = %format!("{}*", config.jobs_queue.trim_end_matches("jobs")),
        "could not delete this run's queues and exchange; delete them by hand"
    );
}

/// The value at quantile `q` of sorted values (nearest rank), 0 when empty.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A process's CPU time (user + system, all threads) so far.
fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    stat_cpu(&stat, u64::try_from(hz).ok().filter(|h| *h > 0)?)
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn stat_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_sec as f64,
    ))
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmHWM:` (peak resident set).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The whole machine's (busy, total) CPU ticks from `/proc/stat`.
fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn self_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn print_report(r: &Report) {
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
        "  publish → outcome latency  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
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

    /// The CPU fields are found even when the command name holds spaces and parentheses.
    #[test]
    fn stat_cpu_counts_fields_from_the_last_parenthesis() {
        let line = "4242 (wx (d) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(stat_cpu(line, 100), Some(Duration::from_secs(3)));
        assert_eq!(stat_cpu("garbage", 100), None);
    }

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

    /// Job bodies are valid jobs whose id the collector can map back to the job's index.
    #[test]
    fn job_bodies_parse_and_carry_their_index() {
        let v: serde_json::Value = serde_json::from_slice(&job_body("abc", 17)).unwrap();
        assert_eq!(v["id"], "abc-17");
        assert_eq!(v["data"]["User"]["color"], "#173177");
    }
}
