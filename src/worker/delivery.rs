//! One delivery, from parse to ack: dispatch a job (or expand a batch, or dead-letter bad
//! input), publish its outcome with a confirm, then ack. A handler that panics is requeued with
//! its delivery count, and buried as poison on its last allowed delivery.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::{SessionChannels, Worker};
use crate::amqp::{PublishError, Publisher, headers};
use crate::config::QueueType;
use crate::dispatch::{Disposition, EndReason};
use crate::job::{self, AccountId, Parsed};
use crate::outcome::{JobIdentity, Outcome, SendStatus};

/// Handles one delivery; never panics out and never acks without a confirmed publish.
pub(super) async fn handle(
    worker: Arc<Worker>,
    channels: Arc<SessionChannels>,
    delivery: Delivery,
    send_permit: Option<OwnedSemaphorePermit>,
) {
    worker.metrics.inflight.inc();
    let result = AssertUnwindSafe(process(&worker, &channels, &delivery, send_permit))
        .catch_unwind()
        .await;
    let failed = match result {
        Ok(Ok(())) => false,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not publish a job's result; the job will be redelivered");
            true
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let deliveries =
                headers::deliveries_before(&delivery.properties, delivery.redelivered) + 1;
            if deliveries >= u64::from(worker.config.amqp.delivery_limit) {
                // The last delivery the queue allows: end it here with a reason, rather than
                // letting the broker dead-letter it silently.
                tracing::error!(panic = %msg, deliveries, "job handler panicked again; dead-lettering the job as poison");
                !bury_poison(&worker, &channels, &delivery, &msg).await
            } else if worker.config.amqp.jobs_queue_type == QueueType::Classic {
                // A classic queue counts no deliveries and has no limit: a nack would bring
                // the job back uncounted for ever. Put a counted copy back instead.
                tracing::error!(panic = %msg, deliveries, "job handler panicked; the job is put back with its delivery count");
                !requeue_counted(&channels, &delivery, deliveries).await
            } else {
                tracing::error!(panic = %msg, deliveries, "job handler panicked; the job is requeued");
                true
            }
        }
    };
    if failed {
        // A short pause so a broker that keeps refusing does not turn this into a hot loop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
        // Awaited first, so no later multiple ack can reach the broker before this nack.
        channels.acks.settled(delivery.delivery_tag);
    }
    worker.metrics.inflight.dec();
}

/// Publishes a copy of a panicked job, with its delivery count, to the end of the jobs queue,
/// and acks the delivery once the copy is confirmed; true if so.
async fn requeue_counted(channels: &SessionChannels, delivery: &Delivery, deliveries: u64) -> bool {
    let props = headers::with_deliveries(&delivery.properties, deliveries);
    match channels.publisher.requeue(&delivery.data, props).await {
        Ok(()) => {
            channels.acks.ack(delivery.delivery_tag);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not put the panicked job back; it is requeued uncounted");
            false
        }
    }
}

/// Dead-letters a poison job and publishes its `failed` outcome; true if both were confirmed
/// and the job acked.
async fn bury_poison(
    worker: &Worker,
    channels: &SessionChannels,
    delivery: &Delivery,
    panic: &str,
) -> bool {
    let props = &delivery.properties;
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let (id, appid, touser) = match job::parse(&delivery.data, message_id, &worker.config) {
        Ok(Parsed::Single(j)) => (Some(j.id.to_string()), Some(j.appid), Some(j.touser)),
        Ok(Parsed::Batch(b)) => (Some(b.id.to_string()), Some(b.appid), None),
        Err((_, k)) => (k.id, k.appid, k.touser),
    };
    let detail = format!("the worker panicked on every delivery: {panic}");
    let dead = publish_waiting(worker, channels, JobCopy::Dead, || {
        channels
            .publisher
            .dead_letter(&delivery.data, props, "poison", &detail)
    });
    if dead.await.is_err() {
        return false;
    }
    worker
        .metrics
        .dead_letters_total
        .with_label_values(&["poison"])
        .inc();
    let job = JobIdentity {
        id,
        appid,
        touser,
        msg_type: None,
    };
    let mut o = Outcome::for_job(SendStatus::Failed, job);
    o.reason = Some(EndReason::Poison.as_str().into());
    o.errmsg = Some(detail);
    publish_final(worker, channels, delivery, &o).await.is_ok()
}

/// `send_permit` is the job's share of `concurrency`. It is released as soon as the send is
/// over: publishing the outcome and waiting for its confirm (a quorum-queue commit) need no
/// send permit, and the prefetch still bounds how many jobs are held at once. Holding it until the
/// ack made every send cycle that much longer than WeChat's own latency.
async fn process(
    worker: &Worker,
    channels: &SessionChannels,
    delivery: &Delivery,
    send_permit: Option<OwnedSemaphorePermit>,
) -> Result<(), PublishError> {
    let publisher = &channels.publisher;
    let ack = || channels.acks.ack(delivery.delivery_tag);
    let props = &delivery.properties;
    observe_queue_wait(worker, props);
    #[cfg(feature = "fault-injection")]
    if headers::get_str(props, "x-wxd-test-panic").is_some() {
        panic!("injected panic (fault-injection build, x-wxd-test-panic header)");
    }
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let parsed = job::parse(&delivery.data, message_id, &worker.config);
    match parsed {
        Err((invalid, known)) => {
            tracing::warn!(
                job_id = known.id.as_deref().unwrap_or("-"),
                appid = known.appid.as_deref().unwrap_or("-"),
                reason = invalid.reason,
                detail = %invalid.detail,
                "invalid job; dead-lettering it"
            );
            let data = &delivery.data;
            publish_waiting(worker, channels, JobCopy::Dead, || {
                publisher.dead_letter(data, props, invalid.reason, &invalid.detail)
            })
            .await?;
            worker
                .metrics
                .dead_letters_total
                .with_label_values(&[invalid.reason])
                .inc();
            let job = JobIdentity {
                id: known.id,
                appid: known.appid,
                touser: known.touser,
                msg_type: known.msg_type,
            };
            let mut o = Outcome::for_job(SendStatus::Invalid, job);
            o.reason = Some(invalid.reason.to_string());
            o.errmsg = Some(invalid.detail);
            publish_final(worker, channels, delivery, &o).await
        }
        Ok(Parsed::Batch(batch)) => {
            let span = tracing::info_span!("batch", job_id = %batch.id, appid = %batch.appid);
            async {
                let id = batch.id.to_string();
                let job = || JobIdentity { id: Some(id.clone()), appid: Some(batch.appid.clone()), touser: None, msg_type: Some(batch.msg_type) };
                if let Some(o) = refuse_publisher(worker, channels, batch.account, job(), props) {
                    return publish_final(worker, channels, delivery, &o).await;
                }
                if let Err(m) = worker.dispatcher.check_batch(&batch).await {
                    // One outcome for the whole batch: its template cannot work for anyone.
                    tracing::info!(reason = m.reason(), detail = %m.detail(), recipients = batch.recipients.len(), "batch rejected before expansion");
                    let mut o = Outcome::for_job(SendStatus::Rejected, job());
                    o.reason = Some(m.reason().into());
                    o.errmsg = Some(m.detail());
                    return publish_final(worker, channels, delivery, &o).await;
                }
                // Expand-then-ack: every recipient's job is confirmed before the batch is acked.
                // A crash in between re-expands the batch; WeChat deduplicates each recipient.
                for chunk in batch.recipients.chunks(256) {
                    let mut pending = futures_util::stream::FuturesUnordered::new();
                    for r in chunk {
                        pending.push(publisher.job(batch.job_for(r), &id));
                    }
                    while let Some(res) = pending.next().await {
                        res?;
                    }
                }
                tracing::info!(recipients = batch.recipients.len(), "batch expanded");
                ack();
                Ok(())
            }
            .instrument(span)
            .await
        }
        Ok(Parsed::Single(job)) => {
            let span = tracing::info_span!("job", job_id = %job.id, appid = %job.appid);
            async {
                let identity = JobIdentity {
                    id: Some(job.id.to_string()),
                    appid: Some(job.appid.clone()),
                    touser: Some(job.touser.clone()),
                    msg_type: Some(job.msg_type),
                };
                if let Some(o) = refuse_publisher(worker, channels, job.account, identity, props) {
                    drop(send_permit);
                    return publish_final(worker, channels, delivery, &o).await;
                }
                let state = headers::retry_state(props);
                let not_before = headers::not_before_ms(props);
                let disposition = worker.dispatcher.send_job(&job, state, not_before).await;
                drop(send_permit);
                match disposition {
                    Disposition::Early { left } => {
                        // Back early from a delay tier: park it again, unchanged, for the rest.
                        let data = &delivery.data;
                        publish_waiting(worker, channels, JobCopy::Delay, || {
                            publisher.defer(data, props.clone(), left)
                        })
                        .await?;
                        ack();
                        Ok(())
                    }
                    Disposition::Final(o) => {
                        tracing::info!(status = %o.status(), errcode = o.errcode, attempts = o.attempts, reason = o.reason.as_deref(), "job finished");
                        let latency = chrono::Utc::now().timestamp_millis() - state.first_seen_ms;
                        worker.metrics
                            .outcome_latency_seconds
                            .observe(latency.max(0) as f64 / 1000.0);
                        if let Some(age) = publish_age_secs(props) {
                            worker.metrics.publish_latency_seconds.observe(age);
                        }
                        publish_final(worker, channels, delivery, &o).await
                    }
                    Disposition::Defer { delay, reason, state } => {
                        tracing::debug!(reason = reason.as_str(), delay_ms = delay.as_millis() as u64, "job deferred");
                        let props = headers::with_retry_state(props, &state, reason.as_str());
                        let data = &delivery.data;
                        publish_waiting(worker, channels, JobCopy::Delay, || publisher.defer(data, props.clone(), delay)).await?;
                        ack();
                        Ok(())
                    }
                }
            }
            .instrument(span)
            .await
        }
    }
}

/// The `rejected` outcome of a job its publisher may not send: the account lists its
/// `publishers` and the job's AMQP `user_id` (which the broker checks against the publishing
/// connection's user) is missing or not among them. `None` when the job may go on. Jobs the
/// worker published itself (a batch's recipients, jobs back from a delay queue) carry its own
/// user and go on: they were checked when they first arrived.
fn refuse_publisher(
    worker: &Worker,
    channels: &SessionChannels,
    account: AccountId,
    job: JobIdentity,
    props: &lapin::BasicProperties,
) -> Option<Outcome> {
    // An authorizer without an `[[accounts]]` entry lists no publishers: every one may send.
    let acct = &worker.config.accounts[account.index()?];
    let user = props.user_id().as_ref().map(|u| u.as_str());
    if acct.admits(user) || user == Some(channels.publisher.own_user()) {
        return None;
    }
    let user = user.unwrap_or("(none)");
    tracing::warn!(user_id = user, appid = %acct.appid, "job refused: its publisher may not send as this account");
    worker
        .metrics
        .publisher_refused_total
        .with_label_values(&[&acct.appid])
        .inc();
    let mut o = Outcome::for_job(SendStatus::Rejected, job);
    o.reason = Some(EndReason::PublisherNotAllowed.as_str().into());
    o.errmsg = Some(format!(
        "user_id {user} is not among the publishers of {}",
        acct.appid
    ));
    Some(o)
}

async fn publish_final(
    worker: &Worker,
    channels: &SessionChannels,
    delivery: &Delivery,
    o: &Outcome,
) -> Result<(), PublishError> {
    publish_outcome_waiting(worker, channels, o).await?;
    count_final(worker, o);
    channels.acks.ack(delivery.delivery_tag);
    Ok(())
}

/// Counts a final outcome in `wxdispatch_jobs_total`. A job sent without a reason (almost
/// every job) takes its account's resolved counter; the rest look their labels up.
fn count_final(worker: &Worker, o: &Outcome) {
    // Only the labels of accounts in use (configured, or authorizers with jobs) become label
    // values: an invalid job may name anything. A folded authorizer's is `_other`.
    let account = o
        .appid
        .as_deref()
        .and_then(|a| worker.dispatcher.account(a));
    if let (Some(acct), Some(SendStatus::Sent), None, Some(t)) =
        (&account, o.send_status(), o.reason.as_deref(), o.msg_type)
    {
        acct.metrics.sent(t).inc();
        return;
    }
    worker
        .metrics
        .jobs_total
        .with_label_values(&[
            account
                .as_ref()
                .map_or("unknown", |a| a.metrics.label.as_str()),
            o.msg_type.map_or("unknown", |t| t.as_str()),
            o.status().as_str(),
            crate::metrics::reason_label(o.reason.as_deref()),
        ])
        .inc();
}

/// Seconds since the job was published, from its AMQP `timestamp` property (whole seconds,
/// set by `wxdispatch publish` and most client libraries on request). `None` without one.
fn publish_age_secs(props: &lapin::BasicProperties) -> Option<f64> {
    let published = (*props.timestamp())?;
    let now = chrono::Utc::now().timestamp_millis();
    Some((now - published as i64 * 1000).max(0) as f64 / 1000.0)
}

/// Records how long a job waited in the jobs queue, on its first delivery only: a job back
/// from a delay queue carries the first-seen header, and its age measures the deferral, not
/// the backlog.
fn observe_queue_wait(worker: &Worker, props: &lapin::BasicProperties) {
    let first = props
        .headers()
        .as_ref()
        .is_none_or(|t| !t.inner().contains_key(headers::FIRST_SEEN));
    if first && let Some(age) = publish_age_secs(props) {
        worker.metrics.queue_wait_seconds.observe(age);
    }
}

/// Publishes an outcome; while the broker refuses it (a full outcomes queue with
/// `reject-publish` nacks, an unbound exchange returns), waits and tries again rather than
/// nacking the job: a requeued job would be sent to WeChat again, and would reach the
/// queue's delivery limit and be dead-lettered without an outcome. The job stays unacked
/// meanwhile, counted in `wxdispatch_outcomes_waiting`; it is given up (and redelivered) only
/// with its session, or when the drain timeout ends.
async fn publish_outcome_waiting(
    worker: &Worker,
    channels: &SessionChannels,
    o: &Outcome,
) -> Result<(), PublishError> {
    let refused = |reason: &str| {
        worker
            .metrics
            .outcomes_refused_total
            .with_label_values(&[reason])
            .inc()
    };
    let waiting = Waiting {
        gauge: &worker.metrics.outcomes_waiting,
        what: "an outcome",
        to: &worker.config.amqp.outcomes_exchange,
    };
    retry_refused(&channels.publisher, refused, waiting, || {
        channels.publisher.outcome(o)
    })
    .await
}

/// A copy of a job the worker publishes before it acks the job.
#[derive(Clone, Copy)]
enum JobCopy {
    /// Parked in a delay tier (a retry, a pause, an early return).
    Delay,
    /// The dead-letter queue (an invalid or poison job).
    Dead,
}

/// Publishes a deferred or dead-letter copy of a job, waiting and trying again while the
/// broker refuses it, as [`publish_outcome_waiting`] does and for the same reasons: a full
/// delay tier (tiers `reject-publish`) or a dead-letter queue with a length limit. A refused
/// defer nacked back would be sent again on every redelivery and spend the delivery limit
/// until the broker dead-lettered the job with no outcome. Counted in
/// `wxdispatch_copies_waiting{target}` while it waits.
async fn publish_waiting<F, Fut>(
    worker: &Worker,
    channels: &SessionChannels,
    copy: JobCopy,
    publish: F,
) -> Result<(), PublishError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    let (target, to) = match copy {
        JobCopy::Delay => ("delay", "a delay tier"),
        JobCopy::Dead => ("dead", worker.config.amqp.dead_queue.as_str()),
    };
    let refused = |reason: &str| {
        worker
            .metrics
            .copies_refused_total
            .with_label_values(&[target, reason])
            .inc()
    };
    let gauge = worker.metrics.copies_waiting.with_label_values(&[target]);
    let waiting = Waiting {
        gauge: &gauge,
        what: "a job's copy",
        to,
    };
    retry_refused(&channels.publisher, refused, waiting, publish).await
}

/// What waits while a publish is refused, for its gauge and its log line.
struct Waiting<'a> {
    gauge: &'a IntGauge,
    what: &'static str,
    to: &'a str,
}

/// Publishes until the broker takes it: a nack or a return is counted by `refused` and tried
/// again (250 ms doubling to 5 s) while the channel lives; any other error ends it.
async fn retry_refused<F, Fut>(
    publisher: &Publisher,
    refused: impl Fn(&str),
    waiting: Waiting<'_>,
    mut publish: F,
) -> Result<(), PublishError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    /// Keeps the gauge right even when the task is aborted at the drain timeout.
    struct Held<'a>(&'a IntGauge);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let mut wait = Duration::from_millis(250);
    let mut held = None;
    loop {
        let reason = match publish().await {
            Ok(()) => return Ok(()),
            Err(PublishError::Nacked) => "nacked",
            Err(PublishError::Returned) => "returned",
            Err(e) => return Err(e),
        };
        refused(reason);
        if held.is_none() {
            waiting.gauge.inc();
            held = Some(Held(waiting.gauge));
            tracing::warn!(
                reason,
                to = waiting.to,
                "the broker refused {} (is its queue full?); the job waits unacked and the publish is retried",
                waiting.what
            );
        }
        if !publisher.channel().status().connected() {
            return Err(PublishError::Nacked);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
