//! The split by replicas, without a mesh: the user's one Service selects both versions' pods
//! (the managed pods carry the target's labels), so each ready pod gets an equal share of
//! the connections, and a weight is the canary's share of the service's pods. There is no
//! routing object: the rollout realises a weight by sizing the two Deployments
//! ([`crate::rollout`], [`Granularity::Replicas`]), and the weight in effect is read from
//! their ready pods. No header routes: a Service cannot route by request.

use std::collections::BTreeMap;

use super::{
    Capabilities, Granularity, RouterError, RouterWrite, RoutingObject, Snapshot, TrafficRouter,
    Workload,
};
use crate::api::canary::HeaderRoute;

pub struct ReplicaRouter;

impl TrafficRouter for ReplicaRouter {
    fn name(&self) -> &'static str {
        "replicas"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            granularity: Granularity::Replicas,
            header_routes: false,
        }
    }

    fn objects(&self) -> Vec<RoutingObject> {
        Vec::new()
    }

    fn current_weight(&self, _read: &Snapshot) -> Result<Option<u8>, RouterError> {
        Ok(None)
    }

    fn prepare(
        &self,
        _read: &Snapshot,
        _workload: &Workload,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        Ok(Vec::new())
    }

    fn set_weight(&self, _read: &Snapshot, _weight: u8) -> Result<Vec<RouterWrite>, RouterError> {
        // The rollout sizes the Deployments for the weight; nothing to route.
        Ok(Vec::new())
    }

    fn set_header_routes(
        &self,
        _read: &Snapshot,
        routes: &[HeaderRoute],
    ) -> Result<Vec<RouterWrite>, RouterError> {
        super::without_header_routes(
            routes,
            "without spec.trafficRouting the split is by replicas behind one Service, which cannot route by header: use istio or gatewayAPI for setHeaderRoute",
        )
    }

    fn release(
        &self,
        _read: &Snapshot,
        _target_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        Ok(Vec::new())
    }
}
