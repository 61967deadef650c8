//! Extreme values of every numeric and duration field a user writes. Each must be refused with
//! a message that names the field (by the CRD schema on the real API server, by validation
//! for templates that reach the controller another way), or be handled: nothing a user writes
//! may panic the controller. A year-long `initialDelay` once made every restart of the
//! controller panic ("adding signed duration to timestamp overflowed"), stopping every
//! rollout and abort in the cluster.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt};
use serde_json::{Value, json};

use canary::analysis::assessment::Limits;
use canary::analysis::run::{self, NoSecrets};
use canary::api::canary::{Canary, CanarySpec, CanaryStatus, Phase, Request, RequestAction};
use canary::api::{AnalysisTemplate, AnalysisTemplateSpec};
use canary::rollout::{
    MetricDefinition, Observed, TargetState, WorkloadState, due_measurements, plan,
};

use cluster::{cluster, eventually};

/// Durations that cannot be allowed: one second over the maximum, one that overflowed the
/// time arithmetic, and one too long to parse into 64 bits.
const ABSURD_DURATIONS: [&str; 3] = ["8760h1s", "100000000h", "99999999999999999999999h"];

fn canary_spec(extra: Value) -> Value {
    let mut spec = json!({
        "targetRef": {"name": "web"},
        "service": {"port": 8080},
        "trafficRouting": {"istio": {
            "virtualService": {"name": "web"},
            "destinationRule": {"name": "web"},
        }},
        "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}],
        "analysis": {"templates": [{"templateName": "success"}]},
    });
    merge(&mut spec, extra);
    spec
}

fn template_spec(extra_metric: Value) -> Value {
    let mut metric = json!({
        "name": "success",
        "successCondition": "result[0] >= 0.95",
        "provider": {"prometheus": {"address": "http://127.0.0.1:9", "query": "vector(1)"}},
    });
    merge(&mut metric, extra_metric);
    json!({"metrics": [metric]})
}

/// Sets every field of `extra` in `base`, recursively for objects; `null` removes a field.
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                if value.is_null() {
                    base.remove(&key);
                } else {
                    merge(base.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

/// Every duration field of a Canary and of a template metric, as a JSON value that sets it to
/// `text`, with the field's path as the API server names it.
fn duration_fields(text: &str) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "Canary",
            "spec.interval",
            json!({"steps": null, "stepWeight": 10, "maxWeight": 50, "interval": text}),
        ),
        (
            "Canary",
            "spec.steps[1].pause.duration",
            json!({"steps": [{"setWeight": 20}, {"pause": {"duration": text}}]}),
        ),
        (
            "Canary",
            "spec.analysis.minStepDuration",
            json!({"analysis": {"minStepDuration": text}}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].interval",
            json!({"interval": text}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].initialDelay",
            json!({"initialDelay": text}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].provider.prometheus.timeout",
            json!({"provider": {"prometheus": {"timeout": text}}}),
        ),
    ]
}

fn object(kind: &str, extra: Value) -> Value {
    let spec = match kind {
        "Canary" => canary_spec(extra),
        _ => template_spec(extra),
    };
    json!({
        "apiVersion": "canary.dev/v1alpha1", "kind": kind,
        "metadata": {"name": "extreme"},
        "spec": spec,
    })
}

/// The CRD's CEL rules, evaluated locally as the API server (and `canary validate`) does.
fn cel_violations(kind: &str, value: &Value) -> Vec<String> {
    let crd = match kind {
        "Canary" => Canary::crd(),
        _ => AnalysisTemplate::crd(),
    };
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    match kube::core::cel::Validator::new().validate(&schema, value, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn the_crd_rules_refuse_every_duration_longer_than_a_year() {
    for text in ABSURD_DURATIONS {
        for (kind, field, extra) in duration_fields(text) {
            let violations = cel_violations(kind, &object(kind, extra));
            assert!(
                violations.iter().any(|v| v.contains("at most 8760h")),
                "{kind} {field} = {text}: {violations:?}"
            );
        }
    }
    for (kind, field, extra) in duration_fields("8760h") {
        let violations = cel_violations(kind, &object(kind, extra));
        assert!(
            violations.is_empty(),
            "{kind} {field} = 8760h: {violations:?}"
        );
    }
}

#[test]
fn validation_refuses_templates_with_durations_longer_than_a_year_naming_the_field() {
    // A template that reached the controller without the CRD's rules (stored under an older
    // CRD): `prepare` refuses it, so the Canary reports InvalidSpec instead of rolling out.
    for text in ABSURD_DURATIONS {
        for (kind, field, extra) in duration_fields(text) {
            if kind != "AnalysisTemplate" {
                continue;
            }
            let spec: AnalysisTemplateSpec = serde_json::from_value(template_spec(extra))
                .unwrap_or_else(|e| panic!("{field} = {text} must still be readable: {e}"));
            let problems = run::prepare(
                "extreme",
                &spec,
                &BTreeMap::new(),
                &BTreeMap::new(),
                None,
                &NoSecrets,
            )
            .err()
            .unwrap_or_else(|| panic!("{field} = {text} was accepted"));
            let field = field.trim_start_matches("spec.");
            assert!(
                problems
                    .iter()
                    .any(|p| p.field == field && p.message.contains("8760h")),
                "{field} = {text}: {problems:?}"
            );
        }
    }
}

const T0: i64 = 1_800_000_000;

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).unwrap()
}

fn workload(revision: &str, replicas: i32) -> WorkloadState {
    WorkloadState {
        revision: Some(revision.into()),
        replicas,
        ready_replicas: replicas,
        settled: true,
        stalled: false,
    }
}

fn definition(interval: StdDuration, initial_delay: StdDuration) -> MetricDefinition {
    MetricDefinition {
        template: "success".into(),
        name: "success".into(),
        interval,
        initial_delay,
        limits: Limits {
            count: Some(u32::MAX),
            failure_limit: u32::MAX,
            inconclusive_limit: u32::MAX,
            consecutive_error_limit: u32::MAX,
        },
        dry_run: false,
        compare: None,
    }
}

/// Walks a rollout with `spec` and `metric` from its start to an abort, at `start` and a
/// second later, planning again at each step, the way the controller would.
fn walk(spec: &CanarySpec, metric: MetricDefinition, start: Timestamp) -> CanaryStatus {
    let later = |seconds: i64| {
        start
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(Timestamp::MAX)
    };
    let mut seen = Observed {
        generation: Some(1),
        target: Some(Ok(TargetState {
            revision: "r2".into(),
            replicas: 4,
            images: "app=web:2".into(),
        })),
        stable: Some(workload("r1", 4)),
        canary: Some(workload("r2", 4)),
        requests: Vec::new(),
        analysis: Ok(BTreeMap::from([
            ("background".to_string(), vec![metric.clone()]),
            ("step-1".to_string(), vec![metric]),
        ])),
        measurements: Vec::new(),
        route_weight: None,
        router: canary::routing::Capabilities {
            granularity: canary::routing::Granularity::Exact,
            header_routes: true,
        },
        autoscaler: None,
        derived_autoscaler: None,
        canary_uid: String::new(),
    };
    let mut status = CanaryStatus {
        phase: Phase::Idle,
        stable_revision: Some("r1".into()),
        desired_replicas: Some(4),
        ..Default::default()
    };
    for second in 0..3 {
        let planned = plan(spec, &status, &seen, later(second));
        let _ = due_measurements(&planned.status, Timestamp::MAX);
        status = planned.status;
    }
    seen.requests = vec![Ok(Request {
        action: RequestAction::Abort,
        id: "a".into(),
        step: None,
    })];
    plan(spec, &status, &seen, later(3)).status
}

#[test]
fn planning_never_panics_on_extreme_values_and_an_abort_still_acts() {
    // Values the CRD refuses now, but that a Canary stored under an older CRD may hold.
    let extremes: Vec<Value> = vec![
        json!({"steps": [{"setWeight": 20}, {"pause": {"duration": "100000000h"}}]}),
        json!({"steps": [{"setWeight": 20}, {"pause": {"duration": "99999999999999999999999h"}}]}),
        json!({"steps": null, "stepWeight": 1, "maxWeight": 100, "interval": "100000000h"}),
        json!({"analysis": {"minStepDuration": "100000000h", "startingStep": u32::MAX}}),
        json!({"progressDeadlineSeconds": u32::MAX, "scaleDownDelaySeconds": u32::MAX}),
        json!({"progressDeadlineSeconds": 0, "scaleDownDelaySeconds": 0}),
        json!({"steps": [{"setWeight": 255}, {"analysis": {"templates": [{"templateName": "success"}]}}]}),
    ];
    let durations = [
        StdDuration::ZERO,
        StdDuration::from_secs(8760 * 3600),
        StdDuration::from_secs(u64::MAX),
        StdDuration::MAX,
    ];
    let starts = [t(0), Timestamp::MAX, Timestamp::MIN];
    for extra in &extremes {
        let spec: CanarySpec = serde_json::from_value(canary_spec(extra.clone()))
            .unwrap_or_else(|e| panic!("{extra} must still be readable: {e}"));
        for interval in durations {
            for initial_delay in durations {
                for start in starts {
                    let status = walk(&spec, definition(interval, initial_delay), start);
                    assert!(
                        matches!(status.phase, Phase::RollingBack | Phase::RolledBack),
                        "{extra} interval {interval:?} delay {initial_delay:?} at {start}: {:?} {:?}",
                        status.phase,
                        status.message
                    );
                    assert_eq!(status.canary_weight, 0, "{extra}");
                }
            }
        }
    }
}

// -- on the real API server -------------------------------------------------------------------

/// What the API server answers to creating `value` as `kind`.
async fn create(ns: &cluster::TestNamespace, kind: &str, value: &Value) -> Result<(), String> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "canary.dev",
            "v1alpha1",
            kind,
        )),
    );
    let object: DynamicObject = serde_json::from_value(value.clone()).unwrap();
    let result = api.create(&PostParams::default(), &object).await;
    if result.is_ok() {
        let _ = api.delete("extreme", &Default::default()).await;
    }
    result.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_api_server_refuses_extreme_values_of_every_field_and_names_it() {
    let ns = cluster().namespace("extreme").await;
    let mut refused: Vec<(&str, &str, Value)> = Vec::new();
    for text in ABSURD_DURATIONS {
        refused.extend(duration_fields(text));
    }
    let numbers: Vec<(&str, &str, Value)> = vec![
        (
            "Canary",
            "spec.steps[0].setWeight",
            json!({"steps": [{"setWeight": 101}]}),
        ),
        (
            "Canary",
            "spec.steps[0].setWeight",
            json!({"steps": [{"setWeight": -1}]}),
        ),
        (
            "Canary",
            "spec.steps[0].setWeight",
            json!({"steps": [{"setWeight": 1_000_000_000_000_i64}]}),
        ),
        (
            "Canary",
            "spec.stepWeight",
            json!({"steps": null, "stepWeight": 0, "maxWeight": 50}),
        ),
        (
            "Canary",
            "spec.maxWeight",
            json!({"steps": null, "stepWeight": 10, "maxWeight": 256}),
        ),
        (
            "Canary",
            "spec.progressDeadlineSeconds",
            json!({"progressDeadlineSeconds": 1_000_000_000_000_i64}),
        ),
        (
            "Canary",
            "spec.progressDeadlineSeconds",
            json!({"progressDeadlineSeconds": 0}),
        ),
        (
            "Canary",
            "spec.scaleDownDelaySeconds",
            json!({"scaleDownDelaySeconds": 1_000_000_000_000_i64}),
        ),
        (
            "Canary",
            "spec.scaleDownDelaySeconds",
            json!({"scaleDownDelaySeconds": -1}),
        ),
        (
            "Canary",
            "spec.analysis.startingStep",
            json!({"analysis": {"startingStep": 1_000_000_000_000_i64}}),
        ),
        (
            "Canary",
            "spec.service.port",
            json!({"service": {"port": 70000}}),
        ),
        (
            "Canary",
            "spec.service.port",
            json!({"service": {"port": 0}}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].count",
            json!({"count": 1_000_000_000_000_i64}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].count",
            json!({"count": 0}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].failureLimit",
            json!({"failureLimit": 1_000_000_000_000_i64}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].inconclusiveLimit",
            json!({"inconclusiveLimit": -1}),
        ),
        (
            "AnalysisTemplate",
            "spec.metrics[0].consecutiveErrorLimit",
            json!({"consecutiveErrorLimit": 1_000_000_000_000_i64}),
        ),
    ];
    refused.extend(numbers);
    let mut failures = Vec::new();
    for (kind, field, extra) in &refused {
        let value = object(kind, extra.clone());
        match create(&ns, kind, &value).await {
            Ok(()) => failures.push(format!("{kind} {field}: {extra} was accepted")),
            Err(message) if !message.contains(field) => failures.push(format!(
                "{kind} {field}: {extra} refused without naming it: {message}"
            )),
            Err(_) => {}
        }
    }
    // The bounds themselves are fine.
    for (kind, field, extra) in duration_fields("8760h") {
        if let Err(message) = create(&ns, kind, &object(kind, extra)).await {
            failures.push(format!("{kind} {field} = 8760h refused: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Puts the CRDs of deploy/crds back when dropped, however the test ends.
struct InstalledCrdsRestored;

impl Drop for InstalledCrdsRestored {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster");
        let status = std::process::Command::new(script)
            .arg("crds")
            .stdin(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not reinstall deploy/crds ({status:?}): run scripts/cluster crds");
        }
    }
}

/// Installs our CRDs without the duration bounds, as an older release had them, so that
/// objects can be stored that today's CRDs refuse. Only loosens validation: other tests that
/// share the cluster meanwhile are not affected.
async fn install_crds_without_duration_bounds(client: &kube::Client) -> InstalledCrdsRestored {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                let is_duration = map
                    .get("x-kubernetes-validations")
                    .and_then(Value::as_array)
                    .is_some_and(|rules| {
                        rules.iter().any(|r| {
                            r["rule"]
                                .as_str()
                                .is_some_and(|r| r.contains("duration(self)"))
                        })
                    });
                if is_duration {
                    map.remove("x-kubernetes-validations");
                    map.remove("maxLength");
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let guard = InstalledCrdsRestored;
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in [Canary::crd(), AnalysisTemplate::crd()] {
        let mut body = serde_json::to_value(&crd).unwrap();
        strip(&mut body);
        api.patch(
            crd.metadata.name.as_deref().unwrap(),
            &PatchParams::apply("canary-test-cluster").force(),
            &Patch::Apply(body),
        )
        .await
        .expect("installing the loosened CRD");
    }
    guard
}

fn canary_for(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "targetRef": {"name": name},
        "service": {"port": 8080},
        "trafficRouting": {"istio": {
            "virtualService": {"name": name},
            "destinationRule": {"name": name},
        }},
        "scaleDownDelaySeconds": 0,
    });
    merge(&mut spec, extra);
    json!({"apiVersion": "canary.dev/v1alpha1", "kind": "Canary", "metadata": {"name": name}, "spec": spec})
}

async fn status_of(ns: &cluster::TestNamespace, name: &str) -> CanaryStatus {
    let api: Api<Canary> = ns.api();
    api.get(name).await.unwrap().status.unwrap_or_default()
}

#[tokio::test]
async fn canaries_stored_with_absurd_durations_do_not_stop_the_controller() {
    let mut world = rollout::world("absurd").await;
    let ns = &world.ns;
    let _restore = install_crds_without_duration_bounds(&ns.client).await;
    // The API server takes a moment to serve the loosened schema.
    let templates: Api<AnalysisTemplate> = ns.api();
    let forever: AnalysisTemplate = serde_json::from_value(json!({
        "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "forever"},
        "spec": template_spec(json!({"interval": "100000000h", "initialDelay": "100000000h"})),
    }))
    .unwrap();
    eventually(
        "the loosened CRD to take the template",
        cluster::TIMEOUT,
        || async {
            templates
                .create(&PostParams::default(), &forever)
                .await
                .ok()
        },
    )
    .await;
    rollout::service(ns, "api", 2).await;
    rollout::service(ns, "slow", 2).await;
    let canaries: Api<Canary> = ns.api();
    for value in [
        canary_for(
            "api",
            json!({
                "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}],
                "analysis": {"templates": [{"templateName": "forever"}]},
            }),
        ),
        canary_for(
            "slow",
            json!({
                "steps": [{"setWeight": 20}, {"pause": {"duration": "100000000h"}}],
            }),
        ),
    ] {
        let object: Canary = serde_json::from_value(value).unwrap();
        eventually(
            "the loosened CRD to take the Canary",
            cluster::TIMEOUT,
            || async { canaries.create(&PostParams::default(), &object).await.ok() },
        )
        .await;
    }
    for name in ["api", "slow"] {
        eventually(
            &format!("{name} initialized"),
            rollout::ROLLOUT_TIMEOUT,
            || async { (status_of(ns, name).await.phase == Phase::Idle).then_some(()) },
        )
        .await;
        rollout::set_image_of(ns, name, &format!("{name}:2")).await;
    }
    // The template's absurd durations are reported on its Canary, naming the field; nothing
    // rolls out on it.
    let invalid = eventually(
        "api to report its template",
        rollout::ROLLOUT_TIMEOUT,
        || async {
            let status = status_of(ns, "api").await;
            status
                .message
                .clone()
                .filter(|m| m.contains("initialDelay") && m.contains("8760h"))
                .map(|m| (status, m))
        },
    )
    .await;
    assert_eq!(invalid.0.canary_weight, 0, "{}", invalid.1);
    // The endless pause holds at 20%, and an abort still acts on it.
    eventually(
        "slow at 20% in its pause",
        rollout::ROLLOUT_TIMEOUT,
        || async {
            let status = status_of(ns, "slow").await;
            (status.canary_weight == 20 && status.current_step_index == Some(1)).then_some(())
        },
    )
    .await;
    canaries
        .patch(
            "slow",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"canary.dev/request": "abort:1"}}})),
        )
        .await
        .unwrap();
    eventually(
        "slow rolled back by the abort",
        rollout::ROLLOUT_TIMEOUT,
        || async { (status_of(ns, "slow").await.phase == Phase::RolledBack).then_some(()) },
    )
    .await;
    // The other Canary of the namespace rolls out as ever, by the same controller process.
    rollout::set_image(ns, "web:2").await;
    let (_, timeline) = rollout::follow_until(ns, Phase::Promoted, rollout::ROLLOUT_TIMEOUT).await;
    eprintln!("{}", timeline.join("\n"));
    let stable: Deployment = ns.api().get("web-stable").await.unwrap();
    assert_eq!(rollout::image_of(&stable), "web:2");
    assert!(
        world.controller.try_wait().unwrap().is_none(),
        "the controller process is still running"
    );
}
