//! What operators see of the controller's decisions, end to end on the real API server with
//! `canary controller` as its own process: one event per decision with its own message (two
//! rollouts in a row, every weight change), operators' requests as events, `canary status`
//! showing the latest events, problems of the spec in status (a missing template while
//! nothing rolls out, a route name that does not exist), and the controller's own log.
//! No analysis runs here, so no Prometheus is needed.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use canary::api::canary::{Canary, Phase};
use cluster::{TestNamespace, cluster, eventually, wait_for};
use rollout::{
    ROLLOUT_TIMEOUT, controller_kubeconfig, create, create_success_rate_template, follow_until,
    patch_canary, set_image, set_up, spawn_controller_logging,
};

/// No template in these tests queries it.
const NO_PROMETHEUS: &str = "http://127.0.0.1:9";

/// Steps without analysis: each rollout's weights change 0 → 20 → 50 → 80 within seconds.
fn quick_steps() -> serde_json::Value {
    json!({"spec": {"steps": [
        {"setWeight": 20}, {"pause": {"duration": "1s"}},
        {"setWeight": 50}, {"pause": {"duration": "1s"}},
        {"setWeight": 80}, {"pause": {"duration": "1s"}},
    ]}})
}

/// The controller for `ns`, with the deployed permissions; its stderr into `log` if given.
async fn controller(
    ns: &TestNamespace,
    log: Option<&std::path::Path>,
) -> (tokio::process::Child, u16) {
    let kubeconfig = controller_kubeconfig().await.to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = match log {
        // The default log settings are under test.
        Some(_) => vec![("KUBECONFIG", &kubeconfig)],
        None => vec![("KUBECONFIG", &kubeconfig), ("CANARY_LOG", "canary=info")],
    };
    spawn_controller_logging(
        &["--namespace", &ns.name, "--prometheus", NO_PROMETHEUS],
        &env,
        log,
    )
    .await
}

/// The notes of the events of `reason` about Canary `name`, oldest first.
async fn notes(ns: &TestNamespace, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = ns.api();
    let mut found: Vec<Event> = events
        .list(&Default::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect();
    found.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    found.into_iter().filter_map(|e| e.note).collect()
}

/// The note of the first event of `reason` about Canary `name` that contains `text`, waited
/// for (events are published after the status write that says the same).
async fn note_containing(ns: &TestNamespace, name: &str, reason: &str, text: &str) -> String {
    eventually(
        &format!("a {reason} event saying {text:?}"),
        Duration::from_secs(15),
        || async {
            notes(ns, name, reason)
                .await
                .into_iter()
                .find(|n| n.contains(text))
        },
    )
    .await
}

fn condition(canary: &Canary, kind: &str) -> Option<Condition> {
    canary
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .cloned()
}

async fn request(ns: &TestNamespace, id: &str, action: &str) {
    patch_canary(
        ns,
        json!({"metadata": {"annotations": {format!("request.canary.dev/{id}"): action}}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_and_every_request_is_its_own_event_and_status_shows_the_latest() {
    let ns = cluster().namespace("events").await;
    set_up(&ns, "web:1").await;
    patch_canary(&ns, quick_steps()).await;
    let (_controller, _) = controller(&ns, None).await;
    follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;

    // Rollout 1: every weight change is an event of its own.
    set_image(&ns, "web:2").await;
    follow_until(&ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    let weights = notes(&ns, "web", "WeightChanged").await;
    for change in ["0% → 20%", "20% → 50%", "50% → 80%"] {
        assert!(
            weights.iter().any(|n| n.contains(change)),
            "{change} in {weights:?}"
        );
    }

    // Rollout 2, held at a pause for approval: its own RolloutStarted message, and no
    // condition of rollout 1 says it was promoted.
    patch_canary(
        &ns,
        json!({"spec": {"steps": [
            {"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"setWeight": 80},
        ]}}),
    )
    .await;
    set_image(&ns, "web:3").await;
    let (paused, _) = follow_until(&ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    let promoted = condition(&paused, "Promoted").expect("a Promoted condition");
    assert_eq!(promoted.status, "False", "{promoted:?}");
    assert_eq!(promoted.reason, "RolloutStarted", "{promoted:?}");
    let started = notes(&ns, "web", "RolloutStarted").await;
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started[0].contains("web:2"), "{started:?}");
    assert!(started[1].contains("web:3"), "{started:?}");

    // An operator's promote is an event naming the request.
    request(&ns, "e2e-promote", "promote").await;
    follow_until(&ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    note_containing(&ns, "web", "PromoteRequested", "e2e-promote").await;
    // A refused one is a Warning saying why.
    request(&ns, "e2e-pause", "pause").await;
    let refused = note_containing(&ns, "web", "RequestRefused", "e2e-pause").await;
    assert!(refused.contains("no rollout is under way"), "{refused}");

    // `canary status` shows the latest events, newest last: rollout 2's, by their last time
    // (a repeated `0% → 20%` counts as of its repeat).
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_canary"))
        .args(["status", "web", "-o", "json", "-n", &ns.name])
        .arg("--kubeconfig")
        .arg(cluster().kubeconfig())
        .output()
        .expect("canary status runs");
    let view: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let shown: Vec<String> = view["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["reason"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    let position = |needle: &str| {
        shown
            .iter()
            .rposition(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {shown:#?}"))
    };
    assert!(
        shown.last().unwrap().starts_with("RequestRefused"),
        "{shown:#?}"
    );
    assert!(position("Promoted promoted") > position("RolloutStarted rolling out"));
    assert!(
        shown[position("RolloutStarted rolling out")].contains("web:3"),
        "{shown:#?}"
    );
    assert!(
        position("0% → 20%") > position("RolloutStarted rolling out"),
        "the repeat of 0% → 20% is rollout 2's: {shown:#?}"
    );

    // A missing template is said while nothing rolls out, and cleared once it exists.
    let api: Api<Canary> = ns.api();
    patch_canary(
        &ns,
        json!({"spec": {"steps": [
            {"setWeight": 20},
            {"analysis": {"templates": [{"templateName": "created-later"}]}},
        ]}}),
    )
    .await;
    let canary = wait_for(
        &api,
        "web",
        "Ready=False naming the template",
        Duration::from_secs(15),
        |c| condition(c, "Ready").is_some_and(|r| r.status == "False"),
    )
    .await;
    let ready = condition(&canary, "Ready").unwrap();
    assert_eq!(ready.reason, "InvalidSpec", "{ready:?}");
    assert!(
        ready.message.contains("created-later") && ready.message.contains("step"),
        "{ready:?}"
    );
    assert_eq!(canary.status.as_ref().unwrap().phase, Phase::Promoted);
    // The event follows the status write that says it.
    note_containing(&ns, "web", "InvalidSpec", "created-later").await;
    create_success_rate_template(&ns, "created-later", Some(3)).await;
    wait_for(
        &api,
        "web",
        "Ready=True once the template exists",
        Duration::from_secs(15),
        |c| condition(c, "Ready").is_some_and(|r| r.status == "True"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_name_typo_is_said_in_status_and_the_log_has_decisions_once_without_colour() {
    let ns = cluster().namespace("events-log").await;
    set_up(&ns, "web:1").await;
    patch_canary(&ns, quick_steps()).await;
    let log = std::env::temp_dir().join(format!("canary-controller-{}.log", ns.name));
    let _ = std::fs::remove_file(&log);
    let (mut controller, port) = controller(&ns, Some(&log)).await;
    follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    set_image(&ns, "web:2").await;
    follow_until(&ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;

    // A second service whose Canary names a route its VirtualService does not have.
    rollout::service(&ns, "shop", 1).await;
    create::<Canary>(
        &ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "shop"},
            "spec": {
                "targetRef": {"name": "shop"},
                "service": {"port": 8080},
                "trafficRouting": {"istio": {
                    "virtualService": {"name": "shop", "routes": ["primari"]},
                    "destinationRule": {"name": "shop"},
                }},
                "steps": [{"setWeight": 50}],
            },
        }),
    )
    .await;
    let api: Api<Canary> = ns.api();
    let canary = wait_for(
        &api,
        "shop",
        "Ready=False naming the route",
        Duration::from_secs(30),
        |c| condition(c, "Ready").is_some_and(|r| r.status == "False"),
    )
    .await;
    let ready = condition(&canary, "Ready").unwrap();
    assert_eq!(ready.reason, "CannotApply", "{ready:?}");
    assert!(
        ready.message.contains("primari") && ready.message.contains("its HTTP routes: primary"),
        "{ready:?}"
    );
    assert_eq!(
        canary.status.as_ref().unwrap().message.as_deref(),
        Some(ready.message.as_str()),
        "the phase ({:?}) comes with the reason it is stuck",
        canary.status.as_ref().unwrap().phase
    );
    // Retried meanwhile (every 2 s), said once.
    let errors = || async {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (_, body) =
            tokio::task::spawn_blocking(move || prometheus::http_get(address, "/metrics"))
                .await
                .ok()?
                .ok()?;
        body.lines()
            .find(|l| l.starts_with("canary_reconcile_errors_total") && l.contains("name=\"shop\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    eventually(
        "four failed reconciles of shop",
        Duration::from_secs(30),
        || async { errors().await.filter(|n| *n >= 4.0) },
    )
    .await;
    assert_eq!(notes(&ns, "shop", "CannotApply").await.len(), 1);
    // Fixed: Ready again.
    api.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"trafficRouting": {"istio": {"virtualService": {"routes": ["primary"]}}}}})),
    )
    .await
    .unwrap();
    wait_for(
        &api,
        "shop",
        "Ready=True once the route name is fixed",
        Duration::from_secs(30),
        |c| condition(c, "Ready").is_some_and(|r| r.status == "True"),
    )
    .await;

    rollout::terminate(&mut controller, Duration::from_secs(20), "the controller").await;
    let text = std::fs::read_to_string(&log).expect("the controller's log");
    eprintln!("controller log:\n{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes in a file");
    // (A start on a port another process took first is retried: the last start is ours.)
    let started = text
        .lines()
        .rfind(|l| l.contains("canary controller"))
        .unwrap_or_default();
    assert!(
        started.contains("started")
            && started.contains(env!("CARGO_PKG_VERSION"))
            && started.contains(&ns.name)
            && started.contains("leader_election=off")
            && started.contains(&format!("127.0.0.1:{port}")),
        "{started}"
    );
    for decision in ["RolloutStarted", "WeightChanged", "Promoted"] {
        assert!(text.contains(decision), "{decision} logged");
    }
    assert!(
        !text.contains(" planned"),
        "nothing per reconcile at the default level"
    );
    let typo_lines = text.lines().filter(|l| l.contains("primari")).count();
    assert!(
        (1..=2).contains(&typo_lines),
        "the route problem is logged once (its event, and the retry's first failure), not at every retry: {typo_lines} lines"
    );
}
