//! The user's HorizontalPodAutoscaler and the one the controller derives from it (the README's
//! "Autoscaling (HPA)"). The user's HPA scales the target, which the controller keeps at zero
//! replicas, so it is inactive (the HPA controller does not scale a target at zero) and left
//! exactly as written. The controller runs a copy, `<target>-stable`, that scales
//! `<target>-stable` with the user's metrics, behaviour and bounds; only its `minReplicas` is
//! the rollout's to raise. Pure: the controller lists and writes.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::rollout::{Autoscaler, DerivedAutoscaler};

/// Whether `hpa` scales the Deployment `name`.
fn scales_deployment(hpa: &HorizontalPodAutoscaler, name: &str) -> bool {
    hpa.spec.as_ref().is_some_and(|spec| {
        let target = &spec.scale_target_ref;
        target.kind == "Deployment"
            && target.name == name
            && target.api_version.as_deref().is_none_or(|v| v == "apps/v1")
    })
}

fn name_of(hpa: &HorizontalPodAutoscaler) -> &str {
    hpa.metadata.name.as_deref().unwrap_or("")
}

/// The user's HPA of the Deployment `target` among `hpas` (those of the Canary's namespace):
/// the one `reference` (`spec.autoscalerRef.name`) names, or else the one whose
/// `scaleTargetRef` is the target. `None`: the target is not autoscaled. `Err`: the named one
/// cannot be used, or several scale the target; the message names the field and what to do.
pub fn user_autoscaler<'a>(
    hpas: &'a [HorizontalPodAutoscaler],
    target: &str,
    reference: Option<&str>,
) -> Option<Result<&'a HorizontalPodAutoscaler, String>> {
    if let Some(wanted) = reference {
        let Some(hpa) = hpas.iter().find(|h| name_of(h) == wanted) else {
            return Some(Err(format!(
                "spec.autoscalerRef.name: HorizontalPodAutoscaler {wanted} does not exist in the Canary's namespace: create it, or fix or remove spec.autoscalerRef"
            )));
        };
        if !scales_deployment(hpa, target) {
            let scales = hpa
                .spec
                .as_ref()
                .map(|s| format!("{} {}", s.scale_target_ref.kind, s.scale_target_ref.name))
                .unwrap_or_else(|| "nothing".into());
            return Some(Err(format!(
                "spec.autoscalerRef.name: HorizontalPodAutoscaler {wanted} scales {scales}, not the target Deployment {target}: point its scaleTargetRef at {target}, or fix spec.autoscalerRef"
            )));
        }
        return Some(Ok(hpa));
    }
    let found: Vec<&HorizontalPodAutoscaler> = hpas
        .iter()
        .filter(|h| scales_deployment(h, target))
        .collect();
    match found.as_slice() {
        [] => None,
        [one] => Some(Ok(one)),
        several => Some(Err(format!(
            "several HorizontalPodAutoscalers scale Deployment {target} ({}): name the one to follow in spec.autoscalerRef (and delete the others: they fight over its replicas)",
            several
                .iter()
                .map(|h| name_of(h))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The bounds of the user's HPA, for the rollout.
pub fn bounds(hpa: &HorizontalPodAutoscaler) -> Autoscaler {
    let spec = hpa.spec.clone().unwrap_or_default();
    Autoscaler {
        name: name_of(hpa).to_string(),
        min_replicas: spec.min_replicas.unwrap_or(1),
        max_replicas: spec.max_replicas,
    }
}

/// The derived HPA `stable` (the stable Deployment's name): the user's `metrics`, `behavior`
/// and `maxReplicas`, scaling `stable`, with `min_replicas`, owned by the Canary `owner`.
pub fn derived(
    user: &HorizontalPodAutoscaler,
    stable: &str,
    min_replicas: i32,
    owner: OwnerReference,
) -> HorizontalPodAutoscaler {
    let spec = user.spec.clone().unwrap_or_default();
    HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(stable.to_string()),
            namespace: user.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: stable.to_string(),
            },
            min_replicas: Some(min_replicas),
            max_replicas: spec.max_replicas,
            metrics: spec.metrics,
            behavior: spec.behavior,
        }),
        status: None,
    }
}

/// The derived HPA as found (`found`, named `stable`), measured against the user's `user`:
/// its `minReplicas`, and whether it is otherwise what [`derived`] makes. `found` must be the
/// Canary's (the caller checks its owner).
pub fn derived_state(
    found: &HorizontalPodAutoscaler,
    user: Option<&HorizontalPodAutoscaler>,
    stable: &str,
) -> DerivedAutoscaler {
    let spec = found.spec.clone().unwrap_or_default();
    let min_replicas = spec.min_replicas.unwrap_or(1);
    let in_sync = user.is_some_and(|user| {
        // Both as the API server stores them (defaulted alike), so equal means unchanged.
        let wanted = derived(user, stable, min_replicas, OwnerReference::default()).spec;
        serde_json::to_value(&wanted).ok() == serde_json::to_value(&found.spec).ok()
    });
    DerivedAutoscaler {
        min_replicas,
        in_sync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(name: &str, kind: &str, target: &str) -> HorizontalPodAutoscaler {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                "minReplicas": 3,
                "maxReplicas": 20,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_users_autoscaler_is_found_by_its_target_or_by_name_and_a_wrong_one_is_named() {
        let hpas = [
            hpa("order-service-hpa", "Deployment", "order-service"),
            hpa("other", "Deployment", "other-service"),
            hpa("a-statefulset", "StatefulSet", "order-service"),
        ];
        let found = |reference: Option<&str>| {
            user_autoscaler(&hpas, "order-service", reference)
                .map(|r| r.map(|h| name_of(h).to_string()))
        };
        // (spec.autoscalerRef, found, what the problem says)
        let cases: [(Option<&str>, Option<Result<&str, &str>>); 5] = [
            (None, Some(Ok("order-service-hpa"))),
            (Some("order-service-hpa"), Some(Ok("order-service-hpa"))),
            (
                Some("missing"),
                Some(Err(
                    "spec.autoscalerRef.name: HorizontalPodAutoscaler missing does not exist",
                )),
            ),
            (
                Some("other"),
                Some(Err(
                    "scales Deployment other-service, not the target Deployment order-service",
                )),
            ),
            (
                Some("a-statefulset"),
                Some(Err("scales StatefulSet order-service, not the target")),
            ),
        ];
        for (reference, expected) in cases {
            match (found(reference), expected) {
                (Some(Ok(name)), Some(Ok(wanted))) => assert_eq!(name, wanted, "{reference:?}"),
                (Some(Err(problem)), Some(Err(says))) => {
                    assert!(problem.contains(says), "{reference:?}: {problem}")
                }
                (got, _) => panic!("{reference:?}: {got:?} instead of {expected:?}"),
            }
        }
        assert!(user_autoscaler(&hpas, "nothing-scales-me", None).is_none());
        let two = [
            hpa("a", "Deployment", "order-service"),
            hpa("b", "Deployment", "order-service"),
        ];
        let problem = user_autoscaler(&two, "order-service", None)
            .unwrap()
            .unwrap_err();
        assert!(
            problem.contains("(a, b)") && problem.contains("spec.autoscalerRef"),
            "{problem}"
        );
    }

    #[test]
    fn the_derived_autoscaler_scales_stable_with_the_users_metrics_and_only_its_min_differs() {
        let user = hpa("order-service-hpa", "Deployment", "order-service");
        let owner = OwnerReference {
            api_version: "canary.dev/v1alpha1".into(),
            kind: "Canary".into(),
            name: "order-service".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let made = derived(&user, "order-service-stable", 10, owner);
        let spec = made.spec.as_ref().unwrap();
        let user_spec = user.spec.as_ref().unwrap();
        assert_eq!(spec.scale_target_ref.name, "order-service-stable");
        assert_eq!(spec.min_replicas, Some(10));
        assert_eq!(spec.max_replicas, 20);
        assert_eq!(spec.metrics, user_spec.metrics);
        assert_eq!(spec.behavior, user_spec.behavior);
        assert_eq!(
            made.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        assert_eq!(
            bounds(&user),
            Autoscaler {
                name: "order-service-hpa".into(),
                min_replicas: 3,
                max_replicas: 20
            }
        );

        let state = derived_state(&made, Some(&user), "order-service-stable");
        assert_eq!((state.min_replicas, state.in_sync), (10, true));
        // The user changed their HPA: the derived one is out of date.
        let mut changed = user.clone();
        changed.spec.as_mut().unwrap().max_replicas = 30;
        assert!(!derived_state(&made, Some(&changed), "order-service-stable").in_sync);
        let mut hand_edited = made.clone();
        hand_edited.spec.as_mut().unwrap().metrics = None;
        assert!(!derived_state(&hand_edited, Some(&user), "order-service-stable").in_sync);
        assert!(!derived_state(&made, None, "order-service-stable").in_sync);
    }
}
