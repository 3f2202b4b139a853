//! What the Kubernetes layout relies on (issue 17): the optional separate callback listener
//! and the publish-age metrics the dashboard and the "oldest job" alert read.

use std::time::Duration;

use lapin::BasicProperties;

use crate::helpers::{Harness, Opts, job, metric};

async fn status(url: String) -> u16 {
    reqwest::get(url).await.expect("answers").status().as_u16()
}

/// With WXD_CALLBACK_ADDR, the callback answers only on its own listener and /metrics and
/// the probes only on WXD_HTTP_ADDR: an Ingress routed to the callback port cannot reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_callback_listener_serves_only_the_callback() {
    let h = Harness::start(Opts {
        env: &[
            ("WXD_CALLBACK_TOKEN", "deploy-token"),
            ("WXD_CALLBACK_ADDR", "127.0.0.1:0"),
        ],
        ..Default::default()
    })
    .await;
    let w = h.worker.as_ref().unwrap();
    let main = w.http_addr;
    let cb = w.callback_addr.expect("the callback has its own listener");
    assert_ne!(main, cb);
    let callback = "/wechat/callback?signature=bad&timestamp=1&nonce=1&echostr=x";
    // The callback port: the callback answers (a bad signature is refused, not "not found")...
    assert_eq!(status(format!("http://{cb}{callback}")).await, 401);
    // ...and nothing else is there.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            status(format!("http://{cb}{path}")).await,
            404,
            "{path} on the callback port"
        );
    }
    // The main port: metrics and probes, no callback.
    assert_eq!(status(format!("http://{main}/metrics")).await, 200);
    assert_eq!(status(format!("http://{main}/healthz")).await, 200);
    assert_eq!(status(format!("http://{main}{callback}")).await, 404);
    h.cleanup().await;
}

/// Without WXD_CALLBACK_ADDR the contract's single listener serves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_one_listener_serves_the_callback_and_the_metrics() {
    let h = Harness::start(Opts {
        env: &[("WXD_CALLBACK_TOKEN", "deploy-token")],
        ..Default::default()
    })
    .await;
    let w = h.worker.as_ref().unwrap();
    assert_eq!(w.callback_addr, None);
    let main = w.http_addr;
    assert_eq!(
        status(format!(
            "http://{main}/wechat/callback?signature=bad&timestamp=1&nonce=1&echostr=x"
        ))
        .await,
        401
    );
    assert_eq!(status(format!("http://{main}/metrics")).await, 200);
    h.cleanup().await;
}

/// Jobs published with an AMQP timestamp an hour ago are counted in the publish-to-outcome
/// and queue-wait histograms in the bucket that holds an hour (not the sub-minute ones), and
/// jobs without a timestamp are not counted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_age_is_measured_from_the_amqp_timestamp() {
    let h = Harness::start(Opts::default()).await;
    let hour_ago = (chrono::Utc::now().timestamp() - 3600) as u64;
    for i in 0..3 {
        let body = serde_json::to_vec(&job(&format!("aged-{i}"), "user-aged")).unwrap();
        h.publisher
            .publish(
                "",
                &h.config.amqp.jobs_queue,
                &body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_timestamp(hour_ago),
            )
            .await
            .expect("published");
    }
    h.publish(&job("no-timestamp", "user-plain")).await;
    assert_eq!(h.outcomes(4, Duration::from_secs(20)).await.len(), 4);
    let text = h.metrics().await;
    for name in [
        "wxdispatch_job_publish_latency_seconds",
        "wxdispatch_job_queue_wait_seconds",
    ] {
        assert_eq!(
            metric(&text, &format!("{name}_count")),
            3.0,
            "{name}\n{text}"
        );
        assert_eq!(
            metric(&text, &format!("{name}_bucket{{le=\"1800\"}}")),
            0.0,
            "{name}"
        );
        assert_eq!(
            metric(&text, &format!("{name}_bucket{{le=\"7200\"}}")),
            3.0,
            "{name}"
        );
    }
    h.cleanup().await;
}

/// Runs the binary with only `env` (plus PATH) in its environment.
fn wxdispatch(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check-config` prints the effective settings with every password and secret redacted, and
/// a bad setting makes it exit 1 naming the key, without connecting anywhere.
#[test]
fn check_config_redacts_and_names_the_bad_key() {
    let good = [
        (
            "WXD_AMQP_URL",
            "amqps://app:hunter2-amqp@rabbit.invalid:5671/%2f",
        ),
        (
            "WXD_REDIS_URL",
            "redis://:hunter2-redis@redis.invalid:6379/0",
        ),
        ("WXD_APPID", "wx0123456789abcdef"),
        ("WXD_SECRET", "hunter2-appsecret"),
        ("WXD_CALLBACK_TOKEN", "hunter2-token"),
        ("WXD_CALLBACK_ADDR", "0.0.0.0:8080"),
    ];
    let (code, out, err) = wxdispatch(&["check-config"], &good, "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "{out}{err}"
    );
    assert!(
        out.contains("WXD_AMQP_URL=amqps://app:***@rabbit.invalid:5671/%2f"),
        "{out}"
    );
    assert!(out.contains("WXD_CALLBACK_ADDR=0.0.0.0:8080"), "{out}");
    assert!(out.contains("WXD_CALLBACK_TOKEN=(set)"), "{out}");

    let mut bad = good.to_vec();
    bad.push(("WXD_PREFETCH", "lots"));
    let (code, out, err) = wxdispatch(&["check-config"], &bad, "");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("WXD_PREFETCH"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let (code, _, err) = wxdispatch(&["check-config"], &[("WXD_PREFETCH", "8")], "");
    assert_eq!(code, 1, "no account is an error for the worker: {err}");
    assert!(err.contains("WXD_APPID"), "{err}");
}

/// `check-config` refuses what `run` would refuse at start, naming the variable: an
/// EncodingAESKey of 43 characters that are not base64 (the k8s base's old placeholder) and a
/// broker URL whose port is not a number.
#[test]
fn check_config_refuses_what_run_refuses() {
    let base = [
        ("WXD_APPID", "wx0123456789abcdef"),
        ("WXD_SECRET", "s"),
        ("WXD_CALLBACK_TOKEN", "t"),
    ];
    let (code, out, err) = wxdispatch(&["check-config"], &base, "");
    assert_eq!(code, 0, "the base is valid: {out}{err}");
    for (var, value) in [
        (
            "WXD_CALLBACK_AES_KEY",
            "CHANGE_ME_CHANGE_ME_CHANGE_ME_CHANGE_ME_CHA",
        ),
        ("WXD_AMQP_URL", "amqp://h:notaport/%2f"),
    ] {
        let mut env = base.to_vec();
        env.push((var, value));
        let (code, out, err) = wxdispatch(&["check-config"], &env, "");
        assert_eq!(code, 1, "{var}={value} accepted: {out}{err}");
        assert!(err.contains(var), "{err}");
    }
}

/// `publish --dry-run` validates and reports, and never contacts the broker: it succeeds with
/// WXD_AMQP_URL pointing at a port where nothing listens.
#[test]
fn publish_dry_run_validates_without_a_broker() {
    let env = [
        ("WXD_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("WXD_APPID", "wx0123456789abcdef"),
    ];
    let good = format!(
        "{}\n{}\n",
        serde_json::json!({"id": "dry-1", "touser": "u1", "template_id": "t", "data": {}}),
        serde_json::json!({"id": "dry-2", "touser": ["u2", "u3"], "template_id": "t", "data": {}}),
    );
    let (code, out, err) = wxdispatch(&["publish", "--dry-run", "-"], &env, &good);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("2 valid (3 recipients), 0 invalid of 2 lines; nothing was sent"),
        "{err}"
    );

    let bad = format!("{good}{{\"id\": \"dry-3\"}}\n");
    let (code, out, err) = wxdispatch(&["publish", "--dry-run", "-"], &env, &bad);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("line 3: invalid"), "{err}");
    assert!(
        err.contains("1 invalid of 3 lines; nothing was sent"),
        "{err}"
    );
}

/// `--version` prints the crate's version, the one `/metrics` exports as
/// `wxdispatch_build_info{version}` and CHANGELOG.md records.
#[test]
fn version_is_the_crates_and_is_in_the_changelog() {
    let (code, out, _) = wxdispatch(&["--version"], &[], "");
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("wxdispatch {}", env!("CARGO_PKG_VERSION"))
    );
    let changelog = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/CHANGELOG.md"))
        .expect("CHANGELOG.md");
    assert!(
        changelog.contains(&format!("## [{}]", env!("CARGO_PKG_VERSION"))),
        "CHANGELOG.md has no section for {}",
        env!("CARGO_PKG_VERSION")
    );
    let metrics = wxdispatch::metrics::Metrics::new().render();
    assert!(
        metrics.contains(&format!(
            "wxdispatch_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped (hyphens and
/// underscores kept), spaces to hyphens.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Problems of the alert rules against the runbook: an alert without a runbook_url, a
/// runbook_url whose anchor is no heading of docs/OPERATIONS.md, a `by (…)` without namespace.
/// Returns the alerts seen too.
fn runbook_problems(rules: &str, operations: &str) -> (Vec<String>, Vec<String>) {
    let anchors: std::collections::BTreeSet<String> = operations
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| github_anchor(l.trim_start_matches('#')))
        .collect();
    // (alert, runbook_url, expr) from the YAML's fixed layout (one key per line).
    let mut alerts: Vec<(String, Option<String>, String)> = Vec::new();
    let mut in_expr = false;
    for line in rules.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert: ") {
            alerts.push((name.to_string(), None, String::new()));
            in_expr = false;
        } else if let Some(alert) = alerts.last_mut() {
            if let Some(url) = t.strip_prefix("runbook_url: ") {
                alert.1 = Some(url.trim_matches('"').to_string());
            }
            if let Some(expr) = t.strip_prefix("expr:") {
                in_expr = true;
                alert.2.push_str(expr);
            } else if in_expr && (t.starts_with("for:") || t.starts_with("labels:")) {
                in_expr = false;
            } else if in_expr {
                alert.2.push(' ');
                alert.2.push_str(t);
            }
        }
    }
    let mut problems = Vec::new();
    for (name, url, expr) in &alerts {
        match url
            .as_deref()
            .and_then(|u| u.strip_prefix("docs/OPERATIONS.md#"))
        {
            None => problems.push(format!("{name}: no runbook_url into docs/OPERATIONS.md")),
            Some(anchor) if !anchors.contains(anchor) => problems.push(format!(
                "{name}: runbook_url anchor #{anchor} is no heading of docs/OPERATIONS.md"
            )),
            Some(_) => {}
        }
        for (at, _) in expr.match_indices("by (") {
            let labels = &expr[at + 4..];
            let labels = &labels[..labels.find(')').unwrap_or(labels.len())];
            if !labels.split(',').any(|l| l.trim() == "namespace") {
                problems.push(format!("{name}: `by ({labels})` drops namespace"));
            }
        }
    }
    (problems, alerts.into_iter().map(|a| a.0).collect())
}

/// Every alert links to a runbook heading that exists in docs/OPERATIONS.md and keeps
/// `namespace` in its `by` clauses (two installs on one Prometheus must not mask each other).
/// The check fails when a heading is removed (shown on a copy of the document).
#[test]
fn every_alert_has_a_runbook_anchor_and_keeps_namespace() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/rules.yml")).unwrap();
    let ops = std::fs::read_to_string(format!("{root}/docs/OPERATIONS.md")).unwrap();
    let (problems, alerts) = runbook_problems(&rules, &ops);
    assert!(alerts.len() >= 18, "alerts found: {alerts:?}");
    for a in [
        "WxdispatchCallbackSignaturesFailing",
        "WxdispatchCallbackUnavailable",
        "WxdispatchReceiptsStopped",
    ] {
        assert!(alerts.iter().any(|x| x == a), "{a} missing: {alerts:?}");
    }
    assert!(problems.is_empty(), "{problems:#?}");

    let without = ops.replace("### Runbook: receipts stopped\n", "");
    let (problems, _) = runbook_problems(&rules, &without);
    assert_eq!(
        problems,
        vec![
            "WxdispatchReceiptsStopped: runbook_url anchor #runbook-receipts-stopped is no \
             heading of docs/OPERATIONS.md"
                .to_string()
        ]
    );
    let narrowed = rules.replacen(
        "max by (namespace, appid) (wxdispatch_quota_paused)",
        "max by (appid) (wxdispatch_quota_paused)",
        1,
    );
    let (problems, _) = runbook_problems(&narrowed, &ops);
    assert_eq!(
        problems,
        vec!["WxdispatchQuotaPaused: `by (appid)` drops namespace".to_string()]
    );
}
