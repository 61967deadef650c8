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
    init_logging(cli.log_format);
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

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("CANARY_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
