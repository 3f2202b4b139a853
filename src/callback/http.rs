//! The WeChat server callback: URL verification, TEMPLATESENDJOBFINISH delivery receipts and
//! the subscription events (consents and subscription delivery results).
//!
//! A receipt is published to the outcome exchange (kind `receipt`) with publisher confirms,
//! and the endpoint answers `success` only once the broker confirmed it: `success` makes
//! WeChat stop retrying, so it is a promise that the receipt is stored.
//!
//! WeChat gives up on a push after 5 s and retries it (three tries in all). The request waits
//! for its publish at most [`ANSWER_WITHIN`] and otherwise answers 503; [`super::dedupe`]
//! makes each retry wait for, or skip, the publish an earlier try started. Pushes are told
//! apart by `(ToUserName, FromUserName, CreateTime, MsgID, Status)`, remembered for
//! [`DEDUP_FOR`].
//!
//! Subscription events list one or more templates: `subscribe_msg_popup_event` and
//! `subscribe_msg_change_event` become one `kind: consent` outcome per template,
//! `subscribe_msg_sent_event` one `kind: receipt` per template. Each is stored under its own key
//! (the above plus the event name and TemplateId), with the same rules, and the push is
//! answered `success` only when every one of them is stored ([`combine`]); a retry publishes
//! only those that are not.
//!
//! Every other push (a follow, a menu click, a user's message) is published as a `kind: event`
//! outcome with `callback_publish_events` (stored like a receipt, answered 503 until it is), and
//! forwarded to the account's existing server with `callback_forward_url`, whose answer WeChat
//! gets ([`super::forward`]); without either it is answered `success`. With
//! `callback_forward_owned`, receipts and subscription events are forwarded too, once, after
//! their outcomes are confirmed; WeChat's answer for them never waits for that server.
//!
//! Bad input never publishes, nor is it forwarded: a wrong signature or a stale timestamp is 401; malformed XML, a
//! DOCTYPE, bad base64 or padding, a wrong appid, a missing field or an oversized body is 400.
//! Each is counted in `wxdispatch_callback_requests_total{result}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::dedupe::{Answer, DEDUP_FOR, Dedupe, PushKey, combine};

mod others;
use super::event::TEMPLATE_SEND_JOB_FINISH;
use super::forward::{Forwarder, RawPush};
use super::publisher::LazyPublisher;
use crate::callback::{self, Inbound, SubscriptionEvent};
use crate::config::{Config, Secret};
use crate::crypto::AesKey;
use crate::metrics::Metrics;
use crate::outcome::{Consent, Outcome, Receipt, ReceiptStatus};
use others::{other_push, push_identity};

/// Largest callback body accepted. WeChat's pushes are well under 2 KiB.
pub const MAX_BODY: usize = 16 * 1024;
/// The longest a push waits for its receipt's confirm before it is answered 503. WeChat
/// gives up after 5 s; the rest is for the network and the answer itself.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// The account a plaintext-mode receipt belongs to: the one that declares the push's
/// `ToUserName` as its original id, else the only account. With several accounts and no
/// match there is no honest answer, so none.
pub fn attribute(accounts: &[(String, Option<String>)], to_user: &str) -> Option<String> {
    accounts
        .iter()
        .find(|(_, gh)| gh.as_deref() == Some(to_user))
        .or_else(|| (accounts.len() == 1).then(|| &accounts[0]))
        .map(|(appid, _)| appid.clone())
}

/// The callback endpoint: its secrets, accounts, publisher and the pushes seen recently.
pub struct Endpoint {
    token: Secret,
    aes_key: Option<AesKey>,
    appids: Vec<String>,
    /// `(appid, original_id)` of every account, to attribute plaintext receipts.
    accounts: Vec<(String, Option<String>)>,
    max_age: Duration,
    metrics: Arc<Metrics>,
    /// Where the callback is served.
    path: String,
    publisher: LazyPublisher,
    seen: Arc<Dedupe>,
    /// The account's existing server, when pushes are forwarded.
    forwarder: Option<Arc<Forwarder>>,
    /// Also forward owned pushes, once each (by [`Endpoint::forwarded`]), after their confirm.
    forward_owned: bool,
    forwarded: Arc<Dedupe>,
    /// Publish the other pushes as `kind: event` outcomes, with their content or without.
    publish_events: bool,
    publish_content: bool,
}

impl Endpoint {
    /// The callback, if a callback token is configured.
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Arc<Endpoint>>> {
        // Every worker exports the forward series, so dashboards read zeros, not "no data".
        super::forward::create_series(&metrics);
        let Some(token) = config.credentials.callback_token.clone() else {
            // Without a token there is no callback, and these would silently do nothing.
            let cb = &config.callback;
            anyhow::ensure!(
                cb.forward_url.is_none() && !cb.publish_events,
                "callback_forward_url and callback_publish_events need the callback: set \
                 WXD_CALLBACK_TOKEN (the account's server-config token)"
            );
            return Ok(None);
        };
        let aes_key = match &config.credentials.callback_aes_key {
            Some(k) => Some(
                AesKey::from_encoding_aes_key(k.expose())
                    .map_err(|e| anyhow::anyhow!("WXD_CALLBACK_AES_KEY: {e}"))?,
            ),
            None => None,
        };
        let forwarder = match &config.callback.forward_url {
            Some(url) => Some(Arc::new(Forwarder::new(
                url,
                config.callback.forward_timeout,
                metrics.clone(),
            )?)),
            None => None,
        };
        // The series exists from the start, so dashboards and alerts see a zero, not nothing.
        metrics.callback_requests_total.with_label_values(&["ok"]);
        Ok(Some(Arc::new(Endpoint {
            token,
            aes_key,
            appids: config.accounts.iter().map(|a| a.appid.clone()).collect(),
            accounts: config
                .accounts
                .iter()
                .map(|a| (a.appid.clone(), a.original_id.clone()))
                .collect(),
            max_age: config.callback.max_age,
            metrics,
            path: config.callback.path.clone(),
            publisher: LazyPublisher::new(config.clone()),
            seen: Dedupe::new(DEDUP_FOR),
            forwarder,
            forward_owned: config.callback.forward_owned,
            forwarded: Dedupe::new(DEDUP_FOR),
            publish_events: config.callback.publish_events,
            publish_content: config.callback.publish_content,
        })))
    }

    /// The callback routes at the configured path.
    pub fn router(self: Arc<Self>) -> Router {
        let path = self.path.clone();
        Router::new()
            .route(&path, get(verify_url).post(receive))
            .with_state(self)
    }

    fn count(&self, result: &str) {
        self.metrics
            .callback_requests_total
            .with_label_values(&[result])
            .inc();
    }

    fn fresh(&self, timestamp: &str) -> bool {
        let Ok(ts) = timestamp.parse::<i64>() else {
            return false;
        };
        let now = chrono::Utc::now().timestamp();
        (now - ts).unsigned_abs() <= self.max_age.as_secs()
    }
}

#[derive(Deserialize, Default)]
struct CallbackQuery {
    #[serde(default)]
    signature: String,
    #[serde(default)]
    timestamp: String,
    #[serde(default)]
    nonce: String,
    echostr: Option<String>,
    encrypt_type: Option<String>,
    msg_signature: Option<String>,
}

fn reply(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

async fn verify_url(State(r): State<Arc<Endpoint>>, Query(q): Query<CallbackQuery>) -> Response {
    let ok = crate::crypto::signature::verify_url_signature(
        &q.signature,
        r.token.expose(),
        &q.timestamp,
        &q.nonce,
    );
    match (ok, q.echostr) {
        (true, Some(echo)) => {
            r.count("verify_ok");
            echo.into_response()
        }
        (true, None) => {
            r.count("bad_request");
            reply(StatusCode::BAD_REQUEST, "missing echostr")
        }
        (false, _) => {
            r.count("bad_signature");
            reply(StatusCode::UNAUTHORIZED, "bad signature")
        }
    }
}

async fn receive(
    State(r): State<Arc<Endpoint>>,
    method: Method,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
    body: Body,
) -> Response {
    // Read at most one byte past the limit ourselves rather than with axum's body limit, which
    // would answer 413 before this handler could count the refusal.
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY + 1).await else {
        r.count("too_large");
        return reply(StatusCode::BAD_REQUEST, "body too large");
    };
    if !r.fresh(&q.timestamp) {
        r.count("stale");
        return reply(StatusCode::UNAUTHORIZED, "stale or missing timestamp");
    }
    let safe = q.encrypt_type.as_deref() == Some("aes");
    let opened = if safe {
        let Some(key) = &r.aes_key else {
            r.count("no_aes_key");
            return reply(StatusCode::BAD_REQUEST, "safe mode is not configured");
        };
        let query = callback::SafeModeQuery {
            timestamp: &q.timestamp,
            nonce: &q.nonce,
            msg_signature: q.msg_signature.as_deref().unwrap_or(""),
        };
        callback::open_safe_mode(r.token.expose(), key, &r.appids, &query, &body, MAX_BODY)
            .map(|o| (Some(o.appid), o.inbound, Some(o.xml)))
    } else {
        callback::open_plain(
            r.token.expose(),
            &q.signature,
            &q.timestamp,
            &q.nonce,
            &body,
            MAX_BODY,
        )
        .map(|i| (None, i, None))
    };
    let (appid, inbound, inner_xml) = match opened {
        Ok(x) => x,
        Err(e) => {
            let reason = e.reason();
            r.count(reason);
            tracing::warn!(reason, "callback refused");
            return if matches!(e, callback::CallbackError::BadSignature) {
                reply(StatusCode::UNAUTHORIZED, "bad signature")
            } else {
                reply(StatusCode::BAD_REQUEST, "bad request")
            };
        }
    };
    // Only now, authenticated and read, may the push leave the worker.
    let raw = RawPush {
        method,
        query: raw_query,
        content_type: headers.get(header::CONTENT_TYPE).cloned(),
        body,
    };
    let event = match inbound {
        Inbound::Event(e) if e.is_template_send_job_finish() => e,
        Inbound::Subscription(ev) => {
            let push = push_identity(
                &ev.to_user,
                &ev.from_user,
                ev.create_time,
                ev.kind.event_name(),
            );
            let answer = store_subscription(&r, appid, ev).await;
            r.forward_owned(&answer, push, raw).await;
            return respond(&r, answer);
        }
        Inbound::Event(_) | Inbound::Message { .. } => {
            let xml = match inner_xml {
                Some(xml) => xml,
                None => String::from_utf8_lossy(&raw.body).into_owned(),
            };
            return other_push(&r, appid, &xml, raw).await;
        }
        Inbound::Encrypted { .. } => {
            r.count("not_decrypted");
            return reply(
                StatusCode::BAD_REQUEST,
                "encrypted body without encrypt_type=aes",
            );
        }
    };
    let (Some(msgid), Some(raw_status)) = (event.msg_id, event.status.clone()) else {
        r.count("missing_field");
        return reply(StatusCode::BAD_REQUEST, "receipt without MsgID or Status");
    };
    let status = ReceiptStatus::from_wechat(&raw_status);
    let appid = appid.or_else(|| attribute(&r.accounts, &event.to_user));
    if appid.is_none() {
        tracing::warn!(to_user = %event.to_user, "receipt for an original id no account declares (set original_id in [[accounts]])");
    }
    let key = PushKey {
        to_user: event.to_user.clone(),
        from_user: event.from_user.clone(),
        create_time: event.create_time,
        msg_id: msgid,
        status: raw_status.clone(),
        event: TEMPLATE_SEND_JOB_FINISH.into(),
        template_id: String::new(),
    };
    let counter = ConfirmedCounter::Receipt(status.label());
    let o = Outcome::receipt(Receipt {
        appid,
        touser: event.from_user.clone(),
        msgid: Some(msgid),
        status,
        errcode: None,
        errmsg: Some(raw_status),
        template_id: None,
    });
    let publish = publish_counted(&r, o, counter);
    let answer = r.seen.store(key.clone(), ANSWER_WITHIN, publish).await;
    r.forward_owned(&answer, key, raw).await;
    respond(&r, answer)
}

/// The counter an outcome bumps once the broker confirmed it.
enum ConfirmedCounter {
    /// `wxdispatch_receipts_total{status}`.
    Receipt(&'static str),
    /// `wxdispatch_consents_total{status,source}`.
    Consent(&'static str, &'static str),
    /// Nothing beyond the answer's `wxdispatch_callback_requests_total`.
    Event,
}

/// The publish of one outcome, to run in the dedupe's own task. It is counted when the broker
/// confirmed it, even if the push that started it had already been answered 503.
fn publish_counted(
    r: &Arc<Endpoint>,
    o: Outcome,
    counter: ConfirmedCounter,
) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
    let publisher = r.clone();
    async move {
        match publisher.publisher.publish(&o).await {
            Ok(()) => {
                match &counter {
                    ConfirmedCounter::Receipt(status) => publisher
                        .metrics
                        .receipts_total
                        .with_label_values(&[status])
                        .inc(),
                    ConfirmedCounter::Consent(status, source) => publisher
                        .metrics
                        .consents_total
                        .with_label_values(&[status, source])
                        .inc(),
                    ConfirmedCounter::Event => {}
                }
                tracing::debug!(kind = ?o.kind(), msgid = ?o.msgid, status = %o.status(), "callback outcome stored");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = ?o.kind(), msgid = ?o.msgid, "could not store a callback outcome; WeChat's retry will try again");
                Err(e)
            }
        }
    }
}

/// Counts the answer and turns it into the HTTP reply: `success` or 503 (WeChat retries).
fn respond(r: &Endpoint, answer: Answer) -> Response {
    r.count(answer.label());
    if answer.is_success() {
        "success".into_response()
    } else {
        if answer == Answer::Pending {
            tracing::warn!(
                "callback outcome not confirmed within {ANSWER_WITHIN:?}; answering 503 so WeChat retries"
            );
        }
        reply(StatusCode::SERVICE_UNAVAILABLE, "try again")
    }
}

/// Stores one outcome per template of a subscription event, all at once; the answer is
/// `success` only when every one is stored.
async fn store_subscription(
    r: &Arc<Endpoint>,
    appid: Option<String>,
    ev: SubscriptionEvent,
) -> Answer {
    let appid = appid.or_else(|| attribute(&r.accounts, &ev.to_user));
    if appid.is_none() {
        tracing::warn!(to_user = %ev.to_user, "subscription event for an original id no account declares (set original_id in [[accounts]])");
    }
    let stores = ev.items.iter().map(|item| {
        let touser = ev.from_user.clone();
        let template_id = item.template_id.clone();
        let (o, raw, counter) = match ev.kind.source() {
            Some(source) => {
                let status = item.consent_status();
                let counter = ConfirmedCounter::Consent(status.label(), source);
                let o = Outcome::consent(Consent {
                    appid: appid.clone(),
                    touser,
                    template_id,
                    status,
                    source: source.to_string(),
                    event_time: ev.create_time,
                });
                (o, item.status.clone().unwrap_or_default(), counter)
            }
            None => {
                let status = item.receipt_status();
                let counter = ConfirmedCounter::Receipt(status.label());
                let o = Outcome::receipt(Receipt {
                    appid: appid.clone(),
                    touser,
                    msgid: item.msg_id,
                    status,
                    errcode: item.error_code,
                    errmsg: item.error_status.clone(),
                    template_id: Some(template_id),
                });
                let raw = format!(
                    "{}:{}",
                    item.error_code.map_or_else(String::new, |c| c.to_string()),
                    item.error_status.as_deref().unwrap_or("")
                );
                (o, raw, counter)
            }
        };
        let key = PushKey {
            to_user: ev.to_user.clone(),
            from_user: ev.from_user.clone(),
            create_time: ev.create_time,
            msg_id: item.msg_id.unwrap_or(0),
            status: raw,
            event: ev.kind.event_name().to_string(),
            template_id: item.template_id.clone(),
        };
        r.seen
            .store(key, ANSWER_WITHIN, publish_counted(r, o, counter))
    });
    let answers = futures_util::future::join_all(stores).await;
    combine(&answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_attributed_by_original_id_else_to_the_only_account() {
        let two = vec![
            ("wxa".to_string(), Some("gh_a".to_string())),
            ("wxb".to_string(), Some("gh_b".to_string())),
        ];
        assert_eq!(attribute(&two, "gh_b").as_deref(), Some("wxb"));
        assert_eq!(attribute(&two, "gh_a").as_deref(), Some("wxa"));
        assert_eq!(attribute(&two, "gh_c"), None, "no guess among several");
        let one = vec![("wxa".to_string(), None)];
        assert_eq!(attribute(&one, "gh_anything").as_deref(), Some("wxa"));
    }
}
