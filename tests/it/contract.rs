//! The machine-readable contract (docs/schema/*.json, docs/asyncapi.yaml) held against the code:
//! the job schema accepts what the worker's parser accepts and refuses what it refuses, the
//! outcome schema's kinds, statuses and reasons are the code's, and the AsyncAPI channels are
//! the topology the worker declares. The harness (helpers.rs) also runs [`check_job`] on every
//! job an integration test publishes and [`check_outcome`] on every outcome one receives.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use jsonschema::Validator;
use serde_json::Value;
use wxdispatch::config::Config;
use wxdispatch::job::{self, InvalidJob};

use crate::helpers::{Harness, Opts};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn validator(path: &str) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&read_json(path))
        .unwrap_or_else(|e| panic!("{path} is not a valid JSON Schema 2020-12: {e}"))
}

static JOB_SCHEMA: LazyLock<Validator> = LazyLock::new(|| validator("docs/schema/job.schema.json"));
static OUTCOME_SCHEMA: LazyLock<Validator> =
    LazyLock::new(|| validator("docs/schema/outcome.schema.json"));

fn schema_errors(schema: &Validator, v: &Value) -> Vec<String> {
    schema
        .iter_errors(v)
        .map(|e| format!("{} (at {})", e, e.instance_path()))
        .collect()
}

/// Panics unless `outcome` is valid against docs/schema/outcome.schema.json, with `msgid_str`
/// exactly `msgid`'s digits.
pub fn check_outcome(outcome: &Value) {
    let errors = schema_errors(&OUTCOME_SCHEMA, outcome);
    assert!(
        errors.is_empty(),
        "an outcome breaks docs/schema/outcome.schema.json: {}\n{outcome}",
        errors.join("; ")
    );
    if let Some(msgid) = outcome.get("msgid").and_then(Value::as_i64) {
        assert_eq!(outcome["msgid_str"], msgid.to_string(), "{outcome}");
    }
}

/// What the parser said about a body the schema was held against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused,
    /// Refused for a reason only the worker can know (the configured accounts, the size limit,
    /// the AMQP `message_id`, an openid's UTF-8 length): the schema may accept it.
    RefusedBeyondTheSchema,
}

/// Runs the worker's parser and the job schema on `body` and panics unless they agree: a job
/// the parser accepts validates, one it refuses as invalid fails (when the reason is one a
/// schema can see).
pub fn check_job(body: &[u8], message_id: Option<&str>, config: &Config) -> Verdict {
    let parsed = job::parse(body, message_id, config);
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        assert!(
            parsed.is_err(),
            "the parser accepted a body that is not JSON"
        );
        return Verdict::Refused;
    };
    let errors = schema_errors(&JOB_SCHEMA, &json);
    let shown = || String::from_utf8_lossy(&body[..body.len().min(600)]).into_owned();
    match parsed {
        Ok(_) if lenient_not_after(&json) => Verdict::Accepted,
        Ok(_) => {
            assert!(
                errors.is_empty(),
                "the parser accepts a job docs/schema/job.schema.json refuses: {}\n{}",
                errors.join("; "),
                shown()
            );
            Verdict::Accepted
        }
        Err((e, _)) if beyond_the_schema(&e, &json) => Verdict::RefusedBeyondTheSchema,
        Err((e, _)) => {
            assert!(
                !errors.is_empty(),
                "the parser refuses a job ({}: {}) that docs/schema/job.schema.json accepts:\n{}",
                e.reason,
                e.detail,
                shown()
            );
            Verdict::Refused
        }
    }
}

/// The one leniency of the parser the schema does not copy: a `not_after` with a space instead
/// of the `T` (chrono reads it; RFC 3339 allows it by agreement only). The job schema asks for
/// the `T`, and a job with the space otherwise valid still validates with the `T` put back.
fn lenient_not_after(json: &Value) -> bool {
    let Some(text) = json["not_after"].as_str() else {
        return false;
    };
    if text.as_bytes().get(10) != Some(&b' ') {
        return false;
    }
    let mut fixed = json.clone();
    fixed["not_after"] = format!("{}T{}", &text[..10], &text[11..]).into();
    let errors = schema_errors(&JOB_SCHEMA, &fixed);
    assert!(errors.is_empty(), "{}: {fixed}", errors.join("; "));
    true
}

fn beyond_the_schema(e: &InvalidJob, json: &Value) -> bool {
    let openids_over_128_bytes = || {
        let list = match &json["touser"] {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        list.iter()
            .filter_map(|v| v.as_str())
            .any(|s| s.len() > 128 && s.chars().count() <= 128)
    };
    match e.reason {
        "unknown_account" | "too_large" => true,
        "bad_id" => json.get("id").is_none_or(Value::is_null),
        "bad_touser" => openids_over_128_bytes(),
        _ => false,
    }
}

fn test_config() -> Config {
    crate::helpers::config("contract", "http://127.0.0.1:9", &[])
}

/// Every job in tests/fixtures (JSON Lines, the seed sample, the CSV campaign) and every job
/// the demo publishes: the schema and the parser agree on each, and both kinds occur.
#[test]
fn the_job_schema_agrees_with_the_parser_on_the_fixtures_and_the_demo() {
    let config = test_config();
    let mut verdicts = Vec::new();
    let fixtures = root().join("tests/fixtures");
    let mut files: Vec<PathBuf> = walk(&fixtures);
    files.sort();
    let mut seen_files = 0;
    for path in &files {
        let text = std::fs::read(path).unwrap();
        let bodies: Vec<Vec<u8>> = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => wxdispatch::publish::read_jsonl(&text[..])
                .unwrap()
                .into_iter()
                .map(|l| l.body.expect("a JSON line is a body"))
                .collect(),
            Some("json") => vec![text],
            Some("csv") => {
                wxdispatch::publish::read_csv(std::str::from_utf8(&text).unwrap(), "tmpl")
                    .unwrap()
                    .into_iter()
                    .filter_map(|l| l.body.ok())
                    .collect()
            }
            // The XML pushes are callback fixtures: their outcomes are checked by the consent
            // and receipt tests through the harness.
            _ => continue,
        };
        seen_files += 1;
        for body in bodies {
            verdicts.push(check_job(&body, None, &config));
        }
    }
    assert!(seen_files >= 4, "only {seen_files} job fixtures found");
    for body in wxdispatch::tools::demo::job_bodies(3) {
        verdicts.push(check_job(&body, None, &config));
    }
    let count = |v: Verdict| verdicts.iter().filter(|x| **x == v).count();
    assert!(count(Verdict::Accepted) >= 20, "{verdicts:?}");
    assert!(count(Verdict::Refused) >= 8, "{verdicts:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The committed fuzz corpus of the job parser: several hundred odd bodies the fuzzer found
/// interesting, each with and without an AMQP `message_id`.
#[test]
fn the_job_schema_agrees_with_the_parser_on_the_fuzz_corpus() {
    let config = test_config();
    let mut verdicts = Vec::new();
    for path in walk(&root().join("fuzz/corpus/job_parse")) {
        let body = std::fs::read(&path).unwrap();
        for message_id in [None, Some("amqp-id-1")] {
            verdicts.push(check_job(&body, message_id, &config));
        }
    }
    let count = |v: Verdict| verdicts.iter().filter(|x| **x == v).count();
    assert!(
        count(Verdict::Accepted) >= 50,
        "{}",
        count(Verdict::Accepted)
    );
    assert!(count(Verdict::Refused) >= 50, "{}", count(Verdict::Refused));
}

/// Jobs at and around every limit the schema states, each checked against the parser.
#[test]
fn the_job_schema_agrees_with_the_parser_at_every_limit() {
    let config = test_config();
    let base = |extra: Value| {
        let mut job = serde_json::json!({"id": "limits", "touser": "o", "template_id": "t"});
        for (k, v) in extra.as_object().unwrap() {
            job[k] = v.clone();
        }
        job
    };
    let sub = |t: &str, key: &str, value: Value| {
        base(serde_json::json!({"type": t, "data": {key: {"value": value}}}))
    };
    let mut cases: Vec<Value> = vec![
        base(serde_json::json!({"id": "x".repeat(64)})),
        base(serde_json::json!({"id": "x".repeat(65)})),
        base(serde_json::json!({"id": ""})),
        base(serde_json::json!({"id": "has space"})),
        base(serde_json::json!({"id": "汉字"})),
        base(serde_json::json!({"id": null})),
        base(serde_json::json!({"id": 7})),
        base(serde_json::json!({"touser": "o".repeat(128)})),
        base(serde_json::json!({"touser": "o".repeat(129)})),
        base(serde_json::json!({"touser": "tab\there"})),
        base(serde_json::json!({"touser": "\u{85}next-line"})),
        base(serde_json::json!({"touser": ""})),
        base(serde_json::json!({"touser": []})),
        base(serde_json::json!({"touser": ["a"]})),
        base(serde_json::json!({"touser": ["a", 5]})),
        base(serde_json::json!({"touser": vec!["o"; 10_000]})),
        base(serde_json::json!({"touser": vec!["o"; 10_001]})),
        base(serde_json::json!({"touser": null})),
        base(serde_json::json!({"template_id": ""})),
        base(serde_json::json!({"template_id": null})),
        base(serde_json::json!({"type": "template"})),
        base(serde_json::json!({"type": null})),
        base(serde_json::json!({"type": "sms"})),
        base(serde_json::json!({"type": 1})),
        base(serde_json::json!({"appid": 5})),
        base(serde_json::json!({"not_after": "2026-12-01T10:00:00Z"})),
        base(serde_json::json!({"not_after": "2026-12-01T10:00:00.123+08:00"})),
        base(serde_json::json!({"not_after": "2026-12-01t10:00:00z"})),
        base(serde_json::json!({"not_after": "2026-12-01 10:00:00Z"})),
        base(serde_json::json!({"not_after": "2026-02-30T10:00:00Z"})),
        base(serde_json::json!({"not_after": "2026-12-01T10:00:00"})),
        base(serde_json::json!({"not_after": "2026-12-01"})),
        base(serde_json::json!({"not_after": 1_700_000_000})),
        base(serde_json::json!({"url": 5})),
        base(serde_json::json!({"url": null, "topcolor": null, "miniprogram": null})),
        base(serde_json::json!({"topcolor": ["#FF0000"]})),
        base(serde_json::json!({"miniprogram": "wx"})),
        base(serde_json::json!({"miniprogram": {"anything": 1}})),
        base(serde_json::json!({"client_msg_id": 5, "lang": "xx", "page": 1})),
        base(serde_json::json!({"data": null})),
        base(serde_json::json!({"data": []})),
        base(serde_json::json!({"data": {"k": "v"}})),
        base(serde_json::json!({"data": {"k": {"value": {"nested": 1}}}})),
        base(
            serde_json::json!({"data": {"k": {"value": 5}, "first": {"value": "早"}, "remark": {"value": "x\ny"}}}),
        ),
        base(serde_json::json!({"data": {"k": {"value": "很".repeat(40), "color": 1}}})),
    ];
    for t in ["subscribe", "miniprogram_subscribe"] {
        for (kind, max) in [
            ("thing", 20),
            ("number", 32),
            ("letter", 32),
            ("symbol", 5),
            ("character_string", 32),
            ("phone_number", 17),
            ("car_number", 8),
            ("phrase", 5),
        ] {
            for n in [max, max + 1] {
                cases.push(sub(t, &format!("{kind}1"), "字".repeat(n).into()));
                cases.push(sub(t, &format!("{kind}01"), "a".repeat(n).into()));
                cases.push(sub(t, kind, "a".repeat(n).into()));
            }
        }
        for (value, _) in [
            ("a".repeat(20), "20 ASCII letters"),
            ("a".repeat(21), "21"),
            ("张".repeat(10), "10 Chinese"),
            ("张".repeat(11), "11"),
            (format!("{}张", "a".repeat(9)), "10 mixed"),
            (format!("{}张", "a".repeat(10)), "11 mixed"),
        ] {
            cases.push(sub(t, "name2", value.into()));
        }
        for key in [
            "time3",
            "date4",
            "amount5",
            "enum6",
            "future_kind7",
            "thingamajig1",
            "7",
        ] {
            cases.push(sub(t, key, "9".repeat(60).into()));
            cases.push(sub(t, key, "".into()));
        }
        cases.push(sub(t, "thing1", 5.into()));
        cases.push(sub(t, "thing1", Value::Null));
        cases.push(base(
            serde_json::json!({"type": t, "data": {"thing1": {"value": "v", "color": "#000"}}}),
        ));
        cases.push(base(serde_json::json!({"type": t, "data": {"thing1": {}}})));
        cases.push(base(serde_json::json!({"type": t, "data": {}})));
        cases.push(base(serde_json::json!({"type": t, "data": null})));
        cases.push(base(serde_json::json!({"type": t})));
        cases.push(base(serde_json::json!({"type": t, "data": {}, "page": "p", "not_after": null, "appid": null})));
        cases.push(base(
            serde_json::json!({"type": t, "data": {}, "page": null}),
        ));
        cases.push(base(serde_json::json!({"type": t, "data": {}, "page": 5})));
        cases.push(base(
            serde_json::json!({"type": t, "data": {}, "client_msg_id": "c"}),
        ));
        cases.push(base(
            serde_json::json!({"type": t, "data": {}, "url": null}),
        ));
        cases.push(base(
            serde_json::json!({"type": t, "data": {}, "topcolor": "#FFF"}),
        ));
        cases.push(base(serde_json::json!({"type": t, "data": {}, "extra": 1})));
        cases.push(base(
            serde_json::json!({"type": t, "data": {}, "touser": ["a", "b"]}),
        ));
        for mp in [
            serde_json::json!({"appid": "wx1"}),
            serde_json::json!({"appid": "wx1", "pagepath": "p"}),
            serde_json::json!({"appid": "wx1", "pagepath": null}),
            serde_json::json!({"pagepath": "p"}),
            serde_json::json!({"appid": "wx1", "other": 1}),
            Value::Null,
        ] {
            cases.push(base(
                serde_json::json!({"type": t, "data": {}, "miniprogram": mp}),
            ));
        }
        for (key, values) in [
            (
                "miniprogram_state",
                ["developer", "trial", "formal", "release"],
            ),
            ("lang", ["zh_CN", "en_US", "zh_HK", "fr_FR"]),
        ] {
            for v in values {
                cases.push(base(serde_json::json!({"type": t, "data": {}, key: v})));
            }
            cases.push(base(serde_json::json!({"type": t, "data": {}, key: null})));
        }
    }
    let mut verdicts = Vec::new();
    for job in &cases {
        verdicts.push(check_job(&serde_json::to_vec(job).unwrap(), None, &config));
    }
    let count = |v: Verdict| verdicts.iter().filter(|x| **x == v).count();
    assert!(
        count(Verdict::Accepted) >= 60 && count(Verdict::Refused) >= 60,
        "{verdicts:?}"
    );
}

/// Every `enum` in the outcome schema under `pointer`, as a set.
fn enum_at(schema: &Value, pointer: &str) -> BTreeSet<String> {
    schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the outcome schema"))
        .as_array()
        .unwrap_or_else(|| panic!("{pointer} is not an array"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The `enum` of the `reason` alternative titled `title`.
fn reasons_titled(schema: &Value, title: &str) -> BTreeSet<String> {
    let alternatives = schema
        .pointer("/$defs/reason/anyOf")
        .unwrap()
        .as_array()
        .unwrap();
    let i = alternatives
        .iter()
        .position(|a| a["title"] == title)
        .unwrap_or_else(|| panic!("no reason alternative titled {title}"));
    enum_at(schema, &format!("/$defs/reason/anyOf/{i}/enum"))
}

fn set<'a>(words: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    words.into_iter().map(str::to_string).collect()
}

/// The reasons `InvalidJob::new("…")` gives anywhere in src/ outside the publish command (whose
/// CSV-row reason never reaches the worker): what an `invalid` outcome can say.
fn invalid_job_reasons() -> BTreeSet<String> {
    let mut reasons = BTreeSet::new();
    for path in walk(&root().join("src")) {
        if path.starts_with(root().join("src/publish"))
            || path.extension().is_none_or(|e| e != "rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("InvalidJob::new(") {
            let rest = text[at + "InvalidJob::new(".len()..].trim_start();
            if let Some(word) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                reasons.insert(word.to_string());
            }
        }
    }
    reasons
}

/// The outcome schema's kinds, statuses and reasons are exactly the ones the code has, so the
/// two cannot drift: a new errcode, end reason, parse reason or status fails this test until
/// the schema lists it.
#[test]
fn the_outcome_schema_lists_exactly_the_codes_words() {
    use wxdispatch::outcome::{
        AuthorizationStatus, ConsentStatus, Kind, ReceiptStatus, SendStatus,
    };
    let schema = read_json("docs/schema/outcome.schema.json");

    assert_eq!(
        enum_at(&schema, "/$defs/send_status/enum"),
        set(SendStatus::ALL.map(SendStatus::as_str))
    );
    let known = |words: &[&str], label: fn(&str) -> &'static str| {
        set(words.iter().map(|w| label(w)).filter(|l| *l != "other"))
    };
    assert_eq!(
        enum_at(&schema, "/$defs/receipt/properties/status/anyOf/0/enum"),
        known(
            &["success", "failed:user block", "failed: system failed", "?"],
            |w| { ReceiptStatus::from_wechat(w).label() }
        )
    );
    assert_eq!(
        enum_at(&schema, "/$defs/consent/properties/status/anyOf/0/enum"),
        known(&["accept", "reject", "?"], |w| ConsentStatus::from_wechat(
            w
        )
        .label())
    );
    assert_eq!(
        enum_at(&schema, "/$defs/authorization/properties/status/enum"),
        set(AuthorizationStatus::ALL.map(AuthorizationStatus::as_str))
    );
    // The kinds the worker publishes.
    let kinds = set([
        Kind::Send,
        Kind::Receipt,
        Kind::Consent,
        Kind::Event,
        Kind::Authorization,
    ]
    .map(Kind::as_str));
    assert_eq!(enum_at(&schema, "/properties/kind/enum"), kinds);
    assert_eq!(
        enum_at(&schema, "/$defs/send/properties/type/enum"),
        set(job::MsgType::ALL.map(job::MsgType::as_str))
    );
    assert_eq!(
        reasons_titled(&schema, "errcode table"),
        set(wxdispatch::wechat::errcode::TABLE.iter().map(|e| e.reason))
    );
    assert_eq!(
        reasons_titled(&schema, "end reasons"),
        set(wxdispatch::policy::EndReason::ALL.map(|r| r.as_str()))
    );
    assert_eq!(
        reasons_titled(&schema, "invalid job"),
        invalid_job_reasons()
    );
    assert!(
        invalid_job_reasons().len() >= 15,
        "the scan for InvalidJob reasons found too few: {:?}",
        invalid_job_reasons()
    );
}

/// The AsyncAPI document parses, references the two schemas (which exist), and its channels
/// are the queues and exchange the worker declares with the default settings.
#[test]
fn the_asyncapi_channels_are_the_declared_topology() {
    let text = std::fs::read_to_string(root().join("docs/asyncapi.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).expect("docs/asyncapi.yaml parses as YAML");
    assert_eq!(doc["asyncapi"], "3.0.0");
    let config =
        Config::from_sources(None, &std::collections::BTreeMap::<String, String>::new()).unwrap();
    let amqp = &config.amqp;
    let channels = doc["channels"].as_object().expect("channels");
    let queue_of = |name: &str| {
        let c = &channels[name];
        assert_eq!(c["bindings"]["amqp"]["is"], "queue", "{name}");
        assert_eq!(c["bindings"]["amqp"]["queue"]["durable"], true, "{name}");
        assert_eq!(
            c["address"], c["bindings"]["amqp"]["queue"]["name"],
            "{name}"
        );
        c["address"].as_str().unwrap().to_string()
    };
    assert_eq!(queue_of("jobs"), amqp.jobs_queue);
    assert_eq!(queue_of("dead"), amqp.dead_queue);
    assert_eq!(queue_of("outcomesQueue"), amqp.outcomes_queue);
    assert_eq!(
        channels["outcomesQueue"]["x-wxdispatch-bound-to"],
        serde_json::json!({"exchange": amqp.outcomes_exchange, "routingKey": "#"})
    );
    let exchange = &channels["outcomes"]["bindings"]["amqp"]["exchange"];
    assert_eq!(exchange["name"], amqp.outcomes_exchange.as_str());
    assert_eq!(
        (&exchange["type"], &exchange["durable"]),
        (&"topic".into(), &true.into())
    );
    assert_eq!(
        set(channels["outcomes"]["parameters"]["kind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())),
        enum_at(
            &read_json("docs/schema/outcome.schema.json"),
            "/properties/kind/enum"
        )
    );

    // Every delay tier the worker declares is the delay channel with one of its tiers.
    let delay = &channels["delay"];
    let tiers: Vec<String> = delay["parameters"]["tier"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let from_doc: BTreeSet<String> = tiers
        .iter()
        .map(|t| delay["address"].as_str().unwrap().replace("{tier}", t))
        .collect();
    let declared: BTreeSet<String> = wxdispatch::amqp::topology::queues(&config)
        .into_iter()
        .filter(|q| ![&amqp.jobs_queue, &amqp.dead_queue, &amqp.outcomes_queue].contains(&q))
        .collect();
    assert_eq!(from_doc, declared, "the delay tiers");
    assert_eq!(
        doc.pointer("/components/schemas/retryHeaders/properties/x-wxd-reason/enum"),
        Some(&serde_json::json!(
            wxdispatch::policy::DeferReason::ALL.map(|r| r.as_str())
        ))
    );

    // Payloads are $refs to the schema files, which exist and compile.
    let messages = doc["components"]["messages"].as_object().unwrap();
    let mut refs = BTreeSet::new();
    for (name, m) in messages {
        if let Some(r) = m["payload"]["$ref"].as_str() {
            let path = Path::new("docs").join(r.trim_start_matches("./"));
            assert!(root().join(&path).is_file(), "{name}: {r}");
            refs.insert(path.display().to_string());
        }
    }
    assert_eq!(
        refs,
        set([
            "docs/schema/job.schema.json",
            "docs/schema/outcome.schema.json"
        ])
    );
    // Every $ref inside the document resolves.
    let mut local_refs = Vec::new();
    collect_refs(&doc, &mut local_refs);
    for r in local_refs.iter().filter(|r| r.starts_with("#/")) {
        let pointer = r.trim_start_matches('#').replace("~1", "/");
        assert!(doc.pointer(&pointer).is_some(), "unresolved $ref {r}");
    }
    assert!(local_refs.len() > 10);
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A 19-digit msgid (past 2^53, where JavaScript's `JSON.parse` rounds) comes back exact in
/// `msgid` and as `msgid_str`. The simulator's msgids start there, so every send and receipt
/// outcome of the other tests carries one too, and [`check_outcome`] compares the two fields
/// on each (the receipt tests' end-to-end run among them).
#[tokio::test]
async fn a_19_digit_msgid_travels_as_a_string_too() {
    let h = Harness::start(Opts::default()).await;
    h.publish(&crate::helpers::job("msgid-19", "user-msgid-19"))
        .await;
    let out = h.outcomes(1, Duration::from_secs(20)).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["status"], "sent", "{}", out[0]);
    assert_eq!(out[0]["msgid"].as_i64(), Some(3_662_956_322_040_938_501));
    assert_eq!(out[0]["msgid_str"], "3662956322040938501");
    assert_eq!(
        wxdispatch::tools::mock::FIRST_MSGID,
        3_662_956_322_040_938_501
    );
    h.cleanup().await;
}

/// A RabbitMQ user with full rights on vhost `/` (password: its name), created if missing.
/// Never deleted: a parallel run may be using it.
fn broker_user(name: &str) {
    let ctl = |args: &[&str]| {
        std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl (the tests run as root beside the broker)")
    };
    let _ = ctl(&["add_user", name, name]); // fails harmlessly when the user exists
    let out = ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
    assert!(out.status.success(), "set_permissions {name}: {out:?}");
}

/// Publishes `job` over a connection of RabbitMQ user `user`, with `user_id` set to it (the
/// broker refuses any other), persistent and confirmed.
async fn publish_as(h: &Harness, user: &str, job: &Value) {
    let url = format!("amqp://{user}:{user}@127.0.0.1:5672/%2f");
    let conn = wxdispatch::amqp::connect(&url, "wxdispatch-test-publisher")
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    let publisher = wxdispatch::amqp::Publisher::new(&conn, &h.config)
        .await
        .unwrap();
    let props = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_user_id(user.into());
    publisher
        .publish(
            "",
            &h.config.amqp.jobs_queue,
            &serde_json::to_vec(job).unwrap(),
            props,
        )
        .await
        .unwrap_or_else(|e| panic!("publish as {user}: {e}"));
    let _ = conn.close(200, "done".into()).await;
}

/// An account with `publishers` sends only the jobs of the users listed: every other job (a
/// stranger's, one without `user_id`, a stranger's batch) ends `rejected` with reason
/// `publisher_not_allowed`, never reaches WeChat and is counted. A listed publisher's jobs go
/// through every path that republishes them (a batch's expansion, a deferral through a delay
/// queue, a dead letter), where the worker stamps its own user on them.
#[tokio::test]
async fn only_the_listed_publishers_may_send_as_an_account() {
    broker_user("wxd-test-billing");
    broker_user("wxd-test-intruder");
    let h = Harness::start(Opts {
        env: &[
            ("WXD_PUBLISHERS", "wxd-test-billing,wxd-test-crm"),
            // Every retry goes through a delay queue, so the deferral path is taken.
            ("WXD_INLINE_RETRY_MAX_MS", "0"),
        ],
        ..Opts::default()
    })
    .await;
    let job = crate::helpers::job;
    publish_as(&h, "wxd-test-billing", &job("pub-billing", "o-billing")).await;
    let mut batch = job("pub-billing-batch", "o");
    batch["touser"] = serde_json::json!(["o-batch-1", "o-batch-2"]);
    publish_as(&h, "wxd-test-billing", &batch).await;
    publish_as(
        &h,
        "wxd-test-billing",
        &job("pub-billing-deferred", "flaky:-1:1:pub"),
    )
    .await;
    publish_as(
        &h,
        "wxd-test-billing",
        &serde_json::json!({"id": "pub-billing-bad", "touser": "o"}),
    )
    .await;
    publish_as(&h, "wxd-test-intruder", &job("pub-intruder", "o-intruder")).await;
    let mut stranger_batch = job("pub-intruder-batch", "o");
    stranger_batch["touser"] = serde_json::json!(["o-x-1", "o-x-2"]);
    publish_as(&h, "wxd-test-intruder", &stranger_batch).await;
    h.publish(&job("pub-anonymous", "o-anonymous")).await; // no user_id at all

    let out = h.outcomes(8, Duration::from_secs(30)).await;
    let by_id: std::collections::BTreeMap<String, Vec<&Value>> =
        out.iter().fold(Default::default(), |mut m, o| {
            m.entry(o["id"].as_str().unwrap().to_string())
                .or_default()
                .push(o);
            m
        });
    let statuses = |id: &str| -> Vec<String> {
        by_id
            .get(id)
            .map(|v| {
                v.iter()
                    .map(|o| {
                        format!(
                            "{}:{}",
                            o["status"].as_str().unwrap(),
                            o["reason"].as_str().unwrap_or("-")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(statuses("pub-billing"), ["sent:-"], "{out:?}");
    assert_eq!(
        statuses("pub-billing-batch"),
        ["sent:-", "sent:-"],
        "{out:?}"
    );
    assert_eq!(statuses("pub-billing-deferred"), ["sent:-"], "{out:?}");
    assert_eq!(by_id["pub-billing-deferred"][0]["attempts"], 2, "{out:?}");
    assert_eq!(
        statuses("pub-billing-bad"),
        ["invalid:missing_template_id"],
        "{out:?}"
    );
    for id in ["pub-intruder", "pub-intruder-batch", "pub-anonymous"] {
        assert_eq!(
            statuses(id),
            ["rejected:publisher_not_allowed"],
            "{id}: {out:?}"
        );
    }
    assert!(
        by_id["pub-intruder-batch"][0]["touser"].is_null(),
        "one outcome for the batch"
    );
    assert_eq!(out.len(), 8, "{out:?}");

    let stats = h.mock.state.stats();
    assert_eq!(
        stats.messages, 4,
        "only the listed publisher's four messages reach WeChat"
    );
    let refused = crate::helpers::metric(
        &h.metrics().await,
        &format!(
            "wxdispatch_publisher_refused_total{{appid=\"{}\"}}",
            crate::helpers::APPID
        ),
    );
    assert_eq!(refused, 3.0);
    let dead = h
        .read(&h.config.amqp.dead_queue, 1, Duration::from_secs(5))
        .await;
    assert_eq!(dead.len(), 1, "the invalid job is dead-lettered");
    h.cleanup().await;
}
