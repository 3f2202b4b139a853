//! The pushes the worker does not own (follows, scans, menu clicks, user messages):
//! published as `kind: event` outcomes and forwarded to the account's existing server, and
//! the owned pushes forwarded after their confirm.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};

use super::{
    ANSWER_WITHIN, ConfirmedCounter, Endpoint, MAX_BODY, attribute, publish_counted, respond,
};
use crate::callback::dedupe::{Answer, PushKey};
use crate::callback::forward::RawPush;
use crate::outcome::{Outcome, PushedEvent};

/// What tells one push from another when it is forwarded or published as a whole.
pub(super) fn push_identity(
    to_user: &str,
    from_user: &str,
    create_time: i64,
    event: &str,
) -> PushKey {
    PushKey {
        to_user: to_user.to_string(),
        from_user: from_user.to_string(),
        create_time,
        msg_id: 0,
        status: String::new(),
        event: event.to_string(),
        template_id: String::new(),
    }
}

impl Endpoint {
    /// With `callback_forward_owned`, forwards an owned push once its outcomes are confirmed,
    /// in its own task: the existing server's answer is not WeChat's, and it must never hold
    /// up WeChat's. WeChat's retries of a push are forwarded once.
    pub(super) async fn forward_owned(&self, answer: &Answer, push: PushKey, raw: RawPush) {
        let Some(forwarder) = self.forwarder.clone().filter(|_| self.forward_owned) else {
            return;
        };
        if !answer.is_success() {
            return;
        }
        let forward = async move {
            let _ = forwarder.forward(&raw).await;
            anyhow::Ok(())
        };
        self.forwarded.store(push, Duration::ZERO, forward).await;
    }
}

/// A push the worker does not own: published as an event (with `callback_publish_events`) and
/// forwarded (with `callback_forward_url`) at once. WeChat gets the existing server's answer,
/// or `success`; but 503 while the event is not stored, so that WeChat tries again.
pub(super) async fn other_push(
    r: &Arc<Endpoint>,
    appid: Option<String>,
    xml: &str,
    raw: RawPush,
) -> Response {
    let store = r.publish_events.then(|| store_event(r, appid, xml));
    let forward = async {
        match &r.forwarder {
            Some(f) => Some(f.answer(&raw).await),
            None => None,
        }
    };
    let (stored, forwarded) = match store {
        Some(store) => {
            let (a, f) = futures_util::future::join(store, forward).await;
            (Some(a), f)
        }
        None => (None, forward.await),
    };
    let label = match stored {
        Some(Ok(answer)) if !answer.is_success() => return respond(r, answer),
        Some(Ok(answer)) => answer.label(),
        Some(Err(reason)) => reason,
        None if forwarded.is_some() => "forwarded",
        None => "ignored",
    };
    r.count(label);
    forwarded.unwrap_or_else(|| "success".into_response())
}

/// Publishes a push as a `kind: event` outcome, stored like a receipt. The reason instead
/// when the push lacks what an event needs (logged; it is still forwarded).
async fn store_event(
    r: &Arc<Endpoint>,
    appid: Option<String>,
    xml: &str,
) -> Result<Answer, &'static str> {
    let other = match crate::callback::push::read(xml, MAX_BODY, r.publish_content) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(reason = e.reason(), "push not published as an event");
            return Err(e.reason());
        }
    };
    let appid = appid.or_else(|| attribute(&r.accounts, &other.to_user));
    let ev: PushedEvent = PushedEvent {
        appid,
        ..other.event
    };
    let o = Outcome::event(ev.clone());
    let word = o.status().as_str().to_string();
    let key = PushKey {
        msg_id: ev.msg_id.unwrap_or(0),
        // The event key tells two clicks of one second apart, as the outcome's message_id does.
        status: ev.event_key.clone().unwrap_or_default(),
        ..push_identity(&other.to_user, &ev.openid, ev.event_time, &word)
    };
    Ok(r.seen
        .store(
            key,
            ANSWER_WITHIN,
            publish_counted(r, o, ConfirmedCounter::Event),
        )
        .await)
}
