//! Faults of the control plane around a running `canary controller`: the API server stopped
//! for 30 s in the middle of a rollout and started again (the controller must act on requests
//! and go on measuring promptly, not at its next watch backoff), and a leader stopped with
//! SIGTERM (its standby must take over at once, not when it next happens to look).
//!
//! Each prints its measured figure; the README's "API-server restarts and leadership" states
//! them over several runs.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::time::{Duration, Instant};

use cluster::{Component, TestNamespace, cluster, eventually, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use rollout::{
    Install, ROLLOUT_TIMEOUT, World, at_weight, canary_weight_in_virtual_service, create,
    follow_until, patch_canary, set_image, set_up, spawn_controller, terminate, world_in,
};
use serde_json::json;

use canary::api::canary::{Canary, Phase, RequestStatus};
use canary::controller::LEASE_NAME;

/// How long the API server stays down: long enough for a client's retry backoff to grow to
/// any cap it has (kube-runtime's default reaches its 30 s cap after about 25 s of errors).
const OUTAGE: Duration = Duration::from_secs(30);

/// The bound on "acted on promptly" after the API server is back: well above the figure
/// measured (about a second), well below a backoff or resync (tens of seconds).
const PROMPT: Duration = Duration::from_secs(10);

/// A rollout held at 20% (a `pause: {}` step waits for a human) with a background analysis
/// measuring the canary every 2 s for as long as it runs.
async fn rollout_under_way(ns: TestNamespace) -> World {
    let world = world_in(ns, Install::ClusterWide).await;
    let template: canary::api::AnalysisTemplate = world.ns.api().get("success-rate").await.unwrap();
    let mut spec = serde_json::to_value(&template.spec).unwrap();
    let metric = &mut spec["metrics"][0];
    // No count: measured until the rollout ends. No data now and then (a scrape that a loaded
    // machine delays) is tolerated, never a failure.
    metric.as_object_mut().unwrap().remove("count");
    metric["inconclusiveLimit"] = json!(50);
    create::<canary::api::AnalysisTemplate>(
        &world.ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "continuous"},
            "spec": spec,
        }),
    )
    .await;
    patch_canary(
        &world.ns,
        json!({"spec": {
            "steps": [{"setWeight": 20}, {"pause": {}}],
            "analysis": {"templates": [{"templateName": "continuous"}]},
        }}),
    )
    .await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    world
}

/// Measurements recorded so far by the background analysis (errors included).
fn measurements(canary: &Canary) -> u32 {
    canary
        .status
        .as_ref()
        .and_then(|status| status.analysis_runs.first())
        .and_then(|run| run.metrics.first())
        .map(|metric| metric.tally.measured + metric.tally.errors)
        .unwrap_or(0)
}

/// Stops the API server for [`OUTAGE`], starts it again and returns when it is ready (its
/// `/readyz` answers ok).
async fn api_server_outage(ns: &TestNamespace) -> Instant {
    ns.stop(Component::ApiServer).await;
    // The outage itself: nothing to wait for but time.
    tokio::time::sleep(OUTAGE).await;
    ns.start(Component::ApiServer).await;
    Instant::now()
}

/// Writes the request annotation, retrying while the API server still refuses requests.
async fn request(ns: &TestNamespace, request: &str) {
    let api: Api<Canary> = ns.api();
    let patch = json!({"metadata": {"annotations": {"canary.dev/request": request}}});
    eventually(
        &format!("writing the request {request}"),
        PROMPT,
        || async {
            api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .ok()
        },
    )
    .await;
}

/// Waits (bounded) until the controller has answered the request `id`.
async fn answer(ns: &TestNamespace, id: &str, timeout: Duration) -> RequestStatus {
    let api: Api<Canary> = ns.api();
    let canary = wait_for(
        &api,
        "web",
        &format!("the answer to request {id}"),
        timeout,
        |c| {
            c.status
                .as_ref()
                .and_then(|s| s.last_request.as_ref())
                .is_some_and(|r| r.id == id)
        },
    )
    .await;
    canary.status.unwrap().last_request.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_written_as_the_api_server_returns_is_acted_on_within_seconds() {
    let world = rollout_under_way(cluster().exclusive_namespace("restart-abort").await).await;
    let ready = api_server_outage(&world.ns).await;
    request(&world.ns, "abort:after-restart").await;
    let answer = answer(&world.ns, "after-restart", PROMPT).await;
    let answered = ready.elapsed();
    assert!(answer.accepted, "{answer:?}");
    eventually("all traffic back on stable", PROMPT, || async {
        (canary_weight_in_virtual_service(&world.ns).await == 0).then_some(())
    })
    .await;
    let on_stable = ready.elapsed();
    eprintln!(
        "API server back after a {}s outage: abort answered after {:.0} ms, 100% stable after {:.0} ms (from readiness)",
        OUTAGE.as_secs(),
        answered.as_secs_f64() * 1000.0,
        on_stable.as_secs_f64() * 1000.0
    );
    assert!(
        on_stable <= PROMPT,
        "acted on {on_stable:?} after the API server was ready"
    );
    follow_until(&world.ns, Phase::RolledBack, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurements_resume_as_soon_as_the_api_server_returns() {
    let world = rollout_under_way(cluster().exclusive_namespace("restart-measure").await).await;
    let api: Api<Canary> = world.ns.api();
    // The analysis is measuring before the outage.
    wait_for(&api, "web", "two measurements", ROLLOUT_TIMEOUT, |c| {
        measurements(c) >= 2
    })
    .await;
    let ready = api_server_outage(&world.ns).await;
    let before = eventually("reading the Canary", PROMPT, || async {
        api.get("web").await.ok()
    })
    .await;
    // Three in a row, at the 2 s interval: one measurement alone could be written before a
    // deaf watch shows the controller its own write, after which it stops planning.
    let resumed = wait_for(
        &api,
        "web",
        "three measurements after the restart",
        PROMPT + Duration::from_secs(5),
        |c| measurements(c) >= measurements(&before) + 3,
    )
    .await;
    eprintln!(
        "API server back after a {}s outage: three measurements recorded {:.1} s after readiness",
        OUTAGE.as_secs(),
        ready.elapsed().as_secs_f64()
    );
    let status = resumed.status.unwrap();
    assert_eq!(status.phase, Phase::Paused, "{status:?}");
    assert_eq!(status.canary_weight, 20);
}

/// The Lease's holder and when it was last renewed.
fn holder_and_renewal(lease: &Lease) -> (String, Option<String>) {
    let spec = lease.spec.clone().unwrap_or_default();
    (
        spec.holder_identity.unwrap_or_default(),
        spec.renew_time.map(|t| t.0.to_string()),
    )
}

/// Two replicas with leader election, run as the deployed ServiceAccount. The leader is
/// stopped with SIGTERM right after it renewed the Lease, the moment a standby that only
/// looks when the Lease it last saw expires is furthest from looking (5 s later, then every
/// 10 s): the standby must hold the Lease within a second or two, and answer a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_at_once_when_the_leader_stops_on_sigterm() {
    let ns = cluster().namespace("takeover").await;
    set_up(&ns, "web:1").await;
    rollout::grant_leader_election(&ns).await;
    let kubeconfig = rollout::controller_kubeconfig()
        .await
        .to_string_lossy()
        .into_owned();
    let args = [
        "--namespace",
        &ns.name,
        "--prometheus",
        "http://127.0.0.1:1",
        "--leader-elect",
    ];
    let env = [
        ("POD_NAMESPACE", ns.name.as_str()),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("CANARY_LOG", "canary=info"),
    ];
    let mut replicas = [
        spawn_controller(&args, &env).await.0,
        spawn_controller(&args, &env).await.0,
    ];
    let leases: Api<Lease> = ns.api();
    let lease = wait_for(
        &leases,
        LEASE_NAME,
        "a leader",
        Duration::from_secs(30),
        |l| !holder_and_renewal(l).0.is_empty(),
    )
    .await;
    let (leader_identity, _) = holder_and_renewal(&lease);
    let leader = replicas
        .iter()
        .position(|r| leader_identity.ends_with(&format!("-{}", r.id().unwrap())))
        .unwrap_or_else(|| panic!("the lease holder {leader_identity} is one of the replicas"));
    follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;

    // The leader renews 5 s before its 15 s Lease expires: wait for one renewal.
    let (_, renewed) = holder_and_renewal(&leases.get(LEASE_NAME).await.unwrap());
    wait_for(
        &leases,
        LEASE_NAME,
        "the leader to renew the Lease",
        Duration::from_secs(20),
        |l| holder_and_renewal(l) != (leader_identity.clone(), renewed.clone()),
    )
    .await;
    // Both still run: with two leaders at once, the one overwritten exits at its renewal.
    for replica in &mut replicas {
        let exited = replica.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "a replica exited ({exited:?}): two replicas led at once"
        );
    }
    let stopped = Instant::now();
    let (_, taken) = tokio::join!(
        terminate(&mut replicas[leader], Duration::from_secs(20), "the leader"),
        async {
            let lease = wait_for(
                &leases,
                LEASE_NAME,
                "the standby to take the Lease",
                Duration::from_secs(30),
                |l| {
                    let (holder, _) = holder_and_renewal(l);
                    !holder.is_empty() && holder != leader_identity
                },
            )
            .await;
            (stopped.elapsed(), holder_and_renewal(&lease).0)
        }
    );
    let (took_lease, new_leader) = taken;
    // The old leader has exited: only the new one can answer.
    request(&ns, "pause:takeover").await;
    let answer = answer(&ns, "takeover", Duration::from_secs(30)).await;
    let answered = stopped.elapsed();
    eprintln!(
        "SIGTERM to the leader: {new_leader} held the Lease after {:.0} ms and answered a request after {:.0} ms",
        took_lease.as_secs_f64() * 1000.0,
        answered.as_secs_f64() * 1000.0
    );
    assert!(!answer.accepted, "nothing to pause while Idle: {answer:?}");
    assert!(
        took_lease < Duration::from_secs(3),
        "the standby took the Lease {took_lease:?} after SIGTERM: it did not see the release"
    );
}

/// Removes the test's taint from every node when dropped, however the test ends.
struct NodesUntainted;

impl Drop for NodesUntainted {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster");
        let _ = std::process::Command::new(script)
            .args([
                "kubectl",
                "taint",
                "nodes",
                "--all",
                &format!("{NO_ROOM}:NoSchedule-"),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A taint that keeps new pods off every node: the canary's pods cannot come back.
const NO_ROOM: &str = "canary.dev/test-no-room";

async fn taint_nodes(client: &kube::Client, taint: bool) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for node in nodes.list(&Default::default()).await.unwrap() {
        let taints = if taint {
            json!([{"key": NO_ROOM, "value": "true", "effect": "NoSchedule"}])
        } else {
            serde_json::Value::Null
        };
        nodes
            .patch(
                &node.metadata.name.unwrap(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": taints}})),
            )
            .await
            .unwrap();
    }
}

/// Issue 12 point 4: the canary's Deployment deleted at 20% and its pods unable to return left
/// 20% of traffic on a subset with no ready pod for 67 s (until the progress deadline), and
/// its analysis step passed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_without_ready_pods_loses_its_traffic_at_once_and_its_analysis_holds() {
    // Tainting every node disturbs every test of this binary.
    let ns = cluster().exclusive_namespace("no-pods").await;
    let world = world_in(ns, Install::ClusterWide).await;
    let ns = &world.ns;
    set_image(ns, "web:2").await;
    at_weight(ns, 20).await;
    let _untainted = NodesUntainted;
    taint_nodes(&ns.client, true).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = ns.api();
    let deleted = Instant::now();
    deployments
        .delete("web-canary", &Default::default())
        .await
        .unwrap();
    eventually("the canary's 20% back on stable", PROMPT, || async {
        (canary_weight_in_virtual_service(ns).await == 0).then_some(())
    })
    .await;
    eprintln!(
        "canary Deployment deleted → its traffic on stable: {} ms",
        deleted.elapsed().as_millis()
    );
    let api: Api<Canary> = ns.api();
    let withdrawn = wait_for(&api, "web", "the weight kept aside", PROMPT, |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.withdrawn_weight == Some(20))
    })
    .await
    .status
    .unwrap();
    assert_eq!(withdrawn.phase, Phase::Progressing, "{withdrawn:?}");
    // The analysis step cannot pass on a subset that serves nothing: it holds at its step
    // while the controller re-creates the canary, whose pods find no room.
    let step = withdrawn.current_step_index;
    let held_until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < held_until {
        let status = api.get("web").await.unwrap().status.unwrap();
        assert_eq!(
            (status.current_step_index, status.canary_weight),
            (step, 0),
            "{:?}",
            status.message
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Room again: the pods become ready, the weight comes back and the rollout goes on.
    taint_nodes(&ns.client, false).await;
    let (canary, timeline) = follow_until(ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!("after the pods returned:\n{}", timeline.join("\n"));
    assert_eq!(canary.status.unwrap().withdrawn_weight, None);
}
