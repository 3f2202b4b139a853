//! The product's subcommands (`run`, `check-config`, `templates`) and an embeddable worker
//! ([`start`], used by `run`, the demo and the tests).
//!
//! Nothing here depends on the command line or on the tools, so both can build on it without
//! an import cycle.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::callback::http::Endpoint;
use crate::config::{Config, TokenMode};
use crate::job::MsgType;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
pub use crate::wechat::catalogue::Template;
use crate::worker::{self, Worker};

/// A worker running inside this process.
pub struct RunningWorker {
    pub worker: Arc<Worker>,
    /// Where `/metrics`, the probes and (unless `callback_addr` is set) the callback are
    /// served.
    pub http_addr: std::net::SocketAddr,
    /// The callback's own listener, when `WXD_CALLBACK_ADDR` is set and a callback token is
    /// configured.
    pub callback_addr: Option<std::net::SocketAddr>,
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Triggers shutdown and waits for the drain to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.handle.await.context("worker task")?
    }
}

/// Starts the worker and its HTTP server.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningWorker> {
    let (worker, callback) = assemble(config)?;
    let callback = crate::component::http::with_route(&worker.config, callback)?;
    // With WXD_CALLBACK_ADDR the callback gets a listener of its own and the main one serves
    // only /metrics and the probes, so an Ingress routed to the callback port can never
    // reach them.
    let (callback, separate) = match &worker.config.callback.addr {
        Some(addr) => (None, callback.map(|cb| (addr.clone(), cb))),
        None => (callback, None),
    };
    if worker.config.callback.addr.is_some() && separate.is_none() {
        tracing::warn!(
            "WXD_CALLBACK_ADDR is set but WXD_CALLBACK_TOKEN is not: no callback served"
        );
    }
    let app = crate::http::router(worker.clone(), callback);
    // The HTTP server outlives the drain: /readyz answers 503 (rather than refusing
    // connections) and receipts are still stored while in-flight sends finish.
    let http_stop = Shutdown::new();
    let (http_addr, _) = crate::http::serve(&worker.config.http_addr, app, http_stop.clone())
        .await
        .with_context(|| format!("cannot listen on {}", worker.config.http_addr))?;
    let callback_addr = match separate {
        Some((addr, cb)) => Some(
            crate::http::serve(&addr, cb, http_stop.clone())
                .await
                .with_context(|| format!("cannot listen on {addr} (WXD_CALLBACK_ADDR)"))?
                .0,
        ),
        None => None,
    };
    let worker_loop = worker::supervise(worker.clone(), shutdown.clone());
    let dispatcher = worker.dispatcher.clone();
    let handle = tokio::spawn(async move {
        let result = worker_loop.await;
        dispatcher.close().await;
        http_stop.trigger();
        result
    });
    Ok(RunningWorker {
        worker,
        http_addr,
        callback_addr,
        shutdown,
        handle,
    })
}

/// What the worker builds from its configuration before it connects or listens: the
/// dispatcher with each account's limits and tokens, and the callback with its AES key.
/// `check-config` builds it too, so that what `run` would refuse at start it refuses as well.
fn assemble(config: Config) -> anyhow::Result<(Arc<Worker>, Option<axum::Router>)> {
    let metrics = Arc::new(Metrics::new());
    let endpoint = Endpoint::from_config(&config, metrics.clone())?;
    let worker = Worker::new(config, metrics)?;
    Ok((worker, endpoint.map(Endpoint::router)))
}

/// `wxdispatch run`.
pub(crate) async fn run_worker(config_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_file)?;
    crate::logging::init(config.log_format);
    require_account(&config)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        accounts = config.accounts.len(),
        jobs_queue = %config.amqp.jobs_queue,
        api_base = %config.wechat.api_base,
        http_addr = %config.http_addr,
        redis = config.limits.redis_url.is_some(),
        "starting wxdispatch"
    );
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let worker = start(config, shutdown.clone()).await?;
    tracing::info!(addr = %worker.http_addr, "serving /metrics, /healthz, /readyz");
    if let Some(addr) = worker.callback_addr {
        tracing::info!(%addr, "serving the WeChat callback on its own listener");
    }
    worker.handle.await.context("worker task")??;
    tracing::info!("drained; bye");
    Ok(())
}

fn require_account(config: &Config) -> anyhow::Result<()> {
    if config.accounts.is_empty() {
        anyhow::bail!(
            "configuration error: no account configured; set WXD_APPID and WXD_SECRET, or [[accounts]] in the file"
        );
    }
    Ok(())
}

/// `wxdispatch check-config`: loads the configuration exactly as `run` does and builds what
/// `run` builds before it connects, without connecting anywhere, then prints the effective
/// settings with secrets redacted. An error names the key at fault and the process exits 1, so
/// it works as a CI step or an initContainer.
pub(crate) fn check_config(config_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_file)?;
    require_account(&config)?;
    assemble(config.clone())?;
    let mut out = String::new();
    for (name, value) in config.settings() {
        out.push_str(&format!("{name}={value}\n"));
    }
    print!("{out}");
    eprintln!(
        "wxdispatch: configuration ok ({} account{})",
        config.accounts.len(),
        if config.accounts.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `wxdispatch templates [--appid A]`: each account's templates and the keys their content
/// names, from WeChat's two catalogues: what a job's `template_id` and `data` must match.
pub(crate) async fn templates(
    config_file: Option<&Path>,
    appid: Option<&str>,
) -> anyhow::Result<()> {
    let config = Config::load(config_file)?;
    let mut failed = 0;
    for listed in catalogues(&config, appid).await? {
        let what = match listed.msg_type {
            MsgType::Template => "template messages (type template)",
            _ => "subscription templates (type subscribe / miniprogram_subscribe)",
        };
        println!("{}: {what}", listed.appid);
        match listed.templates {
            Ok(list) if list.is_empty() => println!("  (none)"),
            Ok(list) => {
                for tpl in list {
                    println!("  {}  {}", tpl.template_id, tpl.title);
                    println!("    data keys: {}", tpl.keys.join(", "));
                }
            }
            Err(e) => {
                failed += 1;
                println!("  cannot fetch: {e:#}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} catalogue(s) could not be fetched");
    Ok(())
}

/// One catalogue of one account, fetched for `wxdispatch templates`.
pub struct AccountCatalogue {
    pub appid: String,
    /// `Template` for template messages, `Subscribe` for the subscription templates (both
    /// subscription types use them).
    pub msg_type: MsgType,
    pub templates: anyhow::Result<Vec<Template>>,
}

/// The two catalogues of account `appid`, or of every configured account: fetched now with
/// the account's token, whatever the token mode. In component mode `appid` may name any
/// authorizer of the platform, configured or not.
pub async fn catalogues(
    config: &Config,
    appid: Option<&str>,
) -> anyhow::Result<Vec<AccountCatalogue>> {
    let dispatcher = crate::dispatch::Dispatcher::new(config, Arc::new(Metrics::new()))?;
    let appids: Vec<String> = match (appid, config.account(appid)) {
        (_, Some(a)) => vec![a.appid.clone()],
        (Some(a), None) if config.wechat.token_mode == TokenMode::Component => vec![a.to_string()],
        (Some(a), None) => anyhow::bail!("appid {a} is not configured"),
        (None, None) => config.accounts.iter().map(|a| a.appid.clone()).collect(),
    };
    anyhow::ensure!(
        !appids.is_empty(),
        "no account configured; name an authorizer with --appid"
    );
    let mut out = Vec::new();
    for appid in appids {
        for msg_type in [MsgType::Template, MsgType::Subscribe] {
            out.push(AccountCatalogue {
                templates: dispatcher.templates(&appid, msg_type).await,
                appid: appid.clone(),
                msg_type,
            });
        }
    }
    Ok(out)
}
