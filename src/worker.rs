//! The worker: consume jobs, dispatch them, publish one confirmed outcome, then ack.
//!
//! A supervisor loop owns a *session*: one connection for consuming and one for publishing
//! (so a flow-controlled publisher never stalls deliveries and acks). When either connection
//! is lost, the session ends, readiness drops, and a new session is built with backoff; the
//! topology is declared again on every session. Deliveries of a dead channel are never acked
//! on a new one: the broker redelivers them.
//!
//! The ack rule: a job is acked only after everything it produced (its outcome, its
//! dead-letter copy, its deferred copy or its expanded recipients) was confirmed by the broker.
//! On any publish failure the job is nacked with requeue and comes back. Acks are batched
//! ([`amqp::acks`]): one `basic.ack(multiple)` settles a contiguous run of finished jobs.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::amqp::{self, Acks, PublishError, Publisher, headers, topology};
use crate::config::{Config, ConfigError, QueueType};
use crate::dispatch::{Dispatcher, Disposition, EndReason};
use crate::job::{self, AccountId, Parsed};
use crate::metrics::Metrics;
use crate::outcome::{JobIdentity, Outcome, SendStatus};
use crate::shutdown::Shutdown;

/// Liveness and readiness, shared with the HTTP probes.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    fn set_ready(&self, metrics: &Metrics, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
        metrics.ready.set(i64::from(v));
    }
}

/// What every job task needs.
pub struct Ctx {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub dispatcher: Arc<Dispatcher>,
    pub health: Arc<Health>,
    /// Names this worker's AMQP connections (`wxdispatch-<role>-<instance>`), so operators
    /// and tests can tell replicas apart in the broker.
    pub instance: String,
}

impl Ctx {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Ctx>, ConfigError> {
        let dispatcher = Arc::new(Dispatcher::new(&config, metrics.clone())?);
        Ok(Arc::new(Ctx {
            config,
            metrics,
            dispatcher,
            health: Arc::new(Health::default()),
            instance: format!("{}-{:06x}", hostname(), rand::random::<u32>() & 0xffffff),
        }))
    }
}

/// What a job task needs from its session: the confirm-mode publisher and the acks of the
/// consuming channel. Both die with the session; a delivery is never acked on another.
struct Io {
    publisher: Publisher,
    acks: Acks,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Runs the worker until `shutdown` is triggered and in-flight jobs are drained.
pub async fn run(ctx: Arc<Ctx>, shutdown: Shutdown) -> anyhow::Result<()> {
    for acct in ctx.dispatcher.accounts() {
        tokio::spawn(acct.tokens.clone().keep_fresh(shutdown.clone()));
    }
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        if !first {
            ctx.metrics.amqp_reconnects_total.inc();
        }
        first = false;
        let started = Instant::now();
        match session(&ctx, &shutdown).await {
            Ok(SessionEnd::Shutdown) => return Ok(()),
            Ok(SessionEnd::Lost(why)) => {
                tracing::warn!(reason = %why, "AMQP session lost; reconnecting");
            }
            Err(e) => {
                // A queue with other arguments, or a missing one in passive mode: no
                // reconnect can fix that, so stop and say what to do.
                if let Some(t) = e.downcast_ref::<topology::TopologyError>()
                    && t.is_permanent()
                {
                    tracing::error!(error = %t, "cannot use the queues as configured; stopping");
                    ctx.health.set_ready(&ctx.metrics, false);
                    return Err(e);
                }
                tracing::warn!(error = %e, "AMQP session failed; reconnecting");
            }
        }
        ctx.health.set_ready(&ctx.metrics, false);
        ctx.metrics.amqp_connected.set(0);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        backoff = (backoff * 2).min(Duration::from_secs(15));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return Ok(()),
        }
    }
}

/// One AMQP session: open the connections and the consumer, consume until shutdown or a lost
/// connection, then drain the jobs in flight and close.
async fn session(ctx: &Arc<Ctx>, shutdown: &Shutdown) -> anyhow::Result<SessionEnd> {
    let mut session = Session::open(ctx).await?;
    let (end, tasks) = session.consume(ctx, shutdown).await;
    session.close(ctx, &end, tasks).await;
    Ok(end)
}

/// The connections, channels and consumer of one session. The publisher and the consumer
/// have connections of their own, so a broker that blocks publishing (a resource alarm) does
/// not also stall the acks.
struct Session {
    pub_conn: lapin::Connection,
    con_conn: lapin::Connection,
    ch: lapin::Channel,
    io: Arc<Io>,
    consumer: lapin::Consumer,
}

impl Session {
    /// Connects, checks or declares the topology, and starts consuming.
    async fn open(ctx: &Arc<Ctx>) -> anyhow::Result<Session> {
        let cfg = &ctx.config;
        let host = &ctx.instance;
        let pub_conn = amqp::connect(&cfg.amqp.url, &format!("wxdispatch-publish-{host}")).await?;
        let con_conn = amqp::connect(&cfg.amqp.url, &format!("wxdispatch-consume-{host}")).await?;
        let publisher = Publisher::new(&pub_conn, cfg).await?;
        topology::ensure(&pub_conn, publisher.channel(), cfg).await?;
        let ch = con_conn.create_channel().await?;
        ch.basic_qos(cfg.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let io = Arc::new(Io {
            publisher,
            acks: Acks::start(ch.clone(), ctx.metrics.clone()),
        });
        let consumer = ch
            .basic_consume(
                cfg.amqp.jobs_queue.as_str().into(),
                format!("wxdispatch-{host}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        ctx.metrics.amqp_connected.set(1);
        ctx.health.set_ready(&ctx.metrics, true);
        tracing::info!(queue = %cfg.amqp.jobs_queue, prefetch = cfg.amqp.prefetch, concurrency = cfg.limits.concurrency, "consuming");
        Ok(Session {
            pub_conn,
            con_conn,
            ch,
            io,
            consumer,
        })
    }

    /// Takes deliveries while a slot is free and the broker accepts our publishes, each in a
    /// task of its own, until shutdown or a lost connection. Returns why it ended and the
    /// tasks still running.
    async fn consume(&mut self, ctx: &Arc<Ctx>, shutdown: &Shutdown) -> (SessionEnd, JoinSet<()>) {
        let mut pub_events = self.pub_conn.events_listener();
        let mut con_events = self.con_conn.events_listener();
        let slots = Arc::new(Semaphore::new(ctx.config.limits.concurrency));
        let mut tasks = JoinSet::new();
        // While the broker blocks our publisher (memory or disk alarm), take no new work: every
        // job needs a publish before it can be acked.
        let mut blocked = self.pub_conn.status().blocked();
        let mut permit: Option<OwnedSemaphorePermit> = None;
        // One timer for the whole session, not a new one per delivery.
        let mut look_again = tokio::time::interval(Duration::from_secs(1));
        look_again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            while tasks.try_join_next().is_some() {}
            if !self.pub_conn.status().connected() || !self.con_conn.status().connected() {
                break SessionEnd::Lost("connection closed".into());
            }
            ctx.health.set_ready(&ctx.metrics, !blocked);
            tokio::select! {
                _ = shutdown.wait() => break SessionEnd::Shutdown,
                p = slots.clone().acquire_owned(), if permit.is_none() && !blocked => {
                    permit = Some(p.expect("semaphore never closed"));
                }
                d = self.consumer.next(), if permit.is_some() && !blocked => match d {
                    Some(Ok(delivery)) => {
                        self.io.acks.received(delivery.delivery_tag);
                        let ctx = ctx.clone();
                        let io = self.io.clone();
                        let slot = permit.take();
                        // Boxed: the job's future is large, and tokio moves a task's future
                        // into and out of its cell by value (memcpy was 8 % of the CPU).
                        tasks.spawn(Box::pin(async move {
                            handle(ctx, io, delivery, slot).await;
                        }));
                    }
                    Some(Err(e)) => break SessionEnd::Lost(format!("consumer error: {e}")),
                    None => break SessionEnd::Lost("consumer cancelled by the broker".into()),
                },
                Some(ev) = pub_events.next() => match ev {
                    lapin::Event::ConnectionBlocked(why) => {
                        tracing::warn!(reason = %why, "broker blocked publishing (resource alarm); pausing consumption");
                        blocked = true;
                    }
                    lapin::Event::ConnectionUnblocked => {
                        tracing::info!("broker unblocked publishing; resuming");
                        blocked = false;
                    }
                    lapin::Event::Error(e) => break SessionEnd::Lost(format!("publisher connection: {e}")),
                    _ => {}
                },
                Some(ev) = con_events.next() => if let lapin::Event::Error(e) = ev {
                    break SessionEnd::Lost(format!("consumer connection: {e}"));
                },
                // Connection state can change without an event reaching us; look again soon.
                _ = look_again.tick() => {}
            }
        };
        (end, tasks)
    }

    /// Stops deliveries, lets the jobs in flight finish (up to the drain timeout on shutdown,
    /// 5 s after a lost connection), settles the acks still owed and closes everything, each
    /// step bounded.
    async fn close(self, ctx: &Ctx, end: &SessionEnd, mut tasks: JoinSet<()>) {
        ctx.health.set_ready(&ctx.metrics, false);
        // Stop new deliveries; what was prefetched but not started is requeued when the
        // channel closes.
        let _ = self
            .ch
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await;
        let drain = match end {
            SessionEnd::Shutdown => ctx.config.drain_timeout,
            SessionEnd::Lost(_) => Duration::from_secs(5),
        };
        while tasks.try_join_next().is_some() {}
        let inflight = tasks.len();
        if inflight > 0 {
            tracing::info!(
                inflight,
                timeout_secs = drain.as_secs(),
                "draining in-flight jobs"
            );
        }
        let drained =
            tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_ok();
        if !drained {
            tracing::warn!(
                left = tasks.len(),
                "drain timeout; unfinished jobs will be redelivered"
            );
            tasks.abort_all();
        }
        // Closing what the broker already closed can wait forever: bound every step.
        let bounded = Duration::from_secs(2);
        // The acks still owed go out before the channel closes (unacked jobs would come back).
        let _ = tokio::time::timeout(bounded * 2, self.io.acks.close()).await;
        let _ = tokio::time::timeout(bounded, self.ch.close(200, "bye".into())).await;
        let _ = tokio::time::timeout(bounded, self.con_conn.close(200, "bye".into())).await;
        let _ = tokio::time::timeout(
            bounded,
            self.io.publisher.channel().close(200, "bye".into()),
        )
        .await;
        let _ = tokio::time::timeout(bounded, self.pub_conn.close(200, "bye".into())).await;
        ctx.metrics.amqp_connected.set(0);
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("pid{}", std::process::id()))
}

/// Handles one delivery; never panics out and never acks without a confirmed publish.
async fn handle(
    ctx: Arc<Ctx>,
    io: Arc<Io>,
    delivery: Delivery,
    slot: Option<OwnedSemaphorePermit>,
) {
    ctx.metrics.inflight.inc();
    let result = AssertUnwindSafe(process(&ctx, &io, &delivery, slot))
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
            if deliveries >= u64::from(ctx.config.amqp.delivery_limit) {
                // The last delivery the queue allows: end it here with a reason, rather than
                // letting the broker dead-letter it silently.
                tracing::error!(panic = %msg, deliveries, "job handler panicked again; dead-lettering the job as poison");
                !bury_poison(&ctx, &io, &delivery, &msg).await
            } else if ctx.config.amqp.jobs_queue_type == QueueType::Classic {
                // A classic queue counts no deliveries and has no limit: a nack would bring
                // the job back uncounted for ever. Put a counted copy back instead.
                tracing::error!(panic = %msg, deliveries, "job handler panicked; the job is put back with its delivery count");
                !requeue_counted(&io, &delivery, deliveries).await
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
        io.acks.settled(delivery.delivery_tag);
    }
    ctx.metrics.inflight.dec();
}

/// Publishes a copy of a panicked job, with its delivery count, to the end of the jobs queue,
/// and acks the delivery once the copy is confirmed; true if so.
async fn requeue_counted(io: &Io, delivery: &Delivery, deliveries: u64) -> bool {
    let props = headers::with_deliveries(&delivery.properties, deliveries);
    match io.publisher.requeue(&delivery.data, props).await {
        Ok(()) => {
            io.acks.ack(delivery.delivery_tag);
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
async fn bury_poison(ctx: &Ctx, io: &Io, delivery: &Delivery, panic: &str) -> bool {
    let props = &delivery.properties;
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let (id, appid, touser) = match job::parse(&delivery.data, message_id, &ctx.config) {
        Ok(Parsed::Single(j)) => (Some(j.id.to_string()), Some(j.appid), Some(j.touser)),
        Ok(Parsed::Batch(b)) => (Some(b.id.to_string()), Some(b.appid), None),
        Err((_, k)) => (k.id, k.appid, k.touser),
    };
    let detail = format!("the worker panicked on every delivery: {panic}");
    let dead = publish_waiting(ctx, io, JobCopy::Dead, || {
        io.publisher
            .dead_letter(&delivery.data, props, "poison", &detail)
    });
    if dead.await.is_err() {
        return false;
    }
    ctx.metrics
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
    publish_final(ctx, io, delivery, &o).await.is_ok()
}

/// `slot` is the job's share of `concurrency`. It is released as soon as the send is over:
/// publishing the outcome and waiting for its confirm (a quorum-queue commit) need no send
/// slot, and the prefetch still bounds how many jobs are held at once. Holding it until the
/// ack made every send cycle that much longer than WeChat's own latency.
async fn process(
    ctx: &Ctx,
    io: &Io,
    delivery: &Delivery,
    slot: Option<OwnedSemaphorePermit>,
) -> Result<(), PublishError> {
    let publisher = &io.publisher;
    let ack = || io.acks.ack(delivery.delivery_tag);
    let props = &delivery.properties;
    observe_queue_wait(ctx, props);
    #[cfg(feature = "fault-injection")]
    if headers::get_str(props, "x-wxd-test-panic").is_some() {
        panic!("injected panic (fault-injection build, x-wxd-test-panic header)");
    }
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let parsed = job::parse(&delivery.data, message_id, &ctx.config);
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
            publish_waiting(ctx, io, JobCopy::Dead, || {
                publisher.dead_letter(data, props, invalid.reason, &invalid.detail)
            })
            .await?;
            ctx.metrics
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
            publish_final(ctx, io, delivery, &o).await
        }
        Ok(Parsed::Batch(batch)) => {
            let span = tracing::info_span!("batch", job_id = %batch.id, appid = %batch.appid);
            async {
                let id = batch.id.to_string();
                let job = || JobIdentity { id: Some(id.clone()), appid: Some(batch.appid.clone()), touser: None, msg_type: Some(batch.msg_type) };
                if let Some(o) = refuse_publisher(ctx, io, batch.account, job(), props) {
                    return publish_final(ctx, io, delivery, &o).await;
                }
                if let Err(m) = ctx.dispatcher.check_batch(&batch).await {
                    // One outcome for the whole batch: its template cannot work for anyone.
                    tracing::info!(reason = m.reason(), detail = %m.detail(), recipients = batch.recipients.len(), "batch rejected before expansion");
                    let mut o = Outcome::for_job(SendStatus::Rejected, job());
                    o.reason = Some(m.reason().into());
                    o.errmsg = Some(m.detail());
                    return publish_final(ctx, io, delivery, &o).await;
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
                if let Some(o) = refuse_publisher(ctx, io, job.account, identity, props) {
                    drop(slot);
                    return publish_final(ctx, io, delivery, &o).await;
                }
                let state = headers::retry_state(props);
                let not_before = headers::not_before_ms(props);
                let disposition = ctx.dispatcher.send_job(&job, state, not_before).await;
                drop(slot);
                match disposition {
                    Disposition::Early { left } => {
                        // Back early from a delay tier: park it again, unchanged, for the rest.
                        let data = &delivery.data;
                        publish_waiting(ctx, io, JobCopy::Delay, || {
                            publisher.defer(data, props.clone(), left)
                        })
                        .await?;
                        ack();
                        Ok(())
                    }
                    Disposition::Final(o) => {
                        tracing::info!(status = %o.status(), errcode = o.errcode, attempts = o.attempts, reason = o.reason.as_deref(), "job finished");
                        let latency = chrono::Utc::now().timestamp_millis() - state.first_seen_ms;
                        ctx.metrics
                            .outcome_latency_seconds
                            .observe(latency.max(0) as f64 / 1000.0);
                        if let Some(age) = publish_age_secs(props) {
                            ctx.metrics.publish_latency_seconds.observe(age);
                        }
                        publish_final(ctx, io, delivery, &o).await
                    }
                    Disposition::Defer { delay, reason, state } => {
                        tracing::debug!(reason = reason.as_str(), delay_ms = delay.as_millis() as u64, "job deferred");
                        let props = headers::with_retry_state(props, &state, reason.as_str());
                        let data = &delivery.data;
                        publish_waiting(ctx, io, JobCopy::Delay, || publisher.defer(data, props.clone(), delay)).await?;
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
    ctx: &Ctx,
    io: &Io,
    account: AccountId,
    job: JobIdentity,
    props: &lapin::BasicProperties,
) -> Option<Outcome> {
    let acct = &ctx.config.accounts[account.index()];
    let user = props.user_id().as_ref().map(|u| u.as_str());
    if acct.admits(user) || user == Some(io.publisher.own_user()) {
        return None;
    }
    let user = user.unwrap_or("(none)");
    tracing::warn!(user_id = user, appid = %acct.appid, "job refused: its publisher may not send as this account");
    ctx.metrics
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
    ctx: &Ctx,
    io: &Io,
    delivery: &Delivery,
    o: &Outcome,
) -> Result<(), PublishError> {
    publish_outcome_waiting(ctx, io, o).await?;
    // Only configured appids become label values: an invalid job may name anything.
    let account = o
        .appid
        .as_deref()
        .and_then(|a| Some((a, ctx.dispatcher.account_metrics(a)?)));
    match (account, o.send_status()) {
        (Some((_, handles)), Some(status)) => handles.job(status).inc(),
        _ => ctx
            .metrics
            .jobs_total
            .with_label_values(&[account.map_or("unknown", |(a, _)| a), o.status().as_str()])
            .inc(),
    }
    io.acks.ack(delivery.delivery_tag);
    Ok(())
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
fn observe_queue_wait(ctx: &Ctx, props: &lapin::BasicProperties) {
    let first = props
        .headers()
        .as_ref()
        .is_none_or(|t| !t.inner().contains_key(headers::FIRST_SEEN));
    if first && let Some(age) = publish_age_secs(props) {
        ctx.metrics.queue_wait_seconds.observe(age);
    }
}

/// Publishes an outcome; while the broker refuses it (a full outcomes queue with
/// `reject-publish` nacks, an unbound exchange returns), waits and tries again rather than
/// nacking the job: a requeued job would be sent to WeChat again, and would reach the
/// queue's delivery limit and be dead-lettered without an outcome. The job stays unacked
/// meanwhile, counted in `wxdispatch_outcomes_waiting`; it is given up (and redelivered) only
/// with its session, or when the drain timeout ends.
async fn publish_outcome_waiting(ctx: &Ctx, io: &Io, o: &Outcome) -> Result<(), PublishError> {
    let refused = |reason: &str| {
        ctx.metrics
            .outcomes_refused_total
            .with_label_values(&[reason])
            .inc()
    };
    let waiting = Waiting {
        gauge: &ctx.metrics.outcomes_waiting,
        what: "an outcome",
        to: &ctx.config.amqp.outcomes_exchange,
    };
    retry_refused(&io.publisher, refused, waiting, || io.publisher.outcome(o)).await
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
    ctx: &Ctx,
    io: &Io,
    copy: JobCopy,
    publish: F,
) -> Result<(), PublishError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    let (target, to) = match copy {
        JobCopy::Delay => ("delay", "a delay tier"),
        JobCopy::Dead => ("dead", ctx.config.amqp.dead_queue.as_str()),
    };
    let refused = |reason: &str| {
        ctx.metrics
            .copies_refused_total
            .with_label_values(&[target, reason])
            .inc()
    };
    let gauge = ctx.metrics.copies_waiting.with_label_values(&[target]);
    let waiting = Waiting {
        gauge: &gauge,
        what: "a job's copy",
        to,
    };
    retry_refused(&io.publisher, refused, waiting, publish).await
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
