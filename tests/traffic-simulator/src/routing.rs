//! Reads the live traffic split from the router objects a mesh would obey: the HTTP route of an
//! Istio VirtualService that its simulated requests take (see [`simulated_route`]), or the
//! first rule of a Gateway API HTTPRoute.

use std::collections::BTreeMap;
use std::fmt;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::Value;

/// A router object the simulator follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteRef {
    VirtualService { namespace: String, name: String },
    HttpRoute { namespace: String, name: String },
}

impl fmt::Display for RouteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteRef::VirtualService { namespace, name } => {
                write!(f, "VirtualService {namespace}/{name}")
            }
            RouteRef::HttpRoute { namespace, name } => write!(f, "HTTPRoute {namespace}/{name}"),
        }
    }
}

/// Where a share of the traffic goes, with the identity Istio's metrics give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub workload: String,
    pub namespace: String,
    /// Fully qualified service host, as in Istio's `destination_service` label.
    pub service: String,
    /// Short service name, as in `destination_service_name`.
    pub service_name: String,
    /// The subset (VirtualService) or backend name (HTTPRoute); Istio's `destination_version`.
    pub version: String,
    pub weight: u32,
    /// The Envoy cluster a Gateway API implementation sends this backend's requests
    /// through, as Envoy Gateway names it when each backendRef has its own cluster
    /// (`httproute/<namespace>/<route>/rule/<rule>/backend/<backend>`); none for a
    /// VirtualService (Istio's sidecars report `istio_requests_total` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy_cluster: Option<String>,
}

/// How route destinations are named as workloads. VirtualService: subset `S` of host `H`
/// becomes workload `<first label of H>-<S>` unless `subset_workloads` maps `S`; HTTPRoute:
/// a backendRef's Service name is the workload unless the map names it.
#[derive(Clone, Debug, Default)]
pub struct WorkloadNames {
    pub overrides: BTreeMap<String, String>,
}

impl WorkloadNames {
    fn resolve(&self, key: &str, default: String) -> String {
        self.overrides.get(key).cloned().unwrap_or(default)
    }
}

impl RouteRef {
    fn api(&self, client: Client) -> (Api<DynamicObject>, &str) {
        let (gvk, namespace, name) = match self {
            RouteRef::VirtualService { namespace, name } => (
                GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
                namespace,
                name,
            ),
            RouteRef::HttpRoute { namespace, name } => (
                GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
                namespace,
                name,
            ),
        };
        (
            Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&gvk)),
            name.as_str(),
        )
    }

    /// Fetches the object and returns its destinations with their weights.
    pub async fn read(
        &self,
        client: Client,
        names: &WorkloadNames,
    ) -> Result<Vec<Destination>, String> {
        let (api, name) = self.api(client);
        let object = api
            .get(name)
            .await
            .map_err(|e| format!("reading {self}: {e}"))?;
        let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
        match self {
            RouteRef::VirtualService { namespace, .. } => {
                virtual_service_destinations(&spec, namespace, names)
            }
            RouteRef::HttpRoute { namespace, name } => {
                http_route_destinations(&spec, namespace, name, names)
            }
        }
        .map_err(|e| format!("{self}: {e}"))
    }
}

fn qualified_host(host: &str, namespace: &str) -> (String, String) {
    let short = host.split('.').next().unwrap_or(host).to_string();
    let service = if host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    };
    (service, short)
}

fn weight(value: Option<&Value>, default: u32) -> Result<u32, String> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| format!("weight {v} is not a non-negative integer")),
    }
}

/// The HTTP route Istio would pick for the simulated requests: the first whose match admits
/// them (routes are tried in order, first match wins). The simulated requests carry no
/// particular headers or query parameters, so a match block that tests headers or query
/// parameters does not admit them (e.g. a testers' route on `canary: "true"` above the
/// weighted route); a route without `match`, or with a block of only other conditions (URI,
/// method, …: the simulator does not model paths), does.
pub fn simulated_route(spec: &Value) -> Result<(usize, &Value), String> {
    let admits =
        |block: &Value| block.get("headers").is_none() && block.get("queryParams").is_none();
    spec.get("http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .find(
            |(_, route)| match route.get("match").and_then(Value::as_array) {
                None => true,
                Some(blocks) => blocks.is_empty() || blocks.iter().any(admits),
            },
        )
        .ok_or_else(|| "no spec.http route that requests without headers take".to_string())
}

/// Istio semantics: one destination without a weight takes all traffic; otherwise a missing
/// weight counts as 0.
pub fn virtual_service_destinations(
    spec: &Value,
    namespace: &str,
    names: &WorkloadNames,
) -> Result<Vec<Destination>, String> {
    let (index, route) = simulated_route(spec)?;
    let routes = route
        .get("route")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no spec.http[{index}].route"))?;
    let single = routes.len() == 1;
    routes
        .iter()
        .map(|route| {
            let host = route
                .pointer("/destination/host")
                .and_then(Value::as_str)
                .ok_or("a route without destination.host")?;
            let subset = route.pointer("/destination/subset").and_then(Value::as_str);
            let (service, service_name) = qualified_host(host, namespace);
            let (key, default_workload) = match subset {
                Some(s) => (s.to_string(), format!("{service_name}-{s}")),
                None => (service_name.clone(), service_name.clone()),
            };
            Ok(Destination {
                workload: names.resolve(&key, default_workload),
                namespace: namespace.to_string(),
                service,
                service_name,
                version: key,
                weight: weight(route.get("weight"), if single { 100 } else { 0 })?,
                envoy_cluster: None,
            })
        })
        .collect()
}

/// Gateway API semantics: a backendRef's weight defaults to 1. Rule 0 is followed: the
/// controller keeps the user's rules first and appends its header-route rules.
pub fn http_route_destinations(
    spec: &Value,
    namespace: &str,
    route: &str,
    names: &WorkloadNames,
) -> Result<Vec<Destination>, String> {
    let backends = spec
        .pointer("/rules/0/backendRefs")
        .and_then(Value::as_array)
        .ok_or("no spec.rules[0].backendRefs")?;
    backends
        .iter()
        .enumerate()
        .map(|(index, backend)| {
            let name = backend
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a backendRef without name")?;
            let backend_namespace = backend
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            let (service, service_name) = qualified_host(name, backend_namespace);
            Ok(Destination {
                workload: names.resolve(name, name.to_string()),
                namespace: backend_namespace.to_string(),
                service,
                service_name,
                version: name.to_string(),
                weight: weight(backend.get("weight"), 1)?,
                envoy_cluster: Some(format!(
                    "httproute/{namespace}/{route}/rule/0/backend/{index}"
                )),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn virtual_service_subsets_become_workloads_with_their_weights() {
        let spec = json!({"hosts": ["web"], "http": [{"route": [
            {"destination": {"host": "web", "subset": "stable"}, "weight": 80},
            {"destination": {"host": "web", "subset": "canary"}, "weight": 20}
        ]}]});
        let names = WorkloadNames {
            overrides: [("canary".to_string(), "web-next".to_string())].into(),
        };
        let d = virtual_service_destinations(&spec, "shop", &names).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].workload.as_str(), d[0].weight, d[0].service.as_str()),
            ("web-stable", 80, "web.shop.svc.cluster.local")
        );
        assert_eq!(
            (d[1].workload.as_str(), d[1].weight, d[1].version.as_str()),
            ("web-next", 20, "canary")
        );
    }

    #[test]
    fn a_single_unweighted_destination_takes_all_traffic() {
        let spec = json!({"http": [{"route": [{"destination": {"host": "web.other.svc.cluster.local"}}]}]});
        let d = virtual_service_destinations(&spec, "shop", &WorkloadNames::default()).unwrap();
        assert_eq!(
            (d[0].workload.as_str(), d[0].weight, d[0].service.as_str()),
            ("web", 100, "web.other.svc.cluster.local")
        );
    }

    #[test]
    fn requests_without_headers_take_the_first_route_that_admits_them() {
        let names = WorkloadNames::default();
        let split = |stable: u32, canary: u32| {
            json!([
                {"destination": {"host": "api-server", "subset": "stable"}, "weight": stable},
                {"destination": {"host": "api-server", "subset": "canary"}, "weight": canary},
            ])
        };
        let testers = json!({"match": [{"headers": {"canary": {"exact": "true"}}}],
            "route": [{"destination": {"host": "api-server", "subset": "canary"}, "weight": 100}]});
        let by_query = json!({"match": [{"queryParams": {"canary": {"exact": "1"}}}],
            "route": [{"destination": {"host": "api-server", "subset": "canary"}}]});
        let by_uri = json!({"match": [{"uri": {"prefix": "/"}}], "route": split(70, 30)});
        let cases = [
            (
                "the design's seed: header route, then the weighted route",
                json!({"http": [testers.clone(), {"route": split(90, 10)}]}),
                (90, 10),
            ),
            (
                "header and query routes skipped",
                json!({"http": [testers.clone(), by_query, {"route": split(80, 20)}]}),
                (80, 20),
            ),
            (
                "a URI match admits them (paths are not simulated)",
                json!({"http": [testers.clone(), by_uri, {"route": split(10, 90)}]}),
                (70, 30),
            ),
            (
                "one block of several without headers admits them",
                json!({"http": [{"match": [{"headers": {"a": {"exact": "b"}}}, {"uri": {"prefix": "/"}}], "route": split(60, 40)}]}),
                (60, 40),
            ),
            (
                "a lone weighted route, as before",
                json!({"http": [{"name": "primary", "route": split(100, 0)}]}),
                (100, 0),
            ),
        ];
        for (case, spec, (stable, canary)) in cases {
            let d = virtual_service_destinations(&spec, "shop", &names).unwrap();
            let weights: Vec<(&str, u32)> =
                d.iter().map(|d| (d.workload.as_str(), d.weight)).collect();
            assert_eq!(
                weights,
                [("api-server-stable", stable), ("api-server-canary", canary)],
                "{case}"
            );
        }
        let only_headers = json!({"http": [testers]});
        let err = virtual_service_destinations(&only_headers, "shop", &names).unwrap_err();
        assert!(
            err.contains("no spec.http route that requests without headers take"),
            "{err}"
        );
    }

    #[test]
    fn http_route_backends_default_to_weight_one() {
        let spec = json!({"rules": [{"backendRefs": [
            {"name": "web-stable", "port": 80},
            {"name": "web-canary", "port": 80, "weight": 3}
        ]}]});
        let d = http_route_destinations(&spec, "shop", "web", &WorkloadNames::default()).unwrap();
        let weights: Vec<(&str, u32)> = d.iter().map(|d| (d.workload.as_str(), d.weight)).collect();
        assert_eq!(weights, [("web-stable", 1), ("web-canary", 3)]);
        let clusters: Vec<Option<&str>> = d.iter().map(|d| d.envoy_cluster.as_deref()).collect();
        assert_eq!(
            clusters,
            [
                Some("httproute/shop/web/rule/0/backend/0"),
                Some("httproute/shop/web/rule/0/backend/1")
            ]
        );
    }

    #[test]
    fn malformed_routes_are_errors_not_silent_zero_traffic() {
        let names = WorkloadNames::default();
        assert!(virtual_service_destinations(&json!({}), "ns", &names).is_err());
        let negative = json!({"http": [{"route": [{"destination": {"host": "a"}, "weight": -1}]}]});
        assert!(virtual_service_destinations(&negative, "ns", &names).is_err());
        assert!(http_route_destinations(&json!({"rules": [{}]}), "ns", "web", &names).is_err());
    }
}
