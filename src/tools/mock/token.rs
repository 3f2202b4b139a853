//! The two token endpoints (`/cgi-bin/token`, `/cgi-bin/stable_token`) with WeChat's rules for
//! renewals and forced refreshes, and the access-token check every other endpoint makes.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use super::faults::{FaultKind, TokenFault, fault_reply};
use super::state::MockState;
use super::{Shared, wx, wx_err};

/// The two token endpoints.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/cgi-bin/token", get(classic_token))
        .route("/cgi-bin/stable_token", post(stable_token))
}

/// WeChat's daily limit of forced `stable_token` refreshes per appid. The simulator counts
/// them over all its appids, and its "day" is its lifetime.
pub const FORCED_REFRESHES_PER_DAY: u64 = 20;

/// What both token endpoints are asked with.
#[derive(Deserialize)]
struct Credentials {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
}

impl Credentials {
    /// Checks them like WeChat: the grant type 40002, unknown appid 40013, a wrong secret
    /// `wrong_secret` (40001 on the classic endpoint, 40125 on the stable one). The appid, or
    /// the reply to send.
    fn check(&self, s: &MockState, wrong_secret: i64) -> Result<String, Box<Response>> {
        if self.grant_type.as_deref() != Some("client_credential") {
            return Err(Box::new(wx_err(40002, "invalid grant_type")));
        }
        let Some(appid) = self.appid.as_deref().filter(|a| !a.is_empty()) else {
            return Err(Box::new(wx_err(41002, "appid missing")));
        };
        let Some(secret) = self.secret.as_deref().filter(|a| !a.is_empty()) else {
            return Err(Box::new(wx_err(41004, "appsecret missing")));
        };
        let expected = s.accounts.read().unwrap().get(appid).cloned();
        match expected {
            None => {
                s.error("40013".into());
                Err(Box::new(wx_err(40013, "invalid appid")))
            }
            Some(expected) if expected != secret => {
                s.error(wrong_secret.to_string());
                Err(Box::new(wx_err(wrong_secret, "invalid appsecret")))
            }
            Some(_) => Ok(appid.to_string()),
        }
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

async fn classic_token(State(s): State<Shared>, Query(q): Query<Credentials>) -> Response {
    s.stats.lock().unwrap().token_calls += 1;
    if let Some(r) = token_fault(&s).await {
        return r;
    }
    let appid = match q.check(&s, 40001) {
        Ok(a) => a,
        Err(reply) => return *reply,
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
    #[serde(flatten)]
    credentials: Credentials,
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
    let appid = match q.credentials.check(&s, 40125) {
        Ok(a) => a,
        Err(reply) => return *reply,
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
pub(super) struct AccessQuery {
    pub(super) access_token: Option<String>,
}

/// Validates the access token: the appid it belongs to, or WeChat's error.
pub(super) fn check_token(
    s: &MockState,
    token: Option<&str>,
) -> Result<String, (i64, &'static str)> {
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
