//! Issue 28.2: a third-party platform's tokens, against the simulator's
//! component endpoints and the shared Redis. Authorization pushes arrive encrypted with the
//! platform's token and key; the verify ticket, each authorizer's refresh token and permission
//! sets are kept in Redis; an authorizer's token is refreshed by one replica at a time, and
//! the rotated refresh token is what the next refresh (after a restart too) uses.

use std::time::Duration;

use wxdispatch::component::api::ComponentApi;
use wxdispatch::component::store::ComponentStore;
use wxdispatch::component::{AuthEvent, Component, ComponentError, PushError, PushQuery};
use wxdispatch::config::Secret;
use wxdispatch::crypto::signature;
use wxdispatch::crypto::{self, AesKey};
use wxdispatch::job::MsgType;
use wxdispatch::tools::mock::{MockConfig, MockServer};
use wxdispatch::wechat::WechatClient;

use crate::helpers::*;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const PLATFORM_SECRET: &str = "platform-secret";
const PUSH_TOKEN: &str = "platform-push-token";
const PUSH_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// A simulator that is a platform, and the platform's unique component appid (so tests do not
/// share Redis keys).
async fn platform_mock() -> (MockServer, String) {
    let mock = MockServer::start("127.0.0.1:0", MockConfig::default())
        .await
        .unwrap();
    let appid = unique("wxcomp").replace('.', "");
    mock.state.component_setup(&appid, PLATFORM_SECRET);
    (mock, appid)
}

/// One replica's view of the platform.
async fn replica(mock: &MockServer, appid: &str) -> Component {
    Component {
        api: ComponentApi {
            client: WechatClient::new(&mock.base_url(), Duration::from_secs(2)),
            appid: appid.to_string(),
            secret: Secret::new(PLATFORM_SECRET),
        },
        store: ComponentStore::connect(REDIS_URL, appid)
            .await
            .expect("Redis on 127.0.0.1:6379"),
    }
}

/// A push as WeChat sends it: the inner XML encrypted for `appid`, signed with the token.
fn push(appid: &str, inner: &str) -> (PushQuery, String) {
    let key = AesKey::from_encoding_aes_key(PUSH_KEY).unwrap();
    let encrypted = crypto::encrypt_with_random(&key, inner, appid);
    let (timestamp, nonce) = ("1733300000".to_string(), "n0nce".to_string());
    let msg_signature = signature::msg_signature(PUSH_TOKEN, &timestamp, &nonce, &encrypted);
    let body = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    );
    (
        PushQuery {
            timestamp,
            nonce,
            msg_signature,
        },
        body,
    )
}

async fn receive(c: &Component, q: &PushQuery, body: &str) -> Result<AuthEvent, PushError> {
    let key = AesKey::from_encoding_aes_key(PUSH_KEY).unwrap();
    c.receive(&Secret::new(PUSH_TOKEN), &key, q, body).await
}

fn ticket_xml(appid: &str, ticket: &str) -> String {
    format!(
        "<xml><AppId>{appid}</AppId><CreateTime>1733300000</CreateTime><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>{ticket}</ComponentVerifyTicket></xml>"
    )
}

fn auth_xml(appid: &str, kind: &str, authorizer: &str, code: &str) -> String {
    format!(
        "<xml><AppId>{appid}</AppId><CreateTime>1733300000</CreateTime><InfoType>{kind}</InfoType><AuthorizerAppid>{authorizer}</AuthorizerAppid><AuthorizationCode>{code}</AuthorizationCode></xml>"
    )
}

async fn redis_cmd(args: &[&str]) {
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
}

/// Drops the stored access token of `authorizer`, as its expiry would.
async fn expire_authorizer_token(platform: &str, authorizer: &str) {
    redis_cmd(&[
        "DEL",
        &format!("wxdispatch:component:{platform}:authorizer:{authorizer}:token"),
    ])
    .await;
}

/// The worker's `/wechat/component` route alone, served from a component-mode `config`: its
/// URL, and what stops it.
async fn serve_route(
    config: &wxdispatch::config::Config,
) -> (String, wxdispatch::shutdown::Shutdown) {
    let route = wxdispatch::component::http::with_route(config, None)
        .unwrap()
        .expect("the route in component mode");
    let stop = wxdispatch::shutdown::Shutdown::new();
    let (addr, _) = wxdispatch::http::serve("127.0.0.1:0", route, stop.clone())
        .await
        .unwrap();
    (format!("http://{addr}/wechat/component"), stop)
}

/// `n` jobs for `appid`.
fn jobs_for(prefix: &str, appid: &str, n: usize) -> Vec<serde_json::Value> {
    jobs(prefix, n)
        .into_iter()
        .map(|mut j| {
            j["appid"] = appid.into();
            j
        })
        .collect()
}

/// The ticket pushed, then the authorization of `authorizer` with `funcs` pushed.
async fn authorized(
    mock: &MockServer,
    c: &Component,
    appid: &str,
    authorizer: &str,
    funcs: &[u32],
) {
    let (q, body) = push(appid, &ticket_xml(appid, &mock.state.component_ticket()));
    assert_eq!(receive(c, &q, &body).await.unwrap(), AuthEvent::Ticket);
    let code = mock.state.component_authorize(authorizer, funcs);
    let (q, body) = push(appid, &auth_xml(appid, "authorized", authorizer, &code));
    assert_eq!(
        receive(c, &q, &body).await.unwrap(),
        AuthEvent::Authorized {
            appid: authorizer.into(),
            funcs: funcs.to_vec(),
            update: false
        }
    );
}

/// No component token before a ticket; a pushed ticket is stored and used, the token is
/// fetched once and then read from Redis (by a restarted replica too); a push with a wrong
/// signature or for another appid is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_push_lets_the_platform_fetch_its_component_token_once() {
    let (mock, appid) = platform_mock().await;
    let c = replica(&mock, &appid).await;
    assert!(matches!(
        c.component_token().await,
        Err(ComponentError::NoTicket)
    ));
    let ticket = mock.state.component_ticket();
    let (mut q, body) = push(&appid, &ticket_xml(&appid, &ticket));
    q.msg_signature = signature::msg_signature("wrong-token", &q.timestamp, &q.nonce, "x");
    assert!(matches!(
        receive(&c, &q, &body).await,
        Err(PushError::Refused(_))
    ));
    let (q, body) = push("wxsomeoneelse", &ticket_xml("wxsomeoneelse", &ticket));
    assert!(matches!(
        receive(&c, &q, &body).await,
        Err(PushError::Refused(_))
    ));
    assert!(matches!(
        c.component_token().await,
        Err(ComponentError::NoTicket)
    ));

    let (q, body) = push(&appid, &ticket_xml(&appid, &ticket));
    assert_eq!(receive(&c, &q, &body).await.unwrap(), AuthEvent::Ticket);
    let token = c
        .component_token()
        .await
        .expect("a token with the pushed ticket");
    let again = replica(&mock, &appid)
        .await
        .component_token()
        .await
        .unwrap();
    assert_eq!(token, again, "a restarted replica reads the stored token");
    assert_eq!(mock.state.component_stats().component_token_calls, 1);
}

/// `authorized` exchanges the code at once: the authorizer's refresh token and permission
/// sets are in Redis when the push is answered, and its token sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_push_stores_the_authorizer_and_its_token_sends() {
    let (mock, appid) = platform_mock().await;
    let c = replica(&mock, &appid).await;
    let authorizer = unique("wxauth").replace('.', "");
    authorized(&mock, &c, &appid, &authorizer, &[1, 7]).await;
    let record = c.record(&authorizer).await.unwrap();
    assert_eq!(record.funcs, vec![1, 7]);
    assert!(record.refresh_token.is_some());
    let token = c.authorizer_token(&authorizer).await.unwrap();
    let stats = mock.state.component_stats();
    assert_eq!(stats.query_auth_calls, 1);
    assert!(
        stats.authorizer_token_calls.is_empty(),
        "the exchange's token is used"
    );
    let reply = WechatClient::new(&mock.base_url(), Duration::from_secs(2))
        .send(
            MsgType::Template,
            &Secret::new(token.value),
            serde_json::to_vec(&job("comp-1", "comp-user"))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(reply.errcode, 0, "{reply:?}");
}

/// Three replicas sharing Redis need a new token for one authorizer at once: exactly one
/// `api_authorizer_token` call, all get its token, and the rotated refresh token is stored,
/// so a replica started afterwards refreshes with it (WeChat would refuse the spent one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_an_authorizer_once_and_the_rotation_survives_a_restart() {
    let (mock, appid) = platform_mock().await;
    let first = replica(&mock, &appid).await;
    let authorizer = unique("wxauth").replace('.', "");
    authorized(&mock, &first, &appid, &authorizer, &[1]).await;
    expire_authorizer_token(&appid, &authorizer).await;
    let (a, b) = (replica(&mock, &appid).await, replica(&mock, &appid).await);
    let (ta, tb, tc) = tokio::join!(
        a.authorizer_token(&authorizer),
        b.authorizer_token(&authorizer),
        first.authorizer_token(&authorizer)
    );
    let (ta, tb, tc) = (ta.unwrap(), tb.unwrap(), tc.unwrap());
    assert!(ta.value == tb.value && tb.value == tc.value);
    let calls = |m: &MockServer| {
        m.state
            .component_stats()
            .authorizer_token_calls
            .get(&authorizer)
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(calls(&mock), 1, "one refresh for three replicas");
    expire_authorizer_token(&appid, &authorizer).await;
    let restarted = replica(&mock, &appid).await;
    let td = restarted.authorizer_token(&authorizer).await.unwrap();
    assert_ne!(td.value, ta.value);
    assert_eq!(calls(&mock), 2);
    let stats = mock.state.component_stats();
    assert_eq!(
        stats.invalid_refresh_tokens, 0,
        "the rotated refresh token was used"
    );
    assert_eq!(stats.authorizer_list_calls, 0);
}

/// A refresh token that is missing from Redis, or that WeChat says is spent (61023), is
/// recovered from `api_get_authorizer_list` and the refresh then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_token_is_recovered_from_the_authorizer_list() {
    let (mock, appid) = platform_mock().await;
    let c = replica(&mock, &appid).await;
    let authorizer = unique("wxauth").replace('.', "");
    authorized(&mock, &c, &appid, &authorizer, &[1]).await;
    let record = format!("wxdispatch:component:{appid}:authorizer:{authorizer}");
    redis_cmd(&["HSET", &record, "refresh_token", ""]).await;
    expire_authorizer_token(&appid, &authorizer).await;
    c.authorizer_token(&authorizer)
        .await
        .expect("recovered (missing)");
    assert_eq!(mock.state.component_stats().authorizer_list_calls, 1);

    redis_cmd(&["HSET", &record, "refresh_token", "REFRESH_spent"]).await;
    expire_authorizer_token(&appid, &authorizer).await;
    c.authorizer_token(&authorizer)
        .await
        .expect("recovered (61023)");
    let stats = mock.state.component_stats();
    assert_eq!(stats.authorizer_list_calls, 2);
    assert_eq!(stats.invalid_refresh_tokens, 1);
    assert_eq!(
        c.record(&authorizer).await.unwrap().funcs,
        vec![1],
        "the permission sets stay"
    );
}

/// `unauthorized` forgets the authorizer: no token for it, as for an appid that never
/// authorized the platform, and no call of WeChat for either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_push_forgets_the_authorizer() {
    let (mock, appid) = platform_mock().await;
    let c = replica(&mock, &appid).await;
    let authorizer = unique("wxauth").replace('.', "");
    authorized(&mock, &c, &appid, &authorizer, &[1]).await;
    mock.state.component_unauthorize(&authorizer);
    let (q, body) = push(&appid, &auth_xml(&appid, "unauthorized", &authorizer, ""));
    assert_eq!(
        receive(&c, &q, &body).await.unwrap(),
        AuthEvent::Unauthorized {
            appid: authorizer.clone()
        }
    );
    assert!(matches!(
        c.authorizer_token(&authorizer).await,
        Err(ComponentError::NotAuthorized(a)) if a == authorizer
    ));
    assert!(matches!(
        c.authorizer_token("wxneverauthorized1").await,
        Err(ComponentError::NotAuthorized(_))
    ));
    assert!(
        mock.state
            .component_stats()
            .authorizer_token_calls
            .is_empty()
    );
}

/// The worker in component mode: a configured authorizer's jobs are sent with the token of
/// its authorization (no AppSecret anywhere), a configured appid that never authorized the
/// platform ends `rejected` with `not_authorized` and is never sent, and after `unauthorized`
/// the authorizer's jobs end the same way (its token is refused, the refresh finds no
/// authorization); the push itself is one `kind: authorization` outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sends_for_authorizers_and_rejects_the_others_as_not_authorized() {
    let (mut h, platform) = outcomes::platform_without_worker(Opts::default()).await;
    let c = replica(&h.mock, &platform).await;
    // 7 (群发与通知) is the set template messages need.
    authorized(&h.mock, &c, &platform, APPID, &[1, 7]).await;
    let other = unique("wxnever").replace('.', "");
    let exchange = h.config.amqp.outcomes_exchange.clone();
    h.config = outcomes::platform_config(&h, &platform, &exchange);
    let mut second = h.config.accounts[0].clone();
    second.appid = other.clone();
    h.config.accounts.push(second);
    h.start_worker().await;

    let mut all = jobs_for("auth-ok", APPID, 5);
    all.extend(jobs_for("auth-never", &other, 3));
    h.publish_many(&all).await;
    let out = h.outcomes(8, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 8, "{:?}", by_status(&out));
    for o in &out {
        if o["appid"] == APPID {
            assert_eq!(o["status"], "sent", "{o}");
        } else {
            assert_eq!(o["status"], "rejected", "{o}");
            assert_eq!(o["reason"], "not_authorized", "{o}");
        }
    }
    assert_eq!(
        h.mock.state.stats().messages,
        5,
        "only the authorizer's jobs were sent"
    );

    // The unauthorized push goes to the worker's own route, answered `success` once stored.
    h.mock.state.component_unauthorize(APPID);
    let (q, body) = push(&platform, &auth_xml(&platform, "unauthorized", APPID, ""));
    let url = format!(
        "http://{}/wechat/component?timestamp={}&nonce={}&msg_signature={}",
        h.worker.as_ref().unwrap().http_addr,
        q.timestamp,
        q.nonce,
        q.msg_signature
    );
    let http = reqwest::Client::new();
    let forged = http
        .post(url.replace("msg_signature=", "msg_signature=0"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(
        c.record(APPID).await.is_ok(),
        "a forged push changes nothing"
    );
    let answer = http.post(&url).body(body).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "success");
    assert!(matches!(
        c.record(APPID).await,
        Err(ComponentError::NotAuthorized(_))
    ));
    h.publish_many(&jobs_for("auth-gone", APPID, 3)).await;
    let out = h.outcomes(4, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 4, "{:?}", by_status(&out));
    let (auth, sends): (Vec<_>, Vec<_>) = out.iter().partition(|o| o["kind"] == "authorization");
    assert_eq!(auth.len(), 1, "the push's outcome: {auth:?}");
    assert_eq!(auth[0]["status"], "unauthorized");
    assert_eq!(auth[0]["appid"], APPID);
    for o in &sends {
        assert_eq!(o["status"], "rejected", "{o}");
        assert_eq!(o["reason"], "not_authorized", "{o}");
    }
    assert_eq!(h.mock.state.stats().messages, 5);
    h.cleanup().await;
}

/// The worker's `/wechat/component` route (served here without the rest of the worker, from
/// a component-mode configuration) takes the simulator's timed ticket pushes: each is answered
/// `success` after it is stored, and the platform's token is fetched with a pushed ticket,
/// whether the ticket came before or after a replica started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_ticket_pushes_reach_the_route_and_a_restarted_replica_uses_them() {
    use std::collections::BTreeMap;
    use wxdispatch::config::Config;
    use wxdispatch::tools::mock::component::TicketTarget;

    let (mock, appid) = platform_mock().await;
    let vars: BTreeMap<String, String> = [
        ("WXD_APPID", "wxauthorizer01"),
        ("WXD_TOKEN_MODE", "component"),
        ("WXD_COMPONENT_APPID", appid.as_str()),
        ("WXD_REDIS_URL", REDIS_URL),
        ("WXD_COMPONENT_SECRET", PLATFORM_SECRET),
        ("WXD_COMPONENT_TOKEN", PUSH_TOKEN),
        ("WXD_COMPONENT_AES_KEY", PUSH_KEY),
        ("WXD_API_BASE", &mock.base_url()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_sources(None, &vars).unwrap();
    let (url, stop) = serve_route(&config).await;
    mock.state.push_tickets(
        TicketTarget {
            url,
            token: PUSH_TOKEN.into(),
            aes_key: PUSH_KEY.into(),
        },
        Duration::from_millis(200),
    );
    eventually("a ticket stored", Duration::from_secs(5), || async {
        mock.state.component_stats().tickets_acknowledged >= 1
    })
    .await;
    let c = replica(&mock, &appid).await;
    c.component_token()
        .await
        .expect("a token with the pushed ticket");
    eventually("more tickets", Duration::from_secs(5), || async {
        mock.state.component_stats().tickets_acknowledged >= 3
    })
    .await;
    // A replica started now fetches with what is stored, after more pushes.
    redis_cmd(&["DEL", &format!("wxdispatch:component:{appid}:token")]).await;
    replica(&mock, &appid)
        .await
        .component_token()
        .await
        .expect("a stored ticket");
    let stats = mock.state.component_stats();
    assert_eq!(
        stats.tickets_pushed, stats.tickets_acknowledged,
        "{stats:?}"
    );
    assert_eq!(stats.component_token_calls, 2);
    stop.trigger();
}

mod dynamic;
mod metrics;
mod outcomes;
mod permissions;
mod refresh;
mod tickets;
