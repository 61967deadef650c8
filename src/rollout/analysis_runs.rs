//! Analysis runs inside a rollout, kept in `Canary.status.analysisRuns` so that a restarted
//! controller continues them: which metric is due when, what was measured, what it adds up to.
//! The controller asks [`due_measurements`] what to measure, measures, and hands the results to
//! `plan`, which records them here.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use jiff::{SignedDuration, Timestamp};

use crate::analysis::assessment::{self, AnalysisPhase, Limits, Tally};
use crate::api::canary::{
    AnalysisRunStatus, CanaryStatus, MEASUREMENTS_KEPT, MeasurementStatus, MetricStatus,
};

/// A metric of a run, as resolved from its template (what status does not keep).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricDefinition {
    pub template: String,
    pub name: String,
    pub interval: StdDuration,
    pub initial_delay: StdDuration,
    pub limits: Limits,
    pub dry_run: bool,
}

/// A measurement the controller took for `run`/`metric`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMeasurement {
    pub run: String,
    pub metric: String,
    pub measurement: MeasurementStatus,
}

fn at(time: Timestamp) -> String {
    time.to_string()
}

fn parse(time: &Option<String>) -> Option<Timestamp> {
    time.as_deref()?.parse().ok()
}

fn signed(duration: StdDuration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

/// Creates run `name` if it does not exist; returns its phase.
pub fn ensure(
    status: &mut CanaryStatus,
    name: &str,
    definitions: &[MetricDefinition],
    now: Timestamp,
) -> AnalysisPhase {
    if let Some(run) = status.analysis_runs.iter().find(|r| r.name == name) {
        return run.phase;
    }
    let metrics: Vec<MetricStatus> = definitions
        .iter()
        .map(|d| MetricStatus {
            name: d.name.clone(),
            template: d.template.clone(),
            phase: AnalysisPhase::Pending,
            message: String::new(),
            tally: Tally::default(),
            next_measurement_at: Some(at(now + signed(d.initial_delay))),
            measurements: Vec::new(),
        })
        .collect();
    // A run without metrics has nothing to wait for.
    let phase = if metrics.is_empty() {
        AnalysisPhase::Successful
    } else {
        AnalysisPhase::Pending
    };
    status.analysis_runs.push(AnalysisRunStatus {
        name: name.to_string(),
        phase,
        message: String::new(),
        started_at: at(now),
        metrics,
    });
    phase
}

/// Records new measurements and re-assesses the runs they belong to. Measurements for runs or
/// metrics that no longer exist (a superseded rollout) are dropped.
pub fn record(
    status: &mut CanaryStatus,
    definitions: &BTreeMap<String, Vec<MetricDefinition>>,
    measurements: &[NewMeasurement],
) {
    for new in measurements {
        let Some(definition) = definitions
            .get(&new.run)
            .and_then(|ds| ds.iter().find(|d| d.name == new.metric))
        else {
            continue;
        };
        let Some(run) = status.analysis_runs.iter_mut().find(|r| r.name == new.run) else {
            continue;
        };
        if run.phase.is_terminal() {
            continue;
        }
        let Some(metric) = run.metrics.iter_mut().find(|m| m.name == new.metric) else {
            continue;
        };
        if metric.phase.is_terminal() {
            continue;
        }
        metric.tally.record(new.measurement.phase);
        metric.measurements.push(new.measurement.clone());
        let excess = metric.measurements.len().saturating_sub(MEASUREMENTS_KEPT);
        metric.measurements.drain(..excess);
        let measured_at: Option<Timestamp> = new.measurement.time.parse().ok();
        metric.next_measurement_at = measured_at.map(|t| at(t + signed(definition.interval)));
        let assessment = assessment::assess(&definition.limits, &metric.tally, false);
        metric.phase = assessment.phase;
        metric.message = assessment.message;
        if metric.phase.is_terminal() {
            metric.next_measurement_at = None;
        }
    }
    for run in &mut status.analysis_runs {
        let Some(defs) = definitions.get(&run.name) else {
            continue;
        };
        let dry_run = |name: &str| defs.iter().any(|d| d.name == name && d.dry_run);
        run.phase = assessment::overall(run.metrics.iter().map(|m| (m.phase, dry_run(&m.name))));
        if assessment::should_stop(run.metrics.iter().map(|m| (m.phase, dry_run(&m.name)))) {
            for metric in &mut run.metrics {
                metric.next_measurement_at = None;
            }
        }
    }
}

/// The `(run, metric)` pairs to measure now.
pub fn due_measurements(status: &CanaryStatus, now: Timestamp) -> Vec<(String, String)> {
    status
        .analysis_runs
        .iter()
        .filter(|r| !r.phase.is_terminal())
        .flat_map(|r| {
            r.metrics
                .iter()
                .filter(move |m| {
                    !m.phase.is_terminal()
                        && parse(&m.next_measurement_at).is_some_and(|next| next <= now)
                })
                .map(move |m| (r.name.clone(), m.name.clone()))
        })
        .collect()
}

/// How long until the next measurement of any running run is due (zero if one is due now).
pub fn next_due(status: &CanaryStatus, now: Timestamp) -> Option<StdDuration> {
    status
        .analysis_runs
        .iter()
        .filter(|r| !r.phase.is_terminal())
        .flat_map(|r| r.metrics.iter())
        .filter(|m| !m.phase.is_terminal())
        .filter_map(|m| parse(&m.next_measurement_at))
        .map(|next| {
            let wait = next.duration_since(now);
            if wait.is_positive() {
                wait.unsigned_abs()
            } else {
                StdDuration::ZERO
            }
        })
        .min()
}

/// One line on why run `name` stands where it does: each metric's phase, message and latest
/// measurement.
pub fn summary(status: &CanaryStatus, name: &str) -> String {
    let Some(run) = status.analysis_runs.iter().find(|r| r.name == name) else {
        return String::new();
    };
    run.metrics
        .iter()
        .map(|m| {
            let latest = m
                .measurements
                .last()
                .map(|x| {
                    format!(
                        "; latest {} {:?}: {}",
                        x.value.as_deref().unwrap_or("-"),
                        x.phase,
                        x.reason
                    )
                })
                .unwrap_or_default();
            format!("{} {:?} ({}{latest})", m.name, m.phase, m.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}
