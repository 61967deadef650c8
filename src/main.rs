//! The `canary` binary (also `kubectl-canary`): parses the command line and hands over to
//! `canary::cli`.

use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use canary::cli::{self, Cli, LogFormat};

fn main() -> std::process::ExitCode {
    // Invoked as `kubectl-canary`, kubectl runs us as `kubectl canary`: say so in help and
    // usage; behaviour is the same.
    let invoked_as_plugin = std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .is_some_and(|name| name == "kubectl-canary");
    let mut command = Cli::command();
    if invoked_as_plugin {
        command = command.bin_name("kubectl canary").name("kubectl-canary");
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The controller says what it decides; the other commands print their own results and
    // keep stderr for warnings.
    let default_filter = match cli.command {
        cli::Command::Controller(_) => cli::controller::DEFAULT_LOG,
        _ => "warn",
    };
    init_logging(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return cli::Exit::Failed.into();
        }
    };
    runtime.block_on(cli::run(cli)).into()
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = match std::env::var("CANARY_LOG") {
        Ok(text) if !text.trim().is_empty() => EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!(
                "warning: CANARY_LOG={text:?} is not a log filter ({e}); using {default_filter:?} (syntax: `info`, `canary=debug,kube=info`)"
            );
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Colour codes only for a person at a terminal: never into a file, a pipe or a log
/// collector, and not when `NO_COLOR` is set (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
