//! Command-line interface: the subcommands and where each one goes.
//!
//! Each command's options live with the command (e.g. [`mock::Args`], `demo::Args`,
//! `bench::Args`); this module only names the subcommands and dispatches downward.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[cfg(feature = "bench")]
use crate::tools::bench;
use crate::tools::{demo, mock};

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

/// Where the development tools sort in `--help`: after what an operator runs.
const TOOL: usize = 100;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume jobs, send, publish outcomes, serve metrics and callbacks.
    Run,
    /// Tool: run a local WeChat API simulator (token, stable_token, template/send,
    /// subscribe/bizsend, subscribe/send, the two template catalogues, clear_quota).
    #[command(display_order = TOOL)]
    MockWechat(mock::Args),
    /// Print each account's templates (template messages and subscription templates) and the
    /// data keys each one's content names: what a job's `template_id` and `data` must match.
    Templates {
        /// Only this account (default: every configured account).
        #[arg(long)]
        appid: Option<String>,
    },
    /// Tool: run everything end to end on the local broker with an embedded simulator, then
    /// print a summary. Needs RabbitMQ on WXD_AMQP_URL (default localhost) and no WeChat
    /// credentials.
    #[command(display_order = TOOL)]
    Demo(demo::Args),
    /// Validate jobs (JSON Lines, or a CSV of recipients) and publish them to the jobs queue
    /// with publisher confirms. Needs no WeChat secret.
    ///
    /// Exit codes: 0 all valid and confirmed; 1 a job was not confirmed, or the run could not
    /// start (re-running is safe: jobs keep their ids); 2 invalid lines (reported with their
    /// line numbers and never sent).
    Publish(crate::publish::Args),
    /// Tool: measure the whole pipeline on the local broker: publish jobs with confirms, run a
    /// worker as a child process against an embedded simulator, consume the outcomes, and
    /// report jobs/s, the worker's CPU per job and peak RSS, and publish-to-outcome latency.
    /// Uses its own queue names and deletes them afterwards. See docs/BENCHMARKS.md.
    #[cfg(feature = "bench")]
    #[command(display_order = TOOL)]
    Bench(bench::Args),
    /// The bench's floor worker (`bench --floor`): consume, optionally send, publish, ack,
    /// and nothing else. Started by `wxdispatch bench`; not for production.
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchFloor(bench::floor::Args),
    /// Validate the configuration (file and WXD_* environment) exactly as `run` loads it,
    /// without connecting anywhere, and print the effective settings with passwords and
    /// secrets redacted. Exits 1 naming the key at fault. For CI and as an initContainer.
    CheckConfig {
        /// Only print every WXD_* key the binary accepts, one per line (for manifest checks).
        #[arg(long)]
        list_keys: bool,
    },
    /// Exit 0 when the local worker answers 200 on /readyz (WXD_HTTP_ADDR), else 1: a health
    /// check and Kubernetes exec probe that needs no shell or curl in the image.
    Probe(crate::probe::Args),
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
pub(crate) fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut command(), "wxdispatch", out);
}

/// Runs the parsed command line. `Ok` carries the process's exit code: `publish` tells apart
/// invalid input (2) from a job not confirmed (1).
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    let config = cli.config.as_deref();
    let done = match cli.command {
        // The commands with exit codes of their own.
        Command::Publish(args) => return crate::publish::command(config, args).await,
        Command::Probe(args) => return Ok(crate::probe::run(&args)),
        Command::Run => crate::app::run_worker(config).await,
        Command::MockWechat(args) => mock::serve_simulator(config, args).await,
        Command::Templates { appid } => crate::app::templates(config, appid.as_deref()).await,
        Command::Demo(args) => demo::run_demo(config, args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run_bench(config, args).await,
        #[cfg(feature = "bench")]
        Command::BenchFloor(args) => bench::floor::run_floor(args).await,
        Command::CheckConfig { list_keys: true } => {
            println!("{}", crate::config::env_keys().join("\n"));
            Ok(())
        }
        Command::CheckConfig { list_keys: false } => crate::app::check_config(config),
        Command::Completions { shell } => {
            completions(shell, &mut std::io::stdout());
            Ok(())
        }
    };
    done.map(|()| 0)
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
