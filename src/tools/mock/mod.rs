//! `wxdispatch mock-wechat`: a local simulator of the WeChat API endpoints wxdispatch uses.
//!
//! It answers like WeChat (JSON with `Content-Type: text/plain`), enforces the things the
//! worker must respect (token validity, the daily quota, deduplication of
//! `(touser, client_msg_id)` for 10 minutes) and injects faults on demand, so the tests, the
//! demo and the benchmarks exercise every path without a real account.
//!
//! It serves the three send endpoints (template, subscription bizsend, mini-program subscribe)
//! with the same faults; the two subscription endpoints take no `client_msg_id`, so they never
//! deduplicate, and the mini-program one has its own daily quota count.
//!
//! Faults come three ways:
//! - random, by rate: `--fail -1:0.05 --fail http502:0.01 --fail timeout:0.001`;
//! - deterministic, in-band by openid: `fail:<code>` always answers `<code>`, and
//!   `flaky:<code>:<n>:<anything>` answers `<code>` to the first `n` tries of a message
//!   (`<code>` may also be `http502` or `timeout`);
//! - at run time, via `POST /mock/faults`, `POST /mock/expire_tokens` and `POST /mock/outage`;
//! - on the token endpoints, `Behaviour::token_outage`: every `token` and `stable_token` call
//!   is answered with a [`TokenFault`] while it is set; `Behaviour::forced_token_fault` does
//!   the same to forced `stable_token` calls only.
//!
//! A "timeout" fault accepts the message and then stalls the reply, which is exactly the case
//! where a careless retry would send a second message.
//!
//! `GET /mock/stats` reports what was received: requests, unique messages, duplicates
//! suppressed, per-second send counts per appid, token calls and errors by code.

pub mod central;
mod command;
pub mod component;
pub mod push;
pub mod xml;

pub use command::{Args, serve_simulator};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::job::MsgType;
use crate::shutdown::Shutdown;

/// The first msgid the simulator hands out: 19 digits like real ones, past both `i32::MAX` and
/// 2^53 (where JavaScript's `JSON.parse` rounds), so every test outcome exercises `msgid_str`.
pub const FIRST_MSGID: i64 = 3_662_956_322_040_938_501;

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// Answer with this WeChat errcode.
    Errcode(i64),
    /// Answer with this HTTP status and no JSON.
    Http(u16),
    /// Accept the message, then stall the reply.
    Timeout,
    /// Accept the message, then answer HTTP 200 with an HTML page instead of WeChat's JSON,
    /// as a proxy or captive portal would after forwarding the request.
    Html200,
    /// Accept the message, then answer HTTP 200 with JSON that has no `errcode`.
    Json200,
}

impl FaultKind {
    /// Whether WeChat takes the message before the fault hits its reply.
    fn after_accept(self) -> bool {
        matches!(
            self,
            FaultKind::Timeout | FaultKind::Html200 | FaultKind::Json200
        )
    }
}

impl FaultKind {
    /// Parses `-1`, `45009`, `http502`, `timeout`, `html200` or `json200`.
    pub fn parse(s: &str) -> Result<FaultKind, String> {
        if s == "timeout" {
            Ok(FaultKind::Timeout)
        } else if s == "html200" {
            Ok(FaultKind::Html200)
        } else if s == "json200" {
            Ok(FaultKind::Json200)
        } else if let Some(code) = s.strip_prefix("http") {
            code.parse()
                .map(FaultKind::Http)
                .map_err(|_| format!("bad http status in {s:?}"))
        } else {
            s.parse()
                .map(FaultKind::Errcode)
                .map_err(|_| format!("bad fault {s:?}: use an errcode, httpNNN or timeout"))
        }
    }
}

/// A fault of the token endpoints (`/cgi-bin/token` and `/cgi-bin/stable_token`), so the
/// worker's token backoff and its circuit breaker can be tested without a real outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenFault {
    /// Answer with this WeChat errcode (`-1` system busy, `45009` the endpoint's daily limit).
    Errcode(i64),
    /// Answer with this HTTP status and no JSON.
    Http(u16),
    /// Answer `errcode: 0` with no `access_token`, as a broken proxy might.
    NoToken,
}

/// A random fault with the probability of hitting one send request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub rate: f64,
}

impl Fault {
    /// Parses `KIND:RATE`, e.g. `-1:0.05`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let (kind, rate) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("bad fault {s:?}: use KIND:RATE, e.g. -1:0.05"))?;
        let rate: f64 = rate.parse().map_err(|_| format!("bad rate in {s:?}"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("rate in {s:?} must be between 0 and 1"));
        }
        Ok(Fault {
            kind: FaultKind::parse(kind)?,
            rate,
        })
    }
}

/// Settings that tests may change while the simulator runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Behaviour {
    pub faults: Vec<Fault>,
    pub latency_ms: u64,
    /// Daily template quota per appid; `None` means unlimited.
    pub quota: Option<u64>,
    pub token_ttl_secs: u64,
    /// How long a `timeout` fault stalls its reply.
    pub stall_ms: u64,
    /// When set, every request is refused with this fault (an outage).
    pub outage: Option<FaultKind>,
    /// When set, every call of a token endpoint is answered with this fault.
    #[serde(default)]
    pub token_outage: Option<TokenFault>,
    /// When set, every forced `stable_token` call (`force_refresh: true`) is answered with this
    /// fault, while normal calls are answered as usual.
    #[serde(default)]
    pub forced_token_fault: Option<TokenFault>,
    /// The template-message catalogue (`get_all_private_template`): `(template_id, content)`.
    /// `None`: the endpoint answers 48001, as for an account without the permission.
    #[serde(default)]
    pub private_templates: Option<Vec<(String, String)>>,
    /// The subscription-template catalogue (`wxaapi/newtmpl/gettemplate`), likewise.
    #[serde(default)]
    pub subscription_templates: Option<Vec<(String, String)>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            faults: Vec::new(),
            latency_ms: 0,
            quota: None,
            token_ttl_secs: 7200,
            stall_ms: 30_000,
            outage: None,
            token_outage: None,
            forced_token_fault: None,
            private_templates: None,
            subscription_templates: None,
        }
    }
}

/// The seed document's template, for `--catalogue`.
pub fn sample_private_templates() -> Vec<(String, String)> {
    vec![(
        "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY".into(),
        "{{User.DATA}}\n卡号：{{CardNumber.DATA}}\n{{Type.DATA}}：{{Money.DATA}}\n时间：{{Date.DATA}}\n余额：{{Left.DATA}}".into(),
    )]
}

/// Two subscription templates, for `--catalogue`.
pub fn sample_subscription_templates() -> Vec<(String, String)> {
    vec![
        (
            "SUBTPL".into(),
            "物品：{{thing1.DATA}}\n时间：{{time2.DATA}}".into(),
        ),
        (
            "MPTPL".into(),
            "单号：{{number01.DATA}}\n状态：{{phrase3.DATA}}".into(),
        ),
    ]
}

/// Simulator configuration.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// `(appid, secret)` pairs it accepts.
    pub accounts: Vec<(String, String)>,
    pub behaviour: Behaviour,
    /// Where to push TEMPLATESENDJOBFINISH receipts after successful sends.
    pub push: Option<push::PushTarget>,
}

/// WeChat's daily limit of forced `stable_token` refreshes per appid. The simulator counts
/// them over all its appids, and its "day" is its lifetime.
pub const FORCED_REFRESHES_PER_DAY: u64 = 20;

#[derive(Debug)]
struct TokenInfo {
    appid: String,
    expires_at: Instant,
}

#[derive(Default, Serialize, Clone, Debug)]
pub struct Stats {
    /// Send requests received, of every type (all, including failed ones).
    pub send_requests: u64,
    /// Send requests received per message type (`template`, `subscribe`,
    /// `miniprogram_subscribe`).
    pub requests_by_type: BTreeMap<String, u64>,
    /// Distinct messages accepted per message type.
    pub messages_by_type: BTreeMap<String, u64>,
    /// The most send requests that were being answered at the same time: proof of a worker's
    /// concurrency, and of its limit, that does not depend on the wall clock.
    pub peak_in_flight: u64,
    /// Distinct messages accepted, i.e. what users would see.
    pub messages: u64,
    /// Requests that repeated an accepted `(touser, client_msg_id)` within 10 minutes.
    pub duplicates_suppressed: u64,
    pub token_calls: u64,
    pub stable_token_calls: u64,
    /// Classic token calls made while the appid's previous token was still valid: renewals
    /// ahead of expiry, as opposed to fetches after a token ran out.
    pub renewed_before_expiry: u64,
    pub forced_refreshes: u64,
    /// Forced calls inside 30 s of the last forced refresh (answered with the current token).
    pub forced_too_soon: u64,
    pub clear_quota_calls: u64,
    /// Calls of the two catalogue endpoints.
    pub catalogue_calls: u64,
    /// Errors answered, by errcode or `httpNNN`/`timeout`.
    pub errors: BTreeMap<String, u64>,
    /// Accepted messages per Unix second, per appid.
    pub per_second: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Accepted messages per appid.
    pub per_appid: BTreeMap<String, u64>,
    /// Receipts pushed to the callback URL, and how many were answered `success`.
    pub receipts_pushed: u64,
    pub receipts_acknowledged: u64,
    /// Every try of every receipt push and how it was answered, so a test can check that no
    /// push was answered `success` before its receipt was stored.
    pub receipt_tries: Vec<push::ReceiptTry>,
    /// Accepted send requests (first or repeated) per `client_msg_id`, so a test can tell
    /// which job reached WeChat twice, not only that some did.
    pub sends_by_id: BTreeMap<String, u64>,
    /// Subscription events (consent popup/change, bizsend results) pushed, and acknowledged.
    pub events_pushed: u64,
    pub events_acknowledged: u64,
}

/// A message the simulator accepted: `(touser, client_msg_id)` → msgid.
struct Accepted {
    msgid: i64,
    at: Instant,
}

/// Shared simulator state.
pub struct MockState {
    accounts: RwLock<HashMap<String, String>>,
    behaviour: RwLock<Behaviour>,
    tokens: Mutex<HashMap<String, TokenInfo>>,
    /// The current stable token per appid and the time of the last forced refresh.
    stable: Mutex<HashMap<String, (String, Option<Instant>)>>,
    classic: Mutex<HashMap<String, String>>,
    accepted: Mutex<HashMap<(String, String), Accepted>>,
    tries: Mutex<HashMap<(String, String), u32>>,
    /// When each send request arrived, per `client_msg_id`, so a test can see the gaps
    /// between one job's attempts (kept out of [`Stats`], which is cloned often).
    request_times: Mutex<HashMap<String, Vec<Instant>>>,
    quota_used: Mutex<HashMap<String, u64>>,
    stats: Mutex<Stats>,
    next_msgid: AtomicI64,
    token_seq: AtomicU64,
    /// Send requests being answered right now.
    in_flight: AtomicU64,
    push: Option<push::PushTarget>,
    http: reqwest::Client,
    /// The central token service's state ([`central`]).
    central: central::CentralState,
    /// The third-party platform's state ([`component`]).
    component: component::ComponentState,
}

type Shared = Arc<MockState>;

/// A running simulator.
pub struct MockServer {
    pub addr: std::net::SocketAddr,
    pub state: Shared,
    shutdown: Shutdown,
}

impl MockServer {
    /// Where the simulator pushes receipts and events, if anywhere.
    pub fn push_target(&self) -> Option<push::PushTarget> {
        self.state.push.clone()
    }

    /// Starts a simulator on `listen` (use port 0 for a free port).
    pub async fn start(listen: &str, config: MockConfig) -> std::io::Result<MockServer> {
        let state = Arc::new(MockState {
            accounts: RwLock::new(config.accounts.into_iter().collect()),
            behaviour: RwLock::new(config.behaviour),
            tokens: Mutex::default(),
            stable: Mutex::default(),
            classic: Mutex::default(),
            accepted: Mutex::default(),
            tries: Mutex::default(),
            request_times: Mutex::default(),
            quota_used: Mutex::default(),
            stats: Mutex::default(),
            next_msgid: AtomicI64::new(FIRST_MSGID),
            token_seq: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            push: config.push,
            http: reqwest::Client::new(),
            central: central::CentralState::default(),
            component: component::ComponentState::default(),
        });
        let shutdown = Shutdown::new();
        let (addr, _) = crate::http::serve(listen, router(state.clone()), shutdown.clone()).await?;
        Ok(MockServer {
            addr,
            state,
            shutdown,
        })
    }

    /// The base URL to give the worker as `api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.shutdown.trigger();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl MockState {
    /// Accepts one more account.
    pub fn add_account(&self, appid: &str, secret: &str) {
        self.accounts
            .write()
            .unwrap()
            .insert(appid.to_string(), secret.to_string());
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// When each send request arrived, per `client_msg_id`, in order.
    pub fn request_times(&self) -> HashMap<String, Vec<Instant>> {
        self.request_times.lock().unwrap().clone()
    }

    /// Distinct messages accepted per recipient: what each user would see.
    pub fn messages_per_recipient(&self) -> HashMap<String, u64> {
        let mut per = HashMap::new();
        for (touser, _) in self.accepted.lock().unwrap().keys() {
            *per.entry(touser.clone()).or_default() += 1;
        }
        per
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.write().unwrap() = b;
    }

    pub fn behaviour(&self) -> Behaviour {
        self.behaviour.read().unwrap().clone()
    }

    /// Expires every token now (a mid-run expiry).
    pub fn expire_tokens(&self) {
        let past = Instant::now() - Duration::from_secs(1);
        for t in self.tokens.lock().unwrap().values_mut() {
            t.expires_at = past;
        }
    }

    /// Forgets when each appid's last forced refresh was, as if 30 s had passed (for tests of
    /// the forced-refresh rules that cannot wait).
    pub fn forget_forced_spacing(&self) {
        for (_, last) in self.stable.lock().unwrap().values_mut() {
            *last = None;
        }
    }

    /// Resets the used daily quota of every appid, like an operator's `clear_quota`.
    pub fn clear_quota(&self) {
        self.quota_used.lock().unwrap().clear();
    }

    fn error(&self, key: String) {
        *self.stats.lock().unwrap().errors.entry(key).or_default() += 1;
    }

    fn issue_token(&self, appid: &str, ttl: u64) -> String {
        let n = self.token_seq.fetch_add(1, Ordering::Relaxed);
        let token = format!("MOCK_{appid}_{n}_{:08x}", rand::rng().random::<u32>());
        self.tokens.lock().unwrap().insert(
            token.clone(),
            TokenInfo {
                appid: appid.to_string(),
                expires_at: Instant::now() + Duration::from_secs(ttl),
            },
        );
        token
    }

    fn remaining(&self, token: &str) -> Option<u64> {
        let tokens = self.tokens.lock().unwrap();
        let t = tokens.get(token)?;
        let left = t.expires_at.checked_duration_since(Instant::now())?;
        Some(left.as_secs())
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/cgi-bin/token", get(classic_token))
        .route("/cgi-bin/stable_token", post(stable_token))
        .route("/cgi-bin/message/template/send", post(template_send))
        .route("/cgi-bin/message/subscribe/bizsend", post(subscribe_send))
        .route(
            "/cgi-bin/message/subscribe/send",
            post(miniprogram_subscribe_send),
        )
        .route("/cgi-bin/clear_quota", post(clear_quota))
        .route(
            "/cgi-bin/template/get_all_private_template",
            get(private_templates),
        )
        .route("/wxaapi/newtmpl/gettemplate", get(subscription_templates))
        .route("/mock/stats", get(stats))
        .route("/mock/faults", post(set_faults).get(get_faults))
        .route("/mock/expire_tokens", post(expire_tokens))
        .route("/mock/clear_quota", post(mock_clear_quota))
        .route("/mock/consent", post(consent))
        .merge(central::routes())
        .merge(component::routes())
        .with_state(state)
}

/// WeChat answers JSON as text/plain.
fn wx(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], value.to_string()).into_response()
}

fn wx_err(code: i64, msg: &str) -> Response {
    wx(serde_json::json!({"errcode": code, "errmsg": msg}))
}

#[derive(Deserialize)]
struct TokenQuery {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

/// Checks credentials like WeChat: unknown appid 40013, wrong secret 40001/40125.
fn check_credentials(
    s: &MockState,
    appid: Option<&str>,
    secret: Option<&str>,
    wrong_secret: i64,
) -> Result<String, (i64, &'static str)> {
    let Some(appid) = appid.filter(|a| !a.is_empty()) else {
        return Err((41002, "appid missing"));
    };
    let Some(secret) = secret.filter(|a| !a.is_empty()) else {
        return Err((41004, "appsecret missing"));
    };
    let expected = s.accounts.read().unwrap().get(appid).cloned();
    match expected {
        None => {
            s.error("40013".into());
            Err((40013, "invalid appid"))
        }
        Some(expected) if expected != secret => {
            s.error(wrong_secret.to_string());
            Err((wrong_secret, "invalid appsecret"))
        }
        Some(_) => Ok(appid.to_string()),
    }
}

/// The injected token-endpoint fault's reply, if one is set.
async fn token_fault(s: &MockState) -> Option<Response> {
    let fault = s.behaviour.read().unwrap().token_outage?;
    Some(token_fault_reply(s, fault).await)
}

/// The reply of a token endpoint for `fault`.
async fn token_fault_reply(s: &MockState, fault: TokenFault) -> Response {
    match fault {
        TokenFault::Errcode(code) => fault_reply(s, FaultKind::Errcode(code), 0).await,
        TokenFault::Http(status) => fault_reply(s, FaultKind::Http(status), 0).await,
        TokenFault::NoToken => {
            s.error("no_token".into());
            wx(serde_json::json!({"errcode": 0, "errmsg": "ok", "expires_in": 7200}))
        }
    }
}

async fn classic_token(State(s): State<Shared>, Query(q): Query<TokenQuery>) -> Response {
    s.stats.lock().unwrap().token_calls += 1;
    if let Some(r) = token_fault(&s).await {
        return r;
    }
    if q.grant_type.as_deref() != Some("client_credential") {
        return wx_err(40002, "invalid grant_type");
    }
    let appid = match check_credentials(&s, q.appid.as_deref(), q.secret.as_deref(), 40001) {
        Ok(a) => a,
        Err((code, msg)) => return wx_err(code, msg),
    };
    let ttl = s.behaviour.read().unwrap().token_ttl_secs;
    let token = s.issue_token(&appid, ttl);
    // The classic endpoint invalidates the previous token after a 5-minute overlap.
    let mut renewed_early = false;
    if let Some(prev) = s.classic.lock().unwrap().insert(appid, token.clone())
        && let Some(t) = s.tokens.lock().unwrap().get_mut(&prev)
    {
        let now = Instant::now();
        renewed_early = t.expires_at > now;
        t.expires_at = t.expires_at.min(now + Duration::from_secs(300));
    }
    if renewed_early {
        s.stats.lock().unwrap().renewed_before_expiry += 1;
    }
    wx(serde_json::json!({"access_token": token, "expires_in": ttl}))
}

#[derive(Deserialize)]
struct StableQuery {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

async fn stable_token(State(s): State<Shared>, body: Bytes) -> Response {
    s.stats.lock().unwrap().stable_token_calls += 1;
    if let Some(r) = token_fault(&s).await {
        return r;
    }
    let Ok(q) = serde_json::from_slice::<StableQuery>(&body) else {
        return wx_err(47001, "data format error");
    };
    if q.grant_type.as_deref() != Some("client_credential") {
        return wx_err(40002, "invalid grant_type");
    }
    let appid = match check_credentials(&s, q.appid.as_deref(), q.secret.as_deref(), 40125) {
        Ok(a) => a,
        Err((code, msg)) => return wx_err(code, msg),
    };
    let forced_fault = s.behaviour.read().unwrap().forced_token_fault;
    if q.force_refresh
        && let Some(fault) = forced_fault
    {
        return token_fault_reply(&s, fault).await;
    }
    let ttl = s.behaviour.read().unwrap().token_ttl_secs;
    let mut stable = s.stable.lock().unwrap();
    let entry = stable.get(&appid).cloned();
    if q.force_refresh {
        // WeChat's rules for forced refreshes: inside 30 s of the last one, a forced call does
        // not refresh (it hands back the current token); at most 20 refresh a day, then 45009.
        if let Some((token, Some(last))) = &entry
            && last.elapsed() < Duration::from_secs(30)
            && let Some(left) = s.remaining(token)
        {
            s.stats.lock().unwrap().forced_too_soon += 1;
            return wx(serde_json::json!({"access_token": token, "expires_in": left}));
        }
        {
            let mut st = s.stats.lock().unwrap();
            if st.forced_refreshes >= FORCED_REFRESHES_PER_DAY {
                drop(st);
                s.error("45009".into());
                return wx_err(45009, "reach max api daily quota limit");
            }
            st.forced_refreshes += 1;
        }
        if let Some((old, _)) = &entry {
            s.tokens.lock().unwrap().remove(old);
        }
        let token = s.issue_token(&appid, ttl);
        stable.insert(appid, (token.clone(), Some(Instant::now())));
        return wx(serde_json::json!({"access_token": token, "expires_in": ttl}));
    }
    // Normal mode: everyone gets the current token while it is valid.
    if let Some((token, forced)) = entry {
        if let Some(left) = s.remaining(&token)
            && left > 0
        {
            return wx(serde_json::json!({"access_token": token, "expires_in": left}));
        }
        let token = s.issue_token(&appid, ttl);
        stable.insert(appid, (token.clone(), forced));
        return wx(serde_json::json!({"access_token": token, "expires_in": ttl}));
    }
    let token = s.issue_token(&appid, ttl);
    stable.insert(appid, (token.clone(), None));
    wx(serde_json::json!({"access_token": token, "expires_in": ttl}))
}

#[derive(Deserialize)]
struct AccessQuery {
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct SendBody {
    touser: Option<String>,
    template_id: Option<String>,
    client_msg_id: Option<String>,
}

/// Validates the access token: the appid it belongs to, or WeChat's error.
fn check_token(s: &MockState, token: Option<&str>) -> Result<String, (i64, &'static str)> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err((41001, "access_token missing"));
    };
    let tokens = s.tokens.lock().unwrap();
    match tokens.get(token) {
        None => Err((
            40001,
            "invalid credential, access_token is invalid or not latest",
        )),
        Some(t) if t.expires_at <= Instant::now() => Err((42001, "access_token expired")),
        Some(t) => Ok(t.appid.clone()),
    }
}

async fn template_send(
    State(s): State<Shared>,
    Query(q): Query<AccessQuery>,
    body: Bytes,
) -> Response {
    send(s, q, body, MsgType::Template).await
}

/// `POST /cgi-bin/message/subscribe/bizsend`: like a template send, with the same faults, but
/// without deduplication (the endpoint takes no `client_msg_id`).
async fn subscribe_send(
    State(s): State<Shared>,
    Query(q): Query<AccessQuery>,
    body: Bytes,
) -> Response {
    send(s, q, body, MsgType::Subscribe).await
}

/// `POST /cgi-bin/message/subscribe/send`: no deduplication, no `msgid` in the reply, and a
/// daily quota counted apart from the account's other sends.
async fn miniprogram_subscribe_send(
    State(s): State<Shared>,
    Query(q): Query<AccessQuery>,
    body: Bytes,
) -> Response {
    send(s, q, body, MsgType::MiniprogramSubscribe).await
}

async fn send(s: Shared, q: AccessQuery, body: Bytes, msg_type: MsgType) -> Response {
    let behaviour = s.behaviour.read().unwrap().clone();
    let _in_flight = InFlight::enter(&s);
    {
        let mut st = s.stats.lock().unwrap();
        st.send_requests += 1;
        *st.requests_by_type
            .entry(msg_type.as_str().into())
            .or_default() += 1;
    }
    let req = serde_json::from_slice::<SendBody>(&body).ok();
    if let Some(id) = req.as_ref().and_then(|r| r.client_msg_id.clone()) {
        s.request_times
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push(Instant::now());
    }
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    if let Some(kind) = behaviour.outage {
        return fault_reply(&s, kind, behaviour.stall_ms).await;
    }
    // A flaky message's try is counted before the token check: "the first n tries" are its
    // first n requests, even if one of them is refused for its token.
    let flaky = req.as_ref().and_then(|r| flaky_try(&s, r));
    let appid = match check_token(&s, q.access_token.as_deref()) {
        Ok(a) => a,
        Err((code, msg)) => {
            s.error(code.to_string());
            return wx_err(code, msg);
        }
    };
    let Some(req) = req else {
        s.error("47001".into());
        return wx_err(47001, "data format error");
    };
    let Some(touser) = req.touser.filter(|t| !t.is_empty()) else {
        s.error("40003".into());
        return wx_err(40003, "invalid openid");
    };
    if req.template_id.as_deref().is_none_or(str::is_empty) {
        s.error("40037".into());
        return wx_err(40037, "invalid template_id");
    }
    let client_msg_id = req.client_msg_id.unwrap_or_default();
    let key = (touser.clone(), client_msg_id.clone());

    // In-band deterministic faults by openid.
    if let Some(code) = touser.strip_prefix("fail:") {
        let code = code.split(':').next().unwrap_or(code);
        if let Ok(kind) = FaultKind::parse(code) {
            return fault_reply(&s, kind, behaviour.stall_ms).await;
        }
    }
    // A fault that hits the reply after the message was taken (a timeout, an HTML 200).
    let mut after_accept = None;
    match flaky {
        Some(kind) if kind.after_accept() => after_accept = Some(kind),
        Some(kind) => return fault_reply(&s, kind, behaviour.stall_ms).await,
        None => {}
    }
    if after_accept.is_none() {
        // Random faults by rate.
        let roll: f64 = rand::rng().random();
        let mut acc = 0.0;
        for f in &behaviour.faults {
            acc += f.rate;
            if roll < acc {
                if f.kind.after_accept() {
                    after_accept = Some(f.kind);
                    break;
                }
                return fault_reply(&s, f.kind, behaviour.stall_ms).await;
            }
        }
    }

    // Deduplicate (touser, client_msg_id) within 10 minutes, like WeChat.
    let now = Instant::now();
    let (msgid, new) = {
        let mut acc = s.accepted.lock().unwrap();
        match acc.get(&key) {
            Some(a)
                if !client_msg_id.is_empty()
                    && now.duration_since(a.at) < Duration::from_secs(600) =>
            {
                (a.msgid, false)
            }
            _ => {
                if let Some(q) = behaviour.quota {
                    let mut used = s.quota_used.lock().unwrap();
                    let counter = match msg_type {
                        MsgType::MiniprogramSubscribe => format!("{appid}:{msg_type}"),
                        MsgType::Template | MsgType::Subscribe => appid.clone(),
                    };
                    let u = used.entry(counter).or_default();
                    if *u >= q {
                        drop(used);
                        drop(acc);
                        s.error("45009".into());
                        return wx_err(45009, "reach max api daily quota limit");
                    }
                    *u += 1;
                }
                let msgid = s.next_msgid.fetch_add(1, Ordering::Relaxed);
                acc.insert(key, Accepted { msgid, at: now });
                (msgid, true)
            }
        }
    };
    {
        let mut st = s.stats.lock().unwrap();
        *st.sends_by_id.entry(client_msg_id).or_default() += 1;
        if new {
            st.messages += 1;
            *st.messages_by_type
                .entry(msg_type.as_str().into())
                .or_default() += 1;
            *st.per_appid.entry(appid.clone()).or_default() += 1;
            let sec = chrono::Utc::now().timestamp();
            *st.per_second
                .entry(appid.clone())
                .or_default()
                .entry(sec)
                .or_default() += 1;
        } else {
            st.duplicates_suppressed += 1;
        }
    }
    if new && let Some(target) = &s.push {
        match msg_type {
            MsgType::Template => {
                push::spawn_receipt(s.clone(), target.clone(), appid, touser, msgid)
            }
            // WeChat pushes the result of a subscription notification as an event.
            MsgType::Subscribe => {
                let (error_code, error_status) = push::sent_status(&touser);
                let event = push::SubscriptionEvent::Sent {
                    template_id: req.template_id.clone().unwrap_or_default(),
                    msgid,
                    error_code,
                    error_status: error_status.into(),
                };
                push::spawn_subscription_event(s.clone(), target.clone(), appid, touser, event);
            }
            MsgType::MiniprogramSubscribe => {}
        }
    }
    if let Some(kind) = after_accept {
        return fault_reply(&s, kind, behaviour.stall_ms).await;
    }
    match msg_type {
        MsgType::MiniprogramSubscribe => wx_err(0, "ok"),
        MsgType::Template | MsgType::Subscribe => {
            wx(serde_json::json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
        }
    }
}

/// A send request being answered; leaves the count however the handler ends (a client that
/// hangs up drops it mid-way).
struct InFlight<'a>(&'a MockState);

impl<'a> InFlight<'a> {
    fn enter(s: &'a MockState) -> InFlight<'a> {
        let now = s.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let mut st = s.stats.lock().unwrap();
        st.peak_in_flight = st.peak_in_flight.max(now);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one try of a `flaky:<code>:<n>:<tag>` message; the fault to answer while the message
/// is within its first `n` tries.
fn flaky_try(s: &MockState, req: &SendBody) -> Option<FaultKind> {
    let touser = req.touser.as_deref()?;
    let mut parts = touser.strip_prefix("flaky:")?.splitn(3, ':');
    let kind = FaultKind::parse(parts.next()?).ok()?;
    let n: u32 = parts.next()?.parse().ok()?;
    let key = (
        touser.to_string(),
        req.client_msg_id.clone().unwrap_or_default(),
    );
    let mut tries = s.tries.lock().unwrap();
    let t = tries.entry(key).or_default();
    *t += 1;
    (*t <= n).then_some(kind)
}

async fn fault_reply(s: &MockState, kind: FaultKind, stall_ms: u64) -> Response {
    match kind {
        FaultKind::Errcode(code) => {
            s.error(code.to_string());
            let msg = crate::wechat::errcode::lookup(code)
                .map(|i| i.en)
                .unwrap_or("error");
            wx_err(code, msg)
        }
        FaultKind::Http(status) => {
            s.error(format!("http{status}"));
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            // Throttling answers say when to come back, as front ends and proxies do.
            let throttled = matches!(status.as_u16(), 408 | 425 | 429 | 503);
            let mut resp = (status, "<html>bad gateway</html>").into_response();
            if throttled {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            resp
        }
        FaultKind::Html200 => {
            s.error("html200".into());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Service temporarily unavailable</body></html>",
            )
                .into_response()
        }
        FaultKind::Json200 => {
            s.error("json200".into());
            wx(serde_json::json!({"status": "accepted"}))
        }
        FaultKind::Timeout => {
            s.error("timeout".into());
            tokio::time::sleep(Duration::from_millis(stall_ms)).await;
            wx_err(-1, "system error")
        }
    }
}

async fn private_templates(State(s): State<Shared>, Query(q): Query<AccessQuery>) -> Response {
    catalogue(&s, q, false).await
}

async fn subscription_templates(State(s): State<Shared>, Query(q): Query<AccessQuery>) -> Response {
    catalogue(&s, q, true).await
}

/// Either catalogue, in its endpoint's own reply shape, with the outage fault applied.
async fn catalogue(s: &MockState, q: AccessQuery, subscription: bool) -> Response {
    s.stats.lock().unwrap().catalogue_calls += 1;
    let behaviour = s.behaviour.read().unwrap().clone();
    if let Some(kind) = behaviour.outage {
        return fault_reply(s, kind, behaviour.stall_ms).await;
    }
    if let Err((code, msg)) = check_token(s, q.access_token.as_deref()) {
        return wx_err(code, msg);
    }
    let list = if subscription {
        behaviour.subscription_templates
    } else {
        behaviour.private_templates
    };
    let Some(list) = list else {
        return wx_err(48001, "api unauthorized");
    };
    if subscription {
        let data: Vec<_> = list
            .iter()
            .map(|(id, content)| serde_json::json!({"priTmplId": id, "title": id, "content": content, "example": "", "type": 2}))
            .collect();
        wx(serde_json::json!({"errcode": 0, "errmsg": "ok", "data": data}))
    } else {
        let data: Vec<_> = list
            .iter()
            .map(|(id, content)| serde_json::json!({"template_id": id, "title": id, "content": content, "example": ""}))
            .collect();
        wx(serde_json::json!({"template_list": data}))
    }
}

async fn clear_quota(
    State(s): State<Shared>,
    Query(q): Query<AccessQuery>,
    body: Bytes,
) -> Response {
    if let Err((code, msg)) = check_token(&s, q.access_token.as_deref()) {
        return wx_err(code, msg);
    }
    #[derive(Deserialize)]
    struct Body {
        appid: String,
    }
    let Ok(b) = serde_json::from_slice::<Body>(&body) else {
        return wx_err(47001, "data format error");
    };
    s.stats.lock().unwrap().clear_quota_calls += 1;
    s.quota_used.lock().unwrap().remove(&b.appid);
    wx_err(0, "ok")
}

async fn stats(State(s): State<Shared>) -> Response {
    axum::Json(s.stats()).into_response()
}

async fn get_faults(State(s): State<Shared>) -> Response {
    axum::Json(s.behaviour()).into_response()
}

async fn set_faults(State(s): State<Shared>, axum::Json(b): axum::Json<Behaviour>) -> Response {
    s.set_behaviour(b);
    (StatusCode::NO_CONTENT, "").into_response()
}

async fn expire_tokens(State(s): State<Shared>) -> Response {
    s.expire_tokens();
    (StatusCode::NO_CONTENT, "").into_response()
}

/// `POST /mock/consent {"appid", "touser", "event": "popup"|"change", "template_id",
/// "accept"}`: pushes the consent event a user's answer in the popup (or a change in the
/// settings) would make WeChat push. 409 when the simulator has no push target.
async fn consent(State(s): State<Shared>, axum::Json(c): axum::Json<ConsentRequest>) -> Response {
    let Some(target) = s.push.clone() else {
        return (StatusCode::CONFLICT, "no push target (--push-url)").into_response();
    };
    push::spawn_subscription_event(s.clone(), target, c.appid, c.touser, c.event);
    (StatusCode::ACCEPTED, "").into_response()
}

#[derive(Deserialize)]
struct ConsentRequest {
    appid: String,
    touser: String,
    #[serde(flatten)]
    event: push::SubscriptionEvent,
}

async fn mock_clear_quota(State(s): State<Shared>) -> Response {
    s.clear_quota();
    (StatusCode::NO_CONTENT, "").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        let f = Fault::parse("-1:0.05").unwrap();
        assert_eq!(f.kind, FaultKind::Errcode(-1));
        assert_eq!(
            Fault::parse("http502:1").unwrap().kind,
            FaultKind::Http(502)
        );
        assert_eq!(Fault::parse("timeout:0").unwrap().kind, FaultKind::Timeout);
        assert!(Fault::parse("oops").is_err());
        assert!(Fault::parse("-1:2").is_err());
    }
}
