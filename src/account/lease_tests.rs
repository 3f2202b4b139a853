use super::*;

const MS: u64 = 1000;

fn lease(first_offset_us: i64, granted: u32) -> (Instant, Lease) {
    let t0 = Instant::now();
    // 10 ms between slots, 30 ms of tolerance; the schedule ends at 1,000,000 µs.
    let l = Lease::new(
        t0,
        first_offset_us,
        10 * MS,
        granted,
        Duration::from_millis(30),
        1_000_000,
    );
    (t0, l)
}

#[test]
fn slots_follow_the_schedule_from_the_first_one() {
    let (t0, mut l) = lease(5 * MS as i64, 3);
    assert_eq!(l.take(t0), Some(t0 + Duration::from_millis(5)));
    assert_eq!(l.take(t0), Some(t0 + Duration::from_millis(15)));
    assert_eq!(l.take(t0), Some(t0 + Duration::from_millis(25)));
    assert_eq!(l.take(t0), None, "three slots, three sends");
    assert_eq!(l.remaining(t0), 0);
}

#[test]
fn slots_in_the_past_go_at_once_within_the_tolerance_and_are_skipped_beyond_it() {
    // The schedule was idle: the lease starts 30 ms ago (its tolerance).
    let (t0, mut l) = lease(-30 * (MS as i64), 5);
    // At t0 the first slot is exactly 30 ms old: still usable.
    assert_eq!(l.take(t0), t0.checked_sub(Duration::from_millis(30)));
    // Slots at -20, -10, 0 and 10 ms. 25 ms later, those at -20 and -10 are more than 30 ms
    // old: skipped, so this replica cannot pile late sends onto the others' slots.
    let later = t0 + Duration::from_millis(25);
    assert_eq!(l.remaining(later), 2, "the slots at 0 and 10 ms");
    assert_eq!(l.take(later), Some(t0));
    assert_eq!(l.take(later), Some(t0 + Duration::from_millis(10)));
    assert_eq!(l.take(later), None);
}

#[test]
fn a_lease_left_unused_for_long_is_spent() {
    let (t0, mut l) = lease(0, 4);
    assert_eq!(l.take(t0 + Duration::from_secs(1)), None);
    assert_eq!(l.give_back(), None, "nothing left to give back");
}

#[test]
fn unused_slots_are_given_back_from_the_schedules_end() {
    let (t0, mut l) = lease(0, 10);
    for _ in 0..4 {
        l.take(t0).unwrap();
    }
    let back = l.give_back().unwrap();
    assert_eq!(
        back,
        GiveBack {
            end_us: 1_000_000,
            slots: 6,
            interval_us: 10 * MS
        }
    );
    assert_eq!(back.span_us(), 60 * MS);
    assert_eq!(l.take(t0), None, "given back means gone");
    assert_eq!(l.give_back(), None, "and given back once");
}

#[test]
fn every_slot_is_handed_out_once_and_never_before_its_time() {
    let (t0, mut l) = lease(0, 50);
    let mut seen = Vec::new();
    let mut now = t0;
    while let Some(at) = l.take(now) {
        seen.push(at);
        // Callers arrive at uneven times, some late.
        now += Duration::from_millis((seen.len() as u64 * 7) % 13);
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "distinct, in order");
    for at in &seen {
        let i = (at.duration_since(t0).as_millis() / 10) as u64;
        assert_eq!(*at, t0 + Duration::from_millis(i * 10), "on the schedule");
    }
}

#[test]
fn the_lease_size_follows_the_recent_rate_within_one_slot_and_the_burst() {
    let t0 = Instant::now();
    let usable = Duration::from_millis(50);
    let mut s = Sizer::new(t0);
    // A quiet account: one slot, so its first send goes at once.
    assert_eq!(s.size(t0, 1, 50, usable), 1);
    // Sends waiting now are served by one lease, up to the burst.
    assert_eq!(s.size(t0, 20, 50, usable), 20);
    assert_eq!(s.size(t0, 200, 50, usable), 50);
    // 1,000 sends over 250 ms: 4,000/s, so 50 ms of it is 200 slots, capped by the burst.
    for i in 0..1000u64 {
        s.note(t0 + Duration::from_micros(i * 250));
    }
    let t1 = t0 + Duration::from_millis(250);
    assert_eq!(s.size(t1, 1, 10_000, usable), 200);
    assert_eq!(s.size(t1, 300, 10_000, usable), 300);
    assert_eq!(s.size(t1, 1, 50, usable), 50);
    // A burst of 0 or 1 (rates under 40/s) means one slot per lease.
    assert_eq!(s.size(t1, 64, 0, usable), 1);
    assert_eq!(s.size(t1, 64, 1, usable), 1);
    // Quiet again: the next full window has no sends and the size falls back to one.
    let t2 = t1 + Duration::from_secs(5);
    assert_eq!(s.size(t2, 1, 10_000, usable), 1);
}

#[test]
fn a_lease_sized_from_the_recent_rate_is_spent_before_its_slots_go_stale() {
    // One of three replicas sharing 300/s: slots 3.3 ms apart, this replica's sends arrive
    // 10 ms apart. The lease starts now (only waiting sends take burst credit).
    let t0 = Instant::now();
    let usable = Duration::from_micros(46_662) + Duration::from_millis(2);
    let mut s = Sizer::new(t0);
    for i in 0..25u64 {
        s.note(t0 + Duration::from_millis(i * 10));
    }
    let t1 = t0 + Duration::from_millis(250);
    let k = s.size(t1, 1, 15, usable);
    assert!(k > 1, "{k}");
    let mut l = Lease::new(t1, 0, 3_333, k, usable, 0);
    for j in 0..k {
        let arrives = t1 + Duration::from_millis(u64::from(j) * 10);
        assert!(
            l.take(arrives).is_some(),
            "send {j} of {k} found its slot stale"
        );
    }
    assert_eq!(l.give_back(), None, "every slot used");
}

#[test]
fn the_count_is_flushed_before_the_replicas_together_could_pass_the_quota() {
    // No quota: the timer alone flushes.
    assert!(!flush_due(10_000, None, 32));
    // Far from the quota, each of 32 replicas may hold 1/32 of what is left.
    assert!(!flush_due(99, Some(3_200), 32));
    assert!(flush_due(100, Some(3_200), 32));
    // Near it, every send is added at once.
    assert!(flush_due(1, Some(31), 32));
    assert!(flush_due(1, Some(0), 32));
    assert!(!flush_due(0, Some(0), 32), "nothing to add");
    // 32 replicas, each at its largest unflushed share of what is left, stay within it.
    let left = 10_000u64;
    let share = (1..).find(|u| flush_due(*u, Some(left), 32)).unwrap() - 1;
    assert!(32 * share <= left, "{share}");
}

#[test]
fn a_quiet_account_sends_without_a_lease_up_to_its_share_of_the_rate() {
    let t0 = Instant::now();
    // 50/s (20 ms between slots) and up to 32 replicas: one unleased send per 640 ms each.
    let mut q = Quiet::new(20 * MS, 32);
    assert!(q.take(t0, 0.0), "the first send goes at once");
    assert!(!q.take(t0 + Duration::from_millis(639), 0.0), "too soon");
    assert!(q.take(t0 + Duration::from_millis(640), 0.0));
    // 32 replicas, each at its most, send 32 per 640 ms: the account's 50/s.
    let allowance = 1.0 / 0.640;
    assert!((32.0f64 * allowance - 50.0).abs() < 1e-9);
    // A replica that sends faster than its share leases instead, whatever the lane's turn.
    assert!(!q.take(t0 + Duration::from_secs(10), 2.0));
    assert!(q.take(t0 + Duration::from_secs(10), 1.5));
}
