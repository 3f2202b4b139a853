//! Metrics at a platform's scale: the configured accounts and at most
//! `metrics_top_accounts` authorizers have `appid` series of their own; the others are
//! counted together in `appid="_other"`.

use std::collections::BTreeSet;
use std::time::Duration;

use super::outcomes::{platform_harness, push_authorization, push_ticket, route_url};
use super::*;

/// The sum of the samples of `metric` whose labels include every one of `labels`.
fn sum(body: &str, metric: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every `appid` label value in the exposition.
fn appids(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| l.starts_with("wxdispatch_"))
        .filter_map(|l| {
            let at = l.find("appid=\"")? + 7;
            let end = l[at..].find('"')?;
            Some(l[at..at + end].to_string())
        })
        .collect()
}

/// With `metrics_top_accounts = 2` and five authorizers sending 1 to 5 jobs, `/metrics`
/// names two of them (the first seen) and folds the other three into `_other`, whose counts
/// are the sum of theirs: sent jobs, send requests, and the send-duration observations; no
/// series of any kind names a folded appid. The configured account keeps its own series.
///
/// Fails on the code before the fold: all five appids had series of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_top_authorizers_have_their_own_series_and_the_rest_add_up_in_other() {
    let (h, platform) = platform_harness(|c| c.metrics_top_accounts = 2).await;
    let url = route_url(&h);
    push_ticket(&h, &platform, &url).await;
    let merchants: Vec<String> = (0..5)
        .map(|i| unique(&format!("wxtop{i}")).replace('.', ""))
        .collect();
    let mut all = Vec::new();
    for (i, m) in merchants.iter().enumerate() {
        push_authorization(&h, &platform, &url, "authorized", m, &[1, 7]).await;
        all.extend(jobs_for(&format!("top{i}"), m, i + 1));
    }
    h.publish_many(&all).await;
    // 15 sends, and the authorization outcomes (which the harness tells apart by kind, user
    // and status only, so the five count as one).
    let out = h.outcomes(16, Duration::from_secs(30)).await;
    let sends: Vec<_> = out.iter().filter(|o| o["kind"] == "send").collect();
    assert_eq!(sends.len(), 15, "{:?}", by_status(&out));
    assert!(
        sends.iter().all(|o| o["status"] == "sent"),
        "{:?}",
        by_status(&out)
    );

    let body = h.metrics().await;
    let named = appids(&body);
    let own: Vec<&String> = merchants.iter().filter(|m| named.contains(*m)).collect();
    assert_eq!(
        own.len(),
        2,
        "two authorizers have their own series: {named:?}"
    );
    assert!(named.contains(OTHER_LABEL), "{named:?}");
    assert!(
        named.contains(APPID),
        "the configured account keeps its series"
    );
    for m in merchants.iter().filter(|m| !own.contains(m)) {
        assert!(
            !body.contains(m.as_str()),
            "{m} is folded, yet named in /metrics"
        );
    }
    let jobs_of = |m: &String| (merchants.iter().position(|x| x == m).unwrap() + 1) as f64;
    let folded = 15.0 - own.iter().map(|m| jobs_of(m)).sum::<f64>();
    let other = format!("appid=\"{OTHER_LABEL}\"");
    assert_eq!(
        sum(&body, "wxdispatch_jobs_total", &[&other, "status=\"sent\""]),
        folded
    );
    assert_eq!(
        sum(
            &body,
            "wxdispatch_api_requests_total",
            &[&other, "errcode=\"0\""]
        ),
        folded
    );
    assert_eq!(
        sum(&body, "wxdispatch_send_duration_seconds_count", &[&other]),
        folded
    );
    for gauge in [
        "wxdispatch_token_age_seconds",
        "wxdispatch_token_expires_in_seconds",
    ] {
        assert!(
            !body.contains(&format!("{gauge}{{{other}}}")),
            "a token's gauge has no _other series"
        );
    }
    for m in own {
        let label = format!("appid=\"{m}\"");
        assert_eq!(
            sum(&body, "wxdispatch_jobs_total", &[&label, "status=\"sent\""]),
            jobs_of(m)
        );
    }
    h.cleanup().await;
}

/// Jobs for appids that never authorized the platform end `not_authorized` without taking a
/// place among the series: with one place, and such jobs first, the merchant that did
/// authorize still gets it, and no series names the others.
///
/// Fails on the code before: the first never-authorized appid's account was built and took
/// the one place, and the merchant's series were folded into `_other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appids_that_never_authorized_take_no_place_among_the_series() {
    let (h, platform) = platform_harness(|c| c.metrics_top_accounts = 1).await;
    let url = route_url(&h);
    push_ticket(&h, &platform, &url).await;
    let strangers: Vec<String> = (0..3)
        .map(|i| unique(&format!("wxnone{i}")).replace('.', ""))
        .collect();
    let mut first = Vec::new();
    for (i, s) in strangers.iter().enumerate() {
        first.extend(jobs_for(&format!("none{i}"), s, 1));
    }
    h.publish_many(&first).await;
    let out = h.outcomes(3, Duration::from_secs(30)).await;
    assert!(
        out.iter().all(|o| o["reason"] == "not_authorized"),
        "{:?}",
        by_status(&out)
    );
    let merchant = unique("wxmerch").replace('.', "");
    push_authorization(&h, &platform, &url, "authorized", &merchant, &[1, 7]).await;
    h.publish_many(&jobs_for("merch", &merchant, 2)).await;
    let out = h.outcomes(3, Duration::from_secs(30)).await;
    let sent = out
        .iter()
        .filter(|o| o["kind"] == "send" && o["status"] == "sent")
        .count();
    assert_eq!(sent, 2, "{:?}", by_status(&out));
    let body = h.metrics().await;
    let named = appids(&body);
    assert!(
        named.contains(&merchant),
        "the authorized merchant has its own series: {named:?}"
    );
    for s in &strangers {
        assert!(!body.contains(s.as_str()), "{s} is named in /metrics");
    }
    let label = format!("appid=\"{merchant}\"");
    assert_eq!(
        sum(&body, "wxdispatch_jobs_total", &[&label, "status=\"sent\""]),
        2.0
    );
    h.cleanup().await;
}

const OTHER_LABEL: &str = wxdispatch::metrics::OTHER;
