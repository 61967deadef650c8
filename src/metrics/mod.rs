//! Where measurements come from. The analysis core calls a [`MetricsSource`]; implementations
//! do the I/O. Prometheus is the first (and, for now, only) provider.

pub mod prometheus;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

pub use prometheus::PrometheusSource;

/// One instant query, fully rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryRequest {
    /// Base URL of the Prometheus HTTP API.
    pub address: String,
    pub query: String,
    /// Evaluate at this instant (retrospective analysis); `None` means now.
    pub time: Option<jiff::Timestamp>,
    pub timeout: Duration,
    /// Extra HTTP headers. Values may be secrets: never log them.
    pub headers: Vec<(String, String)>,
    /// Skip TLS certificate verification.
    pub insecure: bool,
}

/// A series of an instant vector: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What an instant query returned.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryOutput {
    Scalar(f64),
    Vector(Vec<Series>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "Prometheus at {address} is unreachable: {detail}; check the address and that Prometheus is running"
    )]
    Unreachable { address: String, detail: String },
    #[error("Prometheus at {address} did not answer within {timeout_ms} ms (the metric's timeout)")]
    Timeout { address: String, timeout_ms: u128 },
    #[error("Prometheus at {address} rejected the query: {detail}")]
    Rejected { address: String, detail: String },
    #[error(
        "Prometheus at {address} returned a {kind} result; an analysis query must return a scalar or an instant vector"
    )]
    UnsupportedResult { address: String, kind: &'static str },
    #[error("{address} is not a usable Prometheus address: {detail}")]
    InvalidAddress { address: String, detail: String },
}

/// Runs instant queries. Implementations must honour `request.timeout`.
pub trait MetricsSource: Send + Sync {
    fn instant_query(
        &self,
        request: &QueryRequest,
    ) -> impl Future<Output = Result<QueryOutput, MetricsError>> + Send;
}
