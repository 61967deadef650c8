//! Blue-green on the one state machine: the preview comes up, the gate holds it, the switch
//! waits for every pod the service needs, the previous revision stays at full size until the
//! rollout is over, and an abort switches back at once.

use std::collections::BTreeMap;

use super::tests::{ready, t};
use super::*;
use crate::api::canary::{CanarySpec, Phase, Request, RequestAction};
use crate::routing::{Capabilities, Granularity};

const SWITCH: Capabilities = Capabilities {
    granularity: Granularity::Switch,
    header_routes: false,
};

fn blue_green(extra: serde_json::Value) -> CanarySpec {
    let mut blue_green = serde_json::json!({
        "activeService": "api-active",
        "previewService": "api-preview",
        "autoPromotionEnabled": false,
        "previewReplicaCount": 2,
    });
    blue_green
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(serde_json::json!({
        "targetRef": {"name": "api"},
        "service": {"port": 3000},
        "scaleDownDelaySeconds": 30,
        "strategy": {"blueGreen": blue_green},
    }))
    .unwrap()
}

fn observed(stable: WorkloadState, canary: Option<WorkloadState>, route: u8) -> Observed {
    Observed {
        generation: Some(1),
        target: Some(Ok(TargetState {
            revision: "r2".into(),
            replicas: 0,
            images: "api=api:2".into(),
        })),
        stable: Some(stable),
        canary,
        requests: Vec::new(),
        analysis: Ok(BTreeMap::new()),
        measurements: Vec::new(),
        route_weight: Some(route),
        router: SWITCH,
        autoscaler: None,
        derived_autoscaler: None,
        canary_uid: String::new(),
    }
}

fn idle() -> CanaryStatus {
    CanaryStatus {
        phase: Phase::Idle,
        stable_revision: Some("r1".into()),
        desired_replicas: Some(4),
        ..Default::default()
    }
}

fn promote() -> Vec<Result<Request, String>> {
    vec![Ok(Request {
        action: RequestAction::Promote,
        id: "p".into(),
        step: None,
    })]
}

fn weights(plan: &Plan) -> Vec<u8> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::SetWeight { weight } => Some(*weight),
            _ => None,
        })
        .collect()
}

fn canary_size(plan: &Plan) -> Option<i32> {
    plan.actions.iter().find_map(|a| match a {
        Action::EnsureCanary { replicas, .. } | Action::ScaleCanary { replicas } => Some(*replicas),
        _ => None,
    })
}

#[test]
fn blue_green_is_steps_of_the_one_state_machine() {
    use crate::api::Duration;
    let gate = blue_green(serde_json::json!({
        "prePromotionAnalysis": {"templates": [{"templateName": "success-rate"}]},
        "postPromotionAnalysis": {"templates": [{"templateName": "success-rate"}]},
    }));
    let steps = gate.rollout_steps();
    let kinds: Vec<&str> = steps
        .iter()
        .map(|s| match s {
            RolloutStep::Analysis(_) => "analysis",
            RolloutStep::Pause(None) => "gate",
            RolloutStep::Pause(Some(_)) => "hold",
            RolloutStep::SetWeight(100) => "switch",
            RolloutStep::SetWeight(0) => "preview",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["preview", "analysis", "gate", "switch", "analysis", "hold"]
    );
    assert_eq!(steps[5], RolloutStep::Pause(Some(Duration::from_secs(30))));
    assert_eq!(gate.template_refs().len(), 2);
    let auto =
        blue_green(serde_json::json!({"autoPromotionEnabled": true, "autoPromotionSeconds": 60}));
    assert_eq!(
        auto.rollout_steps()[1..3],
        [
            RolloutStep::Pause(Some(Duration::from_secs(60))),
            RolloutStep::SetWeight(100)
        ]
    );
    let mut at_once = blue_green(serde_json::json!({"autoPromotionEnabled": true}));
    at_once.scale_down_delay_seconds = Some(0);
    assert_eq!(
        at_once.rollout_steps(),
        [RolloutStep::SetWeight(0), RolloutStep::SetWeight(100)]
    );
}

#[test]
fn the_preview_comes_up_the_gate_holds_and_the_switch_waits_for_every_pod() {
    let s = blue_green(serde_json::json!({}));
    // A new revision: the preview at its own size, no traffic.
    let start = plan(&s, &idle(), &observed(ready("r1", 4), None, 0), t(0));
    assert_eq!(start.status.phase, Phase::Progressing);
    assert_eq!(canary_size(&start), Some(2));
    assert_eq!(start.status.canary_weight, 0);

    // Ready: held at the approval gate, the preview without production traffic.
    let gate = plan(
        &s,
        &start.status,
        &observed(ready("r1", 4), Some(ready("r2", 2)), 0),
        t(5),
    );
    assert_eq!(gate.status.phase, Phase::Paused);
    assert_eq!(gate.status.canary_weight, 0);

    // Promoted: the preview grows to the service's size first; no switch before.
    let mut seen = observed(ready("r1", 4), Some(ready("r2", 2)), 0);
    seen.requests = promote();
    let growing = plan(&s, &gate.status, &seen, t(10));
    assert_eq!(growing.status.phase, Phase::Progressing);
    assert_eq!(canary_size(&growing), Some(4));
    assert!(
        !weights(&growing).contains(&100),
        "never switched to a preview short of pods: {:?}",
        growing.actions
    );
    let mut short = observed(ready("r1", 4), Some(ready("r2", 4)), 0);
    short.canary.as_mut().unwrap().ready_replicas = 3;
    let still = plan(&s, &growing.status, &short, t(12));
    assert!(!weights(&still).contains(&100), "{:?}", still.actions);
    assert!(
        still
            .status
            .message
            .as_deref()
            .unwrap()
            .contains("waiting for 4 ready pods of api-canary before switching api-active"),
        "{:?}",
        still.status.message
    );

    // Every pod ready: one switch, and the previous revision stays at full size.
    let switched = plan(
        &s,
        &still.status,
        &observed(ready("r1", 4), Some(ready("r2", 4)), 0),
        t(14),
    );
    assert_eq!(weights(&switched), [100]);
    assert_eq!(switched.status.canary_weight, 100);
    assert_eq!(switched.status.phase, Phase::Progressing);
    assert!(
        !switched
            .actions
            .iter()
            .any(|a| matches!(a, Action::EnsureStable { revision, .. } if revision == "r2")),
        "stable keeps r1 during the hold: {:?}",
        switched.actions
    );

    // The hold passes: stable takes r2 while the active Service stays on the canary...
    let after = observed(ready("r1", 4), Some(ready("r2", 4)), 100);
    let promoting = plan(&s, &switched.status, &after, t(14 + 31));
    assert_eq!(promoting.status.phase, Phase::Promoting);
    assert!(promoting.actions.contains(&Action::EnsureStable {
        revision: "r2".into(),
        replicas: 4
    }));
    assert!(!weights(&promoting).contains(&0), "{:?}", promoting.actions);
    // ...and is switched back to stable only once stable runs r2 with every pod ready.
    let done = plan(
        &s,
        &promoting.status,
        &observed(ready("r2", 4), Some(ready("r2", 4)), 100),
        t(60),
    );
    assert_eq!(done.status.phase, Phase::Promoted);
    assert_eq!(weights(&done), [0]);
    assert_eq!(done.status.stable_revision.as_deref(), Some("r2"));
}

/// Auto-promotion: the preview comes up at 2 pods, grows to 4 and gets the traffic.
fn switched_automatically(s: &CanarySpec) -> Plan {
    let start = plan(s, &idle(), &observed(ready("r1", 4), None, 0), t(0));
    let preview = plan(
        s,
        &start.status,
        &observed(ready("r1", 4), Some(ready("r2", 2)), 0),
        t(3),
    );
    assert_eq!(canary_size(&preview), Some(4));
    let switched = plan(
        s,
        &preview.status,
        &observed(ready("r1", 4), Some(ready("r2", 4)), 0),
        t(5),
    );
    assert_eq!(weights(&switched), [100], "{:?}", switched.actions);
    switched
}

#[test]
fn an_abort_after_the_switch_points_the_active_service_back_at_once() {
    let s = blue_green(serde_json::json!({"autoPromotionEnabled": true}));
    let switched = switched_automatically(&s);
    assert_eq!(switched.status.canary_weight, 100);
    let mut seen = observed(ready("r1", 4), Some(ready("r2", 4)), 100);
    seen.requests = vec![Ok(Request {
        action: RequestAction::Abort,
        id: "a".into(),
        step: None,
    })];
    let aborted = plan(&s, &switched.status, &seen, t(10));
    assert_eq!(weights(&aborted), [0], "{:?}", aborted.actions);
    assert_eq!(aborted.status.phase, Phase::RolledBack);
    assert_eq!(aborted.status.failed_revision.as_deref(), Some("r2"));
    // The new revision's pods go only after the scale-down delay.
    assert_eq!(canary_size(&aborted), None);
}

#[test]
fn a_preview_that_loses_its_pods_after_the_switch_gives_the_traffic_back() {
    let s = blue_green(serde_json::json!({"autoPromotionEnabled": true}));
    let switched = switched_automatically(&s);
    let mut crashed = observed(ready("r1", 4), Some(ready("r2", 4)), 100);
    crashed.canary.as_mut().unwrap().ready_replicas = 0;
    let withdrawn = plan(&s, &switched.status, &crashed, t(8));
    assert_eq!(weights(&withdrawn), [0], "{:?}", withdrawn.actions);
}

#[test]
fn autoscaled_the_preview_is_sized_from_stables_current_replicas_which_are_held() {
    let s =
        blue_green(serde_json::json!({"previewReplicaCount": null, "autoPromotionEnabled": true}));
    let autoscaled = |stable: i32, canary: Option<WorkloadState>, route: u8| {
        let mut seen = observed(ready("r1", stable), canary, route);
        seen.autoscaler = Some(Ok(Autoscaler {
            name: "api".into(),
            min_replicas: 2,
            max_replicas: 20,
        }));
        seen.derived_autoscaler = Some(DerivedAutoscaler {
            min_replicas: 2,
            in_sync: true,
        });
        seen
    };
    // The HPA has stable at 7 (the target's 4 is not the service's size any more).
    let start = plan(&s, &idle(), &autoscaled(7, None, 0), t(0));
    assert_eq!(canary_size(&start), Some(7), "{:?}", start.actions);
    // Stable's size is held while the rollout runs: the active Service can switch back to
    // all of it even though it serves nothing after the switch.
    assert!(
        start
            .actions
            .contains(&Action::EnsureAutoscaler { min_replicas: 7 }),
        "{:?}",
        start.actions
    );
    assert!(
        !start
            .actions
            .iter()
            .any(|a| matches!(a, Action::EnsureStable { .. })),
        "stable's replicas are the HPA's: {:?}",
        start.actions
    );
    let switched = plan(
        &s,
        &start.status,
        &autoscaled(7, Some(ready("r2", 7)), 0),
        t(5),
    );
    assert_eq!(weights(&switched), [100], "{:?}", switched.actions);
}
