//! The controller's view of the cluster: watch-fed stores of every kind a Canary reads
//! (Deployments, HPAs, analysis templates, routing objects), so that a reconcile reads from
//! memory and sends the API server only its writes. Each store's watch also wakes the
//! Canaries a changed object concerns, within a second of the change.
//!
//! Reading from a cache has one hazard: right after a write, the cache may not show it yet.
//! [`PendingWrites`] remembers each write until the cache shows it, and reconcile does not
//! plan from a cache that lags behind its own writes.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use kube::api::Api;
use kube::core::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::reconcile::{FIELD_MANAGER, HANDOVER_FIELD_MANAGER};
use super::watch_backoff;
use crate::api::canary::Canary;
use crate::api::{AnalysisTemplate, ClusterAnalysisTemplate};
use crate::routing::RoutingObject;

/// The stores reconcile reads from.
pub struct Caches {
    deployments: Store<Deployment>,
    autoscalers: Store<HorizontalPodAutoscaler>,
    templates: Store<AnalysisTemplate>,
    /// `None` for a controller confined to namespaces: cluster-scoped templates need a
    /// cluster-wide grant, so they are read when needed instead.
    cluster_templates: Option<Store<ClusterAnalysisTemplate>>,
    /// The routing kinds the API server served at start, by `(group, kind)`. A kind installed
    /// later is read directly until a restart watches it.
    routing: BTreeMap<(String, String), Store<DynamicObject>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Caches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A lookup in a kind the controller does not cache: read it from the API server.
#[derive(Debug)]
pub struct NotCached;

impl Caches {
    /// Starts a watch per kind (in `namespace`, or all), each filling its store and sending
    /// the Canaries (from `canaries`) that a changed object concerns to the returned stream.
    pub async fn start(
        client: &Client,
        namespace: Option<&str>,
        canaries: Store<Canary>,
    ) -> (Self, mpsc::UnboundedReceiver<ObjectRef<Canary>>) {
        let (wake, woken) = mpsc::unbounded();
        let mut tasks = Vec::new();
        let scoped = |client: &Client| -> (Client, Option<String>) {
            (client.clone(), namespace.map(str::to_string))
        };

        let deployments = {
            let store = canaries.clone();
            let (reader, task) = spawn_reflector(
                "Deployment",
                api(scoped(client)),
                (),
                slim_deployment,
                wake.clone(),
                move |deployment: &Deployment| super::canaries_deploying(&store, deployment),
            );
            tasks.push(task);
            reader
        };
        let autoscalers = {
            let store = canaries.clone();
            let (reader, task) = spawn_reflector(
                "HorizontalPodAutoscaler",
                api(scoped(client)),
                (),
                |hpa: &mut HorizontalPodAutoscaler| slim_metadata(&mut hpa.metadata),
                wake.clone(),
                move |hpa: &HorizontalPodAutoscaler| super::canaries_autoscaled_by(&store, hpa),
            );
            tasks.push(task);
            reader
        };
        let templates = {
            let store = canaries.clone();
            let (reader, task) = spawn_reflector(
                "AnalysisTemplate",
                api(scoped(client)),
                (),
                |template: &mut AnalysisTemplate| slim_metadata(&mut template.metadata),
                wake.clone(),
                move |template: &AnalysisTemplate| {
                    let namespace = template.namespace();
                    super::canaries_using(&store, namespace.as_deref(), &template.name_any(), false)
                },
            );
            tasks.push(task);
            reader
        };
        let cluster_templates = match namespace {
            Some(_) => None,
            None => {
                let store = canaries.clone();
                let (reader, task) = spawn_reflector(
                    "ClusterAnalysisTemplate",
                    Api::<ClusterAnalysisTemplate>::all(client.clone()),
                    (),
                    |template: &mut ClusterAnalysisTemplate| slim_metadata(&mut template.metadata),
                    wake.clone(),
                    move |template: &ClusterAnalysisTemplate| {
                        super::canaries_using(&store, None, &template.name_any(), true)
                    },
                );
                tasks.push(task);
                Some(reader)
            }
        };
        let mut routing = BTreeMap::new();
        for gvk in crate::routing::watched_kinds() {
            let resource = match kube::discovery::pinned_kind(client, &gvk).await {
                Ok((resource, _)) => resource,
                Err(e) => {
                    info!(kind = gvk.kind, group = gvk.group, error = %e, "not served by the API server: not watched");
                    continue;
                }
            };
            let objects: Api<DynamicObject> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let store = canaries.clone();
            let kind = gvk.kind.clone();
            let (reader, task) = spawn_reflector(
                "routing object",
                objects,
                resource.clone(),
                |object: &mut DynamicObject| slim_metadata(&mut object.metadata),
                wake.clone(),
                move |object: &DynamicObject| {
                    let namespace = object.namespace().unwrap_or_default();
                    let name = crate::routing::ownership::object_key(&kind, &object.name_any());
                    super::canaries_naming(&store, &namespace, &name)
                },
            );
            tasks.push(task);
            routing.insert((gvk.group, gvk.kind), reader);
        }
        let caches = Caches {
            deployments,
            autoscalers,
            templates,
            cluster_templates,
            routing,
            tasks,
        };
        (caches, woken)
    }

    /// Resolves once every store holds its first complete list: planning from a store still
    /// filling would take a Deployment not listed yet for a missing one.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        ready(&self.deployments).await?;
        ready(&self.autoscalers).await?;
        ready(&self.templates).await?;
        if let Some(store) = &self.cluster_templates {
            ready(store).await?;
        }
        for store in self.routing.values() {
            ready(store).await?;
        }
        Ok(())
    }

    /// The resourceVersion of a cached Deployment, HPA or routing object (of `routing`, the
    /// objects of the Canary's router), without copying the object.
    pub fn version_of(
        &self,
        namespace: &str,
        (kind, name): (&str, &str),
        routing: &[RoutingObject],
    ) -> Option<String> {
        match kind {
            "Deployment" => self
                .deployments
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|d| resource_version(&*d)),
            "HorizontalPodAutoscaler" => self
                .autoscalers
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|h| resource_version(&*h)),
            _ => {
                let object = routing.iter().find(|o| o.kind == kind && o.name == name)?;
                let store = self
                    .routing
                    .get(&(object.group.clone(), object.kind.clone()))?;
                let reference = ObjectRef::new_with(name, object.api_resource()).within(namespace);
                store.get(&reference).and_then(|o| resource_version(&*o))
            }
        }
    }

    /// The resourceVersion of a cached template (`Err` if its kind is not cached).
    pub fn template_version(
        &self,
        namespace: &str,
        name: &str,
        cluster_scope: bool,
    ) -> Result<Option<String>, NotCached> {
        if cluster_scope {
            let store = self.cluster_templates.as_ref().ok_or(NotCached)?;
            return Ok(store
                .get(&ObjectRef::new(name))
                .and_then(|t| resource_version(&*t)));
        }
        Ok(self
            .templates
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|t| resource_version(&*t)))
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Deployment> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
            .map(|d| (*d).clone())
    }

    /// Every HPA of `namespace`.
    pub fn autoscalers(&self, namespace: &str) -> Vec<HorizontalPodAutoscaler> {
        self.autoscalers
            .state()
            .iter()
            .filter(|h| h.metadata.namespace.as_deref() == Some(namespace))
            .map(|h| (**h).clone())
            .collect()
    }

    pub fn autoscaler(&self, namespace: &str, name: &str) -> Option<HorizontalPodAutoscaler> {
        self.autoscalers
            .get(&ObjectRef::new(name).within(namespace))
            .map(|h| (*h).clone())
    }

    pub fn template(&self, namespace: &str, name: &str) -> Option<AnalysisTemplate> {
        self.templates
            .get(&ObjectRef::new(name).within(namespace))
            .map(|t| (*t).clone())
    }

    pub fn cluster_template(
        &self,
        name: &str,
    ) -> Result<Option<ClusterAnalysisTemplate>, NotCached> {
        let store = self.cluster_templates.as_ref().ok_or(NotCached)?;
        Ok(store.get(&ObjectRef::new(name)).map(|t| (*t).clone()))
    }

    pub fn routing_object(
        &self,
        namespace: &str,
        object: &RoutingObject,
    ) -> Result<Option<DynamicObject>, NotCached> {
        let store = self
            .routing
            .get(&(object.group.clone(), object.kind.clone()))
            .ok_or(NotCached)?;
        let reference = ObjectRef::new_with(&object.name, object.api_resource()).within(namespace);
        Ok(store.get(&reference).map(|o| (*o).clone()))
    }
}

/// Waits for `store`'s first list. Its ready signal wakes only its latest waiter, so the wait
/// asks again now and then rather than once (see `controller::run`).
async fn ready<K>(store: &Store<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    loop {
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await
        {
            return result;
        }
    }
}

/// An `Api` of `K` in the namespace, or across all.
fn api<K>((client, namespace): (Client, Option<String>)) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, &ns),
        None => Api::all(client),
    }
}

/// Watches `api` into a store; after the first list, each changed object's Canaries (by
/// `concerns`) are sent to `wake`. The first list wakes nothing: every Canary is reconciled
/// when the controller starts anyway. A re-list (after an expired resourceVersion or an API
/// server restart) wakes what it lists, since changes may have been missed meanwhile.
fn spawn_reflector<K, Slim, Concerns>(
    what: &'static str,
    api: Api<K>,
    dynamic_type: K::DynamicType,
    slim: Slim,
    wake: mpsc::UnboundedSender<ObjectRef<Canary>>,
    concerns: Concerns,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
    Slim: FnMut(&mut K) + Send + 'static,
    Concerns: Fn(&K) -> Vec<ObjectRef<Canary>> + Send + 'static,
{
    let writer = reflector::store::Writer::new(dynamic_type);
    let reader = writer.as_reader();
    // `any_semantic`: the first list (and re-lists) come from the API server's watch cache,
    // not from etcd.
    let events = watcher::watcher(api, watcher::Config::default().any_semantic())
        .backoff(watch_backoff())
        .modify(slim)
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut listed = false;
        let mut last_error = None;
        while let Some(event) = events.next().await {
            let object = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => object,
                Ok(watcher::Event::InitApply(object)) if listed => object,
                Ok(watcher::Event::InitDone) => {
                    listed = true;
                    last_error = None;
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    // Once per change of the error: an outage would otherwise log twice a
                    // second.
                    let message = e.to_string();
                    if last_error.as_ref() != Some(&message) {
                        warn!(kind = what, error = message, "watch failed; retrying");
                        last_error = Some(message);
                    }
                    continue;
                }
            };
            for canary in concerns(&object) {
                if wake.unbounded_send(canary).is_err() {
                    return;
                }
            }
        }
    });
    (reader, task)
}

/// Drops what reconcile never reads from a cached object's metadata: the field managers'
/// records (often most of an object's size) and kubectl's copy of the last applied object.
pub fn slim_metadata(metadata: &mut ObjectMeta) {
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// [`slim_metadata`], keeping of the field managers only whether the controller applies
/// `spec.replicas` (what the hand-over to an HPA needs to know).
fn slim_deployment(deployment: &mut Deployment) {
    let kept: Vec<ManagedFieldsEntry> = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            matches!(
                m.manager.as_deref(),
                Some(FIELD_MANAGER | HANDOVER_FIELD_MANAGER)
            ) && m.operation.as_deref() == Some("Apply")
                && m.subresource.is_none()
        })
        .map(|m| ManagedFieldsEntry {
            fields_v1: m.fields_v1.as_ref().map(|f| {
                let replicas = f.0.pointer("/f:spec/f:replicas").is_some();
                FieldsV1(match replicas {
                    true => serde_json::json!({"f:spec": {"f:replicas": {}}}),
                    false => serde_json::json!({}),
                })
            }),
            ..m.clone()
        })
        .collect();
    slim_metadata(&mut deployment.metadata);
    if !kept.is_empty() {
        deployment.metadata.managed_fields = Some(kept);
    }
}

/// What identifies a written object: kind, namespace, name.
type WrittenKey = (String, String, String);

/// How long to wait for the cache to show a write before planning anyway (a watch that
/// restarts re-lists; this only bounds a wait that should last milliseconds).
const CATCH_UP: Duration = Duration::from_secs(30);

/// The writes of each Canary that its caches may not show yet.
#[derive(Default)]
pub struct PendingWrites(Mutex<BTreeMap<(String, String), Vec<PendingWrite>>>);

/// One write: the object's resourceVersion before it (`None`: it did not exist) and after it
/// (`None`: deleted).
#[derive(Clone, Debug)]
struct PendingWrite {
    object: WrittenKey,
    before: Option<String>,
    after: Option<String>,
    at: Instant,
}

impl PendingWrites {
    /// The Canary wrote `kind` `name` (in its namespace), which was at resourceVersion
    /// `before` and is at `after` now. A write that changed nothing (the same
    /// resourceVersion) is not waited for.
    pub fn wrote(
        &self,
        (namespace, canary): (&str, &str),
        (kind, name): (&str, &str),
        before: Option<String>,
        after: Option<String>,
    ) {
        if before == after {
            return;
        }
        let mut entries = self.entries();
        let writes = entries
            .entry((namespace.to_string(), canary.to_string()))
            .or_default();
        let object = (kind.to_string(), namespace.to_string(), name.to_string());
        writes.retain(|w| w.object != object);
        // Already caught up if the cache shows `after`; the first write's `before` is what
        // a lagging cache still shows.
        writes.push(PendingWrite {
            object,
            before,
            after,
            at: Instant::now(),
        });
    }

    /// The first of the Canary's writes that the cache does not show yet (`cached` gives an
    /// object's resourceVersion in the cache, `None` if absent), as `Kind name`. Writes the
    /// cache shows are forgotten.
    pub fn lagging(
        &self,
        (namespace, canary): (&str, &str),
        cached: impl Fn(&str, &str) -> Option<String>,
    ) -> Option<String> {
        let mut entries = self.entries();
        let key = (namespace.to_string(), canary.to_string());
        let writes = entries.get_mut(&key)?;
        // Caught up: the cache shows the write, or something other than what was written
        // over (a later change by someone else). A write older than CATCH_UP is given up on.
        writes.retain(|w| {
            let now = cached(&w.object.0, &w.object.2);
            let caught_up = now != w.before || now == w.after;
            !caught_up && w.at.elapsed() < CATCH_UP
        });
        let first = writes
            .first()
            .map(|w| format!("{} {}", w.object.0, w.object.2));
        if writes.is_empty() {
            entries.remove(&key);
        }
        first
    }

    pub fn forget(&self, namespace: &str, canary: &str) {
        self.entries()
            .remove(&(namespace.to_string(), canary.to_string()));
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<PendingWrite>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A Deployment's, a routing object's, … resourceVersion.
pub fn resource_version<K: Resource>(object: &K) -> Option<String> {
    object.meta().resource_version.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn a_write_is_waited_for_until_the_cache_shows_it_or_something_later() {
        let pending = PendingWrites::default();
        let canary = ("shop", "web");
        pending.wrote(canary, ("Deployment", "web-canary"), None, version("7"));
        // The cache does not have the created Deployment yet.
        assert_eq!(
            pending.lagging(canary, |_, _| None).as_deref(),
            Some("Deployment web-canary")
        );
        assert_eq!(
            pending.lagging(("shop", "api"), |_, _| None),
            None,
            "another Canary"
        );
        // It does now: forgotten.
        assert_eq!(pending.lagging(canary, |_, _| version("7")), None);
        assert_eq!(pending.lagging(canary, |_, _| None), None, "forgotten");

        pending.wrote(
            canary,
            ("VirtualService", "web"),
            version("3"),
            version("9"),
        );
        assert!(
            pending.lagging(canary, |_, _| version("3")).is_some(),
            "still the old one"
        );
        // Someone changed it after our write: the cache is past the write.
        assert_eq!(pending.lagging(canary, |_, _| version("12")), None);

        // A deletion is caught up once the cache no longer has the object.
        pending.wrote(
            canary,
            ("HorizontalPodAutoscaler", "web-stable"),
            version("4"),
            None,
        );
        assert!(pending.lagging(canary, |_, _| version("4")).is_some());
        assert_eq!(pending.lagging(canary, |_, _| None), None);

        // A write that changed nothing is not waited for.
        pending.wrote(
            canary,
            ("Deployment", "web-stable"),
            version("5"),
            version("5"),
        );
        assert_eq!(pending.lagging(canary, |_, _| version("5")), None);

        pending.wrote(
            canary,
            ("Deployment", "web-stable"),
            version("5"),
            version("6"),
        );
        pending.forget("shop", "web");
        assert_eq!(
            pending.lagging(canary, |_, _| version("5")),
            None,
            "deleted Canary"
        );
    }

    #[test]
    fn cached_deployments_keep_only_whether_the_controller_applies_their_replicas() {
        let mut deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-stable",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{…}",
                    "canary.dev/revision": "abc"
                },
                "managedFields": [
                    {"manager": FIELD_MANAGER, "operation": "Apply",
                     "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}},
                    {"manager": HANDOVER_FIELD_MANAGER, "operation": "Apply",
                     "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                    {"manager": FIELD_MANAGER, "operation": "Apply", "subresource": "status",
                     "fieldsV1": {"f:status": {}}},
                    {"manager": "kube-controller-manager", "operation": "Update",
                     "fieldsV1": {"f:status": {}}}
                ]
            }
        }))
        .unwrap();
        slim_deployment(&mut deployment);
        let kept: Vec<(Option<&str>, serde_json::Value)> = deployment
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .map(|m| (m.manager.as_deref(), m.fields_v1.clone().unwrap().0))
            .collect();
        let replicas = serde_json::json!({"f:spec": {"f:replicas": {}}});
        assert_eq!(
            kept,
            [
                (Some(FIELD_MANAGER), replicas.clone()),
                (Some(HANDOVER_FIELD_MANAGER), replicas)
            ]
        );
        assert_eq!(
            deployment.annotations().keys().collect::<Vec<_>>(),
            ["canary.dev/revision"]
        );
    }
}
