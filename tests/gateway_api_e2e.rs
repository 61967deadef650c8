//! End-to-end rollouts with the Gateway API router: the `canary controller` process (with the
//! namespace-scoped install's Role, see [`world`]) against the real local control plane and
//! the Gateway API v1.4 CRDs, a real Prometheus scraping the traffic simulator, which routes
//! by the live backendRef weights of a real HTTPRoute and reports Envoy's upstream cluster
//! statistics, as Envoy Gateway does.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::{Duration, Instant};

use cluster::{TestNamespace, cluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use rollout::{
    ROLLOUT_TIMEOUT, Simulator, canary_scaled_to_zero, create, follow_until, image_of, set_image,
    start_namespaced_controller,
};
use serde_json::{Value, json};
use tokio::process::Child;

use canary::api::canary::{Canary, Phase, RollbackReason};

const GATEWAY: &str = "gateway.networking.k8s.io";
const TESTERS_RULE: &str = "canary.dev.header.testers";

struct World {
    ns: TestNamespace,
    simulator: Simulator,
    _prometheus: prometheus::Prometheus,
    _controller: Child,
    /// The HTTPRoute's rules as the API server stored them before the controller ran.
    rules: Vec<Value>,
}

fn routes(ns: &TestNamespace) -> Api<DynamicObject> {
    ns.dynamic(GATEWAY, "HTTPRoute")
}

fn grpc_routes(ns: &TestNamespace) -> Api<DynamicObject> {
    ns.dynamic(GATEWAY, "GRPCRoute")
}

async fn grpc_rules(ns: &TestNamespace) -> Vec<Value> {
    let route = grpc_routes(ns)
        .get("web-grpc")
        .await
        .expect("reading GRPCRoute web-grpc");
    route.data["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The service `web` behind the HTTPRoute `web`: its Deployment (2 replicas of web:1), the
/// user's Services `web-stable`/`web-canary` (one version's pods each), the route (a split
/// rule, then a rule only to stable that the controller must leave alone), an
/// AnalysisTemplate judging the canary from Envoy's cluster statistics, and a Canary with
/// `steps`; with `grpc`, also the GRPCRoute `web-grpc` splitting one gRPC service.
async fn set_up(ns: &TestNamespace, steps: Value, grpc: bool) {
    create::<Deployment>(
        &ns.api(),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "web:1"}]},
                },
            },
        }),
    )
    .await;
    for subset in ["stable", "canary"] {
        create::<Service>(
            &ns.api(),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("web-{subset}")},
                "spec": {
                    "selector": {"app": "web", "canary.dev/subset": subset},
                    "ports": [{"port": 8080}],
                },
            }),
        )
        .await;
    }
    create::<DynamicObject>(
        &routes(ns),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "timeouts": {"request": "10s"},
                     "backendRefs": [
                        {"name": "web-stable", "port": 8080, "weight": 100},
                        {"name": "web-canary", "port": 8080, "weight": 0},
                     ]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                     "backendRefs": [{"name": "web-stable", "port": 8080}]},
                ],
            },
        }),
    )
    .await;
    if grpc {
        create::<DynamicObject>(
            &grpc_routes(ns),
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
                "metadata": {"name": "web-grpc"},
                "spec": {
                    "parentRefs": [{"name": "gw"}],
                    "rules": [{
                        "matches": [{"method": {"service": "shop.Cart"}}],
                        "backendRefs": [
                            {"name": "web-stable", "port": 8080, "weight": 100},
                            {"name": "web-canary", "port": 8080, "weight": 0},
                        ],
                    }],
                },
            }),
        )
        .await;
    }
    let grpc_routes: Vec<&str> = if grpc { vec!["web-grpc"] } else { vec![] };
    create::<canary::api::AnalysisTemplate>(&ns.api(), json!({
        "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "success-rate"},
        "spec": {
            "metrics": [{
                "name": "success-rate",
                "interval": "2s",
                "initialDelay": "6s",
                "count": 3,
                "inconclusiveLimit": 2,
                "successCondition": "result[0] >= 0.95",
                // The cluster of the split rule's canary backend (index 1), as Envoy Gateway
                // names it when each backendRef has its own.
                "provider": {"prometheus": {"query": concat!(
                    "sum(rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name=\"httproute/{{namespace}}/web/rule/0/backend/1\",envoy_response_code_class!=\"5\"}[5s]))",
                    " / sum(rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name=\"httproute/{{namespace}}/web/rule/0/backend/1\"}[5s]))"
                )}},
            }],
        },
    })).await;
    create::<Canary>(
        &ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web"},
            "spec": {
                "targetRef": {"name": "web"},
                "service": {"port": 8080},
                "trafficRouting": {"gatewayAPI": {
                    "httpRoute": "web",
                    "stableService": "web-stable",
                    "canaryService": "web-canary",
                    "grpcRoutes": grpc_routes,
                }},
                "steps": steps,
                "progressDeadlineSeconds": 60,
                "scaleDownDelaySeconds": 3,
            },
        }),
    )
    .await;
}

/// The steps of most tests: 20%, the testers' header route, the analysis, 50%, promote.
fn steps() -> Value {
    json!([
        {"setWeight": 20},
        {"setHeaderRoute": {"name": "testers", "match": [{"headerName": "x-canary", "headerValue": {"exact": "always"}}]}},
        {"analysis": {"templates": [{"templateName": "success-rate"}]}},
        {"setWeight": 50},
        {"pause": {"duration": "2s"}},
    ])
}

/// The simulator following the HTTPRoute, Prometheus scraping it, and the controller with
/// the namespace-scoped install's Role. Namespaced, not the ClusterRole: that one is shared
/// by every test process on the control plane and re-applied by each from its own tree.
async fn start(ns: TestNamespace, rules: Vec<Value>) -> World {
    let simulator = Simulator::following(&ns, &["--http-route", "web"]).await;
    let prometheus = simulator.scraped_as("gateway").await;
    let controller = start_namespaced_controller(&ns, &prometheus.url()).await;
    let (canary, timeline) = follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    eprintln!("initialized:\n{}", timeline.join("\n"));
    assert_eq!(canary.status.unwrap().canary_weight, 0);
    World {
        ns,
        simulator,
        _prometheus: prometheus,
        _controller: controller,
        rules,
    }
}

async fn world(prefix: &str, steps: Value) -> World {
    world_with(prefix, steps, false).await
}

async fn world_with(prefix: &str, steps: Value, grpc: bool) -> World {
    let ns = cluster().namespace(prefix).await;
    set_up(&ns, steps, grpc).await;
    let rules = route_rules(&ns).await;
    start(ns, rules).await
}

async fn route_rules(ns: &TestNamespace) -> Vec<Value> {
    let route = routes(ns).get("web").await.expect("reading HTTPRoute web");
    route.data["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The canary's weight in the split rule (the stable one's is checked to be the rest).
async fn canary_weight(ns: &TestNamespace) -> u64 {
    let rules = route_rules(ns).await;
    let weight = |i: usize| rules[0]["backendRefs"][i]["weight"].as_u64().unwrap_or(1);
    assert_eq!(weight(0) + weight(1), 100, "{rules:?}");
    weight(1)
}

async fn at_weight(ns: &TestNamespace, weight: u64) {
    eventually(
        &format!("the HTTPRoute at {weight}% canary"),
        ROLLOUT_TIMEOUT,
        || async { (canary_weight(ns).await == weight).then_some(()) },
    )
    .await;
}

/// Sets the split rule's weights as a person or a GitOps sync would.
async fn set_weights_by_hand(ns: &TestNamespace, stable: u64, canary: u64) {
    routes(ns)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": stable},
                    {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": canary},
                ]))
                .unwrap(),
            ),
        )
        .await
        .expect("changing the weights by hand");
}

/// The controller's header-route rule, if the route has it.
async fn testers_rule(ns: &TestNamespace) -> Option<Value> {
    route_rules(ns)
        .await
        .into_iter()
        .find(|r| r["name"] == TESTERS_RULE)
}

/// The route's rules are the user's exactly, but for the split rule's two weights.
async fn assert_users_rules_with_weights(world: &World, stable: u64, canary: u64) {
    let mut expected = world.rules.clone();
    expected[0]["backendRefs"][0]["weight"] = json!(stable);
    expected[0]["backendRefs"][1]["weight"] = json!(canary);
    assert_eq!(route_rules(&world.ns).await, expected);
}

async fn request(ns: &TestNamespace, action: &str, id: &str) {
    let api: Api<Canary> = ns.api();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {format!("request.canary.dev/{id}"): action}}}),
        ),
    )
    .await
    .expect("annotating the Canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_revision_is_promoted_and_its_header_route_removed() {
    let world = world("gw-promote", steps()).await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    let rule = eventually("the testers' header rule", ROLLOUT_TIMEOUT, || {
        testers_rule(&world.ns)
    })
    .await;
    // A copy of the split rule (its path and timeouts) with the header added, to the
    // canary only; after the user's rules, which are as they were.
    assert_eq!(
        rule["matches"][0]["path"],
        world.rules[0]["matches"][0]["path"]
    );
    assert_eq!(
        rule["matches"][0]["headers"],
        json!([{"type": "Exact", "name": "x-canary", "value": "always"}])
    );
    assert_eq!(rule["timeouts"], json!({"request": "10s"}));
    assert_eq!(rule["backendRefs"].as_array().unwrap().len(), 1);
    assert_eq!(rule["backendRefs"][0]["name"], "web-canary");
    let rules = route_rules(&world.ns).await;
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert_eq!(
        rules[1], world.rules[1],
        "the rule to stable only is untouched"
    );

    let (canary, timeline) = follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!("healthy rollout:\n{}", timeline.join("\n"));
    let text = timeline.join("\n");
    assert!(text.contains("weight=50"), "{text}");
    let status = canary.status.unwrap();
    let tally = status.analysis_runs[0].metrics[0].tally;
    assert_eq!((tally.measured, tally.failed), (3, 0), "{status:?}");
    assert!(status.header_routes.is_empty(), "{status:?}");
    assert_users_rules_with_weights(&world, 100, 0).await;
    let deployments: Api<Deployment> = world.ns.api();
    assert_eq!(
        image_of(&deployments.get("web-stable").await.unwrap()),
        "web:2"
    );
    canary_scaled_to_zero(&world.ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_by_analysis_of_envoys_statistics() {
    let world = world("gw-rollback", steps()).await;
    world.simulator.set_error_rate("web-canary", 0.5).await;
    set_image(&world.ns, "web:bad").await;
    let (canary, timeline) = follow_until(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    eprintln!("bad canary:\n{}", timeline.join("\n"));
    let status = canary.status.unwrap();
    assert_eq!(status.rollback_reason, Some(RollbackReason::AnalysisFailed));
    let measurements = &status.analysis_runs[0].metrics[0].measurements;
    assert!(
        measurements.iter().any(|m| m.reason.contains("is false")),
        "{measurements:?}"
    );
    // All traffic on stable, and the header route gone with the rollout.
    assert_users_rules_with_weights(&world, 100, 0).await;
    canary_scaled_to_zero(&world.ns).await;
}

/// With a GRPCRoute beside the HTTPRoute: the same weights and header route in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_puts_all_traffic_on_stable_and_removes_the_header_route_within_seconds() {
    let steps = json!([
        {"setWeight": 20},
        {"setHeaderRoute": {"name": "testers", "match": [{"headerName": "x-canary", "headerValue": {"prefix": "al"}}]}},
        {"pause": {}},
    ]);
    let world = world_with("gw-abort", steps, true).await;
    let grpc_before = grpc_rules(&world.ns).await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    let rule = eventually("the testers' header rule", ROLLOUT_TIMEOUT, || {
        testers_rule(&world.ns)
    })
    .await;
    assert_eq!(
        rule["matches"][0]["headers"],
        json!([{"type": "RegularExpression", "name": "x-canary", "value": "^al.*"}])
    );
    follow_until(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    // The GRPCRoute: its rule at 80/20, and the header route's copy of it (method kept).
    let grpc = grpc_rules(&world.ns).await;
    assert_eq!(grpc.len(), 2, "{grpc:?}");
    assert_eq!(grpc[0]["backendRefs"][0]["weight"], 80);
    assert_eq!(grpc[0]["backendRefs"][1]["weight"], 20);
    assert_eq!(grpc[1]["name"], TESTERS_RULE);
    assert_eq!(
        grpc[1]["matches"],
        json!([{"method": grpc_before[0]["matches"][0]["method"].clone(),
                "headers": [{"type": "RegularExpression", "name": "x-canary", "value": "^al.*"}]}])
    );
    let asked = Instant::now();
    request(&world.ns, "abort", "gw-e2e-1").await;
    eventually(
        "all traffic on stable, the header route gone",
        Duration::from_secs(10),
        || async {
            (canary_weight(&world.ns).await == 0 && testers_rule(&world.ns).await.is_none())
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "abort to 100% stable: {:.0} ms",
        asked.elapsed().as_secs_f64() * 1000.0
    );
    let (canary, _) = follow_until(&world.ns, Phase::RolledBack, Duration::from_secs(30)).await;
    let request = canary.status.unwrap().last_request.unwrap();
    assert!(request.accepted && request.id == "gw-e2e-1", "{request:?}");
    assert_users_rules_with_weights(&world, 100, 0).await;
    assert_eq!(
        grpc_rules(&world.ns).await,
        grpc_before,
        "the GRPCRoute as written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_changed_behind_the_controllers_back_is_set_back_with_an_event() {
    let world = world("gw-drift", json!([{"setWeight": 20}, {"pause": {}}])).await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    follow_until(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    // Someone (a GitOps sync, a hand edit) sets the split to 50/50.
    set_weights_by_hand(&world.ns, 50, 50).await;
    at_weight(&world.ns, 20).await;
    let drift = cluster::event_with_reason(&world.ns, "WeightDrift", Duration::from_secs(10)).await;
    assert_eq!(drift.type_.as_deref(), Some("Warning"));
    let note = drift.note.unwrap_or_default();
    assert!(
        note.contains("50%") && note.contains("set back to 20%"),
        "{note}"
    );
    assert_users_rules_with_weights(&world, 80, 20).await;
}

/// The objects of `deploy/examples/gateway-api-canary.yaml`, as written.
fn example() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/gateway-api-canary.yaml"
    ))
    .expect("reading the example");
    text.split("\n---\n")
        .map(|document| serde_saphyr::from_str(document).expect("the example parses"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_with_created_services_rolls_out_and_hands_the_service_back() {
    let ns = cluster().namespace("gw-example").await;
    let client = cluster().client().await;
    for object in example() {
        let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
            Some((group, version)) => (group.to_string(), version.to_string()),
            None => (
                String::new(),
                object["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, object["kind"].as_str().unwrap());
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns.name, &ApiResource::from_gvk(&gvk));
        create(&api, object).await;
    }
    let rules = route_rules(&ns).await;
    let world = start(ns, rules).await;
    let ns = &world.ns;

    // Created, owned by the Canary, each selecting one version's pods.
    let services: Api<Service> = ns.api();
    for subset in ["stable", "canary"] {
        let service = services.get(&format!("web-{subset}")).await.unwrap();
        let spec = service.spec.clone().unwrap();
        let selector = spec.selector.unwrap();
        assert_eq!(
            selector.get("canary.dev/subset").map(String::as_str),
            Some(subset)
        );
        assert_eq!(selector.get("app").map(String::as_str), Some("web"));
        assert_eq!(spec.ports.unwrap()[0].port, 8080);
        let owners = service.metadata.owner_references.unwrap_or_default();
        assert!(
            owners.iter().any(|o| o.kind == "Canary" && o.name == "web"),
            "{owners:?}"
        );
    }
    let version = services
        .get("web-stable")
        .await
        .unwrap()
        .metadata
        .resource_version;

    set_image(ns, "web:2").await;
    eventually("the testers' header rule", ROLLOUT_TIMEOUT, || {
        testers_rule(ns)
    })
    .await;
    let (_, timeline) = follow_until(ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!("example rollout:\n{}", timeline.join("\n"));
    assert_users_rules_with_weights(&world, 100, 0).await;
    // Written once: nothing differed since, so nothing was applied again.
    assert_eq!(
        services
            .get("web-stable")
            .await
            .unwrap()
            .metadata
            .resource_version,
        version
    );

    // Deleting the Canary hands the service back: the route at 100% stable, the Services kept
    // (the route names them) and selecting the Deployment's own pods.
    let canaries: Api<Canary> = ns.api();
    canaries.delete("web", &Default::default()).await.unwrap();
    eventually("the Canary gone", ROLLOUT_TIMEOUT, || async {
        canaries.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    for subset in ["stable", "canary"] {
        let service = services.get(&format!("web-{subset}")).await.unwrap();
        let selector = service.spec.unwrap().selector.unwrap();
        assert_eq!(selector, [("app".to_string(), "web".to_string())].into());
        assert!(
            !service
                .metadata
                .owner_references
                .unwrap_or_default()
                .iter()
                .any(|o| o.kind == "Canary"),
            "web-{subset} is no longer the Canary's, so it is not collected with it"
        );
    }
    assert_users_rules_with_weights(&world, 100, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_copied_onto_the_same_route_is_refused_and_settled_drift_is_set_back() {
    let world = world("gw-owner", json!([{"setWeight": 20}, {"pause": {}}])).await;
    let canaries: Api<Canary> = world.ns.api();
    rollout::copy_canary(&world.ns, "web", "web-copy", "web-copy").await;
    let refused = rollout::refused_as_conflicting(&world.ns, "web-copy").await;
    let message = refused.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains("HTTPRoute web belongs to Canary web"),
        "{message}"
    );

    // Settled, a hand edit of the split is set back and reported at once.
    set_weights_by_hand(&world.ns, 70, 30).await;
    let drift = cluster::event_with_reason(&world.ns, "WeightDrift", Duration::from_secs(10)).await;
    let note = drift.note.unwrap_or_default();
    assert!(note.contains("30%") && note.contains("Idle"), "{note}");
    at_weight(&world.ns, 0).await;

    // Deleting the copy leaves the route as the owner has it.
    canaries
        .delete("web-copy", &Default::default())
        .await
        .unwrap();
    cluster::wait_gone(&canaries, "web-copy", Duration::from_secs(30)).await;
    assert_users_rules_with_weights(&world, 100, 0).await;
}
