//! The docs back their claims with test names; a test renamed or moved must not leave a
//! citation pointing at nothing. Every test cited in README.md and docs/*.md must exist where
//! the citation says. Citations are code spans of these forms:
//! - `path/to/file.rs::name`: a `fn name` in that file (the path from the repository root);
//! - `::name` right after such a citation: a `fn name` in the same file;
//! - `module::tests::name`: a `fn name` in `module.rs`, `module/mod.rs`, `module/tests.rs` or
//!   `module_tests.rs` anywhere under src/;
//! - a bare snake_case name of five words or more (not a metric name): a `fn name` anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `.rs` file under `dir`, recursively.
pub(crate) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The names after `fn ` in a source text.
fn fn_names(text: &str) -> BTreeSet<String> {
    text.match_indices("fn ")
        .filter(|(i, _)| *i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
        .map(|(i, _)| {
            text[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The functions of the source tree, by file (relative to the repository root).
fn source_functions() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples", "fuzz"] {
        rust_files(&Path::new(ROOT).join(dir), &mut files);
    }
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = p.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned();
            (rel, fn_names(&text))
        })
        .collect()
}

/// The code spans of a Markdown text outside fenced blocks, with their line numbers.
fn code_spans(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for (k, span) in line.split('`').enumerate() {
            if k % 2 == 1 {
                out.push((i + 1, span.to_string()));
            }
        }
    }
    out
}

/// What is wrong with each stale citation of `text` (a document named `doc`).
fn stale_citations(doc: &str, text: &str, fns: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let has = |file: &str, name: &str| fns.get(file).is_some_and(|f| f.contains(name));
    let anywhere = |name: &str| fns.iter().any(|(_, f)| f.contains(name));
    let mut stale = Vec::new();
    let mut last_file: Option<String> = None;
    for (line, span) in code_spans(text) {
        let at = format!("{doc}:{line}: `{span}`");
        if let Some((file, name)) = span.split_once(".rs::")
            && is_ident(name)
            && !file.contains(char::is_whitespace)
        {
            let file = format!("{file}.rs");
            if !fns.contains_key(&file) {
                stale.push(format!("{at}: no file {file}"));
            } else if !has(&file, name) {
                stale.push(format!("{at}: no fn {name} in {file}"));
            }
            last_file = Some(file);
        } else if let Some(name) = span.strip_prefix("::")
            && is_ident(name)
        {
            match &last_file {
                Some(file) if has(file, name) => {}
                Some(file) => stale.push(format!("{at}: no fn {name} in {file}")),
                None => stale.push(format!("{at}: no file cited before it")),
            }
        } else if let Some((module_path, name)) = span.rsplit_once("::tests::")
            && is_ident(name)
            && module_path.split("::").all(is_ident)
        {
            let module = module_path.rsplit("::").next().unwrap();
            let found = fns.iter().any(|(file, f)| {
                file.starts_with("src/")
                    && [
                        format!("/{module}.rs"),
                        format!("/{module}/mod.rs"),
                        format!("/{module}/tests.rs"),
                        format!("/{module}_tests.rs"),
                    ]
                    .iter()
                    .any(|end| file.ends_with(end))
                    && f.contains(name)
            });
            if !found {
                stale.push(format!(
                    "{at}: no fn {name} in a module `{module}` under src/"
                ));
            }
        } else if is_ident(&span)
            && span.split('_').count() >= 5
            && span.chars().all(|c| !c.is_ascii_uppercase())
            && !span.starts_with("wxdispatch_")
            && !span.starts_with("rabbitmq_")
            && !anywhere(&span)
        {
            stale.push(format!("{at}: no fn {span} anywhere"));
        }
    }
    stale
}

/// Every test the docs cite exists where the citation says.
#[test]
fn every_test_the_docs_cite_exists() {
    let fns = source_functions();
    let mut docs = vec![PathBuf::from(ROOT).join("README.md")];
    for e in std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "md") {
            docs.push(e.path());
        }
    }
    let mut stale = Vec::new();
    let mut cited = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let name = doc
            .strip_prefix(ROOT)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        cited += code_spans(&text)
            .iter()
            .filter(|(_, s)| s.contains(".rs::") || s.contains("::tests::"))
            .count();
        stale.extend(stale_citations(&name, &text, &fns));
    }
    assert!(
        cited > 50,
        "only {cited} citations found: is the parser broken?"
    );
    assert!(
        stale.is_empty(),
        "stale test citations (renamed or moved tests? fix the docs):\n{}",
        stale.join("\n")
    );
}

/// The checker itself: each form of citation, right and stale.
#[test]
fn stale_citations_of_each_form_are_found() {
    let mut fns = BTreeMap::new();
    fns.insert(
        "src/policy.rs".to_string(),
        BTreeSet::from(["a_spent_budget_gives_up_with_the_right_reason".to_string()]),
    );
    fns.insert("src/dispatch.rs".to_string(), BTreeSet::new());
    let ok = "`src/policy.rs::a_spent_budget_gives_up_with_the_right_reason`, \
              `::a_spent_budget_gives_up_with_the_right_reason`, \
              `policy::tests::a_spent_budget_gives_up_with_the_right_reason`, \
              `a_spent_budget_gives_up_with_the_right_reason`, `retry_budget_secs`, \
              `wxdispatch_limiter_wait_seconds_per_account`";
    assert_eq!(stale_citations("ok.md", ok, &fns), Vec::<String>::new());
    let bad = "`src/dispatch.rs::a_spent_budget_gives_up_with_the_right_reason`\n\
               `::gone_test_name`\n\
               `dispatch::tests::a_spent_budget_gives_up_with_the_right_reason`\n\
               `src/gone.rs::x`\n\
               `a_renamed_test_that_is_gone`\n\
               ```\n`src/fenced.rs::not_a_citation`\n```";
    let stale = stale_citations("bad.md", bad, &fns);
    assert_eq!(stale.len(), 5, "{stale:#?}");
    assert!(stale[0].starts_with("bad.md:1:"), "{}", stale[0]);
    assert!(
        stale[0].contains("no fn a_spent_budget_gives_up_with_the_right_reason in src/dispatch.rs")
    );
    assert!(stale[2].contains("module `dispatch`"), "{}", stale[2]);
    assert!(stale[3].contains("no file src/gone.rs"), "{}", stale[3]);
}
