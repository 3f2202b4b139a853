//! Issue: observability. The live `/metrics` matches what grafana/ and the alert rules use and
//! passes `promtool check metrics`, labels stay bounded, the probes follow the worker's state,
//! and the real binary's logs never carry a secret or an access token.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use wxdispatch::crypto::signature;
use wxdispatch::tools::mock::Behaviour;

use crate::helpers::*;

const CALLBACK_TOKEN: &str = "obs-callback-token-5f2a9c";

fn repo_file(path: &str) -> String {
    let p = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

async fn status_of(url: &str) -> Option<StatusCode> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// A worker serving the callback, after a little of every kind of load: good jobs, a rejected
/// one, a retried one, an invalid one and a few callback requests.
async fn loaded_worker(prefix: &str, n: usize) -> Harness {
    let h = Harness::start(Opts {
        // A daily quota, so that wxdispatch_daily_quota (exported only for accounts that have
        // one) is on /metrics like every other name the dashboard uses.
        env: &[
            ("WXD_CALLBACK_TOKEN", CALLBACK_TOKEN),
            ("WXD_DAILY_QUOTA", "1000000"),
        ],
        ..Opts::default()
    })
    .await;
    let mut jobs: Vec<Value> = (0..n)
        .map(|i| {
            job(
                &format!("{prefix}-job-{i}"),
                &format!("{prefix}-openid-{i}"),
            )
        })
        .collect();
    jobs.push(job(&format!("{prefix}-rejected"), "fail:40003"));
    jobs.push(job(
        &format!("{prefix}-flaky"),
        &format!("flaky:-1:1:{prefix}-openid-flaky"),
    ));
    h.publish_many(&jobs).await;
    h.publish_raw(b"{not json").await;
    let got = h.outcomes(jobs.len() + 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), jobs.len() + 1, "{:?}", by_status(&got));

    let url = format!(
        "http://{}{}",
        h.worker.as_ref().unwrap().http_addr,
        h.config.callback.path
    );
    let ts = chrono::Utc::now().timestamp().to_string();
    let receipt = format!(
        "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[{prefix}-openid-0]]>\
         </FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType><Event>\
         <![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>123</MsgID><Status><![CDATA[failed: {prefix}-openid-0]]>\
         </Status></xml>"
    );
    for sig in [
        signature::url_signature(CALLBACK_TOKEN, &ts, "1"),
        "bad".to_string(),
    ] {
        reqwest::Client::new()
            .post(&url)
            .query(&[
                ("signature", sig.as_str()),
                ("timestamp", &ts),
                ("nonce", "1"),
            ])
            .body(receipt.clone())
            .send()
            .await
            .expect("callback answers");
    }
    h
}

/// Names of the samples in a text exposition (`name{labels} value` or `name value`).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `wxdispatch_*` name in `text`, with histogram suffixes stripped (like
/// scripts/extract-metric-names.py).
fn names_used_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for (at, _) in text.match_indices("wxdispatch_") {
        if at > 0 && word(bytes[at - 1]) {
            continue;
        }
        let end = bytes[at..]
            .iter()
            .position(|&b| !word(b))
            .map_or(bytes.len(), |n| at + n);
        let mut name = text[at..end].trim_end_matches('_');
        for suffix in ["_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        out.insert(name.to_string());
    }
    out
}

/// The live `/metrics` of a worker that has done a little work exports every metric name
/// listed in deploy/metric-names.txt and every name the dashboards and alert rules use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_the_dashboards_and_alerts_use_is_exported() {
    let h = loaded_worker("names", 5).await;
    let live = sample_names(&h.metrics().await);
    let exported = |name: &str| {
        live.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .all(|s| live.contains(&format!("{name}{s}")))
    };
    let mut used: BTreeSet<String> = repo_file("deploy/metric-names.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(
        used.len() >= 9,
        "deploy/metric-names.txt lists the contract's metrics at least"
    );
    used.extend(names_used_in(&repo_file("deploy/prometheus/rules.yml")));
    for entry in
        std::fs::read_dir(format!("{}/grafana/dashboards", env!("CARGO_MANIFEST_DIR"))).unwrap()
    {
        let path = entry.unwrap().path();
        used.extend(names_used_in(&std::fs::read_to_string(&path).unwrap()));
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported(n)).collect();
    assert!(
        missing.is_empty(),
        "used by grafana/ or the alert rules but missing from the live /metrics: {missing:?}\nlive: {live:?}"
    );
    h.cleanup().await;
}

/// `promtool check metrics` accepts the live exposition. Without promtool the test fails
/// (a check that cannot run has not passed): scripts/test.sh and scripts/check-deploy.sh
/// install it (`bash scripts/install-promtool.sh`, Debian's `prometheus` package).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_check_metrics() {
    let h = loaded_worker("promtool", 5).await;
    let text = h.metrics().await;
    h.cleanup().await;
    let child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, so `promtool check metrics` cannot run: \
             bash scripts/install-promtool.sh (apt-get install prometheus)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After jobs with many distinct openids and ids (and receipts whose status names an
/// openid), no label value carries an openid or a job id, and the series count does not grow
/// with the number of jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_stay_bounded() {
    let h = loaded_worker("bounded", 200).await;
    let text = h.metrics().await;
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let mut offending = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        for pair in labels.split("\",") {
            let value = pair
                .split_once("=\"")
                .map_or("", |(_, v)| v.trim_end_matches('"'));
            if value.contains("bounded-") || value.contains("flaky:") || value.contains("fail:") {
                offending.push(line.to_string());
            }
        }
    }
    assert!(
        offending.is_empty(),
        "labels carry openids or job ids: {offending:#?}"
    );
    assert!(
        series < 400,
        "{series} series after 200 distinct jobs:\n{text}"
    );
    h.cleanup().await;
}

/// `wxdispatch_jobs_total` tells on-call what kind of job ended how and why: the message type
/// and the outcome's reason are labels (`none` when sent), so a rise in `rejected` can be read
/// as, say, `invalid_openid` on template messages without opening the outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_total_counts_each_outcome_by_type_status_and_reason() {
    let h = loaded_worker("labelled", 3).await;
    let text = h.metrics().await;
    let jobs = |labels: &str| metric(&text, &format!("wxdispatch_jobs_total{{{labels}}}"));
    // The prometheus crate writes labels sorted by name.
    assert_eq!(
        jobs(&format!(
            "appid=\"{APPID}\",reason=\"none\",status=\"sent\",type=\"template\""
        )),
        4.0,
        "three jobs and the flaky one, sent\n{text}"
    );
    assert_eq!(
        jobs(&format!(
            "appid=\"{APPID}\",reason=\"invalid_openid\",status=\"rejected\",type=\"template\""
        )),
        1.0,
        "the 40003 job\n{text}"
    );
    let invalid: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wxdispatch_jobs_total{") && l.contains("status=\"invalid\""))
        .collect();
    assert_eq!(invalid.len(), 1, "one invalid series: {invalid:?}");
    assert!(
        invalid[0].contains("type=\"unknown\"")
            && !invalid[0].contains("reason=\"none\"")
            && invalid[0].ends_with(" 1"),
        "the unparsable job is counted with its reason: {invalid:?}"
    );
    h.cleanup().await;
}

/// `/healthz` is 200; `/readyz` is 200 while consuming and 503 as soon as shutdown begins,
/// while an in-flight send is still draining (the server keeps answering during the drain).
/// Order, not time: the 503 is seen before the simulator has answered the send (3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_worker_through_shutdown() {
    let h = Harness::start(Opts {
        behaviour: Behaviour {
            latency_ms: 3_000,
            ..Behaviour::default()
        },
        env: &[("WXD_HTTP_TIMEOUT_MS", "10000")],
        ..Opts::default()
    })
    .await;
    let addr = h.worker.as_ref().unwrap().http_addr;
    let (healthz, readyz) = (
        format!("http://{addr}/healthz"),
        format!("http://{addr}/readyz"),
    );
    assert_eq!(status_of(&healthz).await, Some(StatusCode::OK));
    eventually("ready while consuming", Duration::from_secs(10), || async {
        status_of(&readyz).await == Some(StatusCode::OK)
    })
    .await;

    h.publish(&job("slow-1", "o-slow")).await;
    eventually("a send in flight", Duration::from_secs(10), || async {
        metric(&h.metrics().await, "wxdispatch_inflight ") >= 1.0
    })
    .await;
    let w = h.worker.as_ref().unwrap();
    w.shutdown.trigger();
    eventually(
        "not ready after shutdown began",
        Duration::from_secs(10),
        || async { status_of(&readyz).await == Some(StatusCode::SERVICE_UNAVAILABLE) },
    )
    .await;
    assert_eq!(
        h.mock.state.stats().messages,
        0,
        "/readyz turned 503 only after the in-flight send was answered, not during the drain"
    );
    assert_eq!(
        status_of(&healthz).await,
        Some(StatusCode::OK),
        "alive while draining"
    );
    let drained = h.outcomes(1, Duration::from_secs(10)).await;
    assert_eq!(drained.len(), 1, "the in-flight job finished");
    assert_eq!(drained[0]["status"], "sent");
    h.cleanup().await;
}

/// With the broker unreachable, `/readyz` stays 503 through the reconnect attempts while
/// `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_broker_is_unreachable() {
    let h = Harness::start(Opts {
        env: &[("WXD_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
        ..Opts::default()
    })
    .await;
    eventually("a failed reconnect", Duration::from_secs(10), || async {
        metric(&h.metrics().await, "wxdispatch_amqp_reconnects_total ") >= 1.0
    })
    .await;
    let addr = h.worker.as_ref().unwrap().http_addr;
    assert_eq!(
        status_of(&format!("http://{addr}/readyz")).await,
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(
        status_of(&format!("http://{addr}/healthz")).await,
        Some(StatusCode::OK)
    );
    let m = h.metrics().await;
    assert_eq!(metric(&m, "wxdispatch_amqp_connected "), 0.0);
    assert_eq!(metric(&m, "wxdispatch_ready "), 0.0);
    h.cleanup().await;
}

/// The real binary, with JSON logs at debug level, processing jobs through a token refresh and
/// a refused callback, then stopped with SIGTERM: its logs name no secret, no callback token
/// or key and no access token, and job lines carry `job_id`, `appid` and `errcode`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_secrets_or_access_tokens() {
    const LOG_APPID: &str = "wxlogs0000000001";
    const LOG_SECRET: &str = "S3cr3t-never-logged-7c1e0b";
    const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let h = Harness::start(Opts {
        accounts: vec![(LOG_APPID.into(), LOG_SECRET.into())],
        no_worker: true,
        ..Opts::default()
    })
    .await;
    let mut child = h
        .worker_command(
            LOG_APPID,
            LOG_SECRET,
            &[
                ("WXD_CALLBACK_TOKEN", CALLBACK_TOKEN),
                ("WXD_CALLBACK_AES_KEY", AES_KEY),
                ("WXD_RETRY_BASE_MS", "20"),
                ("RUST_LOG", "debug"),
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("the wxdispatch binary runs");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut lines_in = BufReader::new(child.stderr.take().unwrap()).lines();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines_in.next_line().await {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = rx.recv().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("serving /metrics"))
            {
                return v["addr"].as_str().expect("addr field").to_string();
            }
        }
        panic!("the binary exited before serving");
    })
    .await
    .expect("the binary logs its address");
    eventually("ready", Duration::from_secs(20), || async {
        status_of(&format!("http://{addr}/readyz")).await == Some(StatusCode::OK)
    })
    .await;

    let mut ids = Vec::new();
    for round in 0..2 {
        if round == 1 {
            // The cached token dies mid-run: the next send gets 42001 and the worker refreshes.
            h.mock.state.expire_tokens();
        }
        let mut jobs: Vec<Value> = (0..5)
            .map(|i| job(&format!("logs-{round}-{i}"), &format!("o-logs-{round}-{i}")))
            .collect();
        jobs.push(job(&format!("logs-{round}-rejected"), "fail:40003"));
        ids.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()));
        h.publish_many(&jobs).await;
        let got = h.outcomes(jobs.len(), Duration::from_secs(30)).await;
        assert_eq!(by_status(&got).get("sent"), Some(&5), "{got:?}");
    }
    let stats = h.mock.state.stats();
    assert!(
        stats.stable_token_calls + stats.token_calls >= 2,
        "the token was refreshed after expiring: {stats:?}"
    );
    let refused = reqwest::Client::new()
        .post(format!("http://{addr}/wechat/callback"))
        .query(&[
            ("signature", "0000000000000000000000000000000000000000"),
            ("timestamp", &chrono::Utc::now().timestamp().to_string()),
            ("nonce", "1"),
        ])
        .body("<xml/>")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let pid = i32::try_from(child.id().expect("still running")).unwrap();
    // SAFETY: kill(2) on the pid of a child we spawned and have not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let lines = reader.await.unwrap();
    let log = lines.join("\n");

    for (what, secret) in [
        ("the AppSecret", LOG_SECRET),
        ("the callback token", CALLBACK_TOKEN),
        ("the EncodingAESKey", AES_KEY),
        ("an access token", "MOCK_"),
        ("an access_token query", "access_token="),
    ] {
        let hits: Vec<&String> = lines.iter().filter(|l| l.contains(secret)).collect();
        assert!(hits.is_empty(), "the logs contain {what}: {hits:#?}");
    }
    assert!(
        log.contains("callback refused"),
        "the refused callback was logged"
    );

    // Every line of a job carries job_id and appid (as fields or from its span); its final
    // line also carries errcode.
    let parsed: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(parsed.len() * 10 >= lines.len() * 9, "JSON lines: {log}");
    let field = |v: &Value, k: &str| -> Option<Value> {
        v.get(k)
            .or_else(|| v["span"].get(k))
            .filter(|x| !x.is_null())
            .cloned()
    };
    for id in &ids {
        let mine: Vec<&Value> = parsed
            .iter()
            .filter(|v| field(v, "job_id").is_some_and(|j| j == id.as_str()))
            .collect();
        assert!(!mine.is_empty(), "no log line for job {id}");
        for v in &mine {
            assert_eq!(field(v, "appid"), Some(Value::from(LOG_APPID)), "{v}");
        }
        assert!(
            mine.iter().any(|v| field(v, "errcode").is_some()),
            "no line of job {id} carries errcode: {mine:#?}"
        );
    }
    h.cleanup().await;
}

/// The metric names of every panel query of a Grafana dashboard (descriptions and legends do
/// not count: a name only mentioned there is not shown).
fn dashboard_query_names(dashboard: &Value) -> BTreeSet<String> {
    fn walk(panels: &Value, out: &mut BTreeSet<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.extend(names_used_in(t["expr"].as_str().unwrap_or_default()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// What is wrong with the coverage: registered names neither queried nor listed as internal,
/// and internal entries that are gone or on the dashboard after all.
fn coverage_problems(
    registered: &BTreeSet<String>,
    on_dashboard: &BTreeSet<String>,
    internal: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems: Vec<String> = registered
        .iter()
        .filter(|n| !on_dashboard.contains(*n) && !internal.contains(*n))
        .map(|n| {
            format!(
                "{n}: exported, but on no dashboard panel and not in deploy/metrics-internal.txt"
            )
        })
        .collect();
    for n in internal {
        if !registered.contains(n) {
            problems.push(format!("{n}: listed as internal but no longer registered"));
        }
        if on_dashboard.contains(n) {
            problems.push(format!("{n}: listed as internal but on the dashboard"));
        }
    }
    problems
}

/// Every metric the worker registers (each `"wxdispatch_…"` name in src/metrics/mod.rs, where all
/// of them are registered) is queried by a dashboard panel or listed with its reason in
/// deploy/metrics-internal.txt, so a new metric cannot go unseen by on-call. The check fails
/// when a panel's query is removed (shown on a copy of the dashboard).
#[test]
fn every_exported_metric_is_on_the_dashboard_or_internal() {
    let source = repo_file("src/metrics/mod.rs");
    let registered: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("wxdispatch_") && names_used_in(s).len() == 1)
        .map(str::to_string)
        .collect();
    assert!(
        registered.len() >= 30 && registered.contains("wxdispatch_jobs_total"),
        "src/metrics/mod.rs registers its metrics by name: {registered:?}"
    );
    let internal: BTreeSet<String> = repo_file("deploy/metrics-internal.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let dashboard: Value =
        serde_json::from_str(&repo_file("grafana/dashboards/wxdispatch.json")).unwrap();
    let problems = coverage_problems(&registered, &dashboard_query_names(&dashboard), &internal);
    assert!(problems.is_empty(), "{problems:#?}");

    // The same check on a dashboard without the consents panel's query reports it.
    let mut fewer = dashboard.clone();
    fn drop_queries(panels: &mut Value, name: &str) {
        for p in panels.as_array_mut().into_iter().flatten() {
            if let Some(ts) = p["targets"].as_array_mut() {
                ts.retain(|t| !t["expr"].as_str().unwrap_or_default().contains(name));
            }
            drop_queries(&mut p["panels"], name);
        }
    }
    drop_queries(&mut fewer["panels"], "wxdispatch_consents_total");
    let problems = coverage_problems(&registered, &dashboard_query_names(&fewer), &internal);
    assert_eq!(
        problems,
        vec![
            "wxdispatch_consents_total: exported, but on no dashboard panel and not in \
             deploy/metrics-internal.txt"
                .to_string()
        ]
    );
}
