//! What a run shows on stderr while it publishes: invalid lines, progress and the summary.

use std::time::{Duration, Instant};

use super::{InvalidLine, Summary};

/// Invalid or failed lines printed one by one before the rest are only counted.
const MAX_REPORTED: usize = 100;
/// How often the plain (non-terminal) progress line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

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

/// Progress and reports on stderr, in the chosen style.
pub(super) struct Reporter {
    style: Progress,
    bar: Option<indicatif::ProgressBar>,
    last_plain: Instant,
    total: usize,
}

impl Reporter {
    pub(super) fn new(style: Progress) -> Reporter {
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

    pub(super) fn invalid(&self, invalid: &[InvalidLine]) {
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

    pub(super) fn failed(&self, reported_so_far: usize, line: usize, id: &str, error: &str) {
        match reported_so_far {
            n if n < MAX_REPORTED => {
                self.print(&format!("line {line} (id {id}): not confirmed: {error}"))
            }
            MAX_REPORTED => self.print("... more jobs were not confirmed; see the summary"),
            _ => {}
        }
    }

    pub(super) fn start(&mut self, total: usize) {
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

    pub(super) fn tick(&mut self, published: usize, failed: usize) {
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

    pub(super) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    pub(super) fn summary(&self, s: &Summary) {
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
