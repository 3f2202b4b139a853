//! The process under measurement: `wxdispatch run` (or the floor worker) started from this
//! same executable, so its CPU time and memory can be read apart from the bench's own.

use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use super::platform::Platform;
use super::{APPID, Args, SECRET, procfs};
use crate::config::{Config, QueueType};

/// Starts `wxdispatch run` as a child, configured for this run only through `WXD_*` (any
/// `WXD_*` of this process's environment is dropped, so a stray setting cannot skew it).
pub(super) fn spawn_worker(
    config: &Config,
    args: &Args,
    api_base: &str,
    http_addr: &str,
    platform: Option<(&Platform, &str)>,
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
    let queue_type = match config.amqp.jobs_queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    cmd.env("WXD_AMQP_URL", &config.amqp.url)
        .env("WXD_JOBS_QUEUE", &config.amqp.jobs_queue)
        .env("WXD_JOBS_QUEUE_TYPE", queue_type)
        .env("WXD_OUTCOMES_EXCHANGE", &config.amqp.outcomes_exchange)
        .env("WXD_OUTCOMES_QUEUE", &config.amqp.outcomes_queue)
        .env("WXD_DEAD_QUEUE", &config.amqp.dead_queue)
        .env("WXD_API_BASE", api_base)
        .env("WXD_CONCURRENCY", args.concurrency.to_string())
        .env("WXD_PREFETCH", args.prefetch.to_string())
        .env("WXD_HTTP_ADDR", http_addr)
        .env("WXD_DRAIN_TIMEOUT_SECS", "10")
        .env("WXD_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .env_remove("TOKIO_WORKER_THREADS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    match platform {
        // The authorizers have no `[[accounts]]` entry: the platform-wide rate applies.
        Some((platform, redis_url)) => {
            super::platform::env(&mut cmd, platform, redis_url, args.account_rate)
        }
        None => {
            cmd.env("WXD_APPID", APPID)
                .env("WXD_SECRET", SECRET)
                .env("WXD_RATE_PER_SEC", args.account_rate.to_string());
            if let Some(url) = &args.redis_url {
                cmd.env("WXD_REDIS_URL", url);
            }
        }
    }
    if let Some(n) = args.worker_threads {
        cmd.env("TOKIO_WORKER_THREADS", n.to_string());
    }
    let child = cmd.spawn().context("cannot start the worker process")?;
    let pid = child.id().context("the worker exited at once")?;
    Ok((child, pid))
}

/// Waits until the worker consumes from the jobs queue (or fails if it exits first).
pub(super) async fn wait_consuming(
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
pub(super) async fn stop_worker(child: &mut tokio::process::Child, pid: u32) -> Duration {
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
    procfs::rusage_cpu(libc::RUSAGE_CHILDREN)
}
