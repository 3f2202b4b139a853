//! The send policy, a leaf that the dispatcher, the token cache and the AMQP plumbing use: the
//! error-code table ([`errcode`]), the ways a send fails without an answer ([`SendError`]),
//! the retry state a job carries (through delay queues, in headers), the budget and backoff
//! rules, the reasons a job is deferred or ends, and the decision core ([`decision`]) that turns
//! what a try came to into the job's next step, with no I/O; and, for a third-party platform,
//! whether an authorizer granted the permission set a job's type needs ([`permission`]).
//!
//! The one rule that must never break: a message that *may* have reached WeChat (timeout, 5xx,
//! unreadable reply) is only retried with the same `client_msg_id` and only inside WeChat's
//! 10-minute deduplication window. Past it, the outcome is `failed` with reason
//! `unknown_delivery`, never a blind resend. And waiting on the account (quota, a stopped
//! account, the rate) is never charged to the transient-error budget.

use std::time::Duration;

pub(crate) mod decision;
pub mod errcode;
pub mod permission;
mod send_error;

pub use decision::{
    AccountChange, Decision, Due, End, EndStatus, Hold, JobFacts, Rules, Step, Tried, decide, due,
    on_hold,
};
pub use send_error::SendError;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use rand::Rng;

/// An enum whose variants each stand for one word: the variants, `ALL`, `as_str` and
/// `Display` come from one list, so no variant can be left out of `ALL` or lack its word.
macro_rules! word_enum {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $word:literal,)+
    }) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$($word),+].len()] = [$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum! {
    /// Why a job is parked in a delay queue (or waits in place). The word travels in the
    /// `x-wxd-reason` header and labels `wxdispatch_deferred_total`; docs/ERROR_POLICY.md lists
    /// every one (a unit test checks it).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DeferReason {
        /// Backing off after a transient error, longer than `inline_retry_max_ms`.
        Backoff => "backoff",
        /// More of the account's sends wait for its rate than fit in `inline_retry_max_ms`.
        Rate => "rate",
        /// 45011: the per-minute limit, until the next minute.
        RateMinute => "rate_minute",
        /// 45009 or the configured daily quota: the account is paused.
        Quota => "quota",
        /// A configuration error stopped the account (send side or token side).
        AccountStopped => "account_stopped",
    }
}

word_enum! {
    /// The reasons a job ends with that are neither a WeChat errcode (those are the errcode table's
    /// `reason` words) nor a transport label (`timeout`, `http_502`, ...): the policy's own. They
    /// travel in outcomes as [`EndReason::as_str`]; docs/ERROR_POLICY.md lists each one (unit
    /// test).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum EndReason {
        /// Its `not_after` passed before it could be sent (`expired`).
        NotAfterPassed => "not_after_passed",
        /// An earlier attempt may have been delivered and a retry could no longer be deduplicated
        /// by WeChat (`failed`): the upstream must check before resending.
        UnknownDelivery => "unknown_delivery",
        /// A subscription send may have been delivered; its endpoint takes no `client_msg_id`, so
        /// it is never retried (`failed`).
        MaybeSent => "maybe_sent",
        /// No access token could be fetched within the retry budget (`failed`).
        TokenUnavailable => "token_unavailable",
        /// The job's AMQP `user_id` is missing or not on its account's `publishers` list
        /// (`rejected`, never sent).
        PublisherNotAllowed => "publisher_not_allowed",
        /// The job made the handler panic on its last allowed delivery (`failed`, dead-lettered).
        Poison => "poison",
        /// Component mode: the job's appid has not authorized the platform, or no longer
        /// (`rejected`, never sent).
        NotAuthorized => "not_authorized",
        /// Component mode: the authorizer did not grant the platform any permission set the
        /// job's type needs (`rejected`, never sent).
        PermissionNotGranted => "permission_not_granted",
    }
}

/// WeChat deduplicates `(openid, client_msg_id)` for 10 minutes; keep a safety margin.
pub(crate) const DEDUP_WINDOW: Duration = Duration::from_secs(9 * 60 + 30);

/// Retry bookkeeping that travels with a job through the delay queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// Tries made so far that ended in a reply or an error (sends and token fetches). Waiting
    /// on the account (quota, a stopped account, the rate) is not a try.
    pub attempts: u32,
    /// When the job was first seen by a worker (Unix ms).
    pub first_seen_ms: i64,
    /// When the first attempt that may have reached WeChat was made (Unix ms).
    pub maybe_sent_ms: Option<i64>,
    /// Time charged to transient errors so far (ms): each failed try's own duration plus the
    /// backoff chosen after it. This, not the job's age, is what the retry budget limits, so
    /// a day-long quota pause or a stopped account never turns into a `failed` job.
    pub transient_ms: u64,
}

impl RetryState {
    pub(crate) fn fresh() -> RetryState {
        RetryState {
            attempts: 0,
            first_seen_ms: Utc::now().timestamp_millis(),
            maybe_sent_ms: None,
            transient_ms: 0,
        }
    }

    /// Charges `d` to the transient-error budget.
    pub(crate) fn charge(&mut self, d: Duration) {
        self.transient_ms = self
            .transient_ms
            .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64);
    }

    /// Whether a try made `wait` after `now_ms` could fall outside WeChat's deduplication
    /// window of an earlier attempt that may have been delivered. Such a try could produce a
    /// second message, so it must not be made.
    pub(crate) fn past_dedup_window(&self, now_ms: i64, wait: Duration) -> bool {
        self.maybe_sent_ms.is_some_and(|first| {
            let since = Duration::from_millis((now_ms - first).max(0) as u64);
            since + wait >= DEDUP_WINDOW
        })
    }
}

/// What happens after a try that failed in a way worth repeating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again after the wait.
    Retry,
    /// Stop: the job ends `failed` with this reason.
    GiveUp(String),
    /// Stop without another try: an earlier attempt may have been delivered, so the job ends
    /// `failed` with reason `unknown_delivery`.
    UnknownDelivery,
}

/// The retry settings: the `retry` group of the configuration (validated there).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
    pub budget: Duration,
    pub inline_max: Duration,
}

impl RetryPolicy {
    /// Whether a job that just failed with `reason` may be tried again after `wait`.
    ///
    /// It may not when its attempts or its transient-error budget are spent, or when the retry
    /// would land outside the deduplication window of an attempt that may have been
    /// delivered. Giving up after such an attempt is always [`Next::UnknownDelivery`], whatever
    /// the last error was: the message may have reached the user, and the upstream must not
    /// resend it blindly.
    ///
    /// The budget counts only [`RetryState::transient_ms`], never the job's age: time spent
    /// paused on quota, behind a stopped account, on the rate limit or in the queue is not an
    /// error and must not fail the job. Only `not_after` ends a waiting job.
    pub(crate) fn next(
        &self,
        state: &RetryState,
        now_ms: i64,
        reason: &str,
        wait: Duration,
    ) -> Next {
        let charged = Duration::from_millis(state.transient_ms);
        let spent = state.attempts >= self.max_attempts || charged + wait > self.budget;
        if state.past_dedup_window(now_ms, wait) || (spent && state.maybe_sent_ms.is_some()) {
            Next::UnknownDelivery
        } else if spent {
            Next::GiveUp(reason.into())
        } else {
            Next::Retry
        }
    }

    /// The delay before retry number `n` (0-based): exponential backoff from backon (base,
    /// doubling, capped at `max_delay`) with jitter: a uniform pick between a tenth of that cap
    /// and the cap. Full jitter spreads a burst of failures; the floor keeps a retry from
    /// firing back-to-back with the failure it answers.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let cap = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(n as usize)
            .unwrap_or(self.max_delay);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 10..=ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator-facing list of deferral reasons names every one the code can produce.
    #[test]
    fn the_policy_doc_lists_every_defer_reason() {
        let doc = include_str!("../../docs/ERROR_POLICY.md");
        for r in DeferReason::ALL {
            assert!(
                doc.contains(&format!("`{}`", r.as_str())),
                "docs/ERROR_POLICY.md does not list the defer reason `{r}`"
            );
        }
        for r in EndReason::ALL {
            assert!(
                doc.contains(&format!("`{}`", r.as_str())),
                "docs/ERROR_POLICY.md does not list the end reason `{r}`"
            );
        }
    }

    /// Each delay lies between a tenth of its exponential cap and the cap: the cap bounds a
    /// storm of retries, the floor keeps a retry from firing back-to-back with the failure it
    /// answers (a zero delay would be a hot loop), and the spread shows there is jitter.
    #[test]
    fn backoff_lies_between_a_tenth_of_the_exponential_cap_and_the_cap() {
        let p = RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            budget: Duration::from_secs(60),
            inline_max: Duration::from_secs(3),
        };
        for (n, cap) in [(0, 100), (1, 200), (2, 400), (3, 800), (20, 2000)] {
            let cap = Duration::from_millis(cap);
            let samples: Vec<Duration> = (0..200).map(|_| p.delay(n)).collect();
            let (lo, hi) = (
                *samples.iter().min().unwrap(),
                *samples.iter().max().unwrap(),
            );
            assert!(hi <= cap, "delay({n}) = {hi:?} above its cap {cap:?}");
            assert!(
                lo >= cap / 10,
                "delay({n}) = {lo:?} below a tenth of {cap:?}"
            );
            // 200 uniform picks over [cap/10, cap]: the spread is far above half the range.
            assert!(
                hi - lo > (cap - cap / 10) / 2,
                "delay({n}) has no jitter: {lo:?}..{hi:?}"
            );
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            budget: Duration::from_secs(3600),
            inline_max: Duration::from_secs(3),
        }
    }

    const MIN: i64 = 60_000;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn state(
        attempts: u32,
        first_seen_ago_ms: i64,
        maybe_sent_ago_ms: Option<i64>,
    ) -> (RetryState, i64) {
        let now = Utc::now().timestamp_millis();
        let st = RetryState {
            attempts,
            first_seen_ms: now - first_seen_ago_ms,
            maybe_sent_ms: maybe_sent_ago_ms.map(|ago| now - ago),
            transient_ms: 0,
        };
        (st, now)
    }

    /// A message that timed out 9.5 minutes ago is never tried again, not even at once:
    /// WeChat would no longer deduplicate it, so a retry could be a second message.
    #[test]
    fn a_maybe_sent_message_is_not_retried_outside_the_dedup_window() {
        let p = policy();
        let (st, now) = state(1, 10 * MIN, Some(9 * MIN + 30_000));
        assert!(st.past_dedup_window(now, Duration::ZERO));
        assert_eq!(
            p.next(&st, now, "timeout", Duration::ZERO),
            Next::UnknownDelivery
        );
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::from_millis(10)),
            Next::UnknownDelivery
        );
    }

    /// Inside the window the same job may retry, but only with a wait that still lands inside.
    #[test]
    fn a_maybe_sent_message_retries_only_while_the_retry_lands_inside_the_window() {
        let p = policy();
        let (st, now) = state(2, 9 * MIN, Some(9 * MIN));
        assert_eq!(p.next(&st, now, "timeout", secs(10)), Next::Retry);
        assert_eq!(p.next(&st, now, "timeout", secs(40)), Next::UnknownDelivery);
    }

    /// The window only matters for messages that may have been sent: an error reply proves
    /// WeChat did not take the message, so the same age is no reason to stop.
    #[test]
    fn a_job_with_only_error_replies_ignores_the_dedup_window() {
        let p = policy();
        let (st, now) = state(2, 20 * MIN, None);
        assert!(!st.past_dedup_window(now, Duration::from_secs(60)));
        assert_eq!(p.next(&st, now, "system_busy", secs(60)), Next::Retry);
    }

    /// Running out of attempts or time ends `failed` with the last reason, or with
    /// `unknown_delivery` when an earlier attempt may have been delivered.
    #[test]
    fn a_spent_budget_gives_up_with_the_right_reason() {
        let p = policy();
        let (st, now) = state(6, MIN, None);
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::ZERO),
            Next::GiveUp("system_busy".into())
        );
        let (st, now) = state(6, MIN, Some(MIN));
        assert_eq!(
            p.next(&st, now, "system_busy", Duration::ZERO),
            Next::UnknownDelivery
        );
        // The time budget: a retry that would land after it is not worth waiting for.
        let (mut st, now) = state(1, 59 * MIN, None);
        st.transient_ms = 59 * MIN as u64;
        assert_eq!(p.next(&st, now, "http_502", secs(30)), Next::Retry);
        assert_eq!(
            p.next(&st, now, "http_502", secs(61)),
            Next::GiveUp("http_502".into())
        );
    }

    /// The budget is charged with error time only. A job that waited a whole day on
    /// quota (or a stopped account) and then meets its first transient error still has its
    /// full budget; one that spent the budget on errors has not, however young it is.
    #[test]
    fn waiting_on_the_account_is_not_charged_to_the_retry_budget() {
        let p = RetryPolicy {
            budget: Duration::from_secs(3),
            ..policy()
        };
        let (st, now) = state(1, 24 * 60 * MIN, None);
        assert_eq!(
            p.next(&st, now, "system_busy", secs(1)),
            Next::Retry,
            "a day of waiting is not an error"
        );
        let (mut st, now) = state(1, 1_000, None);
        st.transient_ms = 2_500;
        assert_eq!(
            p.next(&st, now, "system_busy", secs(1)),
            Next::GiveUp("system_busy".into()),
            "2.5 s of errors plus a 1 s backoff exceed a 3 s budget"
        );
    }

    /// `charge` adds up, and saturates instead of wrapping.
    #[test]
    fn charging_the_budget_adds_and_saturates() {
        let mut st = RetryState::fresh();
        st.charge(Duration::from_millis(1_500));
        st.charge(Duration::from_millis(250));
        assert_eq!(st.transient_ms, 1_750);
        st.charge(Duration::MAX);
        assert_eq!(st.transient_ms, u64::MAX);
    }
}
