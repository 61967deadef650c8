//! The resource tree of `canary status`, as Argo's `get rollout` shows one: the Deployments of
//! both versions with their ReplicaSets and ready pods, the routing objects, and the steps
//! with where the rollout stands. The CLI reads the objects (read-only, [`fetch`]); building
//! and rendering the tree are pure ([`build`], [`render`]).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use serde::Serialize;

use super::cluster::Connection;
use crate::api::canary::{Canary, Phase, SUBSET_LABEL, step_display};
use crate::routing::{Snapshot, router_for};
use crate::workload::{template_images, template_revision, workload_state};

/// The longest line [`render`] writes, its indent included: a 100-column terminal.
pub const WIDTH: usize = 100;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTree {
    /// The user's Deployment, then `<target>-stable` and `<target>-canary`.
    pub deployments: Vec<DeploymentNode>,
    pub routing: RoutingNode,
    pub steps: Vec<StepNode>,
    /// What could not be read (permissions, API errors); the rest of the tree is still shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// The user's Deployment: the desired pod template, held at zero replicas.
    Target,
    Stable,
    Canary,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentNode {
    pub role: Role,
    pub name: String,
    pub exists: bool,
    /// The revision its pod template runs (the target's: its template's hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub images: String,
    /// `spec.replicas`.
    pub desired: i32,
    /// Ready pods of its current template.
    pub ready: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replica_sets: Vec<ReplicaSetNode>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetNode {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_template_hash: Option<String>,
    pub desired: i32,
    pub ready: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingNode {
    /// `istio`, `gatewayAPI`, or `replicas` (no router: the canary's share of the pods).
    pub router: String,
    pub objects: Vec<RoutingObjectNode>,
    /// The canary's weight as the routing objects hold it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<u8>,
    /// Why the weight could not be read from them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingObjectNode {
    pub kind: String,
    pub name: String,
    pub exists: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StepState {
    Done,
    Current,
    ToCome,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepNode {
    /// `2/4`, counted from 1 as everywhere.
    pub display: String,
    pub description: String,
    pub state: StepState,
}

/// What [`fetch`] read.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub target: Option<Deployment>,
    pub stable: Option<Deployment>,
    pub canary: Option<Deployment>,
    /// ReplicaSets of the managed Deployments (labelled with the subset).
    pub replica_sets: Vec<ReplicaSet>,
    /// The router's objects that exist.
    pub routing: Snapshot,
    pub unreadable: Vec<String>,
}

fn deployment_node(
    role: Role,
    name: String,
    deployment: Option<&Deployment>,
    replica_sets: &[ReplicaSet],
) -> DeploymentNode {
    let Some(deployment) = deployment else {
        return DeploymentNode {
            role,
            name,
            exists: false,
            revision: None,
            images: String::new(),
            desired: 0,
            ready: 0,
            replica_sets: Vec::new(),
        };
    };
    let state = workload_state(deployment);
    let revision = match role {
        Role::Target => deployment
            .spec
            .as_ref()
            .map(|s| template_revision(&s.template)),
        Role::Stable | Role::Canary => state.revision,
    };
    let mut sets: Vec<ReplicaSetNode> = replica_sets
        .iter()
        .filter(|rs| rs.owner_references().iter().any(|o| o.name == name))
        .map(|rs| {
            let status = rs.status.clone().unwrap_or_default();
            ReplicaSetNode {
                name: rs.name_any(),
                pod_template_hash: rs.labels().get("pod-template-hash").cloned(),
                desired: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                ready: status.ready_replicas.unwrap_or(0),
            }
        })
        // Old templates scaled to zero are history, not state.
        .filter(|rs| rs.desired > 0 || rs.ready > 0)
        .collect();
    sets.sort_by(|a, b| a.name.cmp(&b.name));
    DeploymentNode {
        role,
        name,
        exists: true,
        revision,
        images: deployment
            .spec
            .as_ref()
            .map(|s| template_images(&s.template))
            .unwrap_or_default(),
        desired: state.replicas,
        ready: state.ready_replicas,
        replica_sets: sets,
    }
}

/// The tree of `canary` from what was read.
pub fn build(canary: &Canary, fetched: &Fetched) -> ResourceTree {
    let spec = &canary.spec;
    let status = canary.status.clone().unwrap_or_default();
    let deployments = vec![
        deployment_node(
            Role::Target,
            spec.target_ref.name.clone(),
            fetched.target.as_ref(),
            &[],
        ),
        deployment_node(
            Role::Stable,
            spec.stable_name(),
            fetched.stable.as_ref(),
            &fetched.replica_sets,
        ),
        deployment_node(
            Role::Canary,
            spec.canary_name(),
            fetched.canary.as_ref(),
            &fetched.replica_sets,
        ),
    ];
    let router = router_for(spec);
    let objects: Vec<RoutingObjectNode> = router
        .objects()
        .iter()
        .map(|o| RoutingObjectNode {
            kind: o.kind.clone(),
            name: o.name.clone(),
            exists: fetched.routing.get(o).is_some(),
        })
        .collect();
    let (canary_weight, problem) = match router.current_weight(&fetched.routing) {
        Ok(weight) => (weight, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let rollout_steps = spec.rollout_steps();
    let total = rollout_steps.len();
    let steps = rollout_steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let state = match (status.current_step_index, status.phase) {
                (Some(current), _) if i < current => StepState::Done,
                (Some(current), _) if i == current => StepState::Current,
                (None, Phase::Promoting) => StepState::Done,
                _ => StepState::ToCome,
            };
            StepNode {
                display: step_display(i, total),
                description: super::status::describe_step_of(spec, i as usize, step),
                state,
            }
        })
        .collect();
    ResourceTree {
        deployments,
        routing: RoutingNode {
            router: router.name().into(),
            objects,
            canary_weight,
            problem,
        },
        steps,
        unreadable: fetched.unreadable.clone(),
    }
}

/// `text` cut to [`WIDTH`] characters less `indent` (what precedes it on its line), with `…`
/// where it was cut.
fn fit(text: String, indent: usize) -> String {
    let room = WIDTH.saturating_sub(indent);
    if text.chars().count() <= room {
        return text;
    }
    let mut cut: String = text.chars().take(room.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn deployment_line(d: &DeploymentNode) -> String {
    let role = match d.role {
        Role::Target => "target",
        Role::Stable => "stable",
        Role::Canary => "canary",
    };
    if !d.exists {
        let why = match d.role {
            Role::Canary => "none (created when a rollout starts)",
            _ => "missing",
        };
        return format!("Deployment {} ({role}): {why}", d.name);
    }
    let pods = match d.role {
        // The controller holds it at zero: the versions run in the managed Deployments.
        Role::Target if d.desired == 0 => "0 pods (template only)".to_string(),
        _ => format!("{}/{} ready", d.ready, d.desired),
    };
    let revision = d.revision.as_deref().unwrap_or("-");
    format!(
        "Deployment {} ({role})  rev {revision}  {pods}  {}",
        d.name, d.images
    )
    .trim_end()
    .to_string()
}

/// The tree as lines of at most [`WIDTH`] characters, each starting with `indent`.
pub fn render(tree: &ResourceTree, indent: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let pad = indent.chars().count();
    let mut push = |prefix: &str, text: String| {
        let prefix_width = prefix.chars().count();
        lines.push(format!("{indent}{prefix}{}", fit(text, pad + prefix_width)));
    };
    for d in &tree.deployments {
        push("├─ ", deployment_line(d));
        let count = d.replica_sets.len();
        for (i, rs) in d.replica_sets.iter().enumerate() {
            let branch = if i + 1 == count {
                "│  └─ "
            } else {
                "│  ├─ "
            };
            let hash = rs
                .pod_template_hash
                .as_deref()
                .map(|h| format!("  hash {h}"))
                .unwrap_or_default();
            push(
                branch,
                format!(
                    "ReplicaSet {}{hash}  {}/{} ready",
                    rs.name, rs.ready, rs.desired
                ),
            );
        }
    }
    let routing = &tree.routing;
    let holds = match (routing.canary_weight, &routing.problem) {
        (_, Some(problem)) => format!(": {problem}"),
        (Some(weight), None) => format!(": canary {weight}%, stable {}%", 100 - weight.min(100)),
        (None, None) if routing.router == "replicas" => {
            ": no router, the canary's share of the ready pods is its weight".into()
        }
        (None, None) => String::new(),
    };
    push("├─ ", format!("routing {}{holds}", routing.router));
    let count = routing.objects.len();
    for (i, object) in routing.objects.iter().enumerate() {
        let branch = if i + 1 == count {
            "│  └─ "
        } else {
            "│  ├─ "
        };
        let missing = if object.exists { "" } else { ": missing" };
        push(branch, format!("{} {}{missing}", object.kind, object.name));
    }
    push("└─ ", "steps".into());
    for step in &tree.steps {
        let mark = match step.state {
            StepState::Done => "✓",
            StepState::Current => "▶",
            StepState::ToCome => "·",
        };
        push(
            "   ",
            format!("{mark} {} {}", step.display, step.description),
        );
    }
    for what in &tree.unreadable {
        push("", format!("(could not read {what})"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Reads what the tree shows, read-only. What cannot be read is left out and named in
/// [`Fetched::unreadable`]: the status is still worth showing.
pub async fn fetch(connection: &Connection, canary: &Canary) -> Fetched {
    let spec = &canary.spec;
    let client = connection.client.clone();
    let namespace = &connection.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut fetched = Fetched::default();
    for (slot, name) in [
        (&mut fetched.target, spec.target_ref.name.clone()),
        (&mut fetched.stable, spec.stable_name()),
        (&mut fetched.canary, spec.canary_name()),
    ] {
        match deployments.get_opt(&name).await {
            Ok(found) => *slot = found,
            Err(e) => fetched
                .unreadable
                .push(format!("Deployment {name}: {}", short_error(&e))),
        }
    }
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    match replica_sets
        .list(&ListParams::default().labels(SUBSET_LABEL))
        .await
    {
        Ok(list) => fetched.replica_sets = list.items,
        Err(e) => fetched
            .unreadable
            .push(format!("ReplicaSets: {}", short_error(&e))),
    }
    for object in router_for(spec).objects() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &object.api_resource());
        match api.get_opt(&object.name).await {
            Ok(Some(found)) => {
                if let Ok(value) = serde_json::to_value(found) {
                    fetched.routing.insert(object, value);
                }
            }
            Ok(None) => {}
            Err(e) => fetched
                .unreadable
                .push(format!("{object}: {}", short_error(&e))),
        }
    }
    fetched
}

fn short_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.reason, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canary::CanaryStatus;
    use serde_json::json;

    fn canary(routing: serde_json::Value, status: CanaryStatus) -> Canary {
        let mut spec = json!({
            "targetRef": {"name": "web"}, "service": {"port": 8080},
            "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 50}, {"pause": {}}],
        });
        if !routing.is_null() {
            spec["trafficRouting"] = routing;
        }
        let mut canary: Canary = serde_json::from_value(json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap();
        canary.status = Some(status);
        canary
    }

    fn deployment(name: &str, replicas: i32, ready: i32, revision: Option<&str>) -> Deployment {
        let annotations = revision
            .map(|r| json!({"canary.dev/revision": r}))
            .unwrap_or(json!({}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": format!("web:{name}")}]},
                },
            },
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "readyReplicas": ready, "availableReplicas": ready},
        }))
        .unwrap()
    }

    fn replica_set(owner: &str, hash: &str, replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{owner}-{hash}"), "labels": {"pod-template-hash": hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": owner, "uid": "u"}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": replicas, "readyReplicas": replicas},
        }))
        .unwrap()
    }

    fn istio() -> serde_json::Value {
        json!({"istio": {"virtualService": {"name": "web"}, "destinationRule": {"name": "web"}}})
    }

    #[test]
    fn renders_versions_routing_and_steps_with_where_the_rollout_is() {
        let istio_weights = |canary_weight: u8| {
            let mut routing = Snapshot::default();
            routing.insert(
                crate::routing::RoutingObject::new("networking.istio.io", "v1", "VirtualService", "web"),
                json!({"spec": {"http": [{"route": [
                    {"destination": {"host": "web", "subset": "stable"}, "weight": 100 - canary_weight},
                    {"destination": {"host": "web", "subset": "canary"}, "weight": canary_weight},
                ]}]}}),
            );
            routing
        };
        let progressing = CanaryStatus {
            phase: Phase::Progressing,
            current_step_index: Some(1),
            canary_revision: Some("r2".into()),
            stable_revision: Some("r1".into()),
            canary_weight: 20,
            ..Default::default()
        };
        struct Case {
            name: &'static str,
            routing: serde_json::Value,
            status: CanaryStatus,
            fetched: Fetched,
            expected: Vec<&'static str>,
            absent: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "mid-rollout with Istio",
                routing: istio(),
                status: progressing.clone(),
                fetched: Fetched {
                    target: Some(deployment("web", 0, 0, None)),
                    stable: Some(deployment("web-stable", 4, 4, Some("r1"))),
                    canary: Some(deployment("web-canary", 1, 1, Some("r2"))),
                    replica_sets: vec![
                        replica_set("web-stable", "5c9d8", 4),
                        replica_set("web-stable", "old11", 0),
                        replica_set("web-canary", "7b8f9", 1),
                    ],
                    routing: istio_weights(20),
                    unreadable: Vec::new(),
                },
                expected: vec![
                    "├─ Deployment web (target)  rev ",
                    "0 pods (template only)  app=web:web",
                    "├─ Deployment web-stable (stable)  rev r1  4/4 ready  app=web:web-stable",
                    "│  └─ ReplicaSet web-stable-5c9d8  hash 5c9d8  4/4 ready",
                    "├─ Deployment web-canary (canary)  rev r2  1/1 ready  app=web:web-canary",
                    "│  └─ ReplicaSet web-canary-7b8f9  hash 7b8f9  1/1 ready",
                    "├─ routing istio: canary 20%, stable 80%",
                    "│  ├─ VirtualService web\n",
                    "│  └─ DestinationRule web: missing",
                    "└─ steps",
                    "   ✓ 1/4 setWeight 20%",
                    "   ▶ 2/4 pause 1m",
                    "   · 3/4 setWeight 50%",
                    "   · 4/4 pause until promoted",
                ],
                absent: vec!["old11"],
            },
            Case {
                name: "at rest, split by replicas, nothing readable but the Canary",
                routing: serde_json::Value::Null,
                status: CanaryStatus {
                    phase: Phase::Idle,
                    stable_revision: Some("r1".into()),
                    ..Default::default()
                },
                fetched: Fetched {
                    unreadable: vec!["ReplicaSets: Forbidden (403)".into()],
                    ..Default::default()
                },
                expected: vec![
                    "├─ Deployment web (target): missing",
                    "├─ Deployment web-canary (canary): none (created when a rollout starts)",
                    "├─ routing replicas: no router, the canary's share of the ready pods is its weight",
                    "   · 1/4 setWeight 20%",
                    "   · 4/4 pause until promoted",
                    "(could not read ReplicaSets: Forbidden (403))",
                ],
                absent: vec!["✓", "▶"],
            },
            Case {
                name: "promoting: every step done",
                routing: istio(),
                status: CanaryStatus {
                    phase: Phase::Promoting,
                    ..Default::default()
                },
                fetched: Fetched::default(),
                expected: vec![
                    "├─ routing istio: VirtualService web does not exist",
                    "│  ├─ VirtualService web: missing",
                    "   ✓ 4/4 pause until promoted",
                ],
                absent: vec!["·", "▶"],
            },
        ];
        for case in cases {
            let tree = build(&canary(case.routing, case.status), &case.fetched);
            let text = render(&tree, "");
            for part in &case.expected {
                assert!(
                    text.contains(part),
                    "{}: missing {part:?} in\n{text}",
                    case.name
                );
            }
            for part in &case.absent {
                assert!(!text.contains(part), "{}: {part:?} in\n{text}", case.name);
            }
            for line in text.lines() {
                assert!(
                    line.chars().count() <= WIDTH,
                    "{}: too wide: {line}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn long_lines_are_cut_to_the_width_and_the_json_is_structured() {
        let mut stable = deployment("web-stable", 2, 1, Some("r1"));
        stable
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some(format!(
            "registry.example.com/{}:1",
            "very-long-path/".repeat(10)
        ));
        let fetched = Fetched {
            stable: Some(stable),
            ..Default::default()
        };
        let tree = build(&canary(istio(), CanaryStatus::default()), &fetched);
        let text = render(&tree, "    ");
        let line = text.lines().find(|l| l.contains("web-stable")).unwrap();
        assert_eq!(line.chars().count(), WIDTH, "{line}");
        assert!(line.ends_with('…'), "{line}");
        assert!(line.contains("1/2 ready"), "{line}");
        let json = serde_json::to_value(&tree).unwrap();
        assert_eq!(json["deployments"][1]["role"], "stable");
        assert_eq!(json["deployments"][1]["ready"], 1);
        assert_eq!(json["deployments"][2]["exists"], false);
        assert_eq!(json["routing"]["router"], "istio");
        assert_eq!(json["routing"]["objects"][0]["kind"], "VirtualService");
        assert_eq!(json["steps"][0]["state"], "toCome");
        assert_eq!(json["steps"][0]["display"], "1/4");
    }
}
