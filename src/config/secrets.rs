//! Secrets: the [`Secret`] wrapper, the [`Credentials`] a worker holds, and where an
//! account's AppSecret comes from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::env::Env;
use super::{ConfigError, err};

/// A secret string. `Debug` prints `Secret(***)`; there is deliberately no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value. Only config loading and tests should need this.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send it (the token request, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The secrets: each account's AppSecret and the callback's token and AES key. Kept apart from
/// the settings so that a configuration can be loaded, printed and checked without them, and
/// so that nothing but the token request and the callback ever reads them.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    app_secrets: BTreeMap<String, Secret>,
    pub callback_token: Option<Secret>,
    pub callback_aes_key: Option<Secret>,
}

impl Credentials {
    /// The AppSecret of `appid`, if it was loaded.
    pub(crate) fn app_secret(&self, appid: &str) -> Option<&Secret> {
        self.app_secrets.get(appid)
    }

    /// Sets the AppSecret of `appid` (the loader, the demo and tests).
    pub(crate) fn set_app_secret(&mut self, appid: impl Into<String>, secret: Secret) {
        self.app_secrets.insert(appid.into(), secret);
    }
}

/// Where an `[[accounts]]` entry's AppSecret comes from, as written in the file.
pub(super) struct SecretSource<'a> {
    pub appid: &'a str,
    /// Name of an environment variable holding the secret.
    pub env_var: Option<&'a str>,
    /// Path of a file holding the secret (a mounted Kubernetes Secret).
    pub file: Option<&'a Path>,
}

/// The AppSecret of an `[[accounts]]` entry (`key` names the entry in errors): from its
/// `secret_env`, its `secret_file`, or else `WXD_SECRET_<APPID>`.
pub(super) fn account_secret(
    src: &SecretSource<'_>,
    key: &str,
    env: &dyn Env,
) -> Result<Secret, ConfigError> {
    match (src.env_var, src.file) {
        (Some(var), None) => env
            .var(var)
            .map(Secret::new)
            .ok_or_else(|| err(format!("{key}.secret_env: variable {var} is not set"))),
        (None, Some(path)) => read_secret_file(path, &format!("{key}.secret_file")),
        (None, None) => {
            // Convention: WXD_SECRET_<APPID>, so a Kubernetes Secret can hold them all.
            let var = format!("WXD_SECRET_{}", src.appid.to_ascii_uppercase());
            secret_from_env(env, &var)?.ok_or_else(|| {
                err(format!(
                    "{key}: no secret; set secret_env, secret_file or {var}"
                ))
            })
        }
        (Some(_), Some(_)) => Err(err(format!(
            "{key}: set secret_env or secret_file, not both"
        ))),
    }
}

/// A secret from `NAME` or from the file named by `NAME_FILE`.
pub(super) fn secret_from_env(env: &dyn Env, name: &str) -> Result<Option<Secret>, ConfigError> {
    if let Some(v) = env.var(name) {
        return Ok(Some(Secret::new(v.trim())));
    }
    match env.var(&format!("{name}_FILE")) {
        Some(path) => read_secret_file(Path::new(&path), &format!("{name}_FILE")).map(Some),
        None => Ok(None),
    }
}

/// A file's content, trimmed (a mounted Secret often ends in a newline).
pub(super) fn read_secret_file(path: &Path, key: &str) -> Result<Secret, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim()))
        .map_err(|e| {
            err(format!(
                "{key}: cannot read {}: {}",
                path.display(),
                e.kind()
            ))
        })
}
