//! `wxdispatch bench` end to end: the harness behind docs/BENCHMARKS.md, run small.

use std::process::Stdio;

/// Runs `wxdispatch bench --json` with `args` and returns its report.
async fn bench(args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .arg("bench")
        .args([
            "--json",
            "--jobs",
            "300",
            "--concurrency",
            "16",
            "--prefetch",
            "32",
        ])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WXD_AMQP_URL", crate::helpers::AMQP_URL)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run wxdispatch bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report on stdout")
}

/// Proves the bench measures the real worker: every job gets exactly one `sent` outcome from
/// `wxdispatch run`, and the CPU and memory figures are read from that child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_the_worker_and_accounts_for_every_job() {
    let r = bench(&[]).await;
    assert_eq!(r["outcomes"], 300);
    assert_eq!(r["sent"], 300);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["publish_failures"], 0);
    assert!(r["floor"].is_null(), "the child was the real worker");
    assert!(r["worker_cpu_secs"].as_f64().unwrap() > 0.0);
    assert!(r["worker_peak_rss_mib"].as_f64().unwrap() > 1.0);
}

/// Proves `--floor` swaps in the stripped worker and that it still does the whole round trip
/// (HTTP send, confirmed outcome with the job's id, ack): the collector matches all 300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_worker_completes_every_job_under_the_same_harness() {
    for floor in ["amqp", "amqp-http"] {
        let r = bench(&["--floor", floor]).await;
        assert_eq!(r["floor"], floor);
        assert_eq!(r["outcomes"], 300, "{floor}");
        assert_eq!(r["sent"], 300, "{floor}");
        assert_eq!(r["duplicates"], 0, "{floor}");
        assert!(r["worker_cpu_secs"].as_f64().unwrap() > 0.0, "{floor}");
    }
}
