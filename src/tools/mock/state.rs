//! What the simulator remembers (accounts, tokens, accepted messages, quota) and what it
//! counts for the tests ([`Stats`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use super::faults::Behaviour;
use super::push;

/// The first msgid the simulator hands out: 19 digits like real ones, past both `i32::MAX` and
/// 2^53 (where JavaScript's `JSON.parse` rounds), so every test outcome exercises `msgid_str`.
pub const FIRST_MSGID: i64 = 3_662_956_322_040_938_501;

#[derive(Debug)]
pub(super) struct TokenInfo {
    pub(super) appid: String,
    pub(super) expires_at: Instant,
}

#[derive(Default, Serialize, Clone, Debug)]
pub struct Stats {
    /// Send requests received, of every type (all, including failed ones).
    pub send_requests: u64,
    /// Send requests received per message type (`template`, `subscribe`,
    /// `miniprogram_subscribe`).
    pub requests_by_type: BTreeMap<String, u64>,
    /// Distinct messages accepted per message type.
    pub messages_by_type: BTreeMap<String, u64>,
    /// The most send requests that were being answered at the same time: proof of a worker's
    /// concurrency, and of its limit, that does not depend on the wall clock.
    pub peak_in_flight: u64,
    /// Distinct messages accepted, i.e. what users would see.
    pub messages: u64,
    /// Requests that repeated an accepted `(touser, client_msg_id)` within 10 minutes.
    pub duplicates_suppressed: u64,
    pub token_calls: u64,
    pub stable_token_calls: u64,
    /// Classic token calls made while the appid's previous token was still valid: renewals
    /// ahead of expiry, as opposed to fetches after a token ran out.
    pub renewed_before_expiry: u64,
    pub forced_refreshes: u64,
    /// Forced calls inside 30 s of the last forced refresh (answered with the current token).
    pub forced_too_soon: u64,
    pub clear_quota_calls: u64,
    /// Calls of the two catalogue endpoints.
    pub catalogue_calls: u64,
    /// Those calls with a valid token, by the token's appid (an authorizer's too).
    pub catalogue_calls_by_appid: BTreeMap<String, u64>,
    /// Errors answered, by errcode or `httpNNN`/`timeout`.
    pub errors: BTreeMap<String, u64>,
    /// Accepted messages per Unix second, per appid.
    pub per_second: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Accepted messages per appid.
    pub per_appid: BTreeMap<String, u64>,
    /// Receipts pushed to the callback URL, and how many were answered `success`.
    pub receipts_pushed: u64,
    pub receipts_acknowledged: u64,
    /// Every try of every receipt push and how it was answered, so a test can check that no
    /// push was answered `success` before its receipt was stored.
    pub receipt_tries: Vec<push::ReceiptTry>,
    /// Accepted send requests (first or repeated) per `client_msg_id`, so a test can tell
    /// which job reached WeChat twice, not only that some did.
    pub sends_by_id: BTreeMap<String, u64>,
    /// Subscription events (consent popup/change, bizsend results) pushed, and acknowledged.
    pub events_pushed: u64,
    pub events_acknowledged: u64,
}

/// A message the simulator accepted: `(touser, client_msg_id)` → msgid.
pub(super) struct Accepted {
    pub(super) msgid: i64,
    pub(super) at: Instant,
}

/// Shared simulator state.
pub struct MockState {
    pub(super) accounts: RwLock<HashMap<String, String>>,
    pub(super) behaviour: RwLock<Behaviour>,
    pub(super) tokens: Mutex<HashMap<String, TokenInfo>>,
    /// The current stable token per appid and the time of the last forced refresh.
    pub(super) stable: Mutex<HashMap<String, (String, Option<Instant>)>>,
    pub(super) classic: Mutex<HashMap<String, String>>,
    pub(super) accepted: Mutex<HashMap<(String, String), Accepted>>,
    pub(super) tries: Mutex<HashMap<(String, String), u32>>,
    /// When each send request arrived, per `client_msg_id`, so a test can see the gaps
    /// between one job's attempts (kept out of [`Stats`], which is cloned often).
    pub(super) request_times: Mutex<HashMap<String, Vec<Instant>>>,
    pub(super) quota_used: Mutex<HashMap<String, u64>>,
    pub(super) stats: Mutex<Stats>,
    pub(super) next_msgid: AtomicI64,
    pub(super) token_seq: AtomicU64,
    /// Send requests being answered right now.
    pub(super) in_flight: AtomicU64,
    pub(super) push: Option<push::PushTarget>,
    pub(super) http: reqwest::Client,
    /// The central token service's state (`central`).
    pub(super) central: super::central::CentralState,
    /// The third-party platform's state (`component`).
    pub(super) component: super::component::ComponentState,
}

impl MockState {
    pub(super) fn new(
        accounts: Vec<(String, String)>,
        behaviour: Behaviour,
        push: Option<push::PushTarget>,
    ) -> MockState {
        MockState {
            accounts: RwLock::new(accounts.into_iter().collect()),
            behaviour: RwLock::new(behaviour),
            tokens: Mutex::default(),
            stable: Mutex::default(),
            classic: Mutex::default(),
            accepted: Mutex::default(),
            tries: Mutex::default(),
            request_times: Mutex::default(),
            quota_used: Mutex::default(),
            stats: Mutex::default(),
            next_msgid: AtomicI64::new(FIRST_MSGID),
            token_seq: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            push,
            http: reqwest::Client::new(),
            central: Default::default(),
            component: Default::default(),
        }
    }

    /// Accepts one more account.
    pub fn add_account(&self, appid: &str, secret: &str) {
        self.accounts
            .write()
            .unwrap()
            .insert(appid.to_string(), secret.to_string());
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// When each send request arrived, per `client_msg_id`, in order.
    pub fn request_times(&self) -> HashMap<String, Vec<Instant>> {
        self.request_times.lock().unwrap().clone()
    }

    /// Distinct messages accepted per recipient: what each user would see.
    pub fn messages_per_recipient(&self) -> HashMap<String, u64> {
        let mut per = HashMap::new();
        for (touser, _) in self.accepted.lock().unwrap().keys() {
            *per.entry(touser.clone()).or_default() += 1;
        }
        per
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.write().unwrap() = b;
    }

    pub fn behaviour(&self) -> Behaviour {
        self.behaviour.read().unwrap().clone()
    }

    /// Expires every token now (a mid-run expiry).
    pub fn expire_tokens(&self) {
        let past = Instant::now() - Duration::from_secs(1);
        for t in self.tokens.lock().unwrap().values_mut() {
            t.expires_at = past;
        }
    }

    /// Forgets when each appid's last forced refresh was, as if 30 s had passed (for tests of
    /// the forced-refresh rules that cannot wait).
    pub fn forget_forced_spacing(&self) {
        for (_, last) in self.stable.lock().unwrap().values_mut() {
            *last = None;
        }
    }

    /// Resets the used daily quota of every appid, like an operator's `clear_quota`.
    pub fn clear_quota(&self) {
        self.quota_used.lock().unwrap().clear();
    }

    pub(super) fn error(&self, key: String) {
        *self.stats.lock().unwrap().errors.entry(key).or_default() += 1;
    }

    pub(super) fn issue_token(&self, appid: &str, ttl: u64) -> String {
        let n = self.token_seq.fetch_add(1, Ordering::Relaxed);
        let token = format!("MOCK_{appid}_{n}_{:08x}", rand::rng().random::<u32>());
        self.tokens.lock().unwrap().insert(
            token.clone(),
            TokenInfo {
                appid: appid.to_string(),
                expires_at: Instant::now() + Duration::from_secs(ttl),
            },
        );
        token
    }

    pub(super) fn remaining(&self, token: &str) -> Option<u64> {
        let tokens = self.tokens.lock().unwrap();
        let t = tokens.get(token)?;
        let left = t.expires_at.checked_duration_since(Instant::now())?;
        Some(left.as_secs())
    }
}
