//! The three send endpoints (template, subscription bizsend, mini-program subscribe): token
//! check, faults, WeChat's deduplication of `(touser, client_msg_id)`, the daily quota, the
//! counts, and the receipt or event push after an accepted message.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{MethodRouter, post};
use rand::Rng;
use serde::Deserialize;

use super::faults::{FaultKind, fault_reply, flaky_try};
use super::state::{Accepted, MockState};
use super::token::{AccessQuery, check_token};
use super::{Shared, push, wx, wx_err};
use crate::job::MsgType;

#[derive(Deserialize)]
pub(super) struct SendBody {
    pub(super) touser: Option<String>,
    pub(super) template_id: Option<String>,
    pub(super) client_msg_id: Option<String>,
}

/// The three send endpoints. Template sends deduplicate `(touser, client_msg_id)`;
/// subscription bizsend has the same faults but no deduplication (the endpoint takes no
/// `client_msg_id`); mini-program subscribe has no deduplication, no `msgid` in the reply, and a
/// daily quota counted apart from the account's other sends.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/cgi-bin/message/template/send",
            endpoint(MsgType::Template),
        )
        .route(
            "/cgi-bin/message/subscribe/bizsend",
            endpoint(MsgType::Subscribe),
        )
        .route(
            "/cgi-bin/message/subscribe/send",
            endpoint(MsgType::MiniprogramSubscribe),
        )
}

/// `POST`: one send of `msg_type`.
fn endpoint(msg_type: MsgType) -> MethodRouter<Shared> {
    post(
        move |State(s): State<Shared>, Query(q): Query<AccessQuery>, body: Bytes| {
            send(s, q, body, msg_type)
        },
    )
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
    if s.component_refuses(&appid, msg_type) {
        s.error("48001".into());
        return wx_err(48001, "api unauthorized");
    }
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
