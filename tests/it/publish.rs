//! Issue 5: `wxdispatch publish`, batch (fan-out) jobs and `not_after`, on the real broker.

use std::collections::BTreeSet;
use std::io::BufReader;
use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::{Value, json};

use wxdispatch::job::{self, Parsed};
use wxdispatch::publish::{self, Options};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn open_fixture(name: &str) -> BufReader<std::fs::File> {
    BufReader::new(std::fs::File::open(fixture(name)).expect("fixture exists"))
}

/// JSON Lines of `jobs`, one per line.
fn jsonl(jobs: &[Value]) -> Vec<u8> {
    jobs.iter()
        .map(|j| format!("{j}\n"))
        .collect::<String>()
        .into_bytes()
}

/// The `id`s of the `n` jobs waiting in the jobs queue (checked to be all of them), drained.
async fn queued_ids(h: &Harness, n: usize) -> Vec<String> {
    assert_eq!(
        h.depth(&h.config.amqp.jobs_queue).await as usize,
        n,
        "jobs in the queue"
    );
    let mut ids: Vec<String> = h
        .read(&h.config.amqp.jobs_queue, n, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|(v, _)| v["id"].as_str().unwrap_or("?").to_string())
        .collect();
    ids.sort();
    ids
}

/// A JSONL campaign file published with a worker running ends in one outcome per recipient,
/// with the statuses WeChat's answers call for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_campaign_gets_an_outcome_for_every_recipient() {
    let h = Harness::start(Opts::default()).await;
    let summary = publish::publish_jsonl(
        &h.config,
        open_fixture("campaign.jsonl"),
        &Options::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.lines, summary.published, summary.recipients),
        (10, 10, 12)
    );
    assert!(summary.invalid.is_empty() && summary.failed.is_empty());
    assert_eq!(summary.exit_code(), 0);

    let outcomes = h.outcomes(12, WAIT).await;
    let counts = by_status(&outcomes);
    assert_eq!(outcomes.len(), 12, "{counts:?}");
    assert_eq!(counts.get("sent"), Some(&11), "{counts:?}");
    assert_eq!(counts.get("rejected"), Some(&1), "{counts:?}");
    let ids: BTreeSet<&str> = outcomes.iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert!(ids.contains("c-1") && ids.contains("c-batch") && ids.contains("c-rejected"));
    assert_eq!(h.mock.state.stats().messages, 11);
    h.cleanup().await;
}

/// Malformed lines are reported with their line number and reason and never reach the queue;
/// every valid line does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_lines_are_reported_by_number_and_never_published() {
    let h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let summary = publish::publish_jsonl(
        &h.config,
        open_fixture("publish_malformed.jsonl"),
        &Options::default(),
    )
    .await
    .unwrap();
    let invalid: Vec<(usize, &str)> = summary.invalid.iter().map(|i| (i.line, i.reason)).collect();
    assert_eq!(
        invalid,
        [
            (2, "bad_json"),
            (4, "missing_touser"),
            (6, "unknown_account"),
            (7, "missing_template_id"),
            (8, "bad_not_after"),
        ]
    );
    assert_eq!((summary.published, summary.recipients), (3, 4));
    assert_eq!(summary.exit_code(), 2, "invalid lines make the run fail");
    assert_eq!(queued_ids(&h, 3).await, ["m-1", "m-5", "m-9"]);
    h.cleanup().await;
}

/// `--strict` validates the whole file first and sends nothing when any line is invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_sends_nothing_from_a_malformed_file() {
    let h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let opts = Options {
        strict: true,
        ..Options::default()
    };
    let summary = publish::publish_jsonl(&h.config, open_fixture("publish_malformed.jsonl"), &opts)
        .await
        .unwrap();
    assert!(summary.aborted);
    assert_eq!((summary.published, summary.invalid.len()), (0, 5));
    assert_eq!(summary.exit_code(), 2);
    assert_eq!(
        h.depth(&h.config.amqp.jobs_queue).await,
        0,
        "nothing was published"
    );
    h.cleanup().await;
}

/// CSV mode turns each row into a job: `touser`, `id`, `url` and `data.<Key>` columns land in
/// the right fields, quoted cells keep their commas, quotes and line breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_become_jobs_with_the_right_data_fields() {
    let h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let text = std::fs::read_to_string(fixture("recipients.csv")).unwrap();
    let lines = publish::read_csv(&text, "tmpl-csv").unwrap();
    let summary = publish::publish_lines(&h.config, lines, &Options::default())
        .await
        .unwrap();
    assert_eq!((summary.published, summary.exit_code()), (3, 0));

    assert_eq!(h.depth(&h.config.amqp.jobs_queue).await, 3);
    let mut jobs: Vec<Value> = h
        .read(&h.config.amqp.jobs_queue, 3, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    jobs.sort_by_key(|j| j["id"].as_str().unwrap_or("").to_string());
    let tmpl = "tmpl-csv";
    assert_eq!(
        jobs,
        [
            json!({"id": "csv-a", "touser": "user-a", "template_id": tmpl,
                   "url": "http://example.com/a",
                   "data": {"User": {"value": "Huang, VIP", "color": "#173177"},
                            "Amount": {"value": "260.00"}}}),
            json!({"id": "csv-b", "touser": "user-b", "template_id": tmpl,
                   "data": {"User": {"value": "He said \"hi\""}, "Amount": {"value": "12.50"}}}),
            json!({"id": "csv-c", "touser": "user-c", "template_id": tmpl,
                   "data": {"User": {"value": "two\r\nlines"}, "Amount": {"value": "1.00"}}}),
        ]
    );
    h.cleanup().await;
}

fn batch(id: &str, n: usize) -> Value {
    let users: Vec<String> = (0..n).map(|i| format!("fan-{i:03}")).collect();
    json!({"id": id, "touser": users, "template_id": "tmpl",
           "data": {"User": {"value": "everyone"}}})
}

/// Reads exactly `n` raw outcomes (no de-duplication), so the test knows every job finished.
async fn raw_outcomes(h: &Harness, n: usize) -> Vec<Value> {
    let got: Vec<Value> = h
        .read(&h.config.amqp.outcomes_queue, n, WAIT)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(got.len(), n, "every job finished within {WAIT:?}");
    got
}

/// A batch of 300 openids fans out into 300 outcomes, each with the batch id and its own
/// `touser`, and WeChat receives 300 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_300_gets_300_outcomes_with_the_batch_id() {
    let h = Harness::start(Opts::default()).await;
    let input = jsonl(&[batch("fanout-1", 300)]);
    let summary = publish::publish_jsonl(&h.config, &input[..], &Options::default())
        .await
        .unwrap();
    assert_eq!((summary.published, summary.recipients), (1, 300));

    let outcomes = raw_outcomes(&h, 300).await;
    let tousers: BTreeSet<&str> = outcomes
        .iter()
        .map(|o| o["touser"].as_str().unwrap())
        .collect();
    assert_eq!(tousers.len(), 300, "one outcome per recipient");
    assert!(
        outcomes
            .iter()
            .all(|o| o["id"] == "fanout-1" && o["status"] == "sent")
    );
    let stats = h.mock.state.stats();
    assert_eq!((stats.messages, stats.send_requests), (300, 300));
    h.cleanup().await;
}

/// Crash safety of expand-then-ack: the broker state a worker leaves when it dies in the middle
/// of expanding a batch (100 recipients' jobs already published, the batch itself not acked)
/// is re-expanded in full by the next worker, and WeChat still delivers one message per
/// recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_interrupted_mid_expansion_reaches_everyone_exactly_once() {
    let mut h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let body = serde_json::to_vec(&batch("crashy", 300)).unwrap();
    publish::publish_jsonl(
        &h.config,
        &jsonl(&[batch("crashy", 300)])[..],
        &Options::default(),
    )
    .await
    .unwrap();
    // What the crashed worker had already expanded and confirmed.
    let Ok(Parsed::Batch(b)) = job::parse(&body, None, &h.config) else {
        panic!("a batch")
    };
    for r in &b.recipients[..100] {
        h.publisher.job(b.job_for(r), "crashy").await.unwrap();
    }
    h.start_worker().await;

    let outcomes = raw_outcomes(&h, 400).await;
    let tousers: BTreeSet<&str> = outcomes
        .iter()
        .map(|o| o["touser"].as_str().unwrap())
        .collect();
    assert_eq!(tousers.len(), 300, "nobody was lost");
    assert!(
        outcomes
            .iter()
            .all(|o| o["status"] == "sent" && o["id"] == "crashy")
    );
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages, 300, "nobody got a second message");
    assert_eq!(stats.duplicates_suppressed, 100);
    h.cleanup().await;
}

/// A batch delivered twice (a redelivery, or an upstream publishing it again) sends no
/// duplicate message: WeChat deduplicates every recipient on the batch id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_published_twice_sends_each_recipient_one_message() {
    let h = Harness::start(Opts::default()).await;
    let input = jsonl(&[batch("twice", 300), batch("twice", 300)]);
    let summary = publish::publish_jsonl(&h.config, &input[..], &Options::default())
        .await
        .unwrap();
    assert_eq!(summary.published, 2);

    let outcomes = raw_outcomes(&h, 600).await;
    assert!(outcomes.iter().all(|o| o["status"] == "sent"));
    let stats = h.mock.state.stats();
    assert_eq!(stats.messages, 300);
    assert_eq!(stats.duplicates_suppressed, 300);
    h.cleanup().await;
}

/// A job whose `not_after` has passed gets `expired` and WeChat never hears of it, while the
/// job next to it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_not_after_expires_without_reaching_wechat() {
    let h = Harness::start(Opts::default()).await;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let mut late = job("late-notice", "late-user");
    late["not_after"] = json!(past);
    let input = jsonl(&[late, job("on-time", "on-time-user")]);
    publish::publish_jsonl(&h.config, &input[..], &Options::default())
        .await
        .unwrap();

    let outcomes = h.outcomes(2, WAIT).await;
    let late = outcomes
        .iter()
        .find(|o| o["id"] == "late-notice")
        .expect("an outcome");
    assert_eq!(late["status"], "expired");
    assert_eq!(late["reason"], "not_after_passed");
    let on_time = outcomes
        .iter()
        .find(|o| o["id"] == "on-time")
        .expect("an outcome");
    assert_eq!(on_time["status"], "sent");
    let stats = h.mock.state.stats();
    assert_eq!(
        (stats.send_requests, stats.messages),
        (1, 1),
        "only the on-time job was sent"
    );
    h.cleanup().await;
}

/// `--rate` paces publishing: 11 jobs at 10 per second take at least a second (unpaced, they
/// take a few milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_throttles_publishing() {
    let h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let jobs: Vec<Value> = (0..11).map(|i| job(&format!("r-{i}"), "u")).collect();
    let opts = Options {
        rate: NonZeroU32::new(10),
        ..Options::default()
    };
    let summary = publish::publish_jsonl(&h.config, &jsonl(&jobs)[..], &opts)
        .await
        .unwrap();
    let took = summary.publishing;
    assert_eq!(summary.published, 11);
    assert!(took >= Duration::from_millis(950), "took only {took:?}");
    h.cleanup().await;
}

/// The real binary on a malformed file, with an account but no secret in its environment:
/// exit code 2, each bad line on stderr with its number and reason, the valid jobs published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_a_malformed_file_and_exits_2() {
    let h = Harness::start(Opts {
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let c = &h.config;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .arg("publish")
        .arg(fixture("publish_malformed.jsonl"))
        .env_clear()
        .env("WXD_AMQP_URL", &c.amqp.url)
        .env("WXD_JOBS_QUEUE", &c.amqp.jobs_queue)
        .env("WXD_DEAD_QUEUE", &c.amqp.dead_queue)
        .env("WXD_OUTCOMES_EXCHANGE", &c.amqp.outcomes_exchange)
        .env("WXD_OUTCOMES_QUEUE", &c.amqp.outcomes_queue)
        .env("WXD_APPID", APPID)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for expected in [
        "line 2: invalid (bad_json)",
        "line 4: invalid (missing_touser)",
        "line 6: invalid (unknown_account): appid wxnotconfigured is not configured",
        "line 7: invalid (missing_template_id)",
        "line 8: invalid (bad_not_after)",
        "3 published, 5 invalid, 0 failed",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} not in stderr: {stderr}"
        );
    }
    assert_eq!(queued_ids(&h, 3).await, ["m-1", "m-5", "m-9"]);
    h.cleanup().await;
}
