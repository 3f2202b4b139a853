//! Issue 30: the shared mode (`WXD_REDIS_URL`) leases slots of the account's schedule and adds
//! its count in batches, so it costs about what the local mode costs; replicas still hold the
//! account's rate, and a replica that dies takes nothing with it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::limits::{REDIS_URL, assert_rate, forget_in_redis, redis_appid};

/// Every command the Redis server has run (those inside scripts too), the `INFO` that reads
/// them excepted.
async fn redis_commands() -> u64 {
    redis_calls(|name| name != "info").await
}

/// The script calls the Redis server has run.
async fn redis_script_calls() -> u64 {
    redis_calls(|name| name == "evalsha" || name == "eval").await
}

async fn redis_calls(which: impl Fn(&str) -> bool) -> u64 {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (scripts/services.sh starts it)");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .filter(|(name, _)| which(name))
        .filter_map(|(_, rest)| {
            rest.split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

async fn redis_count(appid: &str) -> u64 {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let day = (chrono::Utc::now() + chrono::Duration::hours(8)).date_naive();
    let n: Option<u64> = redis::cmd("GET")
        .arg(format!("wxdispatch:sent:{appid}:{day}"))
        .query_async(&mut c)
        .await
        .unwrap();
    n.unwrap_or(0)
}

/// A harness whose simulator knows a fresh account (its own keys in the shared Redis).
async fn harness_for_fresh_account() -> (Harness, String) {
    let mut h = Harness::start(Opts {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let appid = redis_appid();
    h.mock.state.add_account(&appid, "rs");
    h.config.accounts[0].appid = appid.clone();
    (h, appid)
}

fn jobs_for(appid: &str, prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("{prefix}{i}"), "appid": appid, "touser": format!("u{i}"), "template_id": "t"}))
        .collect()
}

/// Stops a worker process the way Kubernetes does (SIGTERM) and waits for it.
async fn terminate(mut child: tokio::process::Child) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// At a high rate, a replica leases slots in batches and adds its count with them: the whole
/// run, from the worker's start to its stop, costs the shared Redis at most a tenth of a
/// command per send, counting every command a script runs (a lease is an `EVALSHA` and the
/// four commands inside it). One call per send, as before, cost 8 commands per send.
/// Serial: `INFO commandstats` counts every client of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: run by scripts/test.sh under the broker lock"]
async fn serial_the_shared_mode_costs_redis_a_tenth_of_a_command_per_send() {
    let _serial = serial_broker();
    let (h, appid) = harness_for_fresh_account().await;
    let n = 6000;
    h.publish_many(&jobs_for(&appid, "c", n)).await;
    let before = redis_commands().await;
    let child = h.worker_process(
        &appid,
        "rs",
        &[
            ("WXD_CONCURRENCY", "64"),
            ("WXD_PREFETCH", "128"),
            ("WXD_REDIS_URL", REDIS_URL),
        ],
    );
    let out = h.outcomes(n, Duration::from_secs(60)).await;
    assert_eq!(out.len(), n);
    assert!(out.iter().all(|o| o["status"] == "sent"));
    terminate(child).await;
    let commands = redis_commands().await - before;
    let counted = redis_count(&appid).await;
    forget_in_redis(&appid).await;
    println!("{commands} Redis commands for {n} sends");
    assert!(
        commands as f64 <= 0.1 * n as f64,
        "{commands} Redis commands for {n} sends: more than 0.1 per send"
    );
    // Batched, but every send is in the shared count once the worker has stopped.
    assert_eq!(counted, n as u64, "the day's count in Redis");
    h.cleanup().await;
}

/// Three replicas share one account at 300/s through Redis; one is killed (SIGKILL) a third
/// of the way through, holding a lease and sends it had not yet added to the count. Nothing
/// is lost: every job gets its outcome and every recipient exactly one message, and the two
/// left still hold the rate: never above 1.1 x 300 in a second, sustained within 3 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: run by scripts/test.sh under the broker lock"]
async fn serial_a_replica_killed_mid_run_loses_nothing_and_the_rest_hold_the_rate() {
    let _serial = serial_broker();
    let (h, appid) = harness_for_fresh_account().await;
    let n = 3000;
    let mut procs: Vec<_> = (0..3)
        .map(|i| {
            let host = format!("killtest-{i}");
            h.worker_process(
                &appid,
                "rs",
                &[
                    ("WXD_RATE_PER_SEC", "300"),
                    ("WXD_CONCURRENCY", "64"),
                    ("WXD_REDIS_URL", REDIS_URL),
                    ("WXD_EXPECTED_REPLICAS", "1"),
                    ("HOSTNAME", host.as_str()),
                ],
            )
        })
        .collect();
    h.publish_many(&jobs_for(&appid, "k", n)).await;
    let mut out = h.outcomes(1000, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 1000);
    let mut victim = procs.remove(0);
    victim.start_kill().unwrap(); // SIGKILL
    victim.wait().await.unwrap();
    out.extend(h.outcomes(n - out.len(), Duration::from_secs(60)).await);
    assert_eq!(out.len(), n, "every job has its outcome");
    assert!(out.iter().all(|o| o["status"] == "sent"));
    for p in procs {
        terminate(p).await;
    }
    forget_in_redis(&appid).await;
    let per_user = h.mock.state.messages_per_recipient();
    assert_eq!(per_user.len(), n, "every recipient got a message");
    let twice: Vec<_> = per_user.iter().filter(|(_, m)| **m > 1).collect();
    assert!(twice.is_empty(), "users with a second message: {twice:?}");
    let stats = h.mock.state.stats();
    assert_rate(&stats.per_second[&appid], 300.0, 0.03);
    h.cleanup().await;
}

/// A platform's quiet authorizers: 1,000 accounts of one replica send one message each. Each
/// goes at once without leasing a slot, and Redis runs at most 20 scripts for them all (none in
/// practice: their counts and slots go in the batch's plain commands), where the code before made a lease call and a
/// count call per send. Every send is then in its account's day count, and its slot waits in
/// Redis for the account's next lease, which places it first.
/// Serial: `INFO commandstats` counts every client of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: run by scripts/test.sh under the broker lock"]
async fn serial_quiet_accounts_send_unleased_and_are_counted_without_a_script_call() {
    let _serial = serial_broker();
    use std::sync::Arc;
    use wxdispatch::account::{AccountGate, Admission, RedisLink};
    let link = Arc::new(RedisLink::new(REDIS_URL));
    let metrics = Arc::new(wxdispatch::metrics::Metrics::new());
    let appids: Vec<String> = (0..1000).map(|_| redis_appid()).collect();
    let gates: Vec<AccountGate> = appids
        .iter()
        .map(|a| {
            AccountGate::with_shared(
                a,
                50,
                None,
                Duration::from_secs(600),
                metrics.clone(),
                Some(link.clone()),
                1,
            )
        })
        .collect();
    let before = redis_script_calls().await;
    let started = std::time::Instant::now();
    for g in &gates {
        assert_eq!(g.admit(), Admission::Go);
        g.pace().await;
        g.reservation(false).commit();
        g.on_sent(false).await;
    }
    let paced_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let calls = redis_script_calls().await - before;
    let mut counted = 0;
    let mut scheduled = 0;
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for a in &appids {
        counted += redis_count(a).await;
        let unleased: Option<u64> = redis::cmd("GET")
            .arg(format!("wxdispatch:unleased:{a}"))
            .query_async(&mut c)
            .await
            .unwrap();
        scheduled += unleased.unwrap_or(0);
        forget_in_redis(a).await;
    }
    println!("{calls} script calls for 1,000 quiet sends, paced in {paced_in:?}");
    assert_eq!(counted, 1000, "every send in its account's day count");
    assert_eq!(
        scheduled, 1000,
        "every send's slot in its account's schedule"
    );
    // No script at all (a pipeline of plain commands per 250 ms tick), not a lease and a
    // count call per send (2,000).
    assert!(
        calls <= 20,
        "{calls} script calls for 1,000 quiet sends, paced in {paced_in:?}"
    );
    assert!(
        paced_in < Duration::from_secs(2),
        "quiet sends wait for no lease: {paced_in:?}"
    );
}

/// A send made without a lease still takes its slot of the account's schedule: at 1/s, after
/// one replica's quiet send, another replica's lease (a reservation of one slot with no burst)
/// waits about a second, as if the first send had leased its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_after_a_quiet_send_on_another_replica_waits_for_its_slot() {
    use std::sync::Arc;
    use wxdispatch::account::{AccountGate, Admission, RedisLink, SharedLimiter};
    let appid = redis_appid();
    let quiet = AccountGate::with_shared(
        &appid,
        1,
        None,
        Duration::from_secs(600),
        Arc::new(wxdispatch::metrics::Metrics::new()),
        Some(Arc::new(RedisLink::new(REDIS_URL))),
        1,
    );
    assert_eq!(quiet.admit(), Admission::Go);
    let paced = quiet.pace().await;
    quiet.reservation(false).commit();
    quiet.on_sent(false).await;
    // The slot reaches Redis with the next batch (every 250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let other = SharedLimiter::connect(REDIS_URL).await.unwrap();
    let wait = other.reserve(&appid, 1, 1).await.unwrap();
    forget_in_redis(&appid).await;
    assert!(
        paced < Duration::from_millis(50),
        "the quiet send went at once: {paced:?}"
    );
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
        "the lease waits for the quiet send's slot: {wait:?}"
    );
}
