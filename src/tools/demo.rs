//! `wxdispatch demo`: the whole pipeline on the local broker with an embedded simulator.
//!
//! It publishes a batch of sample jobs (including bad ones and injected faults), waits for
//! every outcome, and prints a table of outcome counts, throughput and latency. It uses its own
//! queue names (`wxdispatch.demo.*`) and deletes them afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;

use crate::amqp::{self, Publisher};
use crate::config::{Config, LogFormat};
use crate::shutdown::Shutdown;
use crate::tools::mock::push::{self, PushTarget, SubscriptionEvent};
use crate::tools::mock::{Behaviour, Fault, MockConfig, MockServer};
use crate::tools::sample;

mod forward;

/// `wxdispatch demo`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of good jobs to publish (bad and faulty ones are added).
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Simulator latency per send, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub latency_ms: u64,
    /// Deliver receipts in AES safe mode instead of plaintext.
    #[arg(long)]
    pub safe_mode: bool,
}

const APPID: &str = "wxd0000000000demo";
const SECRET: &str = "demo-secret-not-real";
const CALLBACK_TOKEN: &str = "demo-callback-token";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// One published job and what outcome it should get.
struct Planned {
    body: Vec<u8>,
    props: BasicProperties,
    /// Outcomes it will produce (a batch produces one per recipient).
    outcomes: usize,
}

fn plan(n: usize, run_id: &str) -> Vec<Planned> {
    let json = || {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
    };
    let mut v: Vec<Planned> = (0..n)
        .map(|i| Planned {
            body: sample::job(&format!("{run_id}-{i}"), &format!("o{run_id}user{i}")),
            props: json(),
            outcomes: 1,
        })
        .collect();
    let mut add = |body: Vec<u8>, outcomes| {
        v.push(Planned {
            body,
            props: json(),
            outcomes,
        })
    };
    // Transient faults that succeed on retry (same client_msg_id every time).
    add(sample::job(&format!("{run_id}-busy"), "flaky:-1:2:a"), 1);
    add(
        sample::job(&format!("{run_id}-502"), "flaky:http502:1:b"),
        1,
    );
    add(
        sample::job(&format!("{run_id}-timeout"), "flaky:timeout:1:c"),
        1,
    );
    add(
        sample::job(&format!("{run_id}-token"), "flaky:40001:1:d"),
        1,
    );
    // Permanent refusals.
    add(sample::job(&format!("{run_id}-badopenid"), "fail:40003"), 1);
    add(sample::job(&format!("{run_id}-unsub"), "fail:43004"), 1);
    // A batch of five recipients: five outcomes.
    add(
        serde_json::to_vec(&serde_json::json!({
            "id": format!("{run_id}-batch"), "template_id": "t",
            "touser": ["ob1", "ob2", "ob3", "ob4", "ob5"], "data": {}
        }))
        .expect("static JSON"),
        5,
    );
    // Past its deadline.
    add(
        serde_json::to_vec(&serde_json::json!({
            "id": format!("{run_id}-late"), "template_id": "t", "touser": "olate",
            "not_after": "2020-01-01T00:00:00Z"
        }))
        .expect("static JSON"),
        1,
    );
    // Bad input: each becomes `invalid` and a dead letter.
    add(b"this is not json".to_vec(), 1);
    add(vec![0xff, 0xfe, 0xfd], 1);
    add(
        br#"{"id":"x-missing-touser","template_id":"t"}"#.to_vec(),
        1,
    );
    add(
        br#"{"id":"x-unknown-account","appid":"wxnope","touser":"o","template_id":"t"}"#.to_vec(),
        1,
    );
    add(vec![b'{'; 1024 * 1024], 1);
    // The two subscription types through the same queue: sent, refused by the
    // user's consent (43101), a bad page (41030), an unknown result that must not be resent
    // (maybe_sent), and a value over WeChat's limit (invalid before any call).
    let sub = |id: String, touser: &str| {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "type": "subscribe", "touser": touser, "template_id": "SUBTPL",
            "page": "pages/order/detail", "data": {"thing1": {"value": "订单已发货"}}
        }))
        .expect("static JSON")
    };
    let mp = |id: String, touser: &str, thing: &str| {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "type": "miniprogram_subscribe", "touser": touser,
            "template_id": "MPTPL", "page": "index", "miniprogram_state": "formal",
            "lang": "zh_CN", "data": {"thing1": {"value": thing}}
        }))
        .expect("static JSON")
    };
    for i in 0..3 {
        add(
            sub(format!("{run_id}-sub-{i}"), &format!("o{run_id}sub{i}")),
            1,
        );
        add(
            mp(
                format!("{run_id}-mp-{i}"),
                &format!("o{run_id}mp{i}"),
                "配送中",
            ),
            1,
        );
    }
    add(sub(format!("{run_id}-sub-refused"), "fail:43101"), 1);
    add(
        mp(format!("{run_id}-mp-refused"), "fail:43101", "配送中"),
        1,
    );
    add(
        mp(format!("{run_id}-mp-badpage"), "fail:41030", "配送中"),
        1,
    );
    add(sub(format!("{run_id}-sub-maybe"), "flaky:timeout:1:e"), 1);
    add(mp(format!("{run_id}-mp-toolong"), "o", &"长".repeat(21)), 1);
    v
}

/// Every job body the demo publishes (with `n` good ones): the contract test checks each
/// against docs/schema/job.schema.json.
pub fn job_bodies(n: usize) -> Vec<Vec<u8>> {
    plan(n, "contract").into_iter().map(|p| p.body).collect()
}

/// Runs the demo and prints the summary.
pub(crate) async fn run_demo(config_file: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let base = Config::load(config_file)?;
    crate::logging::init_with_default(LogFormat::Text, "warn");
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_millis() & 0xffffff);
    let mut config = base.clone();
    config.amqp.jobs_queue = "wxdispatch.demo.jobs".into();
    config.amqp.outcomes_exchange = "wxdispatch.demo.outcomes".into();
    config.amqp.outcomes_queue = "wxdispatch.demo.outcomes".into();
    config.amqp.dead_queue = "wxdispatch.demo.dead".into();
    config.http_addr = "127.0.0.1:0".into();
    config.wechat.http_timeout = Duration::from_millis(1000);
    config.retry.inline_max = Duration::from_millis(3000);
    config.limits.concurrency = config.limits.concurrency.max(128);
    config.amqp.prefetch = config.amqp.prefetch.max(256);
    config.credentials.callback_token = Some(crate::config::Secret::new(CALLBACK_TOKEN));
    config.credentials.callback_aes_key = Some(crate::config::Secret::new(AES_KEY));
    config.accounts = vec![crate::config::Account {
        appid: APPID.into(),
        rate_per_sec: 5000,
        daily_quota: None,
        original_id: None,
        publishers: None,
    }];
    config
        .credentials
        .set_app_secret(APPID, crate::config::Secret::new(SECRET));

    println!(
        "wxdispatch demo: broker {}",
        crate::config::redact_url(&config.amqp.url)
    );
    let conn = amqp::connect(&config.amqp.url, "wxdispatch-demo")
        .await
        .context("cannot reach RabbitMQ (is it running on 127.0.0.1:5672?)")?;
    let publisher = Publisher::new(&conn, &config).await?;
    amqp::topology::delete(publisher.channel(), &config).await;
    amqp::topology::declare(publisher.channel(), &config).await?;

    // The account's existing server, behind the callback: a user's message is forwarded to it.
    let existing = forward::ExistingServer::start(CALLBACK_TOKEN, AES_KEY).await?;
    config.callback.forward_url = Some(existing.url.clone());
    // The simulator pushes receipts to the worker's callback; the worker's address is only known
    // once it listens, so start the worker first with the simulator's future address.
    let mock_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mock_addr = mock_listener.local_addr()?;
    drop(mock_listener);
    config.wechat.api_base = format!("http://{mock_addr}");
    let shutdown = Shutdown::new();
    let worker = crate::app::start(config.clone(), shutdown.clone()).await?;
    let mock = MockServer::start(
        &mock_addr.to_string(),
        MockConfig {
            accounts: vec![(APPID.into(), SECRET.into())],
            behaviour: Behaviour {
                faults: vec![Fault::parse("-1:0.01").map_err(anyhow::Error::msg)?],
                latency_ms: args.latency_ms,
                stall_ms: 1500,
                ..Behaviour::default()
            },
            push: Some(PushTarget {
                url: format!("http://{}{}", worker.http_addr, config.callback.path),
                token: CALLBACK_TOKEN.into(),
                aes_key: args
                    .safe_mode
                    .then(|| crate::crypto::AesKey::from_encoding_aes_key(AES_KEY))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                delay_ms: 0,
            }),
        },
    )
    .await?;

    let jobs = plan(args.jobs, &run_id);
    let expected: usize = jobs.iter().map(|j| j.outcomes).sum();
    // The good jobs and the four flaky template jobs are sent in the end; each gets a receipt.
    let receipts_expected = args.jobs + 4;
    println!(
        "publishing {} jobs ({} outcomes expected) ...",
        jobs.len(),
        expected
    );
    let started = Instant::now();
    let publishes = futures_util::stream::iter(jobs.iter())
        .map(|j| publisher.publish("", &config.amqp.jobs_queue, &j.body, j.props.clone()))
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    let failed_publishes = publishes.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(
        failed_publishes == 0,
        "{failed_publishes} jobs were not confirmed by the broker"
    );
    let published_in = started.elapsed();
    // Three users answer a subscription prompt: two in the pop-up (one accepts, one refuses),
    // one later in the settings. WeChat pushes each to the callback; the worker publishes them
    // as `consent` outcomes, so upstream systems know whom they may notify.
    let consents = [
        (
            "demo-consent-1",
            SubscriptionEvent::Popup {
                template_id: "SUBTPL".into(),
                accept: true,
            },
        ),
        (
            "demo-consent-2",
            SubscriptionEvent::Popup {
                template_id: "SUBTPL".into(),
                accept: false,
            },
        ),
        (
            "demo-consent-3",
            SubscriptionEvent::Change {
                template_id: "SUBTPL".into(),
                accept: false,
            },
        ),
    ];
    let expected_consents = consents.len();
    if let Some(target) = mock.push_target() {
        for (touser, event) in consents {
            push::spawn_subscription_event(
                mock.state.clone(),
                target.clone(),
                APPID.into(),
                touser.into(),
                event,
            );
        }
    }

    let callback_url = format!("http://{}{}", worker.http_addr, config.callback.path);
    let aes = args.safe_mode.then_some(AES_KEY);
    let forwarded = forward::push_text(&callback_url, CALLBACK_TOKEN, aes, APPID).await;
    let outcomes = collect(
        &conn,
        &config.amqp.outcomes_queue,
        Expect {
            sends: expected,
            receipts: receipts_expected,
            consents: expected_consents,
        },
        Duration::from_secs(50),
    )
    .await?;
    let elapsed = started.elapsed();
    let stats = mock.state.stats();
    worker.stop().await?;
    mock.stop();

    let mut sends: BTreeMap<String, usize> = BTreeMap::new();
    let mut receipts: BTreeMap<String, usize> = BTreeMap::new();
    let mut consent_table: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_type: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut latencies = Vec::new();
    for (o, at) in &outcomes.items {
        let kind = o["kind"].as_str().unwrap_or("?");
        let status = o["status"].as_str().unwrap_or("?").to_string();
        if kind == "receipt" {
            *receipts.entry(status).or_default() += 1;
        } else if kind == "consent" {
            let source = o["source"].as_str().unwrap_or("?").to_string();
            *consent_table.entry((status, source)).or_default() += 1;
        } else {
            if status != "sent"
                && let Some(r) = o["reason"].as_str()
            {
                *reasons.entry(format!("{status}: {r}")).or_default() += 1;
            }
            let t = o["type"].as_str().unwrap_or("(unknown)").to_string();
            *by_type.entry((t, status.clone())).or_default() += 1;
            *sends.entry(status).or_default() += 1;
            latencies.push(at.duration_since(started));
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_millis())
            .unwrap_or(0)
    };
    let dead = match amqp::topology::depth(publisher.channel(), &config.amqp.dead_queue).await {
        Ok(n) => n.to_string(),
        Err(e) => format!("unknown ({e})"),
    };

    println!();
    println!("  outcome (kind send)        count");
    println!("  ------------------------  ------");
    print_counts(&sends);
    println!("  ------------------------  ------");
    println!("  {:<24}  {:>6}", "total", sends.values().sum::<usize>());
    println!();
    for (k, v) in &reasons {
        println!("    {k:<30} {v:>4}");
    }
    println!();
    println!("  by type                                   count");
    for ((t, st), v) in &by_type {
        println!("  {t:<22}  {st:<16}  {v:>6}");
    }
    println!();
    println!("  receipts (kind receipt)    count");
    print_counts(&receipts);
    println!();
    println!("  consents (kind consent)   source    count");
    for ((st, src), v) in &consent_table {
        println!("  {st:<24}  {src:<8}  {v:>5}");
    }
    println!();
    println!("  dead-letter queue          {dead:>6}");
    match &forwarded {
        Ok((status, reply)) => println!(
            "  forwarded to the account's own server: a user's \"hello\" got HTTP {status}, {reply:?}"
        ),
        Err(e) => println!("  forwarding a user's message failed: {e}"),
    }
    println!(
        "  simulator: {} messages, {} duplicate requests suppressed, {} send requests",
        stats.messages, stats.duplicates_suppressed, stats.send_requests
    );
    println!(
        "  throughput: {:.0} outcomes/s ({} outcomes in {:.2}s; publishing took {:.2}s)",
        outcomes.sends as f64 / elapsed.as_secs_f64(),
        outcomes.sends,
        elapsed.as_secs_f64(),
        published_in.as_secs_f64()
    );
    println!(
        "  time to outcome since the first publish: p50 {} ms, p99 {} ms, max {} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    amqp::topology::delete(publisher.channel(), &config).await;
    let _ = conn.close(200, "bye".into()).await;
    anyhow::ensure!(
        outcomes.sends == expected,
        "only {} of {expected} outcomes arrived",
        outcomes.sends
    );
    Ok(())
}

/// Outcomes read from a queue, with the time each arrived.
pub(crate) struct Collected {
    pub items: Vec<(serde_json::Value, Instant)>,
    pub sends: usize,
    pub receipts: usize,
    pub consents: usize,
}

/// How many outcomes of each kind to wait for.
pub(crate) struct Expect {
    pub sends: usize,
    pub receipts: usize,
    pub consents: usize,
}

/// Consumes `queue` until the expected send outcomes, receipts and consents arrived, or
/// timeout.
pub(crate) async fn collect(
    conn: &lapin::Connection,
    queue: &str,
    want: Expect,
    timeout: Duration,
) -> anyhow::Result<Collected> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, Default::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "wxdispatch-collect".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = Collected {
        items: Vec::new(),
        sends: 0,
        receipts: 0,
        consents: 0,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen: HashMap<(String, String, String), ()> = HashMap::new();
    while got.sends < want.sends || got.receipts < want.receipts || got.consents < want.consents {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let Ok(Some(Ok(d))) = next else { break };
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        d.acker.ack(BasicAckOptions::default()).await?;
        let key = (
            v["kind"].as_str().unwrap_or("").to_string(),
            v["id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v["msgid"].to_string()),
            v["touser"].as_str().unwrap_or("").to_string(),
        );
        // At-least-once delivery can repeat an outcome; consumers dedupe by (id, touser).
        if seen.insert(key, ()).is_some() {
            continue;
        }
        match v["kind"].as_str() {
            Some("receipt") => got.receipts += 1,
            Some("consent") => got.consents += 1,
            _ => got.sends += 1,
        }
        got.items.push((v, Instant::now()));
    }
    let _ = ch.close(200, "bye".into()).await;
    Ok(got)
}

/// The rows of a summary table of counts by status.
fn print_counts(counts: &BTreeMap<String, usize>) {
    for (k, v) in counts {
        println!("  {k:<24}  {v:>6}");
    }
}
