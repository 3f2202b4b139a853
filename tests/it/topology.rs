//! Issue 14, items 2 and 5: the delay hop survives a broker restart, and the worker owns (or
//! only checks) its topology without reconnect loops; a full outcomes queue holds jobs
//! instead of losing or re-sending them.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use wxdispatch::amqp::{self, topology};

use crate::helpers::*;

/// Runs the worker binary until it exits (at most `within`); its exit code and stderr.
/// `None` when it was still running: it did not stop.
async fn run_until_exit(
    h: &Harness,
    extra: &[(&str, &str)],
    within: Duration,
) -> Option<(i32, String)> {
    let mut cmd = h.worker_command(APPID, SECRET, extra);
    cmd.stderr(Stdio::piped()).env("WXD_LOG_FORMAT", "text");
    let mut child = cmd.spawn().expect("worker binary");
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(within, child.wait()).await;
    let mut text = String::new();
    match status {
        Ok(status) => {
            let _ = stderr.read_to_string(&mut text).await;
            Some((status.unwrap().code().unwrap_or(-1), text))
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut text))
                .await;
            println!("still running after {within:?}; its stderr:\n{text}");
            None
        }
    }
}

/// Issue 14.5: changing `WXD_DELIVERY_LIMIT` on an existing queue used to end in a reconnect
/// loop. The worker stops (exit 1) with one line that names the queue, the argument and the
/// policy that changes it, and does not reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_queue_argument_stops_the_worker_with_one_line_naming_the_fix() {
    let h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let ended = run_until_exit(&h, &[("WXD_DELIVERY_LIMIT", "7")], Duration::from_secs(20)).await;
    let (code, stderr) = ended.expect("the worker stops instead of reconnecting forever");
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    println!("the worker's last line: {last}");
    for part in [
        h.config.amqp.jobs_queue.as_str(),
        "x-delivery-limit",
        "policy (delivery-limit)",
    ] {
        assert!(last.contains(part), "{part:?} not in the last line: {last}");
    }
    assert!(
        !stderr.contains("reconnecting"),
        "no reconnect attempts: {stderr}"
    );
    h.cleanup().await;
}

/// Issue 14.5: with `topology = passive` and queues missing, the worker stops (exit 1) and
/// names every missing one; it declares nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_mode_names_each_missing_queue_and_declares_nothing() {
    let h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let tier = topology::delay_queue(&h.config, 30);
    let ch = h.conn.create_channel().await.unwrap();
    for q in [&h.config.amqp.dead_queue, &tier] {
        ch.queue_delete(q.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    let ended = run_until_exit(&h, &[("WXD_TOPOLOGY", "passive")], Duration::from_secs(20)).await;
    let (code, stderr) = ended.expect("the worker stops");
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    println!("the worker's last line: {last}");
    for q in [&h.config.amqp.dead_queue, &tier] {
        assert!(last.contains(q.as_str()), "{q} not named: {last}");
    }
    assert!(last.contains("passive"), "{last}");
    // Still missing: reading its depth (a passive declare) fails instead of reading 0.
    let ch = h.conn.create_channel().await.unwrap();
    assert!(
        topology::depth(&ch, &h.config.amqp.dead_queue)
            .await
            .is_err(),
        "the dead-letter queue exists after a passive start"
    );
    let (_, listed) = rabbitmqctl(&["list_queues", "-q", "name"]);
    assert!(
        !listed.lines().any(|l| l.trim() == h.config.amqp.dead_queue),
        "passive mode declared {}",
        h.config.amqp.dead_queue
    );
    h.cleanup().await;
}

/// A RabbitMQ user that only lives as long as the test.
struct TempUser(String);

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_user", &self.0]);
    }
}

/// Issue 14.5: in passive mode the worker needs no `configure` permission: a user with
/// only read and write sends jobs and publishes their outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_mode_runs_without_the_configure_permission() {
    let mut h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let name = format!("wxd-test-{:08x}", rand::random::<u32>());
    let user = TempUser(name.clone());
    assert!(rabbitmqctl(&["add_user", &user.0, "pw-for-tests"]).0);
    assert!(rabbitmqctl(&["set_permissions", "-p", "/", &user.0, "^$", ".*", ".*"]).0);
    h.config.amqp.url = format!("amqp://{name}:pw-for-tests@127.0.0.1:5672/%2f");
    h.config.amqp.topology = wxdispatch::config::Topology::Passive;
    h.start_worker().await;
    h.publish_many(&jobs("passive", 10)).await;
    let out = h.outcomes(10, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 10, "{out:?}");
    assert!(out.iter().all(|o| o["status"] == "sent"), "{out:?}");
    h.cleanup().await;
    drop(user);
}

/// Issue 14.5: the outcomes queue is full (`max-length` with `reject-publish`, set by a
/// policy): a sent job whose outcome the broker refuses is not acked, not sent to WeChat
/// again, not dead-lettered at its delivery limit; it waits, is counted, and gets its outcome
/// once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outcomes_queue_holds_jobs_without_losing_or_resending_them() {
    let mut h = Harness::start(Opts {
        no_worker: true,
        env: &[("WXD_DELIVERY_LIMIT", "3")],
        ..Opts::default()
    })
    .await;
    let policy = Policy(format!("wxd-test-{:08x}", rand::random::<u32>()));
    let pattern = format!("^{}$", regex_escape(&h.config.amqp.outcomes_queue));
    let (ok, text) = rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        &policy.0,
        &pattern,
        r#"{"max-length":5,"overflow":"reject-publish"}"#,
    ]);
    assert!(ok, "{text}");
    // Fill it up first: a quorum queue tells its publishers it is full once it is over
    // the limit, so the worker's outcomes meet a full queue.
    for i in 0..6 {
        let filler = format!("{{\"kind\":\"filler\",\"id\":\"filler-{i}\"}}");
        let _ = h
            .publisher
            .publish(
                "",
                &h.config.amqp.outcomes_queue,
                filler.as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    h.start_worker().await;
    let n = 12;
    h.publish_many(&jobs("full", n)).await;
    // Everything is sent; five outcomes fit, the rest wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (h.mock.state.stats().messages as usize) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all sent: {}",
            h.mock.state.stats().messages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for several refused retries, and for a requeued job to pass its delivery
    // limit of 3.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = h.mock.state.stats();
    println!(
        "{}",
        rabbitmqctl(&[
            "list_queues",
            "-q",
            "name",
            "policy",
            "messages",
            "arguments"
        ])
        .1
        .lines()
        .filter(|l| l.contains(&h.config.amqp.outcomes_queue))
        .collect::<Vec<_>>()
        .join("\n")
    );
    println!(
        "after 4 s: outcomes queue {} deep, dead queue {}, sends {:?}",
        h.depth(&h.config.amqp.outcomes_queue).await,
        h.depth(&h.config.amqp.dead_queue).await,
        stats.sends_by_id
    );
    let resent: Vec<_> = stats.sends_by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(resent.is_empty(), "sent again while waiting: {resent:?}");
    assert_eq!(
        h.depth(&h.config.amqp.dead_queue).await,
        0,
        "nothing dead-lettered"
    );
    let m = h.metrics().await;
    let waiting = metric(&m, "wxdispatch_outcomes_waiting");
    let in_queue = h.depth(&h.config.amqp.outcomes_queue).await as usize;
    let fillers = 6;
    assert!(waiting >= 1.0, "jobs wait, counted: {m}");
    assert_eq!(
        waiting as usize + (in_queue - fillers),
        n,
        "every job either has its outcome in the queue or waits: {m}"
    );
    assert!(
        metric(&m, "wxdispatch_outcomes_refused_total{reason=\"nacked\"}") >= 1.0,
        "{m}"
    );
    // Room again: the waiting outcomes go out.
    let out: Vec<Value> = h
        .outcomes(n + fillers, Duration::from_secs(30))
        .await
        .into_iter()
        .filter(|o| o["kind"] == "send")
        .collect();
    assert_eq!(out.len(), n, "{:?}", by_status(&out));
    assert!(out.iter().all(|o| o["status"] == "sent"), "{out:?}");
    let stats = h.mock.state.stats();
    assert_eq!(stats.sends_by_id.len(), n);
    assert!(stats.sends_by_id.values().all(|c| *c == 1), "{stats:?}");
    let m = h.metrics().await;
    assert_eq!(metric(&m, "wxdispatch_outcomes_waiting"), 0.0, "{m}");
    println!(
        "REPORT outcomes_queue_full: jobs={n} outcomes={} refused={} sends={}",
        out.len(),
        metric(&m, "wxdispatch_outcomes_refused_total"),
        stats.send_requests
    );
    h.cleanup().await;
    drop(policy);
}

/// Starts the broker app again when dropped, so a failing test never leaves it stopped.
struct BrokerRestart;

impl Drop for BrokerRestart {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["start_app"]);
        let _ = rabbitmqctl(&["await_startup"]);
    }
}

/// Issue 14.2: 1,000 jobs wait in the delay tiers when the broker restarts (`rabbitmqctl
/// stop_app` / `start_app`), and their TTLs run out while it is down. All 1,000 come back and
/// each is sent to WeChat exactly once (counted per job id at the simulator) and gets exactly
/// one outcome (counted per id). Serial: it stops the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: run by scripts/test.sh under the broker lock"]
async fn serial_jobs_in_the_delay_tiers_survive_a_broker_restart() {
    let _serial = serial_broker();
    let mut h = Harness::start(Opts::default()).await;
    let n = 1000;
    let bodies: Vec<Vec<u8>> = jobs("hop", n)
        .iter()
        .map(|j| serde_json::to_vec(j).unwrap())
        .collect();
    let props = BasicProperties::default().with_content_type("application/json".into());
    futures_util::stream::iter(bodies.iter())
        .map(|b| h.publisher.defer(b, props.clone(), Duration::from_secs(5)))
        .buffer_unordered(256)
        .for_each(|r| async move { r.expect("deferred") })
        .await;
    let tier = topology::delay_queue(&h.config, 5);
    assert_eq!(h.depth(&tier).await as usize, n, "all {n} wait in {tier}");
    let restart = BrokerRestart;
    let (ok, text) = rabbitmqctl(&["stop_app"]);
    assert!(ok, "{text}");
    // Every TTL runs out while the broker is down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    drop(restart); // start_app and wait for it
    let conn = amqp::connect(AMQP_URL, "wxdispatch-test-after-restart")
        .await
        .expect("broker back");
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1000, Default::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            h.config.amqp.outcomes_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut settled = false;
    while let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        *outcomes
            .entry(v["id"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        if outcomes.len() == n && !settled {
            // All there: a little longer, to catch any duplicate.
            settled = true;
            deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        }
    }
    let stats = h.mock.state.stats();
    let missing: Vec<String> = (0..n)
        .map(|i| format!("hop-{i}"))
        .filter(|id| !outcomes.contains_key(id))
        .collect();
    let twice_out: Vec<_> = outcomes.iter().filter(|(_, c)| **c > 1).collect();
    let sends_ok = (0..n)
        .filter(|i| stats.sends_by_id.get(&format!("hop-{i}")) == Some(&1))
        .count();
    let mut depths = Vec::new();
    let mut names = vec![
        h.config.amqp.jobs_queue.clone(),
        h.config.amqp.dead_queue.clone(),
    ];
    names.extend(
        topology::DELAY_TIERS
            .iter()
            .map(|t| topology::delay_queue(&h.config, *t)),
    );
    for q in names {
        let probe = conn.create_channel().await.unwrap();
        let depth = topology::depth(&probe, &q)
            .await
            .map_or_else(|e| format!("? ({e})"), |d| d.to_string());
        depths.push(format!("{q}={depth}"));
    }
    println!("queues after the run: {}", depths.join(" "));
    println!(
        "REPORT delay_hop_restart: deferred={n} outcomes_distinct={} lost={} outcome_duplicates={} sent_exactly_once={sends_ok} wechat_requests={}",
        outcomes.len(),
        missing.len(),
        twice_out.len(),
        stats.send_requests
    );
    assert!(
        missing.is_empty(),
        "{} jobs lost in the delay hop, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(twice_out.is_empty(), "outcomes twice: {twice_out:?}");
    assert_eq!(sends_ok, n, "each job sent to WeChat exactly once");
    // The harness's own connection died with the broker: clean up on the new one.
    h.stop_worker().await;
    topology::delete(&ch, &h.config).await;
    let _ = conn.close(200, "bye".into()).await;
}
