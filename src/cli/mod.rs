//! The `canary` command line: one module per subcommand, each a thin caller of the library.

pub mod analyze;
pub mod cluster;
pub mod controller;
pub mod convert;
pub mod crds;
pub mod output;
pub mod request;
pub mod resource_tree;
pub mod run;
pub mod status;
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
    /// Timed out, or the Kubernetes API server could not be reached.
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
  3  timed out, or the Kubernetes API server could not be reached
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

    /// Output for results on stdout: human-readable, or JSON for scripts (a failure is then
    /// also a line `{"type":"error","exitCode":N,"message":...}` on stdout).
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Run(run::Args),
    Status(status::Args),
    List(status::ListArgs),
    Promote(request::PromoteArgs),
    /// Hold the rollout where it is (traffic and pods stay), until `canary resume`.
    Pause(request::Args),
    /// Undo `canary pause`, or continue after a failed or inconclusive analysis paused the
    /// rollout (that analysis starts afresh). A `pause: {}` step is an approval gate:
    /// `canary promote` passes it, resume is refused there.
    Resume(request::Args),
    /// All traffic back to stable at once, then roll back.
    Abort(request::Args),
    /// Roll out the revision that was rolled back again.
    Retry(request::Args),
    Analyze(analyze::Args),
    Validate(validate::Args),
    Convert(convert::Args),
    Crds(crds::Args),
    Controller(controller::Args),
    /// Print a shell completion script: `source <(canary completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    use crate::api::canary::RequestAction;
    let result = match command {
        Command::Run(args) => run::run(args, output).await,
        Command::Status(args) => status::run(args, output).await,
        Command::List(args) => status::list(args, output).await,
        Command::Promote(args) => {
            let action = if args.full {
                RequestAction::PromoteFull
            } else {
                RequestAction::Promote
            };
            request::run(action, args.request, output).await
        }
        Command::Pause(args) => request::run(RequestAction::Pause, args, output).await,
        Command::Resume(args) => request::run(RequestAction::Resume, args, output).await,
        Command::Abort(args) => request::run(RequestAction::Abort, args, output).await,
        Command::Retry(args) => request::run(RequestAction::Retry, args, output).await,
        Command::Analyze(args) => Ok(analyze::run(args, output).await),
        Command::Validate(args) => Ok(validate::run(args, output)),
        Command::Convert(args) => Ok(convert::run(args, output)),
        Command::Crds(args) => Ok(crds::run(args)),
        Command::Controller(args) => Ok(controller::run(args).await),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "canary", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
    };
    result.unwrap_or_else(|failure| {
        eprintln!("error: {}", output::terminal_safe(&failure.message));
        if output == OutputFormat::Json {
            // A script reading stdout learns of the failure there too, as one JSON line.
            println!("{}", output::error_line(&failure));
        }
        failure.exit
    })
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
