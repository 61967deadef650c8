//! End-to-end rollouts without a mesh (no `spec.trafficRouting`): the split is the number of
//! ready pods of each version behind the user's one Service. `deploy/examples/replica-canary.yaml`
//! is applied on the real local control plane, the traffic simulator spreads requests over the
//! Service's ready pods (an app's own metrics by pod), a real Prometheus scrapes it, and the
//! `canary controller` process runs with the deployed RBAC.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/replicas.rs"]
mod replicas;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::{Duration, Instant};

use cluster::eventually;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use replicas::{
    CANARY, NAME, STABLE, Split, document, event_notes, follow, follow_splits, pods, replica_world,
    set_image, split,
};
use rollout::{ROLLOUT_TIMEOUT, image_of};
use serde_json::{Value, json};

use canary::api::canary::{Phase, RollbackReason};

/// Steps that stop at the seed's 10% until a human decides.
fn hold_at_ten_percent(documents: &mut [Value]) {
    document(documents, "Canary")["spec"]["steps"] = json!([{"setWeight": 10}, {"pause": {}}]);
}

fn has(splits: &[Split], wanted: impl Fn(&Split) -> bool) -> bool {
    splits.iter().any(wanted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_as_written_promotes_a_healthy_revision_through_nine_plus_one() {
    let world = replica_world("replica-promote", |_| {}).await;
    let deployments: Api<Deployment> = world.ns.api();
    let target = deployments.get(NAME).await.unwrap();
    assert_eq!(
        target.spec.unwrap().replicas,
        Some(0),
        "the target is kept at zero replicas"
    );
    assert_eq!(pods(&world.ns, STABLE).await, (10, 10));

    set_image(&world.ns, "order-service:v1.3.0-canary").await;
    let (canary, splits, timeline) =
        follow_splits(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    let text = timeline.join("\n");
    eprintln!("healthy rollout:\n{text}");
    // The seed's split: 9 stable pods and 1 canary pod, all ready, 10% in effect.
    assert!(
        has(&splits, |s| s.weight == 10
            && s.effective == Some(10)
            && s.canary == (1, 1)
            && s.stable == (9, 9)),
        "{text}"
    );
    // 5 + 5 (the 2 s pause may end before stable's fifth pod is gone: its size is enough).
    assert!(
        has(&splits, |s| s.weight == 50
            && s.canary == (5, 5)
            && s.stable.0 == 5),
        "{text}"
    );
    // Traffic moved only to ready pods: never more canary weight than its ready share allows.
    for s in &splits {
        if s.weight > 0 && s.phase == Phase::Progressing {
            assert!(s.canary.1 >= 1, "weight without a ready canary pod: {text}");
        }
    }
    let status = canary.status.unwrap();
    let tally = status.analysis_runs[0].metrics[0].tally;
    assert_eq!((tally.measured, tally.failed), (3, 0), "{status:?}");
    assert!(tally.successful >= 1, "{status:?}");
    let stable = deployments.get(STABLE).await.unwrap();
    assert_eq!(image_of(&stable), "order-service:v1.3.0-canary");
    eventually(
        "stable serving with all 10 pods and the canary scaled to zero after the delay",
        Duration::from_secs(60),
        || async {
            let (canary, split) = split(&world.ns).await;
            let status = canary.status.unwrap_or_default();
            (split.canary.0 == 0 && split.stable == (10, 10) && status.effective_weight == Some(0))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_errors_is_rolled_back_by_analysis_and_its_pods_go_at_once() {
    // A long scale-down delay, so a canary that waited for it would be seen.
    let world = replica_world("replica-rollback", |d| {
        document(d, "Canary")["spec"]["scaleDownDelaySeconds"] = json!(120);
    })
    .await;
    world.simulator.set_error_rate(CANARY, 0.5).await;
    set_image(&world.ns, "order-service:bad").await;
    let (canary, splits, timeline) =
        follow_splits(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    let text = timeline.join("\n");
    eprintln!("bad canary:\n{text}");
    let status = canary.status.unwrap();
    assert_eq!(
        status.rollback_reason,
        Some(RollbackReason::AnalysisFailed),
        "{text}"
    );
    let measurements = &status.analysis_runs[0].metrics[0].measurements;
    assert!(
        measurements.iter().any(|m| m.reason.contains("is false")),
        "{measurements:?}"
    );
    assert!(
        has(&splits, |s| s.weight == 10 && s.canary == (1, 1)),
        "{text}"
    );
    assert!(!has(&splits, |s| s.weight == 50), "{text}");
    let rolled_back = Instant::now();
    eventually(
        "the canary's pods gone and stable back to 10",
        Duration::from_secs(20),
        || async {
            let (canary, stable) = (pods(&world.ns, CANARY).await, pods(&world.ns, STABLE).await);
            (canary == (0, 0) && stable == (10, 10)).then_some(())
        },
    )
    .await;
    eprintln!(
        "canary gone {:.1} s after RolledBack was seen (delay 120 s)",
        rolled_back.elapsed().as_secs_f64()
    );
    let deployments: Api<Deployment> = world.ns.api();
    assert_eq!(
        image_of(&deployments.get(STABLE).await.unwrap()),
        "order-service:v1.2.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_takes_the_canarys_pods_and_gives_stable_all_of_them_within_seconds() {
    let world = replica_world("replica-abort", hold_at_ten_percent).await;
    set_image(&world.ns, "order-service:v1.3.0-canary").await;
    let (_, timeline) = follow(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    eprintln!("to the pause:\n{}", timeline.join("\n"));
    let api: Api<canary::api::canary::Canary> = world.ns.api();
    let asked = Instant::now();
    api.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"canary.dev/request": "abort:e2e-1"}}})),
    )
    .await
    .unwrap();
    eventually(
        "the canary at 0 replicas and stable at 10",
        Duration::from_secs(10),
        || async {
            (pods(&world.ns, CANARY).await.0 == 0 && pods(&world.ns, STABLE).await.0 == 10)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "abort to 0 canary pods: {:.0} ms",
        asked.elapsed().as_secs_f64() * 1000.0
    );
    let (canary, _) = follow(&world.ns, Phase::RolledBack, Duration::from_secs(30)).await;
    let status = canary.status.unwrap();
    let request = status.last_request.unwrap();
    assert!(request.accepted && request.id == "e2e-1", "{request:?}");
    assert_eq!(status.rollback_reason, Some(RollbackReason::Aborted));
    eventually(
        "all 10 ready pods on stable, none on the canary",
        Duration::from_secs(30),
        || async {
            let (canary, split) = split(&world.ns).await;
            let effective = canary.status.and_then(|s| s.effective_weight);
            (split.stable == (10, 10) && split.canary.1 == 0 && effective == Some(0)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_deployment_scaled_by_hand_is_set_back_and_reported() {
    let world = replica_world("replica-drift", hold_at_ten_percent).await;
    set_image(&world.ns, "order-service:v1.3.0-canary").await;
    follow(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    eventually("9 + 1 ready", Duration::from_secs(30), || async {
        (pods(&world.ns, CANARY).await == (1, 1) && pods(&world.ns, STABLE).await == (9, 9))
            .then_some(())
    })
    .await;
    let deployments: Api<Deployment> = world.ns.api();
    // As `kubectl scale` would: another field manager than the controller's.
    for (name, replicas, expected) in [(CANARY, 3, 1), (STABLE, 4, 9)] {
        deployments
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
        let wanted = format!("{name} has {replicas} replicas instead of {expected}");
        let notes = eventually(
            &format!("a WeightDrift event saying {wanted:?}"),
            Duration::from_secs(20),
            || async {
                let notes = event_notes(&world.ns, "WeightDrift").await;
                notes.iter().any(|n| n.contains(&wanted)).then_some(notes)
            },
        )
        .await;
        eprintln!("drift of {name}: {notes:?}");
        eventually(
            &format!("{name} set back to {expected} replicas"),
            Duration::from_secs(20),
            || async { (pods(&world.ns, name).await.0 == expected).then_some(()) },
        )
        .await;
    }
    let (canary, split) = split(&world.ns).await;
    assert_eq!(split.phase, Phase::Paused, "{split}");
    assert_eq!(canary.status.unwrap().canary_weight, 10);
    eventually("10% in effect again", Duration::from_secs(30), || async {
        let (canary, split) = replicas::split(&world.ns).await;
        (split.canary == (1, 1)
            && split.stable == (9, 9)
            && canary.status.and_then(|s| s.effective_weight) == Some(10))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_that_cannot_be_realised_runs_one_pod_of_each_and_shows_its_effect() {
    // A service of one replica: 10% cannot be one tenth of a pod.
    let world = replica_world("replica-coarse", |d| {
        hold_at_ten_percent(d);
        document(d, "Deployment")["spec"]["replicas"] = json!(1);
    })
    .await;
    set_image(&world.ns, "order-service:v1.3.0-canary").await;
    let (_, timeline) = follow(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    eprintln!("one replica at 10%:\n{}", timeline.join("\n"));
    let (canary, split) = eventually("1 + 1 ready", Duration::from_secs(30), || async {
        let (canary, split) = split(&world.ns).await;
        (split.canary == (1, 1) && split.stable == (1, 1)).then_some((canary, split))
    })
    .await;
    let status = canary.status.unwrap();
    assert_eq!(status.canary_weight, 10, "{split}");
    assert_eq!(
        status.effective_weight,
        Some(50),
        "the weight in effect is shown: {split}"
    );
    // `canary status` says so too.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_canary"))
        .args(["status", NAME, "-n", &world.ns.name, "--kubeconfig"])
        .arg(cluster::cluster().kubeconfig())
        .output()
        .await
        .expect("running canary status");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("(50% in effect)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_canary_pods_stay_for_the_scale_down_delay() {
    let delay: u32 = 15;
    let world = replica_world("replica-delay", |d| {
        let spec = &mut document(d, "Canary")["spec"];
        spec["steps"] = json!([{"setWeight": 50}]);
        spec["scaleDownDelaySeconds"] = json!(delay);
    })
    .await;
    set_image(&world.ns, "order-service:v1.3.0-canary").await;
    let (canary, splits, timeline) =
        follow_splits(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    let text = timeline.join("\n");
    eprintln!("to promotion:\n{text}");
    assert!(
        has(&splits, |s| s.weight == 50 && s.canary == (5, 5)),
        "{text}"
    );
    let promoted_seen = Instant::now();
    assert_eq!(
        splits.last().unwrap().canary.0,
        5,
        "the canary's pods are not taken at promotion: {text}"
    );
    let status = canary.status.unwrap();
    let due: jiff::Timestamp = status
        .canary_scale_down_at
        .as_deref()
        .expect("status.canaryScaleDownAt")
        .parse()
        .unwrap();
    let promoted_at: jiff::Timestamp = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Promoted")
        .expect("a Promoted condition")
        .last_transition_time
        .0;
    let waits = due.duration_since(promoted_at).as_secs_f64();
    assert!(
        (f64::from(delay) - 1.0..=f64::from(delay) + 1.0).contains(&waits),
        "scale-down due {waits} s after promotion"
    );
    eventually(
        "the canary scaled to zero after the delay",
        Duration::from_secs(u64::from(delay) + 20),
        || async { (pods(&world.ns, CANARY).await.0 == 0).then_some(()) },
    )
    .await;
    let now = jiff::Timestamp::now();
    assert!(
        now >= due,
        "scaled down at {now}, before it was due at {due}"
    );
    eprintln!(
        "canary scaled down {:.1} s after Promoted was seen (delay {delay} s)",
        promoted_seen.elapsed().as_secs_f64()
    );
    assert_eq!(pods(&world.ns, STABLE).await.0, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline_without_taking_stables_pods()
 {
    let world = replica_world("replica-deadline", |d| {
        document(d, "Canary")["spec"]["progressDeadlineSeconds"] = json!(10);
    })
    .await;
    // Pods of this revision cannot be scheduled on any node: they never become ready.
    let api: Api<Deployment> = world.ns.api();
    api.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {
            "nodeSelector": {"canary.dev/no-such-node": "true"},
            "containers": [{"name": "order-service", "image": "order-service:unschedulable"}],
        }}}})),
    )
    .await
    .unwrap();
    let (canary, splits, timeline) =
        follow_splits(&world.ns, Phase::RolledBack, Duration::from_secs(90)).await;
    let text = timeline.join("\n");
    eprintln!("never ready:\n{text}");
    let status = canary.status.unwrap();
    assert_eq!(
        status.rollback_reason,
        Some(RollbackReason::ProgressDeadlineExceeded),
        "{text}"
    );
    assert!(!has(&splits, |s| s.weight > 0), "no traffic moved: {text}");
    assert!(
        splits.iter().all(|s| s.stable.0 == 10),
        "stable never gave up a pod to a canary that was not ready: {text}"
    );
    assert!(status.analysis_runs.is_empty(), "{status:?}");
    eventually(
        "the canary at 0 replicas",
        Duration::from_secs(20),
        || async { (pods(&world.ns, CANARY).await.0 == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_canary_of_the_same_deployment_is_refused_and_its_deletion_changes_nothing() {
    let world = replica_world("replica-owner", hold_at_ten_percent).await;
    let canaries: Api<canary::api::canary::Canary> = world.ns.api();
    rollout::copy_canary(&world.ns, NAME, "order-service-copy", NAME).await;
    let refused = rollout::refused_as_conflicting(&world.ns, "order-service-copy").await;
    let message = refused.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains(&format!("Deployment {NAME} belongs to Canary {NAME}")),
        "{message}"
    );
    // The owner rolls out as before.
    set_image(&world.ns, "order-service:v1.3.0-canary").await;
    follow(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    let before = split(&world.ns).await.1;
    canaries
        .delete("order-service-copy", &Default::default())
        .await
        .unwrap();
    cluster::wait_gone(&canaries, "order-service-copy", Duration::from_secs(30)).await;
    let target: Deployment = world.ns.api().get(NAME).await.unwrap();
    assert_eq!(
        target.spec.unwrap().replicas,
        Some(0),
        "the copy's deletion gave the target no replicas back"
    );
    let after = split(&world.ns).await.1;
    assert_eq!(
        (after.weight, after.canary.0, after.stable.0),
        (before.weight, before.canary.0, before.stable.0)
    );
}
