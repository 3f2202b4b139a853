//! What is said about the configuration: `check-config`'s redacted printout, `run --help`'s
//! list of variables, `check-config --list-keys`, URL redaction and the nearest-key hint. All
//! of it is read off the settings table.

use std::collections::BTreeMap;

use super::Config;
use super::settings::{Group, SETTINGS, Setting, Source};

impl Config {
    /// Every setting as its `WXD_*` name and effective value, in the order of the settings
    /// table, then the secrets and the accounts: what `check-config` prints. Passwords in URLs
    /// and every secret are redacted, so the output can go to a CI log or an initContainer's
    /// log.
    pub(crate) fn settings(&self) -> Vec<(String, String)> {
        let line = |s: &Setting| {
            (
                s.env(),
                (s.show)(self).unwrap_or_else(|| s.default.describe()),
            )
        };
        let mut out: Vec<(String, String)> = SETTINGS
            .iter()
            .filter(|s| s.source != Source::Secret)
            .map(line)
            .collect();
        // The AppSecrets are shown per account below.
        out.extend(
            SETTINGS
                .iter()
                .filter(|s| s.source == Source::Secret && s.key != "secret")
                .map(line),
        );
        for a in &self.accounts {
            out.push((
                "account".into(),
                format!(
                    "{} rate_per_sec={} daily_quota={} secret={}",
                    a.appid,
                    a.rate_per_sec,
                    a.daily_quota.map_or("none".into(), |q| q.to_string()),
                    if self.credentials.app_secret(&a.appid).is_some() {
                        "(set)"
                    } else {
                        "(not loaded)"
                    }
                ),
            ));
        }
        out
    }
}

/// Every `WXD_<KEY>` variable the loader accepts for a file key (the file's keys, upper-cased),
/// for tools that check manifests against the binary instead of parsing this source.
pub fn env_keys() -> Vec<String> {
    SETTINGS
        .iter()
        .filter(|s| s.source != Source::Secret)
        .map(Setting::env)
        .collect()
}

/// `run --help`'s list of every `WXD_*` variable with its default and what it does, by group.
/// The defaults are those the loader really applies (to an empty environment), so the help
/// cannot drift from the code.
pub fn env_help() -> String {
    let defaults = Config::from_sources(None, &BTreeMap::new())
        .expect("the defaults are a valid configuration");
    let mut text =
        String::from("Environment (WXD_<KEY> overrides the file's <key>; default shown):\n");
    for group in Group::ALL {
        text.push_str(&format!(" {}:\n", group.title()));
        for s in SETTINGS.iter().filter(|s| s.group == group) {
            let value = match s.source {
                Source::Secret => format!("secret: {0} or {0}_FILE", s.env()),
                _ if matches!(s.default, super::settings::DefaultValue::Auto(..)) => {
                    s.default.describe()
                }
                _ => (s.show)(&defaults).unwrap_or_else(|| s.default.describe()),
            };
            text.push_str(&format!(
                "  {:<30} {value}\n  {:<30} {}\n",
                s.env(),
                "",
                s.help
            ));
        }
    }
    text.push_str(" files and per-account secrets:\n");
    text.push_str(&format!(
        "  {:<30} the TOML file (same as --config)\n",
        "WXD_CONFIG"
    ));
    text.push_str(&format!(
        "  {:<30} AppSecret of an [[accounts]] entry\n",
        "WXD_SECRET_<APPID>"
    ));
    for s in SETTINGS.iter().filter(|s| s.source == Source::Mounted) {
        let name = format!("{}_FILE", s.env());
        text.push_str(&format!("  {name:<30} read {} from this file\n", s.env()));
    }
    text
}

/// The broker addresses of `urls`, a comma-separated list (one URL is a list of one), as
/// `WXD_AMQP_URL` takes them. Here rather than in `amqp`, so the loader needs no AMQP code.
pub fn broker_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// A URL with credentials (a broker, Redis; or a comma-separated list of them) with every
/// password replaced by `***`, for logs and messages.
pub fn redact_url(urls: &str) -> String {
    broker_urls(urls)
        .into_iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let creds = &url[s + 3..at];
                let user = creds.split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &url[..s + 3], &url[at..])
            }
            _ => url.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The known name closest to a misspelt `name`: one that extends it or is extended by it
/// (`retry_budget` → `retry_budget_secs`), else one at most a few edits away.
pub(super) fn nearest<S: AsRef<str>>(name: &str, known: impl Iterator<Item = S>) -> Option<S> {
    let name = name.to_ascii_lowercase();
    known
        .map(|k| {
            let lower = k.as_ref().to_ascii_lowercase();
            let related = lower.starts_with(&name) || name.starts_with(&lower);
            let distance = edit_distance(&name, &lower);
            (!related, distance, k)
        })
        .filter(|(unrelated, distance, _)| !unrelated || *distance <= 3.max(name.len() / 4))
        .min_by_key(|(unrelated, distance, _)| (*unrelated, *distance))
        .map(|(_, _, k)| k)
}

/// Levenshtein distance, by bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}
