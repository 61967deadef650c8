//! The design's blue-green Rollout (`tests/fixtures/convert/seed-bluegreen-rollout.yaml`, the
//! seed unchanged) converted by the real `canary convert` and applied to the real local control
//! plane with the two Services it names.
//! The API server accepts the converted Canary whole, and the converted seed rolls out
//! ([`drive_seed_rollout`]).
//!
//! A Flagger Canary and the MetricTemplate of Flagger's docs, converted and run on a live
//! rollout: the converted query measures the Deployment that runs the canary.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/replicas.rs"]
mod replicas;
#[path = "support/rollout.rs"]
mod rollout;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster::{TestNamespace, cluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use replicas::apply_documents;
use rollout::{
    ROLLOUT_TIMEOUT, Simulator, follow_canary_until, istio_web_service, start_controller,
};
use serde_json::{Value, json};

use canary::api::canary::{Canary, Phase, RollbackReason};

const SEED: &str = "tests/fixtures/convert/seed-bluegreen-rollout.yaml";
const NAME: &str = "api-server";
const ACTIVE: &str = "api-server-active";
const PREVIEW: &str = "api-server-preview";

/// `canary convert` of the seed, run as a user runs it: the documents it prints.
fn converted_seed() -> Vec<Value> {
    converted(SEED)
}

/// `canary convert FILE`, run as a user runs it: the documents it prints (it must exit 0).
fn converted(file: &str) -> Vec<Value> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_canary"))
        .args(["convert", file])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("canary convert runs");
    let report = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{report}");
    serde_saphyr::from_multiple(&String::from_utf8_lossy(&output.stdout))
        .expect("the output is a YAML stream")
}

fn of_kind(documents: &[Value], kind: &str) -> Vec<Value> {
    documents
        .iter()
        .filter(|d| d["kind"] == kind)
        .cloned()
        .collect()
}

/// The seed's active and preview Services, which the Rollout names and Argo users write
/// themselves: both select the app's pods on its port.
fn seed_services() -> Vec<Value> {
    [ACTIVE, PREVIEW]
        .iter()
        .map(|name| {
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name},
                "spec": {
                    "selector": {"app": NAME},
                    "ports": [{"port": 3000, "targetPort": 3000}],
                },
            })
        })
        .collect()
}

#[tokio::test]
async fn the_converted_seed_deployment_template_and_services_are_accepted_by_the_api_server() {
    let documents = converted_seed();
    let ns = cluster().namespace("convert-seed").await;
    let mut applied = of_kind(&documents, "Deployment");
    applied.extend(of_kind(&documents, "AnalysisTemplate"));
    applied.extend(seed_services());
    apply_documents(&ns, &applied).await;

    let deployment: Deployment = ns.api().get(NAME).await.expect("the Deployment");
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(20));
    assert_eq!(
        spec.selector.match_labels,
        Some(BTreeMap::from([("app".to_string(), NAME.to_string())]))
    );
    let containers = spec.template.spec.unwrap().containers;
    assert_eq!(
        containers[0].image.as_deref(),
        Some("myregistry.com/api-server:latest")
    );
    // Read back through our own type: what the controller will read.
    let template: canary::api::AnalysisTemplate = ns
        .api()
        .get("success-rate")
        .await
        .expect("the AnalysisTemplate");
    let metric = &template.spec.metrics[0];
    assert_eq!(
        (metric.count, metric.failure_limit),
        (Some(10), Some(3)),
        "{metric:?}"
    );
    assert_eq!(
        metric.success_condition.as_deref(),
        Some("result[0] >= 0.95")
    );
    for name in [ACTIVE, PREVIEW] {
        let service: Service = ns.api().get(name).await.expect("the Service");
        assert_eq!(
            service.spec.unwrap().selector,
            Some(BTreeMap::from([("app".to_string(), NAME.to_string())]))
        );
    }
}

#[tokio::test]
async fn the_api_server_accepts_the_converted_seed_canary_whole() {
    let documents = converted_seed();
    let canary = of_kind(&documents, "Canary").remove(0);
    let ns = cluster().namespace("convert-canary").await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("canary.dev", "v1alpha1", "Canary")),
    );
    // Strict: a field the CRD does not know is refused, not silently pruned.
    let stored = api
        .patch(
            NAME,
            &PatchParams::apply("canary-e2e").validation_strict(),
            &Patch::Apply(&canary),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused the converted Canary: {e}"));
    // Everything converted is stored as written (targetRef's apiVersion and kind are defaulted).
    for field in [
        "/strategy",
        "/scaleDownDelaySeconds",
        "/service",
        "/targetRef/name",
    ] {
        let spec = &canary["spec"];
        assert!(spec.pointer(field).is_some(), "{field} in {spec}");
        assert_eq!(
            stored.data["spec"].pointer(field),
            spec.pointer(field),
            "{field}"
        );
    }
}

#[tokio::test]
async fn the_converted_seed_rolls_out_blue_green() {
    let ns = cluster().namespace("convert-rollout").await;
    drive_seed_rollout(&ns, converted_seed()).await;
}

/// The converted seed applied as printed (with the Services), then a new image rolled out:
/// the preview comes up, the pre-promotion analysis passes against `api-server-preview`, the
/// rollout waits for `canary promote` (`autoPromotionEnabled: false`), the switch, the
/// post-promotion analysis against `api-server-active`, promoted: the active Service then
/// selects only ready pods of the new image.
///
/// Two things differ from the seed, both in its AnalysisTemplate and said here: its Prometheus
/// address (`http://prometheus:9090`, the in-cluster name) is this test's Prometheus, and its
/// measurements (10 every 30 s, five minutes per analysis) are 3 every 2 s. The metric it
/// queries, `http_requests_total{service, status}`, is served by this test, as an app behind
/// both Services reports it: all requests succeed.
async fn drive_seed_rollout(ns: &TestNamespace, mut documents: Vec<Value>) {
    let page = |scrape: u64| {
        let served = scrape * 100;
        format!(
            "# TYPE http_requests_total counter\n\
             http_requests_total{{service=\"{PREVIEW}\",status=\"200\"}} {served}\n\
             http_requests_total{{service=\"{PREVIEW}\",status=\"503\"}} 0\n\
             http_requests_total{{service=\"{ACTIVE}\",status=\"200\"}} {served}\n\
             http_requests_total{{service=\"{ACTIVE}\",status=\"503\"}} 0\n"
        )
    };
    let app = prometheus::MetricsServer::start(page);
    let target = app.addr();
    let prometheus = tokio::task::spawn_blocking(move || {
        prometheus::Prometheus::builder()
            .scrape("apps", target)
            .start()
    })
    .await
    .expect("starting Prometheus");
    for template in documents
        .iter_mut()
        .filter(|d| d["kind"] == "AnalysisTemplate")
    {
        for metric in template["spec"]["metrics"].as_array_mut().unwrap() {
            metric["provider"]["prometheus"]["address"] = json!(prometheus.url());
            metric["interval"] = json!("2s");
            metric["count"] = json!(3);
        }
    }
    documents.extend(seed_services());
    apply_documents(ns, &documents).await;
    let _controller = start_controller(ns, &prometheus.url()).await;
    let (_, timeline) = follow_canary_until(ns, NAME, Phase::Idle, ROLLOUT_TIMEOUT).await;
    eprintln!("initialized:\n{}", timeline.join("\n"));

    // The seed's query is a rate: it has a series only once Prometheus has scraped the app
    // twice. Measured before that it is "no data", inconclusive, and the seed's
    // inconclusiveLimit (0) pauses for a human, as it should; so the new revision comes after.
    prometheus.wait_for_series(
        &format!("sum(rate(http_requests_total{{service=\"{PREVIEW}\"}}[5m]))"),
        Duration::from_secs(60),
    );
    let new_image = "myregistry.com/api-server:v2";
    let deployments: Api<Deployment> = ns.api();
    deployments
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "api-server", "image": new_image}
            ]}}}})),
        )
        .await
        .expect("setting the new image");
    // autoPromotionEnabled: false — after the pre-promotion analysis it waits for a human.
    let (canary, timeline) = follow_canary_until(ns, NAME, Phase::Paused, ROLLOUT_TIMEOUT).await;
    eprintln!("preview:\n{}", timeline.join("\n"));
    let passed = canary
        .status
        .unwrap_or_default()
        .analysis_runs
        .iter()
        .any(|run| run.phase == canary::analysis::assessment::AnalysisPhase::Successful);
    assert!(passed, "the pre-promotion analysis passed before the pause");

    let promote = tokio::process::Command::new(env!("CARGO_BIN_EXE_canary"))
        .args(["promote", NAME, "-n", &ns.name, "--kubeconfig"])
        .arg(cluster().kubeconfig())
        .output()
        .await
        .expect("canary promote runs");
    assert_eq!(
        promote.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&promote.stderr)
    );
    let (_, timeline) = follow_canary_until(ns, NAME, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!("promoted:\n{}", timeline.join("\n"));

    // The active Service sends traffic to the new version only, and only to ready pods.
    let services: Api<Service> = ns.api();
    let pods: Api<Pod> = ns.api();
    eventually(
        "the active Service selecting ready pods of the new image only",
        Duration::from_secs(30),
        || async {
            let selector = services.get(ACTIVE).await.ok()?.spec?.selector?;
            let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let selected = pods
                .list(&ListParams::default().labels(&labels.join(",")))
                .await
                .ok()?
                .items;
            let all_new_and_ready = !selected.is_empty()
                && selected.iter().all(|pod| {
                    let spec_image = pod
                        .spec
                        .as_ref()
                        .map(|s| s.containers[0].image.clone().unwrap_or_default());
                    let ready = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    spec_image.as_deref() == Some(new_image) && ready
                });
            all_new_and_ready.then_some(())
        },
    )
    .await;
    let canary: Canary = ns.api().get(NAME).await.unwrap();
    eprintln!("final status: {:?}", canary.status.map(|s| s.message));
}

const FLAGGER_NOT_FOUND: &str = "tests/fixtures/convert/flagger/istio-not-found-percentage.yaml";

/// Flagger's documented 404 percentage MetricTemplate (`{{ target }}`, `{{ namespace }}`,
/// `{{ interval }}`) with a Flagger Canary for `web`, converted by `canary convert` and applied
/// as printed (only the template's Prometheus address is this test's). The canary answers half
/// its requests with 404, stable none: the rollout is rolled back on measurements near 50%.
/// Had `{{ target }}` stayed the user's Deployment (kept at zero replicas, no series) the
/// measurements would be "no data" and the rollout would pause Inconclusive; had it meant
/// stable, they would be 0% and the canary promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_flagger_template_measures_the_deployment_that_runs_the_canary() {
    let mut documents = converted(FLAGGER_NOT_FOUND);
    let ns = cluster().namespace("flagger-target").await;
    istio_web_service(&ns, "web:1").await;
    let simulator = Simulator::start(&ns).await;
    let prometheus = simulator.scraped_as("mesh").await;
    for template in documents
        .iter_mut()
        .filter(|d| d["kind"] == "AnalysisTemplate")
    {
        for metric in template["spec"]["metrics"].as_array_mut().unwrap() {
            metric["provider"]["prometheus"]["address"] = json!(prometheus.url());
        }
        template["metadata"]["namespace"] = json!(ns.name);
    }
    apply_documents(&ns, &documents).await;
    let _controller = start_controller(&ns, &prometheus.url()).await;
    follow_canary_until(&ns, "web", Phase::Idle, ROLLOUT_TIMEOUT).await;

    let status = reqwest::Client::new()
        .put(format!("http://{}/workloads/web-canary", simulator.address))
        .json(&json!({"errorRate": 0.5, "errorCode": 404}))
        .send()
        .await
        .expect("PUT /workloads/web-canary")
        .status();
    assert!(status.is_success(), "{status}");
    rollout::set_image(&ns, "web:2").await;
    let (canary, timeline) =
        follow_canary_until(&ns, "web", Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    eprintln!("converted Flagger template:\n{}", timeline.join("\n"));
    let status = canary.status.unwrap();
    assert_eq!(status.rollback_reason, Some(RollbackReason::AnalysisFailed));
    let metric = &status.analysis_runs[0].metrics[0];
    assert_eq!(metric.name, "404s-percentage", "{metric:?}");
    let values: Vec<f64> = metric
        .measurements
        .iter()
        .filter_map(|m| m.value.as_deref()?.trim_matches(['[', ']']).parse().ok())
        .collect();
    assert!(
        values.iter().any(|v| (30.0..=70.0).contains(v)),
        "the canary's 404 percentage (about 50) was measured: {metric:?}"
    );
}
