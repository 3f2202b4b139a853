//! Issue 14.4: token storms. Forced `stable_token` refreshes are rationed (WeChat allows 20 a
//! day, 30 s apart, and each one invalidates the token for every other service on the appid),
//! shared across replicas through Redis, and a token code that a new token does not fix never
//! stops a healthy account.

use std::sync::Arc;
use std::time::Duration;

use wxdispatch::account::AccountStops;
use wxdispatch::account::RedisLink;
use wxdispatch::account::token::{TokenCache, TokenLimits, TokenSource};
use wxdispatch::config::{Secret, TokenMode};
use wxdispatch::metrics::Metrics;
use wxdispatch::tools::mock::{FORCED_REFRESHES_PER_DAY, MockConfig, MockServer};
use wxdispatch::wechat::WechatClient;

use crate::helpers::*;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// A job that keeps answering 41006 (a token code in the seed's table, "missing media_id" in
/// today's) refreshes the token like any token error, but once a forced token is refused too
/// the worker stops forcing: exactly one forced refresh for the whole storm, the poison jobs
/// end `failed` on the ordinary backoff path, every other job is sent, and the account is
/// never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_code_a_new_token_does_not_fix_forces_once_and_stops_nothing() {
    let h = Harness::start(Opts {
        env: &[("WXD_MAX_ATTEMPTS", "4")],
        ..Default::default()
    })
    .await;
    let mut all: Vec<_> = (0..5)
        .map(|i| job(&format!("poison-{i}"), &format!("fail:41006:{i}")))
        .collect();
    all.extend(jobs("healthy", 40));
    h.publish_many(&all).await;
    let out = h.outcomes(45, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 45, "{:?}", by_status(&out));
    for o in &out {
        let id = o["id"].as_str().unwrap();
        if id.starts_with("poison-") {
            assert_eq!(o["status"], "failed", "{o}");
            assert_eq!(o["reason"], "access_token_timeout", "{o}");
            assert_eq!(o["attempts"], 4, "{o}");
        } else {
            assert_eq!(o["status"], "sent", "{o}");
        }
    }
    let stats = h.mock.state.stats();
    eprintln!(
        "figure: 5 poison jobs (41006) + 40 healthy: {} forced refreshes, {} stable_token calls, {} sent",
        stats.forced_refreshes, stats.stable_token_calls, stats.messages
    );
    assert_eq!(
        stats.forced_refreshes, 1,
        "one storm, one forced refresh (after the first fresh token was refused)"
    );
    assert_eq!(stats.forced_too_soon, 0, "never a forced call inside 30 s");
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("wxdispatch_account_stopped{{appid=\"{APPID}\"}}")
        ),
        0.0
    );
    assert!(
        metric(
            &m,
            &format!(
                "wxdispatch_token_force_skipped_total{{appid=\"{APPID}\",reason=\"forced_token_rejected\"}}"
            )
        ) >= 1.0,
        "the skipped forces are counted"
    );
    h.cleanup().await;
}

/// The simulator models WeChat's forced-refresh rules: a forced call inside 30 s of the last
/// one does not refresh (it hands back the current token), and the 21st forced refresh of the
/// day is refused with 45009.
#[tokio::test]
async fn the_simulator_models_the_forced_refresh_rules() {
    let mock = account_mock(APPID).await;
    let http = reqwest::Client::new();
    let force = || async {
        let text = http
            .post(format!("{}/cgi-bin/stable_token", mock.base_url()))
            .body(
                serde_json::json!({"grant_type": "client_credential", "appid": APPID,
                    "secret": SECRET, "force_refresh": true})
                .to_string(),
            )
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let first = force().await;
    let again = force().await;
    assert_eq!(
        first["access_token"], again["access_token"],
        "inside 30 s: no refresh"
    );
    assert_eq!(mock.state.stats().forced_refreshes, 1);
    assert_eq!(mock.state.stats().forced_too_soon, 1);
    mock.state.forget_forced_spacing();
    for _ in 1..FORCED_REFRESHES_PER_DAY {
        mock.state.forget_forced_spacing();
        assert!(force().await["access_token"].is_string());
    }
    mock.state.forget_forced_spacing();
    assert_eq!(
        force().await["errcode"],
        45009,
        "the 21st forced refresh of the day"
    );
    assert_eq!(
        mock.state.stats().forced_refreshes,
        FORCED_REFRESHES_PER_DAY
    );
}

/// Replicas of one account, each with its own token cache, share the forced-refresh spacing
/// and budget through Redis. After one replica forced a refresh, another that sees a fresh
/// token rejected is told it is too soon (although WeChat itself would allow it here), and
/// once Redis has counted the day's budget, no replica forces at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_forced_refresh_budget_through_redis() {
    // Redis keys are per appid and day: a fresh appid keeps reruns independent.
    let appid = format!("wxforce{:08x}", rand::random::<u32>());
    let mock = MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(appid.clone(), SECRET.into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let new_replica = || {
        replica(
            &appid,
            TokenMode::Stable,
            &mock,
            Arc::new(RedisLink::new(REDIS_URL)),
        )
    };
    // Replica A: its fresh token is rejected, stable_token hands it back, A forces.
    let a = new_replica();
    let t = a.get().await.unwrap();
    a.invalidate(&t).await;
    let forced = a.get().await.unwrap();
    assert!(forced.forced);
    assert_eq!(mock.state.stats().forced_refreshes, 1);

    // Replica B, a moment later, sees the new (fresh) token rejected. WeChat would take a
    // forced call now (the simulator is told to forget its spacing), but the shared 30 s
    // spacing in Redis says no.
    mock.state.forget_forced_spacing();
    let b = new_replica();
    let tb = b.get().await.unwrap();
    b.invalidate(&tb).await;
    let nb = b.get().await.unwrap();
    assert!(!nb.forced, "B made no forced refresh inside A's spacing");
    assert_eq!(mock.state.stats().forced_refreshes, 1);

    // The budget (2 here) is shared too: with the spacing over and Redis counting two forced
    // refreshes today, replica C gets none.
    redis_del(&format!("wxdispatch:force:last:{appid}")).await;
    redis_incr(&format!("wxdispatch:force:{appid}:{}", beijing_day())).await;
    let c = new_replica();
    let tc = c.get().await.unwrap();
    c.invalidate(&tc).await;
    let nc = c.get().await.unwrap();
    assert!(!nc.forced, "the shared budget is spent: no forced refresh");
    assert_eq!(mock.state.stats().forced_refreshes, 1);
    assert_eq!(mock.state.stats().forced_too_soon, 0);
}

/// A simulator that knows one account.
async fn account_mock(appid: &str) -> MockServer {
    MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(appid.into(), SECRET.into())],
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// One replica's token cache for `appid`, with a forced-refresh budget of 2 shared through
/// `slot`.
fn replica(appid: &str, mode: TokenMode, mock: &MockServer, slot: Arc<RedisLink>) -> TokenCache {
    let metrics = Arc::new(Metrics::new());
    let secret = Secret::new(SECRET);
    let source = match mode {
        TokenMode::Classic => TokenSource::Classic { secret },
        _ => TokenSource::Stable { secret },
    };
    TokenCache::new(
        appid.to_string(),
        source,
        WechatClient::new(&mock.base_url(), Duration::from_secs(2)),
        metrics.clone(),
        TokenLimits {
            stop_probe: Duration::from_secs(60),
            force_budget: 2,
            shared: Some(slot),
            stops: Arc::new(AccountStops::new(appid, &metrics)),
        },
    )
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379")
}

async fn redis_del(key: &str) {
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut redis_conn().await)
        .await
        .unwrap();
}

async fn redis_incr(key: &str) {
    let _: i64 = redis::cmd("INCR")
        .arg(key)
        .query_async(&mut redis_conn().await)
        .await
        .unwrap();
}

fn beijing_day() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(8))
        .date_naive()
        .to_string()
}

/// Classic tokens: every fetch invalidates the previous token after five minutes, so replicas
/// must share one. Three replicas asking at once make one call to `/cgi-bin/token` and use the
/// same token; a rejected token that is no longer fresh is replaced once, for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_in_classic_mode_share_one_token_through_redis() {
    let appid = format!("wxclassic{:08x}", rand::random::<u32>());
    let mock = MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(appid.clone(), SECRET.into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Each replica's Redis connection is opened first: a replica whose Redis does not answer
    // falls back to a token of its own (by design), which is not what this test is about.
    let new_replica = || async {
        let slot = Arc::new(RedisLink::new(REDIS_URL));
        assert!(slot.get().await.is_some(), "Redis on 127.0.0.1:6379");
        replica(&appid, TokenMode::Classic, &mock, slot)
    };
    let (a, b, c) = (
        new_replica().await,
        new_replica().await,
        new_replica().await,
    );
    let (ta, tb, tc) = tokio::join!(a.get(), b.get(), c.get());
    let (ta, tb, tc) = (ta.unwrap(), tb.unwrap(), tc.unwrap());
    assert_eq!(ta.value, tb.value);
    assert_eq!(ta.value, tc.value);
    assert_eq!(
        mock.state.stats().token_calls,
        1,
        "one fetch for three replicas"
    );

    // A fresh classic token that WeChat rejects is not replaced: a new one could not help.
    a.invalidate(&ta).await;
    assert_eq!(a.get().await.unwrap().value, ta.value);
    assert_eq!(mock.state.stats().token_calls, 1);

    // The same token two minutes later (back-dated in Redis): rejected, it is replaced once,
    // and the other replicas pick the new one up from Redis.
    let key = format!("wxdispatch:token:{appid}");
    let now = chrono::Utc::now().timestamp_millis();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(format!(
            "{}:{}:{}",
            now - 120_000,
            now + 3_600_000,
            ta.value.expose()
        ))
        .query_async(&mut redis_conn().await)
        .await
        .unwrap();
    let d = new_replica().await;
    let old = d.get().await.unwrap();
    assert_eq!(old.value, ta.value);
    d.invalidate(&old).await;
    let new = d.get().await.unwrap();
    assert_ne!(new.value, ta.value);
    assert_eq!(mock.state.stats().token_calls, 2, "one new fetch");
    let e = new_replica().await;
    assert_eq!(
        e.get().await.unwrap().value,
        new.value,
        "shared with the others"
    );
    assert_eq!(mock.state.stats().token_calls, 2);
    redis_del(&key).await;
}
