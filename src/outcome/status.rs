//! The kinds of outcome and their typed statuses, each written as the word the contract
//! names (the outcome's `status` and the second part of its routing key).

use serde::Serialize;

/// What an outcome reports: a send attempt, a delivery receipt or a consent pushed by WeChat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Send,
    Receipt,
    /// A user's accept/reject of a subscription template, from WeChat's callback.
    Consent,
    /// Another push (a follow, a menu click, a user's message), when events are published.
    Event,
    /// A merchant's authorization of a third-party platform (component mode).
    Authorization,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Send => "send",
            Kind::Receipt => "receipt",
            Kind::Consent => "consent",
            Kind::Event => "event",
            Kind::Authorization => "authorization",
        }
    }
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

    /// Every status, in declaration order: `ALL[s as usize] == s`.
    pub const ALL: [SendStatus; 5] = [
        SendStatus::Sent,
        SendStatus::Rejected,
        SendStatus::Failed,
        SendStatus::Invalid,
        SendStatus::Expired,
    ];
}

/// The outcome reported by a delivery receipt (`TEMPLATESENDJOBFINISH`, or a subscription
/// message's sent event).
///
/// WeChat's status strings are irregular (note the space in `failed: system failed`), so they
/// are mapped once here and the rest of the worker deals in this enum. Unknown values are kept
/// verbatim rather than dropped, so a new status shows up in receipts instead of vanishing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReceiptStatus {
    /// `success`: the user received the message.
    Delivered,
    /// `failed:user block`: the user refuses messages from this account.
    Blocked,
    /// `failed: system failed`: WeChat could not deliver it.
    Undelivered,
    /// Any other status, verbatim.
    Other(String),
}

impl ReceiptStatus {
    /// Maps WeChat's `Status` text. Surrounding whitespace is ignored when
    /// matching, but an unrecognised value is kept exactly as received.
    pub fn from_wechat(status: &str) -> ReceiptStatus {
        match status.trim() {
            "success" => ReceiptStatus::Delivered,
            "failed:user block" => ReceiptStatus::Blocked,
            "failed: system failed" => ReceiptStatus::Undelivered,
            _ => ReceiptStatus::Other(status.to_owned()),
        }
    }

    /// The status word recorded in receipts: `delivered`, `blocked`,
    /// `undelivered`, or the raw WeChat status.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            ReceiptStatus::Other(raw) => raw,
            known => known.label(),
        }
    }

    /// The metric label: the status word, or `other` for a verbatim status (labels stay a
    /// small, fixed set).
    pub fn label(&self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Blocked => "blocked",
            ReceiptStatus::Undelivered => "undelivered",
            ReceiptStatus::Other(_) => "other",
        }
    }
}

impl std::fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user's answer about a subscription template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConsentStatus {
    Accept,
    Reject,
    /// Any other `SubscribeStatusString`, verbatim, so a new value shows up instead of
    /// vanishing.
    Other(String),
}

impl ConsentStatus {
    /// Maps WeChat's `SubscribeStatusString`, ignoring surrounding whitespace.
    pub fn from_wechat(raw: &str) -> ConsentStatus {
        match raw.trim() {
            "accept" => ConsentStatus::Accept,
            "reject" => ConsentStatus::Reject,
            _ => ConsentStatus::Other(raw.to_owned()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            ConsentStatus::Other(raw) => raw,
            known => known.label(),
        }
    }

    /// The metric label: `accept`, `reject` or `other`.
    pub fn label(&self) -> &'static str {
        match self {
            ConsentStatus::Accept => "accept",
            ConsentStatus::Reject => "reject",
            ConsentStatus::Other(_) => "other",
        }
    }
}

/// An outcome's status, typed by its kind: the kind is read from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    Send(SendStatus),
    Receipt(ReceiptStatus),
    Consent(ConsentStatus),
    Event(super::EventStatus),
    Authorization(super::AuthorizationStatus),
}

impl Status {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Status::Send(_) => Kind::Send,
            Status::Receipt(_) => Kind::Receipt,
            Status::Consent(_) => Kind::Consent,
            Status::Event(_) => Kind::Event,
            Status::Authorization(_) => Kind::Authorization,
        }
    }

    /// The `status` word of the outcome's JSON and routing key.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Status::Send(s) => s.as_str(),
            Status::Receipt(s) => s.as_str(),
            Status::Consent(s) => s.as_str(),
            Status::Event(s) => s.as_str(),
            Status::Authorization(s) => s.as_str(),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
