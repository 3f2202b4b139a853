//! The component verify ticket: stored by whichever replica WeChat pushed it to, used by a
//! worker that starts later; awaited (jobs wait, none fails) by a worker that starts before
//! any; and the last one WeChat took kept for when it refuses a newer one (61006).

use std::time::Duration;

use super::outcomes::{platform_config, platform_without_worker, push_ticket, route_url};
use super::*;

/// Deletes platform `platform`'s keys `rest` (`token`, `ticket`, ...), as their expiry would.
async fn forget(platform: &str, rest: &[&str]) {
    for r in rest {
        redis_cmd(&["DEL", &format!("wxdispatch:component:{platform}:{r}")]).await;
    }
}

/// A ticket pushed before the worker starts (another replica received it and stored it in
/// Redis): the worker's first job fetches the component token with it, then the merchant's
/// token with the stored refresh token, and is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_stored_before_the_worker_starts_gets_its_first_job_a_component_token() {
    let (mut h, platform) = platform_without_worker(Opts::default()).await;
    let other_replica = replica(&h.mock, &platform).await;
    let merchant = unique("wxauth").replace('.', "");
    authorized(&h.mock, &other_replica, &platform, &merchant, &[1, 7]).await;
    // Only the ticket and the merchant's refresh token are left for the worker to work from.
    forget(
        &platform,
        &["token", &format!("authorizer:{merchant}:token")],
    )
    .await;
    assert_eq!(h.mock.state.component_stats().component_token_calls, 1);

    let exchange = h.config.amqp.outcomes_exchange.clone();
    h.config = platform_config(&h, &platform, &exchange);
    h.start_worker().await;
    h.publish_many(&jobs_for("tk-before", &merchant, 3)).await;
    let out = h.outcomes(3, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 3, "{:?}", by_status(&out));
    assert!(out.iter().all(|o| o["status"] == "sent"), "{out:?}");
    let stats = h.mock.state.component_stats();
    assert_eq!(
        stats.component_token_calls, 2,
        "one component token, fetched by the worker with the stored ticket"
    );
    assert_eq!(stats.authorizer_token_calls.get(&merchant), Some(&1));
    h.cleanup().await;
}

/// A worker started with no ticket in Redis (it expired, or the platform's first one has not
/// come yet): the merchant's jobs wait (token fetches fail, no outcome) and none fails; the
/// ticket pushed to the worker's own `/wechat/component` then lets them all be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_a_ticket_pushed_after_the_worker_started() {
    let (mut h, platform) = platform_without_worker(Opts::default()).await;
    let c = replica(&h.mock, &platform).await;
    let merchant = unique("wxauth").replace('.', "");
    authorized(&h.mock, &c, &platform, &merchant, &[1, 7]).await;
    forget(
        &platform,
        &[
            "ticket",
            "ticket:good",
            "token",
            &format!("authorizer:{merchant}:token"),
        ],
    )
    .await;

    let exchange = h.config.amqp.outcomes_exchange.clone();
    h.config = platform_config(&h, &platform, &exchange);
    h.start_worker().await;
    h.publish_many(&jobs_for("tk-after", &merchant, 3)).await;
    let failed =
        format!("wxdispatch_token_refreshes_total{{appid=\"{merchant}\",result=\"error\"}}");
    eventually(
        "a token fetch without a ticket",
        Duration::from_secs(10),
        || async { metric(&h.metrics().await, &failed) >= 1.0 },
    )
    .await;
    assert!(
        h.outcomes(1, Duration::from_millis(300)).await.is_empty(),
        "no outcome while there is no ticket"
    );
    assert_eq!(h.mock.state.component_stats().component_token_calls, 1);

    let url = route_url(&h);
    push_ticket(&h, &platform, &url).await;
    let out = h.outcomes(3, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 3, "{:?}", by_status(&out));
    assert!(out.iter().all(|o| o["status"] == "sent"), "{out:?}");
    assert_eq!(h.mock.state.component_stats().component_token_calls, 2);
    h.cleanup().await;
}

/// WeChat refuses the last ticket pushed (61006): the component token is fetched with the
/// last ticket it took, and a good ticket pushed later is used (and kept) again. With no
/// ticket it ever took, the refusal is the answer (a transient failure for the worker: its
/// jobs wait for the next push).
///
/// Fails on the code before the good ticket was kept: the refused ticket was the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ticket_falls_back_to_the_last_one_wechat_took() {
    let (mock, appid) = platform_mock().await;
    let c = replica(&mock, &appid).await;
    let (q, body) = push(&appid, &ticket_xml(&appid, "TICKET_never_issued"));
    assert_eq!(receive(&c, &q, &body).await.unwrap(), AuthEvent::Ticket);
    assert!(matches!(
        c.component_token().await,
        Err(ComponentError::Wechat { code: 61006, .. })
    ));

    let (q, body) = push(&appid, &ticket_xml(&appid, &mock.state.component_ticket()));
    assert_eq!(receive(&c, &q, &body).await.unwrap(), AuthEvent::Ticket);
    let first = c
        .component_token()
        .await
        .expect("a token with a good ticket");
    let (q, body) = push(&appid, &ticket_xml(&appid, "TICKET_forged"));
    assert_eq!(receive(&c, &q, &body).await.unwrap(), AuthEvent::Ticket);
    forget(&appid, &["token"]).await;
    let second = c
        .component_token()
        .await
        .expect("a token with the last good ticket");
    assert_ne!(first, second);
    assert_eq!(mock.state.component_stats().component_token_calls, 4);

    let (q, body) = push(&appid, &ticket_xml(&appid, &mock.state.component_ticket()));
    assert_eq!(receive(&c, &q, &body).await.unwrap(), AuthEvent::Ticket);
    forget(&appid, &["token"]).await;
    c.component_token().await.expect("the new ticket");
    assert_eq!(
        mock.state.component_stats().component_token_calls,
        5,
        "the new ticket taken at once"
    );
}
