//! The Kubernetes side of the two versions: `<target>-stable` and `<target>-canary`
//! Deployments built from the user's Deployment, and what the controller reads back from them.
//!
//! Labels and selectors (the README's "Labels and selectors"): a managed Deployment's selector
//! is the target's selector plus `canary.dev/subset: stable|canary`, and its pods carry the
//! target's template labels plus the same label. So stable and canary never select each other's
//! pods, the user's Service (which selects the target's labels) reaches both, and the mesh tells
//! them apart by subset. The user's Deployment, kept at zero replicas, does not adopt them: its
//! ReplicaSets are owned by it, the managed pods by the managed ReplicaSets.

pub mod autoscaler;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use crate::api::canary::{REVISION_ANNOTATION, SUBSET_LABEL};
use crate::rollout::{TargetState, WorkloadState};

/// The revision a managed pod template runs, from its annotation.
pub fn annotated_revision(template: &PodTemplateSpec) -> Option<&str> {
    template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)
        .map(String::as_str)
}

/// Which of the two managed versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subset {
    Stable,
    Canary,
}

impl Subset {
    pub fn label_value(self) -> &'static str {
        match self {
            Subset::Stable => "stable",
            Subset::Canary => "canary",
        }
    }
}

/// Labels the controller puts on the managed Deployments themselves.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "canary-controller";

/// The revision of a pod template: a short, stable hash of its content. The same template
/// always has the same revision, whoever serialises it.
pub fn template_revision(template: &PodTemplateSpec) -> String {
    // serde_json writes struct fields in declaration order and maps (BTreeMap) sorted, so the
    // text is canonical for a given template.
    let text = serde_json::to_string(template).expect("a pod template serialises");
    format!("{:016x}", fnv1a64(text.as_bytes()))[..10].to_string()
}

/// FNV-1a: tiny, dependency-free and stable across versions and platforms; collisions between
/// two templates of one Deployment are not a practical concern at 40 bits.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the rollout needs to know of the user's Deployment, or why it cannot be used.
pub fn target_state(target: &Deployment) -> Result<TargetState, String> {
    let name = target.metadata.name.as_deref().unwrap_or("?");
    let spec = target
        .spec
        .as_ref()
        .ok_or_else(|| format!("Deployment {name} has no spec"))?;
    let has_selector = spec
        .selector
        .match_labels
        .as_ref()
        .is_some_and(|l| !l.is_empty())
        || spec
            .selector
            .match_expressions
            .as_ref()
            .is_some_and(|e| !e.is_empty());
    if !has_selector {
        return Err(format!(
            "Deployment {name} has an empty selector: give it spec.selector.matchLabels"
        ));
    }
    if spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .is_some_and(|l| l.contains_key(SUBSET_LABEL))
    {
        return Err(format!(
            "Deployment {name}'s pod template already has the label {SUBSET_LABEL}, which the controller sets: remove it"
        ));
    }
    Ok(TargetState {
        revision: template_revision(&spec.template),
        replicas: spec.replicas.unwrap_or(1),
        images: template_images(&spec.template),
    })
}

/// A pod template's images as people read them: `container=image,…`.
pub fn template_images(template: &PodTemplateSpec) -> String {
    template
        .spec
        .as_ref()
        .map(|p| {
            p.containers
                .iter()
                .map(|c| format!("{}={}", c.name, c.image.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The managed Deployment for `subset`, running `template` (of `revision`) with `replicas`,
/// owned by the Canary `owner`.
pub fn managed_deployment(
    target: &Deployment,
    name: &str,
    subset: Subset,
    revision: &str,
    template: &PodTemplateSpec,
    replicas: i32,
    owner: OwnerReference,
) -> Deployment {
    let target_spec = target.spec.clone().unwrap_or_default();
    let subset_label = (SUBSET_LABEL.to_string(), subset.label_value().to_string());

    let mut selector: LabelSelector = target_spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(subset_label.0.clone(), subset_label.1.clone());

    let mut template = template.clone();
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(subset_label.0.clone(), subset_label.1.clone());
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_ANNOTATION.to_string(), revision.to_string());

    let mut labels = target.metadata.labels.clone().unwrap_or_default();
    labels.insert(subset_label.0, subset_label.1);
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());

    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: target.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector,
            template,
            strategy: target_spec.strategy,
            min_ready_seconds: target_spec.min_ready_seconds,
            progress_deadline_seconds: target_spec.progress_deadline_seconds,
            revision_history_limit: target_spec.revision_history_limit,
            paused: None,
        }),
        status: None,
    }
}

/// What the rollout needs to know of a managed Deployment.
pub fn workload_state(deployment: &Deployment) -> WorkloadState {
    let spec = deployment.spec.as_ref();
    let status = deployment.status.clone().unwrap_or_default();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let revision = spec
        .and_then(|s| annotated_revision(&s.template))
        .map(str::to_owned);
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    // Settled: the latest spec was seen and no pod of an older template is left.
    let settled = observed && updated == replicas && total == replicas;
    let stalled = observed
        && status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    WorkloadState {
        revision,
        replicas,
        ready_replicas: status.available_replicas.unwrap_or(0).min(updated),
        settled,
        stalled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn target(image: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
            },
        }))
        .unwrap()
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "canary.dev/v1alpha1".into(),
            kind: "Canary".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn revisions_are_stable_and_change_with_the_template() {
        let a = target("web:1");
        let template = &a.spec.as_ref().unwrap().template;
        let again: PodTemplateSpec =
            serde_json::from_str(&serde_json::to_string(template).unwrap()).unwrap();
        assert_eq!(template_revision(template), template_revision(&again));
        assert_eq!(template_revision(template).len(), 10);
        let b = target("web:2");
        assert_ne!(
            template_revision(template),
            template_revision(&b.spec.unwrap().template)
        );
    }

    #[test]
    fn target_state_reads_revision_replicas_and_images() {
        let state = target_state(&target("web:1")).unwrap();
        assert_eq!(state.replicas, 4);
        assert_eq!(state.images, "app=web:1");
        let mut bad = target("web:1");
        bad.spec.as_mut().unwrap().selector = LabelSelector::default();
        assert!(target_state(&bad).unwrap_err().contains("empty selector"));
        let mut labelled = target("web:1");
        labelled
            .spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(SUBSET_LABEL.into(), "x".into());
        assert!(target_state(&labelled).unwrap_err().contains("remove it"));
    }

    #[test]
    fn managed_deployments_never_select_each_others_pods() {
        let t = target("web:1");
        let template = t.spec.as_ref().unwrap().template.clone();
        let stable = managed_deployment(
            &t,
            "web-stable",
            Subset::Stable,
            "r1",
            &template,
            4,
            owner(),
        );
        let canary = managed_deployment(
            &t,
            "web-canary",
            Subset::Canary,
            "r1",
            &template,
            1,
            owner(),
        );
        let selects = |d: &Deployment, pod_of: &Deployment| {
            let selector = d
                .spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .clone()
                .unwrap();
            let labels = pod_of
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .clone()
                .unwrap();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        assert!(selects(&stable, &stable) && selects(&canary, &canary));
        assert!(!selects(&stable, &canary) && !selects(&canary, &stable));
        // The user's Service selector (the target's labels) reaches both versions.
        assert!(selects(&t, &stable) && selects(&t, &canary));
        let annotations = canary
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap();
        assert_eq!(annotations[REVISION_ANNOTATION], "r1");
        assert_eq!(canary.metadata.owner_references.unwrap()[0].kind, "Canary");
        assert_eq!(canary.spec.unwrap().replicas, Some(1));
    }

    #[test]
    fn workload_state_counts_only_ready_pods_of_the_current_template() {
        let t = target("web:1");
        let template = t.spec.as_ref().unwrap().template.clone();
        let mut d = managed_deployment(
            &t,
            "web-canary",
            Subset::Canary,
            "r2",
            &template,
            2,
            owner(),
        );
        d.metadata.generation = Some(3);
        let cases = [
            // (observedGeneration, replicas, updated, available, settled, ready)
            (3, 2, 2, 2, true, 2),
            (2, 2, 2, 2, false, 2),
            (3, 3, 2, 3, false, 2),
            (3, 2, 1, 2, false, 1),
        ];
        for (generation, total, updated, available, settled, ready) in cases {
            d.status = Some(DeploymentStatus {
                observed_generation: Some(generation),
                replicas: Some(total),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ..Default::default()
            });
            let state = workload_state(&d);
            assert_eq!(state.revision.as_deref(), Some("r2"));
            assert_eq!(
                (state.settled, state.ready_replicas),
                (settled, ready),
                "{generation} {total} {updated} {available}"
            );
        }
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_is_stalled_once_its_spec_was_seen() {
        use k8s_openapi::api::apps::v1::DeploymentCondition;
        let t = target("web:1");
        let template = t.spec.as_ref().unwrap().template.clone();
        let mut d = managed_deployment(
            &t,
            "web-stable",
            Subset::Stable,
            "r2",
            &template,
            4,
            owner(),
        );
        d.metadata.generation = Some(3);
        // (observedGeneration, Progressing status, reason, stalled)
        let cases = [
            (3, "False", "ProgressDeadlineExceeded", true),
            // Before the Deployment controller saw the new spec the condition is stale.
            (2, "False", "ProgressDeadlineExceeded", false),
            (3, "True", "ReplicaSetUpdated", false),
        ];
        for (generation, status, reason, stalled) in cases {
            d.status = Some(DeploymentStatus {
                observed_generation: Some(generation),
                conditions: Some(vec![DeploymentCondition {
                    type_: "Progressing".into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            assert_eq!(
                workload_state(&d).stalled,
                stalled,
                "{generation} {status} {reason}"
            );
        }
    }
}
