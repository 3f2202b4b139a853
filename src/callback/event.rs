//! The messages WeChat pushes to the callback URL, and what a body turns out to be.
//!
//! [`parse`] reads a body with the safe reader of [`super::xml`] and interprets its fields as
//! an [`Inbound`]: a safe-mode envelope, an event (such as a template receipt), a
//! subscription event (consents and subscription delivery results) or a user message.

use super::xml::{DEFAULT_MAX_XML_BYTES, Fields, XmlError, check_size, parse_fields};
use crate::outcome::{ConsentStatus, ReceiptStatus};

/// The `Event` value of a template message delivery receipt.
pub const TEMPLATE_SEND_JOB_FINISH: &str = "TEMPLATESENDJOBFINISH";

/// What a callback body turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A safe-mode envelope. Verify `msg_signature` over `encrypt`, decrypt
    /// it, then parse the inner XML with [`parse`].
    ///
    /// In WeChat's "compatible" mode the envelope also carries plaintext
    /// fields; the encrypted form wins so the signature check is not skipped.
    Encrypted {
        /// The official account's original id (`gh_...`), if present.
        to_user: Option<String>,
        /// The base64 ciphertext.
        encrypt: String,
    },
    /// An event push (`MsgType` = `event`), such as a delivery receipt.
    Event(Event),
    /// A user message (text, image, ...). The worker only acknowledges these,
    /// so just the type is kept; use [`parse_fields`] for the rest.
    Message {
        /// The `MsgType` value, e.g. `text`.
        msg_type: String,
    },
    /// A subscription-notification event: the user's consent (pop-up or
    /// settings) or the delivery result of a subscription notification.
    Subscription(SubscriptionEvent),
}

/// Which of WeChat's three subscription events a push is.
///
/// The shapes follow WeChat's Official Account "subscription notifications"
/// documentation (developers.weixin.qq.com/doc/offiaccount/Subscription_Messages/api.html)
/// as public SDKs parse it; samples are in `tests/fixtures/subscription/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    /// `subscribe_msg_popup_event`: the user accepted or rejected in the pop-up.
    Popup,
    /// `subscribe_msg_change_event`: the user changed it in the settings page.
    Change,
    /// `subscribe_msg_sent_event`: the delivery result of a `bizsend` notification.
    Sent,
}

impl SubscriptionKind {
    /// Every kind, for matching an `Event` value.
    pub const ALL: [SubscriptionKind; 3] = [
        SubscriptionKind::Popup,
        SubscriptionKind::Change,
        SubscriptionKind::Sent,
    ];

    /// The `Event` value WeChat sends.
    pub fn event_name(self) -> &'static str {
        match self {
            SubscriptionKind::Popup => "subscribe_msg_popup_event",
            SubscriptionKind::Change => "subscribe_msg_change_event",
            SubscriptionKind::Sent => "subscribe_msg_sent_event",
        }
    }

    /// The element that holds the event's `<List>` items.
    pub fn container(self) -> &'static str {
        match self {
            SubscriptionKind::Popup => "SubscribeMsgPopupEvent",
            SubscriptionKind::Change => "SubscribeMsgChangeEvent",
            SubscriptionKind::Sent => "SubscribeMsgSentEvent",
        }
    }

    /// The contract's consent `source`: `popup` or `settings`; `None` for the sent event,
    /// which is a delivery result, not a consent.
    pub fn source(self) -> Option<&'static str> {
        match self {
            SubscriptionKind::Popup => Some("popup"),
            SubscriptionKind::Change => Some("settings"),
            SubscriptionKind::Sent => None,
        }
    }

    fn from_event(event: &str) -> Option<SubscriptionKind> {
        Self::ALL.into_iter().find(|k| k.event_name() == event)
    }
}

/// A subscription event: the common header plus one item per template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEvent {
    /// The official account's original id (`gh_...`).
    pub to_user: String,
    /// The user's openid.
    pub from_user: String,
    /// Unix timestamp (seconds) of the event.
    pub create_time: i64,
    /// Which event it is.
    pub kind: SubscriptionKind,
    /// One entry per `<List>`; never empty (an event about no template is refused).
    pub items: Vec<SubscriptionItem>,
}

/// One `<List>` item of a subscription event. Consent events fill `status` (and the pop-up
/// `popup_scene`); the sent event fills `msg_id`, `error_code` and `error_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionItem {
    /// `TemplateId`.
    pub template_id: String,
    /// `SubscribeStatusString`, verbatim (`accept` / `reject`).
    pub status: Option<String>,
    /// `PopupScene` of the pop-up event, verbatim (WeChat documents it as a small number
    /// naming where the pop-up was shown).
    pub popup_scene: Option<String>,
    /// `MsgID` of the sent event: the id `bizsend` returned.
    pub msg_id: Option<i64>,
    /// `ErrorCode` of the sent event: 0 on success.
    pub error_code: Option<i64>,
    /// `ErrorStatus` of the sent event, verbatim (`success`, `failed:user block`, ...).
    pub error_status: Option<String>,
}

/// WeChat's error code for "the user refuses this account's messages".
pub const USER_REFUSED: i64 = 43101;

impl SubscriptionItem {
    /// The consent of a pop-up or change item: `accept`, `reject`, or the raw value, kept
    /// verbatim so a new value shows up instead of vanishing.
    pub fn consent_status(&self) -> ConsentStatus {
        ConsentStatus::from_wechat(self.status.as_deref().unwrap_or(""))
    }

    /// The delivery result of a sent item. `ErrorCode` decides when present (0 delivered,
    /// 43101 blocked); `ErrorStatus` otherwise (`success`, or a `user block` status). Every
    /// other failure is `undelivered`: the message did not reach the user, for a reason the
    /// raw code and status in the receipt tell.
    pub fn receipt_status(&self) -> ReceiptStatus {
        let status = self.error_status.as_deref().unwrap_or("").trim();
        match self.error_code {
            Some(0) => ReceiptStatus::Delivered,
            Some(USER_REFUSED) => ReceiptStatus::Blocked,
            Some(_) => ReceiptStatus::Undelivered,
            None if status == "success" => ReceiptStatus::Delivered,
            None if status.contains("user block") => ReceiptStatus::Blocked,
            None => ReceiptStatus::Undelivered,
        }
    }
}

/// An event push from WeChat.
///
/// The common header fields are required; `MsgID` and `Status` are only
/// present on some events (notably [`TEMPLATE_SEND_JOB_FINISH`]), hence
/// optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The official account's original id (`gh_...`).
    pub to_user: String,
    /// The user's openid.
    pub from_user: String,
    /// Unix timestamp (seconds) of the event.
    pub create_time: i64,
    /// Always `event` for events; kept for logging.
    pub msg_type: String,
    /// The event kind, e.g. `TEMPLATESENDJOBFINISH`.
    pub event: String,
    /// `MsgID` (or `MsgId`): for template receipts, the id returned when the
    /// message was sent, which is how we find the job it belongs to.
    pub msg_id: Option<i64>,
    /// `Status` of a template receipt, verbatim.
    pub status: Option<String>,
}

impl Event {
    /// True for template message delivery receipts.
    pub fn is_template_send_job_finish(&self) -> bool {
        self.event == TEMPLATE_SEND_JOB_FINISH
    }

    /// The delivery outcome, if this event carries a `Status`.
    pub fn receipt_status(&self) -> Option<ReceiptStatus> {
        self.status.as_deref().map(ReceiptStatus::from_wechat)
    }
}

/// Parses a callback body with the [default size limit](DEFAULT_MAX_XML_BYTES).
pub fn parse(xml: &str) -> Result<Inbound, XmlError> {
    parse_with_limit(xml, DEFAULT_MAX_XML_BYTES)
}

/// Parses a callback body, refusing bodies over `limit` bytes.
pub fn parse_with_limit(xml: &str, limit: usize) -> Result<Inbound, XmlError> {
    interpret(&parse_fields(xml, limit)?)
}

/// Parses a raw HTTP body: size first, then UTF-8, then XML.
///
/// Checking the size before decoding means an oversized body costs nothing
/// beyond reading its length.
pub fn parse_bytes(body: &[u8], limit: usize) -> Result<Inbound, XmlError> {
    check_size(body.len(), limit)?;
    let xml = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    parse_with_limit(xml, limit)
}

fn interpret(fields: &Fields) -> Result<Inbound, XmlError> {
    if let Some(encrypt) = fields.get("Encrypt") {
        return Ok(Inbound::Encrypted {
            to_user: fields.get("ToUserName").map(str::to_owned),
            encrypt: encrypt.to_owned(),
        });
    }
    let msg_type = fields.require("MsgType")?;
    if msg_type != "event" {
        return Ok(Inbound::Message {
            msg_type: msg_type.to_owned(),
        });
    }
    let create_time = fields
        .number("CreateTime")?
        .ok_or(XmlError::MissingField("CreateTime"))?;
    let event = fields.require("Event")?;
    if let Some(kind) = SubscriptionKind::from_event(event) {
        return Ok(Inbound::Subscription(SubscriptionEvent {
            to_user: fields.require("ToUserName")?.to_owned(),
            from_user: fields.require("FromUserName")?.to_owned(),
            create_time,
            kind,
            items: subscription_items(fields, kind)?,
        }));
    }
    // Template receipts spell it `MsgID`; other pushes use `MsgId`.
    let msg_id = match fields.number("MsgID")? {
        Some(id) => Some(id),
        None => fields.number("MsgId")?,
    };
    Ok(Inbound::Event(Event {
        to_user: fields.require("ToUserName")?.to_owned(),
        from_user: fields.require("FromUserName")?.to_owned(),
        create_time,
        msg_type: msg_type.to_owned(),
        event: event.to_owned(),
        msg_id,
        status: fields.get("Status").map(str::to_owned),
    }))
}

/// The items of a subscription event: every `<List>` in the event's container, each with the
/// fields its kind needs. An item missing one is refused rather than published half-known, and
/// so is an event with no item at all: either would be a consent or receipt silently lost.
fn subscription_items(
    fields: &Fields,
    kind: SubscriptionKind,
) -> Result<Vec<SubscriptionItem>, XmlError> {
    let mut out = Vec::new();
    for item in fields
        .items()
        .iter()
        .filter(|i| i.container == kind.container() && i.name == "List")
    {
        let template_id = item.require("TemplateId")?.to_owned();
        let parsed = match kind {
            SubscriptionKind::Popup | SubscriptionKind::Change => SubscriptionItem {
                template_id,
                status: Some(item.require("SubscribeStatusString")?.to_owned()),
                popup_scene: item.get("PopupScene").map(str::to_owned),
                msg_id: None,
                error_code: None,
                error_status: None,
            },
            SubscriptionKind::Sent => {
                let msg_id = match item.number("MsgID")? {
                    Some(id) => id,
                    None => item
                        .number("MsgId")?
                        .ok_or(XmlError::MissingField("MsgID"))?,
                };
                let error_code = item.number("ErrorCode")?;
                let error_status = item.get("ErrorStatus").map(str::to_owned);
                if error_code.is_none() && error_status.is_none() {
                    return Err(XmlError::MissingField("ErrorCode"));
                }
                SubscriptionItem {
                    template_id,
                    status: None,
                    popup_scene: None,
                    msg_id: Some(msg_id),
                    error_code,
                    error_status,
                }
            }
        };
        out.push(parsed);
    }
    if out.is_empty() {
        return Err(XmlError::MissingField("List"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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

    fn expect_event(xml: &str) -> Event {
        match parse(xml) {
            Ok(Inbound::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
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
    fn user_block_receipt_parses_to_blocked() {
        let e = expect_event(&receipt("failed:user block", "200163840"));
        assert_eq!(e.msg_id, Some(200163840));
        assert_eq!(e.receipt_status(), Some(ReceiptStatus::Blocked));
        assert_eq!(e.receipt_status().unwrap().as_str(), "blocked");
    }

    #[test]
    fn system_failed_receipt_parses_to_undelivered() {
        let e = expect_event(&receipt("failed: system failed", "200163836"));
        assert_eq!(e.msg_id, Some(200163836));
        assert_eq!(e.receipt_status(), Some(ReceiptStatus::Undelivered));
        assert_eq!(e.receipt_status().unwrap().to_string(), "undelivered");
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
        match parse(xml) {
            Ok(Inbound::Subscription(e)) => e,
            other => panic!("expected a subscription event, got {other:?}"),
        }
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
}
