//! The simulation loop and its HTTP server (metrics for Prometheus, control for tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use kube::Client;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::behaviour::{Behaviour, BehaviourChange, Behaviours};
use crate::mesh::{Mesh, Source};
use crate::pods::{PodTraffic, ReadyPod, ServiceRef};
use crate::routing::{Destination, RouteRef, WorkloadNames};

/// Everything the simulator is told at start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub routes: Vec<RouteRef>,
    /// Services whose ready pods share the requests equally (the split without a mesh).
    pub services: Vec<ServiceRef>,
    pub names: WorkloadNames,
    pub requests_per_second: f64,
    pub period: Duration,
    pub default_behaviour: Behaviour,
    pub source: Source,
    pub reporters: Vec<String>,
    pub seed: u64,
    /// Pods each workload's traffic is spread over (each series carries a `pod` label).
    pub pods_per_workload: u32,
}

struct Simulation {
    registry: Registry,
    mesh: Mesh,
    /// The requests sent to `services`, counted in the apps' own metrics by pod.
    pods: PodTraffic,
    behaviours: Behaviours,
    requests_per_second: f64,
    /// Last weights read per route; kept when a read fails, as a mesh keeps its last config.
    weights: BTreeMap<String, Vec<Destination>>,
    /// Last ready pods read per Service; kept when a read fails, as endpoints stay in place.
    ready_pods: BTreeMap<String, Vec<ReadyPod>>,
    failed_reads: u64,
    last_read_error: Option<String>,
    ticks: u64,
    started: Instant,
}

type Shared = Arc<Mutex<Simulation>>;

/// Runs the simulation and serves HTTP on `listener` until `shutdown` turns true.
pub async fn run(
    settings: Settings,
    client: Client,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    settings
        .default_behaviour
        .validate()
        .map_err(anyhow::Error::msg)?;
    let mut registry = Registry::default();
    let mesh = Mesh::new(
        &mut registry,
        settings.source.clone(),
        settings.reporters.clone(),
        settings.seed,
    )
    .with_pods_per_workload(settings.pods_per_workload);
    let pods = PodTraffic::new(&mut registry, settings.seed);
    let shared: Shared = Arc::new(Mutex::new(Simulation {
        registry,
        mesh,
        pods,
        behaviours: Behaviours::new(settings.default_behaviour.clone()),
        requests_per_second: settings.requests_per_second,
        weights: BTreeMap::new(),
        ready_pods: BTreeMap::new(),
        failed_reads: 0,
        last_read_error: None,
        ticks: 0,
        started: Instant::now(),
    }));

    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/state", get(state))
        .route("/workloads/{workload}", put(change_workload))
        .route("/rate", put(change_rate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared.clone());
    let mut server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });

    let mut ticker = tokio::time::interval(settings.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let mut reads = Vec::with_capacity(settings.routes.len());
        for route in &settings.routes {
            let read =
                tokio::time::timeout(settings.period, route.read(client.clone(), &settings.names))
                    .await
                    .unwrap_or_else(|_| Err(format!("reading {route} timed out")));
            reads.push((route.to_string(), read));
        }
        let mut pod_reads = Vec::with_capacity(settings.services.len());
        for service in &settings.services {
            let read = tokio::time::timeout(settings.period, service.ready_pods(client.clone()))
                .await
                .unwrap_or_else(|_| Err(format!("reading the ready pods of {service} timed out")));
            pod_reads.push((service.to_string(), read));
        }
        let mut guard = shared.lock().expect("simulation lock");
        let sim = &mut *guard;
        for (route, read) in reads {
            match read {
                Ok(destinations) => {
                    sim.weights.insert(route, destinations);
                }
                Err(e) => {
                    if sim.last_read_error.as_ref() != Some(&e) {
                        eprintln!("traffic-simulator: {e}; keeping the last weights");
                    }
                    sim.failed_reads += 1;
                    sim.last_read_error = Some(e);
                }
            }
        }
        for (service, read) in pod_reads {
            match read {
                Ok(pods) => {
                    sim.ready_pods.insert(service, pods);
                }
                Err(e) => {
                    if sim.last_read_error.as_ref() != Some(&e) {
                        eprintln!("traffic-simulator: {e}; keeping the last ready pods");
                    }
                    sim.failed_reads += 1;
                    sim.last_read_error = Some(e);
                }
            }
        }
        sim.behaviours.apply_due(Instant::now());
        for destinations in sim.weights.values() {
            let behaviours = &sim.behaviours;
            sim.mesh.simulate(
                sim.requests_per_second,
                settings.period,
                destinations,
                |w| behaviours.of(w).clone(),
            );
        }
        for pods in sim.ready_pods.values() {
            let behaviours = &sim.behaviours;
            sim.pods
                .simulate(sim.requests_per_second, settings.period, pods, |w| {
                    behaviours.of(w).clone()
                });
        }
        sim.ticks += 1;
    }
    server.await??;
    Ok(())
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let mut text = String::new();
    let encoded = encode(&mut text, &shared.lock().expect("simulation lock").registry);
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

async fn state(State(shared): State<Shared>) -> Json<serde_json::Value> {
    let sim = shared.lock().expect("simulation lock");
    let now = Instant::now();
    Json(json!({
        "uptimeSeconds": now.duration_since(sim.started).as_secs_f64(),
        "ticks": sim.ticks,
        "requestsPerSecond": sim.requests_per_second,
        "weights": sim.weights,
        "failedWeightReads": sim.failed_reads,
        "lastWeightReadError": sim.last_read_error,
        "behaviours": sim.behaviours.describe(now),
        "totals": sim.mesh.totals(),
        "readyPods": sim.ready_pods,
        "podTotals": sim.pods.totals(),
    }))
}

async fn change_workload(
    State(shared): State<Shared>,
    Path(workload): Path<String>,
    Json(change): Json<BehaviourChange>,
) -> impl IntoResponse {
    let mut sim = shared.lock().expect("simulation lock");
    match sim.behaviours.change(&workload, change, Instant::now()) {
        Ok(()) => (
            StatusCode::OK,
            Json(
                json!({"workload": workload, "behaviours": sim.behaviours.describe(Instant::now())}),
            ),
        ),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rate {
    requests_per_second: f64,
}

async fn change_rate(State(shared): State<Shared>, Json(rate): Json<Rate>) -> impl IntoResponse {
    if !(rate.requests_per_second.is_finite() && rate.requests_per_second >= 0.0) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "requestsPerSecond must be a non-negative number"})),
        );
    }
    shared.lock().expect("simulation lock").requests_per_second = rate.requests_per_second;
    (
        StatusCode::OK,
        Json(json!({"requestsPerSecond": rate.requests_per_second})),
    )
}
