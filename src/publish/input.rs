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
    let mut records = parse_csv(text).into_iter();
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

/// A small RFC 4180 reader: comma-separated, `"` quotes fields that hold commas, quotes
/// (doubled) or line breaks; LF or CRLF line ends; blank lines are skipped.
fn parse_csv(text: &str) -> Vec<Record> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut touched = false; // the current field has begun (a char or an opening quote)
    let mut in_quotes = false;
    let mut closed = false; // the current field's closing quote has been seen
    let mut error: Option<String> = None;
    let mut line = 1;
    let mut start = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                    closed = true;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                (touched, closed) = (false, false);
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                let blank = fields.len() == 1 && fields[0].is_empty() && !closed;
                if !blank || error.is_some() {
                    records.push(Record {
                        line: start,
                        fields: std::mem::take(&mut fields),
                        error: error.take(),
                    });
                }
                fields.clear();
                (touched, closed) = (false, false);
                start = line;
            }
            '"' if !touched => {
                in_quotes = true;
                touched = true;
            }
            c if closed => {
                error.get_or_insert_with(|| {
                    format!("unexpected {c:?} after a closing quote (quote the whole field)")
                });
            }
            c => {
                field.push(c);
                touched = true;
            }
        }
    }
    if in_quotes {
        error.get_or_insert_with(|| "a quoted field is never closed".to_string());
    }
    if touched || !fields.is_empty() || error.is_some() {
        fields.push(field);
        records.push(Record {
            line: start,
            fields,
            error,
        });
    }
    records
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
        let r = parse_csv(text);
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
        let stray = parse_csv("\"ab\"c,d\n");
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
