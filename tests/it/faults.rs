//! Issue: reliability under faults. The promise: every job gets a final outcome, none is
//! lost, none is sent twice to a user. Each test prints a `REPORT` line with jobs published,
//! outcomes seen, duplicate outcomes (at-least-once delivery) and losses.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::helpers::*;
use wxdispatch::mock::{Behaviour, FaultKind};

/// Prints the figures of a fault scenario and asserts that nothing was lost.
fn report(name: &str, h: &Harness, published: usize, outcomes: &[Value]) {
    let ids: HashSet<String> = outcomes
        .iter()
        .map(|o| format!("{}|{}", o["id"], o["touser"]))
        .collect();
    let dups = h
        .duplicate_outcomes
        .load(std::sync::atomic::Ordering::Relaxed);
    let stats = h.mock.state.stats();
    let losses = published.saturating_sub(ids.len());
    println!(
        "REPORT {name}: published={published} outcomes={} distinct={} duplicate_outcomes={dups} \
         losses={losses} wechat_messages={} wechat_duplicate_requests_suppressed={}",
        outcomes.len(),
        ids.len(),
        stats.messages,
        stats.duplicates_suppressed
    );
    assert_eq!(losses, 0, "{name}: jobs without an outcome");
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
/// `poison` and gets a `failed` outcome, and the worker keeps serving other jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_dead_lettered_and_the_worker_survives() {
    let h = Harness::start(Opts {
        env: &[("WXD_DELIVERY_LIMIT", "3")],
        ..Default::default()
    })
    .await;
    let mut headers = FieldTable::default();
    headers.insert("x-wxd-test-panic".into(), AMQPValue::LongString("1".into()));
    h.publisher
        .publish(
            "",
            &h.config.jobs_queue,
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
        .read(&h.config.dead_queue, 1, Duration::from_secs(5))
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
    report("poison", &h, 21, &out);
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
    let instance = h.worker.as_ref().unwrap().ctx.instance.clone();
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
    report("close_connection", &h, n, &out);
    h.cleanup().await;
}

/// SIGTERM mid-load: the worker stops consuming, lets in-flight sends finish and exits 0
/// within the drain timeout; a restarted worker finishes the rest with nothing lost and no
/// second message to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_drains_and_exits_cleanly() {
    let mut h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 200,
            ..Default::default()
        },
        no_worker: true,
        ..Default::default()
    })
    .await;
    let n = 600;
    h.publish_many(&jobs("term", n)).await;
    let mut child = h.worker_process(
        APPID,
        SECRET,
        &[("WXD_CONCURRENCY", "32"), ("WXD_DRAIN_TIMEOUT_SECS", "10")],
    );
    let mut out = h.outcomes(100, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 100);
    let pid = child.id().expect("running") as i32;
    let asked = Instant::now();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(asked.elapsed() < Duration::from_secs(11));
    // Restart and finish.
    h.start_worker().await;
    out.extend(h.outcomes(n - out.len(), Duration::from_secs(60)).await);
    assert_eq!(
        h.mock.state.stats().messages as usize,
        n,
        "one WeChat message per job"
    );
    report("sigterm", &h, n, &out);
    h.cleanup().await;
}

/// `kill -9` during a run of 10,000 jobs against a slow simulator, then a restart: every job
/// has an outcome and the simulator received no second message for any (openid,
/// client_msg_id). Duplicate outcomes (from jobs in flight at the kill) are counted; a
/// consumer de-duplicates them by (id, touser), as `Harness::outcomes` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_nothing_and_sends_nothing_twice() {
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
    assert_eq!(stats.messages as usize, n, "no second message for any job");
    report("kill_9", &h, n, &out);
    h.cleanup().await;
}

/// WeChat is down (503 on every send) for a while: jobs back off through the delay queues
/// without a hot loop and are all sent once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_backs_off_and_recovers() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            outage: Some(FaultKind::Http(503)),
            ..Default::default()
        },
        env: &[
            ("WXD_MAX_ATTEMPTS", "10"),
            ("WXD_RETRY_BASE_MS", "500"),
            ("WXD_RETRY_MAX_DELAY_SECS", "4"),
            ("WXD_INLINE_RETRY_MAX_MS", "1000"),
        ],
        ..Default::default()
    })
    .await;
    let n = 50;
    h.publish_many(&jobs("outage", n)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = h.mock.state.stats().send_requests;
    assert!(
        during <= (n * 10) as u64,
        "{during} requests during the outage: that is a hot loop"
    );
    assert!(h.outcomes(1, Duration::from_millis(10)).await.is_empty());
    let mut b = h.mock.state.behaviour();
    b.outage = None;
    h.mock.state.set_behaviour(b);
    let out = h.outcomes(n, Duration::from_secs(40)).await;
    assert!(
        out.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );
    assert!(out.iter().all(|o| o["attempts"].as_u64().unwrap() > 1));
    report("outage_recovers", &h, n, &out);
    h.cleanup().await;
}

/// WeChat refuses connections for longer than the retry budget: every job ends `failed`
/// (nothing is lost, nothing loops), with the transport error as its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_longer_than_the_budget_fails_jobs_cleanly() {
    let mut h = Harness::start(Opts {
        no_worker: true,
        ..Default::default()
    })
    .await;
    // A port nothing listens on: connection refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    h.config.api_base = format!("http://{dead_addr}");
    h.config.max_attempts = 3;
    h.config.retry_base_ms = 50;
    h.start_worker().await;
    let n = 20;
    h.publish_many(&jobs("refused", n)).await;
    let out = h.outcomes(n, Duration::from_secs(30)).await;
    assert!(
        out.iter().all(|o| o["status"] == "failed"),
        "{:?}",
        by_status(&out)
    );
    // The token fetch is the first thing to fail when WeChat is unreachable.
    assert!(out.iter().all(|o| o["reason"].as_str().is_some()));
    assert!(out.iter().all(|o| o["attempts"].as_u64().unwrap() <= 3));
    report("outage_fails", &h, n, &out);
    h.cleanup().await;
}

/// While RabbitMQ raises a memory alarm (publishers blocked), the worker takes no new work and
/// reports not ready; when the alarm clears it finishes everything. Serial: the alarm blocks
/// every publisher on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_memory_alarm_pauses_the_worker_without_losing_jobs() {
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
    report("memory_alarm", &h, n + 10, &out);
    h.cleanup().await;
}
