//! The N services under test, in the namespace `bench`: each a Deployment (one replica), an
//! Istio DestinationRule and VirtualService, and a Canary walking 20% → pause → 50% → pause
//! with a background success-rate analysis; one AnalysisTemplate for all of them.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use canary::api::canary::{Request, RequestAction};
use canary::api::{AnalysisTemplate, Canary};

pub const NAMESPACE: &str = "bench";
pub const TEMPLATE: &str = "success-rate";
/// The counter the static exporter serves and the template queries.
pub const METRIC: &str = "bench_requests_total";
/// Writes in flight at once while creating or rolling the services.
const CONCURRENT_WRITES: usize = 16;

pub fn service_name(index: usize) -> String {
    format!("svc-{index:04}")
}

/// What a canary workload is called (the `{{workload}}` the template's query selects).
pub fn canary_workload(service: &str) -> String {
    format!("{service}-canary")
}

fn istio(client: &Client, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", kind);
    Api::namespaced_with(client.clone(), NAMESPACE, &ApiResource::from_gvk(&gvk))
}

pub fn virtual_services(client: &Client) -> Api<DynamicObject> {
    istio(client, "VirtualService")
}

/// The canary's weight in a VirtualService's first route (0 when absent).
pub fn canary_weight(virtual_service: &DynamicObject) -> u64 {
    virtual_service.data["spec"]["http"][0]["route"]
        .as_array()
        .and_then(|routes| {
            routes
                .iter()
                .find(|r| r["destination"]["subset"] == "canary")
        })
        .and_then(|r| r["weight"].as_u64())
        .unwrap_or(0)
}

async fn create<K>(api: &Api<K>, value: Value) -> Result<(), String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let object: K = serde_json::from_value(value).map_err(|e| format!("{name}: {e}"))?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("creating {name}: {e}")),
    }
}

/// The namespace `bench` (waiting for its default ServiceAccount, without which pods are
/// refused) and the AnalysisTemplate measuring each canary's success rate every `interval`.
pub async fn create_namespace_and_template(
    client: &Client,
    interval: Duration,
) -> Result<(), String> {
    create::<Namespace>(
        &Api::all(client.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    crate::within(
        Duration::from_secs(60),
        "the default ServiceAccount of bench",
        || async { accounts.get_opt("default").await.ok().flatten().map(|_| ()) },
    )
    .await?;
    let interval = canary::api::Duration::from(interval).to_string();
    let query = format!(
        "sum(rate({METRIC}{{namespace=\"{{{{namespace}}}}\",workload=\"{{{{workload}}}}\",code!~\"5..\"}}[20s])) / sum(rate({METRIC}{{namespace=\"{{{{namespace}}}}\",workload=\"{{{{workload}}}}\"}}[20s]))"
    );
    create::<AnalysisTemplate>(
        &Api::namespaced(client.clone(), NAMESPACE),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": TEMPLATE},
            "spec": {"metrics": [{
                "name": "success-rate",
                "interval": interval,
                "inconclusiveLimit": 3,
                "successCondition": "result[0] >= 0.95",
                "provider": {"prometheus": {"query": query}},
            }]},
        }),
    )
    .await
}

/// Creates the objects of services `0..count`, several at a time.
pub async fn create_services(
    client: &Client,
    count: usize,
    interval: Duration,
) -> Result<(), String> {
    let pause = canary::api::Duration::from(interval * 2).to_string();
    futures::stream::iter(0..count)
        .map(|index| {
            let client = client.clone();
            let pause = pause.clone();
            async move { create_service(&client, &service_name(index), &pause).await }
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn create_service(client: &Client, name: &str, pause: &str) -> Result<(), String> {
    create::<Deployment>(
        &Api::namespaced(client.clone(), NAMESPACE),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": format!("{name}:1")}]},
                },
            },
        }),
    )
    .await?;
    create::<DynamicObject>(&istio(client, "DestinationRule"), json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": {"host": name, "subsets": [{"name": "stable", "labels": {"app": name}}, {"name": "canary", "labels": {"app": name}}]},
    }))
    .await?;
    create::<DynamicObject>(
        &virtual_services(client),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name},
            "spec": {"hosts": [name], "http": [{"name": "primary", "route": [
                {"destination": {"host": name, "subset": "stable"}, "weight": 100},
                {"destination": {"host": name, "subset": "canary"}, "weight": 0},
            ]}]},
        }),
    )
    .await?;
    create::<Canary>(
        &Api::namespaced(client.clone(), NAMESPACE),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": name},
            "spec": {
                "targetRef": {"name": name},
                "service": {"port": 8080},
                "trafficRouting": {"istio": {
                    "virtualService": {"name": name, "routes": ["primary"]},
                    "destinationRule": {"name": name},
                }},
                "steps": [
                    {"setWeight": 20},
                    {"pause": {"duration": pause}},
                    {"setWeight": 50},
                    {"pause": {"duration": pause}},
                ],
                "analysis": {"templates": [{"templateName": TEMPLATE}]},
                // Pods of a thousand services may take minutes to schedule on a loaded machine.
                "progressDeadlineSeconds": 1800,
                "scaleDownDelaySeconds": 5,
            },
        }),
    )
    .await
}

/// A new revision of service `name`: the image `name:revision` on its Deployment.
pub async fn set_image(client: &Client, name: &str, revision: u32) -> Result<(), String> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": format!("{name}:{revision}")}
        ]}}}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("setting the image of Deployment {NAMESPACE}/{name}: {e}"))
}

/// Writes an abort request exactly as `canary abort` does: its own annotation
/// `request.canary.dev/<id>: abort`, by a merge patch of the Canary's metadata.
pub async fn request_abort(client: &Client, name: &str, id: String) -> Result<(), String> {
    let request = Request {
        action: RequestAction::Abort,
        id,
        step: None,
    };
    let (key, value) = request.annotation();
    let api: Api<Canary> = Api::namespaced(client.clone(), NAMESPACE);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("writing the abort request on Canary {NAMESPACE}/{name}: {e}"))
}
