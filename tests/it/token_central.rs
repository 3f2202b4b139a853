//! Issue 28.1: tokens from a central token service (`token_mode = central`), played by the
//! simulator (`tools::mock::central`). The worker holds no AppSecret; it asks
//! `GET {url}?appid=A` with a bearer token, reports a refused token once with `&invalid=`, and
//! a service that fails, is slow or keeps a refused token gets the same backoff and stop rules
//! as WeChat's own token endpoints: nothing is lost and the account recovers.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use wxdispatch::account::AccountStops;
use wxdispatch::account::token::{TokenCache, TokenLimits, TokenSource};
use wxdispatch::config::{Credentials, Secret, TokenMode};
use wxdispatch::metrics::Metrics;
use wxdispatch::tools::mock::MockServer;
use wxdispatch::tools::mock::central::CentralBehaviour;
use wxdispatch::tools::mock::{Behaviour, TokenFault};
use wxdispatch::wechat::WechatClient;

const BEARER: &str = "central-bearer-7f3a";

/// A harness whose worker takes its tokens from the simulator's central service, with no
/// AppSecret loaded and the bearer token the service requires.
async fn central_harness(
    behaviour: Behaviour,
    central: CentralBehaviour,
    env: &[(&str, &str)],
) -> Harness {
    let mut h = Harness::start(Opts {
        behaviour,
        env,
        no_worker: true,
        ..Default::default()
    })
    .await;
    h.mock.state.set_central(CentralBehaviour {
        bearer: Some(BEARER.into()),
        ..central
    });
    h.config.wechat.token_mode = TokenMode::Central;
    h.config.wechat.token_url = Some(format!("{}/central/token", h.mock.base_url()));
    let mut credentials = Credentials::default();
    credentials.token_url_auth = Some(Secret::new(BEARER));
    h.config.credentials = credentials;
    h.start_worker().await;
    h
}

fn stopped_gauge() -> String {
    format!("wxdispatch_account_stopped{{appid=\"{APPID}\"}}")
}

/// Jobs are sent with the service's token: one call for all of them, never a call of
/// WeChat's token endpoints, and the bearer token accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_sent_with_tokens_from_the_central_service() {
    let h = central_harness(Behaviour::default(), CentralBehaviour::default(), &[]).await;
    let n = 20;
    h.publish_many(&jobs("central", n)).await;
    let out = h.outcomes(n, Duration::from_secs(20)).await;
    assert_eq!(out.len(), n, "{:?}", by_status(&out));
    assert!(
        out.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );
    let central = h.mock.state.central_stats();
    assert_eq!(central.calls, 1, "{central:?}");
    assert_eq!(central.unauthorized, 0, "the bearer token is sent");
    assert_eq!(central.invalid_calls, 0);
    let stats = h.mock.state.stats();
    assert_eq!(stats.stable_token_calls + stats.token_calls, 0);
    assert_eq!(stats.messages, n as u64);
    h.cleanup().await;
}

/// WeChat refuses the token the service still hands out (someone else refreshed it): the
/// burst of 40001s costs exactly one `invalid=` call, the service issues a new token, and
/// every job is sent on its retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_central_token_costs_one_invalid_call_and_the_retry_succeeds() {
    let h = central_harness(Behaviour::default(), CentralBehaviour::default(), &[]).await;
    h.publish(&job("central-first", "central-first-user")).await;
    let first = h.outcomes(1, Duration::from_secs(10)).await;
    assert_eq!(first[0]["status"], "sent", "{first:?}");
    let refused = h
        .mock
        .state
        .revoke_central_token(APPID)
        .expect("a held token");
    let n = 20;
    h.publish_many(&jobs("central-refused", n)).await;
    let out = h.outcomes(n, Duration::from_secs(20)).await;
    assert_eq!(out.len(), n, "{:?}", by_status(&out));
    assert!(
        out.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );
    assert!(
        out.iter().any(|o| o["attempts"].as_u64().unwrap() > 1),
        "the refused token was used first"
    );
    let central = h.mock.state.central_stats();
    assert_eq!(
        central.invalid_calls, 1,
        "one report for the burst: {central:?}"
    );
    assert_eq!(
        central.calls, 2,
        "the first fetch and the report: {central:?}"
    );
    assert_eq!(central.issued, 2);
    let stats = h.mock.state.stats();
    assert!(
        stats.errors.get("40001").copied().unwrap_or(0) >= 1,
        "{:?}",
        stats.errors
    );
    assert_eq!(stats.messages, n as u64 + 1, "one message per job");
    assert_ne!(h.mock.state.revoke_central_token(APPID), Some(refused));
    h.cleanup().await;
}

/// Twenty jobs wait through a fault of the central service for 3.5 s, then it recovers:
/// the service is called once per backoff pause (1 s, 2 s ...), not once per job, nothing
/// ends while it is down, and every job is sent once it answers.
async fn a_central_fault_backs_off_and_recovers(central: CentralBehaviour, max_calls: u64) {
    let h = central_harness(
        Behaviour::default(),
        central,
        &[
            ("WXD_MAX_ATTEMPTS", "30"),
            ("WXD_INLINE_RETRY_MAX_MS", "1000"),
        ],
    )
    .await;
    let n = 20;
    h.publish_many(&jobs("central-fault", n)).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let during = h.mock.state.central_stats();
    assert!(
        during.calls <= max_calls,
        "{} central calls for {n} jobs in 3.5 s: not backed off",
        during.calls
    );
    assert!(during.calls >= 2, "tried again after a pause: {during:?}");
    assert_eq!(
        h.mock.state.stats().send_requests,
        0,
        "no send without a token"
    );
    assert_eq!(
        h.depth(&h.config.amqp.outcomes_queue).await,
        0,
        "no job gave up during a short fault"
    );
    assert_eq!(metric(&h.metrics().await, &stopped_gauge()), 0.0);
    h.mock.state.set_central(CentralBehaviour {
        bearer: Some(BEARER.into()),
        ..Default::default()
    });
    let out = h.outcomes(n, Duration::from_secs(30)).await;
    assert_eq!(out.len(), n, "{:?}", by_status(&out));
    assert!(
        out.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );
    let after = h.mock.state.central_stats();
    assert_eq!(after.issued, 1, "one token served every job: {after:?}");
    assert_eq!(h.mock.state.stats().messages, n as u64);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_service_answering_503_backs_off_and_recovers() {
    let central = CentralBehaviour {
        fault: Some(TokenFault::Http(503)),
        ..Default::default()
    };
    // Calls at 0 s, then after pauses of 1 s and 2 s.
    a_central_fault_backs_off_and_recovers(central, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_service_slower_than_the_http_timeout_backs_off_and_recovers() {
    // 1.5 s per answer against the tests' 1 s timeout: calls at 0 s and 2 s (a timeout, then
    // a 1 s pause), the third not before 5 s.
    let central = CentralBehaviour {
        delay_ms: 1_500,
        ..Default::default()
    };
    a_central_fault_backs_off_and_recovers(central, 2).await;
}

/// The service keeps handing back the token WeChat refuses. It is told once; the token it
/// vouched for is not reported again at once (it would refresh on every retry of a job whose
/// error is not about the token), the jobs end `failed` on their ordinary budget (none is
/// lost), the account is never stopped, and once the service's token runs out the new one
/// sends again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_service_that_keeps_a_refused_token_is_told_once_and_recovers() {
    let h = central_harness(
        Behaviour {
            token_ttl_secs: 8,
            ..Default::default()
        },
        CentralBehaviour {
            keep_refused: true,
            ..Default::default()
        },
        &[("WXD_MAX_ATTEMPTS", "3")],
    )
    .await;
    h.publish(&job("kept-first", "kept-first-user")).await;
    let first = h.outcomes(1, Duration::from_secs(10)).await;
    assert_eq!(first[0]["status"], "sent", "{first:?}");
    h.mock
        .state
        .revoke_central_token(APPID)
        .expect("a held token");
    let n = 10;
    h.publish_many(&jobs("kept", n)).await;
    let out = h.outcomes(n, Duration::from_secs(20)).await;
    assert_eq!(out.len(), n, "{:?}", by_status(&out));
    for o in &out {
        assert_eq!(o["status"], "failed", "{o}");
        assert_eq!(o["reason"], "invalid_credential", "{o}");
    }
    let central = h.mock.state.central_stats();
    assert_eq!(central.invalid_calls, 1, "told once: {central:?}");
    assert_eq!(central.issued, 1, "it kept its token: {central:?}");
    let m = h.metrics().await;
    assert_eq!(metric(&m, &stopped_gauge()), 0.0, "never stopped");
    // The service's token runs out (8 s after it was issued): the worker fetches the new one.
    h.mock.state.set_central(CentralBehaviour {
        bearer: Some(BEARER.into()),
        ..Default::default()
    });
    eventually(
        "a new token from the service",
        Duration::from_secs(20),
        || async { h.mock.state.central_stats().issued >= 2 },
    )
    .await;
    h.publish_many(&jobs("kept-after", 5)).await;
    let out = h.outcomes(5, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 5, "{:?}", by_status(&out));
    assert!(
        out.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );
    h.cleanup().await;
}

/// The cache alone (no broker): a token WeChat refuses is reported to the service with
/// `invalid=` exactly once however many sends saw it refused, the bearer token goes with every
/// call, and a token the service kept after that report and WeChat refuses again within a
/// minute is handed out again without another call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_reports_a_refused_token_once_and_trusts_the_answer_for_a_minute() {
    use wxdispatch::account::token::TokenError;
    use wxdispatch::tools::mock::MockConfig;

    let mock = MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(APPID.into(), SECRET.into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    mock.state.set_central(CentralBehaviour {
        bearer: Some(BEARER.into()),
        ..Default::default()
    });
    let metrics = Arc::new(Metrics::new());
    let url = format!("{}/central/token?tenant=a", mock.base_url());
    let tokens = Arc::new(central_cache(APPID, &url, &mock, &metrics));
    let first = tokens.get().await.unwrap();
    assert_eq!(mock.state.central_stats().unauthorized, 0);
    mock.state.revoke_central_token(APPID).unwrap();
    // Five sends saw the same token refused.
    let (a, b, c, d, e) = tokio::join!(
        tokens.invalidate(&first),
        tokens.invalidate(&first),
        tokens.invalidate(&first),
        tokens.invalidate(&first),
        tokens.invalidate(&first)
    );
    let _ = (a, b, c, d, e);
    let (x, y) = tokio::join!(tokens.get(), tokens.get());
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.value, y.value);
    assert_ne!(x.value, first.value, "the service refreshed");
    let stats = mock.state.central_stats();
    assert_eq!(stats.invalid_calls, 1, "{stats:?}");
    assert_eq!(stats.calls, 2, "{stats:?}");

    // The new token is refused too (a code that is not about the token): not reported again.
    tokens.invalidate(&x).await;
    let again = tokens.get().await.unwrap();
    assert_eq!(again.value, x.value);
    assert_eq!(mock.state.central_stats().calls, 2);
    let m = metrics.render();
    assert_eq!(
        metric(
            &m,
            &format!(
                "wxdispatch_token_force_skipped_total{{appid=\"{APPID}\",reason=\"fresh_central_token\"}}"
            )
        ),
        1.0
    );

    // The service keeps a refused token: a send that began before the report and fails after
    // it holds the same token; its refusal is not a new one and is not reported again.
    let kept = central_cache("wxkept0000000001", &url, &mock, &metrics);
    mock.state.add_account("wxkept0000000001", "s");
    let k = kept.get().await.unwrap();
    mock.state.revoke_central_token("wxkept0000000001").unwrap();
    mock.state.set_central(CentralBehaviour {
        bearer: Some(BEARER.into()),
        keep_refused: true,
        ..Default::default()
    });
    let before = mock.state.central_stats().invalid_calls;
    kept.invalidate(&k).await;
    let handed_back = kept.get().await.unwrap();
    assert_eq!(handed_back.value, k.value, "the service kept it");
    kept.invalidate(&k).await; // the earlier send's refusal, arriving late
    kept.get().await.unwrap();
    assert_eq!(
        mock.state.central_stats().invalid_calls,
        before + 1,
        "one report for one refused token"
    );

    // A wrong bearer token: the service answers 401, a failed fetch (backoff), not a stop.
    let wrong = TokenCache::new(
        APPID.into(),
        TokenSource::Central {
            url: url.parse().unwrap(),
            auth: Some(Secret::new("wrong")),
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
    assert!(matches!(
        wrong.get().await,
        Err(TokenError::Unavailable { .. })
    ));
    assert_eq!(mock.state.central_stats().unauthorized, 1);
}

/// A token cache of `appid` reading the central service at `url` (with the bearer), alone:
/// no Redis, the default budget and stop probe.
fn central_cache(appid: &str, url: &str, mock: &MockServer, metrics: &Arc<Metrics>) -> TokenCache {
    TokenCache::new(
        appid.into(),
        TokenSource::Central {
            url: url.parse().unwrap(),
            auth: Some(Secret::new(BEARER)),
        },
        WechatClient::new(&mock.base_url(), Duration::from_secs(2)),
        metrics.clone(),
        TokenLimits {
            stop_probe: Duration::from_secs(60),
            force_budget: 10,
            shared: None,
            stops: Arc::new(AccountStops::new(appid, metrics)),
        },
    )
}
