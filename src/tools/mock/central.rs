//! The simulator playing a central token service (中控服务器), for `token_mode = central`.
//!
//! `GET /central/token?appid=A` answers the account's current token, `{"access_token",
//! "expires_in"}`, issuing one (valid for the simulator's send endpoints) when it has none or
//! its own has run out; `&invalid=T` reports that WeChat refused `T`, and the service issues a
//! new token unless it is told to keep the refused one. Its faults are set with
//! [`MockState::set_central`] or `POST /mock/central`, and what it was asked is in
//! [`MockState::central_stats`] and `GET /mock/central`.
//!
//! [`MockState::revoke_central_token`] makes WeChat refuse an account's token while the service
//! still hands it out: the stale-cache case the `invalid=` call exists for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::{MockState, TokenFault};

/// How the central service behaves; tests change it while it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CentralBehaviour {
    /// When set, every call is answered with this fault.
    #[serde(default)]
    pub fault: Option<TokenFault>,
    /// How long each answer is delayed (beyond the worker's HTTP timeout: a slow service).
    #[serde(default)]
    pub delay_ms: u64,
    /// Hand back the refused token after `invalid=` instead of refreshing.
    #[serde(default)]
    pub keep_refused: bool,
    /// When set, calls without `Authorization: Bearer <this>` are answered 401.
    #[serde(default)]
    pub bearer: Option<String>,
}

/// What the central service was asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CentralStats {
    /// Every call, faults and refusals included.
    pub calls: u64,
    /// Calls that reported a refused token (`invalid=`).
    pub invalid_calls: u64,
    /// Tokens issued.
    pub issued: u64,
    /// Calls refused for a missing or wrong bearer token.
    pub unauthorized: u64,
    /// Calls answered with the injected fault.
    pub faults: u64,
}

/// The central service's state, kept in [`MockState`].
#[derive(Default)]
pub struct CentralState {
    inner: Mutex<Central>,
}

#[derive(Default)]
struct Central {
    behaviour: CentralBehaviour,
    stats: CentralStats,
    /// The token the service holds per appid, and when it runs out.
    current: HashMap<String, (String, Instant)>,
}

impl MockState {
    /// Sets how the central token service behaves.
    pub fn set_central(&self, b: CentralBehaviour) {
        self.central.inner.lock().unwrap().behaviour = b;
    }

    pub fn central_behaviour(&self) -> CentralBehaviour {
        self.central.inner.lock().unwrap().behaviour.clone()
    }

    pub fn central_stats(&self) -> CentralStats {
        self.central.inner.lock().unwrap().stats.clone()
    }

    /// Makes WeChat refuse the token the central service holds for `appid` (as if something
    /// else had refreshed it), while the service keeps handing it out. Returns it.
    pub fn revoke_central_token(&self, appid: &str) -> Option<String> {
        let token = self
            .central
            .inner
            .lock()
            .unwrap()
            .current
            .get(appid)
            .map(|(t, _)| t.clone())?;
        self.tokens.lock().unwrap().remove(&token);
        Some(token)
    }
}

/// The central service's routes.
pub(super) fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/central/token", get(central_token))
        .route("/mock/central", get(get_central).post(set_central))
}

#[derive(Deserialize)]
struct CentralQuery {
    appid: Option<String>,
    invalid: Option<String>,
}

/// WeChat's reply shape, as text/plain like WeChat's own.
fn reply(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        value.to_string(),
    )
        .into_response()
}

async fn central_token(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    Query(q): Query<CentralQuery>,
) -> Response {
    let behaviour = {
        let mut c = s.central.inner.lock().unwrap();
        c.stats.calls += 1;
        if q.invalid.is_some() {
            c.stats.invalid_calls += 1;
        }
        c.behaviour.clone()
    };
    if behaviour.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.delay_ms)).await;
    }
    if let Some(bearer) = &behaviour.bearer {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(bearer.as_str()) {
            s.central.inner.lock().unwrap().stats.unauthorized += 1;
            return reply(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized"}),
            );
        }
    }
    if let Some(fault) = behaviour.fault {
        s.central.inner.lock().unwrap().stats.faults += 1;
        return match fault {
            TokenFault::Errcode(code) => reply(
                StatusCode::OK,
                serde_json::json!({"errcode": code, "errmsg": "injected fault"}),
            ),
            TokenFault::Http(status) => reply(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                serde_json::json!({"error": "injected fault"}),
            ),
            TokenFault::NoToken => reply(StatusCode::OK, serde_json::json!({"expires_in": 7200})),
        };
    }
    let Some(appid) = q
        .appid
        .filter(|a| s.accounts.read().unwrap().contains_key(a))
    else {
        return reply(
            StatusCode::OK,
            serde_json::json!({"errcode": 40013, "errmsg": "invalid appid"}),
        );
    };
    let held = s.central.inner.lock().unwrap().current.get(&appid).cloned();
    if let Some((token, until)) = held {
        let refused = q.invalid.as_deref() == Some(token.as_str());
        // The service's own view of its token: its expiry, not whether WeChat still takes it.
        let left = until.saturating_duration_since(Instant::now()).as_secs();
        if left > 0 && (!refused || behaviour.keep_refused) {
            return reply(
                StatusCode::OK,
                serde_json::json!({"access_token": token, "expires_in": left}),
            );
        }
    }
    let ttl = s.behaviour.read().unwrap().token_ttl_secs;
    let token = s.issue_token(&appid, ttl);
    let mut c = s.central.inner.lock().unwrap();
    c.stats.issued += 1;
    let until = Instant::now() + Duration::from_secs(ttl);
    c.current.insert(appid, (token.clone(), until));
    reply(
        StatusCode::OK,
        serde_json::json!({"access_token": token, "expires_in": ttl}),
    )
}

async fn get_central(State(s): State<Arc<MockState>>) -> Json<CentralStats> {
    Json(s.central_stats())
}

async fn set_central(
    State(s): State<Arc<MockState>>,
    Json(b): Json<CentralBehaviour>,
) -> Json<CentralBehaviour> {
    s.set_central(b.clone());
    Json(b)
}
