//! Leasing slots of an account's shared schedule, and batching its day count: the pure
//! bookkeeping behind the shared mode ([`super::shared`] does the Redis calls).
//!
//! In the shared mode (`WXD_REDIS_URL`) an account's sends follow one GCRA schedule kept in
//! Redis: one slot every `1 / rate`, of which at most the burst tolerance may lie in the past.
//! Asking Redis for one slot per send made every send a round trip. Instead a replica takes a
//! batch of consecutive slots in one script call (a [`Lease`]), hands them to its sends by
//! itself, and gives back the slots it did not use while nobody has reserved after them, so
//! that every slot of the schedule is still used at most once and N replicas together hold
//! the rate exactly as with one call per send.
//!
//! How many slots ([`Sizer`]): the sends waiting right now, or what this replica's recent rate
//! will take while the lease's slots are still usable, whichever is more; at most the burst,
//! at least one. Only the sends waiting now may take the schedule's burst credit (slots in the
//! past): the rest of the lease lies ahead, at the account's full rate, where this replica's
//! own (smaller) rate would otherwise find its slots already too old. A quiet account's first
//! send therefore leases one slot that is due now, and goes at once, as before.
//!
//! A slot is used at its time or later, but never later than the tolerance (plus 2 ms for
//! the reply's way back) after it ([`Lease::take`] skips older ones): every send then lies
//! that close to its own slot, so any window sees at most `rate × (window + 2 ms) + burst`
//! sends, the bound of one call per send (whose sends also go a reply's trip after their
//! slot).
//!
//! A quiet account takes no lease at all ([`Quiet`]): its sends go at once, up to the
//! account's rate divided by the bound on replicas, and are added to the schedule later.
//!
//! The day's count is kept locally and added to Redis in one `INCRBY` now and then. What has
//! not been added yet is bounded by [`flush_due`]: far from the quota, one addition per
//! interval; near it, the count still left before the quota split among a bound on the
//! replicas, down to one send per addition.

use std::time::{Duration, Instant};

/// The recent send rate is measured over windows of this length.
const WINDOW: Duration = Duration::from_millis(250);

/// Slots this replica holds of the account's schedule, spent locally.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    /// The first slot's time on this process's clock.
    first: Instant,
    /// Between two slots, in µs (as Redis computes them).
    interval_us: u64,
    granted: u32,
    /// Slots handed out or skipped, from the first.
    used: u32,
    /// How late a slot may still be used.
    late_ok: Duration,
    /// The schedule's end in Redis (µs on Redis' clock) right after this lease: unused slots
    /// can be given back only while it is still there, i.e. while they are the schedule's last.
    end_us: u64,
}

/// Slots to give back to the schedule: only if it still ends at `end_us`, it is moved back
/// by `slots × interval_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveBack {
    pub end_us: u64,
    pub slots: u32,
    pub interval_us: u64,
}

impl GiveBack {
    /// How far back the schedule's end moves, in µs.
    pub fn span_us(&self) -> u64 {
        u64::from(self.slots) * self.interval_us
    }
}

impl Lease {
    /// A lease granted when the reply arrived (`received`): its first slot lies
    /// `first_offset_us` from Redis' "now" (negative: in the past, the schedule's tolerance).
    /// Placing Redis' "now" at the reply's arrival puts every slot a little later than it is,
    /// never earlier.
    pub(super) fn new(
        received: Instant,
        first_offset_us: i64,
        interval_us: u64,
        granted: u32,
        late_ok: Duration,
        end_us: u64,
    ) -> Lease {
        let offset = Duration::from_micros(first_offset_us.unsigned_abs());
        let first = if first_offset_us >= 0 {
            received + offset
        } else {
            received.checked_sub(offset).unwrap_or(received)
        };
        Lease {
            first,
            interval_us,
            granted,
            used: 0,
            late_ok,
            end_us,
        }
    }

    fn slot(&self, i: u32) -> Instant {
        self.first + Duration::from_micros(u64::from(i) * self.interval_us)
    }

    /// The first slot index still usable at `now` (slots older than `late_ok` are not).
    fn first_usable(&self, now: Instant) -> u32 {
        let behind = now.saturating_duration_since(self.first + self.late_ok);
        if behind.is_zero() {
            return 0;
        }
        if self.interval_us == 0 {
            return self.granted;
        }
        let behind_us = behind.as_micros() as u64;
        u32::try_from(behind_us.div_ceil(self.interval_us)).unwrap_or(u32::MAX)
    }

    /// Hands out the next slot: when this send may go (at or before `now`: at once). Slots
    /// more than `late_ok` in the past are skipped. `None` when the lease is spent.
    pub(super) fn take(&mut self, now: Instant) -> Option<Instant> {
        let i = self.used.max(self.first_usable(now));
        if i >= self.granted {
            self.used = self.granted;
            return None;
        }
        self.used = i + 1;
        Some(self.slot(i))
    }

    /// When the next slot to hand out is due, if any is left.
    pub(super) fn next_slot(&self, now: Instant) -> Option<Instant> {
        let i = self.used.max(self.first_usable(now));
        (i < self.granted).then(|| self.slot(i))
    }

    /// Slots still to hand out at `now` (what the tests read of a lease).
    #[cfg(test)]
    pub(super) fn remaining(&self, now: Instant) -> u32 {
        self.granted
            .saturating_sub(self.used.max(self.first_usable(now)))
    }

    /// Ends the lease: the slots never handed out go back (if the schedule still ends where
    /// this lease left it). Expired slots go back too: the schedule's own tolerance caps what
    /// a slot in the past is worth, as if they had never been taken.
    pub(super) fn give_back(&mut self) -> Option<GiveBack> {
        let slots = self.granted - self.used;
        self.used = self.granted;
        (slots > 0).then_some(GiveBack {
            end_us: self.end_us,
            slots,
            interval_us: self.interval_us,
        })
    }
}

/// The replica's recent send rate for one account, from the slots it took.
#[derive(Debug, Clone)]
pub(super) struct Sizer {
    window_start: Instant,
    in_window: u32,
    /// Sends per second in the last full window.
    rate: f64,
}

impl Sizer {
    pub(super) fn new(now: Instant) -> Sizer {
        Sizer {
            window_start: now,
            in_window: 0,
            rate: 0.0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            self.rate = f64::from(self.in_window) / elapsed.as_secs_f64();
            self.in_window = 0;
            self.window_start = now;
        }
    }

    /// One slot taken at `now`.
    pub(super) fn note(&mut self, now: Instant) {
        self.roll(now);
        self.in_window = self.in_window.saturating_add(1);
    }

    /// Sends per second, as of the last full window.
    pub(super) fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        self.rate
    }

    /// How many slots to lease now: the sends `waiting` for one, or what the recent rate takes
    /// in `usable` (how long a slot stays usable, so none is left to go stale), whichever is
    /// more; at most `burst`, at least one.
    pub(super) fn size(&mut self, now: Instant, waiting: u32, burst: u32, usable: Duration) -> u32 {
        let recent = (self.rate(now) * usable.as_secs_f64()).floor();
        let recent = if recent >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            recent as u32
        };
        recent.max(waiting).clamp(1, burst.max(1))
    }
}

/// Sends a replica makes for a quiet account without leasing a slot: at most one per
/// `every` (the account's interval times the bound on replicas, so that all replicas together
/// stay within the account's rate), and only while this replica's recent rate for the account
/// is no higher than that. A platform's authorizer that gets a job every few seconds would
/// otherwise make one Redis call per send. Such sends still use slots of the schedule: they
/// are added to it after the fact, with the count ([`super::shared`]).
#[derive(Debug, Clone)]
pub(super) struct Quiet {
    every: Duration,
    /// Sends per second this lane allows (`1 / every`).
    allowance: f64,
    next: Option<Instant>,
}

impl Quiet {
    pub(super) fn new(interval_us: u64, replicas: u64) -> Quiet {
        let every = Duration::from_micros(interval_us.max(1).saturating_mul(replicas.max(1)));
        Quiet {
            every,
            allowance: 1.0 / every.as_secs_f64(),
            next: None,
        }
    }

    /// Whether one send may go at `now` without a lease, given this replica's `recent_rate`
    /// for the account (sends per second); takes the lane's turn if so.
    pub(super) fn take(&mut self, now: Instant, recent_rate: f64) -> bool {
        if recent_rate > self.allowance || self.next.is_some_and(|at| now < at) {
            return false;
        }
        self.next = Some(now + self.every);
        true
    }
}

/// Whether the sends counted here but not yet in Redis (`unflushed`) must be added now.
/// `left`: what this replica believes is left of the daily quota (`None`: no quota). Each of
/// up to `replicas` replicas keeps at most its share of what is left unflushed, so together
/// they cannot pass the quota unseen; without a quota, the timer alone flushes.
pub(super) fn flush_due(unflushed: u64, left: Option<u64>, replicas: u64) -> bool {
    match left {
        None => false,
        Some(left) => unflushed > 0 && unflushed >= (left / replicas.max(1)).max(1),
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
