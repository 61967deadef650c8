//! Shared by the replica-split end-to-end tests: the service of
//! `deploy/examples/replica-canary.yaml` (one Service, one Deployment, a Canary without
//! `trafficRouting`) applied as written on the real local control plane, the traffic
//! simulator spreading requests over the Service's ready pods, a real Prometheus scraping
//! it, and `canary controller` as its own process with the deployed RBAC.
//!
//! Include it with `#[path = "support/replicas.rs"] mod replicas;` beside `cluster`,
//! `prometheus` and `rollout`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::process::Child;

use canary::api::canary::{Canary, Phase};

use crate::cluster::{TestNamespace, cluster};
use crate::prometheus;
use crate::rollout::{ROLLOUT_TIMEOUT, Simulator, start_controller};

/// The example's Service, target Deployment and Canary.
pub const NAME: &str = "order-service";
pub const STABLE: &str = "order-service-stable";
pub const CANARY: &str = "order-service-canary";

/// The documents of `deploy/examples/replica-canary.yaml`, in order.
pub fn example_documents() -> Vec<Value> {
    documents_of_example("replica-canary.yaml")
}

/// The documents of `deploy/examples/<file>`, in order.
pub fn documents_of_example(file: &str) -> Vec<Value> {
    let path = format!("{}/deploy/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.split("\n---\n")
        .map(|document| {
            serde_saphyr::from_str(document)
                .unwrap_or_else(|e| panic!("a document of {path} does not parse: {e}"))
        })
        .collect()
}

/// Creates each document in `ns` with the API its apiVersion and kind name.
pub async fn apply_documents(ns: &TestNamespace, documents: &[Value]) {
    for document in documents {
        let api_version = document["apiVersion"].as_str().expect("apiVersion");
        let kind = document["kind"].as_str().expect("kind");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
        let name = document["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::apply("canary-e2e"),
            &Patch::Apply(document),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name} of the example: {e}"));
    }
}

pub struct ReplicaWorld {
    pub ns: TestNamespace,
    pub simulator: Simulator,
    pub prometheus: prometheus::Prometheus,
    pub controller: Child,
}

/// The example applied (after `edit`, which may change its documents: `|_| {}` for as
/// written) in a new namespace, traffic flowing to the Service's ready pods and scraped, the
/// controller running and the Canary Idle.
pub async fn replica_world(prefix: &str, edit: impl FnOnce(&mut [Value])) -> ReplicaWorld {
    replica_world_in(cluster().namespace(prefix).await, edit).await
}

/// [`replica_world`] in a namespace the test made itself.
pub async fn replica_world_in(ns: TestNamespace, edit: impl FnOnce(&mut [Value])) -> ReplicaWorld {
    let mut documents = example_documents();
    edit(&mut documents);
    apply_documents(&ns, &documents).await;
    let simulator = Simulator::following(&ns, &["--service", NAME]).await;
    let prometheus = simulator.scraped_as("apps").await;
    let controller = start_controller(&ns, &prometheus.url()).await;
    let (canary, timeline) = follow(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    eprintln!("initialized:\n{}", timeline.join("\n"));
    assert_eq!(canary.status.unwrap().canary_weight, 0);
    ReplicaWorld {
        ns,
        simulator,
        prometheus,
        controller,
    }
}

/// The document of `kind` in `documents`.
pub fn document<'a>(documents: &'a mut [Value], kind: &str) -> &'a mut Value {
    documents
        .iter_mut()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("the example has a {kind}"))
}

/// A new revision of the target: its container `order-service` runs `image`.
pub async fn set_image(ns: &TestNamespace, image: &str) {
    set_container_image(ns, NAME, "order-service", image).await;
}

/// A new revision of Deployment `deployment`: its container `container` runs `image`.
pub async fn set_container_image(
    ns: &TestNamespace,
    deployment: &str,
    container: &str,
    image: &str,
) {
    let api: Api<Deployment> = ns.api();
    api.patch(
        deployment,
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": container, "image": image}
        ]}}}})),
    )
    .await
    .expect("setting the target's image");
}

pub async fn patch_canary(ns: &TestNamespace, patch: Value) {
    let api: Api<Canary> = ns.api();
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patching the Canary");
}

/// A managed Deployment's `(spec.replicas, ready replicas)`; `(0, 0)` while it does not exist.
pub async fn pods(ns: &TestNamespace, name: &str) -> (i32, i32) {
    let api: Api<Deployment> = ns.api();
    match api.get_opt(name).await.expect("reading a Deployment") {
        Some(d) => (
            d.spec.and_then(|s| s.replicas).unwrap_or(1),
            d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
        ),
        None => (0, 0),
    }
}

/// The state of the split at one moment, as a test reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub phase: Phase,
    pub weight: u8,
    pub effective: Option<u8>,
    /// `(spec.replicas, ready)` of the canary and of stable.
    pub canary: (i32, i32),
    pub stable: (i32, i32),
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} weight={} effective={} canary={}/{} stable={}/{}",
            self.phase,
            self.weight,
            self.effective.map_or("-".into(), |e| e.to_string()),
            self.canary.1,
            self.canary.0,
            self.stable.1,
            self.stable.0,
        )
    }
}

pub async fn split(ns: &TestNamespace) -> (Canary, Split) {
    let api: Api<Canary> = ns.api();
    let canary = api.get(NAME).await.expect("reading the Canary");
    let status = canary.status.clone().unwrap_or_default();
    let split = Split {
        phase: status.phase,
        weight: status.canary_weight,
        effective: status.effective_weight,
        canary: pods(ns, CANARY).await,
        stable: pods(ns, STABLE).await,
    };
    (canary, split)
}

/// Polls the Canary and both Deployments until `phase`, recording every change of the split
/// (phase, weights, pods) and the status message; the timeline is in the failure message.
pub async fn follow(ns: &TestNamespace, phase: Phase, timeout: Duration) -> (Canary, Vec<String>) {
    let (canary, _, timeline) = follow_splits(ns, phase, timeout).await;
    (canary, timeline)
}

/// [`follow`], also returning every split seen.
pub async fn follow_splits(
    ns: &TestNamespace,
    phase: Phase,
    timeout: Duration,
) -> (Canary, Vec<Split>, Vec<String>) {
    let started = Instant::now();
    let mut timeline = Vec::new();
    let mut seen: Vec<Split> = Vec::new();
    let mut last = String::new();
    loop {
        let (canary, split) = split(ns).await;
        let message = canary
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        let line = format!("{split} {message}");
        if line != last {
            timeline.push(format!("{:>5.1}s {line}", started.elapsed().as_secs_f64()));
            last = line;
        }
        if seen.last() != Some(&split) {
            seen.push(split.clone());
        }
        if split.phase == phase {
            return (canary, seen, timeline);
        }
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {phase:?}; timeline:\n{}",
            timeline.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The notes of the namespace's events with `reason` (events.k8s.io/v1, as the controller's
/// recorder writes them).
pub async fn event_notes(ns: &TestNamespace, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    events
        .list(&Default::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}
