//! `wxdispatch publish`: enqueue a campaign from JSON Lines or a CSV of recipients.
//!
//! The input is read and validated in full before the first message is sent, with the same
//! parser the worker uses ([`crate::job::parse`]), so a typo in a campaign file is reported with its
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

mod input;
mod progress;
mod validate;

use std::io::{BufRead, IsTerminal, Read};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::BasicProperties;

use crate::amqp::{self, PublishError, Publisher};
use crate::config::{Config, ConfigError};

pub use input::{CsvError, Line, read_csv, read_jsonl};
pub use progress::Progress;
use progress::Reporter;
use validate::Validator;

/// Loads the worker's configuration (file and `WXD_*` settings) without its credentials:
/// publishing needs the broker, the queue names and the account list, never a secret.
pub fn load_config(file: Option<&Path>) -> Result<Config, ConfigError> {
    Config::load_without_credentials(file)
}

/// Publishes awaiting their confirm at once. Enough to keep a remote broker busy; bounded so a
/// huge campaign does not hold every body in the client's write buffer at the same time.
const MAX_IN_FLIGHT: usize = 256;

/// The flags of `wxdispatch publish`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON Lines file, one job per line (blank lines are ignored); `-` or nothing reads stdin.
    #[arg(value_name = "FILE|-", conflicts_with = "csv")]
    pub file: Option<PathBuf>,
    /// Build one job per CSV row instead. Columns: touser, id, appid, url, not_after,
    /// topcolor, miniprogram.appid, miniprogram.pagepath, data.<Key>, data.<Key>.color.
    #[arg(long, value_name = "FILE", requires = "template_id")]
    pub csv: Option<PathBuf>,
    /// The template_id of every job built from --csv.
    #[arg(long, value_name = "ID", requires = "csv")]
    pub template_id: Option<String>,
    /// Publish at most N jobs per second (default: as fast as the broker confirms).
    #[arg(long, value_name = "N")]
    pub rate: Option<NonZeroU32>,
    /// Validate the whole input first and send nothing if any line is invalid.
    #[arg(long)]
    pub strict: bool,
    /// Validate and report only: never connect to RabbitMQ, publish nothing. Exit code 0 if
    /// every line is valid, 2 if not.
    #[arg(long)]
    pub dry_run: bool,
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
pub(crate) async fn command(config_file: Option<&Path>, args: Args) -> anyhow::Result<i32> {
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
    let summary = publish_lines(&config, lines, &opts).await?;
    Ok(summary.exit_code())
}

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(f)))
}

/// Reads JSON Lines, then validates and publishes them: [`read_jsonl`] and [`publish_lines`].
pub async fn publish_jsonl(
    config: &Config,
    reader: impl BufRead,
    opts: &Options,
) -> anyhow::Result<Summary> {
    let lines = read_jsonl(reader).context("cannot read the input")?;
    publish_lines(config, lines, opts).await
}

/// Validates every line, then (unless `--strict` found invalid ones) publishes the valid jobs
/// to the jobs queue with confirms. Declares the topology first, so a fresh broker works.
///
/// An `Err` means the run could not start (broker unreachable, topology mismatch); jobs that
/// were not confirmed once publishing started are in [`Summary::failed`] instead.
pub async fn publish_lines(
    config: &Config,
    lines: Vec<Line>,
    opts: &Options,
) -> anyhow::Result<Summary> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
