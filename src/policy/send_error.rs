//! The ways a send can fail without a WeChat answer, each carrying what it means for a retry:
//! whether the message may have reached WeChat, and the label it is counted and reported by.
//! The HTTP client produces them; the decision core reads them.

use std::time::Duration;

/// A request that got no usable WeChat reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The connection could not be made: the request never left, so nothing was sent.
    #[error("connect error: {0}")]
    Connect(String),
    /// No answer in time: the message may or may not have been sent.
    #[error("timeout")]
    Timeout,
    /// An HTTP status other than 200. Whether the message may have been sent, and whether to
    /// retry, is the policy table's call ([`super::errcode::http_rule`]).
    #[error("http status {status}")]
    Status {
        status: u16,
        /// The reply's `Retry-After`, if it had a readable one: the least time to wait.
        retry_after: Option<Duration>,
    },
    /// The reply could not be read or parsed: may or may not have been sent.
    #[error("bad reply: {0}")]
    BadReply(String),
}

impl SendError {
    /// Whether the message could have reached WeChat despite the error.
    pub(crate) fn maybe_sent(&self) -> bool {
        match self {
            SendError::Connect(_) => false,
            SendError::Status { status, .. } => super::errcode::http_rule(*status).maybe_sent,
            SendError::Timeout | SendError::BadReply(_) => true,
        }
    }

    /// A short, bounded label for metrics and outcomes.
    pub(crate) fn label(&self) -> String {
        match self {
            SendError::Connect(_) => "connect".into(),
            SendError::Timeout => "timeout".into(),
            SendError::Status { status, .. } => format!("http_{status}"),
            SendError::BadReply(_) => "bad_reply".into(),
        }
    }
}
