//! A shared gate's day count as one replica knows it, and the slots its unleased sends used:
//! what it has yet to add to Redis, what is being added, and Redis' last answer.

use chrono::NaiveDate;

pub(super) struct Count {
    pub(super) day: NaiveDate,
    /// Sent and counted here, not yet added in Redis.
    pub(super) unflushed: u64,
    /// Being added right now.
    pub(super) flushing: u64,
    /// The day's count in Redis as last seen (every replica's added sends).
    pub(super) seen: u64,
    /// Slots of the schedule used by sends made without a lease, not yet added in Redis.
    pub(super) unleased: u64,
}

/// What one flush takes to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flush {
    /// Sends to add to `day`'s count.
    pub(super) add: u64,
    pub(super) day: NaiveDate,
    /// Slots used by sends made without a lease, to add in Redis.
    pub(super) unleased: u64,
}

impl Count {
    pub(super) fn new(day: NaiveDate) -> Count {
        Count {
            day,
            unflushed: 0,
            flushing: 0,
            seen: 0,
            unleased: 0,
        }
    }

    /// A new Beijing day starts from zero; slots not yet recorded are the schedule's, not the
    /// day's, and stay.
    pub(super) fn roll(&mut self, today: NaiveDate) {
        if self.day != today {
            let unleased = self.unleased;
            *self = Count::new(today);
            self.unleased = unleased;
        }
    }

    pub(super) fn total(&self) -> u64 {
        self.seen + self.flushing + self.unflushed
    }

    /// Whether a flush has anything to take.
    pub(super) fn pending(&self) -> bool {
        self.unflushed > 0 || self.unleased > 0
    }

    /// Moves what is to be added into `flushing`.
    pub(super) fn start_flush(&mut self) -> Flush {
        let add = std::mem::take(&mut self.unflushed);
        self.flushing += add;
        Flush {
            add,
            day: self.day,
            unleased: std::mem::take(&mut self.unleased),
        }
    }

    /// A flush is over: `reached` says whether the call succeeded, `total` is Redis' count
    /// after it (if it added any). A failed flush is added again later: if the failed call
    /// did reach Redis, its sends are counted twice, which pauses early rather than late, and
    /// its slots are used twice, which slows the account for a moment rather than speeding it.
    pub(super) fn finish_flush(&mut self, f: Flush, reached: bool, total: Option<u64>) {
        if !reached {
            self.unleased += f.unleased;
        }
        if f.day != self.day {
            return;
        }
        self.flushing = self.flushing.saturating_sub(f.add);
        if !reached {
            self.unflushed += f.add;
        } else if let Some(n) = total {
            self.seen = self.seen.max(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, d).unwrap()
    }

    #[test]
    fn a_failed_flush_is_taken_again_and_a_reached_one_is_not() {
        let mut c = Count::new(day(5));
        c.unflushed = 3;
        c.unleased = 2;
        let f = c.start_flush();
        assert_eq!((f.add, f.unleased), (3, 2));
        assert_eq!(c.total(), 3, "sends being added still count");
        assert!(!c.pending());
        c.finish_flush(f, false, None);
        assert_eq!((c.unflushed, c.unleased, c.flushing), (3, 2, 0));
        let f = c.start_flush();
        c.finish_flush(f, true, Some(10));
        assert_eq!((c.unflushed, c.unleased, c.seen), (0, 0, 10));
        // A reached call that added nothing (only slots) leaves the count as it was.
        c.unleased = 1;
        let f = c.start_flush();
        c.finish_flush(f, true, None);
        assert_eq!((c.seen, c.unleased, c.total()), (10, 0, 10));
    }

    #[test]
    fn a_new_day_counts_from_zero_but_keeps_the_slots_to_record() {
        let mut c = Count::new(day(5));
        c.seen = 7;
        c.unflushed = 1;
        c.unleased = 4;
        c.roll(day(6));
        assert_eq!((c.total(), c.unleased), (0, 4));
        // A flush of the old day that fails afterwards adds its slots back, not its sends.
        let old = Flush {
            add: 1,
            day: day(5),
            unleased: 2,
        };
        c.finish_flush(old, false, None);
        assert_eq!((c.total(), c.unleased), (0, 6));
    }
}
