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

mod delivery;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::amqp::{self, Acks, Publisher, topology};
use crate::config::{Config, ConfigError};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Liveness and readiness, shared with the HTTP probes.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    fn set_ready(&self, metrics: &Metrics, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
        metrics.ready.set(i64::from(v));
    }
}

/// The worker's parts every job task shares: settings, metrics, the dispatcher, health.
pub struct Worker {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub dispatcher: Arc<Dispatcher>,
    pub health: Arc<Health>,
    /// Names this worker's AMQP connections (`wxdispatch-<role>-<instance>`), so operators
    /// and tests can tell replicas apart in the broker.
    pub instance: String,
}

impl Worker {
    pub(crate) fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Worker>, ConfigError> {
        let dispatcher = Arc::new(Dispatcher::new(&config, metrics.clone())?);
        Ok(Arc::new(Worker {
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
struct SessionChannels {
    publisher: Publisher,
    acks: Acks,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Runs the worker, one session after another, until `shutdown` is triggered and in-flight
/// jobs are drained.
pub(crate) async fn supervise(worker: Arc<Worker>, shutdown: Shutdown) -> anyhow::Result<()> {
    for acct in worker.dispatcher.accounts() {
        tokio::spawn(acct.tokens.clone().keep_fresh(shutdown.clone()));
    }
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        if !first {
            worker.metrics.amqp_reconnects_total.inc();
        }
        first = false;
        let started = Instant::now();
        match session(&worker, &shutdown).await {
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
                    worker.health.set_ready(&worker.metrics, false);
                    return Err(e);
                }
                tracing::warn!(error = %e, "AMQP session failed; reconnecting");
            }
        }
        worker.health.set_ready(&worker.metrics, false);
        worker.metrics.amqp_connected.set(0);
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
async fn session(worker: &Arc<Worker>, shutdown: &Shutdown) -> anyhow::Result<SessionEnd> {
    let mut session = Session::open(worker).await?;
    let (end, tasks) = session.consume(worker, shutdown).await;
    session.close(worker, &end, tasks).await;
    Ok(end)
}

/// The connections, channels and consumer of one session. The publisher and the consumer
/// have connections of their own, so a broker that blocks publishing (a resource alarm) does
/// not also stall the acks.
struct Session {
    pub_conn: lapin::Connection,
    con_conn: lapin::Connection,
    ch: lapin::Channel,
    channels: Arc<SessionChannels>,
    consumer: lapin::Consumer,
}

impl Session {
    /// Connects, checks or declares the topology, and starts consuming.
    async fn open(worker: &Arc<Worker>) -> anyhow::Result<Session> {
        let cfg = &worker.config;
        let host = &worker.instance;
        let pub_conn = amqp::connect(&cfg.amqp.url, &format!("wxdispatch-publish-{host}")).await?;
        let con_conn = amqp::connect(&cfg.amqp.url, &format!("wxdispatch-consume-{host}")).await?;
        let publisher = Publisher::new(&pub_conn, cfg).await?;
        topology::ensure(&pub_conn, publisher.channel(), cfg).await?;
        let ch = con_conn.create_channel().await?;
        ch.basic_qos(cfg.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let channels = Arc::new(SessionChannels {
            publisher,
            acks: Acks::start(ch.clone(), worker.metrics.clone()),
        });
        let consumer = ch
            .basic_consume(
                cfg.amqp.jobs_queue.as_str().into(),
                format!("wxdispatch-{host}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        worker.metrics.amqp_connected.set(1);
        worker.health.set_ready(&worker.metrics, true);
        tracing::info!(queue = %cfg.amqp.jobs_queue, prefetch = cfg.amqp.prefetch, concurrency = cfg.limits.concurrency, "consuming");
        Ok(Session {
            pub_conn,
            con_conn,
            ch,
            channels,
            consumer,
        })
    }

    /// Takes deliveries while a send permit is free and the broker accepts our publishes, each in a
    /// task of its own, until shutdown or a lost connection. Returns why it ended and the
    /// tasks still running.
    async fn consume(
        &mut self,
        worker: &Arc<Worker>,
        shutdown: &Shutdown,
    ) -> (SessionEnd, JoinSet<()>) {
        let mut pub_events = self.pub_conn.events_listener();
        let mut con_events = self.con_conn.events_listener();
        let send_permits = Arc::new(Semaphore::new(worker.config.limits.concurrency));
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
            worker.health.set_ready(&worker.metrics, !blocked);
            tokio::select! {
                _ = shutdown.wait() => break SessionEnd::Shutdown,
                p = send_permits.clone().acquire_owned(), if permit.is_none() && !blocked => {
                    permit = Some(p.expect("semaphore never closed"));
                }
                d = self.consumer.next(), if permit.is_some() && !blocked => match d {
                    Some(Ok(delivery)) => {
                        self.channels.acks.received(delivery.delivery_tag);
                        let worker = worker.clone();
                        let channels = self.channels.clone();
                        let send_permit = permit.take();
                        // Boxed: the job's future is large, and tokio moves a task's future
                        // into and out of its cell by value (docs/BENCHMARKS.md).
                        tasks.spawn(Box::pin(async move {
                            delivery::handle(worker, channels, delivery, send_permit).await;
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
    async fn close(self, worker: &Worker, end: &SessionEnd, mut tasks: JoinSet<()>) {
        worker.health.set_ready(&worker.metrics, false);
        // Stop new deliveries; what was prefetched but not started is requeued when the
        // channel closes.
        let _ = self
            .ch
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await;
        let drain = match end {
            SessionEnd::Shutdown => worker.config.drain_timeout,
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
        let _ = tokio::time::timeout(bounded * 2, self.channels.acks.close()).await;
        let _ = tokio::time::timeout(bounded, self.ch.close(200, "bye".into())).await;
        let _ = tokio::time::timeout(bounded, self.con_conn.close(200, "bye".into())).await;
        let _ = tokio::time::timeout(
            bounded,
            self.channels.publisher.channel().close(200, "bye".into()),
        )
        .await;
        let _ = tokio::time::timeout(bounded, self.pub_conn.close(200, "bye".into())).await;
        worker.metrics.amqp_connected.set(0);
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("pid{}", std::process::id()))
}
