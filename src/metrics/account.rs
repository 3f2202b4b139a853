//! One account's metric handles.

use prometheus::{Histogram, IntCounter};

use super::{Metrics, SeriesLabel};
use crate::job::MsgType;
use crate::outcome::SendStatus;

/// One account's handles for the series every job touches, resolved once at start-up: a
/// `with_label_values` call hashes its labels and takes the vector's lock each time, and at
/// thousands of jobs per second that is measurable. Rarer series (retries, deferrals, errors)
/// keep their lookups.
#[derive(Clone)]
pub struct AccountMetrics {
    /// The `appid` label of every series of this account.
    pub label: SeriesLabel,
    /// `wxdispatch_jobs_total{status="sent",reason="none"}`, one per [`MsgType`] in
    /// `MsgType::ALL` order: the outcome of almost every job.
    sent: [IntCounter; MsgType::ALL.len()],
    /// `wxdispatch_send_duration_seconds`.
    pub send_duration: Histogram,
    /// `wxdispatch_api_requests_total{errcode="0"}`: the answer of almost every send.
    pub api_ok: IntCounter,
    /// `wxdispatch_catalogue_unchecked_total`.
    pub catalogue_unchecked: IntCounter,
}

impl AccountMetrics {
    /// The `jobs_total` counter of a job of this type sent without a reason (`ALL` is in
    /// declaration order).
    pub(crate) fn sent(&self, msg_type: MsgType) -> &IntCounter {
        &self.sent[msg_type as usize]
    }
}

impl Metrics {
    /// Creates an account's series (so dashboards and alerts see zeros, not nothing) and
    /// returns its hot-path handles. `label` is the account's `appid` label: its appid, or
    /// `_other` for a folded authorizer.
    pub(crate) fn init_account(&self, label: &SeriesLabel) -> AccountMetrics {
        let appid = label.as_str();
        self.token_refreshes_total.with_label_values(&[appid, "ok"]);
        self.retries_total.with_label_values(&[appid, "busy"]);
        self.token_force_skipped_total
            .with_label_values(&[appid, "budget_spent"]);
        self.deferred_total.with_label_values(&[appid, "quota"]);
        self.send_duration_seconds.with_label_values(&[appid]);
        self.limiter_wait_seconds.with_label_values(&[appid]);
        self.api_requests_total.with_label_values(&[appid, "0"]);
        if !label.is_folded() {
            // A token's gauges have no `_other` series: their sum would mean nothing.
            self.token_expires_in_seconds.with_label_values(&[appid]);
            self.token_age_seconds.with_label_values(&[appid]);
        }
        for s in ["delivered", "blocked", "undelivered"] {
            self.receipts_total.with_label_values(&[s]);
        }
        self.dead_letters_total.with_label_values(&["invalid"]);
        self.catalogue_unchecked_total.with_label_values(&[appid]);
        AccountMetrics {
            label: label.clone(),
            sent: MsgType::ALL.map(|t| {
                self.jobs_total.with_label_values(&[
                    appid,
                    t.as_str(),
                    SendStatus::Sent.as_str(),
                    "none",
                ])
            }),
            send_duration: self.send_duration_seconds.with_label_values(&[appid]),
            api_ok: self.api_requests_total.with_label_values(&[appid, "0"]),
            catalogue_unchecked: self.catalogue_unchecked_total.with_label_values(&[appid]),
        }
    }
}
