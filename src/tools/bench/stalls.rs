//! Where a latency tail comes from: runs of jobs that were all late together.
//!
//! A p99 of hundreds of milliseconds at a steady rate means hundreds of consecutive jobs were
//! held up at once, a stall of the whole path rather than single slow sends. For each such run
//! the report also gives the slowest *publish confirm* of the bench's own job publishes in it.
//! Those confirms involve only the broker (the worker never sees a job before it is confirmed
//! to the bench), so a run whose publish confirms were as slow as its outcomes was a stall of
//! the broker, and a run whose confirms were quick was one of the worker or the outcome path.

use serde::Serialize;

/// A job is late when its publish-to-outcome latency is above this.
pub(crate) const LATE_MS: f64 = 100.0;

/// Late jobs closer together than this (in publish order) belong to one stall.
const MERGE_GAP: usize = 50;

/// At most this many stalls are listed (the longest first); `late_jobs` counts them all.
const MOST: usize = 10;

/// One run of late jobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Stall {
    /// When its first late job was published, in seconds since the bench started publishing.
    pub at_s: f64,
    /// The same moment as a UTC time, to match against broker logs and system traces.
    pub at_utc: String,
    /// Late jobs in the run.
    pub jobs: usize,
    /// The slowest publish-to-outcome latency in the run.
    pub max_ms: f64,
    /// The slowest confirm of the bench's own publishes in the run (the broker alone).
    pub max_publish_confirm_ms: f64,
}

/// The stalls of a run. `sent_ns[i]`, `outcome_ms[i]` and `confirm_ms[i]` describe job `i`, in
/// publish order; `None` is a job without an outcome or a confirm. `start` is the wall-clock
/// time of `sent_ns == 0`.
pub(crate) fn find(
    sent_ns: &[u64],
    outcome_ms: &[Option<f64>],
    confirm_ms: &[Option<f64>],
    start: chrono::DateTime<chrono::Utc>,
) -> Vec<Stall> {
    let late: Vec<usize> = (0..outcome_ms.len())
        .filter(|&i| outcome_ms[i].is_some_and(|ms| ms > LATE_MS))
        .collect();
    // The first and last late job of each run, and how many late jobs it holds.
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for &i in &late {
        match runs.last_mut() {
            Some((_, last, jobs)) if i - *last <= MERGE_GAP => {
                *last = i;
                *jobs += 1;
            }
            _ => runs.push((i, i, 1)),
        }
    }
    let mut stalls: Vec<Stall> = runs
        .into_iter()
        .map(|(first, last, jobs)| {
            let max = |v: &[Option<f64>]| {
                v[first..=last]
                    .iter()
                    .flatten()
                    .fold(0.0_f64, |m, &x| m.max(x))
            };
            let at = sent_ns[first];
            Stall {
                at_s: at as f64 / 1e9,
                at_utc: (start + chrono::Duration::nanoseconds(at as i64))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                jobs,
                max_ms: max(outcome_ms),
                max_publish_confirm_ms: max(confirm_ms),
            }
        })
        .collect();
    stalls.sort_by_key(|s| std::cmp::Reverse(s.jobs));
    stalls.truncate(MOST);
    stalls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_jobs_close_together_are_one_stall_with_its_slowest_confirm() {
        let n = 400;
        let sent: Vec<u64> = (0..n as u64).map(|i| i * 1_000_000).collect();
        let mut outcome = vec![Some(5.0); n];
        let mut confirm = vec![Some(2.0); n];
        // One stall of jobs 100..=140 (with a quick job inside it), the broker's confirms slow.
        for i in 100..=140 {
            outcome[i] = Some(300.0 - i as f64);
            confirm[i] = Some(250.0);
        }
        outcome[120] = Some(4.0);
        // A lone late job far away, confirmed quickly: the worker's side.
        outcome[300] = Some(150.0);
        outcome[301] = None;
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-01T19:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let s = find(&sent, &outcome, &confirm, start);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].jobs, 40);
        assert_eq!(s[0].max_ms, 200.0);
        assert_eq!(s[0].max_publish_confirm_ms, 250.0);
        assert_eq!(s[0].at_s, 0.1);
        assert_eq!(s[0].at_utc, "2026-12-01T19:00:00.100Z");
        assert_eq!(s[1].jobs, 1);
        assert_eq!(s[1].max_publish_confirm_ms, 2.0);
        assert!(find(&sent, &vec![Some(1.0); n], &confirm, start).is_empty());
    }
}
