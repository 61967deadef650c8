//! The split without a mesh: a Service load-balances over its ready endpoints, so each ready
//! pod its selector selects gets an equal share of the requests, whichever Deployment runs it.
//! The pods are the weights. No proxy reports these requests; the application does, so they
//! are counted in an app's own metrics by pod, as the Prometheus client libraries name them
//! (`http_requests_total{code, method}` and the `http_request_duration_seconds` histogram),
//! with the `namespace`, `service` and `pod` labels Prometheus' Kubernetes endpoints discovery
//! adds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, LogNormal, Poisson};
use serde::Serialize;

use crate::behaviour::Behaviour;
use crate::mesh::Totals;

/// The Prometheus client libraries' default buckets (seconds), as most apps expose them.
pub const DEFAULT_DURATION_BUCKETS_S: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Service the simulator sends requests to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service {}/{}", self.namespace, self.name)
    }
}

/// A ready pod behind a Service, and the workload whose behaviour it answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyPod {
    pub name: String,
    pub namespace: String,
    /// The Service it was reached through: Prometheus' endpoints discovery labels an app's
    /// series with it (`service`), so the same pod behind two Services (blue-green's active
    /// and preview) is counted per Service.
    pub service: String,
    /// The Deployment that runs it (its ReplicaSet's owner), else the ReplicaSet or other
    /// owner, else the pod itself: `PUT /workloads/<workload>` changes its behaviour.
    pub workload: String,
}

impl ServiceRef {
    /// The pods the Service's selector selects that are ready to serve, sorted by name.
    pub async fn ready_pods(&self, client: Client) -> Result<Vec<ReadyPod>, String> {
        let services: Api<Service> = Api::namespaced(client.clone(), &self.namespace);
        let service = services
            .get(&self.name)
            .await
            .map_err(|e| format!("reading {self}: {e}"))?;
        let selector = service
            .spec
            .and_then(|s| s.selector)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                format!("{self} has no spec.selector: the simulator follows selected pods only")
            })?;
        let pods: Api<Pod> = Api::namespaced(client, &self.namespace);
        let listed = pods
            .list(&ListParams::default().labels(&label_selector(&selector)))
            .await
            .map_err(|e| format!("listing the pods of {self}: {e}"))?;
        let mut ready: Vec<ReadyPod> = listed
            .items
            .iter()
            .filter(|pod| is_ready(pod))
            .map(|pod| ReadyPod {
                name: pod.metadata.name.clone().unwrap_or_default(),
                namespace: self.namespace.clone(),
                service: self.name.clone(),
                workload: workload_of(pod),
            })
            .collect();
        ready.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ready)
    }
}

/// `k=v,k2=v2`, the label selector a Service's `spec.selector` means.
pub fn label_selector(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a Service would send it requests: its `Ready` condition is true and it is not
/// terminating (an endpoint of a terminating pod is not `ready`).
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// The Deployment that runs `pod`: its ReplicaSet owner's name without the
/// `-<pod-template-hash>` the Deployment controller appends. A pod of a bare ReplicaSet (or
/// another owner) answers as that owner, an unowned pod as itself.
pub fn workload_of(pod: &Pod) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return pod.metadata.name.clone().unwrap_or_default();
    };
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match hash {
        Some(hash) if owner.kind == "ReplicaSet" => owner
            .name
            .strip_suffix(&format!("-{hash}"))
            .unwrap_or(&owner.name)
            .to_string(),
        _ => owner.name.clone(),
    }
}

/// The app's own labels on `http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub namespace: String,
    pub service: String,
    pub pod: String,
    pub method: String,
    pub code: String,
}

/// The labels of `http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub namespace: String,
    pub service: String,
    pub pod: String,
    pub method: String,
}

fn app_histogram() -> Histogram {
    Histogram::new(DEFAULT_DURATION_BUCKETS_S)
}

/// The requests a Service spreads over its ready pods, counted as the apps count them.
pub struct PodTraffic {
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    rng: StdRng,
    totals: BTreeMap<String, Totals>,
}

impl PodTraffic {
    pub fn new(registry: &mut Registry, seed: u64) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations =
            Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                app_histogram,
            );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "http_requests",
            "HTTP requests served, as the application counts them",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration in seconds, as the application measures it",
            durations.clone(),
        );
        PodTraffic {
            requests,
            durations,
            // Another stream than the mesh's, so both modes together stay repeatable.
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            totals: BTreeMap::new(),
        }
    }

    /// Simulates `period` of traffic at `rps` requests per second sent to one Service whose
    /// ready pods are `pods`: each pod an equal share (multinomially), answered by its
    /// workload's behaviour. Without a ready pod nothing is served (and nothing counted: the
    /// client sees connection errors, which no app metric shows).
    pub fn simulate(
        &mut self,
        rps: f64,
        period: Duration,
        pods: &[ReadyPod],
        behaviour_of: impl Fn(&str) -> Behaviour,
    ) {
        let mean = rps * period.as_secs_f64();
        if pods.is_empty() || mean <= 0.0 {
            return;
        }
        // Request arrivals are Poisson, so a pod's share is noisy as in production.
        let count = Poisson::new(mean)
            .map(|p| p.sample(&mut self.rng) as u64)
            .unwrap_or(0);
        let mut left = count;
        for (index, pod) in pods.iter().enumerate() {
            let pods_left = (pods.len() - index) as f64;
            let served = if index + 1 == pods.len() {
                left
            } else {
                Binomial::new(left, 1.0 / pods_left)
                    .map(|b| b.sample(&mut self.rng))
                    .unwrap_or(0)
            };
            left -= served;
            let behaviour = behaviour_of(&pod.workload);
            let (mu, sigma) = behaviour.log_normal();
            let latency_ms = LogNormal::new(mu, sigma).expect("validated behaviour");
            let errors = Binomial::new(served, behaviour.error_rate)
                .map(|b| b.sample(&mut self.rng))
                .unwrap_or(0);
            let histogram = self.durations.get_or_create(&DurationLabels {
                namespace: pod.namespace.clone(),
                service: pod.service.clone(),
                pod: pod.name.clone(),
                method: "GET".to_string(),
            });
            for (code, n) in [(behaviour.error_code, errors), (200, served - errors)] {
                if n == 0 {
                    continue;
                }
                self.requests
                    .get_or_create(&RequestLabels {
                        namespace: pod.namespace.clone(),
                        service: pod.service.clone(),
                        pod: pod.name.clone(),
                        method: "GET".to_string(),
                        code: code.to_string(),
                    })
                    .inc_by(n);
                for _ in 0..n {
                    histogram.observe(latency_ms.sample(&mut self.rng) / 1000.0);
                }
            }
            let totals = self.totals.entry(pod.workload.clone()).or_default();
            totals.requests += served;
            totals.errors += errors;
        }
    }

    /// Requests and errors per workload since start.
    pub fn totals(&self) -> &BTreeMap<String, Totals> {
        &self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use serde_json::json;

    fn pod(name: &str, workload: &str) -> ReadyPod {
        ReadyPod {
            name: name.to_string(),
            namespace: "shop".to_string(),
            service: "web".to_string(),
            workload: workload.to_string(),
        }
    }

    fn pod_object(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_deployments_pod_answers_as_that_deployment() {
        let p = pod_object(json!({
            "metadata": {
                "name": "order-service-canary-5f7b8c9d4-x2x7q",
                "labels": {"app": "order-service", "pod-template-hash": "5f7b8c9d4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "order-service-canary-5f7b8c9d4", "uid": "1", "controller": true}],
            },
        }));
        assert_eq!(workload_of(&p), "order-service-canary");
        let bare = pod_object(json!({"metadata": {"name": "debug"}}));
        assert_eq!(workload_of(&bare), "debug");
    }

    #[test]
    fn only_ready_pods_that_are_not_terminating_serve() {
        let ready = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        let unready = json!({"conditions": [{"type": "Ready", "status": "False"}]});
        assert!(is_ready(&pod_object(
            json!({"metadata": {"name": "a"}, "status": ready})
        )));
        assert!(!is_ready(&pod_object(
            json!({"metadata": {"name": "a"}, "status": unready})
        )));
        assert!(!is_ready(&pod_object(json!({"metadata": {"name": "a"}}))));
        assert!(!is_ready(&pod_object(json!({
            "metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": ready,
        }))));
        let selector = BTreeMap::from([("app".into(), "x".into()), ("tier".into(), "web".into())]);
        assert_eq!(label_selector(&selector), "app=x,tier=web");
    }

    #[test]
    fn each_ready_pod_gets_an_equal_share_and_its_workloads_behaviour() {
        let mut registry = Registry::default();
        let mut traffic = PodTraffic::new(&mut registry, 7);
        // The seed's split: nine stable pods and one canary pod behind one Service.
        let mut pods: Vec<ReadyPod> = (0..9)
            .map(|i| {
                pod(
                    &format!("order-service-stable-abc-{i}"),
                    "order-service-stable",
                )
            })
            .collect();
        pods.push(pod("order-service-canary-def-0", "order-service-canary"));
        for _ in 0..100 {
            traffic.simulate(1000.0, Duration::from_secs(1), &pods, |w| Behaviour {
                error_rate: if w == "order-service-canary" {
                    0.2
                } else {
                    0.0
                },
                ..Behaviour::default()
            });
        }
        let stable = &traffic.totals()["order-service-stable"];
        let canary = &traffic.totals()["order-service-canary"];
        let share = canary.requests as f64 / (stable.requests + canary.requests) as f64;
        assert!((share - 0.10).abs() < 0.005, "canary share {share}");
        assert_eq!(stable.errors, 0);
        let rate = canary.errors as f64 / canary.requests as f64;
        assert!((rate - 0.2).abs() < 0.01, "canary error rate {rate}");
    }

    #[test]
    fn exposition_is_an_apps_own_metrics_by_pod() {
        let mut registry = Registry::default();
        let mut traffic = PodTraffic::new(&mut registry, 7);
        traffic.simulate(
            200.0,
            Duration::from_secs(1),
            &[pod("web-abc-1", "web")],
            |_| Behaviour {
                error_rate: 0.5,
                ..Behaviour::default()
            },
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for needle in [
            "http_requests_total{namespace=\"shop\",service=\"web\",pod=\"web-abc-1\",method=\"GET\",code=\"200\"}",
            "code=\"503\"",
            "http_request_duration_seconds_bucket{le=\"0.025\",namespace=\"shop\",service=\"web\",pod=\"web-abc-1\",method=\"GET\"}",
            "http_request_duration_seconds_count{",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert!(!text.contains("istio_"), "no mesh metrics: {text}");
    }

    #[test]
    fn without_ready_pods_nothing_is_served() {
        let mut registry = Registry::default();
        let mut traffic = PodTraffic::new(&mut registry, 7);
        traffic.simulate(100.0, Duration::from_secs(1), &[], |_| Behaviour::default());
        assert!(traffic.totals().is_empty());
    }
}
