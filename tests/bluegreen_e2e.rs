//! End-to-end blue-green: `deploy/examples/blue-green.yaml` (the design documents' Rollout as
//! a Canary) applied on the real local control plane, the traffic simulator sending requests
//! through the active and the preview Services to the pods their selectors select (the apps'
//! own metrics, labelled by Service), a real Prometheus scraping it, and the `canary
//! controller` process with the deployed RBAC.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/replicas.rs"]
mod replicas;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use tokio::process::Child;

use canary::analysis::assessment::AnalysisPhase;
use canary::api::canary::{Canary, Phase, RollbackReason};
use cluster::{TestNamespace, cluster, eventually, wait_gone};
use replicas::pods;
use rollout::{ROLLOUT_TIMEOUT, Simulator, image_of, start_controller};

const NAME: &str = "api-server";
const ACTIVE: &str = "api-server-active";
const PREVIEW: &str = "api-server-preview";
const STABLE: &str = "api-server-stable";
const CANARY: &str = "api-server-canary";
const SUBSET: &str = "canary.dev/subset";

struct World {
    ns: TestNamespace,
    simulator: Simulator,
    _prometheus: prometheus::Prometheus,
    _controller: Child,
}

/// The example (after `edit`) applied, traffic through both Services, the controller
/// running and the Canary Idle on the first revision.
async fn world(prefix: &str, edit: impl FnOnce(&mut Value)) -> World {
    let ns = cluster().namespace(prefix).await;
    let mut documents = replicas::documents_of_example("blue-green.yaml");
    edit(
        documents
            .iter_mut()
            .find(|d| d["kind"] == "Canary")
            .expect("the example has a Canary"),
    );
    replicas::apply_documents(&ns, &documents).await;
    let simulator = Simulator::following(&ns, &["--service", ACTIVE, "--service", PREVIEW]).await;
    let prometheus = simulator.scraped_as("apps").await;
    let controller = start_controller(&ns, &prometheus.url()).await;
    follow(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    assert_eq!(subset_of(&ns, ACTIVE).await.as_deref(), Some("stable"));
    World {
        ns,
        simulator,
        _prometheus: prometheus,
        _controller: controller,
    }
}

/// The `canary.dev/subset` the Service selects, if any.
async fn subset_of(ns: &TestNamespace, service: &str) -> Option<String> {
    let api: Api<Service> = ns.api();
    api.get(service)
        .await
        .expect("reading a Service")
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get(SUBSET).cloned())
}

/// A new revision of the target: its container `api-server` runs `image`.
async fn set_image(ns: &TestNamespace, image: &str) {
    replicas::set_container_image(ns, NAME, "api-server", image).await;
}

/// One moment of the rollout as a test reads it.
#[derive(Clone, Debug, PartialEq)]
struct Moment {
    phase: Phase,
    active: Option<String>,
    preview: Option<String>,
    canary: (i32, i32),
    stable: (i32, i32),
}

/// Polls until `phase`, recording every change (the timeline is in the failure message);
/// checks at every moment that the active Service never selects a version short of ready
/// pods.
async fn follow(ns: &TestNamespace, phase: Phase, timeout: Duration) -> (Canary, Vec<Moment>) {
    let api: Api<Canary> = ns.api();
    let started = Instant::now();
    let mut moments: Vec<Moment> = Vec::new();
    let mut timeline = Vec::new();
    loop {
        let canary = api.get(NAME).await.expect("reading the Canary");
        let status = canary.status.clone().unwrap_or_default();
        let moment = Moment {
            phase: status.phase,
            active: subset_of(ns, ACTIVE).await,
            preview: subset_of(ns, PREVIEW).await,
            canary: pods(ns, CANARY).await,
            stable: pods(ns, STABLE).await,
        };
        if moments.last() != Some(&moment) {
            timeline.push(format!(
                "{:>5.1}s {moment:?} {}",
                started.elapsed().as_secs_f64(),
                status.message.clone().unwrap_or_default()
            ));
            moments.push(moment.clone());
        }
        if moment.active.as_deref() == Some("canary") {
            // Full size and ready; the previous revision's 4 ready pods would serve otherwise.
            assert!(
                moment.canary.1 >= 4,
                "the active Service selects a canary short of ready pods:\n{}",
                timeline.join("\n")
            );
        }
        if moment.phase == phase {
            eprintln!("until {phase:?}:\n{}", timeline.join("\n"));
            return (canary, moments);
        }
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {phase:?}:\n{}",
            timeline.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_phase(canary: &Canary, run: &str) -> Option<AnalysisPhase> {
    canary
        .status
        .as_ref()?
        .analysis_runs
        .iter()
        .find(|r| r.name == run)
        .map(|r| r.phase)
}

/// `canary <action> api-server` run as an operator runs it.
fn request(ns: &TestNamespace, action: &str) {
    let output = cli::canary(&[
        action,
        NAME,
        "--namespace",
        &ns.name,
        "--kubeconfig",
        &cluster().kubeconfig().to_string_lossy(),
    ]);
    assert!(
        output.status.success(),
        "canary {action}: {}",
        cli::all_output(&output)
    );
}

async fn target_image(ns: &TestNamespace, name: &str) -> String {
    let api: Api<Deployment> = ns.api();
    image_of(&api.get(name).await.expect("reading a Deployment"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_by_a_human_after_a_passing_pre_promotion_analysis() {
    let world = world("bluegreen-promote", |_| {}).await;
    set_image(&world.ns, "api-server:2.0.0").await;

    // The preview at full size behind the preview Service, judged there, then the gate.
    let (canary, moments) = follow(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    assert_eq!(
        run_phase(&canary, "step-1"),
        Some(AnalysisPhase::Successful)
    );
    assert!(
        moments
            .iter()
            .all(|m| m.active.as_deref() == Some("stable"))
    );
    let at_gate = moments.last().unwrap();
    assert_eq!(at_gate.preview.as_deref(), Some("canary"));
    assert_eq!(at_gate.canary, (4, 4));
    assert_eq!(at_gate.stable, (4, 4));

    request(&world.ns, "promote");
    let (canary, moments) = follow(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    // Switched, judged through the active Service while the previous revision ran, promoted.
    assert!(
        moments
            .iter()
            .any(|m| m.active.as_deref() == Some("canary") && m.stable == (4, 4)),
        "{moments:#?}"
    );
    assert_eq!(
        run_phase(&canary, "step-4"),
        Some(AnalysisPhase::Successful)
    );
    let status = canary.status.unwrap();
    assert_eq!(status.canary_weight, 0);
    assert_eq!(target_image(&world.ns, STABLE).await, "api-server:2.0.0");
    // Back on stable, which now runs the new revision; the canary goes after the delay.
    assert_eq!(
        subset_of(&world.ns, ACTIVE).await.as_deref(),
        Some("stable")
    );
    eventually(
        "the canary scaled down",
        Duration::from_secs(30),
        || async { (pods(&world.ns, CANARY).await.0 == 0).then_some(()) },
    )
    .await;
    let switched = replicas::event_notes(&world.ns, "WeightChanged").await;
    assert!(
        switched.iter().any(|n| n.contains("0% → 100%")),
        "{switched:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_post_promotion_analysis_switches_back_within_a_second() {
    let world = world("bluegreen-post", |canary| {
        canary["spec"]["strategy"]["blueGreen"]["autoPromotionEnabled"] = json!(true);
        // Long enough to judge the new revision through the active Service.
        canary["spec"]["scaleDownDelaySeconds"] = json!(30);
    })
    .await;
    set_image(&world.ns, "api-server:3.0.0").await;
    // Healthy through the preview; failing once it has the production traffic.
    eventually("the active Service switched", ROLLOUT_TIMEOUT, || async {
        (subset_of(&world.ns, ACTIVE).await.as_deref() == Some("canary")).then_some(())
    })
    .await;
    world.simulator.set_error_rate(CANARY, 0.5).await;

    // The moment the selector points back at the previous revision, against the failing
    // measurement that decided it.
    let switched_back = eventually("switched back", ROLLOUT_TIMEOUT, || async {
        (subset_of(&world.ns, ACTIVE).await.as_deref() == Some("stable")).then(jiff::Timestamp::now)
    })
    .await;
    let (canary, _) = follow(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    let status = canary.status.clone().unwrap();
    assert_eq!(status.rollback_reason, Some(RollbackReason::AnalysisFailed));
    assert_eq!(run_phase(&canary, "step-3"), Some(AnalysisPhase::Failed));
    let failing = status
        .analysis_runs
        .iter()
        .find(|r| r.name == "step-3")
        .and_then(|r| {
            r.metrics[0]
                .measurements
                .iter()
                .rev()
                .find(|m| m.value.is_some())
        })
        .map(|m| m.time.parse::<jiff::Timestamp>().unwrap())
        .expect("a failing measurement");
    let latency = switched_back.duration_since(failing);
    // The figure is for the note (speed is measured, not asserted tightly): on an idle
    // machine well under a second. The bound tells "at once" from "at the next recheck".
    eprintln!("failing measurement → active Service on the previous revision: {latency:?}");
    assert!(
        latency < jiff::SignedDuration::from_secs(3),
        "switched back {latency:?} after the failing measurement"
    );
    // The previous revision served meanwhile: stable still runs it, at full size.
    assert_eq!(target_image(&world.ns, STABLE).await, "api-server:1.0.0");
    assert_eq!(pods(&world.ns, STABLE).await, (4, 4));
    assert_eq!(status.failed_revision, status.target_revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_mid_preview_and_released_the_services_are_as_written() {
    let world = world("bluegreen-abort", |_| {}).await;
    set_image(&world.ns, "api-server:4.0.0").await;
    eventually("the preview up", ROLLOUT_TIMEOUT, || async {
        (subset_of(&world.ns, PREVIEW).await.as_deref() == Some("canary")
            && pods(&world.ns, CANARY).await == (4, 4))
            .then_some(())
    })
    .await;
    request(&world.ns, "abort");
    let (canary, moments) = follow(&world.ns, Phase::RolledBack, ROLLOUT_TIMEOUT).await;
    assert!(
        moments
            .iter()
            .all(|m| m.active.as_deref() == Some("stable"))
    );
    let status = canary.status.unwrap();
    assert_eq!(status.rollback_reason, Some(RollbackReason::Aborted));
    assert_eq!(target_image(&world.ns, STABLE).await, "api-server:1.0.0");
    eventually(
        "the preview scaled down",
        Duration::from_secs(30),
        || async { (pods(&world.ns, CANARY).await.0 == 0).then_some(()) },
    )
    .await;

    // Deleting the Canary hands the Services back with the selectors as written.
    let canaries: Api<Canary> = world.ns.api();
    canaries
        .delete(NAME, &DeleteParams::default())
        .await
        .expect("deleting the Canary");
    wait_gone(&canaries, NAME, Duration::from_secs(30)).await;
    // The release is the deletion's last write, before the finalizer goes; yet the Canary was
    // seen gone before it landed in about one run of seven (not explained yet: issue 15's
    // note). What must hold is that it lands.
    let written: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "api-server".to_string())].into();
    for service in [ACTIVE, PREVIEW] {
        let api: Api<Service> = world.ns.api();
        eventually(
            &format!("{service}'s selector as written"),
            Duration::from_secs(10),
            || async {
                let selector = api.get(service).await.ok()?.spec?.selector?;
                (selector == written).then_some(())
            },
        )
        .await;
    }
    let deployments: Api<Deployment> = world.ns.api();
    let target = deployments.get(NAME).await.unwrap();
    assert_eq!(target.spec.and_then(|s| s.replicas), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_exits_with_the_verdict_and_a_failing_preview_is_never_switched_to() {
    let world = world("bluegreen-run", |canary| {
        canary["spec"]["strategy"]["blueGreen"]["autoPromotionEnabled"] = json!(true);
        canary["spec"]["scaleDownDelaySeconds"] = json!(2);
    })
    .await;
    let kubeconfig = cluster().kubeconfig().to_string_lossy().into_owned();
    let run = |image: &'static str| {
        let (ns, kubeconfig) = (world.ns.name.clone(), kubeconfig.clone());
        tokio::task::spawn_blocking(move || {
            cli::canary(&[
                "run",
                NAME,
                "--image",
                image,
                "--wait",
                "--timeout",
                "3m",
                "-n",
                &ns,
                "--kubeconfig",
                &kubeconfig,
            ])
        })
    };
    let promoted = run("api-server:5.0.0").await.unwrap();
    assert_eq!(
        promoted.status.code(),
        Some(0),
        "{}",
        cli::all_output(&promoted)
    );
    assert_eq!(target_image(&world.ns, STABLE).await, "api-server:5.0.0");

    // A revision that fails behind the preview Service: rolled back before any switch.
    world.simulator.set_error_rate(CANARY, 0.5).await;
    let rolled_back = run("api-server:6.0.0").await.unwrap();
    assert_eq!(
        rolled_back.status.code(),
        Some(1),
        "{}",
        cli::all_output(&rolled_back)
    );
    let switches = replicas::event_notes(&world.ns, "WeightChanged")
        .await
        .into_iter()
        .filter(|n| n.contains("switched to the new revision"))
        .count();
    assert_eq!(switches, 1, "only the healthy revision was switched to");
    let canary: Api<Canary> = world.ns.api();
    let canary = canary.get(NAME).await.unwrap();
    assert_eq!(run_phase(&canary, "step-1"), Some(AnalysisPhase::Failed));
    assert_eq!(target_image(&world.ns, STABLE).await, "api-server:5.0.0");
}
