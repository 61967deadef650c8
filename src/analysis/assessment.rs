//! What a metric's measurements add up to, and what the metrics add up to.
//!
//! The rules follow Argo Rollouts' documented AnalysisRun semantics, with one deliberate
//! difference: a metric that ends without a single usable measurement is never Successful
//! (Argo counts it as passed). The README's "How a metric is decided" table states them.

use serde::{Deserialize, Serialize};

use super::measurement::MeasurementPhase;

/// The phase of a metric or of a whole analysis, ordered from best to worst; the analysis
/// takes the worst phase of the metrics that are not dry-run.
#[derive(
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub enum AnalysisPhase {
    Successful,
    Running,
    Pending,
    Inconclusive,
    Error,
    Failed,
}

impl AnalysisPhase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Successful | Self::Failed | Self::Inconclusive | Self::Error
        )
    }
}

/// The limits of one metric (defaults already applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub count: Option<u32>,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    pub consecutive_error_limit: u32,
}

/// Counts of a metric's measurements so far.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// Measurements that were not errors: these count towards `count`.
    pub measured: u32,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub errors: u32,
    pub consecutive_errors: u32,
}

impl Tally {
    pub fn record(&mut self, phase: MeasurementPhase) {
        if phase == MeasurementPhase::Error {
            self.errors += 1;
            self.consecutive_errors += 1;
            return;
        }
        self.consecutive_errors = 0;
        self.measured += 1;
        match phase {
            MeasurementPhase::Successful => self.successful += 1,
            MeasurementPhase::Failed => self.failed += 1,
            MeasurementPhase::Inconclusive => self.inconclusive += 1,
            MeasurementPhase::Error => unreachable!("handled above"),
        }
    }
}

/// A metric's phase with the sentence that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    pub phase: AnalysisPhase,
    pub message: String,
}

/// Decides a metric's phase. `ending` is true when no more measurements will be taken (the
/// step, window or run ended) even though `count` was not reached.
pub fn assess(limits: &Limits, tally: &Tally, ending: bool) -> Assessment {
    let Limits {
        count,
        failure_limit,
        inconclusive_limit,
        consecutive_error_limit,
    } = *limits;
    let verdict = |phase, message: String| Assessment { phase, message };
    // "2 failed measurements exceed failureLimit 1", "1 inconclusive measurement exceeds …"
    let over = |count: u32, kind: &str, limit_name: &str, limit: u32| {
        format!(
            "{count} {kind} measurement{} exceed{} {limit_name} {limit}",
            plural(count),
            if count == 1 { "s" } else { "" }
        )
    };
    if tally.failed > failure_limit {
        return verdict(
            AnalysisPhase::Failed,
            over(tally.failed, "failed", "failureLimit", failure_limit),
        );
    }
    if tally.inconclusive > inconclusive_limit {
        return verdict(
            AnalysisPhase::Inconclusive,
            over(
                tally.inconclusive,
                "inconclusive",
                "inconclusiveLimit",
                inconclusive_limit,
            ),
        );
    }
    if tally.consecutive_errors > consecutive_error_limit {
        return verdict(
            AnalysisPhase::Error,
            format!(
                "{} consecutive query errors exceed consecutiveErrorLimit {consecutive_error_limit}",
                tally.consecutive_errors
            ),
        );
    }
    let summary = format!(
        "{} passed, {} failed (limit {failure_limit}), {} inconclusive (limit {inconclusive_limit}), {} error{}",
        tally.successful,
        tally.failed,
        tally.inconclusive,
        tally.errors,
        plural(tally.errors)
    );
    let complete = count.is_some_and(|count| tally.measured >= count);
    if (complete || ending) && tally.measured > 0 && tally.successful == 0 {
        // Tolerated failures or inconclusive measurements are tolerated next to passing ones;
        // with not a single pass there is no evidence the metric is healthy.
        let phase = if tally.failed > 0 {
            AnalysisPhase::Failed
        } else {
            AnalysisPhase::Inconclusive
        };
        return verdict(phase, format!("no measurement passed: {summary}"));
    }
    if let Some(count) = count
        && complete
    {
        return verdict(
            AnalysisPhase::Successful,
            format!("{count} of {count} measurements taken: {summary}"),
        );
    }
    if !ending {
        let phase = if tally.measured == 0 && tally.errors == 0 {
            AnalysisPhase::Pending
        } else {
            AnalysisPhase::Running
        };
        return verdict(phase, summary);
    }
    match (tally.measured, tally.errors) {
        (0, 0) => verdict(
            AnalysisPhase::Inconclusive,
            "ended before any measurement was taken".to_string(),
        ),
        (0, errors) => verdict(
            AnalysisPhase::Error,
            format!(
                "ended without a successful query ({errors} error{})",
                plural(errors)
            ),
        ),
        (measured, _) => verdict(
            AnalysisPhase::Successful,
            match count {
                Some(count) => format!("ended after {measured} of {count} measurements: {summary}"),
                None => format!(
                    "ended after {measured} measurement{}: {summary}",
                    plural(measured)
                ),
            },
        ),
    }
}

/// The analysis phase: the worst phase among metrics that are not dry-run. An analysis whose
/// metrics are all dry-run is Successful once they have all ended.
pub fn overall(metrics: impl IntoIterator<Item = (AnalysisPhase, bool)>) -> AnalysisPhase {
    let mut worst: Option<AnalysisPhase> = None;
    let mut all_terminal = true;
    for (phase, dry_run) in metrics {
        all_terminal &= phase.is_terminal();
        if !dry_run {
            worst = Some(worst.map_or(phase, |w| w.max(phase)));
        }
    }
    match worst {
        Some(phase) => phase,
        None if all_terminal => AnalysisPhase::Successful,
        None => AnalysisPhase::Running,
    }
}

/// True when the analysis should stop measuring: a deciding metric failed, errored or was
/// inconclusive, or every metric has ended.
pub fn should_stop(metrics: impl IntoIterator<Item = (AnalysisPhase, bool)>) -> bool {
    let mut all_terminal = true;
    for (phase, dry_run) in metrics {
        if !dry_run && phase.is_terminal() && phase != AnalysisPhase::Successful {
            return true;
        }
        all_terminal &= phase.is_terminal();
    }
    all_terminal
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AnalysisPhase::*;
    use MeasurementPhase as M;

    fn tally(phases: &[M]) -> Tally {
        let mut t = Tally::default();
        for p in phases {
            t.record(*p);
        }
        t
    }

    const LIMITS: Limits = Limits {
        count: Some(3),
        failure_limit: 1,
        inconclusive_limit: 0,
        consecutive_error_limit: 2,
    };

    #[test]
    fn tally_counts_errors_apart_and_resets_consecutive_errors() {
        let t = tally(&[M::Error, M::Error, M::Successful, M::Error]);
        assert_eq!(
            t,
            Tally {
                measured: 1,
                successful: 1,
                failed: 0,
                inconclusive: 0,
                errors: 3,
                consecutive_errors: 1
            }
        );
    }

    #[test]
    fn assesses_every_limit_and_edge() {
        let no_count = Limits {
            count: None,
            ..LIMITS
        };
        let zero_limits = Limits {
            count: Some(5),
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 0,
        };
        let cases: Vec<(&str, Limits, Vec<M>, bool, AnalysisPhase, &str)> = vec![
            ("nothing yet", LIMITS, vec![], false, Pending, "0 passed"),
            (
                "one pass",
                LIMITS,
                vec![M::Successful],
                false,
                Running,
                "1 passed",
            ),
            (
                "failures within the limit",
                LIMITS,
                vec![M::Failed],
                false,
                Running,
                "1 failed (limit 1)",
            ),
            (
                "one failure past the limit",
                LIMITS,
                vec![M::Failed, M::Failed],
                false,
                Failed,
                "2 failed measurements exceed failureLimit 1",
            ),
            (
                "failureLimit 0: first failure fails",
                zero_limits,
                vec![M::Failed],
                false,
                Failed,
                "1 failed measurement exceeds failureLimit 0",
            ),
            (
                "inconclusive past the limit",
                LIMITS,
                vec![M::Inconclusive],
                false,
                Inconclusive,
                "exceeds inconclusiveLimit 0",
            ),
            (
                "errors within the limit",
                LIMITS,
                vec![M::Error, M::Error],
                false,
                Running,
                "2 errors",
            ),
            (
                "errors past the limit",
                LIMITS,
                vec![M::Error, M::Error, M::Error],
                false,
                Error,
                "3 consecutive query errors exceed consecutiveErrorLimit 2",
            ),
            (
                "consecutiveErrorLimit 0",
                zero_limits,
                vec![M::Error],
                false,
                Error,
                "exceed consecutiveErrorLimit 0",
            ),
            (
                "errors broken by a success",
                LIMITS,
                vec![M::Error, M::Error, M::Successful, M::Error, M::Error],
                false,
                Running,
                "4 errors",
            ),
            (
                "count reached with a tolerated failure",
                LIMITS,
                vec![M::Successful, M::Failed, M::Successful],
                false,
                Successful,
                "3 of 3 measurements taken",
            ),
            (
                "errors do not count towards count",
                LIMITS,
                vec![M::Successful, M::Error, M::Successful],
                false,
                Running,
                "2 passed",
            ),
            (
                "failure past the limit wins over count",
                LIMITS,
                vec![M::Failed, M::Successful, M::Failed],
                false,
                Failed,
                "exceed failureLimit",
            ),
            (
                "ending with measurements",
                no_count,
                vec![M::Successful, M::Successful],
                true,
                Successful,
                "ended after 2 measurements",
            ),
            (
                "ending before count",
                LIMITS,
                vec![M::Successful],
                true,
                Successful,
                "ended after 1 of 3",
            ),
            (
                "ending with nothing is never a pass",
                LIMITS,
                vec![],
                true,
                Inconclusive,
                "before any measurement",
            ),
            (
                "ending with only errors",
                LIMITS,
                vec![M::Error],
                true,
                Error,
                "without a successful query",
            ),
            (
                "ending keeps a failure",
                LIMITS,
                vec![M::Failed, M::Failed],
                true,
                Failed,
                "exceed failureLimit",
            ),
        ];
        for (name, limits, phases, ending, expected, message) in cases {
            let a = assess(&limits, &tally(&phases), ending);
            assert_eq!(a.phase, expected, "{name}: {a:?}");
            assert!(
                a.message.contains(message),
                "{name}: {:?} lacks {message:?}",
                a.message
            );
        }
    }

    #[test]
    fn overall_takes_the_worst_deciding_metric() {
        let cases: Vec<(Vec<(AnalysisPhase, bool)>, AnalysisPhase, bool)> = vec![
            (
                vec![(Successful, false), (Successful, false)],
                Successful,
                true,
            ),
            (vec![(Successful, false), (Running, false)], Running, false),
            (vec![(Running, false), (Failed, false)], Failed, true),
            (vec![(Inconclusive, false), (Error, false)], Error, true),
            (vec![(Error, false), (Failed, false)], Failed, true),
            (vec![(Successful, false), (Failed, true)], Successful, true),
            (vec![(Running, false), (Failed, true)], Running, false),
            (vec![(Failed, true), (Successful, true)], Successful, true),
            (vec![(Running, true)], Running, false),
            (vec![(Pending, false), (Running, false)], Pending, false),
        ];
        for (metrics, expected, stop) in cases {
            assert_eq!(overall(metrics.clone()), expected, "{metrics:?}");
            assert_eq!(should_stop(metrics.clone()), stop, "{metrics:?}");
        }
    }
}
