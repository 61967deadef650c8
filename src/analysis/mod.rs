//! Analysis: templates rendered into queries, measurements judged against conditions, and
//! metrics decided by their limits. Pure except for the [`crate::metrics::MetricsSource`] the
//! runner calls through.

pub mod assessment;
pub mod compare;
pub mod condition;
pub mod graphite_metric;
pub mod import;
pub mod influxdb_metric;
pub mod job_metric;
pub mod measurement;
pub mod render;
pub mod run;
pub mod sequential;
pub mod validate;
pub mod web_metric;

pub use assessment::AnalysisPhase;
pub use measurement::MeasurementPhase;
pub use run::{AnalysisReport, Problem, Schedule};
