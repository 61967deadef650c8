//! Blue-green's router: the split is which version the active Service selects. The user's
//! Services stay theirs; the controller adds one key to their selectors,
//! `canary.dev/subset`, which the managed pods carry: `stable` or `canary` on the active
//! Service (weight 0 or 100), always `canary` on the preview Service. Every write is a JSON
//! Patch guarded by a `test` of the selector it changes, so a Service edited since it was
//! read is never overwritten. Releasing removes the key again: the selectors are as the user
//! wrote them, selecting the target's own pods.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    Capabilities, Granularity, RouterError, RouterWrite, RoutingObject, Snapshot, TrafficRouter,
    Workload,
};
use crate::api::canary::{BlueGreen, HeaderRoute, SUBSET_LABEL};

pub struct ServiceSwitchRouter {
    blue_green: BlueGreen,
}

impl ServiceSwitchRouter {
    pub fn new(blue_green: BlueGreen) -> Self {
        Self { blue_green }
    }

    fn active(&self) -> RoutingObject {
        service(&self.blue_green.active_service)
    }

    fn preview(&self) -> Option<RoutingObject> {
        self.blue_green.preview_service.as_deref().map(service)
    }

    /// Each Service with the spec field that names it.
    fn services(&self) -> Vec<(RoutingObject, &'static str)> {
        let mut services = vec![(self.active(), "activeService")];
        services.extend(self.preview().map(|p| (p, "previewService")));
        services
    }

    /// The Service, or an error naming the field and what to do.
    fn require<'a>(
        &self,
        read: &'a Snapshot,
        object: &RoutingObject,
        field: &str,
    ) -> Result<&'a Value, RouterError> {
        read.get(object).ok_or_else(|| {
            RouterError::Unusable(format!(
                "{object} (strategy.blueGreen.{field}) does not exist: create it with a selector of the target's pods (e.g. its matchLabels), or fix the name"
            ))
        })
    }
}

fn service(name: &str) -> RoutingObject {
    RoutingObject::new("", "v1", "Service", name)
}

/// The JSON Pointer of the subset key in a Service.
fn subset_pointer() -> String {
    format!("/spec/selector/{}", SUBSET_LABEL.replace('/', "~1"))
}

fn selected_subset(service: &Value) -> Option<&str> {
    service.pointer(&subset_pointer()).and_then(Value::as_str)
}

/// A guarded patch that makes `service` select `subset`; `None` when it already does.
fn select_subset(
    object: &RoutingObject,
    field: &str,
    service: &Value,
    subset: &str,
) -> Result<Option<RouterWrite>, RouterError> {
    if selected_subset(service) == Some(subset) {
        return Ok(None);
    }
    let Some(selector) = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|s| s.keys().any(|k| k != SUBSET_LABEL))
    else {
        // Without a selector of its own the Service would select every pod of the namespace
        // carrying the subset label, other services' included.
        return Err(RouterError::Unusable(format!(
            "{object} (strategy.blueGreen.{field}) has no spec.selector of its own: give it the target's pod labels (e.g. its matchLabels)"
        )));
    };
    let patch = json!([
        {"op": "test", "path": "/spec/selector", "value": selector},
        {"op": "add", "path": subset_pointer(), "value": subset},
    ]);
    Ok(Some(RouterWrite::Patch {
        object: object.clone(),
        patch,
    }))
}

impl TrafficRouter for ServiceSwitchRouter {
    fn name(&self) -> &'static str {
        "blueGreen"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            granularity: Granularity::Switch,
            header_routes: false,
        }
    }

    fn objects(&self) -> Vec<RoutingObject> {
        self.services().into_iter().map(|(o, _)| o).collect()
    }

    fn current_weight(&self, read: &Snapshot) -> Result<Option<u8>, RouterError> {
        let active = self.require(read, &self.active(), "activeService")?;
        Ok(match selected_subset(active) {
            Some("canary") => Some(100),
            Some("stable") => Some(0),
            // Not switched yet (or the key was removed by hand): no version is chosen.
            _ => None,
        })
    }

    fn prepare(
        &self,
        read: &Snapshot,
        _workload: &Workload,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        let mut writes = Vec::new();
        if let Some(preview) = self.preview() {
            let found = self.require(read, &preview, "previewService")?;
            writes.extend(select_subset(&preview, "previewService", found, "canary")?);
        }
        // The active Service is pinned by set_weight, which always follows.
        self.require(read, &self.active(), "activeService")?;
        Ok(writes)
    }

    fn set_weight(&self, read: &Snapshot, weight: u8) -> Result<Vec<RouterWrite>, RouterError> {
        let subset = match weight {
            0 => "stable",
            100 => "canary",
            other => {
                return Err(RouterError::Unusable(format!(
                    "blue-green switches all the traffic at once: weight {other}% cannot be served (only 0 or 100)"
                )));
            }
        };
        let active = self.active();
        let found = self.require(read, &active, "activeService")?;
        Ok(select_subset(&active, "activeService", found, subset)?
            .into_iter()
            .collect())
    }

    fn set_header_routes(
        &self,
        _read: &Snapshot,
        routes: &[HeaderRoute],
    ) -> Result<Vec<RouterWrite>, RouterError> {
        super::without_header_routes(
            routes,
            "blue-green switches Services, which cannot route by header",
        )
    }

    fn release(
        &self,
        read: &Snapshot,
        _target_labels: &BTreeMap<String, String>,
    ) -> Result<Vec<RouterWrite>, RouterError> {
        // The selectors as the user wrote them select the target's own pods again.
        let mut writes = Vec::new();
        for (object, _) in self.services() {
            let Some(found) = read.get(&object) else {
                continue;
            };
            let Some(subset) = selected_subset(found) else {
                continue;
            };
            writes.push(RouterWrite::Patch {
                object,
                patch: json!([
                    {"op": "test", "path": subset_pointer(), "value": subset},
                    {"op": "remove", "path": subset_pointer()},
                ]),
            });
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blue_green(preview: bool) -> BlueGreen {
        serde_json::from_value(json!({
            "activeService": "api-active",
            "previewService": preview.then_some("api-preview"),
        }))
        .unwrap()
    }

    fn user_service(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]}})
    }

    fn snapshot(services: &[Value]) -> Snapshot {
        let mut read = Snapshot::default();
        for s in services {
            read.insert(service(s["metadata"]["name"].as_str().unwrap()), s.clone());
        }
        read
    }

    fn apply(read: &mut Snapshot, writes: &[RouterWrite]) {
        for write in writes {
            let RouterWrite::Patch { object, patch } = write else {
                panic!("only patches: {write:?}");
            };
            let mut doc = read.get(object).unwrap().clone();
            let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{object}: {e}"));
            read.insert(object.clone(), doc);
        }
    }

    fn selector(read: &Snapshot, name: &str) -> Value {
        read.get(&service(name)).unwrap()["spec"]["selector"].clone()
    }

    #[test]
    fn the_active_service_switches_between_versions_and_the_preview_selects_the_new_one() {
        let router = ServiceSwitchRouter::new(blue_green(true));
        let mut read = snapshot(&[user_service("api-active"), user_service("api-preview")]);
        assert_eq!(router.current_weight(&read).unwrap(), None);
        let mut writes = router.prepare(&read, &Workload::default()).unwrap();
        writes.extend(router.set_weight(&read, 0).unwrap());
        apply(&mut read, &writes);
        assert_eq!(
            selector(&read, "api-active"),
            json!({"app": "api", SUBSET_LABEL: "stable"})
        );
        assert_eq!(
            selector(&read, "api-preview"),
            json!({"app": "api", SUBSET_LABEL: "canary"})
        );
        assert_eq!(router.current_weight(&read).unwrap(), Some(0));
        // In place: nothing to write.
        assert!(
            router
                .prepare(&read, &Workload::default())
                .unwrap()
                .is_empty()
        );
        assert!(router.set_weight(&read, 0).unwrap().is_empty());

        // The switch is one write of the active Service.
        let switch = router.set_weight(&read, 100).unwrap();
        assert_eq!(switch.len(), 1);
        apply(&mut read, &switch);
        assert_eq!(router.current_weight(&read).unwrap(), Some(100));
        assert_eq!(
            selector(&read, "api-active"),
            json!({"app": "api", SUBSET_LABEL: "canary"})
        );

        // Released: the selectors are as written.
        let release = router.release(&read, &BTreeMap::new()).unwrap();
        apply(&mut read, &release);
        assert_eq!(selector(&read, "api-active"), json!({"app": "api"}));
        assert_eq!(selector(&read, "api-preview"), json!({"app": "api"}));
        assert!(router.release(&read, &BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn a_service_changed_since_it_was_read_is_not_overwritten() {
        let router = ServiceSwitchRouter::new(blue_green(false));
        let read = snapshot(&[user_service("api-active")]);
        let switch = router.set_weight(&read, 100).unwrap();
        let mut changed = user_service("api-active");
        changed["spec"]["selector"]["tier"] = json!("web");
        let RouterWrite::Patch { patch, .. } = &switch[0] else {
            panic!()
        };
        let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        let refused = json_patch::patch(&mut changed, &patch);
        assert!(refused.is_err(), "the guard holds: {changed}");
    }

    #[test]
    fn missing_services_partial_weights_and_selectorless_services_are_refused_by_name() {
        let router = ServiceSwitchRouter::new(blue_green(true));
        let only_active = snapshot(&[user_service("api-active")]);
        let missing = router
            .prepare(&only_active, &Workload::default())
            .unwrap_err()
            .to_string();
        assert!(
            missing
                .contains("Service api-preview (strategy.blueGreen.previewService) does not exist"),
            "{missing}"
        );
        let both = snapshot(&[user_service("api-active"), user_service("api-preview")]);
        let partial = router.set_weight(&both, 30).unwrap_err().to_string();
        assert!(partial.contains("only 0 or 100"), "{partial}");
        let bare = snapshot(&[json!({"metadata": {"name": "api-active"}, "spec": {}})]);
        let no_selector = router.set_weight(&bare, 0).unwrap_err().to_string();
        assert!(
            no_selector.contains("strategy.blueGreen.activeService) has no spec.selector"),
            "{no_selector}"
        );
        assert!(router.set_header_routes(&both, &[]).unwrap().is_empty());
    }
}
