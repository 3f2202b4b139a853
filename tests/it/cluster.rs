//! Issue 20: several broker addresses. The worker takes `WXD_AMQP_URL` as a comma-separated
//! list of cluster nodes, connects to them in random order and skips the ones that are down;
//! every outcome carries a stable AMQP `message_id`, so consumers can drop the repeats that a
//! failover brings.

use std::time::Duration;

use crate::helpers::*;

/// Two of the three listed nodes are down (nothing listens on ports 1 and 2): whatever order
/// the worker tries them in, it connects to the live one, sends every job once, and stays
/// ready. Each outcome's `message_id` is `send:<appid>:<id>:<touser>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_list_with_dead_nodes_still_delivers_every_job() {
    let urls =
        format!("amqp://guest:guest@127.0.0.1:1/%2f,{AMQP_URL},amqp://guest:guest@127.0.0.1:2/%2f");
    let h = Harness::start(Opts {
        env: &[("WXD_AMQP_URL", &urls)],
        ..Default::default()
    })
    .await;
    h.publish_many(&jobs("list", 30)).await;
    let out = h
        .read(&h.config.outcomes_queue, 30, Duration::from_secs(30))
        .await;
    assert_eq!(out.len(), 30);
    for (o, props) in &out {
        assert_eq!(o["status"], "sent", "{o}");
        let want = format!(
            "send:{APPID}:{}:{}",
            o["id"].as_str().unwrap(),
            o["touser"].as_str().unwrap()
        );
        assert_eq!(
            props.message_id().as_ref().map(|m| m.as_str()),
            Some(want.as_str())
        );
    }
    assert_eq!(h.mock.state.stats().messages, 30);
    let ready = reqwest::get(format!(
        "http://{}/readyz",
        h.worker.as_ref().unwrap().http_addr
    ))
    .await
    .unwrap();
    assert_eq!(ready.status(), 200);
    h.cleanup().await;
}
