//! Structured logs with tracing: JSON in production, readable text on a terminal.
//!
//! Job lines carry `job_id`, `appid` and `errcode` fields. Secrets never reach a log: they are
//! wrapped in [`crate::config::Secret`], and request URLs (which carry the access token) are
//! never formatted.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// Like [`init`], with another default level (the demo keeps its table readable with `warn`).
pub(crate) fn init_with_default(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},lapin=warn,hyper=warn,reqwest=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
