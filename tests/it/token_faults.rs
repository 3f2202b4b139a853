//! Issue 19: faults of the token endpoint (`stable_token`), injected by the simulator's
//! `Behaviour::token_outage`. A transient fault (-1, a 5xx, a reply without a token) must
//! back off (one fetch at a time, pauses of 1 s, 2 s, 4 s ...) instead of calling the endpoint
//! once per job, and every job is sent once the endpoint answers again. The endpoint's own
//! daily limit (45009) stops the account and parks its jobs, with one call and no loop.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use wxdispatch::account::AccountStops;
use wxdispatch::account::token::{TokenCache, TokenLimits, TokenSource};
use wxdispatch::config::Secret;
use wxdispatch::metrics::Metrics;
use wxdispatch::tools::mock::{Behaviour, MockConfig, MockServer, TokenFault};
use wxdispatch::wechat::WechatClient;

/// `name{appid="<APPID>",<more>}` as a metric prefix.
fn series(name: &str, more: &str) -> String {
    format!("{name}{{appid=\"{APPID}\",{more}}}")
}

/// Twenty jobs wait through a transient token fault for 3.5 s, then the endpoint recovers.
/// `error_key` is the simulator's error counter for the fault.
async fn a_transient_token_fault_backs_off_and_recovers(fault: TokenFault, error_key: &str) {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            token_outage: Some(fault),
            ..Default::default()
        },
        // Enough attempts that no job gives up during the fault: this test is about the
        // endpoint's backoff, not the job's budget.
        env: &[
            ("WXD_MAX_ATTEMPTS", "30"),
            ("WXD_INLINE_RETRY_MAX_MS", "1000"),
        ],
        ..Default::default()
    })
    .await;
    let n = 20;
    h.publish_many(&jobs("tokfault", n)).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let during = h.mock.state.stats();
    // Calls at 0 s, then after pauses of 1 s and 2 s: at most 3 in 3.5 s. Without the pause
    // each of the 20 jobs would call on each of its retries.
    assert!(
        during.stable_token_calls <= 3,
        "{} token calls for {n} jobs in 3.5 s: the endpoint is not backed off",
        during.stable_token_calls
    );
    assert!(
        during.stable_token_calls >= 2,
        "the endpoint is tried again after the first pause ({} calls)",
        during.stable_token_calls
    );
    assert_eq!(during.send_requests, 0, "no send without a token");
    assert_eq!(
        h.depth(&h.config.amqp.outcomes_queue).await,
        0,
        "no job gave up during a short token fault"
    );
    let mut b = h.mock.state.behaviour();
    b.token_outage = None;
    h.mock.state.set_behaviour(b);
    let out = h.outcomes(n, Duration::from_secs(30)).await;
    assert_eq!(out.len(), n, "{:?}", by_status(&out));
    assert!(
        out.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );
    assert!(
        out.iter().all(|o| o["attempts"].as_u64().unwrap() > 1),
        "every job waited through at least one failed fetch"
    );
    let after = h.mock.state.stats();
    assert_eq!(after.messages, n as u64, "one message per job");
    let failed = after.errors.get(error_key).copied().unwrap_or(0);
    assert!(failed >= 2, "{:?}", after.errors);
    assert_eq!(
        after.stable_token_calls,
        failed + 1,
        "one successful fetch served all {n} jobs once the endpoint was back"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_system_error_backs_off_and_recovers() {
    a_transient_token_fault_backs_off_and_recovers(TokenFault::Errcode(-1), "-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_http_503_backs_off_and_recovers() {
    a_transient_token_fault_backs_off_and_recovers(TokenFault::Http(503), "http503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reply_without_a_token_backs_off_and_recovers() {
    a_transient_token_fault_backs_off_and_recovers(TokenFault::NoToken, "no_token").await;
}

/// The token endpoint's own daily limit (45009): the account stops (there is no point asking
/// again before the limit resets), its jobs are parked in the delay queues rather than
/// failed, and twenty jobs cost one token call, also over the following seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoints_daily_limit_stops_the_account_without_a_loop() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            token_outage: Some(TokenFault::Errcode(45009)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let n = 20;
    h.publish_many(&jobs("tokquota", n)).await;
    let deferred = series("wxdispatch_deferred_total", "reason=\"account_stopped\"");
    eventually("all jobs deferred", Duration::from_secs(15), || async {
        metric(&h.metrics().await, &deferred) >= n as f64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &series("wxdispatch_token_refreshes_total", "result=\"quota\"")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("wxdispatch_account_stopped{{appid=\"{APPID}\"}}")
        ),
        1.0
    );
    assert_eq!(metric(&m, &deferred), n as f64, "each job parked once");
    let stats = h.mock.state.stats();
    assert_eq!(stats.stable_token_calls, 1, "the circuit breaker holds");
    assert_eq!(stats.send_requests, 0);
    assert_eq!(
        h.depth(&h.config.amqp.outcomes_queue).await,
        0,
        "nothing failed"
    );
    h.cleanup().await;
}

/// A forced `stable_token` refresh that fails (503, or 45009 for the day's forced refreshes)
/// must not cost the good token the normal call has just returned, nor start the endpoint's
/// backoff: the cache hands that token out, the failure is counted, and the next fetch goes
/// to the endpoint at once. Only the forced calls fail here; normal calls are answered.
async fn a_failed_forced_refresh_keeps_the_good_token(fault: TokenFault, result: &str) {
    let mock = MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(APPID.into(), SECRET.into())],
            behaviour: Behaviour {
                forced_token_fault: Some(fault),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let tokens = TokenCache::new(
        APPID.into(),
        TokenSource::Stable {
            secret: Secret::new(SECRET),
        },
        WechatClient::new(&mock.base_url(), Duration::from_secs(2)),
        metrics.clone(),
        TokenLimits {
            stop_probe: Duration::from_secs(60),
            force_budget: 10,
            shared: None,
            stops: Arc::new(AccountStops::new(APPID, &metrics)),
        },
    );
    // A fresh token is rejected; stable_token hands it back, so a refresh is forced, and the
    // forced call fails.
    let good = tokens.get().await.unwrap();
    tokens.invalidate(&good).await;
    let after = tokens
        .get()
        .await
        .expect("the good token the normal call returned");
    assert_eq!(after.value, good.value);
    assert!(!after.forced);
    let stats = mock.state.stats();
    assert_eq!(
        stats.stable_token_calls, 3,
        "fetch, normal call, forced call"
    );
    assert_eq!(stats.forced_refreshes, 0);
    let m = metrics.render();
    assert_eq!(
        metric(
            &m,
            &series(
                "wxdispatch_token_refreshes_total",
                &format!("result=\"{result}\"")
            )
        ),
        1.0,
        "the failed forced refresh is counted as {result}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("wxdispatch_account_stopped{{appid=\"{APPID}\"}}")
        ),
        0.0
    );
    // No backoff was started: the token is rejected again (no longer fresh for a force, as
    // the 30 s spacing says), and the next fetch reaches the endpoint and succeeds.
    tokens.invalidate(&after).await;
    let again = tokens.get().await.expect("no endpoint backoff");
    assert_eq!(again.value, good.value);
    assert_eq!(mock.state.stats().stable_token_calls, 4);
}

#[tokio::test]
async fn a_forced_refresh_answered_503_keeps_the_good_token() {
    a_failed_forced_refresh_keeps_the_good_token(TokenFault::Http(503), "force_error").await;
}

#[tokio::test]
async fn a_forced_refresh_answered_45009_keeps_the_good_token() {
    a_failed_forced_refresh_keeps_the_good_token(TokenFault::Errcode(45009), "force_quota").await;
}
