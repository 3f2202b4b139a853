//! A `serial_*` test stops, blocks or clusters the broker, or measures a rate against the
//! clock: it must never run in the parallel pass. Each one is `#[ignore]`d (scripts/test.sh
//! runs them with `--run-ignored only`, one at a time) and takes the exclusive broker lock
//! first, so a new one that forgets either fails here.

use std::path::Path;

#[test]
fn every_serial_test_is_ignored_and_takes_the_broker_lock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut found = 0;
    let mut wrong = Vec::new();
    let mut files = Vec::new();
    crate::doc_citations::rust_files(&dir, &mut files);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("async fn serial_") else {
                continue;
            };
            found += 1;
            let name = format!("serial_{}", rest.split('(').next().unwrap());
            let attrs = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("#["));
            let ignored = attrs.clone().any(|l| l.contains("#[ignore = \"serial"));
            let is_test = attrs.clone().any(|l| l.contains("test"));
            let locks = lines
                .get(i + 1)
                .is_some_and(|l| l.trim() == "let _serial = serial_broker();");
            let file = path.file_name().unwrap().to_string_lossy();
            if !is_test {
                wrong.push(format!("{file}: {name} is not a test"));
            }
            if !ignored {
                wrong.push(format!("{file}: {name} lacks #[ignore = \"serial: …\"]"));
            }
            if !locks {
                wrong.push(format!(
                    "{file}: {name} does not begin with `let _serial = serial_broker();`"
                ));
            }
        }
    }
    assert!(found >= 10, "only {found} serial_ tests found");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
