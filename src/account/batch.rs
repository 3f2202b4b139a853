//! The shared gates' counts, added to Redis together: every [`FLUSH_EVERY`], one pipeline
//! carries the sends and unleased slots of every gate that has any
//! ([`super::redis::SharedLimiter::tally`]).
//!
//! A platform's thousands of quiet authorizers each send a job every few seconds. Adding each
//! one's count on its own took one Redis call per send, and a task per gate to time it; one
//! task per Redis link and one call per tick cost the same whether one gate or ten thousand
//! have something to add.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::link::RedisLink;
use super::redis::Tally;
use super::shared::Shared;

/// Sends counted by a replica reach Redis within about this long, whatever else happens.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// At most this many gates per call, so that one pipeline's replies stay small.
const PER_CALL: usize = 500;

/// The gates waiting for the next batch. Held strongly: a gate whose account is dropped
/// meanwhile (an authorizer that unauthorized) still has its last sends counted.
#[derive(Default)]
pub(super) struct Batch {
    queued: Mutex<Vec<Arc<Shared>>>,
    /// Whether the task that sends the batches runs: it ends when a tick finds none queued.
    running: AtomicBool,
}

impl Batch {
    /// Queues a gate (which makes sure it is queued once) for the next batch.
    pub(super) fn queue(link: &Arc<RedisLink>, gate: Arc<Shared>) {
        link.batch().queued.lock().expect("batch lock").push(gate);
        if !link.batch().running.swap(true, Ordering::SeqCst) {
            tokio::spawn(run(Arc::downgrade(link)));
        }
    }

    fn take(&self) -> Vec<Arc<Shared>> {
        std::mem::take(&mut *self.queued.lock().expect("batch lock"))
    }
}

/// Sends a batch every tick while gates are queued. A task that is ending clears `running`
/// and then looks again, so a gate queued meanwhile is either seen or starts a new task.
async fn run(link: Weak<RedisLink>) {
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let Some(link) = link.upgrade() else { return };
        let gates = link.batch().take();
        if gates.is_empty() {
            link.batch().running.store(false, Ordering::SeqCst);
            let empty = link.batch().queued.lock().expect("batch lock").is_empty();
            if empty || link.batch().running.swap(true, Ordering::SeqCst) {
                return;
            }
            continue;
        }
        for chunk in gates.chunks(PER_CALL) {
            flush(&link, chunk).await;
        }
    }
}

/// One call for `gates`. A gate whose count could not be added queues itself again.
async fn flush(link: &Arc<RedisLink>, gates: &[Arc<Shared>]) {
    let mut taken = Vec::with_capacity(gates.len());
    let mut calls: Vec<Tally> = Vec::with_capacity(gates.len());
    for g in gates {
        if let Some((flush, call)) = g.start_batch() {
            taken.push((g, flush));
            calls.push(call);
        }
    }
    if calls.is_empty() {
        return;
    }
    let answers = match link.get().await {
        Some(redis) => match redis.tally(&calls).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, gates = calls.len(),
                    "adding the shared counts failed; they are added again later");
                link.failed().await;
                None
            }
        },
        None => None,
    };
    for (i, (g, flush)) in taken.into_iter().enumerate() {
        let total = answers.as_ref().and_then(|a| a[i]);
        g.finish_batch(flush, total, answers.is_some());
    }
}
