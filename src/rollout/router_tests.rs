//! How the rollout plans with each router's capabilities: the split by replicas (the pods are
//! the weight) and header routes.

use std::collections::BTreeMap;

use super::tests::{ready, t};
use super::*;
use crate::api::canary::{CanarySpec, Phase, Request, RequestAction};
use crate::routing::{Capabilities, Granularity};

const REPLICAS: Capabilities = Capabilities {
    granularity: Granularity::Replicas,
    header_routes: false,
};

const MESH: Capabilities = Capabilities {
    granularity: Granularity::Exact,
    header_routes: true,
};

/// The seed's mesh-less canary: no trafficRouting.
fn replica_spec() -> CanarySpec {
    serde_json::from_value(serde_json::json!({
        "targetRef": {"name": "order-service"},
        "service": {"port": 8080},
        "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1m"}}],
    }))
    .unwrap()
}

fn observed(router: Capabilities, stable: i32, canary: Option<i32>) -> Observed {
    Observed {
        generation: Some(1),
        target: Some(Ok(TargetState {
            revision: "r2".into(),
            replicas: 0,
            images: "app=order-service:2".into(),
        })),
        stable: Some(ready("r1", stable)),
        canary: canary.map(|n| ready("r2", n)),
        requests: Vec::new(),
        analysis: Ok(BTreeMap::new()),
        measurements: Vec::new(),
        route_weight: None,
        router,
        autoscaler: None,
        derived_autoscaler: None,
        canary_uid: String::new(),
    }
}

/// At rest on r1 with `desired` replicas.
fn idle(desired: i32) -> CanaryStatus {
    CanaryStatus {
        phase: Phase::Idle,
        stable_revision: Some("r1".into()),
        desired_replicas: Some(desired),
        ..Default::default()
    }
}

fn sizes(plan: &Plan) -> (Option<i32>, Option<i32>) {
    let canary = plan.actions.iter().find_map(|a| match a {
        Action::EnsureCanary { replicas, .. } | Action::ScaleCanary { replicas } => Some(*replicas),
        _ => None,
    });
    let stable = plan.actions.iter().find_map(|a| match a {
        Action::EnsureStable { replicas, .. } => Some(*replicas),
        _ => None,
    });
    (canary, stable)
}

#[test]
fn a_weight_is_the_nearest_share_of_the_pods_with_one_of_each_version() {
    // (replicas, weight, canary pods, stable pods)
    let cases = [
        (10, 0, 0, 10),
        (10, 10, 1, 9),
        (10, 14, 1, 9),
        (10, 15, 2, 8),
        (10, 50, 5, 5),
        (10, 95, 9, 1),
        (10, 99, 9, 1),
        (10, 100, 10, 0),
        (10, 1, 1, 9),
        (3, 10, 1, 2),
        (3, 50, 2, 1),
        (2, 50, 1, 1),
        (1, 10, 1, 1),
        (1, 100, 1, 0),
        (0, 10, 1, 1),
    ];
    for (desired, weight, canary, stable) in cases {
        assert_eq!(
            replica_split(desired, weight),
            (canary, stable),
            "{desired} replicas at {weight}%"
        );
    }
    assert_eq!(pod_share(1, 9), Some(10));
    assert_eq!(pod_share(1, 10), Some(9));
    assert_eq!(pod_share(1, 1), Some(50));
    assert_eq!(pod_share(0, 0), None);
}

#[test]
fn split_by_replicas_the_canary_gets_pods_only_with_its_step_and_stable_gives_them_up() {
    let s = replica_spec();
    // A new revision: the canary is created without pods (a ready pod has traffic at once).
    let start = plan(&s, &idle(10), &observed(REPLICAS, 10, None), t(0));
    assert_eq!(start.status.phase, Phase::Progressing);
    assert_eq!(sizes(&start), (Some(1), Some(10)), "{:?}", start.actions);
    // The first step asks for 1 canary pod; stable keeps 10 until it is ready.
    let waiting = plan(&s, &start.status, &observed(REPLICAS, 10, Some(0)), t(1));
    let mut seen = observed(REPLICAS, 10, Some(1));
    seen.canary = Some(WorkloadState {
        ready_replicas: 0,
        ..ready("r2", 1)
    });
    let not_ready = plan(&s, &start.status, &seen, t(2));
    assert_eq!(not_ready.status.canary_weight, 0);
    assert_eq!(
        sizes(&not_ready).0,
        None,
        "the canary has its 1 pod: no write"
    );
    assert!(
        !not_ready
            .actions
            .iter()
            .any(|a| matches!(a, Action::EnsureStable { .. })),
        "stable keeps its 10 pods: {:?}",
        not_ready.actions
    );
    assert_eq!(waiting.status.canary_weight, 0);
    // Ready: 10%, and stable gives up the pod: 1 + 9.
    let stepped = plan(&s, &start.status, &observed(REPLICAS, 10, Some(1)), t(3));
    assert_eq!(stepped.status.canary_weight, 10);
    assert_eq!(sizes(&stepped), (None, Some(9)));
    assert_eq!(
        stepped.status.effective_weight,
        Some(9),
        "1 of 11 ready pods until stable has shrunk"
    );
    let settled = plan(&s, &stepped.status, &observed(REPLICAS, 9, Some(1)), t(4));
    assert_eq!(settled.status.effective_weight, Some(10));
    assert_eq!(settled.status.phase, Phase::Paused);
    assert!(settled.events.is_empty(), "{:?}", settled.events);
}

#[test]
fn split_by_replicas_a_rollback_takes_the_canarys_pods_at_once() {
    let s = replica_spec();
    let mut status = plan(&s, &idle(10), &observed(REPLICAS, 10, None), t(0)).status;
    status = plan(&s, &status, &observed(REPLICAS, 10, Some(1)), t(1)).status;
    assert_eq!(status.canary_weight, 10);
    let mut seen = observed(REPLICAS, 9, Some(1));
    seen.requests = vec![Ok(Request {
        action: RequestAction::Abort,
        id: "1".into(),
        step: None,
    })];
    let aborted = plan(&s, &status, &seen, t(2));
    assert_eq!(aborted.status.canary_weight, 0);
    assert_eq!(
        sizes(&aborted),
        (Some(0), Some(10)),
        "no scale-down delay for pods that are the traffic: {:?}",
        aborted.actions
    );
}

#[test]
fn split_by_replicas_promoted_pods_stay_for_the_scale_down_delay() {
    let s: CanarySpec = serde_json::from_value(serde_json::json!({
        "targetRef": {"name": "order-service"},
        "service": {"port": 8080},
        "steps": [{"setWeight": 50}],
    }))
    .unwrap();
    let mut status = plan(&s, &idle(4), &observed(REPLICAS, 4, None), t(0)).status;
    let promoting = plan(&s, &status, &observed(REPLICAS, 4, Some(2)), t(1));
    assert_eq!(promoting.status.phase, Phase::Promoting);
    assert_eq!(sizes(&promoting), (None, Some(4)));
    status = promoting.status;
    let mut seen = observed(REPLICAS, 4, Some(2));
    seen.stable = Some(ready("r2", 4));
    let promoted = plan(&s, &status, &seen, t(2));
    assert_eq!(promoted.status.phase, Phase::Promoted);
    assert_eq!(
        sizes(&promoted).0,
        None,
        "the canary's pods run the promoted revision: they go after the delay"
    );
    let later = plan(&s, &promoted.status, &seen, t(40));
    assert_eq!(sizes(&later).0, Some(0));
}

#[test]
fn split_by_replicas_a_managed_deployment_scaled_by_hand_is_set_back_and_reported() {
    let s = replica_spec();
    let mut status = plan(&s, &idle(10), &observed(REPLICAS, 10, None), t(0)).status;
    status = plan(&s, &status, &observed(REPLICAS, 10, Some(1)), t(1)).status;
    status = plan(&s, &status, &observed(REPLICAS, 9, Some(1)), t(2)).status;
    assert_eq!(status.phase, Phase::Paused);
    // Someone scales the canary to 5.
    let drifted = plan(&s, &status, &observed(REPLICAS, 9, Some(5)), t(3));
    assert_eq!(
        drifted.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["WeightDrift"]
    );
    assert!(
        drifted.events[0]
            .message
            .contains("order-service-canary has 5 replicas instead of 1")
    );
    assert_eq!(sizes(&drifted), (Some(1), None));
    // And stable to 3.
    let drifted = plan(&s, &status, &observed(REPLICAS, 3, Some(1)), t(3));
    assert!(
        drifted.events[0]
            .message
            .contains("order-service-stable has 3 replicas instead of 9")
    );
    assert_eq!(sizes(&drifted).1, Some(9));
    // The service scaled (the target's replicas) is not drift.
    let mut seen = observed(REPLICAS, 9, Some(1));
    seen.target = Some(Ok(TargetState {
        revision: "r2".into(),
        replicas: 20,
        images: String::new(),
    }));
    let scaled = plan(&s, &status, &seen, t(3));
    assert!(scaled.events.is_empty(), "{:?}", scaled.events);
    assert_eq!(sizes(&scaled), (Some(2), Some(18)));
}

fn header_spec(traffic_routing: bool) -> CanarySpec {
    let mut spec = serde_json::json!({
        "targetRef": {"name": "web"},
        "service": {"port": 8080},
        "steps": [
            {"setHeaderRoute": {"name": "testers", "match": [{"headerName": "canary", "headerValue": {"exact": "true"}}]}},
            {"pause": {}},
            {"setWeight": 20},
            {"setHeaderRoute": {"name": "testers"}},
            {"pause": {}},
        ],
    });
    if traffic_routing {
        spec["trafficRouting"] = serde_json::json!({"istio": {
            "virtualService": {"name": "web"}, "destinationRule": {"name": "web"},
        }});
    }
    serde_json::from_value(spec).unwrap()
}

#[test]
fn a_header_route_is_added_by_its_step_removed_by_another_and_by_the_end_of_the_rollout() {
    let s = header_spec(true);
    let start = plan(&s, &idle(4), &observed(MESH, 4, None), t(0));
    assert!(
        start.status.header_routes.is_empty(),
        "the canary is not ready yet"
    );
    let routed = plan(&s, &start.status, &observed(MESH, 4, Some(1)), t(1));
    assert_eq!(routed.status.header_routes.len(), 1);
    assert_eq!(routed.status.phase, Phase::Paused);
    assert!(routed.actions.contains(&Action::SetHeaderRoutes {
        routes: routed.status.header_routes.clone()
    }));
    assert_eq!(
        routed.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["HeaderRouteSet", "Paused"]
    );
    // Promoted past the pause: 20%, then the route's removal step.
    let mut seen = observed(MESH, 4, Some(1));
    seen.requests = vec![Ok(Request {
        action: RequestAction::Promote,
        id: "1".into(),
        step: None,
    })];
    let removed = plan(&s, &routed.status, &seen, t(2));
    assert_eq!(removed.status.canary_weight, 20);
    assert!(removed.status.header_routes.is_empty());
    assert!(
        removed
            .actions
            .contains(&Action::SetHeaderRoutes { routes: Vec::new() })
    );

    // An abort while the route is in place removes it with the traffic.
    let mut seen = observed(MESH, 4, Some(1));
    seen.requests = vec![Ok(Request {
        action: RequestAction::Abort,
        id: "2".into(),
        step: None,
    })];
    let aborted = plan(&s, &routed.status, &seen, t(3));
    assert!(aborted.status.header_routes.is_empty());
    let first = |wanted: fn(&Action) -> bool| aborted.actions.iter().position(wanted);
    let routes_gone = first(|a| matches!(a, Action::SetHeaderRoutes { .. })).unwrap();
    let canary_down =
        first(|a| matches!(a, Action::ScaleCanary { .. } | Action::EnsureCanary { .. }));
    assert!(
        canary_down.is_none_or(|down| routes_gone < down),
        "{:?}",
        aborted.actions
    );
}

#[test]
fn header_route_steps_without_a_router_that_serves_them_are_an_invalid_spec() {
    let s = header_spec(false);
    let refused = plan(&s, &idle(4), &observed(REPLICAS, 4, None), t(0));
    assert_eq!(refused.status.phase, Phase::Idle);
    assert!(
        refused
            .actions
            .iter()
            .all(|a| !matches!(a, Action::EnsureCanary { .. }))
    );
    let message = refused.status.message.unwrap();
    assert!(
        message.starts_with("steps[0].setHeaderRoute: without spec.trafficRouting"),
        "{message}"
    );
    assert_eq!(
        refused.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["InvalidSpec"]
    );
}
