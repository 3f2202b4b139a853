//! Issue: the core pipeline (consume → send → confirmed outcome → ack).

use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::helpers::*;

/// 2,000 mixed jobs produce 2,000 outcomes with the right statuses, the bad ones are also
/// dead-lettered with their reason, and WeChat saw exactly one message per good job. "Exactly
/// one": no job's outcome is published twice, not even an identical repeat (nothing was
/// redelivered in this run), and nothing more arrives after the 2,000th.
async fn two_thousand_mixed_jobs_each_get_exactly_one_right_outcome(queue_type: &str) {
    let mut h = Harness::start(Opts {
        env: &[("WXD_JOBS_QUEUE_TYPE", queue_type)],
        ..Default::default()
    })
    .await;
    let mut jobs = Vec::new();
    for i in 0..1990 {
        jobs.push(job(&format!("good-{i}"), &format!("user-{i}")));
    }
    for i in 0..5 {
        jobs.push(job(&format!("rej-{i}"), "fail:40003"));
    }
    h.publish_many(&jobs).await;
    let bad: Vec<&[u8]> = vec![
        b"not json at all",
        &[0xff, 0xfe, 0x00],
        br#"{"id":"no-touser","template_id":"t"}"#,
        br#"{"id":"no-template","touser":"o"}"#,
        br#"{"id":"wrong-account","appid":"wxnope","touser":"o","template_id":"t"}"#,
    ];
    for b in &bad {
        h.publish_raw(b).await;
    }
    let outcomes = h.outcomes(2000, Duration::from_secs(60)).await;
    let counts = by_status(&outcomes);
    assert_eq!(outcomes.len(), 2000, "{counts:?}");
    assert_eq!(counts.get("sent"), Some(&1990), "{counts:?}");
    assert_eq!(counts.get("rejected"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("invalid"), Some(&5), "{counts:?}");
    for o in outcomes.iter().filter(|o| o["status"] == "rejected") {
        assert_eq!(o["errcode"], 40003);
        assert_eq!(o["reason"], "invalid_openid");
    }
    for o in outcomes.iter().filter(|o| o["status"] == "sent") {
        assert!(
            o["msgid"].as_i64().unwrap() > i64::from(i32::MAX),
            "msgid is an i64"
        );
        assert_eq!(o["attempts"], 1);
    }
    let dead = h
        .read(&h.config.amqp.dead_queue, 5, Duration::from_secs(10))
        .await;
    assert_eq!(dead.len(), 5);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|(_, p)| wxdispatch::amqp::headers::get_str(p, "x-wxd-reason").unwrap())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_json",
            "bad_utf8",
            "missing_template_id",
            "missing_touser",
            "unknown_account"
        ]
    );
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages, 1990, "one message per good job");
    // Stopped first: closing its channel puts every job it left unacked back in the queue,
    // where the depth (ready messages only) sees it.
    h.stop_worker().await;
    assert_eq!(
        h.depth(&h.config.amqp.jobs_queue).await,
        0,
        "everything acked, bad jobs too"
    );
    assert_eq!(
        h.late_duplicates(Duration::from_millis(500)).await,
        0,
        "a job's outcome was published twice"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_mixed_jobs_on_a_quorum_queue_each_get_exactly_one_right_outcome() {
    two_thousand_mixed_jobs_each_get_exactly_one_right_outcome("quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_mixed_jobs_on_a_classic_queue_each_get_exactly_one_right_outcome() {
    two_thousand_mixed_jobs_each_get_exactly_one_right_outcome("classic").await;
}

/// Every kind of bad input gets an `invalid` outcome with its reason and a dead-letter copy,
/// and the worker keeps serving good jobs after each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_keeps_serving_after_every_bad_input() {
    let h = Harness::start(Opts::default()).await;
    let big = vec![b'x'; 1024 * 1024];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad_json", b"{not json".to_vec()),
        (
            "bad_field",
            br#"{"touser":"o","template_id":"t","url":5}"#.to_vec(),
        ),
        (
            "bad_touser",
            br#"{"touser":[1,2],"template_id":"t"}"#.to_vec(),
        ),
        ("missing_touser", br#"{"template_id":"t"}"#.to_vec()),
        ("missing_template_id", br#"{"touser":"o"}"#.to_vec()),
        (
            "unknown_account",
            br#"{"appid":"wxother","touser":"o","template_id":"t"}"#.to_vec(),
        ),
        ("bad_utf8", vec![b'{', 0xc3, 0x28, b'}']),
        ("too_large", big),
    ];
    for (i, (reason, body)) in cases.iter().enumerate() {
        h.publish_raw(body).await;
        h.publish(&job(&format!("after-{i}"), &format!("u{i}")))
            .await;
        let got = h.outcomes(2, Duration::from_secs(15)).await;
        assert_eq!(got.len(), 2, "case {reason}: {got:?}");
        let invalid = got
            .iter()
            .find(|o| o["status"] == "invalid")
            .expect("an invalid outcome");
        assert_eq!(invalid["reason"], *reason);
        assert!(invalid["id"].is_string(), "even bad jobs get an id");
        assert!(
            got.iter()
                .any(|o| o["status"] == "sent" && o["id"] == format!("after-{i}"))
        );
        let dead = h
            .read(&h.config.amqp.dead_queue, 1, Duration::from_secs(5))
            .await;
        assert_eq!(dead.len(), 1, "case {reason} dead-lettered");
        assert_eq!(
            wxdispatch::amqp::headers::get_str(&dead[0].1, "x-wxd-reason").as_deref(),
            Some(*reason)
        );
    }
    h.cleanup().await;
}

/// The seed document's sample body (no id) is accepted verbatim; its id is a digest, sent to
/// WeChat as `client_msg_id`, so publishing it twice sends one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_sample_is_sent_and_deduplicated_by_its_digest_id() {
    let h = Harness::start(Opts::default()).await;
    let sample = include_str!("../../tests/fixtures/seed_sample.json");
    h.publish_raw(sample.as_bytes()).await;
    h.publish_raw(sample.as_bytes()).await;
    let out = h.outcomes(1, Duration::from_secs(15)).await;
    assert_eq!(out[0]["status"], "sent");
    assert_eq!(out[0]["touser"], "OPENID");
    assert!(out[0]["id"].as_str().unwrap().starts_with("sha1-"));
    // The second copy is sent too (same client_msg_id) and WeChat suppresses it; wait for
    // that by count, not for a fixed time.
    eventually(
        "the second copy at WeChat",
        Duration::from_secs(15),
        || async { h.mock.state.stats().duplicates_suppressed > 0 },
    )
    .await;
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages, 1);
    assert_eq!(stats.duplicates_suppressed, 1);
    h.cleanup().await;
}

/// Outcomes carry the contract's fields and the routing key `<kind>.<status>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_follow_the_contract() {
    let h = Harness::start(Opts::default()).await;
    // Exclusive queues: the broker deletes them with the test's connection.
    let ch = h.publisher.channel();
    let mut bound = Vec::new();
    for key in ["send.sent", "send.failed"] {
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_bind(
            q.name().as_str().into(),
            h.config.amqp.outcomes_exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        bound.push(q.name().to_string());
    }
    let (sent_q, failed_q) = (bound[0].clone(), bound[1].clone());
    h.publish(
        &json!({"id": "c-1", "appid": APPID, "touser": "o1", "template_id": "t",
        "data": {}, "miniprogram": {"appid": "wxmini", "pagepath": "index"}}),
    )
    .await;
    let got = h
        .read(&h.config.amqp.outcomes_queue, 1, Duration::from_secs(15))
        .await;
    let (o, props) = &got[0];
    // Every field of the contract, with its type and, for a sent job, its value: `reason` is
    // present and null, nothing else may be null.
    assert_eq!(o["kind"], "send", "{o}");
    assert_eq!(o["id"], "c-1", "{o}");
    assert_eq!(o["appid"], APPID, "{o}");
    assert_eq!(o["touser"], "o1", "{o}");
    assert_eq!(o["status"], "sent", "{o}");
    assert_eq!(o["errcode"], 0, "{o}");
    assert_eq!(o["errmsg"], "ok", "{o}");
    assert!(o["msgid"].as_i64().is_some_and(|m| m > 0), "{o}");
    assert_eq!(o["attempts"], 1, "{o}");
    assert!(
        o.get("reason").is_some_and(Value::is_null),
        "reason present and null: {o}"
    );
    let finished = o["finished_at"].as_str().expect("finished_at is a string");
    chrono::DateTime::parse_from_rfc3339(finished).expect("finished_at is RFC 3339");
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    // The routing key `<kind>.<status>`: a queue bound to exactly `send.sent` got it, one
    // bound to `send.failed` did not.
    let routed = h.read(&sent_q, 1, Duration::from_secs(5)).await;
    let (sent, _) = routed.first().expect("routed with the key send.sent");
    assert_eq!(sent["id"], "c-1");
    assert_eq!(h.depth(&failed_q).await, 0, "routed by its status");
    h.cleanup().await;
}

/// Many sends are in flight at once, and never more than the concurrency: with 100 ms of
/// simulator latency and 200 jobs, the simulator sees more than one request at a time (one at
/// a time would be no concurrency) and at most 64 (the limit). Counted by the simulator, so it
/// holds on a loaded machine too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_run_concurrently() {
    let h = Harness::start(Opts {
        behaviour: wxdispatch::tools::mock::Behaviour {
            latency_ms: 100,
            ..Default::default()
        },
        env: &[("WXD_CONCURRENCY", "64"), ("WXD_PREFETCH", "128")],
        ..Default::default()
    })
    .await;
    let jobs: Vec<_> = (0..200)
        .map(|i| job(&format!("c{i}"), &format!("u{i}")))
        .collect();
    h.publish_many(&jobs).await;
    let out = h.outcomes(200, Duration::from_secs(60)).await;
    assert_eq!(out.len(), 200);
    let peak = h.mock.state.stats().peak_in_flight;
    assert!(peak > 1, "one send at a time (peak {peak})");
    assert!(
        peak <= 64,
        "{peak} sends at once, above the concurrency of 64"
    );
    h.cleanup().await;
}

/// Acks are batched (`basic.ack` with `multiple`), yet every job is acked exactly when its
/// outcome is confirmed: 3,000 jobs take far fewer ack frames than jobs, and once the worker
/// has stopped (closing its channel, which would requeue anything left unacked) the jobs queue
/// is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_batched_and_none_is_left_unacked() {
    let mut h = Harness::start(Opts {
        env: &[("WXD_CONCURRENCY", "64"), ("WXD_PREFETCH", "128")],
        ..Default::default()
    })
    .await;
    let n = 3000;
    h.publish_many(&jobs("ack", n)).await;
    let outcomes = h.outcomes(n, Duration::from_secs(60)).await;
    assert_eq!(outcomes.len(), n);
    let text = h.metrics().await;
    let multiple = metric(&text, "wxdispatch_amqp_acks_total{multiple=\"true\"}");
    let single = metric(&text, "wxdispatch_amqp_acks_total{multiple=\"false\"}");
    assert!(multiple > 0.0, "some acks settled several jobs");
    assert!(
        multiple + single < n as f64 * 0.8,
        "{multiple} multiple + {single} single ack frames for {n} jobs: not batched"
    );
    h.stop_worker().await;
    assert_eq!(
        h.depth(&h.config.amqp.jobs_queue).await,
        0,
        "nothing came back unacked when the worker's channel closed"
    );
    assert_eq!(h.mock.state.stats().messages, n as u64);
    h.cleanup().await;
}

/// A job stuck in a slow send must not stall the jobs behind it. With batched acks, the jobs
/// that finish after it cannot be covered by a `multiple` ack; if they simply waited, the
/// prefetch window (4 here) would fill and consumption would stop until the slow send ended.
/// They are acked on their own after a short wait instead, so 30 fast jobs all finish while
/// the first job's send is still hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_job_does_not_hold_back_the_acks_of_the_jobs_after_it() {
    let h = Harness::start(Opts {
        behaviour: wxdispatch::tools::mock::Behaviour {
            stall_ms: 4_000,
            ..Default::default()
        },
        env: &[
            ("WXD_CONCURRENCY", "4"),
            ("WXD_PREFETCH", "4"),
            ("WXD_HTTP_TIMEOUT_MS", "3000"),
        ],
        ..Default::default()
    })
    .await;
    h.publish(&job("slow", "flaky:timeout:1:slow")).await;
    h.publish_many(&jobs("fast", 30)).await;
    // Order, not time: all 30 fast outcomes come before the slow one.
    let all = h.outcomes(31, Duration::from_secs(30)).await;
    assert_eq!(all.len(), 31);
    let slow_at = all.iter().position(|o| o["id"] == "slow").unwrap();
    assert_eq!(
        slow_at, 30,
        "the 30 fast jobs finish while the slow send hangs"
    );
    assert_eq!(all[30]["status"], "sent", "{}", all[30]);
    h.cleanup().await;
}
