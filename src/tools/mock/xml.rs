//! The simulator's side of the callback: WeChat's pushes written as XML, and sealed for safe
//! mode, the way WeChat writes them. The worker only reads these documents
//! ([`crate::callback`]); the simulator and the tests write them.

use crate::callback::event::{Event, SubscriptionEvent};
use crate::crypto::{self, AesKey, signature};

/// A push serialized the way WeChat sends it: text goes in CDATA sections, split where needed
/// so that `]]>` survives.
pub trait WechatXml {
    fn to_xml(&self) -> String;
}

impl WechatXml for SubscriptionEvent {
    /// Only the fields an item has are written.
    fn to_xml(&self) -> String {
        let mut out = header(&self.to_user, &self.from_user, self.create_time);
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

impl WechatXml for Event {
    fn to_xml(&self) -> String {
        let mut out = header(&self.to_user, &self.from_user, self.create_time);
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

/// An open `<xml>` and the addressing every push starts with.
fn header(to_user: &str, from_user: &str, create_time: i64) -> String {
    let mut out = String::from("<xml>");
    push_cdata_field(&mut out, "ToUserName", to_user);
    push_cdata_field(&mut out, "FromUserName", from_user);
    out.push_str(&format!("<CreateTime>{create_time}</CreateTime>"));
    out
}

/// Builds the safe-mode envelope WeChat POSTs: `ToUserName` plus `Encrypt`; pair it with
/// [`signature::msg_signature`] over the same `encrypt` text.
pub fn encrypted_envelope(to_user: &str, encrypt: &str) -> String {
    let mut out = String::from("<xml>");
    push_cdata_field(&mut out, "ToUserName", to_user);
    push_cdata_field(&mut out, "Encrypt", encrypt);
    out.push_str("</xml>");
    out
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

/// A safe-mode request body and the `msg_signature` that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The envelope XML to POST.
    pub body: String,
    /// The `msg_signature` query parameter to send alongside it.
    pub msg_signature: String,
}

/// Builds a safe-mode POST the way WeChat would.
///
/// `inner_xml` is encrypted for `appid` with a fresh random prefix, wrapped
/// in an envelope addressed to `to_user`, and signed with `token`.
pub fn seal_safe_mode(
    token: &str,
    key: &AesKey,
    appid: &str,
    to_user: &str,
    inner_xml: &str,
    timestamp: &str,
    nonce: &str,
) -> Sealed {
    let encrypt = crypto::encrypt_with_random(key, inner_xml, appid);
    Sealed {
        msg_signature: signature::msg_signature(token, timestamp, nonce, &encrypt),
        body: encrypted_envelope(to_user, &encrypt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::event::{
        Inbound, SubscriptionItem, SubscriptionKind, TEMPLATE_SEND_JOB_FINISH, parse,
    };
    use proptest::prelude::*;

    #[test]
    fn encrypted_envelope_parses_to_encrypted() {
        assert_eq!(
            parse(&encrypted_envelope("gh_y", "QUJD")).unwrap(),
            Inbound::Encrypted {
                to_user: Some("gh_y".into()),
                encrypt: "QUJD".into()
            }
        );
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

    fn text() -> impl Strategy<Value = String> {
        // Any characters, CR included (written as `&#13;` so it is not read back as LF).
        ".{0,40}|[\r\n\\]>]{0,8}"
    }

    proptest! {
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
