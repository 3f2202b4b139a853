use super::*;
use crate::callback::xml::MAX_SUBSCRIPTION_ITEMS;
use proptest::prelude::*;

fn receipt(status: &str, msg_id: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>\
             <FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>\
             <CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msg_id}</MsgID>\
             <Status><![CDATA[{status}]]></Status></xml>"
    )
}

/// What `xml` parses to, picked by `pick`; any other parse fails the test, naming `what`.
fn expect_inbound<T>(xml: &str, what: &str, pick: impl FnOnce(&Inbound) -> Option<T>) -> T {
    let parsed = parse(xml);
    parsed
        .as_ref()
        .ok()
        .and_then(pick)
        .unwrap_or_else(|| panic!("expected {what}, got {parsed:?}"))
}

fn expect_event(xml: &str) -> Event {
    expect_inbound(xml, "an event", |i| match i {
        Inbound::Event(e) => Some(e.clone()),
        _ => None,
    })
}

#[test]
fn success_receipt_parses_to_delivered_with_msg_id() {
    let e = expect_event(&receipt("success", "200163836"));
    assert_eq!(e.to_user, "gh_7f083739789a");
    assert_eq!(e.from_user, "oia2TjuEGTNoeX76QEjQNrcURxG8");
    assert_eq!(e.create_time, 1395658920);
    assert_eq!(e.msg_type, "event");
    assert_eq!(e.event, "TEMPLATESENDJOBFINISH");
    assert!(e.is_template_send_job_finish());
    assert_eq!(e.msg_id, Some(200163836));
    assert_eq!(e.status.as_deref(), Some("success"));
    assert_eq!(e.receipt_status(), Some(ReceiptStatus::Delivered));
    assert_eq!(e.receipt_status().unwrap().as_str(), "delivered");
}

#[test]
fn failed_receipts_parse_to_blocked_and_undelivered() {
    for (status, msgid, want, word) in [
        (
            "failed:user block",
            "200163840",
            ReceiptStatus::Blocked,
            "blocked",
        ),
        (
            "failed: system failed",
            "200163836",
            ReceiptStatus::Undelivered,
            "undelivered",
        ),
    ] {
        let e = expect_event(&receipt(status, msgid));
        assert_eq!(e.msg_id, Some(msgid.parse().unwrap()));
        assert_eq!(e.receipt_status(), Some(want));
        assert_eq!(e.receipt_status().unwrap().as_str(), word);
        assert_eq!(e.receipt_status().unwrap().to_string(), word);
    }
}

#[test]
fn unknown_status_is_kept_verbatim() {
    let s = ReceiptStatus::from_wechat("failed: something new");
    assert_eq!(s, ReceiptStatus::Other("failed: something new".into()));
    assert_eq!(s.as_str(), "failed: something new");
    // Near-misses are not silently mapped.
    assert_eq!(
        ReceiptStatus::from_wechat("failed:system failed").as_str(),
        "failed:system failed"
    );
}

#[test]
fn documented_sample_without_whitespace_parses() {
    let xml = "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName><CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>200163836</MsgID><Status><![CDATA[success]]></Status></xml>";
    let e = expect_event(xml);
    assert_eq!(e.msg_id, Some(200163836));
    assert_eq!(e.receipt_status(), Some(ReceiptStatus::Delivered));
}

#[test]
fn pretty_printed_document_with_declaration_and_comments_parses() {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- hi -->\n<xml>\n  \
                   <ToUserName>gh_1</ToUserName>\n  <FromUserName>o1</FromUserName>\n  \
                   <CreateTime> 17 </CreateTime>\n  <MsgType>event</MsgType>\n  \
                   <Event>subscribe</Event>\n</xml>\n";
    let e = expect_event(xml);
    assert_eq!(e.create_time, 17);
    assert_eq!(e.event, "subscribe");
    assert_eq!(e.msg_id, None);
    assert_eq!(e.receipt_status(), None);
}

#[test]
fn byte_order_mark_before_declaration_is_accepted() {
    let xml = "\u{feff}<?xml version=\"1.0\"?><xml><MsgType>text</MsgType></xml>";
    assert_eq!(
        parse(xml).unwrap(),
        Inbound::Message {
            msg_type: "text".into()
        }
    );
}

#[test]
fn lowercase_d_msg_id_is_accepted_too() {
    let xml = "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>\
                   <CreateTime>1</CreateTime><MsgType>event</MsgType><Event>X</Event>\
                   <MsgId>42</MsgId></xml>";
    assert_eq!(expect_event(xml).msg_id, Some(42));
}

#[test]
fn encrypted_envelope_parses_to_encrypted() {
    let xml = "<xml><ToUserName><![CDATA[gh_x]]></ToUserName>\
                   <Encrypt><![CDATA[AAAA+/==]]></Encrypt></xml>";
    assert_eq!(
        parse(xml).unwrap(),
        Inbound::Encrypted {
            to_user: Some("gh_x".into()),
            encrypt: "AAAA+/==".into()
        }
    );
}

#[test]
fn user_message_parses_to_message_and_fields_stay_readable() {
    let xml = "<xml><ToUserName>gh</ToUserName><MsgType><![CDATA[text]]></MsgType>\
                   <Content><![CDATA[a]]>&amp;<![CDATA[b]]></Content></xml>";
    assert_eq!(
        parse(xml).unwrap(),
        Inbound::Message {
            msg_type: "text".into()
        }
    );
    let fields = parse_fields(xml, DEFAULT_MAX_XML_BYTES).unwrap();
    assert_eq!(fields.get("Content"), Some("a&b"));
    assert_eq!(fields.len(), 3);
}

#[test]
fn missing_required_fields_are_reported_by_name() {
    assert_eq!(
        parse("<xml/>").unwrap_err(),
        XmlError::MissingField("MsgType")
    );
    let no_event = "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>\
                        <CreateTime>1</CreateTime><MsgType>event</MsgType></xml>";
    assert_eq!(
        parse(no_event).unwrap_err(),
        XmlError::MissingField("Event")
    );
    let no_time = "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>\
                       <MsgType>event</MsgType><Event>X</Event></xml>";
    assert_eq!(
        parse(no_time).unwrap_err(),
        XmlError::MissingField("CreateTime")
    );
}

#[test]
fn non_numeric_numbers_are_rejected() {
    for (time, id, field) in [
        ("abc", "1", "CreateTime"),
        ("1", "12x", "MsgID"),
        ("1", "", "MsgID"),
        ("99999999999999999999", "1", "CreateTime"),
        ("1", "1.5", "MsgID"),
    ] {
        let xml = format!(
            "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>\
                 <CreateTime>{time}</CreateTime><MsgType>event</MsgType><Event>X</Event>\
                 <MsgID>{id}</MsgID></xml>"
        );
        assert_eq!(
            parse(&xml).unwrap_err(),
            XmlError::BadNumber(field),
            "{xml}"
        );
    }
}

#[test]
fn nested_elements_do_not_leak_text_into_fields() {
    let xml = "<xml><MsgType>event</MsgType><Info>a<Item>b</Item>c<Empty/></Info></xml>";
    let fields = parse_fields(xml, DEFAULT_MAX_XML_BYTES).unwrap();
    assert_eq!(fields.get("Info"), Some("ac"));
    assert_eq!(fields.get("Item"), None);
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/subscription/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn expect_subscription(xml: &str) -> SubscriptionEvent {
    expect_inbound(xml, "a subscription event", |i| match i {
        Inbound::Subscription(e) => Some(e.clone()),
        _ => None,
    })
}

#[test]
fn popup_event_sample_lists_every_template_with_its_choice() {
    let e = expect_subscription(&fixture("popup_event.xml"));
    assert_eq!(e.kind, SubscriptionKind::Popup);
    assert_eq!(e.to_user, "gh_123456789abc");
    assert_eq!(e.from_user, "otFpruAK8D-E6EfStSYonYSBZ8_4");
    assert_eq!(e.create_time, 1610969440);
    let got: Vec<_> = e
        .items
        .iter()
        .map(|i| {
            (
                i.template_id.as_str(),
                i.consent_status().label(),
                i.popup_scene.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc",
                "accept",
                Some("2")
            ),
            (
                "9nLIlbOQZC5Y89AZteFEux3WCXRRRG5Wfzkpssu4bLI",
                "reject",
                Some("2")
            ),
        ]
    );
    assert_eq!(e.kind.source(), Some("popup"));
}

#[test]
fn change_event_sample_is_a_settings_consent() {
    let e = expect_subscription(&fixture("change_event.xml"));
    assert_eq!(e.kind, SubscriptionKind::Change);
    assert_eq!(e.kind.source(), Some("settings"));
    assert_eq!(e.items.len(), 1);
    assert_eq!(e.items[0].consent_status().as_str(), "reject");
    assert_eq!(e.items[0].popup_scene, None);
}

#[test]
fn sent_event_sample_is_a_delivered_receipt_with_its_msgid() {
    let e = expect_subscription(&fixture("sent_event.xml"));
    assert_eq!(e.kind, SubscriptionKind::Sent);
    assert_eq!(e.kind.source(), None);
    let item = &e.items[0];
    assert_eq!(item.msg_id, Some(1700827132819554304));
    assert_eq!(item.error_code, Some(0));
    assert_eq!(item.receipt_status(), ReceiptStatus::Delivered);
}

#[test]
fn sent_results_map_to_delivered_blocked_or_undelivered() {
    let item = |code: Option<i64>, status: Option<&str>| SubscriptionItem {
        template_id: "t".into(),
        status: None,
        popup_scene: None,
        msg_id: Some(1),
        error_code: code,
        error_status: status.map(str::to_owned),
    };
    for (code, status, want) in [
        (Some(0), Some("success"), ReceiptStatus::Delivered),
        (None, Some("success"), ReceiptStatus::Delivered),
        (
            Some(43101),
            Some("failed:user block"),
            ReceiptStatus::Blocked,
        ),
        (None, Some("failed:user block"), ReceiptStatus::Blocked),
        (Some(43101), None, ReceiptStatus::Blocked),
        (
            Some(-1),
            Some("failed:system failed"),
            ReceiptStatus::Undelivered,
        ),
        (
            None,
            Some("failed: system failed"),
            ReceiptStatus::Undelivered,
        ),
        (Some(47003), Some("whatever"), ReceiptStatus::Undelivered),
    ] {
        assert_eq!(
            item(code, status).receipt_status(),
            want,
            "{code:?} {status:?}"
        );
    }
}

#[test]
fn a_subscription_item_missing_a_field_refuses_the_whole_event() {
    let head = "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName>\
                    <CreateTime>1</CreateTime><MsgType>event</MsgType>";
    for (body, want) in [
        (
            "<Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent>\
                 <List><SubscribeStatusString>accept</SubscribeStatusString></List>\
                 </SubscribeMsgPopupEvent>",
            XmlError::MissingField("TemplateId"),
        ),
        (
            "<Event>subscribe_msg_change_event</Event><SubscribeMsgChangeEvent>\
                 <List><TemplateId>t</TemplateId></List></SubscribeMsgChangeEvent>",
            XmlError::MissingField("SubscribeStatusString"),
        ),
        (
            "<Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent>\
                 <List><TemplateId>t</TemplateId><ErrorCode>0</ErrorCode></List>\
                 </SubscribeMsgSentEvent>",
            XmlError::MissingField("MsgID"),
        ),
        (
            "<Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent>\
                 <List><TemplateId>t</TemplateId><MsgID>x</MsgID><ErrorCode>0</ErrorCode></List>\
                 </SubscribeMsgSentEvent>",
            XmlError::BadNumber("MsgID"),
        ),
        (
            "<Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent>\
                 <List><TemplateId>t</TemplateId><MsgID>1</MsgID></List></SubscribeMsgSentEvent>",
            XmlError::MissingField("ErrorCode"),
        ),
        (
            "<Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent/>",
            XmlError::MissingField("List"),
        ),
        (
            // Items under another element are not this event's.
            "<Event>subscribe_msg_popup_event</Event><SubscribeMsgChangeEvent><List>\
                 <TemplateId>t</TemplateId><SubscribeStatusString>accept</SubscribeStatusString>\
                 </List></SubscribeMsgChangeEvent>",
            XmlError::MissingField("List"),
        ),
        (
            "<Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent><List>\
                 <TemplateId>a</TemplateId><TemplateId>b</TemplateId>\
                 <SubscribeStatusString>accept</SubscribeStatusString></List></SubscribeMsgPopupEvent>",
            XmlError::DuplicateField("TemplateId".into()),
        ),
    ] {
        let xml = format!("{head}{body}</xml>");
        assert_eq!(parse(&xml).unwrap_err(), want, "{xml}");
    }
}

#[test]
fn an_event_with_too_many_items_is_refused() {
    let item = "<List><TemplateId>t</TemplateId>\
                    <SubscribeStatusString>accept</SubscribeStatusString></List>";
    let xml = format!(
        "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName>\
             <CreateTime>1</CreateTime><MsgType>event</MsgType>\
             <Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent>{}\
             </SubscribeMsgPopupEvent></xml>",
        item.repeat(MAX_SUBSCRIPTION_ITEMS + 1)
    );
    assert_eq!(
        parse(&xml).unwrap_err(),
        XmlError::TooManyItems(MAX_SUBSCRIPTION_ITEMS)
    );
    assert_eq!(parse(&xml).unwrap_err().reason(), "too_many_items");
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_strings(s in ".{0,400}") {
        let _ = parse(&s);
    }

    #[test]
    fn parse_never_panics_on_xml_like_strings(
        s in "(<|>|/|!|\\?|&|;|#|x|[0-9]|\\[|\\]|CDATA|DOCTYPE|xml|MsgType| |=|\"|'|amp|lt)*",
    ) {
        let _ = parse(&s);
    }

    #[test]
    fn parse_bytes_never_panics_on_arbitrary_bytes(
        b in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let _ = parse_bytes(&b, DEFAULT_MAX_XML_BYTES);
    }
}
