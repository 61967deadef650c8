//! The controller's own metrics (`/metrics`), with DESIGN.md's `canary_` names.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::analysis::measurement::MeasurementPhase;
use crate::api::canary::{CanaryStatus, Phase};
use crate::controller::api_client::RequestCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CanaryLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeasurementLabels {
    namespace: String,
    name: String,
    metric: String,
    result: String,
}

pub struct Metrics {
    registry: Registry,
    weight: Family<CanaryLabels, Gauge>,
    phase: Family<PhaseLabels, Gauge>,
    measurements: Family<MeasurementLabels, Counter>,
    reconcile_duration: Histogram,
    reconcile_errors: Family<CanaryLabels, Counter>,
    measurements_in_flight: Gauge,
    kube_requests: RequestCounts,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canary");
        let weight = Family::<CanaryLabels, Gauge>::default();
        registry.register(
            "weight",
            "Share of traffic (0-100) the canary receives",
            weight.clone(),
        );
        let phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "phase",
            "1 for the Canary's current phase, 0 for the others",
            phase.clone(),
        );
        let measurements = Family::<MeasurementLabels, Counter>::default();
        registry.register(
            "analysis_measurements",
            "Analysis measurements taken, by metric and result",
            measurements.clone(),
        );
        let reconcile_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one Canary",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<CanaryLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed",
            reconcile_errors.clone(),
        );
        let measurements_in_flight = Gauge::default();
        registry.register(
            "analysis_measurements_in_flight",
            "Measurements started and not yet finished (they run off the reconcile path)",
            measurements_in_flight.clone(),
        );
        let kube_requests = RequestCounts::default();
        kube_requests.register(&mut registry);
        Self {
            registry,
            measurements_in_flight,
            kube_requests,
            weight,
            phase,
            measurements,
            reconcile_duration,
            reconcile_errors,
        }
    }
}

impl Metrics {
    pub fn observe(&self, namespace: &str, name: &str, status: &CanaryStatus, took: Duration) {
        let labels = CanaryLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.weight
            .get_or_create(&labels)
            .set(i64::from(status.canary_weight));
        for phase in Phase::ALL {
            self.phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    phase: phase.as_str().into(),
                })
                .set(i64::from(phase == status.phase));
        }
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Where the controller's API client counts its requests (`canary_kube_requests_total`).
    pub fn kube_requests(&self) -> RequestCounts {
        self.kube_requests.clone()
    }

    pub fn measurements_in_flight(&self, count: usize) {
        self.measurements_in_flight
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn measurement(&self, namespace: &str, name: &str, metric: &str, phase: MeasurementPhase) {
        self.measurements
            .get_or_create(&MeasurementLabels {
                namespace: namespace.into(),
                name: name.into(),
                metric: metric.into(),
                result: format!("{phase:?}"),
            })
            .inc();
    }

    pub fn reconcile_error(&self, namespace: &str, name: &str) {
        self.reconcile_errors
            .get_or_create(&CanaryLabels {
                namespace: namespace.into(),
                name: name.into(),
            })
            .inc();
    }

    /// Drops a deleted Canary's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = CanaryLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.weight.remove(&labels);
        for phase in Phase::ALL {
            self.phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                name: name.into(),
                phase: phase.as_str().into(),
            });
        }
    }

    /// The OpenMetrics text of every metric.
    /// Metrics are registered once, in `Default`; encoding only reads the registry (each
    /// family locks itself), so scrapes need no lock of their own.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_design_names() {
        let metrics = Metrics::default();
        let status = CanaryStatus {
            phase: Phase::Progressing,
            canary_weight: 25,
            ..Default::default()
        };
        metrics.observe("shop", "web", &status, Duration::from_millis(20));
        metrics.measurement("shop", "web", "success-rate", MeasurementPhase::Successful);
        let text = metrics.encode();
        for expected in [
            r#"canary_weight{namespace="shop",name="web"} 25"#,
            r#"canary_phase{namespace="shop",name="web",phase="Progressing"} 1"#,
            r#"canary_phase{namespace="shop",name="web",phase="Idle"} 0"#,
            r#"canary_analysis_measurements_total{namespace="shop",name="web",metric="success-rate",result="Successful"} 1"#,
            "canary_reconcile_duration_seconds_count 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        metrics.forget("shop", "web");
        assert!(
            !metrics
                .encode()
                .contains(r#"canary_weight{namespace="shop""#)
        );
    }
}
