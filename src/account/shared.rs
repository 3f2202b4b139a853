//! One gate's side of the shared mode (`WXD_REDIS_URL`): it leases slots of the account's
//! schedule and hands them to its sends, keeps the day's count and adds it to Redis in
//! batches, and gives back what it leased and did not use. The bookkeeping is in
//! [`super::lease`], the scripts in [`super::redis`]; what it costs and how far the count can
//! overshoot is in docs/OPERATIONS.md ("Scaling with Redis").
//!
//! A quiet account leases nothing: its sends go at once within [`Quiet`]'s share of the rate,
//! and their slots are added in Redis with the count, for the account's next lease to place.
//!
//! Redis calls: one per lease (the lease also carries the count's addition); the count of
//! every gate goes in one call per [`FLUSH_EVERY`](super::batch::FLUSH_EVERY) ([`super::batch`]); a keeper task ticking
//! every [`TICK`] gives back a lease that has stood idle for [`IDLE`]. Near a daily quota,
//! [`super::lease::flush_due`] adds the count at once, down to every send.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::batch::Batch;
use super::count::{Count, Flush};
use super::lease::{self, GiveBack, Lease, Quiet, Sizer};
use super::limiter::beijing_today;
use super::link::RedisLink;
use super::redis::{Settlement, Tally, schedule_us};

/// How often the keeper looks at the gate.
const TICK: Duration = Duration::from_millis(100);
/// A lease no send has taken from for this long gives its unused slots back.
const IDLE: Duration = Duration::from_millis(100);

/// A slot may be used this much later than the tolerance allows: the reply's way back and the
/// wake-up. Without it a lease starting a whole tolerance in the past would arrive with its
/// first slot already too old.
const REPLY_SLACK: Duration = Duration::from_millis(2);

/// The smallest number of replicas the count's batching and the quiet lane are made safe for
/// (see [`lease::flush_due`] and [`Quiet`]); `expected_replicas` raises it.
const REPLICAS_AT_LEAST: u64 = 32;

pub(super) struct Shared {
    link: Arc<RedisLink>,
    /// The gate's id: the appid, or `<appid>:miniprogram_subscribe` for that count.
    id: String,
    interval_us: u64,
    tolerance_us: u64,
    burst: u32,
    late_ok: Duration,
    replicas: u64,
    book: Mutex<Book>,
    count: Mutex<Count>,
    /// One lease call at a time; the sends that wait meanwhile take from the new lease.
    refill: tokio::sync::Mutex<()>,
    /// Whether a keeper task is running: it runs while the gate holds leased slots, and ends
    /// when there is nothing left to give back, so an account without traffic (thousands of
    /// a platform's authorizers) costs no task and no wake-ups.
    keeper: AtomicBool,
    /// Whether the gate waits in its link's next [`Batch`].
    queued: AtomicBool,
}

/// How a send was paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Paced {
    /// On a slot leased from the shared schedule.
    Leased,
    /// At once, within the quiet account's share of the rate ([`Quiet`]).
    Unleased,
    /// Not at all: Redis cannot be reached, the caller paces on its local fallback.
    Unreachable,
}

struct Book {
    lease: Option<Lease>,
    sizer: Sizer,
    quiet: Quiet,
    /// Sends waiting for a slot right now.
    waiting: u32,
    last_take: Instant,
}

/// Counts a send waiting for a slot for as long as it waits, even if its future is dropped.
struct Waiting<'a>(&'a Mutex<Book>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut b = self.0.lock().expect("lease lock");
        b.waiting = b.waiting.saturating_sub(1);
    }
}

impl Shared {
    pub(super) fn new(
        link: Arc<RedisLink>,
        id: &str,
        rate_per_sec: u32,
        burst: u32,
        expected_replicas: u32,
    ) -> Shared {
        let (interval_us, tolerance_us) = schedule_us(rate_per_sec, burst);
        let now = Instant::now();
        let replicas = REPLICAS_AT_LEAST.max(u64::from(expected_replicas));
        Shared {
            link,
            id: id.to_string(),
            interval_us,
            tolerance_us,
            burst,
            late_ok: Duration::from_micros(tolerance_us.max(interval_us)) + REPLY_SLACK,
            replicas,
            book: Mutex::new(Book {
                lease: None,
                sizer: Sizer::new(now),
                quiet: Quiet::new(interval_us, replicas),
                waiting: 0,
                last_take: now,
            }),
            count: Mutex::new(Count::new(beijing_today())),
            refill: tokio::sync::Mutex::new(()),
            keeper: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        }
    }

    /// Waits for this send's slot of the shared schedule, or lets it go unleased when the
    /// account is quiet.
    pub(super) async fn pace(self: &Arc<Self>) -> Paced {
        let at = {
            let (slot, unleased) = {
                let mut b = self.book.lock().expect("lease lock");
                b.waiting += 1;
                match Self::take(&mut b) {
                    Some(at) => (Some(at), false),
                    None => (None, Self::take_unleased(&mut b)),
                }
            };
            // Demand, for the lease's size: the sends that have no slot yet.
            let _waiting = Waiting(&self.book);
            if unleased {
                self.count.lock().expect("count lock").unleased += 1;
                self.queue_count();
                return Paced::Unleased;
            }
            match slot {
                Some(at) => at,
                None => loop {
                    let _refill = self.refill.lock().await;
                    if let Some(at) = Self::take(&mut self.book.lock().expect("lease lock")) {
                        break at;
                    }
                    // Boxed: one Redis call per lease, and its future would otherwise be part
                    // of every job's future, copied per job.
                    if !Box::pin(self.refill()).await {
                        // Counted in the recent rate, so that a busy account paced on the
                        // fallback does not also take the quiet lane.
                        let mut b = self.book.lock().expect("lease lock");
                        b.sizer.note(Instant::now());
                        return Paced::Unreachable;
                    }
                    if let Some(at) = Self::take(&mut self.book.lock().expect("lease lock")) {
                        break at;
                    }
                },
            }
        };
        // After the lease changed, so a keeper that is just ending sees it (see start_keeper).
        self.start_keeper();
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        Paced::Leased
    }

    /// Whether Redis answered the last call made for any gate.
    pub(super) fn reachable(&self) -> bool {
        self.link.reachable()
    }

    /// Whether this send may go without a lease ([`Quiet`]).
    fn take_unleased(b: &mut Book) -> bool {
        let now = Instant::now();
        let recent = b.sizer.rate(now);
        if !b.quiet.take(now, recent) {
            return false;
        }
        b.sizer.note(now);
        true
    }

    fn take(b: &mut Book) -> Option<Instant> {
        let now = Instant::now();
        let at = b.lease.as_mut()?.take(now)?;
        b.sizer.note(now);
        b.last_take = now;
        Some(at)
    }

    /// Leases the next slots (and adds the uncounted sends on the way). `false` when Redis
    /// cannot be reached.
    async fn refill(&self) -> bool {
        let Some(redis) = self.link.get().await else {
            return false;
        };
        let (slots, credit_us) = {
            let mut b = self.book.lock().expect("lease lock");
            let waiting = b.waiting;
            let slots = b
                .sizer
                .size(Instant::now(), waiting, self.burst, self.late_ok);
            // Burst credit (slots in the past) only for the sends waiting now, which take
            // them at once; the rest of the lease lies ahead.
            let credit = u64::from(waiting.clamp(1, slots)) * self.interval_us;
            (slots, credit.min(self.tolerance_us))
        };
        let flush = self.count.lock().expect("count lock").start_flush();
        let got = redis
            .lease(&self.id, self.interval_us, credit_us, slots, flush)
            .await;
        let received = Instant::now();
        match got {
            Ok(l) => {
                self.count.lock().expect("count lock").finish_flush(
                    flush,
                    true,
                    Some(l.sent_today),
                );
                self.book.lock().expect("lease lock").lease = Some(Lease::new(
                    received,
                    l.first_offset_us,
                    self.interval_us,
                    slots,
                    self.late_ok,
                    l.end_us,
                ));
                true
            }
            Err(e) => {
                self.count
                    .lock()
                    .expect("count lock")
                    .finish_flush(flush, false, None);
                self.redis_failed(&e).await;
                false
            }
        }
    }

    async fn redis_failed(&self, e: &redis::RedisError) {
        tracing::warn!(appid = %self.id, error = %e,
            "shared rate limiter failed; falling back to the local rate");
        self.link.failed().await;
    }

    /// The day's count as far as this replica knows: Redis' last answer plus its own sends
    /// not yet added there.
    pub(super) fn sent_today(&self) -> u64 {
        let mut c = self.count.lock().expect("count lock");
        c.roll(beijing_today());
        c.total()
    }

    /// Counts one successful send; says whether the count must be added to Redis now
    /// ([`lease::flush_due`]), given the daily `quota` and the sends in flight (`reserved`).
    pub(super) fn count_one(
        self: &Arc<Self>,
        quota: Option<u64>,
        reserved: u64,
        local: u64,
    ) -> bool {
        let due = {
            let mut c = self.count.lock().expect("count lock");
            c.roll(beijing_today());
            c.unflushed += 1;
            let today = c.total().max(local);
            let left = quota.map(|q| q.saturating_sub(today + reserved));
            lease::flush_due(c.unflushed, left, self.replicas)
        };
        if !due {
            self.queue_count();
        }
        due
    }

    /// Adds the uncounted sends to Redis now.
    pub(super) async fn flush(self: &Arc<Self>) {
        self.settle(None).await;
        if self.count.lock().expect("count lock").pending() {
            self.queue_count();
        }
    }

    /// Puts the gate in its link's next batch, unless it is in it.
    fn queue_count(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            Batch::queue(&self.link, self.clone());
        }
    }

    /// Takes what the next batch adds for this gate, if anything.
    pub(super) fn start_batch(&self) -> Option<(Flush, Tally)> {
        // Before taking, so a send counted after this is queued for the next batch.
        self.queued.store(false, Ordering::SeqCst);
        let mut c = self.count.lock().expect("count lock");
        c.roll(beijing_today());
        if !c.pending() {
            return None;
        }
        // Redis' count not seen yet today: its key may be new.
        let new_day = c.seen == 0;
        let flush = c.start_flush();
        Some((
            flush,
            Tally {
                id: self.id.clone(),
                day: flush.day,
                add: flush.add,
                new_day,
                unleased: flush.unleased,
            },
        ))
    }

    /// The batch's call is over (`reached`: it succeeded). What it failed to add goes in the
    /// next batch.
    pub(super) fn finish_batch(self: &Arc<Self>, flush: Flush, total: Option<u64>, reached: bool) {
        self.count
            .lock()
            .expect("count lock")
            .finish_flush(flush, reached, total);
        if !reached {
            self.queue_count();
        }
    }

    /// Gives back what the lease holds and adds every uncounted send: at shutdown.
    pub(super) async fn close(&self) {
        let _refill = self.refill.lock().await;
        let back = self
            .book
            .lock()
            .expect("lease lock")
            .lease
            .as_mut()
            .and_then(Lease::give_back);
        self.settle(back).await;
    }

    /// One call that gives `back` back and adds the uncounted sends and unleased slots, if
    /// there is anything to do.
    async fn settle(&self, back: Option<GiveBack>) {
        let flush = self.count.lock().expect("count lock").start_flush();
        if flush.add == 0 && flush.unleased == 0 && back.is_none() {
            return;
        }
        let Some(redis) = self.link.get().await else {
            // Unreachable: counted again once it is back; the slots are lost.
            self.count
                .lock()
                .expect("count lock")
                .finish_flush(flush, false, None);
            return;
        };
        let done = redis
            .settle(&Settlement {
                id: self.id.clone(),
                day: flush.day,
                back,
                add: flush.add,
                unleased: flush.unleased,
            })
            .await;
        let total = done.as_ref().ok().and_then(|d| d.sent_today);
        self.count
            .lock()
            .expect("count lock")
            .finish_flush(flush, done.is_ok(), total);
        if let Err(e) = done {
            self.redis_failed(&e).await;
        }
    }

    /// Starts the task that gives back idle leases, unless one runs. It ends when the gate is
    /// dropped or has nothing left to keep. Called after each change
    /// that gives it something to keep: a keeper that is ending clears the flag and then looks
    /// again, so either it sees the change or the change's caller sees the flag cleared and
    /// starts a new one.
    fn start_keeper(self: &Arc<Self>) {
        if self.keeper.swap(true, Ordering::SeqCst) {
            return;
        }
        let me: Weak<Shared> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { break };
                me.keep().await;
                if me.nothing_to_keep() {
                    me.keeper.store(false, Ordering::SeqCst);
                    if me.nothing_to_keep() || me.keeper.swap(true, Ordering::SeqCst) {
                        break;
                    }
                }
            }
        });
    }

    /// No slot the keeper could give back and no send waiting for one.
    fn nothing_to_keep(&self) -> bool {
        let now = Instant::now();
        let b = self.book.lock().expect("lease lock");
        b.waiting == 0 && b.lease.as_ref().is_none_or(|l| l.next_slot(now).is_none())
    }

    /// One keeper tick: an idle lease's slots go back.
    async fn keep(&self) {
        // A lease call under way replaces the lease anyway.
        let Ok(_refill) = self.refill.try_lock() else {
            return;
        };
        let now = Instant::now();
        let back = {
            let mut b = self.book.lock().expect("lease lock");
            let idle = now.saturating_duration_since(b.last_take) >= IDLE;
            match b.lease.as_mut() {
                // Slots far ahead are kept: a send will come for them, and once another
                // replica has leased after them they could not go back anyway.
                Some(l) if idle && l.next_slot(now).is_some_and(|at| at <= now + IDLE) => {
                    l.give_back()
                }
                _ => None,
            }
        };
        if back.is_some() {
            self.settle(back).await;
        }
    }
}
