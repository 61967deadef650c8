//! Running an analysis: prepare a template (render queries, compile conditions), then take
//! measurements on a schedule — once, live at each metric's interval, or retrospectively over
//! a past window with instant queries at `time=` each interval.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::assessment::{self, AnalysisPhase, Limits, Tally};
use super::compare::{
    self, CompareKind, CompareRecord, CompareSetup, Counter, CounterQuery, CounterReadings,
    IntervalCounts, PreparedCompare,
};
use super::measurement::{Criteria, MeasurementPhase};
use super::render::{self, Variables};
use super::sequential::Assessment;
use super::{graphite_metric, influxdb_metric, job_metric, web_metric};
use crate::api::analysis_template::{AnalysisTemplateSpec, ProviderKind, SecretKeyRef};
use crate::api::duration::{earlier, later};
use crate::metrics::address_policy::is_routing_header;
use crate::metrics::{AddressPolicy, MetricsSource, ProviderQuery, Query, QueryRequest};

/// The compare.weight range, said the same way by the CRD rule and by `prepare`.
pub const WEIGHT_OUT_OF_RANGE: &str = "compare.weight must be between 0.01 and 1000";
/// The CRD's rules on a compare's judge settings (`canary validate` reports each once).
pub const JUDGE_ALPHA_OUT_OF_RANGE: &str = "compare.judge.alpha must be in (0, 0.5)";
pub const JUDGE_TOLERANCES_OUT_OF_RANGE: &str = "compare.judge tolerances must be in [0, 10]";

/// Headers that carry credentials: only by reference to a Secret, never written inline.
pub(crate) fn is_credential_header(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
    ]
    .iter()
    .any(|credential| name.eq_ignore_ascii_case(credential))
}

/// Shorter intervals would turn the controller into a busy loop of queries and writes.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a metric without any condition cannot run: no measurement could pass or fail.
pub const NO_CONDITION: &str = "the metric has no successCondition, failureCondition or thresholdRange, so no measurement could pass or fail";

/// A problem found while preparing or validating a template, located by metric and field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The metric, when the problem belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The field path inside the template's spec, e.g. `metrics[0].successCondition`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.metric {
            Some(metric) => write!(f, "metric {metric}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Reads values referenced from Secrets. The CLI, reading files, has none; the controller
/// reads them from the API server.
pub trait SecretValues {
    fn secret_value(&self, reference: &SecretKeyRef) -> Result<String, String>;
}

/// For running templates from files: every Secret reference must be overridden by the caller.
pub struct NoSecrets;

impl SecretValues for NoSecrets {
    fn secret_value(&self, reference: &SecretKeyRef) -> Result<String, String> {
        Err(format!(
            "the value comes from Secret {}/{} and Secrets are read only inside the cluster; pass the value explicitly",
            reference.name, reference.key
        ))
    }
}

/// How an analysis is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Each metric measured once, now.
    Once,
    /// At each metric's interval from now, until counts are reached or `until`.
    Live { until: Option<Timestamp> },
    /// As if it had run over the past window `[from, to]`.
    Retrospective { from: Timestamp, to: Timestamp },
}

/// One metric, ready to measure. Its `Debug` shows no secret: [`QueryRequest`] and the
/// compare queries redact themselves.
#[derive(Clone, Debug)]
pub struct PreparedMetric {
    pub name: String,
    pub dry_run: bool,
    pub criteria: Criteria,
    pub request: QueryRequest,
    pub interval: Duration,
    pub initial_delay: Duration,
    pub limits: Limits,
    /// For `compare` metrics: the counter queries of both versions and the judge's setup
    /// (`request` then carries the address, timeout and headers, and as its query the
    /// description people see, which is never sent).
    pub compare: Option<PreparedCompare>,
}

#[derive(Clone, Debug)]
pub struct PreparedAnalysis {
    pub template: String,
    pub metrics: Vec<PreparedMetric>,
}

/// Renders and compiles a template with the caller's arguments and context.
///
/// `args` override the template's defaults; `default_address` is used by metrics that name no
/// Prometheus address. Every problem is reported, not just the first.
///
/// An argument declared with `valueFrom.secretKeyRef` is secret even when the caller passes
/// its value (`canary analyze --arg`, where Secrets cannot be read): the template says what is
/// sensitive, so its value is shown as `<secret:NAME>` however it was given.
pub fn prepare(
    template: &str,
    spec: &AnalysisTemplateSpec,
    args: &BTreeMap<String, String>,
    context: &BTreeMap<String, String>,
    default_address: Option<&str>,
    secrets: &dyn SecretValues,
) -> Result<PreparedAnalysis, Vec<Problem>> {
    let mut problems = Vec::new();
    let declared: Vec<&str> = spec.args.iter().map(|a| a.name.as_str()).collect();
    let mut values = BTreeMap::new();
    let secret_args: BTreeSet<String> = spec
        .args
        .iter()
        .filter(|arg| arg.value_from.is_some())
        .map(|arg| arg.name.clone())
        .collect();
    for (i, arg) in spec.args.iter().enumerate() {
        let value = match (args.get(&arg.name), &arg.value, &arg.value_from) {
            (Some(given), _, _) => Some(given.clone()),
            (None, Some(default), _) => Some(default.clone()),
            (None, None, Some(from)) => match secrets.secret_value(&from.secret_key_ref) {
                Ok(value) => Some(value),
                Err(message) => {
                    problems.push(Problem {
                        metric: None,
                        field: format!("args[{i}].valueFrom ({})", arg.name),
                        message,
                    });
                    None
                }
            },
            // Reported where a query uses it, with the metric named.
            (None, None, None) => None,
        };
        if let Some(value) = value {
            values.insert(arg.name.clone(), value);
        }
    }
    for name in args.keys() {
        if !declared.contains(&name.as_str()) {
            problems.push(Problem {
                metric: None,
                field: "args".into(),
                message: format!(
                    "argument {name:?} was given but the template declares no such argument (it declares: {})",
                    if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                ),
            });
        }
    }

    // The compare metrics that can roll back share alpha in proportion to their weights (a
    // weighted union bound); a dryRun metric never decides, so it takes no share from them and
    // is judged with the share it would have if it were live. A weight out of range is
    // reported on its own metric and takes no share.
    let live_compare_weight: f64 = spec
        .metrics
        .iter()
        .filter(|m| !m.dry_run)
        .filter_map(|m| m.compare.as_ref().map(|c| c.weight()))
        .filter(|weight| weight_in_range(*weight))
        .sum();
    let mut metrics = Vec::new();
    for (i, metric) in spec.metrics.iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                metric: Some(metric.name.clone()),
                field: format!("metrics[{i}].{field}"),
                message,
            })
        };
        let interval = metric.interval();
        let mut metric_context = context.clone();
        metric_context
            .entry("interval".to_string())
            .or_insert_with(|| interval.to_string());
        let variables = Variables {
            args: values.clone(),
            context: metric_context,
            secret_args: secret_args.clone(),
        };
        let criteria = Criteria::from_metric(metric)
            .map_err(|errors| {
                for e in errors {
                    problem(e.field, e.source.to_string());
                }
            })
            .ok();
        let prepared_request = match () {
            _ if metric.compare.is_some() && metric.provider.kind() != ProviderKind::Prometheus => {
                problem(
                    "compare",
                    "compare works with the Prometheus provider only: judge this metric with successCondition or failureCondition".into(),
                );
                None
            }
            // The other providers prepare their own requests; their problems are reported here.
            _ if metric.provider.kind() != ProviderKind::Prometheus => {
                let provider = &metric.provider;
                // In `kind`'s order (the CRD refuses more than one provider).
                let prepared = if let Some(web) = &provider.web {
                    web_metric::prepare(web, &declared, &variables, secrets)
                } else if let Some(job) = &provider.job {
                    job_metric::prepare(job, &metric.name, &declared, &variables)
                } else if let Some(influxdb) = &provider.influxdb {
                    influxdb_metric::prepare(influxdb, &declared, &variables, secrets)
                } else if let Some(graphite) = &provider.graphite {
                    graphite_metric::prepare(graphite, &declared, &variables, secrets)
                } else {
                    unreachable!("kind() is Prometheus unless another provider is set")
                };
                match prepared {
                    Ok(prepared) => Some(prepared),
                    Err(found) => {
                        for (field, message) in found {
                            problem(&field, message);
                        }
                        None
                    }
                }
            }
            _ => {
                let prometheus = &metric.provider.prometheus;
                let (query, compare) = match &metric.compare {
                    None => (
                        render::render_query(&prometheus.query, &declared, &variables)
                            .map_err(|e| problem("provider.prometheus.query", e.to_string()))
                            .ok(),
                        None,
                    ),
                    Some(spec) => {
                        let others = if metric.dry_run {
                            live_compare_weight
                        } else {
                            live_compare_weight - spec.weight()
                        };
                        match prepare_compare(spec, others, &declared, &variables) {
                            // The description is built from the shown queries: it holds no secret.
                            Ok((text, prepared)) => (Some(Query::plain(text)), Some(prepared)),
                            Err(found) => {
                                for (field, message) in found {
                                    problem(&field, message);
                                }
                                (None, None)
                            }
                        }
                    }
                };
                // An address may be templated (`http://{{args.host}}:9090`), as in Argo Rollouts.
                let rendered_address = match prometheus.address.as_deref() {
                    Some(written) if written.contains("{{") => {
                        match render_address(written, &declared, &variables) {
                            Ok(address) => Some(Ok(address)),
                            Err(why) => {
                                problem("provider.prometheus.address", why);
                                Some(Err(()))
                            }
                        }
                    }
                    Some(written) => Some(Ok(written.to_string())),
                    None => None,
                };
                let address = match &rendered_address {
                    Some(Ok(address)) => Some(address.as_str()),
                    Some(Err(())) => None,
                    None => default_address,
                };
                if rendered_address.is_none() && address.is_none() {
                    problem(
                        "provider.prometheus.address",
                        "no Prometheus address: set it in the template or pass --prometheus URL"
                            .into(),
                    );
                }
                // The address as it would be shown differs from it exactly when it holds userinfo.
                if address.is_some_and(|a| crate::metrics::without_userinfo(a) != a) {
                    problem(
                        "provider.prometheus.address",
                        "credentials in the address would be shown wherever the address is: send them in a header from a Secret (headers[].valueFrom.secretKeyRef)".into(),
                    );
                }
                // The refusals that hold whatever the controller's allow-list (which its source
                // applies to every query, with these).
                if let Some(why) = address.and_then(|a| AddressPolicy::default().refusal(a)) {
                    problem("provider.prometheus.address", why);
                }
                let mut headers = Vec::new();
                // The values of headers from Secrets, to be taken out of whatever the endpoint says.
                let mut header_secrets = Vec::new();
                for (h, header) in prometheus.headers.iter().enumerate() {
                    if is_routing_header(&header.name) {
                        problem(
                            &format!("provider.prometheus.headers[{h}].name ({})", header.name),
                            "this header would change where the request goes or how it is framed (the HTTP client sets it from the address): remove it, and put the real Prometheus address in provider.prometheus.address".into(),
                        );
                        continue;
                    }
                    match (&header.value, &header.value_from) {
                        (Some(value), _) if is_credential_header(&header.name) => {
                            let field =
                                format!("provider.prometheus.headers[{h}].value ({})", header.name);
                            match credential_by_reference(value, &secret_args) {
                                Err(why) => problem(&field, why),
                                Ok(()) => match render::render_text(
                                    value,
                                    &declared,
                                    &variables,
                                    &render::as_is,
                                ) {
                                    Ok(rendered) => {
                                        header_secrets.push((
                                            format!("header {}", header.name),
                                            rendered.text_to_send().to_string(),
                                        ));
                                        headers.push((
                                            header.name.clone(),
                                            rendered.text_to_send().to_string(),
                                        ));
                                    }
                                    Err(e) => problem(&field, e.to_string()),
                                },
                            }
                        }
                        (Some(value), _) => {
                            match render::render_text(value, &declared, &variables, &render::as_is)
                            {
                                Ok(rendered) => {
                                    // A secret argument in any header is redacted like one in the query.
                                    if rendered.shown() != rendered.text_to_send() {
                                        header_secrets.push((
                                            format!("header {}", header.name),
                                            rendered.text_to_send().to_string(),
                                        ));
                                    }
                                    headers.push((
                                        header.name.clone(),
                                        rendered.text_to_send().to_string(),
                                    ));
                                }
                                Err(e) => problem(
                                    &format!(
                                        "provider.prometheus.headers[{h}].value ({})",
                                        header.name
                                    ),
                                    e.to_string(),
                                ),
                            }
                        }
                        (None, Some(from)) => match secrets.secret_value(&from.secret_key_ref) {
                            Ok(value) => {
                                header_secrets
                                    .push((format!("header {}", header.name), value.clone()));
                                headers.push((header.name.clone(), value));
                            }
                            Err(message) => problem(
                                &format!(
                                    "provider.prometheus.headers[{h}].valueFrom ({})",
                                    header.name
                                ),
                                message,
                            ),
                        },
                        (None, None) => problem(
                            &format!("provider.prometheus.headers[{h}]"),
                            "a header needs value or valueFrom".into(),
                        ),
                    }
                }
                let headers_sent = headers;
                match (query, address) {
                    (Some(query), Some(address)) => Some(ProviderRequest {
                        address: address.to_string(),
                        query,
                        timeout: prometheus.timeout().as_std(),
                        headers: headers_sent,
                        header_secrets,
                        insecure: prometheus.insecure,
                        provider: ProviderQuery::Prometheus,
                        compare,
                    }),
                    _ => None,
                }
            }
        };
        if metric.success_condition.is_none()
            && metric.failure_condition.is_none()
            && metric.threshold_range.is_none()
            && metric.compare.is_none()
            && metric.provider.kind() != ProviderKind::Job
        {
            problem("successCondition", NO_CONDITION.into());
        }
        for (field, duration) in [
            ("interval", metric.interval),
            ("initialDelay", metric.initial_delay),
            (
                "provider.prometheus.timeout",
                metric.provider.prometheus.timeout,
            ),
        ] {
            if let Some(too_long) = duration.and_then(crate::api::Duration::too_long) {
                problem(field, too_long);
            }
        }
        if interval.as_std() < MIN_INTERVAL {
            problem(
                "interval",
                "must be at least 1s: every measurement is a query and a status write".into(),
            );
        }
        if let (Some(prepared), Some(criteria)) = (prepared_request, criteria) {
            let ProviderRequest {
                address,
                query,
                timeout,
                headers,
                header_secrets,
                insecure,
                provider,
                compare,
            } = prepared;
            // Every query sent with the headers redacts their secret values from what it gets.
            let query = query.with_more_secrets(header_secrets.clone());
            let compare = compare.map(|mut c: PreparedCompare| {
                for counter in &mut c.queries {
                    for side in [&mut counter.canary, &mut counter.stable] {
                        *side = side.clone().with_more_secrets(header_secrets.clone());
                    }
                }
                c
            });
            metrics.push(PreparedMetric {
                name: metric.name.clone(),
                dry_run: metric.dry_run,
                criteria,
                request: QueryRequest {
                    address,
                    query,
                    time: None,
                    timeout,
                    headers,
                    insecure,
                    provider,
                },
                interval: interval.as_std(),
                initial_delay: metric.initial_delay().as_std(),
                limits: Limits {
                    count: metric.count,
                    failure_limit: metric.failure_limit(),
                    inconclusive_limit: metric.inconclusive_limit(),
                    consecutive_error_limit: metric.consecutive_error_limit(),
                },
                compare,
            });
        }
    }
    if problems.is_empty() {
        Ok(PreparedAnalysis {
            template: template.to_string(),
            metrics,
        })
    } else {
        Err(problems)
    }
}

/// What a provider's preparation gives: everything a request needs but its time.
pub(crate) struct ProviderRequest {
    pub address: String,
    pub query: Query,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    /// The values of headers from Secrets (by name), to be taken out of what is answered.
    pub header_secrets: Vec<(String, String)>,
    pub insecure: bool,
    pub provider: ProviderQuery,
    pub compare: Option<PreparedCompare>,
}

/// Shows no secret: header values are left out, the query shows itself redacted.
impl std::fmt::Debug for ProviderRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ProviderRequest")
            .field("address", &crate::metrics::without_userinfo(&self.address))
            .field("query", &self.query)
            .field("timeout", &self.timeout)
            .field("headers", &header_names)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// A credential header's value holds its credential only through arguments from Secrets
/// (`Bearer {{args.token}}` with `token` declared with `valueFrom.secretKeyRef`, as Argo
/// Rollouts documents it). A token written into the template, directly or as an argument's
/// plain value, would be readable by anyone who can read the template.
fn credential_by_reference(value: &str, secret_args: &BTreeSet<String>) -> Result<(), String> {
    let used = render::argument_names(value);
    if let Some(plain) = used.iter().find(|name| !secret_args.contains(**name)) {
        return Err(format!(
            "the credential comes from argument {plain}, which does not come from a Secret: declare it with valueFrom.secretKeyRef"
        ));
    }
    if used.is_empty() {
        return Err("a credential is written into the template: take it from a Secret with valueFrom.secretKeyRef (the whole header, or an argument such as `Bearer {{args.token}}`)".into());
    }
    Ok(())
}

/// A templated address, rendered: it must come out as an http(s) URL, and may not hold a
/// secret argument (addresses are shown in status, Events and messages).
fn render_address(
    written: &str,
    declared: &[&str],
    variables: &Variables,
) -> Result<String, String> {
    let rendered = render::render_text(written, declared, variables, &render::as_is)
        .map_err(|e| e.to_string())?;
    if rendered.shown() != rendered.text_to_send() {
        return Err("the address uses an argument from a Secret, and addresses are shown in status, Events and messages: send the credential in a header (headers[].valueFrom.secretKeyRef) instead".into());
    }
    let address = rendered.text_to_send().to_string();
    match url::Url::parse(&address) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(address),
        _ => Err(format!(
            "{written} renders to {:?}, which is not an http:// or https:// URL: give the arguments it uses values that make one",
            crate::metrics::without_userinfo(&address)
        )),
    }
}

fn weight_in_range(weight: f64) -> bool {
    (0.01..=1000.0).contains(&weight)
}

/// Renders a compare metric's counter queries for both versions: `{{workload}}` is the canary
/// (context `canary`, or `<target>-canary`) and then stable. Returns the text people see as
/// the metric's query (secret values shown as `<secret:NAME>`), and the prepared comparison;
/// or every problem as (field, message).
fn prepare_compare(
    spec: &crate::api::analysis_template::Compare,
    other_live_weight: f64,
    declared: &[&str],
    variables: &Variables,
) -> Result<(String, PreparedCompare), Vec<(String, String)>> {
    let mut problems = Vec::new();
    let (kind, counters) = match (&spec.requests, &spec.errors, &spec.latency_buckets) {
        (Some(requests), Some(errors), None) => (
            CompareKind::ErrorRate,
            vec![(Counter::Requests, requests), (Counter::Errors, errors)],
        ),
        (None, None, Some(buckets)) => (
            CompareKind::Latency,
            vec![(Counter::LatencyBuckets, buckets)],
        ),
        _ => {
            return Err(vec![(
                "compare".into(),
                "compare needs requests and errors (an error-rate comparison) or latencyBuckets (a latency comparison), not both".into(),
            )]);
        }
    };
    if let Some(label) = &spec.pod_label
        && (label.len() > 63 || !render::is_label_name(label))
    {
        problems.push((
            "compare.podLabel".into(),
            format!("{label:?} is not a Prometheus label name (letters, digits and _, not starting with a digit)"),
        ));
    }
    let mut config = spec.judge.clone().unwrap_or_default();
    if let Err(e) = config.validate() {
        problems.push((format!("compare.judge.{}", e.field), e.to_string()));
    }
    // The template's compare metrics share alpha by weight (a union bound): together they
    // roll back a canary within tolerance with probability at most alpha.
    let weight = spec.weight();
    if weight_in_range(weight) {
        config.alpha *= weight / (weight + other_live_weight.max(0.0));
    } else {
        problems.push(("compare.weight".into(), WEIGHT_OUT_OF_RANGE.into()));
    }
    let context = &variables.context;
    let target = context.get("target");
    let name = |side: &str| {
        context
            .get(side)
            .cloned()
            .or_else(|| target.map(|t| format!("{t}-{side}")))
    };
    let (Some(canary), Some(stable)) = (name("canary"), name("stable")) else {
        problems.push((
            "compare".into(),
            "a comparison needs the names of both workloads: pass the context values canary=NAME and stable=NAME (or target=NAME for NAME-canary and NAME-stable)".into(),
        ));
        return Err(problems);
    };
    let mut queries = Vec::new();
    for (counter, text) in counters {
        let render = |workload: &str| {
            let mut variables = variables.clone();
            variables
                .context
                .insert("workload".to_string(), workload.to_string());
            render::render_query(text, declared, &variables)
        };
        let lowered = text.to_lowercase();
        if let Some(function) = ["increase(", "rate(", "irate(", "delta(", "idelta("]
            .iter()
            .find(|f| lowered.contains(*f))
        {
            problems.push((
                counter.field().into(),
                format!(
                    "the query uses {function}...): a comparison reads raw counters at both ends of each interval and takes exact differences itself; select the counters (e.g. sum by (pod) (requests_total{{...}}))"
                ),
            ));
            continue;
        }
        match (render(&canary), render(&stable)) {
            (Ok(canary_query), Ok(stable_query)) if canary_query == stable_query => problems.push((
                counter.field().into(),
                "the query reads the same series for canary and stable: select the version with {{workload}} (e.g. destination_workload=\"{{workload}}\")".into(),
            )),
            (Ok(canary), Ok(stable)) => queries.push(CounterQuery {
                counter,
                canary,
                stable,
            }),
            (Err(e), _) | (_, Err(e)) => problems.push((counter.field().into(), e.to_string())),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let text = queries
        .iter()
        .map(|q| {
            format!(
                "{} (canary): {}",
                q.counter.field(),
                q.canary.shown().trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((
        text,
        PreparedCompare {
            setup: CompareSetup { kind, config },
            queries,
            pod_label: spec.pod_label.clone(),
        },
    ))
}

/// The comparison behind a compare measurement: the window, both versions' counts and the
/// judge's assessment after them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompareDetail {
    pub kind: CompareKind,
    pub window_start: Timestamp,
    pub counts: IntervalCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assessment: Option<Assessment>,
}

/// One measurement, as reported and kept.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measurement {
    /// When the query was evaluated (the `time=` of a retrospective query).
    pub time: Timestamp,
    pub phase: MeasurementPhase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub reason: String,
    /// For `compare` metrics: counts, effect estimate with its interval, evidence, verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareDetail>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricReport {
    pub name: String,
    pub dry_run: bool,
    pub phase: AnalysisPhase,
    pub message: String,
    pub query: String,
    pub tally: Tally,
    pub measurements: Vec<Measurement>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisReport {
    pub template: String,
    pub phase: AnalysisPhase,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub metrics: Vec<MetricReport>,
}

/// Takes the measurements `schedule` calls for and decides. `observe` sees each measurement as
/// it is taken (for progress display). In `Live` mode this sleeps between measurements.
pub async fn run<S: MetricsSource>(
    source: &S,
    analysis: &PreparedAnalysis,
    schedule: Schedule,
    mut observe: impl FnMut(&MetricReport, &Measurement),
) -> AnalysisReport {
    let started_at = match schedule {
        Schedule::Retrospective { from, .. } => from,
        Schedule::Once | Schedule::Live { .. } => Timestamp::now(),
    };
    // Per compare metric: its record, the readings where its next interval starts, and its
    // latest assessment.
    let mut comparisons: Vec<(CompareRecord, Option<CounterReadings>, Option<Assessment>)> =
        vec![Default::default(); analysis.metrics.len()];
    let mut states: Vec<(Timestamp, MetricReport)> = analysis
        .metrics
        .iter()
        .map(|m| {
            let first = match schedule {
                Schedule::Once => started_at,
                _ => later(started_at, m.initial_delay),
            };
            let report = MetricReport {
                name: m.name.clone(),
                dry_run: m.dry_run,
                phase: AnalysisPhase::Pending,
                message: String::new(),
                query: m.request.query.shown().to_string(),
                tally: Tally::default(),
                measurements: Vec::new(),
            };
            (first, report)
        })
        .collect();

    let end = match schedule {
        Schedule::Once => None,
        Schedule::Live { until } => until,
        Schedule::Retrospective { to, .. } => Some(to),
    };
    loop {
        let active = states.iter().filter(|(_, r)| !r.phase.is_terminal());
        let Some(due) = active.map(|(due, _)| *due).min() else {
            break;
        };
        if end.is_some_and(|end| due > end) {
            break;
        }
        if let Schedule::Live { .. } = schedule {
            let wait = due.duration_since(Timestamp::now());
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
        }
        for ((metric, (next_due, report)), comparison) in analysis
            .metrics
            .iter()
            .zip(states.iter_mut())
            .zip(comparisons.iter_mut())
        {
            if report.phase.is_terminal() || *next_due > due {
                continue;
            }
            if let Some(compare) = &metric.compare {
                let end = match schedule {
                    Schedule::Retrospective { .. } => due,
                    _ => Timestamp::now(),
                };
                let (record, window_start, latest) = comparison;
                let start = window_start
                    .as_ref()
                    .map_or_else(|| earlier(end, metric.interval), CounterReadings::at);
                let (outcome, at_end) = match compare::measure(
                    source,
                    compare,
                    &metric.request,
                    start,
                    end,
                    window_start.as_ref(),
                )
                .await
                {
                    Ok((measured, at_end)) => (Ok(measured), Some(at_end)),
                    Err(e) => (Err(e.to_string()), None),
                };
                let judged = compare::record_interval(&compare.setup, record, &outcome);
                if judged.phase != MeasurementPhase::Error && at_end.is_some() {
                    // A failed read is retried over the same window.
                    *window_start = at_end;
                }
                if judged.assessment.is_some() {
                    latest.clone_from(&judged.assessment);
                }
                report.tally.record(judged.phase);
                let measurement = Measurement {
                    time: end,
                    phase: judged.phase,
                    value: judged.value,
                    reason: judged.reason,
                    compare: Some(CompareDetail {
                        kind: compare.setup.kind,
                        window_start: start,
                        counts: record
                            .intervals
                            .last()
                            .filter(|_| judged.phase != MeasurementPhase::Error)
                            .cloned()
                            .unwrap_or_default(),
                        assessment: judged.assessment,
                    }),
                };
                report.measurements.push(measurement.clone());
                let assessment = compare::metric_phase(
                    latest.as_ref(),
                    &metric.limits,
                    &report.tally,
                    record.intervals.len(),
                    schedule == Schedule::Once,
                    true,
                );
                report.phase = assessment.phase;
                report.message = assessment.message;
                observe(report, &measurement);
                *next_due = later(due, metric.interval);
                continue;
            }
            let mut request = metric.request.clone();
            let time = match schedule {
                Schedule::Retrospective { .. } => {
                    request.time = Some(due);
                    due
                }
                _ => Timestamp::now(),
            };
            let outcome = source.instant_query(&request).await;
            let judgement = metric
                .criteria
                .judge_bounded(outcome, request.query.clone())
                .await;
            report.tally.record(judgement.phase);
            let measurement = Measurement {
                time,
                phase: judgement.phase,
                value: judgement.value,
                reason: judgement.reason,
                compare: None,
            };
            report.measurements.push(measurement.clone());
            let ending = schedule == Schedule::Once;
            let assessment = assessment::assess(&metric.limits, &report.tally, ending);
            report.phase = assessment.phase;
            report.message = assessment.message;
            observe(report, &measurement);
            *next_due = later(due, metric.interval);
        }
        if assessment::should_stop(states.iter().map(|(_, r)| (r.phase, r.dry_run))) {
            break;
        }
    }
    // Whatever is still running ends here: the window, the time limit or a decision ended it.
    for ((metric, (_, report)), (record, _, latest)) in analysis
        .metrics
        .iter()
        .zip(states.iter_mut())
        .zip(&comparisons)
    {
        if !report.phase.is_terminal() {
            let assessment = match metric.compare {
                Some(_) => compare::metric_phase(
                    latest.as_ref(),
                    &metric.limits,
                    &report.tally,
                    record.intervals.len(),
                    true,
                    true,
                ),
                None => assessment::assess(&metric.limits, &report.tally, true),
            };
            report.phase = assessment.phase;
            report.message = assessment.message;
        }
    }
    let metrics: Vec<MetricReport> = states.into_iter().map(|(_, r)| r).collect();
    let finished_at = match schedule {
        Schedule::Retrospective { to, .. } => metrics
            .iter()
            .filter_map(|m| m.measurements.last().map(|x| x.time))
            .max()
            .unwrap_or(to),
        _ => Timestamp::now(),
    };
    AnalysisReport {
        template: analysis.template.clone(),
        phase: assessment::overall(metrics.iter().map(|m| (m.phase, m.dry_run))),
        started_at,
        finished_at,
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(weights: &[(Option<f64>, bool)]) -> AnalysisTemplateSpec {
        let metrics: Vec<serde_json::Value> = weights
            .iter()
            .enumerate()
            .map(|(index, (weight, dry_run))| {
                let mut compare = serde_json::json!({
                    "requests": "requests_total{workload=\"{{workload}}\"}",
                    "errors": "errors_total{workload=\"{{workload}}\"}",
                    "judge": {"alpha": 0.02},
                });
                if let Some(weight) = weight {
                    compare["weight"] = serde_json::json!(weight);
                }
                serde_json::json!({
                    "name": format!("m{index}"),
                    "dryRun": dry_run,
                    "compare": compare,
                    "provider": {"prometheus": {}},
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "metrics": metrics })).unwrap()
    }

    fn alphas(weights: &[Option<f64>]) -> Result<Vec<f64>, Vec<Problem>> {
        let live: Vec<(Option<f64>, bool)> = weights.iter().map(|w| (*w, false)).collect();
        alphas_of(&live)
    }

    fn alphas_of(weights: &[(Option<f64>, bool)]) -> Result<Vec<f64>, Vec<Problem>> {
        let context = BTreeMap::from([("target".to_string(), "web".to_string())]);
        let prepared = prepare(
            "t",
            &template(weights),
            &BTreeMap::new(),
            &context,
            Some("http://prometheus:9090"),
            &NoSecrets,
        )?;
        Ok(prepared
            .metrics
            .iter()
            .map(|m| m.compare.as_ref().unwrap().setup.config.alpha)
            .collect())
    }

    #[test]
    fn compare_metrics_share_alpha_by_weight() {
        let close = |got: Vec<f64>, want: &[f64]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{got:?} != {want:?}");
            }
        };
        close(alphas(&[None]).unwrap(), &[0.02]);
        close(alphas(&[None, None]).unwrap(), &[0.01, 0.01]);
        close(alphas(&[Some(3.0), None]).unwrap(), &[0.015, 0.005]);
        close(
            alphas(&[Some(0.5), Some(0.5), Some(1.0)]).unwrap(),
            &[0.005, 0.005, 0.01],
        );
        // A dryRun metric takes nothing from the live ones and is judged with the share it
        // would have if it were live.
        close(
            alphas_of(&[(Some(3.0), false), (None, false), (Some(4.0), true)]).unwrap(),
            &[0.015, 0.005, 0.02 * 4.0 / 8.0],
        );
    }

    #[test]
    fn intervals_under_a_second_are_refused() {
        let context = BTreeMap::from([("target".to_string(), "web".to_string())]);
        for (interval, refused) in [("500ms", true), ("0s", true), ("1s", false), ("1m", false)] {
            let template: AnalysisTemplateSpec = serde_json::from_value(serde_json::json!({
                "metrics": [{
                    "name": "success-rate",
                    "interval": interval,
                    "successCondition": "result[0] >= 0.99",
                    "provider": {"prometheus": {"query": "up"}},
                }],
            }))
            .unwrap();
            let prepared = prepare(
                "t",
                &template,
                &BTreeMap::new(),
                &context,
                Some("http://prometheus:9090"),
                &NoSecrets,
            );
            let problems = prepared.err().unwrap_or_default();
            let about_interval = problems.iter().any(|p| {
                p.to_string().contains("interval") && p.to_string().contains("at least 1s")
            });
            assert_eq!(about_interval, refused, "{interval}: {problems:?}");
        }
    }

    #[test]
    fn credentials_only_by_reference() {
        let context = BTreeMap::from([("target".to_string(), "web".to_string())]);
        // (address, header name, inline value, refused field)
        let cases = [
            (
                "http://prom:9090",
                "Authorization",
                true,
                Some("headers[0].value"),
            ),
            (
                "http://prom:9090",
                "x-api-key",
                true,
                Some("headers[0].value"),
            ),
            ("http://prom:9090", "X-Scope-OrgID", true, None),
            ("http://prom:9090", "Authorization", false, None),
            (
                "https://user:pass@prom:9090",
                "X-Scope-OrgID",
                true,
                Some("address"),
            ),
            ("http://prom:9090/path@x", "X-Scope-OrgID", true, None),
        ];
        for (address, name, inline, refused) in cases {
            let header = if inline {
                serde_json::json!({"name": name, "value": "Bearer abc"})
            } else {
                serde_json::json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "p", "key": "k"}}})
            };
            let template: AnalysisTemplateSpec = serde_json::from_value(serde_json::json!({
                "metrics": [{
                    "name": "m",
                    "successCondition": "result[0] >= 0.99",
                    "provider": {"prometheus": {"address": address, "query": "up", "headers": [header]}},
                }],
            }))
            .unwrap();
            let problems = prepare("t", &template, &BTreeMap::new(), &context, None, &OneSecret)
                .err()
                .unwrap_or_default();
            let found = problems
                .iter()
                .find(|p| p.field.contains("headers[0].value") || p.field.ends_with("address"));
            match refused {
                None => assert!(found.is_none(), "{address} {name}: {problems:?}"),
                Some(field) => {
                    let found = found.unwrap_or_else(|| panic!("{address} {name}: {problems:?}"));
                    assert!(found.field.contains(field), "{found:?}");
                    assert!(!found.message.contains("abc") && !found.message.contains("pass"));
                }
            }
        }
    }

    const SECRET: &str = "hunter2-token";

    /// Gives every Secret reference the same value.
    struct OneSecret;

    impl SecretValues for OneSecret {
        fn secret_value(&self, _: &SecretKeyRef) -> Result<String, String> {
            Ok(SECRET.into())
        }
    }

    /// How [`RecordingSource`] answers every query.
    #[derive(Clone, Copy)]
    enum Answer {
        NoSeries,
        /// Rejects the query quoting it back, as Prometheus' parse errors do.
        RejectQuotingTheQuery,
        /// One series whose labels repeat the secret (as selecting by it would), without `le`.
        SeriesLabelledWithTheSecret,
    }

    /// A Prometheus that records the queries sent to it and gives every one the same answer.
    struct RecordingSource {
        answer: Answer,
        sent: std::sync::Mutex<Vec<String>>,
    }

    impl RecordingSource {
        fn new(answer: Answer) -> Self {
            Self {
                answer,
                sent: Default::default(),
            }
        }
    }

    impl MetricsSource for RecordingSource {
        async fn instant_query(
            &self,
            request: &QueryRequest,
        ) -> Result<crate::metrics::QueryOutput, crate::metrics::MetricsError> {
            let sent = request.query.text_to_send().to_string();
            self.sent.lock().unwrap().push(sent.clone());
            match self.answer {
                Answer::NoSeries => Ok(crate::metrics::QueryOutput::Vector(Vec::new())),
                Answer::RejectQuotingTheQuery => Err(crate::metrics::MetricsError::Rejected {
                    address: request.address.clone(),
                    detail: format!("bad_data: 1:7: parse error in {sent}"),
                }),
                Answer::SeriesLabelledWithTheSecret => {
                    Ok(crate::metrics::QueryOutput::Vector(vec![
                        crate::metrics::Series {
                            labels: BTreeMap::from([("tenant".to_string(), SECRET.to_string())]),
                            value: 1.0,
                        },
                    ]))
                }
            }
        }
    }

    /// A threshold metric and two compare metrics (error rate, latency), all selecting by a
    /// secret argument `token`.
    fn secret_template() -> AnalysisTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "args": [{"name": "token", "valueFrom": {"secretKeyRef": {"name": "prom", "key": "token"}}}],
            "metrics": [
                {
                    "name": "threshold",
                    "successCondition": "result[0] >= 0.0",
                    "provider": {"prometheus": {
                        "query": "sum(rate(x{tenant=\"{{args.token}}\"}[1m]))",
                        "headers": [{"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "prom", "key": "header"}}}],
                    }},
                },
                {
                    "name": "compared",
                    "compare": {
                        "requests": "requests_total{tenant=\"{{args.token}}\", workload=\"{{workload}}\"}",
                        "errors": "errors_total{tenant=\"{{args.token}}\", workload=\"{{workload}}\"}",
                    },
                    "provider": {"prometheus": {}},
                },
                {
                    "name": "latency",
                    "compare": {
                        "latencyBuckets": "bucket{tenant=\"{{args.token}}\", workload=\"{{workload}}\"}",
                    },
                    "provider": {"prometheus": {}},
                },
            ],
        }))
        .unwrap()
    }

    async fn run_secret_template(source: &RecordingSource) -> AnalysisReport {
        let context = BTreeMap::from([("target".to_string(), "web".to_string())]);
        let prepared = prepare(
            "t",
            &secret_template(),
            &BTreeMap::new(),
            &context,
            Some("http://prometheus:9090"),
            &OneSecret,
        )
        .unwrap();
        for written in [format!("{prepared:?}"), format!("{:?}", prepared.metrics)] {
            assert!(!written.contains(SECRET), "Debug shows a secret: {written}");
        }
        let report = run(source, &prepared, Schedule::Once, |_, _| {}).await;
        // The secret did go to Prometheus: only what people see is redacted.
        let sent = source.sent.lock().unwrap();
        assert!(
            !sent.is_empty() && sent.iter().all(|q| q.contains(SECRET)),
            "{sent:?}"
        );
        report
    }

    #[tokio::test]
    async fn no_data_reasons_and_queries_show_secret_arguments_as_placeholders() {
        let report = run_secret_template(&RecordingSource::new(Answer::NoSeries)).await;
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains(SECRET), "{json}");
        let threshold = &report.metrics[0];
        assert_eq!(
            threshold.query,
            "sum(rate(x{tenant=\"<secret:token>\"}[1m]))"
        );
        let reason = &threshold.measurements[0].reason;
        assert_eq!(
            threshold.measurements[0].phase,
            MeasurementPhase::Inconclusive
        );
        assert!(
            reason.starts_with("no data: the query returned no series")
                && reason.ends_with("sum(rate(x{tenant=\"<secret:token>\"}[1m]))"),
            "{reason}"
        );
        let compared = &report.metrics[1];
        assert!(
            compared
                .query
                .contains("requests_total{tenant=\"<secret:token>\""),
            "{}",
            compared.query
        );
    }

    #[tokio::test]
    async fn query_errors_quoting_the_query_show_secret_arguments_as_placeholders() {
        let report =
            run_secret_template(&RecordingSource::new(Answer::RejectQuotingTheQuery)).await;
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains(SECRET), "{json}");
        for metric in &report.metrics {
            let measurement = &metric.measurements[0];
            assert_eq!(measurement.phase, MeasurementPhase::Error, "{metric:?}");
            assert!(
                measurement.reason.contains("tenant=\"<secret:token>\""),
                "{}",
                measurement.reason
            );
        }
    }

    #[tokio::test]
    async fn data_errors_quoting_series_labels_show_secret_arguments_as_placeholders() {
        let report =
            run_secret_template(&RecordingSource::new(Answer::SeriesLabelledWithTheSecret)).await;
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains(SECRET), "{json}");
        let latency = &report.metrics[2].measurements[0];
        assert_eq!(latency.phase, MeasurementPhase::Error, "{latency:?}");
        assert!(
            latency.reason.contains("no numeric `le` label")
                && latency.reason.contains("<secret:token>"),
            "{}",
            latency.reason
        );
    }

    #[test]
    fn a_secret_argument_passed_by_the_caller_is_still_shown_as_a_placeholder() {
        let prepared = prepare(
            "t",
            &secret_template(),
            &BTreeMap::from([("token".to_string(), SECRET.to_string())]),
            &BTreeMap::from([("target".to_string(), "web".to_string())]),
            Some("http://prometheus:9090"),
            &NoSecrets,
        )
        .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>());
        // The header's Secret cannot be read without a cluster: that is the only problem.
        let problems = prepared.unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("headers[0].valueFrom"), "{problems:?}");
        let mut spec = secret_template();
        spec.metrics[0].provider.prometheus.headers.clear();
        let prepared = prepare(
            "t",
            &spec,
            &BTreeMap::from([("token".to_string(), SECRET.to_string())]),
            &BTreeMap::from([("target".to_string(), "web".to_string())]),
            Some("http://prometheus:9090"),
            &NoSecrets,
        )
        .unwrap();
        let request = &prepared.metrics[0].request;
        assert!(request.query.text_to_send().contains(SECRET));
        assert!(!request.query.shown().contains(SECRET));
        assert!(request.query.shown().contains("<secret:token>"));
    }

    #[test]
    fn a_weight_out_of_range_names_the_metric_and_field() {
        for weight in [0.0, -1.0, 0.001, 1001.0] {
            let problems = alphas(&[Some(weight), None]).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].metric.as_deref(), Some("m0"));
            assert_eq!(problems[0].field, "metrics[0].compare.weight");
            assert_eq!(problems[0].message, WEIGHT_OUT_OF_RANGE);
        }
    }
}
