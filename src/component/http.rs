//! `POST /wechat/component` in the worker: the platform's authorization pushes, served
//! wherever the callback is (its own listener with `WXD_CALLBACK_ADDR`). A push is answered
//! `success` only once Redis has what it said; a push that could not be handled gets a 503,
//! so WeChat pushes it again, and one that is not WeChat's for this platform a 403.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{Component, PushError, PushQuery};
use crate::callback::crypto::AesKey;
use crate::config::{Config, ConfigError, Secret, TokenMode};
use crate::wechat::WechatClient;

/// Where the pushes are served.
pub const PATH: &str = "/wechat/component";

struct Route {
    platform: Component,
    token: Secret,
    key: AesKey,
}

/// `callback` with the component route merged in (or the route alone) in component mode;
/// `callback` unchanged otherwise.
pub fn with_route(
    config: &Config,
    callback: Option<Router>,
) -> Result<Option<Router>, ConfigError> {
    if config.wechat.token_mode != TokenMode::Component {
        return Ok(callback);
    }
    let missing = |what: &str| ConfigError(format!("token_mode component: no {what}"));
    let c = &config.credentials;
    let token = c
        .component_token
        .clone()
        .ok_or_else(|| missing("WXD_COMPONENT_TOKEN"))?;
    let key = c
        .component_aes_key
        .as_ref()
        .ok_or_else(|| missing("WXD_COMPONENT_AES_KEY"))?;
    let key = AesKey::from_encoding_aes_key(key.expose())
        .map_err(|_| ConfigError("WXD_COMPONENT_AES_KEY: not an EncodingAESKey".into()))?;
    let client = WechatClient::new(&config.wechat.api_base, config.wechat.http_timeout);
    let route = Arc::new(Route {
        platform: Component::from_config(config, &client)?,
        token,
        key,
    });
    let router = Router::new().route(PATH, post(receive)).with_state(route);
    Ok(Some(match callback {
        Some(cb) => cb.merge(router),
        None => router,
    }))
}

async fn receive(
    State(r): State<Arc<Route>>,
    Query(q): Query<PushQuery>,
    body: String,
) -> Response {
    match r.platform.receive(&r.token, &r.key, &q, &body).await {
        Ok(event) => {
            tracing::info!(?event, "authorization push handled");
            (StatusCode::OK, "success").into_response()
        }
        Err(PushError::Refused(why)) => {
            tracing::warn!(why, "authorization push refused");
            (StatusCode::FORBIDDEN, "refused").into_response()
        }
        Err(PushError::Unhandled(e)) => {
            tracing::warn!(error = %e, "authorization push not handled; WeChat will push it again");
            (StatusCode::SERVICE_UNAVAILABLE, "retry").into_response()
        }
    }
}
