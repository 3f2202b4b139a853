//! The simulator's third-party platform endpoints (`/cgi-bin/component/...`): the component
//! token against a ticket it issued (61006 otherwise), authorization codes exchanged
//! for authorizer tokens (usable on the send endpoints), refresh tokens rotated on every use
//! (a spent one answers 61023), and the authorizer list; a send for an authorizer of a type
//! whose permission set it did not grant answers 48001. Set up with
//! [`MockState::component_setup`]; tickets and authorizations are made on demand
//! ([`MockState::component_ticket`], [`MockState::component_authorize`]), and pushed
//! encrypted by the test or tool that holds the platform's key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::MockState;
use crate::component::api;
use crate::job::MsgType;

/// What the platform's endpoints were asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ComponentStats {
    pub component_token_calls: u64,
    pub query_auth_calls: u64,
    /// `api_authorizer_token` calls per authorizer appid.
    pub authorizer_token_calls: HashMap<String, u64>,
    pub authorizer_list_calls: u64,
    /// Refresh calls with a spent or unknown refresh token (answered 61023).
    pub invalid_refresh_tokens: u64,
    /// Verify-ticket pushes made, and answered `success`.
    pub tickets_pushed: u64,
    pub tickets_acknowledged: u64,
}

/// Where the simulator pushes verify tickets: the platform's `/wechat/component` URL, its
/// token and its EncodingAESKey.
#[derive(Debug, Clone)]
pub struct TicketTarget {
    pub url: String,
    pub token: String,
    pub aes_key: String,
}

#[derive(Default)]
pub struct ComponentState {
    inner: Mutex<Platform>,
}

#[derive(Default)]
struct Platform {
    appid: String,
    secret: String,
    /// Every ticket issued: like WeChat's (valid 12 h), an older one still works.
    tickets: Vec<String>,
    tokens: Vec<String>,
    /// Authorization code → (authorizer appid, permission sets).
    codes: HashMap<String, (String, Vec<u32>)>,
    /// Authorizer appid → (current refresh token, permission sets).
    authorizers: HashMap<String, (String, Vec<u32>)>,
    /// When each authorizer's `api_authorizer_token` calls came, in order (kept out of
    /// [`ComponentStats`], which is serialized).
    refresh_times: HashMap<String, Vec<std::time::Instant>>,
    seq: u64,
    stats: ComponentStats,
}

impl Platform {
    fn next(&mut self, what: &str) -> String {
        self.seq += 1;
        format!("{what}_{}_{:08x}", self.seq, rand::random::<u32>())
    }
}

/// The permission set a message type needs (wxdispatch's defaults: template messages 7,
/// subscription notifications 89, mini-program subscribe messages 18).
fn needed_set(t: MsgType) -> u32 {
    match t {
        MsgType::Template => 7,
        MsgType::Subscribe => 89,
        MsgType::MiniprogramSubscribe => 18,
    }
}

impl MockState {
    /// Whether WeChat refuses a send of type `t` for `appid` (48001): it is an authorizer of
    /// the platform that did not grant the set the type needs.
    pub(super) fn component_refuses(&self, appid: &str, t: MsgType) -> bool {
        let p = self.component.inner.lock().unwrap();
        p.authorizers
            .get(appid)
            .is_some_and(|(_, funcs)| !funcs.contains(&needed_set(t)))
    }

    /// Makes the simulator a platform with these credentials.
    pub fn component_setup(&self, appid: &str, secret: &str) {
        let mut p = self.component.inner.lock().unwrap();
        p.appid = appid.into();
        p.secret = secret.into();
    }

    /// Issues a new verify ticket (the one a push would carry) and returns it.
    pub fn component_ticket(&self) -> String {
        let mut p = self.component.inner.lock().unwrap();
        let t = p.next("TICKET");
        p.tickets.push(t.clone());
        t
    }

    /// A merchant authorizes the platform for `appid` with `funcs`: returns the
    /// AuthorizationCode an `authorized` push carries. The appid's sends are accepted.
    pub fn component_authorize(&self, appid: &str, funcs: &[u32]) -> String {
        self.add_account(appid, "(authorizer: no secret)");
        let mut p = self.component.inner.lock().unwrap();
        let code = p.next("AUTHCODE");
        p.codes.insert(code.clone(), (appid.into(), funcs.to_vec()));
        code
    }

    /// Merchants that authorized the platform earlier, with `funcs`, in one step (the bench's
    /// thousands of authorizers): returns each one's current refresh token, for the platform's
    /// store. Their sends are accepted.
    pub fn component_preauthorize(&self, appids: &[String], funcs: &[u32]) -> Vec<String> {
        self.preauthorize(appids, funcs)
    }

    /// An access token for authorizer `appid`, valid `ttl_secs`, as `api_authorizer_token`
    /// would have issued it (for a platform that has been running).
    pub fn component_authorizer_token(&self, appid: &str, ttl_secs: u64) -> String {
        self.issue_token(appid, ttl_secs)
    }

    fn preauthorize(&self, appids: &[String], funcs: &[u32]) -> Vec<String> {
        {
            let mut accounts = self.accounts.write().unwrap();
            for a in appids {
                accounts.insert(a.clone(), "(authorizer: no secret)".into());
            }
        }
        let mut p = self.component.inner.lock().unwrap();
        appids
            .iter()
            .map(|a| {
                let refresh = p.next("REFRESH");
                p.authorizers
                    .insert(a.clone(), (refresh.clone(), funcs.to_vec()));
                refresh
            })
            .collect()
    }

    /// The merchant revokes the authorization.
    pub fn component_unauthorize(&self, appid: &str) {
        self.component
            .inner
            .lock()
            .unwrap()
            .authorizers
            .remove(appid);
        // The platform's tokens for it stop working.
        self.tokens.lock().unwrap().retain(|_, t| t.appid != appid);
    }

    /// Pushes a new verify ticket to `target` now and then every `every` (WeChat: every ten
    /// minutes), encrypted and signed as WeChat does, until the simulator stops. Counts the
    /// pushes answered `success` in [`ComponentStats::tickets_acknowledged`].
    pub fn push_tickets(self: &Arc<Self>, target: TicketTarget, every: std::time::Duration) {
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let key = match crate::crypto::AesKey::from_encoding_aes_key(&target.aes_key) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "ticket push: bad EncodingAESKey");
                    return;
                }
            };
            loop {
                let Some(s) = state.upgrade() else { return };
                let ticket = s.component_ticket();
                let appid = s.component.inner.lock().unwrap().appid.clone();
                let xml = format!(
                    "<xml><AppId>{appid}</AppId><CreateTime>{}</CreateTime><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>{ticket}</ComponentVerifyTicket></xml>",
                    chrono::Utc::now().timestamp()
                );
                let encrypted = crate::crypto::encrypt_with_random(&key, &xml, &appid);
                let (ts, nonce) = (chrono::Utc::now().timestamp().to_string(), "tn");
                let sig =
                    crate::crypto::signature::msg_signature(&target.token, &ts, nonce, &encrypted);
                let body = format!(
                    "<xml><AppId><![CDATA[{appid}]]></AppId><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
                );
                let answer = http
                    .post(&target.url)
                    .query(&[
                        ("timestamp", ts.as_str()),
                        ("nonce", nonce),
                        ("msg_signature", sig.as_str()),
                    ])
                    .body(body)
                    .send()
                    .await;
                let ok = match answer {
                    Ok(r) => r.text().await.is_ok_and(|t| t == "success"),
                    Err(_) => false,
                };
                {
                    let mut p = s.component.inner.lock().unwrap();
                    p.stats.tickets_pushed += 1;
                    if ok {
                        p.stats.tickets_acknowledged += 1;
                    }
                }
                drop(s);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// When `appid`'s `api_authorizer_token` calls came, in order: a test can see that no two
    /// fall in one token lifetime.
    pub fn component_refresh_times(&self, appid: &str) -> Vec<std::time::Instant> {
        let p = self.component.inner.lock().unwrap();
        p.refresh_times.get(appid).cloned().unwrap_or_default()
    }

    pub fn component_stats(&self) -> ComponentStats {
        self.component.inner.lock().unwrap().stats.clone()
    }
}

pub(super) fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route(api::COMPONENT_TOKEN, post(component_token))
        .route(api::QUERY_AUTH, post(query_auth))
        .route(api::AUTHORIZER_TOKEN, post(authorizer_token))
        .route(api::AUTHORIZER_LIST, post(authorizer_list))
}

fn wx(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], value.to_string()).into_response()
}

fn wx_err(code: i64, msg: &str) -> Response {
    wx(serde_json::json!({"errcode": code, "errmsg": msg}))
}

#[derive(Deserialize)]
struct TokenQuery {
    component_access_token: Option<String>,
}

fn body(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_default()
}

fn text<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

async fn component_token(State(s): State<Arc<MockState>>, b: Bytes) -> Response {
    let v = body(&b);
    let mut p = s.component.inner.lock().unwrap();
    p.stats.component_token_calls += 1;
    if p.appid.is_empty() || text(&v, "component_appid") != p.appid {
        return wx_err(40013, "invalid appid");
    }
    if text(&v, "component_appsecret") != p.secret {
        return wx_err(40125, "invalid appsecret");
    }
    let ticket = text(&v, "component_verify_ticket");
    if !p.tickets.iter().any(|t| t == ticket) {
        return wx_err(61006, "component ticket is invalid");
    }
    let t = p.next("CTOKEN");
    p.tokens.push(t.clone());
    wx(serde_json::json!({"component_access_token": t, "expires_in": 7200}))
}

/// Checks the component token; `Some` is the refusal to answer.
fn check(p: &Platform, q: &TokenQuery) -> Option<Response> {
    match &q.component_access_token {
        Some(t) if p.tokens.contains(t) => None,
        _ => Some(wx_err(40001, "invalid component_access_token")),
    }
}

fn funcs_json(funcs: &[u32]) -> serde_json::Value {
    funcs
        .iter()
        .map(|id| serde_json::json!({"funcscope_category": {"id": id}}))
        .collect()
}

async fn query_auth(
    State(s): State<Arc<MockState>>,
    Query(q): Query<TokenQuery>,
    b: Bytes,
) -> Response {
    let v = body(&b);
    let ttl = s.behaviour.read().unwrap().token_ttl_secs;
    let (appid, funcs, refresh) = {
        let mut p = s.component.inner.lock().unwrap();
        p.stats.query_auth_calls += 1;
        if let Some(r) = check(&p, &q) {
            return r;
        }
        let Some((appid, funcs)) = p.codes.remove(text(&v, "authorization_code")) else {
            return wx_err(61010, "code is expired or invalid");
        };
        let refresh = p.next("REFRESH");
        p.authorizers
            .insert(appid.clone(), (refresh.clone(), funcs.clone()));
        (appid, funcs, refresh)
    };
    let token = s.issue_token(&appid, ttl);
    wx(serde_json::json!({"authorization_info": {
        "authorizer_appid": appid,
        "authorizer_access_token": token,
        "expires_in": ttl,
        "authorizer_refresh_token": refresh,
        "func_info": funcs_json(&funcs),
    }}))
}

async fn authorizer_token(
    State(s): State<Arc<MockState>>,
    Query(q): Query<TokenQuery>,
    b: Bytes,
) -> Response {
    let v = body(&b);
    let appid = text(&v, "authorizer_appid").to_string();
    let ttl = s.behaviour.read().unwrap().token_ttl_secs;
    let refresh = {
        let mut p = s.component.inner.lock().unwrap();
        *p.stats
            .authorizer_token_calls
            .entry(appid.clone())
            .or_default() += 1;
        p.refresh_times
            .entry(appid.clone())
            .or_default()
            .push(std::time::Instant::now());
        if let Some(r) = check(&p, &q) {
            return r;
        }
        let current = p.authorizers.get(&appid).map(|(r, _)| r.clone());
        if current.as_deref() != Some(text(&v, "authorizer_refresh_token")) {
            p.stats.invalid_refresh_tokens += 1;
            return wx_err(61023, "refresh_token is invalid");
        }
        let rotated = p.next("REFRESH");
        if let Some(a) = p.authorizers.get_mut(&appid) {
            a.0 = rotated.clone();
        }
        rotated
    };
    let token = s.issue_token(&appid, ttl);
    wx(serde_json::json!({
        "authorizer_access_token": token,
        "expires_in": ttl,
        "authorizer_refresh_token": refresh,
    }))
}

async fn authorizer_list(
    State(s): State<Arc<MockState>>,
    Query(q): Query<TokenQuery>,
    b: Bytes,
) -> Response {
    let v = body(&b);
    let mut p = s.component.inner.lock().unwrap();
    p.stats.authorizer_list_calls += 1;
    if let Some(r) = check(&p, &q) {
        return r;
    }
    let offset = v.get("offset").and_then(|o| o.as_u64()).unwrap_or(0) as usize;
    let count = v.get("count").and_then(|o| o.as_u64()).unwrap_or(500) as usize;
    let mut all: Vec<_> = p.authorizers.iter().collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let list: Vec<_> = all
        .iter()
        .skip(offset)
        .take(count)
        .map(|(appid, (refresh, _))| {
            serde_json::json!({"authorizer_appid": appid, "refresh_token": refresh, "auth_time": 0})
        })
        .collect();
    wx(serde_json::json!({"total_count": all.len(), "list": list}))
}
