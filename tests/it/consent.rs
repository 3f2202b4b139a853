//! Issue 16 item 2: WeChat's subscription events (consent pop-up, settings change, delivery
//! result), pushed by the simulator the way WeChat pushes them, in plaintext and safe mode,
//! through the worker's real callback to `consent` and `receipt` outcomes on the real broker.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use wxdispatch::callback::{SubscriptionEvent, SubscriptionItem, SubscriptionKind};
use wxdispatch::crypto::AesKey;
use wxdispatch::tools::mock::push::{PushAnswer, PushTarget, push_subscription_event};
use wxdispatch::tools::mock::xml::WechatXml;

use crate::helpers::*;
use crate::receipts::{
    AES_KEY, GH, TOKEN, assert_nothing_else_published, callback_count, callback_url,
    forward_to_broker, post_plain, post_sealed, start, start_with_unreachable_broker,
};

const ANSWERED_SUCCESS: PushAnswer = PushAnswer {
    http_status: 200,
    success: true,
};

fn target(h: &Harness, aes: bool) -> PushTarget {
    PushTarget {
        url: callback_url(h),
        token: TOKEN.into(),
        aes_key: aes.then(|| AesKey::from_encoding_aes_key(AES_KEY).unwrap()),
        delay_ms: 0,
    }
}

fn consent_item(template_id: &str, status: &str, scene: Option<&str>) -> SubscriptionItem {
    SubscriptionItem {
        template_id: template_id.into(),
        status: Some(status.into()),
        popup_scene: scene.map(str::to_owned),
        msg_id: None,
        error_code: None,
        error_status: None,
    }
}

fn sent_item(template_id: &str, msg_id: i64, code: i64, status: &str) -> SubscriptionItem {
    SubscriptionItem {
        template_id: template_id.into(),
        status: None,
        popup_scene: None,
        msg_id: Some(msg_id),
        error_code: Some(code),
        error_status: Some(status.into()),
    }
}

fn event(kind: SubscriptionKind, openid: &str, items: Vec<SubscriptionItem>) -> SubscriptionEvent {
    SubscriptionEvent {
        to_user: GH.into(),
        from_user: openid.into(),
        create_time: chrono::Utc::now().timestamp(),
        kind,
        items,
    }
}

/// Reads exactly `n` outcomes (failing if fewer arrive). Outcomes are published before the
/// callback answers, so after a `success` they are already on the queue.
async fn read_n(h: &Harness, n: usize) -> Vec<Value> {
    let got: Vec<Value> = h
        .read(&h.config.amqp.outcomes_queue, n, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(got.len(), n, "expected {n} outcomes: {got:?}");
    got
}

fn consent_of(v: &Value) -> (String, String, String, String) {
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    (s("touser"), s("template_id"), s("status"), s("source"))
}

/// A pop-up event listing two templates (one accepted, one rejected) becomes two consent
/// outcomes, and a settings change one more: each with the openid, template, choice, source,
/// the account and WeChat's event time; nothing else is published and each is counted.
async fn consents_end_to_end(aes: bool) {
    let h = start(aes, &[]).await;
    let http = reqwest::Client::new();
    let openid = if aes {
        "o-consent-safe"
    } else {
        "o-consent-plain"
    };
    let popup = event(
        SubscriptionKind::Popup,
        openid,
        vec![
            consent_item("TPL-accepted", "accept", Some("2")),
            consent_item("TPL-rejected", "reject", Some("2")),
        ],
    );
    let answers = push_subscription_event(&http, &target(&h, aes), APPID, &popup).await;
    assert_eq!(
        answers,
        [ANSWERED_SUCCESS],
        "answered success at the first try"
    );
    let mut got = read_n(&h, 2).await;
    got.sort_by_key(|v| v["template_id"].as_str().unwrap_or("").to_string());
    assert_eq!(
        got.iter().map(consent_of).collect::<Vec<_>>(),
        [
            (
                openid.into(),
                "TPL-accepted".into(),
                "accept".into(),
                "popup".into()
            ),
            (
                openid.into(),
                "TPL-rejected".into(),
                "reject".into(),
                "popup".into()
            ),
        ]
    );
    for v in &got {
        assert_eq!(v["kind"], "consent", "{v}");
        assert_eq!(v["appid"], APPID, "{v}");
        assert_eq!(v["event_time"], popup.create_time, "{v}");
    }

    let change = event(
        SubscriptionKind::Change,
        openid,
        vec![consent_item("TPL-accepted", "reject", None)],
    );
    let answers = push_subscription_event(&http, &target(&h, aes), APPID, &change).await;
    assert_eq!(answers, [ANSWERED_SUCCESS]);
    let got = read_n(&h, 1).await;
    assert_eq!(
        consent_of(&got[0]),
        (
            openid.into(),
            "TPL-accepted".into(),
            "reject".into(),
            "settings".into()
        )
    );
    assert_nothing_else_published(&h).await;
    let m = h.metrics().await;
    for (status, source, want) in [
        ("accept", "popup", 1.0),
        ("reject", "popup", 1.0),
        ("reject", "settings", 1.0),
        ("accept", "settings", 0.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("wxdispatch_consents_total{{source=\"{source}\",status=\"{status}\"}}")
            ),
            want,
            "{status} {source}: {m}"
        );
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_popup_and_settings_events_become_one_consent_per_template() {
    consents_end_to_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_popup_and_settings_events_become_one_consent_per_template() {
    consents_end_to_end(true).await;
}

/// A `subscribe_msg_sent_event` listing three templates becomes three receipts: ErrorCode 0
/// `delivered`, 43101 (the user refuses) `blocked`, any other failure `undelivered`, each
/// with its MsgID, template and WeChat's raw code and status.
async fn sent_results_end_to_end(aes: bool) {
    let h = start(aes, &[]).await;
    let base: i64 = if aes {
        1_700_000_000_000_002
    } else {
        1_700_000_000_000_001
    } * 10;
    let sent = event(
        SubscriptionKind::Sent,
        "o-sent",
        vec![
            sent_item("TPL-a", base + 1, 0, "success"),
            sent_item("TPL-b", base + 2, 43101, "failed:user block"),
            sent_item("TPL-c", base + 3, -1, "failed:system failed"),
        ],
    );
    let answers =
        push_subscription_event(&reqwest::Client::new(), &target(&h, aes), APPID, &sent).await;
    assert_eq!(answers, [ANSWERED_SUCCESS]);
    let mut got = read_n(&h, 3).await;
    got.sort_by_key(|v| v["msgid"].as_i64());
    let seen: Vec<(i64, &str, &str, i64, &str)> = got
        .iter()
        .map(|v| {
            (
                v["msgid"].as_i64().unwrap(),
                v["template_id"].as_str().unwrap(),
                v["status"].as_str().unwrap(),
                v["errcode"].as_i64().unwrap(),
                v["errmsg"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (base + 1, "TPL-a", "delivered", 0, "success"),
            (base + 2, "TPL-b", "blocked", 43101, "failed:user block"),
            (base + 3, "TPL-c", "undelivered", -1, "failed:system failed"),
        ]
    );
    for v in &got {
        assert_eq!(v["kind"], "receipt", "{v}");
        assert_eq!(v["touser"], "o-sent", "{v}");
        assert_eq!(v["appid"], APPID, "{v}");
    }
    assert_nothing_else_published(&h).await;
    let m = h.metrics().await;
    for (status, want) in [("delivered", 2.0), ("blocked", 1.0), ("undelivered", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!("wxdispatch_receipts_total{{status=\"{status}\"}}")
            ),
            want,
            "{status} (delivered includes the sentinel): {m}"
        );
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_subscription_sent_events_become_receipts() {
    sent_results_end_to_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_subscription_sent_events_become_receipts() {
    sent_results_end_to_end(true).await;
}

/// WeChat repeats a push it got no `success` for. Three pushes of one two-template pop-up
/// event (two plaintext, one sealed) store two consents, not six; a settings change with the
/// same second, template and choice is a different event and is stored too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_retries_of_a_subscription_event_store_each_template_once() {
    let h = start(true, &[]).await;
    let popup = event(
        SubscriptionKind::Popup,
        "o-retry",
        vec![
            consent_item("TPL-1", "accept", Some("0")),
            consent_item("TPL-2", "accept", Some("0")),
        ],
    );
    let http = reqwest::Client::new();
    for aes in [false, false, true] {
        let answers = push_subscription_event(&http, &target(&h, aes), APPID, &popup).await;
        assert_eq!(
            answers,
            [ANSWERED_SUCCESS],
            "every retry is answered success"
        );
    }
    let change = SubscriptionEvent {
        kind: SubscriptionKind::Change,
        items: vec![consent_item("TPL-1", "accept", None)],
        ..popup.clone()
    };
    let answers = push_subscription_event(&http, &target(&h, false), APPID, &change).await;
    assert_eq!(answers, [ANSWERED_SUCCESS]);
    let got = read_n(&h, 3).await;
    let mut seen: Vec<_> = got.iter().map(consent_of).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "o-retry".into(),
                "TPL-1".into(),
                "accept".into(),
                "popup".into()
            ),
            (
                "o-retry".into(),
                "TPL-1".into(),
                "accept".into(),
                "settings".into()
            ),
            (
                "o-retry".into(),
                "TPL-2".into(),
                "accept".into(),
                "popup".into()
            ),
        ]
    );
    assert_nothing_else_published(&h).await;
    let m = h.metrics().await;
    assert_eq!(callback_count(&m, "duplicate"), 2.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "wxdispatch_consents_total{source=\"popup\",status=\"accept\"}"
        ),
        2.0,
        "{m}"
    );
    h.cleanup().await;
}

/// Confirm before success: while the broker is unreachable a two-template pop-up is answered
/// 503 (WeChat retries), never `success`; the retry once the broker is back stores both
/// consents, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_event_is_answered_success_only_once_every_template_is_stored() {
    let (h, port) = start_with_unreachable_broker().await;
    let popup = event(
        SubscriptionKind::Popup,
        "o-unstored",
        vec![
            consent_item("TPL-x", "accept", Some("1")),
            consent_item("TPL-y", "reject", Some("1")),
        ],
    );
    let xml = popup.to_xml();
    let (code, text) = post_plain(&h, &xml).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let forwarder = forward_to_broker(port).await;
    let (code, text) = post_plain(&h, &xml).await;
    assert_eq!(
        (code, text.as_str()),
        (StatusCode::OK, "success"),
        "the retry"
    );
    let got = read_n(&h, 2).await;
    let mut seen: Vec<_> = got.iter().map(consent_of).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "o-unstored".into(),
                "TPL-x".into(),
                "accept".into(),
                "popup".into()
            ),
            (
                "o-unstored".into(),
                "TPL-y".into(),
                "reject".into(),
                "popup".into()
            ),
        ]
    );
    let m = h.metrics().await;
    assert_eq!(callback_count(&m, "unavailable"), 1.0, "{m}");
    assert_eq!(callback_count(&m, "ok"), 1.0, "{m}");
    assert_nothing_else_published(&h).await;
    h.cleanup().await;
    forwarder.abort();
}

/// Bad subscription events (malformed XML, an item without its template or choice, an empty
/// list, a non-numeric MsgID) are refused with 400 in both modes and publish nothing; an
/// unknown subscription-like event is acknowledged and ignored. The server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_unknown_subscription_events_never_publish() {
    let h = start(true, &[]).await;
    let head = format!(
        "<xml><ToUserName><![CDATA[{GH}]]></ToUserName><FromUserName><![CDATA[o-bad]]></FromUserName>\
         <CreateTime>1610969440</CreateTime><MsgType><![CDATA[event]]></MsgType>"
    );
    let bad = [
        (
            "unclosed List",
            format!(
                "{head}<Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent><List>\
                 <TemplateId>t</TemplateId></SubscribeMsgPopupEvent></xml>"
            ),
            "malformed",
        ),
        (
            "no TemplateId",
            format!(
                "{head}<Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent><List>\
                 <SubscribeStatusString>accept</SubscribeStatusString></List></SubscribeMsgPopupEvent></xml>"
            ),
            "missing_field",
        ),
        (
            "no choice",
            format!(
                "{head}<Event>subscribe_msg_change_event</Event><SubscribeMsgChangeEvent><List>\
                 <TemplateId>t</TemplateId></List></SubscribeMsgChangeEvent></xml>"
            ),
            "missing_field",
        ),
        (
            "empty list",
            format!("{head}<Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent/></xml>"),
            "missing_field",
        ),
        (
            "bad MsgID",
            format!(
                "{head}<Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent><List>\
                 <TemplateId>t</TemplateId><MsgID>12ab</MsgID><ErrorCode>0</ErrorCode>\
                 </List></SubscribeMsgSentEvent></xml>"
            ),
            "bad_number",
        ),
    ];
    for (what, xml, _) in &bad {
        let (code, _) = post_plain(&h, xml).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "plaintext {what}");
        let (code, _) = post_sealed(&h, APPID, xml).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "safe mode {what}");
    }
    let m = h.metrics().await;
    for reason in ["malformed", "missing_field", "bad_number"] {
        let want = 2.0 * bad.iter().filter(|(_, _, r)| *r == reason).count() as f64;
        assert_eq!(callback_count(&m, reason), want, "{reason}: {m}");
    }
    let unknown = format!(
        "{head}<Event>subscribe_msg_unheard_of_event</Event><SubscribeMsgPopupEvent><List>\
         <TemplateId>t</TemplateId><SubscribeStatusString>accept</SubscribeStatusString>\
         </List></SubscribeMsgPopupEvent></xml>"
    );
    let (code, text) = post_plain(&h, &unknown).await;
    assert_eq!((code, text.as_str()), (StatusCode::OK, "success"));
    assert_eq!(callback_count(&h.metrics().await, "ignored"), 1.0);
    assert_nothing_else_published(&h).await;
    h.cleanup().await;
}
