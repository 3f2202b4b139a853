//! Reading a job body into its members, without a `serde_json::Value` tree.
//!
//! The members the parser acts on get a field of [`Fields`] each; what it passes on to WeChat
//! without looking inside (`data`'s entries, fields it does not know) stays a [`Json`], a value
//! borrowed from the body. Every member is kept as written, whatever its type: a wrong type is
//! an invalid job with its own reason, decided by the checks in [`super`], never a parse error.
//!
//! Objects are `BTreeMap`s, as in serde_json's `Value` (sorted keys, the last of repeated keys
//! wins), and [`Fields::write`] writes the members in key order: the body WeChat gets is byte
//! for byte the one a `Value` would have written.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::Number;
use smallvec::SmallVec;

/// A JSON value whose strings point into the job body (unless they hold escapes).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(BTreeMap<Cow<'a, str>, Json<'a>>),
}

impl<'a> Json<'a> {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn is_string(&self) -> bool {
        matches!(self, Json::Str(_))
    }

    pub(super) fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub(super) fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
}

/// A job body: an object read into its members, or any other JSON value (not a job).
pub(super) enum Body<'a> {
    Object(Box<Fields<'a>>),
    NotObject,
}

/// The members of a job object, each as written. `None` is an absent member, `Some(Null)` an
/// explicit `null`: some checks tell them apart.
#[derive(Debug, Default)]
pub(super) struct Fields<'a> {
    pub id: Option<Json<'a>>,
    pub appid: Option<Json<'a>>,
    /// The `type` member.
    pub msg_type: Option<Json<'a>>,
    pub not_after: Option<Json<'a>>,
    pub touser: Option<Json<'a>>,
    pub client_msg_id: Option<Json<'a>>,
    pub template_id: Option<Json<'a>>,
    pub data: Option<Json<'a>>,
    pub url: Option<Json<'a>>,
    pub topcolor: Option<Json<'a>>,
    pub miniprogram: Option<Json<'a>>,
    pub page: Option<Json<'a>>,
    pub miniprogram_state: Option<Json<'a>>,
    pub lang: Option<Json<'a>>,
    /// Members the parser does not know, passed on to WeChat as they came.
    pub others: BTreeMap<Cow<'a, str>, Json<'a>>,
}

impl<'a> Fields<'a> {
    /// The members that go to WeChat as they came (not `id`, `appid`, `type`, `not_after`,
    /// `touser` and `client_msg_id`, which the parser rewrites), with their names.
    pub(super) fn passed(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        [
            ("data", &self.data),
            ("lang", &self.lang),
            ("miniprogram", &self.miniprogram),
            ("miniprogram_state", &self.miniprogram_state),
            ("page", &self.page),
            ("template_id", &self.template_id),
            ("topcolor", &self.topcolor),
            ("url", &self.url),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_ref()?)))
        .chain(self.others.iter().map(|(k, v)| (k.as_ref(), v)))
    }

    /// The passed members plus `set` (members the parser writes itself, none of them passed),
    /// as one compact JSON object with its keys in order, and where in it the template id and
    /// the data keys were written.
    pub(super) fn write(&self, set: &[(&str, &str)], capacity: usize) -> (Vec<u8>, TemplateSpans) {
        let mut members: Vec<(&str, Member)> = Vec::with_capacity(16 + self.others.len());
        members.extend(self.passed().map(|(k, v)| (k, Member::Json(v))));
        members.extend(set.iter().map(|&(k, v)| (k, Member::Str(v))));
        members.sort_unstable_by_key(|&(k, _)| k);
        let mut out = Vec::with_capacity(capacity);
        let mut spans = TemplateSpans::default();
        // serde_json's compact form, written member by member to note where the strings the
        // catalogue check reads begin and end.
        out.push(b'{');
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(&mut out, key);
            out.push(b':');
            match (*key, value) {
                ("template_id", Member::Json(Json::Str(id))) => spans.id = write_str(&mut out, id),
                ("data", Member::Json(Json::Object(entries))) => {
                    out.push(b'{');
                    for (j, (k, v)) in entries.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        spans.data_keys.push(write_str(&mut out, k));
                        out.push(b':');
                        write_json(&mut out, v);
                    }
                    out.push(b'}');
                }
                _ => write_json(&mut out, value),
            }
        }
        out.push(b'}');
        (out, spans)
    }
}

fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("JSON values serialize");
}

/// Writes a JSON string and returns where its text (between the quotes) lies.
fn write_str(out: &mut Vec<u8>, s: &str) -> Span {
    let start = out.len() + 1;
    write_json(out, s);
    Span::new(start, out.len() - 1)
}

/// Where a string's JSON text (escapes and all, without its quotes) lies in a written body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Bodies are bounded by `max_job_bytes`, far below 4 GiB.
        let at = |n: usize| u32::try_from(n).expect("a job body is under 4 GiB");
        Span {
            start: at(start),
            end: at(end),
        }
    }

    /// The string in `written`, unescaped (which copies only when it holds escapes).
    pub(crate) fn text(self, written: &[u8]) -> Cow<'_, str> {
        let (start, end) = (self.start as usize, self.end as usize);
        let text = &written[start..end];
        if text.contains(&b'\\') {
            let quoted = &written[start - 1..end + 1];
            Cow::Owned(serde_json::from_slice(quoted).expect("a string the parser wrote"))
        } else {
            Cow::Borrowed(std::str::from_utf8(text).expect("a string the parser wrote"))
        }
    }
}

/// Where [`Fields::write`] put the `template_id` and each `data` key: the catalogue check
/// reads them there, with no second parse and no copy. Inline up to eight keys, which covers
/// WeChat's templates, so a job costs no allocation for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateSpans {
    pub id: Span,
    pub data_keys: SmallVec<[Span; 8]>,
}

/// One member's value in [`Fields::write`].
enum Member<'m, 'a> {
    Json(&'m Json<'a>),
    Str(&'m str),
}

impl Serialize for Member<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Member::Json(v) => v.serialize(s),
            Member::Str(v) => s.serialize_str(v),
        }
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::Str(v) => s.serialize_str(v),
            Json::Array(items) => s.collect_seq(items),
            Json::Object(members) => s.collect_map(members),
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// Builds a [`Json`] the way serde_json builds a `Value`, so the same input gives the same
/// value (and the same errors: they all come from the deserializer).
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = BTreeMap::new();
        while let Some((Key(k), v)) = map.next_entry()? {
            members.insert(k, v);
        }
        Ok(Json::Object(members))
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BodyVisitor)
    }
}

/// Reads an object into [`Fields`]; any other value is read whole (it must still be valid
/// JSON) and is [`Body::NotObject`].
struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
        let mut f = Box::<Fields>::default();
        while let Some(Key(key)) = map.next_key()? {
            let field = match key.as_ref() {
                "id" => &mut f.id,
                "appid" => &mut f.appid,
                "type" => &mut f.msg_type,
                "not_after" => &mut f.not_after,
                "touser" => &mut f.touser,
                "client_msg_id" => &mut f.client_msg_id,
                "template_id" => &mut f.template_id,
                "data" => &mut f.data,
                "url" => &mut f.url,
                "topcolor" => &mut f.topcolor,
                "miniprogram" => &mut f.miniprogram,
                "page" => &mut f.page,
                "miniprogram_state" => &mut f.miniprogram_state,
                "lang" => &mut f.lang,
                _ => {
                    let v = map.next_value()?;
                    f.others.insert(key, v);
                    continue;
                }
            };
            *field = Some(map.next_value()?);
        }
        Ok(Body::Object(f))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Body<'de>, A::Error> {
        JsonVisitor.visit_seq(seq).map(|_| Body::NotObject)
    }

    fn visit_unit<E>(self) -> Result<Body<'de>, E> {
        Ok(Body::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body<'de>, E> {
        Ok(Body::NotObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body<'de>, E> {
        Ok(Body::NotObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body<'de>, E> {
        Ok(Body::NotObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body<'de>, E> {
        Ok(Body::NotObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Body<'de>, E> {
        Ok(Body::NotObject)
    }
}
