//! Send jobs: parsing and validating what upstream systems publish.
//!
//! A job is WeChat's own template-send body plus an `id` (and optionally `appid` and
//! `not_after`). Parsing never panics and never gives up silently: every way a body can be
//! wrong maps to an [`InvalidJob`] with a short machine `reason`, which becomes an `invalid`
//! outcome and a dead-letter copy.

use std::fmt;

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};

use crate::config::Config;

mod json;
mod validate;
use json::{Body, Fields};
pub use json::{Span, TemplateSpans};
pub(crate) use validate::looks_like_appid;
pub use validate::value_limit;

/// WeChat deduplicates on `(openid, client_msg_id)`, and `client_msg_id` is at most 64 bytes.
pub const MAX_ID_LEN: usize = 64;
/// Upper bound on recipients in one batch job.
pub const MAX_BATCH: usize = 10_000;

/// The upstream's idempotency key, sent to WeChat as `client_msg_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    /// Validates an id: 1 to 64 bytes of printable ASCII, because it travels as a header,
    /// a log field and WeChat's `client_msg_id`.
    pub(crate) fn parse(s: &str) -> Result<JobId, InvalidJob> {
        if s.is_empty() || s.len() > MAX_ID_LEN || !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(InvalidJob::new(
                "bad_id",
                "id must be 1-64 printable ASCII characters",
            ));
        }
        Ok(JobId(s.to_string()))
    }

    /// An id derived from the body, for jobs that bring none: the same body always gets the
    /// same id, so a re-published job is still deduplicated by WeChat.
    pub(crate) fn from_body(body: &[u8]) -> JobId {
        JobId(format!("sha1-{}", hex::encode(Sha1::digest(body))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a job can never be sent as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct InvalidJob {
    /// A short machine word, used in the outcome, the dead-letter header and metrics.
    pub reason: &'static str,
    /// A human sentence for logs and the dead-letter header.
    pub detail: String,
}

impl InvalidJob {
    pub(crate) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        InvalidJob {
            reason,
            detail: detail.into(),
        }
    }
}

/// Which WeChat endpoint a job is for: the job's `type` field (CONTRACT.md, "Message types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgType {
    /// `POST /cgi-bin/message/template/send`, the default.
    #[default]
    Template,
    /// An Official Account subscription notification: `POST /cgi-bin/message/subscribe/bizsend`.
    Subscribe,
    /// A mini-program subscribe message: `POST /cgi-bin/message/subscribe/send`.
    MiniprogramSubscribe,
}

impl MsgType {
    pub const ALL: [MsgType; 3] = [
        MsgType::Template,
        MsgType::Subscribe,
        MsgType::MiniprogramSubscribe,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            MsgType::Template => "template",
            MsgType::Subscribe => "subscribe",
            MsgType::MiniprogramSubscribe => "miniprogram_subscribe",
        }
    }

    fn parse(s: &str) -> Option<MsgType> {
        MsgType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether WeChat deduplicates this endpoint's sends by `client_msg_id`. Only the template
    /// send does; a subscription send whose result is unknown can therefore never be retried
    /// safely (ERROR_POLICY.md, "maybe_sent").
    pub(crate) const fn deduplicated(self) -> bool {
        matches!(self, MsgType::Template)
    }

    /// The permission sets of `sets` an authorizer must grant (any one) for this type's
    /// endpoint (component mode).
    pub(crate) fn needed_sets(self, sets: &crate::policy::permission::PermissionSets) -> &[u32] {
        match self {
            MsgType::Template => &sets.template,
            MsgType::Subscribe => &sets.subscribe,
            MsgType::MiniprogramSubscribe => &sets.miniprogram_subscribe,
        }
    }

    /// The fields a subscription type takes besides `touser`, `template_id` and `data`; WeChat
    /// ignores or refuses anything else, so a job that brings another field is a mistake the
    /// upstream should hear about (`unknown_field`) rather than a silent drop.
    fn extra_fields(self) -> &'static [&'static str] {
        match self {
            MsgType::Template => &[],
            MsgType::Subscribe => &["page", "miniprogram"],
            MsgType::MiniprogramSubscribe => &["page", "miniprogram_state", "lang"],
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The account a job is sent from, as the parser found it: a configured account's place in
/// the configuration's account list (the worker builds its accounts from the same list, in
/// the same order, so the dispatcher reaches it without looking its appid up again), or, in
/// component mode, an authorizer without an `[[accounts]]` entry, found by the job's appid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountId(Option<usize>);

impl AccountId {
    /// An authorizer of the platform that is not configured (component mode).
    pub(crate) const AUTHORIZER: AccountId = AccountId(None);

    pub(crate) fn configured(index: usize) -> AccountId {
        AccountId(Some(index))
    }

    /// The account's position in `Config::accounts`; `None` for an unconfigured authorizer.
    pub(crate) fn index(self) -> Option<usize> {
        self.0
    }
}

/// The template a body was written for: its `template_id` and its `data` keys, read from where
/// the parser wrote them.
#[derive(Debug, Clone, Copy)]
pub struct TemplateFields<'b> {
    written: &'b [u8],
    spans: &'b TemplateSpans,
}

impl<'b> TemplateFields<'b> {
    pub fn id(&self) -> std::borrow::Cow<'b, str> {
        self.spans.id.text(self.written)
    }

    pub fn data_keys(&self) -> impl Iterator<Item = std::borrow::Cow<'b, str>> + 'b {
        let written = self.written;
        self.spans.data_keys.iter().map(move |k| k.text(written))
    }
}

/// A validated job for one recipient, ready to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    /// The account it is sent from.
    pub account: AccountId,
    pub appid: String,
    pub touser: String,
    /// The endpoint to send to.
    pub msg_type: MsgType,
    pub not_after: Option<DateTime<Utc>>,
    /// The exact JSON body to POST to WeChat (with `touser` and `client_msg_id` set),
    /// serialized once at parse time. `Bytes`, so each try hands it to the HTTP client
    /// without a copy.
    pub body: bytes::Bytes,
    /// Where `template_id` and the data keys lie in `body`.
    template: TemplateSpans,
}

impl Job {
    /// The template the job is for, as sent.
    pub fn template(&self) -> TemplateFields<'_> {
        TemplateFields {
            written: &self.body,
            spans: &self.template,
        }
    }
}

/// A parsed job: one recipient, or a batch to be expanded into one job per recipient.
#[derive(Debug)]
pub enum Parsed {
    Single(Job),
    Batch(Batch),
}

/// A job addressed to several recipients. Each becomes its own single job with the same id
/// (WeChat deduplicates per openid, so the shared `client_msg_id` is safe).
#[derive(Debug)]
pub struct Batch {
    pub id: JobId,
    /// The account every recipient's job is sent from.
    pub account: AccountId,
    pub appid: String,
    pub msg_type: MsgType,
    pub recipients: Vec<String>,
    pub not_after: Option<DateTime<Utc>>,
    /// Every recipient's job, serialized once without `touser` and without the closing
    /// brace: `{"id":…,"appid":…,"template_id":…,"data":{…}`. A batch of 10,000 recipients
    /// then costs one serialization of `data`, not 10,000 copies of it.
    head: Vec<u8>,
    /// Where `template_id` and the data keys lie in `head`.
    template: TemplateSpans,
}

impl Batch {
    /// The template every recipient's job is for.
    pub(crate) fn template(&self) -> TemplateFields<'_> {
        TemplateFields {
            written: &self.head,
            spans: &self.template,
        }
    }

    /// The JSON body of recipient `touser`'s single job, as it is published back to the queue.
    pub fn job_for(&self, touser: &str) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.head.len() + touser.len() + 16);
        body.extend_from_slice(&self.head);
        body.extend_from_slice(b",\"touser\":");
        serde_json::to_writer(&mut body, touser).expect("a string always serializes");
        body.push(b'}');
        body
    }
}

/// Partial facts about a job, known even when it is invalid, so the `invalid` outcome can
/// still carry whatever id, appid and touser could be read.
#[derive(Debug, Default, Clone)]
pub struct PartialJob {
    pub id: Option<String>,
    pub appid: Option<String>,
    pub touser: Option<String>,
    /// `None` when the body or its `type` is unreadable.
    pub msg_type: Option<MsgType>,
}

/// Parses and validates a job body.
///
/// `message_id` is the AMQP `message_id` property, used as the id when the body has none.
pub fn parse(
    body: &[u8],
    message_id: Option<&str>,
    config: &Config,
) -> Result<Parsed, (InvalidJob, PartialJob)> {
    let result = match read(body, config) {
        Ok(fields) => fields
            .validate(body, message_id, config)
            .map_err(|e| (e, fields.known(body, message_id, config))),
        Err(e) => Err((e, PartialJob::default())),
    };
    result.map_err(|(e, mut known)| {
        // Even an unreadable job gets an id (as a valid one would), so its outcome can be told
        // apart from others.
        if known.id.is_none() {
            known.id = Some(match message_id.and_then(|m| JobId::parse(m).ok()) {
                Some(id) => id.0,
                None => JobId::from_body(body).0,
            });
        }
        (e, known)
    })
}

/// The size, encoding and syntax checks, then the body read into its members.
fn read<'a>(body: &'a [u8], config: &Config) -> Result<Box<Fields<'a>>, InvalidJob> {
    if body.len() > config.limits.max_job_bytes {
        return Err(InvalidJob::new(
            "too_large",
            format!(
                "body is {} bytes, the limit is {}",
                body.len(),
                config.limits.max_job_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| InvalidJob::new("bad_utf8", format!("body is not UTF-8: {e}")))?;
    match serde_json::from_str(text) {
        Ok(Body::Object(fields)) => Ok(fields),
        Ok(Body::NotObject) => Err(InvalidJob::new("not_object", "body must be a JSON object")),
        Err(e) => Err(InvalidJob::new(
            "bad_json",
            format!("body is not JSON: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests;
