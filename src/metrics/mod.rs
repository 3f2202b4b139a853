//! Prometheus metrics.
//!
//! Each worker owns its own [`Registry`], so several workers in one test process never mix
//! their numbers. Labels stay bounded: `appid`, `errcode`, `status` and `reason` words, never an
//! openid or a job id; and `appid` takes at most `metrics_top_accounts` authorizers' appids
//! besides the configured accounts', the others' series being folded into `_other` ([`fold`]).

mod account;
pub mod fold;

pub use account::AccountMetrics;

pub use fold::{AccountGauge, OTHER, SeriesLabel, SeriesPlaces};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `reason` label of `wxdispatch_jobs_total` for an outcome's reason. The reasons are the
/// outcome schema's words: the errcode table's, the policy's end reasons, the parser's and the
/// transport's, plus `errcode_<n>` and `http_<status>`, whose numbers WeChat and HTTP bound. A
/// word outside that shape (none is known) becomes `other`, so the label stays bounded.
pub(crate) fn reason_label(reason: Option<&str>) -> &str {
    match reason {
        None => "none",
        Some(r)
            if !r.is_empty()
                && r.len() <= 40
                && r.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                }) =>
        {
            r
        }
        Some(_) => "other",
    }
}

/// All metrics of one worker process.
pub struct Metrics {
    registry: Registry,
    pub jobs_total: IntCounterVec,
    pub api_requests_total: IntCounterVec,
    pub send_duration_seconds: HistogramVec,
    pub retries_total: IntCounterVec,
    pub token_refreshes_total: IntCounterVec,
    /// Forced `stable_token` refreshes left today (the budget, not WeChat's own 20).
    pub token_force_budget_remaining: IntGaugeVec,
    /// Forced refreshes that a token error could have asked for but the policy did not make.
    pub token_force_skipped_total: IntCounterVec,
    /// Sends made without the template-catalogue check because the catalogue could not be
    /// fetched (the check is a help, never a reason to stop sending).
    pub catalogue_unchecked_total: IntCounterVec,
    pub inflight: IntGauge,
    pub quota_paused: IntGaugeVec,
    /// The configured `daily_quota` of each account that has one.
    pub daily_quota: IntGaugeVec,
    /// Sends counted against today's quota (Beijing day); with Redis, every replica's.
    pub sent_today: IntGaugeVec,
    pub receipts_total: IntCounterVec,
    pub amqp_connected: IntGauge,
    pub token_expires_in_seconds: IntGaugeVec,
    pub token_age_seconds: IntGaugeVec,
    pub limiter_wait_seconds: HistogramVec,
    pub deferred_total: IntCounterVec,
    pub dead_letters_total: IntCounterVec,
    pub publisher_refused_total: IntCounterVec,
    pub amqp_reconnects_total: IntCounter,
    /// `basic.ack` frames sent, by `multiple`: with `wxdispatch_jobs_total` it shows how many
    /// jobs one ack settles (see amqp::acks).
    pub amqp_acks_total: IntCounterVec,
    pub callback_requests_total: IntCounterVec,
    /// Pushes forwarded to `callback_forward_url`, by `result` (its series are the forwarder's).
    pub callback_forward_total: IntCounterVec,
    /// How long a forward took, whatever came of it.
    pub callback_forward_duration_seconds: Histogram,
    pub build_info: IntGaugeVec,
    pub account_stopped: IntGaugeVec,
    pub ready: IntGauge,
    pub redis_fallback: IntGauge,
    pub outcome_latency_seconds: Histogram,
    /// From the job's publish (its AMQP `timestamp` property) to its final outcome, deferrals
    /// included: what an upstream waits for. Only jobs that carry a timestamp are counted.
    pub publish_latency_seconds: Histogram,
    /// From the job's publish to its first delivery: how old the head of the jobs queue is
    /// when a worker reaches it (the "oldest job" alert reads it).
    pub queue_wait_seconds: Histogram,
    /// Outcome publishes the broker refused (a full queue with `reject-publish`: `nacked`; no
    /// queue bound: `returned`). The job waits unacked and the publish is retried.
    pub outcomes_refused_total: IntCounterVec,
    /// Jobs sent whose outcome is waiting for the broker to take it.
    pub outcomes_waiting: IntGauge,
    /// Deferred (`delay`) and dead-letter (`dead`) copies of jobs that the broker refused.
    pub copies_refused_total: IntCounterVec,
    /// Jobs whose deferred or dead-letter copy waits for the broker to take it.
    pub copies_waiting: IntGaugeVec,
    /// Subscription consents from the callback, by `status` (accept/reject/other) and
    /// `source` (popup/settings): how many users allow which messages, and from where.
    pub consents_total: IntCounterVec,
}

/// Buckets for ages that include the backlog and deferrals: a quota pause defers jobs for
/// hours, up to the next Beijing day, so the buckets reach 24 h.
const AGE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0, 43200.0, 86400.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
            let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        fn plain_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
            let m = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        fn histogram(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
            buckets: Vec<f64>,
        ) -> HistogramVec {
            let m = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        let latency = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let r = &registry;
        let amqp_reconnects_total =
            IntCounter::new("wxdispatch_amqp_reconnects_total", "AMQP reconnections")
                .expect("valid metric");
        r.register(Box::new(amqp_reconnects_total.clone()))
            .expect("unique metric");
        let outcome_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wxdispatch_job_latency_seconds",
                "Time from a job's first delivery to its confirmed outcome",
            )
            .buckets(latency.clone()),
        )
        .expect("valid metric");
        r.register(Box::new(outcome_latency_seconds.clone()))
            .expect("unique metric");
        let age_histogram = |name: &str, help: &str| {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(AGE_BUCKETS.to_vec()))
                    .expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let publish_latency_seconds = age_histogram(
            "wxdispatch_job_publish_latency_seconds",
            "Time from a job's publish (AMQP timestamp) to its final outcome, deferrals included",
        );
        let queue_wait_seconds = age_histogram(
            "wxdispatch_job_queue_wait_seconds",
            "Time from a job's publish (AMQP timestamp) to its first delivery to a worker",
        );
        // CPU, memory, open files and start time of this process (process_* series), the
        // first things to look at when a worker misbehaves. Linux only, like the image.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        let m = Metrics {
            jobs_total: counter(
                r,
                "wxdispatch_jobs_total",
                "Final job outcomes by status, message type and reason",
                &["appid", "type", "status", "reason"],
            ),
            api_requests_total: counter(
                r,
                "wxdispatch_api_requests_total",
                "WeChat send API requests by errcode (or http_<status>, timeout, connect)",
                &["appid", "errcode"],
            ),
            send_duration_seconds: histogram(
                r,
                "wxdispatch_send_duration_seconds",
                "Duration of one template/send HTTP request",
                &["appid"],
                latency.clone(),
            ),
            retries_total: counter(
                r,
                "wxdispatch_retries_total",
                "Send retries by reason",
                &["appid", "reason"],
            ),
            token_refreshes_total: counter(
                r,
                "wxdispatch_token_refreshes_total",
                "Access-token fetches by result",
                &["appid", "result"],
            ),
            token_force_budget_remaining: gauge(
                r,
                "wxdispatch_token_force_budget_remaining",
                "Forced stable_token refreshes left today (Beijing time) in this worker's budget",
                &["appid"],
            ),
            token_force_skipped_total: counter(
                r,
                "wxdispatch_token_force_skipped_total",
                "Token errors that did not lead to a forced refresh, by reason",
                &["appid", "reason"],
            ),
            catalogue_unchecked_total: counter(
                r,
                "wxdispatch_catalogue_unchecked_total",
                "Sends made without checking the template catalogue, because it could not be fetched",
                &["appid"],
            ),
            inflight: plain_gauge(r, "wxdispatch_inflight", "Jobs being processed now"),
            quota_paused: gauge(
                r,
                "wxdispatch_quota_paused",
                "1 while an account is paused on its daily quota (45009)",
                &["appid"],
            ),
            daily_quota: gauge(
                r,
                "wxdispatch_daily_quota",
                "The configured daily quota of an account (absent when none is configured)",
                &["appid"],
            ),
            sent_today: gauge(
                r,
                "wxdispatch_sent_today",
                "Sends counted against today's quota (Beijing day); with Redis, all replicas' sends",
                &["appid"],
            ),
            receipts_total: counter(
                r,
                "wxdispatch_receipts_total",
                "Delivery receipts (TEMPLATESENDJOBFINISH) by status",
                &["status"],
            ),
            amqp_connected: plain_gauge(
                r,
                "wxdispatch_amqp_connected",
                "1 while both AMQP connections are up",
            ),
            token_expires_in_seconds: gauge(
                r,
                "wxdispatch_token_expires_in_seconds",
                "Seconds until the cached access token expires",
                &["appid"],
            ),
            token_age_seconds: gauge(
                r,
                "wxdispatch_token_age_seconds",
                "Seconds since the cached access token was fetched",
                &["appid"],
            ),
            limiter_wait_seconds: histogram(
                r,
                "wxdispatch_limiter_wait_seconds",
                "Time a send waited for its account's rate limiter",
                &["appid"],
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
            ),
            deferred_total: counter(
                r,
                "wxdispatch_deferred_total",
                "Jobs parked in a delay queue, by reason",
                &["appid", "reason"],
            ),
            dead_letters_total: counter(
                r,
                "wxdispatch_dead_letters_total",
                "Jobs copied to the dead-letter queue, by reason",
                &["reason"],
            ),
            publisher_refused_total: counter(
                r,
                "wxdispatch_publisher_refused_total",
                "Jobs refused because their AMQP user_id is not on the account's publishers list",
                &["appid"],
            ),
            amqp_reconnects_total,
            amqp_acks_total: counter(
                r,
                "wxdispatch_amqp_acks_total",
                "basic.ack frames sent for jobs, by whether one frame acked several (multiple)",
                &["multiple"],
            ),
            callback_requests_total: counter(
                r,
                "wxdispatch_callback_requests_total",
                "WeChat callback requests by result",
                &["result"],
            ),
            callback_forward_total: counter(
                r,
                "wxdispatch_callback_forward_total",
                "Pushes forwarded to callback_forward_url, by result (ok, refused: 4xx passed on; error_status, timeout, unreachable, bad_reply: WeChat got success)",
                &["result"],
            ),
            callback_forward_duration_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "wxdispatch_callback_forward_duration_seconds",
                        "Time from forwarding a push to having the existing server's whole answer (or giving up)",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0,
                    ]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            build_info: gauge(
                r,
                "wxdispatch_build_info",
                "Build information; always 1",
                &["version"],
            ),
            account_stopped: gauge(
                r,
                "wxdispatch_account_stopped",
                "1 while an account is stopped by a configuration error",
                &["appid"],
            ),
            ready: plain_gauge(r, "wxdispatch_ready", "1 while the worker is ready"),
            redis_fallback: plain_gauge(
                r,
                "wxdispatch_redis_fallback",
                "1 while the shared Redis limiter is unreachable and the local fallback rate is in use",
            ),
            outcome_latency_seconds,
            publish_latency_seconds,
            queue_wait_seconds,
            outcomes_refused_total: counter(
                r,
                "wxdispatch_outcomes_refused_total",
                "Outcome publishes refused by the broker (nacked: a queue is full; returned: unroutable); the job waits and is retried",
                &["reason"],
            ),
            outcomes_waiting: plain_gauge(
                r,
                "wxdispatch_outcomes_waiting",
                "Jobs whose outcome waits for the broker to accept it (not acked, not sent again)",
            ),
            copies_refused_total: counter(
                r,
                "wxdispatch_copies_refused_total",
                "Deferred (target delay) and dead-letter (target dead) copies of jobs refused by the broker (nacked: a full queue; returned: unroutable); the job waits and is retried",
                &["target", "reason"],
            ),
            copies_waiting: gauge(
                r,
                "wxdispatch_copies_waiting",
                "Jobs whose deferred or dead-letter copy waits for the broker to accept it (not acked, not sent again)",
                &["target"],
            ),
            consents_total: counter(
                r,
                "wxdispatch_consents_total",
                "Subscription consents (subscribe_msg_popup_event / subscribe_msg_change_event) stored, by status and source",
                &["status", "source"],
            ),
            registry,
        };
        for status in ["accept", "reject"] {
            for source in ["popup", "settings"] {
                m.consents_total.with_label_values(&[status, source]);
            }
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for multiple in ["true", "false"] {
            m.amqp_acks_total.with_label_values(&[multiple]);
        }
        for reason in ["nacked", "returned"] {
            m.outcomes_refused_total.with_label_values(&[reason]);
            for target in ["delay", "dead"] {
                m.copies_refused_total.with_label_values(&[target, reason]);
            }
        }
        for target in ["delay", "dead"] {
            m.copies_waiting.with_label_values(&[target]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::reason_label;

    #[test]
    fn a_reason_label_is_the_reason_word_or_a_bounded_stand_in() {
        assert_eq!(reason_label(None), "none");
        for word in [
            "invalid_openid",
            "errcode_-1",
            "http_502",
            "not_after_passed",
            "permission_not_granted",
        ] {
            assert_eq!(reason_label(Some(word)), word);
        }
        for odd in ["", "Bad Reason", "a.b", &"x".repeat(41)] {
            assert_eq!(reason_label(Some(odd)), "other", "{odd:?}");
        }
    }
}
