//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Sends WeChat Official Account template messages from RabbitMQ jobs.
#[derive(Debug, Parser)]
#[command(name = "wxdispatch", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (also WXD_CONFIG). Every key can be overridden by WXD_<KEY>.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume jobs, send, publish outcomes, serve metrics and callbacks.
    Run,
    /// Run a local WeChat API simulator (token, stable_token, template/send, subscribe/bizsend,
    /// subscribe/send, the two template catalogues, clear_quota).
    MockWechat(MockArgs),
    /// Print each account's templates (template messages and subscription templates) and the
    /// data keys each one's content names: what a job's `template_id` and `data` must match.
    Templates {
        /// Only this account (default: every configured account).
        #[arg(long)]
        appid: Option<String>,
    },
    /// Run everything end to end on the local broker with an embedded simulator, then print a
    /// summary. Needs RabbitMQ on WXD_AMQP_URL (default localhost) and no WeChat credentials.
    Demo(DemoArgs),
    /// Validate jobs (JSON Lines, or a CSV of recipients) and publish them to the jobs queue
    /// with publisher confirms. Needs no WeChat secret.
    ///
    /// Exit codes: 0 all valid and confirmed; 1 a job was not confirmed, or the run could not
    /// start (re-running is safe: jobs keep their ids); 2 invalid lines (reported with their
    /// line numbers and never sent).
    Publish(crate::publish::Args),
    /// Measure the whole pipeline on the local broker: publish jobs with confirms, run a worker
    /// as a child process against an embedded simulator, consume the outcomes, and report
    /// jobs/s, the worker's CPU per job and peak RSS, and publish-to-outcome latency.
    /// Uses its own queue names and deletes them afterwards. See docs/BENCHMARKS.md.
    Bench(BenchArgs),
    /// The bench's floor worker (`bench --floor`): consume, optionally send, publish, ack,
    /// and nothing else. Started by `wxdispatch bench`; not for production.
    #[command(hide = true)]
    BenchFloor {
        #[arg(value_enum)]
        floor: crate::bench::Floor,
    },
    /// Validate the configuration (file and WXD_* environment) exactly as `run` loads it,
    /// without connecting anywhere, and print the effective settings with passwords and
    /// secrets redacted. Exits 1 naming the key at fault. For CI and as an initContainer.
    CheckConfig {
        /// Only print every WXD_* key the binary accepts, one per line (for manifest checks).
        #[arg(long)]
        list_keys: bool,
    },
    /// Print shell completions, e.g. `wxdispatch completions bash > /etc/bash_completion.d/wxdispatch`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The full command line, with `run --help` listing every `WXD_*` variable and its default
/// (built at run time from the loader's own defaults, see [`crate::config::env_help`]).
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("run", |run| run.after_help(crate::config::env_help()))
}

/// Parses `std::env::args` with [`command`] (exits with clap's message on a usage error).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut command(), "wxdispatch", out);
}

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A random fault KIND:RATE, repeatable. KIND is an errcode (-1, 45009 ...), httpNNN or
    /// timeout. Example: --fail -1:0.05 --fail http502:0.01
    #[arg(long = "fail", value_name = "KIND:RATE")]
    pub faults: Vec<String>,
    /// Latency added to every send, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Daily template quota per appid (45009 past it).
    #[arg(long)]
    pub quota: Option<u64>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 7200)]
    pub token_ttl: u64,
    /// How long a `timeout` fault stalls its reply, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub stall_ms: u64,
    /// Push TEMPLATESENDJOBFINISH receipts to this callback URL after successful sends
    /// (signed with WXD_CALLBACK_TOKEN; AES safe mode when WXD_CALLBACK_AES_KEY is set).
    #[arg(long)]
    pub push_url: Option<String>,
    /// Serve sample template catalogues (the seed template, two subscription templates), so
    /// the worker checks jobs against them and `wxdispatch templates` has something to list.
    /// Without it the catalogue endpoints answer 48001 and the worker sends unchecked.
    #[arg(long)]
    pub catalogue: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of good jobs to publish (bad and faulty ones are added).
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Simulator latency per send, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub latency_ms: u64,
    /// Deliver receipts in AES safe mode instead of plaintext.
    #[arg(long)]
    pub safe_mode: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Jobs to publish.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// The worker's sends in flight (WXD_CONCURRENCY).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// The worker's AMQP prefetch (WXD_PREFETCH).
    #[arg(long, default_value_t = 512)]
    pub prefetch: u16,
    /// Simulator latency per send, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Publish steadily at R jobs per second (for latency) instead of as fast as confirmed.
    #[arg(long, value_name = "R")]
    pub rate: Option<std::num::NonZeroU32>,
    /// Publish every job first, then start the worker on the backlog (for memory).
    #[arg(long)]
    pub backlog: bool,
    /// Queue type of the jobs, outcomes and dead-letter queues.
    #[arg(long, default_value = "quorum", value_parser = ["quorum", "classic"])]
    pub queue_type: String,
    /// The account's rate limit given to the worker (WXD_RATE_PER_SEC); very high by default,
    /// so the pipeline itself is measured.
    #[arg(long, default_value_t = 1_000_000)]
    pub account_rate: u32,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 1024)]
    pub publish_window: usize,
    /// Give up waiting for outcomes after this many seconds (default: 60 plus 1 s per 500 jobs,
    /// or the publishing time at --rate plus 60 s).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Tokio worker threads of the worker process (TOKIO_WORKER_THREADS; default one per
    /// core).
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// Run a worker stripped to its libraries instead of `wxdispatch run`: `amqp` consumes,
    /// publishes an outcome with a confirm and acks; `amqp-http` also sends each job to the
    /// simulator. What the real worker costs above this floor is wxdispatch's own logic.
    #[arg(long, value_enum, value_name = "PART")]
    pub floor: Option<crate::bench::Floor>,
    /// Print one JSON object on stdout instead of the readable report.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn completions_cover_the_subcommands_for_each_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in [
                "run",
                "publish",
                "check-config",
                "completions",
                "mock-wechat",
            ] {
                assert!(text.contains(sub), "{shell:?} completions lack {sub}");
            }
            assert!(
                text.contains("dry-run"),
                "{shell:?} completions lack --dry-run"
            );
        }
    }

    #[test]
    fn run_help_lists_the_environment() {
        let help = command()
            .find_subcommand_mut("run")
            .unwrap()
            .render_help()
            .to_string();
        for name in [
            "WXD_AMQP_URL",
            "WXD_CALLBACK_ADDR",
            "WXD_REDIS_URL_FILE",
            "WXD_PREFETCH",
        ] {
            assert!(help.contains(name), "run --help lacks {name}:\n{help}");
        }
    }
}
