//! `kind: authorization` outcomes: each authorization push at `POST /wechat/component` is one
//! outcome, confirmed by the broker before WeChat is answered `success`, across WeChat's
//! retries of the push.

use std::time::Duration;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use wxdispatch::config::{Credentials, Secret, TokenMode};

use super::*;

/// A component-mode copy of the harness's configuration whose outcomes go to `exchange`.
pub(super) fn platform_config(
    h: &Harness,
    platform: &str,
    exchange: &str,
) -> wxdispatch::config::Config {
    let mut config = h.config.clone();
    config.wechat.token_mode = TokenMode::Component;
    config.wechat.component_appid = Some(platform.to_string());
    config.limits.redis_url = Some(REDIS_URL.into());
    let mut credentials = Credentials::default();
    credentials.component_secret = Some(Secret::new(PLATFORM_SECRET));
    credentials.component_token = Some(Secret::new(PUSH_TOKEN));
    credentials.component_aes_key = Some(Secret::new(PUSH_KEY));
    config.credentials = credentials;
    config.amqp.outcomes_exchange = exchange.to_string();
    config
}

/// A harness with no worker yet (`opts` otherwise) and the simulator set up as a platform with
/// its own component appid (so tests share no Redis keys): the harness and that appid.
pub(super) async fn platform_without_worker(opts: Opts<'_>) -> (Harness, String) {
    let h = Harness::start(Opts {
        no_worker: true,
        ..opts
    })
    .await;
    let platform = unique("wxcomp").replace('.', "");
    h.mock.state.component_setup(&platform, PLATFORM_SECRET);
    (h, platform)
}

/// A harness whose worker is a platform's, with its own component appid (so tests share no
/// Redis keys): the simulator set up as that platform, `tune` applied to the configuration
/// before the worker starts. Returns the harness and the platform's appid.
pub(super) async fn platform_harness(
    tune: impl FnOnce(&mut wxdispatch::config::Config),
) -> (Harness, String) {
    let (mut h, platform) = platform_without_worker(Opts::default()).await;
    let exchange = h.config.amqp.outcomes_exchange.clone();
    h.config = platform_config(&h, &platform, &exchange);
    tune(&mut h.config);
    h.start_worker().await;
    (h, platform)
}

/// The running worker's `/wechat/component` route.
pub(super) fn route_url(h: &Harness) -> String {
    format!(
        "http://{}/wechat/component",
        h.worker.as_ref().unwrap().http_addr
    )
}

/// Pushes the simulator's current verify ticket to `url`, which answers `success`.
pub(super) async fn push_ticket(h: &Harness, platform: &str, url: &str) {
    let ticket = push(
        platform,
        &ticket_xml(platform, &h.mock.state.component_ticket()),
    );
    assert_eq!(post(url, &ticket).await, (200, "success".into()));
}

/// A merchant authorizes the platform for `funcs` (`kind`: `authorized` or
/// `updateauthorized`), pushed to `url`, which answers `success`.
pub(super) async fn push_authorization(
    h: &Harness,
    platform: &str,
    url: &str,
    kind: &str,
    merchant: &str,
    funcs: &[u32],
) {
    let code = h.mock.state.component_authorize(merchant, funcs);
    let pushed = push(platform, &auth_xml(platform, kind, merchant, &code));
    assert_eq!(post(url, &pushed).await, (200, "success".into()));
}

/// Posts a push to the route: its status and body.
pub(super) async fn post(url: &str, (q, body): &(PushQuery, String)) -> (u16, String) {
    let answer = reqwest::Client::new()
        .post(format!(
            "{url}?timestamp={}&nonce={}&msg_signature={}",
            q.timestamp, q.nonce, q.msg_signature
        ))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// The route alone (no worker) publishes to an exchange with no queue bound at first, so its
/// publishes come back unroutable: the `authorized` push is answered 503 (twice: the retries
/// find the code spent by the first try and take the stored authorization), and `success`
/// only once a queue is bound and the outcome confirmed. Then the push and an `unauthorized`
/// one, each retried, give exactly one outcome each, with a stable `message_id`.
///
/// Fails on the code before `kind: authorization` outcomes: the push was answered `success`
/// at once and no outcome was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_authorization_push_is_one_outcome_confirmed_before_success() {
    let (h, platform) = platform_without_worker(Opts::default()).await;
    let exchange = unique("wxd.test.authorizations");
    let ch = h.conn.create_channel().await.unwrap();
    // Auto-deleted with the test queue's binding.
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let config = platform_config(&h, &platform, &exchange);
    let (url, stop) = serve_route(&config).await;

    push_ticket(&h, &platform, &url).await;
    let authorizer = unique("wxauth").replace('.', "");
    let code = h.mock.state.component_authorize(&authorizer, &[1, 7]);
    let authorized = push(
        &platform,
        &auth_xml(&platform, "authorized", &authorizer, &code),
    );
    for _ in 0..2 {
        assert_eq!(
            post(&url, &authorized).await.0,
            503,
            "no queue bound: the outcome is not stored, so no success"
        );
    }
    let c = replica(&h.mock, &platform).await;
    assert_eq!(c.record(&authorizer).await.unwrap().funcs, vec![1, 7]);

    let queue = h.bind_queue(&exchange, "authorization.#").await;
    for _ in 0..2 {
        assert_eq!(post(&url, &authorized).await, (200, "success".into()));
    }
    h.mock.state.component_unauthorize(&authorizer);
    let unauthorized = push(
        &platform,
        &auth_xml(&platform, "unauthorized", &authorizer, ""),
    );
    for _ in 0..2 {
        assert_eq!(post(&url, &unauthorized).await, (200, "success".into()));
    }
    assert!(matches!(
        c.record(&authorizer).await,
        Err(ComponentError::NotAuthorized(_))
    ));

    let out = h.read(&queue, 3, Duration::from_secs(3)).await;
    assert_eq!(out.len(), 2, "one outcome per push: {out:?}");
    for (o, _) in &out {
        crate::contract::check_outcome(o);
        assert_eq!(o["kind"], "authorization", "{o}");
        assert_eq!(o["appid"], authorizer.as_str(), "{o}");
        assert_eq!(o["component_appid"], platform.as_str(), "{o}");
        assert_eq!(o["event_time"], 1733300000, "{o}");
    }
    let (first, props) = &out[0];
    assert_eq!(first["status"], "authorized");
    assert_eq!(first["funcs"], serde_json::json!([1, 7]));
    assert_eq!(
        props.message_id().as_ref().map(|m| m.as_str()),
        Some(format!("authorization:{platform}:{authorizer}:1733300000:authorized").as_str())
    );
    assert_eq!(out[1].0["status"], "unauthorized");
    assert_eq!(out[1].0["funcs"], serde_json::Value::Null);
    assert_eq!(
        h.mock.state.component_stats().query_auth_calls,
        3,
        "the code was exchanged once, and found spent by both retries"
    );
    stop.trigger();
    h.cleanup().await;
}
