//! Outcomes: the one final word on every job (and every delivery receipt and consent).
//!
//! Outcomes are published to the outcome exchange with routing key `<kind>.<status>`, with
//! publisher confirms, before the job is acked. Consumers may see a job's outcome twice after a
//! crash or a broker failover (at-least-once delivery); the AMQP `message_id`
//! ([`Outcome::message_id`]) is the same on every copy, so they can drop repeats by it.
//!
//! Every outcome is built here, by one constructor per kind: [`Outcome::for_job`] (`send`),
//! [`Outcome::receipt`], [`Outcome::consent`] and [`Outcome::event`]. The kind and status are private and typed
//! ([`Status`]), so a receipt can never carry a send's status, and metrics read the status
//! without matching a string back to an enum.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::job::MsgType;

mod event;
mod status;

pub use event::{EventFields, EventStatus, PushedEvent};
pub use status::{ConsentStatus, Kind, ReceiptStatus, SendStatus, Status};

/// One outcome message, as the contract defines it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Always `status.kind()`: both are set by the constructors alone. Kept as a field so the
    /// JSON keeps `kind` first.
    kind: Kind,
    pub id: Option<String>,
    pub appid: Option<String>,
    pub touser: Option<String>,
    /// The job's `type` (a send outcome); absent on receipts and when the body or its `type`
    /// was unreadable.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub msg_type: Option<MsgType>,
    status: Status,
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
    /// send outcomes keep their shape. Boxed: it is rare, and every outcome carries the field.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Box<SubscriptionFields>>,
    /// What an event is (kind `event` only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<EventFields>>,
}

/// The fields a subscription event adds to its outcome.
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

/// Which job a send outcome is about, as far as it is known (an invalid job may lack any part).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobIdentity {
    pub id: Option<String>,
    pub appid: Option<String>,
    /// The recipient; absent on a batch's single outcome.
    pub touser: Option<String>,
    pub msg_type: Option<MsgType>,
}

/// What a delivery receipt says, as WeChat pushed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The account, when the push's original id names a configured one.
    pub appid: Option<String>,
    pub touser: String,
    /// The id the send returned; how a consumer finds the job.
    pub msgid: Option<i64>,
    pub status: ReceiptStatus,
    /// WeChat's own code and status text, verbatim.
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    /// The template of a subscription message's receipt; template messages' receipts name none.
    pub template_id: Option<String>,
}

/// A user's consent about one subscription template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub appid: Option<String>,
    pub touser: String,
    pub template_id: String,
    pub status: ConsentStatus,
    /// `popup` or `settings`.
    pub source: String,
    /// WeChat's `CreateTime` of the event (Unix seconds).
    pub event_time: i64,
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
    /// The one shape every outcome starts from; only the constructors below call it.
    fn new(status: Status, appid: Option<String>, touser: Option<String>) -> Outcome {
        Outcome {
            kind: status.kind(),
            id: None,
            appid,
            touser,
            msg_type: None,
            status,
            errcode: None,
            errmsg: None,
            msgid: None,
            attempts: 0,
            reason: None,
            finished_at: Utc::now(),
            subscription: None,
            event: None,
        }
    }

    /// A send job's outcome (kind `send`). The caller adds what the status tells: the
    /// attempts, WeChat's code and message, the msgid, the reason.
    pub fn for_job(status: SendStatus, job: JobIdentity) -> Outcome {
        let mut o = Outcome::new(Status::Send(status), job.appid, job.touser);
        o.id = job.id;
        o.msg_type = job.msg_type;
        o
    }

    /// A delivery receipt's outcome (kind `receipt`).
    pub fn receipt(r: Receipt) -> Outcome {
        let mut o = Outcome::new(Status::Receipt(r.status), r.appid, Some(r.touser));
        o.msgid = r.msgid;
        o.errcode = r.errcode;
        o.errmsg = r.errmsg;
        o.subscription = r.template_id.map(|template_id| {
            Box::new(SubscriptionFields {
                template_id,
                source: None,
                event_time: None,
            })
        });
        o
    }

    /// A consent's outcome (kind `consent`).
    pub fn consent(c: Consent) -> Outcome {
        let mut o = Outcome::new(Status::Consent(c.status), c.appid, Some(c.touser));
        o.subscription = Some(Box::new(SubscriptionFields {
            template_id: c.template_id,
            source: Some(c.source),
            event_time: Some(c.event_time),
        }));
        o
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The status of a send outcome; `None` for the other kinds.
    pub fn send_status(&self) -> Option<SendStatus> {
        match self.status {
            Status::Send(s) => Some(s),
            _ => None,
        }
    }

    /// The routing key on the outcome exchange: `<kind>.<status>`.
    pub fn routing_key(&self) -> String {
        let kind = self.kind.as_str();
        let status = self.status.as_str();
        let mut key = String::with_capacity(kind.len() + 1 + status.len());
        key.push_str(kind);
        key.push('.');
        // Statuses kept verbatim from WeChat may contain spaces or dots; keep the key a word.
        key.extend(
            status
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
                    self.status.as_str(),
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
                    self.status.as_str(),
                ]
                .join(":")
            }
            Kind::Event => self.event_message_id(),
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
}
