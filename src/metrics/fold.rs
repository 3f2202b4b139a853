//! Which accounts have `appid` series of their own. A platform may send for 10,000 authorizers,
//! and a series per appid and metric would flood Prometheus; so the configured accounts and
//! at most `metrics_top_accounts` authorizers have their own series, and every other
//! authorizer's are folded into `appid="_other"`.
//!
//! The policy is first come, first kept: the first authorizers the worker sends for take the
//! places, and an account keeps its label for the life of the process. A re-ranked "busiest N"
//! would make series appear and vanish as merchants' traffic shifts, which breaks `rate()`
//! across the move, makes alerts keyed on an appid flap, and needs every per-account handle to
//! be swappable on the hot path and a sweep over every account. Here the label is decided once,
//! when the account is built, and the hot path keeps its resolved handles. An operator who must
//! see a merchant on its own gives it an `[[accounts]]` entry: configured accounts always keep
//! their series.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntGauge, IntGaugeVec};

/// The `appid` label value of folded authorizers.
pub const OTHER: &str = "_other";

/// The `appid` label an account's series carry: its own appid, or [`OTHER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLabel {
    value: Arc<str>,
    folded: bool,
}

impl SeriesLabel {
    /// An account with series of its own.
    pub fn own(appid: &str) -> SeriesLabel {
        SeriesLabel {
            value: appid.into(),
            folded: false,
        }
    }

    /// An account counted in `appid="_other"`.
    pub fn folded() -> SeriesLabel {
        SeriesLabel {
            value: OTHER.into(),
            folded: true,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Whether the account shares `_other` with other authorizers.
    pub fn is_folded(&self) -> bool {
        self.folded
    }

    /// The label of one of the account's sub-series, such as `<appid>:miniprogram_subscribe`
    /// (`_other:miniprogram_subscribe` when folded).
    pub fn with_suffix(&self, suffix: &str) -> SeriesLabel {
        SeriesLabel {
            value: format!("{}:{suffix}", self.value).into(),
            folded: self.folded,
        }
    }
}

/// Hands out the authorizers' places: the first `top` authorizers get their own series, and
/// keep them when their account is built again (after an `unauthorized` and a new
/// authorization), so a place is never taken twice by one appid.
#[derive(Debug)]
pub struct SeriesPlaces {
    top: usize,
    holders: Mutex<HashSet<Arc<str>>>,
}

impl SeriesPlaces {
    pub fn new(top: usize) -> SeriesPlaces {
        SeriesPlaces {
            top,
            holders: Mutex::default(),
        }
    }

    /// The label of an authorizer built now: its own if it holds a place or one is left, else
    /// `_other`.
    pub fn authorizer(&self, appid: &str) -> SeriesLabel {
        let mut holders = self.holders.lock().expect("places lock");
        if holders.contains(appid) {
            return SeriesLabel::own(appid);
        }
        if holders.len() < self.top {
            holders.insert(appid.into());
            return SeriesLabel::own(appid);
        }
        SeriesLabel::folded()
    }
}

/// One account's value of a gauge. An account with its own series sets it; a folded one adds
/// the change of its own value to `_other`, which so holds the sum over the folded accounts
/// (how many are paused or stopped, how many sends they made today).
pub struct AccountGauge {
    series: IntGauge,
    /// This account's part of the shared `_other` series, when folded.
    mine: Option<AtomicI64>,
}

impl AccountGauge {
    pub fn new(vec: &IntGaugeVec, label: &SeriesLabel) -> AccountGauge {
        AccountGauge {
            series: vec.with_label_values(&[label.as_str()]),
            mine: label.is_folded().then(|| AtomicI64::new(0)),
        }
    }

    pub fn set(&self, v: i64) {
        match &self.mine {
            None => self.series.set(v),
            Some(mine) => {
                let before = mine.swap(v, Ordering::Relaxed);
                self.series.add(v - before);
            }
        }
    }

    /// This account's value.
    pub fn get(&self) -> i64 {
        match &self.mine {
            None => self.series.get(),
            Some(mine) => mine.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_top_authorizers_keep_their_own_label_and_the_rest_fold() {
        let places = SeriesPlaces::new(2);
        let labels: Vec<_> = ["wxa", "wxb", "wxc", "wxd"]
            .iter()
            .map(|a| places.authorizer(a))
            .collect();
        assert_eq!(labels[0], SeriesLabel::own("wxa"));
        assert_eq!(labels[1], SeriesLabel::own("wxb"));
        for l in &labels[2..] {
            assert_eq!(l.as_str(), OTHER);
            assert!(l.is_folded());
        }
    }

    #[test]
    fn an_authorizer_built_again_keeps_its_place() {
        let places = SeriesPlaces::new(1);
        assert!(!places.authorizer("wxa").is_folded());
        assert!(!places.authorizer("wxa").is_folded(), "the same place");
        assert!(
            places.authorizer("wxb").is_folded(),
            "the one place is taken"
        );
    }

    #[test]
    fn no_places_folds_every_authorizer() {
        let places = SeriesPlaces::new(0);
        assert!(places.authorizer("wxa").is_folded());
    }

    /// Places are taken once each, however many threads build authorizers at once.
    #[test]
    fn places_are_never_given_twice() {
        let places = Arc::new(SeriesPlaces::new(50));
        let own: usize = (0..8)
            .map(|t| {
                let p = places.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| !p.authorizer(&format!("wx{t}_{i}")).is_folded())
                        .count()
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(own, 50);
    }

    #[test]
    fn a_sub_series_label_follows_its_account() {
        let own = SeriesLabel::own("wxa").with_suffix("miniprogram_subscribe");
        assert_eq!(own.as_str(), "wxa:miniprogram_subscribe");
        assert!(!own.is_folded());
        let folded = SeriesLabel::folded().with_suffix("miniprogram_subscribe");
        assert_eq!(folded.as_str(), "_other:miniprogram_subscribe");
        assert!(folded.is_folded());
    }

    /// Folded accounts' gauges add up in `_other`; an own account's gauge is its value.
    #[test]
    fn folded_gauges_sum_their_accounts_values() {
        let vec = IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["appid"]).unwrap();
        let (a, b) = (
            AccountGauge::new(&vec, &SeriesLabel::folded()),
            AccountGauge::new(&vec, &SeriesLabel::folded()),
        );
        let own = AccountGauge::new(&vec, &SeriesLabel::own("wxa"));
        a.set(1);
        b.set(1);
        own.set(1);
        own.set(1);
        assert_eq!(vec.with_label_values(&[OTHER]).get(), 2);
        a.set(0);
        b.set(5);
        assert_eq!(vec.with_label_values(&[OTHER]).get(), 5);
        assert_eq!((a.get(), b.get()), (0, 5));
        assert_eq!(vec.with_label_values(&["wxa"]).get(), 1);
    }
}
