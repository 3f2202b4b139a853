//! The decision core: from what a job's try came to, its next step.
//!
//! No I/O and no clock: the caller passes the time, carries the step out (wait, send, publish,
//! defer) and applies the change to the account that the decision asks for. Every rule about
//! attempts, retries, deferrals and endings lives here, so each one is a unit test away, with
//! no broker, Redis or simulator.

use std::borrow::Cow;
use std::time::Duration;

use super::errcode::{self, Action};
use super::{DeferReason, EndReason, Next, RetryPolicy, RetryState, SendError};

/// What the core needs to know about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobFacts {
    /// Whether its endpoint deduplicates by `client_msg_id`: only then may a send whose result
    /// is unknown be tried again.
    pub deduplicated: bool,
    /// Not before this (Unix ms): the end of a deferral it may have come back early from.
    pub not_before_ms: Option<i64>,
    /// Not after this (Unix ms): the job's `not_after`.
    pub not_after_ms: Option<i64>,
}

/// The settings decisions follow.
#[derive(Debug, Clone)]
pub struct Rules {
    pub retry: RetryPolicy,
    /// While an account is stopped by a configuration error, one probe send per this.
    pub stop_probe: Duration,
}

/// Whether a job may be tried now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    Now,
    /// It came back early from a delay queue: park it again, unchanged, for this long.
    NotYet(Duration),
    /// It must not be tried at all.
    End(End),
}

/// Within this of its `not_before` a job is on time: delay tiers are whole seconds.
const ON_TIME_MS: i64 = 250;

/// The checks on the job itself, made before each try: not before the end of its deferral,
/// not after its `not_after`, not outside WeChat's deduplication window of an earlier attempt
/// that may have been delivered. Per-job admission rules that need nothing but the job (such
/// as which publishers may send for an account) belong here too, before the account is asked.
pub fn due(job: &JobFacts, state: &RetryState, now_ms: i64) -> Due {
    if let Some(left) = time_left(job.not_before_ms, now_ms) {
        return Due::NotYet(left);
    }
    if job.not_after_ms.is_some_and(|deadline| now_ms > deadline) {
        return Due::End(End::expired());
    }
    if state.past_dedup_window(now_ms, Duration::ZERO) {
        return Due::End(End::unknown_delivery(None));
    }
    Due::Now
}

/// How long a job must still wait for `not_before_ms`, or `None` when it is (nearly) time.
pub(crate) fn time_left(not_before_ms: Option<i64>, now_ms: i64) -> Option<Duration> {
    let at = not_before_ms?;
    (at - now_ms > ON_TIME_MS).then(|| Duration::from_millis((at - now_ms) as u64))
}

/// Why the account cannot take a job now. Waiting on the account is never an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Its sends are stopped by a configuration error; the next probe is due after this.
    SendsStopped(Duration),
    /// Its quota gate says later (a quota pause, the minute limit, the daily count).
    Quota {
        delay: Duration,
        reason: DeferReason,
    },
    /// More of its sends wait for its rate than fit in an inline wait.
    Rate(Duration),
}

/// The step for a job the account cannot take now: a short quota wait is made in place (holding
/// a delivery for it is cheaper than a round trip through a delay queue); anything else defers.
pub fn on_hold(rules: &Rules, hold: Hold) -> Step {
    match hold {
        Hold::SendsStopped(delay) => Step::Defer {
            delay,
            reason: DeferReason::AccountStopped,
        },
        Hold::Quota { delay, reason } if delay <= rules.retry.inline_max => {
            Step::Wait { delay, reason }
        }
        Hold::Quota { delay, reason } => Step::Defer { delay, reason },
        Hold::Rate(delay) => Step::Defer {
            delay,
            reason: DeferReason::Rate,
        },
    }
}

/// What a try came to.
#[derive(Debug, Clone, Copy)]
pub enum Tried<'e> {
    /// WeChat answered with this `errcode`.
    Replied { errcode: i64 },
    /// The send got no usable answer.
    SendFailed(&'e SendError),
    /// No access token: the account is stopped on the token side until its next probe.
    TokenStopped { retry_in: Duration },
    /// No access token: the token endpoint failed transiently; try again no sooner than this.
    TokenUnavailable { retry_in: Duration },
}

/// A change to the account's shared state that a decision asks for: the caller applies it
/// before it carries out the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    /// The send succeeded: count it against the quota (a probe resumes a paused account) and
    /// clear a send-side stop.
    Sent,
    /// WeChat refused the access token the send used: invalidate exactly that one.
    InvalidateToken,
    /// The template was not found (40037): it may have been added or deleted since the
    /// catalogue was fetched, so fetch it again before the next check.
    ForgetCatalogue,
    /// The minute limit (45011): hold the quota gate's sends for this long.
    SlowDown(Duration),
    /// The daily quota is spent (45009): pause the quota gate, one probe at a time.
    PauseQuota,
    /// A configuration error: stop the account's sends, one probe per [`Rules::stop_probe`].
    StopSends { errcode: i64 },
}

/// A job's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The job ends.
    End(End),
    /// A transient failure: try again after `wait`, which is charged to the retry budget. In
    /// place when `in_place`, else through a delay queue (defer reason `backoff`).
    Retry {
        reason: Cow<'static, str>,
        wait: Duration,
        in_place: bool,
    },
    /// The account is not ready for a short while: wait in place, then try again.
    Wait {
        delay: Duration,
        reason: DeferReason,
    },
    /// Park the job in a delay queue; it comes back with its retry state.
    Defer {
        delay: Duration,
        reason: DeferReason,
    },
}

/// A step and the account change that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub change: Option<AccountChange>,
    pub step: Step,
}

impl From<Step> for Decision {
    fn from(step: Step) -> Decision {
        Decision { change: None, step }
    }
}

/// The final status of a job that ends in the dispatcher (`invalid` is the parser's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndStatus {
    Sent,
    Rejected,
    Failed,
    Expired,
}

/// How a job ends: what its outcome says besides the job's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub status: EndStatus,
    pub reason: Option<Cow<'static, str>>,
    /// WeChat's `errcode` when its reply decided the end; the reply's `errmsg` goes with it.
    pub errcode: Option<i64>,
    /// The outcome's `errmsg` when no reply gives one.
    pub note: Option<String>,
}

impl End {
    fn new(status: EndStatus, reason: impl Into<Cow<'static, str>>) -> End {
        End {
            status,
            reason: Some(reason.into()),
            errcode: None,
            note: None,
        }
    }

    fn sent() -> End {
        End {
            status: EndStatus::Sent,
            reason: None,
            errcode: Some(0),
            note: None,
        }
    }

    fn expired() -> End {
        End::new(EndStatus::Expired, EndReason::NotAfterPassed.as_str())
    }

    /// An earlier attempt may have been delivered and a retry could no longer be deduplicated.
    fn unknown_delivery(last_error: Option<&str>) -> End {
        End {
            note: last_error.map(|l| format!("last error: {l}")),
            ..End::new(EndStatus::Failed, EndReason::UnknownDelivery.as_str())
        }
    }

    /// Refused before any request, with a reason word and a sentence for `errmsg` (a template
    /// the account's catalogue does not have, a per-job admission rule).
    pub(crate) fn refused(reason: &'static str, note: String) -> End {
        End {
            note: Some(note),
            ..End::new(EndStatus::Rejected, reason)
        }
    }

    /// Whether this is the ending that tells the upstream to check with the recipient before
    /// resending: the message may have been delivered.
    pub(crate) fn is_unknown_delivery(&self) -> bool {
        self.reason.as_deref() == Some(EndReason::UnknownDelivery.as_str())
    }
}

/// The decision after a try: counts the attempt (when the result is about the job), charges
/// the retry budget, and picks the step and the account change.
pub fn decide(
    rules: &Rules,
    job: &JobFacts,
    state: &mut RetryState,
    tried: Tried<'_>,
    took: Duration,
    now_ms: i64,
) -> Decision {
    match tried {
        Tried::Replied { errcode } => on_reply(rules, state, errcode, took, now_ms),
        Tried::SendFailed(e) => on_send_error(rules, job, state, e, took, now_ms).into(),
        Tried::TokenStopped { retry_in } => Step::Defer {
            delay: retry_in,
            reason: DeferReason::AccountStopped,
        }
        .into(),
        Tried::TokenUnavailable { retry_in } => {
            // A failed token fetch is an attempt like a failed send.
            state.attempts += 1;
            let wait = retry_in.max(rules.retry.delay(state.attempts - 1));
            let reason = EndReason::TokenUnavailable.as_str();
            again(rules, state, reason.into(), wait, took, now_ms).into()
        }
    }
}

/// WeChat answered: the error-code table's action, with its change to the account.
fn on_reply(
    rules: &Rules,
    state: &mut RetryState,
    code: i64,
    took: Duration,
    now_ms: i64,
) -> Decision {
    let action = errcode::action(code);
    // The minute limit, the quota and a stopped account are the account's state, not the
    // job's: they are not attempts.
    if !matches!(
        action,
        Action::SlowDown | Action::PauseQuota | Action::StopAccount
    ) {
        state.attempts += 1;
    }
    let (change, step) = match action {
        Action::Success => (Some(AccountChange::Sent), Step::End(End::sent())),
        Action::Reject => {
            let end = End {
                errcode: Some(code),
                ..End::new(EndStatus::Rejected, errcode::reason(code))
            };
            let change = (code == 40037).then_some(AccountChange::ForgetCatalogue);
            (change, Step::End(end))
        }
        // Refresh, then retry after the ordinary backoff: if the code is not really about the
        // token (41006), an immediate retry would only repeat it.
        Action::RefreshToken => (
            Some(AccountChange::InvalidateToken),
            again_after_backoff(rules, state, code, took, now_ms),
        ),
        Action::Retry => (None, again_after_backoff(rules, state, code, took, now_ms)),
        Action::SlowDown => {
            let wait = until_next_minute(now_ms);
            let step = Step::Defer {
                delay: wait,
                reason: DeferReason::RateMinute,
            };
            (Some(AccountChange::SlowDown(wait)), step)
        }
        Action::PauseQuota => {
            // Past the inline limit, so the job leaves the consumer; the pause itself is the
            // gate's, and the job's return meets it there.
            let delay =
                (rules.retry.inline_max + Duration::from_secs(1)).max(Duration::from_secs(1));
            let step = Step::Defer {
                delay,
                reason: DeferReason::Quota,
            };
            (Some(AccountChange::PauseQuota), step)
        }
        Action::StopAccount => {
            let step = Step::Defer {
                delay: rules.stop_probe,
                reason: DeferReason::AccountStopped,
            };
            (Some(AccountChange::StopSends { errcode: code }), step)
        }
    };
    Decision { change, step }
}

fn again_after_backoff(
    rules: &Rules,
    state: &mut RetryState,
    code: i64,
    took: Duration,
    now_ms: i64,
) -> Step {
    let wait = rules.retry.delay(state.attempts - 1);
    again(rules, state, errcode::reason(code), wait, took, now_ms)
}

/// A send with no WeChat answer. It may have been delivered, so it is retried only where
/// WeChat deduplicates.
fn on_send_error(
    rules: &Rules,
    job: &JobFacts,
    state: &mut RetryState,
    e: &SendError,
    took: Duration,
    now_ms: i64,
) -> Step {
    state.attempts += 1;
    if e.maybe_sent() && !job.deduplicated {
        // No client_msg_id on this endpoint: WeChat would take a retry as a second message.
        return Step::End(End::new(EndStatus::Failed, EndReason::MaybeSent.as_str()));
    }
    if e.maybe_sent() && state.maybe_sent_ms.is_none() {
        state.maybe_sent_ms = Some(now_ms);
    }
    let mut wait = rules.retry.delay(state.attempts - 1);
    if let SendError::Status {
        status,
        retry_after,
    } = e
    {
        // A redirect or a 4xx other than 408/425/429 will not change on retry; those three
        // are a front end or proxy asking us to slow down, so wait at least as long as it asks.
        if errcode::http_rule(*status).action == Action::Reject {
            return Step::End(End::new(EndStatus::Rejected, e.label()));
        }
        wait = wait.max(retry_after.unwrap_or_default());
    }
    again(rules, state, e.label().into(), wait, took, now_ms)
}

/// A transient failure that took `took`: another try after `wait`, if the budget and the
/// deduplication window allow one. Both durations are charged to the budget.
fn again(
    rules: &Rules,
    state: &mut RetryState,
    reason: Cow<'static, str>,
    wait: Duration,
    took: Duration,
    now_ms: i64,
) -> Step {
    state.charge(took);
    match rules.retry.next(state, now_ms, &reason, wait) {
        Next::Retry => {}
        Next::UnknownDelivery => return Step::End(End::unknown_delivery(Some(&reason))),
        Next::GiveUp(r) => return Step::End(End::new(EndStatus::Failed, r)),
    }
    state.charge(wait);
    Step::Retry {
        in_place: wait <= rules.retry.inline_max,
        reason,
        wait,
    }
}

/// Time left until the start of the next wall-clock minute, and a little more so the retry
/// lands inside it.
pub(crate) fn until_next_minute(now_ms: i64) -> Duration {
    Duration::from_millis(60_000 - now_ms.rem_euclid(60_000) as u64 + 50)
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
