//! Parsing the XML that WeChat pushes to the callback URL.
//!
//! WeChat's callback documents are flat: a root `<xml>` element whose
//! children each hold one value, usually wrapped in CDATA. So parsing happens
//! in two steps. [`parse_fields`] turns the document into a flat list of
//! child-name → text pairs while enforcing the safety rules, and [`parse`]
//! interprets those pairs as an [`Inbound`] message.
//!
//! The body arrives from the network before we know it is genuine (in safe
//! mode the signature covers only the `<Encrypt>` text), so the parser is
//! deliberately strict and small:
//!
//! * bodies over a size limit are refused before any parsing;
//! * any `<!DOCTYPE>` is refused, so entity declarations can never be
//!   defined, let alone expanded;
//! * only the five predefined entities and numeric character references are
//!   resolved, anything else is an error;
//! * malformed documents are errors, and no input makes the parser panic.

use std::borrow::Cow;

use crate::outcome::{ConsentStatus, ReceiptStatus};

use quick_xml::Reader;
use quick_xml::events::{BytesRef, BytesStart, Event as XmlEvent};

/// Default cap on a callback body. Real WeChat pushes are well under 4 KiB;
/// 64 KiB leaves room for unusual events while bounding memory and CPU.
pub const DEFAULT_MAX_XML_BYTES: usize = 64 * 1024;

/// The `Event` value of a template message delivery receipt.
pub const TEMPLATE_SEND_JOB_FINISH: &str = "TEMPLATESENDJOBFINISH";

/// Most `<List>` items one subscription event may carry. A pop-up offers at most a handful of
/// templates; the cap keeps a hostile body from fanning out into thousands of publishes.
pub const MAX_SUBSCRIPTION_ITEMS: usize = 64;

/// Why a callback body was rejected.
///
/// Like [`super::crypto::CryptoError`], each variant has a short
/// [`reason`](XmlError::reason) word for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The body is larger than the allowed limit.
    #[error("XML body is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the rejected body in bytes.
        len: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The body is not valid UTF-8.
    #[error("XML body is not valid UTF-8")]
    NotUtf8,
    /// The body contains a `<!DOCTYPE>` (and so possibly entity declarations).
    #[error("DOCTYPE/DTD declarations are not accepted")]
    Doctype,
    /// A reference to an entity other than the five predefined ones.
    #[error("unknown entity reference &{0};")]
    UnknownEntity(String),
    /// The document is not well-formed XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The root element is not `<xml>`.
    #[error("root element must be <xml>, found <{0}>")]
    UnexpectedRoot(String),
    /// A field appears twice, so its value would be ambiguous.
    #[error("element <{0}> appears more than once")]
    DuplicateField(String),
    /// A field the message type requires is absent.
    #[error("required element <{0}> is missing")]
    MissingField(&'static str),
    /// A numeric field does not hold a 64-bit integer.
    #[error("element <{0}> is not a valid integer")]
    BadNumber(&'static str),
    /// More list items than one event may carry.
    #[error("more than {0} list items")]
    TooManyItems(usize),
}

impl XmlError {
    /// A short machine-readable word for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            XmlError::TooLarge { .. } => "too_large",
            XmlError::NotUtf8 => "not_utf8",
            XmlError::Doctype => "doctype",
            XmlError::UnknownEntity(_) => "unknown_entity",
            XmlError::Malformed(_) => "malformed",
            XmlError::UnexpectedRoot(_) => "unexpected_root",
            XmlError::DuplicateField(_) => "duplicate_field",
            XmlError::MissingField(_) => "missing_field",
            XmlError::BadNumber(_) => "bad_number",
            XmlError::TooManyItems(_) => "too_many_items",
        }
    }
}

/// The top-level children of a callback document, in document order.
///
/// Exposed so callers can read fields this module does not model (for
/// example `Content` of a text message) without parsing the XML twice.
///
/// Subscription events nest one level deeper (`<SubscribeMsgPopupEvent><List>
/// <TemplateId>…</TemplateId></List></SubscribeMsgPopupEvent>`); those
/// grandchildren are kept as [`ListItem`]s, see [`Fields::items`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    fields: Vec<(String, String)>,
    items: Vec<ListItem>,
}

/// One grandchild of the root (such as a `<List>` of a subscription event) and its own
/// children's text, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListItem {
    /// The top-level element it sits in, e.g. `SubscribeMsgPopupEvent`.
    pub container: String,
    /// Its own element name, e.g. `List`.
    pub name: String,
    fields: Vec<(String, String)>,
}

impl ListItem {
    /// The text of the child element `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        lookup(&self.fields, name)
    }

    fn require(&self, name: &'static str) -> Result<&str, XmlError> {
        self.get(name).ok_or(XmlError::MissingField(name))
    }

    fn number(&self, name: &'static str) -> Result<Option<i64>, XmlError> {
        parse_number(self.get(name), name)
    }
}

fn lookup<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_number(value: Option<&str>, name: &'static str) -> Result<Option<i64>, XmlError> {
    value
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| XmlError::BadNumber(name))
        })
        .transpose()
}

impl Fields {
    /// The text of the child element `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        lookup(&self.fields, name)
    }

    /// Iterates over `(name, text)` pairs in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The grandchildren of the root, in document order.
    pub fn items(&self) -> &[ListItem] {
        &self.items
    }

    /// Number of top-level fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when the root element had no children.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    fn require(&self, name: &'static str) -> Result<&str, XmlError> {
        self.get(name).ok_or(XmlError::MissingField(name))
    }

    fn number(&self, name: &'static str) -> Result<Option<i64>, XmlError> {
        parse_number(self.get(name), name)
    }
}

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

impl SubscriptionEvent {
    /// Serializes the event the way WeChat sends it (for the simulator and round-trip
    /// tests); only the fields an item has are written.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<xml>");
        push_cdata_field(&mut out, "ToUserName", &self.to_user);
        push_cdata_field(&mut out, "FromUserName", &self.from_user);
        out.push_str(&format!("<CreateTime>{}</CreateTime>", self.create_time));
        push_cdata_field(&mut out, "MsgType", "event");
        push_cdata_field(&mut out, "Event", self.kind.event_name());
        let container = self.kind.container();
        out.push_str(&format!("<{container}>"));
        for item in &self.items {
            out.push_str("<List>");
            push_cdata_field(&mut out, "TemplateId", &item.template_id);
            if let Some(s) = &item.status {
                push_cdata_field(&mut out, "SubscribeStatusString", s);
            }
            if let Some(s) = &item.popup_scene {
                push_cdata_field(&mut out, "PopupScene", s);
            }
            if let Some(id) = item.msg_id {
                out.push_str(&format!("<MsgID>{id}</MsgID>"));
            }
            if let Some(code) = item.error_code {
                out.push_str(&format!("<ErrorCode>{code}</ErrorCode>"));
            }
            if let Some(s) = &item.error_status {
                push_cdata_field(&mut out, "ErrorStatus", s);
            }
            out.push_str("</List>");
        }
        out.push_str(&format!("</{container}></xml>"));
        out
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

    /// Serializes the event the way WeChat sends it.
    ///
    /// Used by the callback simulator and round-trip tests; text goes in
    /// CDATA sections, split where needed so that `]]>` survives.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<xml>");
        push_cdata_field(&mut out, "ToUserName", &self.to_user);
        push_cdata_field(&mut out, "FromUserName", &self.from_user);
        out.push_str(&format!("<CreateTime>{}</CreateTime>", self.create_time));
        push_cdata_field(&mut out, "MsgType", &self.msg_type);
        push_cdata_field(&mut out, "Event", &self.event);
        if let Some(id) = self.msg_id {
            out.push_str(&format!("<MsgID>{id}</MsgID>"));
        }
        if let Some(status) = &self.status {
            push_cdata_field(&mut out, "Status", status);
        }
        out.push_str("</xml>");
        out
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

/// Reads the top-level children of the root `<xml>` element.
///
/// Each child's value is its own text (text, CDATA and resolved references,
/// concatenated); text of deeper descendants is ignored, though their markup
/// must still be well-formed. Empty elements such as `<MsgID/>` yield "".
pub fn parse_fields(xml: &str, limit: usize) -> Result<Fields, XmlError> {
    check_size(xml.len(), limit)?;

    let mut reader = Reader::from_str(xml);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.allow_dangling_amp = false;
    config.check_comments = true;

    let mut fields: Vec<(String, String)> = Vec::new();
    let mut items: Vec<ListItem> = Vec::new();
    // The depth-2 element whose text is being collected.
    let mut current: Option<(String, String)> = None;
    // The grandchild of the root being read, and the child of it whose text is collected.
    let mut item: Option<ListItem> = None;
    let mut item_field: Option<(String, String)> = None;
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut first_event = true;

    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        let is_first = std::mem::replace(&mut first_event, false);
        match event {
            XmlEvent::DocType(_) => return Err(XmlError::Doctype),
            XmlEvent::Start(start) => {
                check_attributes(&start)?;
                let qname = start.name();
                let name: &str = qname.as_ref();
                match depth {
                    0 => open_root(&mut seen_root, name)?,
                    1 => current = Some((name.to_owned(), String::new())),
                    2 => item = Some(open_item(&current, name, items.len())?),
                    3 => item_field = Some((name.to_owned(), String::new())),
                    _ => {}
                }
                depth += 1;
            }
            XmlEvent::Empty(start) => {
                check_attributes(&start)?;
                let qname = start.name();
                let name: &str = qname.as_ref();
                match depth {
                    0 => open_root(&mut seen_root, name)?,
                    1 => push_field(&mut fields, name.to_owned(), String::new())?,
                    2 => items.push(open_item(&current, name, items.len())?),
                    3 => {
                        if let Some(it) = item.as_mut() {
                            push_field(&mut it.fields, name.to_owned(), String::new())?;
                        }
                    }
                    _ => {}
                }
            }
            XmlEvent::End(_) => {
                // quick-xml has already checked the name matches the open tag.
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| XmlError::Malformed("unmatched end tag".into()))?;
                match depth {
                    1 => {
                        if let Some((name, value)) = current.take() {
                            push_field(&mut fields, name, value)?;
                        }
                    }
                    2 => items.extend(item.take()),
                    3 => {
                        if let (Some(it), Some((name, value))) = (item.as_mut(), item_field.take())
                        {
                            push_field(&mut it.fields, name, value)?;
                        }
                    }
                    _ => {}
                }
            }
            XmlEvent::Text(text) => {
                add_text(depth, &mut current, &mut item_field, &text.xml10_content())?
            }
            XmlEvent::CData(cdata) => {
                if depth == 0 {
                    return Err(XmlError::Malformed("CDATA outside the root element".into()));
                }
                add_text(depth, &mut current, &mut item_field, &cdata.xml10_content())?;
            }
            XmlEvent::GeneralRef(reference) => {
                let ch = resolve_reference(&reference)?;
                let mut buf = [0u8; 4];
                add_text(
                    depth,
                    &mut current,
                    &mut item_field,
                    ch.encode_utf8(&mut buf),
                )?;
            }
            XmlEvent::Decl(_) if !is_first => {
                return Err(XmlError::Malformed(
                    "XML declaration is only allowed at the start".into(),
                ));
            }
            XmlEvent::Comment(_) | XmlEvent::PI(_) | XmlEvent::Decl(_) => {}
            XmlEvent::Eof => break,
        }
    }

    if !seen_root {
        return Err(XmlError::Malformed("no root element".into()));
    }
    if depth != 0 {
        return Err(XmlError::Malformed(
            "unclosed element at end of input".into(),
        ));
    }
    Ok(Fields { fields, items })
}

/// Starts a grandchild of the root inside the top-level element `current`, refusing more
/// than [`MAX_SUBSCRIPTION_ITEMS`] of them so one body cannot fan out without bound.
fn open_item(
    current: &Option<(String, String)>,
    name: &str,
    count: usize,
) -> Result<ListItem, XmlError> {
    if count >= MAX_SUBSCRIPTION_ITEMS {
        return Err(XmlError::TooManyItems(MAX_SUBSCRIPTION_ITEMS));
    }
    Ok(ListItem {
        container: current.as_ref().map(|(n, _)| n.clone()).unwrap_or_default(),
        name: name.to_owned(),
        fields: Vec::new(),
    })
}

/// Builds the safe-mode envelope WeChat POSTs: `ToUserName` plus `Encrypt`.
///
/// For the callback simulator; pair it with
/// [`super::signature::msg_signature`] over the same `encrypt` text.
pub fn encrypted_envelope(to_user: &str, encrypt: &str) -> String {
    let mut out = String::from("<xml>");
    push_cdata_field(&mut out, "ToUserName", to_user);
    push_cdata_field(&mut out, "Encrypt", encrypt);
    out.push_str("</xml>");
    out
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

fn check_size(len: usize, limit: usize) -> Result<(), XmlError> {
    if len > limit {
        Err(XmlError::TooLarge { len, limit })
    } else {
        Ok(())
    }
}

/// Attributes carry nothing we read, but a duplicated or unquoted one still
/// makes the document malformed, so they are walked and checked.
fn check_attributes(start: &BytesStart<'_>) -> Result<(), XmlError> {
    for attr in start.attributes() {
        attr.map_err(|e| XmlError::Malformed(e.to_string()))?;
    }
    Ok(())
}

fn open_root(seen_root: &mut bool, name: &str) -> Result<(), XmlError> {
    if *seen_root {
        return Err(XmlError::Malformed("more than one root element".into()));
    }
    if name != "xml" {
        return Err(XmlError::UnexpectedRoot(name.to_owned()));
    }
    *seen_root = true;
    Ok(())
}

fn push_field(
    fields: &mut Vec<(String, String)>,
    name: String,
    value: String,
) -> Result<(), XmlError> {
    if fields.iter().any(|(k, _)| *k == name) {
        return Err(XmlError::DuplicateField(name));
    }
    fields.push((name, value));
    Ok(())
}

fn add_text(
    depth: usize,
    current: &mut Option<(String, String)>,
    item_field: &mut Option<(String, String)>,
    text: &str,
) -> Result<(), XmlError> {
    match depth {
        0 if !text.trim().is_empty() => {
            Err(XmlError::Malformed("text outside the root element".into()))
        }
        2 => {
            if let Some((_, value)) = current {
                value.push_str(text);
            }
            Ok(())
        }
        4 => {
            if let Some((_, value)) = item_field {
                value.push_str(text);
            }
            Ok(())
        }
        // Whitespace between elements, or text nested deeper than we read.
        _ => Ok(()),
    }
}

fn resolve_reference(reference: &BytesRef<'_>) -> Result<char, XmlError> {
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(ch)) => Ok(ch),
            _ => Err(XmlError::Malformed(format!(
                "invalid character reference &{};",
                truncate(reference)
            ))),
        };
    }
    match &**reference {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        other => Err(XmlError::UnknownEntity(truncate(other).into_owned())),
    }
}

/// Keeps attacker-chosen names in error messages to a sensible length.
fn truncate(s: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return Cow::Borrowed(s);
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &s[..end]))
}

fn push_cdata_field(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push_str("><![CDATA[");
    // A CDATA section cannot contain `]]>`; end it after `]]` and start a
    // new one before `>`. A CR would be read back as LF (XML end-of-line handling), so it goes
    // between sections as a character reference.
    out.push_str(
        &value
            .replace("]]>", "]]]]><![CDATA[>")
            .replace('\r', "]]>&#13;<![CDATA["),
    );
    out.push_str("]]></");
    out.push_str(name);
    out.push('>');
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(
            parse(&encrypted_envelope("gh_y", "QUJD")).unwrap(),
            Inbound::Encrypted {
                to_user: Some("gh_y".into()),
                encrypt: "QUJD".into()
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
    fn predefined_entities_and_char_refs_are_resolved() {
        let xml = "<xml><MsgType>t</MsgType>\
                   <V>&lt;&gt;&amp;&apos;&quot;&#65;&#x4E2D;&#x1F600;</V></xml>";
        let fields = parse_fields(xml, DEFAULT_MAX_XML_BYTES).unwrap();
        assert_eq!(fields.get("V"), Some("<>&'\"A中😀"));
    }

    #[test]
    fn unknown_entity_reference_is_rejected() {
        let xml = "<xml><MsgType>&xxe;</MsgType></xml>";
        assert_eq!(
            parse(xml).unwrap_err(),
            XmlError::UnknownEntity("xxe".into())
        );
        assert_eq!(parse(xml).unwrap_err().reason(), "unknown_entity");
    }

    #[test]
    fn invalid_char_refs_are_malformed() {
        for r in [
            "&#0;",
            "&#xD800;",
            "&#x110000;",
            "&#99999999999999999999;",
            "&#;",
            "&#xZ;",
        ] {
            let xml = format!("<xml><MsgType>{r}</MsgType></xml>");
            assert_eq!(parse(&xml).unwrap_err().reason(), "malformed", "{r}");
        }
    }

    #[test]
    fn doctype_is_rejected_without_expansion() {
        let xxe = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
                   <xml><MsgType>&xxe;</MsgType></xml>";
        assert_eq!(parse(xxe).unwrap_err(), XmlError::Doctype);
        let laughs = "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]>\
                      <xml><MsgType>&lol2;</MsgType></xml>";
        assert_eq!(parse(laughs).unwrap_err(), XmlError::Doctype);
        assert_eq!(
            parse("<!DOCTYPE xml><xml/>").unwrap_err().reason(),
            "doctype"
        );
    }

    #[test]
    fn entity_declaration_outside_doctype_is_rejected() {
        let xml = "<!ENTITY x \"y\"><xml><MsgType>&x;</MsgType></xml>";
        assert!(parse(xml).is_err());
    }

    #[test]
    fn oversized_body_is_rejected_before_parsing() {
        let big = format!(
            "<xml><MsgType>{}</MsgType></xml>",
            "a".repeat(DEFAULT_MAX_XML_BYTES)
        );
        assert_eq!(
            parse(&big).unwrap_err(),
            XmlError::TooLarge {
                len: big.len(),
                limit: DEFAULT_MAX_XML_BYTES
            }
        );
        // A caller-given limit applies to both str and byte entry points,
        // and the size check runs before the UTF-8 check.
        assert_eq!(
            parse_with_limit("<xml/>", 5).unwrap_err().reason(),
            "too_large"
        );
        assert_eq!(
            parse_bytes(b"\xff\xff\xff", 2).unwrap_err().reason(),
            "too_large"
        );
    }

    #[test]
    fn non_utf8_body_is_rejected() {
        assert_eq!(
            parse_bytes(b"<xml><MsgType>\xff</MsgType></xml>", DEFAULT_MAX_XML_BYTES).unwrap_err(),
            XmlError::NotUtf8
        );
    }

    #[test]
    fn malformed_documents_are_rejected() {
        for xml in [
            "",
            "   ",
            "not xml",
            "<xml>",
            "<xml><MsgType>text</MsgType>",
            "<xml><MsgType>text</msgtype></xml>",
            "<xml></xml></xml>",
            "</xml>",
            "<xml><MsgType>a<b</MsgType></xml>",
            "<xml><MsgType>a & b</MsgType></xml>",
            "<xml><MsgType><![CDATA[text</MsgType></xml>",
            "<xml/><xml/>",
            "<xml/>trailing",
            "<![CDATA[x]]><xml/>",
            "<xml><MsgType attr=\"x>text</MsgType></xml>",
            "<xml a='1' a='2'><MsgType>t</MsgType></xml>",
            "<xml><MsgType a=1>t</MsgType></xml>",
            "<xml><MsgType>t</MsgType><?xml version='1.0'?></xml>",
            "<xml><!-- a -- b --><MsgType>t</MsgType></xml>",
        ] {
            let err = parse(xml).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{xml:?} gave {err:?}");
        }
    }

    #[test]
    fn wrong_root_is_rejected() {
        assert_eq!(
            parse("<html><MsgType>t</MsgType></html>").unwrap_err(),
            XmlError::UnexpectedRoot("html".into())
        );
    }

    #[test]
    fn duplicate_field_is_rejected() {
        let xml = "<xml><MsgType>event</MsgType><MsgType>text</MsgType></xml>";
        assert_eq!(
            parse(xml).unwrap_err(),
            XmlError::DuplicateField("MsgType".into())
        );
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

    #[test]
    fn cdata_containing_terminator_survives_to_xml_round_trip() {
        let e = Event {
            to_user: "gh_]]>x".into(),
            from_user: "o<&>\"'".into(),
            create_time: -5,
            msg_type: "event".into(),
            event: TEMPLATE_SEND_JOB_FINISH.into(),
            msg_id: Some(i64::MAX),
            status: Some("failed:user block".into()),
        };
        assert_eq!(parse(&e.to_xml()).unwrap(), Inbound::Event(e));
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

    fn text() -> impl Strategy<Value = String> {
        // Any characters, CR included (written as `&#13;` so it is not read back as LF).
        ".{0,40}|[\r\n\\]>]{0,8}"
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

        #[test]
        fn event_to_xml_then_parse_round_trips(
            to_user in text(),
            from_user in text(),
            create_time in any::<i64>(),
            event in text(),
            msg_id in any::<Option<i64>>(),
            status in prop::option::of(text()),
        ) {
            let e = Event {
                to_user, from_user, create_time,
                msg_type: "event".into(), event, msg_id, status,
            };
            prop_assert_eq!(parse(&e.to_xml()).unwrap(), Inbound::Event(e));
        }

        #[test]
        fn subscription_event_to_xml_then_parse_round_trips(
            to_user in text(),
            from_user in text(),
            create_time in any::<i64>(),
            kind in 0usize..3,
            items in prop::collection::vec(
                (text(), text(), prop::option::of(text()), any::<i64>(), prop::option::of(any::<i64>()), text()),
                1..4,
            ),
        ) {
            let kind = SubscriptionKind::ALL[kind];
            let items = items
                .into_iter()
                .map(|(template_id, status, scene, msg_id, code, error_status)| match kind {
                    SubscriptionKind::Sent => SubscriptionItem {
                        template_id, status: None, popup_scene: None, msg_id: Some(msg_id),
                        error_code: code, error_status: Some(error_status),
                    },
                    _ => SubscriptionItem {
                        template_id, status: Some(status), popup_scene: scene, msg_id: None,
                        error_code: None, error_status: None,
                    },
                })
                .collect();
            let e = SubscriptionEvent { to_user, from_user, create_time, kind, items };
            prop_assert_eq!(parse(&e.to_xml()).unwrap(), Inbound::Subscription(e));
        }
    }
}
