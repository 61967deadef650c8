//! Helpers shared by the tests that run analyses against a real Prometheus.
//!
//! Include it with `#[path = "support/analysis.rs"] mod analysis;`.
#![allow(dead_code)]

use canary::analysis::run::{AnalysisReport, MetricReport};
use jiff::Timestamp;

/// The reference instant of the backfilled datasets.
pub fn t0() -> Timestamp {
    "2024-05-06T10:00:00Z".parse().unwrap()
}

/// Metric `name` of `report`; panics with the whole report when it is missing.
pub fn metric<'r>(report: &'r AnalysisReport, name: &str) -> &'r MetricReport {
    report
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name} in {report:#?}"))
}
