//! An authorizer's granted permission sets (component mode), cached with its account so that
//! a job costs no Redis round trip for them. The platform stores them per authorizer on every
//! `authorized` / `updateauthorized` push, whichever replica gets it; this cache only reads
//! them. When to trust what it holds and when to read again is the policy's
//! ([`crate::policy::permission`]): a minute when they allow a job, and a fresh read before
//! they refuse one, so a set granted on another replica lets the next job through.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::component::Component;
use crate::job::MsgType;
use crate::policy::permission::{Cached, GrantsStep, PermissionSets, after_reread, grants_step};

/// What was read, and when.
enum Read {
    Granted {
        sets: Arc<[u32]>,
        at: Instant,
    },
    /// Redis did not answer.
    Failed {
        at: Instant,
    },
}

/// One authorizer's grants, as last read from the platform's Redis.
pub struct Grants {
    platform: Arc<Component>,
    appid: String,
    needs: Arc<PermissionSets>,
    /// `None`: never read, or no authorization at the last read (not kept: the token fetch
    /// rejects those jobs, and an authorization may arrive at any moment).
    cached: Mutex<Option<Read>>,
    /// Held by the one task that reads, so a burst of jobs costs one round trip.
    reading: tokio::sync::Mutex<()>,
}

impl Grants {
    pub(crate) fn new(platform: Arc<Component>, appid: &str, needs: Arc<PermissionSets>) -> Grants {
        Grants {
            platform,
            appid: appid.to_string(),
            needs,
            cached: Mutex::default(),
            reading: tokio::sync::Mutex::default(),
        }
    }

    /// `Ok` when a job of type `t` may go on; `Err` with the sets it needs, none of which
    /// the authorizer granted.
    pub(crate) async fn check(&self, t: MsgType) -> Result<(), Vec<u32>> {
        let needed = t.needed_sets(&self.needs);
        if let Some(decided) = decided(self.step(needed)) {
            return decided;
        }
        let _one = self.reading.lock().await;
        // Another task may have read them while this one waited.
        if let Some(decided) = decided(self.step(needed)) {
            return decided;
        }
        let granted = self.read().await;
        decided(after_reread(needed, granted.as_deref())).unwrap_or(Ok(()))
    }

    /// Takes sets read by the caller (when the account was built) as just read.
    pub(crate) fn seed(&self, sets: Vec<u32>) {
        *self.cached.lock().expect("grants lock") = Some(Read::Granted {
            sets: sets.into(),
            at: Instant::now(),
        });
    }

    /// Forgets what was read: the next job reads again (the authorization changed).
    pub(crate) fn forget(&self) {
        *self.cached.lock().expect("grants lock") = None;
    }

    fn step(&self, needed: &[u32]) -> GrantsStep {
        let cached = self.cached.lock().expect("grants lock");
        let cached = match &*cached {
            None => Cached::Nothing,
            Some(Read::Granted { sets, at }) => Cached::Read {
                granted: sets,
                age: at.elapsed(),
            },
            Some(Read::Failed { at }) => Cached::Unreadable { age: at.elapsed() },
        };
        grants_step(needed, cached)
    }

    /// The grants now in Redis (`None`: no authorization, or Redis did not answer).
    async fn read(&self) -> Option<Arc<[u32]>> {
        let (granted, kept) = match self.platform.store.authorizer_record(&self.appid).await {
            Ok(record) => {
                let granted: Option<Arc<[u32]>> = record.map(|r| r.funcs.into());
                let kept = granted.clone().map(|sets| Read::Granted {
                    sets,
                    at: Instant::now(),
                });
                (granted, kept)
            }
            Err(e) => {
                // The check is a help: without Redis the send goes on and WeChat decides.
                tracing::warn!(authorizer = %self.appid, error = %e, "permission sets unreadable; sending unchecked");
                (None, Some(Read::Failed { at: Instant::now() }))
            }
        };
        *self.cached.lock().expect("grants lock") = kept;
        granted
    }
}

/// The answer of a step that decides, `None` for [`GrantsStep::Reread`].
fn decided(step: GrantsStep) -> Option<Result<(), Vec<u32>>> {
    match step {
        GrantsStep::Go => Some(Ok(())),
        GrantsStep::Refuse { needed } => Some(Err(needed)),
        GrantsStep::Reread => None,
    }
}
