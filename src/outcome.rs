//! Outcomes: the one final word on every job (and every delivery receipt).
//!
//! Outcomes are published to the outcome exchange with routing key `<kind>.<status>`, with
//! publisher confirms, before the job is acked. Consumers may see a job's outcome twice after a
//! crash or a broker failover (at-least-once delivery); the AMQP `message_id`
//! ([`Outcome::message_id`]) is the same on every copy, so they can drop repeats by it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Whether an outcome reports a send attempt or a delivery receipt pushed by WeChat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Send,
    Receipt,
    /// A user's accept/reject of a subscription template, from WeChat's callback.
    Consent,
}

/// The final status of a send job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    /// WeChat accepted the message (errcode 0).
    Sent,
    /// WeChat refused it for good (bad openid, not subscribed, bad template ...).
    Rejected,
    /// Transient errors outlasted the retry budget, or delivery is unknown.
    Failed,
    /// The job itself is malformed; it is also dead-lettered.
    Invalid,
    /// It was not sent before its `not_after`.
    Expired,
}

impl SendStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SendStatus::Sent => "sent",
            SendStatus::Rejected => "rejected",
            SendStatus::Failed => "failed",
            SendStatus::Invalid => "invalid",
            SendStatus::Expired => "expired",
        }
    }

    pub const ALL: [SendStatus; 5] = [
        SendStatus::Sent,
        SendStatus::Rejected,
        SendStatus::Failed,
        SendStatus::Invalid,
        SendStatus::Expired,
    ];
}

/// One outcome message, as the contract defines it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub kind: Kind,
    pub id: Option<String>,
    pub appid: Option<String>,
    pub touser: Option<String>,
    /// The job's `type` (a send outcome); absent on receipts and when the body or its `type`
    /// was unreadable.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub msg_type: Option<crate::job::MsgType>,
    pub status: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    /// Written as `msgid` and, beside it, `msgid_str`: WeChat's ids exceed 2^53, which
    /// JavaScript's `JSON.parse` rounds, so a consumer there matches receipts by the string.
    #[serde(flatten, serialize_with = "msgid_and_str")]
    pub msgid: Option<i64>,
    pub attempts: u32,
    pub reason: Option<String>,
    #[serde(serialize_with = "millis")]
    pub finished_at: DateTime<Utc>,
    /// What a consent, or a subscription delivery receipt, is about; absent elsewhere, so
    /// send outcomes keep their shape. Boxed: it is rare, and every outcome carries the slot.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Box<SubscriptionFields>>,
}

/// The fields a subscription event adds to its outcome (issue 16.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionFields {
    /// The template the consent or receipt is about.
    pub template_id: String,
    /// Where a consent was given: `popup` or `settings`; absent on receipts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// WeChat's `CreateTime` (Unix seconds) of the event behind a consent: consents for one
    /// user and template may arrive out of order, and this is how a consumer keeps the latest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<i64>,
}

fn msgid_and_str<S: serde::Serializer>(msgid: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("msgid", msgid)?;
    map.serialize_entry("msgid_str", &msgid.map(|m| m.to_string()))?;
    map.end()
}

fn millis<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl Outcome {
    /// A send outcome with the fields every status shares.
    pub fn send(
        status: SendStatus,
        id: Option<String>,
        appid: Option<String>,
        touser: Option<String>,
    ) -> Outcome {
        Outcome {
            kind: Kind::Send,
            id,
            appid,
            touser,
            msg_type: None,
            status: status.as_str().to_string(),
            errcode: None,
            errmsg: None,
            msgid: None,
            attempts: 0,
            reason: None,
            finished_at: Utc::now(),
            subscription: None,
        }
    }

    /// The routing key on the outcome exchange: `<kind>.<status>`.
    pub fn routing_key(&self) -> String {
        let kind = match self.kind {
            Kind::Send => "send",
            Kind::Receipt => "receipt",
            Kind::Consent => "consent",
        };
        let mut key = String::with_capacity(kind.len() + 1 + self.status.len());
        key.push_str(kind);
        key.push('.');
        // Statuses kept verbatim from WeChat may contain spaces or dots; keep the key a word.
        key.extend(
            self.status
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
        key
    }

    /// The AMQP `message_id` of the outcome: the same for every copy of one job's (one
    /// recipient's, one receipt's) outcome, so a consumer can drop the repeats that
    /// at-least-once delivery brings (a lost ack, a broker failover) by this id alone.
    ///
    /// `send:<appid>:<id>:<touser>` for sends, `receipt:<appid>:<msgid>:<touser>:<status>` for
    /// receipts, `consent:<appid>:<touser>:<template_id>:<event_time>:<source>:<status>` for
    /// consents (the event time, because one user may accept, reject and accept again);
    /// a missing part is `-`.
    pub fn message_id(&self) -> String {
        // Joined from borrowed parts: one allocation, once per published outcome.
        fn part(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("-")
        }
        match self.kind {
            Kind::Send => [
                "send",
                part(&self.appid),
                part(&self.id),
                part(&self.touser),
            ]
            .join(":"),
            Kind::Receipt => {
                let msgid = self.msgid.map_or_else(|| "-".into(), |m| m.to_string());
                [
                    "receipt",
                    part(&self.appid),
                    &msgid,
                    part(&self.touser),
                    &self.status,
                ]
                .join(":")
            }
            Kind::Consent => {
                let sub = self.subscription.as_deref();
                let event_time = sub
                    .and_then(|s| s.event_time)
                    .map_or_else(|| "-".into(), |t| t.to_string());
                [
                    "consent",
                    part(&self.appid),
                    part(&self.touser),
                    sub.map_or("-", |s| s.template_id.as_str()),
                    &event_time,
                    sub.and_then(|s| s.source.as_deref()).unwrap_or("-"),
                    &self.status,
                ]
                .join(":")
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Sized for a typical outcome (about 250 bytes), so it is written without regrowing.
        let mut out = Vec::with_capacity(384);
        serde_json::to_writer(&mut out, self).expect("an outcome always serializes");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_the_contract_shows() {
        let mut o = Outcome::send(
            SendStatus::Sent,
            Some("order-7781-paid".into()),
            Some("wx0123456789abcdef".into()),
            Some("OPENID".into()),
        );
        o.errcode = Some(0);
        o.errmsg = Some("ok".into());
        o.msgid = Some(3_000_000_000);
        o.attempts = 1;
        let v: serde_json::Value = serde_json::from_slice(&o.to_json()).unwrap();
        assert_eq!(v["kind"], "send");
        assert_eq!(v["status"], "sent");
        assert_eq!(v["msgid"], 3_000_000_000i64, "msgid is an i64");
        assert_eq!(v["msgid_str"], "3000000000");
        assert_eq!(v["reason"], serde_json::Value::Null);
        let at = v["finished_at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.contains('.'), "{at}");
        assert_eq!(o.routing_key(), "send.sent");
    }

    /// Issue 20: every copy of one job's outcome carries the same message_id, whatever its
    /// attempts or time; different recipients and receipts get different ones.
    #[test]
    fn message_ids_are_stable_per_job_and_recipient() {
        let out = |touser: &str, attempts: u32| {
            let mut o = Outcome::send(
                SendStatus::Sent,
                Some("order-1".into()),
                Some("wxa".into()),
                Some(touser.into()),
            );
            o.attempts = attempts;
            o
        };
        assert_eq!(out("U1", 1).message_id(), "send:wxa:order-1:U1");
        assert_eq!(out("U1", 1).message_id(), out("U1", 3).message_id());
        assert_ne!(out("U1", 1).message_id(), out("U2", 1).message_id());
        let mut r = out("U1", 0);
        r.kind = Kind::Receipt;
        r.id = None;
        r.msgid = Some(42);
        r.status = "delivered".into();
        assert_eq!(r.message_id(), "receipt:wxa:42:U1:delivered");
    }

    /// Issue 16.2: a consent carries the contract's `touser`, `template_id`, `status` and
    /// `source`; send outcomes do not grow those fields; each consent event has its own
    /// message_id, so accept, reject, accept again are three messages, not one.
    #[test]
    fn consents_serialize_with_template_and_source_and_sends_keep_their_shape() {
        let send = Outcome::send(SendStatus::Sent, Some("j".into()), None, Some("U".into()));
        let v: serde_json::Value = serde_json::from_slice(&send.to_json()).unwrap();
        for absent in ["template_id", "source", "event_time"] {
            assert!(v.get(absent).is_none(), "send outcome has {absent}: {v}");
        }
        let consent = |status: &str, at: i64| {
            let mut o = Outcome::send(SendStatus::Sent, None, Some("wxa".into()), Some("U".into()));
            o.kind = Kind::Consent;
            o.status = status.into();
            o.subscription = Some(Box::new(SubscriptionFields {
                template_id: "TPL".into(),
                source: Some("popup".into()),
                event_time: Some(at),
            }));
            o
        };
        let c = consent("accept", 1_610_969_440);
        let v: serde_json::Value = serde_json::from_slice(&c.to_json()).unwrap();
        assert_eq!(v["kind"], "consent");
        assert_eq!(v["touser"], "U");
        assert_eq!(v["template_id"], "TPL");
        assert_eq!(v["status"], "accept");
        assert_eq!(v["source"], "popup");
        assert_eq!(v["event_time"], 1_610_969_440);
        assert_eq!(c.routing_key(), "consent.accept");
        assert_eq!(c.message_id(), "consent:wxa:U:TPL:1610969440:popup:accept");
        assert_ne!(
            c.message_id(),
            consent("accept", 1_610_969_500).message_id()
        );
    }

    /// A 19-digit msgid is past 2^53, where JavaScript's `JSON.parse` loses digits: the
    /// number stays exact for other parsers, and `msgid_str` carries it for JavaScript.
    #[test]
    fn a_19_digit_msgid_is_also_written_as_a_string() {
        let mut o = Outcome::send(SendStatus::Sent, Some("j".into()), None, Some("U".into()));
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
        let mut o = Outcome::send(SendStatus::Sent, None, None, None);
        o.kind = Kind::Receipt;
        o.status = "failed: weird.status".into();
        assert_eq!(o.routing_key(), "receipt.failed__weird_status");
    }
}
