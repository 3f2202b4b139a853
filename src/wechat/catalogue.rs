//! The template catalogue: each account's templates, fetched once and refreshed, so a job whose
//! template the account does not have, or whose `data` lacks a key the template names, is
//! rejected before any call to WeChat (issue 16.3).
//!
//! Template messages come from `GET /cgi-bin/template/get_all_private_template`, subscription
//! templates from `GET /wxaapi/newtmpl/gettemplate`. When a catalogue cannot be fetched (no
//! permission, an outage), sending goes on unchecked and
//! `wxdispatch_catalogue_unchecked_total{appid}` counts those sends: the check is a help, never
//! a reason to stop sending.
//!
//! The check costs no JSON parse and no allocation per job: the job's `template_id` and its
//! `data` keys are found in its already-serialized body by byte search.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::job::MsgType;

/// How long a fetched catalogue is trusted before it is fetched again.
pub const REFRESH: Duration = Duration::from_secs(600);
/// After a failed fetch, how long sends go on unchecked before the next try.
pub const RETRY_FAILED: Duration = Duration::from_secs(60);

/// One template and the keys its content names (`{{key.DATA}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub template_id: String,
    pub title: String,
    pub keys: Vec<String>,
}

/// Which of WeChat's two catalogues a message type's templates live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `get_all_private_template`: template messages.
    Private,
    /// `wxaapi/newtmpl/gettemplate`: subscription templates (both subscription types).
    Subscription,
}

impl Source {
    pub fn of(t: MsgType) -> Source {
        match t {
            MsgType::Template => Source::Private,
            MsgType::Subscribe | MsgType::MiniprogramSubscribe => Source::Subscription,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Source::Private => "/cgi-bin/template/get_all_private_template",
            Source::Subscription => "/wxaapi/newtmpl/gettemplate",
        }
    }
}

/// The keys `{{key.DATA}}` a template's content names, in order, without repeats.
pub fn keys_of(content: &str) -> Vec<String> {
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
pub struct CatalogueReply {
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
    pub fn templates(self) -> Option<Vec<Template>> {
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
pub enum Mismatch {
    UnknownTemplate(String),
    MissingKey(String),
}

impl Mismatch {
    /// The outcome's reason word.
    pub fn reason(&self) -> &'static str {
        match self {
            Mismatch::UnknownTemplate(_) => "unknown_template",
            Mismatch::MissingKey(_) => "missing_data_key",
        }
    }

    pub fn detail(&self) -> String {
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

/// One account's fetched catalogue of one source: template id → the `"key":` needles to find
/// in a job's body.
#[derive(Debug, Default)]
pub struct Fetched {
    templates: HashMap<String, Vec<Vec<u8>>>,
}

impl Fetched {
    pub fn new(templates: &[Template]) -> Fetched {
        Fetched {
            templates: templates
                .iter()
                .map(|t| {
                    let needles = t
                        .keys
                        .iter()
                        .map(|k| serde_json::to_vec(k).expect("a string serializes"))
                        .map(|mut n| {
                            n.push(b':');
                            n
                        })
                        .collect();
                    (t.template_id.clone(), needles)
                })
                .collect(),
        }
    }

    /// Checks a serialized job body (as the parser wrote it: compact JSON) against the
    /// catalogue. A body whose template id cannot be found passes: WeChat will judge it.
    pub fn check(&self, body: &[u8]) -> Result<(), Mismatch> {
        let Some(id) = template_id_in(body) else {
            return Ok(());
        };
        let Some(needles) = self.templates.get(id) else {
            return Err(Mismatch::UnknownTemplate(id.to_string()));
        };
        let data = find(body, b"\"data\":{").map_or(&body[..0], |i| &body[i..]);
        for n in needles {
            if find(data, n).is_none() {
                let key = String::from_utf8_lossy(&n[1..n.len() - 2]).into_owned();
                return Err(Mismatch::MissingKey(key));
            }
        }
        Ok(())
    }
}

/// The `template_id` of a compact serialized job, without parsing it.
fn template_id_in(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"template_id\":\"";
    let start = find(body, KEY)? + KEY.len();
    let len = body[start..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The state of one account's catalogue of one source.
#[derive(Debug, Default)]
pub enum State {
    /// Never fetched.
    #[default]
    Empty,
    Ready {
        fetched: std::sync::Arc<Fetched>,
        at: Instant,
    },
    /// The last fetch failed at this time: send unchecked until `RETRY_FAILED` has passed.
    Failed(Instant),
}

impl State {
    /// Whether the catalogue should be fetched now.
    pub fn due(&self, now: Instant) -> bool {
        match self {
            State::Empty => true,
            State::Ready { at, .. } => now.duration_since(*at) >= REFRESH,
            State::Failed(at) => now.duration_since(*at) >= RETRY_FAILED,
        }
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

    #[test]
    fn a_body_is_checked_for_its_template_and_every_key() {
        let f = Fetched::new(&[Template {
            template_id: "T1".into(),
            title: String::new(),
            keys: vec!["User".into(), "Money".into()],
        }]);
        let ok = br#"{"data":{"Money":{"value":"1"},"User":{"value":"x"}},"template_id":"T1","touser":"o"}"#;
        assert_eq!(f.check(ok), Ok(()));
        let missing = br#"{"data":{"User":{"value":"Money"}},"template_id":"T1","touser":"o"}"#;
        assert_eq!(f.check(missing), Err(Mismatch::MissingKey("Money".into())));
        let unknown = br#"{"data":{},"template_id":"T9","touser":"o"}"#;
        assert_eq!(
            f.check(unknown),
            Err(Mismatch::UnknownTemplate("T9".into()))
        );
    }
}
