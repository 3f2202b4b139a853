//! Issue 3: the error policy, the token lifecycle and retries that never duplicate a message.
//!
//! Each test drives one WeChat behaviour through the simulator (mostly with in-band faults:
//! an openid `fail:<code>` always gets `<code>`, `flaky:<code>:<n>:<tag>` gets it on the first
//! `n` tries) and checks the action the worker took, the attempts it made and the outcome.

use std::time::Duration;

use serde_json::Value;

use wxdispatch::tools::mock::Behaviour;
use wxdispatch::wechat::errcode;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

/// The single outcome of a one-job test.
async fn only_outcome(h: &Harness) -> Value {
    let mut got = h.outcomes(1, WAIT).await;
    assert_eq!(got.len(), 1, "expected one outcome within {WAIT:?}");
    got.remove(0)
}

/// `name{appid="<APPID>"...` as a metric prefix, with more labels when given.
fn series(name: &str, more: &str) -> String {
    if more.is_empty() {
        format!("{name}{{appid=\"{APPID}\"}}")
    } else {
        format!("{name}{{appid=\"{APPID}\",{more}}}")
    }
}

async fn account_stopped(h: &Harness) -> f64 {
    metric(
        &h.metrics().await,
        &series("wxdispatch_account_stopped", ""),
    )
}

fn errors(h: &Harness, key: &str) -> u64 {
    h.mock.state.stats().errors.get(key).copied().unwrap_or(0)
}

/// Two system-busy answers, then success: `sent` on the third try, one message, and each
/// retry counted with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_busy_twice_then_success_is_sent_on_the_third_attempt() {
    let h = Harness::start(Opts::default()).await;
    h.publish(&job("busy-1", "flaky:-1:2:a")).await;
    let o = only_outcome(&h).await;
    assert_eq!(o["status"], "sent", "{o}");
    assert_eq!(o["attempts"], 3);
    assert_eq!(o["errcode"], 0);
    let stats = h.mock.state.stats();
    assert_eq!(stats.errors.get("-1"), Some(&2));
    assert_eq!(stats.messages, 1);
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &series("wxdispatch_retries_total", "reason=\"system_busy\"")
        ),
        2.0
    );
    h.cleanup().await;
}

/// A 502 from a gateway, then success: `sent` on the second try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_then_success_is_sent() {
    let h = Harness::start(Opts::default()).await;
    h.publish(&job("gw-1", "flaky:http502:1:a")).await;
    let o = only_outcome(&h).await;
    assert_eq!(o["status"], "sent", "{o}");
    assert_eq!(o["attempts"], 2);
    assert_eq!(errors(&h, "http502"), 1);
    assert_eq!(h.mock.state.stats().messages, 1);
    h.cleanup().await;
}

/// The dangerous case: WeChat accepts the message but the reply never arrives in time. The
/// retry carries the same `client_msg_id`, so WeChat deduplicates it: one message, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_send_is_retried_with_the_same_client_msg_id_and_sent_once() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            stall_ms: 3_000,
            ..Default::default()
        },
        env: &[("WXD_HTTP_TIMEOUT_MS", "300")],
        ..Default::default()
    })
    .await;
    h.publish(&job("slow-1", "flaky:timeout:1:a")).await;
    let o = only_outcome(&h).await;
    assert_eq!(o["status"], "sent", "{o}");
    assert_eq!(o["attempts"], 2);
    let stats = h.mock.state.stats();
    assert_eq!(stats.send_requests, 2, "one timed-out try, one retry");
    assert_eq!(stats.messages, 1, "the user got exactly one message");
    assert_eq!(
        stats.duplicates_suppressed, 1,
        "the retry reused client_msg_id"
    );
    h.cleanup().await;
}

/// A message whose every reply times out may have been delivered on the first try, so when
/// the retry budget runs out it ends `failed` with `unknown_delivery` (never a plain
/// `timeout` that invites a resend), and every retry was deduplicated by WeChat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_after_timeouts_reports_unknown_delivery() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            stall_ms: 3_000,
            ..Default::default()
        },
        env: &[("WXD_HTTP_TIMEOUT_MS", "300"), ("WXD_MAX_ATTEMPTS", "3")],
        ..Default::default()
    })
    .await;
    h.publish(&job("slow-2", "flaky:timeout:10:b")).await;
    let o = only_outcome(&h).await;
    assert_eq!(o["status"], "failed", "{o}");
    assert_eq!(o["reason"], "unknown_delivery");
    assert_eq!(o["attempts"], 3);
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages, 1);
    assert_eq!(stats.duplicates_suppressed, 2);
    h.cleanup().await;
}

/// The simulator expires every token while ~30 sends are in flight: they all fail with 42001,
/// yet compare-and-invalidate plus single flight make that one token fetch (no stampede),
/// and every job is still `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_mid_run_costs_one_fetch_and_every_job_is_sent() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 100,
            ..Default::default()
        },
        env: &[("WXD_RATE_PER_SEC", "300"), ("WXD_CONCURRENCY", "64")],
        ..Default::default()
    })
    .await;
    let n = 600;
    let jobs: Vec<_> = (0..n)
        .map(|i| job(&format!("exp-{i}"), &format!("user-{i}")))
        .collect();
    h.publish_many(&jobs).await;
    eventually("150 messages sent before the expiry", WAIT, || async {
        h.mock.state.stats().messages >= 150
    })
    .await;
    let before = h.mock.state.stats();
    h.mock.state.expire_tokens();
    let out = h.outcomes(n, Duration::from_secs(20)).await;
    let counts = by_status(&out);
    assert_eq!(counts.get("sent"), Some(&n), "{counts:?}");
    let after = h.mock.state.stats();
    assert!(
        before.messages < n as u64,
        "the expiry happened while jobs were flowing"
    );
    let expired = after.errors.get("42001").copied().unwrap_or(0);
    assert!(
        expired >= 2,
        "several in-flight sends saw the expired token ({expired})"
    );
    assert_eq!(
        after.stable_token_calls - before.stable_token_calls,
        1,
        "one fetch for {expired} failures"
    );
    assert_eq!(after.forced_refreshes, 0, "an expired token needs no force");
    assert_eq!(after.messages, n as u64, "one message per job");
    h.cleanup().await;
}

/// Every token error a send can return (40001, 40014, 41001, 41006, 42001) drops the token,
/// fetches another and retries: `sent` on the second attempt. The simulator's token is in
/// fact still valid, so `stable_token` hands the same one back and one forced refresh is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_error_refreshes_the_token_and_retries() {
    for code in [40001, 40014, 41001, 41006, 42001] {
        let h = Harness::start(Opts::default()).await;
        h.publish(&job(&format!("tok-{code}"), &format!("flaky:{code}:1:a")))
            .await;
        let o = only_outcome(&h).await;
        assert_eq!(o["status"], "sent", "{code}: {o}");
        assert_eq!(o["attempts"], 2, "{code}");
        let stats = h.mock.state.stats();
        assert_eq!(stats.errors.get(&code.to_string()), Some(&1), "{code}");
        assert_eq!(stats.forced_refreshes, 1, "{code}");
        assert_eq!(
            stats.stable_token_calls, 3,
            "{code}: first fetch, a normal refetch (same token), one forced refresh"
        );
        let m = h.metrics().await;
        assert_eq!(
            metric(
                &m,
                &series(
                    "wxdispatch_retries_total",
                    &format!("reason=\"{}\"", errcode::reason(code))
                )
            ),
            1.0,
            "{code}"
        );
        h.cleanup().await;
    }
}

/// Thirty sends fail with 40001 on the same (valid, fresh) token at once: one forced refresh
/// for all of them, and all are sent. When the forced token is rejected too, the worker does
/// not force again (a new token did not fix it) and holds nobody off the account: the job
/// takes a normal fetch and its ordinary backoff, and is sent (issue 14.4; the old code held
/// every job of the account for 30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_token_rejections_forces_one_refresh_and_never_loops() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 200,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let jobs: Vec<_> = (0..30)
        .map(|i| job(&format!("burst-{i}"), &format!("flaky:40001:1:{i}")))
        .collect();
    h.publish_many(&jobs).await;
    let out = h.outcomes(30, WAIT).await;
    assert_eq!(
        by_status(&out).get("sent"),
        Some(&30),
        "{:?}",
        by_status(&out)
    );
    let stats = h.mock.state.stats();
    assert_eq!(stats.forced_refreshes, 1);
    assert_eq!(stats.stable_token_calls, 3);

    // The forced token is rejected too: no second forced refresh, one normal fetch (which
    // hands the same token back), and the job is sent on its next try.
    h.publish(&job("late", "flaky:40001:1:late")).await;
    let late = only_outcome(&h).await;
    assert_eq!(
        (&late["status"], &late["attempts"]),
        (&"sent".into(), &2.into()),
        "{late}"
    );
    let stats = h.mock.state.stats();
    assert_eq!(stats.forced_refreshes, 1, "no second forced refresh");
    assert_eq!(stats.forced_too_soon, 0);
    assert_eq!(
        stats.stable_token_calls, 4,
        "one normal fetch for the late job"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &series(
                "wxdispatch_token_force_skipped_total",
                "reason=\"forced_token_rejected\""
            )
        ),
        1.0
    );
    h.cleanup().await;
}

/// Permanent errors end `rejected` on the first attempt, with WeChat's code and the table's
/// reason; a 4xx from WeChat's front end too, and a redirect (never followed: it would carry
/// the access token elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_rejected_at_once() {
    let h = Harness::start(Opts::default()).await;
    let codes = [40003, 43004, 40037, 47003, 40036, 43101];
    for code in codes {
        h.publish(&job(&format!("perm-{code}"), &format!("fail:{code}")))
            .await;
    }
    h.publish(&job("perm-http", "fail:http403")).await;
    h.publish(&job("perm-redirect", "fail:http302")).await;
    let out = h.outcomes(codes.len() + 2, WAIT).await;
    assert_eq!(out.len(), codes.len() + 2);
    for o in &out {
        assert_eq!(o["status"], "rejected", "{o}");
        assert_eq!(o["attempts"], 1, "{o}");
        if o["id"] == "perm-http" {
            assert_eq!(o["reason"], "http_403");
            continue;
        }
        if o["id"] == "perm-redirect" {
            assert_eq!(o["reason"], "http_302");
            continue;
        }
        let code = o["errcode"].as_i64().expect("an errcode");
        assert_eq!(o["id"], format!("perm-{code}"));
        assert_eq!(o["reason"], errcode::reason(code).as_ref(), "{o}");
    }
    let stats = h.mock.state.stats();
    assert_eq!(stats.send_requests, codes.len() as u64 + 2, "no retries");
    assert_eq!(stats.messages, 0);
    h.cleanup().await;
}

/// Transient errors that never clear use up `max_attempts` and end `failed` with the last
/// reason; after 5xx replies (which may have been delivered) the reason is `unknown_delivery`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_that_outlast_max_attempts_fail() {
    let h = Harness::start(Opts {
        env: &[("WXD_MAX_ATTEMPTS", "3")],
        ..Default::default()
    })
    .await;
    h.publish(&job("busy-forever", "fail:-1")).await;
    h.publish(&job("gw-forever", "fail:http502")).await;
    let out = h.outcomes(2, WAIT).await;
    assert_eq!(out.len(), 2);
    for o in &out {
        assert_eq!(o["status"], "failed", "{o}");
        assert_eq!(o["attempts"], 3, "{o}");
        let want = if o["id"] == "busy-forever" {
            "system_busy"
        } else {
            "unknown_delivery"
        };
        assert_eq!(o["reason"], want, "{o}");
    }
    assert_eq!(h.mock.state.stats().send_requests, 6);
    h.cleanup().await;
}

/// Publishes a job for `touser` whose `not_after` is `secs` from now, and returns that time.
async fn publish_due_in(
    h: &Harness,
    id: &str,
    touser: &str,
    secs: i64,
) -> chrono::DateTime<chrono::Utc> {
    let not_after = chrono::Utc::now() + chrono::Duration::seconds(secs);
    let mut j = job(id, touser);
    j["not_after"] = serde_json::json!(not_after.to_rfc3339());
    h.publish(&j).await;
    not_after
}

/// The outcome is `expired` / `not_after_passed`, finished after `not_after` (not before it).
fn assert_expired_after(o: &Value, not_after: chrono::DateTime<chrono::Utc>) {
    assert_eq!(o["status"], "expired", "{o}");
    assert_eq!(o["reason"], "not_after_passed", "{o}");
    let finished: chrono::DateTime<chrono::Utc> =
        o["finished_at"].as_str().unwrap().parse().unwrap();
    assert!(
        finished > not_after,
        "ended before its not_after ({not_after}): {o}"
    );
}

/// Only `not_after` ends a job that is still retrying with attempts and budget to spare: system
/// busy on every try ends `expired` once its `not_after` has passed (not `failed`, and not
/// before that time), after more than one try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_retrying_past_its_not_after_expires() {
    let h = Harness::start(Opts {
        env: &[
            ("WXD_MAX_ATTEMPTS", "1000"),
            ("WXD_RETRY_BUDGET_SECS", "600"),
            ("WXD_RETRY_BASE_MS", "200"),
        ],
        ..Default::default()
    })
    .await;
    let not_after = publish_due_in(&h, "retry-expires", "fail:-1", 3).await;
    let o = only_outcome(&h).await;
    assert_expired_after(&o, not_after);
    let tries = errors(&h, "-1");
    assert!(tries >= 2, "it was retrying: {tries} tries");
    assert_eq!(o["attempts"].as_u64(), Some(tries), "{o}");
    assert_eq!(h.mock.state.stats().messages, 0);
    h.cleanup().await;
}

/// Only `not_after` ends a job parked on a quota pause: with WeChat answering 45009 to every
/// send and a probe every 2 s, a job whose `not_after` is 5 s away sits in a delay queue, and
/// ends `expired` once that time has passed (not before it, and not `failed` although the
/// retry budget is 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_parked_on_quota_expires_at_its_not_after() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            quota: Some(0),
            ..Default::default()
        },
        env: &[
            ("WXD_QUOTA_PROBE_SECS", "2"),
            ("WXD_INLINE_RETRY_MAX_MS", "10"),
            ("WXD_RETRY_BUDGET_SECS", "1"),
        ],
        ..Default::default()
    })
    .await;
    let not_after = publish_due_in(&h, "quota-expires", "user-q", 5).await;
    eventually("the job parked on quota", WAIT, || async {
        parked(&h).await == 1
    })
    .await;
    let o = only_outcome(&h).await;
    assert_expired_after(&o, not_after);
    let m = h.metrics().await;
    assert!(
        metric(&m, &series("wxdispatch_deferred_total", "reason=\"quota\"")) >= 1.0,
        "it was parked on quota"
    );
    assert!(errors(&h, "45009") >= 1);
    assert_eq!(h.mock.state.stats().messages, 0);
    assert_eq!(parked(&h).await, 0, "nothing left parked");
    h.cleanup().await;
}

/// With inline retries limited to 10 ms, every backoff goes through a delay queue. The jobs
/// come back with their attempt count (the `x-wxd-attempts` header): the one that recovers
/// reports 3 attempts, and the one that never does stops at `max_attempts` instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backoff_goes_through_the_delay_queue_and_keeps_its_attempts() {
    let h = Harness::start(Opts {
        env: &[
            ("WXD_INLINE_RETRY_MAX_MS", "10"),
            ("WXD_RETRY_BASE_MS", "500"),
            ("WXD_MAX_ATTEMPTS", "3"),
        ],
        ..Default::default()
    })
    .await;
    h.publish(&job("delayed-ok", "flaky:-1:2:a")).await;
    h.publish(&job("delayed-fail", "fail:-1")).await;
    let out = h.outcomes(2, WAIT).await;
    assert_eq!(out.len(), 2);
    for o in &out {
        assert_eq!(o["attempts"], 3, "{o}");
        let want = if o["id"] == "delayed-ok" {
            "sent"
        } else {
            "failed"
        };
        assert_eq!(o["status"], want, "{o}");
    }
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &series("wxdispatch_deferred_total", "reason=\"backoff\"")
        ),
        4.0,
        "two trips through the delay queue per job"
    );
    assert_eq!(h.mock.state.stats().send_requests, 6);
    h.cleanup().await;
}

/// The simulator knows another secret: the token endpoint answers 40125 and the account stops.
/// Its jobs are deferred (not failed), the stop is visible in /metrics, and twenty jobs cost
/// one token call, also over the following seconds: no loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_stops_the_account_without_a_token_endpoint_loop() {
    let h = Harness::start(Opts {
        accounts: vec![(APPID.to_string(), "not-the-workers-secret".to_string())],
        ..Default::default()
    })
    .await;
    let jobs: Vec<_> = (0..20)
        .map(|i| job(&format!("stop-{i}"), &format!("user-{i}")))
        .collect();
    h.publish_many(&jobs).await;
    eventually("all 20 jobs parked", WAIT, || async {
        parked(&h).await == 20
    })
    .await;
    assert_eq!(account_stopped(&h).await, 1.0);
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &series(
                "wxdispatch_token_refreshes_total",
                "result=\"config_error\""
            )
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            &series("wxdispatch_deferred_total", "reason=\"account_stopped\"")
        ),
        20.0
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = h.mock.state.stats();
    assert_eq!(stats.stable_token_calls, 1, "the circuit breaker holds");
    assert_eq!(stats.errors.get("40125"), Some(&1));
    assert_eq!(stats.send_requests, 0);
    assert_eq!(
        h.depth(&h.config.amqp.outcomes_queue).await,
        0,
        "nothing failed"
    );
    h.cleanup().await;
}

/// With a 1 s probe interval the stopped account's jobs keep cycling through the delay queue
/// and the token endpoint is probed about once a second, not once per job. Once the operator
/// fixes the secret, the next probe resumes the account and every job is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_account_probes_once_per_interval_and_resumes_when_fixed() {
    let h = Harness::start(Opts {
        accounts: vec![(APPID.to_string(), "not-the-workers-secret".to_string())],
        env: &[("WXD_ACCOUNT_STOP_PROBE_SECS", "1")],
        ..Default::default()
    })
    .await;
    let jobs: Vec<_> = (0..20)
        .map(|i| job(&format!("probe-{i}"), &format!("user-{i}")))
        .collect();
    h.publish_many(&jobs).await;
    let start = std::time::Instant::now();
    eventually("the account stops", WAIT, || async {
        account_stopped(&h).await == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = h.mock.state.stats().stable_token_calls;
    let bound = start.elapsed().as_secs() + 2;
    assert!(
        calls <= bound,
        "{calls} token calls in {:?}: more than one per probe interval",
        start.elapsed()
    );
    assert_eq!(
        h.depth(&h.config.amqp.outcomes_queue).await,
        0,
        "nothing failed"
    );

    h.mock.state.add_account(APPID, SECRET);
    let out = h.outcomes(20, WAIT).await;
    assert_eq!(
        by_status(&out).get("sent"),
        Some(&20),
        "{:?}",
        by_status(&out)
    );
    assert_eq!(account_stopped(&h).await, 0.0, "the gauge clears on resume");
    h.cleanup().await;
}

/// 40164 (IP not whitelisted) and 48001 (API unauthorized) from a send stop the account: the
/// gauge says so, and later jobs are deferred without calling WeChat at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_from_a_send_stop_the_account() {
    for code in [40164, 48001] {
        let h = Harness::start(Opts::default()).await;
        h.publish(&job("first", &format!("fail:{code}"))).await;
        eventually("the account stops", WAIT, || async {
            account_stopped(&h).await == 1.0
        })
        .await;
        let jobs: Vec<_> = (0..5)
            .map(|i| job(&format!("held-{i}"), &format!("user-{i}")))
            .collect();
        h.publish_many(&jobs).await;
        eventually("all 6 jobs parked", WAIT, || async {
            parked(&h).await == 6
        })
        .await;
        let stats = h.mock.state.stats();
        assert_eq!(
            stats.send_requests, 1,
            "{code}: held jobs never reached WeChat"
        );
        assert_eq!(stats.errors.get(&code.to_string()), Some(&1), "{code}");
        let m = h.metrics().await;
        assert_eq!(
            metric(
                &m,
                &series("wxdispatch_deferred_total", "reason=\"account_stopped\"")
            ),
            6.0,
            "{code}"
        );
        assert_eq!(
            h.depth(&h.config.amqp.outcomes_queue).await,
            0,
            "{code}: nothing failed"
        );
        h.cleanup().await;
    }
}

/// A stop from a send is probed again after the interval; a successful probe clears the
/// gauge and the held jobs are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_stop_resumes_after_a_successful_probe() {
    let h = Harness::start(Opts {
        env: &[("WXD_ACCOUNT_STOP_PROBE_SECS", "1")],
        ..Default::default()
    })
    .await;
    h.publish(&job("ip", "flaky:40164:1:a")).await;
    eventually("the account stops", WAIT, || async {
        account_stopped(&h).await == 1.0
    })
    .await;
    let jobs: Vec<_> = (0..5)
        .map(|i| job(&format!("after-{i}"), &format!("user-{i}")))
        .collect();
    h.publish_many(&jobs).await;
    let out = h.outcomes(6, WAIT).await;
    assert_eq!(
        by_status(&out).get("sent"),
        Some(&6),
        "{:?}",
        by_status(&out)
    );
    let ip = out.iter().find(|o| o["id"] == "ip").unwrap();
    assert_eq!(ip["attempts"], 1, "a stop gives the attempt back");
    assert_eq!(account_stopped(&h).await, 0.0);
    h.cleanup().await;
}

/// 45011 (the per-minute limit) defers the job to the next minute through a delay queue
/// instead of retrying at once, and holds later jobs too; nothing fails, and both are sent once
/// the next minute has begun (this test waits up to a minute for that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minute_limit_defers_jobs_to_the_next_minute() {
    // Start well inside a minute, so the wait is longer than an inline retry.
    let into_minute = chrono::Utc::now().timestamp_millis().rem_euclid(60_000);
    if into_minute > 50_000 {
        tokio::time::sleep(Duration::from_millis((60_100 - into_minute) as u64)).await;
    }
    let h = Harness::start(Opts::default()).await;
    h.publish(&job("minute-1", "flaky:45011:1:a")).await;
    let next_minute = (chrono::Utc::now().timestamp_millis() / 60_000 + 1) * 60_000;
    eventually("the job parked", WAIT, || async { parked(&h).await == 1 }).await;
    h.publish(&job("minute-2", "user-2")).await;
    eventually("the second job parked", WAIT, || async {
        parked(&h).await == 2
    })
    .await;
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &series("wxdispatch_deferred_total", "reason=\"rate_minute\"")
        ),
        2.0
    );
    let stats = h.mock.state.stats();
    assert_eq!(
        stats.send_requests, 1,
        "the second job waited without sending"
    );
    assert_eq!(h.depth(&h.config.amqp.outcomes_queue).await, 0);

    let out = h.outcomes(2, Duration::from_secs(90)).await;
    assert_eq!(out.len(), 2, "both jobs are sent after the minute turns");
    for o in &out {
        assert_eq!(o["status"], "sent", "{o}");
        let at = chrono::DateTime::parse_from_rfc3339(o["finished_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        assert!(
            at >= next_minute,
            "sent in the same minute as the 45011: {o}"
        );
    }
    let first = out.iter().find(|o| o["id"] == "minute-1").unwrap();
    assert_eq!(
        first["attempts"], 1,
        "a 45011 refused the send before trying it: it uses up no attempt ({first})"
    );
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages, 2);
    assert_eq!(
        stats.send_requests, 3,
        "one refused try, then one send each"
    );
    h.cleanup().await;
}

/// The token is refreshed in the background shortly before it expires, so sends rarely wait
/// for one: with a 5-second token lifetime (classic mode, where every fetch is a new token),
/// the token endpoint is called again without any send asking for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_in_the_background_before_it_expires() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            token_ttl_secs: 5,
            ..Default::default()
        },
        env: &[("WXD_TOKEN_MODE", "classic")],
        ..Default::default()
    })
    .await;
    h.publish(&job("bg-1", "u1")).await;
    assert_eq!(h.outcomes(1, Duration::from_secs(10)).await.len(), 1);
    let after_first = h.mock.state.stats().token_calls;
    assert_eq!(after_first, 1);
    // Due about 4 s after the fetch (two margins before the expiry); waited for by count.
    eventually("a background refresh", Duration::from_secs(30), || async {
        h.mock.state.stats().token_calls >= 2
    })
    .await;
    assert_eq!(
        h.mock.state.stats().renewed_before_expiry,
        1,
        "the second fetch came while the first token was still valid"
    );
    // The next send finds a fresh token and needs no retry.
    h.publish(&job("bg-2", "u2")).await;
    let o = h.outcomes(1, Duration::from_secs(10)).await;
    assert_eq!(o[0]["status"], "sent");
    assert_eq!(o[0]["attempts"], 1);
    assert!(
        !h.mock.state.stats().errors.contains_key("42001"),
        "no expired-token error"
    );
    h.cleanup().await;
}

/// Issue 14: HTTP replies follow the policy table's HTTP rows. 408, 425 and 429 are retried
/// (waiting at least the `Retry-After: 1` the simulator sends) instead of rejected; a 200
/// without WeChat's `errcode` (an HTML page, other JSON) is "maybe sent", retried with the same
/// `client_msg_id`, and never reported `sent` on its own; other 4xx still reject at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_statuses_follow_the_policy_table() {
    let h = Harness::start(Opts::default()).await;
    let started = std::time::Instant::now();
    h.publish(&job("throttled", "flaky:http429:2:a")).await;
    h.publish(&job("timeout408", "flaky:http408:1:b")).await;
    h.publish(&job("early425", "flaky:http425:1:c")).await;
    h.publish(&job("html", "flaky:html200:1:d")).await;
    h.publish(&job("nojson", "flaky:json200:1:e")).await;
    h.publish(&job("forbidden", "fail:http403")).await;
    let out = h.outcomes(6, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 6, "{out:?}");
    let by_id = |id: &str| {
        out.iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("no outcome for {id}"))
            .clone()
    };
    let o = by_id("throttled");
    assert_eq!(
        (&o["status"], &o["attempts"]),
        (&"sent".into(), &3.into()),
        "{o}"
    );
    // Two 429s, each asking for a second: the job cannot have been sent sooner.
    assert!(
        started.elapsed() >= Duration::from_millis(1_900),
        "Retry-After was honoured: {:?}",
        started.elapsed()
    );
    for id in ["timeout408", "early425", "html", "nojson"] {
        let o = by_id(id);
        assert_eq!(
            (&o["status"], &o["attempts"]),
            (&"sent".into(), &2.into()),
            "{o}"
        );
    }
    let o = by_id("forbidden");
    assert_eq!(
        (&o["status"], &o["reason"]),
        (&"rejected".into(), &"http_403".into()),
        "{o}"
    );
    assert_eq!(errors(&h, "http429"), 2);
    assert_eq!(errors(&h, "html200"), 1);
    assert_eq!(errors(&h, "json200"), 1);
    let stats = h.mock.state.stats();
    eprintln!(
        "figure: 429x2/408/425/html200/json200/403: {} messages, {} suppressed resends, sent after {:?}",
        stats.messages,
        stats.duplicates_suppressed,
        started.elapsed()
    );
    assert_eq!(stats.messages, 5, "one message per job that was sent");
    assert_eq!(
        stats.duplicates_suppressed, 2,
        "the retries after an HTML or errcode-less 200 reused client_msg_id"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &series("wxdispatch_retries_total", "reason=\"http_429\"")
        ),
        2.0,
        "throttling retries are counted"
    );
    h.cleanup().await;
}
