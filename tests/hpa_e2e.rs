//! End-to-end: the design's order-service with its HPA (`deploy/examples/replica-canary.yaml`
//! plus `deploy/examples/order-service-hpa.yaml`, min 3, max 20, CPU 70%) canaried on the real
//! local control plane, with the real HPA controller of the local kube-controller-manager
//! scaling stable.
//!
//! The pods are KWOK fakes: there is no metrics pipeline, so the CPU metric never has a value.
//! The HPA controller still enforces `minReplicas`/`maxReplicas` when its metrics fail (it
//! scales a Deployment below min up and one above max down before it looks at metrics), so the
//! tests drive scaling by changing the user's HPA bounds: the controller copies them into the
//! derived HPA and the HPA controller, not the canary controller, writes stable's replicas.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/replicas.rs"]
mod replicas;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::{Duration, Instant};

use cluster::{TestNamespace, cluster, eventually, wait_gone};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch, PatchParams};
use replicas::{
    CANARY, NAME, STABLE, Split, apply_documents, document, example_documents, follow,
    follow_splits, patch_canary, pods, set_image,
};
use rollout::{ROLLOUT_TIMEOUT, Simulator, image_of, start_namespaced_controller, terminate};
use serde_json::{Value, json};

use canary::api::canary::{Canary, Phase};

/// The user's HPA, as the example names it.
const USER_HPA: &str = "order-service-hpa";
/// How long the HPA controller may take to act on a change of bounds (it syncs an HPA at
/// least every 15 s; a change of the HPA object is usually acted on within a few seconds).
const HPA_ACTS: Duration = Duration::from_secs(60);

fn hpa_document() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/order-service-hpa.yaml"
    );
    let text = std::fs::read_to_string(path).expect("reading the example HPA");
    serde_saphyr::from_str(&text).expect("the example HPA parses")
}

/// Sets the user's HPA bounds, as a person (or a GitOps sync) would.
async fn set_bounds(ns: &TestNamespace, min: i32, max: i32) {
    let api: Api<HorizontalPodAutoscaler> = ns.api();
    api.patch(
        USER_HPA,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minReplicas": min, "maxReplicas": max}})),
    )
    .await
    .expect("changing the user's HPA");
}

/// `(minReplicas, maxReplicas, scaleTargetRef.name)` of an HPA, if it exists.
async fn hpa_bounds(ns: &TestNamespace, name: &str) -> Option<(i32, i32, String)> {
    let api: Api<HorizontalPodAutoscaler> = ns.api();
    let hpa = api.get_opt(name).await.expect("reading an HPA")?;
    let spec = hpa.spec?;
    Some((
        spec.min_replicas.unwrap_or(1),
        spec.max_replicas,
        spec.scale_target_ref.name,
    ))
}

/// Waits until `name` runs `replicas` ready pods.
async fn ready_pods(ns: &TestNamespace, name: &str, replicas: i32, timeout: Duration) {
    eventually(
        &format!("{name} with {replicas} ready pods"),
        timeout,
        || async { (pods(ns, name).await == (replicas, replicas)).then_some(()) },
    )
    .await;
}

async fn request(ns: &TestNamespace, value: &str) {
    patch_canary(
        ns,
        json!({"metadata": {"annotations": {"canary.dev/request": value}}}),
    )
    .await;
}

/// The field managers that own `spec.replicas` of a Deployment.
async fn replicas_owners(ns: &TestNamespace, name: &str) -> Vec<String> {
    let api: Api<Deployment> = ns.api();
    let deployment = api.get(name).await.expect("reading a Deployment");
    deployment
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        })
        .map(|m| {
            format!(
                "{}/{}{}",
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
                m.subresource.map(|s| format!("/{s}")).unwrap_or_default()
            )
        })
        .collect()
}

fn lowest_stable(splits: &[Split]) -> i32 {
    splits.iter().map(|s| s.stable.0).min().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_replica_canary_keeps_autoscaling_through_a_rollout_and_after_promotion() {
    let ns = cluster().namespace("hpa").await;
    let mut documents = example_documents();
    // Gates, so the test scales stable while the rollout holds at each weight.
    document(&mut documents, "Canary")["spec"]["steps"] =
        json!([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]);
    documents.push(hpa_document());
    apply_documents(&ns, &documents).await;
    let simulator = Simulator::following(&ns, &["--service", NAME]).await;
    let prometheus = simulator.scraped_as("apps").await;
    // The namespace-scoped install's Role: exactly its permissions, and no cluster-wide
    // object shared with other test processes.
    let mut controller = start_namespaced_controller(&ns, &prometheus.url()).await;
    let (_, timeline) = follow(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    eprintln!("initialized:\n{}", timeline.join("\n"));

    // Taken over: stable runs the target's 10 pods, the target is at 0 (which makes the
    // user's HPA inactive), and the derived HPA scales stable with the user's bounds.
    ready_pods(&ns, STABLE, 10, ROLLOUT_TIMEOUT).await;
    let deployments: Api<Deployment> = ns.api();
    assert_eq!(
        deployments.get(NAME).await.unwrap().spec.unwrap().replicas,
        Some(0)
    );
    eventually("the derived HPA", Duration::from_secs(10), || async {
        (hpa_bounds(&ns, STABLE).await == Some((3, 20, STABLE.to_string()))).then_some(())
    })
    .await;
    assert_eq!(
        hpa_bounds(&ns, USER_HPA).await,
        Some((3, 20, NAME.to_string())),
        "the user's HPA is left as written"
    );
    // Handed over: nothing of the controller owns stable's replicas (dropping them from its
    // apply did not reset them to 1, as the 10 ready pods show).
    let owners = replicas_owners(&ns, STABLE).await;
    assert!(
        !owners.iter().any(|o| o == "canary-controller/Apply"),
        "{owners:?}"
    );

    // The HPA scales stable: a higher min is copied to the derived HPA and the HPA
    // controller scales stable up; the Canary's size follows.
    let asked = Instant::now();
    set_bounds(&ns, 12, 20).await;
    eventually(
        "the derived HPA's min 12",
        Duration::from_secs(5),
        || async { (hpa_bounds(&ns, STABLE).await.map(|b| b.0) == Some(12)).then_some(()) },
    )
    .await;
    eprintln!(
        "user's min 12 → the derived HPA's min 12: {:.0} ms",
        asked.elapsed().as_secs_f64() * 1000.0
    );
    ready_pods(&ns, STABLE, 12, HPA_ACTS).await;
    eprintln!(
        "user's min 12 → stable at 12 ready pods: {:.1} s",
        asked.elapsed().as_secs_f64()
    );
    let owners = replicas_owners(&ns, STABLE).await;
    assert!(
        owners
            .iter()
            .any(|o| o == "kube-controller-manager/Update/scale"),
        "the HPA controller wrote stable's replicas: {owners:?}"
    );
    eventually(
        "status.desiredReplicas 12",
        Duration::from_secs(10),
        || async {
            let api: Api<Canary> = ns.api();
            let status = api.get(NAME).await.unwrap().status.unwrap_or_default();
            (status.desired_replicas == Some(12)).then_some(())
        },
    )
    .await;

    // A rollout: 10% beside stable's 12 pods is 1 canary pod (12 × 10 / 90 = 1.3); stable
    // keeps all 12, and the derived HPA's min holds them.
    set_image(&ns, "order-service:v1.3.0-canary").await;
    let (_, splits, timeline) = follow_splits(&ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    let text = timeline.join("\n");
    eprintln!("to 10%:\n{text}");
    ready_pods(&ns, CANARY, 1, ROLLOUT_TIMEOUT).await;
    assert!(lowest_stable(&splits) >= 12, "stable was shrunk: {text}");
    // The user lowers their min: stable's size at the rollout's start stays held.
    set_bounds(&ns, 3, 20).await;
    eventually("the user's min 3", Duration::from_secs(5), || async {
        (hpa_bounds(&ns, USER_HPA).await.map(|b| b.0) == Some(3)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hpa_bounds(&ns, STABLE).await.map(|b| b.0),
        Some(12),
        "held at stable's size when the rollout started"
    );
    // The HPA scales stable up mid-rollout (a higher min): the canary follows,
    // 16 × 10 / 90 = 1.8 → 2 pods.
    let asked = Instant::now();
    set_bounds(&ns, 16, 20).await;
    ready_pods(&ns, STABLE, 16, HPA_ACTS).await;
    ready_pods(&ns, CANARY, 2, ROLLOUT_TIMEOUT).await;
    eprintln!(
        "user's min 16 → stable 16 and canary 2 ready: {:.1} s",
        asked.elapsed().as_secs_f64()
    );

    // 50%: as many canary pods as stable's.
    request(&ns, "promote:hpa-1").await;
    eventually("50% with 16 + 16", ROLLOUT_TIMEOUT, || async {
        let (_, split) = replicas::split(&ns).await;
        (split.phase == Phase::Paused
            && split.weight == 50
            && split.canary == (16, 16)
            && split.stable == (16, 16))
            .then_some(())
    })
    .await;

    // The user lowers their min again: stable's size at the rollout's start stays held until
    // the rollout ends.
    set_bounds(&ns, 3, 20).await;
    eventually("the user's min 3", Duration::from_secs(5), || async {
        (hpa_bounds(&ns, USER_HPA).await.map(|b| b.0) == Some(3)).then_some(())
    })
    .await;

    // Promotion: stable runs the new template, still sized by its HPA.
    request(&ns, "promote:hpa-2").await;
    let (canary, splits, timeline) = follow_splits(&ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    let text = timeline.join("\n");
    eprintln!("to promotion:\n{text}");
    assert!(lowest_stable(&splits) >= 16, "stable was shrunk: {text}");
    assert_eq!(
        image_of(&deployments.get(STABLE).await.unwrap()),
        "order-service:v1.3.0-canary"
    );
    assert_eq!(canary.status.unwrap().held_stable_replicas, None);
    eventually(
        "the derived HPA back to the user's min",
        Duration::from_secs(10),
        || async { (hpa_bounds(&ns, STABLE).await.map(|b| b.0) == Some(3)).then_some(()) },
    )
    .await;
    ready_pods(&ns, CANARY, 0, Duration::from_secs(30)).await;

    // Autoscaling goes on with the promoted version: a lower max scales stable down.
    let asked = Instant::now();
    set_bounds(&ns, 3, 8).await;
    ready_pods(&ns, STABLE, 8, HPA_ACTS).await;
    eprintln!(
        "user's max 8 → promoted stable at 8: {:.1} s",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(
        image_of(&deployments.get(STABLE).await.unwrap()),
        "order-service:v1.3.0-canary"
    );

    // Deleting the Canary hands the target back at stable's size, and the user's HPA, active
    // again, scales it.
    eventually(
        "status.desiredReplicas 8",
        Duration::from_secs(10),
        || async {
            let api: Api<Canary> = ns.api();
            let status = api.get(NAME).await.unwrap().status.unwrap_or_default();
            (status.desired_replicas == Some(8)).then_some(())
        },
    )
    .await;
    let canaries: Api<Canary> = ns.api();
    canaries
        .delete(NAME, &Default::default())
        .await
        .expect("deleting the Canary");
    wait_gone(&canaries, NAME, ROLLOUT_TIMEOUT).await;
    ready_pods(&ns, NAME, 8, ROLLOUT_TIMEOUT).await;
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    wait_gone(&hpas, STABLE, ROLLOUT_TIMEOUT).await;
    set_bounds(&ns, 9, 20).await;
    ready_pods(&ns, NAME, 9, HPA_ACTS).await;
    terminate(&mut controller, Duration::from_secs(10), "the controller").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_that_goes_or_comes_hands_stables_replicas_over_at_their_size() {
    let ns = cluster().namespace("hpa-gone").await;
    let mut documents = example_documents();
    documents.push(hpa_document());
    apply_documents(&ns, &documents).await;
    let simulator = Simulator::following(&ns, &["--service", NAME]).await;
    let prometheus = simulator.scraped_as("apps").await;
    let mut controller = start_namespaced_controller(&ns, &prometheus.url()).await;
    follow(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    set_bounds(&ns, 12, 20).await;
    ready_pods(&ns, STABLE, 12, HPA_ACTS).await;

    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    hpas.delete(USER_HPA, &Default::default())
        .await
        .expect("deleting the user's HPA");
    wait_gone(&hpas, STABLE, Duration::from_secs(10)).await;
    // The controller sizes stable again, at the size the HPA left it, and owns the field.
    eventually(
        "stable's replicas owned by the controller",
        Duration::from_secs(10),
        || async {
            replicas_owners(&ns, STABLE)
                .await
                .iter()
                .any(|o| o == "canary-controller/Apply")
                .then_some(())
        },
    )
    .await;
    assert_eq!(pods(&ns, STABLE).await, (12, 12));

    // An HPA added to a Canary already running: the controller hands stable's replicas over
    // (its own apply owned them) without a moment at another size, and the HPA scales it.
    let mut hpa = hpa_document();
    hpa["spec"]["minReplicas"] = json!(14);
    apply_documents(&ns, &[hpa]).await;
    eventually("the derived HPA again", Duration::from_secs(10), || async {
        (hpa_bounds(&ns, STABLE).await.map(|b| b.0) == Some(14)).then_some(())
    })
    .await;
    let owners = replicas_owners(&ns, STABLE).await;
    assert!(
        !owners.iter().any(|o| o == "canary-controller/Apply"),
        "{owners:?}"
    );
    assert!(pods(&ns, STABLE).await.0 >= 12, "stable kept its size");
    ready_pods(&ns, STABLE, 14, HPA_ACTS).await;
    hpas.delete(USER_HPA, &Default::default())
        .await
        .expect("deleting the user's HPA again");
    wait_gone(&hpas, STABLE, Duration::from_secs(10)).await;

    // A spec.autoscalerRef naming an HPA that does not exist is said in Ready, naming the field.
    patch_canary(&ns, json!({"spec": {"autoscalerRef": {"name": "nope"}}})).await;
    let message = eventually(
        "Ready=False InvalidSpec",
        Duration::from_secs(10),
        || async {
            let api: Api<Canary> = ns.api();
            let status = api.get(NAME).await.unwrap().status.unwrap_or_default();
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "InvalidSpec")
                .map(|c| c.message)
        },
    )
    .await;
    assert!(
        message.contains("spec.autoscalerRef.name") && message.contains("nope"),
        "{message}"
    );
    terminate(&mut controller, Duration::from_secs(10), "the controller").await;
}
