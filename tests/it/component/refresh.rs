//! Authorizer tokens refreshed ahead of their expiry by whole workers sharing Redis: one
//! replica refreshes each authorizer once per token lifetime, while jobs go on with the
//! still-valid token.

use std::time::{Duration, Instant};

use wxdispatch::app;
use wxdispatch::shutdown::Shutdown;
use wxdispatch::tools::mock::Behaviour;

use super::outcomes::platform_config;
use super::*;

/// The simulator's authorizer token lifetime here (WeChat's is 7200 s): refreshed ahead from
/// its last fifth, i.e. 8 s after it was issued.
const LIFE_SECS: u64 = 10;
const REFRESH_AFTER: Duration = Duration::from_secs(LIFE_SECS * 4 / 5);

/// Three workers on one Redis prefix (one platform), three authorizers with no `[[accounts]]`
/// entry (no timer: refreshed on use), jobs for each every 200 ms through three token
/// lifetimes. Each authorizer's token is refreshed by exactly one replica once per period:
/// every `api_authorizer_token` call comes between 8 s (the refresh point) and 10 s (the
/// expiry) after the previous token was issued, so never two in one lifetime and never after
/// an expiry; the count per authorizer is the number of periods the run spanned (the design
/// allows one period less when a period's refresh waits for the next job, at most 200 ms
/// here: the count is checked against both bounds). No send used an expired token, the rotated
/// refresh token was always the one used, and every job was sent once.
///
/// Fails on the code before the refresh ahead: a token with less than five minutes left was
/// never handed out from Redis, so each 10 s token was refreshed at its first use, some 80 ms
/// after it was issued (two refreshes in one lifetime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_redis_refresh_each_authorizer_once_per_token_lifetime() {
    let mut h = Harness::start(Opts {
        no_worker: true,
        behaviour: Behaviour {
            token_ttl_secs: LIFE_SECS,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let platform = unique("wxcomp").replace('.', "");
    h.mock.state.component_setup(&platform, PLATFORM_SECRET);
    let c = replica(&h.mock, &platform).await;
    let mut authorizers = Vec::new();
    let mut issued = Vec::new();
    for _ in 0..3 {
        let a = unique("wxauth").replace('.', "");
        authorized(&h.mock, &c, &platform, &a, &[1, 7]).await;
        // The first token came with the authorization.
        issued.push(Instant::now());
        authorizers.push(a);
    }
    let exchange = h.config.amqp.outcomes_exchange.clone();
    h.config = platform_config(&h, &platform, &exchange);
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(
            app::start(h.config.clone(), Shutdown::new())
                .await
                .expect("worker starts"),
        );
    }

    let run = REFRESH_AFTER * 3 + Duration::from_secs(2);
    let started = Instant::now();
    let mut n = 0;
    let mut wave = 0;
    while started.elapsed() < run {
        let mut all = Vec::new();
        for (i, a) in authorizers.iter().enumerate() {
            all.extend(jobs_for(&format!("rf{i}-w{wave}"), a, 1));
        }
        n += all.len();
        h.publish_many(&all).await;
        wave += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = h.outcomes(n, Duration::from_secs(30)).await;
    for w in workers {
        w.stop().await.expect("worker stops cleanly");
    }
    let ended = Instant::now();
    assert_eq!(out.len(), n, "{:?}", by_status(&out));
    assert!(
        out.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );

    for (a, first) in authorizers.iter().zip(&issued) {
        let times = h.mock.state.component_refresh_times(a);
        let mut previous = *first;
        for t in &times {
            let gap = t.saturating_duration_since(previous);
            // The previous token's issue is a little before `previous` for the first one
            // (the authorization answered, then the clock read), a little after for the
            // others (the call, then the simulator's issue): 300 ms either way.
            assert!(
                gap + Duration::from_millis(300) >= REFRESH_AFTER,
                "{a}: a refresh {gap:?} after the previous token: two in one lifetime ({times:?})"
            );
            assert!(
                gap < Duration::from_secs(LIFE_SECS),
                "{a}: a refresh {gap:?} after the previous token: after its expiry"
            );
            previous = *t;
        }
        let spanned = ended.saturating_duration_since(*first);
        let most = (spanned.as_millis() / (REFRESH_AFTER - Duration::from_millis(300)).as_millis())
            as usize;
        let least = (spanned.as_millis() / (REFRESH_AFTER + Duration::from_millis(500)).as_millis())
            as usize;
        assert!(
            (least..=most).contains(&times.len()),
            "{a}: {} refreshes in {spanned:?} ({least}..={most} periods)",
            times.len()
        );
        assert!(
            times.len() >= 3,
            "{a}: three periods, {} refreshes",
            times.len()
        );
    }
    let stats = h.mock.state.component_stats();
    assert_eq!(stats.invalid_refresh_tokens, 0, "{stats:?}");
    assert_eq!(stats.authorizer_list_calls, 0, "{stats:?}");
    let sends = h.mock.state.stats();
    assert!(
        sends.errors.is_empty(),
        "no send with an expired or refused token: {:?}",
        sends.errors
    );
    assert_eq!(sends.messages, n as u64);
    assert!(
        sends.sends_by_id.values().all(|&k| k == 1),
        "every job sent once"
    );
    h.cleanup().await;
}

/// A refresh lock is released only by the replica holding it: one whose refresh ran past the
/// lock's expiry, while another replica took the lock, neither releases it by itself nor by
/// storing its rotation. (Before, the lock held `1` and either deleted it: the third replica
/// below then took the lock while the second still refreshed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_past_its_lock_expiry_leaves_the_next_holders_lock_alone() {
    use wxdispatch::component::store::StoredToken;
    let platform = unique("wxcomp").replace('.', "");
    let store = || async {
        ComponentStore::connect(REDIS_URL, &platform)
            .await
            .expect("Redis on 127.0.0.1:6379")
    };
    let (late, next, third) = (store().await, store().await, store().await);
    let appid = unique("wxauth").replace('.', "");
    let lock = ComponentStore::authorizer_lock(&appid);
    let hold = Duration::from_secs(30);
    assert!(late.lock(&lock, Duration::from_millis(100)).await.unwrap());
    assert!(!next.lock(&lock, hold).await.unwrap(), "held");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(next.lock(&lock, hold).await.unwrap(), "expired, so taken");
    // The late holder finishes: it stores what it got and releases, in one transaction.
    let token = StoredToken::issued_now("late-token".into(), 7200);
    late.store_rotation(&appid, "late-refresh", &token)
        .await
        .unwrap();
    late.unlock(&lock).await.unwrap();
    let third_took = third.lock(&lock, hold).await.unwrap();
    next.unlock(&lock).await.unwrap();
    let free_after = third.lock(&lock, hold).await.unwrap();
    third.unlock(&lock).await.unwrap();
    redis_cmd(&[
        "DEL",
        &format!("wxdispatch:component:{platform}:authorizer:{appid}"),
        &format!("wxdispatch:component:{platform}:authorizer:{appid}:token"),
    ])
    .await;
    assert!(!third_took, "the late holder released the next one's lock");
    assert!(free_after, "the holder's own release frees it");
}
