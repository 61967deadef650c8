//! End-to-end rollouts: the `canary controller` process against the real local control plane,
//! a real Prometheus scraping the traffic simulator, which routes by the live weights the
//! controller writes into a real VirtualService. Short intervals, so each runs in about a minute.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::{Duration, Instant};

use cluster::{cluster, eventually, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rollout::{
    ROLLOUT_TIMEOUT, World, at_weight, canary_scaled_to_zero, canary_weight_in_virtual_service,
    create, dynamic, follow_until, image_of, patch_canary, set_image, set_up, spawn_controller,
    start_controller, terminate, world,
};
use serde_json::json;

use canary::api::canary::{Canary, Phase, RollbackReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_revision_walks_every_step_and_is_promoted() {
    let world = world("promote").await;
    set_image(&world.ns, "web:2").await;
    let (canary, timeline) = follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!("healthy rollout:\n{}", timeline.join("\n"));
    let text = timeline.join("\n");
    assert!(text.contains("weight=20"), "{text}");
    assert!(text.contains("weight=50"), "{text}");
    let status = canary.status.unwrap();
    assert_eq!(status.canary_weight, 0);
    let run = &status.analysis_runs[0];
    let tally = run.metrics[0].tally;
    assert_eq!((tally.measured, tally.failed), (3, 0), "{run:?}");
    assert!(tally.successful >= 1, "{run:?}");
    let deployments: Api<Deployment> = world.ns.api();
    let stable = deployments.get("web-stable").await.unwrap();
    assert_eq!(image_of(&stable), "web:2", "stable runs the new template");
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
    // The canary's pods go after the scale-down delay (3 s here).
    canary_scaled_to_zero(&world.ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_and_traffic_returns_to_stable() {
    let world = world("rollback").await;
    world.simulator.set_error_rate("web-canary", 0.5).await;
    set_image(&world.ns, "web:bad").await;
    let (canary, timeline) = follow_until(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    eprintln!("bad canary:\n{}", timeline.join("\n"));
    let status = canary.status.unwrap();
    assert!(status.failed_revision.is_some());
    assert_eq!(status.rollback_reason, Some(RollbackReason::AnalysisFailed));
    let message = status.message.clone().unwrap();
    assert!(message.contains("AnalysisFailed"), "{message}");
    let measurements = &status.analysis_runs[0].metrics[0].measurements;
    assert!(
        measurements.iter().any(|m| m.reason.contains("is false")),
        "{measurements:?}"
    );
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
    let deployments: Api<Deployment> = world.ns.api();
    canary_scaled_to_zero(&world.ns).await;
    assert_eq!(
        image_of(&deployments.get("web-stable").await.unwrap()),
        "web:1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_rollout_restores_all_traffic_to_stable_within_seconds() {
    let world = world("abort").await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    let api: Api<Canary> = world.ns.api();
    let asked = Instant::now();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"canary.dev/request": "abort:e2e-1"}}})),
    )
    .await
    .unwrap();
    eventually(
        "all traffic back on stable",
        Duration::from_secs(10),
        || async { (canary_weight_in_virtual_service(&world.ns).await == 0).then_some(()) },
    )
    .await;
    let took = asked.elapsed();
    eprintln!(
        "abort to 100% stable: {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    let (canary, _) = follow_until(&world.ns, Phase::RolledBack, Duration::from_secs(30)).await;
    let request = canary.status.unwrap().last_request.unwrap();
    assert!(request.accepted && request.id == "e2e-1", "{request:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_target_mid_rollout_puts_traffic_on_stable_and_fails_the_canary() {
    let world = world("target-gone").await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    let deployments: Api<Deployment> = world.ns.api();
    deployments
        .delete("web", &Default::default())
        .await
        .unwrap();
    let (canary, timeline) = follow_until(&world.ns, Phase::Failed, Duration::from_secs(30)).await;
    eprintln!("target deleted:\n{}", timeline.join("\n"));
    let status = canary.status.unwrap();
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("does not exist"),
        "{status:?}"
    );
    assert_eq!(status.canary_weight, 0);
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
    canary_scaled_to_zero(&world.ns).await;
    let stable = deployments.get("web-stable").await.unwrap();
    assert_eq!(image_of(&stable), "web:1", "stable keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_of_a_managed_name_made_by_someone_else_is_never_taken_over() {
    let ns = cluster().namespace("foreign").await;
    set_up(&ns, "web:1").await;
    let deployments: Api<Deployment> = ns.api();
    create::<Deployment>(
        &deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web-canary", "labels": {"app": "other"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "other"}},
                "template": {
                    "metadata": {"labels": {"app": "other"}},
                    "spec": {"containers": [{"name": "other", "image": "other:1"}]},
                },
            },
        }),
    )
    .await;
    let mut controller = start_controller(&ns, "http://127.0.0.1:1").await;
    let api: Api<Canary> = ns.api();
    let canary = wait_for(&api, "web", "Failed", Duration::from_secs(30), |c| {
        c.status.as_ref().is_some_and(|s| s.phase == Phase::Failed)
    })
    .await;
    let message = canary.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains("web-canary already exists") && message.contains("rename or delete"),
        "{message}"
    );
    let foreign = deployments.get("web-canary").await.unwrap();
    assert_eq!(image_of(&foreign), "other:1", "its template is untouched");
    assert_eq!(foreign.spec.as_ref().unwrap().replicas, Some(1));
    assert!(foreign.metadata.owner_references.is_none(), "{foreign:?}");
    assert!(
        deployments.get_opt("web-stable").await.unwrap().is_none(),
        "nothing was started beside it"
    );
    terminate(&mut controller, Duration::from_secs(10), "controller").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline() {
    let world = world("deadline").await;
    patch_canary(&world.ns, json!({"spec": {"progressDeadlineSeconds": 10}})).await;
    // Pods of this revision cannot be scheduled on any node: they never become ready.
    let api: Api<Deployment> = world.ns.api();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {
            "nodeSelector": {"canary.dev/no-such-node": "true"},
            "containers": [{"name": "app", "image": "web:unschedulable"}],
        }}}})),
    )
    .await
    .unwrap();
    let (canary, timeline) =
        follow_until(&world.ns, Phase::RolledBack, Duration::from_secs(60)).await;
    eprintln!("never ready:\n{}", timeline.join("\n"));
    let status = canary.status.unwrap();
    assert_eq!(
        status.rollback_reason,
        Some(RollbackReason::ProgressDeadlineExceeded)
    );
    assert!(
        !timeline.iter().any(|l| l.contains("weight=20")),
        "no traffic reached unready pods"
    );
    assert!(
        status.analysis_runs.is_empty(),
        "rolled back without waiting for analysis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_continues_the_rollout_from_its_step() {
    let mut world = world("restart").await;
    set_image(&world.ns, "web:2").await;
    let api: Api<Canary> = world.ns.api();
    wait_for(
        &api,
        "web",
        "a measurement of the analysis step",
        ROLLOUT_TIMEOUT,
        |c| {
            c.status.as_ref().is_some_and(|s| {
                s.analysis_runs
                    .iter()
                    .any(|r| r.metrics.iter().any(|m| m.tally.measured >= 1))
            })
        },
    )
    .await;
    world
        .controller
        .kill()
        .await
        .expect("killing the controller");
    let before = api.get("web").await.unwrap().status.unwrap();
    let prometheus = world.prometheus.as_ref().unwrap().url();
    world.controller = start_controller(&world.ns, &prometheus).await;
    let (canary, timeline) = follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!(
        "after restart at step {:?}:\n{}",
        before.step_display,
        timeline.join("\n")
    );
    assert!(
        !timeline.iter().any(|l| l.contains("step=1/")),
        "the rollout did not start over: {timeline:#?}"
    );
    let status = canary.status.unwrap();
    let tally = status.analysis_runs[0].metrics[0].tally;
    assert_eq!(
        tally.measured, 3,
        "measurements before the restart count: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prometheus_gone_nothing_is_promoted_and_the_policy_rolls_back() {
    let mut world = world("noprom").await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    drop(world.prometheus.take());
    let (canary, timeline) = follow_until(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    eprintln!("prometheus gone:\n{}", timeline.join("\n"));
    assert!(
        !timeline.iter().any(|l| l.contains("Promot")),
        "{timeline:#?}"
    );
    let status = canary.status.unwrap();
    let metric = &status.analysis_runs[0].metrics[0];
    assert_eq!(
        metric.phase,
        canary::analysis::AnalysisPhase::Error,
        "{metric:?}"
    );
    assert!(
        metric
            .measurements
            .iter()
            .any(|m| m.reason.contains("unreachable")),
        "{metric:?}"
    );
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_canaries_are_rejected_or_touch_no_traffic() {
    let world = world("invalid").await;
    // The API server itself rejects an impossible spec, saying why.
    let api: Api<Canary> = world.ns.api();
    let mut bad = api.get("web").await.unwrap();
    bad.metadata = kube::core::ObjectMeta {
        name: Some("bad".into()),
        ..Default::default()
    };
    bad.status = None;
    bad.spec.steps =
        Some(serde_json::from_value(json!([{"setWeight": 50}, {"setWeight": 10}])).unwrap());
    let status = cluster::api_error(
        api.create(&PostParams::default(), &bad).await,
        "decreasing steps",
    );
    assert!(
        status.message.contains("setWeight steps must not decrease"),
        "{status:?}"
    );

    // A missing template: Ready=False, a Warning event, no canary, no weight.
    patch_canary(
        &world.ns,
        json!({"spec": {"steps": [
            {"setWeight": 20},
            {"analysis": {"templates": [{"templateName": "no-such-template"}]}},
        ]}}),
    )
    .await;
    let invalid = |c: &Canary| {
        c.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
        })
    };
    // Seen while settled first: otherwise the image change may be reconciled from a cache
    // that still holds the valid spec, and that rollout rightly starts.
    let settled = wait_for(&api, "web", "Ready=False", Duration::from_secs(30), invalid).await;
    let stable_revision = settled.status.unwrap().stable_revision;
    set_image(&world.ns, "web:2").await;
    let canary = wait_for(
        &api,
        "web",
        "the new revision seen, still Ready=False",
        Duration::from_secs(30),
        |c| {
            invalid(c)
                && c.status.as_ref().is_some_and(|s| {
                    s.target_revision.is_some() && s.target_revision != stable_revision
                })
        },
    )
    .await;
    let status = canary.status.unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("no-such-template does not exist"),
        "{ready:?}"
    );
    assert_eq!(status.phase, Phase::Idle);
    let events: Api<k8s_openapi::api::events::v1::Event> = world.ns.api();
    let warning = eventually("a Warning event", Duration::from_secs(10), || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("InvalidSpec")
            })
    })
    .await;
    assert!(
        warning
            .note
            .unwrap_or_default()
            .contains("no-such-template")
    );
    let deployments: Api<Deployment> = world.ns.api();
    assert!(
        deployments.get_opt("web-canary").await.unwrap().is_none(),
        "no canary was deployed"
    );
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);

    // Creating the template is seen at once (templates are watched), not at the next
    // five-minute resync: the rollout starts.
    let template: canary::api::AnalysisTemplate = world.ns.api().get("success-rate").await.unwrap();
    create::<canary::api::AnalysisTemplate>(
        &world.ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "no-such-template"},
            "spec": template.spec,
        }),
    )
    .await;
    follow_until(&world.ns, Phase::Progressing, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_object_that_cannot_carry_the_split_is_said_in_status_until_fixed() {
    let world = world("unroutable").await;
    let api: Api<Canary> = world.ns.api();
    let ready = |c: &Canary| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
    };
    patch_canary(
        &world.ns,
        json!({"spec": {"trafficRouting": {"istio": {"virtualService": {"name": "missing"}}}}}),
    )
    .await;
    let canary = wait_for(
        &api,
        "web",
        "Ready=False CannotApply",
        Duration::from_secs(30),
        |c| ready(c).is_some_and(|r| r.status == "False" && r.reason == "CannotApply"),
    )
    .await;
    let condition = ready(&canary).unwrap();
    assert!(
        condition
            .message
            .contains("VirtualService missing does not exist"),
        "{condition:?}"
    );
    assert_eq!(
        canary.status.unwrap().message.as_deref(),
        Some(condition.message.as_str())
    );
    cluster::event_with_reason(&world.ns, "CannotApply", Duration::from_secs(10)).await;
    // Fixed: the condition says so at the next reconcile.
    patch_canary(
        &world.ns,
        json!({"spec": {"trafficRouting": {"istio": {"virtualService": {"name": "web"}}}}}),
    )
    .await;
    wait_for(
        &api,
        "web",
        "Ready=True again",
        Duration::from_secs(30),
        |c| ready(c).is_some_and(|r| r.status == "True"),
    )
    .await;
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_serves_health_and_metrics_and_stops_on_sigterm() {
    let ns = cluster().namespace("process").await;
    set_up(&ns, "web:1").await;
    // Answers /healthz at once, before the caches synced.
    let (mut controller, port) = spawn_controller(
        &[
            "--namespace",
            &ns.name,
            "--prometheus",
            "http://127.0.0.1:1",
        ],
        &[("CANARY_LOG", "canary=info")],
    )
    .await;
    eventually(
        "/readyz once the caches synced",
        Duration::from_secs(30),
        || async { http_get(port, "/readyz").await.filter(|(s, _)| *s == 200) },
    )
    .await;
    follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    let metrics = eventually("the Canary's metrics", Duration::from_secs(30), || async {
        http_get(port, "/metrics")
            .await
            .map(|(_, text)| text)
            .filter(|text| {
                text.contains(&format!(
                    "canary_phase{{namespace=\"{}\",name=\"web\",phase=\"Idle\"}} 1",
                    ns.name
                ))
            })
    })
    .await;
    assert!(metrics.contains("canary_weight{"), "{metrics}");
    assert!(
        metrics.contains("canary_reconcile_duration_seconds_bucket"),
        "{metrics}"
    );

    terminate(&mut controller, Duration::from_secs(15), "the controller").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_canary_mid_rollout_leaves_the_service_on_stable_and_the_target_restored() {
    let world = world("delete").await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    let canaries: Api<Canary> = world.ns.api();
    canaries.delete("web", &Default::default()).await.unwrap();
    cluster::wait_gone(&canaries, "web", Duration::from_secs(30)).await;
    assert_eq!(
        canary_weight_in_virtual_service(&world.ns).await,
        0,
        "all traffic on stable"
    );
    let deployments: Api<Deployment> = world.ns.api();
    let target = deployments.get("web").await.unwrap();
    assert_eq!(
        target.spec.unwrap().replicas,
        Some(2),
        "the target has its replicas back"
    );
    assert_eq!(
        target.status.unwrap().available_replicas,
        Some(2),
        "ready before letting go"
    );
    let rule = dynamic(&world.ns, "DestinationRule")
        .get("web")
        .await
        .unwrap();
    for subset in rule.data["spec"]["subsets"].as_array().unwrap() {
        assert_eq!(
            subset["labels"],
            json!({"app": "web"}),
            "subsets select the target's pods"
        );
    }
    // The managed Deployments were owned by the Canary: garbage-collected with it.
    cluster::wait_gone(&deployments, "web-canary", Duration::from_secs(60)).await;
    cluster::wait_gone(&deployments, "web-stable", Duration::from_secs(60)).await;
}

/// Switches the world to a background `compare` analysis at high traffic: 2,000 rps, 5% errors
/// on stable; steps 20% → 5 min pause → 50% → 5 min pause, which only evidence can shorten
/// (minStepDuration 5 s). The judge's tolerance is 50% and it assumes Poisson counts (what the
/// simulator draws), so a one-minute test can reach NoRegression.
async fn compare_world(prefix: &str, canary_error_rate: f64) -> World {
    compare_world_with(prefix, canary_error_rate, json!({})).await
}

/// [`compare_world`] with more fields in the metric's `compare` (e.g. its `podLabel`).
async fn compare_world_with(
    prefix: &str,
    canary_error_rate: f64,
    compare_extra: serde_json::Value,
) -> World {
    let world = world(prefix).await;
    let mut compare = json!({
        "requests": "istio_requests_total{reporter=\"destination\",destination_workload_namespace=\"{{namespace}}\",destination_workload=\"{{workload}}\"}",
        "errors": "istio_requests_total{reporter=\"destination\",destination_workload_namespace=\"{{namespace}}\",destination_workload=\"{{workload}}\",response_code=~\"5..\"}",
        "judge": {"errorTolerance": 0.5, "maxIntervalNoiseCv": 0.0},
    });
    for (key, value) in compare_extra.as_object().expect("an object") {
        compare[key] = value.clone();
    }
    create::<canary::api::AnalysisTemplate>(
        &world.ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "compare"},
            "spec": {"metrics": [{
                "name": "error-rate",
                "interval": "2s",
                // The canary's series appear with its first traffic and a loaded machine scrapes
                // late: no data at warm-up is tolerated (it is never a pass).
                "initialDelay": "4s",
                "inconclusiveLimit": 10,
                "compare": compare,
                "provider": {"prometheus": {}},
            }]},
        }),
    )
    .await;
    patch_canary(
        &world.ns,
        json!({"spec": {
            "steps": [
                {"setWeight": 20},
                {"pause": {"duration": "5m"}},
                {"setWeight": 50},
                {"pause": {"duration": "5m"}},
            ],
            "analysis": {
                "templates": [{"templateName": "compare"}],
                "startingStep": 1,
                "minStepDuration": "5s",
            },
        }}),
    )
    .await;
    world.simulator.set_rate(2000.0).await;
    world.simulator.set_error_rate("web-stable", 0.05).await;
    world
        .simulator
        .set_error_rate("web-canary", canary_error_rate)
        .await;
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_metric_rolls_back_a_canary_with_five_times_the_errors() {
    let world = compare_world("compare-bad", 0.25).await;
    let started = Instant::now();
    set_image(&world.ns, "web:bad").await;
    let (canary, timeline) = follow_until(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    eprintln!(
        "×5 errors, compare metric ({:.1} s):\n{}",
        started.elapsed().as_secs_f64(),
        timeline.join("\n")
    );
    let status = canary.status.unwrap();
    assert_eq!(status.rollback_reason, Some(RollbackReason::AnalysisFailed));
    let metric = &status.analysis_runs[0].metrics[0];
    let compare = metric
        .compare
        .as_ref()
        .expect("the judge's state is in status");
    let assessment = compare.assessment.as_ref().unwrap();
    assert_eq!(
        assessment.verdict,
        canary::analysis::sequential::Verdict::Regressed,
        "{assessment:?}"
    );
    assert!(assessment.ratio_interval.lower > 1.5, "{assessment:?}");
    assert!(assessment.evidence.regression >= 100.0, "{assessment:?}");
    assert!(!compare.record.intervals.is_empty());
    assert!(
        metric
            .measurements
            .last()
            .unwrap()
            .reason
            .contains("regressed, roll back"),
        "{metric:?}"
    );
    assert!(
        !timeline.iter().any(|l| l.contains("weight=50")),
        "rolled back at 20%: {timeline:?}"
    );
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
}

/// The same ×5 canary judged per pod (`podLabel: pod`, three pods per workload, noise allowed
/// up to the default 0.2 but learned from the pods): rolled back, with the per-pod counts in
/// status (accepted by the API server's schema) summing to the versions' counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_metric_with_a_pod_label_judges_per_pod_counts() {
    let world = compare_world_with(
        "compare-pods",
        0.25,
        json!({"podLabel": "pod", "judge": {"errorTolerance": 0.5}}),
    )
    .await;
    set_image(&world.ns, "web:bad").await;
    let (canary, timeline) = follow_until(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    let status = canary.status.unwrap();
    assert_eq!(
        status.rollback_reason,
        Some(RollbackReason::AnalysisFailed),
        "{timeline:?}"
    );
    let compare = status.analysis_runs[0].metrics[0]
        .compare
        .as_ref()
        .expect("the judge's state is in status");
    let with_pods: Vec<_> = compare
        .record
        .intervals
        .iter()
        .filter_map(|interval| interval.pods.as_ref().map(|pods| (interval, pods)))
        .collect();
    assert!(!with_pods.is_empty(), "{:?}", compare.record);
    for (interval, pods) in with_pods {
        assert_eq!(pods.stable.len(), 3, "{pods:?}");
        for (total, pods) in [
            (&interval.canary, &pods.canary),
            (&interval.stable, &pods.stable),
        ] {
            let requests: u64 = pods.iter().map(|pod| pod[0]).sum();
            let errors: u64 = pods.iter().map(|pod| pod[1]).sum();
            assert_eq!(vec![requests, errors], *total, "{interval:?}");
        }
    }
    assert_eq!(
        compare.assessment.as_ref().unwrap().verdict,
        canary::analysis::sequential::Verdict::Regressed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_steps_up_early_on_no_regression() {
    let world = compare_world("compare-good", 0.05).await;
    let started = Instant::now();
    set_image(&world.ns, "web:2").await;
    let (canary, timeline) = follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    let took = started.elapsed();
    eprintln!(
        "healthy canary, compare metric ({:.1} s):\n{}",
        took.as_secs_f64(),
        timeline.join("\n")
    );
    // Two 5-minute pauses, both ended by evidence.
    assert!(took < Duration::from_secs(120), "{took:?}");
    let text = timeline.join("\n");
    assert!(text.contains("weight=20"), "{text}");
    assert!(text.contains("weight=50"), "{text}");
    let status = canary.status.unwrap();
    let metric = &status.analysis_runs[0].metrics[0];
    let compare = metric.compare.as_ref().unwrap();
    let assessment = compare.assessment.as_ref().unwrap();
    assert_eq!(
        assessment.verdict,
        canary::analysis::sequential::Verdict::NoRegression,
        "{assessment:?}"
    );
    assert!(assessment.ratio_interval.upper < 1.5, "{assessment:?}");
    assert_eq!(metric.tally.failed, 0, "{metric:?}");
    let events: Vec<String> = kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
        world.ns.client.clone(),
        &world.ns.name,
    )
    .list(&Default::default())
    .await
    .unwrap()
    .items
    .into_iter()
    .filter_map(|e| {
        e.message
            .filter(|m| m.contains("stepping up before the pause ends"))
    })
    .collect();
    assert!(
        !events.is_empty(),
        "an event says why the pause ended early"
    );
}

/// Two replicas with leader election: one holds the Lease; when it stops, the other takes
/// over and drives the rollout to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_over_when_the_leader_stops() {
    let ns = cluster().namespace("leader").await;
    set_up(&ns, "web:1").await;
    let simulator = rollout::Simulator::start(&ns).await;
    let prometheus = simulator.scraped_as("mesh").await;
    let prometheus_url = prometheus.url();
    let args = [
        "--namespace",
        &ns.name,
        "--prometheus",
        &prometheus_url,
        "--leader-elect",
    ];
    // As deployed: the ServiceAccount's permissions, the Lease Role granted in this namespace.
    rollout::grant_leader_election(&ns).await;
    let kubeconfig = rollout::controller_kubeconfig()
        .await
        .to_string_lossy()
        .into_owned();
    let env = [
        ("POD_NAMESPACE", ns.name.as_str()),
        ("KUBECONFIG", kubeconfig.as_str()),
    ];
    // Both replicas run (and answer /healthz) before the test looks for a leader.
    let mut replicas = [
        spawn_controller(&args, &env).await.0,
        spawn_controller(&args, &env).await.0,
    ];
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = ns.api();
    let holder = |lease: &k8s_openapi::api::coordination::v1::Lease| {
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    let lease = wait_for(
        &leases,
        "canary-controller",
        "a leader",
        Duration::from_secs(30),
        |l| !holder(l).is_empty(),
    )
    .await;
    let leader_identity = holder(&lease);
    let leader = replicas
        .iter()
        .position(|r| leader_identity.ends_with(&format!("-{}", r.id().unwrap())))
        .unwrap_or_else(|| panic!("the lease holder {leader_identity} is one of the replicas"));
    follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;

    // The leader stops (SIGTERM): it releases the Lease and the standby takes over.
    terminate(&mut replicas[leader], Duration::from_secs(20), "the leader").await;
    let lease = wait_for(
        &leases,
        "canary-controller",
        "the standby to take the lease",
        // At once when the leader released it; after expiry (15 s) and a retry if a loaded
        // machine kept it from releasing in time.
        Duration::from_secs(60),
        |l| {
            let h = holder(l);
            !h.is_empty() && h != leader_identity
        },
    )
    .await;
    eprintln!("lease moved from {leader_identity} to {}", holder(&lease));
    set_image(&ns, "web:2").await;
    let (canary, timeline) = follow_until(&ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!("rolled out by the new leader:\n{}", timeline.join("\n"));
    assert_eq!(canary.status.unwrap().canary_weight, 0);
    drop(simulator);
}

/// The Ready condition of a Canary, if it has one.
fn ready_condition(
    canary: &Canary,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    canary
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_canary_naming_the_same_routing_is_refused_and_changes_nothing() {
    let world = world("shared").await;
    let canaries: Api<Canary> = world.ns.api();
    // Another service, whose Canary was copied from web's: the same VirtualService and
    // DestinationRule.
    rollout::service(&world.ns, "other", 0).await;
    rollout::copy_canary(&world.ns, "web", "other", "other").await;
    let refused = rollout::refused_as_conflicting(&world.ns, "other").await;
    let message = ready_condition(&refused).unwrap().message;
    assert!(
        message.contains("VirtualService web belongs to Canary web")
            && message.contains("DestinationRule web belongs to Canary web"),
        "{message}"
    );
    let status = refused.status.unwrap();
    assert!(status.claimed_objects.is_empty(), "{status:?}");
    assert_eq!(status.stable_revision, None, "it did nothing: {status:?}");
    let event =
        cluster::event_with_reason(&world.ns, "RoutingConflict", Duration::from_secs(10)).await;
    assert!(
        event
            .note
            .unwrap_or_default()
            .contains("belongs to Canary web")
    );
    let owner = canaries.get("web").await.unwrap().status.unwrap();
    assert_eq!(
        owner.claimed_objects,
        [
            "Deployment/web",
            "DestinationRule/web",
            "VirtualService/web"
        ]
    );
    // CI rolling out through the copy hears at once why nothing happens.
    let started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_canary"))
        .args([
            "run",
            "other",
            "--image",
            "other:2",
            "--wait",
            "--timeout",
            "5m",
        ])
        .args(["-n", &world.ns.name, "--kubeconfig"])
        .arg(cluster::cluster().kubeconfig())
        .output()
        .await
        .expect("running canary run");
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("belongs to Canary web"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(60), "{said}");
    // The copy never took its service over: no managed Deployment, its target untouched.
    let deployments: Api<Deployment> = world.ns.api();
    assert!(deployments.get_opt("other-stable").await.unwrap().is_none());

    // The original rolls out as if the copy were not there.
    let rules = dynamic(&world.ns, "DestinationRule");
    let subsets_before = rules.get("web").await.unwrap().data["spec"]["subsets"].clone();
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    let (canary, _) = follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    assert_eq!(canary.status.unwrap().canary_weight, 0);

    // Deleting the copy hands back nothing of the original's.
    canaries.delete("other", &Default::default()).await.unwrap();
    cluster::wait_gone(&canaries, "other", Duration::from_secs(30)).await;
    assert_eq!(
        rules.get("web").await.unwrap().data["spec"]["subsets"],
        subsets_before,
        "the DestinationRule's subsets still select web's pods"
    );
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
    let target: Deployment = deployments.get("web").await.unwrap();
    assert_eq!(
        target.spec.unwrap().replicas,
        Some(0),
        "web's target stays at zero"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_canary_takes_over_once_the_owner_is_deleted() {
    let world = world("takeover").await;
    let canaries: Api<Canary> = world.ns.api();
    // Same target, same routing.
    rollout::copy_canary(&world.ns, "web", "web-new", "web").await;
    rollout::refused_as_conflicting(&world.ns, "web-new").await;
    canaries.delete("web", &Default::default()).await.unwrap();
    let started = Instant::now();
    let (taken, timeline) =
        rollout::follow_canary_until(&world.ns, "web-new", Phase::Idle, ROLLOUT_TIMEOUT).await;
    eprintln!(
        "taken over {:.1}s after the owner's deletion:\n{}",
        started.elapsed().as_secs_f64(),
        timeline.join("\n")
    );
    let status = taken.status.unwrap();
    assert_eq!(status.claimed_objects.len(), 3, "{status:?}");
    assert_eq!(
        ready_condition(&canaries.get("web-new").await.unwrap()).map(|r| r.status),
        Some("True".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_edited_by_hand_while_settled_is_set_back_and_reported_at_once() {
    let world = world("drift").await;
    let services = dynamic(&world.ns, "VirtualService");
    let edited = Instant::now();
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"http": [{"name": "primary", "route": [
                {"destination": {"host": "web", "subset": "stable"}, "weight": 70},
                {"destination": {"host": "web", "subset": "canary"}, "weight": 30},
            ]}]}})),
        )
        .await
        .unwrap();
    let event = cluster::event_with_reason(&world.ns, "WeightDrift", Duration::from_secs(20)).await;
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains("30%") && note.contains("set back to 0%"),
        "{note}"
    );
    eventually(
        "the canary's weight back at 0",
        Duration::from_secs(20),
        || async { (canary_weight_in_virtual_service(&world.ns).await == 0).then_some(()) },
    )
    .await;
    eprintln!(
        "drift set back and reported {:.2}s after the edit",
        edited.elapsed().as_secs_f64()
    );
    let status = world
        .ns
        .api::<Canary>()
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!((status.phase, status.canary_weight), (Phase::Idle, 0));
}

/// The number of reconciles the controller's `/metrics` counts.
async fn reconciles(port: u16) -> Option<u64> {
    let (_, text) = http_get(port, "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("canary_reconcile_duration_seconds_count "))
        .and_then(|count| count.trim().parse().ok())
}

/// The controller's API requests by verb, but for the watches' own (list, watch).
async fn requests_by_verb(port: u16) -> Option<std::collections::BTreeMap<String, f64>> {
    let (_, text) = http_get(port, "/metrics").await?;
    let verb =
        regex::Regex::new(r#"^canary_kube_requests_total\{.*verb="([a-z]+)".*\} ([0-9.e+]+)$"#)
            .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(found) = verb.captures(line)
            && !matches!(&found[1], "list" | "watch")
        {
            *counts.entry(found[1].to_string()).or_insert(0.0) += found[2].parse::<f64>().ok()?;
        }
    }
    Some(counts)
}

/// The resourceVersions of the objects a settled Canary's rollout writes.
async fn written_versions(ns: &cluster::TestNamespace) -> Vec<(String, String)> {
    let canaries: Api<Canary> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let mut versions = vec![(
        "Canary web".to_string(),
        canaries
            .get("web")
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
    )];
    for name in ["web-stable", "web-canary"] {
        if let Some(d) = deployments.get_opt(name).await.unwrap() {
            versions.push((format!("Deployment {name}"), d.resource_version().unwrap()));
        }
    }
    for kind in ["VirtualService", "DestinationRule"] {
        let object = dynamic(ns, kind).get("web").await.unwrap();
        versions.push((format!("{kind} web"), object.resource_version().unwrap()));
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_canary_woken_again_and_again_reads_from_caches_and_writes_nothing() {
    let ns = cluster().namespace("quiet").await;
    set_up(&ns, "web:1").await;
    let (mut controller, port) = spawn_controller(
        &[
            "--namespace",
            &ns.name,
            "--prometheus",
            "http://127.0.0.1:1",
        ],
        &[],
    )
    .await;
    follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    // Settled: what it wrote last (status, the target at zero) is in, and nothing follows.
    let settled = eventually("the settled state", Duration::from_secs(30), || async {
        let first = (written_versions(&ns).await, requests_by_verb(port).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = (written_versions(&ns).await, requests_by_verb(port).await?);
        (first == second).then_some(first)
    })
    .await;

    // Each change of the target that is not a new revision wakes the Canary, which finds
    // everything as it should be: no request at all (reads come from the caches), so no
    // status, Deployment or routing write.
    let deployments: Api<Deployment> = ns.api();
    let start = reconciles(port).await.expect("the controller's metrics");
    for touch in 0..5 {
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"test/touched": touch.to_string()}}}),
                ),
            )
            .await
            .unwrap();
        eventually(
            "a reconcile of the touched target",
            Duration::from_secs(10),
            || async { (reconciles(port).await? > start + touch).then_some(()) },
        )
        .await;
    }
    let after = (
        written_versions(&ns).await,
        requests_by_verb(port).await.unwrap(),
    );
    assert_eq!(after, settled);
    assert!(
        !settled.1.is_empty(),
        "the controller's requests are counted: {:?}",
        settled.1
    );
    terminate(&mut controller, Duration::from_secs(15), "the controller").await;
}
