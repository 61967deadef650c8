//! End to end: the simulator follows a real VirtualService and HTTPRoute on the local control
//! plane, and a real Prometheus scraping it every second sees the weights, the run-time
//! behaviour changes and the latency distribution through Istio's metric names.

#[path = "../../support/cluster.rs"]
mod cluster;
#[path = "../../support/prometheus.rs"]
mod prometheus;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use cluster::{TIMEOUT, TestNamespace, cluster, eventually};
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use prometheus::Prometheus;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One instant query against `prometheus`; `None` while it has no result (yet).
async fn query(prometheus: &Prometheus, promql: &str) -> Option<Vec<(Value, f64)>> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prometheus.url()))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let results = body.pointer("/data/result")?.as_array()?;
    let samples: Vec<(Value, f64)> = results
        .iter()
        .filter_map(|r| {
            let value = r.pointer("/value/1")?.as_str()?.parse().ok()?;
            Some((r["metric"].clone(), value))
        })
        .collect();
    (!samples.is_empty()).then_some(samples)
}

async fn scalar(prometheus: &Prometheus, promql: &str) -> Option<f64> {
    let samples = query(prometheus, promql).await?;
    samples.first().map(|(_, v)| *v).filter(|v| v.is_finite())
}

struct Simulator {
    _child: Child,
    address: SocketAddr,
    http: reqwest::Client,
}

impl Simulator {
    async fn start(ns: &TestNamespace, args: &[&str]) -> Simulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_canary-traffic-simulator"))
            .arg("--kubeconfig")
            .arg(cluster().kubeconfig())
            .args(["--namespace", &ns.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting canary-traffic-simulator");
        let stdout = child.stdout.take().expect("simulator stdout");
        let line = tokio::time::timeout(TIMEOUT, BufReader::new(stdout).lines().next_line())
            .await
            .expect("the simulator printed its address in time")
            .expect("reading the simulator's stdout")
            .expect("the simulator printed a line");
        let address = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the simulator: {line}"));
        Simulator {
            _child: child,
            address,
            http: reqwest::Client::new(),
        }
    }

    async fn state(&self) -> Value {
        self.http
            .get(format!("http://{}/state", self.address))
            .send()
            .await
            .expect("GET /state")
            .json()
            .await
            .expect("/state is JSON")
    }

    async fn change(&self, workload: &str, change: Value) -> reqwest::StatusCode {
        self.http
            .put(format!("http://{}/workloads/{workload}", self.address))
            .json(&change)
            .send()
            .await
            .expect("PUT /workloads")
            .status()
    }
}

async fn set_virtual_service_weights(api: &Api<DynamicObject>, stable: u32, canary: u32) {
    let vs = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "web"},
        "spec": {"hosts": ["web"], "http": [{"route": [
            {"destination": {"host": "web", "subset": "stable"}, "weight": stable},
            {"destination": {"host": "web", "subset": "canary"}, "weight": canary}
        ]}]}
    });
    api.patch(
        "web",
        &PatchParams::apply("simulator-test").force(),
        &Patch::Apply(vs),
    )
    .await
    .expect("applying the VirtualService");
}

/// Canary share of the requests Prometheus saw over the last `window`, by reporter=destination.
fn canary_share(ns: &str, service: &str, window: &str) -> String {
    format!(
        "sum(increase(istio_requests_total{{reporter=\"destination\",destination_workload_namespace=\"{ns}\",destination_workload=\"{service}-canary\"}}[{window}])) / sum(increase(istio_requests_total{{reporter=\"destination\",destination_workload_namespace=\"{ns}\",destination_workload=~\"{service}-(stable|canary)\"}}[{window}]))"
    )
}

fn error_ratio(ns: &str, workload: &str) -> String {
    format!(
        "sum(rate(istio_requests_total{{reporter=\"destination\",destination_workload_namespace=\"{ns}\",destination_workload=\"{workload}\",response_code=~\"5..\"}}[5s]) or vector(0)) / sum(rate(istio_requests_total{{reporter=\"destination\",destination_workload_namespace=\"{ns}\",destination_workload=\"{workload}\"}}[5s]))"
    )
}

#[tokio::test]
async fn prometheus_sees_live_weights_behaviour_changes_and_latency() {
    let ns = cluster().namespace("simulator").await;
    let virtual_services = ns.dynamic("networking.istio.io", "VirtualService");
    set_virtual_service_weights(&virtual_services, 90, 10).await;
    let routes = ns.dynamic("gateway.networking.k8s.io", "HTTPRoute");
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api"},
        "spec": {"rules": [{"backendRefs": [
            {"name": "api-stable", "port": 80, "weight": 3},
            {"name": "api-canary", "port": 80, "weight": 1}
        ]}]}
    });
    routes
        .patch(
            "api",
            &PatchParams::apply("simulator-test"),
            &Patch::Apply(route),
        )
        .await
        .expect("applying the HTTPRoute");

    let simulator = Simulator::start(
        &ns,
        &[
            "--virtual-service",
            "web",
            "--http-route",
            "api",
            "--rps",
            "400",
            "--seed",
            "11",
        ],
    )
    .await;
    let target = simulator.address;
    let prometheus = tokio::task::spawn_blocking(move || {
        Prometheus::builder()
            .scrape("traffic-simulator", target)
            .start()
    })
    .await
    .expect("starting Prometheus");
    let name = ns.name.as_str();

    // Weights as routed: 10% of web to its canary, 25% of api to its canary.
    let share = eventually("web canary share near 10%", TIMEOUT, || async {
        let s = scalar(&prometheus, &canary_share(name, "web", "10s")).await?;
        (0.06..0.14).contains(&s).then_some(s)
    })
    .await;
    eprintln!("web canary share at 90/10: {share:.3}");
    eventually("api canary share near 25%", TIMEOUT, || async {
        let s = scalar(&prometheus, &canary_share(name, "api", "10s")).await?;
        (0.19..0.31).contains(&s).then_some(s)
    })
    .await;

    // Istio's labels, as analysis templates select on them.
    let series = query(&prometheus, &format!("istio_requests_total{{destination_workload=\"web-canary\",destination_workload_namespace=\"{name}\"}}"))
        .await
        .expect("web-canary series");
    let reporters: std::collections::BTreeSet<&str> = series
        .iter()
        .filter_map(|(m, _)| m["reporter"].as_str())
        .collect();
    assert_eq!(reporters, ["destination", "source"].into(), "{series:?}");
    let (labels, _) = &series[0];
    assert_eq!(
        labels["destination_service"],
        format!("web.{name}.svc.cluster.local")
    );
    assert_eq!(labels["destination_version"], "canary");
    assert_eq!(labels["response_code"], "200");

    // A weight change on the API server reaches the traffic within a few ticks.
    set_virtual_service_weights(&virtual_services, 50, 50).await;
    eventually(
        "the simulator to follow 50/50",
        Duration::from_secs(10),
        || async {
            let state = simulator.state().await;
            let weights = state["weights"][format!("VirtualService {name}/web")]
                .as_array()?
                .clone();
            weights.iter().all(|d| d["weight"] == 50).then_some(())
        },
    )
    .await;
    eventually("web canary share near 50%", TIMEOUT, || async {
        let s = scalar(&prometheus, &canary_share(name, "web", "4s")).await?;
        (0.40..0.60).contains(&s).then_some(s)
    })
    .await;

    // The canary gets worse two seconds from now; stable stays healthy.
    let status = simulator
        .change("web-canary", json!({"errorRate": 0.5, "afterSeconds": 2}))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let pending = simulator.state().await["behaviours"]["pending"].clone();
    assert_eq!(
        pending[0]["workload"], "web-canary",
        "scheduled, not applied: {pending}"
    );
    let canary_errors = eventually("web canary error ratio near 50%", TIMEOUT, || async {
        let r = scalar(&prometheus, &error_ratio(name, "web-canary")).await?;
        (0.35..0.65).contains(&r).then_some(r)
    })
    .await;
    let stable_errors = scalar(&prometheus, &error_ratio(name, "web-stable"))
        .await
        .expect("stable error ratio");
    assert!(
        stable_errors < 0.01,
        "stable stays healthy: {stable_errors}"
    );
    eprintln!("error ratio canary {canary_errors:.3}, stable {stable_errors:.3}");
    let series = query(&prometheus, &format!("istio_requests_total{{destination_workload=\"web-canary\",destination_workload_namespace=\"{name}\",response_code=\"503\"}}"))
        .await
        .expect("503 series of the canary");
    assert!(!series.is_empty());

    // An invalid change is refused and leaves the behaviour alone.
    assert_eq!(
        simulator
            .change("web-canary", json!({"errorRate": 2}))
            .await,
        reqwest::StatusCode::BAD_REQUEST
    );

    // Latency: median 20 ms, p99 100 ms by default; Istio's buckets around them are 10/25 and 100/250.
    let p50 = eventually("a median latency from the histogram", TIMEOUT, || async {
        scalar(&prometheus, &format!("histogram_quantile(0.5, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{reporter=\"destination\",destination_workload=\"web-stable\",destination_workload_namespace=\"{name}\"}}[10s])))"))
            .await
    })
    .await;
    assert!((10.0..=25.0).contains(&p50), "median {p50} ms");
    let p99 = scalar(&prometheus, &format!("histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{reporter=\"destination\",destination_workload=\"web-stable\",destination_workload_namespace=\"{name}\"}}[10s])))"))
        .await
        .expect("p99");
    assert!((50.0..=250.0).contains(&p99), "p99 {p99} ms");
}
