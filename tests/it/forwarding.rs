//! Issue 26: one server URL for the account. The pushes wxdispatch does not own reach the
//! account's existing server (a real HTTP server that checks WeChat's signatures) byte for
//! byte, its answer reaches WeChat unchanged, and a server that is slow, failing or down costs
//! WeChat a `success` within 5 s; receipts stay wxdispatch's; the reverse set-up (the existing
//! server in front) still turns receipts into outcomes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use crate::helpers::*;
use crate::old_server::{Mode, OldServer, Push, REPLY_TYPE, event, text};
use crate::receipts::{callback_url, start};

fn forward_count(metrics: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!("wxdispatch_callback_forward_total{{result=\"{result}\"}}"),
    )
}

/// An existing server that answers after `latency`, and a worker (safe mode configured)
/// forwarding to it.
async fn in_front_of_a_server(latency: Duration) -> (Arc<OldServer>, Harness) {
    let old = OldServer::start(Mode::Reply { latency }).await;
    let h = start(true, &[("WXD_CALLBACK_FORWARD_URL", &old.url)]).await;
    (old, h)
}

fn receipt(user: &str, msgid: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_old]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msgid}</MsgID><Status><![CDATA[success]]></Status></xml>",
        chrono::Utc::now().timestamp()
    )
}

/// A text message and a menu click, in plaintext and in safe mode, reach the existing server
/// as WeChat sent them (same method, query string, body bytes and content type), its
/// signature check passes, and WeChat gets its answer byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_and_a_click_reach_the_existing_server_signed_and_its_reply_comes_back_unchanged() {
    let (old, h) = in_front_of_a_server(Duration::ZERO).await;
    let http = reqwest::Client::new();
    for safe in [false, true] {
        let pushes = [
            text("oUserText", "hello", 6_000_000_000_000_000_001),
            event("oUserClick", "CLICK", Some("V1001_TODAY_MUSIC"), ""),
        ];
        for xml in pushes {
            let push = Push::new(&xml, safe);
            let answer = push.send(&http, &callback_url(&h)).await;
            let seen = old
                .seen()
                .into_iter()
                .find(|s| s.query.as_deref() == Some(push.query_string().as_str()))
                .unwrap_or_else(|| panic!("forwarded with its query string (safe: {safe})"));
            assert!(seen.verified, "the existing server accepts the signature");
            assert_eq!(seen.method, "POST");
            assert_eq!(seen.body, push.body.as_bytes(), "the body byte for byte");
            assert_eq!(seen.content_type.as_deref(), Some("text/xml"));
            assert_eq!(
                seen.xml, xml,
                "the same push, decrypted by the server itself"
            );
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.content_type.as_deref(), Some(REPLY_TYPE));
            assert_eq!(
                Some(answer.body),
                seen.reply,
                "the server's reply, byte for byte"
            );
        }
    }
    assert_eq!(old.seen().len(), 4);
    let m = h.metrics().await;
    assert_eq!(forward_count(&m, "ok"), 4.0, "{m}");
    h.cleanup().await;
}

/// A receipt stays wxdispatch's: it is published and answered `success`, and the existing
/// server never sees it; with `FORWARD_OWNED` it gets it after the outcome is confirmed, once
/// across WeChat's three tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_is_published_not_forwarded_and_forwarded_once_after_its_confirm_when_owned() {
    let (old, h) = in_front_of_a_server(Duration::ZERO).await;
    let http = reqwest::Client::new();
    success_within_5s(&http, &h, &receipt("oReceipt1", 7001)).await;
    let got = h.outcomes(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["kind"].as_str(), got[0]["msgid"].as_i64()),
        (Some("receipt"), Some(7001))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        old.seen().is_empty(),
        "a receipt is not forwarded: {:?}",
        old.seen()
    );
    h.cleanup().await;

    let h = start(
        true,
        &[
            ("WXD_CALLBACK_FORWARD_URL", &old.url),
            ("WXD_CALLBACK_FORWARD_OWNED", "true"),
        ],
    )
    .await;
    let push = Push::new(&receipt("oReceipt2", 7002), true);
    for _ in 0..3 {
        let answer = push.send(&http, &callback_url(&h)).await;
        assert_eq!(
            (answer.status, &answer.body[..]),
            (StatusCode::OK, &b"success"[..])
        );
    }
    let got = h.outcomes(1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["msgid"], 7002);
    eventually(
        "the owned receipt forwarded",
        Duration::from_secs(5),
        || async { !old.seen().is_empty() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = old.seen();
    assert_eq!(seen.len(), 1, "forwarded once across three tries: {seen:?}");
    assert!(seen[0].verified && seen[0].body == push.body.as_bytes());
    assert_eq!(h.late_duplicates(Duration::from_millis(300)).await, 0);
    h.cleanup().await;
}

/// An existing server that sleeps 7 s, answers 500, or is down: WeChat gets `success` within
/// 5 s each time, the worker keeps serving (a receipt after them is still stored), and the
/// forward metric counts each case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_failing_or_absent_server_costs_wechat_a_success_within_5s() {
    let old = OldServer::start(Mode::Sleep(Duration::from_secs(7))).await;
    // A port with nothing listening: bound, then let go.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/wx", l.local_addr().unwrap())
    };
    let http = reqwest::Client::new();
    let h = start(false, &[("WXD_CALLBACK_FORWARD_URL", &old.url)]).await;
    success_within_5s(&http, &h, &text("oSlow", "anyone there?", 81)).await;

    *old.mode.lock().unwrap() = Mode::Fail;
    success_within_5s(&http, &h, &event("oFail", "CLICK", Some("K"), "")).await;
    let m = h.metrics().await;
    assert_eq!(forward_count(&m, "timeout"), 1.0, "{m}");
    assert_eq!(forward_count(&m, "error_status"), 1.0, "{m}");
    assert_eq!(old.seen().len(), 2);
    h.cleanup().await;

    let h = start(false, &[("WXD_CALLBACK_FORWARD_URL", &down)]).await;
    success_within_5s(&http, &h, &text("oDown", "hello?", 82)).await;
    let answer = Push::new(&receipt("oAfterDown", 8201), false)
        .send(&http, &callback_url(&h))
        .await;
    assert_eq!(&answer.body[..], b"success", "receipts go on");
    assert_eq!(
        h.outcomes(1, Duration::from_secs(10)).await[0]["msgid"],
        8201
    );
    let m = h.metrics().await;
    assert_eq!(forward_count(&m, "unreachable"), 1.0, "{m}");
    h.cleanup().await;
}

/// Pushes `xml` in plaintext as WeChat does and checks that WeChat gets `success` within 5 s.
async fn success_within_5s(http: &reqwest::Client, h: &Harness, xml: &str) {
    let answer = Push::new(xml, false).send(http, &callback_url(h)).await;
    assert_eq!(
        (answer.status, &answer.body[..]),
        (StatusCode::OK, &b"success"[..])
    );
    assert!(answer.took < Duration::from_secs(5), "{:?}", answer.took);
}

/// 100 pushes at once, with the existing server taking 200 ms for each: every one gets its
/// own reply (the server names the request's nonce in it), none another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_forwards_each_get_their_own_reply() {
    let (old, h) = in_front_of_a_server(Duration::from_millis(200)).await;
    let http = reqwest::Client::new();
    let url = callback_url(&h);
    let sends = (0..100).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let push = Push::new(
                &text(&format!("oMany{i}"), &format!("n{i}"), 9000 + i),
                i % 2 == 0,
            );
            let answer = push.send(&http, &url).await;
            (push, answer)
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let seen = old.seen();
    assert_eq!(seen.len(), 100);
    for (push, answer) in results {
        assert_eq!(answer.status, StatusCode::OK);
        let mine = seen
            .iter()
            .find(|s| s.query.as_deref() == Some(push.query_string().as_str()))
            .expect("forwarded");
        assert_eq!(Some(&answer.body), mine.reply.as_ref(), "its own reply");
        if !push.body.contains("<Encrypt>") {
            let reply = String::from_utf8(answer.body.to_vec()).unwrap();
            assert!(reply.contains(&format!("({})", push.nonce())), "{reply}");
        }
    }
    h.cleanup().await;
}

/// A forged push (wrong signature), a DOCTYPE and an oversized body are refused before
/// anything leaves the worker: the existing server sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_hostile_push_is_refused_and_not_forwarded() {
    let (old, h) = in_front_of_a_server(Duration::ZERO).await;
    let http = reqwest::Client::new();
    let mut forged = Push::new(&text("oForged", "trust me", 1), false);
    forged.query[0].1 = "0".repeat(40);
    assert_eq!(
        forged.send(&http, &callback_url(&h)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut forged_safe = Push::new(&text("oForged", "trust me", 2), true);
    forged_safe.query[5].1 = "0".repeat(40);
    assert_eq!(
        forged_safe.send(&http, &callback_url(&h)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let doctype = Push::new(
        "<!DOCTYPE x [<!ENTITY a \"b\">]><xml><MsgType>text</MsgType></xml>",
        false,
    );
    assert_eq!(
        doctype.send(&http, &callback_url(&h)).await.status,
        StatusCode::BAD_REQUEST
    );
    let big = Push::new(&text("oBig", &"x".repeat(20 * 1024), 3), false);
    assert_eq!(
        big.send(&http, &callback_url(&h)).await.status,
        StatusCode::BAD_REQUEST
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(old.seen().is_empty(), "{:?}", old.seen());
    let m = h.metrics().await;
    for r in ["ok", "timeout", "error_status", "unreachable"] {
        assert_eq!(forward_count(&m, r), 0.0, "{m}");
    }
    h.cleanup().await;
}
