//! WeChat's `clear_quota` and the simulator's own `/mock/*` endpoints, with which tests read
//! its counts and change its behaviour while it runs.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::faults::Behaviour;
use super::token::{AccessQuery, check_token};
use super::{Shared, push, wx_err};

/// WeChat's `clear_quota`, and the simulator's own controls under `/mock/`.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/cgi-bin/clear_quota", post(clear_quota))
        .route("/mock/stats", get(stats))
        .route("/mock/faults", post(set_faults).get(get_faults))
        .route("/mock/expire_tokens", post(expire_tokens))
        .route("/mock/clear_quota", post(mock_clear_quota))
        .route("/mock/consent", post(consent))
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
