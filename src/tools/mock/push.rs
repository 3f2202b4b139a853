//! The simulator's delivery-receipt pushes: after a successful send, POST a
//! TEMPLATESENDJOBFINISH event to the worker's callback URL, in plaintext or AES safe mode,
//! signed the way WeChat signs it. [`push_subscription_event`] pushes a subscription event
//! (consents and subscription delivery results) the same way, for the tests.

use std::sync::Arc;
use std::time::Duration;

use super::MockState;
use super::xml::{WechatXml, seal_safe_mode};
use crate::callback;
use crate::crypto::AesKey;

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

impl PushTarget {
    /// Waits the configured delay before a push, like WeChat's delivery delay.
    async fn wait_delay(&self) {
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
    }
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
    let to_user = format!("gh_{appid}");
    spawn_push(state, target, appid, Some(msgid), move |now| {
        callback::Event {
            to_user,
            from_user: touser.clone(),
            create_time: now,
            msg_type: "event".into(),
            event: callback::event::TEMPLATE_SEND_JOB_FINISH.into(),
            msg_id: Some(msgid),
            status: Some(status_for(&touser).into()),
        }
        .to_xml()
    });
}

/// Waits the target's delay, writes the push (`xml_at` the time it is made) and delivers it in
/// the background, counted as a receipt when it carries a `msgid`, else as an event.
fn spawn_push(
    state: Arc<MockState>,
    target: PushTarget,
    appid: String,
    msgid: Option<i64>,
    xml_at: impl FnOnce(i64) -> String + Send + 'static,
) {
    tokio::spawn(async move {
        target.wait_delay().await;
        let xml = xml_at(chrono::Utc::now().timestamp());
        let receipt = msgid.is_some();
        {
            let mut stats = state.stats.lock().unwrap();
            *if receipt {
                &mut stats.receipts_pushed
            } else {
                &mut stats.events_pushed
            } += 1;
        }
        if deliver(&state, &target, &appid, &format!("gh_{appid}"), &xml, msgid).await {
            let mut stats = state.stats.lock().unwrap();
            *if receipt {
                &mut stats.receipts_acknowledged
            } else {
                &mut stats.events_acknowledged
            } += 1;
        }
    });
}

/// Signs (and in safe mode seals) one event and POSTs it, retrying like WeChat (3 tries) until
/// answered `success`. Returns whether it was acknowledged. Each try of a receipt (`msgid`)
/// is recorded in `receipt_tries`, so a test can check no push was answered early.
async fn deliver(
    state: &MockState,
    target: &PushTarget,
    appid: &str,
    to_user: &str,
    xml: &str,
    msgid: Option<i64>,
) -> bool {
    let (body, query) = signed_request(target, appid, to_user, xml, chrono::Utc::now().timestamp());
    for attempt in 0..3u64 {
        let (http_status, success) = post_once(&state.http, &target.url, &query, &body).await;
        if let Some(msgid) = msgid {
            state.stats.lock().unwrap().receipt_tries.push(ReceiptTry {
                msgid,
                attempt,
                http_status,
                success,
                at_ms: chrono::Utc::now().timestamp_millis(),
            });
        }
        if success {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
    }
    false
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
    let sig = crate::crypto::signature::url_signature(&target.token, &timestamp, &nonce);
    let mut query = vec![
        ("signature", sig),
        ("timestamp", timestamp.clone()),
        ("nonce", nonce.clone()),
    ];
    match &target.aes_key {
        Some(key) => {
            let sealed =
                seal_safe_mode(&target.token, key, appid, to_user, xml, &timestamp, &nonce);
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

/// A subscription event a user's action or a send triggers, in WeChat's XML (the format of
/// WeChat's "subscription notification" event docs, as quoted by public SDKs' tests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub(crate) enum SubscriptionEvent {
    /// The user answered the subscription popup (`subscribe_msg_popup_event`).
    Popup { template_id: String, accept: bool },
    /// The user changed the subscription in the settings (`subscribe_msg_change_event`).
    Change { template_id: String, accept: bool },
    /// The result of a bizsend (`subscribe_msg_sent_event`).
    Sent {
        template_id: String,
        msgid: i64,
        error_code: i64,
        error_status: String,
    },
}

impl SubscriptionEvent {
    /// The event's whole XML body, from the account `gh_<appid>` to user `touser`.
    pub(crate) fn to_xml(&self, appid: &str, touser: &str, create_time: i64) -> String {
        let status = |accept: bool| if accept { "accept" } else { "reject" };
        let (event, inner) = match self {
            SubscriptionEvent::Popup {
                template_id,
                accept,
            } => (
                "subscribe_msg_popup_event",
                format!(
                    "<SubscribeMsgPopupEvent><List><TemplateId><![CDATA[{template_id}]]></TemplateId><SubscribeStatusString><![CDATA[{}]]></SubscribeStatusString><PopupScene>0</PopupScene></List></SubscribeMsgPopupEvent>",
                    status(*accept)
                ),
            ),
            SubscriptionEvent::Change {
                template_id,
                accept,
            } => (
                "subscribe_msg_change_event",
                format!(
                    "<SubscribeMsgChangeEvent><List><TemplateId><![CDATA[{template_id}]]></TemplateId><SubscribeStatusString><![CDATA[{}]]></SubscribeStatusString></List></SubscribeMsgChangeEvent>",
                    status(*accept)
                ),
            ),
            SubscriptionEvent::Sent {
                template_id,
                msgid,
                error_code,
                error_status,
            } => (
                "subscribe_msg_sent_event",
                format!(
                    "<SubscribeMsgSentEvent><List><TemplateId><![CDATA[{template_id}]]></TemplateId><MsgID>{msgid}</MsgID><ErrorCode>{error_code}</ErrorCode><ErrorStatus><![CDATA[{error_status}]]></ErrorStatus></List></SubscribeMsgSentEvent>"
                ),
            ),
        };
        format!(
            "<xml><ToUserName><![CDATA[gh_{appid}]]></ToUserName><FromUserName><![CDATA[{touser}]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>{inner}</xml>"
        )
    }
}

/// Pushes one subscription event in the background (signed, sealed in safe mode, retried like
/// a receipt), counted in `events_pushed` / `events_acknowledged`.
pub(crate) fn spawn_subscription_event(
    state: Arc<MockState>,
    target: PushTarget,
    appid: String,
    touser: String,
    event: SubscriptionEvent,
) {
    let for_appid = appid.clone();
    spawn_push(state, target, appid, None, move |now| {
        event.to_xml(&for_appid, &touser, now)
    });
}

/// The `ErrorStatus` of a sent event for `touser`, by the same openid convention as receipts.
pub(crate) fn sent_status(touser: &str) -> (i64, &'static str) {
    match status_for(touser) {
        "success" => (0, "success"),
        other => (1, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sent event has the shape of WeChat's documented sample.
    #[test]
    fn a_sent_event_is_wechats_xml() {
        let xml = SubscriptionEvent::Sent {
            template_id: "T".into(),
            msgid: 1_700_827_132_819_554_304,
            error_code: 0,
            error_status: "success".into(),
        }
        .to_xml("wx1", "o1", 1610969468);
        assert_eq!(
            xml,
            "<xml><ToUserName><![CDATA[gh_wx1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1610969468</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event><SubscribeMsgSentEvent><List><TemplateId><![CDATA[T]]></TemplateId><MsgID>1700827132819554304</MsgID><ErrorCode>0</ErrorCode><ErrorStatus><![CDATA[success]]></ErrorStatus></List></SubscribeMsgSentEvent></xml>"
        );
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
    event: &callback::SubscriptionEvent,
) -> Vec<PushAnswer> {
    target.wait_delay().await;
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
