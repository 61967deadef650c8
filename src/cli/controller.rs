//! `canary controller`: run the in-cluster controller.

use std::net::SocketAddr;

use super::Exit;
use crate::controller::{self, Config, LeaderElection};

/// This machine's name, for a Lease identity outside a pod.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "canary".into())
}

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
    /// Run only while holding the `canary-controller` Lease, so several replicas can run: one
    /// active, the others standby.
    #[arg(long, env = "CANARY_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the pod's namespace, POD_NAMESPACE, else the watched
    /// namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
}

pub async fn run(args: Args) -> Exit {
    let Args {
        namespace,
        prometheus,
        listen,
        leader_elect,
        lease_namespace,
    } = args;
    let leader_election = leader_elect.then(|| LeaderElection {
        namespace: lease_namespace
            .or_else(|| namespace.clone())
            .unwrap_or_else(|| "default".into()),
        identity: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id())),
    });
    match controller::run(Config {
        namespace,
        prometheus,
        listen,
        leader_election,
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
