//! The decision core's rules, one case per `Action`, per send-error kind, per token failure and
//! per hold: no broker, Redis or simulator.

use super::*;

const NOW: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

fn rules() -> Rules {
    Rules {
        retry: RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            budget: Duration::from_secs(3600),
            inline_max: Duration::from_secs(3),
        },
        stop_probe: Duration::from_secs(30),
    }
}

const TEMPLATE: JobFacts = JobFacts {
    deduplicated: true,
    not_before_ms: None,
    not_after_ms: None,
};

const SUBSCRIPTION: JobFacts = JobFacts {
    deduplicated: false,
    ..TEMPLATE
};

fn fresh() -> RetryState {
    RetryState {
        attempts: 0,
        first_seen_ms: NOW - 1_000,
        maybe_sent_ms: None,
        transient_ms: 0,
    }
}

/// What the rules decide for a template job after a try that took `took`.
fn decide_template(state: &mut RetryState, tried: Tried<'_>, took: Duration) -> Decision {
    decide(&rules(), &TEMPLATE, state, tried, took, NOW)
}

fn reply(code: i64, state: &mut RetryState) -> Decision {
    let took = Duration::from_millis(40);
    decide_template(state, Tried::Replied { errcode: code }, took)
}

fn send_error(job: &JobFacts, e: SendError, state: &mut RetryState) -> Step {
    let took = Duration::from_millis(40);
    let d = decide(&rules(), job, state, Tried::SendFailed(&e), took, NOW);
    assert_eq!(
        d.change, None,
        "a send error changes nothing on the account"
    );
    d.step
}

/// A code from the table with this action (and one the table does not know for `Retry`).
fn code_for(action: Action) -> i64 {
    errcode::TABLE
        .iter()
        .find(|e| e.action == action && e.code != 40037)
        .map(|e| e.code)
        .unwrap_or_else(|| panic!("no code with action {action:?}"))
}

fn reason(step: &Step) -> Option<&str> {
    match step {
        Step::End(end) => end.reason.as_deref(),
        Step::Retry { reason, .. } => Some(reason),
        Step::Wait { reason, .. } | Step::Defer { reason, .. } => Some(reason.as_str()),
    }
}

#[test]
fn every_action_has_its_step_its_change_and_its_attempt_rule() {
    for action in Action::ALL {
        let code = code_for(action);
        let mut st = fresh();
        let d = reply(code, &mut st);
        let word = errcode::reason(code);
        match action {
            Action::Success => {
                assert_eq!(d.change, Some(AccountChange::Sent));
                assert_eq!(d.step, Step::End(End::sent()));
                assert_eq!(st.attempts, 1);
            }
            Action::Reject => {
                assert_eq!(d.change, None, "only 40037 forgets the catalogue");
                let Step::End(end) = &d.step else {
                    panic!("{code}: {:?}", d.step)
                };
                assert_eq!(end.status, EndStatus::Rejected);
                assert_eq!(end.errcode, Some(code), "the reply's errcode is reported");
                assert_eq!(end.reason.as_deref(), Some(&*word));
                assert_eq!(st.attempts, 1);
            }
            Action::RefreshToken | Action::Retry => {
                let want =
                    (action == Action::RefreshToken).then_some(AccountChange::InvalidateToken);
                assert_eq!(d.change, want, "{code}");
                let Step::Retry {
                    reason,
                    wait,
                    in_place,
                } = &d.step
                else {
                    panic!("{code}: {:?}", d.step)
                };
                assert_eq!(reason, &word);
                // The first backoff lies between a tenth of the base and the base.
                assert!(*wait >= Duration::from_millis(20) && *wait <= Duration::from_millis(200));
                assert!(in_place);
                assert_eq!(st.attempts, 1);
                assert_eq!(
                    st.transient_ms,
                    40 + wait.as_millis() as u64,
                    "the try and the wait are charged"
                );
            }
            Action::SlowDown => {
                let wait = until_next_minute(NOW);
                assert_eq!(d.change, Some(AccountChange::SlowDown(wait)));
                assert_eq!(
                    d.step,
                    Step::Defer {
                        delay: wait,
                        reason: DeferReason::RateMinute
                    }
                );
                assert_eq!(st.attempts, 0, "the minute limit is not an attempt");
            }
            Action::PauseQuota => {
                assert_eq!(d.change, Some(AccountChange::PauseQuota));
                assert_eq!(
                    d.step,
                    Step::Defer {
                        delay: Duration::from_secs(4),
                        reason: DeferReason::Quota
                    }
                );
                assert_eq!(st.attempts, 0, "the quota is not an attempt");
            }
            Action::StopAccount => {
                assert_eq!(d.change, Some(AccountChange::StopSends { errcode: code }));
                assert_eq!(
                    d.step,
                    Step::Defer {
                        delay: Duration::from_secs(30),
                        reason: DeferReason::AccountStopped
                    }
                );
                assert_eq!(st.attempts, 0, "a stopped account is not an attempt");
            }
        }
        assert_eq!(st.maybe_sent_ms, None, "a reply proves what WeChat did");
    }
}

#[test]
fn a_missing_template_also_forgets_the_catalogue() {
    let d = reply(40037, &mut fresh());
    assert_eq!(d.change, Some(AccountChange::ForgetCatalogue));
    assert!(matches!(
        d.step,
        Step::End(End {
            status: EndStatus::Rejected,
            errcode: Some(40037),
            ..
        })
    ));
}

#[test]
fn an_unknown_errcode_is_retried_under_its_own_name() {
    let d = reply(987_654, &mut fresh());
    assert_eq!(d.change, None);
    assert_eq!(reason(&d.step), Some("errcode_987654"));
    assert!(matches!(d.step, Step::Retry { .. }));
}

#[test]
fn a_refused_connection_is_retried_and_was_never_sent() {
    let mut st = fresh();
    let step = send_error(&TEMPLATE, SendError::Connect("refused".into()), &mut st);
    assert!(
        matches!(step, Step::Retry { in_place: true, .. }),
        "{step:?}"
    );
    assert_eq!(reason(&step), Some("connect"));
    assert_eq!((st.attempts, st.maybe_sent_ms), (1, None));
}

#[test]
fn a_timeout_or_bad_reply_is_retried_and_marks_the_job_maybe_sent() {
    for e in [SendError::Timeout, SendError::BadReply("<html>".into())] {
        let label = e.label();
        let mut st = fresh();
        let step = send_error(&TEMPLATE, e, &mut st);
        assert!(matches!(step, Step::Retry { .. }), "{step:?}");
        assert_eq!(reason(&step), Some(label.as_str()));
        assert_eq!(
            st.maybe_sent_ms,
            Some(NOW),
            "the first maybe-sent attempt is remembered"
        );
        // A later one keeps the first time: the window runs from it.
        let mut st = RetryState {
            maybe_sent_ms: Some(NOW - MIN),
            ..fresh()
        };
        send_error(&TEMPLATE, SendError::Timeout, &mut st);
        assert_eq!(st.maybe_sent_ms, Some(NOW - MIN));
    }
}

#[test]
fn a_server_error_status_is_retried_as_maybe_sent() {
    let mut st = fresh();
    let e = SendError::Status {
        status: 502,
        retry_after: None,
    };
    let step = send_error(&TEMPLATE, e, &mut st);
    assert_eq!(reason(&step), Some("http_502"));
    assert!(matches!(step, Step::Retry { .. }));
    assert_eq!(st.maybe_sent_ms, Some(NOW));
}

#[test]
fn a_redirect_or_client_error_status_is_rejected_without_a_retry() {
    for status in [301, 404] {
        let mut st = fresh();
        let e = SendError::Status {
            status,
            retry_after: None,
        };
        let step = send_error(&TEMPLATE, e, &mut st);
        let Step::End(end) = &step else {
            panic!("{status}: {step:?}")
        };
        assert_eq!(end.status, EndStatus::Rejected);
        assert_eq!(
            end.reason.as_deref(),
            Some(format!("http_{status}").as_str())
        );
        assert_eq!(end.errcode, None);
        assert_eq!(st.attempts, 1);
    }
}

#[test]
fn a_slow_down_status_waits_at_least_its_retry_after_and_defers_past_the_inline_limit() {
    let mut st = fresh();
    let e = SendError::Status {
        status: 429,
        retry_after: Some(Duration::from_secs(20)),
    };
    let step = send_error(&TEMPLATE, e, &mut st);
    assert_eq!(
        step,
        Step::Retry {
            reason: "http_429".into(),
            wait: Duration::from_secs(20),
            in_place: false
        }
    );
    assert_eq!(st.maybe_sent_ms, None, "a 429 was refused before WeChat");
}

#[test]
fn a_subscription_send_that_may_have_been_delivered_is_never_retried() {
    for e in [
        SendError::Timeout,
        SendError::BadReply("x".into()),
        SendError::Status {
            status: 500,
            retry_after: None,
        },
    ] {
        let step = send_error(&SUBSCRIPTION, e, &mut fresh());
        let Step::End(end) = step else { panic!() };
        assert_eq!(
            (end.status, end.reason.as_deref()),
            (EndStatus::Failed, Some("maybe_sent"))
        );
    }
    // Never sent: the subscription job may retry like any other.
    let step = send_error(&SUBSCRIPTION, SendError::Connect("x".into()), &mut fresh());
    assert!(matches!(step, Step::Retry { .. }));
}

#[test]
fn a_spent_budget_ends_failed_or_unknown_delivery() {
    let mut st = RetryState {
        attempts: 5,
        ..fresh()
    };
    let step = send_error(&TEMPLATE, SendError::Connect("x".into()), &mut st);
    let Step::End(end) = step else { panic!() };
    assert_eq!(
        (end.status, end.reason.as_deref()),
        (EndStatus::Failed, Some("connect"))
    );
    let mut st = RetryState {
        attempts: 5,
        maybe_sent_ms: Some(NOW - MIN),
        ..fresh()
    };
    let step = send_error(&TEMPLATE, SendError::Connect("x".into()), &mut st);
    let Step::End(end) = step else { panic!() };
    assert!(end.is_unknown_delivery());
    assert_eq!(end.note.as_deref(), Some("last error: connect"));
}

#[test]
fn token_failures_defer_a_stopped_account_and_retry_an_unavailable_endpoint() {
    let mut st = fresh();
    let retry_in = Duration::from_secs(90);
    let d = decide_template(&mut st, Tried::TokenStopped { retry_in }, Duration::ZERO);
    assert_eq!(
        d,
        Step::Defer {
            delay: retry_in,
            reason: DeferReason::AccountStopped
        }
        .into()
    );
    assert_eq!(st.attempts, 0);
    let retry_in = Duration::from_secs(2);
    let d = decide_template(
        &mut st,
        Tried::TokenUnavailable { retry_in },
        Duration::ZERO,
    );
    assert_eq!(
        d.step,
        Step::Retry {
            reason: "token_unavailable".into(),
            wait: retry_in,
            in_place: true
        },
        "the endpoint's retry_in is longer than the first backoff"
    );
    assert_eq!(st.attempts, 1);
}

#[test]
fn a_job_is_due_unless_early_expired_or_past_the_dedup_window() {
    let st = fresh();
    assert_eq!(due(&TEMPLATE, &st, NOW), Due::Now);
    let early = JobFacts {
        not_before_ms: Some(NOW + 6_000),
        ..TEMPLATE
    };
    assert_eq!(due(&early, &st, NOW), Due::NotYet(Duration::from_secs(6)));
    let on_time = JobFacts {
        not_before_ms: Some(NOW + 200),
        ..TEMPLATE
    };
    assert_eq!(
        due(&on_time, &st, NOW),
        Due::Now,
        "within a quarter second is on time"
    );
    let late = JobFacts {
        not_after_ms: Some(NOW - 1),
        ..TEMPLATE
    };
    assert_eq!(due(&late, &st, NOW), Due::End(End::expired()));
    let old = RetryState {
        maybe_sent_ms: Some(NOW - 10 * MIN),
        ..fresh()
    };
    let Due::End(end) = due(&TEMPLATE, &old, NOW) else {
        panic!()
    };
    assert!(end.is_unknown_delivery() && end.note.is_none());
}

#[test]
fn holds_wait_in_place_only_for_a_short_quota_wait() {
    let r = rules();
    let d = Duration::from_secs(2);
    assert_eq!(
        on_hold(
            &r,
            Hold::Quota {
                delay: d,
                reason: DeferReason::Quota
            }
        ),
        Step::Wait {
            delay: d,
            reason: DeferReason::Quota
        }
    );
    let long = Duration::from_secs(60);
    assert_eq!(
        on_hold(
            &r,
            Hold::Quota {
                delay: long,
                reason: DeferReason::RateMinute
            }
        ),
        Step::Defer {
            delay: long,
            reason: DeferReason::RateMinute
        }
    );
    assert_eq!(
        on_hold(&r, Hold::SendsStopped(d)),
        Step::Defer {
            delay: d,
            reason: DeferReason::AccountStopped
        }
    );
    assert_eq!(
        on_hold(&r, Hold::Rate(d)),
        Step::Defer {
            delay: d,
            reason: DeferReason::Rate
        }
    );
}

#[test]
fn the_next_minute_starts_within_a_minute() {
    assert_eq!(until_next_minute(60 * MIN), Duration::from_millis(60_050));
    assert_eq!(
        until_next_minute(60 * MIN + 59_000),
        Duration::from_millis(1_050)
    );
}
