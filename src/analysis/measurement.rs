//! Judging one measurement: a query outcome against a metric's conditions.
//!
//! The rules, in order (the README's "How a measurement is judged" states them for users):
//! 1. The query failed (unreachable, timeout, rejected) → `Error`.
//! 2. `failureCondition` is true → `Failed`. It is evaluated even on missing data, so a template
//!    can say explicitly that no data is a failure (`size(result) == 0 || …`).
//! 3. No data — an empty vector, NaN or ±Inf — → `Inconclusive`, with the reason. Missing data
//!    can never pass a measurement.
//! 4. `thresholdRange`: the single value outside [min, max] → `Failed`.
//! 5. `successCondition` true → `Successful`; false → `Failed`, or `Inconclusive` when a
//!    `failureCondition` exists too (neither was met, as in Argo Rollouts).
//! 6. Otherwise (only a failure condition or a range, and it held) → `Successful`.

use serde::{Deserialize, Serialize};

use super::condition::{
    self, Condition, ConditionError, EVALUATION_TIMEOUT, ResultValue, describe, format_number,
};
use crate::api::analysis_template::{Metric, ProviderKind, ThresholdRange};
use crate::metrics::{MetricsError, Query, QueryOutput, shortened};

/// The most a measurement's value keeps (about ten numbers of a vector): status keeps the last
/// measurements of every metric, and an answer may hold thousands of series.
pub const MAX_VALUE_BYTES: usize = 128;
/// The most a measurement's reason keeps: reasons quote the query and what the endpoint said.
pub const MAX_REASON_BYTES: usize = 512;

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeasurementPhase {
    Successful,
    Failed,
    Inconclusive,
    Error,
}

/// The judgement of one measurement, before it is stamped with a time.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub phase: MeasurementPhase,
    /// The value as people read it (`0.987`, `[0.98, 0.97]`, `[]`, `NaN`); absent on errors.
    pub value: Option<String>,
    /// Why: which condition held, or what was wrong with the data or the query.
    pub reason: String,
}

/// How a job metric without conditions is judged: the Job completed.
pub const JOB_SUCCEEDED: &str = "result.succeeded";

/// A metric's pass/fail criteria, compiled once.
#[derive(Clone, Debug)]
pub struct Criteria {
    success: Option<Condition>,
    failure: Option<Condition>,
    threshold: Option<ThresholdRange>,
}

/// Which criterion of a metric failed to compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {source}")]
pub struct CriteriaError {
    pub field: &'static str,
    pub source: ConditionError,
}

impl Criteria {
    pub fn from_metric(metric: &Metric) -> Result<Self, Vec<CriteriaError>> {
        // A web endpoint answers JSON of a shape only it knows; the others answer numbers.
        let json_result = matches!(
            metric.provider.kind(),
            ProviderKind::Web | ProviderKind::Job
        );
        let compile = |field, text: &Option<String>| {
            text.as_deref()
                .map(|text| {
                    if json_result {
                        Condition::compile_for_json(text)
                    } else {
                        Condition::compile(text)
                    }
                })
                .transpose()
                .map_err(|source| CriteriaError { field, source })
        };
        // Argo's job metrics have no condition: the Job succeeding is the success.
        let implicit_job_success = (metric.provider.kind() == ProviderKind::Job
            && metric.success_condition.is_none()
            && metric.failure_condition.is_none()
            && metric.threshold_range.is_none())
        .then(|| JOB_SUCCEEDED.to_string());
        let success = compile(
            "successCondition",
            if implicit_job_success.is_some() {
                &implicit_job_success
            } else {
                &metric.success_condition
            },
        );
        let failure = compile("failureCondition", &metric.failure_condition);
        match (success, failure) {
            (Ok(success), Ok(failure)) => Ok(Self {
                success,
                failure,
                threshold: metric.threshold_range.clone(),
            }),
            (success, failure) => Err([success.err(), failure.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }

    /// Judges one query outcome. No-data reasons name `query` as people see it (secret
    /// values as `<secret:NAME>`), and error reasons have its secret values taken out. Value
    /// and reason are cut to [`MAX_VALUE_BYTES`] and [`MAX_REASON_BYTES`].
    pub fn judge(&self, outcome: &Result<QueryOutput, MetricsError>, query: &Query) -> Judgement {
        let Judgement {
            phase,
            value,
            reason,
        } = self.judge_in_full(outcome, query);
        Judgement {
            phase,
            value: value.map(|v| shortened(&v, MAX_VALUE_BYTES)),
            reason: shortened(&reason, MAX_REASON_BYTES),
        }
    }

    fn judge_in_full(
        &self,
        outcome: &Result<QueryOutput, MetricsError>,
        query: &Query,
    ) -> Judgement {
        let output = match outcome {
            Ok(output) => output,
            Err(error) => {
                return Judgement {
                    phase: MeasurementPhase::Error,
                    value: None,
                    reason: error.clone().with_secrets_redacted(query).to_string(),
                };
            }
        };
        let result = match output {
            QueryOutput::Scalar(x) => ResultValue::Scalar(*x),
            QueryOutput::Vector(series) => {
                ResultValue::Vector(series.iter().map(|s| s.value).collect())
            }
            QueryOutput::Json(json) => ResultValue::Json(json.clone()),
        };
        let value = Some(describe(&result));
        let judged = |phase, reason: String| Judgement {
            phase,
            value: value.clone(),
            reason,
        };
        let missing = missing_data(&result, query.shown());

        if let Some(failure) = &self.failure {
            match failure.evaluate(&result) {
                Ok(true) => {
                    return judged(
                        MeasurementPhase::Failed,
                        format!("failureCondition `{}` is true", failure.source_text()),
                    );
                }
                Ok(false) => {}
                // On missing data an expression like `result[0] > 5` cannot evaluate; that is
                // the no-data case below, not a template error.
                Err(_) if missing.is_some() => {}
                Err(e) => return judged(MeasurementPhase::Error, e.to_string()),
            }
        }
        if let Some(reason) = missing {
            return judged(MeasurementPhase::Inconclusive, reason);
        }
        if let Some(range) = &self.threshold {
            let single = match &result {
                ResultValue::Scalar(x) => Some(*x),
                ResultValue::Vector(xs) if xs.len() == 1 => Some(xs[0]),
                ResultValue::Vector(_) => None,
                ResultValue::Json(json) => json_number(json),
            };
            let Some(x) = single else {
                return judged(
                    MeasurementPhase::Error,
                    format!(
                        "thresholdRange needs one value but the query returned {} series; aggregate them (e.g. sum(...) or avg(...))",
                        vector_len(&result)
                    ),
                );
            };
            if let Some(reason) = outside_range(x, range) {
                return judged(MeasurementPhase::Failed, reason);
            }
        }
        if let Some(success) = &self.success {
            return match success.evaluate(&result) {
                Ok(true) => judged(
                    MeasurementPhase::Successful,
                    format!("successCondition `{}` is true", success.source_text()),
                ),
                Ok(false) if self.failure.is_some() => judged(
                    MeasurementPhase::Inconclusive,
                    format!(
                        "neither successCondition `{}` nor failureCondition is true",
                        success.source_text()
                    ),
                ),
                Ok(false) => judged(
                    MeasurementPhase::Failed,
                    format!("successCondition `{}` is false", success.source_text()),
                ),
                Err(e) => judged(MeasurementPhase::Error, e.to_string()),
            };
        }
        let reason = match (&self.threshold, &self.failure) {
            (Some(range), _) => format!("within thresholdRange {}", describe_range(range)),
            (None, Some(failure)) => {
                format!("failureCondition `{}` is false", failure.source_text())
            }
            (None, None) => "no condition to check".to_string(),
        };
        judged(MeasurementPhase::Successful, reason)
    }
}

impl Criteria {
    /// [`Criteria::judge`] off the async runtime, bounded by [`EVALUATION_TIMEOUT`] (see
    /// [`condition::off_the_runtime`]): conditions that take longer make an `Error`.
    pub async fn judge_bounded(
        &self,
        outcome: Result<QueryOutput, MetricsError>,
        query: Query,
    ) -> Judgement {
        let criteria = self.clone();
        condition::off_the_runtime(EVALUATION_TIMEOUT, move || criteria.judge(&outcome, &query))
            .await
            .unwrap_or_else(|e| Judgement {
                phase: MeasurementPhase::Error,
                value: None,
                reason: e.to_string(),
            })
    }
}

fn vector_len(result: &ResultValue) -> usize {
    match result {
        ResultValue::Scalar(_) | ResultValue::Json(_) => 1,
        ResultValue::Vector(xs) => xs.len(),
    }
}

/// A JSON answer as one number, if it is one: a number, a string holding one (as endpoints
/// often write them), or a list of exactly one such.
fn json_number(json: &serde_json::Value) -> Option<f64> {
    match json {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(text) => text.trim().parse().ok(),
        serde_json::Value::Array(items) if items.len() == 1 => json_number(&items[0]),
        _ => None,
    }
}

/// Why a result carries no usable data, if it does not. The query, as people may see it, is
/// named on one line.
fn missing_data(result: &ResultValue, shown_query: &str) -> Option<String> {
    let query = one_line(shown_query);
    let values: &[f64] = match result {
        ResultValue::Json(serde_json::Value::Null) => {
            return Some(format!(
                "no data: the answer holds nothing where jsonPath points (or is null): {query}"
            ));
        }
        ResultValue::Json(_) => return None,
        ResultValue::Scalar(x) => std::slice::from_ref(x),
        ResultValue::Vector(xs) if xs.is_empty() => {
            return Some(format!(
                "no data: the query returned no series (check that the metric exists and the labels match): {query}"
            ));
        }
        ResultValue::Vector(xs) => xs,
    };
    if values.iter().any(|x| x.is_nan()) {
        return Some(format!(
            "no data: the value is NaN, typically 0/0 when there were no requests in the window: {query}"
        ));
    }
    if values.iter().any(|x| x.is_infinite()) {
        return Some(format!(
            "no data: the value is infinite, typically a division by zero: {query}"
        ));
    }
    None
}

/// A query as one line: multi-line PromQL is written for reading, reasons are read in tables.
pub fn one_line(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn outside_range(x: f64, range: &ThresholdRange) -> Option<String> {
    let below = range.min.is_some_and(|min| x < min);
    let above = range.max.is_some_and(|max| x > max);
    (below || above).then(|| {
        format!(
            "{} is outside thresholdRange {}",
            format_number(x),
            describe_range(range)
        )
    })
}

fn describe_range(range: &ThresholdRange) -> String {
    let bound = |b: Option<f64>, open| b.map_or(open, format_number);
    format!(
        "[{}, {}]",
        bound(range.min, "-Inf".into()),
        bound(range.max, "+Inf".into())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Series;
    use MeasurementPhase::*;

    fn metric(
        success: Option<&str>,
        failure: Option<&str>,
        range: Option<(Option<f64>, Option<f64>)>,
    ) -> Metric {
        Metric {
            name: "m".into(),
            interval: None,
            initial_delay: None,
            count: None,
            success_condition: success.map(Into::into),
            failure_condition: failure.map(Into::into),
            threshold_range: range.map(|(min, max)| ThresholdRange { min, max }),
            failure_limit: None,
            inconclusive_limit: None,
            consecutive_error_limit: None,
            dry_run: false,
            compare: None,
            provider: crate::api::analysis_template::MetricProvider {
                prometheus: crate::api::analysis_template::PrometheusProvider {
                    address: None,
                    query: "q".into(),
                    timeout: None,
                    headers: vec![],
                    insecure: false,
                },
                web: None,
                job: None,
                influxdb: None,
                graphite: None,
            },
        }
    }

    fn vector(values: &[f64]) -> Result<QueryOutput, MetricsError> {
        Ok(QueryOutput::Vector(
            values
                .iter()
                .map(|v| Series {
                    labels: Default::default(),
                    value: *v,
                })
                .collect(),
        ))
    }

    #[test]
    fn judges_every_rule_and_edge() {
        let unreachable = Err(MetricsError::Unreachable {
            address: "http://p:9090".into(),
            detail: "connection refused".into(),
        });
        let s = Some("result[0] >= 0.95");
        let f = Some("result[0] < 0.5");
        let no_data_fails = Some("size(result) == 0 || result[0] < 0.5");
        let cases: Vec<(
            &str,
            Metric,
            Result<QueryOutput, MetricsError>,
            MeasurementPhase,
            &str,
        )> = vec![
            (
                "query error",
                metric(s, None, None),
                unreachable,
                Error,
                "unreachable",
            ),
            (
                "success true",
                metric(s, None, None),
                vector(&[0.99]),
                Successful,
                "is true",
            ),
            (
                "success false",
                metric(s, None, None),
                vector(&[0.90]),
                Failed,
                "is false",
            ),
            (
                "scalar result",
                metric(Some("result >= 0.95"), None, None),
                Ok(QueryOutput::Scalar(0.97)),
                Successful,
                "is true",
            ),
            (
                "empty vector",
                metric(s, None, None),
                vector(&[]),
                Inconclusive,
                "no data: the query returned no series",
            ),
            (
                "NaN",
                metric(s, None, None),
                vector(&[f64::NAN]),
                Inconclusive,
                "NaN",
            ),
            (
                "scalar NaN",
                metric(Some("result >= 0.95"), None, None),
                Ok(QueryOutput::Scalar(f64::NAN)),
                Inconclusive,
                "NaN",
            ),
            (
                "+Inf",
                metric(s, None, None),
                vector(&[f64::INFINITY]),
                Inconclusive,
                "infinite",
            ),
            (
                "NaN never passes a true-for-NaN success condition",
                metric(Some("isNaN(result[0]) || result[0] >= 0.95"), None, None),
                vector(&[f64::NAN]),
                Inconclusive,
                "NaN",
            ),
            (
                "explicit failure on no data",
                metric(s, no_data_fails, None),
                vector(&[]),
                Failed,
                "failureCondition",
            ),
            (
                "failure condition wins",
                metric(s, f, None),
                vector(&[0.4]),
                Failed,
                "failureCondition",
            ),
            (
                "neither condition",
                metric(s, f, None),
                vector(&[0.7]),
                Inconclusive,
                "neither",
            ),
            (
                "only failure, false",
                metric(None, f, None),
                vector(&[0.7]),
                Successful,
                "is false",
            ),
            (
                "range inside",
                metric(None, None, Some((Some(99.0), None))),
                vector(&[99.5]),
                Successful,
                "within thresholdRange [99, +Inf]",
            ),
            (
                "range below",
                metric(None, None, Some((Some(99.0), None))),
                vector(&[98.0]),
                Failed,
                "98 is outside thresholdRange [99, +Inf]",
            ),
            (
                "range above",
                metric(None, None, Some((None, Some(500.0)))),
                Ok(QueryOutput::Scalar(750.0)),
                Failed,
                "outside",
            ),
            (
                "range on many series",
                metric(None, None, Some((Some(1.0), None))),
                vector(&[1.0, 2.0]),
                Error,
                "returned 2 series",
            ),
            (
                "range on empty",
                metric(None, None, Some((Some(1.0), None))),
                vector(&[]),
                Inconclusive,
                "no data",
            ),
            (
                "range and success both",
                metric(s, None, Some((None, Some(0.98)))),
                vector(&[0.99]),
                Failed,
                "outside",
            ),
            (
                "condition error on real data",
                metric(Some("result[1] >= 0.95"), None, None),
                vector(&[0.99]),
                Error,
                "could not be evaluated",
            ),
        ];
        for (name, metric, outcome, phase, reason) in cases {
            let judgement = Criteria::from_metric(&metric)
                .unwrap()
                .judge(&outcome, &Query::plain("QUERY"));
            assert_eq!(judgement.phase, phase, "{name}: {judgement:?}");
            assert!(
                judgement.reason.contains(reason),
                "{name}: {:?} lacks {reason:?}",
                judgement.reason
            );
            assert_eq!(
                judgement.value.is_none(),
                phase == Error && name == "query error",
                "{name}"
            );
        }
    }

    #[test]
    fn no_data_reasons_name_the_query() {
        let judgement = Criteria::from_metric(&metric(Some("result[0] > 1"), None, None))
            .unwrap()
            .judge(&vector(&[]), &Query::plain("sum(rate(x[1m]))"));
        assert!(
            judgement.reason.ends_with("sum(rate(x[1m]))"),
            "{}",
            judgement.reason
        );
    }

    #[test]
    fn reports_every_broken_condition_at_once() {
        let errors =
            Criteria::from_metric(&metric(Some("result >="), Some("nope > 1"), None)).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["successCondition", "failureCondition"]);
    }
}
