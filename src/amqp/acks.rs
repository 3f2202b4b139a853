//! Batched acknowledgements for one consuming channel.
//!
//! Acking every job with its own `basic.ack` costs a frame, a wake-up of lapin's I/O thread and
//! a socket write per job. Under load, many jobs finish while one ack is being written, so a
//! single `basic.ack` with `multiple = true` can settle all of them. `multiple` acks *every*
//! unacked delivery up to its tag, though, so it may only cover a contiguous run of finished
//! deliveries: never one whose outcome is still unconfirmed. [`Acks`] tracks which deliveries
//! are still running and acks the longest finished prefix.
//!
//! A job that finished behind a slow one (a send stuck in a timeout, a long inline backoff)
//! waits at most [`STRAGGLER_WAIT`] and is then acked on its own, so one slow job can never
//! hold the prefetch window shut.
//!
//! The ack rule does not change: a delivery is handed to [`Acks::ack`] only after everything
//! it produced was confirmed by the broker. Batching only delays the ack frame, which is safe
//! (a crash in between redelivers the job, and WeChat and the outcome consumers deduplicate it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::BasicAckOptions;
use lapin::types::DeliveryTag;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// How long a finished job may wait for the jobs before it to finish before it is acked on its
/// own. Short next to any send, long next to the spread of a batch of concurrent sends.
pub(crate) const STRAGGLER_WAIT: Duration = Duration::from_millis(50);

/// The ack side of a consuming channel: which deliveries run, which wait for their ack.
pub struct Acks {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    channel: Channel,
    state: Mutex<Window>,
    wake: Notify,
    closing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Acks {
    /// Starts the background flusher for `channel` (the channel the deliveries came on: a
    /// delivery tag means nothing on any other).
    pub(crate) fn start(channel: Channel, metrics: Arc<Metrics>) -> Acks {
        let shared = Arc::new(Shared {
            channel,
            state: Mutex::new(Window::default()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            metrics,
        });
        let flusher = tokio::spawn(flush_loop(shared.clone()));
        Acks {
            shared,
            flusher: Mutex::new(Some(flusher)),
        }
    }

    /// Records a delivery as running. Call it before the job can finish, in delivery order.
    pub(crate) fn received(&self, tag: DeliveryTag) {
        self.shared.lock().received(tag);
    }

    /// The job's results are confirmed: ack it (soon, possibly together with others).
    pub(crate) fn ack(&self, tag: DeliveryTag) {
        self.shared.lock().finished(tag, Instant::now());
        self.shared.wake.notify_one();
    }

    /// The job was settled some other way (a nack already sent and awaited): it no longer
    /// holds back the ack of the jobs after it.
    pub(crate) fn settled(&self, tag: DeliveryTag) {
        self.shared.lock().settled(tag);
        self.shared.wake.notify_one();
    }

    /// Stops the flusher and sends every ack still owed, including those behind a job that
    /// never finished (it is left unacked and the broker redelivers it).
    pub(crate) async fn close(&self) {
        let flusher = self.flusher.lock().expect("not poisoned").take();
        if let Some(mut f) = flusher {
            // Let a round that is writing acks finish (aborting it could drop acks it had
            // taken); a dead connection fails those writes quickly, a hung one is cut off.
            self.shared.closing.store(true, Ordering::Release);
            self.shared.wake.notify_one();
            if tokio::time::timeout(Duration::from_secs(2), &mut f)
                .await
                .is_err()
            {
                f.abort();
            }
        }
        self.shared.flush(None).await;
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        if let Some(f) = self.flusher.get_mut().expect("not poisoned").take() {
            f.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.state
            .lock()
            .expect("ack window lock is never poisoned")
    }

    /// Sends what the window says is due; `now = None` sends everything owed.
    async fn flush(&self, now: Option<Instant>) {
        let plan = self.lock().plan(now, STRAGGLER_WAIT);
        if let Some(tag) = plan.multiple {
            self.send(tag, true).await;
        }
        for tag in plan.singles {
            self.send(tag, false).await;
        }
    }

    async fn send(&self, tag: DeliveryTag, multiple: bool) {
        let label = if multiple { "true" } else { "false" };
        self.metrics
            .amqp_acks_total
            .with_label_values(&[label])
            .inc();
        if let Err(e) = self
            .channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
        {
            tracing::warn!(error = %e, tag, multiple, "ack failed; the jobs will be redelivered and deduplicated by id");
        }
    }
}

/// Waits for finished jobs and acks them. While one ack is being written, more jobs finish and
/// the next round acks them all at once: batching comes from load, never from a timer.
async fn flush_loop(shared: Arc<Shared>) {
    loop {
        let straggler_due = shared.lock().next_straggler_due(STRAGGLER_WAIT);
        match straggler_due {
            Some(due) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            None => shared.wake.notified().await,
        }
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        shared.flush(Some(Instant::now())).await;
    }
}

/// The bookkeeping, free of I/O so it can be tested on its own.
#[derive(Debug, Default)]
struct Window {
    /// Deliveries received and not yet finished or settled.
    running: BTreeSet<DeliveryTag>,
    /// Finished deliveries whose ack was not sent yet, with when they finished.
    owed: BTreeMap<DeliveryTag, Instant>,
}

/// The acks to send now.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// One `basic.ack(multiple)` up to this tag: every delivery at or below it is finished.
    multiple: Option<DeliveryTag>,
    /// Single acks for stragglers: finished, but behind a delivery still running.
    singles: Vec<DeliveryTag>,
}

impl Window {
    fn received(&mut self, tag: DeliveryTag) {
        self.running.insert(tag);
    }

    fn finished(&mut self, tag: DeliveryTag, at: Instant) {
        if self.running.remove(&tag) {
            self.owed.insert(tag, at);
        }
    }

    fn settled(&mut self, tag: DeliveryTag) {
        self.running.remove(&tag);
    }

    /// What to ack now. The multiple ack's tag is always an owed delivery (RabbitMQ rejects a
    /// tag it does not hold unacked), and it covers no running one. `now = None` also acks
    /// every straggler, whatever its age.
    fn plan(&mut self, now: Option<Instant>, wait: Duration) -> Plan {
        let mut plan = Plan::default();
        let covered = match self.running.first() {
            Some(&oldest_running) => self.owed.range(..oldest_running).next_back(),
            None => self.owed.last_key_value(),
        }
        .map(|(&tag, _)| tag);
        if let Some(tag) = covered {
            self.owed = self.owed.split_off(&(tag + 1));
            plan.multiple = Some(tag);
        }
        self.owed.retain(|&tag, &mut at| {
            let due = now.is_none_or(|now| now.saturating_duration_since(at) >= wait);
            if due {
                plan.singles.push(tag);
            }
            !due
        });
        plan
    }

    /// When the oldest straggler becomes due, if there is one.
    fn next_straggler_due(&self, wait: Duration) -> Option<Instant> {
        self.owed.values().min().map(|&at| at + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = STRAGGLER_WAIT;

    fn window(received: impl IntoIterator<Item = u64>) -> Window {
        let mut w = Window::default();
        for t in received {
            w.received(t);
        }
        w
    }

    #[test]
    fn a_finished_prefix_is_one_multiple_ack() {
        let t0 = Instant::now();
        let mut w = window(1..=5);
        for t in [3, 1, 2] {
            w.finished(t, t0);
        }
        let plan = w.plan(Some(t0), WAIT);
        assert_eq!(
            plan,
            Plan {
                multiple: Some(3),
                singles: vec![]
            }
        );
        // Nothing is acked twice.
        assert_eq!(w.plan(Some(t0), WAIT), Plan::default());
    }

    #[test]
    fn a_multiple_ack_never_covers_a_running_job() {
        let t0 = Instant::now();
        let mut w = window(1..=5);
        for t in [1, 2, 4, 5] {
            w.finished(t, t0);
        }
        let plan = w.plan(Some(t0), WAIT);
        assert_eq!(plan.multiple, Some(2), "3 still runs, so 4 and 5 wait");
        assert!(plan.singles.is_empty(), "they are not stragglers yet");
        w.finished(3, t0);
        assert_eq!(w.plan(Some(t0), WAIT).multiple, Some(5));
    }

    #[test]
    fn stragglers_behind_a_slow_job_are_acked_alone_after_the_wait() {
        let t0 = Instant::now();
        let mut w = window(1..=4);
        w.finished(2, t0);
        w.finished(4, t0 + Duration::from_millis(30));
        assert_eq!(w.next_straggler_due(WAIT), Some(t0 + WAIT));
        assert_eq!(w.plan(Some(t0 + WAIT), WAIT).singles, vec![2]);
        assert_eq!(w.plan(Some(t0 + 2 * WAIT), WAIT).singles, vec![4]);
        // The slow job finishes: its own tag is the multiple ack, and 2 and 4 are not repeated.
        w.finished(1, t0);
        w.finished(3, t0);
        assert_eq!(
            w.plan(Some(t0 + 2 * WAIT), WAIT),
            Plan {
                multiple: Some(3),
                singles: vec![]
            }
        );
    }

    /// A window over `tags` in which `done` have finished at `t0`.
    fn window_with_finished(
        tags: std::ops::RangeInclusive<u64>,
        done: &[u64],
        t0: Instant,
    ) -> Window {
        let mut w = window(tags);
        for &tag in done {
            w.finished(tag, t0);
        }
        w
    }

    #[test]
    fn a_nacked_job_unblocks_the_ones_after_it_but_is_never_the_ack_tag() {
        let t0 = Instant::now();
        let mut w = window_with_finished(1..=3, &[2, 3], t0);
        w.settled(1);
        assert_eq!(w.plan(Some(t0), WAIT).multiple, Some(3));
        let mut w = window(1..=3);
        w.finished(1, t0);
        w.settled(3);
        w.finished(2, t0);
        assert_eq!(
            w.plan(Some(t0), WAIT).multiple,
            Some(2),
            "3 was nacked: the broker no longer holds it"
        );
    }

    #[test]
    fn closing_acks_every_owed_job_and_leaves_unfinished_ones_alone() {
        let t0 = Instant::now();
        let mut w = window_with_finished(1..=4, &[2, 4], t0);
        let plan = w.plan(None, WAIT);
        assert_eq!(plan.multiple, None);
        assert_eq!(plan.singles, vec![2, 4]);
        assert!(w.owed.is_empty());
        assert_eq!(w.running.iter().copied().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn a_tag_that_was_never_received_is_ignored() {
        let mut w = window([1]);
        w.finished(7, Instant::now());
        assert_eq!(w.plan(None, WAIT), Plan::default());
    }
}
