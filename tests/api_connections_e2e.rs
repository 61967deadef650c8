//! The controller's load on the API server, seen from outside its process: however many
//! Canaries roll at once, every watch and request shares a handful of connections (HTTP/2
//! streams, not one HTTP/1.1 connection each), and `/metrics` counts the requests it makes.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/process.rs"]
mod process;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cluster::{TestNamespace, cluster, eventually};
use kube::api::Api;
use rollout::{controller_kubeconfig, create, service, set_image_of, spawn_controller};
use serde_json::json;

use canary::api::canary::{Canary, Phase};

/// Canaries rolled at once: more than the watches the controller holds, so that one
/// connection per request in flight would show.
const CANARIES: usize = 8;

/// "A handful": one HTTP/2 connection in steady state, and while the first one is being set
/// up, a request or two may start their own (the pool drops them once ALPN says h2).
const MAX_CONNECTIONS: usize = 3;

/// The watches the controller holds at once in one namespace (Canaries, Deployments,
/// HorizontalPodAutoscalers, AnalysisTemplates, and the routing kinds the cluster serves).
const MIN_WATCHES: u64 = 5;

/// The port of the API server the test kubeconfig names.
fn api_server_port() -> u16 {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster().kubeconfig())
        .expect("reading the test kubeconfig");
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .expect("the kubeconfig names a server");
    let uri: http::Uri = server.parse().expect("the server is a URL");
    uri.port_u16().unwrap_or(443)
}

/// The controller's `canary_kube_requests_total` series: (labels, value).
async fn request_counts(port: u16) -> Vec<(String, u64)> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, text) =
        tokio::task::spawn_blocking(move || prometheus::http_get(address, "/metrics"))
            .await
            .unwrap()
            .expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter_map(|line| {
            let series = line.strip_prefix("canary_kube_requests_total{")?;
            let (labels, value) = series.split_once("} ")?;
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn total(counts: &[(String, u64)], filter: &str) -> u64 {
    counts
        .iter()
        .filter(|(labels, _)| labels.contains(filter))
        .map(|(_, value)| value)
        .sum()
}

/// Services `svc-0`… with a Canary each (no analysis: 20% → 1 s → 50% → 1 s → promote).
async fn services(ns: &TestNamespace) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..CANARIES {
        let name = format!("svc-{i}");
        service(ns, &name, 1).await;
        create::<Canary>(
            &ns.api(),
            json!({
                "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
                "metadata": {"name": name},
                "spec": {
                    "targetRef": {"name": name},
                    "service": {"port": 8080},
                    "trafficRouting": {"istio": {
                        "virtualService": {"name": name, "routes": ["primary"]},
                        "destinationRule": {"name": name},
                    }},
                    "steps": [
                        {"setWeight": 20}, {"pause": {"duration": "1s"}},
                        {"setWeight": 50}, {"pause": {"duration": "1s"}},
                    ],
                    "progressDeadlineSeconds": 60,
                    "scaleDownDelaySeconds": 1,
                },
            }),
        )
        .await;
        names.push(name);
    }
    names
}

/// Waits (bounded) until every Canary of `ns` is in `phase`.
async fn all_in(ns: &TestNamespace, phase: Phase) {
    let canaries: Api<Canary> = ns.api();
    eventually(
        &format!("{CANARIES} Canaries {phase:?}"),
        rollout::ROLLOUT_TIMEOUT,
        || async {
            let list = canaries.list(&Default::default()).await.ok()?;
            let done = list
                .items
                .iter()
                .filter(|c| c.status.as_ref().is_some_and(|s| s.phase == phase))
                .count();
            (done == CANARIES).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watch_and_rollout_shares_a_handful_of_connections_and_is_counted() {
    let ns = cluster().namespace("connections").await;
    let names = services(&ns).await;
    let kubeconfig = controller_kubeconfig().await.to_string_lossy().into_owned();
    let (mut controller, metrics_port) = spawn_controller(
        &[
            "--namespace",
            &ns.name,
            "--prometheus",
            "http://127.0.0.1:9",
        ],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await;
    let pid = controller.id().expect("the controller runs");
    let api_port = api_server_port();

    // Sampled every 20 ms from now until the rollouts are over.
    let most = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::task::spawn_blocking({
        let (most, sampling) = (most.clone(), sampling.clone());
        move || {
            let mut samples = 0u64;
            while sampling.load(Ordering::SeqCst) {
                most.fetch_max(
                    process::established_connections(pid, api_port),
                    Ordering::SeqCst,
                );
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        }
    });

    all_in(&ns, Phase::Idle).await;
    let at_rest = request_counts(metrics_port).await;
    for name in &names {
        set_image_of(&ns, name, &format!("{name}:2")).await;
    }
    all_in(&ns, Phase::Promoted).await;
    sampling.store(false, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    let after = request_counts(metrics_port).await;
    let most = most.load(Ordering::SeqCst);
    eprintln!(
        "{CANARIES} Canaries rolled at once: at most {most} connection(s) to the API server \
         over {samples} samples; requests at rest {}, after the rollouts {} ({} watches)\n{}",
        total(&at_rest, ""),
        total(&after, ""),
        total(&after, r#"verb="watch""#),
        after
            .iter()
            .map(|(labels, value)| format!("  {labels} {value}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        most <= MAX_CONNECTIONS,
        "the controller held {most} connections to the API server at once (at most \
         {MAX_CONNECTIONS} expected: one HTTP/2 connection carries every watch and request)"
    );
    let watches = total(&after, r#"verb="watch""#);
    assert!(
        watches >= MIN_WATCHES,
        "{watches} watches counted; the controller holds at least {MIN_WATCHES} at once, so \
         {most} connection(s) means they share one"
    );
    assert!(
        total(&after, r#"verb="patch""#) > total(&at_rest, r#"verb="patch""#),
        "the rollouts' writes are counted"
    );
    assert!(
        total(&after, r#"resource="canaries/status""#) >= CANARIES as u64,
        "status writes are counted by subresource"
    );
    assert_eq!(
        total(&after, r#"code="5xx""#) + total(&after, r#"code="error""#),
        0,
        "no failed requests"
    );
    rollout::terminate(&mut controller, Duration::from_secs(30), "the controller").await;
}
