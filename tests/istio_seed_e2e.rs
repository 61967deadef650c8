//! The design's header-route VirtualService and DestinationRule (`deploy/examples/
//! istio-header-route.yaml`, the seed byte for byte) applied as written, in front of a
//! Deployment `api-server` rolled out by a Canary that names no routes: the `canary controller`
//! process with the deployed RBAC, the real local control plane, a real Prometheus scraping the
//! traffic simulator, which routes requests without headers as Istio would (past the seed's
//! header route, by the weights of its unnamed weighted route).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::Duration;

use cluster::{TestNamespace, cluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use rollout::{
    ROLLOUT_TIMEOUT, Simulator, World, create, create_success_rate_template, follow_canary_until,
    set_image_of, start_controller,
};
use serde_json::{Value, json};

use canary::api::canary::{Canary, Phase, RollbackReason};

const NAME: &str = "api-server";
const SEED: &str = include_str!("../deploy/examples/istio-header-route.yaml");

/// The seed's objects, as the file writes them.
fn seed_documents() -> Vec<Value> {
    SEED.split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).expect("the seed parses"))
        .collect()
}

/// The namespace's Istio `kind` at `networking.istio.io/<version>`.
fn istio(ns: &TestNamespace, version: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", version, kind);
    Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::from_gvk(&gvk))
}

async fn spec_of(ns: &TestNamespace, kind: &str) -> Value {
    let object = istio(ns, "v1beta1", kind)
        .get(NAME)
        .await
        .unwrap_or_else(|e| panic!("reading {kind} {NAME}: {e}"));
    object.data["spec"].clone()
}

/// The VirtualService's spec with every destination's weight left out.
fn without_weights(spec: &Value) -> Value {
    let mut spec = spec.clone();
    for route in spec["http"].as_array_mut().into_iter().flatten() {
        for d in route["route"].as_array_mut().into_iter().flatten() {
            d.as_object_mut().unwrap().remove("weight");
        }
    }
    spec
}

/// The (stable, canary) weights of the route that carries both subsets.
fn split_of(spec: &Value) -> (u64, u64) {
    let weight = |route: &Value, subset: &str| {
        route["route"]
            .as_array()?
            .iter()
            .find(|d| d["destination"]["subset"] == subset)
            .map(|d| d["weight"].as_u64().unwrap_or(0))
    };
    spec["http"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| Some((weight(r, "stable")?, weight(r, "canary")?)))
        .expect("a route with both subsets")
}

async fn split(ns: &TestNamespace) -> (u64, u64) {
    split_of(&spec_of(ns, "VirtualService").await)
}

/// Waits (bounded) until the weighted route gives the canary `weight` percent.
async fn at_weight(ns: &TestNamespace, weight: u64) {
    eventually(
        &format!("the seed's weighted route at canary {weight}%"),
        ROLLOUT_TIMEOUT,
        || async { (split(ns).await == (100 - weight, weight)).then_some(()) },
    )
    .await;
}

/// Waits (bounded) until the simulator sends (stable, canary) percent of its requests to the
/// two workloads.
async fn simulated_split(ns: &TestNamespace, simulator: &Simulator, expected: (u32, u32)) {
    let route = format!("VirtualService {}/{NAME}", ns.name);
    eventually(
        &format!("the simulator splitting {expected:?}"),
        Duration::from_secs(30),
        || async {
            let state: Value = reqwest::get(format!("http://{}/state", simulator.address))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let weight = |workload: &str| {
                state["weights"][&route]
                    .as_array()?
                    .iter()
                    .find(|d| d["workload"] == workload)?["weight"]
                    .as_u64()
            };
            let found = (weight("api-server-stable")?, weight("api-server-canary")?);
            (found == (u64::from(expected.0), u64::from(expected.1))).then_some(())
        },
    )
    .await;
}

/// The seed's service at rest: `api-server` (2 replicas of `api-server:1`), the seed's
/// VirtualService and DestinationRule created as the file writes them
/// (`networking.istio.io/v1beta1`), the success-rate templates, and a Canary walking `steps`
/// (with `background` as its background analysis, if any); the simulator, Prometheus and the
/// controller running. Returns the world and the two seed objects' specs as created.
async fn seed_world(prefix: &str, steps: Value, background: Option<&str>) -> (World, Value, Value) {
    let ns = cluster().namespace(prefix).await;
    create::<Deployment>(
        &ns.api(),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "labels": {"app": NAME}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": NAME}},
                "template": {
                    "metadata": {"labels": {"app": NAME}},
                    "spec": {"containers": [{"name": "app", "image": "api-server:1"}]},
                },
            },
        }),
    )
    .await;
    for document in seed_documents() {
        assert_eq!(document["apiVersion"], "networking.istio.io/v1beta1");
        let kind = document["kind"].as_str().unwrap();
        create::<DynamicObject>(&istio(&ns, "v1beta1", kind), document.clone()).await;
    }
    let virtual_service = spec_of(&ns, "VirtualService").await;
    let destination_rule = spec_of(&ns, "DestinationRule").await;
    create_success_rate_template(&ns, "success-rate", Some(3)).await;
    create_success_rate_template(&ns, "success-rate-ongoing", None).await;
    let mut spec = json!({
        "targetRef": {"name": NAME},
        "service": {"port": 8080},
        // No route names: the controller finds the route that carries both subsets.
        "trafficRouting": {"istio": {
            "virtualService": {"name": NAME},
            "destinationRule": {"name": NAME},
        }},
        "steps": steps,
        "progressDeadlineSeconds": 60,
        "scaleDownDelaySeconds": 3,
    });
    if let Some(template) = background {
        spec["analysis"] = json!({"templates": [{"templateName": template}]});
    }
    create::<Canary>(
        &ns.api(),
        json!({"apiVersion": "canary.dev/v1alpha1", "kind": "Canary", "metadata": {"name": NAME}, "spec": spec}),
    )
    .await;

    let simulator = Simulator::start_following(&ns, &["--virtual-service", NAME]).await;
    // Before the controller: the seed as written, requests without the header split 90/10.
    simulated_split(&ns, &simulator, (90, 10)).await;
    let prometheus = simulator.scraped_as("mesh").await;
    let controller = start_controller(&ns, &prometheus.url()).await;
    let (canary, timeline) = follow_canary_until(&ns, NAME, Phase::Idle, ROLLOUT_TIMEOUT).await;
    eprintln!("initialized:\n{}", timeline.join("\n"));
    assert_eq!(canary.status.unwrap().canary_weight, 0);
    at_weight(&ns, 0).await;
    simulated_split(&ns, &simulator, (100, 0)).await;
    let world = World {
        ns,
        simulator,
        prometheus: Some(prometheus),
        controller,
    };
    (world, virtual_service, destination_rule)
}

/// The seed's DestinationRule spec as the controller leaves it: the two subsets select the
/// managed pods, everything else as written.
fn destination_rule_managed(created: &Value) -> Value {
    let mut expected = created.clone();
    expected["subsets"][0]["labels"] = json!({"canary.dev/subset": "stable"});
    expected["subsets"][1]["labels"] = json!({"canary.dev/subset": "canary"});
    expected
}

/// Asserts that the VirtualService is the seed as created, weights aside, with all traffic on
/// stable, and that the DestinationRule changed only its subsets' labels.
async fn seed_intact_on_stable(
    ns: &TestNamespace,
    virtual_service: &Value,
    destination_rule: &Value,
) {
    let live = spec_of(ns, "VirtualService").await;
    assert_eq!(without_weights(&live), without_weights(virtual_service));
    assert_eq!(
        live["http"][0], virtual_service["http"][0],
        "the seed's header route, its weight included, is as written"
    );
    assert_eq!(split_of(&live), (100, 0));
    assert_eq!(
        spec_of(ns, "DestinationRule").await,
        destination_rule_managed(destination_rule)
    );
}

async fn request(ns: &TestNamespace, id: &str, action: &str) {
    let api: Api<Canary> = ns.api();
    api.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {format!("request.canary.dev/{id}"): action}}}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("requesting {action}: {e}"));
}

fn healthy_steps() -> Value {
    json!([
        {"setWeight": 20},
        {"analysis": {"templates": [{"templateName": "success-rate"}]}},
        {"setWeight": 50},
        {"pause": {"duration": "2s"}},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_is_promoted_with_its_weighted_route_managed_and_its_header_route_as_written() {
    let (world, virtual_service, destination_rule) =
        seed_world("seed-promote", healthy_steps(), None).await;
    let ns = &world.ns;
    set_image_of(ns, NAME, "api-server:2").await;
    at_weight(ns, 20).await;
    // Mid-rollout: only the weights of the unnamed weighted route moved, and the simulated
    // mesh splits by them.
    let live = spec_of(ns, "VirtualService").await;
    assert_eq!(without_weights(&live), without_weights(&virtual_service));
    assert_eq!(live["http"][0], virtual_service["http"][0]);
    simulated_split(ns, &world.simulator, (80, 20)).await;

    let (canary, timeline) = follow_canary_until(ns, NAME, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!("healthy rollout:\n{}", timeline.join("\n"));
    let text = timeline.join("\n");
    assert!(text.contains("weight=50"), "{text}");
    let status = canary.status.unwrap();
    let tally = status.analysis_runs[0].metrics[0].tally;
    assert_eq!((tally.measured, tally.failed), (3, 0), "{status:?}");
    assert!(
        tally.successful >= 1,
        "the canary's traffic was measured: {tally:?}"
    );
    let stable: Deployment = ns.api().get("api-server-stable").await.unwrap();
    assert_eq!(rollout::image_of(&stable), "api-server:2");
    seed_intact_on_stable(ns, &virtual_service, &destination_rule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_behind_the_seed_is_rolled_back_by_analysis() {
    let (world, virtual_service, destination_rule) =
        seed_world("seed-rollback", healthy_steps(), None).await;
    let ns = &world.ns;
    world
        .simulator
        .set_error_rate("api-server-canary", 0.5)
        .await;
    set_image_of(ns, NAME, "api-server:bad").await;
    let (canary, timeline) =
        follow_canary_until(ns, NAME, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    eprintln!("bad canary:\n{}", timeline.join("\n"));
    let status = canary.status.unwrap();
    assert_eq!(status.rollback_reason, Some(RollbackReason::AnalysisFailed));
    let measurements = &status.analysis_runs[0].metrics[0].measurements;
    assert!(
        measurements.iter().any(|m| m.reason.contains("is false")),
        "{measurements:?}"
    );
    let stable: Deployment = ns.api().get("api-server-stable").await.unwrap();
    assert_eq!(rollout::image_of(&stable), "api-server:1");
    seed_intact_on_stable(ns, &virtual_service, &destination_rule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_behind_the_seed_puts_all_traffic_on_stable() {
    let (world, virtual_service, destination_rule) = seed_world(
        "seed-abort",
        json!([{"setWeight": 20}, {"pause": {}}]),
        None,
    )
    .await;
    let ns = &world.ns;
    set_image_of(ns, NAME, "api-server:2").await;
    at_weight(ns, 20).await;
    request(ns, "e2e-abort", "abort").await;
    at_weight(ns, 0).await;
    let (canary, _) =
        follow_canary_until(ns, NAME, Phase::RolledBack, Duration::from_secs(30)).await;
    let status = canary.status.unwrap();
    assert_eq!(status.rollback_reason, Some(RollbackReason::Aborted));
    seed_intact_on_stable(ns, &virtual_service, &destination_rule).await;
    simulated_split(ns, &world.simulator, (100, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_changed_behind_the_controllers_back_is_set_back() {
    // The ongoing background analysis measures every 2 s, so the controller looks at the
    // routing at least that often.
    let (world, virtual_service, _) = seed_world(
        "seed-drift",
        json!([{"setWeight": 20}, {"pause": {}}]),
        Some("success-rate-ongoing"),
    )
    .await;
    let ns = &world.ns;
    set_image_of(ns, NAME, "api-server:2").await;
    at_weight(ns, 20).await;
    // Someone (a GitOps sync of the seed as written) puts the seed's 90/10 back.
    let vs = istio(ns, "v1beta1", "VirtualService");
    vs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 90},
                {"op": "replace", "path": "/spec/http/1/route/1/weight", "value": 10},
            ]))
            .unwrap(),
        ),
    )
    .await
    .expect("changing the weights behind the controller's back");
    let drift = cluster::event_with_reason(ns, "WeightDrift", Duration::from_secs(30)).await;
    let note = drift.note.unwrap_or_default();
    assert!(note.contains("10% instead of the rollout's 20%"), "{note}");
    at_weight(ns, 20).await;
    let live = spec_of(ns, "VirtualService").await;
    assert_eq!(without_weights(&live), without_weights(&virtual_service));
    assert_eq!(live["http"][0], virtual_service["http"][0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_route_step_routes_testers_until_promotion_and_until_abort() {
    let steps = json!([
        {"setWeight": 20},
        {"setHeaderRoute": {"name": "testers", "match": [
            {"headerName": "X-Canary-Tester", "headerValue": {"exact": "yes"}},
        ]}},
        {"pause": {}},
    ]);
    let (world, virtual_service, destination_rule) = seed_world("seed-header", steps, None).await;
    let ns = &world.ns;
    let expected_route = json!({
        "name": "canary-header-testers",
        "match": [{"headers": {"x-canary-tester": {"exact": "yes"}}}],
        "route": [{"destination": {"host": NAME, "subset": "canary"}, "weight": 100}],
    });
    let routed = || async {
        let live = spec_of(ns, "VirtualService").await;
        let http = live["http"].as_array().unwrap().clone();
        // The route and the step's weight: the weight is written after the route (reconcile
        // orders a non-zero weight last), so a moment may pass between the two.
        (http.len() == 3 && http[0] == expected_route && split_of(&live) == (80, 20))
            .then_some(live)
    };

    for (round, image, end) in [(1, "api-server:2", "promote"), (2, "api-server:3", "abort")] {
        set_image_of(ns, NAME, image).await;
        let live = eventually(
            &format!("round {round}: the testers' route on top"),
            ROLLOUT_TIMEOUT,
            routed,
        )
        .await;
        // Below it, the seed's routes as written (the weighted one at 20% once moved).
        let http = live["http"].as_array().unwrap();
        assert_eq!(
            http[1], virtual_service["http"][0],
            "the seed's header route"
        );
        assert_eq!(
            without_weights(&json!({"http": [http[2].clone()]})),
            without_weights(&json!({"http": [virtual_service["http"][1].clone()]}))
        );
        let (_, timeline) = follow_canary_until(ns, NAME, Phase::Paused, ROLLOUT_TIMEOUT).await;
        eprintln!("round {round}, header route set:\n{}", timeline.join("\n"));
        request(ns, &format!("e2e-{round}"), end).await;
        let phase = if end == "promote" {
            Phase::Promoted
        } else {
            Phase::RolledBack
        };
        let (canary, timeline) = follow_canary_until(ns, NAME, phase, ROLLOUT_TIMEOUT).await;
        eprintln!("round {round}, {end}:\n{}", timeline.join("\n"));
        assert!(canary.status.unwrap().header_routes.is_empty());
        eventually(
            &format!("round {round}: the testers' route gone after {end}"),
            Duration::from_secs(10),
            || async {
                let live = spec_of(ns, "VirtualService").await;
                (live["http"].as_array().unwrap().len() == 2).then_some(())
            },
        )
        .await;
        seed_intact_on_stable(ns, &virtual_service, &destination_rule).await;
    }
}
