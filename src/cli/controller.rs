//! `canary controller`: run the in-cluster controller.

use std::net::SocketAddr;

use super::Exit;
use crate::controller::{self, Config, LeaderElection};
use crate::metrics::AddressPolicy;
use crate::metrics::address_policy::AllowedAddress;

/// This machine's name, for a Lease identity outside a pod.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "canary".into())
}

/// The controller's log filter unless `CANARY_LOG` says otherwise: one line at start and one
/// per decision (a weight change, a promotion, a rollback…), none per reconcile.
pub const DEFAULT_LOG: &str = "warn,canary=info";

/// Watch Canaries and drive every rollout to its end (what the Deployment in deploy/ runs).
///
/// Serves /metrics, /healthz and /readyz on --listen; stops gracefully on SIGTERM.
#[derive(clap::Args, Debug)]
#[command(after_help = CONTROLLER_HELP)]
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
    /// Query metrics only at these addresses (repeatable; comma-separated in the environment):
    /// URL prefixes (https://prometheus.monitoring:9090), host names (prometheus.monitoring.svc,
    /// or .monitoring.svc for any name under it) or networks (10.0.0.0/8). Default: any
    /// address except link-local ones (169.254.0.0/16, fe80::/10) and cloud metadata services;
    /// a network named here lets a link-local address through.
    #[arg(
        long = "metrics-address-allow",
        env = "CANARY_METRICS_ADDRESS_ALLOW",
        value_name = "ADDRESS",
        value_delimiter = ','
    )]
    pub metrics_address_allow: Vec<AllowedAddress>,
    /// Reconcile at most this many Canaries at once (never two reconciles of one Canary).
    /// The rest wait their turn in the controller, so a burst (a restart with every Canary
    /// due) does not reach the API server all at once.
    #[arg(
        long,
        env = "CANARY_MAX_CONCURRENT_RECONCILES",
        default_value_t = DEFAULT_MAX_CONCURRENT_RECONCILES,
        value_parser = clap::value_parser!(u16).range(1..),
        value_name = "N"
    )]
    pub max_concurrent_reconciles: u16,
}

/// See [`Args::max_concurrent_reconciles`]: a reconcile mostly waits on the API server, and
/// with one HTTP/2 connection a handful in flight keep it busy without queueing at it.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 8;

const CONTROLLER_HELP: &str = "\
API server:
  One client, one connection: HTTP/2 (negotiated by ALPN) carries every watch and request,
  pinged every 20 s so a dead connection is replaced within 30 s. Answers 429, 503 and 504
  (API Priority and Fairness shedding load) are retried with backoff, honouring Retry-After.
  Requests carry User-Agent canary-controller/VERSION and are counted on /metrics as
  canary_kube_requests_total{verb,resource,code}.

Logs (stderr):
  One line when it starts (version, namespaces watched, leader election, metrics address),
  then one per decision: a rollout started, a weight changed, a promotion, a rollback, an
  operator's request, a problem with a Canary (once per change of the problem, not at every
  retry). Colour only when stderr is a terminal and NO_COLOR is unset.
  CANARY_LOG         what to log, as a tracing EnvFilter: a level (error, warn, info, debug,
                     trace) and per-module levels, e.g. `info`, `canary=debug`,
                     `warn,canary=info,kube=debug` (default: warn,canary=info)
  CANARY_LOG_FORMAT  plain (default) or json (one JSON object per line); same as --log-format

Example:
  canary controller --namespace shop --prometheus http://prometheus.monitoring:9090";

pub async fn run(args: Args) -> Exit {
    let Args {
        namespace,
        prometheus,
        listen,
        leader_elect,
        lease_namespace,
        metrics_address_allow,
        max_concurrent_reconciles,
    } = args;
    let leader_election = leader_elect.then(|| LeaderElection {
        namespace: lease_namespace
            .or_else(|| namespace.clone())
            .unwrap_or_else(|| "default".into()),
        identity: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id())),
    });
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        namespaces = namespace.as_deref().unwrap_or("all"),
        leader_election = %leader_election.as_ref().map_or_else(
            || "off".to_string(),
            |l| format!("Lease {}/{} as {}", l.namespace, controller::LEASE_NAME, l.identity)
        ),
        metrics = %listen,
        max_concurrent_reconciles,
        "canary controller {} started",
        env!("CARGO_PKG_VERSION"),
    );
    match controller::run(Config {
        namespace,
        prometheus,
        listen,
        leader_election,
        metrics_address_policy: AddressPolicy::new(metrics_address_allow),
        max_concurrent_reconciles,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &[&str]) -> Result<Args, String> {
        Command::try_parse_from(std::iter::once("controller").chain(flags.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn metrics_address_allow_is_repeatable_and_comma_separated() {
        assert!(parse(&[]).unwrap().metrics_address_allow.is_empty());
        let args = parse(&[
            "--metrics-address-allow",
            "https://prometheus.monitoring:9090",
            "--metrics-address-allow",
            "10.0.0.0/8,.monitoring.svc",
        ])
        .unwrap();
        let policy = AddressPolicy::new(args.metrics_address_allow);
        assert_eq!(
            policy.refusal("https://prometheus.monitoring:9090/api"),
            None
        );
        assert_eq!(policy.refusal("http://10.1.2.3:9090"), None);
        assert_eq!(policy.refusal("http://thanos.monitoring.svc:9090"), None);
        assert!(policy.refusal("http://192.168.0.1:9090").is_some());
        let error = parse(&["--metrics-address-allow", "not a host"]).unwrap_err();
        assert!(error.contains("is not a URL prefix"), "{error}");
    }

    #[test]
    fn max_concurrent_reconciles_is_bounded_and_at_least_one() {
        assert_eq!(
            parse(&[]).unwrap().max_concurrent_reconciles,
            DEFAULT_MAX_CONCURRENT_RECONCILES
        );
        assert_eq!(
            parse(&["--max-concurrent-reconciles", "32"])
                .unwrap()
                .max_concurrent_reconciles,
            32
        );
        // 0 would mean "unbounded" to kube-runtime: refused, naming the flag.
        for refused in ["0", "-1", "70000", "many"] {
            let flag = format!("--max-concurrent-reconciles={refused}");
            let error = parse(&[&flag]).unwrap_err();
            assert!(error.contains("--max-concurrent-reconciles"), "{error}");
        }
    }
}
