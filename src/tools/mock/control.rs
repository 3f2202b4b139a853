//! WeChat's `clear_quota` and the simulator's own `/mock/*` endpoints, with which tests read
//! its counts and change its behaviour while it runs.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::faults::Behaviour;
use super::token::{AccessQuery, check_token};
use super::{Shared, push, wx_err};

pub(super) async fn clear_quota(
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

pub(super) async fn stats(State(s): State<Shared>) -> Response {
    axum::Json(s.stats()).into_response()
}

pub(super) async fn get_faults(State(s): State<Shared>) -> Response {
    axum::Json(s.behaviour()).into_response()
}

pub(super) async fn set_faults(
    State(s): State<Shared>,
    axum::Json(b): axum::Json<Behaviour>,
) -> Response {
    s.set_behaviour(b);
    (StatusCode::NO_CONTENT, "").into_response()
}

pub(super) async fn expire_tokens(State(s): State<Shared>) -> Response {
    s.expire_tokens();
    (StatusCode::NO_CONTENT, "").into_response()
}

/// `POST /mock/consent {"appid", "touser", "event": "popup"|"change", "template_id",
/// "accept"}`: pushes the consent event a user's answer in the popup (or a change in the
/// settings) would make WeChat push. 409 when the simulator has no push target.
pub(super) async fn consent(
    State(s): State<Shared>,
    axum::Json(c): axum::Json<ConsentRequest>,
) -> Response {
    let Some(target) = s.push.clone() else {
        return (StatusCode::CONFLICT, "no push target (--push-url)").into_response();
    };
    push::spawn_subscription_event(s.clone(), target, c.appid, c.touser, c.event);
    (StatusCode::ACCEPTED, "").into_response()
}

#[derive(Deserialize)]
pub(super) struct ConsentRequest {
    appid: String,
    touser: String,
    #[serde(flatten)]
    event: push::SubscriptionEvent,
}

pub(super) async fn mock_clear_quota(State(s): State<Shared>) -> Response {
    s.clear_quota();
    (StatusCode::NO_CONTENT, "").into_response()
}
