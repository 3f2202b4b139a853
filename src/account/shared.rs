//! One gate's side of the shared mode (`WXD_REDIS_URL`): it leases slots of the account's
//! schedule and hands them to its sends, keeps the day's count and adds it to Redis in
//! batches, and gives back what it leased and did not use. The bookkeeping is in
//! [`super::lease`], the scripts in [`super::redis`]; what it costs and how far the count can
//! overshoot is in docs/OPERATIONS.md ("Scaling with Redis").
//!
//! Redis calls: one per lease (the lease also carries the count's addition), plus, from a
//! keeper task ticking every [`TICK`], one when sends are left uncounted for [`FLUSH_EVERY`]
//! or a lease has stood idle for [`IDLE`]. Near a daily quota, [`super::lease::flush_due`]
//! adds the count at once, down to every send.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::NaiveDate;

use super::lease::{self, GiveBack, Lease, Sizer};
use super::limiter::beijing_today;
use super::redis::{RedisLink, schedule_us};

/// How often the keeper looks at the gate.
const TICK: Duration = Duration::from_millis(100);
/// Sends counted here reach Redis within about this long, whatever else happens.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// A lease no send has taken from for this long gives its unused slots back.
const IDLE: Duration = Duration::from_millis(100);

/// A slot may be used this much later than the tolerance allows: the reply's way back and the
/// wake-up. Without it a lease starting a whole tolerance in the past would arrive with its
/// first slot already too old.
const REPLY_SLACK: Duration = Duration::from_millis(2);

/// The smallest number of replicas the count's batching is made safe for (see
/// [`lease::flush_due`]); `expected_replicas` raises it.
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
    /// Whether a keeper task is running: it runs while the gate holds slots or uncounted
    /// sends, and ends when there is nothing left to keep, so an account without traffic
    /// (thousands of a platform's authorizers) costs no task and no wake-ups.
    keeper: AtomicBool,
}

struct Book {
    lease: Option<Lease>,
    sizer: Sizer,
    /// Sends waiting for a slot right now.
    waiting: u32,
    last_take: Instant,
}

/// The day's count as this replica knows it.
struct Count {
    day: NaiveDate,
    /// Sent and counted here, not yet added in Redis.
    unflushed: u64,
    /// Being added right now.
    flushing: u64,
    /// The day's count in Redis as last seen (every replica's added sends).
    seen: u64,
    last_flush: Instant,
}

impl Count {
    fn roll(&mut self, today: NaiveDate) {
        if self.day != today {
            *self = Count {
                day: today,
                unflushed: 0,
                flushing: 0,
                seen: 0,
                last_flush: Instant::now(),
            };
        }
    }

    fn total(&self) -> u64 {
        self.seen + self.flushing + self.unflushed
    }

    /// Moves what is to be added into `flushing`: `(how many, for which day)`.
    fn start_flush(&mut self) -> (u64, NaiveDate) {
        let add = std::mem::take(&mut self.unflushed);
        self.flushing += add;
        self.last_flush = Instant::now();
        (add, self.day)
    }

    /// The addition of `add` for `day` is over: `total` is Redis' count after it, or `None`
    /// when the call failed (then the sends are added again later: if the failed call did
    /// reach Redis they are counted twice, which pauses early rather than late).
    fn finish_flush(&mut self, day: NaiveDate, add: u64, total: Option<u64>) {
        if day != self.day {
            return;
        }
        self.flushing = self.flushing.saturating_sub(add);
        match total {
            Some(n) => self.seen = self.seen.max(n),
            None => self.unflushed += add,
        }
    }
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
        Shared {
            link,
            id: id.to_string(),
            interval_us,
            tolerance_us,
            burst,
            late_ok: Duration::from_micros(tolerance_us.max(interval_us)) + REPLY_SLACK,
            replicas: REPLICAS_AT_LEAST.max(u64::from(expected_replicas)),
            book: Mutex::new(Book {
                lease: None,
                sizer: Sizer::new(now),
                waiting: 0,
                last_take: now,
            }),
            count: Mutex::new(Count {
                day: beijing_today(),
                unflushed: 0,
                flushing: 0,
                seen: 0,
                last_flush: now,
            }),
            refill: tokio::sync::Mutex::new(()),
            keeper: AtomicBool::new(false),
        }
    }

    /// Waits for this send's slot of the shared schedule. `false` when Redis cannot be
    /// reached: the caller paces on the local fallback instead.
    pub(super) async fn pace(self: &Arc<Self>) -> bool {
        let at = {
            let slot = {
                let mut b = self.book.lock().expect("lease lock");
                b.waiting += 1;
                Self::take(&mut b)
            };
            // Demand, for the lease's size: the sends that have no slot yet.
            let _waiting = Waiting(&self.book);
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
                        return false;
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
        let (add, day) = self.count.lock().expect("count lock").start_flush();
        let got = redis
            .lease(
                &self.id,
                &day.to_string(),
                self.interval_us,
                credit_us,
                slots,
                add,
            )
            .await;
        let received = Instant::now();
        match got {
            Ok(l) => {
                self.count
                    .lock()
                    .expect("count lock")
                    .finish_flush(day, add, Some(l.sent_today));
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
                    .finish_flush(day, add, None);
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
        self.start_keeper();
        due
    }

    /// Adds the uncounted sends to Redis now.
    pub(super) async fn flush(self: &Arc<Self>) {
        self.start_keeper();
        self.settle(None).await;
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

    /// One call that gives `back` back and adds the uncounted sends, if there is anything
    /// to do.
    async fn settle(&self, back: Option<GiveBack>) {
        let (add, day) = self.count.lock().expect("count lock").start_flush();
        if add == 0 && back.is_none() {
            return;
        }
        let Some(redis) = self.link.get().await else {
            // Unreachable: counted again once it is back; the slots are lost.
            self.count
                .lock()
                .expect("count lock")
                .finish_flush(day, add, None);
            return;
        };
        let done = redis.settle(&self.id, &day.to_string(), back, add).await;
        let total = done.as_ref().ok().and_then(|(_, total)| *total);
        self.count
            .lock()
            .expect("count lock")
            .finish_flush(day, add, total);
        if let Err(e) = done {
            self.redis_failed(&e).await;
        }
    }

    /// Starts the task that flushes the count and gives back idle leases, unless one runs. It
    /// ends when the gate is dropped or has nothing left to keep. Called after each change
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

    /// No slot the keeper could give back, no send to count, no count being added.
    fn nothing_to_keep(&self) -> bool {
        let now = Instant::now();
        let no_slots = {
            let b = self.book.lock().expect("lease lock");
            b.waiting == 0 && b.lease.as_ref().is_none_or(|l| l.next_slot(now).is_none())
        };
        let c = self.count.lock().expect("count lock");
        no_slots && c.unflushed == 0 && c.flushing == 0
    }

    /// One keeper tick.
    async fn keep(&self) {
        // A lease call under way flushes the count and replaces the lease anyway.
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
        let due = {
            let c = self.count.lock().expect("count lock");
            c.unflushed > 0 && now.saturating_duration_since(c.last_flush) >= FLUSH_EVERY
        };
        if due || back.is_some() {
            self.settle(back).await;
        }
    }
}
