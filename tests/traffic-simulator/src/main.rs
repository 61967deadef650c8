//! `canary-traffic-simulator`: test support, never part of the product. See the library docs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use canary_traffic_simulator::behaviour::Behaviour;
use canary_traffic_simulator::control::{Settings, run};
use canary_traffic_simulator::mesh::{Source, default_seed};
use canary_traffic_simulator::pods::ServiceRef;
use canary_traffic_simulator::routing::{RouteRef, WorkloadNames};
use clap::Parser;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Simulates the requests an Istio mesh would route by the live weights of VirtualServices
/// and HTTPRoutes, and exposes Istio's request metrics on /metrics; or, for a Service without
/// a mesh, spreads requests over its ready pods and exposes the apps' own metrics by pod.
/// Test support only.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Kubeconfig of the cluster holding the routes (default: KUBECONFIG or in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the routes and, by default, of their destinations.
    #[arg(long, short)]
    namespace: String,
    /// VirtualService to follow (its first HTTP route); repeatable.
    #[arg(long = "virtual-service")]
    virtual_services: Vec<String>,
    /// HTTPRoute to follow (its first rule); repeatable.
    #[arg(long = "http-route")]
    http_routes: Vec<String>,
    /// Service to send requests to without a mesh: its ready pods (those its selector selects)
    /// each get an equal share, counted in the apps' own metrics by pod; repeatable. A pod
    /// answers with the behaviour of its Deployment (`PUT /workloads/<deployment>`).
    #[arg(long = "service")]
    services: Vec<String>,
    /// Name a destination's workload: SUBSET=WORKLOAD for a VirtualService subset, or
    /// BACKEND=WORKLOAD for an HTTPRoute backend (default `<host>-<subset>` / the backend name).
    #[arg(long = "workload", value_parser = parse_pair)]
    workloads: Vec<(String, String)>,
    /// Requests per second sent through each followed route and to each followed Service.
    #[arg(long, default_value_t = 100.0)]
    rps: f64,
    /// Default share of failed requests of every workload.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    #[arg(long, default_value_t = 503)]
    error_code: u16,
    #[arg(long, default_value_t = 20.0)]
    latency_median_ms: f64,
    #[arg(long, default_value_t = 100.0)]
    latency_p99_ms: f64,
    /// Which sidecars report each request, as in a real mesh: destination, source or both.
    #[arg(long, value_delimiter = ',', default_value = "destination,source")]
    reporters: Vec<String>,
    #[arg(long, default_value = "istio-ingressgateway")]
    source_workload: String,
    #[arg(long, default_value = "istio-system")]
    source_namespace: String,
    /// Address of the metrics and control server; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Simulation period: weights are read and traffic generated this often.
    #[arg(long, default_value_t = 1000)]
    period_ms: u64,
    /// Random seed, for repeatable runs.
    #[arg(long)]
    seed: Option<u64>,
    /// Pods each workload's traffic is spread over, equally; every series carries a `pod`
    /// label (`<workload>-<n>`), as Prometheus' Kubernetes discovery adds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pods_per_workload: u32,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=WORKLOAD, got {s:?}"))
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let routes: Vec<RouteRef> = args
        .virtual_services
        .iter()
        .map(|name| RouteRef::VirtualService {
            namespace: args.namespace.clone(),
            name: name.clone(),
        })
        .chain(args.http_routes.iter().map(|name| RouteRef::HttpRoute {
            namespace: args.namespace.clone(),
            name: name.clone(),
        }))
        .collect();
    let services: Vec<ServiceRef> = args
        .services
        .iter()
        .map(|name| ServiceRef {
            namespace: args.namespace.clone(),
            name: name.clone(),
        })
        .collect();
    anyhow::ensure!(
        !routes.is_empty() || !services.is_empty(),
        "nothing to follow: give --virtual-service, --http-route and/or --service"
    );
    for reporter in &args.reporters {
        anyhow::ensure!(
            reporter == "destination" || reporter == "source",
            "unknown reporter {reporter:?}: Istio's are destination and source"
        );
    }
    let settings = Settings {
        routes,
        services,
        names: WorkloadNames {
            overrides: args.workloads.into_iter().collect(),
        },
        requests_per_second: args.rps,
        period: Duration::from_millis(args.period_ms.max(10)),
        default_behaviour: Behaviour {
            error_rate: args.error_rate,
            error_code: args.error_code,
            latency_median_ms: args.latency_median_ms,
            latency_p99_ms: args.latency_p99_ms,
        },
        source: Source {
            workload: args.source_workload,
            namespace: args.source_namespace,
        },
        reporters: args.reporters,
        seed: args.seed.unwrap_or_else(default_seed),
        pods_per_workload: args.pods_per_workload,
    };
    let client = client(args.kubeconfig.as_ref()).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    // The one line on stdout: tests and scripts read the chosen port from it.
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        let _ = stop.send(true);
    });
    run(settings, client, listener, stopped).await
}
