//! Issue 16: subscription notifications (`subscribe`, bizsend) and mini-program subscribe
//! messages (`miniprogram_subscribe`) through the same queue, limiter and outcome stream as
//! template messages, end to end against the real broker and the simulator.

use std::time::Duration;

use serde_json::{Value, json};

use wxdispatch::tools::mock::Behaviour;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

fn subscribe(id: &str, touser: &str) -> Value {
    json!({
        "id": id, "type": "subscribe", "touser": touser,
        "template_id": "SUBTPL0001",
        "page": "pages/order/detail?id=7781",
        "miniprogram": {"appid": "wxmini0000000001", "pagepath": "pages/index"},
        "data": {"thing1": {"value": "订单已发货"}, "time2": {"value": "2026-12-01 10:00"}}
    })
}

fn mp_subscribe(id: &str, touser: &str) -> Value {
    json!({
        "id": id, "type": "miniprogram_subscribe", "touser": touser,
        "template_id": "MPTPL0001",
        "page": "index?foo=bar",
        "miniprogram_state": "formal",
        "lang": "zh_CN",
        "data": {"number01": {"value": "339208499"}, "phrase3": {"value": "配送中"}}
    })
}

fn requests(h: &Harness, t: &str) -> u64 {
    h.mock
        .state
        .stats()
        .requests_by_type
        .get(t)
        .copied()
        .unwrap_or(0)
}

/// One job of each type: each reaches its own endpoint once and ends `sent` with its `type` in
/// the outcome. The mini-program endpoint answers without a `msgid`, and a subscription batch
/// becomes one outcome per recipient, each still of its type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_type_is_sent_to_its_own_endpoint_with_its_type_in_the_outcome() {
    let h = Harness::start(Opts::default()).await;
    h.publish(&job("t-1", "user-t")).await;
    h.publish(&subscribe("s-1", "user-s")).await;
    h.publish(&mp_subscribe("m-1", "user-m")).await;
    let mut batch = subscribe("s-batch", "x");
    batch["touser"] = json!(["user-b1", "user-b2"]);
    h.publish(&batch).await;
    let got = h.outcomes(5, WAIT).await;
    assert_eq!(got.len(), 5, "{got:?}");
    let find = |id: &str, touser: &str| {
        got.iter()
            .find(|o| o["id"] == id && o["touser"] == touser)
            .unwrap_or_else(|| panic!("no outcome for {id}/{touser}: {got:?}"))
            .clone()
    };
    for (id, touser, t) in [
        ("t-1", "user-t", "template"),
        ("s-1", "user-s", "subscribe"),
        ("m-1", "user-m", "miniprogram_subscribe"),
        ("s-batch", "user-b1", "subscribe"),
        ("s-batch", "user-b2", "subscribe"),
    ] {
        let o = find(id, touser);
        assert_eq!(o["status"], "sent", "{o}");
        assert_eq!(o["type"], t, "{o}");
        assert_eq!(o["attempts"], 1, "{o}");
    }
    assert!(find("t-1", "user-t")["msgid"].is_i64());
    assert!(find("m-1", "user-m")["msgid"].is_null());
    assert_eq!(requests(&h, "template"), 1);
    assert_eq!(requests(&h, "subscribe"), 3);
    assert_eq!(requests(&h, "miniprogram_subscribe"), 1);
    h.cleanup().await;
}

/// Every way a subscription job can be wrong ends `invalid` with its reason and a dead-letter
/// copy, before any call to WeChat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscription_jobs_are_invalid_with_a_reason_and_dead_lettered() {
    let h = Harness::start(Opts::default()).await;
    let with = |base: Value, key: &str, v: Value| {
        let mut b = base;
        if v.is_null() {
            b.as_object_mut().unwrap().remove(key);
        } else {
            b[key] = v;
        }
        b
    };
    let cases: Vec<(&str, Value)> = vec![
        ("bad_type", with(subscribe("b1", "u"), "type", json!("sms"))),
        ("bad_type", with(subscribe("b2", "u"), "type", json!(3))),
        // A template-only field on a subscription job.
        (
            "unknown_field",
            with(subscribe("b3", "u"), "url", json!("https://x")),
        ),
        // A mini-program field on an Official Account subscription job.
        (
            "unknown_field",
            with(subscribe("b4", "u"), "lang", json!("zh_CN")),
        ),
        (
            "unknown_field",
            with(
                mp_subscribe("b5", "u"),
                "miniprogram",
                json!({"appid": "wx"}),
            ),
        ),
        ("bad_field", with(subscribe("b6", "u"), "page", json!(5))),
        (
            "bad_field",
            with(
                subscribe("b7", "u"),
                "miniprogram",
                json!({"pagepath": "p"}),
            ),
        ),
        (
            "bad_field",
            with(
                mp_subscribe("b8", "u"),
                "miniprogram_state",
                json!("production"),
            ),
        ),
        (
            "bad_field",
            with(mp_subscribe("b9", "u"), "lang", json!("fr_FR")),
        ),
        (
            "missing_data",
            with(subscribe("b10", "u"), "data", Value::Null),
        ),
        (
            "bad_data",
            with(
                subscribe("b11", "u"),
                "data",
                json!({"thing1": {"value": 5}}),
            ),
        ),
        (
            "bad_value",
            with(
                subscribe("b12", "u"),
                "data",
                json!({"thing1": {"value": "一二三四五六七八九十一二三四五六七八九十一"}}),
            ),
        ),
        (
            "bad_value",
            with(
                mp_subscribe("b13", "u"),
                "data",
                json!({"phrase3": {"value": "正在配送途中"}}),
            ),
        ),
    ];
    for (_, body) in &cases {
        h.publish(body).await;
    }
    let got = h.outcomes(cases.len(), WAIT).await;
    assert_eq!(got.len(), cases.len(), "{got:?}");
    for (reason, body) in &cases {
        let o = got
            .iter()
            .find(|o| o["id"] == body["id"])
            .unwrap_or_else(|| panic!("no outcome for {body}"));
        assert_eq!(o["status"], "invalid", "{o}");
        assert_eq!(o["reason"], *reason, "{body} -> {o}");
        assert!(o["errmsg"].as_str().is_some_and(|m| !m.is_empty()), "{o}");
    }
    let dead = h.read(&h.config.amqp.dead_queue, cases.len(), WAIT).await;
    assert_eq!(dead.len(), cases.len(), "each bad job dead-lettered");
    for (v, props) in &dead {
        let (reason, _) = cases.iter().find(|(_, b)| b["id"] == v["id"]).unwrap();
        assert_eq!(
            wxdispatch::amqp::headers::get_str(props, "x-wxd-reason").as_deref(),
            Some(*reason)
        );
    }
    assert_eq!(
        h.mock.state.stats().send_requests,
        0,
        "nothing reached WeChat"
    );
    h.cleanup().await;
}

/// A subscription send that WeChat accepted but whose reply never came: the endpoints take no
/// `client_msg_id`, so a retry would be a second message. It ends `failed` / `maybe_sent`
/// after exactly one request, for both subscription types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_send_that_may_have_been_delivered_is_never_resent() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            stall_ms: 3_000,
            ..Default::default()
        },
        env: &[("WXD_HTTP_TIMEOUT_MS", "300")],
        ..Default::default()
    })
    .await;
    h.publish(&subscribe("ms-1", "flaky:timeout:1:s")).await;
    h.publish(&mp_subscribe("ms-2", "flaky:timeout:1:m")).await;
    let got = h.outcomes(2, WAIT).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for o in &got {
        assert_eq!(o["status"], "failed", "{o}");
        assert_eq!(o["reason"], "maybe_sent", "{o}");
        assert_eq!(o["attempts"], 1, "{o}");
    }
    assert_eq!(requests(&h, "subscribe"), 1, "no resend");
    assert_eq!(requests(&h, "miniprogram_subscribe"), 1, "no resend");
    assert_eq!(h.mock.state.stats().messages, 2, "WeChat took each once");
    h.cleanup().await;
}

/// 43101 (the user refused or withdrew consent) rejects that recipient only; 41030 (bad page)
/// and 47003 (bad data) reject the job. None is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_refused_bad_page_and_bad_data_are_rejected_without_retry() {
    let h = Harness::start(Opts::default()).await;
    let mut refused = subscribe("rj-1", "x");
    refused["touser"] = json!(["fail:43101", "user-ok"]);
    h.publish(&refused).await;
    h.publish(&mp_subscribe("rj-2", "fail:41030")).await;
    h.publish(&subscribe("rj-3", "fail:47003")).await;
    let got = h.outcomes(4, WAIT).await;
    assert_eq!(got.len(), 4, "{got:?}");
    let find = |touser: &str| got.iter().find(|o| o["touser"] == touser).unwrap().clone();
    for (touser, code, reason) in [
        ("fail:43101", 43101, "user_refused"),
        ("fail:41030", 41030, "invalid_page"),
        ("fail:47003", 47003, "invalid_argument"),
    ] {
        let o = find(touser);
        assert_eq!(o["status"], "rejected", "{o}");
        assert_eq!(o["errcode"], code, "{o}");
        assert_eq!(o["reason"], reason, "{o}");
        assert_eq!(o["attempts"], 1, "{o}");
    }
    assert_eq!(find("user-ok")["status"], "sent");
    assert_eq!(h.mock.state.stats().send_requests, 4, "one request each");
    h.cleanup().await;
}

/// WeChat counts mini-program subscribe messages apart from the account's other sends. With a
/// daily quota of one: the template job uses the account's quota, the mini-program job its own,
/// so both are sent; a second template job waits for tomorrow (parked, not sent, not failed),
/// while a second mini-program job waits too, on its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_miniprogram_subscribe_quota_is_counted_apart() {
    let h = Harness::start(Opts {
        env: &[("WXD_DAILY_QUOTA", "1")],
        ..Default::default()
    })
    .await;
    h.publish(&job("q-t1", "user-1")).await;
    h.publish(&mp_subscribe("q-m1", "user-2")).await;
    let got = h.outcomes(2, WAIT).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|o| o["status"] == "sent"), "{got:?}");
    h.publish(&job("q-t2", "user-3")).await;
    h.publish(&mp_subscribe("q-m2", "user-4")).await;
    // Both wait in the delay queues (counted there: a lost job fails this), with no outcome.
    eventually("both jobs over quota parked", WAIT, || async {
        parked(&h).await == 2
    })
    .await;
    let more = h.outcomes(1, Duration::from_secs(1)).await;
    assert!(more.is_empty(), "both wait on their quota: {more:?}");
    assert_eq!(h.mock.state.stats().send_requests, 2, "no send over quota");
    h.cleanup().await;
}

/// A 45009 from WeChat on a mini-program send pauses only `miniprogram_subscribe` jobs of that
/// appid. WeChat's daily quota is one message per count: the second mini-program job is refused
/// with 45009 and parked, a third one is parked without a send, and a template job of the same
/// appid is still sent. The parked jobs are counted in the delay queues, so a job that vanished
/// instead of waiting fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_45009_on_a_miniprogram_send_pauses_only_miniprogram_subscribe() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            quota: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let paused =
        |appid: &str, m: &str| metric(m, &format!("wxdispatch_quota_paused{{appid=\"{appid}\"}}"));
    h.publish(&mp_subscribe("p-m1", "user-1")).await;
    let got = h.outcomes(1, WAIT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["status"], "sent", "{got:?}");

    h.publish(&mp_subscribe("p-m2", "user-2")).await;
    eventually("the refused mini-program job parked", WAIT, || async {
        parked(&h).await == 1
    })
    .await;
    let stats = h.mock.state.stats();
    assert_eq!(
        stats.errors.get("45009"),
        Some(&1),
        "WeChat said 45009 once"
    );
    let m = h.metrics().await;
    assert_eq!(paused(&format!("{APPID}:miniprogram_subscribe"), &m), 1.0);
    assert_eq!(paused(APPID, &m), 0.0, "template sends are not paused");

    h.publish(&mp_subscribe("p-m3", "user-3")).await;
    h.publish(&job("p-t1", "user-4")).await;
    let got = h.outcomes(1, WAIT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], "p-t1", "{got:?}");
    assert_eq!(got[0]["status"], "sent", "{got:?}");
    eventually("both mini-program jobs parked", WAIT, || async {
        parked(&h).await == 2
    })
    .await;
    let more = h.outcomes(1, Duration::from_secs(1)).await;
    assert!(more.is_empty(), "the mini-program jobs wait: {more:?}");
    assert_eq!(
        requests(&h, "miniprogram_subscribe"),
        2,
        "no mini-program send while paused"
    );
    assert_eq!(h.mock.state.stats().messages, 2);
    h.cleanup().await;
}

/// The simulator's catalogues for the catalogue tests: the sample job's template (keys `User`
/// and `Money`) and the subscription template of `subscribe()` (keys `thing1`, `time2`).
fn with_catalogue() -> Behaviour {
    Behaviour {
        private_templates: Some(vec![(
            "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY".into(),
            "{{User.DATA}} 消费 {{Money.DATA}}".into(),
        )]),
        subscription_templates: Some(vec![(
            "SUBTPL0001".into(),
            "物品：{{thing1.DATA}}\n时间：{{time2.DATA}}".into(),
        )]),
        ..Default::default()
    }
}

/// A job whose template the account lacks, or whose data lacks a key the template names, is
/// rejected before any call to WeChat, with the reason naming the key; matching jobs of both
/// catalogues are sent. Each catalogue is fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_do_not_match_the_catalogue_are_rejected_before_sending() {
    let h = Harness::start(Opts {
        behaviour: with_catalogue(),
        ..Default::default()
    })
    .await;
    let mut good = job("c-good", "u1");
    good["data"]["Money"] = json!({"value": "260.00"});
    h.publish(&good).await;
    h.publish(&job("c-nomoney", "u2")).await;
    let mut unknown = good.clone();
    unknown["id"] = json!("c-unknown");
    unknown["template_id"] = json!("NOSUCHTEMPLATE");
    h.publish(&unknown).await;
    h.publish(&subscribe("c-sub", "u3")).await;
    let mut no_time = subscribe("c-sub-notime", "u4");
    no_time["data"].as_object_mut().unwrap().remove("time2");
    h.publish(&no_time).await;
    let got = h.outcomes(5, WAIT).await;
    assert_eq!(got.len(), 5, "{got:?}");
    let by_id = |id: &str| got.iter().find(|o| o["id"] == id).unwrap().clone();
    assert_eq!(by_id("c-good")["status"], "sent");
    assert_eq!(by_id("c-sub")["status"], "sent");
    for (id, reason, names) in [
        ("c-nomoney", "missing_data_key", "Money"),
        ("c-unknown", "unknown_template", "NOSUCHTEMPLATE"),
        ("c-sub-notime", "missing_data_key", "time2"),
    ] {
        let o = by_id(id);
        assert_eq!(o["status"], "rejected", "{o}");
        assert_eq!(o["reason"], reason, "{o}");
        assert!(o["errmsg"].as_str().unwrap().contains(names), "{o}");
        assert_eq!(o["attempts"], 0, "never sent: {o}");
    }
    let stats = h.mock.state.stats();
    assert_eq!(stats.send_requests, 2, "only the matching jobs were sent");
    assert_eq!(stats.catalogue_calls, 2, "each catalogue fetched once");
    h.cleanup().await;
}

/// A batch whose template cannot work fails once, as a whole, before it is expanded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_template_the_account_lacks_fails_once() {
    let h = Harness::start(Opts {
        behaviour: with_catalogue(),
        ..Default::default()
    })
    .await;
    let mut batch = subscribe("c-batch", "x");
    batch["touser"] = json!(["b1", "b2", "b3"]);
    batch["template_id"] = json!("GONE");
    h.publish(&batch).await;
    h.publish(&subscribe("c-after", "b4")).await;
    let got = h.outcomes(4, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        2,
        "one outcome for the batch, one for the next job: {got:?}"
    );
    let o = got.iter().find(|o| o["id"] == "c-batch").unwrap();
    assert_eq!(o["status"], "rejected", "{o}");
    assert_eq!(o["reason"], "unknown_template", "{o}");
    assert_eq!(o["type"], "subscribe", "{o}");
    assert!(o["touser"].is_null(), "{o}");
    assert_eq!(h.mock.state.stats().send_requests, 1);
    h.cleanup().await;
}

/// Without a catalogue (the endpoint refuses, as for an account without the permission) jobs
/// are sent unchecked and a metric counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_catalogue_sends_go_on_unchecked_and_are_counted() {
    let h = Harness::start(Opts::default()).await;
    let mut any = job("u-1", "u1");
    any["template_id"] = json!("ANYTHING");
    h.publish(&any).await;
    let got = h.outcomes(1, WAIT).await;
    assert_eq!(got[0]["status"], "sent", "{got:?}");
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("wxdispatch_catalogue_unchecked_total{{appid=\"{APPID}\"}}")
        ),
        1.0,
        "{m}"
    );
    h.cleanup().await;
}

/// 40037 (invalid template_id) from WeChat means the catalogue may be stale: the next send
/// fetches it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40037_refreshes_the_catalogue() {
    let h = Harness::start(Opts {
        behaviour: with_catalogue(),
        ..Default::default()
    })
    .await;
    let mut good = job("r-1", "fail:40037");
    good["data"]["Money"] = json!({"value": "1"});
    h.publish(&good).await;
    assert_eq!(
        h.outcomes(1, WAIT).await[0]["reason"],
        "invalid_template_id"
    );
    assert_eq!(h.mock.state.stats().catalogue_calls, 1);
    good["id"] = json!("r-2");
    good["touser"] = json!("u2");
    h.publish(&good).await;
    assert_eq!(h.outcomes(1, WAIT).await[0]["status"], "sent");
    assert_eq!(h.mock.state.stats().catalogue_calls, 2, "fetched again");
    h.cleanup().await;
}

/// The simulator pushes what WeChat pushes around subscription notifications: the result of a
/// bizsend (`subscribe_msg_sent_event`, with the send's msgid) and, on request, a user's
/// consent answer (`subscribe_msg_popup_event` / `subscribe_msg_change_event`), signed like
/// every push. A capture server stands in for the worker's callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_pushes_sent_and_consent_events() {
    use std::sync::{Arc, Mutex};
    use wxdispatch::account::token::TokenSource;
    use wxdispatch::config::Secret;
    use wxdispatch::job::MsgType;
    use wxdispatch::tools::mock::{MockConfig, MockServer, push::PushTarget};
    use wxdispatch::wechat::{Ask, WechatClient};

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = seen.clone();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move |body: String| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body);
                "success"
            }
        }),
    );
    let stop = wxdispatch::shutdown::Shutdown::new();
    let (cb, _) = wxdispatch::http::serve("127.0.0.1:0", app, stop.clone())
        .await
        .unwrap();
    let mock = MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            accounts: vec![(APPID.into(), SECRET.into())],
            push: Some(PushTarget {
                url: format!("http://{cb}/cb"),
                token: "tok".into(),
                aes_key: None,
                delay_ms: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = WechatClient::new(&mock.base_url(), Duration::from_secs(2));
    let token = TokenSource::Stable {
        secret: Secret::new(SECRET),
    }
    .fetch(&client, APPID, Ask::Current)
    .await
    .unwrap()
    .access_token
    .unwrap();
    let body = json!({"touser": "o-sub", "template_id": "SUBTPL0001",
        "data": {"thing1": {"value": "x"}}});
    let reply = client
        .send(
            MsgType::Subscribe,
            &Secret::new(token),
            body.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(reply.errcode, 0);
    let msgid = reply.msgid.expect("bizsend answers with a msgid");
    let consent = reqwest::Client::new()
        .post(format!("{}/mock/consent", mock.base_url()))
        .header("content-type", "application/json")
        .body(
            json!({"appid": APPID, "touser": "o-sub", "event": "popup",
                "template_id": "SUBTPL0001", "accept": false})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), 202);
    eventually("both events acknowledged", WAIT, || async {
        mock.state.stats().events_acknowledged == 2
    })
    .await;
    let got = seen.lock().unwrap().clone();
    let sent = got
        .iter()
        .find(|x| x.contains("subscribe_msg_sent_event"))
        .expect("a sent event");
    assert!(sent.contains(&format!("<MsgID>{msgid}</MsgID>")), "{sent}");
    assert!(sent.contains("<ErrorStatus><![CDATA[success]]>"), "{sent}");
    assert!(sent.contains("<FromUserName><![CDATA[o-sub]]>"), "{sent}");
    let popup = got
        .iter()
        .find(|x| x.contains("subscribe_msg_popup_event"))
        .expect("a consent event");
    assert!(
        popup.contains("<TemplateId><![CDATA[SUBTPL0001]]>")
            && popup.contains("<SubscribeStatusString><![CDATA[reject]]>"),
        "{popup}"
    );
    assert_eq!(mock.state.stats().receipts_pushed, 0, "no template receipt");
    stop.trigger();
}
