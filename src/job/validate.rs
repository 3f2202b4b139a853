//! The checks a job's members must pass, in a fixed order (the first problem found is the
//! job's reason), and the writing of what is sent: a single job's WeChat body, or a batch's
//! shared head.

use chrono::{DateTime, Utc};

use super::json::{Fields, Json};
use super::{
    AccountId, Batch, InvalidJob, Job, JobId, MAX_BATCH, MAX_ID_LEN, MsgType, Parsed, PartialJob,
};
use crate::config::{Config, TokenMode};

impl Fields<'_> {
    /// Validates the members in a fixed order (the first problem found is the job's reason)
    /// and writes what is sent: the single job's WeChat body, or the batch's shared head.
    pub(super) fn validate(
        &self,
        body: &[u8],
        message_id: Option<&str>,
        config: &Config,
    ) -> Result<Parsed, InvalidJob> {
        let msg_type = self.msg_type()?;
        let id = self.id(body, message_id)?;
        let (account, appid) = self.account(config)?;
        let not_after = self.not_after()?;
        match &self.template_id {
            Some(Json::Str(s)) if !s.is_empty() => {}
            Some(Json::Str(_)) | None | Some(Json::Null) => {
                return Err(InvalidJob::new(
                    "missing_template_id",
                    "template_id is required",
                ));
            }
            Some(_) => {
                return Err(InvalidJob::new(
                    "bad_template_id",
                    "template_id must be a string",
                ));
            }
        }
        if msg_type != MsgType::Template {
            self.check_subscription(msg_type)?;
        }
        check_type("url", &self.url, Json::is_string, "a string")?;
        check_type("topcolor", &self.topcolor, Json::is_string, "a string")?;
        check_type(
            "miniprogram",
            &self.miniprogram,
            Json::is_object,
            "an object",
        )?;
        check_type("data", &self.data, Json::is_object, "an object")?;
        if let Some(Json::Object(data)) = &self.data {
            for (k, v) in data {
                let ok = match v {
                    Json::Object(field) => field.get("value").is_none_or(|x| !x.is_object()),
                    _ => false,
                };
                if !ok {
                    return Err(InvalidJob::new(
                        "bad_data",
                        format!(
                            "data.{} must be an object like {{\"value\": \"...\"}}",
                            truncate(k, 32)
                        ),
                    ));
                }
            }
        }

        let recipients = self.recipients()?;
        // Room for what the parser adds (`client_msg_id`), so the body is written without
        // regrowing.
        let capacity = body.len() + 2 * MAX_ID_LEN;
        if recipients.len() > 1 {
            // Each recipient's job comes back through this parser, so the head keeps what the
            // parser reads: the id, the account, the deadline and the type (when not the
            // default). `client_msg_id` is set again for each recipient's job.
            let not_after_text = not_after.map(|t| t.to_rfc3339());
            let mut set = vec![("id", id.as_str()), ("appid", appid.as_str())];
            if let Some(t) = &not_after_text {
                set.push(("not_after", t));
            }
            if msg_type != MsgType::Template {
                set.push(("type", msg_type.as_str()));
            }
            let (mut head, template) = self.write(&set, capacity);
            // The object holds at least `id`, so it ends in `}` after a member: drop the
            // brace, and each recipient's job adds `,"touser":…}`.
            head.pop();
            let batch = Batch {
                recipients: recipients.into_iter().map(str::to_owned).collect(),
                id,
                account,
                appid,
                msg_type,
                not_after,
                head,
                template,
            };
            // Each recipient's job comes back through this parser with `id` and `appid` added,
            // so a batch near the size limit would expand into jobs over it: refuse the batch
            // now, as one invalid job, rather than every recipient later.
            let longest = batch
                .recipients
                .iter()
                .max_by_key(|r| serde_json::to_string(r).map_or(0, |s| s.len()))
                .expect("a batch has recipients");
            let size = batch.job_for(longest).len();
            if size > config.limits.max_job_bytes {
                return Err(InvalidJob::new(
                    "too_large",
                    format!(
                        "each recipient's job would be up to {size} bytes, the limit is {}",
                        config.limits.max_job_bytes
                    ),
                ));
            }
            return Ok(Parsed::Batch(batch));
        }
        let touser = recipients[0];
        let set = [("touser", touser), ("client_msg_id", id.as_str())];
        // Only the template send takes (and deduplicates by) `client_msg_id`.
        let set = if msg_type.deduplicated() {
            &set[..]
        } else {
            &set[..1]
        };
        let (body, template) = self.write(set, capacity);
        Ok(Parsed::Single(Job {
            touser: touser.to_owned(),
            id,
            account,
            appid,
            msg_type,
            not_after,
            body: body.into(),
            template,
        }))
    }

    /// What an invalid job's outcome can still report: the id, appid and openid as written,
    /// then what each check that passed established (the checks are replayed in order, on
    /// this error path only).
    pub(super) fn known(
        &self,
        body: &[u8],
        message_id: Option<&str>,
        config: &Config,
    ) -> PartialJob {
        let raw = |v: &Option<Json>, max| v.as_ref()?.as_str().map(|s| truncate(s, max));
        let mut known = PartialJob {
            id: raw(&self.id, MAX_ID_LEN),
            appid: raw(&self.appid, 64),
            touser: raw(&self.touser, 128),
            msg_type: None,
        };
        let Ok(msg_type) = self.msg_type() else {
            return known;
        };
        known.msg_type = Some(msg_type);
        let Ok(id) = self.id(body, message_id) else {
            return known;
        };
        known.id = Some(id.0);
        if let Ok((_, appid)) = self.account(config) {
            known.appid = Some(appid);
        }
        known
    }

    fn msg_type(&self) -> Result<MsgType, InvalidJob> {
        match &self.msg_type {
            None | Some(Json::Null) => Ok(MsgType::Template),
            Some(Json::Str(s)) => MsgType::parse(s).ok_or_else(|| {
                InvalidJob::new(
                    "bad_type",
                    format!(
                        "type {:?} is not one of template, subscribe, miniprogram_subscribe",
                        truncate(s, 32)
                    ),
                )
            }),
            Some(_) => Err(InvalidJob::new("bad_type", "type must be a string")),
        }
    }

    fn id(&self, body: &[u8], message_id: Option<&str>) -> Result<JobId, InvalidJob> {
        match &self.id {
            Some(Json::Str(s)) => JobId::parse(s),
            Some(Json::Null) | None => match message_id {
                Some(m) => JobId::parse(m),
                None => Ok(JobId::from_body(body)),
            },
            Some(_) => Err(InvalidJob::new("bad_id", "id must be a string")),
        }
    }

    /// The job's account and appid. In component mode an appid no `[[accounts]]` entry names
    /// is taken as an authorizer of the platform (whether it is one is the token's answer:
    /// `not_authorized`); it must look like an appid, since it becomes Redis keys and labels.
    fn account(&self, config: &Config) -> Result<(AccountId, String), InvalidJob> {
        let appid = match &self.appid {
            Some(Json::Str(s)) => Some(s.as_ref()),
            Some(Json::Null) | None => None,
            Some(_) => return Err(InvalidJob::new("bad_appid", "appid must be a string")),
        };
        if let Some(found) = config.account(appid) {
            let at = config.accounts.iter().position(|a| std::ptr::eq(a, found));
            let at = at.expect("Config::account returns one of Config::accounts");
            return Ok((AccountId::configured(at), found.appid.clone()));
        }
        match appid {
            Some(a) if config.wechat.token_mode == TokenMode::Component && looks_like_appid(a) => {
                Ok((AccountId::AUTHORIZER, a.to_string()))
            }
            Some(a) => Err(InvalidJob::new(
                "unknown_account",
                format!("appid {} is not configured", truncate(a, 64)),
            )),
            None => Err(InvalidJob::new(
                "unknown_account",
                "appid is required when several accounts are configured",
            )),
        }
    }

    fn not_after(&self) -> Result<Option<DateTime<Utc>>, InvalidJob> {
        match &self.not_after {
            Some(Json::Str(s)) => Ok(Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|e| InvalidJob::new("bad_not_after", format!("not_after: {e}")))?
                    .with_timezone(&Utc),
            )),
            Some(Json::Null) | None => Ok(None),
            Some(_) => Err(InvalidJob::new(
                "bad_not_after",
                "not_after must be an RFC 3339 string",
            )),
        }
    }

    /// The openids of `touser`: one for a single job, several for a batch.
    fn recipients(&self) -> Result<Vec<&str>, InvalidJob> {
        let recipients = match &self.touser {
            Some(Json::Str(s)) => vec![s.as_ref()],
            Some(Json::Array(items)) => {
                if items.len() > MAX_BATCH {
                    return Err(InvalidJob::new(
                        "batch_too_large",
                        format!(
                            "touser has {} recipients, the limit is {MAX_BATCH}",
                            items.len()
                        ),
                    ));
                }
                items
                    .iter()
                    .map(|v| {
                        v.as_str().ok_or_else(|| {
                            InvalidJob::new("bad_touser", "touser entries must be strings")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            None | Some(Json::Null) => {
                return Err(InvalidJob::new("missing_touser", "touser is required"));
            }
            Some(_) => {
                return Err(InvalidJob::new(
                    "bad_touser",
                    "touser must be a string or an array of strings",
                ));
            }
        };
        if recipients.is_empty() {
            return Err(InvalidJob::new("missing_touser", "touser is empty"));
        }
        for r in &recipients {
            if r.is_empty() || r.len() > 128 || r.chars().any(char::is_control) {
                return Err(InvalidJob::new(
                    "bad_touser",
                    "an openid must be 1-128 characters without control characters",
                ));
            }
        }
        Ok(recipients)
    }

    /// The schema of a subscription job (CONTRACT.md, "Message types"): only the fields its
    /// type takes, each of the right type, and `data` values WeChat will accept. Checked here,
    /// before any call to WeChat, because WeChat's answer to most of these (47003) does not say
    /// which field.
    fn check_subscription(&self, t: MsgType) -> Result<(), InvalidJob> {
        const COMMON: [&str; 4] = ["touser", "template_id", "data", "client_msg_id"];
        if let Some(k) = self
            .passed()
            .map(|(k, _)| k)
            .filter(|k| !COMMON.contains(k) && !t.extra_fields().contains(k))
            .min()
        {
            return Err(InvalidJob::new(
                "unknown_field",
                format!("a {t} job does not take the field {}", truncate(k, 32)),
            ));
        }
        if self.client_msg_id.is_some() {
            return Err(InvalidJob::new(
                "unknown_field",
                format!("a {t} job does not take client_msg_id: WeChat does not deduplicate it"),
            ));
        }
        check_type("page", &self.page, Json::is_string, "a string")?;
        if let Some(mp) = &self.miniprogram {
            let ok = match mp {
                Json::Object(m) => {
                    m.get("appid").is_some_and(Json::is_string)
                        && m.get("pagepath").is_none_or(Json::is_string)
                        && m.keys().all(|k| k == "appid" || k == "pagepath")
                }
                _ => false,
            };
            if !ok {
                return Err(InvalidJob::new(
                    "bad_field",
                    "miniprogram must be {\"appid\": \"...\", \"pagepath\": \"...\"}",
                ));
            }
        }
        for (key, value, allowed) in [
            (
                "miniprogram_state",
                &self.miniprogram_state,
                &["developer", "trial", "formal"][..],
            ),
            (
                "lang",
                &self.lang,
                &["zh_CN", "en_US", "zh_HK", "zh_TW"][..],
            ),
        ] {
            match value {
                None => {}
                Some(Json::Str(v)) if allowed.contains(&v.as_ref()) => {}
                Some(_) => {
                    return Err(InvalidJob::new(
                        "bad_field",
                        format!("{key} must be one of {}", allowed.join(", ")),
                    ));
                }
            }
        }
        match &self.data {
            Some(Json::Object(data)) => {
                for (k, v) in data {
                    let value = match v {
                        Json::Object(f) if f.len() == 1 => f.get("value").and_then(Json::as_str),
                        _ => None,
                    };
                    let Some(value) = value else {
                        return Err(InvalidJob::new(
                            "bad_data",
                            format!(
                                "data.{} must be {{\"value\": \"...\"}} with a string value",
                                truncate(k, 32)
                            ),
                        ));
                    };
                    if let Some(why) = value_limit(k, value) {
                        return Err(InvalidJob::new(
                            "bad_value",
                            format!("data.{}: {why}", truncate(k, 32)),
                        ));
                    }
                }
                Ok(())
            }
            None | Some(Json::Null) => Err(InvalidJob::new("missing_data", "data is required")),
            Some(_) => Err(InvalidJob::new("bad_field", "data must be an object")),
        }
    }
}

/// WeChat's documented limit on a subscription field's value, found from the key's prefix
/// (`thing1`, `number01`, `character_string2`: every key is named after its kind). `None` when
/// the value fits or the kind has no length limit checked here (time, date, enum and kinds
/// WeChat adds later: those are left to WeChat's own 47003). Limits: docs/ERROR_POLICY.md.
pub fn value_limit(key: &str, value: &str) -> Option<String> {
    const LIMITS: [(&str, usize); 8] = [
        ("character_string", 32),
        ("phone_number", 17),
        ("car_number", 8),
        ("thing", 20),
        ("number", 32),
        ("letter", 32),
        ("symbol", 5),
        ("phrase", 5),
    ];
    let kind = key.trim_end_matches(|c: char| c.is_ascii_digit());
    let n = value.chars().count();
    if n == 0 {
        return Some("the value is empty".into());
    }
    if kind == "name" {
        // 10 Chinese characters, or 20 letters when the name is all ASCII.
        let max = if value.is_ascii() { 20 } else { 10 };
        return (n > max).then(|| format!("{n} characters, a name takes at most {max}"));
    }
    let (_, max) = LIMITS.iter().find(|(k, _)| *k == kind)?;
    (n > *max).then(|| format!("{n} characters, a {kind} takes at most {max}"))
}

fn check_type<'a>(
    key: &str,
    value: &Option<Json<'a>>,
    ok: impl Fn(&Json<'a>) -> bool,
    what: &str,
) -> Result<(), InvalidJob> {
    match value {
        Some(v) if !v.is_null() && !ok(v) => Err(InvalidJob::new(
            "bad_field",
            format!("{key} must be {what}"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// WeChat's appids are `wx` and 16 hex digits; anything of letters and digits up to 32 is
/// accepted, so a new format is not refused, while nothing else reaches Redis keys or labels.
pub(crate) fn looks_like_appid(a: &str) -> bool {
    (1..=32).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_alphanumeric())
}
