//! Gateway API: the weights of the stable and canary Service backendRefs in the rules of
//! HTTPRoutes (and GRPCRoutes), which Istio, Envoy Gateway, Cilium, Kong, Traefik, NGINX
//! Gateway Fabric and Linkerd all implement.
//!
//! A managed rule is one whose backendRefs name both Services; rules that name only one of
//! them (or neither) are left alone. `rules` and `backendRefs` are atomic lists in the
//! Gateway API CRDs, so, as with Istio, the controller writes JSON Patches that change only
//! the weights, each guarded by `test` operations on the backend it changes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    Capabilities, Granularity, RouterError, RouterWrite, RoutingObject, Snapshot, TrafficRouter,
    Workload,
};
use crate::api::canary::{GatewayApiRouting, HeaderRoute};

const GROUP: &str = "gateway.networking.k8s.io";

/// The Gateway API router of one Canary.
pub struct GatewayApiRouter {
    routing: GatewayApiRouting,
}

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

    /// The managed rules of `route`: `(rule index, stable backend index, canary backend
    /// index, rule)`.
    fn managed_rules<'a>(
        &self,
        object: &RoutingObject,
        route: &'a Value,
    ) -> Result<Vec<(usize, usize, usize, &'a Value)>, RouterError> {
        let rules: Vec<(usize, usize, usize, &Value)> = route
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
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

impl TrafficRouter for GatewayApiRouter {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            granularity: Granularity::Exact,
            header_routes: false,
        }
    }

    fn objects(&self) -> Vec<RoutingObject> {
        self.routes()
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
        _read: &Snapshot,
        _workload: &Workload,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        Ok(Vec::new())
    }

    fn set_weight(&self, read: &Snapshot, weight: u8) -> Result<Vec<RouterWrite>, RouterError> {
        let canary_weight = u64::from(weight.min(100));
        let stable_weight = 100 - canary_weight;
        let mut writes = Vec::new();
        for object in self.routes() {
            let route = read.require(&object)?;
            let mut ops = Vec::new();
            for (i, stable, canary, rule) in self.managed_rules(&object, route)? {
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
        _read: &Snapshot,
        routes: &[HeaderRoute],
    ) -> Result<Vec<RouterWrite>, RouterError> {
        if routes.is_empty() {
            return Ok(Vec::new());
        }
        Err(RouterError::Unusable(
            "the Gateway API router does not serve header routes yet".into(),
        ))
    }

    fn release(
        &self,
        _read: &Snapshot,
        _target_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        // The weights went to stable before; the routes stay as the user wrote them.
        Ok(Vec::new())
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
}
