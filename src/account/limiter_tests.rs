use super::*;

fn gate(quota: Option<u64>, probe: Duration) -> AccountGate {
    AccountGate::new("wxa", 1000, quota, probe, Arc::new(Metrics::new()))
}

#[test]
fn a_paused_account_lets_exactly_one_probe_through_per_interval() {
    let g = gate(None, Duration::from_secs(600));
    assert_eq!(g.admit(), Admission::Go);
    g.pause_quota();
    // Paused just now: the next probe is one interval away.
    assert!(matches!(
        g.admit(),
        Admission::Later {
            reason: DeferReason::Quota,
            ..
        }
    ));
    // Pretend the interval passed.
    g.state.lock().unwrap().last_probe = Some(Instant::now() - Duration::from_secs(601));
    assert_eq!(g.admit(), Admission::Probe);
    assert!(
        matches!(g.admit(), Admission::Later { .. }),
        "one probe at a time"
    );
    g.record_sent(true);
    assert_eq!(g.admit(), Admission::Go, "a successful probe resumes");
}

#[test]
fn the_local_daily_quota_pauses_before_it_is_exceeded() {
    let g = gate(Some(2), Duration::from_secs(600));
    assert_eq!(g.admit(), Admission::Go);
    assert_eq!(g.admit(), Admission::Go);
    // Two sends in flight already use up the quota of 2.
    assert!(matches!(
        g.admit(),
        Admission::Later {
            reason: DeferReason::Quota,
            ..
        }
    ));
    // One fails: its place comes back.
    drop(g.reservation(false));
    assert_eq!(g.admit(), Admission::Go);
    g.record_sent(false);
    g.record_sent(false);
    assert!(matches!(
        g.admit(),
        Admission::Later {
            reason: DeferReason::Quota,
            ..
        }
    ));
}

#[test]
fn minute_limit_waits_for_the_next_minute() {
    let g = gate(None, Duration::from_secs(600));
    let d = crate::policy::decision::until_next_minute(Utc::now().timestamp_millis());
    assert!(d <= Duration::from_millis(60_050));
    g.slow_down(d);
    assert!(matches!(
        g.admit(),
        Admission::Later {
            reason: DeferReason::RateMinute,
            ..
        }
    ));
}

#[test]
fn beijing_midnight_is_within_a_day() {
    let d = until_beijing_midnight();
    assert!(d > Duration::ZERO && d <= Duration::from_secs(86_400));
}

#[tokio::test]
async fn a_long_queue_of_waiters_is_told_to_defer() {
    let g = Arc::new(AccountGate::new(
        "wxa",
        2,
        None,
        Duration::from_secs(1),
        Arc::new(Metrics::new()),
    ));
    // Ten sends wait at 2/s: the tenth would wait about four seconds.
    let mut waiting = Vec::new();
    for _ in 0..10 {
        let g = g.clone();
        waiting.push(tokio::spawn(async move {
            g.pace_within(Duration::from_secs(60)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = g.pace_within(Duration::from_secs(1)).await;
    assert!(r.is_err(), "{r:?}");
    for w in waiting {
        w.abort();
    }
}

#[tokio::test]
async fn pacing_holds_the_rate() {
    let g = AccountGate::new(
        "wxa",
        100,
        None,
        Duration::from_secs(1),
        Arc::new(Metrics::new()),
    );
    let start = Instant::now();
    for _ in 0..55 {
        g.pace().await;
    }
    // 5 of burst, then 50 at 100/s: about half a second.
    let e = start.elapsed();
    assert!(e >= Duration::from_millis(450), "{e:?}");
}
