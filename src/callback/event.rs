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
    pub(crate) const ALL: [SubscriptionKind; 3] = [
        SubscriptionKind::Popup,
        SubscriptionKind::Change,
        SubscriptionKind::Sent,
    ];

    /// The `Event` value WeChat sends.
    pub(crate) fn event_name(self) -> &'static str {
        match self {
            SubscriptionKind::Popup => "subscribe_msg_popup_event",
            SubscriptionKind::Change => "subscribe_msg_change_event",
            SubscriptionKind::Sent => "subscribe_msg_sent_event",
        }
    }

    /// The element that holds the event's `<List>` items.
    pub(crate) fn container(self) -> &'static str {
        match self {
            SubscriptionKind::Popup => "SubscribeMsgPopupEvent",
            SubscriptionKind::Change => "SubscribeMsgChangeEvent",
            SubscriptionKind::Sent => "SubscribeMsgSentEvent",
        }
    }

    /// The contract's consent `source`: `popup` or `settings`; `None` for the sent event,
    /// which is a delivery result, not a consent.
    pub(crate) fn source(self) -> Option<&'static str> {
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
pub(crate) const USER_REFUSED: i64 = 43101;

impl SubscriptionItem {
    /// The consent of a pop-up or change item: `accept`, `reject`, or the raw value, kept
    /// verbatim so a new value shows up instead of vanishing.
    pub(crate) fn consent_status(&self) -> ConsentStatus {
        ConsentStatus::from_wechat(self.status.as_deref().unwrap_or(""))
    }

    /// The delivery result of a sent item. `ErrorCode` decides when present (0 delivered,
    /// 43101 blocked); `ErrorStatus` otherwise (`success`, or a `user block` status). Every
    /// other failure is `undelivered`: the message did not reach the user, for a reason the
    /// raw code and status in the receipt tell.
    pub(crate) fn receipt_status(&self) -> ReceiptStatus {
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
    pub(crate) fn is_template_send_job_finish(&self) -> bool {
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
#[path = "event_tests.rs"]
mod tests;
