//! The simulator's delivery-receipt pushes: after a successful send, POST a
//! TEMPLATESENDJOBFINISH event to the worker's callback URL, in plaintext or AES safe mode,
//! signed the way WeChat signs it. [`push_subscription_event`] pushes the subscription events
//! (consents and subscription delivery results) the same way.

use std::sync::Arc;
use std::time::Duration;

use crate::callback::{self, AesKey, SubscriptionEvent};
use crate::mock::MockState;

/// Where and how to push receipts.
#[derive(Clone, Debug)]
pub struct PushTarget {
    pub url: String,
    pub token: String,
    /// Safe mode when set.
    pub aes_key: Option<AesKey>,
    /// How long after the send to push, like WeChat's delivery delay.
    pub delay_ms: u64,
}

/// One try of a receipt push, as WeChat's side saw it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReceiptTry {
    pub msgid: i64,
    /// 0 for the first try.
    pub attempt: u64,
    /// The HTTP status, or 0 when no answer came within WeChat's 5 s.
    pub http_status: u16,
    /// Answered `success` (WeChat stops retrying).
    pub success: bool,
    /// When the answer (or the timeout) came, Unix milliseconds.
    pub at_ms: i64,
}

/// Status to report: `success` unless the openid asks otherwise (`block` or `sysfail` in the
/// openid give `failed:user block` / `failed: system failed`).
fn status_for(touser: &str) -> &'static str {
    if touser.contains("block") {
        "failed:user block"
    } else if touser.contains("sysfail") {
        "failed: system failed"
    } else {
        "success"
    }
}

/// Pushes one receipt in the background, retrying like WeChat (3 tries) until answered
/// `success`.
pub fn spawn_receipt(
    state: Arc<MockState>,
    target: PushTarget,
    appid: String,
    touser: String,
    msgid: i64,
) {
    tokio::spawn(async move {
        if target.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(target.delay_ms)).await;
        }
        let now = chrono::Utc::now().timestamp();
        let event = callback::Event {
            to_user: format!("gh_{appid}"),
            from_user: touser.clone(),
            create_time: now,
            msg_type: "event".into(),
            event: callback::event::TEMPLATE_SEND_JOB_FINISH.into(),
            msg_id: Some(msgid),
            status: Some(status_for(&touser).into()),
        };
        let (body, query) = signed_request(&target, &appid, &event.to_user, &event.to_xml(), now);
        state.stats.lock().unwrap().receipts_pushed += 1;
        for attempt in 0..3u64 {
            let (http_status, success) = post_once(&state.http, &target.url, &query, &body).await;
            {
                let mut stats = state.stats.lock().unwrap();
                stats.receipt_tries.push(ReceiptTry {
                    msgid,
                    attempt,
                    http_status,
                    success,
                    at_ms: chrono::Utc::now().timestamp_millis(),
                });
                if success {
                    stats.receipts_acknowledged += 1;
                }
            }
            if success {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
        }
    });
}

/// The body and query of one push of `xml` as WeChat sends it: plaintext with `signature`, or
/// sealed for `appid` with `msg_signature` in safe mode.
fn signed_request(
    target: &PushTarget,
    appid: &str,
    to_user: &str,
    xml: &str,
    now: i64,
) -> (String, Vec<(&'static str, String)>) {
    let timestamp = now.to_string();
    let nonce = format!("{}", rand::random::<u32>());
    let sig = callback::signature::url_signature(&target.token, &timestamp, &nonce);
    let mut query = vec![
        ("signature", sig),
        ("timestamp", timestamp.clone()),
        ("nonce", nonce.clone()),
    ];
    match &target.aes_key {
        Some(key) => {
            let sealed = callback::seal_safe_mode(
                &target.token,
                key,
                appid,
                to_user,
                xml,
                &timestamp,
                &nonce,
            );
            query.push(("encrypt_type", "aes".to_string()));
            query.push(("msg_signature", sealed.msg_signature));
            (sealed.body, query)
        }
        None => (xml.to_string(), query),
    }
}

/// One POST within WeChat's 5 s: the HTTP status (0 when none came) and whether the answer
/// was `success` (or empty), which is what makes WeChat stop retrying.
async fn post_once(
    http: &reqwest::Client,
    url: &str,
    query: &[(&'static str, String)],
    body: &str,
) -> (u16, bool) {
    let resp = http
        .post(url)
        .query(query)
        .header("content-type", "text/xml")
        .body(body.to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match resp {
        Ok(r) => {
            let code = r.status();
            let text = r.text().await;
            let ok = code.is_success() && text.is_ok_and(|t| t.trim() == "success" || t.is_empty());
            (code.as_u16(), ok)
        }
        Err(_) => (0, false),
    }
}

/// One try of a subscription-event push, as WeChat's side saw it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PushAnswer {
    /// The HTTP status, or 0 when no answer came within WeChat's 5 s.
    pub http_status: u16,
    /// Answered `success` (WeChat stops retrying).
    pub success: bool,
}

/// Pushes a subscription event (`subscribe_msg_popup_event`, `subscribe_msg_change_event` or
/// `subscribe_msg_sent_event`) to `target` like WeChat: signed, sealed for `appid` in safe
/// mode, tried up to 3 times until answered `success`. Returns every try's answer, so a test
/// sees what WeChat would have seen.
pub async fn push_subscription_event(
    http: &reqwest::Client,
    target: &PushTarget,
    appid: &str,
    event: &SubscriptionEvent,
) -> Vec<PushAnswer> {
    if target.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(target.delay_ms)).await;
    }
    let (body, query) = signed_request(
        target,
        appid,
        &event.to_user,
        &event.to_xml(),
        chrono::Utc::now().timestamp(),
    );
    let mut answers = Vec::new();
    for attempt in 0..3u64 {
        let (http_status, success) = post_once(http, &target.url, &query, &body).await;
        answers.push(PushAnswer {
            http_status,
            success,
        });
        if success {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
    }
    answers
}
