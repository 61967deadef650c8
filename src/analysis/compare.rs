//! `compare` metrics: the canary judged against stable on counts, interval by interval, by the
//! sequential test of [`super::sequential`].
//!
//! Each interval `[start, end]` the counter queries are evaluated for both versions at both
//! instants (`time=start`, `time=end`; the start's readings are the previous interval's end
//! readings when the caller kept them); the increase is computed here, series by series:
//! a series whose value went down was reset (a restarted process) and counts its whole new
//! value, a series that did not exist at `start` (a new pod) counts its whole value, a series
//! that disappeared counts nothing. `increase()` is never used: its extrapolation to the window
//! edges makes counts that are not the exact number of requests the test assumes.
//!
//! The judge's state is the list of per-interval counts ([`CompareRecord`]), which is small,
//! lives in `Canary.status` and replays deterministically into the judge after a restart.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::assessment::{self, AnalysisPhase, Limits, Tally};
use super::measurement::MeasurementPhase;
use super::sequential::{
    Assessment, ErrorCounts, ErrorRateJudge, HistogramCounts, LatencyJudge, PodErrorCounts,
    PodHistogramCounts, SequentialConfig, Verdict,
};
use crate::metrics::{MetricsError, MetricsSource, Query, QueryOutput, QueryRequest};

/// Most intervals a comparison keeps (24 h of one-minute intervals); a metric that reaches it
/// ends as if its count were reached.
pub const MAX_INTERVALS: usize = 1440;

/// Per-pod counts are kept for this many intervals of a comparison (the first ones), in at
/// most [`MAX_POD_GROUPS`] groups per version, so that `Canary.status` stays small; later
/// intervals are judged on the versions' totals alone.
pub const MAX_POD_INTERVALS: usize = 30;

/// Pods of a version beyond this many are summed into this many groups (pod `i` of the
/// sorted names into group `i mod MAX_POD_GROUPS`). Under the judge's noise model a sum of pods
/// is a pod with the summed shape, so grouping loses information but not validity.
pub const MAX_POD_GROUPS: usize = 8;

/// What is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CompareKind {
    /// Requests and errors: the canary's error rate against stable's.
    ErrorRate,
    /// Histogram buckets: the canary's latency distribution against stable's.
    Latency,
}

/// The counters a comparison reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Counter {
    Requests,
    Errors,
    LatencyBuckets,
}

impl Counter {
    pub fn field(self) -> &'static str {
        match self {
            Counter::Requests => "compare.requests",
            Counter::Errors => "compare.errors",
            Counter::LatencyBuckets => "compare.latencyBuckets",
        }
    }
}

/// One counter query rendered for both versions.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterQuery {
    pub counter: Counter,
    pub canary: Query,
    pub stable: Query,
}

/// How a comparison is judged (what `Canary.status` does not keep).
#[derive(Clone, Debug, PartialEq)]
pub struct CompareSetup {
    pub kind: CompareKind,
    /// The template's settings, with `alpha` already divided among its compare metrics.
    pub config: SequentialConfig,
}

/// A compare metric ready to measure.
#[derive(Clone, Debug)]
pub struct PreparedCompare {
    pub setup: CompareSetup,
    pub queries: Vec<CounterQuery>,
    /// The label naming the pod of each series (`compare.podLabel`), if per-pod counts are
    /// wanted.
    pub pod_label: Option<String>,
}

/// One interval's counts of both versions, as kept in status: for an error-rate comparison
/// `[requests, errors]`, for latency the cumulative bucket counts in `le` order with `+Inf`
/// last. Both empty: Prometheus had no data for the interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IntervalCounts {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stable: Vec<u64>,
    /// The same counts per pod (or group of pods), when the metric names its `podLabel` and
    /// every series carries it: the judge then learns the noise level from how pods differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodCounts>,
}

/// One interval's counts per pod (or group of pods) of each version, each shaped like the
/// version's counts (`[requests, errors]`, or cumulative buckets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PodCounts {
    pub canary: Vec<Vec<u64>>,
    pub stable: Vec<Vec<u64>>,
}

impl PodCounts {
    /// An error-rate interval's counts per pod, as the judge takes them.
    pub fn error_counts(&self) -> PodErrorCounts {
        let pairs = |pods: &[Vec<u64>]| pods.iter().map(|pod| requests_and_errors(pod)).collect();
        PodErrorCounts {
            canary: pairs(&self.canary),
            stable: pairs(&self.stable),
        }
    }
}

/// `[requests, errors]` as the error-rate judge takes them (missing entries count zero).
fn requests_and_errors(counts: &[u64]) -> [u64; 2] {
    let value = |i: usize| counts.get(i).copied().unwrap_or(0);
    [value(0), value(1)]
}

impl IntervalCounts {
    pub fn is_missing(&self) -> bool {
        self.canary.is_empty() && self.stable.is_empty()
    }

    /// An error-rate interval's counts, as the judge takes them.
    pub fn error_counts(&self) -> ErrorCounts {
        let [canary_requests, canary_errors] = requests_and_errors(&self.canary);
        let [stable_requests, stable_errors] = requests_and_errors(&self.stable);
        ErrorCounts {
            canary_requests,
            canary_errors,
            stable_requests,
            stable_errors,
        }
    }

    /// For people: `canary 12/600, stable 290/59400` or the request totals of a histogram.
    pub fn describe(&self, kind: CompareKind) -> String {
        if self.is_missing() {
            return "no data".into();
        }
        let side = |counts: &[u64]| match kind {
            CompareKind::ErrorRate => format!(
                "{}/{}",
                counts.get(1).copied().unwrap_or(0),
                counts.first().copied().unwrap_or(0)
            ),
            CompareKind::Latency => format!("{} req", counts.last().copied().unwrap_or(0)),
        };
        format!(
            "canary {}, stable {}",
            side(&self.canary),
            side(&self.stable)
        )
    }
}

/// A measured interval: its counts, and for latency the bucket layout they follow.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredInterval {
    pub counts: IntervalCounts,
    pub boundaries: Vec<f64>,
}

/// The comparison's state: every interval's counts, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompareRecord {
    /// The finite `le` boundaries of a latency comparison (fixed by its first interval with
    /// data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundaries: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<IntervalCounts>,
}

/// Why an interval could not be measured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeasureError {
    #[error("{field} ({side}) at {at}: {source}")]
    Query {
        field: &'static str,
        side: &'static str,
        at: Timestamp,
        source: MetricsError,
    },
    #[error("{field} ({side}): {message}")]
    Data {
        field: &'static str,
        side: &'static str,
        message: String,
    },
}

impl MeasureError {
    /// The error with the secret values of `prepared`'s queries taken out of a message about
    /// the data: a series' labels may repeat a secret the query selected it by.
    fn with_secrets_redacted(self, prepared: &PreparedCompare) -> Self {
        match self {
            Self::Data {
                field,
                side,
                message,
            } => Self::Data {
                field,
                side,
                message: prepared
                    .queries
                    .iter()
                    .flat_map(|q| [&q.canary, &q.stable])
                    .fold(message, |message, query| query.redact(&message)),
            },
            query_error @ Self::Query { .. } => query_error,
        }
    }
}

/// Counter values at one instant, by series.
type Snapshot = BTreeMap<BTreeMap<String, String>, f64>;

/// One series' labels and its increase over the interval.
type Increase = (BTreeMap<String, String>, f64);

/// Some of a version's series (all of them, or one pod group's), by counter.
type Series<'a> = BTreeMap<u8, Vec<&'a Increase>>;

/// The series of `counter` in `series`.
fn of_counter<'a, 'b>(series: &'b Series<'a>, counter: Counter) -> &'b [&'a Increase] {
    series
        .get(&(counter as u8))
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The summed increase of `counter` over `series`, as a whole count.
fn total(series: &Series, counter: Counter) -> u64 {
    whole(of_counter(series, counter).iter().map(|(_, x)| x).sum())
}

fn snapshot(output: QueryOutput) -> Snapshot {
    match output {
        QueryOutput::Scalar(value) => BTreeMap::from([(BTreeMap::new(), value)]),
        QueryOutput::Vector(series) => series
            .into_iter()
            .filter(|s| s.value.is_finite())
            .map(|s| (s.labels, s.value))
            .collect(),
        // Comparisons run on the Prometheus provider only (the CRD and `prepare` say so).
        QueryOutput::Json(_) => Snapshot::new(),
    }
}

/// The increase of every series between two snapshots, reset-aware: a value that went down
/// restarted from zero (its whole new value counts), a new series counts its whole value, a
/// series gone counts nothing.
fn increases(before: &Snapshot, after: &Snapshot) -> Vec<Increase> {
    after
        .iter()
        .map(|(labels, &now)| {
            let increase = match before.get(labels) {
                Some(&then) if now >= then => now - then,
                _ => now,
            };
            (labels.clone(), increase)
        })
        .collect()
}

fn whole(value: f64) -> u64 {
    value.round().max(0.0) as u64
}

/// Increases per finite `le` and `+Inf`, summed over the other labels.
fn bucket_increases(
    increases: &[&Increase],
    side: &'static str,
) -> Result<BTreeMap<OrderedLe, f64>, MeasureError> {
    let mut per_le: BTreeMap<OrderedLe, f64> = BTreeMap::new();
    for (labels, increase) in increases {
        let le = labels
            .get("le")
            .and_then(|le| le.parse::<f64>().ok())
            .filter(|le| !le.is_nan())
            .ok_or_else(|| MeasureError::Data {
                field: Counter::LatencyBuckets.field(),
                side,
                message: format!(
                    "series {labels:?} has no numeric `le` label: select `_bucket` series and keep `le` (e.g. sum by (pod, le) (...))"
                ),
            })?;
        *per_le.entry(OrderedLe(le)).or_default() += increase;
    }
    Ok(per_le)
}

/// An `le` value that sorts (never NaN).
#[derive(Clone, Copy, Debug, PartialEq)]
struct OrderedLe(f64);

impl Eq for OrderedLe {}

impl PartialOrd for OrderedLe {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedLe {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The counters of one version at the two instants of an interval.
pub struct SideCounters {
    pub side: &'static str,
    /// Per counter of [`PreparedCompare::queries`], in order: (at start, at end).
    pub snapshots: Vec<(Counter, QueryOutput, QueryOutput)>,
}

/// The group of a version's pod `index` (in the sorted order of the pod names): more pods
/// than [`MAX_POD_GROUPS`] are summed into that many groups.
pub fn pod_group(index: usize) -> usize {
    index % MAX_POD_GROUPS
}

/// A version's series split by pod: by their `pod_label` value, the sorted names spread over
/// at most [`MAX_POD_GROUPS`] groups. `None` unless every series carries the label.
fn by_pod_group<'a>(
    counters: &'a BTreeMap<u8, Vec<Increase>>,
    pod_label: &str,
) -> Option<Vec<Series<'a>>> {
    let mut names = std::collections::BTreeSet::new();
    for increases in counters.values() {
        for (labels, _) in increases {
            names.insert(labels.get(pod_label)?.as_str());
        }
    }
    let group_of: BTreeMap<&str, usize> = names
        .into_iter()
        .enumerate()
        .map(|(index, name)| (name, pod_group(index)))
        .collect();
    let mut groups = vec![Series::new(); group_of.len().min(MAX_POD_GROUPS)];
    for (counter, increases) in counters {
        for increase in increases {
            let group = group_of[increase.0[pod_label].as_str()];
            groups[group].entry(*counter).or_default().push(increase);
        }
    }
    Some(groups)
}

/// Turns the raw counters of both versions into one interval's counts, and with `pod_label`
/// also per pod (group) when every series carries that label. Pure.
pub fn interval_counts(
    kind: CompareKind,
    canary: SideCounters,
    stable: SideCounters,
    pod_label: Option<&str>,
) -> Result<MeasuredInterval, MeasureError> {
    // Per version: each counter's series increases.
    let versions: Vec<(&'static str, BTreeMap<u8, Vec<Increase>>)> = [canary, stable]
        .into_iter()
        .map(|side| {
            let counters = side
                .snapshots
                .into_iter()
                .map(|(counter, start, end)| {
                    (counter as u8, increases(&snapshot(start), &snapshot(end)))
                })
                .collect();
            (side.side, counters)
        })
        .collect();
    // The interval is missing when neither version's main counter has any series at its end
    // (every series at the end has an increase).
    let main = match kind {
        CompareKind::ErrorRate => Counter::Requests,
        CompareKind::Latency => Counter::LatencyBuckets,
    } as u8;
    if versions
        .iter()
        .all(|(_, counters)| counters.get(&main).is_none_or(Vec::is_empty))
    {
        return Ok(MeasuredInterval {
            counts: IntervalCounts::default(),
            boundaries: Vec::new(),
        });
    }
    let all: Vec<Series> = versions
        .iter()
        .map(|(_, counters)| {
            counters
                .iter()
                .map(|(counter, increases)| (*counter, increases.iter().collect()))
                .collect()
        })
        .collect();
    // Per version, its pod groups, if the counts are wanted per pod and every series has one.
    let groups: Option<Vec<Vec<Series>>> = pod_label.and_then(|label| {
        versions
            .iter()
            .map(|(_, counters)| by_pod_group(counters, label))
            .collect()
    });
    let sides = [versions[0].0, versions[1].0];
    match kind {
        CompareKind::ErrorRate => {
            let mut counts = Vec::new();
            for (side, series) in sides.into_iter().zip(&all) {
                let (requests, errors) = (
                    total(series, Counter::Requests),
                    total(series, Counter::Errors),
                );
                if errors > requests {
                    return Err(MeasureError::Data {
                        field: Counter::Errors.field(),
                        side,
                        message: format!(
                            "{errors} errors but only {requests} requests in the interval: the errors query must select a subset of the requests query's counters"
                        ),
                    });
                }
                counts.push(vec![requests, errors]);
            }
            // A pod whose errors outnumber its requests (series that do not match up per
            // pod): the interval is judged on the totals only.
            let per_pod = |groups: &[Series]| -> Option<Vec<Vec<u64>>> {
                groups
                    .iter()
                    .map(|group| {
                        let (requests, errors) = (
                            total(group, Counter::Requests),
                            total(group, Counter::Errors),
                        );
                        (errors <= requests).then(|| vec![requests, errors])
                    })
                    .collect()
            };
            let pods = groups.and_then(|groups| {
                Some(PodCounts {
                    canary: per_pod(&groups[0])?,
                    stable: per_pod(&groups[1])?,
                })
            });
            let [canary, stable]: [Vec<u64>; 2] = counts.try_into().expect("two versions");
            Ok(MeasuredInterval {
                counts: IntervalCounts {
                    canary,
                    stable,
                    pods,
                },
                boundaries: Vec::new(),
            })
        }
        CompareKind::Latency => {
            let buckets_of = |series: &Series, side| {
                bucket_increases(of_counter(series, Counter::LatencyBuckets), side)
            };
            let mut per_side = Vec::new();
            for (side, series) in sides.into_iter().zip(&all) {
                per_side.push((side, buckets_of(series, side)?));
            }
            // The layout: every `le` either version reports. A version without any series (no
            // requests yet) counts zero everywhere; otherwise both must use the same buckets.
            let layout: Vec<OrderedLe> = per_side
                .iter()
                .flat_map(|(_, buckets)| buckets.keys().copied())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if layout.last().is_none_or(|le| le.0 != f64::INFINITY) {
                return Err(MeasureError::Data {
                    field: Counter::LatencyBuckets.field(),
                    side: "both",
                    message: "no `le=\"+Inf\"` bucket: select every bucket of the histogram".into(),
                });
            }
            // Cumulative counts in the layout's order, kept monotone: increases of cumulative
            // buckets stay cumulative unless series of one `le` reset between the two reads.
            let in_layout = |buckets: &BTreeMap<OrderedLe, f64>| -> Vec<u64> {
                layout
                    .iter()
                    .map(|le| whole(buckets.get(le).copied().unwrap_or(0.0)))
                    .scan(0u64, |running, count| {
                        *running = (*running).max(count);
                        Some(*running)
                    })
                    .collect()
            };
            let pods = match groups {
                None => None,
                Some(groups) => {
                    let mut per_version = Vec::new();
                    for (side, groups) in sides.into_iter().zip(&groups) {
                        let mut pods = Vec::new();
                        for group in groups {
                            pods.push(in_layout(&buckets_of(group, side)?));
                        }
                        per_version.push(pods);
                    }
                    let [canary, stable]: [Vec<Vec<u64>>; 2] =
                        per_version.try_into().expect("two versions");
                    Some(PodCounts { canary, stable })
                }
            };
            let mut cumulative = Vec::new();
            for (side, buckets) in &per_side {
                if !buckets.is_empty() && buckets.len() != layout.len() {
                    return Err(MeasureError::Data {
                        field: Counter::LatencyBuckets.field(),
                        side,
                        message: format!(
                            "the canary and stable histograms have different buckets ({} vs {} `le` values): both versions must use the same bucket layout",
                            buckets.len(),
                            layout.len()
                        ),
                    });
                }
                cumulative.push(in_layout(buckets));
            }
            let [canary, stable]: [Vec<u64>; 2] = cumulative.try_into().expect("two versions");
            Ok(MeasuredInterval {
                counts: IntervalCounts {
                    canary,
                    stable,
                    pods,
                },
                boundaries: layout[..layout.len() - 1].iter().map(|le| le.0).collect(),
            })
        }
    }
}

/// What the counter queries of both versions returned at one instant: the end of one
/// interval, and so the start of the next. Reusing them makes consecutive intervals'
/// counts add up exactly to the counters' increase, even when Prometheus ingests a late
/// sample in between, and halves the queries.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterReadings {
    at: Timestamp,
    /// Which Prometheus answered: a hash of its address and request headers (a tenant header
    /// selects other data; the headers may hold secrets, so only their hash is kept).
    source: u64,
    /// Per counter query and version, in [`PreparedCompare::queries`] order (canary, then
    /// stable): the query text and its output.
    reads: Vec<(Query, QueryOutput)>,
}

impl CounterReadings {
    /// The instant these readings are of.
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The output read for `query` at `at` from `source`, if these readings are of that
    /// instant and source and hold that query in that place.
    fn reuse(
        &self,
        at: Timestamp,
        source: u64,
        index: usize,
        query: &Query,
    ) -> Option<QueryOutput> {
        let (text, output) = self.reads.get(index)?;
        (self.at == at && self.source == source && text == query).then(|| output.clone())
    }

    /// Identifies the Prometheus (and tenant) a request goes to.
    fn source_of(request: &QueryRequest) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        (&request.address, &request.headers, request.insecure).hash(&mut hasher);
        hasher.finish()
    }
}

/// Reads the counters of both versions at `start` and `end` and returns the interval's counts
/// with the readings at `end`. Readings of `start` from the previous interval (`previous`) are
/// used instead of reading again, for the queries that have not changed since.
pub async fn measure<S: MetricsSource>(
    source: &S,
    prepared: &PreparedCompare,
    base: &QueryRequest,
    start: Timestamp,
    end: Timestamp,
    previous: Option<&CounterReadings>,
) -> Result<(MeasuredInterval, CounterReadings), MeasureError> {
    const SIDES: [&str; 2] = ["canary", "stable"];
    // Every counter query of each version (0: canary, 1: stable), in readings order.
    let texts: Vec<(&CounterQuery, usize, &Query)> = prepared
        .queries
        .iter()
        .flat_map(|query| [(query, 0, &query.canary), (query, 1, &query.stable)])
        .collect();
    let source_id = CounterReadings::source_of(base);
    // Every read not known already, concurrently: one round trip to Prometheus instead of
    // one per read. The first failure in this order is reported.
    let reads = texts
        .iter()
        .enumerate()
        .flat_map(|(index, &(query, side, text))| {
            let known_start =
                previous.and_then(|readings| readings.reuse(start, source_id, index, text));
            [(start, known_start), (end, None)]
                .into_iter()
                .map(move |(at, known)| async move {
                    if let Some(output) = known {
                        return Ok(output);
                    }
                    let request = QueryRequest {
                        query: text.clone(),
                        time: Some(at),
                        ..base.clone()
                    };
                    source
                        .instant_query(&request)
                        .await
                        .map_err(|source| MeasureError::Query {
                            field: query.counter.field(),
                            side: SIDES[side],
                            at,
                            source: source.with_secrets_redacted(text),
                        })
                })
        });
    let outputs: Vec<QueryOutput> = futures::future::join_all(reads)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut outputs = outputs.into_iter();
    let mut versions = SIDES.map(|side| SideCounters {
        side,
        snapshots: Vec::new(),
    });
    let mut at_end = CounterReadings {
        at: end,
        source: source_id,
        reads: Vec::with_capacity(texts.len()),
    };
    for (query, side, text) in texts {
        let (Some(at_start), Some(end_output)) = (outputs.next(), outputs.next()) else {
            unreachable!("two reads per counter and version");
        };
        at_end.reads.push((text.clone(), end_output.clone()));
        versions[side]
            .snapshots
            .push((query.counter, at_start, end_output));
    }
    let [canary, stable] = versions;
    let measured = interval_counts(
        prepared.setup.kind,
        canary,
        stable,
        prepared.pod_label.as_deref(),
    )
    .map_err(|error| error.with_secrets_redacted(prepared))?;
    Ok((measured, at_end))
}

/// Replays every recorded interval into a fresh judge and assesses it.
pub fn assess(setup: &CompareSetup, record: &CompareRecord) -> Result<Assessment, String> {
    assess_intervals(setup, &record.boundaries, record.intervals.iter())
}

/// [`assess`] of a record's layout and intervals, which need not be stored together.
fn assess_intervals<'a>(
    setup: &CompareSetup,
    boundaries: &[f64],
    intervals: impl Iterator<Item = &'a IntervalCounts>,
) -> Result<Assessment, String> {
    match setup.kind {
        CompareKind::ErrorRate => {
            let mut judge = ErrorRateJudge::new(&setup.config).map_err(|e| e.to_string())?;
            for interval in intervals {
                if interval.is_missing() {
                    judge.observe_missing();
                    continue;
                }
                let observed = match &interval.pods {
                    Some(pods) => judge.observe_pods(&pods.error_counts()),
                    None => judge.observe(&interval.error_counts()),
                };
                observed.map_err(|e| e.to_string())?;
            }
            Ok(judge.assess())
        }
        CompareKind::Latency => {
            if boundaries.is_empty() {
                // No interval with data yet: the judge has nothing to say, but an empty
                // layout is not one it accepts; any layout gives the same empty assessment.
                let layout = if setup.config.latency_boundaries.is_empty() {
                    vec![1.0]
                } else {
                    setup.config.latency_boundaries.clone()
                };
                let mut judge =
                    LatencyJudge::new(&setup.config, &layout).map_err(|e| e.to_string())?;
                for _ in intervals {
                    judge.observe_missing();
                }
                return Ok(judge.assess());
            }
            let mut judge =
                LatencyJudge::new(&setup.config, boundaries).map_err(|e| e.to_string())?;
            for interval in intervals {
                if interval.is_missing() {
                    judge.observe_missing();
                    continue;
                }
                let observed = match &interval.pods {
                    Some(pods) => judge.observe_pods(&PodHistogramCounts {
                        canary: pods.canary.clone(),
                        stable: pods.stable.clone(),
                    }),
                    None => judge.observe(&HistogramCounts {
                        canary: interval.canary.clone(),
                        stable: interval.stable.clone(),
                    }),
                };
                observed.map_err(|e| e.to_string())?;
            }
            Ok(judge.assess())
        }
    }
}

/// One compare measurement: its phase, value and reason, and the judge's assessment after it.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareJudgement {
    pub phase: MeasurementPhase,
    pub value: Option<String>,
    pub reason: String,
    pub assessment: Option<Assessment>,
}

/// What recording an interval changes in a [`CompareRecord`]: the bucket layout, fixed by a
/// latency comparison's first interval with data, and the interval itself once judged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordUpdate {
    pub boundaries: Option<Vec<f64>>,
    pub interval: Option<IntervalCounts>,
}

impl RecordUpdate {
    pub fn apply(self, record: &mut CompareRecord) {
        if let Some(boundaries) = self.boundaries {
            record.boundaries = boundaries;
        }
        if let Some(interval) = self.interval {
            record.intervals.push(interval);
        }
    }
}

/// Judges an interval (or a failed measurement) after those in `record`, without changing
/// it: the judgement, and what recording it changes. Pure.
///
/// Measurement phases: `Failed` when the judge says `Regressed`, `Successful` otherwise
/// (`Continue` or `NoRegression`: nothing against the canary), `Inconclusive` for an interval
/// without data, `Error` when the counters could not be read or were impossible.
pub fn judge_interval(
    setup: &CompareSetup,
    record: &CompareRecord,
    outcome: &Result<MeasuredInterval, String>,
) -> (CompareJudgement, RecordUpdate) {
    let error = |reason: String| CompareJudgement {
        phase: MeasurementPhase::Error,
        value: None,
        // It may quote a series' labels, which an answer makes as long as it likes.
        reason: crate::metrics::shortened(&reason, super::measurement::MAX_REASON_BYTES),
        assessment: None,
    };
    let measured = match outcome {
        Ok(measured) => measured,
        Err(reason) => return (error(reason.clone()), RecordUpdate::default()),
    };
    let mut update = RecordUpdate::default();
    if !measured.counts.is_missing() && setup.kind == CompareKind::Latency {
        if record.boundaries.is_empty() {
            update.boundaries = Some(measured.boundaries.clone());
        } else if record.boundaries != measured.boundaries {
            let reason = format!(
                "the histogram's buckets changed from {:?} to {:?} during the analysis; a comparison needs one bucket layout",
                record.boundaries, measured.boundaries
            );
            return (error(reason), update);
        }
    }
    let mut counts = measured.counts.clone();
    if record.intervals.len() >= MAX_POD_INTERVALS {
        counts.pods = None;
    }
    let boundaries = update.boundaries.as_deref().unwrap_or(&record.boundaries);
    let assessment = match assess_intervals(
        setup,
        boundaries,
        record.intervals.iter().chain(std::iter::once(&counts)),
    ) {
        Ok(assessment) => assessment,
        Err(reason) => return (error(format!("impossible counts ({reason})")), update),
    };
    update.interval = Some(counts);
    let phase = if measured.counts.is_missing() {
        MeasurementPhase::Inconclusive
    } else if assessment.verdict == Verdict::Regressed {
        MeasurementPhase::Failed
    } else {
        MeasurementPhase::Successful
    };
    let judgement = CompareJudgement {
        phase,
        value: Some(format!(
            "{} {}",
            summary(&assessment),
            measured.counts.describe(setup.kind)
        )),
        reason: assessment.explanation.clone(),
        assessment: Some(assessment),
    };
    (judgement, update)
}

/// Adds an interval (or a failed measurement) to `record` and judges ([`judge_interval`]).
pub fn record_interval(
    setup: &CompareSetup,
    record: &mut CompareRecord,
    outcome: &Result<MeasuredInterval, String>,
) -> CompareJudgement {
    let (judgement, update) = judge_interval(setup, record, outcome);
    update.apply(record);
    judgement
}

/// `Regressed 2.10× (1.40–3.30)`: the verdict with the effect estimate and its interval.
pub fn summary(assessment: &Assessment) -> String {
    let verdict = format!("{:?}", assessment.verdict);
    match effect(assessment) {
        None => verdict,
        Some(effect) => format!("{verdict} {effect}"),
    }
}

/// `2.10× (1.40–3.30) at le=250`: the effect estimate, its confidence sequence and, for
/// latency, the bucket boundary they refer to; `None` before any information.
pub fn effect(assessment: &Assessment) -> Option<String> {
    let ratio = assessment.ratio_estimate?;
    let upper = assessment.ratio_interval.upper;
    let upper = if upper.is_finite() {
        format!("{upper:.2}")
    } else {
        "∞".into()
    };
    let bucket = assessment
        .latency_bucket
        .map_or(String::new(), |le| format!(" at le={le}"));
    Some(format!(
        "{ratio:.2}× ({:.2}–{upper}){bucket}",
        assessment.ratio_interval.lower
    ))
}

/// A compare metric's phase after its latest measurement.
///
/// - `Regressed` → Failed, at once (the sequential test keeps α however often it looks);
/// - query errors and intervals without data → the metric's `consecutiveErrorLimit` and
///   `inconclusiveLimit`, as for any metric;
/// - `NoRegression` → Successful when `finish_on_no_regression` (an analysis step: the step
///   is done early); a background analysis keeps watching and the rollout reads the verdict;
/// - `count` reached, the intervals exhausted, or the run ended: Successful when some interval
///   carried information and none showed a regression, Inconclusive when none did (a canary
///   without traffic, or a query that selects nothing, never passes);
/// - otherwise Running.
pub fn metric_phase(
    latest: Option<&Assessment>,
    limits: &Limits,
    tally: &Tally,
    intervals: usize,
    ending: bool,
    finish_on_no_regression: bool,
) -> assessment::Assessment {
    let outcome = |phase, message: String| assessment::Assessment { phase, message };
    if let Some(latest) = latest
        && latest.verdict == Verdict::Regressed
    {
        return outcome(AnalysisPhase::Failed, latest.explanation.clone());
    }
    let by_limits = assessment::assess(
        &Limits {
            count: None,
            failure_limit: u32::MAX,
            ..*limits
        },
        tally,
        false,
    );
    if matches!(
        by_limits.phase,
        AnalysisPhase::Error | AnalysisPhase::Inconclusive
    ) {
        return by_limits;
    }
    let explanation = latest.map_or_else(
        || "no interval measured yet".to_string(),
        |a| a.explanation.clone(),
    );
    if finish_on_no_regression && latest.is_some_and(|a| a.verdict == Verdict::NoRegression) {
        return outcome(AnalysisPhase::Successful, explanation);
    }
    let complete =
        limits.count.is_some_and(|count| tally.measured >= count) || intervals >= MAX_INTERVALS;
    if complete || ending {
        if tally.measured == 0 {
            return assessment::assess(limits, tally, true);
        }
        return match latest {
            Some(a) if a.informative_intervals > 0 => outcome(
                AnalysisPhase::Successful,
                format!(
                    "no regression found in {} intervals: {explanation}",
                    tally.measured
                ),
            ),
            _ => outcome(
                AnalysisPhase::Inconclusive,
                format!(
                    "no interval had traffic on both versions and at least one event, so nothing was compared: {explanation}"
                ),
            ),
        };
    }
    let phase = if tally.measured == 0 && tally.errors == 0 {
        AnalysisPhase::Pending
    } else {
        AnalysisPhase::Running
    };
    outcome(phase, explanation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Series;

    fn vector(series: &[(&[(&str, &str)], f64)]) -> QueryOutput {
        QueryOutput::Vector(
            series
                .iter()
                .map(|(labels, value)| Series {
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    value: *value,
                })
                .collect(),
        )
    }

    fn side(
        name: &'static str,
        snapshots: Vec<(Counter, QueryOutput, QueryOutput)>,
    ) -> SideCounters {
        SideCounters {
            side: name,
            snapshots,
        }
    }

    #[test]
    fn increases_are_exact_across_resets_new_and_vanished_series() {
        let before = vector(&[
            (&[("pod", "a")], 100.0),
            (&[("pod", "b")], 50.0),
            (&[("pod", "gone")], 70.0),
        ]);
        let after = vector(&[
            (&[("pod", "a")], 130.0), // +30
            (&[("pod", "b")], 8.0),   // reset: +8
            (&[("pod", "new")], 5.0), // new pod: +5
        ]);
        let errors_before = vector(&[(&[("pod", "a")], 1.0)]);
        let errors_after = vector(&[(&[("pod", "a")], 2.0), (&[("pod", "new")], 1.0)]);
        let measured = interval_counts(
            CompareKind::ErrorRate,
            side(
                "canary",
                vec![
                    (Counter::Requests, before.clone(), after.clone()),
                    (Counter::Errors, errors_before, errors_after),
                ],
            ),
            side(
                "stable",
                vec![
                    (Counter::Requests, vector(&[]), vector(&[(&[], 1000.0)])),
                    (Counter::Errors, vector(&[]), vector(&[])),
                ],
            ),
            None,
        )
        .unwrap();
        assert_eq!(measured.counts.canary, vec![43, 2]);
        assert_eq!(measured.counts.stable, vec![1000, 0]);
    }

    #[test]
    fn no_series_at_the_end_on_either_side_is_a_missing_interval() {
        let empty = || {
            side(
                "x",
                vec![
                    (Counter::Requests, vector(&[]), vector(&[])),
                    (Counter::Errors, vector(&[]), vector(&[])),
                ],
            )
        };
        let measured = interval_counts(CompareKind::ErrorRate, empty(), empty(), None).unwrap();
        assert!(measured.counts.is_missing());
    }

    #[test]
    fn more_errors_than_requests_is_an_error_naming_the_field() {
        let bad = interval_counts(
            CompareKind::ErrorRate,
            side(
                "canary",
                vec![
                    (Counter::Requests, vector(&[]), vector(&[(&[], 1.0)])),
                    (Counter::Errors, vector(&[]), vector(&[(&[], 3.0)])),
                ],
            ),
            side(
                "stable",
                vec![(Counter::Requests, vector(&[]), vector(&[(&[], 1.0)]))],
            ),
            None,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("compare.errors (canary)"), "{bad}");
    }

    #[test]
    fn buckets_sum_per_le_and_a_version_without_series_counts_zero() {
        let buckets = |values: [f64; 3]| {
            vector(&[
                (&[("le", "0.1"), ("pod", "a")], values[0]),
                (&[("le", "0.5"), ("pod", "a")], values[1]),
                (&[("le", "+Inf"), ("pod", "a")], values[2]),
                (&[("le", "0.1"), ("pod", "b")], values[0]),
                (&[("le", "0.5"), ("pod", "b")], values[1]),
                (&[("le", "+Inf"), ("pod", "b")], values[2]),
            ])
        };
        let measured = interval_counts(
            CompareKind::Latency,
            side(
                "canary",
                vec![(Counter::LatencyBuckets, vector(&[]), vector(&[]))],
            ),
            side(
                "stable",
                vec![(
                    Counter::LatencyBuckets,
                    buckets([10.0, 20.0, 30.0]),
                    buckets([15.0, 30.0, 45.0]),
                )],
            ),
            None,
        )
        .unwrap();
        assert_eq!(measured.boundaries, vec![0.1, 0.5]);
        assert_eq!(measured.counts.stable, vec![10, 20, 30]);
        assert_eq!(measured.counts.canary, vec![0, 0, 0]);
    }

    fn setup(kind: CompareKind) -> CompareSetup {
        CompareSetup {
            kind,
            config: SequentialConfig::default(),
        }
    }

    fn interval(canary: [u64; 2], stable: [u64; 2]) -> Result<MeasuredInterval, String> {
        Ok(MeasuredInterval {
            counts: IntervalCounts {
                pods: None,
                canary: canary.to_vec(),
                stable: stable.to_vec(),
            },
            boundaries: Vec::new(),
        })
    }

    #[test]
    fn recording_judges_each_interval_and_keeps_the_state_replayable() {
        let setup = setup(CompareKind::ErrorRate);
        let mut record = CompareRecord::default();
        // ×5 errors at 10% of the traffic: regressed within a few intervals.
        let mut phases = Vec::new();
        for _ in 0..10 {
            let judged = record_interval(&setup, &mut record, &interval([600, 15], [5400, 27]));
            phases.push(judged.phase);
            if judged.phase == MeasurementPhase::Failed {
                let assessment = judged.assessment.unwrap();
                assert_eq!(assessment.verdict, Verdict::Regressed);
                assert!(judged.value.unwrap().starts_with("Regressed"));
                // The status round trip gives the same verdict.
                let json = serde_json::to_string(&record).unwrap();
                let back: CompareRecord = serde_json::from_str(&json).unwrap();
                assert_eq!(assess(&setup, &back).unwrap(), assessment);
                break;
            }
        }
        assert_eq!(phases.last(), Some(&MeasurementPhase::Failed), "{phases:?}");
        assert!(phases.len() <= 4, "{phases:?}");

        let missing = record_interval(
            &setup,
            &mut CompareRecord::default(),
            &Ok(MeasuredInterval {
                counts: IntervalCounts::default(),
                boundaries: vec![],
            }),
        );
        assert_eq!(missing.phase, MeasurementPhase::Inconclusive);
        let failed = record_interval(&setup, &mut record, &Err("unreachable".into()));
        assert_eq!(failed.phase, MeasurementPhase::Error);
    }

    #[test]
    fn metric_phase_follows_the_verdict_and_the_limits() {
        let setup = setup(CompareKind::ErrorRate);
        let judged = |intervals: &[([u64; 2], [u64; 2])]| {
            let mut record = CompareRecord::default();
            let mut tally = Tally::default();
            let mut latest = None;
            for (c, s) in intervals {
                let j = record_interval(&setup, &mut record, &interval(*c, *s));
                tally.record(j.phase);
                latest = j.assessment;
            }
            (latest, tally, record.intervals.len())
        };
        let limits = Limits {
            count: Some(20),
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
        };
        let healthy = ([6000, 30], [54000, 270]);
        let plenty = ([1_000_000, 5000], [1_000_000, 5000]);
        let bad = ([6000, 150], [54000, 270]);
        let quiet = ([0, 0], [0, 0]);
        type Case = (
            &'static str,
            Vec<([u64; 2], [u64; 2])>,
            bool,
            bool,
            AnalysisPhase,
        );
        let cases: Vec<Case> = vec![
            ("nothing yet", vec![], false, false, AnalysisPhase::Pending),
            ("regressed", vec![bad], false, false, AnalysisPhase::Failed),
            (
                "undecided",
                vec![healthy],
                false,
                false,
                AnalysisPhase::Running,
            ),
            (
                "no regression, background keeps watching",
                vec![plenty; 12],
                false,
                false,
                AnalysisPhase::Running,
            ),
            (
                "no regression ends an analysis step",
                vec![plenty; 12],
                false,
                true,
                AnalysisPhase::Successful,
            ),
            (
                "count reached",
                vec![healthy; 20],
                false,
                false,
                AnalysisPhase::Successful,
            ),
            (
                "count reached without any information",
                vec![quiet; 20],
                false,
                false,
                AnalysisPhase::Inconclusive,
            ),
            (
                "run ended",
                vec![healthy],
                true,
                false,
                AnalysisPhase::Successful,
            ),
        ];
        for (name, intervals, ending, finish, expected) in cases {
            let (latest, tally, count) = judged(&intervals);
            let phase = metric_phase(latest.as_ref(), &limits, &tally, count, ending, finish);
            assert_eq!(phase.phase, expected, "{name}: {phase:?}");
        }
        // Intervals without data follow inconclusiveLimit.
        let mut tally = Tally::default();
        tally.record(MeasurementPhase::Inconclusive);
        let phase = metric_phase(None, &limits, &tally, 1, false, false);
        assert_eq!(phase.phase, AnalysisPhase::Inconclusive);
    }

    #[test]
    fn counts_per_pod_when_every_series_names_its_pod() {
        let pod = |name: &str, code: &str| vec![("pod", name.to_string()), ("code", code.into())];
        let series = |rows: &[(Vec<(&str, String)>, f64)]| {
            QueryOutput::Vector(
                rows.iter()
                    .map(|(labels, value)| Series {
                        labels: labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect(),
                        value: *value,
                    })
                    .collect(),
            )
        };
        let stable_requests = |scale: f64| {
            series(&[
                (pod("s-a", "200"), 100.0 * scale),
                (pod("s-b", "200"), 200.0 * scale),
                (pod("s-b", "503"), 10.0 * scale),
            ])
        };
        let stable_errors = |scale: f64| series(&[(pod("s-b", "503"), 10.0 * scale)]);
        let canary = || {
            side(
                "canary",
                vec![
                    (
                        Counter::Requests,
                        series(&[(pod("c-a", "200"), 5.0)]),
                        series(&[(pod("c-a", "200"), 25.0)]),
                    ),
                    (Counter::Errors, series(&[]), series(&[])),
                ],
            )
        };
        let stable = || {
            side(
                "stable",
                vec![
                    (
                        Counter::Requests,
                        stable_requests(1.0),
                        stable_requests(3.0),
                    ),
                    (Counter::Errors, stable_errors(1.0), stable_errors(3.0)),
                ],
            )
        };
        let measured =
            interval_counts(CompareKind::ErrorRate, canary(), stable(), Some("pod")).unwrap();
        assert_eq!(measured.counts.stable, vec![620, 20]);
        assert_eq!(
            measured.counts.pods,
            Some(PodCounts {
                canary: vec![vec![20, 0]],
                stable: vec![vec![200, 0], vec![420, 20]],
            })
        );
        // Without a pod label asked for, or with a series that lacks it: totals only.
        let totals_only = interval_counts(CompareKind::ErrorRate, canary(), stable(), None);
        assert_eq!(totals_only.unwrap().counts.pods, None);
        let unlabelled =
            interval_counts(CompareKind::ErrorRate, canary(), stable(), Some("instance"));
        assert_eq!(unlabelled.unwrap().counts.pods, None);

        // More pods than groups: summed into MAX_POD_GROUPS groups, totals unchanged.
        let many: Vec<(Vec<(&str, String)>, f64)> = (0..20)
            .map(|i| (pod(&format!("s-{i:02}"), "200"), 10.0))
            .collect();
        let many_stable = side(
            "stable",
            vec![
                (Counter::Requests, series(&[]), series(&many)),
                (Counter::Errors, series(&[]), series(&[])),
            ],
        );
        let grouped =
            interval_counts(CompareKind::ErrorRate, canary(), many_stable, Some("pod")).unwrap();
        let pods = grouped.counts.pods.unwrap();
        assert_eq!(pods.stable.len(), MAX_POD_GROUPS);
        assert_eq!(pods.stable.iter().map(|p| p[0]).sum::<u64>(), 200);
    }

    #[test]
    fn pods_are_recorded_for_the_first_intervals_only_and_replay_the_same() {
        let setup = setup(CompareKind::ErrorRate);
        let mut record = CompareRecord::default();
        let with_pods = || {
            Ok(MeasuredInterval {
                counts: IntervalCounts {
                    canary: vec![600, 3],
                    stable: vec![6_000, 30],
                    pods: Some(PodCounts {
                        canary: vec![vec![600, 3]],
                        stable: vec![vec![3_000, 14], vec![3_000, 16]],
                    }),
                },
                boundaries: vec![],
            })
        };
        for _ in 0..=MAX_POD_INTERVALS {
            record_interval(&setup, &mut record, &with_pods());
        }
        assert!(record.intervals[MAX_POD_INTERVALS - 1].pods.is_some());
        assert_eq!(record.intervals[MAX_POD_INTERVALS].pods, None);
        let json = serde_json::to_string(&record).unwrap();
        let back: CompareRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(assess(&setup, &back), assess(&setup, &record));
        // The pods are judged: the same totals without them give other evidence.
        let mut totals_only = record.clone();
        for interval in &mut totals_only.intervals {
            interval.pods = None;
        }
        assert_ne!(
            assess(&setup, &totals_only).unwrap().evidence,
            assess(&setup, &record).unwrap().evidence
        );
    }
}
