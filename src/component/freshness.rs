//! When a platform token (the component token, an authorizer's token) stored in Redis is
//! refreshed: no I/O, only the rule every replica applies to the same stored times, so they all
//! agree on it.
//!
//! A token is *fresh* for most of its life; in its last fifth (at most 15 minutes: the last 15
//! of WeChat's 2 hours) it is *ahead*: still handed out, while the one replica that takes the lock
//! refreshes it, so no job waits for that call. Only a token in its last twentieth (30 s at
//! most) is *spent*: too close to expiry to send with, so a caller waits for a new one.

/// The longest refresh-ahead window: 15 minutes.
const MAX_AHEAD_MS: i64 = 15 * 60 * 1000;
/// The longest spent margin: 30 seconds.
const MAX_SPENT_MS: i64 = 30 * 1000;

/// Where a stored token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Hand it out; nothing to do.
    Fresh,
    /// Hand it out, and refresh it now if this replica gets the lock.
    Ahead,
    /// Missing, expired or about to: a new token is needed before sending.
    Spent,
}

/// A token's life in milliseconds (at least 1, so a zero `expires_in` is not a division by 0).
fn life_ms(issued_ms: i64, expires_ms: i64) -> i64 {
    (expires_ms - issued_ms).max(1)
}

/// The Unix ms from which a token issued at `issued_ms` and expiring at `expires_ms` is
/// refreshed ahead of its expiry.
pub fn refresh_at_ms(issued_ms: i64, expires_ms: i64) -> i64 {
    expires_ms - (life_ms(issued_ms, expires_ms) / 5).min(MAX_AHEAD_MS)
}

/// Where the token is at `now_ms`.
pub fn freshness(issued_ms: i64, expires_ms: i64, now_ms: i64) -> Freshness {
    let spent_from = expires_ms - (life_ms(issued_ms, expires_ms) / 20).min(MAX_SPENT_MS);
    if now_ms >= spent_from {
        Freshness::Spent
    } else if now_ms >= refresh_at_ms(issued_ms, expires_ms) {
        Freshness::Ahead
    } else {
        Freshness::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    #[test]
    fn a_two_hour_token_is_refreshed_in_its_last_15_minutes_and_spent_in_its_last_30_seconds() {
        let (issued, expires) = (0, 7200 * S);
        assert_eq!(refresh_at_ms(issued, expires), 6300 * S);
        assert_eq!(freshness(issued, expires, 0), Freshness::Fresh);
        assert_eq!(freshness(issued, expires, 6300 * S - 1), Freshness::Fresh);
        assert_eq!(freshness(issued, expires, 6300 * S), Freshness::Ahead);
        assert_eq!(freshness(issued, expires, 7170 * S - 1), Freshness::Ahead);
        assert_eq!(freshness(issued, expires, 7170 * S), Freshness::Spent);
        assert_eq!(freshness(issued, expires, 8000 * S), Freshness::Spent);
    }

    #[test]
    fn a_short_lived_token_keeps_the_same_proportions() {
        // 8 s: ahead from 6.4 s, spent from 7.6 s.
        let (issued, expires) = (1_000_000, 1_000_000 + 8 * S);
        assert_eq!(refresh_at_ms(issued, expires), 1_000_000 + 6400);
        assert_eq!(
            freshness(issued, expires, 1_000_000 + 6399),
            Freshness::Fresh
        );
        assert_eq!(
            freshness(issued, expires, 1_000_000 + 6400),
            Freshness::Ahead
        );
        assert_eq!(
            freshness(issued, expires, 1_000_000 + 7600),
            Freshness::Spent
        );
    }

    #[test]
    fn a_token_with_no_life_is_spent() {
        assert_eq!(freshness(5, 5, 5), Freshness::Spent);
    }
}
