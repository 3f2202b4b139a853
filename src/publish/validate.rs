//! The check of each job before anything is sent: the worker's own parser, against the
//! configured accounts or, with none, against the shape of a job only.

use crate::config::{Account, Config};
use crate::job::{self, InvalidJob, Parsed};

/// Validates job bodies with the worker's own parser.
///
/// With no account configured (a machine that only publishes), each job is checked against a
/// placeholder account carrying the appid it names, so only its shape is validated.
pub(super) struct Validator<'a> {
    config: &'a Config,
    shape: Option<Config>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(config: &'a Config) -> Self {
        let shape = config.accounts.is_empty().then(|| {
            let mut c = config.clone();
            c.accounts = vec![Account {
                appid: String::new(),
                rate_per_sec: 1,
                daily_quota: None,
                original_id: None,
                publishers: None,
            }];
            c
        });
        Validator { config, shape }
    }

    /// The job's id and recipient count, or why it is invalid.
    pub(super) fn check(&mut self, body: &[u8]) -> Result<(String, usize), InvalidJob> {
        let Some(shape) = &mut self.shape else {
            return summarize(job::parse(body, None, self.config));
        };
        match job::parse(body, None, shape) {
            // The placeholder has another appid than this job names: take this one and retry.
            Err((e, known)) if e.reason == "unknown_account" => match known.appid {
                Some(appid) if appid != shape.accounts[0].appid => {
                    shape.accounts[0].appid = appid;
                    summarize(job::parse(body, None, shape))
                }
                _ => Err(e),
            },
            other => summarize(other),
        }
    }
}

fn summarize(
    parsed: Result<Parsed, (InvalidJob, job::PartialJob)>,
) -> Result<(String, usize), InvalidJob> {
    match parsed {
        Ok(Parsed::Single(j)) => Ok((j.id.to_string(), 1)),
        Ok(Parsed::Batch(b)) => Ok((b.id.to_string(), b.recipients.len())),
        Err((e, _)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn reasons(config: &Config, lines: &[&str]) -> Vec<Result<usize, &'static str>> {
        let mut v = Validator::new(config);
        lines
            .iter()
            .map(|l| v.check(l.as_bytes()).map(|(_, n)| n).map_err(|e| e.reason))
            .collect()
    }

    #[test]
    fn configured_accounts_are_enforced_and_no_account_means_shape_only() {
        let appid = BTreeMap::from([("WXD_APPID".into(), "wxa0000000000001".into())]);
        let one = Config::without_credentials(None, &appid).unwrap();
        let lines = [
            r#"{"touser":"o","template_id":"t"}"#,
            r#"{"appid":"wxother","touser":"o","template_id":"t"}"#,
            r#"{"appid":"wxa0000000000001","touser":["o1","o2","o3"],"template_id":"t"}"#,
            r#"{"touser":"o"}"#,
        ];
        assert_eq!(
            reasons(&one, &lines),
            [
                Ok(1),
                Err("unknown_account"),
                Ok(3),
                Err("missing_template_id")
            ]
        );
        let none = Config::without_credentials(None, &BTreeMap::new()).unwrap();
        assert!(none.accounts.is_empty());
        assert_eq!(
            reasons(&none, &lines),
            [Ok(1), Ok(1), Ok(3), Err("missing_template_id")]
        );
    }
}
