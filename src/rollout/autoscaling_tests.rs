//! How the rollout plans for a target with a HorizontalPodAutoscaler: stable's replicas are the
//! derived HPA's (never written by the controller), the canary follows stable's current size,
//! and the derived HPA holds stable's size while a rollout is under way.

use std::collections::BTreeMap;

use super::tests::{ready, t};
use super::*;
use crate::api::canary::{CanarySpec, Phase};
use crate::routing::{Capabilities, Granularity};

const REPLICAS: Capabilities = Capabilities {
    granularity: Granularity::Replicas,
    header_routes: false,
};

const MESH: Capabilities = Capabilities {
    granularity: Granularity::Exact,
    header_routes: true,
};

/// The seed's order-service: steps 10% → 50%, with an approval gate at 50%.
fn spec(router: Capabilities, extra: serde_json::Value) -> CanarySpec {
    let mut spec = serde_json::json!({
        "targetRef": {"name": "order-service"},
        "service": {"port": 8080},
        "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}],
    });
    if router.granularity == Granularity::Exact {
        spec["trafficRouting"] = serde_json::json!({"istio": {
            "virtualService": {"name": "order-service"},
            "destinationRule": {"name": "order-service"},
        }});
    }
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(spec).unwrap()
}

/// The seed's HPA: min 3, max 20.
fn hpa() -> Autoscaler {
    Autoscaler {
        name: "order-service-hpa".into(),
        min_replicas: 3,
        max_replicas: 20,
    }
}

/// Target on `target_revision` (kept at 0), stable on r1 with `stable` pods, the canary on r2
/// with `canary` pods, autoscaled by the seed's HPA whose derived copy has `derived_min`.
fn observed(
    router: Capabilities,
    target_revision: &str,
    stable: Option<i32>,
    canary: Option<i32>,
    derived_min: Option<i32>,
) -> Observed {
    Observed {
        generation: Some(1),
        target: Some(Ok(TargetState {
            revision: target_revision.into(),
            replicas: 0,
            images: "app=order-service:2".into(),
        })),
        stable: stable.map(|n| ready("r1", n)),
        canary: canary.map(|n| ready("r2", n)),
        requests: Vec::new(),
        analysis: Ok(BTreeMap::new()),
        measurements: Vec::new(),
        route_weight: None,
        router,
        autoscaler: Some(Ok(hpa())),
        derived_autoscaler: derived_min.map(|min_replicas| DerivedAutoscaler {
            min_replicas,
            in_sync: true,
        }),
        canary_uid: String::new(),
    }
}

fn idle(desired: i32) -> CanaryStatus {
    CanaryStatus {
        phase: Phase::Idle,
        stable_revision: Some("r1".into()),
        desired_replicas: Some(desired),
        ..Default::default()
    }
}

/// Rolling out r2 at the gate after `weight`, stable's size held at `held`.
fn paused_at(weight: u8, held: i32) -> CanaryStatus {
    let step = if weight == 10 { 1 } else { 3 };
    CanaryStatus {
        phase: Phase::Paused,
        pause_reason: Some(PauseReason::Step),
        canary_revision: Some("r2".into()),
        current_step_index: Some(step),
        canary_weight: weight,
        held_stable_replicas: Some(held),
        step_started_at: Some(t(0).to_string()),
        canary_updated_at: Some(t(0).to_string()),
        rollout_started_at: Some(t(0).to_string()),
        ..idle(held)
    }
}

fn canary_size(plan: &Plan) -> Option<i32> {
    plan.actions.iter().find_map(|a| match a {
        Action::EnsureCanary { replicas, .. } | Action::ScaleCanary { replicas } => Some(*replicas),
        _ => None,
    })
}

fn derived_min(plan: &Plan) -> Option<i32> {
    plan.actions.iter().find_map(|a| match a {
        Action::EnsureAutoscaler { min_replicas } => Some(*min_replicas),
        _ => None,
    })
}

fn writes_stable_replicas(plan: &Plan) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::EnsureStable { .. }))
}

#[test]
fn split_by_replicas_beside_an_autoscaled_stable_the_canary_makes_its_share_of_both() {
    // (stable's current pods, weight, canary pods, the canary's share of both in %)
    let cases = [
        (10, 0, 0, 0),
        (10, 10, 1, 9),
        (10, 25, 3, 23),
        (10, 50, 10, 50),
        (10, 90, 90, 90),
        (10, 100, 10, 50),
        (3, 10, 1, 25),
        (15, 10, 2, 12),
        (20, 10, 2, 9),
        (20, 50, 20, 50),
        (1, 1, 1, 50),
        (0, 10, 1, 50),
    ];
    for (stable, weight, canary, share) in cases {
        assert_eq!(
            canary_replicas_beside(stable, weight),
            canary,
            "{stable} stable pods at {weight}%"
        );
        assert_eq!(
            pod_share(canary, stable.max(1)),
            Some(share),
            "{stable} + {canary}"
        );
    }
}

#[test]
fn the_canary_follows_stables_current_replicas_as_the_hpa_scales_it() {
    // (router, weight of the gate, stable's current pods, canary pods wanted)
    let cases = [
        (REPLICAS, 10, 10, 1),
        (REPLICAS, 10, 15, 2),
        (REPLICAS, 10, 20, 2),
        (REPLICAS, 50, 10, 10),
        (REPLICAS, 50, 14, 14),
        (MESH, 10, 10, 1),
        (MESH, 10, 20, 2),
        (MESH, 10, 21, 3),
        (MESH, 50, 14, 7),
    ];
    for (router, weight, stable, wanted) in cases {
        // The canary still has the size it had when stable had 10 pods.
        let before = canary_replicas_beside(10, weight);
        let before = if router == MESH {
            canary_replicas(10, weight)
        } else {
            before
        };
        let status = paused_at(weight, 10);
        let seen = observed(router, "r2", Some(stable), Some(before), Some(10));
        let p = plan(&spec(router, serde_json::json!({})), &status, &seen, t(5));
        let case = format!(
            "{router:?} at {weight}% with stable at {stable}: {:?}",
            p.actions
        );
        assert_eq!(p.status.phase, Phase::Paused, "{case}");
        assert_eq!(p.status.desired_replicas, Some(stable), "{case}");
        let resized = canary_size(&p);
        if wanted == before {
            assert_eq!(resized, None, "already sized: {case}");
        } else {
            assert_eq!(resized, Some(wanted), "{case}");
        }
        assert!(!writes_stable_replicas(&p), "{case}");
        assert!(
            !p.actions
                .iter()
                .any(|a| matches!(a, Action::EnsureStableAutoscaled { .. })),
            "stable runs its revision: nothing to write: {case}"
        );
        assert!(
            !p.events.iter().any(|e| e.reason == "WeightDrift"),
            "stable scaled by its HPA is no drift: {case}"
        );
    }
}

#[test]
fn no_replicas_of_stable_are_written_while_an_hpa_scales_it() {
    let s = spec(REPLICAS, serde_json::json!({}));
    // (what, status, observed)
    let mut first = observed(REPLICAS, "r1", None, None, None);
    first.target = Some(Ok(TargetState {
        revision: "r1".into(),
        replicas: 10,
        images: "app=order-service:1".into(),
    }));
    let promoting = CanaryStatus {
        phase: Phase::Promoting,
        current_step_index: None,
        ..paused_at(50, 10)
    };
    let rolling_back = CanaryStatus {
        phase: Phase::RollingBack,
        rollback_reason: Some(RollbackReason::Aborted),
        ..paused_at(10, 10)
    };
    let cases = [
        ("initializing", CanaryStatus::default(), first),
        (
            "idle",
            idle(10),
            observed(REPLICAS, "r1", Some(12), None, Some(3)),
        ),
        (
            "a rollout starts",
            idle(10),
            observed(REPLICAS, "r2", Some(12), None, Some(3)),
        ),
        (
            "paused",
            paused_at(10, 10),
            observed(REPLICAS, "r2", Some(12), Some(1), Some(10)),
        ),
        (
            "promoting",
            promoting,
            observed(REPLICAS, "r2", Some(12), Some(12), Some(10)),
        ),
        (
            "rolling back",
            rolling_back,
            observed(REPLICAS, "r2", Some(12), Some(1), Some(10)),
        ),
    ];
    for (what, status, seen) in cases {
        let p = plan(&s, &status, &seen, t(5));
        assert!(!writes_stable_replicas(&p), "{what}: {:?}", p.actions);
        if let Some(Action::EnsureStableAutoscaled { replicas, .. }) = p
            .actions
            .iter()
            .find(|a| matches!(a, Action::EnsureStableAutoscaled { .. }))
        {
            // Used only to create stable: the target's size, or stable's own.
            let expected = if seen.stable.is_none() { 10 } else { 12 };
            assert_eq!(*replicas, expected, "{what}");
        }
    }
    // The HPA went: the derived one is deleted before the controller sizes stable again,
    // at the size the HPA left it.
    let mut gone = observed(REPLICAS, "r1", Some(12), None, Some(3));
    gone.autoscaler = None;
    let p = plan(&s, &idle(12), &gone, t(5));
    let position = |wanted: &Action| p.actions.iter().position(|a| a == wanted);
    let deleted = position(&Action::DeleteAutoscaler);
    let sized = position(&Action::EnsureStable {
        revision: "r1".into(),
        replicas: 12,
    });
    assert!(
        deleted.is_some() && sized.is_some() && deleted < sized,
        "{:?}",
        p.actions
    );
    gone.derived_autoscaler = None;
    let p = plan(&s, &idle(12), &gone, t(6));
    assert!(!p.actions.contains(&Action::DeleteAutoscaler));
}

#[test]
fn the_derived_hpa_holds_stables_size_while_a_rollout_is_under_way() {
    let s = spec(MESH, serde_json::json!({}));
    let user = hpa();
    assert_eq!(autoscaler_min_replicas(&user, None), 3);
    assert_eq!(autoscaler_min_replicas(&user, Some(10)), 10);
    assert_eq!(
        autoscaler_min_replicas(&user, Some(2)),
        3,
        "never below the user's min"
    );
    assert_eq!(
        autoscaler_min_replicas(&user, Some(25)),
        20,
        "never above the user's max"
    );

    // (what, status, stable's pods, the derived HPA's min now, min wanted (None: no write),
    //  held after)
    let promoted = CanaryStatus {
        phase: Phase::Promoted,
        held_stable_replicas: Some(10),
        ..idle(10)
    };
    let cases = [
        ("idle, in place", idle(10), 10, Some(3), None, None),
        ("idle, created", idle(10), 10, None, Some(3), None),
        (
            "a rollout starts: stable's size is held",
            idle(10),
            10,
            Some(3),
            Some(10),
            Some(10),
        ),
        (
            "stable scaled up meanwhile: the start size stays held",
            paused_at(10, 10),
            14,
            Some(10),
            None,
            Some(10),
        ),
        (
            "promoted: the user's min again",
            promoted,
            14,
            Some(10),
            Some(3),
            None,
        ),
    ];
    for (what, status, stable, current, wanted, held) in cases {
        let target = if what.starts_with("a rollout") {
            "r2"
        } else {
            "r1"
        };
        let target = if what.starts_with("stable scaled") {
            "r2"
        } else {
            target
        };
        let canary = (target == "r2").then(|| canary_replicas(stable, 10));
        let seen = observed(MESH, target, Some(stable), canary, current);
        let p = plan(&s, &status, &seen, t(5));
        assert_eq!(derived_min(&p), wanted, "{what}: {:?}", p.actions);
        assert_eq!(p.status.held_stable_replicas, held, "{what}");
    }
    // A derived HPA whose metrics or bounds differ from the user's is applied again.
    let mut stale = observed(MESH, "r1", Some(10), None, Some(3));
    stale.derived_autoscaler = Some(DerivedAutoscaler {
        min_replicas: 3,
        in_sync: false,
    });
    assert_eq!(derived_min(&plan(&s, &idle(10), &stale, t(5))), Some(3));
}

#[test]
fn an_autoscaler_ref_that_cannot_be_used_is_said_and_holds_new_rollouts() {
    let s = spec(
        MESH,
        serde_json::json!({"autoscalerRef": {"name": "missing"}}),
    );
    let problem = "spec.autoscalerRef.name: HorizontalPodAutoscaler missing does not exist in the Canary's namespace: create it, or fix or remove spec.autoscalerRef";
    let mut seen = observed(MESH, "r2", Some(10), None, None);
    seen.autoscaler = Some(Err(problem.into()));
    let p = plan(&s, &idle(10), &seen, t(5));
    assert_eq!(p.status.phase, Phase::Idle, "no rollout starts");
    let ready = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        ("False", "InvalidSpec", problem)
    );
    assert!(p.events.iter().any(|e| e.reason == "InvalidSpec"));
    // Not autoscaled meanwhile: the controller keeps stable at its size.
    assert!(writes_stable_replicas(&p), "{:?}", p.actions);
}
