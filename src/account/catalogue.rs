//! An account's template catalogues, cached: fetched before the first check, refreshed every
//! ten minutes by one task while the others go on with the old one, and forgotten when WeChat
//! says a template is missing. While a catalogue cannot be fetched, sends go on unchecked and
//! are counted: the check is a help, never a reason to stop sending.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::Secret;
use crate::job::{MsgType, TemplateFields};
use crate::metrics::AccountMetrics;
use crate::wechat::WechatClient;
use crate::wechat::catalogue::{Catalogue, Mismatch, Source};

/// How long a fetched catalogue is trusted before it is fetched again.
const REFRESH: Duration = Duration::from_secs(600);
/// After a failed fetch, how long sends go on unchecked before the next try.
const RETRY_FAILED: Duration = Duration::from_secs(60);

/// One account's catalogues, one per [`Source`].
#[derive(Default)]
pub struct CatalogueCache {
    /// In [`Source`] order: private, subscription.
    by_source: [RwLock<State>; 2],
    /// Held by the one task that fetches.
    fetching: tokio::sync::Mutex<()>,
}

impl CatalogueCache {
    /// Checks a job's template against the account's catalogue of its type, fetching the
    /// catalogue when it is due. `Ok` also when no catalogue could be fetched (counted in
    /// `wxdispatch_catalogue_unchecked_total`).
    pub(crate) async fn check(
        &self,
        client: &WechatClient,
        metrics: &AccountMetrics,
        appid: &str,
        token: &Secret,
        t: MsgType,
        template: TemplateFields<'_>,
    ) -> Result<(), Mismatch> {
        let cached = self.of(t);
        let (due, never) = {
            let st = cached.read().expect("catalogue lock");
            (st.due(Instant::now()), matches!(*st, State::Empty))
        };
        // Before the first fetch every job waits for it (else the first burst of jobs would
        // all go unchecked); a refresh is made by one task while the others use the old one.
        let lock = if !due {
            None
        } else if never {
            Some(self.fetching.lock().await)
        } else {
            self.fetching.try_lock().ok()
        };
        if let Some(_one) = lock {
            // Checked again under the lock: another task may just have fetched it.
            if cached.read().expect("catalogue lock").due(Instant::now()) {
                let fetched = fetch(client, appid, token, Source::of(t)).await;
                *cached.write().expect("catalogue lock") = fetched;
            }
        }
        let ready = match &*cached.read().expect("catalogue lock") {
            State::Ready { catalogue, .. } => Some(catalogue.clone()),
            _ => None,
        };
        match ready {
            Some(catalogue) => catalogue.check(template),
            None => {
                metrics.catalogue_unchecked.inc();
                Ok(())
            }
        }
    }

    /// Forgets the catalogue of type `t`: the next check fetches it again.
    pub(crate) fn forget(&self, t: MsgType) {
        *self.of(t).write().expect("catalogue lock") = State::Empty;
    }

    fn of(&self, t: MsgType) -> &RwLock<State> {
        match Source::of(t) {
            Source::Private => &self.by_source[0],
            Source::Subscription => &self.by_source[1],
        }
    }
}

async fn fetch(client: &WechatClient, appid: &str, token: &Secret, source: Source) -> State {
    match client.fetch_catalogue(token, source).await {
        Ok(reply) => {
            let (code, msg) = (reply.errcode, reply.errmsg.clone());
            match reply.templates() {
                Some(list) => {
                    tracing::info!(
                        appid,
                        ?source,
                        templates = list.len(),
                        "template catalogue fetched"
                    );
                    State::Ready {
                        catalogue: Arc::new(Catalogue::new(&list)),
                        at: Instant::now(),
                    }
                }
                None => {
                    tracing::warn!(appid, ?source, errcode = code, errmsg = %msg, "template catalogue unavailable; sending unchecked");
                    State::Failed(Instant::now())
                }
            }
        }
        Err(e) => {
            tracing::warn!(appid, ?source, error = %e, "template catalogue unavailable; sending unchecked");
            State::Failed(Instant::now())
        }
    }
}

/// The state of one account's catalogue of one source.
#[derive(Debug, Default)]
enum State {
    /// Never fetched.
    #[default]
    Empty,
    Ready {
        catalogue: Arc<Catalogue>,
        at: Instant,
    },
    /// The last fetch failed at this time: send unchecked until `RETRY_FAILED` has passed.
    Failed(Instant),
}

impl State {
    /// Whether the catalogue should be fetched now.
    fn due(&self, now: Instant) -> bool {
        match self {
            State::Empty => true,
            State::Ready { at, .. } => now.duration_since(*at) >= REFRESH,
            State::Failed(at) => now.duration_since(*at) >= RETRY_FAILED,
        }
    }
}
