//! The pushes the worker does not own (follows, scans, menu clicks, user messages), read for
//! publishing as `kind: event` outcomes.

use std::collections::BTreeMap;

use super::xml::{XmlError, parse_fields};
use crate::outcome::PushedEvent;

/// The fields every such push shares; the rest is the push's content.
const HEADER: [&str; 8] = [
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "Event",
    "EventKey",
    "MsgId",
    "MsgID",
];

/// A push read for publishing: the account's original id it was addressed to (to attribute a
/// plaintext push to an account) and the event, without an appid yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Other {
    pub to_user: String,
    pub event: PushedEvent,
}

/// Reads a push's XML (already checked by [`super::event::parse`]); the content, the push's
/// non-header fields, only `with_content`.
pub(super) fn read(xml: &str, limit: usize, with_content: bool) -> Result<Other, XmlError> {
    let fields = parse_fields(xml, limit)?;
    let msg_id = match fields.number("MsgId")? {
        Some(id) => Some(id),
        None => fields.number("MsgID")?,
    };
    let content = with_content.then(|| {
        fields
            .iter()
            .filter(|(k, _)| !HEADER.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    });
    // The outcome's status (and routing key) is the event or message type: never empty.
    let msg_type = fields.require("MsgType")?.trim();
    let event = fields.get("Event").map(str::trim);
    if msg_type.is_empty() {
        return Err(XmlError::MissingField("MsgType"));
    }
    if msg_type == "event" && event.is_none_or(str::is_empty) {
        return Err(XmlError::MissingField("Event"));
    }
    Ok(Other {
        to_user: fields.require("ToUserName")?.to_owned(),
        event: PushedEvent {
            appid: None,
            openid: fields.require("FromUserName")?.to_owned(),
            msg_type: msg_type.to_owned(),
            event: event.map(str::to_owned),
            event_key: fields.get("EventKey").map(str::to_owned),
            msg_id,
            event_time: fields
                .number("CreateTime")?
                .ok_or(XmlError::MissingField("CreateTime"))?,
            content,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>";

    #[test]
    fn a_text_message_keeps_its_content_only_when_asked() {
        let o = read(TEXT, 4096, false).unwrap();
        assert_eq!(o.to_user, "gh_1");
        assert_eq!(o.event.openid, "o1");
        assert_eq!(o.event.msg_type, "text");
        assert_eq!(o.event.msg_id, Some(1234567890123456));
        assert_eq!(o.event.event_time, 1348831860);
        assert_eq!(o.event.content, None);
        let with = read(TEXT, 4096, true).unwrap();
        assert_eq!(
            with.event.content,
            Some(BTreeMap::from([(
                "Content".into(),
                "this is a test".into()
            )]))
        );
    }

    #[test]
    fn a_menu_click_has_its_event_and_key() {
        let xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>123456789</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[EVENTKEY]]></EventKey></xml>";
        let o = read(xml, 4096, true).unwrap();
        assert_eq!(o.event.event.as_deref(), Some("CLICK"));
        assert_eq!(o.event.event_key.as_deref(), Some("EVENTKEY"));
        assert_eq!(o.event.msg_id, None);
        assert_eq!(o.event.content, Some(BTreeMap::new()));
    }

    /// The status would be empty: `event.` is no routing key.
    #[test]
    fn a_push_without_a_type_or_event_is_refused() {
        let xml = |t: &str, e: &str| {
            format!(
                "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>{t}</MsgType>{e}</xml>"
            )
        };
        assert_eq!(
            read(&xml(" ", ""), 4096, false).unwrap_err(),
            XmlError::MissingField("MsgType")
        );
        for e in ["", "<Event></Event>"] {
            assert_eq!(
                read(&xml("event", e), 4096, false).unwrap_err(),
                XmlError::MissingField("Event")
            );
        }
    }

    #[test]
    fn a_push_without_its_user_is_refused() {
        let xml = "<xml><ToUserName>gh_1</ToUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>";
        assert_eq!(
            read(xml, 4096, false).unwrap_err(),
            XmlError::MissingField("FromUserName")
        );
    }
}
