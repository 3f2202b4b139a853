//! A safe reader for the XML that WeChat pushes to the callback URL.
//!
//! WeChat's callback documents are flat: a root `<xml>` element whose children each hold one
//! value, usually wrapped in CDATA. [`parse_fields`] turns the document into a flat list of
//! child-name → text pairs while enforcing the safety rules;
//! [`super::event::parse`] interprets those pairs.
//!
//! The body arrives from the network before we know it is genuine (in safe mode the signature
//! covers only the `<Encrypt>` text), so the reader is deliberately strict and small:
//!
//! * bodies over a size limit are refused before any parsing;
//! * any `<!DOCTYPE>` is refused, so entity declarations can never be
//!   defined, let alone expanded;
//! * only the five predefined entities and numeric character references are
//!   resolved, anything else is an error;
//! * malformed documents are errors, and no input makes the parser panic.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::events::{BytesRef, BytesStart, Event as XmlEvent};

/// Default cap on a callback body. Real WeChat pushes are well under 4 KiB;
/// 64 KiB leaves room for unusual events while bounding memory and CPU.
pub const DEFAULT_MAX_XML_BYTES: usize = 64 * 1024;

/// Most `<List>` items one subscription event may carry. A pop-up offers at most a handful of
/// templates; the cap keeps a hostile body from fanning out into thousands of publishes.
pub(crate) const MAX_SUBSCRIPTION_ITEMS: usize = 64;

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
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        lookup(&self.fields, name)
    }

    pub(super) fn require(&self, name: &'static str) -> Result<&str, XmlError> {
        self.get(name).ok_or(XmlError::MissingField(name))
    }

    pub(super) fn number(&self, name: &'static str) -> Result<Option<i64>, XmlError> {
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

    pub(super) fn require(&self, name: &'static str) -> Result<&str, XmlError> {
        self.get(name).ok_or(XmlError::MissingField(name))
    }

    pub(super) fn number(&self, name: &'static str) -> Result<Option<i64>, XmlError> {
        parse_number(self.get(name), name)
    }
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

    let mut doc = Collector::default();
    let mut first_event = true;

    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        let is_first = std::mem::replace(&mut first_event, false);
        match event {
            XmlEvent::DocType(_) => return Err(XmlError::Doctype),
            XmlEvent::Start(start) => doc.open(&start)?,
            // An empty element is read as its start and its end: `<MsgID/>` yields "".
            XmlEvent::Empty(start) => {
                doc.open(&start)?;
                doc.close()?;
            }
            XmlEvent::End(_) => doc.close()?,
            XmlEvent::Text(text) => doc.text(&text.xml10_content())?,
            XmlEvent::CData(cdata) => {
                if doc.depth == 0 {
                    return Err(XmlError::Malformed("CDATA outside the root element".into()));
                }
                doc.text(&cdata.xml10_content())?;
            }
            XmlEvent::GeneralRef(reference) => {
                let ch = resolve_reference(&reference)?;
                let mut buf = [0u8; 4];
                doc.text(ch.encode_utf8(&mut buf))?;
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

    if !doc.seen_root {
        return Err(XmlError::Malformed("no root element".into()));
    }
    if doc.depth != 0 {
        return Err(XmlError::Malformed(
            "unclosed element at end of input".into(),
        ));
    }
    Ok(Fields {
        fields: doc.fields,
        items: doc.items,
    })
}

/// What [`parse_fields`] has read so far, and where in the document it is.
#[derive(Default)]
struct Collector {
    fields: Vec<(String, String)>,
    items: Vec<ListItem>,
    /// The depth-2 element whose text is being collected.
    current: Option<(String, String)>,
    /// The grandchild of the root being read, and the child of it whose text is collected.
    item: Option<ListItem>,
    item_field: Option<(String, String)>,
    depth: usize,
    seen_root: bool,
}

impl Collector {
    fn open(&mut self, start: &BytesStart<'_>) -> Result<(), XmlError> {
        check_attributes(start)?;
        let qname = start.name();
        let name: &str = qname.as_ref();
        match self.depth {
            0 => open_root(&mut self.seen_root, name)?,
            1 => self.current = Some((name.to_owned(), String::new())),
            2 => self.item = Some(open_item(&self.current, name, self.items.len())?),
            3 => self.item_field = Some((name.to_owned(), String::new())),
            _ => {}
        }
        self.depth += 1;
        Ok(())
    }

    fn close(&mut self) -> Result<(), XmlError> {
        // quick-xml has already checked the name matches the open tag.
        self.depth = self
            .depth
            .checked_sub(1)
            .ok_or_else(|| XmlError::Malformed("unmatched end tag".into()))?;
        match self.depth {
            1 => {
                if let Some((name, value)) = self.current.take() {
                    push_field(&mut self.fields, name, value)?;
                }
            }
            2 => self.items.extend(self.item.take()),
            3 => {
                if let (Some(it), Some((name, value))) =
                    (self.item.as_mut(), self.item_field.take())
                {
                    push_field(&mut it.fields, name, value)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn text(&mut self, text: &str) -> Result<(), XmlError> {
        add_text(self.depth, &mut self.current, &mut self.item_field, text)
    }
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

pub(super) fn check_size(len: usize, limit: usize) -> Result<(), XmlError> {
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

#[cfg(test)]
#[path = "xml_tests.rs"]
mod tests;
