//! The simulated data plane: each second, requests at the configured rate are split by the
//! routers' weights, answered per workload behaviour, and counted in Istio's standard metrics
//! (`istio_requests_total`, `istio_request_duration_milliseconds`) with Istio's label names
//! (what Istio reports in sidecar mode and in its Gateway API mode alike), and, for the
//! backends of an HTTPRoute, in the upstream cluster statistics an Envoy-based Gateway API
//! implementation exposes on `/stats/prometheus` (`envoy_cluster_upstream_rq_xx`,
//! `envoy_cluster_upstream_rq`, `envoy_cluster_upstream_rq_total`,
//! `envoy_cluster_upstream_rq_time`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, LogNormal, Poisson};
use serde::Serialize;

use crate::behaviour::Behaviour;
use crate::routing::Destination;

/// Istio's default buckets for `istio_request_duration_milliseconds`.
pub const ISTIO_DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's standard request labels (the subset analysis queries use).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_app: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub request_protocol: String,
    pub response_code: String,
    pub response_flags: String,
    pub connection_security_policy: String,
    /// The serving pod, as Prometheus' Kubernetes discovery labels it.
    pub pod: String,
}

/// Labels of Envoy's upstream cluster statistics, as its Prometheus endpoint tags them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvoyClusterLabels {
    pub envoy_cluster_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvoyCodeClassLabels {
    pub envoy_response_code_class: String,
    pub envoy_cluster_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvoyCodeLabels {
    pub envoy_response_code: String,
    pub envoy_cluster_name: String,
}

/// A counter as Envoy exposes it: without OpenMetrics' `_total` suffix (Envoy's
/// `upstream_rq_total` is a stat of that name, not a suffix), so the names are Envoy's own;
/// the value only grows, and `rate()` reads it as any counter.
#[derive(Clone, Debug, Default)]
pub struct EnvoyCounter(Counter);

impl EnvoyCounter {
    fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }
}

impl TypedMetric for EnvoyCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for EnvoyCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// Envoy's upstream statistics of the clusters the simulated requests went through.
struct EnvoyStats {
    by_class: Family<EnvoyCodeClassLabels, EnvoyCounter>,
    by_code: Family<EnvoyCodeLabels, EnvoyCounter>,
    total: Family<EnvoyClusterLabels, EnvoyCounter>,
    time: Family<EnvoyClusterLabels, Histogram, fn() -> Histogram>,
}

impl EnvoyStats {
    fn register(registry: &mut Registry) -> Self {
        let stats = EnvoyStats {
            by_class: Family::default(),
            by_code: Family::default(),
            total: Family::default(),
            // Envoy's default histogram buckets are the ones Istio reports with.
            time: Family::new_with_constructor(istio_histogram),
        };
        registry.register(
            "envoy_cluster_upstream_rq_xx",
            "Upstream requests by response code class, as Envoy counts them",
            stats.by_class.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq",
            "Upstream requests by response code, as Envoy counts them",
            stats.by_code.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_total",
            "Upstream requests, as Envoy counts them",
            stats.total.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_time",
            "Upstream request time in milliseconds, as Envoy measures it",
            stats.time.clone(),
        );
        stats
    }

    fn record(&self, cluster: &str, code: u16, samples: &[f64]) {
        let n = samples.len() as u64;
        let cluster = cluster.to_string();
        self.by_class
            .get_or_create(&EnvoyCodeClassLabels {
                envoy_response_code_class: (code / 100).to_string(),
                envoy_cluster_name: cluster.clone(),
            })
            .inc_by(n);
        self.by_code
            .get_or_create(&EnvoyCodeLabels {
                envoy_response_code: code.to_string(),
                envoy_cluster_name: cluster.clone(),
            })
            .inc_by(n);
        let labels = EnvoyClusterLabels {
            envoy_cluster_name: cluster,
        };
        self.total.get_or_create(&labels).inc_by(n);
        let histogram = self.time.get_or_create(&labels);
        for s in samples {
            histogram.observe(*s);
        }
    }
}

/// The client side of the simulated requests (Istio's `source_*` labels).
#[derive(Clone, Debug)]
pub struct Source {
    pub workload: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
}

pub struct Mesh {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    envoy: EnvoyStats,
    source: Source,
    /// `destination` (server sidecar) and/or `source` (client sidecar): a real mesh reports each
    /// request twice, so queries must filter on `reporter` as they would in production.
    reporters: Vec<String>,
    rng: StdRng,
    totals: BTreeMap<String, Totals>,
    pods_per_workload: u32,
}

fn istio_histogram() -> Histogram {
    Histogram::new(ISTIO_DURATION_BUCKETS_MS)
}

impl Mesh {
    pub fn new(registry: &mut Registry, source: Source, reporters: Vec<String>, seed: u64) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            istio_histogram,
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests handled, as Istio reports them",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds, as Istio reports it",
            durations.clone(),
        );
        let envoy = EnvoyStats::register(registry);
        Mesh {
            requests,
            durations,
            envoy,
            source,
            reporters,
            rng: StdRng::seed_from_u64(seed),
            totals: BTreeMap::new(),
            pods_per_workload: 1,
        }
    }

    /// Spreads each workload's requests over `pods` pods, equally (at least one).
    pub fn with_pods_per_workload(mut self, pods: u32) -> Self {
        self.pods_per_workload = pods.max(1);
        self
    }

    /// Simulates `period` of traffic at `rps` requests per second over `destinations`.
    pub fn simulate(
        &mut self,
        rps: f64,
        period: Duration,
        destinations: &[Destination],
        behaviour_of: impl Fn(&str) -> Behaviour,
    ) {
        let total_weight: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
        if total_weight == 0 || rps <= 0.0 {
            return;
        }
        for destination in destinations {
            let mean =
                rps * period.as_secs_f64() * f64::from(destination.weight) / total_weight as f64;
            if mean <= 0.0 {
                continue;
            }
            // Request arrivals are Poisson, so low-traffic canaries see realistic noise.
            let count = Poisson::new(mean)
                .map(|p| p.sample(&mut self.rng) as u64)
                .unwrap_or(0);
            let behaviour = behaviour_of(&destination.workload);
            let (mu, sigma) = behaviour.log_normal();
            let latency = LogNormal::new(mu, sigma).expect("validated behaviour");
            // Each pod's share of the requests, multinomially (no draw for a single pod).
            let mut left = count;
            for pod in 0..self.pods_per_workload {
                let pods_left = self.pods_per_workload - pod;
                let served = if pods_left == 1 {
                    left
                } else {
                    Binomial::new(left, 1.0 / f64::from(pods_left))
                        .map(|b| b.sample(&mut self.rng))
                        .unwrap_or(0)
                };
                left -= served;
                let pod_name = format!("{}-{pod}", destination.workload);
                let errors = Binomial::new(served, behaviour.error_rate)
                    .map(|b| b.sample(&mut self.rng))
                    .unwrap_or(0);
                for (code, n) in [(behaviour.error_code, errors), (200, served - errors)] {
                    if n == 0 {
                        continue;
                    }
                    let samples: Vec<f64> = (0..n).map(|_| latency.sample(&mut self.rng)).collect();
                    // The gateway's Envoy counts each request once, whichever sidecars
                    // report it too.
                    if let Some(cluster) = &destination.envoy_cluster {
                        self.envoy.record(cluster, code, &samples);
                    }
                    for reporter in &self.reporters {
                        let labels = self.labels(reporter, destination, code, &pod_name);
                        self.requests.get_or_create(&labels).inc_by(n);
                        let histogram = self.durations.get_or_create(&labels);
                        for s in &samples {
                            histogram.observe(*s);
                        }
                    }
                }
                let totals = self.totals.entry(destination.workload.clone()).or_default();
                totals.requests += served;
                totals.errors += errors;
            }
        }
    }

    fn labels(&self, reporter: &str, d: &Destination, code: u16, pod: &str) -> RequestLabels {
        RequestLabels {
            reporter: reporter.to_string(),
            source_workload: self.source.workload.clone(),
            source_workload_namespace: self.source.namespace.clone(),
            source_app: self.source.workload.clone(),
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.namespace.clone(),
            destination_app: d.service_name.clone(),
            destination_version: d.version.clone(),
            destination_service: d.service.clone(),
            destination_service_name: d.service_name.clone(),
            destination_service_namespace: d.namespace.clone(),
            destination_canonical_service: d.service_name.clone(),
            destination_canonical_revision: d.version.clone(),
            request_protocol: "http".to_string(),
            response_code: code.to_string(),
            response_flags: "-".to_string(),
            // Istio reports mTLS on the server side; the client side does not know it.
            connection_security_policy: if reporter == "destination" {
                "mutual_tls"
            } else {
                "unknown"
            }
            .to_string(),
            pod: pod.to_string(),
        }
    }

    /// Requests and errors per workload since start (the truth a test compares PromQL with).
    pub fn totals(&self) -> &BTreeMap<String, Totals> {
        &self.totals
    }
}

/// Seed from the clock when the caller gives none; tests that need repeatability pass one.
pub fn default_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn destination(workload: &str, weight: u32) -> Destination {
        Destination {
            workload: workload.to_string(),
            namespace: "shop".to_string(),
            service: "web.shop.svc.cluster.local".to_string(),
            service_name: "web".to_string(),
            version: workload.trim_start_matches("web-").to_string(),
            weight,
            envoy_cluster: None,
        }
    }

    fn mesh(registry: &mut Registry) -> Mesh {
        let source = Source {
            workload: "istio-ingressgateway".to_string(),
            namespace: "istio-system".to_string(),
        };
        Mesh::new(registry, source, vec!["destination".to_string()], 7)
    }

    #[test]
    fn traffic_follows_weights_and_error_rates() {
        let mut registry = Registry::default();
        let mut mesh = mesh(&mut registry);
        let destinations = [destination("web-stable", 90), destination("web-canary", 10)];
        for _ in 0..100 {
            mesh.simulate(1000.0, Duration::from_secs(1), &destinations, |w| {
                Behaviour {
                    error_rate: if w == "web-canary" { 0.2 } else { 0.01 },
                    ..Behaviour::default()
                }
            });
        }
        let stable = &mesh.totals()["web-stable"];
        let canary = &mesh.totals()["web-canary"];
        let share = canary.requests as f64 / (stable.requests + canary.requests) as f64;
        assert!((share - 0.10).abs() < 0.005, "canary share {share}");
        let canary_rate = canary.errors as f64 / canary.requests as f64;
        let stable_rate = stable.errors as f64 / stable.requests as f64;
        assert!(
            (canary_rate - 0.2).abs() < 0.01,
            "canary error rate {canary_rate}"
        );
        assert!(
            (stable_rate - 0.01).abs() < 0.002,
            "stable error rate {stable_rate}"
        );
    }

    #[test]
    fn requests_are_spread_over_the_pods_each_labelled() {
        let mut registry = Registry::default();
        let mut mesh = mesh(&mut registry).with_pods_per_workload(3);
        mesh.simulate(
            3000.0,
            Duration::from_secs(1),
            &[destination("web-stable", 1)],
            |_| Behaviour::default(),
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let mut served = Vec::new();
        for pod in ["web-stable-0", "web-stable-1", "web-stable-2"] {
            let requests: f64 = text
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .filter(|l| l.contains(&format!("pod=\"{pod}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum();
            served.push(requests);
        }
        let total = mesh.totals()["web-stable"].requests as f64;
        assert_eq!(served.iter().sum::<f64>(), total, "{served:?}");
        for requests in &served {
            assert!((requests / total - 1.0 / 3.0).abs() < 0.05, "{served:?}");
        }
        assert!(!text.contains("web-stable-3"));
    }

    #[test]
    fn http_route_backends_are_counted_in_envoy_cluster_statistics_too() {
        let mut registry = Registry::default();
        let mut mesh = mesh(&mut registry);
        let backend = |workload: &str, index: usize, weight: u32| Destination {
            envoy_cluster: Some(format!("httproute/shop/web/rule/0/backend/{index}")),
            ..destination(workload, weight)
        };
        let destinations = [backend("web-stable", 0, 50), backend("web-canary", 1, 50)];
        mesh.simulate(1000.0, Duration::from_secs(1), &destinations, |w| {
            Behaviour {
                error_rate: if w == "web-canary" { 0.5 } else { 0.0 },
                ..Behaviour::default()
            }
        });
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let value = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum()
        };
        let canary = "envoy_cluster_name=\"httproute/shop/web/rule/0/backend/1\"";
        let errors = value(&format!(
            "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",{canary}}}"
        ));
        let total = value(&format!("envoy_cluster_upstream_rq_total{{{canary}}}"));
        let counted = mesh.totals()["web-canary"].clone();
        assert_eq!(
            (errors, total),
            (counted.errors as f64, counted.requests as f64),
            "{text}"
        );
        assert_eq!(
            value(&format!("envoy_cluster_upstream_rq_time_count{{{canary}}}")),
            total
        );
        assert_eq!(
            value(&format!(
                "envoy_cluster_upstream_rq{{envoy_response_code=\"503\",{canary}}}"
            )),
            errors
        );
        // Envoy's names: no OpenMetrics `_total` added to its counters.
        assert!(
            text.contains("# TYPE envoy_cluster_upstream_rq_xx unknown"),
            "{text}"
        );
        assert!(
            !text.contains("envoy_cluster_upstream_rq_xx_total"),
            "{text}"
        );
        assert!(
            !text.contains("envoy_cluster_upstream_rq_total_total"),
            "{text}"
        );
        // Not for a VirtualService's destinations.
        assert!(!text.contains("backend/2"));
    }

    #[test]
    fn zero_weight_gets_no_requests_and_no_series() {
        let mut registry = Registry::default();
        let mut mesh = mesh(&mut registry);
        let destinations = [destination("web-stable", 100), destination("web-canary", 0)];
        mesh.simulate(100.0, Duration::from_secs(1), &destinations, |_| {
            Behaviour::default()
        });
        assert!(!mesh.totals().contains_key("web-canary"));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.contains("web-canary"));
    }

    #[test]
    fn exposition_uses_istio_names_labels_and_buckets() {
        let mut registry = Registry::default();
        let mut mesh = mesh(&mut registry);
        mesh.simulate(
            50.0,
            Duration::from_secs(1),
            &[destination("web-stable", 1)],
            |_| Behaviour::default(),
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for needle in [
            "istio_requests_total{reporter=\"destination\"",
            "destination_workload=\"web-stable\"",
            "destination_workload_namespace=\"shop\"",
            "response_code=\"200\"",
            "istio_request_duration_milliseconds_bucket{",
            "le=\"2500.0\"",
            "istio_request_duration_milliseconds_count{",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }
}
