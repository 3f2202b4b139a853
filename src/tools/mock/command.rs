//! The simulator as a process of its own: `wxdispatch mock-wechat`'s options and entry point.

use std::path::Path;

use anyhow::Context;

use super::push::PushTarget;
use super::{Behaviour, Fault, MockConfig, MockServer};
use crate::config::Config;
use crate::shutdown::Shutdown;

/// `wxdispatch mock-wechat`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A random fault KIND:RATE, repeatable. KIND is an errcode (-1, 45009 ...), httpNNN or
    /// timeout. Example: --fail -1:0.05 --fail http502:0.01
    #[arg(long = "fail", value_name = "KIND:RATE")]
    pub faults: Vec<String>,
    /// Latency added to every send, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Daily template quota per appid (45009 past it).
    #[arg(long)]
    pub quota: Option<u64>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 7200)]
    pub token_ttl: u64,
    /// How long a `timeout` fault stalls its reply, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub stall_ms: u64,
    /// Push TEMPLATESENDJOBFINISH receipts to this callback URL after successful sends
    /// (signed with WXD_CALLBACK_TOKEN; AES safe mode when WXD_CALLBACK_AES_KEY is set).
    #[arg(long)]
    pub push_url: Option<String>,
    /// Serve sample template catalogues (the seed template, two subscription templates), so
    /// the worker checks jobs against them and `wxdispatch templates` has something to list.
    /// Without it the catalogue endpoints answer 48001 and the worker sends unchecked.
    #[arg(long)]
    pub catalogue: bool,
}

/// `wxdispatch mock-wechat`: serves the simulator until SIGINT or SIGTERM.
pub async fn serve_simulator(config_file: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = Config::load(config_file)?;
    crate::logging::init(config.log_format);
    // The simulator accepts the worker's own accounts, from the same configuration, so that
    // secrets never travel on a command line.
    let accounts: Vec<(String, String)> = config
        .accounts
        .iter()
        .filter_map(|a| {
            let secret = config.credentials.app_secret(&a.appid)?;
            Some((a.appid.clone(), secret.expose().to_string()))
        })
        .collect();
    if accounts.is_empty() {
        anyhow::bail!("no account: set WXD_APPID and WXD_SECRET (or [[accounts]] in the file)");
    }
    let faults = args
        .faults
        .iter()
        .map(|f| Fault::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let push = match &args.push_url {
        Some(url) => {
            let token = config
                .credentials
                .callback_token
                .as_ref()
                .context("--push-url needs WXD_CALLBACK_TOKEN")?;
            let aes_key = config
                .credentials
                .callback_aes_key
                .as_ref()
                .map(|k| crate::crypto::AesKey::from_encoding_aes_key(k.expose()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("WXD_CALLBACK_AES_KEY: {e}"))?;
            Some(PushTarget {
                url: url.clone(),
                token: token.expose().to_string(),
                aes_key,
                delay_ms: 0,
            })
        }
        None => None,
    };
    let server = MockServer::start(
        &args.listen,
        MockConfig {
            accounts,
            behaviour: Behaviour {
                faults,
                latency_ms: args.latency_ms,
                quota: args.quota,
                token_ttl_secs: args.token_ttl,
                stall_ms: args.stall_ms,
                outage: None,
                token_outage: None,
                forced_token_fault: None,
                private_templates: args.catalogue.then(super::sample_private_templates),
                subscription_templates: args.catalogue.then(super::sample_subscription_templates),
            },
            push,
        },
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %server.addr, "mock WeChat API listening; GET /mock/stats for counts");
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    shutdown.wait().await;
    server.stop();
    Ok(())
}
