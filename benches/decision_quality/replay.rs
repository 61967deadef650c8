//! The real-Prometheus replay track: the production PromQL path gives every method the same
//! counts as the in-process track, so the decisions agree run for run.
//!
//! For a few cells, each run's simulated counters are written as OpenMetrics (one series
//! per pod and counter, labelled with the pod; a restart is a new series starting from zero;
//! a missing scrape is a sample not written), backfilled with
//! `promtool tsdb create-blocks-from openmetrics` into a real Prometheus, and read back with
//! the compare metrics' own code: a template prepared by `canary::analysis::run::prepare`,
//! measured by `canary::analysis::compare::measure` with instant queries at `time=` each
//! interval's end, its start being the previous interval's end readings (reset-aware
//! differences, no `increase()`), per version and per
//! pod (`podLabel`). The counts become the observations every method (ours, ours given the
//! per-pod counts, and the baselines) judges, and each run's decision and decision interval
//! are compared with the in-process track's for the same seed.

#[path = "../../tests/support/prometheus.rs"]
mod prometheus;

use std::collections::BTreeMap;
use std::time::Instant;

use canary::analysis::compare::{
    self, CounterReadings, MAX_POD_GROUPS, MeasuredInterval, PodCounts,
};
use canary::analysis::run::{NoSecrets, PreparedMetric, prepare};
use canary::analysis::sequential::{ErrorCounts, HistogramCounts, PodHistogramCounts};
use canary::api::AnalysisTemplate;
use canary::metrics::PrometheusSource;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::methods::{Decision, MethodKind, variant_named};
use crate::simulation::{
    BOUNDARIES, INTERVALS, Observation, PodObservation, Scenario, Schedule, simulate_run,
};
use crate::{Cell, RunOutcome, decide, run_seed};

/// The cells replayed: healthy with the data problems the PromQL path must handle (counter
/// resets, missing scrapes, shared incidents), and the regressions of the headline table.
const CELLS: [(Scenario, f64, Schedule); 6] = [
    (Scenario::AaTest, 100.0, Schedule::OnePercent),
    (Scenario::CounterResets, 1000.0, Schedule::Stepped),
    (Scenario::MissingScrapes, 100.0, Schedule::FivePercent),
    (Scenario::ErrorsX2, 1000.0, Schedule::OnePercent),
    (Scenario::ErrorsX5, 100.0, Schedule::OnePercent),
    (Scenario::Latency20, 100.0, Schedule::OnePercent),
];

/// The compare template the replay reads through: errors and latency of `{{workload}}`, also
/// per pod.
const TEMPLATE: &str = r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: replay}
spec:
  metrics:
  - name: errors
    compare:
      requests: bench_requests_total{workload="{{workload}}"}
      errors: bench_errors_total{workload="{{workload}}"}
      podLabel: pod
    provider: {prometheus: {}}
  - name: latency
    compare:
      latencyBuckets: bench_latency_seconds_bucket{workload="{{workload}}"}
      podLabel: pod
    provider: {prometheus: {}}
"#;

/// Our judge given the per-pod counts (`compare.podLabel`), replayed besides the grid's methods.
const POD_VARIANT: &str = "noise learned from pods";

fn start() -> Timestamp {
    "2024-06-01T00:00:00Z".parse().expect("a valid time")
}

/// The end of interval `index` (0-based): one minute per interval after `start()`.
fn end_of(index: usize) -> Timestamp {
    start() + SignedDuration::from_mins(index as i64 + 1)
}

/// One replayed run: its identity, the in-process observations and outcomes.
struct Run {
    cell: usize,
    name: String,
    observations: Vec<Observation>,
    in_process: Vec<RunOutcome>,
}

/// One pod's counters: cumulative requests, errors and buckets, and its series generation
/// (a new one after each restart).
#[derive(Default)]
struct PodCounters {
    generation: usize,
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

/// Writes one run's counters, one series per pod as a scraped service has them: cumulative,
/// a new series (`generation`) after a restart of the version's first pod, nothing at the end
/// of a missing interval; a pod appears when the canary's weight first needs it.
fn write_run(om: &mut prometheus::OpenMetrics, run: &Run) {
    let write = |om: &mut prometheus::OpenMetrics,
                 workload: &str,
                 pod: usize,
                 at: Timestamp,
                 counters: &PodCounters| {
        let (pod, generation) = (format!("p{pod:02}"), counters.generation.to_string());
        let labels = [
            ("workload", workload),
            ("pod", pod.as_str()),
            ("generation", generation.as_str()),
        ];
        om.counter(
            "bench_requests_total",
            &labels,
            at,
            counters.requests as f64,
        );
        om.counter("bench_errors_total", &labels, at, counters.errors as f64);
        let buckets: Vec<(f64, f64)> = BOUNDARIES
            .iter()
            .zip(&counters.buckets)
            .map(|(le, count)| (*le, *count as f64))
            .collect();
        om.histogram(
            "bench_latency_seconds",
            &labels,
            at,
            &buckets,
            0.0,
            counters.buckets.last().copied().unwrap_or(0) as f64,
        );
    };
    for (side, version) in ["canary", "stable"].into_iter().enumerate() {
        let workload = format!("{}-{version}", run.name);
        let mut pods: Vec<PodCounters> = Vec::new();
        let mut reset_pending = false;
        for observation in &run.observations {
            reset_pending |= observation.resets[side];
            if observation.missing {
                continue;
            }
            let counts = observation
                .pods
                .as_ref()
                .expect("the replay simulates per-pod counts");
            let (errors, histograms) = if side == 0 {
                (&counts.errors.canary, &counts.histograms.canary)
            } else {
                (&counts.errors.stable, &counts.histograms.stable)
            };
            // A new pod's series first appears with its first interval's counts (a new series
            // counts its whole value).
            pods.resize_with(pods.len().max(errors.len()), || PodCounters {
                buckets: vec![0; BOUNDARIES.len() + 1],
                ..PodCounters::default()
            });
            if std::mem::take(&mut reset_pending) {
                // The restarted process's counters begin again at zero under a new series;
                // the old one keeps its last value until it goes stale.
                let first = &mut pods[0];
                *first = PodCounters {
                    generation: first.generation + 1,
                    buckets: vec![0; BOUNDARIES.len() + 1],
                    ..PodCounters::default()
                };
            }
            for (index, (counters, ([requests, errors], buckets))) in pods
                .iter_mut()
                .zip(errors.iter().zip(histograms))
                .enumerate()
            {
                counters.requests += requests;
                counters.errors += errors;
                for (total, count) in counters.buckets.iter_mut().zip(buckets) {
                    *total += count;
                }
                write(om, &workload, index, end_of(observation.interval), counters);
            }
        }
    }
}

/// Reads one run back through the compare metrics' PromQL path.
async fn read_run(
    source: &PrometheusSource,
    template: &AnalysisTemplate,
    address: &str,
    run: &Run,
) -> Result<Vec<Observation>, String> {
    let context = BTreeMap::from([
        ("canary".to_string(), format!("{}-canary", run.name)),
        ("stable".to_string(), format!("{}-stable", run.name)),
    ]);
    let prepared = prepare(
        "replay",
        &template.spec,
        &BTreeMap::new(),
        &context,
        Some(address),
        &NoSecrets,
    )
    .map_err(|problems| format!("the replay template does not prepare: {problems:?}"))?;
    let metric = |name: &str| -> Result<&PreparedMetric, String> {
        prepared
            .metrics
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| format!("no metric {name}"))
    };
    let (errors, latency) = (metric("errors")?, metric("latency")?);
    let mut observations = Vec::with_capacity(INTERVALS);
    let (mut error_readings, mut latency_readings) = (None, None);
    for (index, simulated) in run.observations.iter().enumerate() {
        let from = if index == 0 {
            start()
        } else {
            end_of(index - 1)
        };
        let to = end_of(index);
        let MeasuredInterval { counts: e, .. } =
            read(source, errors, from, to, &mut error_readings).await?;
        let MeasuredInterval { counts: l, .. } =
            read(source, latency, from, to, &mut latency_readings).await?;
        let error_counts = e.error_counts();
        // A scrape that did not happen leaves the counters where they were: both versions
        // moved by nothing, which is how the query side sees a missing interval.
        let missing = error_counts.canary_requests == 0 && error_counts.stable_requests == 0;
        let zeros = || vec![0; BOUNDARIES.len() + 1];
        observations.push(Observation {
            interval: index,
            missing,
            errors: if missing {
                ErrorCounts::default()
            } else {
                error_counts
            },
            histogram: if missing {
                HistogramCounts::default()
            } else {
                HistogramCounts {
                    canary: if l.canary.is_empty() {
                        zeros()
                    } else {
                        l.canary
                    },
                    stable: if l.stable.is_empty() {
                        zeros()
                    } else {
                        l.stable
                    },
                }
            },
            truth: simulated.truth,
            stable_bucket_probabilities: simulated.stable_bucket_probabilities.clone(),
            canary_bucket_probabilities: simulated.canary_bucket_probabilities.clone(),
            resets: simulated.resets,
            pods: if missing {
                None
            } else {
                pod_observation(e.pods, l.pods)
            },
        });
    }
    Ok(observations)
}

/// The per-pod counts read back, shaped as the simulation's; `None` for an interval without
/// data (or a series without the pod label).
fn pod_observation(
    errors: Option<PodCounts>,
    latency: Option<PodCounts>,
) -> Option<PodObservation> {
    let (errors, latency) = (errors?, latency?);
    Some(PodObservation {
        errors: errors.error_counts(),
        histograms: PodHistogramCounts {
            canary: latency.canary,
            stable: latency.stable,
        },
    })
}

/// Measures `metric` over `[from, to]` starting from the previous interval's readings, as
/// compare metrics do in production, and keeps the readings at `to` for the next interval.
async fn read(
    source: &PrometheusSource,
    metric: &PreparedMetric,
    from: Timestamp,
    to: Timestamp,
    readings: &mut Option<CounterReadings>,
) -> Result<MeasuredInterval, String> {
    let prepared = metric.compare.as_ref().expect("a compare metric");
    let (measured, at_end) = compare::measure(
        source,
        prepared,
        &metric.request,
        from,
        to,
        readings.as_ref(),
    )
    .await
    .map_err(|e| e.to_string())?;
    *readings = Some(at_end);
    Ok(measured)
}

/// Per method and cell: runs, runs that agree, and the decision summary of both tracks.
#[derive(Default, Clone)]
struct Tally {
    runs: usize,
    agree: usize,
    in_process_rollbacks: usize,
    replay_rollbacks: usize,
    in_process_intervals: Vec<usize>,
    replay_intervals: Vec<usize>,
    counts_equal: usize,
    pod_counts_equal: usize,
}

fn median(values: &[usize]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    (sorted[sorted.len() / 2] + 1).to_string()
}

pub fn run(seed: u64, runs_per_cell: usize, json_path: &str) {
    let started = Instant::now();
    // Every method of the grid, and ours given the per-pod counts.
    let mut methods = MethodKind::ALL.to_vec();
    methods.push(variant_named(POD_VARIANT));
    let cells: Vec<Cell> = CELLS
        .iter()
        .map(|&(scenario, rps, schedule)| Cell {
            scenario,
            rps,
            schedule,
            runs: runs_per_cell,
        })
        .collect();
    let runs: Vec<Run> = cells
        .iter()
        .enumerate()
        .flat_map(|(index, cell)| {
            let methods = &methods;
            (0..cell.runs).map(move |run| {
                let observations = simulate_run(
                    cell.scenario,
                    cell.rps,
                    cell.schedule,
                    run_seed(seed, cell, run),
                    true,
                );
                let in_process = decide(&observations, methods);
                Run {
                    cell: index,
                    name: format!("c{index}r{run}"),
                    observations,
                    in_process,
                }
            })
        })
        .collect();
    let mut om = prometheus::OpenMetrics::new();
    for run in &runs {
        write_run(&mut om, run);
    }
    eprintln!(
        "replay: {} runs in {} cells written as OpenMetrics; backfilling with promtool",
        runs.len(),
        cells.len()
    );
    let server = prometheus::Prometheus::builder().backfill(&om).start();
    let address = server.url();
    eprintln!(
        "replay: Prometheus ready at {address} after {:.0} s; querying",
        started.elapsed().as_secs_f64()
    );
    let template: AnalysisTemplate = serde_saphyr::from_str(TEMPLATE).expect("template parses");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let source = PrometheusSource::new().expect("a Prometheus client");
    let replayed: Vec<Result<Vec<Observation>, String>> = runtime.block_on(async {
        futures::stream::iter(runs.iter())
            .map(|run| read_run(&source, &template, &address, run))
            .buffered(8)
            .collect()
            .await
    });
    let query_seconds = started.elapsed().as_secs_f64();

    let mut tallies = vec![vec![Tally::default(); methods.len()]; cells.len()];
    let mut disagreements = Vec::new();
    for (run, replayed) in runs.iter().zip(&replayed) {
        let observations = match replayed {
            Ok(observations) => observations,
            Err(error) => panic!("run {} could not be read back: {error}", run.name),
        };
        let same_counts = run
            .observations
            .iter()
            .zip(observations)
            .all(|(a, b)| a.errors == b.errors && (a.missing || a.histogram == b.histogram));
        let same_pod_counts = run
            .observations
            .iter()
            .zip(observations)
            .all(|(a, b)| a.pods.as_ref().map(PodObservation::grouped) == b.pods);
        let outcomes = decide(observations, &methods);
        for (m, (ours, theirs)) in run.in_process.iter().zip(&outcomes).enumerate() {
            let tally = &mut tallies[run.cell][m];
            tally.runs += 1;
            tally.counts_equal += usize::from(same_counts);
            tally.pod_counts_equal += usize::from(same_pod_counts);
            let agree = ours.decision == theirs.decision && ours.interval == theirs.interval;
            tally.agree += usize::from(agree);
            if !agree {
                disagreements.push(format!(
                    "{} {}: in-process {:?} at {}, replay {:?} at {}",
                    run.name,
                    methods[m].short_label(),
                    ours.decision,
                    ours.interval + 1,
                    theirs.decision,
                    theirs.interval + 1
                ));
            }
            for (outcome, rollbacks, intervals) in [
                (
                    ours,
                    &mut tally.in_process_rollbacks,
                    &mut tally.in_process_intervals,
                ),
                (
                    theirs,
                    &mut tally.replay_rollbacks,
                    &mut tally.replay_intervals,
                ),
            ] {
                if outcome.decision == Decision::Rollback {
                    *rollbacks += 1;
                    intervals.push(outcome.interval);
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut out = String::new();
    out.push_str(&format!(
        "### Real-Prometheus replay track\n\nCommand: `cargo bench --bench decision_quality -- --replay --replay-runs {runs_per_cell} --seed {seed}` ({elapsed:.0} s: simulating, backfilling and querying took {query_seconds:.0} s). Each cell: {runs_per_cell} runs with the in-process track's seeds; rollbacks / runs and the median minute of rollback, in process → through Prometheus; agreement = same decision in the same minute.\n\n"
    ));
    out.push_str("| cell | method | in process | replay | agreement |\n|---|---|---|---|---|\n");
    let mut json_cells = Vec::new();
    for (cell, per_method) in cells.iter().zip(&tallies) {
        let label = format!(
            "{} {} rps {}",
            cell.scenario.label(),
            cell.rps,
            cell.schedule.label()
        );
        let mut json_methods = Vec::new();
        for (method, tally) in methods.iter().zip(per_method) {
            let name = match method {
                MethodKind::Variant(_) => format!("ours, {}", method.label()),
                _ => method.short_label(),
            };
            out.push_str(&format!(
                "| {label} | {name} | {}/{} ({}) | {}/{} ({}) | {}/{} |\n",
                tally.in_process_rollbacks,
                tally.runs,
                median(&tally.in_process_intervals),
                tally.replay_rollbacks,
                tally.runs,
                median(&tally.replay_intervals),
                tally.agree,
                tally.runs
            ));
            json_methods.push(json!({
                "method": method.label(),
                "runs": tally.runs,
                "agree": tally.agree,
                "inProcessRollbacks": tally.in_process_rollbacks,
                "replayRollbacks": tally.replay_rollbacks,
                "inProcessMedianRollbackMinute": median(&tally.in_process_intervals),
                "replayMedianRollbackMinute": median(&tally.replay_intervals),
                "runsWithIdenticalCounts": tally.counts_equal,
                "runsWithIdenticalPodCounts": tally.pod_counts_equal,
            }));
        }
        json_cells.push(json!({
            "scenario": cell.scenario.label(),
            "rps": cell.rps,
            "schedule": cell.schedule.label(),
            "methods": json_methods,
        }));
    }
    let total: usize = tallies.iter().flatten().map(|t| t.runs).sum();
    let agree: usize = tallies.iter().flatten().map(|t| t.agree).sum();
    let identical: usize = tallies
        .iter()
        .map(|per_method| per_method[0].counts_equal)
        .sum();
    let identical_pods: usize = tallies
        .iter()
        .map(|per_method| per_method[0].pod_counts_equal)
        .sum();
    out.push_str(&format!(
        "\nAgreement over every method and run: {agree}/{total}. Runs whose every interval's counts read through Prometheus equal the in-process counts: {identical}/{runs}; per pod (more than {MAX_POD_GROUPS} pods summed into that many groups, as compare metrics do): {identical_pods}/{runs}.\n",
        runs = runs.len()
    ));
    for line in disagreements.iter().take(20) {
        out.push_str(&format!("- disagreement: {line}\n"));
    }
    println!("{out}");
    let document = json!({
        "command": format!("cargo bench --bench decision_quality -- --replay --replay-runs {runs_per_cell} --seed {seed}"),
        "seconds": elapsed,
        "agree": agree,
        "decisions": total,
        "runsWithIdenticalCounts": identical,
        "runsWithIdenticalPodCounts": identical_pods,
        "runs": runs.len(),
        "disagreements": disagreements,
        "cells": json_cells,
    });
    if let Some(parent) = std::path::Path::new(json_path).parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(
        json_path,
        serde_json::to_string_pretty(&document).expect("serializable"),
    )
    .unwrap_or_else(|error| panic!("cannot write {json_path}: {error}"));
    eprintln!("wrote {json_path}");
    drop(server);
}
