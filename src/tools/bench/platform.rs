//! `--authorizers N`: the bench as a third-party platform sending for N authorizers, jobs
//! spread evenly over them. The authorizations are made before the worker starts, cheaply: the
//! simulator is told the authorizers and their refresh tokens in one step, and the platform's
//! store in Redis gets the verify ticket and each authorizer's record, as the `authorized`
//! pushes would have left them. No access token is stored, so each authorizer's token is
//! fetched on its first job, as after a cold start; with `--tokens-stored` each has a valid
//! one in Redis, as a platform that has been running has (the worker only reads it).

use anyhow::Context;
use futures_util::StreamExt;

use crate::component::store::{AuthorizerRecord, ComponentStore, StoredToken};
use crate::tools::mock::MockServer;

pub(super) const SECRET: &str = "bench-platform-secret";
pub(super) const PUSH_TOKEN: &str = "bench-platform-push-token";
pub(super) const PUSH_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// The authorizers' template catalogue: the bench job's template, with the job's two keys.
pub(super) fn catalogue() -> Vec<(String, String)> {
    let job: serde_json::Value =
        serde_json::from_slice(&crate::tools::sample::job("x", "x")).expect("the sample job");
    let keys: String = job["data"]
        .as_object()
        .expect("the sample job's data")
        .keys()
        .map(|k| format!("{{{{{k}.DATA}}}}\n"))
        .collect();
    let id = job["template_id"].as_str().expect("the sample's template");
    vec![(id.to_string(), keys)]
}

/// What a run with `--authorizers` asked of the simulator's token endpoints.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Calls {
    pub authorizers: usize,
    /// Whether each authorizer's token was in Redis before the run (`--tokens-stored`).
    pub tokens_stored: bool,
    /// Between the worker's start and the first job's publish (with `--backlog`: not read).
    pub startup_component_token_calls: u64,
    pub startup_authorizer_token_calls: u64,
    /// In the whole run, start-up included: one per authorizer that had a job is expected.
    pub authorizer_token_calls: u64,
}

/// The platform of one run.
pub(super) struct Platform {
    pub(super) appid: String,
    pub(super) authorizers: Vec<String>,
}

impl Platform {
    /// The appid job `i` is sent for: the authorizers in turn.
    pub(super) fn appid_of(&self, i: usize) -> &str {
        &self.authorizers[i % self.authorizers.len()]
    }
}

/// Makes the simulator a platform with `n` authorizers and stores them in Redis. Every name
/// carries `run`, so [`cleanup`] finds this run's keys.
pub(super) async fn prepare(
    mock: &MockServer,
    redis_url: &str,
    run: &str,
    n: usize,
    tokens_stored: bool,
) -> anyhow::Result<Platform> {
    let appid = format!("wxbenchp{run}");
    let authorizers: Vec<String> = (0..n).map(|i| format!("wxbencha{run}x{i:05}")).collect();
    mock.state.component_setup(&appid, SECRET);
    let refresh = mock.state.component_preauthorize(&authorizers, &[1, 7]);
    let store = ComponentStore::connect(redis_url, &appid)
        .await
        .context("cannot reach Redis (--redis-url, or redis://127.0.0.1:6379/)")?;
    store.set_ticket(&mock.state.component_ticket()).await?;
    futures_util::stream::iter(authorizers.iter().zip(refresh))
        .map(|(a, r)| {
            let store = store.clone();
            async move {
                let record = AuthorizerRecord {
                    refresh_token: Some(r),
                    funcs: vec![1, 7],
                };
                let token = tokens_stored.then(|| {
                    StoredToken::issued_now(mock.state.component_authorizer_token(a, 7200), 7200)
                });
                store.store_authorizer(a, &record, token.as_ref()).await
            }
        })
        .buffer_unordered(64)
        .fold(Ok(()), |acc, r| async move { acc.and(r) })
        .await
        .context("cannot store the authorizers in Redis")?;
    Ok(Platform { appid, authorizers })
}

/// The worker's `WXD_*` for component mode. The worker wants one configured account: the
/// first authorizer is (with no secret, as the platform fetches its tokens); the others have
/// no entry and get the platform-wide rate, as high as the configured one's.
pub(super) fn env(
    cmd: &mut tokio::process::Command,
    platform: &Platform,
    redis_url: &str,
    rate: u32,
) {
    cmd.env("WXD_TOKEN_MODE", "component")
        .env("WXD_APPID", &platform.authorizers[0])
        .env("WXD_RATE_PER_SEC", rate.to_string())
        .env("WXD_COMPONENT_APPID", &platform.appid)
        .env("WXD_COMPONENT_SECRET", SECRET)
        .env("WXD_COMPONENT_TOKEN", PUSH_TOKEN)
        .env("WXD_COMPONENT_AES_KEY", PUSH_KEY)
        .env("WXD_COMPONENT_RATE_PER_SEC", rate.to_string())
        .env("WXD_REDIS_URL", redis_url);
}

/// The simulator's token calls so far: the component token's and every authorizer's.
pub(super) fn token_calls(mock: &MockServer) -> (u64, u64) {
    let s = mock.state.component_stats();
    (
        s.component_token_calls,
        s.authorizer_token_calls.values().sum(),
    )
}

/// Deletes every Redis key of this run (the platform's store, and the authorizers' shared
/// rates and counts), so a 10,000-authorizer run leaves nothing behind.
pub(super) async fn cleanup(redis_url: &str, run: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(redis_url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let mut cursor = 0u64;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("wxdispatch:*{run}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("DEL")
                .arg(&keys)
                .query_async::<u64>(&mut c)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// The size of the worker's `/metrics` body and how many distinct `appid` values it names.
pub(super) async fn scrape(addr: &str) -> anyhow::Result<(usize, usize)> {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let appids: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| {
            let at = l.find("appid=\"")? + 7;
            let end = l[at..].find('"')?;
            Some(&l[at..at + end])
        })
        .collect();
    Ok((body.len(), appids.len()))
}
