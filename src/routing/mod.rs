//! Traffic routers: where the stable/canary split lives. One file per router, each behind
//! [`TrafficRouter`]; reconcile asks the one the Canary's spec chose ([`router_for`]) and
//! knows no router by name, and [`crate::rollout::plan`] knows only its [`Capabilities`].
//!
//! A router is pure: it names the objects it needs read ([`TrafficRouter::objects`]), and
//! from what was read ([`Snapshot`]) it says what the routing holds and which writes
//! ([`RouterWrite`]) make it hold something else. The controller does the I/O. So every
//! router is tested table-driven, and every write is one the router can justify: a JSON
//! Patch guarded by `test` operations on what it changes (the objects' lists are atomic, so
//! server-side apply would take them whole from their owner), or a server-side apply of an
//! object the controller owns.

pub mod gateway_api;
pub mod istio;
pub mod ownership;
pub mod replicas;
pub mod service_switch;

use std::collections::BTreeMap;

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::api::canary::{CanarySpec, HeaderRoute};

/// How a router realises a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Any whole percent, in the routing objects; the canary's pods are extra to stable's.
    Exact,
    /// The canary's share of the pods behind one Service: stable gives up the pods the
    /// canary gets, and a weight is as fine as the service's size allows.
    Replicas,
    /// All or nothing (blue-green): 0 or 100, by which version a Service selects. The
    /// canary's pods are extra to stable's and run at the service's full size before they
    /// get the traffic.
    Switch,
}

/// What a router can do, for the rollout to plan with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub granularity: Granularity,
    /// Whether `setHeaderRoute` steps can be served.
    pub header_routes: bool,
}

/// An object a router reads and writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoutingObject {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub name: String,
}

impl RoutingObject {
    pub fn new(group: &str, version: &str, kind: &str, name: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            &self.group,
            &self.version,
            &self.kind,
        ))
    }
}

impl std::fmt::Display for RoutingObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The router's objects as read, as JSON; an object that does not exist is absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    objects: BTreeMap<RoutingObject, Value>,
}

impl Snapshot {
    pub fn insert(&mut self, object: RoutingObject, value: Value) {
        self.objects.insert(object, value);
    }

    pub fn get(&self, object: &RoutingObject) -> Option<&Value> {
        self.objects.get(object)
    }

    /// The object, or an error that says it is missing and what to do.
    pub fn require(&self, object: &RoutingObject) -> Result<&Value, RouterError> {
        self.get(object)
            .ok_or_else(|| RouterError::Missing(object.clone()))
    }
}

/// A change to a routing object.
#[derive(Clone, Debug, PartialEq)]
pub enum RouterWrite {
    /// A JSON Patch, guarded by `test` operations on the entries it changes: if the object
    /// changed since it was read, the API server refuses it and the next reconcile computes
    /// it again from a fresh read.
    Patch { object: RoutingObject, patch: Value },
    /// A server-side apply of a whole object the controller owns (e.g. a Service it creates),
    /// with an owner reference to the Canary added by the controller.
    Apply { object: RoutingObject, body: Value },
}

impl RouterWrite {
    pub fn object(&self) -> &RoutingObject {
        match self {
            RouterWrite::Patch { object, .. } | RouterWrite::Apply { object, .. } => object,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("{0} does not exist: create it, or fix its name in spec.trafficRouting")]
    Missing(RoutingObject),
    /// The object is there but cannot carry the split; says which and what to do.
    #[error("{0}")]
    Unusable(String),
}

/// What a router may need of the Canary besides its routing spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// The target Deployment's selector (`matchLabels`): the managed pods carry these
    /// labels plus `canary.dev/subset`.
    pub selector: BTreeMap<String, String>,
    /// The service's port (`spec.service.port`).
    pub port: u16,
}

/// A router: where one Canary's split lives. Everything is computed from a [`Snapshot`] of
/// [`Self::objects`]; an implementation does no I/O.
pub trait TrafficRouter: Send + Sync {
    /// How the spec names it (`istio`, `gatewayAPI`; `replicas` without `trafficRouting`).
    fn name(&self) -> &'static str;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// The objects it needs read, for every other method.
    fn objects(&self) -> Vec<RoutingObject>;

    /// The canary's weight the routing holds now; `None` when no object holds one (the split
    /// by replicas: the pods are the weight).
    fn current_weight(&self, read: &Snapshot) -> Result<Option<u8>, RouterError>;

    /// Writes that make the routing able to split (subsets that select the managed pods,
    /// Services for them); applied before any weight, empty once in place.
    fn prepare(
        &self,
        read: &Snapshot,
        workload: &Workload,
    ) -> Result<Vec<RouterWrite>, RouterError>;

    /// Writes that give the canary `weight` percent (stable the rest); empty when the
    /// routing already does.
    fn set_weight(&self, read: &Snapshot, weight: u8) -> Result<Vec<RouterWrite>, RouterError>;

    /// Writes that make the header routes to the canary exactly `routes` (those the
    /// controller added and that are not in `routes` go); empty when already so. Only
    /// called when [`Capabilities::header_routes`].
    fn set_header_routes(
        &self,
        read: &Snapshot,
        routes: &[HeaderRoute],
    ) -> Result<Vec<RouterWrite>, RouterError>;

    /// Writes that hand the service back when the Canary goes (all traffic to what the
    /// target's pods serve: `target_labels` select them).
    fn release(
        &self,
        read: &Snapshot,
        target_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<RouterWrite>, RouterError>;
}

/// `set_header_routes` of a router that cannot route by header: no routes is nothing to do;
/// any route is refused saying `why`.
pub fn without_header_routes(
    routes: &[HeaderRoute],
    why: &str,
) -> Result<Vec<RouterWrite>, RouterError> {
    if routes.is_empty() {
        Ok(Vec::new())
    } else {
        Err(RouterError::Unusable(why.into()))
    }
}

/// The kinds of every router's objects: the controller watches them, so that a change made
/// by hand or by a GitOps sync is seen at once.
pub fn watched_kinds() -> Vec<GroupVersionKind> {
    let mut kinds = istio::KINDS.to_vec();
    kinds.extend_from_slice(&gateway_api::ROUTE_KINDS);
    // Not Services (blue-green's, Gateway API's): the controller may not list or watch every
    // Service of the cluster; a hand edit of a selector is set back at the next reconcile.
    kinds
        .into_iter()
        .map(|(group, version, kind)| GroupVersionKind::gvk(group, version, kind))
        .collect()
}

/// The router `spec` chose.
pub fn router_for(spec: &CanarySpec) -> Box<dyn TrafficRouter> {
    if let Some(blue_green) = spec.blue_green() {
        // The CRD admits no trafficRouting beside it.
        return Box::new(service_switch::ServiceSwitchRouter::new(blue_green.clone()));
    }
    match &spec.traffic_routing {
        // The CRD admits exactly one router; `trafficRouting: {}` (from before the rule)
        // splits by replicas, as without it.
        Some(routing) => match (&routing.istio, &routing.gateway_api) {
            (Some(istio), _) => Box::new(istio::IstioRouter::new(istio.clone())),
            (None, Some(gateway)) => Box::new(gateway_api::GatewayApiRouter::new(gateway.clone())),
            (None, None) => Box::new(replicas::ReplicaRouter),
        },
        None => Box::new(replicas::ReplicaRouter),
    }
}

/// What the spec's router can do, without building it.
pub fn capabilities_of(spec: &CanarySpec) -> Capabilities {
    router_for(spec).capabilities()
}
