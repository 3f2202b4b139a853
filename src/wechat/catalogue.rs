//! The template catalogue: each account's templates, fetched once and refreshed, so a job whose
//! template the account does not have, or whose `data` lacks a key the template names, is
//! rejected before any call to WeChat, where it would fail anyway and count against the quota.
//!
//! Template messages come from `GET /cgi-bin/template/get_all_private_template`, subscription
//! templates from `GET /wxaapi/newtmpl/gettemplate`. When a catalogue cannot be fetched (no
//! permission, an outage), sending goes on unchecked and
//! `wxdispatch_catalogue_unchecked_total{appid}` counts those sends: the check is a help, never
//! a reason to stop sending.
//!
//! The check costs no JSON parse and no allocation per job: the parser noted where it wrote
//! the job's `template_id` and `data` keys ([`crate::job::TemplateFields`]).

use std::collections::HashMap;

use serde::Deserialize;

use crate::job::{MsgType, TemplateFields};

/// One template and the keys its content names (`{{key.DATA}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub template_id: String,
    pub title: String,
    pub keys: Vec<String>,
}

/// Which of WeChat's two catalogues a message type's templates live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// `get_all_private_template`: template messages.
    Private,
    /// `wxaapi/newtmpl/gettemplate`: subscription templates (both subscription types).
    Subscription,
}

impl Source {
    pub(crate) fn of(t: MsgType) -> Source {
        match t {
            MsgType::Template => Source::Private,
            MsgType::Subscribe | MsgType::MiniprogramSubscribe => Source::Subscription,
        }
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            Source::Private => "/cgi-bin/template/get_all_private_template",
            Source::Subscription => "/wxaapi/newtmpl/gettemplate",
        }
    }
}

/// The keys `{{key.DATA}}` a template's content names, in order, without repeats.
pub(crate) fn keys_of(content: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("{{") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find("}}") else { break };
        let inner = rest[..end].trim();
        if let Some(key) = inner.strip_suffix(".DATA")
            && !key.is_empty()
            && !keys.iter().any(|k| k == key)
        {
            keys.push(key.to_string());
        }
        rest = &rest[end + 2..];
    }
    keys
}

/// A catalogue reply of either endpoint. `get_all_private_template` answers
/// `{template_list: [{template_id, title, content, ...}]}`; `gettemplate` answers
/// `{errcode, errmsg, data: [{priTmplId, title, content, ...}]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct CatalogueReply {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    #[serde(default)]
    template_list: Option<Vec<Entry>>,
    #[serde(default)]
    data: Option<Vec<Entry>>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(alias = "priTmplId")]
    template_id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    content: String,
}

impl CatalogueReply {
    /// The templates, or `None` when the reply holds no list (an error reply).
    pub(crate) fn templates(self) -> Option<Vec<Template>> {
        let list = self.template_list.or(self.data)?;
        Some(
            list.into_iter()
                .map(|e| Template {
                    keys: keys_of(&e.content),
                    template_id: e.template_id,
                    title: e.title,
                })
                .collect(),
        )
    }
}

/// Why a job cannot be sent with the account's templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    UnknownTemplate(String),
    MissingKey(String),
}

impl Mismatch {
    /// The outcome's reason word.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Mismatch::UnknownTemplate(_) => "unknown_template",
            Mismatch::MissingKey(_) => "missing_data_key",
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            Mismatch::UnknownTemplate(id) => {
                format!("the account has no template {id} (checked against its catalogue)")
            }
            Mismatch::MissingKey(k) => {
                format!("data lacks the key {k} that the template's content names")
            }
        }
    }
}

/// One account's catalogue of one source: each template id and the data keys its content
/// names.
#[derive(Debug, Default)]
pub(crate) struct Catalogue {
    templates: HashMap<String, Vec<String>>,
}

impl Catalogue {
    pub(crate) fn new(templates: &[Template]) -> Catalogue {
        Catalogue {
            templates: templates
                .iter()
                .map(|t| (t.template_id.clone(), t.keys.clone()))
                .collect(),
        }
    }

    /// Checks a job's template against the catalogue: the account must have it, and the job's
    /// `data` must hold every key its content names.
    pub(crate) fn check(&self, job: TemplateFields<'_>) -> Result<(), Mismatch> {
        let id = job.id();
        let Some(keys) = self.templates.get(id.as_ref()) else {
            return Err(Mismatch::UnknownTemplate(id.into_owned()));
        };
        for key in keys {
            if !job.data_keys().any(|k| k == key.as_str()) {
                return Err(Mismatch::MissingKey(key.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_templates_content() {
        let c = "{{first.DATA}}\n商品名称：{{keyword1.DATA}}\n时间：{{ keyword2.DATA }}\n{{first.DATA}}{{remark}}";
        assert_eq!(keys_of(c), ["first", "keyword1", "keyword2"]);
    }

    #[test]
    fn both_catalogue_replies_parse() {
        let r: CatalogueReply = serde_json::from_str(
            r#"{"template_list":[{"template_id":"T1","title":"订单","content":"{{User.DATA}}","example":""}]}"#,
        )
        .unwrap();
        assert_eq!(r.templates().unwrap()[0].keys, ["User"]);
        let r: CatalogueReply = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"ok","data":[{"priTmplId":"S1","title":"发货","content":"物品:{{thing1.DATA}}\n时间:{{time2.DATA}}","type":2}]}"#,
        )
        .unwrap();
        let t = r.templates().unwrap();
        assert_eq!(
            (t[0].template_id.as_str(), &t[0].keys[..]),
            ("S1", &["thing1".to_string(), "time2".to_string()][..])
        );
        let r: CatalogueReply =
            serde_json::from_str(r#"{"errcode":48001,"errmsg":"api unauthorized"}"#).unwrap();
        assert!(r.templates().is_none());
    }

    /// A catalogue of one template, with these keys.
    fn one_template(template_id: &str, keys: &[&str]) -> Catalogue {
        Catalogue::new(&[Template {
            template_id: template_id.into(),
            title: String::new(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }])
    }

    /// The template fields of a job body, as the parser writes them.
    fn checked(catalogue: &Catalogue, body: &[u8]) -> Result<(), Mismatch> {
        let env: std::collections::BTreeMap<String, String> =
            [("WXD_APPID", "wx0123456789abcdef"), ("WXD_SECRET", "s")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let config = crate::config::Config::from_sources(None, &env).unwrap();
        match crate::job::parse(body, None, &config).unwrap() {
            crate::job::Parsed::Single(job) => catalogue.check(job.template()),
            crate::job::Parsed::Batch(batch) => catalogue.check(batch.template()),
        }
    }

    #[test]
    fn a_body_is_checked_for_its_template_and_every_key() {
        let f = one_template("T1", &["User", "Money"]);
        let ok = br#"{"data":{"Money":{"value":"1"},"User":{"value":"x"}},"template_id":"T1","touser":"o"}"#;
        assert_eq!(checked(&f, ok), Ok(()));
        let missing = br#"{"data":{"User":{"value":"Money"}},"template_id":"T1","touser":"o"}"#;
        assert_eq!(
            checked(&f, missing),
            Err(Mismatch::MissingKey("Money".into()))
        );
        let unknown = br#"{"data":{},"template_id":"T9","touser":"o"}"#;
        assert_eq!(
            checked(&f, unknown),
            Err(Mismatch::UnknownTemplate("T9".into()))
        );
    }

    /// Keys and ids with escapes are compared as the strings they stand for, and a batch is
    /// checked by its shared head.
    #[test]
    fn escaped_keys_and_batches_are_checked_by_their_values() {
        let f = one_template("T\"1", &["a\"b", "é"]);
        let ok = br#"{"data":{"a\"b":{"value":"1"},"\u00e9":{"value":"x"}},"template_id":"T\"1","touser":["o1","o2"]}"#;
        assert_eq!(checked(&f, ok), Ok(()));
        let missing = br#"{"data":{"a\"b":{"value":"1"}},"template_id":"T\"1","touser":"o"}"#;
        assert_eq!(checked(&f, missing), Err(Mismatch::MissingKey("é".into())));
    }
}
