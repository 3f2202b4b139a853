//! `wxdispatch publish`: enqueue a campaign from JSON Lines or a CSV of recipients.
//!
//! The input is read and validated in full before the first message is sent, with the same
//! parser the worker uses ([`job::parse`]), so a typo in a campaign file is reported with its
//! line number instead of becoming hundreds of dead letters. Valid jobs are then published to
//! the jobs queue with publisher confirms, many in flight at once, optionally throttled. A job
//! only counts as published once the broker has confirmed it.
//!
//! Publishing never needs a WeChat secret: [`load_config`] reads the same file and `WXD_*`
//! settings as the worker but never reads a secret. Jobs are checked against the configured
//! accounts (an unknown `appid` is an invalid line). With no account configured at all, only the
//! shape of each job is checked and the worker has the final word on its `appid`.
//!
//! Exit codes of the command: `0` every line was valid and every job confirmed; `1` a job was
//! not confirmed or the run could not start (re-running the same input is safe: every job keeps
//! its id, and WeChat deduplicates on it); `2` some lines were invalid (reported, never sent;
//! the valid ones were published, or nothing was with `--strict`).

use std::io::{BufRead, IsTerminal, Read};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::BasicProperties;
use serde_json::{Map, Value};

use crate::amqp::{self, PublishError, Publisher};
use crate::cli::PublishArgs;
use crate::config::{Account, Config, ConfigError};
use crate::job::{self, InvalidJob, Parsed};

/// Publishes awaiting their confirm at once. Enough to keep a remote broker busy; bounded so a
/// huge campaign does not hold every body in the client's write buffer at the same time.
const MAX_IN_FLIGHT: usize = 256;
/// Invalid or failed lines printed one by one before the rest are only counted.
const MAX_REPORTED: usize = 100;
/// How often the plain (non-terminal) progress line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One job of the input: where it came from and its body, or why the input line could not
/// even be turned into a body (a malformed CSV row).
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based line number in the input (the first line of a CSV record).
    pub number: usize,
    pub body: Result<Vec<u8>, InvalidJob>,
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// Nothing at all (library use, tests).
    #[default]
    Quiet,
    /// Invalid lines, a progress line every few seconds and a summary (logs, CI).
    Plain,
    /// Invalid lines, an indicatif progress bar and a summary (a terminal).
    Bar,
}

/// Options of a publish run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// At most this many jobs per second; `None` publishes as fast as confirms come back.
    pub rate: Option<NonZeroU32>,
    /// Refuse to send anything if any line is invalid.
    pub strict: bool,
    pub progress: Progress,
    /// Validate and report, but never connect to the broker nor publish.
    pub dry_run: bool,
}

/// A line that was not published because it is not a valid job.
#[derive(Debug, Clone)]
pub struct InvalidLine {
    pub line: usize,
    pub reason: &'static str,
    pub detail: String,
}

/// A valid job the broker did not confirm.
#[derive(Debug, Clone)]
pub struct FailedLine {
    pub line: usize,
    pub id: String,
    pub error: String,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Jobs in the input (non-blank lines, or CSV rows).
    pub lines: usize,
    /// Jobs the broker confirmed.
    pub published: usize,
    /// Recipients of the confirmed jobs (a batch counts each of its openids).
    pub recipients: usize,
    pub invalid: Vec<InvalidLine>,
    pub failed: Vec<FailedLine>,
    /// `--strict` found invalid lines, so nothing was sent.
    pub aborted: bool,
    /// `--dry-run`: nothing was published, and no broker was contacted.
    pub dry_run: bool,
    /// With `dry_run`: the jobs that passed validation and would have been published.
    pub would_publish: usize,
    /// The whole run, reading and connecting included.
    pub elapsed: Duration,
    /// From the first publish to the last confirm: what `--rate` paces.
    pub publishing: Duration,
}

impl Summary {
    /// `1` if any job was not confirmed (re-run it), else `2` if any line was invalid (fix
    /// the input), else `0`.
    pub fn exit_code(&self) -> i32 {
        if !self.failed.is_empty() {
            1
        } else if !self.invalid.is_empty() {
            2
        } else {
            0
        }
    }
}

/// `wxdispatch publish`: returns the process exit code.
pub async fn command(config_file: Option<&Path>, args: PublishArgs) -> anyhow::Result<i32> {
    let config = load_config(config_file)?;
    let lines = match (&args.csv, &args.template_id) {
        (Some(path), Some(template_id)) => {
            let mut text = String::new();
            open(path)?
                .read_to_string(&mut text)
                .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
            read_csv(&text, template_id).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("--csv and --template-id go together")
        }
        (None, None) => {
            let path = args.file.clone().unwrap_or_else(|| PathBuf::from("-"));
            read_jsonl(open(&path)?).with_context(|| format!("cannot read {}", path.display()))?
        }
    };
    let progress = if std::io::stderr().is_terminal() {
        Progress::Bar
    } else {
        Progress::Plain
    };
    let opts = Options {
        rate: args.rate,
        strict: args.strict,
        progress,
        dry_run: args.dry_run,
    };
    let summary = run(&config, lines, &opts).await?;
    Ok(summary.exit_code())
}

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(f)))
}

/// Reads JSON Lines, then validates and publishes them: [`read_jsonl`] and [`run`].
pub async fn run_lines(
    config: &Config,
    reader: impl BufRead,
    opts: &Options,
) -> anyhow::Result<Summary> {
    let lines = read_jsonl(reader).context("cannot read the input")?;
    run(config, lines, opts).await
}

/// Validates every line, then (unless `--strict` found invalid ones) publishes the valid jobs
/// to the jobs queue with confirms. Declares the topology first, so a fresh broker works.
///
/// An `Err` means the run could not start (broker unreachable, topology mismatch); jobs that
/// were not confirmed once publishing started are in [`Summary::failed`] instead.
pub async fn run(config: &Config, lines: Vec<Line>, opts: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary {
        lines: lines.len(),
        ..Summary::default()
    };
    let mut validator = Validator::new(config);
    let mut valid = Vec::new();
    for line in lines {
        match line
            .body
            .and_then(|b| validator.check(&b).map(|(id, n)| (b, id, n)))
        {
            Ok((body, id, recipients)) => valid.push(Valid {
                line: line.number,
                id,
                recipients,
                body,
            }),
            Err(e) => summary.invalid.push(InvalidLine {
                line: line.number,
                reason: e.reason,
                detail: e.detail,
            }),
        }
    }
    let mut report = Reporter::new(opts.progress);
    report.invalid(&summary.invalid);
    if opts.strict && !summary.invalid.is_empty() {
        summary.aborted = true;
        summary.elapsed = started.elapsed();
        report.summary(&summary);
        return Ok(summary);
    }
    if opts.dry_run {
        summary.dry_run = true;
        summary.would_publish = valid.len();
        summary.recipients = valid.iter().map(|v| v.recipients).sum();
        summary.elapsed = started.elapsed();
        report.summary(&summary);
        return Ok(summary);
    }

    if !valid.is_empty() {
        let conn = amqp::connect(&config.amqp.url, "wxdispatch-publish")
            .await
            .with_context(|| {
                format!(
                    "cannot reach RabbitMQ at {} (set WXD_AMQP_URL)",
                    crate::config::redact_url(&config.amqp.url)
                )
            })?;
        let publisher = Publisher::new(&conn, config).await?;
        amqp::topology::ensure(&conn, publisher.channel(), config)
            .await
            .context("cannot declare the queues (do they exist with other arguments?)")?;
        publish_all(
            config,
            &publisher,
            &valid,
            opts.rate,
            &mut report,
            &mut summary,
        )
        .await;
        let _ = conn.close(200, "published".into()).await;
    }
    summary.elapsed = started.elapsed();
    report.summary(&summary);
    Ok(summary)
}

/// A job that passed validation.
struct Valid {
    line: usize,
    id: String,
    recipients: usize,
    body: Vec<u8>,
}

async fn publish_all(
    config: &Config,
    publisher: &Publisher,
    valid: &[Valid],
    rate: Option<NonZeroU32>,
    report: &mut Reporter,
    summary: &mut Summary,
) {
    // A burst of 1: the rate holds in every second, not just on average.
    let limiter = rate.map(|r| {
        governor::RateLimiter::direct(governor::Quota::per_second(r).allow_burst(NonZeroU32::MIN))
    });
    let limiter = limiter.as_ref();
    let queue = config.amqp.jobs_queue.as_str();
    report.start(valid.len());
    let started = Instant::now();
    // `buffer_unordered` keeps polling the confirms in flight while the next job waits for
    // the limiter, so throttling never delays a confirm.
    let results = futures_util::stream::iter(valid)
        .then(|v| async move {
            if let Some(l) = limiter {
                l.until_ready().await;
            }
            v
        })
        .map(|v| async move {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(v.id.as_str().into())
                // The publish time lets the worker report each job's age from publish to
                // outcome (wxdispatch_job_publish_latency_seconds), and the broker its head age.
                .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
            (v, publisher.publish("", queue, &v.body, props).await)
        })
        .buffer_unordered(MAX_IN_FLIGHT);
    let mut results = std::pin::pin!(results);
    while let Some((v, res)) = results.next().await {
        match res {
            Ok(()) => {
                summary.published += 1;
                summary.recipients += v.recipients;
            }
            Err(e) => {
                let error = match e {
                    PublishError::Returned => {
                        format!("{e} (does the queue {queue} exist?)")
                    }
                    e => e.to_string(),
                };
                report.failed(summary.failed.len(), v.line, &v.id, &error);
                summary.failed.push(FailedLine {
                    line: v.line,
                    id: v.id.clone(),
                    error,
                });
            }
        }
        report.tick(summary.published, summary.failed.len());
    }
    summary.publishing = started.elapsed();
    report.finish();
}

/// Validates job bodies with the worker's own parser.
///
/// With no account configured (a machine that only publishes), each job is checked against a
/// placeholder account carrying the appid it names, so only its shape is validated.
struct Validator<'a> {
    config: &'a Config,
    shape: Option<Config>,
}

impl<'a> Validator<'a> {
    fn new(config: &'a Config) -> Self {
        let shape = config.accounts.is_empty().then(|| {
            let mut c = config.clone();
            c.accounts = vec![Account {
                appid: String::new(),
                rate_per_sec: 1,
                daily_quota: None,
                original_id: None,
            }];
            c
        });
        Validator { config, shape }
    }

    /// The job's id and recipient count, or why it is invalid.
    fn check(&mut self, body: &[u8]) -> Result<(String, usize), InvalidJob> {
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
    parsed: Result<Parsed, (InvalidJob, job::Known)>,
) -> Result<(String, usize), InvalidJob> {
    match parsed {
        Ok(Parsed::Single(j)) => Ok((j.id.to_string(), 1)),
        Ok(Parsed::Batch(b)) => Ok((b.id.to_string(), b.recipients.len())),
        Err((e, _)) => Err(e),
    }
}

/// Loads the worker's configuration (file and `WXD_*` settings) without its credentials:
/// publishing needs the broker, the queue names and the account list, never a secret.
pub fn load_config(file: Option<&Path>) -> Result<Config, ConfigError> {
    Config::load_without_credentials(file)
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

/// Progress and reports on stderr, in the chosen style.
struct Reporter {
    style: Progress,
    bar: Option<indicatif::ProgressBar>,
    last_plain: Instant,
    total: usize,
}

impl Reporter {
    fn new(style: Progress) -> Reporter {
        Reporter {
            style,
            bar: None,
            last_plain: Instant::now(),
            total: 0,
        }
    }

    fn print(&self, msg: &str) {
        match (&self.bar, self.style) {
            (_, Progress::Quiet) => {}
            // Printed above the bar, which is redrawn below it.
            (Some(bar), _) => bar.println(msg),
            (None, _) => eprintln!("{msg}"),
        }
    }

    fn invalid(&self, invalid: &[InvalidLine]) {
        for i in invalid.iter().take(MAX_REPORTED) {
            self.print(&format!(
                "line {}: invalid ({}): {}",
                i.line, i.reason, i.detail
            ));
        }
        if invalid.len() > MAX_REPORTED {
            self.print(&format!(
                "... and {} more invalid lines",
                invalid.len() - MAX_REPORTED
            ));
        }
    }

    fn failed(&self, reported_so_far: usize, line: usize, id: &str, error: &str) {
        match reported_so_far {
            n if n < MAX_REPORTED => {
                self.print(&format!("line {line} (id {id}): not confirmed: {error}"))
            }
            MAX_REPORTED => self.print("... more jobs were not confirmed; see the summary"),
            _ => {}
        }
    }

    fn start(&mut self, total: usize) {
        self.total = total;
        self.last_plain = Instant::now();
        if self.style == Progress::Bar {
            let style = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} jobs confirmed · {rate} · eta {eta}",
            )
            .expect("a valid progress template")
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", s.per_sec());
                },
            );
            self.bar = Some(indicatif::ProgressBar::new(total as u64).with_style(style));
        }
    }

    fn tick(&mut self, published: usize, failed: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position((published + failed) as u64);
        } else if self.style == Progress::Plain && self.last_plain.elapsed() >= PLAIN_EVERY {
            self.last_plain = Instant::now();
            eprintln!(
                "publish: {published}/{} confirmed, {failed} not confirmed",
                self.total
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn summary(&self, s: &Summary) {
        if s.aborted {
            self.print(&format!(
                "wxdispatch publish: {} invalid of {} lines; --strict: nothing was sent",
                s.invalid.len(),
                s.lines
            ));
            return;
        }
        if s.dry_run {
            self.print(&format!(
                "wxdispatch publish --dry-run: {} valid ({} recipients), {} invalid of {} lines; nothing was sent",
                s.would_publish,
                s.recipients,
                s.invalid.len(),
                s.lines
            ));
            return;
        }
        self.print(&format!(
            "wxdispatch publish: {} published, {} invalid, {} failed ({} recipients in {:.2}s)",
            s.published,
            s.invalid.len(),
            s.failed.len(),
            s.recipients,
            s.elapsed.as_secs_f64()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn reasons(config: &Config, lines: &[&str]) -> Vec<Result<usize, &'static str>> {
        let mut v = Validator::new(config);
        lines
            .iter()
            .map(|l| v.check(l.as_bytes()).map(|(_, n)| n).map_err(|e| e.reason))
            .collect()
    }

    #[test]
    fn the_config_loads_without_any_secret_and_keeps_the_accounts() {
        let toml = r#"
            [[accounts]]
            appid = "wxa0000000000001"
            secret_file = "/nonexistent/secret"
            [[accounts]]
            appid = "wxb0000000000002"
            secret_env = "UNSET_VARIABLE"
        "#;
        let e = env(&[("WXD_APPID", "wxc0000000000003"), ("WXD_JOBS_QUEUE", "q")]);
        let c = Config::without_credentials(Some(toml), &e).unwrap();
        let ids: Vec<&str> = c.accounts.iter().map(|a| a.appid.as_str()).collect();
        assert_eq!(
            ids,
            ["wxc0000000000003", "wxa0000000000001", "wxb0000000000002"]
        );
        assert!(
            c.accounts
                .iter()
                .all(|a| c.credentials.app_secret(&a.appid).is_none())
        );
        assert_eq!(c.amqp.jobs_queue, "q");
        // Unknown keys are still refused, like the worker does.
        assert!(Config::without_credentials(None, &env(&[("WXD_JOBS_QUEUEE", "q")])).is_err());
    }

    #[test]
    fn configured_accounts_are_enforced_and_no_account_means_shape_only() {
        let one =
            Config::without_credentials(None, &env(&[("WXD_APPID", "wxa0000000000001")])).unwrap();
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
        let none = Config::without_credentials(None, &env(&[])).unwrap();
        assert!(none.accounts.is_empty());
        assert_eq!(
            reasons(&none, &lines),
            [Ok(1), Ok(1), Ok(3), Err("missing_template_id")]
        );
    }

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

    #[test]
    fn exit_code_puts_unconfirmed_jobs_before_invalid_lines() {
        let mut s = Summary::default();
        assert_eq!(s.exit_code(), 0);
        s.invalid.push(InvalidLine {
            line: 1,
            reason: "bad_json",
            detail: String::new(),
        });
        assert_eq!(s.exit_code(), 2);
        s.failed.push(FailedLine {
            line: 2,
            id: "j".into(),
            error: "nacked".into(),
        });
        assert_eq!(s.exit_code(), 1);
    }
}
