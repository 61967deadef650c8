//! `AnalysisTemplate` and `ClusterAnalysisTemplate` (`canary.dev/v1alpha1`).
//!
//! The shape follows Argo Rollouts' AnalysisTemplate (args, metrics with interval, count,
//! conditions and limits, a Prometheus provider) plus Flagger's `thresholdRange` shorthand, so
//! users can bring what they already have. Rules the schema cannot express are CEL validation
//! rules: the API server enforces them, and `canary validate` evaluates the same rules locally.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use crate::analysis::sequential::SequentialConfig;

/// Defaults, stated once and reported by `canary validate` and the README.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_FAILURE_LIMIT: u32 = 0;
pub const DEFAULT_INCONCLUSIVE_LIMIT: u32 = 0;
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;

/// The arguments and metrics of an analysis.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "canary.dev",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    namespaced,
    cel,
    doc = "Metrics that judge a canary: Prometheus queries, the conditions their results must meet, and how many bad measurements are tolerated.",
    printcolumn = r#"{"name":"Metrics","type":"string","jsonPath":".spec.metrics[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    /// Named arguments the queries use as `{{args.NAME}}`. An argument without a value must be
    /// given by whoever runs the template (the Canary, or `canary analyze --arg`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))").message("argument names must be unique"))]
    #[schemars(length(max = 64))]
    pub args: Vec<Argument>,
    /// The metrics; every one must pass for the analysis to pass.
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n.name == m.name))").message("metric names must be unique"))]
    #[schemars(length(min = 1, max = 32))]
    pub metrics: Vec<Metric>,
}

// The same content as `AnalysisTemplateSpec`; the kind makes it available to every namespace.
/// The arguments and metrics of an analysis.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "canary.dev",
    version = "v1alpha1",
    kind = "ClusterAnalysisTemplate",
    cel,
    doc = "An AnalysisTemplate that Canaries in any namespace can use.",
    printcolumn = r#"{"name":"Metrics","type":"string","jsonPath":".spec.metrics[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct ClusterAnalysisTemplateSpec(pub AnalysisTemplateSpec);

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.value) && has(self.valueFrom))").message("an argument has either value or valueFrom, not both"))]
pub struct Argument {
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_-]*$')").message("argument names are letters, digits, '_' and '-', starting with a letter or '_'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// A default value; the caller may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Read the value from a Secret in the template's namespace (never copied into status or logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret, by reference: the value itself is never written into a manifest.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.successCondition) || has(self.failureCondition) || has(self.thresholdRange) || has(self.compare) || has(self.provider.job)").message("a metric needs successCondition, failureCondition, thresholdRange or compare: without one, no measurement can pass or fail"))]
#[x_kube(validation = Rule::new("!has(self.compare) || !(has(self.successCondition) || has(self.failureCondition) || has(self.thresholdRange))").message("a compare metric is judged by the sequential test, not by conditions: put a threshold on the canary alone in a metric of its own"))]
#[x_kube(validation = Rule::new("has(self.provider.web) || has(self.provider.job) || has(self.provider.influxdb) || has(self.provider.graphite) ? !has(self.compare) : has(self.compare) != (has(self.provider.prometheus) && has(self.provider.prometheus.query) && size(self.provider.prometheus.query) > 0)").message("a metric has either provider.prometheus.query (conditions) or compare (its own queries), not both and not neither; compare works with the Prometheus provider only"))]
pub struct Metric {
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$')").message("metric names are lower-case letters, digits, '-', '_' and '.'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Time between measurements (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Wait this long before the first measurement, e.g. to let the canary warm up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Duration>,
    /// How many measurements to take (errors are retried and do not count). Absent: measure
    /// until the rollout step ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub count: Option<u32>,
    /// CEL over `result`: true means this measurement passed. Example: `result[0] >= 0.99`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub success_condition: Option<String>,
    /// CEL over `result`: true means this measurement failed. Example: `result[0] > 500`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub failure_condition: Option<String>,
    /// Flagger's shorthand: the single value must lie within [min, max].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<ThresholdRange>,
    /// Failed measurements tolerated; one more fails the metric (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10000))]
    pub failure_limit: Option<u32>,
    /// Inconclusive measurements (no data, or neither condition met) tolerated; one more makes
    /// the metric Inconclusive (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10000))]
    pub inconclusive_limit: Option<u32>,
    /// Consecutive query errors tolerated; one more makes the metric Error (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10000))]
    pub consecutive_error_limit: Option<u32>,
    /// Measure and report, but never let this metric decide the analysis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Compare the canary with stable on counts instead of judging a value: the queries are
    /// rendered once with `{{workload}}` = the canary and once = stable, and the sequential
    /// test judges the canary's error rate or latency relative to stable's at every interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Compare>,
    pub provider: MetricProvider,
}

/// A canary-against-stable comparison on counters. Each query selects **raw counters** (no
/// `rate()` or `increase()`): the analysis reads them at the start and the end of each
/// interval and takes the differences itself, series by series, so counter resets (a value
/// that went down) and new series (a new pod) are counted exactly. Keep the series that
/// identify a process (`pod`) when aggregating: `sum by (pod) (...)`, or for buckets
/// `sum by (pod, le) (...)`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.requests) && has(self.errors) && !has(self.latencyBuckets)) || (!has(self.requests) && !has(self.errors) && has(self.latencyBuckets))").message("compare needs requests and errors (an error-rate comparison) or latencyBuckets (a latency comparison), not both"))]
#[x_kube(validation = Rule::new("!has(self.judge) || !has(self.judge.alpha) || (self.judge.alpha > 0.0 && self.judge.alpha < 0.5)").message(crate::analysis::run::JUDGE_ALPHA_OUT_OF_RANGE))]
#[x_kube(validation = Rule::new("!has(self.weight) || (self.weight >= 0.01 && self.weight <= 1000.0)").message(crate::analysis::run::WEIGHT_OUT_OF_RANGE))]
#[x_kube(validation = Rule::new("!has(self.judge) || ((!has(self.judge.errorTolerance) || (self.judge.errorTolerance >= 0.0 && self.judge.errorTolerance <= 10.0)) && (!has(self.judge.latencyTolerance) || (self.judge.latencyTolerance >= 0.0 && self.judge.latencyTolerance <= 10.0)))").message(crate::analysis::run::JUDGE_TOLERANCES_OUT_OF_RANGE))]
pub struct Compare {
    /// Counters of all requests served by `{{workload}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub requests: Option<String>,
    /// Counters of the failed requests of `{{workload}}` (a subset of `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub errors: Option<String>,
    /// Histogram `_bucket` counters of `{{workload}}`, with their `le` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub latency_buckets: Option<String>,
    /// Settings of the sequential test: `alpha` (0.01), `errorTolerance` (0.10),
    /// `latencyTolerance` (0.10), `maxIntervalNoiseCv` (0.2), `priorScale` (1.0),
    /// `latencyTailFraction` (0.01), `latencyBoundaries` (all). A template's compare metrics
    /// share `alpha`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<SequentialConfig>,
    /// This metric's share of the template's `alpha`, relative to its other compare metrics
    /// (default 1: equal shares). A critical metric with weight 3 beside one of weight 1
    /// judges with 3/4 of `alpha`, so it rolls back on less evidence; together they still
    /// roll back a canary within tolerance with probability at most `alpha`. Between 0.01 and
    /// 1000. A `dryRun` metric takes no share from the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// The label that names the pod of each series (e.g. `pod`). When every series of a
    /// version carries it, the counts are also taken per pod and the judge learns the noise
    /// level from how the pods differ, instead of allowing `maxIntervalNoiseCv` on every
    /// interval: faster where intervals hold many events, as robust where pods are noisy. It
    /// assumes the canary's pods are no noisier than the pods seen. Keep the label when
    /// aggregating (`sum by (pod) (...)`, `sum by (pod, le) (...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    )]
    pub pod_label: Option<String>,
}

impl Compare {
    pub const DEFAULT_WEIGHT: f64 = 1.0;

    pub fn weight(&self) -> f64 {
        self.weight.unwrap_or(Self::DEFAULT_WEIGHT)
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.min) || has(self.max)").message("thresholdRange needs min, max or both"))]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("thresholdRange.min must not be greater than max"))]
pub struct ThresholdRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

// `prometheus` is a plain field (absent in YAML when another provider is chosen, read as an
// empty provider), so code written for the Prometheus-only shape keeps compiling;
// `MetricProvider::kind` says which provider a metric really uses.
/// Where measurements come from: one provider, `prometheus` (the default, with the
/// controller's `--prometheus` address when the metric names none), `web`, `job`,
/// `influxdb` or `graphite`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("(has(self.prometheus) ? 1 : 0) + (has(self.web) ? 1 : 0) + (has(self.job) ? 1 : 0) + (has(self.influxdb) ? 1 : 0) + (has(self.graphite) ? 1 : 0) <= 1").message("a metric has one provider: prometheus, web, job, influxdb or graphite, not several"))]
pub struct MetricProvider {
    #[serde(default, skip_serializing_if = "PrometheusProvider::is_unset")]
    pub prometheus: PrometheusProvider,
    /// An HTTP request to a JSON endpoint (Argo Rollouts' `web` provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebProvider>,
    /// A Kubernetes Job; it succeeding is a successful measurement (Argo Rollouts' `job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobProvider>,
    /// An InfluxDB query, InfluxQL (with `database`) or Flux (with `org`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influxdb: Option<InfluxDbProvider>,
    /// A Graphite render API query (Argo Rollouts' and Flagger's `graphite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphite: Option<GraphiteProvider>,
}

/// Which provider a metric uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Prometheus,
    Web,
    Job,
    InfluxDb,
    Graphite,
}

impl ProviderKind {
    /// The provider's field name under `provider`, as templates spell it.
    pub fn field(self) -> &'static str {
        match self {
            Self::Prometheus => "prometheus",
            Self::Web => "web",
            Self::Job => "job",
            Self::InfluxDb => "influxdb",
            Self::Graphite => "graphite",
        }
    }
}

impl MetricProvider {
    /// The provider this metric uses: the one set besides `prometheus`, else Prometheus.
    pub fn kind(&self) -> ProviderKind {
        if self.web.is_some() {
            ProviderKind::Web
        } else if self.job.is_some() {
            ProviderKind::Job
        } else if self.influxdb.is_some() {
            ProviderKind::InfluxDb
        } else if self.graphite.is_some() {
            ProviderKind::Graphite
        } else {
            ProviderKind::Prometheus
        }
    }
}

/// Argo Rollouts' `web` provider: the measurement is the JSON answer of an HTTP request, or
/// the part of it that `jsonPath` selects, as `result` (a number, string, boolean, list or
/// object: `result.ok && result.successPercent >= 0.90`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.body) && has(self.jsonBody))").message("web has body or jsonBody, not both"))]
pub struct WebProvider {
    /// The URL, with `{{args.NAME}}` placeholders (their values are URL-encoded).
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("web.url must be an http:// or https:// URL"))]
    #[schemars(length(min = 1, max = 4096))]
    pub url: String,
    /// GET (default), POST or PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<WebMethod>,
    /// Request headers, as Argo writes them (`key`, `value`). A credential reaches a header
    /// only by reference: from `valueFrom.secretKeyRef`, or from an argument that does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<WebHeader>,
    /// A request body (POST/PUT), with placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub body: Option<String>,
    /// A JSON request body (POST/PUT); placeholders inside its strings are JSON-escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub json_body: Option<serde_json::Value>,
    /// Give up after this many seconds (default 10, as in Argo Rollouts); the measurement is
    /// then an Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<u32>,
    /// The part of the answer that is `result`, as a JSONPath (`{$.data.ok}` or
    /// `$.data.ok`). Absent: the whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub json_path: Option<String>,
    /// Skip TLS certificate verification (only for test installations).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// Argo Rollouts' `job` provider: each measurement runs a Kubernetes Job made from `spec`
/// (owned by the Canary, labelled with it and the metric) in the Canary's namespace; the Job
/// completing is a successful measurement, failing a failed one. It is deleted afterwards.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobProvider {
    /// Labels and annotations for the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JobMetadata>,
    /// A `batch/v1` JobSpec, with `{{args.NAME}}` placeholders in its strings.
    #[schemars(schema_with = "any_json")]
    pub spec: serde_json::Value,
    /// Give up on a Job that has not finished after this long (default 10m): it is deleted
    /// and the measurement is an Error. A minute more becomes the Job's
    /// `activeDeadlineSeconds` (unless its own is shorter), so Kubernetes stops its pods too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// An InfluxDB query. With `database` it is InfluxQL, sent to the 1.x API (`POST /query`);
/// with `org` it is Flux, sent to `/api/v2/query` (InfluxDB 2.x, and 1.8+ with Flux enabled).
/// `result` is the list of every value the query returned (InfluxQL: the first column after
/// `time` of every row of every series; Flux: `_value` of every record), as Argo Rollouts
/// returns it: `result[0] <= 0.01`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.database) != has(self.org)").message("influxdb needs database (an InfluxQL query) or org (a Flux query), not both"))]
pub struct InfluxDbProvider {
    /// Base URL of the InfluxDB HTTP API.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("address must be an http:// or https:// URL"))]
    #[schemars(length(min = 1, max = 2048))]
    pub address: String,
    /// InfluxQL or Flux with `{{args.NAME}}` placeholders; values are escaped for quoted
    /// strings (`'…'` in InfluxQL, `"…"` in Flux).
    #[schemars(length(min = 1, max = 16384))]
    pub query: String,
    /// The database of an InfluxQL query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub database: Option<String>,
    /// The organisation of a Flux query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub org: Option<String>,
    /// Give up after this long (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Extra headers, e.g. `Authorization: Token …` from a Secret (`valueFrom.secretKeyRef`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<Header>,
    /// Skip TLS certificate verification (only for test installations).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// A Graphite render API query: `POST /render` with the target, `format=json`. `result` is
/// the list of every non-null datapoint of every series returned, oldest first (as Argo
/// Rollouts returns it: `result[0] >= 90`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GraphiteProvider {
    /// Base URL of graphite-web.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("address must be an http:// or https:// URL"))]
    #[schemars(length(min = 1, max = 2048))]
    pub address: String,
    /// The target expression (Argo writes it `target=…`; the prefix is optional), with
    /// `{{args.NAME}}` placeholders whose values must be metric-path text.
    #[schemars(length(min = 1, max = 16384))]
    pub query: String,
    /// The window the render covers, Graphite's `from` (default `-5min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub from: Option<String>,
    /// Give up after this long (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Extra headers, e.g. an `Authorization` header from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<Header>,
    /// Skip TLS certificate verification (only for test installations).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);

impl JobProvider {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT)
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct JobMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The default timeout of a web request, as in Argo Rollouts.
pub const DEFAULT_WEB_TIMEOUT_SECONDS: u32 = 10;

impl WebProvider {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.timeout_seconds.unwrap_or(DEFAULT_WEB_TIMEOUT_SECONDS),
        ))
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebMethod {
    #[default]
    Get,
    Post,
    Put,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("a header has exactly one of value or valueFrom"))]
pub struct WebHeader {
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9-]+$')").message("header names are letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 256))]
    pub key: String,
    /// The value, with placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

/// A JSON object of any shape, kept as written by the API server.
fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusProvider {
    /// Base URL of the Prometheus HTTP API. Absent: the controller's (or CLI's) `--prometheus`.
    /// May hold placeholders (`http://{{args.host}}:9090`), filled in as the query's are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://') || self.startsWith('{{')").message("address must be an http:// or https:// URL (or start with a placeholder such as {{args.address}})"))]
    #[schemars(length(max = 2048))]
    pub address: Option<String>,
    /// PromQL with `{{args.NAME}}` and context placeholders; see the README for escaping rules.
    /// Empty (absent) for `compare` metrics, which carry their own queries.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 16384))]
    pub query: String,
    /// Give up on a query after this long (default 30s); the measurement is then an Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Extra HTTP headers, e.g. a tenant id or an Authorization header from a Secret. Values
    /// may hold placeholders (`{{args.tenant}}`); a credential header's value only arguments
    /// from Secrets (`Bearer {{args.token}}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<Header>,
    /// Skip TLS certificate verification (only for test installations).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("a header has exactly one of value or valueFrom"))]
pub struct Header {
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9-]+$')").message("header names are letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

impl Metric {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_INTERVAL)
    }

    pub fn initial_delay(&self) -> Duration {
        self.initial_delay.unwrap_or_default()
    }

    pub fn failure_limit(&self) -> u32 {
        self.failure_limit.unwrap_or(DEFAULT_FAILURE_LIMIT)
    }

    pub fn inconclusive_limit(&self) -> u32 {
        self.inconclusive_limit
            .unwrap_or(DEFAULT_INCONCLUSIVE_LIMIT)
    }

    pub fn consecutive_error_limit(&self) -> u32 {
        self.consecutive_error_limit
            .unwrap_or(DEFAULT_CONSECUTIVE_ERROR_LIMIT)
    }
}

impl PrometheusProvider {
    /// Absent from the template: another provider is used.
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_QUERY_TIMEOUT)
    }
}

impl AnalysisTemplateSpec {
    /// Arguments with their template defaults, keyed by name (values from Secrets are absent).
    pub fn default_args(&self) -> BTreeMap<&str, &str> {
        self.args
            .iter()
            .filter_map(|a| a.value.as_deref().map(|v| (a.name.as_str(), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn template(spec: serde_json::Value) -> AnalysisTemplate {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "canary.dev/v1alpha1",
            "kind": "AnalysisTemplate",
            "metadata": {"name": "t"},
            "spec": spec,
        }))
        .expect("test object deserializes")
    }

    fn metric(extra: serde_json::Value) -> serde_json::Value {
        let mut m = serde_json::json!({
            "name": "success-rate",
            "provider": {"prometheus": {"query": "up"}},
        });
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        m
    }

    #[test]
    fn cel_rules_accept_a_good_template_and_reject_each_bad_one() {
        let good = template(serde_json::json!({
            "args": [{"name": "service", "value": "web"}],
            "metrics": [metric(serde_json::json!({"successCondition": "result[0] >= 0.99"}))],
        }));
        good.validate_cel()
            .expect("a good template passes its CEL rules");
        let good_web = template(serde_json::json!({
            "metrics": [metric(serde_json::json!({
                "successCondition": "result.ok",
                "provider": {"web": {"url": "http://checker:8080/x", "jsonPath": "{$.data}"}},
            }))],
        }));
        good_web
            .validate_cel()
            .expect("a web metric needs no Prometheus query");
        let good_job = template(serde_json::json!({
            "metrics": [{
                "name": "smoke",
                "provider": {"job": {"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}},
            }],
        }));
        good_job
            .validate_cel()
            .expect("a job metric needs no condition: the Job succeeding is the success");
        let compare = |compare: serde_json::Value| {
            serde_json::json!({
                "name": "error-rate",
                "compare": compare,
                "provider": {"prometheus": {}},
            })
        };
        let good_compare = template(serde_json::json!({
            "metrics": [
                compare(serde_json::json!({"requests": "r", "errors": "e", "judge": {"alpha": 0.05}, "weight": 3.0})),
            ],
        }));
        good_compare
            .validate_cel()
            .expect("a compare metric needs no condition and no query");

        let cases = [
            (
                serde_json::json!({"metrics": [metric(serde_json::json!({}))]}),
                "needs successCondition",
            ),
            (
                serde_json::json!({"metrics": [
                    metric(serde_json::json!({"successCondition": "true"})),
                    metric(serde_json::json!({"successCondition": "true"})),
                ]}),
                "metric names must be unique",
            ),
            (
                serde_json::json!({"metrics": [metric(serde_json::json!({"thresholdRange": {"min": 2.0, "max": 1.0}}))]}),
                "min must not be greater",
            ),
            (
                serde_json::json!({"metrics": [metric(serde_json::json!({"thresholdRange": {}}))]}),
                "needs min, max or both",
            ),
            (
                serde_json::json!({
                    "args": [{"name": "a", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                    "metrics": [metric(serde_json::json!({"successCondition": "true"}))],
                }),
                "either value or valueFrom",
            ),
            (
                serde_json::json!({"metrics": [compare(serde_json::json!({"requests": "r", "errors": "e", "latencyBuckets": "b"}))]}),
                "not both",
            ),
            (
                serde_json::json!({"metrics": [compare(serde_json::json!({"requests": "r", "errors": "e", "judge": {"alpha": 0.7}}))]}),
                "alpha must be in (0, 0.5)",
            ),
            (
                serde_json::json!({"metrics": [compare(serde_json::json!({"latencyBuckets": "b", "judge": {"latencyTolerance": -1.0}}))]}),
                "tolerances must be in [0, 10]",
            ),
            (
                serde_json::json!({"metrics": [compare(serde_json::json!({"requests": "r", "errors": "e", "weight": 0.0}))]}),
                "weight must be between 0.01 and 1000",
            ),
            (
                serde_json::json!({"metrics": [compare(serde_json::json!({"requests": "r"}))]}),
                "needs requests and errors",
            ),
            (
                serde_json::json!({"metrics": [metric(serde_json::json!({"compare": {"latencyBuckets": "b"}}))]}),
                "either provider.prometheus.query",
            ),
            (
                serde_json::json!({"metrics": [metric(serde_json::json!({"successCondition": "true", "compare": {"latencyBuckets": "b"}}))]}),
                "not by conditions",
            ),
            (
                serde_json::json!({"metrics": [metric(serde_json::json!({
                    "successCondition": "result == true",
                    "provider": {"prometheus": {"query": "up"}, "web": {"url": "http://x/y"}},
                }))]}),
                "prometheus, web, job, influxdb or graphite, not several",
            ),
            (
                serde_json::json!({"metrics": [{
                    "name": "w",
                    "compare": {"requests": "r", "errors": "e"},
                    "provider": {"web": {"url": "http://x/y"}},
                }]}),
                "compare works with the Prometheus provider only",
            ),
            (
                serde_json::json!({"metrics": [metric(serde_json::json!({
                    "successCondition": "result == true",
                    "provider": {"web": {"url": "ftp://x/y"}},
                }))]}),
                "web.url must be an http:// or https:// URL",
            ),
        ];
        for (spec, expected) in cases {
            let err = template(spec.clone())
                .validate_cel()
                .expect_err(&format!("{spec} should be rejected"));
            assert!(
                format!("{err:?}").contains(expected),
                "{spec}: expected {expected:?} in {err:?}"
            );
        }
    }

    #[test]
    fn both_kinds_share_one_schema() {
        let namespaced = serde_json::to_value(AnalysisTemplate::crd()).unwrap();
        let cluster = serde_json::to_value(ClusterAnalysisTemplate::crd()).unwrap();
        let spec_schema = |crd: &serde_json::Value| {
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
        };
        assert_eq!(spec_schema(&namespaced), spec_schema(&cluster));
        assert_eq!(cluster["spec"]["scope"], "Cluster");
        assert_eq!(namespaced["spec"]["scope"], "Namespaced");
    }
}
