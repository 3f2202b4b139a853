//! Outcomes: the one final word on every job (and every delivery receipt and consent).
//!
//! Outcomes are published to the outcome exchange with routing key `<kind>.<status>`, with
//! publisher confirms, before the job is acked. Consumers may see a job's outcome twice after a
//! crash or a broker failover (at-least-once delivery); the AMQP `message_id`
//! ([`Outcome::message_id`]) is the same on every copy, so they can drop repeats by it.
//!
//! Every outcome is built here, by one constructor per kind: [`Outcome::for_job`] (`send`),
//! [`Outcome::receipt`], [`Outcome::consent`], [`Outcome::event`] and
//! [`Outcome::authorization`]. The kind and status are private and typed
//! ([`Status`]), so a receipt can never carry a send's status, and metrics read the status
//! without matching a string back to an enum.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::job::MsgType;

mod authorization;
mod event;
mod status;

pub use authorization::{Authorization, AuthorizationFields, AuthorizationStatus};
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
    /// What an authorization is about (kind `authorization` only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Box<AuthorizationFields>>,
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
            authorization: None,
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

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn status(&self) -> &Status {
        &self.status
    }

    /// The status of a send outcome; `None` for the other kinds.
    pub(crate) fn send_status(&self) -> Option<SendStatus> {
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
    /// consents (the event time, because one user may accept, reject and accept again),
    /// `authorization:<component_appid>:<appid>:<event_time>:<status>` for authorizations;
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
            Kind::Authorization => self.authorization_message_id(),
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
mod tests;
