//! The worker's HTTP server: `/metrics`, `/healthz`, `/readyz` and the WeChat callback.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::shutdown::Shutdown;
use crate::worker::Worker;

/// Builds the router. The callback routes are merged in when a callback token is configured.
pub(crate) fn router(worker: Arc<Worker>, callback: Option<Router>) -> Router {
    let base = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(worker);
    match callback {
        Some(cb) => base.merge(cb),
        None => base,
    }
}

async fn metrics(State(worker): State<Arc<Worker>>) -> impl IntoResponse {
    for acct in worker.dispatcher.accounts() {
        acct.tokens.update_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        worker.metrics.render(),
    )
}

async fn readyz(State(worker): State<Arc<Worker>>) -> impl IntoResponse {
    if worker.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `addr` and serves until shutdown. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: &str,
    app: Router,
    shutdown: Shutdown,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
    });
    Ok((local, handle))
}
