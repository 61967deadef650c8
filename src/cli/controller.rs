//! `canary controller`: run the in-cluster controller.

use std::net::SocketAddr;

use super::Exit;
use crate::controller::{self, Config};

/// Watch Canaries and drive every rollout to its end (what the Deployment in deploy/ runs).
///
/// Serves /metrics, /healthz and /readyz on --listen; stops gracefully on SIGTERM.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  canary controller --namespace shop --prometheus http://prometheus.monitoring:9090"
)]
pub struct Args {
    /// Watch only this namespace (default: all).
    #[arg(long, short = 'n', env = "CANARY_NAMESPACE")]
    pub namespace: Option<String>,
    /// Prometheus for templates that name no address.
    #[arg(long, env = "CANARY_PROMETHEUS")]
    pub prometheus: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "CANARY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
}

pub async fn run(args: Args) -> Exit {
    let Args {
        namespace,
        prometheus,
        listen,
    } = args;
    match controller::run(Config {
        namespace,
        prometheus,
        listen,
    })
    .await
    {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Failed
        }
    }
}
