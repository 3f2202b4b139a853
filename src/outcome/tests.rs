use super::*;

fn job(id: Option<&str>, appid: Option<&str>, touser: Option<&str>) -> JobIdentity {
    JobIdentity {
        id: id.map(Into::into),
        appid: appid.map(Into::into),
        touser: touser.map(Into::into),
        msg_type: None,
    }
}

fn json(o: &Outcome) -> serde_json::Value {
    serde_json::from_slice(&o.to_json()).unwrap()
}

#[test]
fn serializes_as_the_contract_shows() {
    let mut o = Outcome::for_job(
        SendStatus::Sent,
        job(
            Some("order-7781-paid"),
            Some("wx0123456789abcdef"),
            Some("OPENID"),
        ),
    );
    o.errcode = Some(0);
    o.errmsg = Some("ok".into());
    o.msgid = Some(3_000_000_000);
    o.attempts = 1;
    let v = json(&o);
    assert_eq!(v["kind"], "send");
    assert_eq!(v["status"], "sent");
    assert_eq!(v["msgid"], 3_000_000_000i64, "msgid is an i64");
    assert_eq!(v["msgid_str"], "3000000000");
    assert_eq!(v["reason"], serde_json::Value::Null);
    let at = v["finished_at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.contains('.'), "{at}");
    assert_eq!(o.routing_key(), "send.sent");
}

/// The JSON keeps its field order and every key, whatever the constructor: consumers
/// that compare bytes or schemas see the same document as before the typed status.
#[test]
fn send_outcomes_keep_their_exact_keys_in_order() {
    let mut o = Outcome::for_job(
        SendStatus::Rejected,
        JobIdentity {
            msg_type: Some(MsgType::Template),
            ..job(Some("j"), Some("wxa"), Some("U"))
        },
    );
    o.reason = Some("template_not_found".into());
    let text = String::from_utf8(o.to_json()).unwrap();
    let at = text.find(r#","finished_at""#).unwrap();
    assert_eq!(
        &text[..at],
        r#"{"kind":"send","id":"j","appid":"wxa","touser":"U","type":"template","status":"rejected","errcode":null,"errmsg":null,"msgid":null,"msgid_str":null,"attempts":0,"reason":"template_not_found""#
    );
    assert!(text.ends_with(r#"Z"}"#), "{text}");
    assert_eq!(o.kind(), Kind::Send);
    assert_eq!(o.send_status(), Some(SendStatus::Rejected));
    assert_eq!(o.routing_key(), "send.rejected");
}

#[test]
fn every_send_status_serializes_as_its_word() {
    for s in SendStatus::ALL {
        let o = Outcome::for_job(s, JobIdentity::default());
        assert_eq!(json(&o)["status"], s.as_str());
        assert_eq!(o.routing_key(), format!("send.{}", s.as_str()));
        assert_eq!(
            SendStatus::ALL[s as usize],
            s,
            "ALL is in declaration order"
        );
    }
}

/// Every copy of one job's outcome carries the same message_id, whatever its attempts or
/// time; different recipients and receipts get different ones.
#[test]
fn message_ids_are_stable_per_job_and_recipient() {
    let out = |touser: &str, attempts: u32| {
        let mut o = Outcome::for_job(
            SendStatus::Sent,
            job(Some("order-1"), Some("wxa"), Some(touser)),
        );
        o.attempts = attempts;
        o
    };
    assert_eq!(out("U1", 1).message_id(), "send:wxa:order-1:U1");
    assert_eq!(out("U1", 1).message_id(), out("U1", 3).message_id());
    assert_ne!(out("U1", 1).message_id(), out("U2", 1).message_id());
    let r = Outcome::receipt(receipt(ReceiptStatus::Delivered));
    assert_eq!(r.message_id(), "receipt:wxa:42:U1:delivered");
}

fn receipt(status: ReceiptStatus) -> Receipt {
    Receipt {
        appid: Some("wxa".into()),
        touser: "U1".into(),
        msgid: Some(42),
        status,
        errcode: None,
        errmsg: Some("success".into()),
        template_id: None,
    }
}

/// A template message's receipt: kind, status word, msgid and WeChat's raw status; no
/// job id, type, attempts or subscription fields.
#[test]
fn receipts_carry_msgid_and_wechat_status_and_no_job_fields() {
    let o = Outcome::receipt(receipt(ReceiptStatus::Blocked));
    let v = json(&o);
    assert_eq!(v["kind"], "receipt");
    assert_eq!(v["status"], "blocked");
    assert_eq!(v["touser"], "U1");
    assert_eq!(v["appid"], "wxa");
    assert_eq!(v["msgid"], 42);
    assert_eq!(v["errmsg"], "success");
    assert_eq!(v["id"], serde_json::Value::Null);
    assert_eq!(v["attempts"], 0);
    for absent in ["type", "template_id", "source", "event_time"] {
        assert!(v.get(absent).is_none(), "receipt has {absent}: {v}");
    }
    assert_eq!(o.kind(), Kind::Receipt);
    assert_eq!(o.send_status(), None);
    assert_eq!(o.routing_key(), "receipt.blocked");
}

/// A subscription message's receipt names its template, and no consent source or time.
#[test]
fn subscription_receipts_name_their_template() {
    let o = Outcome::receipt(Receipt {
        errcode: Some(0),
        template_id: Some("TPL".into()),
        ..receipt(ReceiptStatus::Delivered)
    });
    let v = json(&o);
    assert_eq!(v["template_id"], "TPL");
    assert_eq!(v["errcode"], 0);
    assert!(
        v.get("source").is_none() && v.get("event_time").is_none(),
        "{v}"
    );
}

/// A consent carries the contract's `touser`, `template_id`, `status` and `source`; send
/// outcomes do not grow those fields; each consent event has its own message_id, so
/// accept, reject, accept again are three messages, not one.
#[test]
fn consents_serialize_with_template_and_source_and_sends_keep_their_shape() {
    let send = Outcome::for_job(SendStatus::Sent, job(Some("j"), None, Some("U")));
    let v = json(&send);
    for absent in ["template_id", "source", "event_time"] {
        assert!(v.get(absent).is_none(), "send outcome has {absent}: {v}");
    }
    let consent = |status: ConsentStatus, at: i64| {
        Outcome::consent(Consent {
            appid: Some("wxa".into()),
            touser: "U".into(),
            template_id: "TPL".into(),
            status,
            source: "popup".into(),
            event_time: at,
        })
    };
    let c = consent(ConsentStatus::Accept, 1_610_969_440);
    let v = json(&c);
    assert_eq!(v["kind"], "consent");
    assert_eq!(v["touser"], "U");
    assert_eq!(v["template_id"], "TPL");
    assert_eq!(v["status"], "accept");
    assert_eq!(v["source"], "popup");
    assert_eq!(v["event_time"], 1_610_969_440);
    assert_eq!(v["msgid"], serde_json::Value::Null);
    assert_eq!(c.routing_key(), "consent.accept");
    assert_eq!(c.message_id(), "consent:wxa:U:TPL:1610969440:popup:accept");
    assert_ne!(
        c.message_id(),
        consent(ConsentStatus::Accept, 1_610_969_500).message_id()
    );
    let r = consent(ConsentStatus::Reject, 1_610_969_440);
    assert_eq!(json(&r)["status"], "reject");
    assert_eq!(r.kind(), Kind::Consent);
}

/// A 19-digit msgid is past 2^53, where JavaScript's `JSON.parse` loses digits: the
/// number stays exact for other parsers, and `msgid_str` carries it for JavaScript.
#[test]
fn a_19_digit_msgid_is_also_written_as_a_string() {
    let job = JobIdentity {
        id: Some("j".into()),
        touser: Some("U".into()),
        ..JobIdentity::default()
    };
    let mut o = Outcome::for_job(SendStatus::Sent, job);
    o.msgid = Some(3_662_956_322_040_938_501);
    let text = String::from_utf8(o.to_json()).unwrap();
    assert!(
        text.contains(r#""msgid":3662956322040938501,"msgid_str":"3662956322040938501""#),
        "{text}"
    );
    let lossy = 3_662_956_322_040_938_501_i64 as f64;
    assert_ne!(
        lossy as i64, 3_662_956_322_040_938_501,
        "a double cannot hold it"
    );
    o.msgid = None;
    let v: serde_json::Value = serde_json::from_slice(&o.to_json()).unwrap();
    assert!(v["msgid"].is_null() && v["msgid_str"].is_null(), "{v}");
}

#[test]
fn routing_keys_stay_single_words_for_verbatim_statuses() {
    let o = Outcome::receipt(receipt(ReceiptStatus::from_wechat("failed: weird.status")));
    assert_eq!(o.routing_key(), "receipt.failed__weird_status");
    assert_eq!(json(&o)["status"], "failed: weird.status");
}

#[test]
fn wechat_words_map_to_statuses_and_unknown_ones_stay_verbatim() {
    assert_eq!(
        ReceiptStatus::from_wechat(" success "),
        ReceiptStatus::Delivered
    );
    assert_eq!(
        ReceiptStatus::from_wechat("failed:user block"),
        ReceiptStatus::Blocked
    );
    let odd = ReceiptStatus::from_wechat("failed: new");
    assert_eq!((odd.as_str(), odd.label()), ("failed: new", "other"));
    assert_eq!(ConsentStatus::from_wechat(" accept"), ConsentStatus::Accept);
    let odd = ConsentStatus::from_wechat(" maybe ");
    assert_eq!((odd.as_str(), odd.label()), (" maybe ", "other"));
}
