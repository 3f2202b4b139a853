//! The callback's own publisher: a confirm-mode channel on a connection opened on first use
//! and reopened after a loss, apart from the worker's, so receipts are stored while the worker
//! drains or reconnects.

use std::sync::Arc;
use std::time::Duration;

use crate::amqp::{self, Publisher};
use crate::config::Config;
use crate::outcome::Outcome;

/// Opening the connection gets this long, so a broker that accepts TCP but never finishes the
/// handshake cannot hold the connection (and every receipt behind it).
const CONNECT_WITHIN: Duration = Duration::from_secs(3);
/// One publish (connect and confirm) gets this long in its own task. Longer than the answer's
/// bound on purpose: a broker blocked for a few seconds still stores the receipt once, and
/// WeChat's next retry gets `success` instead of a second publish.
const PUBLISH_WITHIN: Duration = Duration::from_secs(30);

pub(crate) struct LazyPublisher {
    config: Config,
    /// The connection, and the confirm-mode channel on it unless the last publish failed.
    open: tokio::sync::Mutex<Option<(lapin::Connection, Option<Arc<Publisher>>)>>,
}

impl LazyPublisher {
    pub(crate) fn new(config: Config) -> LazyPublisher {
        LazyPublisher {
            config,
            open: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes with confirms over a lazily (re)opened connection, all within
    /// [`PUBLISH_WITHIN`].
    pub(crate) async fn publish(&self, outcome: &Outcome) -> anyhow::Result<()> {
        tokio::time::timeout(PUBLISH_WITHIN, async {
            let publisher = self.publisher().await?;
            if let Err(e) = publisher.outcome(outcome).await {
                // The broker may have closed the channel (say, a publish to a missing
                // exchange) while the connection stays up, and lapin may not say so yet: the
                // next publish opens a new channel instead of failing on this one for ever.
                if let Some((_, current)) = self.open.lock().await.as_mut()
                    && current.as_ref().is_some_and(|p| Arc::ptr_eq(p, &publisher))
                    && let Some(old) = current.take()
                {
                    // A channel still open (a nack, not a close) is closed, not left behind.
                    let channel = old.channel().clone();
                    if channel.status().connected() {
                        tokio::spawn(async move {
                            let _ = channel.close(200, "reopening".into()).await;
                        });
                    }
                }
                return Err(e.into());
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no confirm within {PUBLISH_WITHIN:?}"))?
    }

    /// The channel to publish on, (re)opening the connection or the channel as needed. The
    /// lock only guards (re)opening; confirms are awaited outside it, so receipts are
    /// published concurrently.
    async fn publisher(&self) -> anyhow::Result<Arc<Publisher>> {
        let mut open = self.open.lock().await;
        if open.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
            let conn = tokio::time::timeout(
                CONNECT_WITHIN,
                amqp::connect(&self.config.amqp.url, "wxdispatch-receipts"),
            )
            .await
            .map_err(|_| anyhow::anyhow!("no AMQP connection within {CONNECT_WITHIN:?}"))??;
            *open = Some((conn, None));
        }
        let (conn, publisher) = open.as_mut().expect("just opened");
        match publisher {
            Some(p) if p.channel().status().connected() => Ok(p.clone()),
            _ => {
                let p = Arc::new(Publisher::new(conn, &self.config).await?);
                *publisher = Some(p.clone());
                Ok(p)
            }
        }
    }
}
