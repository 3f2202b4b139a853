//! The value types a setting can have: each decodes a TOML value (the file's, or an
//! environment string typed by its [`Kind`]), applies its clamp or range, and shows the result
//! for `check-config`. A decode error says what is expected and never echoes a secret or a
//! password.

use std::fmt::Display;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Value;

use super::Secret;
use super::describe::{broker_urls, redact_url};

/// How an environment string is typed before it is decoded, so that `WXD_PREFETCH=8` and
/// `prefetch = 8` decode alike. A string that does not parse is kept as a string, and the
/// decoder says what it expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Integer,
    Flag,
}

impl Kind {
    pub(super) fn read_env(self, value: String) -> Value {
        match self {
            Kind::Text => Value::String(value),
            Kind::Integer => value
                .trim()
                .parse()
                .map_or(Value::String(value), Value::Integer),
            Kind::Flag => match value.trim() {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                _ => Value::String(value),
            },
        }
    }
}

/// A setting's value type: how it is read, clamped or refused, and shown.
pub(super) trait Codec {
    type Out;
    const KIND: Kind;
    fn decode(v: Value) -> Result<Self::Out, String>;
    /// The value as `check-config` prints it; `None` when unset (the table's text is shown).
    fn show(v: &Self::Out) -> Option<String>;
}

/// "no upper bound" for [`Whole`] and [`Millis`].
pub(super) const ANY: i64 = i64::MAX;

fn text(v: Value, expected: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("expected {expected}, got {other}")),
    }
}

fn whole(v: Value, min: i64, max: i64) -> Result<i64, String> {
    let range = match (min, max) {
        (0, ANY) => " (0 or more)".to_string(),
        (min, ANY) => format!(", at least {min}"),
        (min, max) => format!(" from {min} to {max}"),
    };
    match v {
        Value::Integer(i) if (min..=max).contains(&i) => Ok(i),
        other => Err(format!("expected a whole number{range}, got {other}")),
    }
}

/// A string setting whose rule checks (and may normalise) the text; shown as it is.
pub(super) trait TextRule {
    /// What a value that is not a string should have been.
    const EXPECTED: &'static str;
    fn check(s: String) -> Result<String, String>;
}

impl<R: TextRule> Codec for R {
    type Out = String;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<String, String> {
        R::check(text(v, R::EXPECTED)?)
    }
    fn show(v: &String) -> Option<String> {
        Some(v.clone())
    }
}

/// A setting of codec `C` that may be left unset.
pub(super) struct Opt<C>(PhantomData<C>);
impl<C: Codec> Codec for Opt<C> {
    type Out = Option<C::Out>;
    const KIND: Kind = C::KIND;
    fn decode(v: Value) -> Result<Option<C::Out>, String> {
        C::decode(v).map(Some)
    }
    fn show(v: &Option<C::Out>) -> Option<String> {
        v.as_ref().and_then(C::show)
    }
}

/// Any string.
pub(super) struct Text;
impl TextRule for Text {
    const EXPECTED: &'static str = "a string";
    fn check(s: String) -> Result<String, String> {
        Ok(s)
    }
}

/// An optional string.
pub(super) type OptText = Opt<Text>;

/// An optional list of RabbitMQ user names: a TOML array, or a comma-separated string (the
/// environment's form).
pub(super) struct OptNames;
impl Codec for OptNames {
    type Out = Option<Vec<String>>;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<Option<Vec<String>>, String> {
        let names: Vec<String> = match v {
            Value::String(s) => s.split(',').map(|n| n.trim().to_string()).collect(),
            Value::Array(items) => items
                .into_iter()
                .map(|i| text(i, "a list of user names"))
                .collect::<Result<_, _>>()?,
            other => return Err(format!("expected a list of user names, got {other}")),
        };
        check_publishers(&names)?;
        Ok(Some(names))
    }
    fn show(v: &Option<Vec<String>>) -> Option<String> {
        v.as_ref().map(|n| n.join(","))
    }
}

/// A `publishers` list must name someone (an empty one would refuse every job: leave the key
/// out to admit anyone), and each name as RabbitMQ spells users: no blanks or commas.
pub(super) fn check_publishers(names: &[String]) -> Result<(), String> {
    if names.is_empty() || names.iter().all(String::is_empty) {
        return Err("an empty list would refuse every job; leave it out to admit anyone".into());
    }
    match names.iter().find(|n| {
        n.is_empty()
            || n.len() > 255
            || n.chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control())
    }) {
        Some(bad) => Err(format!("{bad:?} is not a user name")),
        None => Ok(()),
    }
}

/// Permission set ids (`funcscope_category.id`), any one of which will do: a TOML array, a
/// number, or a comma-separated string (the environment's form); empty: no check.
pub(super) struct SetIds;
impl Codec for SetIds {
    type Out = Vec<u32>;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<Vec<u32>, String> {
        let one = |v: Value| match v {
            Value::Integer(i) => u32::try_from(i).map_err(|_| format!("{i} is not a set id")),
            other => Err(format!("expected permission set ids, got {other}")),
        };
        match v {
            Value::String(s) => crate::policy::permission::parse_sets(&s),
            Value::Array(items) => items.into_iter().map(one).collect(),
            other => one(other).map(|id| vec![id]),
        }
    }
    fn show(v: &Vec<u32>) -> Option<String> {
        Some(v.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
    }
}

/// A queue or exchange name: RabbitMQ takes 1 to 255 bytes; 200 leaves room for suffixes.
pub(super) struct QueueName;
impl TextRule for QueueName {
    const EXPECTED: &'static str = "a queue name";
    fn check(s: String) -> Result<String, String> {
        if s.is_empty() || s.len() > 200 {
            return Err(format!("must be 1 to 200 characters, got {}", s.len()));
        }
        Ok(s)
    }
}

/// A whole number in `MIN..=MAX`; anything outside is refused.
pub(super) struct Whole<T, const MIN: i64, const MAX: i64>(PhantomData<T>);
impl<T: TryFrom<i64> + Display, const MIN: i64, const MAX: i64> Codec for Whole<T, MIN, MAX> {
    type Out = T;
    const KIND: Kind = Kind::Integer;
    fn decode(v: Value) -> Result<T, String> {
        let i = whole(v, MIN, MAX)?;
        T::try_from(i).map_err(|_| format!("{i} is too large"))
    }
    fn show(v: &T) -> Option<String> {
        Some(v.to_string())
    }
}

/// A whole number raised to `MIN` when it is below (a count where 0 would mean "none").
pub(super) struct AtLeast<T, const MIN: i64>(PhantomData<T>);
impl<T: TryFrom<i64> + Display, const MIN: i64> Codec for AtLeast<T, MIN> {
    type Out = T;
    const KIND: Kind = Kind::Integer;
    fn decode(v: Value) -> Result<T, String> {
        let i = whole(v, 0, ANY)?.max(MIN);
        T::try_from(i).map_err(|_| format!("{i} is too large"))
    }
    fn show(v: &T) -> Option<String> {
        Some(v.to_string())
    }
}

/// An optional whole number (0 or more).
pub(super) type OptWhole<T> = Opt<Whole<T, 0, ANY>>;

/// Seconds, raised to `MIN` (a probe interval of 0 would probe in a tight loop).
pub(super) struct Secs<const MIN: i64>;
impl<const MIN: i64> Codec for Secs<MIN> {
    type Out = Duration;
    const KIND: Kind = Kind::Integer;
    fn decode(v: Value) -> Result<Duration, String> {
        Ok(Duration::from_secs(whole(v, 0, ANY)?.max(MIN) as u64))
    }
    fn show(v: &Duration) -> Option<String> {
        Some(v.as_secs().to_string())
    }
}

/// Milliseconds in `MIN..=MAX`.
pub(super) struct Millis<const MIN: i64, const MAX: i64>;
impl<const MIN: i64, const MAX: i64> Codec for Millis<MIN, MAX> {
    type Out = Duration;
    const KIND: Kind = Kind::Integer;
    fn decode(v: Value) -> Result<Duration, String> {
        Ok(Duration::from_millis(whole(v, MIN, MAX)? as u64))
    }
    fn show(v: &Duration) -> Option<String> {
        Some(v.as_millis().to_string())
    }
}

/// `true` or `false`.
pub(super) struct Flag;
impl Codec for Flag {
    type Out = bool;
    const KIND: Kind = Kind::Flag;
    fn decode(v: Value) -> Result<bool, String> {
        match v {
            Value::Boolean(b) => Ok(b),
            other => Err(format!("expected true or false, got {other}")),
        }
    }
    fn show(v: &bool) -> Option<String> {
        Some(v.to_string())
    }
}

/// One of an enum's lower-case names.
pub(super) struct Choice<E>(PhantomData<E>);
impl<E: DeserializeOwned + std::fmt::Debug> Codec for Choice<E> {
    type Out = E;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<E, String> {
        E::deserialize(v).map_err(|e| one_line(&e.to_string()))
    }
    fn show(v: &E) -> Option<String> {
        Some(format!("{v:?}").to_ascii_lowercase())
    }
}

/// A broker URL, or a comma-separated list of a cluster's nodes, each parsed as the AMQP
/// client will parse it when it connects.
pub(super) struct AmqpUrls;
impl Codec for AmqpUrls {
    type Out = String;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<String, String> {
        let s = text(v, "amqp:// or amqps:// URLs")?;
        let expected = "expected amqp:// or amqps:// URLs, comma-separated";
        let urls = broker_urls(&s);
        if urls.is_empty() {
            return Err(format!("{expected}, got none"));
        }
        for u in urls {
            if !(u.starts_with("amqp://") || u.starts_with("amqps://")) {
                return Err(format!(
                    "{expected}: each must start with amqp:// or amqps://, got {}",
                    redact_url(u)
                ));
            }
            if let Err(e) = u.parse::<lapin::uri::AMQPUri>() {
                return Err(format!("{expected}: {}: {}", redact_url(u), hide(&e, u)));
            }
        }
        Ok(s)
    }
    fn show(v: &String) -> Option<String> {
        Some(redact_url(v))
    }
}

/// A Redis URL, parsed as the Redis client will parse it when it connects.
pub(super) struct RedisUrl;
impl Codec for RedisUrl {
    type Out = Option<String>;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<Option<String>, String> {
        let u = text(v, "a redis:// URL")?;
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            return Err(format!(
                "must start with redis:// or rediss://, got {}",
                redact_url(&u)
            ));
        }
        if let Err(e) = redis::Client::open(u.as_str()) {
            let e = hide(&e.to_string(), &u);
            return Err(format!("expected a redis:// URL: {}: {e}", redact_url(&u)));
        }
        Ok(Some(u))
    }
    fn show(v: &Option<String>) -> Option<String> {
        v.as_deref().map(redact_url)
    }
}

/// An http(s) base URL, without its trailing `/`.
pub(super) struct HttpBase;
impl TextRule for HttpBase {
    const EXPECTED: &'static str = "an http(s) URL";
    fn check(s: String) -> Result<String, String> {
        http_url(s.trim_end_matches('/'))
    }
}

/// An optional http(s) URL.
pub(super) struct OptHttpUrl;
impl Codec for OptHttpUrl {
    type Out = Option<String>;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<Option<String>, String> {
        http_url(&text(v, "an http(s) URL")?).map(Some)
    }
    fn show(v: &Option<String>) -> Option<String> {
        v.as_deref().map(redact_url)
    }
}

fn http_url(s: &str) -> Result<String, String> {
    if reqwest::Url::parse(s).is_err() || !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err(format!("not an http(s) URL: {:?}", redact_url(s)));
    }
    Ok(s.to_string())
}

/// A listen address, `host:port` with an IP host.
pub(super) struct Addr;
impl TextRule for Addr {
    const EXPECTED: &'static str = "host:port";
    fn check(s: String) -> Result<String, String> {
        if s.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("not host:port: {s:?}"));
        }
        Ok(s)
    }
}

/// An optional listen address.
pub(super) type OptAddr = Opt<Addr>;

/// An HTTP route path: it must start with `/`, and may not hold what the router reads as a
/// capture or a wildcard (`{`, `}`, `*`, `:`), a query or fragment, or white space.
pub(super) struct RoutePath;
impl TextRule for RoutePath {
    const EXPECTED: &'static str = "a path";
    fn check(s: String) -> Result<String, String> {
        let bad = |c: char| c.is_whitespace() || c.is_control() || "{}*:?#".contains(c);
        if !s.starts_with('/') || s.contains(bad) {
            return Err(format!(
                "expected a path that starts with / and holds none of {{ }} * : ? # or spaces, \
                 got {s:?}"
            ));
        }
        Ok(s)
    }
}

/// A secret string (never echoed).
pub(super) struct SecretText;
impl Codec for SecretText {
    type Out = Option<Secret>;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<Option<Secret>, String> {
        match v {
            Value::String(s) => Ok(Some(Secret::new(s))),
            _ => Err("expected a string".into()),
        }
    }
    fn show(v: &Option<Secret>) -> Option<String> {
        v.as_ref().map(|_| "(set)".into())
    }
}

/// A callback EncodingAESKey, decoded as the callback decodes it when it starts.
pub(super) struct AesKey;
impl Codec for AesKey {
    type Out = Option<Secret>;
    const KIND: Kind = Kind::Text;
    fn decode(v: Value) -> Result<Option<Secret>, String> {
        let key = SecretText::decode(v)?.expect("a string decodes to a secret");
        if crate::crypto::AesKey::from_encoding_aes_key(key.expose()).is_err() {
            return Err(format!(
                "expected an EncodingAESKey: 43 characters of base64 (A-Z, a-z, 0-9, + and /), \
                 as the WeChat console shows it; got {} characters{}",
                key.expose().chars().count(),
                if key.expose().len() == 43 {
                    " that are not base64"
                } else {
                    ""
                }
            ));
        }
        Ok(Some(key))
    }
    fn show(v: &Option<Secret>) -> Option<String> {
        SecretText::show(v)
    }
}

/// A client library's error text with `url` (and so its password) removed.
fn hide(e: &str, url: &str) -> String {
    e.replace(url, "<the URL>")
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
