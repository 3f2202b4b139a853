//! `POST /wechat/component` in the worker: the platform's authorization pushes, served
//! wherever the callback is (its own listener with `WXD_CALLBACK_ADDR`). A push is answered
//! `success` only once Redis has what it said and, for `authorized`, `updateauthorized` and
//! `unauthorized`, once its `kind: authorization` outcome is confirmed by the broker; a push
//! that could not be handled or stored gets a 503, so WeChat pushes it again, and one that is
//! not WeChat's for this platform a 403.
//!
//! WeChat's retries of one authorization push are told apart from new pushes as receipts are
//! ([`crate::callback::dedupe`]): the handling and the publish run once per push in their own
//! task, a retry waits for a try in flight, and one after a confirm is answered at once.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{Component, Push, PushError, PushQuery};
use crate::callback::dedupe::{DEDUP_FOR, Dedupe, PushKey};
use crate::callback::http::ANSWER_WITHIN;
use crate::callback::publisher::LazyPublisher;
use crate::config::{Config, ConfigError, Secret, TokenMode};
use crate::crypto::AesKey;
use crate::outcome::Outcome;
use crate::wechat::WechatClient;

/// Where the pushes are served.
pub const PATH: &str = "/wechat/component";

struct Route {
    platform: Component,
    token: Secret,
    key: AesKey,
    publisher: LazyPublisher,
    seen: Arc<Dedupe>,
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
        publisher: LazyPublisher::new(config.clone()),
        seen: Dedupe::new(DEDUP_FOR),
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
    let push = match r.platform.open(&r.token, &r.key, &q, &body) {
        Ok(push) => push,
        Err(e) => return not_handled(e),
    };
    let Push::Authorization {
        status,
        authorizer,
        create_time,
        ..
    } = &push
    else {
        return match r.platform.handle(&push).await {
            Ok(event) => {
                tracing::debug!(?event, "ticket push handled");
                success()
            }
            Err(e) => not_handled(PushError::Unhandled(e)),
        };
    };
    let key = PushKey {
        to_user: r.platform.api.appid.clone(),
        from_user: authorizer.clone(),
        create_time: *create_time,
        msg_id: 0,
        status: String::new(),
        event: status.as_str().to_string(),
        template_id: String::new(),
    };
    let answer = r
        .seen
        .store(key, ANSWER_WITHIN, handle_and_publish(r.clone(), push))
        .await;
    if answer.is_success() {
        success()
    } else {
        tracing::warn!(
            answer = answer.label(),
            "authorization push not stored in time; WeChat will push it again"
        );
        (StatusCode::SERVICE_UNAVAILABLE, "retry").into_response()
    }
}

/// Handles an authorization push and publishes its outcome with confirms, in the dedupe's
/// own task (so a push that gives up never cancels it half way).
async fn handle_and_publish(r: Arc<Route>, push: Push) -> anyhow::Result<()> {
    let Push::Authorization { create_time, .. } = &push else {
        anyhow::bail!("not an authorization push");
    };
    let event = r.platform.handle(&push).await.inspect_err(|e| {
        tracing::warn!(error = %e, "authorization push not handled; WeChat will push it again");
    })?;
    let Some(authorization) = event.authorization(&r.platform.api.appid, *create_time) else {
        anyhow::bail!("an authorization push handled as a ticket");
    };
    let outcome = Outcome::authorization(authorization);
    r.publisher.publish(&outcome).await.inspect_err(|e| {
        tracing::warn!(error = %e, "could not store an authorization outcome; WeChat's retry will try again");
    })?;
    tracing::info!(?event, "authorization push handled and its outcome stored");
    Ok(())
}

fn success() -> Response {
    (StatusCode::OK, "success").into_response()
}

fn not_handled(e: PushError) -> Response {
    match e {
        PushError::Refused(why) => {
            tracing::warn!(why, "authorization push refused");
            (StatusCode::FORBIDDEN, "refused").into_response()
        }
        PushError::Unhandled(e) => {
            tracing::warn!(error = %e, "push not handled; WeChat will push it again");
            (StatusCode::SERVICE_UNAVAILABLE, "retry").into_response()
        }
    }
}
