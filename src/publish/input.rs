//! The input of a run, read in full before anything is sent: JSON Lines, or a CSV of
//! recipients made into one job per row.

use std::io::BufRead;

use serde_json::{Map, Value};

use crate::job::InvalidJob;

/// One job of the input: where it came from and its body, or why the input line could not
/// even be turned into a body (a malformed CSV row).
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based line number in the input (the first line of a CSV record).
    pub number: usize,
    pub body: Result<Vec<u8>, InvalidJob>,
}

/// Reads JSON Lines: one job per line, blank lines ignored, line numbers kept for reports.
/// Bodies are kept as bytes, so a line that is not UTF-8 is reported like any other bad line.
pub fn read_jsonl(mut reader: impl BufRead) -> std::io::Result<Vec<Line>> {
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(lines);
        }
        number += 1;
        let mut body = buf.trim_ascii();
        if number == 1 {
            body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
        }
        if !body.is_empty() {
            lines.push(Line {
                number,
                body: Ok(body.to_vec()),
            });
        }
    }
}

/// Why a CSV file cannot be used at all (as opposed to one bad row, which is an invalid line).
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("the file is empty; the first line must name the columns")]
    Empty,
    #[error("no touser column; the header must name one")]
    NoTouser,
    #[error("column {0:?} appears twice")]
    Duplicate(String),
    #[error(
        "unknown column {0:?}; use touser, id, appid, url, not_after, topcolor, \
         miniprogram.appid, miniprogram.pagepath, data.<Key> or data.<Key>.color"
    )]
    Unknown(String),
    #[error("the header (line 1): {0}")]
    BadHeader(String),
}

/// What a CSV column becomes in the job.
#[derive(Debug, PartialEq)]
enum Column {
    /// A top-level string field (`touser`, `id`, `url` ...); empty cells are left out.
    Top(&'static str),
    /// A `miniprogram` field.
    Mini(&'static str),
    /// `data.<Key>.value`.
    Value(String),
    /// `data.<Key>.color`; empty cells are left out.
    Color(String),
}

impl Column {
    fn parse(name: &str) -> Result<Column, CsvError> {
        const TOP: [&str; 6] = ["touser", "id", "appid", "url", "not_after", "topcolor"];
        if let Some(top) = TOP.iter().find(|t| **t == name) {
            return Ok(Column::Top(top));
        }
        match name {
            "miniprogram.appid" => return Ok(Column::Mini("appid")),
            "miniprogram.pagepath" => return Ok(Column::Mini("pagepath")),
            _ => {}
        }
        match name.strip_prefix("data.") {
            Some(key) => match key.strip_suffix(".color") {
                Some(k) if !k.is_empty() => Ok(Column::Color(k.to_string())),
                _ if !key.is_empty() => Ok(Column::Value(key.to_string())),
                _ => Err(CsvError::Unknown(name.to_string())),
            },
            None => Err(CsvError::Unknown(name.to_string())),
        }
    }
}

/// Turns a CSV of recipients into one job per row, all with `template_id`.
///
/// The header names the columns: `touser` (required), `id`, `appid`, `url`, `not_after`,
/// `topcolor`, `miniprogram.appid`, `miniprogram.pagepath`, `data.<Key>` (the value of
/// `data.<Key>`) and `data.<Key>.color`. Fields may be quoted (RFC 4180), so values can hold
/// commas, quotes and line breaks. A bad row is an invalid line; a bad header is an error.
pub fn read_csv(text: &str, template_id: &str) -> Result<Vec<Line>, CsvError> {
    // Spreadsheets often begin their CSV exports with a UTF-8 byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = records(text).into_iter();
    let header = records.next().ok_or(CsvError::Empty)?;
    if let Some(e) = header.error {
        return Err(CsvError::BadHeader(e));
    }
    let mut columns = Vec::new();
    for name in &header.fields {
        let name = name.trim();
        if header.fields.iter().filter(|n| n.trim() == name).count() > 1 {
            return Err(CsvError::Duplicate(name.to_string()));
        }
        columns.push(Column::parse(name)?);
    }
    if !columns.contains(&Column::Top("touser")) {
        return Err(CsvError::NoTouser);
    }
    Ok(records
        .map(|r| Line {
            number: r.line,
            body: row_to_job(&columns, r, template_id),
        })
        .collect())
}

fn row_to_job(columns: &[Column], r: Record, template_id: &str) -> Result<Vec<u8>, InvalidJob> {
    if let Some(e) = r.error {
        return Err(InvalidJob::new("bad_csv_row", e));
    }
    if r.fields.len() != columns.len() {
        return Err(InvalidJob::new(
            "bad_csv_row",
            format!(
                "the row has {} fields, the header has {}",
                r.fields.len(),
                columns.len()
            ),
        ));
    }
    let mut job = Map::new();
    job.insert("template_id".into(), Value::String(template_id.into()));
    let mut data = Map::new();
    let mut mini = Map::new();
    let field = |data: &mut Map<String, Value>, key: &str, name: &str, v: String| {
        let entry = data
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(name.into(), Value::String(v));
        }
    };
    for (col, value) in columns.iter().zip(r.fields) {
        match col {
            Column::Top(name) => {
                let v = value.trim();
                if !v.is_empty() {
                    job.insert((*name).into(), Value::String(v.into()));
                }
            }
            Column::Mini(name) => {
                let v = value.trim();
                if !v.is_empty() {
                    mini.insert((*name).into(), Value::String(v.into()));
                }
            }
            Column::Value(key) => field(&mut data, key, "value", value),
            Column::Color(key) => {
                if !value.trim().is_empty() {
                    field(&mut data, key, "color", value.trim().to_string());
                }
            }
        }
    }
    if !data.is_empty() {
        job.insert("data".into(), Value::Object(data));
    }
    if !mini.is_empty() {
        job.insert("miniprogram".into(), Value::Object(mini));
    }
    Ok(serde_json::to_vec(&Value::Object(job)).expect("a JSON map always serializes"))
}

/// One CSV record and the line it starts on.
#[derive(Debug, PartialEq)]
struct Record {
    line: usize,
    fields: Vec<String>,
    /// Why the record is malformed (a stray quote, an unterminated field).
    error: Option<String>,
}

/// Reads the records of a CSV (RFC 4180: comma-separated, `"` quotes fields that hold commas,
/// quotes (doubled) or line breaks; LF, CRLF or CR line ends; blank lines are skipped).
///
/// The `csv` crate forgives two slips that RFC 4180 does not: text after a closing quote joins
/// the field (`"ab"c` reads as `abc`), and a quote that is never closed takes the rest of the
/// file. In a campaign file either is a typo, so such a record is kept as malformed (an invalid
/// line) instead of being sent with a value nobody wrote.
fn records(text: &str) -> Vec<Record> {
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        // A row with another number of fields than the header is one invalid line, not an
        // error of the whole file: `row_to_job` reports it.
        .flexible(true)
        .from_reader(text.as_bytes());
    reader
        .into_records()
        .map(|record| {
            let record = record.expect(
                "reading a &str never fails: the input is UTF-8 and rows may have any length",
            );
            let pos = record
                .position()
                .expect("the reader sets each record's position");
            // A record's position is where the previous one ended: before its line end (the
            // `\n` of a CRLF) and before the blank lines the reader skips.
            let rest = &text[pos.byte() as usize..];
            let raw = rest.trim_start_matches(['\r', '\n']);
            let skipped = rest[..rest.len() - raw.len()].matches('\n').count();
            Record {
                line: pos.line() as usize + skipped,
                error: quoting_error(raw, &record),
                fields: record.iter().map(String::from).collect(),
            }
        })
        .collect()
}

/// Why `raw`, the text from the record's first byte on, is not exactly what `record` was read
/// from: a quoted field whose closing quote is followed by more than a comma or a line end, or
/// one never closed. The reader takes an unquoted field literally and a quoted one as its text
/// with `""` for `"`, so each field's raw text follows from its value.
fn quoting_error(raw: &str, record: &csv::StringRecord) -> Option<String> {
    let mut rest = raw;
    for field in record {
        let after = match rest.strip_prefix('"') {
            None => &rest[field.len()..],
            Some(quoted) => {
                let escaped = field.replace('"', "\"\"");
                match quoted.strip_prefix(escaped.as_str()) {
                    Some(end) => match end.strip_prefix('"') {
                        Some(after) => after,
                        None => return Some("a quoted field is never closed".to_string()),
                    },
                    None => {
                        // The text after the closing quote was joined to the value, so the two
                        // first differ at that quote (ASCII: the next byte starts a character).
                        let close = quoted
                            .bytes()
                            .zip(escaped.bytes())
                            .take_while(|(a, b)| a == b)
                            .count();
                        let c = quoted[close + 1..].chars().next().unwrap_or('"');
                        return Some(format!(
                            "unexpected {c:?} after a closing quote (quote the whole field)"
                        ));
                    }
                }
            }
        };
        // Past the comma (or the line end, after the last field).
        rest = after.get(1..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_keeps_line_numbers_and_skips_blank_lines() {
        let input = "\u{feff}{\"a\":1}\r\n\n   \n{\"b\":2}\nnot json";
        let lines = read_jsonl(input.as_bytes()).unwrap();
        let got: Vec<(usize, String)> = lines
            .into_iter()
            .map(|l| (l.number, String::from_utf8(l.body.unwrap()).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (1, r#"{"a":1}"#.to_string()),
                (4, r#"{"b":2}"#.to_string()),
                (5, "not json".to_string())
            ]
        );
    }

    #[test]
    fn csv_fields_may_hold_commas_quotes_and_line_breaks() {
        let text =
            "a,b,c\r\n1,\"x, \"\"y\"\"\",3\r\n\r\n\"multi\nline\",,\"\"\nlast,row,\"unterminated";
        let r = records(text);
        let rows: Vec<(usize, Vec<&str>, bool)> = r
            .iter()
            .map(|r| {
                (
                    r.line,
                    r.fields.iter().map(String::as_str).collect(),
                    r.error.is_some(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (1, vec!["a", "b", "c"], false),
                (2, vec!["1", "x, \"y\"", "3"], false),
                (4, vec!["multi\nline", "", ""], false),
                (6, vec!["last", "row", "unterminated"], true),
            ]
        );
        let stray = records("\"ab\"c,d\n");
        assert!(stray[0].error.as_deref().unwrap().contains("closing quote"));
    }

    #[test]
    fn csv_rows_become_jobs_with_data_values_and_colors() {
        let text = "touser,id,data.User,data.User.color,url,miniprogram.pagepath\n\
                    o1,j1,\"黄先生, VIP\",#173177,http://x,index?a=1\n\
                    o2,,Li,,,\n\
                    o3,j3\n";
        let lines = read_csv(text, "tmpl").unwrap();
        let jobs: Vec<Value> = lines
            .iter()
            .filter_map(|l| l.body.as_ref().ok())
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect();
        assert_eq!(
            jobs[0],
            serde_json::json!({"touser":"o1","id":"j1","template_id":"tmpl","url":"http://x",
                "miniprogram":{"pagepath":"index?a=1"},
                "data":{"User":{"value":"黄先生, VIP","color":"#173177"}}})
        );
        assert_eq!(
            jobs[1],
            serde_json::json!({"touser":"o2","template_id":"tmpl","data":{"User":{"value":"Li"}}})
        );
        let bad = lines[2].body.as_ref().unwrap_err();
        assert_eq!((lines[2].number, bad.reason), (4, "bad_csv_row"));
    }

    #[test]
    fn a_csv_may_begin_with_a_byte_order_mark() {
        let lines = read_csv("\u{feff}\"touser\",data.X\r\no1,\"a\"\r\n", "t").unwrap();
        let job: Value = serde_json::from_slice(lines[0].body.as_ref().unwrap()).unwrap();
        assert_eq!(
            (lines.len(), lines[0].number, job),
            (
                1,
                2,
                serde_json::json!({"touser":"o1","template_id":"t","data":{"X":{"value":"a"}}})
            )
        );
    }

    #[test]
    fn a_csv_header_must_name_touser_and_only_known_columns() {
        assert!(matches!(read_csv("", "t"), Err(CsvError::Empty)));
        assert!(matches!(
            read_csv("id,data.X\n", "t"),
            Err(CsvError::NoTouser)
        ));
        assert!(matches!(
            read_csv("touser,toUser2\n", "t"),
            Err(CsvError::Unknown(c)) if c == "toUser2"
        ));
        assert!(matches!(
            read_csv("touser,data.A,data.A\n", "t"),
            Err(CsvError::Duplicate(c)) if c == "data.A"
        ));
    }
}
