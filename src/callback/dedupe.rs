//! WeChat's retries of one push, told apart from new pushes: a single-flight store.
//!
//! WeChat gives up on a push after 5 s and retries it (three tries in all). The publish of a
//! push's outcome runs in its own task, so it outlives the request; the request waits for it
//! at most a bound and otherwise answers 503. A retry of a push whose publish is still in
//! flight waits for that same publish (it never starts a second one, and never gets `success`
//! early); a retry after a failed publish publishes again; a retry after a confirmed one is
//! answered `success` at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a stored push is remembered to answer WeChat's retries without publishing again.
/// WeChat's three tries are over within a minute; ten leaves room for clock trouble.
pub(crate) const DEDUP_FOR: Duration = Duration::from_secs(600);

/// What tells one receipt push from another. WeChat repeats all five on a retry; MsgID alone
/// is not enough, because it is reported to be 0 for messages sent with a `client_msg_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PushKey {
    pub to_user: String,
    pub from_user: String,
    pub create_time: i64,
    pub msg_id: i64,
    /// WeChat's status text, verbatim.
    pub status: String,
    /// The `Event` value: a consent and a receipt of one second must not merge.
    pub event: String,
    /// The item's TemplateId for subscription events (one push lists several); empty for
    /// template receipts.
    pub template_id: String,
}

/// How a push is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// This push's receipt was published and confirmed: `success`.
    Stored,
    /// A retry of a push whose receipt was confirmed earlier: `success`, nothing published.
    Duplicate,
    /// A retry that waited for the publish an earlier try started, and saw it confirmed:
    /// `success`, nothing published again.
    Joined,
    /// The publish failed: 503, WeChat retries and the retry publishes again.
    Failed,
    /// No confirm within the answer's bound: 503. The publish goes on; a retry waits for it.
    Pending,
}

impl Answer {
    /// Whether WeChat may be told `success` (it will not push this receipt again).
    pub(crate) fn is_success(&self) -> bool {
        matches!(self, Answer::Stored | Answer::Duplicate | Answer::Joined)
    }

    /// The `wxdispatch_callback_requests_total` label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Answer::Stored => "ok",
            Answer::Duplicate => "duplicate",
            Answer::Joined => "joined",
            Answer::Failed => "unavailable",
            Answer::Pending => "pending",
        }
    }
}

/// The answer to a push that stores several outcomes (a subscription event with several
/// templates): `success` only if every one is stored, so WeChat keeps retrying while any is
/// missing. A failed publish outranks a pending one (the retry must publish again).
pub(crate) fn combine(answers: &[Answer]) -> Answer {
    let rank = |a: &Answer| match a {
        Answer::Failed => 0,
        Answer::Pending => 1,
        Answer::Stored => 2,
        Answer::Joined => 3,
        Answer::Duplicate => 4,
    };
    answers
        .iter()
        .min_by_key(|a| rank(a))
        .cloned()
        .unwrap_or(Answer::Failed)
}

enum Entry {
    /// A publish is running; the value turns `Some(confirmed)` when it ends.
    InFlight(tokio::sync::watch::Receiver<Option<bool>>),
    /// Confirmed at this instant.
    Stored(tokio::time::Instant),
}

/// The receipts seen recently and the publishes in flight, by [`PushKey`].
pub(crate) struct Dedupe {
    entries: Mutex<HashMap<PushKey, Entry>>,
    keep_for: Duration,
}

impl Dedupe {
    pub(crate) fn new(keep_for: Duration) -> Arc<Dedupe> {
        Arc::new(Dedupe {
            entries: Mutex::new(HashMap::new()),
            keep_for,
        })
    }

    /// Stores the receipt `key` with `publish` unless it is stored or being stored already,
    /// and answers within `answer_within`. `publish` runs in its own task, so a push that
    /// gives up (or a client that hangs up) never cancels a publish half way: its outcome is
    /// recorded for the retry either way.
    pub(crate) async fn store<F>(
        self: &Arc<Self>,
        key: PushKey,
        answer_within: Duration,
        publish: F,
    ) -> Answer
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + answer_within;
        let (mut done, joined) = {
            // Tokio's clock, so tests can move it past `keep_for`.
            let now = tokio::time::Instant::now();
            let mut entries = self.entries.lock().expect("dedupe lock");
            if entries.len() > 100_000 {
                let keep = self.keep_for;
                entries.retain(|_, e| match e {
                    Entry::Stored(t) => now.duration_since(*t) < keep,
                    Entry::InFlight(_) => true,
                });
            }
            match entries.get(&key) {
                Some(Entry::Stored(t)) if now.duration_since(*t) < self.keep_for => {
                    return Answer::Duplicate;
                }
                Some(Entry::InFlight(rx)) => (rx.clone(), true),
                _ => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    entries.insert(key.clone(), Entry::InFlight(rx.clone()));
                    let me = self.clone();
                    tokio::spawn(async move {
                        let confirmed = publish.await.is_ok();
                        {
                            let mut entries = me.entries.lock().expect("dedupe lock");
                            if confirmed {
                                entries.insert(key, Entry::Stored(tokio::time::Instant::now()));
                            } else {
                                entries.remove(&key);
                            }
                        }
                        let _ = tx.send(Some(confirmed));
                    });
                    (rx, false)
                }
            }
        };
        let ended = tokio::time::timeout_at(deadline, done.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(v)) if *v == Some(true) => {
                if joined {
                    Answer::Joined
                } else {
                    Answer::Stored
                }
            }
            Ok(_) => Answer::Failed,
            Err(_) => Answer::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::event::TEMPLATE_SEND_JOB_FINISH;
    use crate::callback::http::ANSWER_WITHIN;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(from_user: &str, msg_id: i64) -> PushKey {
        PushKey {
            to_user: "gh_7f083739789a".into(),
            from_user: from_user.into(),
            create_time: 1_700_000_000,
            msg_id,
            status: "success".into(),
            event: TEMPLATE_SEND_JOB_FINISH.into(),
            template_id: String::new(),
        }
    }

    /// Stores `k` with [`publish`]: counted in `runs`, and confirmed at once or when
    /// `release` says.
    async fn store_counted(
        d: &Arc<Dedupe>,
        k: PushKey,
        answer_within: Duration,
        runs: &Arc<AtomicUsize>,
        release: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) -> Answer {
        d.store(k, answer_within, publish(runs, release)).await
    }

    /// A publish that counts its runs and, with `release`, ends only when the test says
    /// (`true`: confirmed, `false`: refused); without it, it is confirmed at once.
    fn publish(
        runs: &Arc<AtomicUsize>,
        release: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let ok = match release {
                Some(rx) => rx.await.unwrap_or(false),
                None => true,
            };
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("nacked"))
            }
        }
    }

    #[tokio::test]
    async fn a_retry_during_the_publish_waits_for_it_and_never_gets_success_early() {
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, rx) = tokio::sync::oneshot::channel();
        let first =
            store_counted(&d, key("o1", 5), Duration::from_millis(50), &runs, Some(rx)).await;
        assert_eq!(first, Answer::Pending, "no confirm yet: 503, not success");
        let retry = {
            let d = d.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                store_counted(&d, key("o1", 5), Duration::from_secs(30), &runs, None).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!retry.is_finished(), "the retry waits for the confirm");
        release.send(true).unwrap();
        assert_eq!(retry.await.unwrap(), Answer::Joined);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "published once");
        let later = store_counted(&d, key("o1", 5), Duration::from_secs(1), &runs, None).await;
        assert_eq!(later, Answer::Duplicate);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_answer_comes_within_its_bound_even_if_the_publish_never_ends() {
        assert!(ANSWER_WITHIN < Duration::from_secs(5), "WeChat waits 5 s");
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let (_never, rx) = tokio::sync::oneshot::channel::<bool>();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            store_counted(
                &d,
                key("o2", 6),
                Duration::from_millis(100),
                &runs,
                Some(rx),
            ),
        )
        .await
        .expect("answered within the bound, not when the publish ends");
        assert_eq!(answer, Answer::Pending);
        assert!(!answer.is_success());
    }

    #[tokio::test]
    async fn a_failed_publish_is_forgotten_so_the_retry_publishes_again() {
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let (nack, rx) = tokio::sync::oneshot::channel();
        nack.send(false).unwrap();
        let first = store_counted(&d, key("o3", 7), Duration::from_secs(5), &runs, Some(rx)).await;
        assert_eq!(first, Answer::Failed);
        let retry = store_counted(&d, key("o3", 7), Duration::from_secs(5), &runs, None).await;
        assert_eq!(retry, Answer::Stored);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stored_receipt_is_forgotten_after_the_dedupe_window() {
        let d = Dedupe::new(Duration::from_millis(1));
        let runs = Arc::new(AtomicUsize::new(0));
        let k = key("o4", 8);
        assert_eq!(
            store_counted(&d, k.clone(), Duration::from_secs(5), &runs, None).await,
            Answer::Stored
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store_counted(&d, k, Duration::from_secs(5), &runs, None).await,
            Answer::Stored,
            "past the window a push is a new receipt"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn every_field_of_the_key_tells_receipts_apart() {
        let d = Dedupe::new(DEDUP_FOR);
        let runs = Arc::new(AtomicUsize::new(0));
        let base = key("o5", 0);
        let variants = [
            base.clone(),
            PushKey {
                to_user: "gh_other".into(),
                ..base.clone()
            },
            PushKey {
                from_user: "o6".into(),
                ..base.clone()
            },
            PushKey {
                create_time: base.create_time + 1,
                ..base.clone()
            },
            PushKey {
                msg_id: 1,
                ..base.clone()
            },
            PushKey {
                status: "failed:user block".into(),
                ..base.clone()
            },
            PushKey {
                event: "subscribe_msg_sent_event".into(),
                ..base.clone()
            },
            PushKey {
                template_id: "tpl-b".into(),
                ..base.clone()
            },
        ];
        for k in variants {
            let a = store_counted(&d, k.clone(), Duration::from_secs(5), &runs, None).await;
            assert_eq!(a, Answer::Stored, "{k:?} is a receipt of its own");
        }
        let again = store_counted(&d, base, Duration::from_secs(5), &runs, None).await;
        assert_eq!(again, Answer::Duplicate, "all fields equal: WeChat's retry");
        assert_eq!(runs.load(Ordering::SeqCst), 8);
    }

    /// A push listing several templates is answered `success` only when every
    /// one of its outcomes is stored; one missing confirm makes it 503 so WeChat retries.
    #[test]
    fn a_multi_template_push_is_success_only_when_every_outcome_is_stored() {
        use Answer::*;
        assert_eq!(combine(&[Stored, Pending, Stored]), Pending);
        assert_eq!(
            combine(&[Stored, Failed, Pending]),
            Failed,
            "the retry must publish"
        );
        assert!(!combine(&[Duplicate, Duplicate, Pending]).is_success());
        assert!(
            !combine(&[]).is_success(),
            "no outcome stored is no success"
        );
        assert_eq!(combine(&[Stored, Stored]), Stored);
        assert_eq!(combine(&[Duplicate, Stored]), Stored);
        assert_eq!(combine(&[Duplicate, Joined]), Joined);
    }
}
