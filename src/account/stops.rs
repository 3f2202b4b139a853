//! Whether an account is stopped, on the send side or the token side.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::{AccountGauge, Metrics, SeriesLabel};

/// Whether an account is stopped by a configuration error, on either side: a send refused for
/// the account's setup (40164 IP whitelist, 48001 API unauthorized, ...) or the token endpoint
/// refusing its credentials. The one writer of `wxdispatch_account_stopped{appid}`, which is 1
/// while either side is stopped, so a token recovery cannot clear the gauge while sends are
/// still stopped (and the other way round).
pub struct AccountStops {
    gauge: AccountGauge,
    /// The send side: the errcode and when one probe send may go out.
    send: Mutex<Option<(i64, Instant)>>,
    /// The token side (its circuit breaker lives in the token cache).
    token: std::sync::atomic::AtomicBool,
}

impl AccountStops {
    pub fn new(appid: &str, metrics: &Metrics) -> AccountStops {
        Self::labelled(&SeriesLabel::own(appid), metrics)
    }

    /// [`AccountStops::new`] for an account whose series carry `label`: folded, it adds to
    /// `_other`, which so counts the folded accounts stopped.
    pub fn labelled(label: &SeriesLabel, metrics: &Metrics) -> AccountStops {
        AccountStops {
            gauge: AccountGauge::new(&metrics.account_stopped, label),
            send: Mutex::new(None),
            token: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How long a send must wait because the send side is stopped, or `None` to send. Once
    /// the hold has passed, exactly one caller gets `None` (the probe) and the hold is renewed
    /// for everybody else; a successful probe clears it.
    pub(crate) fn send_hold(&self, probe_every: Duration) -> Option<Duration> {
        let mut stop = self.send.lock().expect("stop lock");
        let (code, until) = (*stop)?;
        let now = Instant::now();
        if now < until {
            return Some(until - now);
        }
        *stop = Some((code, now + probe_every));
        None
    }

    /// Stops sends for `hold`. Returns whether the send side was running until now.
    pub(crate) fn stop_sends(&self, code: i64, hold: Duration) -> bool {
        let was_running = {
            let mut stop = self.send.lock().expect("stop lock");
            let was_running = stop.is_none();
            *stop = Some((code, Instant::now() + hold));
            was_running
        };
        self.update();
        was_running
    }

    /// A send succeeded: clears the send side's stop. Returns whether there was one.
    pub(crate) fn resume_sends(&self) -> bool {
        let had = self.send.lock().expect("stop lock").take().is_some();
        if had {
            self.update();
        }
        had
    }

    /// The token side stopped (`true`) or resumed (`false`).
    pub(crate) fn set_token_stopped(&self, stopped: bool) {
        self.token
            .store(stopped, std::sync::atomic::Ordering::Relaxed);
        self.update();
    }

    fn update(&self) {
        let send = self.send.lock().expect("stop lock").is_some();
        let token = self.token.load(std::sync::atomic::Ordering::Relaxed);
        self.gauge.set(i64::from(send || token));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauge stays 1 while either side is stopped; the token side's recovery
    /// does not hide a send-side stop.
    #[test]
    fn the_account_stopped_gauge_follows_both_sides() {
        let m = Metrics::new();
        let stops = AccountStops::new("wxstop", &m);
        let gauge = || m.account_stopped.with_label_values(&["wxstop"]).get();
        assert!(stops.stop_sends(40164, Duration::from_secs(60)));
        stops.set_token_stopped(true);
        stops.set_token_stopped(false);
        assert_eq!(gauge(), 1, "sends are still stopped");
        assert!(stops.resume_sends());
        assert_eq!(gauge(), 0);
        stops.set_token_stopped(true);
        assert!(!stops.resume_sends(), "no send-side stop to clear");
        assert_eq!(gauge(), 1, "the token side is still stopped");
    }
}
