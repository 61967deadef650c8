//! Analysis runs inside a rollout, kept in `Canary.status.analysisRuns` so that a restarted
//! controller continues them: which metric is due when, what was measured, what it adds up to.
//! The controller asks [`due_measurements`] what to measure, measures, and hands the results to
//! `plan`, which records them here.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use jiff::{SignedDuration, Timestamp};

use crate::analysis::assessment::{self, AnalysisPhase, Limits, Tally};
use crate::analysis::compare::{self, CompareSetup, MeasuredInterval};
use crate::analysis::sequential::Verdict;
use crate::api::canary::{
    AnalysisRunStatus, CanaryStatus, CompareStatus, MEASUREMENTS_KEPT, MeasurementStatus,
    MetricStatus,
};
use crate::api::duration::{earlier, later};

/// The run that goes on in the background; the others are analysis steps (`step-N`).
pub const BACKGROUND: &str = "background";

/// The name of the run of the analysis step at `index`.
pub fn step_run(index: usize) -> String {
    format!("step-{index}")
}

/// Run `name` of the rollout in `status`, if it started.
pub fn run<'a>(status: &'a CanaryStatus, name: &str) -> Option<&'a AnalysisRunStatus> {
    status.analysis_runs.iter().find(|r| r.name == name)
}

fn run_mut<'a>(status: &'a mut CanaryStatus, name: &str) -> Option<&'a mut AnalysisRunStatus> {
    status.analysis_runs.iter_mut().find(|r| r.name == name)
}

/// Why a metric cannot be used in run `run`, if it cannot: an analysis step ends when its
/// deciding metrics do, and a threshold metric without `count` measures until the run ends,
/// so the step (and the canary's partial weight) would never end. Compare metrics end on
/// their verdict; the background analysis ends with the rollout.
pub fn endless_step_metric(
    run: &str,
    count: Option<u32>,
    compare: bool,
    dry_run: bool,
) -> Option<&'static str> {
    (run != BACKGROUND && count.is_none() && !compare && !dry_run).then_some(
        "has no count, so the analysis step would never end: set count, or move the template to spec.analysis (the background analysis)",
    )
}

/// A metric of a run, as resolved from its template (what status does not keep).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricDefinition {
    pub template: String,
    pub name: String,
    pub interval: StdDuration,
    pub initial_delay: StdDuration,
    pub limits: Limits,
    pub dry_run: bool,
    /// For `compare` metrics: how the judge is set up.
    pub compare: Option<CompareSetup>,
}

/// A measurement the controller took for `run`/`metric`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMeasurement {
    pub run: String,
    pub metric: String,
    /// For a compare metric, phase, value and reason are filled in by [`record`] from the
    /// judge; `time` is the end of the measured interval.
    pub measurement: MeasurementStatus,
    /// For a compare metric: the interval's counts, or why they could not be read.
    pub compare: Option<Result<MeasuredInterval, String>>,
}

fn at(time: Timestamp) -> String {
    time.to_string()
}

pub(super) fn parse(time: &Option<String>) -> Option<Timestamp> {
    time.as_deref()?.parse().ok()
}

pub(super) fn signed(duration: StdDuration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

/// The most a metric's schedule is offset by [`first_measurement_jitter`].
pub const MAX_JITTER: StdDuration = StdDuration::from_secs(5);

/// How much later than its `initialDelay` the first measurement of `metric` in run `run` of
/// the Canary of uid `canary_uid` is due, which offsets every later one too (the schedule
/// runs from the first): a share of a tenth of the interval, at most [`MAX_JITTER`], taken
/// from a hash of the three, so Canaries started together spread their queries evenly over
/// that window instead of sending them at once, and each Canary's schedule is the same on
/// every reconcile and after a restart. A tenth delays a run's first verdict by little; 5 s
/// spreads even thousands of Canaries' queries, so a long interval's first measurement is
/// not delayed further. No uid: no offset.
pub fn first_measurement_jitter(
    canary_uid: &str,
    run: &str,
    metric: &str,
    interval: StdDuration,
) -> StdDuration {
    if canary_uid.is_empty() {
        return StdDuration::ZERO;
    }
    let window = (interval / 10).min(MAX_JITTER);
    let key = format!("{canary_uid}/{run}/{metric}");
    let share = mix(crate::workload::fnv1a64(key.as_bytes()));
    // share / 2^64 of the window, in nanoseconds (the window is at most 5 s: no overflow).
    let nanos = (u128::from(share) * window.as_nanos()) >> 64;
    StdDuration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A 64-bit finalizer (SplitMix64's): FNV-1a of keys that differ only in their last
/// characters differs little in its high bits, which the share above is taken from.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Creates run `name` if it does not exist; returns its phase. Each metric's first
/// measurement is due after its `initialDelay` and its jitter (of the Canary `canary_uid`).
pub fn ensure(
    status: &mut CanaryStatus,
    name: &str,
    definitions: &[MetricDefinition],
    now: Timestamp,
    canary_uid: &str,
) -> AnalysisPhase {
    if let Some(index) = status.analysis_runs.iter().position(|r| r.name == name) {
        let run = &status.analysis_runs[index];
        if run.phase.is_terminal() || same_metrics(run, definitions) {
            return run.phase;
        }
        // The templates changed under a running analysis: measurements of metrics that no
        // longer exist can never be judged, and new ones would never be measured. Start over.
        status.analysis_runs.remove(index);
    }
    let metrics: Vec<MetricStatus> = definitions
        .iter()
        .map(|d| MetricStatus {
            name: d.name.clone(),
            template: d.template.clone(),
            phase: AnalysisPhase::Pending,
            message: String::new(),
            tally: Tally::default(),
            next_measurement_at: Some(at(later(
                now,
                d.initial_delay.saturating_add(first_measurement_jitter(
                    canary_uid, name, &d.name, d.interval,
                )),
            ))),
            last_passed_at: None,
            measurements: Vec::new(),
            compare: d.compare.as_ref().map(|_| CompareStatus::default()),
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

/// True when `run` measures exactly the metrics `definitions` define (name and template).
fn same_metrics(run: &AnalysisRunStatus, definitions: &[MetricDefinition]) -> bool {
    run.metrics.len() == definitions.len()
        && run
            .metrics
            .iter()
            .zip(definitions)
            .all(|(metric, definition)| {
                metric.name == definition.name && metric.template == definition.template
            })
}

/// Ends run `name` now, because the rollout reached promotion: every metric still measuring
/// is assessed as ended, so one without a usable measurement (Prometheus down, no traffic,
/// an `initialDelay` longer than the rollout) is Error or Inconclusive, never a silent pass.
/// Returns the run's phase, or `None` if the run never started.
pub fn conclude(
    status: &mut CanaryStatus,
    name: &str,
    definitions: &[MetricDefinition],
) -> Option<AnalysisPhase> {
    let run = run_mut(status, name)?;
    if run.phase.is_terminal() {
        return Some(run.phase);
    }
    for metric in run.metrics.iter_mut().filter(|m| !m.phase.is_terminal()) {
        let assessment = match definitions.iter().find(|d| d.name == metric.name) {
            Some(definition) => assess_metric(
                metric,
                definition,
                definition.compare.is_some(),
                true,
                false,
            ),
            None => assessment::Assessment {
                phase: AnalysisPhase::Inconclusive,
                message: "the metric is no longer in the analysis' templates".into(),
            },
        };
        metric.phase = assessment.phase;
        metric.message = assessment.message;
        metric.next_measurement_at = None;
    }
    run.phase = assessment::overall(phases(run, definitions));
    Some(run.phase)
}

/// A metric's phase and message from what it measured so far, `ending` when its run ends
/// now; `compared` when it is judged as a compare metric.
fn assess_metric(
    metric: &MetricStatus,
    definition: &MetricDefinition,
    compared: bool,
    ending: bool,
    finish_on_no_regression: bool,
) -> assessment::Assessment {
    if !compared {
        return assessment::assess(&definition.limits, &metric.tally, ending);
    }
    compare::metric_phase(
        metric.compare.as_ref().and_then(|c| c.assessment.as_ref()),
        &definition.limits,
        &metric.tally,
        metric
            .compare
            .as_ref()
            .map_or(0, |c| c.record.intervals.len()),
        ending,
        finish_on_no_regression,
    )
}

/// Each metric's phase in `run`, and whether it is `dryRun` (does not decide).
fn phases<'a>(
    run: &'a AnalysisRunStatus,
    definitions: &'a [MetricDefinition],
) -> impl Iterator<Item = (AnalysisPhase, bool)> + 'a {
    run.metrics.iter().map(|m| {
        let dry_run = definitions.iter().any(|d| d.name == m.name && d.dry_run);
        (m.phase, dry_run)
    })
}

/// A deciding metric of run `name` that is still measuring and has not passed a measurement
/// taken at or after `since` (when the final weight took effect; `None`: at any time):
/// concluding now would promote on what was measured at another weight, or on errors alone.
pub fn awaiting_a_pass(
    status: &CanaryStatus,
    name: &str,
    definitions: &[MetricDefinition],
    since: Option<Timestamp>,
) -> Option<String> {
    let run = run(status, name)?;
    if run.phase.is_terminal() {
        return None;
    }
    let passed = |m: &MetricStatus| match since {
        Some(since) => parse(&m.last_passed_at).is_some_and(|passed| passed >= since),
        None => m.tally.successful > 0,
    };
    run.metrics
        .iter()
        .filter(|m| !m.phase.is_terminal() && !passed(m))
        .find(|m| definitions.iter().any(|d| d.name == m.name && !d.dry_run))
        .map(|m| m.name.clone())
}

/// Stops the clocks of every run still measuring, because the canary has no traffic to
/// judge (see [`resume_measuring`]).
pub fn hold_measuring(status: &mut CanaryStatus) {
    for run in status
        .analysis_runs
        .iter_mut()
        .filter(|r| !r.phase.is_terminal())
    {
        for metric in run.metrics.iter_mut().filter(|m| !m.phase.is_terminal()) {
            metric.next_measurement_at = None;
        }
    }
}

/// Starts the clocks [`hold_measuring`] stopped, as at a run's start: each metric's next
/// measurement after its `initialDelay` (and jitter) from `now`, and a compare metric's next
/// interval from `now`, so no measurement covers the time the canary had no traffic.
pub fn resume_measuring(
    status: &mut CanaryStatus,
    definitions: &BTreeMap<String, Vec<MetricDefinition>>,
    now: Timestamp,
    canary_uid: &str,
) {
    for run in status
        .analysis_runs
        .iter_mut()
        .filter(|r| !r.phase.is_terminal())
    {
        let Some(run_definitions) = definitions.get(&run.name) else {
            continue;
        };
        for metric in run
            .metrics
            .iter_mut()
            .filter(|m| !m.phase.is_terminal() && m.next_measurement_at.is_none())
        {
            let Some(definition) = run_definitions.iter().find(|d| d.name == metric.name) else {
                continue;
            };
            let mut first = definition.initial_delay;
            if let Some(compare) = metric.compare.as_mut() {
                // Its first interval starts now and lasts at least one interval.
                compare.window_end = Some(at(now));
                first = first.max(definition.interval);
            }
            let jitter =
                first_measurement_jitter(canary_uid, &run.name, &metric.name, definition.interval);
            metric.next_measurement_at = Some(at(later(now, first.saturating_add(jitter))));
        }
    }
}

/// Stops every run that is still measuring, because the rollout ended (`outcome`: what
/// ended it); their phases stay as they were, with `outcome` as the run's message.
pub fn stop_measuring(status: &mut CanaryStatus, outcome: &str) {
    for run in status
        .analysis_runs
        .iter_mut()
        .filter(|r| !r.phase.is_terminal())
    {
        run.message = format!("not finished: {outcome}");
        for metric in &mut run.metrics {
            metric.next_measurement_at = None;
        }
    }
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
        let Some(run) = run_mut(status, &new.run) else {
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
        let mut measurement = new.measurement.clone();
        let compared = match (&definition.compare, &new.compare) {
            (Some(setup), Some(outcome)) => {
                let state = metric.compare.get_or_insert_with(CompareStatus::default);
                let judged = compare::record_interval(setup, &mut state.record, outcome);
                if judged.phase != crate::analysis::MeasurementPhase::Error {
                    state.window_end = Some(measurement.time.clone());
                }
                if judged.assessment.is_some() {
                    state.assessment.clone_from(&judged.assessment);
                }
                measurement.phase = judged.phase;
                measurement.value = judged.value;
                measurement.reason = judged.reason;
                true
            }
            _ => false,
        };
        metric.tally.record(measurement.phase);
        if measurement.phase == crate::analysis::MeasurementPhase::Successful {
            metric.last_passed_at = Some(measurement.time.clone());
        }
        metric.measurements.push(measurement.clone());
        let excess = metric.measurements.len().saturating_sub(MEASUREMENTS_KEPT);
        metric.measurements.drain(..excess);
        let measured_at: Option<Timestamp> = measurement.time.parse().ok();
        let due = parse(&metric.next_measurement_at);
        metric.next_measurement_at =
            measured_at.map(|t| at(next_on_schedule(due, t, definition.interval)));
        // An analysis step is done once the canary is shown fine; the background analysis
        // keeps watching and the rollout reads the verdict.
        let assessment = assess_metric(metric, definition, compared, false, new.run != BACKGROUND);
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
        run.phase = assessment::overall(phases(run, defs));
        if assessment::should_stop(phases(run, defs)) {
            for metric in &mut run.metrics {
                metric.next_measurement_at = None;
            }
        }
    }
}

/// When the measurement after one that was due at `due` and taken at `measured` is due: on
/// the metric's schedule (`due` + k × `interval`), at the first slot at least half an interval
/// after `measured`. So lag never accumulates (a measurement taken 2 s late leaves the next
/// one where it was), a very late one brings no burst of catch-up measurements (slots it
/// missed are skipped), and two measurements are never closer than half an interval (a
/// compare metric's interval, which runs from one measurement to the next, is never shorter).
/// Without a due time (not on a schedule yet) the next is one interval after `measured`.
pub(super) fn next_on_schedule(
    due: Option<Timestamp>,
    measured: Timestamp,
    interval: StdDuration,
) -> Timestamp {
    let interval_nanos = interval.as_nanos();
    let Some(due) = due.filter(|_| interval_nanos > 0) else {
        return later(measured, interval);
    };
    let earliest = later(measured, interval / 2);
    let behind = earliest.duration_since(due).as_nanos();
    // The number of intervals from `due` to the first slot at or after `earliest`; at least 1.
    let slots = if behind <= 0 {
        1
    } else {
        behind.unsigned_abs().div_ceil(interval_nanos).max(1)
    };
    let offset = u32::try_from(slots).map_or(StdDuration::MAX, |slots| {
        interval.checked_mul(slots).unwrap_or(StdDuration::MAX)
    });
    later(due, offset)
}

/// Where the next interval of a compare metric starts: where the last one ended, or one
/// interval before `now` for the first.
pub fn compare_window_start(
    status: &CanaryStatus,
    run: &str,
    metric: &str,
    interval: StdDuration,
    now: Timestamp,
) -> Timestamp {
    metric_status(status, run, metric)
        .and_then(|m| parse(&m.compare.as_ref()?.window_end))
        .unwrap_or_else(|| earlier(now, interval))
}

/// Metric `metric` of run `run`, if both exist.
fn metric_status<'a>(
    status: &'a CanaryStatus,
    run: &str,
    metric: &str,
) -> Option<&'a MetricStatus> {
    self::run(status, run)?
        .metrics
        .iter()
        .find(|m| m.name == metric)
}

/// The phase [`record`] gave `measurement` in `status`, if it was recorded (measurements of
/// runs that ended meanwhile are dropped).
pub fn recorded_phase(
    status: &CanaryStatus,
    measurement: &NewMeasurement,
) -> Option<crate::analysis::MeasurementPhase> {
    metric_status(status, &measurement.run, &measurement.metric)?
        .measurements
        .iter()
        .rev()
        .find(|m| m.time == measurement.measurement.time)
        .map(|m| m.phase)
}

/// Evidence-driven progression: when every deciding compare metric of run `name` says
/// NoRegression and each measured an interval that ended at or after `since` (evidence at
/// the current weight), the explanations; otherwise `None`. A run without compare metrics never
/// allows it.
pub fn no_regression_shown(
    status: &CanaryStatus,
    definitions: &[MetricDefinition],
    name: &str,
    since: Timestamp,
) -> Option<String> {
    let run = run(status, name)?;
    if run.phase.is_terminal() && run.phase != AnalysisPhase::Successful {
        return None;
    }
    let mut explanations = Vec::new();
    let mut fresh = true;
    for definition in definitions
        .iter()
        .filter(|d| d.compare.is_some() && !d.dry_run)
    {
        let metric = run.metrics.iter().find(|m| m.name == definition.name)?;
        let state = metric.compare.as_ref()?;
        let assessment = state.assessment.as_ref()?;
        if assessment.verdict != Verdict::NoRegression {
            return None;
        }
        fresh &= parse(&state.window_end).is_some_and(|end| end >= since);
        explanations.push(format!("{}: {}", metric.name, assessment.explanation));
    }
    (fresh && !explanations.is_empty()).then(|| explanations.join("; "))
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
    let Some(run) = run(status, name) else {
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

/// Why run `name` ended in Error, for status and events: each metric in Error with its limit
/// and its latest error, which names the metrics source and what went wrong.
pub fn errors(status: &CanaryStatus, name: &str) -> String {
    let Some(run) = run(status, name) else {
        return String::new();
    };
    run.metrics
        .iter()
        .filter(|m| m.phase == AnalysisPhase::Error)
        .map(|m| {
            let latest = m
                .measurements
                .iter()
                .rev()
                .find(|x| x.phase == crate::analysis::MeasurementPhase::Error)
                .map_or("no error kept", |x| x.reason.as_str());
            format!("{} ({}): {latest}", m.name, m.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}
