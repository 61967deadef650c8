//! The `canary` command line: one module per subcommand, each a thin caller of the library.

pub mod analyze;
pub mod controller;
pub mod crds;
pub mod output;
pub mod validate;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes, the same for every command (also in `--help` and the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Promoted, passed, or ok.
    Ok = 0,
    /// Rolled back, or failed.
    Failed = 1,
    /// Invalid input, or no such object.
    Invalid = 2,
    /// Timed out.
    TimedOut = 3,
    /// Inconclusive, or the metrics source was unreachable.
    Inconclusive = 4,
    /// Superseded by a newer revision.
    Superseded = 5,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes (the same for every command):
  0  promoted, passed or ok
  1  rolled back or failed
  2  invalid input or no such object
  3  timed out
  4  inconclusive, or the metrics source was unreachable
  5  superseded by a newer revision";

#[derive(Parser, Debug)]
#[command(
    name = "canary",
    version,
    about = "Progressive delivery with analysis that is sound at any traffic level",
    long_about = "Progressive delivery with analysis that is sound at any traffic level.\n\nShifts traffic between the stable and the canary version of a service, judges both from Prometheus, and promotes or rolls back. Also works as a kubectl plugin: `kubectl canary ...`.",
    after_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Log format for diagnostics on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain, env = "CANARY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Output for results on stdout: human-readable, or JSON for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Analyze(analyze::Args),
    Validate(validate::Args),
    Crds(crds::Args),
    Controller(controller::Args),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Exit {
    let Cli {
        log_format: _,
        output,
        command,
    } = cli;
    match command {
        Command::Analyze(args) => analyze::run(args, output).await,
        Command::Validate(args) => validate::run(args, output),
        Command::Crds(args) => crds::run(args),
        Command::Controller(args) => controller::run(args).await,
    }
}

/// `key=value` pairs of `--arg`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has an empty name before '='"));
    }
    Ok((key.to_string(), value.to_string()))
}
