//! Issue 26: the pushes wxdispatch does not own as `kind: event` outcomes (follows, scans,
//! menu clicks, location reports, user messages), one per push across WeChat's three tries,
//! alongside forwarding; and the reverse set-up, where the account's existing server stays on
//! the URL and hands wxdispatch its receipts.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use crate::helpers::*;
use crate::old_server::{Mode, OldServer, Push, REPLY_TYPE, event, text};
use crate::receipts::{callback_url, start};

/// Each kind of push WeChat sends an account, with the openid that tells it apart and the
/// status its outcome must have.
fn pushes() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "oFollow",
            event(
                "oFollow",
                "subscribe",
                Some("qrscene_123"),
                "<Ticket><![CDATA[TICKET]]></Ticket>",
            ),
            "subscribe",
        ),
        (
            "oUnfollow",
            event("oUnfollow", "unsubscribe", None, ""),
            "unsubscribe",
        ),
        ("oScan", event("oScan", "SCAN", Some("123"), ""), "scan"),
        (
            "oClick",
            event("oClick", "CLICK", Some("V1001_GOOD"), ""),
            "click",
        ),
        (
            "oView",
            event("oView", "VIEW", Some("https://example.com/"), ""),
            "view",
        ),
        (
            "oWhere",
            event(
                "oWhere",
                "LOCATION",
                None,
                "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
            ),
            "location",
        ),
        (
            "oText",
            text("oText", "hello", 5_000_000_000_000_000_001),
            "text",
        ),
    ]
}

/// Every push is answered `success` on each of WeChat's three tries and becomes exactly one
/// outcome: kind `event`, status the lower-case event or msgtype, the user's openid, the event
/// key and time, a stable `message_id`, routed `event.<status>`; no content by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_once_across_wechats_three_tries() {
    let h = start(true, &[("WXD_CALLBACK_PUBLISH_EVENTS", "true")]).await;
    let clicks = h.bind_outcomes("event.click").await;
    let http = reqwest::Client::new();
    let all = pushes();
    for (i, (_, xml, _)) in all.iter().enumerate() {
        let push = Push::new(xml, i % 2 == 1);
        for attempt in 0..3 {
            let a = push.send(&http, &callback_url(&h)).await;
            assert_eq!(
                (a.status, &a.body[..]),
                (StatusCode::OK, &b"success"[..]),
                "try {attempt} of {xml}"
            );
        }
    }
    let got = h.outcomes(all.len(), Duration::from_secs(15)).await;
    assert_eq!(got.len(), all.len(), "{got:?}");
    for (openid, _, status) in &all {
        let o: &Value = got
            .iter()
            .find(|o| o["openid"] == *openid)
            .unwrap_or_else(|| panic!("no event for {openid}: {got:?}"));
        assert_eq!(o["kind"], "event", "{o}");
        assert_eq!(o["status"], *status, "{o}");
        assert_eq!(o["touser"], *openid, "{o}");
        assert_eq!(o["appid"], APPID, "{o}");
        assert!(o["event_time"].as_i64().unwrap() > 1_700_000_000, "{o}");
        assert!(o.get("content").is_none(), "no content unless asked: {o}");
    }
    let text = got.iter().find(|o| o["status"] == "text").unwrap();
    assert_eq!(text["msgid_str"], "5000000000000000001");
    assert_eq!(text["msgtype"], "text");
    let follow = got.iter().find(|o| o["status"] == "subscribe").unwrap();
    assert_eq!(follow["event_key"], "qrscene_123");
    assert_eq!(follow["event"], "subscribe");
    assert_eq!(h.late_duplicates(Duration::from_millis(500)).await, 0);

    let routed = h.read(&clicks, 2, Duration::from_secs(2)).await;
    assert_eq!(routed.len(), 1, "one click, routed event.click: {routed:?}");
    let (click, props) = &routed[0];
    assert_eq!(click["event_key"], "V1001_GOOD");
    let id = props.message_id().as_ref().map(|s| s.to_string());
    assert!(
        id.as_deref()
            .is_some_and(|id| id.starts_with(&format!("event:{APPID}:oClick:"))
                && id.ends_with(":click:V1001_GOOD")),
        "{id:?}"
    );
    h.cleanup().await;
}

/// With forwarding and content: the existing server still answers WeChat, and the event,
/// published alongside, carries the message's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_alongside_forwarding_with_content_when_asked() {
    let old = OldServer::start(Mode::Reply {
        latency: Duration::from_millis(50),
    })
    .await;
    let h = start(
        true,
        &[
            ("WXD_CALLBACK_PUBLISH_EVENTS", "true"),
            ("WXD_CALLBACK_PUBLISH_CONTENT", "true"),
            ("WXD_CALLBACK_FORWARD_URL", &old.url),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let push = Push::new(
        &text("oChat", "what's new?", 5_000_000_000_000_000_002),
        true,
    );
    let answer = push.send(&http, &callback_url(&h)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type.as_deref(), Some(REPLY_TYPE));
    assert_eq!(
        Some(answer.body),
        old.seen()[0].reply,
        "the existing server's reply"
    );
    let got = h.outcomes(1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["status"], "text");
    assert_eq!(got[0]["content"]["Content"], "what's new?");
    h.cleanup().await;
}

/// The reverse set-up: the existing server stays on the account's URL and, with one `if`,
/// hands wxdispatch's pushes to its callback as they came. A receipt (plaintext and safe mode)
/// becomes an outcome and WeChat gets `success`; a user message is still the server's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_server_in_front_hands_receipts_to_wxdispatch_and_they_become_outcomes() {
    let h = start(true, &[]).await;
    let old = OldServer::start(Mode::Reply {
        latency: Duration::ZERO,
    })
    .await;
    *old.in_front_of.lock().unwrap() = Some(callback_url(&h));
    let http = reqwest::Client::new();
    for (msgid, safe) in [(9101, false), (9102, true)] {
        let xml = format!(
            "<xml><ToUserName><![CDATA[gh_old]]></ToUserName><FromUserName><![CDATA[oRev{msgid}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msgid}</MsgID><Status><![CDATA[failed:user block]]></Status></xml>",
            chrono::Utc::now().timestamp()
        );
        let a = Push::new(&xml, safe).send(&http, &old.url).await;
        assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"success"[..]));
    }
    let got = h.outcomes(2, Duration::from_secs(10)).await;
    let mut ids: Vec<i64> = got.iter().map(|o| o["msgid"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [9101, 9102], "{got:?}");
    assert!(
        got.iter()
            .all(|o| o["kind"] == "receipt" && o["status"] == "blocked")
    );
    let a = Push::new(&text("oRevChat", "hi", 77), false)
        .send(&http, &old.url)
        .await;
    assert!(String::from_utf8_lossy(&a.body).contains("old server heard hi"));
    assert_eq!(h.late_duplicates(Duration::from_millis(300)).await, 0);
    h.cleanup().await;
}
