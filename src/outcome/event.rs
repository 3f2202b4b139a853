//! Event outcomes (kind `event`): the pushes the worker does not own, published when
//! `callback_publish_events` is set, so upstream systems learn of follows, unfollows, menu
//! clicks and user messages.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Outcome, Status};

/// An event outcome's status: WeChat's `Event` (for `MsgType` `event`) or `MsgType` (for a
/// user message), lower case: `subscribe`, `unsubscribe`, `scan`, `click`, `view`,
/// `location`, `text`, `image`, `voice`, `video`, `shortvideo`, `link`, ... The routing key is
/// `event.<status>`. WeChat's `LOCATION` event and a user's `location` message share the word;
/// the outcome's `msgtype` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventStatus(String);

impl EventStatus {
    /// The word for a push of `msg_type` with `event` (for `MsgType` `event`).
    pub fn of(msg_type: &str, event: Option<&str>) -> EventStatus {
        let word = match event {
            Some(e) if msg_type == "event" => e,
            _ => msg_type,
        };
        EventStatus(word.trim().to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a push the worker does not own says, as an outcome publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedEvent {
    /// The account, when known (safe mode, or an original id a configured account declares).
    pub appid: Option<String>,
    /// The user: `FromUserName`.
    pub openid: String,
    /// `MsgType`, verbatim (`event`, `text`, `image`, ...).
    pub msg_type: String,
    /// `Event`, verbatim (`subscribe`, `SCAN`, `CLICK`, ...); `None` for user messages.
    pub event: Option<String>,
    /// `EventKey`: the menu key, the link of a VIEW, the scene of a QR code scan.
    pub event_key: Option<String>,
    /// `MsgId` of a user message.
    pub msg_id: Option<i64>,
    /// `CreateTime` (Unix seconds).
    pub event_time: i64,
    /// The push's other fields, verbatim (`Content`, `PicUrl`, `Latitude`, ...): personal
    /// data, so only with `callback_publish_content`.
    pub content: Option<BTreeMap<String, String>>,
}

/// The fields an event adds to its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventFields {
    /// The user's openid (the push's `FromUserName`); `touser` holds the same, as in every
    /// outcome kind.
    pub openid: String,
    pub msgtype: String,
    pub event: Option<String>,
    pub event_key: Option<String>,
    /// WeChat's `CreateTime` (Unix seconds), as in consents.
    pub event_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<BTreeMap<String, String>>,
}

impl Outcome {
    /// A push's outcome (kind `event`).
    pub fn event(e: PushedEvent) -> Outcome {
        let status = EventStatus::of(&e.msg_type, e.event.as_deref());
        let mut o = Outcome::new(Status::Event(status), e.appid, Some(e.openid.clone()));
        o.msgid = e.msg_id;
        o.event = Some(Box::new(EventFields {
            openid: e.openid,
            msgtype: e.msg_type,
            event: e.event,
            event_key: e.event_key,
            event_time: e.event_time,
            content: e.content,
        }));
        o
    }

    /// `event:<appid>:<msgid>` for a user message with a `MsgId`; otherwise
    /// `event:<appid>:<openid>:<event_time>:<status>:<event_key>`, which WeChat's retries of one
    /// push repeat and two pushes (two clicks in one second on two buttons) do not share.
    pub(super) fn event_message_id(&self) -> String {
        let appid = self.appid.as_deref().unwrap_or("-");
        if let Some(msgid) = self.msgid {
            return format!("event:{appid}:{msgid}");
        }
        let fields = self.event.as_deref();
        format!(
            "event:{appid}:{}:{}:{}:{}",
            self.touser.as_deref().unwrap_or("-"),
            fields.map_or(0, |f| f.event_time),
            self.status.as_str(),
            fields.and_then(|f| f.event_key.as_deref()).unwrap_or("-"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Kind;

    fn click(key: &str) -> PushedEvent {
        PushedEvent {
            appid: Some("wxa".into()),
            openid: "U1".into(),
            msg_type: "event".into(),
            event: Some("CLICK".into()),
            event_key: Some(key.into()),
            msg_id: None,
            event_time: 1_700_000_000,
            content: None,
        }
    }

    #[test]
    fn an_event_is_routed_by_its_lower_case_event_and_names_its_user() {
        let o = Outcome::event(click("V1001_TODAY_MUSIC"));
        assert_eq!(o.kind(), Kind::Event);
        assert_eq!(o.routing_key(), "event.click");
        let v: serde_json::Value = serde_json::from_slice(&o.to_json()).unwrap();
        let want = serde_json::json!({
            "kind": "event", "status": "click", "openid": "U1", "touser": "U1",
            "event": "CLICK", "msgtype": "event", "event_key": "V1001_TODAY_MUSIC",
            "event_time": 1_700_000_000,
        });
        for (field, value) in want.as_object().unwrap() {
            assert_eq!(&v[field], value, "{field} in {v}");
        }
        assert!(v.get("content").is_none(), "{v}");
        assert!(v.get("template_id").is_none(), "{v}");
    }

    #[test]
    fn a_user_message_is_routed_by_its_msgtype_and_identified_by_its_msgid() {
        let text = PushedEvent {
            msg_type: "text".into(),
            event: None,
            event_key: None,
            msg_id: Some(1234567890123456),
            content: Some(BTreeMap::from([("Content".into(), "hello".into())])),
            ..click("")
        };
        let o = Outcome::event(text);
        assert_eq!(o.routing_key(), "event.text");
        assert_eq!(o.message_id(), "event:wxa:1234567890123456");
        let v: serde_json::Value = serde_json::from_slice(&o.to_json()).unwrap();
        assert_eq!(v["content"]["Content"], "hello");
        assert_eq!(v["msgid_str"], "1234567890123456");
        assert_eq!(v["event"], serde_json::Value::Null);
    }

    /// Without a MsgId the id is the user, time, event and key: stable across copies, and
    /// distinct for two buttons clicked in one second.
    #[test]
    fn an_event_without_msgid_is_identified_by_user_time_event_and_key() {
        let a = Outcome::event(click("A"));
        assert_eq!(a.message_id(), "event:wxa:U1:1700000000:click:A");
        assert_eq!(a.message_id(), Outcome::event(click("A")).message_id());
        assert_ne!(a.message_id(), Outcome::event(click("B")).message_id());
        let follow = Outcome::event(PushedEvent {
            event: Some("subscribe".into()),
            event_key: None,
            ..click("")
        });
        assert_eq!(follow.message_id(), "event:wxa:U1:1700000000:subscribe:-");
        assert_eq!(
            EventStatus::of("event", Some("LOCATION")).as_str(),
            EventStatus::of("location", None).as_str()
        );
    }
}
