//! The bench's broker side: the jobs it publishes with confirms, the outcomes it collects,
//! and the clean-up of its queues.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{BasicProperties, Channel, Connection};

use super::Args;
use super::platform::Platform;
use crate::amqp::{self, Publisher};
use crate::config::Config;
use crate::tools::sample;

/// The body of job `i`: the realistic template send the demo uses too, with an id the collector can map
/// back to `i`, and the authorizer it is for with `--authorizers`.
pub(super) fn job_body(run: &str, i: usize, platform: Option<&Platform>) -> Vec<u8> {
    let body = sample::job(&format!("{run}-{i}"), &format!("obench{run}x{i}"));
    let Some(p) = platform else { return body };
    let mut job: serde_json::Value = serde_json::from_slice(&body).expect("the sample job");
    job["appid"] = p.appid_of(i).into();
    serde_json::to_vec(&job).expect("JSON")
}

/// Publishes every job with confirms, `publish_window` awaiting their confirm at once, paced
/// at `--rate` if given. Records when each publish was issued and when it was confirmed.
/// Returns the unconfirmed count.
pub(super) async fn publish_all(
    publisher: &Publisher,
    config: &Config,
    run: &str,
    args: &Args,
    (sent_at, confirmed_at): (&[AtomicU64], &[AtomicU64]),
    t0: Instant,
    platform: Option<&Platform>,
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
            let body = job_body(run, i, platform);
            let props = props.clone();
            async move {
                sent_at[i].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let confirmed = publisher
                    .publish("", &config.amqp.jobs_queue, &body, props)
                    .await;
                if confirmed.is_ok() {
                    confirmed_at[i].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                confirmed
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
pub(super) struct Collected {
    /// When job `i`'s outcome arrived (0: not yet).
    pub(super) arrived_ns: Vec<u64>,
    pub(super) unique: usize,
    pub(super) duplicates: usize,
    /// Outcome counts by routing key (`send.sent`, ...).
    pub(super) statuses: BTreeMap<String, usize>,
    pub(super) first_ns: Option<u64>,
    pub(super) last_ns: Option<u64>,
}

/// Consumes outcomes until every job has one or `timeout` passes. Jobs are matched by the
/// outcome's `correlation_id` (the job id, `<run>-<i>`), so no outcome body is parsed here.
pub(super) async fn collect(
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

/// Deletes this run's queues and exchange. A delete can cost the channel or even the
/// connection (RabbitMQ 3.10 once closed it with INTERNAL_ERROR while deleting a quorum queue,
/// leaving the rest behind), so if the channel did not survive, it starts over once on a fresh
/// connection (deleting is idempotent) and otherwise says what is left.
pub(super) async fn delete_topology(conn: &Connection, config: &Config) {
    let mut fresh = None;
    for attempt in 0..2 {
        let c = if attempt == 0 && conn.status().connected() {
            conn
        } else {
            match amqp::connect(&config.amqp.url, "wxdispatch-bench-cleanup").await {
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
        queues = %format!("{}*", config.amqp.jobs_queue.trim_end_matches("jobs")),
        "could not delete this run's queues and exchange; delete them by hand"
    );
}
