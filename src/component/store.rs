//! What a third-party platform keeps in Redis, shared by every replica: the last verify
//! ticket, the component token, and per authorizer its refresh token, its granted permission
//! sets and its current access token. Values are credentials: Redis must be as private as the
//! worker's own environment.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// An authorizer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerRecord {
    /// The refresh token; `None` when it was lost (recovered from the authorizer list).
    pub refresh_token: Option<String>,
    /// The permission sets granted (`funcscope_category.id`).
    pub funcs: Vec<u32>,
}

/// A token stored with when it was issued and when it expires (Unix ms): every replica reads
/// the same times, so they agree when it is refreshed ahead ([`super::freshness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub value: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
}

impl StoredToken {
    /// A token issued now that lives `expires_in` seconds.
    pub fn issued_now(value: String, expires_in: u64) -> StoredToken {
        let issued_ms = now_ms();
        StoredToken {
            value,
            issued_ms,
            expires_ms: issued_ms + (expires_in.max(1) * 1000) as i64,
        }
    }

    /// Where it is in its life now.
    pub fn freshness(&self) -> super::freshness::Freshness {
        super::freshness::freshness(self.issued_ms, self.expires_ms, now_ms())
    }

    /// The Unix ms from which it is refreshed ahead of its expiry.
    pub fn refresh_at_ms(&self) -> i64 {
        super::freshness::refresh_at_ms(self.issued_ms, self.expires_ms)
    }

    /// As stored: `issued:expires:value`.
    fn encode(&self) -> String {
        format!("{}:{}:{}", self.issued_ms, self.expires_ms, self.value)
    }

    /// What [`StoredToken::encode`] wrote; also `expires:value`, written before the issue time
    /// was kept, read as a token of WeChat's usual two hours.
    fn decode(raw: &str) -> Option<StoredToken> {
        let mut parts = raw.splitn(3, ':');
        let first: i64 = parts.next()?.parse().ok()?;
        let second = parts.next()?;
        match (second.parse::<i64>(), parts.next()) {
            (Ok(expires_ms), Some(value)) => Some(StoredToken {
                value: value.to_string(),
                issued_ms: first,
                expires_ms,
            }),
            _ => Some(StoredToken {
                value: raw.split_once(':')?.1.to_string(),
                issued_ms: first - 7200 * 1000,
                expires_ms: first,
            }),
        }
    }
}

/// The platform's keys in Redis.
#[derive(Clone)]
pub struct ComponentStore {
    client: redis::Client,
    /// Connected on first use, so the worker's accounts can be built without waiting on Redis.
    conn: std::sync::Arc<tokio::sync::OnceCell<ConnectionManager>>,
    prefix: String,
    /// What this store's locks hold: a lock is released only by the store that took it, so a
    /// holder that ran past the lock's expiry cannot release another replica's lock.
    owner: String,
}

/// Deletes KEYS[1] if it holds ARGV[1] (the lock's owner).
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ComponentStore {
    /// The store of platform `component_appid` at `url`; it connects on first use.
    pub fn new(url: &str, component_appid: &str) -> redis::RedisResult<ComponentStore> {
        Ok(ComponentStore {
            client: redis::Client::open(url)?,
            conn: Default::default(),
            prefix: format!("wxdispatch:component:{component_appid}"),
            owner: format!("{:016x}", rand::random::<u64>()),
        })
    }

    /// [`ComponentStore::new`], connected now.
    pub async fn connect(url: &str, component_appid: &str) -> redis::RedisResult<ComponentStore> {
        let store = ComponentStore::new(url, component_appid)?;
        store.conn().await?;
        Ok(store)
    }

    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    Duration::from_secs(3),
                    ConnectionManager::new(self.client.clone()),
                )
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out"))
                })?
            })
            .await?;
        Ok(conn.clone())
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// The key of authorizer `appid`'s record.
    fn authorizer(&self, appid: &str) -> String {
        self.key(&format!("authorizer:{appid}"))
    }

    pub async fn set_ticket(&self, ticket: &str) -> redis::RedisResult<()> {
        // WeChat's ticket is valid 12 h; a newer one replaces it every 10 minutes.
        redis::cmd("SET")
            .arg(self.key("ticket"))
            .arg(ticket)
            .arg("EX")
            .arg(12 * 3600)
            .query_async(&mut self.conn().await?)
            .await
    }

    pub async fn ticket(&self) -> redis::RedisResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.key("ticket"))
            .query_async(&mut self.conn().await?)
            .await
    }

    /// The last ticket WeChat took for a component token: the one to fall back on when a newer
    /// one is refused (61006).
    pub async fn good_ticket(&self) -> redis::RedisResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.key("ticket:good"))
            .query_async(&mut self.conn().await?)
            .await
    }

    async fn get_token(&self, key: String) -> redis::RedisResult<Option<StoredToken>> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(raw.as_deref().and_then(StoredToken::decode))
    }

    pub async fn component_token(&self) -> redis::RedisResult<Option<StoredToken>> {
        self.get_token(self.key("token")).await
    }

    /// Stores the component token, the ticket it was had with as the last good one, and
    /// releases its fetch lock, in one transaction.
    pub async fn store_component_token(
        &self,
        token: &StoredToken,
        ticket: &str,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        Self::token_into(&mut pipe, self.key("token"), token);
        pipe.cmd("SET")
            .arg(self.key("ticket:good"))
            .arg(ticket)
            .arg("EX")
            .arg(12 * 3600)
            .ignore();
        self.release_into(&mut pipe, "token");
        pipe.query_async(&mut self.conn().await?).await
    }

    /// A fetch lock that expires by itself after `hold`, should its holder die.
    pub async fn lock(&self, what: &str, hold: Duration) -> redis::RedisResult<bool> {
        let got: Option<String> = redis::cmd("SET")
            .arg(self.key(&format!("{what}:lock")))
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(hold.as_millis() as u64)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(got.is_some())
    }

    /// Releases a lock this store holds; one it no longer holds (expired, maybe taken by
    /// another replica since) is left alone.
    pub async fn unlock(&self, what: &str) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        self.release_into(&mut pipe, what);
        pipe.query_async(&mut self.conn().await?).await
    }

    /// Adds the release of lock `what` to a transaction.
    fn release_into(&self, pipe: &mut redis::Pipeline, what: &str) {
        pipe.cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(self.key(&format!("{what}:lock")))
            .arg(&self.owner)
            .ignore();
    }

    /// The lock name of authorizer `appid`'s refresh.
    pub fn authorizer_lock(appid: &str) -> String {
        format!("authorizer:{appid}:refresh")
    }

    pub async fn authorizer_record(
        &self,
        appid: &str,
    ) -> redis::RedisResult<Option<AuthorizerRecord>> {
        let (refresh, funcs): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.authorizer(appid))
            .arg("refresh_token")
            .arg("funcs")
            .query_async(&mut self.conn().await?)
            .await?;
        let Some(funcs) = funcs else {
            return Ok(None);
        };
        Ok(Some(AuthorizerRecord {
            refresh_token: refresh.filter(|r| !r.is_empty()),
            funcs: funcs.split(',').filter_map(|f| f.parse().ok()).collect(),
        }))
    }

    /// Stores an authorization (`authorized`, `updateauthorized`, or a recovery): the refresh
    /// token, the permission sets and, when given, the access token, in one transaction.
    pub async fn store_authorizer(
        &self,
        appid: &str,
        record: &AuthorizerRecord,
        token: Option<&StoredToken>,
    ) -> redis::RedisResult<()> {
        let funcs = record
            .funcs
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.authorizer(appid))
            .arg("refresh_token")
            .arg(record.refresh_token.as_deref().unwrap_or(""))
            .arg("funcs")
            .arg(funcs)
            .ignore();
        if let Some(token) = token {
            Self::token_into(
                &mut pipe,
                self.key(&format!("authorizer:{appid}:token")),
                token,
            );
        }
        pipe.query_async(&mut self.conn().await?).await
    }

    /// Sets `key` to `token`, expiring with it.
    fn token_into(pipe: &mut redis::Pipeline, key: String, token: &StoredToken) {
        let ttl = (token.expires_ms - now_ms()).max(1);
        pipe.cmd("SET")
            .arg(key)
            .arg(token.encode())
            .arg("PX")
            .arg(ttl)
            .ignore();
    }

    pub async fn authorizer_token(&self, appid: &str) -> redis::RedisResult<Option<StoredToken>> {
        self.get_token(self.key(&format!("authorizer:{appid}:token")))
            .await
    }

    /// After `api_authorizer_token`: the rotated refresh token and the new access token are
    /// stored and the refresh lock released in one transaction, so no replica ever reads the
    /// new token with the old refresh token, or the lock free with neither stored.
    pub async fn store_rotation(
        &self,
        appid: &str,
        refresh_token: &str,
        access_token: &StoredToken,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.authorizer(appid))
            .arg("refresh_token")
            .arg(refresh_token)
            .ignore();
        Self::token_into(
            &mut pipe,
            self.key(&format!("authorizer:{appid}:token")),
            access_token,
        );
        self.release_into(&mut pipe, &Self::authorizer_lock(appid));
        pipe.query_async(&mut self.conn().await?).await
    }

    /// Drops the stored access token of `appid` if it is still `refused` (compare and delete,
    /// so a token another replica has just stored is kept).
    pub async fn drop_authorizer_token(
        &self,
        appid: &str,
        refused: &str,
    ) -> redis::RedisResult<()> {
        const SCRIPT: &str = r"
            local v = redis.call('GET', KEYS[1])
            if v and string.match(v, '[^:]*$') == ARGV[1] then
                redis.call('DEL', KEYS[1])
            end
            return 0";
        redis::Script::new(SCRIPT)
            .key(self.key(&format!("authorizer:{appid}:token")))
            .arg(refused)
            .invoke_async::<i64>(&mut self.conn().await?)
            .await
            .map(|_| ())
    }

    /// `unauthorized`: the authorizer and its tokens are forgotten.
    pub async fn remove_authorizer(&self, appid: &str) -> redis::RedisResult<()> {
        redis::pipe()
            .atomic()
            .del(self.authorizer(appid))
            .ignore()
            .del(self.key(&format!("authorizer:{appid}:token")))
            .ignore()
            .query_async(&mut self.conn().await?)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::StoredToken;

    #[test]
    fn a_stored_token_keeps_its_issue_time_and_an_older_one_reads_as_two_hours() {
        let t = StoredToken {
            value: "ACCESS_token-1".into(),
            issued_ms: 1_000,
            expires_ms: 9_000,
        };
        assert_eq!(StoredToken::decode(&t.encode()), Some(t));
        assert_eq!(
            StoredToken::decode("7201000:OLD_token"),
            Some(StoredToken {
                value: "OLD_token".into(),
                issued_ms: 1_000,
                expires_ms: 7_201_000,
            })
        );
        assert_eq!(StoredToken::decode("garbage"), None);
    }
}
