//! Istio: weights of the `stable`/`canary` subset destinations in a VirtualService's HTTP
//! routes, and the DestinationRule subsets that select the two versions' pods.
//!
//! Istio's CRDs declare `spec.http`, `route` and `subsets` as atomic lists, so server-side
//! apply cannot own just a weight: it would take the whole route list from whoever wrote it
//! (the user, GitOps). The controller therefore writes JSON Patches that change only the
//! weights (and subset labels), each guarded by `test` operations on the entries it changes:
//! if someone reorders or edits the routes meanwhile, the patch fails and is recomputed from a
//! fresh read, instead of overwriting their change.
//!
//! Which routes carry the split: those named in `virtualService.routes`; without names, every
//! HTTP route that has a destination for each of the two subsets. Other routes (a header route
//! of the user's that sends everything to the canary subset, a route to another host) are not
//! the controller's and are left exactly as written, so a VirtualService like the design's
//! seed (an unnamed header route, then an unnamed weighted route) works unchanged.
//!
//! `setHeaderRoute` steps become HTTP routes the controller adds at the top of `spec.http`
//! (first match wins in Istio, so they precede the weighted routes), each named
//! [`HEADER_ROUTE_PREFIX`]`<step's name>` so that it can be found again and removed exactly;
//! no other route is ever added, changed or removed.

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

/// The kinds of this router's objects: `(group, version, kind)`.
pub const KINDS: [(&str, &str, &str); 2] = [
    (GROUP, VERSION, "VirtualService"),
    (GROUP, VERSION, "DestinationRule"),
];
const GROUP: &str = "networking.istio.io";
const VERSION: &str = "v1";

impl IstioRouter {
    pub fn new(routing: IstioRouting) -> Self {
        Self { routing }
    }

    fn virtual_service(&self) -> RoutingObject {
        RoutingObject::new(
            GROUP,
            VERSION,
            "VirtualService",
            &self.routing.virtual_service.name,
        )
    }

    fn destination_rule(&self) -> RoutingObject {
        RoutingObject::new(
            GROUP,
            VERSION,
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
    fn name(&self) -> &'static str {
        "istio"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            granularity: Granularity::Exact,
            header_routes: true,
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
        read: &Snapshot,
        routes: &[HeaderRoute],
    ) -> Result<Vec<RouterWrite>, RouterError> {
        let object = self.virtual_service();
        let Some(vs) = read.get(&object) else {
            // Nothing to remove from a VirtualService that is gone; adding needs it.
            return match routes.iter().any(|r| !r.matches.is_empty()) {
                true => Err(RouterError::Missing(object)),
                false => Ok(Vec::new()),
            };
        };
        Ok(patch_of(
            object,
            header_routes_patch(vs, &self.routing, routes)?,
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
        "VirtualService {name} has no HTTP route{which} ({existing}): fix the name in spec.trafficRouting.istio.virtualService.routes, or add the route with destinations for subsets {stable} and {canary}"
    )]
    NoRoute {
        name: String,
        which: String,
        /// The routes it has, so that a typo shows beside what was meant.
        existing: String,
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
    #[error(
        "VirtualService {name} has no HTTP route with destinations for both subsets {stable} and {canary}: add one (weight 0 for the canary) to carry the split, or name the routes to manage in spec.trafficRouting.istio.virtualService.routes"
    )]
    NoSplitRoute {
        name: String,
        stable: String,
        canary: String,
    },
    #[error(
        "setHeaderRoute {route}: header {header} is matched more than once; an Istio route matches each header once, so keep one match for it"
    )]
    RepeatedHeader { route: String, header: String },
    #[error(
        "setHeaderRoute {route}: the headerValue of {header} has none of exact, prefix or regex; give one"
    )]
    NoHeaderValue { route: String, header: String },
}

/// The HTTP routes to manage: those named in `virtualService.routes` (each must carry both
/// subsets: the user asked for it); without names, every route with a destination for each of
/// the two subsets. A route with one subset or none (the user's own header route to the
/// canary, a route to another service) is not the split's, and is left alone.
fn managed_routes<'a>(
    virtual_service: &'a Value,
    routing: &IstioRouting,
) -> Result<Vec<(usize, &'a Value)>, IstioError> {
    let name = routing.virtual_service.name.clone();
    let stable = &routing.destination_rule.stable_subset_name;
    let canary = &routing.destination_rule.canary_subset_name;
    let all = virtual_service
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate();
    let wanted = &routing.virtual_service.routes;
    if wanted.is_empty() {
        let routes: Vec<(usize, &Value)> = all
            .filter(|(_, route)| {
                destination_index(route, stable).is_some()
                    && destination_index(route, canary).is_some()
            })
            .collect();
        if routes.is_empty() {
            return Err(IstioError::NoSplitRoute {
                name,
                stable: stable.clone(),
                canary: canary.clone(),
            });
        }
        return Ok(routes);
    }
    let routes: Vec<(usize, &Value)> = all
        .filter(|(_, route)| {
            route
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| wanted.iter().any(|r| r == n))
        })
        .collect();
    let found = |n: &String| {
        routes
            .iter()
            .any(|(_, r)| r.get("name").and_then(Value::as_str) == Some(n))
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|n| !found(n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let present: Vec<String> = virtual_service
            .pointer("/spec/http")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, route)| route_label(i, route))
            .collect();
        let existing = match present.is_empty() {
            true => "it has no HTTP routes".to_string(),
            false => format!("its HTTP routes: {}", present.join(", ")),
        };
        return Err(IstioError::NoRoute {
            name,
            which: format!(" named {}", missing.join(", ")),
            existing,
            stable: stable.clone(),
            canary: canary.clone(),
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

/// The prefix of the names of the HTTP routes the controller adds for `setHeaderRoute` steps.
/// Istio's route `name` is free text (it appears in access logs and Envoy's route names), so
/// the step's name is used as it is; a route of the user's must not use this prefix.
pub const HEADER_ROUTE_PREFIX: &str = "canary-header-";

/// The name of the HTTP route of header route `name`.
pub fn header_route_name(name: &str) -> String {
    format!("{HEADER_ROUTE_PREFIX}{name}")
}

/// The HTTP route that sends the requests matching `route` to the canary: one match block
/// (Istio ANDs the headers of a block, as the step's list means), all traffic to the canary
/// destination of the managed route (its host and port, with the canary subset).
fn header_http_route(route: &HeaderRoute, canary: &Value) -> Result<Value, IstioError> {
    let mut headers = serde_json::Map::new();
    for m in &route.matches {
        // Istio requires lower-case header keys; HTTP header names are case-insensitive.
        let header = m.header_name.to_ascii_lowercase();
        let value = &m.header_value;
        let string_match = match (&value.exact, &value.prefix, &value.regex) {
            (Some(v), _, _) => json!({"exact": v}),
            (None, Some(v), _) => json!({"prefix": v}),
            (None, None, Some(v)) => json!({"regex": v}),
            (None, None, None) => {
                return Err(IstioError::NoHeaderValue {
                    route: route.name.clone(),
                    header,
                });
            }
        };
        if headers.insert(header.clone(), string_match).is_some() {
            return Err(IstioError::RepeatedHeader {
                route: route.name.clone(),
                header,
            });
        }
    }
    Ok(json!({
        "name": header_route_name(&route.name),
        "match": [{"headers": headers}],
        "route": [{"destination": canary, "weight": 100}],
    }))
}

/// `test` operations that hold when the HTTP route at `index` is still `route`, its weights
/// aside (the weights may have been set by an earlier write of the same reconcile).
fn route_unchanged(index: usize, route: &Value) -> Vec<Value> {
    let at = format!("/spec/http/{index}");
    let mut ops = Vec::new();
    for (key, value) in route.as_object().into_iter().flatten() {
        if key == "route" {
            continue;
        }
        let key = key.replace('~', "~0").replace('/', "~1");
        ops.push(json!({"op": "test", "path": format!("{at}/{key}"), "value": value}));
    }
    let destinations = route.get("route").and_then(Value::as_array);
    for (d, destination) in destinations.into_iter().flatten().enumerate() {
        if let Some(value) = destination.get("destination") {
            ops.push(json!({"op": "test", "path": format!("{at}/route/{d}/destination"), "value": value}));
        }
    }
    ops
}

/// A JSON Patch that makes the controller's header routes exactly `routes` (a route without
/// matches is not wanted): each changed one replaced, each unwanted one removed, new ones
/// added at the top of `spec.http`; `None` when they already are. Routes not named with
/// [`HEADER_ROUTE_PREFIX`] are never touched. Every change is guarded: the name at each index
/// changed or removed, and the route at the top as read when adding above it, so a concurrent
/// edit makes the patch fail and be recomputed rather than remove or duplicate a route.
pub fn header_routes_patch(
    virtual_service: &Value,
    routing: &IstioRouting,
    routes: &[HeaderRoute],
) -> Result<Option<Value>, IstioError> {
    let http: Vec<&Value> = virtual_service
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .map(|h| h.iter().collect())
        .unwrap_or_default();
    let wanted: Vec<&HeaderRoute> = routes.iter().filter(|r| !r.matches.is_empty()).collect();
    let mut desired = Vec::new();
    if !wanted.is_empty() {
        // The host (and port) the canary is reached at, as the weighted route names it.
        let (i, _, c, _) = destinations(virtual_service, routing)?[0];
        let canary = &http[i]["route"][c]["destination"];
        for route in &wanted {
            desired.push(header_http_route(route, canary)?);
        }
    }
    let ours: Vec<(usize, &str)> = http
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let name = r.get("name").and_then(Value::as_str)?;
            name.starts_with(HEADER_ROUTE_PREFIX).then_some((i, name))
        })
        .collect();
    let mut tests = Vec::new();
    let mut replaces = Vec::new();
    let mut removes = Vec::new();
    let mut seen = Vec::new();
    for &(i, name) in &ours {
        let guard = json!({"op": "test", "path": format!("/spec/http/{i}/name"), "value": name});
        // A second route of the same name (a copy pasted by hand) goes: one route per step.
        let first = !seen.contains(&name);
        seen.push(name);
        match desired.iter().find(|d| first && d["name"] == name) {
            Some(d) if http[i] == d => {}
            Some(d) => {
                tests.push(guard);
                replaces
                    .push(json!({"op": "replace", "path": format!("/spec/http/{i}"), "value": d}));
            }
            None => {
                tests.push(guard);
                removes.push(json!({"op": "remove", "path": format!("/spec/http/{i}")}));
            }
        }
    }
    // Removed from the highest index down, so that each index still means what was read.
    removes.reverse();
    let new: Vec<&Value> = desired
        .iter()
        .filter(|d| !ours.iter().any(|(_, name)| d["name"] == *name))
        .collect();
    let mut adds = Vec::new();
    if !new.is_empty() {
        // There is a top route: the managed route the destination was taken from.
        if let Some(top) = http.first() {
            tests.extend(route_unchanged(0, top));
        }
        // Each added at index 0, the last first: they end up in the steps' order.
        for d in new.into_iter().rev() {
            adds.push(json!({"op": "add", "path": "/spec/http/0", "value": d}));
        }
    }
    let ops: Vec<Value> = tests
        .into_iter()
        .chain(replaces)
        .chain(removes)
        .chain(adds)
        .collect();
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
            err.to_string()
                .contains("no HTTP route named checkout (its HTTP routes: api, other)"),
            "{err}"
        );
        // A route named for management must carry both subsets.
        let err = weight_patch(&vs, &routing(&["other"]), 10).unwrap_err();
        assert!(
            err.to_string()
                .contains("HTTP route other: no destination with subset stable"),
            "{err}"
        );
        let err = current_weight(&json!({"spec": {}}), &routing(&[])).unwrap_err();
        assert!(err.to_string().contains("has no HTTP route"), "{err}");
    }

    /// The design's seed, as `deploy/examples/istio-header-route.yaml` holds it unchanged: the
    /// VirtualService and the DestinationRule.
    fn seed() -> (Value, Value) {
        let text = include_str!("../../deploy/examples/istio-header-route.yaml");
        let mut documents = text
            .split("\n---\n")
            .map(|d| serde_saphyr::from_str::<Value>(d).expect("the seed parses"));
        let vs = documents.next().unwrap();
        let dr = documents.next().unwrap();
        assert_eq!(
            (vs["kind"].as_str(), dr["kind"].as_str()),
            (Some("VirtualService"), Some("DestinationRule"))
        );
        (vs, dr)
    }

    fn seed_routing() -> IstioRouting {
        let mut r = routing(&[]);
        r.virtual_service.name = "api-server".into();
        r.destination_rule.name = "api-server".into();
        r
    }

    /// The object with every destination's weight left out: what must not change when the
    /// controller sets weights.
    fn without_weights(object: &Value) -> Value {
        let mut object = object.clone();
        for route in object["spec"]["http"].as_array_mut().into_iter().flatten() {
            for d in route["route"].as_array_mut().into_iter().flatten() {
                d.as_object_mut().unwrap().remove("weight");
            }
        }
        object
    }

    fn weights(object: &Value, route: usize) -> Vec<(String, u64)> {
        object["spec"]["http"][route]["route"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["destination"]["subset"].as_str().unwrap().to_string(),
                    d["weight"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_seed_virtual_service_works_as_written() {
        let (vs, _) = seed();
        let r = seed_routing();
        assert_eq!(
            current_weight(&vs, &r).unwrap(),
            10,
            "its unnamed weighted route"
        );
        assert_eq!(
            weight_patch(&vs, &r, 10).unwrap(),
            None,
            "already 10%: no write"
        );
        for weight in [0u8, 25, 100] {
            let after = apply(&vs, &weight_patch(&vs, &r, weight).unwrap().unwrap());
            assert_eq!(current_weight(&after, &r).unwrap(), weight);
            assert_eq!(
                weights(&after, 1),
                [
                    ("stable".to_string(), 100 - u64::from(weight)),
                    ("canary".to_string(), u64::from(weight))
                ]
            );
            // The whole object, weights aside, is as written: the header route (weight 100
            // included), hosts, fault, retries.
            assert_eq!(without_weights(&after), without_weights(&vs));
            assert_eq!(after["spec"]["http"][0], vs["spec"]["http"][0]);
        }
    }

    #[test]
    fn the_seed_destination_rule_changes_only_its_two_subsets_labels() {
        let (_, dr) = seed();
        let r = seed_routing();
        let after = apply(&dr, &subsets_patch(&dr, &r).unwrap());
        let mut expected = dr.clone();
        expected["spec"]["subsets"][0]["labels"] = json!({SUBSET_LABEL: "stable"});
        expected["spec"]["subsets"][1]["labels"] = json!({SUBSET_LABEL: "canary"});
        assert_eq!(
            after, expected,
            "trafficPolicy and the rest stay as written"
        );
        assert_eq!(subsets_patch(&after, &r), None);
        // A subset's own trafficPolicy stays too.
        let mut with_policy = dr.clone();
        with_policy["spec"]["subsets"][1]["trafficPolicy"] =
            json!({"loadBalancer": {"simple": "ROUND_ROBIN"}});
        let after = apply(&with_policy, &subsets_patch(&with_policy, &r).unwrap());
        assert_eq!(
            after["spec"]["subsets"][1],
            json!({"name": "canary", "labels": {SUBSET_LABEL: "canary"}, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}})
        );
    }

    fn route_to(host: &str, subsets: &[&str]) -> Value {
        let destinations: Vec<Value> = subsets
            .iter()
            .map(|s| json!({"destination": {"host": host, "subset": s}, "weight": 100 / subsets.len()}))
            .collect();
        json!({"route": destinations})
    }

    #[test]
    fn which_routes_carry_the_split() {
        let named = |name: &str, mut route: Value| {
            route["name"] = json!(name);
            route
        };
        let both = route_to("web", &["stable", "canary"]);
        let cases: Vec<(&str, Vec<Value>, Vec<&str>, Result<Vec<usize>, &str>)> = vec![
            (
                "one weighted route",
                vec![both.clone()],
                vec![],
                Ok(vec![0]),
            ),
            (
                "a header route to the canary first is left alone",
                vec![route_to("web", &["canary"]), both.clone()],
                vec![],
                Ok(vec![1]),
            ),
            (
                "routes to one subset or to another host are left alone",
                vec![
                    route_to("web", &["stable"]),
                    route_to("other", &[]),
                    both.clone(),
                    both.clone(),
                ],
                vec![],
                Ok(vec![2, 3]),
            ),
            (
                "no route carries both subsets",
                vec![route_to("web", &["canary"]), route_to("web", &["stable"])],
                vec![],
                Err("has no HTTP route with destinations for both subsets stable and canary"),
            ),
            ("no routes at all", vec![], vec![], Err("has no HTTP route")),
            (
                "named routes: only those",
                vec![named("a", both.clone()), named("b", both.clone())],
                vec!["b"],
                Ok(vec![1]),
            ),
            (
                "a named route without both subsets is an error",
                vec![named("a", route_to("web", &["canary"]))],
                vec!["a"],
                Err("HTTP route a: no destination with subset stable"),
            ),
            (
                "a named route that is not there",
                vec![named("a", both.clone())],
                vec!["a", "b"],
                Err("no HTTP route named b"),
            ),
        ];
        for (case, http, names, expected) in cases {
            let vs = json!({"spec": {"hosts": ["web"], "http": http}});
            let r = routing(&names);
            let found = destinations(&vs, &r)
                .map(|d| d.iter().map(|(i, ..)| *i).collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            match (found, expected) {
                (Ok(found), Ok(expected)) => assert_eq!(found, expected, "{case}"),
                (Err(e), Err(expected)) => assert!(e.contains(expected), "{case}: {e}"),
                (found, expected) => panic!("{case}: {found:?}, expected {expected:?}"),
            }
        }
    }

    fn header_route(name: &str, matches: Value) -> HeaderRoute {
        serde_json::from_value(json!({"name": name, "match": matches})).unwrap()
    }

    fn testers() -> HeaderRoute {
        header_route(
            "testers",
            json!([{"headerName": "X-Canary-Tester", "headerValue": {"exact": "yes"}}]),
        )
    }

    fn names(vs: &Value) -> Vec<String> {
        vs["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap_or("-").to_string())
            .collect()
    }

    /// Applies the header route patch for `routes` (if any) to `vs`.
    fn with_header_routes(vs: &Value, routes: &[HeaderRoute]) -> Value {
        match header_routes_patch(vs, &seed_routing(), routes).unwrap() {
            Some(patch) => apply(vs, &patch),
            None => vs.clone(),
        }
    }

    #[test]
    fn header_routes_are_added_on_top_and_go_exactly() {
        let (seed, _) = seed();
        let r = seed_routing();
        let added = with_header_routes(&seed, &[testers()]);
        assert_eq!(
            added["spec"]["http"][0],
            json!({
                "name": "canary-header-testers",
                "match": [{"headers": {"x-canary-tester": {"exact": "yes"}}}],
                "route": [{"destination": {"host": "api-server", "subset": "canary"}, "weight": 100}],
            })
        );
        // Below it, the seed's routes exactly as written; the weights are still found.
        assert_eq!(
            added["spec"]["http"].as_array().unwrap()[1..],
            seed["spec"]["http"].as_array().unwrap()[..]
        );
        assert_eq!(current_weight(&added, &r).unwrap(), 10);
        let moved = apply(&added, &weight_patch(&added, &r, 30).unwrap().unwrap());
        assert_eq!(
            weights(&moved, 2),
            [("stable".into(), 70), ("canary".into(), 30)]
        );
        assert_eq!(
            moved["spec"]["http"].as_array().unwrap()[..2],
            added["spec"]["http"].as_array().unwrap()[..2]
        );

        let prefix = |name: &str, value: Value| {
            header_route(
                name,
                json!([{"headerName": "x-group", "headerValue": value}]),
            )
        };
        let cases: Vec<(&str, Vec<HeaderRoute>, Vec<HeaderRoute>, Vec<&str>)> = vec![
            (
                "the same routes again: no write",
                vec![testers()],
                vec![testers()],
                vec!["canary-header-testers", "-", "-"],
            ),
            (
                "all removed: the seed as written",
                vec![testers()],
                vec![],
                vec!["-", "-"],
            ),
            (
                "two, in the steps' order",
                vec![],
                vec![testers(), prefix("beta", json!({"prefix": "beta-"}))],
                vec!["canary-header-testers", "canary-header-beta", "-", "-"],
            ),
            (
                "one of two removed",
                vec![testers(), prefix("beta", json!({"prefix": "beta-"}))],
                vec![prefix("beta", json!({"prefix": "beta-"}))],
                vec!["canary-header-beta", "-", "-"],
            ),
            (
                "a new one goes above those already there",
                vec![testers()],
                vec![testers(), prefix("beta", json!({"regex": "beta-.*"}))],
                vec!["canary-header-beta", "canary-header-testers", "-", "-"],
            ),
            (
                "a route without matches is not wanted",
                vec![testers()],
                vec![header_route("testers", json!([]))],
                vec!["-", "-"],
            ),
        ];
        for (case, before, after, expected) in cases {
            let start = with_header_routes(&seed, &before);
            let patch = header_routes_patch(&start, &r, &after).unwrap();
            if before == after {
                assert_eq!(patch, None, "{case}");
            }
            let end = start_then(&start, patch);
            assert_eq!(names(&end), expected, "{case}");
            for wanted in after.iter().filter(|h| !h.matches.is_empty()) {
                let name = header_route_name(&wanted.name);
                let route = end["spec"]["http"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h["name"] == name.as_str())
                    .unwrap();
                assert_eq!(
                    route,
                    &header_http_route(wanted, &json!({"host": "api-server", "subset": "canary"}))
                        .unwrap(),
                    "{case}"
                );
            }
            // The seed's own routes are never touched.
            let n = end["spec"]["http"].as_array().unwrap().len();
            assert_eq!(
                end["spec"]["http"].as_array().unwrap()[n - 2..],
                seed["spec"]["http"].as_array().unwrap()[..],
                "{case}"
            );
            assert_eq!(
                header_routes_patch(&end, &r, &after).unwrap(),
                None,
                "{case}: then no write"
            );
        }
    }

    fn start_then(start: &Value, patch: Option<Value>) -> Value {
        patch.map_or_else(|| start.clone(), |p| apply(start, &p))
    }

    #[test]
    fn a_changed_header_match_replaces_its_route_in_place() {
        let (seed, _) = seed();
        let r = seed_routing();
        let start = with_header_routes(&seed, &[testers()]);
        let changed = header_route(
            "testers",
            json!([
                {"headerName": "x-canary-tester", "headerValue": {"prefix": "y"}},
                {"headerName": "x-region", "headerValue": {"exact": "eu"}},
            ]),
        );
        let end = apply(
            &start,
            &header_routes_patch(&start, &r, &[changed])
                .unwrap()
                .unwrap(),
        );
        assert_eq!(end["spec"]["http"].as_array().unwrap().len(), 3);
        assert_eq!(
            end["spec"]["http"][0]["match"],
            json!([{"headers": {"x-canary-tester": {"prefix": "y"}, "x-region": {"exact": "eu"}}}]),
            "one match block: every header must match"
        );
    }

    #[test]
    fn routes_of_the_user_are_never_touched() {
        let r = seed_routing();
        let both = route_to("api-server", &["stable", "canary"]);
        let mut users = route_to("api-server", &["canary"]);
        // Named like the step, without the prefix: the user's, not the controller's.
        users["name"] = json!("testers");
        users["match"] = json!([{"headers": {"x-canary-tester": {"exact": "yes"}}}]);
        let vs = json!({"spec": {"http": [users.clone(), both.clone()]}});
        let added = with_header_routes(&vs, &[testers()]);
        assert_eq!(names(&added), ["canary-header-testers", "testers", "-"]);
        let removed = with_header_routes(&added, &[]);
        assert_eq!(removed, vs);
        // A copy of the controller's route (pasted by hand) is not kept twice.
        let mut twice = added.clone();
        let copy = twice["spec"]["http"][0].clone();
        twice["spec"]["http"]
            .as_array_mut()
            .unwrap()
            .insert(2, copy);
        let once = apply(
            &twice,
            &header_routes_patch(&twice, &r, &[testers()])
                .unwrap()
                .unwrap(),
        );
        assert_eq!(once, added);
    }

    #[test]
    fn the_canary_destination_is_taken_from_the_weighted_route() {
        let vs = json!({"spec": {"http": [{"route": [
            {"destination": {"host": "api-server.prod.svc.cluster.local", "subset": "stable", "port": {"number": 8080}}, "weight": 100},
            {"destination": {"host": "api-server.prod.svc.cluster.local", "subset": "canary", "port": {"number": 8080}}, "weight": 0},
        ]}]}});
        let added = with_header_routes(&vs, &[testers()]);
        assert_eq!(
            added["spec"]["http"][0]["route"],
            json!([{"destination": {"host": "api-server.prod.svc.cluster.local", "subset": "canary", "port": {"number": 8080}}, "weight": 100}])
        );
    }

    #[test]
    fn header_routes_that_istio_cannot_express_are_errors_that_say_why() {
        let (seed, _) = seed();
        let r = seed_routing();
        let cases = [
            (
                json!([
                    {"headerName": "X-Tester", "headerValue": {"exact": "a"}},
                    {"headerName": "x-tester", "headerValue": {"exact": "b"}},
                ]),
                "setHeaderRoute testers: header x-tester is matched more than once",
            ),
            (
                json!([{"headerName": "x-tester", "headerValue": {}}]),
                "setHeaderRoute testers: the headerValue of x-tester has none of exact, prefix or regex",
            ),
        ];
        for (matches, expected) in cases {
            let err =
                header_routes_patch(&seed, &r, &[header_route("testers", matches)]).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        // Adding needs a route that carries the split (its host); removing does not.
        let none = json!({"metadata": {"name": "api-server"}, "spec": {"http": [route_to("api-server", &["canary"])]}});
        let err = header_routes_patch(&none, &r, &[testers()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("no HTTP route with destinations for both subsets"),
            "{err}"
        );
        assert_eq!(header_routes_patch(&none, &r, &[]).unwrap(), None);
    }

    #[test]
    fn the_router_serves_header_routes_and_says_what_is_missing() {
        let router = IstioRouter::new(seed_routing());
        assert!(router.capabilities().header_routes);
        let empty = Snapshot::default();
        assert_eq!(router.set_header_routes(&empty, &[]).unwrap(), vec![]);
        let err = router.set_header_routes(&empty, &[testers()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("VirtualService api-server does not exist"),
            "{err}"
        );
        let (seed, _) = seed();
        let mut read = Snapshot::default();
        read.insert(router.virtual_service(), seed);
        let writes = router.set_header_routes(&read, &[testers()]).unwrap();
        assert!(
            matches!(&writes[..], [RouterWrite::Patch { object, .. }] if object.kind == "VirtualService")
        );
    }

    #[test]
    fn header_route_writes_are_guarded() {
        let (seed, _) = seed();
        let r = seed_routing();
        let try_apply = |doc: &Value, patch: &Value| {
            let mut doc = doc.clone();
            let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
            json_patch::patch(&mut doc, &patch).map(|_| doc)
        };
        // Adding: the top route must be the one read, its weights aside.
        let add = header_routes_patch(&seed, &r, &[testers()])
            .unwrap()
            .unwrap();
        let mut reweighted = seed.clone();
        reweighted["spec"]["http"][0]["route"][0]["weight"] = json!(50);
        assert!(
            try_apply(&reweighted, &add).is_ok(),
            "a weight written meanwhile is no conflict"
        );
        let added_meanwhile = with_header_routes(&seed, &[testers()]);
        assert!(try_apply(&added_meanwhile, &add).is_err(), "no second copy");
        let mut edited = seed.clone();
        edited["spec"]["http"][0]["match"][0]["headers"]["canary"] = json!({"exact": "yes"});
        assert!(
            try_apply(&edited, &add).is_err(),
            "the user's route changed meanwhile"
        );
        // Removing: the route at the index must still be the controller's of that name.
        let added = with_header_routes(&seed, &[testers()]);
        let remove = header_routes_patch(&added, &r, &[]).unwrap().unwrap();
        let mut reordered = added.clone();
        reordered["spec"]["http"].as_array_mut().unwrap().swap(0, 1);
        assert!(
            try_apply(&reordered, &remove).is_err(),
            "never removes another route"
        );
        // A weight patch computed before a header route was added refuses to apply after it
        // (indices moved): the next reconcile computes it again.
        let weight = weight_patch(&seed, &r, 30).unwrap().unwrap();
        assert!(try_apply(&added, &weight).is_err());
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
