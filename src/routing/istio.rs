//! Istio: weights of the `stable`/`canary` subset destinations in a VirtualService's HTTP
//! routes, and the DestinationRule subsets that select the two versions' pods.
//!
//! Istio's CRDs declare `spec.http`, `route` and `subsets` as atomic lists, so server-side
//! apply cannot own just a weight: it would take the whole route list from whoever wrote it
//! (the user, GitOps). The controller therefore writes JSON Patches that change only the
//! weights (and subset labels), each guarded by `test` operations on the entries it changes:
//! if someone reorders or edits the routes meanwhile, the patch fails and is recomputed from a
//! fresh read, instead of overwriting their change.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    Capabilities, Granularity, RouterError, RouterWrite, RoutingObject, Snapshot, TrafficRouter,
    Workload,
};
use crate::api::canary::{HeaderRoute, IstioRouting, SUBSET_LABEL};

/// The Istio router of one Canary.
pub struct IstioRouter {
    routing: IstioRouting,
}

impl IstioRouter {
    pub fn new(routing: IstioRouting) -> Self {
        Self { routing }
    }

    fn virtual_service(&self) -> RoutingObject {
        RoutingObject::new(
            "networking.istio.io",
            "v1",
            "VirtualService",
            &self.routing.virtual_service.name,
        )
    }

    fn destination_rule(&self) -> RoutingObject {
        RoutingObject::new(
            "networking.istio.io",
            "v1",
            "DestinationRule",
            &self.routing.destination_rule.name,
        )
    }
}

fn patch_of(object: RoutingObject, patch: Option<Value>) -> Vec<RouterWrite> {
    patch
        .map(|patch| RouterWrite::Patch { object, patch })
        .into_iter()
        .collect()
}

impl From<IstioError> for RouterError {
    fn from(e: IstioError) -> Self {
        RouterError::Unusable(e.to_string())
    }
}

impl TrafficRouter for IstioRouter {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            granularity: Granularity::Exact,
            header_routes: false,
        }
    }

    fn objects(&self) -> Vec<RoutingObject> {
        vec![self.virtual_service(), self.destination_rule()]
    }

    fn current_weight(&self, read: &Snapshot) -> Result<Option<u8>, RouterError> {
        let vs = read.require(&self.virtual_service())?;
        Ok(Some(current_weight(vs, &self.routing)?))
    }

    fn prepare(
        &self,
        read: &Snapshot,
        _workload: &Workload,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        let object = self.destination_rule();
        let rule = read.require(&object)?;
        Ok(patch_of(object, subsets_patch(rule, &self.routing)))
    }

    fn set_weight(&self, read: &Snapshot, weight: u8) -> Result<Vec<RouterWrite>, RouterError> {
        let object = self.virtual_service();
        let vs = read.require(&object)?;
        Ok(patch_of(object, weight_patch(vs, &self.routing, weight)?))
    }

    fn set_header_routes(
        &self,
        _read: &Snapshot,
        routes: &[HeaderRoute],
    ) -> Result<Vec<RouterWrite>, RouterError> {
        if routes.is_empty() {
            return Ok(Vec::new());
        }
        Err(RouterError::Unusable(
            "the Istio router does not serve header routes yet".into(),
        ))
    }

    fn release(
        &self,
        read: &Snapshot,
        target_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        let object = self.destination_rule();
        let Some(rule) = read.get(&object) else {
            return Ok(Vec::new());
        };
        let labels = json!(target_labels);
        Ok(patch_of(
            object,
            subsets_release_patch(rule, &self.routing, &labels),
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IstioError {
    #[error(
        "VirtualService {name} has no HTTP route{which}: add one with destinations for subsets {stable} and {canary}"
    )]
    NoRoute {
        name: String,
        which: String,
        stable: String,
        canary: String,
    },
    #[error(
        "VirtualService {name}, HTTP route {route}: no destination with subset {subset}; add one (weight 0 for the canary) so the controller can set its weight"
    )]
    MissingDestination {
        name: String,
        route: String,
        subset: String,
    },
}

/// The HTTP routes to manage: those named in `virtualService.routes`, or all.
fn managed_routes<'a>(
    virtual_service: &'a Value,
    routing: &IstioRouting,
) -> Result<Vec<(usize, &'a Value)>, IstioError> {
    let name = routing.virtual_service.name.clone();
    let routes: Vec<(usize, &Value)> = virtual_service
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, route)| {
            routing.virtual_service.routes.is_empty()
                || route
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| routing.virtual_service.routes.iter().any(|r| r == n))
        })
        .collect();
    let wanted = &routing.virtual_service.routes;
    let found = |n: &String| {
        routes
            .iter()
            .any(|(_, r)| r.get("name").and_then(Value::as_str) == Some(n))
    };
    if routes.is_empty() || wanted.iter().any(|n| !found(n)) {
        let missing: Vec<&String> = wanted.iter().filter(|n| !found(n)).collect();
        return Err(IstioError::NoRoute {
            name,
            which: if missing.is_empty() {
                String::new()
            } else {
                format!(
                    " named {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            stable: routing.destination_rule.stable_subset_name.clone(),
            canary: routing.destination_rule.canary_subset_name.clone(),
        });
    }
    Ok(routes)
}

fn destination_index(route: &Value, subset: &str) -> Option<usize> {
    route
        .get("route")
        .and_then(Value::as_array)?
        .iter()
        .position(|d| d.pointer("/destination/subset").and_then(Value::as_str) == Some(subset))
}

fn route_label(index: usize, route: &Value) -> String {
    route
        .get("name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("#{index}"), str::to_string)
}

/// Where the canary destination of each managed route is, with its weight.
fn destinations<'a>(
    virtual_service: &'a Value,
    routing: &IstioRouting,
) -> Result<Vec<(usize, usize, usize, &'a Value)>, IstioError> {
    let stable = &routing.destination_rule.stable_subset_name;
    let canary = &routing.destination_rule.canary_subset_name;
    managed_routes(virtual_service, routing)?
        .into_iter()
        .map(|(i, route)| {
            let missing = |subset: &String| IstioError::MissingDestination {
                name: routing.virtual_service.name.clone(),
                route: route_label(i, route),
                subset: subset.clone(),
            };
            let s = destination_index(route, stable).ok_or_else(|| missing(stable))?;
            let c = destination_index(route, canary).ok_or_else(|| missing(canary))?;
            Ok((i, s, c, route))
        })
        .collect()
}

/// The canary weight the VirtualService routes now (of its first managed route), if set.
pub fn current_weight(virtual_service: &Value, routing: &IstioRouting) -> Result<u8, IstioError> {
    let (_, _, canary, route) = destinations(virtual_service, routing)?[0];
    // Istio treats a missing weight as 0 when several destinations are listed.
    let canary_weight = route
        .pointer(&format!("/route/{canary}/weight"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(u8::try_from(canary_weight.min(100)).unwrap_or(100))
}

/// A JSON Patch that gives the canary `weight` percent on every managed route, or `None` when
/// every route already has it.
pub fn weight_patch(
    virtual_service: &Value,
    routing: &IstioRouting,
    weight: u8,
) -> Result<Option<Value>, IstioError> {
    let stable_weight = 100 - u64::from(weight.min(100));
    let canary_weight = u64::from(weight.min(100));
    let mut ops = Vec::new();
    for (i, stable, canary, route) in destinations(virtual_service, routing)? {
        for (d, subset, w) in [
            (
                stable,
                &routing.destination_rule.stable_subset_name,
                stable_weight,
            ),
            (
                canary,
                &routing.destination_rule.canary_subset_name,
                canary_weight,
            ),
        ] {
            if route
                .pointer(&format!("/route/{d}/weight"))
                .and_then(Value::as_u64)
                == Some(w)
            {
                continue;
            }
            ops.push(json!({"op": "test", "path": format!("/spec/http/{i}/route/{d}/destination/subset"), "value": subset}));
            ops.push(json!({"op": "add", "path": format!("/spec/http/{i}/route/{d}/weight"), "value": w}));
        }
    }
    Ok((!ops.is_empty()).then_some(Value::Array(ops)))
}

/// A JSON Patch that makes the DestinationRule's stable and canary subsets select exactly the
/// managed pods (`canary.dev/subset: stable|canary`), adding missing subsets; `None` if they
/// already do.
pub fn subsets_patch(destination_rule: &Value, routing: &IstioRouting) -> Option<Value> {
    subsets_labels_patch(
        destination_rule,
        routing,
        &json!({ SUBSET_LABEL: "stable" }),
        &json!({ SUBSET_LABEL: "canary" }),
    )
}

/// A JSON Patch that makes both subsets select `labels` (the target's own pods), for when the
/// controller lets go of a service: whichever subset a route names still has endpoints.
pub fn subsets_release_patch(
    destination_rule: &Value,
    routing: &IstioRouting,
    labels: &Value,
) -> Option<Value> {
    subsets_labels_patch(destination_rule, routing, labels, labels)
}

fn subsets_labels_patch(
    destination_rule: &Value,
    routing: &IstioRouting,
    stable_labels: &Value,
    canary_labels: &Value,
) -> Option<Value> {
    let subsets: Vec<&Value> = destination_rule
        .pointer("/spec/subsets")
        .and_then(Value::as_array)
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    let mut ops = Vec::new();
    if destination_rule.pointer("/spec/subsets").is_none() {
        ops.push(json!({"op": "add", "path": "/spec/subsets", "value": []}));
    }
    for (name, labels) in [
        (&routing.destination_rule.stable_subset_name, stable_labels),
        (&routing.destination_rule.canary_subset_name, canary_labels),
    ] {
        match subsets
            .iter()
            .position(|s| s.get("name").and_then(Value::as_str) == Some(name))
        {
            Some(i) if subsets[i].get("labels") == Some(labels) => {}
            Some(i) => {
                ops.push(
                    json!({"op": "test", "path": format!("/spec/subsets/{i}/name"), "value": name}),
                );
                ops.push(json!({"op": "add", "path": format!("/spec/subsets/{i}/labels"), "value": labels}));
            }
            None => {
                ops.push(json!({"op": "add", "path": "/spec/subsets/-", "value": {"name": name, "labels": labels}}));
            }
        }
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canary::{DestinationRuleRef, VirtualServiceRef};

    fn routing(routes: &[&str]) -> IstioRouting {
        IstioRouting {
            virtual_service: VirtualServiceRef {
                name: "web".into(),
                routes: routes.iter().map(|r| r.to_string()).collect(),
            },
            destination_rule: DestinationRuleRef {
                name: "web".into(),
                stable_subset_name: "stable".into(),
                canary_subset_name: "canary".into(),
            },
        }
    }

    fn virtual_service() -> Value {
        json!({"spec": {"hosts": ["web"], "http": [
            {"name": "api", "match": [{"uri": {"prefix": "/api"}}], "route": [
                {"destination": {"host": "web", "subset": "canary"}, "weight": 0},
                {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
            ]},
            {"name": "other", "route": [{"destination": {"host": "other"}}]},
        ]}})
    }

    fn apply(document: &Value, patch: &Value) -> Value {
        let mut doc = document.clone();
        let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn weights_change_only_on_the_managed_destinations() {
        let vs = virtual_service();
        let r = routing(&["api"]);
        assert_eq!(current_weight(&vs, &r).unwrap(), 0);
        assert_eq!(
            weight_patch(&vs, &r, 0).unwrap(),
            None,
            "already there: no write"
        );
        let patch = weight_patch(&vs, &r, 25).unwrap().unwrap();
        let after = apply(&vs, &patch);
        assert_eq!(current_weight(&after, &r).unwrap(), 25);
        assert_eq!(
            after.pointer("/spec/http/0/route/1/weight"),
            Some(&json!(75))
        );
        // Everything else is untouched.
        let mut expected = vs.clone();
        expected["spec"]["http"][0]["route"][0]["weight"] = json!(25);
        expected["spec"]["http"][0]["route"][1]["weight"] = json!(75);
        assert_eq!(after, expected);
    }

    #[test]
    fn a_concurrent_reorder_makes_the_patch_fail_instead_of_overwriting() {
        let vs = virtual_service();
        let patch = weight_patch(&vs, &routing(&["api"]), 50).unwrap().unwrap();
        let mut reordered = vs.clone();
        reordered["spec"]["http"][0]["route"]
            .as_array_mut()
            .unwrap()
            .reverse();
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        assert!(json_patch::patch(&mut reordered, &patch).is_err());
    }

    #[test]
    fn missing_routes_and_destinations_are_named() {
        let vs = virtual_service();
        let err = weight_patch(&vs, &routing(&["checkout"]), 10).unwrap_err();
        assert!(
            err.to_string().contains("no HTTP route named checkout"),
            "{err}"
        );
        // Without route names every route is managed, and "other" has no subsets.
        let err = weight_patch(&vs, &routing(&[]), 10).unwrap_err();
        assert!(
            err.to_string()
                .contains("HTTP route other: no destination with subset stable"),
            "{err}"
        );
        let err = current_weight(&json!({"spec": {}}), &routing(&[])).unwrap_err();
        assert!(err.to_string().contains("has no HTTP route"), "{err}");
    }

    #[test]
    fn destination_rule_subsets_select_the_managed_pods() {
        let r = routing(&[]);
        let dr = json!({"spec": {"host": "web", "subsets": [
            {"name": "stable", "labels": {"version": "v1"}},
        ]}});
        let after = apply(&dr, &subsets_patch(&dr, &r).unwrap());
        assert_eq!(
            after["spec"]["subsets"],
            json!([
                {"name": "stable", "labels": {SUBSET_LABEL: "stable"}},
                {"name": "canary", "labels": {SUBSET_LABEL: "canary"}},
            ])
        );
        assert_eq!(subsets_patch(&after, &r), None, "already right: no write");
        let released = apply(
            &after,
            &subsets_release_patch(&after, &r, &json!({"app": "web"})).unwrap(),
        );
        assert!(
            released["spec"]["subsets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["labels"] == json!({"app": "web"}))
        );
        let empty = json!({"spec": {"host": "web"}});
        let after = apply(&empty, &subsets_patch(&empty, &r).unwrap());
        assert_eq!(after["spec"]["subsets"].as_array().unwrap().len(), 2);
    }
}
