//! Dynamic accounts: in component mode a job's `appid` may name any authorizer of the
//! platform, with no `[[accounts]]` entry and no restart.

use std::time::Duration;

use super::outcomes::{platform_harness, post, push_authorization, push_ticket, route_url};
use super::*;

/// A worker in component mode, one account configured: a merchant that authorizes the
/// platform while the worker runs (ticket and authorization pushed to the worker's own route)
/// is sent for at once, with no restart and no `[[accounts]]` entry; an appid that never
/// authorized ends `rejected`, `not_authorized`, and is never sent; after `unauthorized` the
/// merchant's jobs end the same way.
///
/// Fails on the code before dynamic accounts: the new appid's jobs were `invalid`,
/// `unknown_account`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_authorizing_while_the_worker_runs_is_sent_for_without_a_restart() {
    let (h, platform) = platform_harness(|_| {}).await;
    let url = route_url(&h);

    push_ticket(&h, &platform, &url).await;
    let merchant = unique("wxnew").replace('.', "");
    // 7 (群发与通知) is the set template messages need.
    push_authorization(&h, &platform, &url, "authorized", &merchant, &[1, 7]).await;

    let never = unique("wxnever").replace('.', "");
    let mut all = jobs_for("dyn-new", &merchant, 3);
    all.extend(jobs_for("dyn-never", &never, 2));
    h.publish_many(&all).await;
    let out = h.outcomes(6, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 6, "{:?}", by_status(&out));
    for o in &out {
        match o["kind"].as_str() {
            Some("authorization") => assert_eq!(o["appid"], merchant.as_str(), "{o}"),
            _ if o["appid"] == merchant.as_str() => assert_eq!(o["status"], "sent", "{o}"),
            _ => {
                assert_eq!(o["appid"], never.as_str(), "{o}");
                assert_eq!(o["status"], "rejected", "{o}");
                assert_eq!(o["reason"], "not_authorized", "{o}");
            }
        }
    }
    assert_eq!(h.mock.state.stats().messages, 3);

    h.mock.state.component_unauthorize(&merchant);
    let gone = push(
        &platform,
        &auth_xml(&platform, "unauthorized", &merchant, ""),
    );
    assert_eq!(post(&url, &gone).await, (200, "success".into()));
    h.publish_many(&jobs_for("dyn-gone", &merchant, 2)).await;
    let out = h.outcomes(3, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 3, "{:?}", by_status(&out));
    for o in out.iter().filter(|o| o["kind"] == "send") {
        assert_eq!(o["status"], "rejected", "{o}");
        assert_eq!(o["reason"], "not_authorized", "{o}");
    }
    assert_eq!(h.mock.state.stats().messages, 3);
    h.cleanup().await;
}
