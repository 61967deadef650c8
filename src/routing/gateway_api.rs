//! Gateway API: the weights of the stable and canary Service backendRefs in the rules of
//! HTTPRoutes (and GRPCRoutes), which Istio, Envoy Gateway, Cilium, Kong, Traefik, NGINX
//! Gateway Fabric and Linkerd all implement.
//!
//! A managed rule is one whose backendRefs name both Services; rules that name only one of
//! them (or neither) are left alone. `rules` and `backendRefs` are atomic lists in the
//! Gateway API CRDs, so, as with Istio, the controller writes JSON Patches that change only
//! what it owns, each guarded by `test` operations on what it changes: the weights of the two
//! backendRefs, and the header-route rules it adds.
//!
//! Header routes (`setHeaderRoute`) are rules the controller appends to the route, one per
//! header route and managed rule, named `canary.dev.header.<route>[.<n>]` (rule names are in
//! the standard channel since Gateway API v1.4). Each copies its managed rule (filters,
//! timeouts) with the header matches added to every match, and sends to the canary backendRef
//! only. Appended, not prepended: Gateway API orders matches by specificity before list
//! order, and a copy with more header matches is more specific than its rule; and the user's
//! rules keep their positions, so a weight patch and a header-route patch computed from the
//! same read never move each other's targets.
//!
//! The Services: with `createServices` the controller applies both (the target's selector
//! plus `canary.dev/subset`), only when they differ from what it reads; otherwise they are
//! the user's, must exist and must tell the two versions' pods apart. When the Canary goes,
//! both are handed back selecting the target's pods (and the created ones lose their owner
//! reference, so the route never points at Services garbage-collected with the Canary).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    Capabilities, Granularity, RouterError, RouterWrite, RoutingObject, Snapshot, TrafficRouter,
    Workload,
};
use crate::api::canary::{GatewayApiRouting, HeaderMatch, HeaderRoute, SUBSET_LABEL};

const GROUP: &str = "gateway.networking.k8s.io";

/// The kinds of the routes this router manages (the Services it reads or creates change
/// only through it or their owner): `(group, version, kind)`.
pub const ROUTE_KINDS: [(&str, &str, &str); 2] =
    [(GROUP, "v1", "HTTPRoute"), (GROUP, "v1", "GRPCRoute")];

/// Names of the rules the controller adds start with this (a domain it owns, so no user's
/// rule name can collide).
const HEADER_RULE_PREFIX: &str = "canary.dev.header.";

/// Gateway API's limits on a route's rules (CRD `maxItems` and its CEL rule).
const MAX_RULES: usize = 16;
const MAX_MATCHES_PER_ROUTE: usize = 128;
const MAX_HEADERS_PER_MATCH: usize = 16;
const MAX_HEADER_VALUE: usize = 4096;

/// The Gateway API router of one Canary.
pub struct GatewayApiRouter {
    routing: GatewayApiRouting,
}

/// A rule whose backendRefs name both Services: `(rule index, stable backend index, canary
/// backend index, rule)`.
type ManagedRule<'a> = (usize, usize, usize, &'a Value);

impl GatewayApiRouter {
    pub fn new(routing: GatewayApiRouting) -> Self {
        Self { routing }
    }

    /// The routes, HTTPRoutes first.
    fn routes(&self) -> Vec<RoutingObject> {
        let http = self
            .routing
            .http_route_names()
            .into_iter()
            .map(|name| RoutingObject::new(GROUP, "v1", "HTTPRoute", name));
        let grpc = self
            .routing
            .grpc_routes
            .iter()
            .map(|name| RoutingObject::new(GROUP, "v1", "GRPCRoute", name));
        http.chain(grpc).collect()
    }

    /// The stable and canary Services, with their subset.
    fn services(&self) -> [(RoutingObject, &'static str); 2] {
        [
            (
                RoutingObject::new("", "v1", "Service", &self.routing.stable_service),
                "stable",
            ),
            (
                RoutingObject::new("", "v1", "Service", &self.routing.canary_service),
                "canary",
            ),
        ]
    }

    /// The managed rules of `route`.
    fn managed_rules<'a>(
        &self,
        object: &RoutingObject,
        route: &'a Value,
    ) -> Result<Vec<ManagedRule<'a>>, RouterError> {
        let rules: Vec<ManagedRule<'a>> = rules_of(route)
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let stable = backend_index(rule, &self.routing.stable_service)?;
                let canary = backend_index(rule, &self.routing.canary_service)?;
                Some((i, stable, canary, rule))
            })
            .collect();
        if rules.is_empty() {
            return Err(RouterError::Unusable(format!(
                "{object} has no rule whose backendRefs name both Service {} and Service {}: add both to the rules whose traffic is to be split (weight 0 for the canary)",
                self.routing.stable_service, self.routing.canary_service
            )));
        }
        Ok(rules)
    }

    /// The weight ops that give the canary `weight` percent on every managed rule of `route`.
    fn weight_ops(
        &self,
        object: &RoutingObject,
        route: &Value,
        weight: u8,
    ) -> Result<Vec<Value>, RouterError> {
        let canary_weight = u64::from(weight.min(100));
        let stable_weight = 100 - canary_weight;
        let mut ops = Vec::new();
        for (i, stable, canary, rule) in self.managed_rules(object, route)? {
            for (b, service, w) in [
                (stable, &self.routing.stable_service, stable_weight),
                (canary, &self.routing.canary_service, canary_weight),
            ] {
                if rule
                    .pointer(&format!("/backendRefs/{b}/weight"))
                    .and_then(Value::as_u64)
                    == Some(w)
                {
                    continue;
                }
                let at = format!("/spec/rules/{i}/backendRefs/{b}");
                ops.push(json!({"op": "test", "path": format!("{at}/name"), "value": service}));
                ops.push(json!({"op": "add", "path": format!("{at}/weight"), "value": w}));
            }
        }
        Ok(ops)
    }

    /// The rules the controller wants in `route` for `header_routes`, in order.
    fn header_rules(
        &self,
        object: &RoutingObject,
        route: &Value,
        header_routes: &[HeaderRoute],
    ) -> Result<Vec<Value>, RouterError> {
        if header_routes.is_empty() {
            return Ok(Vec::new());
        }
        let managed = self.managed_rules(object, route)?;
        let mut rules = Vec::new();
        for header_route in header_routes {
            let headers = header_matches(object, header_route)?;
            for (n, (_, _, canary, rule)) in managed.iter().enumerate() {
                let mut copy = rule.as_object().cloned().unwrap_or_default();
                copy.insert(
                    "name".into(),
                    json!(header_rule_name(&header_route.name, n)),
                );
                let matches: Vec<Value> = match rule.get("matches").and_then(Value::as_array) {
                    Some(matches) if !matches.is_empty() => matches.clone(),
                    // No matches: every request of the route; the copy keeps only the headers.
                    _ => vec![json!({})],
                };
                let matches = matches
                    .into_iter()
                    .map(|m| with_headers(object, &header_route.name, m, &headers))
                    .collect::<Result<Vec<Value>, RouterError>>()?;
                copy.insert("matches".into(), Value::Array(matches));
                let mut backend = rule
                    .pointer(&format!("/backendRefs/{canary}"))
                    .cloned()
                    .unwrap_or_default();
                // A single backendRef with any weight above 0 takes all of the rule's traffic.
                backend["weight"] = json!(1);
                copy.insert("backendRefs".into(), json!([backend]));
                rules.push(Value::Object(copy));
            }
        }
        Ok(rules)
    }

    /// The JSON Patch ops that make the controller's rules in `route` exactly `desired`:
    /// none when they already are; otherwise each one there is removed (guarded by a test of
    /// its whole content, from the last to the first, so indices stay valid) and `desired`
    /// appended. The user's rules are neither moved nor changed.
    fn header_rule_ops(
        &self,
        object: &RoutingObject,
        route: &Value,
        desired: &[Value],
    ) -> Result<Vec<Value>, RouterError> {
        let rules = rules_of(route);
        let ours: Vec<(usize, &Value)> = rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| is_header_rule(rule))
            .collect();
        let in_place = ours.len() == desired.len()
            && ours
                .iter()
                .zip(desired)
                .all(|((_, have), want)| covers(have, want));
        if in_place {
            return Ok(Vec::new());
        }
        // A rule the controller wrote, stored without its name: the installed CRD prunes rule
        // names, and the controller could never find (or remove) its rules again.
        let unnamed = |want: &Value| {
            let mut want = want.clone();
            want.as_object_mut().map(|w| w.remove("name"));
            rules
                .iter()
                .any(|have| have.get("name").is_none() && covers(have, &want))
        };
        if desired.iter().any(unnamed) {
            return Err(RouterError::Unusable(format!(
                "{object} holds a header-route rule without its name: the installed Gateway API CRDs drop rule names (spec.rules[].name, standard channel since v1.4); install Gateway API v1.4 or later for setHeaderRoute, and remove that rule"
            )));
        }
        let users = rules.len() - ours.len();
        if users + desired.len() > MAX_RULES {
            return Err(RouterError::Unusable(format!(
                "{object} has {users} rules and its header routes need {} more, but a route holds at most {MAX_RULES}: use fewer header routes, or split the route",
                desired.len()
            )));
        }
        let match_count = |rule: &Value| {
            rule.get("matches")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        };
        let matches: usize = rules
            .iter()
            .filter(|rule| !is_header_rule(rule))
            .chain(desired)
            .map(match_count)
            .sum();
        if matches > MAX_MATCHES_PER_ROUTE {
            return Err(RouterError::Unusable(format!(
                "{object} would have {matches} matches with its header routes, but a route holds at most {MAX_MATCHES_PER_ROUTE}: use fewer header routes or matches"
            )));
        }
        let mut ops = Vec::new();
        for (i, rule) in ours.iter().rev() {
            ops.push(json!({"op": "test", "path": format!("/spec/rules/{i}"), "value": rule}));
            ops.push(json!({"op": "remove", "path": format!("/spec/rules/{i}")}));
        }
        if route.pointer("/spec/rules").is_none() && !desired.is_empty() {
            ops.push(json!({"op": "add", "path": "/spec/rules", "value": []}));
        }
        for rule in desired {
            ops.push(json!({"op": "add", "path": "/spec/rules/-", "value": rule}));
        }
        Ok(ops)
    }

    /// The Service `object` for `subset` as the controller creates it.
    fn service_body(&self, object: &RoutingObject, subset: &str, workload: &Workload) -> Value {
        let mut selector: BTreeMap<String, String> = workload.selector.clone();
        selector.insert(SUBSET_LABEL.into(), subset.into());
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": object.name, "labels": {SUBSET_LABEL: subset}},
            "spec": {
                "selector": selector,
                "ports": [{"port": workload.port, "targetPort": workload.port, "protocol": "TCP"}],
            },
        })
    }
}

/// The rules of a route as read (none if it has none).
fn rules_of(route: &Value) -> &[Value] {
    route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Whether `rule` is one the controller added for a header route.
fn is_header_rule(rule: &Value) -> bool {
    rule.get("name")
        .and_then(Value::as_str)
        .is_some_and(|name| name.starts_with(HEADER_RULE_PREFIX))
}

/// The name of the controller's rule for header route `name` and the `n`th managed rule: a
/// valid rule name (lower-case DNS labels), unique per header route even where two names
/// map to the same label (a hash of the name is added whenever it had to be changed).
fn header_rule_name(name: &str, n: usize) -> String {
    let mut label: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    label = label.trim_matches('-').to_string();
    label.truncate(63);
    let label = label.trim_end_matches('-');
    let mut rule = format!("{HEADER_RULE_PREFIX}{label}");
    if label != name {
        let hash = crate::workload::fnv1a64(name.as_bytes()) as u32;
        if label.is_empty() {
            rule.push_str(&format!("{hash:08x}"));
        } else {
            rule.push_str(&format!("-{hash:08x}"));
        }
    }
    if n > 0 {
        rule.push_str(&format!(".{n}"));
    }
    rule
}

/// Gateway API header matches for a header route: `exact` is `Exact`, `regex` is
/// `RegularExpression` (RE2, as Envoy and Istio read it), and `prefix`, which Gateway API
/// lacks, the regular expression of the escaped prefix followed by anything.
fn header_matches(object: &RoutingObject, route: &HeaderRoute) -> Result<Vec<Value>, RouterError> {
    route
        .matches
        .iter()
        .map(|HeaderMatch { header_name, header_value }| {
            let (kind, value) = match (&header_value.exact, &header_value.prefix, &header_value.regex) {
                (Some(exact), _, _) => ("Exact", exact.clone()),
                (None, Some(prefix), _) => ("RegularExpression", format!("^{}.*", re2_escape(prefix))),
                (None, None, Some(regex)) => ("RegularExpression", regex.clone()),
                (None, None, None) => {
                    return Err(RouterError::Unusable(format!(
                        "header route {}: header {header_name} has no exact, prefix or regex value",
                        route.name
                    )));
                }
            };
            if value.len() > MAX_HEADER_VALUE {
                return Err(RouterError::Unusable(format!(
                    "header route {}: the value for header {header_name} is {} characters in {object}, more than Gateway API's {MAX_HEADER_VALUE} (a prefix grows when escaped): shorten it",
                    route.name,
                    value.len()
                )));
            }
            Ok(json!({"type": kind, "name": header_name, "value": value}))
        })
        .collect()
}

/// `text` as an RE2 regular expression that matches exactly it (RE2 reads a backslash before
/// any punctuation as that character).
fn re2_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// `matched` with `headers` added to its header matches (one of the same name, compared
/// case-insensitively as Gateway API does, is replaced).
fn with_headers(
    object: &RoutingObject,
    route: &str,
    mut matched: Value,
    headers: &[Value],
) -> Result<Value, RouterError> {
    let name_of = |h: &Value| {
        h.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let mut all: Vec<Value> = matched
        .get("headers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    all.retain(|h| !headers.iter().any(|new| name_of(new) == name_of(h)));
    all.extend(headers.iter().cloned());
    if all.len() > MAX_HEADERS_PER_MATCH {
        return Err(RouterError::Unusable(format!(
            "header route {route}: a match of {object} would have {} header matches, more than Gateway API's {MAX_HEADERS_PER_MATCH}: match fewer headers",
            all.len()
        )));
    }
    if !matched.is_object() {
        matched = Value::Object(Map::new());
    }
    matched["headers"] = Value::Array(all);
    Ok(matched)
}

/// Whether `have` (as read) holds everything of `want` (as the controller would write it):
/// the API server adds defaults (a backendRef's `group` and `kind`, a match's `path`), so
/// an object read back has more than was written and is still what was written.
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(key, w)| have.get(key).is_some_and(|h| covers(h, w))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| covers(h, w))
        }
        _ => have == want,
    }
}

/// The position of the backendRef to Service `service` (same namespace) in `rule`.
fn backend_index(rule: &Value, service: &str) -> Option<usize> {
    rule.get("backendRefs")
        .and_then(Value::as_array)?
        .iter()
        .position(|b| {
            let text = |key: &str| b.get(key).and_then(Value::as_str);
            text("name") == Some(service)
                && text("group").unwrap_or("").is_empty()
                && text("kind").unwrap_or("Service") == "Service"
                && b.get("namespace").is_none()
        })
}

/// A backendRef's weight; the Gateway API default is 1.
fn backend_weight(rule: &Value, index: usize) -> u64 {
    rule.pointer(&format!("/backendRefs/{index}/weight"))
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

/// Whether `service` has exactly the one port the controller gives it.
fn serves_port(service: &Value, port: u16) -> bool {
    let ports = service.pointer("/spec/ports").and_then(Value::as_array);
    matches!(ports.map(Vec::as_slice), Some([only])
        if only.get("port") == Some(&json!(port)) && only.get("targetPort") == Some(&json!(port)))
}

/// Whether `service` carries an owner reference to a Canary (it was created by one).
fn owned_by_a_canary(service: &Value) -> bool {
    service
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(is_canary_owner))
}

fn is_canary_owner(owner: &Value) -> bool {
    owner.get("kind").and_then(Value::as_str) == Some("Canary")
        && owner
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| v.starts_with("canary.dev/"))
}

impl TrafficRouter for GatewayApiRouter {
    fn name(&self) -> &'static str {
        "gatewayAPI"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            granularity: Granularity::Exact,
            header_routes: true,
        }
    }

    fn objects(&self) -> Vec<RoutingObject> {
        // The Services too: the user's must exist, and the created ones are applied only
        // when they differ from what is there.
        let mut objects = self.routes();
        objects.extend(self.services().into_iter().map(|(object, _)| object));
        objects
    }

    fn current_weight(&self, read: &Snapshot) -> Result<Option<u8>, RouterError> {
        let object = self
            .routes()
            .into_iter()
            .next()
            .ok_or_else(|| RouterError::Unusable("trafficRouting.gatewayAPI names no route: give httpRoute, httpRoutes or grpcRoutes".into()))?;
        let route = read.require(&object)?;
        let (_, stable, canary, rule) = self.managed_rules(&object, route)?[0];
        // Weights are proportions, not percentages.
        let (stable, canary) = (backend_weight(rule, stable), backend_weight(rule, canary));
        let total = stable.saturating_add(canary);
        if total == 0 {
            return Ok(Some(0));
        }
        let percent = (canary.saturating_mul(100) + total / 2) / total;
        Ok(Some(u8::try_from(percent.min(100)).unwrap_or(100)))
    }

    fn prepare(
        &self,
        read: &Snapshot,
        workload: &Workload,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        let mut writes = Vec::new();
        for (object, subset) in self.services() {
            let found = read.get(&object);
            if !self.routing.create_services {
                let service = found.ok_or_else(|| {
                    RouterError::Unusable(format!(
                        "{object} (trafficRouting.gatewayAPI.{subset}Service) does not exist: create it, selecting the {subset} pods ({SUBSET_LABEL}: {subset}), or set trafficRouting.gatewayAPI.createServices: true"
                    ))
                })?;
                // The managed pods differ only by this label: a Service that does not pin it
                // sends the version's share of traffic to both versions.
                let pinned = service.pointer(&format!(
                    "/spec/selector/{}",
                    SUBSET_LABEL.replace('/', "~1")
                ));
                if pinned.and_then(Value::as_str) != Some(subset) {
                    return Err(RouterError::Unusable(format!(
                        "{object} (trafficRouting.gatewayAPI.{subset}Service) does not select only the {subset} pods: add {SUBSET_LABEL}: {subset} to its spec.selector, or set createServices: true"
                    )));
                }
                continue;
            }
            if workload.selector.is_empty() {
                return Err(RouterError::Unusable(format!(
                    "{object} cannot be created: the target Deployment has no spec.selector.matchLabels to select its pods by"
                )));
            }
            let body = self.service_body(&object, subset, workload);
            match found {
                Some(service) if !owned_by_a_canary(service) => {
                    return Err(RouterError::Unusable(format!(
                        "{object} already exists and was not created by a Canary; with createServices the controller creates and owns it: delete or rename that Service, or set createServices: false to use it as it is"
                    )));
                }
                Some(service)
                    if service.pointer("/spec/selector") == body.pointer("/spec/selector")
                        && serves_port(service, workload.port) => {}
                _ => writes.push(RouterWrite::Apply { object, body }),
            }
        }
        Ok(writes)
    }

    fn set_weight(&self, read: &Snapshot, weight: u8) -> Result<Vec<RouterWrite>, RouterError> {
        let mut writes = Vec::new();
        for object in self.routes() {
            let route = read.require(&object)?;
            let ops = self.weight_ops(&object, route, weight)?;
            if !ops.is_empty() {
                writes.push(RouterWrite::Patch {
                    object,
                    patch: Value::Array(ops),
                });
            }
        }
        Ok(writes)
    }

    fn set_header_routes(
        &self,
        read: &Snapshot,
        routes: &[HeaderRoute],
    ) -> Result<Vec<RouterWrite>, RouterError> {
        let mut writes = Vec::new();
        for object in self.routes() {
            let route = read.require(&object)?;
            let desired = self.header_rules(&object, route, routes)?;
            let ops = self.header_rule_ops(&object, route, &desired)?;
            if !ops.is_empty() {
                writes.push(RouterWrite::Patch {
                    object,
                    patch: Value::Array(ops),
                });
            }
        }
        Ok(writes)
    }

    fn release(
        &self,
        read: &Snapshot,
        target_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        let mut writes = Vec::new();
        // The routes as the user wrote them: all traffic to stable, the controller's rules
        // gone. A route that is gone or cannot carry the split has nothing of ours left.
        for object in self.routes() {
            let Some(route) = read.get(&object) else {
                continue;
            };
            let mut ops = self.weight_ops(&object, route, 0).unwrap_or_default();
            ops.extend(self.header_rule_ops(&object, route, &[])?);
            if !ops.is_empty() {
                writes.push(RouterWrite::Patch {
                    object,
                    patch: Value::Array(ops),
                });
            }
        }
        // Both Services select the target's own pods, which serve once the managed
        // Deployments are gone; the created ones stay (no owner reference to the Canary), as
        // the route still names them.
        if target_labels.is_empty() {
            return Ok(writes);
        }
        for (object, _) in self.services() {
            let Some(service) = read.get(&object) else {
                continue;
            };
            let mut ops = Vec::new();
            let selector = service.pointer("/spec/selector");
            if selector != Some(&json!(target_labels)) {
                if let Some(selector) = selector {
                    ops.push(json!({"op": "test", "path": "/spec/selector", "value": selector}));
                }
                ops.push(json!({"op": "add", "path": "/spec/selector", "value": target_labels}));
            }
            if let Some(owners) = service
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .filter(|owners| owners.iter().any(is_canary_owner))
            {
                let kept: Vec<&Value> = owners.iter().filter(|o| !is_canary_owner(o)).collect();
                ops.push(
                    json!({"op": "test", "path": "/metadata/ownerReferences", "value": owners}),
                );
                ops.push(if kept.is_empty() {
                    json!({"op": "remove", "path": "/metadata/ownerReferences"})
                } else {
                    json!({"op": "replace", "path": "/metadata/ownerReferences", "value": kept})
                });
            }
            if !ops.is_empty() {
                writes.push(RouterWrite::Patch {
                    object,
                    patch: Value::Array(ops),
                });
            }
        }
        Ok(writes)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> GatewayApiRouting {
        GatewayApiRouting {
            http_route: Some("web".into()),
            http_routes: Vec::new(),
            grpc_routes: Vec::new(),
            stable_service: "web-stable".into(),
            canary_service: "web-canary".into(),
            create_services: false,
        }
    }

    fn http_route() -> Value {
        json!({"spec": {"parentRefs": [{"name": "gw"}], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
             "backendRefs": [{"name": "web-stable", "port": 8080}]},
            {"backendRefs": [
                {"name": "web-stable", "port": 8080, "weight": 100},
                {"name": "web-canary", "port": 8080, "weight": 0},
            ]},
        ]}})
    }

    fn snapshot(route: Value) -> Snapshot {
        let mut read = Snapshot::default();
        read.insert(RoutingObject::new(GROUP, "v1", "HTTPRoute", "web"), route);
        read
    }

    fn apply(document: &Value, writes: &[RouterWrite]) -> Value {
        let mut doc = document.clone();
        for write in writes {
            let RouterWrite::Patch { patch, .. } = write else {
                panic!("a weight is a patch")
            };
            let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
        }
        doc
    }

    #[test]
    fn weights_change_only_on_rules_with_both_backends() {
        let router = GatewayApiRouter::new(routing());
        let route = http_route();
        assert_eq!(router.current_weight(&snapshot(route.clone())), Ok(Some(0)));
        assert_eq!(
            router.set_weight(&snapshot(route.clone()), 0),
            Ok(Vec::new())
        );
        let writes = router.set_weight(&snapshot(route.clone()), 30).unwrap();
        let after = apply(&route, &writes);
        assert_eq!(
            router.current_weight(&snapshot(after.clone())),
            Ok(Some(30))
        );
        let mut expected = route.clone();
        expected["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(70);
        expected["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(30);
        assert_eq!(after, expected, "nothing else is touched");
    }

    #[test]
    fn weights_are_proportions_and_default_to_one() {
        let router = GatewayApiRouter::new(routing());
        let route = json!({"spec": {"rules": [{"backendRefs": [
            {"name": "web-stable"}, {"name": "web-canary"},
        ]}]}});
        assert_eq!(router.current_weight(&snapshot(route)), Ok(Some(50)));
        let route = json!({"spec": {"rules": [{"backendRefs": [
            {"name": "web-stable", "weight": 3}, {"name": "web-canary", "weight": 1},
        ]}]}});
        assert_eq!(router.current_weight(&snapshot(route)), Ok(Some(25)));
    }

    #[test]
    fn a_concurrent_reorder_makes_the_patch_fail() {
        let router = GatewayApiRouter::new(routing());
        let route = http_route();
        let writes = router.set_weight(&snapshot(route.clone()), 50).unwrap();
        let mut reordered = route.clone();
        reordered["spec"]["rules"][1]["backendRefs"]
            .as_array_mut()
            .unwrap()
            .reverse();
        let RouterWrite::Patch { patch, .. } = &writes[0] else {
            panic!()
        };
        let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        assert!(json_patch::patch(&mut reordered, &patch).is_err());
    }

    #[test]
    fn missing_routes_and_backends_are_named() {
        let router = GatewayApiRouter::new(routing());
        let err = router.set_weight(&Snapshot::default(), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTPRoute web does not exist: create it, or fix its name in spec.trafficRouting"
        );
        let only_stable = json!({"spec": {"rules": [{"backendRefs": [{"name": "web-stable"}]}]}});
        let err = router.set_weight(&snapshot(only_stable), 10).unwrap_err();
        assert!(
            err.to_string().contains(
                "no rule whose backendRefs name both Service web-stable and Service web-canary"
            ),
            "{err}"
        );
    }

    fn header_route(name: &str, matches: &[(&str, &str, &str)]) -> HeaderRoute {
        use crate::api::canary::HeaderValue;
        HeaderRoute {
            name: name.into(),
            matches: matches
                .iter()
                .map(|(header, kind, value)| HeaderMatch {
                    header_name: header.to_string(),
                    header_value: HeaderValue {
                        exact: (*kind == "exact").then(|| value.to_string()),
                        prefix: (*kind == "prefix").then(|| value.to_string()),
                        regex: (*kind == "regex").then(|| value.to_string()),
                    },
                })
                .collect(),
        }
    }

    /// What the API server stores of a patched route: the defaults it fills in.
    fn as_stored(mut route: Value) -> Value {
        for rule in route["spec"]["rules"].as_array_mut().unwrap() {
            for backend in rule["backendRefs"].as_array_mut().unwrap() {
                backend["group"] = json!("");
                backend["kind"] = json!("Service");
            }
        }
        route
    }

    fn patch_of(writes: &[RouterWrite]) -> json_patch::Patch {
        let [RouterWrite::Patch { patch, .. }] = writes else {
            panic!("one patch: {writes:?}")
        };
        serde_json::from_value(patch.clone()).unwrap()
    }

    #[test]
    fn header_routes_are_rules_appended_and_removed_leaving_the_users_rules_as_they_were() {
        let router = GatewayApiRouter::new(routing());
        let original = as_stored(http_route());
        let routes = [header_route("testers", &[("x-canary", "exact", "true")])];
        let writes = router
            .set_header_routes(&snapshot(original.clone()), &routes)
            .unwrap();
        let with = apply(&original, &writes);
        let rules = with["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            &rules[..2],
            original["spec"]["rules"].as_array().unwrap().as_slice()
        );
        assert_eq!(
            rules[2],
            json!({
                "name": "canary.dev.header.testers",
                "matches": [{"headers": [{"type": "Exact", "name": "x-canary", "value": "true"}]}],
                "backendRefs": [{"name": "web-canary", "port": 8080, "weight": 1, "group": "", "kind": "Service"}],
            })
        );
        // Read back with the server's defaults: in place, nothing to write.
        let mut stored = with.clone();
        stored["spec"]["rules"][2]["matches"][0]["path"] =
            json!({"type": "PathPrefix", "value": "/"});
        assert_eq!(
            router.set_header_routes(&snapshot(stored.clone()), &routes),
            Ok(Vec::new())
        );
        // The weights are read from, and written to, the user's rule only.
        assert_eq!(
            router.current_weight(&snapshot(stored.clone())),
            Ok(Some(0))
        );
        let weighted = apply(
            &stored,
            &router.set_weight(&snapshot(stored.clone()), 40).unwrap(),
        );
        assert_eq!(weighted["spec"]["rules"][2], stored["spec"]["rules"][2]);
        // Removed: exactly the route as it was.
        let removed = router
            .set_header_routes(&snapshot(stored.clone()), &[])
            .unwrap();
        assert_eq!(apply(&stored, &removed), original);
        assert_eq!(
            router.set_header_routes(&snapshot(original), &[]),
            Ok(Vec::new())
        );
    }

    #[test]
    fn header_rules_copy_each_managed_rule_with_the_headers_added_to_every_match() {
        let router = GatewayApiRouter::new(routing());
        let route = json!({"spec": {"rules": [
            {"name": "api",
             "matches": [
                {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-Canary", "value": "no"}, {"name": "tenant", "value": "a"}]},
                {"path": {"type": "Exact", "value": "/health"}},
             ],
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "gw"}]}}],
             "timeouts": {"request": "5s"},
             "backendRefs": [{"name": "web-canary", "port": 80, "weight": 0}, {"name": "web-stable", "port": 80, "weight": 100}]},
            {"backendRefs": [{"name": "web-stable", "port": 80}, {"name": "web-canary", "port": 80}]},
        ]}});
        let cases: [(HeaderRoute, &str, Value); 3] = [
            (
                header_route("testers", &[("x-canary", "exact", "yes")]),
                "canary.dev.header.testers",
                json!({"type": "Exact", "name": "x-canary", "value": "yes"}),
            ),
            (
                header_route("Beta Users", &[("x-user", "prefix", "beta.")]),
                "canary.dev.header.beta-users-",
                json!({"type": "RegularExpression", "name": "x-user", "value": "^beta\\..*"}),
            ),
            (
                header_route("re", &[("x-user", "regex", "b[0-9]+")]),
                "canary.dev.header.re",
                json!({"type": "RegularExpression", "name": "x-user", "value": "b[0-9]+"}),
            ),
        ];
        for (header, name, expected) in cases {
            let writes = router
                .set_header_routes(&snapshot(route.clone()), std::slice::from_ref(&header))
                .unwrap();
            let after = apply(&route, &writes);
            let rules = after["spec"]["rules"].as_array().unwrap();
            assert_eq!(rules.len(), 4, "one rule per managed rule: {after}");
            let (first, second) = (&rules[2], &rules[3]);
            assert!(first["name"].as_str().unwrap().starts_with(name), "{first}");
            assert!(second["name"].as_str().unwrap().ends_with(".1"), "{second}");
            assert_ne!(first["name"], second["name"]);
            // Same matches, each with the header route's headers; a same-named one replaced.
            let header_name = expected["name"].as_str().unwrap();
            let replaced = header_name.eq_ignore_ascii_case("x-canary");
            let mut api_headers = vec![];
            if !replaced {
                api_headers.push(json!({"name": "X-Canary", "value": "no"}));
            }
            api_headers.push(json!({"name": "tenant", "value": "a"}));
            api_headers.push(expected.clone());
            assert_eq!(
                first["matches"],
                json!([
                    {"path": {"type": "PathPrefix", "value": "/api"}, "headers": api_headers},
                    {"path": {"type": "Exact", "value": "/health"}, "headers": [expected.clone()]},
                ])
            );
            assert_eq!(first["filters"], route["spec"]["rules"][0]["filters"]);
            assert_eq!(first["timeouts"], json!({"request": "5s"}));
            assert_eq!(
                first["backendRefs"],
                json!([{"name": "web-canary", "port": 80, "weight": 1}])
            );
            assert_eq!(second["matches"], json!([{"headers": [expected]}]));
            assert_eq!(
                &rules[..2],
                route["spec"]["rules"].as_array().unwrap().as_slice()
            );
        }
    }

    #[test]
    fn changing_the_header_routes_replaces_only_the_controllers_rules() {
        let router = GatewayApiRouter::new(routing());
        let original = http_route();
        let one = [header_route("a", &[("x-a", "exact", "1")])];
        let two = [one[0].clone(), header_route("b", &[("x-b", "exact", "1")])];
        let with_one = apply(
            &original,
            &router
                .set_header_routes(&snapshot(original.clone()), &one)
                .unwrap(),
        );
        let with_two = apply(
            &with_one,
            &router
                .set_header_routes(&snapshot(with_one.clone()), &two)
                .unwrap(),
        );
        let names: Vec<&str> = with_two["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(names, ["canary.dev.header.a", "canary.dev.header.b"]);
        let back = apply(
            &with_two,
            &router
                .set_header_routes(&snapshot(with_two.clone()), &one)
                .unwrap(),
        );
        assert_eq!(back, with_one);
    }

    #[test]
    fn a_concurrent_change_to_a_header_rule_makes_its_removal_fail() {
        let router = GatewayApiRouter::new(routing());
        let original = http_route();
        let routes = [header_route("testers", &[("x-canary", "exact", "true")])];
        let with = apply(
            &original,
            &router
                .set_header_routes(&snapshot(original.clone()), &routes)
                .unwrap(),
        );
        let removal = patch_of(
            &router
                .set_header_routes(&snapshot(with.clone()), &[])
                .unwrap(),
        );
        let mut edited = with.clone();
        edited["spec"]["rules"][2]["matches"][0]["headers"][0]["value"] = json!("false");
        assert!(json_patch::patch(&mut edited, &removal).is_err());
        let mut reordered = with.clone();
        reordered["spec"]["rules"]
            .as_array_mut()
            .unwrap()
            .swap(1, 2);
        assert!(json_patch::patch(&mut reordered, &removal).is_err());
    }

    #[test]
    fn header_routes_that_do_not_fit_the_route_are_refused_by_name() {
        let router = GatewayApiRouter::new(routing());
        let full = {
            let mut rules: Vec<Value> = (0..15)
                .map(|i| json!({"matches": [{"path": {"type": "Exact", "value": format!("/{i}")}}], "backendRefs": [{"name": "other"}]}))
                .collect();
            rules.push(http_route()["spec"]["rules"][1].clone());
            json!({"spec": {"rules": rules}})
        };
        let routes = [header_route("testers", &[("x-canary", "exact", "true")])];
        let err = router
            .set_header_routes(&snapshot(full), &routes)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("HTTPRoute web has 16 rules and its header routes need 1 more"),
            "{err}"
        );
        let seventeen: Vec<(String, String, String)> = (0..17)
            .map(|i| (format!("x-{i}"), "exact".into(), "1".into()))
            .collect();
        let seventeen: Vec<(&str, &str, &str)> = seventeen
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        let err = router
            .set_header_routes(&snapshot(http_route()), &[header_route("many", &seventeen)])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("17 header matches, more than Gateway API's 16"),
            "{err}"
        );
        // A CRD that prunes rule names: the rule the controller wrote comes back unnamed.
        let with = apply(
            &http_route(),
            &router
                .set_header_routes(&snapshot(http_route()), &routes)
                .unwrap(),
        );
        let mut pruned = with.clone();
        pruned["spec"]["rules"][2]
            .as_object_mut()
            .unwrap()
            .remove("name");
        let err = router
            .set_header_routes(&snapshot(pruned), &routes)
            .unwrap_err();
        assert!(err.to_string().contains("drop rule names"), "{err}");
    }

    #[test]
    fn grpc_routes_get_weights_and_header_routes_from_the_same_code() {
        let router = GatewayApiRouter::new(GatewayApiRouting {
            http_route: None,
            grpc_routes: vec!["rpc".into()],
            ..routing()
        });
        let object = RoutingObject::new(GROUP, "v1", "GRPCRoute", "rpc");
        let route = json!({"spec": {"rules": [
            {"matches": [{"method": {"service": "shop.Cart"}}],
             "backendRefs": [{"name": "web-stable", "port": 9000, "weight": 100}, {"name": "web-canary", "port": 9000, "weight": 0}]},
        ]}});
        let mut read = Snapshot::default();
        read.insert(object.clone(), route.clone());
        assert_eq!(router.current_weight(&read), Ok(Some(0)));
        let weighted = apply(&route, &router.set_weight(&read, 10).unwrap());
        assert_eq!(
            weighted["spec"]["rules"][0]["backendRefs"][1]["weight"],
            json!(10)
        );
        let routes = [header_route("testers", &[("x-canary", "exact", "true")])];
        let with = apply(&route, &router.set_header_routes(&read, &routes).unwrap());
        assert_eq!(
            with["spec"]["rules"][1]["matches"],
            json!([{"method": {"service": "shop.Cart"},
            "headers": [{"type": "Exact", "name": "x-canary", "value": "true"}]}])
        );
        assert_eq!(
            with["spec"]["rules"][1]["backendRefs"],
            json!([{"name": "web-canary", "port": 9000, "weight": 1}])
        );
    }

    fn workload() -> Workload {
        Workload {
            selector: [("app".to_string(), "web".to_string())].into(),
            port: 8080,
        }
    }

    fn service(name: &str, subset: &str, owned: bool) -> Value {
        let mut service = json!({"metadata": {"name": name}, "spec": {
            "selector": {"app": "web", SUBSET_LABEL: subset},
            "ports": [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}],
        }});
        if owned {
            service["metadata"]["ownerReferences"] = json!([{"apiVersion": "canary.dev/v1alpha1", "kind": "Canary", "name": "web", "uid": "u"}]);
        }
        service
    }

    fn with_services(stable: Option<Value>, canary: Option<Value>) -> Snapshot {
        let mut read = snapshot(http_route());
        for (name, value) in [("web-stable", stable), ("web-canary", canary)] {
            if let Some(value) = value {
                read.insert(RoutingObject::new("", "v1", "Service", name), value);
            }
        }
        read
    }

    #[test]
    fn created_services_are_applied_only_when_they_differ() {
        let router = GatewayApiRouter::new(GatewayApiRouting {
            create_services: true,
            ..routing()
        });
        let mut other_port = service("web-canary", "canary", true);
        other_port["spec"]["ports"][0]["targetPort"] = json!(9090);
        let mut other_selector = service("web-stable", "stable", true);
        other_selector["spec"]["selector"]["version"] = json!("v1");
        let cases: [(&str, Snapshot, &[&str]); 4] = [
            (
                "none there",
                with_services(None, None),
                &["web-stable", "web-canary"],
            ),
            (
                "both right",
                with_services(
                    Some(service("web-stable", "stable", true)),
                    Some(service("web-canary", "canary", true)),
                ),
                &[],
            ),
            (
                "a port changed",
                with_services(
                    Some(service("web-stable", "stable", true)),
                    Some(other_port),
                ),
                &["web-canary"],
            ),
            (
                "a selector changed",
                with_services(
                    Some(other_selector),
                    Some(service("web-canary", "canary", true)),
                ),
                &["web-stable"],
            ),
        ];
        for (case, read, expected) in cases {
            let writes = router.prepare(&read, &workload()).unwrap();
            let applied: Vec<&str> = writes.iter().map(|w| w.object().name.as_str()).collect();
            assert_eq!(applied, expected, "{case}");
            for write in &writes {
                let RouterWrite::Apply { body, object } = write else {
                    panic!("{case}: {write:?}")
                };
                let subset = if object.name == "web-stable" {
                    "stable"
                } else {
                    "canary"
                };
                assert_eq!(
                    body["spec"]["selector"],
                    json!({"app": "web", SUBSET_LABEL: subset}),
                    "{case}"
                );
                assert_eq!(
                    body["spec"]["ports"],
                    json!([{"port": 8080, "targetPort": 8080, "protocol": "TCP"}]),
                    "{case}"
                );
            }
        }
        let err = router
            .prepare(
                &with_services(Some(service("web-stable", "stable", false)), None),
                &workload(),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Service web-stable already exists and was not created by a Canary"),
            "{err}"
        );
        let err = router
            .prepare(&with_services(None, None), &Workload::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Service web-stable cannot be created"),
            "{err}"
        );
    }

    #[test]
    fn the_users_services_must_exist_and_tell_the_versions_apart() {
        let router = GatewayApiRouter::new(routing());
        let mut both = service("web-canary", "canary", false);
        both["spec"]["selector"] = json!({"app": "web"});
        let cases: [(&str, Snapshot, Option<&str>); 4] = [
            (
                "both there",
                with_services(
                    Some(service("web-stable", "stable", false)),
                    Some(service("web-canary", "canary", false)),
                ),
                None,
            ),
            (
                "stable missing",
                with_services(None, Some(service("web-canary", "canary", false))),
                Some("Service web-stable (trafficRouting.gatewayAPI.stableService) does not exist"),
            ),
            (
                "canary missing",
                with_services(Some(service("web-stable", "stable", false)), None),
                Some("Service web-canary (trafficRouting.gatewayAPI.canaryService) does not exist"),
            ),
            (
                "canary selects both versions",
                with_services(Some(service("web-stable", "stable", false)), Some(both)),
                Some(
                    "Service web-canary (trafficRouting.gatewayAPI.canaryService) does not select only the canary pods: add canary.dev/subset: canary",
                ),
            ),
        ];
        for (case, read, expected) in cases {
            match (router.prepare(&read, &workload()), expected) {
                (Ok(writes), None) => assert_eq!(
                    writes,
                    Vec::new(),
                    "{case}: the user's Services are not written"
                ),
                (Err(err), Some(text)) => assert!(err.to_string().contains(text), "{case}: {err}"),
                (outcome, _) => panic!("{case}: {outcome:?}"),
            }
        }
    }

    #[test]
    fn release_hands_the_routes_and_services_back() {
        let router = GatewayApiRouter::new(GatewayApiRouting {
            create_services: true,
            ..routing()
        });
        let original = http_route();
        let routes = [header_route("testers", &[("x-canary", "exact", "true")])];
        let mut route = apply(
            &original,
            &router
                .set_header_routes(&snapshot(original.clone()), &routes)
                .unwrap(),
        );
        route = apply(
            &route,
            &router.set_weight(&snapshot(route.clone()), 30).unwrap(),
        );
        let mut read = with_services(
            Some(service("web-stable", "stable", true)),
            Some(service("web-canary", "canary", true)),
        );
        read.insert(
            RoutingObject::new(GROUP, "v1", "HTTPRoute", "web"),
            route.clone(),
        );
        let target: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let writes = router.release(&read, &target).unwrap();
        assert_eq!(writes.len(), 3, "{writes:?}");
        let RouterWrite::Patch { patch, .. } = &writes[0] else {
            panic!()
        };
        let mut released = route.clone();
        json_patch::patch(
            &mut released,
            &serde_json::from_value::<json_patch::Patch>(patch.clone()).unwrap(),
        )
        .unwrap();
        let mut expected = original.clone();
        expected["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(100);
        expected["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(0);
        assert_eq!(released, expected);
        for write in &writes[1..] {
            let RouterWrite::Patch { object, patch } = write else {
                panic!()
            };
            let mut service = read.get(object).unwrap().clone();
            json_patch::patch(
                &mut service,
                &serde_json::from_value::<json_patch::Patch>(patch.clone()).unwrap(),
            )
            .unwrap();
            assert_eq!(
                service["spec"]["selector"],
                json!({"app": "web"}),
                "{object}"
            );
            assert!(
                service["metadata"].get("ownerReferences").is_none(),
                "{object}: {service}"
            );
        }
        // Handed back already: nothing to write.
        let mut done = Snapshot::default();
        done.insert(
            RoutingObject::new(GROUP, "v1", "HTTPRoute", "web"),
            released,
        );
        assert_eq!(router.release(&done, &target), Ok(Vec::new()));
    }

    #[test]
    fn prefixes_become_anchored_regular_expressions_of_the_literal_text() {
        let cases = [
            ("beta", "^beta.*"),
            ("v1.2+", "^v1\\.2\\+.*"),
            (
                "a(b)|[c]{d}^$*?\\",
                "^a\\(b\\)\\|\\[c\\]\\{d\\}\\^\\$\\*\\?\\\\.*",
            ),
        ];
        for (prefix, expected) in cases {
            let route = header_route("p", &[("x", "prefix", prefix)]);
            let object = RoutingObject::new(GROUP, "v1", "HTTPRoute", "web");
            let matches = header_matches(&object, &route).unwrap();
            assert_eq!(matches[0]["value"], json!(expected), "{prefix}");
            // The same text is matched literally by a regular expression engine.
            let re = regex::Regex::new(expected).unwrap();
            assert!(
                re.is_match(&format!("{prefix}tail")) && !re.is_match(&format!("x{prefix}")),
                "{prefix}"
            );
        }
    }

    #[test]
    fn header_rule_names_are_valid_and_distinct() {
        let pattern =
            regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
                .unwrap();
        let long = "x".repeat(63);
        let names = ["testers", "Testers", "testers.", "-", "ünï", long.as_str()];
        let rules: Vec<String> = names.iter().map(|n| header_rule_name(n, 0)).collect();
        assert_eq!(rules[0], "canary.dev.header.testers");
        for rule in &rules {
            assert!(pattern.is_match(rule) && rule.len() <= 253, "{rule}");
        }
        let distinct: std::collections::BTreeSet<&String> = rules.iter().collect();
        assert_eq!(distinct.len(), rules.len(), "{rules:?}");
        assert_eq!(
            header_rule_name("testers", 2),
            "canary.dev.header.testers.2"
        );
    }
}
