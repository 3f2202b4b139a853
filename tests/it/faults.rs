//! Issue: reliability under faults. The promise: every job gets a final outcome, none is
//! lost, none is sent twice to a user. Each test prints a `REPORT` line with jobs published,
//! outcomes seen, duplicate outcomes (at-least-once delivery) and losses.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::helpers::*;
use wxdispatch::tools::mock::{Behaviour, FaultKind};

/// Prints the figures of a fault scenario and asserts that nothing was lost: every job has an
/// outcome, and the outcomes have exactly the `expect`ed statuses (a `failed` job is not
/// "not lost").
fn report(name: &str, h: &Harness, published: usize, outcomes: &[Value], expect: &[(&str, usize)]) {
    let ids: HashSet<String> = outcomes
        .iter()
        .map(|o| format!("{}|{}", o["id"], o["touser"]))
        .collect();
    let dups = h
        .duplicate_outcomes
        .load(std::sync::atomic::Ordering::Relaxed);
    let conflicting = h
        .conflicting_outcomes
        .load(std::sync::atomic::Ordering::Relaxed);
    let stats = h.mock.state.stats();
    let losses = published.saturating_sub(ids.len());
    println!(
        "REPORT {name}: published={published} outcomes={} distinct={} duplicate_outcomes={dups} \
         conflicting_outcomes={conflicting} losses={losses} wechat_messages={} wechat_duplicate_requests_suppressed={}",
        outcomes.len(),
        ids.len(),
        stats.messages,
        stats.duplicates_suppressed
    );
    assert_eq!(losses, 0, "{name}: jobs without an outcome");
    assert_eq!(
        conflicting, 0,
        "{name}: a job's outcomes contradict each other"
    );
    let want: std::collections::BTreeMap<String, usize> =
        expect.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(by_status(outcomes), want, "{name}: outcome statuses");
}

/// Asks the broker to close every connection whose name contains `needle`.
fn close_connections(needle: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(needle)) {
        let pid = line.split('\t').next().unwrap_or("").trim();
        let ok = std::process::Command::new("rabbitmqctl")
            .args([
                "close_connection",
                pid,
                "fault test: closing the worker's connection",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        closed += usize::from(ok);
    }
    closed
}

/// A job that makes the handler panic on every delivery (only in fault-injection builds)
/// does not loop forever: on its last allowed delivery it is dead-lettered with reason
/// `poison` and gets a `failed` outcome, and the worker keeps serving other jobs. On a quorum
/// jobs queue the broker counts the deliveries; on a classic one (which has no delivery count
/// or limit) the worker counts them itself.
async fn a_poison_job_is_dead_lettered_and_the_worker_survives(queue_type: &str) {
    let h = Harness::start(Opts {
        env: &[
            ("WXD_DELIVERY_LIMIT", "3"),
            ("WXD_JOBS_QUEUE_TYPE", queue_type),
        ],
        ..Default::default()
    })
    .await;
    let mut headers = FieldTable::default();
    headers.insert("x-wxd-test-panic".into(), AMQPValue::LongString("1".into()));
    h.publisher
        .publish(
            "",
            &h.config.amqp.jobs_queue,
            &serde_json::to_vec(&job("poison-1", "victim")).unwrap(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    h.publish_many(&jobs("after-poison", 20)).await;
    let out = h.outcomes(21, Duration::from_secs(30)).await;
    let poison = out
        .iter()
        .find(|o| o["id"] == "poison-1")
        .expect("poison outcome");
    assert_eq!(poison["status"], "failed");
    assert_eq!(poison["reason"], "poison");
    assert_eq!(out.iter().filter(|o| o["status"] == "sent").count(), 20);
    let dead = h
        .read(&h.config.amqp.dead_queue, 1, Duration::from_secs(5))
        .await;
    assert_eq!(
        wxdispatch::amqp::headers::get_str(&dead[0].1, "x-wxd-reason").as_deref(),
        Some("poison")
    );
    assert_eq!(
        h.mock.state.stats().messages,
        20,
        "the poison job was never sent"
    );
    report("poison", &h, 21, &out, &[("failed", 1), ("sent", 20)]);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_on_a_quorum_queue_is_dead_lettered_and_the_worker_survives() {
    a_poison_job_is_dead_lettered_and_the_worker_survives("quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_on_a_classic_queue_is_dead_lettered_and_the_worker_survives() {
    a_poison_job_is_dead_lettered_and_the_worker_survives("classic").await;
}

/// Every delay tier refuses deferred jobs (a `max-length` policy beside the tiers'
/// `reject-publish`). A job whose defer is refused must not be nacked back: each redelivery
/// would send it to WeChat again and spend the quorum queue's delivery limit, until the broker
/// dead-lettered it with no outcome. It waits unacked instead, counted, and goes on once the
/// tier takes it. Every job ends with exactly one outcome, each attempt is one request, and
/// nothing reaches the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_tier_that_refuses_defers_holds_the_jobs_and_loses_none() {
    let h = Harness::start(Opts {
        env: &[
            ("WXD_DELIVERY_LIMIT", "3"),
            ("WXD_MAX_ATTEMPTS", "3"),
            ("WXD_RETRY_BASE_MS", "200"),
            ("WXD_INLINE_RETRY_MAX_MS", "0"),
        ],
        ..Default::default()
    })
    .await;
    // Every retry here waits under a second: the 1 s tier. It refuses publishes while it has
    // a message ready (max-length 0), so fillers published all the time keep it refusing
    // most of the time. The fillers it takes are jobs: they come back in a second and are
    // sent.
    let tier = wxdispatch::amqp::topology::delay_queue(&h.config, 1);
    let policy = Policy::set(
        &format!("^{}$", regex_escape(&tier)),
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    );
    let filling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let filler = {
        let publisher = wxdispatch::amqp::Publisher::new(&h.conn, &h.config)
            .await
            .unwrap();
        let filling = filling.clone();
        tokio::spawn(async move {
            let mut taken = 0;
            while filling.load(std::sync::atomic::Ordering::Relaxed) {
                let body = serde_json::to_vec(&job(
                    &format!("filler-{taken}"),
                    &format!("filler-user-{taken}"),
                ))
                .unwrap();
                let props = BasicProperties::default();
                if publisher.publish("", &tier, &body, props).await.is_ok() {
                    taken += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            taken
        })
    };
    let n = 6;
    let all: Vec<Value> = (0..n)
        .map(|i| job(&format!("refused-defer-{i}"), &format!("fail:-1:{i}")))
        .collect();
    h.publish_many(&all).await;
    // Long enough for a requeued job to pass its delivery limit of 3 several times over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    filling.store(false, std::sync::atomic::Ordering::Relaxed);
    let fillers: usize = filler.await.unwrap();
    drop(policy);
    let refused = metric(&h.metrics().await, "wxdispatch_copies_refused_total");
    let out = h.outcomes(n + fillers, Duration::from_secs(30)).await;
    assert_eq!(
        h.late_duplicates(Duration::from_secs(2)).await,
        0,
        "a job got a second outcome"
    );
    report(
        "refused_defer",
        &h,
        n + fillers,
        &out,
        &[("failed", n), ("sent", fillers)],
    );
    assert_eq!(
        h.depth(&h.config.amqp.dead_queue).await,
        0,
        "a job was dead-lettered"
    );
    let out: Vec<Value> = out
        .into_iter()
        .filter(|o| o["id"].as_str().unwrap().starts_with("refused-defer-"))
        .collect();
    assert!(out.iter().all(|o| o["attempts"] == 3), "{out:?}");
    assert_eq!(
        h.mock.state.stats().send_requests,
        (n * 3 + fillers) as u64,
        "one request per attempt: no job was sent again by a redelivery"
    );
    assert!(
        refused > 0.0,
        "no defer was refused: the case did not happen"
    );
    h.cleanup().await;
}

/// The broker closes the worker's connections mid-load (`rabbitmqctl close_connection`):
/// the worker reconnects on its own, every job gets an outcome, and WeChat got exactly one
/// message per job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closing_the_connections_mid_load_loses_nothing() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 20,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let n = 2000;
    h.publish_many(&jobs("close", n)).await;
    let mut out = h.outcomes(300, Duration::from_secs(30)).await;
    let instance = h.worker.as_ref().unwrap().worker.instance.clone();
    let closed = close_connections(&format!("wxdispatch-consume-{instance}"));
    assert_eq!(closed, 1, "the consumer connection was closed");
    out.extend(h.outcomes(300, Duration::from_secs(30)).await);
    let closed = close_connections(&format!("wxdispatch-publish-{instance}"));
    assert_eq!(closed, 1, "the publisher connection was closed");
    out.extend(h.outcomes(n - out.len(), Duration::from_secs(60)).await);
    // It resumes on its own within seconds: ready again, after two reconnections.
    let ready_url = h.metrics_url().replace("/metrics", "/readyz");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reconnects = metric(&h.metrics().await, "wxdispatch_amqp_reconnects_total");
        let ready = reqwest::get(&ready_url).await.unwrap().status() == 200;
        if reconnects >= 2.0 && ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after reconnecting ({reconnects})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        h.mock.state.stats().messages as usize,
        n,
        "one WeChat message per job"
    );
    assert!(out.iter().all(|o| o["status"] == "sent"));
    report("close_connection", &h, n, &out, &[("sent", n)]);
    h.cleanup().await;
}

/// SIGTERM mid-load: the worker stops consuming, lets in-flight sends finish and exits 0
/// within the drain timeout; a restarted worker finishes the rest with nothing lost and no
/// second message to anyone.
///
/// "Lets in-flight sends finish" is checked by counting, before the restart: every send
/// request that reached the simulator was answered (none was cut off: `send_requests` equals
/// the messages accepted) and has its outcome, and every other job is back in the jobs queue.
/// An aborted send would show up as a request without a message; one finished but not
/// acked would come back and reach the simulator a second time after the restart.
async fn sigterm_mid_load_drains_and_exits_cleanly(queue_type: &str) {
    let queue_env = [("WXD_JOBS_QUEUE_TYPE", queue_type)];
    let mut h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 200,
            ..Default::default()
        },
        env: &queue_env,
        no_worker: true,
        ..Default::default()
    })
    .await;
    let n = 600;
    h.publish_many(&jobs("term", n)).await;
    let mut child = h.worker_process(
        APPID,
        SECRET,
        &[
            ("WXD_CONCURRENCY", "32"),
            ("WXD_DRAIN_TIMEOUT_SECS", "10"),
            queue_env[0],
        ],
    );
    let mut out = h.outcomes(100, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 100);
    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // A hang guard, not a performance figure: the drain timeout is 10 s and each send 0.2 s.
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Everything the stopped worker published; nothing more can come.
    out.extend(h.outcomes(n, Duration::from_secs(2)).await);
    let finished = out.len();
    let stats = h.mock.state.stats();
    assert!(
        stats.send_requests as usize > 100,
        "sends were in flight at SIGTERM"
    );
    assert_eq!(
        stats.send_requests, stats.messages,
        "a send request was cut off by the shutdown instead of drained"
    );
    assert_eq!(
        stats.messages as usize, finished,
        "every message WeChat accepted has its outcome before the exit"
    );
    assert_eq!(
        h.depth(&h.config.amqp.jobs_queue).await as usize,
        n - finished,
        "every unfinished job is back in the queue, none acked without an outcome"
    );
    // Restart and finish.
    h.start_worker().await;
    out.extend(h.outcomes(n - out.len(), Duration::from_secs(60)).await);
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages as usize, n, "one WeChat message per job");
    assert_eq!(
        stats.duplicates_suppressed, 0,
        "no drained job came back to be sent again"
    );
    report("sigterm", &h, n, &out, &[("sent", n)]);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_on_a_quorum_queue_drains_and_exits_cleanly() {
    sigterm_mid_load_drains_and_exits_cleanly("quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_on_a_classic_queue_drains_and_exits_cleanly() {
    sigterm_mid_load_drains_and_exits_cleanly("classic").await;
}

/// A drain timeout shorter than a send in flight: the worker gives up on the send when the
/// timeout passes (the job gets no outcome and is not acked), the broker redelivers the job,
/// and the restarted worker sends it again with the same `client_msg_id`, which WeChat
/// deduplicates: the user gets one message, and the outcome carries the first send's msgid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_shorter_than_a_send_redelivers_the_job_and_sends_one_message() {
    let mut h = Harness::start(Opts {
        behaviour: Behaviour {
            // The first try of `flaky:timeout:1:*` is accepted, then its reply stalls 5 s.
            stall_ms: 5_000,
            ..Default::default()
        },
        env: &[
            ("WXD_DRAIN_TIMEOUT_SECS", "1"),
            ("WXD_HTTP_TIMEOUT_MS", "20000"),
        ],
        ..Default::default()
    })
    .await;
    assert!(h.outcomes(0, Duration::ZERO).await.is_empty()); // start the outcome consumer
    h.publish(&job("drain-short", "flaky:timeout:1:drain"))
        .await;
    eventually("the send accepted", Duration::from_secs(15), || async {
        h.mock.state.stats().messages > 0
    })
    .await;
    // WeChat has accepted the message and is stalling its reply: stop now.
    h.stop_worker().await;
    assert!(
        h.outcomes(1, Duration::from_millis(500)).await.is_empty(),
        "the drain waited for the send instead of giving up after its timeout"
    );
    assert_eq!(
        h.depth(&h.config.amqp.jobs_queue).await,
        1,
        "the job is back"
    );
    h.start_worker().await;
    let out = h.outcomes(1, Duration::from_secs(15)).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["status"], "sent", "{}", out[0]);
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages, 1, "WeChat got one message");
    assert_eq!(
        stats.duplicates_suppressed, 1,
        "the resend was deduplicated"
    );
    assert_eq!(
        out[0]["msgid"].as_i64(),
        Some(wxdispatch::tools::mock::FIRST_MSGID),
        "the first send's msgid"
    );
    h.cleanup().await;
}

/// A job that comes back (from a delay queue, or redelivered) after an attempt that may have
/// reached WeChat, when that attempt is older than WeChat's deduplication window: a resend
/// could be a second message, so the job ends `failed`/`unknown_delivery` without a send. A
/// job whose mark is inside the window is sent (the header is read, and the age matters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_back_after_the_dedup_window_is_unknown_delivery_with_no_send() {
    let h = Harness::start(Opts::default()).await;
    let now = chrono::Utc::now().timestamp_millis();
    for (id, maybe_sent_ago_ms) in [("stale", 10 * 60_000), ("recent", 60_000)] {
        let state = wxdispatch::policy::RetryState {
            attempts: 1,
            first_seen_ms: now - maybe_sent_ago_ms - 1_000,
            maybe_sent_ms: Some(now - maybe_sent_ago_ms),
            transient_ms: 0,
        };
        let props = wxdispatch::amqp::headers::with_retry_state(
            &BasicProperties::default().with_content_type("application/json".into()),
            &state,
            "backoff",
        );
        h.publisher
            .publish(
                "",
                &h.config.amqp.jobs_queue,
                &serde_json::to_vec(&job(id, &format!("{id}-user"))).unwrap(),
                props,
            )
            .await
            .unwrap();
    }
    let out = h.outcomes(2, Duration::from_secs(15)).await;
    assert_eq!(out.len(), 2);
    let stale = out.iter().find(|o| o["id"] == "stale").unwrap();
    assert_eq!(stale["status"], "failed", "{stale}");
    assert_eq!(stale["reason"], "unknown_delivery", "{stale}");
    let recent = out.iter().find(|o| o["id"] == "recent").unwrap();
    assert_eq!(recent["status"], "sent", "{recent}");
    let stats = h.mock.state.stats();
    assert_eq!(
        stats.send_requests, 1,
        "no request at all for the stale job"
    );
    assert_eq!(stats.messages, 1);
    h.cleanup().await;
}

/// `kill -9` during a run of 10,000 jobs against a slow simulator, then a restart: every job
/// has an outcome and no user got a second message (each of the 10,000 recipients got
/// exactly one). Jobs in flight at the kill are sent again, with the same `client_msg_id`,
/// and WeChat drops the repeat; their duplicate outcomes are counted, and a consumer
/// de-duplicates them by (id, touser), as `Harness::outcomes` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_nothing_and_no_user_gets_a_second_message() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 30,
            ..Default::default()
        },
        no_worker: true,
        ..Default::default()
    })
    .await;
    let n = 10_000;
    h.publish_many(&jobs("kill", n)).await;
    let settings = [("WXD_CONCURRENCY", "128"), ("WXD_PREFETCH", "256")];
    let mut child = h.worker_process(APPID, SECRET, &settings);
    let mut out = h.outcomes(3000, Duration::from_secs(60)).await;
    assert_eq!(out.len(), 3000);
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let mut again = h.worker_process(APPID, SECRET, &settings);
    out.extend(h.outcomes(n - out.len(), Duration::from_secs(120)).await);
    let _ = again.start_kill();
    let _ = again.wait().await;
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages as usize, n, "one message per job");
    let per_user = h.mock.state.messages_per_recipient();
    assert_eq!(per_user.len(), n, "every recipient got a message");
    let twice: Vec<_> = per_user.iter().filter(|(_, m)| **m > 1).collect();
    assert!(twice.is_empty(), "users with a second message: {twice:?}");
    let repeated = stats.sends_by_id.values().filter(|c| **c > 1).count();
    println!("kill_9: {repeated} jobs reached WeChat twice (same client_msg_id, suppressed)");
    report("kill_9", &h, n, &out, &[("sent", n)]);
    h.cleanup().await;
}

/// WeChat is down for a while (every send answered `fault`): jobs back off through the delay
/// queues without a hot loop and are all sent once it is back. Returns each job's gaps
/// between attempts during the outage.
///
/// The attempt budget (50) is far above what backoff allows in the 5 s outage, so the request
/// count is bounded by the backoff, not the budget: with a 500 ms base doubling to a 4 s cap,
/// and each delay at least a tenth of its cap, a job can try at most 17 times in 5 s
/// (0.05 + 0.1 + 0.2 + 13 x 0.4 s). Without backoff each job would spend its 50 attempts.
async fn a_wechat_outage_backs_off_and_recovers(fault: FaultKind) -> Vec<Vec<Duration>> {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            outage: Some(fault),
            ..Default::default()
        },
        env: &[
            ("WXD_MAX_ATTEMPTS", "50"),
            ("WXD_RETRY_BASE_MS", "500"),
            ("WXD_RETRY_MAX_DELAY_SECS", "4"),
            ("WXD_INLINE_RETRY_MAX_MS", "1000"),
        ],
        ..Default::default()
    })
    .await;
    let n = 50;
    h.publish_many(&jobs("outage", n)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = h.mock.state.stats().send_requests;
    let gaps: Vec<Vec<Duration>> = h
        .mock
        .state
        .request_times()
        .values()
        .map(|t| t.windows(2).map(|w| w[1] - w[0]).collect())
        .collect();
    assert_eq!(gaps.len(), n, "every job was tried");
    assert!(
        during <= (n * 17) as u64,
        "{during} requests for {n} jobs in 5 s: that is a hot loop"
    );
    assert!(
        during >= (n * 2) as u64,
        "{during} requests for {n} jobs: the jobs were not retried"
    );
    // Nothing consumes the outcomes queue yet, so its depth is every outcome published.
    assert_eq!(
        h.depth(&h.config.amqp.outcomes_queue).await,
        0,
        "a job ended during the outage"
    );
    let mut b = h.mock.state.behaviour();
    b.outage = None;
    h.mock.state.set_behaviour(b);
    let out = h.outcomes(n, Duration::from_secs(40)).await;
    assert!(out.iter().all(|o| o["attempts"].as_u64().unwrap() > 1));
    report("outage_recovers", &h, n, &out, &[("sent", n)]);
    h.cleanup().await;
    gaps
}

/// The mean of the `k`-th gap between attempts, over the jobs that had one.
fn mean_gap(gaps: &[Vec<Duration>], k: usize) -> Duration {
    let kth: Vec<Duration> = gaps.iter().filter_map(|g| g.get(k).copied()).collect();
    assert!(
        kth.len() * 2 >= gaps.len(),
        "only {} of {} jobs had a gap number {k}",
        kth.len(),
        gaps.len()
    );
    kth.iter().sum::<Duration>() / kth.len() as u32
}

/// An outage whose answers say nothing about when to come back: the gaps between one job's
/// attempts grow. Each delay is drawn between a tenth of its cap and the cap (0.5, 1, 2 s
/// for the first three), so the third gap averages about four times the first; a constant or
/// shrinking delay would average the same or less.
async fn an_outage_without_retry_after_backs_off_with_growing_gaps(fault: FaultKind) {
    let gaps = a_wechat_outage_backs_off_and_recovers(fault).await;
    let (first, third) = (mean_gap(&gaps, 0), mean_gap(&gaps, 2));
    println!("{fault:?}: mean gaps between attempts: first {first:?}, third {third:?}");
    assert!(
        third > first * 2,
        "{fault:?}: the gaps do not grow: first {first:?}, third {third:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_answering_system_busy_backs_off_with_growing_gaps_and_recovers() {
    an_outage_without_retry_after_backs_off_with_growing_gaps(FaultKind::Errcode(-1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_answering_http_502_backs_off_with_growing_gaps_and_recovers() {
    an_outage_without_retry_after_backs_off_with_growing_gaps(FaultKind::Http(502)).await;
}

/// A 503 with `Retry-After: 1` (as the simulator sends it): no job comes back sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_answering_http_503_honours_retry_after_and_recovers() {
    let gaps = a_wechat_outage_backs_off_and_recovers(FaultKind::Http(503)).await;
    let shortest = gaps.iter().flatten().min().copied().expect("retries");
    assert!(
        shortest >= Duration::from_millis(950),
        "a retry {shortest:?} after a 503 that said Retry-After: 1"
    );
}

/// WeChat refuses connections for longer than the retry budget: every job ends `failed`
/// (nothing is lost, nothing loops). With no token cached, the token fetch is the first
/// thing to fail, so the reason is `token_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_longer_than_the_budget_fails_jobs_cleanly() {
    let mut h = Harness::start(Opts {
        no_worker: true,
        ..Default::default()
    })
    .await;
    h.config.wechat.api_base = refused_base();
    h.config.retry.max_attempts = 3;
    h.config.retry.base = std::time::Duration::from_millis(50);
    h.start_worker().await;
    let n = 20;
    h.publish_many(&jobs("refused", n)).await;
    let out = h.outcomes(n, Duration::from_secs(30)).await;
    let reasons: Vec<&Value> = out.iter().map(|o| &o["reason"]).collect();
    assert!(
        out.iter().all(|o| o["reason"] == "token_unavailable"),
        "{reasons:?}"
    );
    assert!(out.iter().all(|o| o["attempts"] == 3), "{out:?}");
    report("outage_fails", &h, n, &out, &[("failed", n)]);
    h.cleanup().await;
}

/// The send endpoint refuses connections while a token is cached: the message never left, so
/// each job spends exactly its attempts and ends `failed` with reason `connect` (not
/// `unknown_delivery`: a refused connection proves nothing was delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_endpoint_refusing_connections_fails_jobs_with_reason_connect() {
    let h = Harness::start(Opts {
        env: &[("WXD_MAX_ATTEMPTS", "3"), ("WXD_RETRY_BASE_MS", "50")],
        ..Default::default()
    })
    .await;
    // One job caches the token; then WeChat goes away.
    h.publish(&job("warm", "warm-user")).await;
    let warm = h.outcomes(1, Duration::from_secs(15)).await;
    assert_eq!(warm.len(), 1);
    assert_eq!(warm[0]["status"], "sent");
    h.mock.stop();
    // Wait until the port refuses connections (the simulator's graceful stop is quick).
    eventually(
        "the simulator's port closed",
        Duration::from_secs(10),
        || async { std::net::TcpStream::connect(h.mock.addr).is_err() },
    )
    .await;
    let n = 20;
    h.publish_many(&jobs("refused-send", n)).await;
    let out = h.outcomes(n, Duration::from_secs(30)).await;
    let reasons: Vec<&Value> = out.iter().map(|o| &o["reason"]).collect();
    assert!(out.iter().all(|o| o["reason"] == "connect"), "{reasons:?}");
    assert!(out.iter().all(|o| o["attempts"] == 3), "{out:?}");
    report("send_refused", &h, n, &out, &[("failed", n)]);
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("wxdispatch_api_requests_total{{appid=\"{APPID}\",errcode=\"connect\"}}")
        ),
        (n * 3) as f64,
        "every attempt reached the send endpoint's connect"
    );
    h.cleanup().await;
}

/// A base URL on a port nothing listens on: connection refused.
fn refused_base() -> String {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    format!("http://{dead_addr}")
}

/// While RabbitMQ raises a memory alarm (publishers blocked), the worker takes no new work and
/// reports not ready; when the alarm clears it finishes everything. Serial: the alarm blocks
/// every publisher on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: run by scripts/test.sh under the broker lock"]
async fn serial_a_memory_alarm_pauses_the_worker_without_losing_jobs() {
    let _serial = serial_broker();
    // A slow simulator and few slots, so jobs are still in flight when the alarm starts.
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 200,
            ..Default::default()
        },
        env: &[("WXD_CONCURRENCY", "4"), ("WXD_PREFETCH", "8")],
        ..Default::default()
    })
    .await;
    let n = 100;
    h.publish_many(&jobs("alarm-warmup", 10)).await;
    let mut out = h.outcomes(10, Duration::from_secs(15)).await;
    let jobs_after = jobs("alarm", n);
    h.publish_many(&jobs_after).await;
    let guard = MemoryAlarm::raise();
    let ready_url = h.metrics_url().replace("/metrics", "/readyz");
    let mut saw_unready = false;
    for _ in 0..50 {
        if reqwest::get(&ready_url).await.unwrap().status() == 503 {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_unready,
        "/readyz stays 200 while the broker blocks publishers"
    );
    let sent_at_block = h.mock.state.stats().messages;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent_later = h.mock.state.stats().messages;
    assert!(
        sent_later <= sent_at_block + 4,
        "only the {} jobs in flight may still be sent while blocked: {sent_at_block} -> {sent_later}",
        4
    );
    let before = out.len();
    drop(guard); // clear the alarm
    out.extend(
        h.outcomes(n + 10 - out.len(), Duration::from_secs(60))
            .await,
    );
    assert!(out.len() > before);
    report("memory_alarm", &h, n + 10, &out, &[("sent", n + 10)]);
    h.cleanup().await;
}

/// A broker that holds its publisher confirms for longer than 30 s (a memory alarm here; a
/// quorum queue without quorum does the same) must not make the worker give the jobs in flight
/// back: each would come back after the alarm and be sent to WeChat a second time, and its
/// first outcome, confirmed late, would be followed by another. The worker keeps waiting for
/// the confirm while its connection is alive, and each job is sent once. Serial: the alarm
/// blocks every publisher on the broker, for 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: run by scripts/test.sh under the broker lock"]
async fn serial_confirms_held_past_thirty_seconds_resend_nothing() {
    let _serial = serial_broker();
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 300,
            ..Default::default()
        },
        env: &[("WXD_CONCURRENCY", "4"), ("WXD_PREFETCH", "8")],
        ..Default::default()
    })
    .await;
    h.publish_many(&jobs("held-warmup", 4)).await;
    let mut out = h.outcomes(4, Duration::from_secs(15)).await;
    let n = 40;
    h.publish_many(&jobs("held", n)).await;
    // Let the first sends start, so their outcomes are published into the alarm.
    while h.mock.state.stats().messages < 6 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let guard = MemoryAlarm::raise();
    let at_alarm = h.mock.state.stats().messages;
    tokio::time::sleep(Duration::from_secs(40)).await;
    let during_alarm = h.mock.state.stats().messages - at_alarm;
    drop(guard);
    // The case under test happened: sends in flight at the alarm finished during it, and
    // their outcomes were published into the blocked connection, unconfirmed for 40 s.
    assert!(
        during_alarm > 0,
        "no send finished during the alarm, so no confirm was held"
    );
    out.extend(h.outcomes(n + 4 - out.len(), Duration::from_secs(60)).await);
    // Redeliveries would arrive after the last first outcome: read what comes for 3 s, so
    // a repeat is counted, not left unread in the queue.
    assert_eq!(
        h.late_duplicates(Duration::from_secs(3)).await,
        0,
        "a job got a second outcome"
    );
    report("confirms_held", &h, n + 4, &out, &[("sent", n + 4)]);
    let stats = h.mock.state.stats();
    assert_eq!(
        stats.duplicates_suppressed, 0,
        "a job was sent to WeChat again after its confirm was held"
    );
    h.cleanup().await;
}
