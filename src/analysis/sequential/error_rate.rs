//! Error-rate comparison: canary against stable on request and error counts.

use serde::{Deserialize, Serialize};

use super::rate_ratio::{PodSplit, RateRatioEvidence, RatioGrid};
use super::{
    Assessment, Evidence, InvalidConfig, InvalidCounts, Reported, SequentialConfig, Verdict,
    capped_e_value, data_notes, decide, format_ratio, report,
};

/// One interval's request and error counts of both versions (counter deltas, resets handled
/// by the caller).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCounts {
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub stable_requests: u64,
    pub stable_errors: u64,
}

/// One interval's request and error counts per pod (per series that identifies a process) of
/// both versions: `[requests, errors]` for each pod. With these the judge learns how noisy
/// the pods are instead of allowing the configured maximum noise on every interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodErrorCounts {
    pub canary: Vec<[u64; 2]>,
    pub stable: Vec<[u64; 2]>,
}

impl PodErrorCounts {
    /// The versions' totals.
    pub fn totals(&self) -> ErrorCounts {
        let sum = |pods: &[[u64; 2]]| {
            pods.iter()
                .fold([0, 0], |[n, x], [pn, px]| [n + pn, x + px])
        };
        let ([canary_requests, canary_errors], [stable_requests, stable_errors]) =
            (sum(&self.canary), sum(&self.stable));
        ErrorCounts {
            canary_requests,
            canary_errors,
            stable_requests,
            stable_errors,
        }
    }
}

/// Sequential judge of the canary's error rate relative to stable's.
///
/// Holds only accumulated sufficient statistics, so it can be serialized into status and
/// continued after a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorRateJudge {
    alpha: f64,
    grid: RatioGrid,
    evidence: RateRatioEvidence,
    missing_intervals: u32,
    canary_requests: u64,
    stable_requests: u64,
    /// Intervals observed per pod (the noise level learned from them).
    #[serde(default)]
    pod_intervals: u32,
}

impl ErrorRateJudge {
    pub fn new(config: &SequentialConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let grid = RatioGrid::new(
            1.0 + config.error_tolerance,
            config.prior_scale,
            config.step_up_ratio,
        );
        let evidence =
            RateRatioEvidence::new(&grid, config.noise_shapes(), config.late_onset_share);
        Ok(Self {
            alpha: config.alpha,
            grid,
            evidence,
            missing_intervals: 0,
            canary_requests: 0,
            stable_requests: 0,
            pod_intervals: 0,
        })
    }

    /// Adds one interval. Invalid counts are rejected without changing the judge.
    pub fn observe(&mut self, counts: &ErrorCounts) -> Result<(), InvalidCounts> {
        self.observe_split(counts, None)
    }

    /// Adds one interval given per pod: the null may then explain only as much
    /// interval-to-interval noise as the pods of each version show (see the module docs of
    /// the rate-ratio evidence). Invalid counts are rejected without changing the judge.
    pub fn observe_pods(&mut self, pods: &PodErrorCounts) -> Result<(), InvalidCounts> {
        for (side, version) in [("canary", &pods.canary), ("stable", &pods.stable)] {
            for &[requests, errors] in version {
                if errors > requests {
                    return Err(InvalidCounts::MoreErrorsThanRequests {
                        side,
                        errors,
                        requests,
                    });
                }
            }
        }
        let totals = pods.totals();
        let pairs = |version: &[[u64; 2]]| version.iter().map(|&[n, x]| (n, x)).collect::<Vec<_>>();
        let split = PodSplit::new(pairs(&pods.canary), pairs(&pods.stable));
        self.observe_split(&totals, Some(&split))?;
        if split.several_pods() {
            self.pod_intervals += 1;
        }
        Ok(())
    }

    fn observe_split(
        &mut self,
        counts: &ErrorCounts,
        pods: Option<&PodSplit>,
    ) -> Result<(), InvalidCounts> {
        let ErrorCounts {
            canary_requests,
            canary_errors,
            stable_requests,
            stable_errors,
        } = *counts;
        for (side, errors, requests) in [
            ("canary", canary_errors, canary_requests),
            ("stable", stable_errors, stable_requests),
        ] {
            if errors > requests {
                return Err(InvalidCounts::MoreErrorsThanRequests {
                    side,
                    errors,
                    requests,
                });
            }
        }
        let total_requests = canary_requests + stable_requests;
        let canary_share = if total_requests == 0 {
            0.0
        } else {
            canary_requests as f64 / total_requests as f64
        };
        self.evidence
            .observe(&self.grid, canary_errors, stable_errors, canary_share, pods);
        self.canary_requests += canary_requests;
        self.stable_requests += stable_requests;
        Ok(())
    }

    /// Records an interval for which Prometheus returned no data. It adds no evidence; it is
    /// counted so the explanation can say so.
    pub fn observe_missing(&mut self) {
        self.missing_intervals += 1;
    }

    /// The e-values alone, without estimate, interval or explanation (for combining metrics
    /// in tight loops).
    pub fn evidence(&self) -> Evidence {
        Evidence {
            regression: capped_e_value(self.evidence.ln_e_regression(&self.grid)),
            no_regression: capped_e_value(self.evidence.ln_e_no_regression(&self.grid)),
        }
    }

    /// The verdict alone, without building the explanation (for tight loops).
    pub fn verdict(&self) -> Verdict {
        decide(
            self.evidence.ln_e_regression(&self.grid),
            self.evidence.ln_e_no_regression(&self.grid),
            self.alpha,
        )
    }

    /// The full assessment after the intervals seen so far.
    pub fn assess(&self) -> Assessment {
        let ln_regression = self.evidence.ln_e_regression(&self.grid);
        let ln_no_regression = self.evidence.ln_e_no_regression(&self.grid);
        let verdict = decide(ln_regression, ln_no_regression, self.alpha);
        let Reported {
            estimate: ratio_estimate,
            interval: ratio_interval,
            tolerated_ratio,
            evidence,
            since,
            clause,
        } = report(
            &self.evidence,
            &self.grid,
            self.alpha,
            (ln_regression, ln_no_regression),
            verdict,
        );
        let counts = format!(
            "canary {} errors in {} requests, stable {} in {}",
            self.evidence.canary_events,
            self.canary_requests,
            self.evidence.stable_events,
            self.stable_requests
        );
        let missing = data_notes(self.missing_intervals, self.pod_intervals);
        let explanation = match ratio_estimate {
            None => format!(
                "no information yet ({counts}{missing}): an error rate ratio needs traffic on both sides and at least one error"
            ),
            Some(estimate) => format!(
                "canary error rate {}× stable's{since} {clause} ({counts}{missing})",
                format_ratio(estimate),
            ),
        };
        Assessment {
            verdict,
            evidence,
            ratio_estimate,
            ratio_interval,
            tolerated_ratio,
            latency_bucket: None,
            informative_intervals: self.evidence.informative_intervals,
            missing_intervals: self.missing_intervals,
            explanation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        canary_requests: u64,
        canary_errors: u64,
        stable_requests: u64,
        stable_errors: u64,
    ) -> ErrorCounts {
        ErrorCounts {
            canary_requests,
            canary_errors,
            stable_requests,
            stable_errors,
        }
    }

    /// Each case repeats one interval and states the verdict expected after `intervals`.
    #[test]
    fn verdicts_by_scenario() {
        struct Case {
            name: &'static str,
            interval: ErrorCounts,
            intervals: usize,
            expected: Verdict,
            /// `NoRegression` judged against the tolerance instead of the default step-up
            /// ratio (×1.5).
            step_up_at_tolerance: bool,
        }
        let cases = [
            Case {
                name: "no traffic at all",
                interval: counts(0, 0, 0, 0),
                intervals: 1000,
                expected: Verdict::Continue,
                step_up_at_tolerance: false,
            },
            Case {
                name: "no canary traffic",
                interval: counts(0, 0, 60_000, 300),
                intervals: 1000,
                expected: Verdict::Continue,
                step_up_at_tolerance: false,
            },
            Case {
                name: "no stable traffic",
                interval: counts(600, 30, 0, 0),
                intervals: 1000,
                expected: Verdict::Continue,
                step_up_at_tolerance: false,
            },
            Case {
                name: "no errors anywhere",
                interval: counts(600, 0, 59_400, 0),
                intervals: 1000,
                expected: Verdict::Continue,
                step_up_at_tolerance: false,
            },
            Case {
                name: "canary errors only, stable none",
                interval: counts(600, 3, 59_400, 0),
                intervals: 1,
                expected: Verdict::Continue,
                step_up_at_tolerance: false,
            },
            Case {
                name: "x5 at 1% of 1000 rps, one minute",
                interval: counts(600, 15, 59_400, 297),
                intervals: 1,
                expected: Verdict::Regressed,
                step_up_at_tolerance: false,
            },
            Case {
                name: "x2 at 1% of 1000 rps, short",
                interval: counts(600, 6, 59_400, 297),
                intervals: 2,
                expected: Verdict::Continue,
                step_up_at_tolerance: false,
            },
            Case {
                name: "x2 at 1% of 1000 rps, ten minutes",
                interval: counts(600, 6, 59_400, 297),
                intervals: 10,
                expected: Verdict::Regressed,
                step_up_at_tolerance: false,
            },
            Case {
                name: "equal rates, 30 minutes at 1%: within the tolerance not yet shown",
                interval: counts(600, 3, 59_400, 297),
                intervals: 30,
                expected: Verdict::Continue,
                step_up_at_tolerance: true,
            },
            Case {
                name: "equal rates, 30 minutes at 1%: not worse than ×1.5, step up",
                interval: counts(600, 3, 59_400, 297),
                intervals: 30,
                expected: Verdict::NoRegression,
                step_up_at_tolerance: false,
            },
            Case {
                name: "x1.5 at 1% of 1000 rps does not step up at ×1.5 in ten minutes",
                interval: counts(600, 4, 59_400, 267),
                intervals: 10,
                expected: Verdict::Continue,
                step_up_at_tolerance: false,
            },
            Case {
                name: "equal rates, 50% share, long",
                interval: counts(30_000, 150, 30_000, 150),
                intervals: 200,
                expected: Verdict::NoRegression,
                step_up_at_tolerance: false,
            },
            Case {
                name: "clean canary, 50% share",
                interval: counts(30_000, 0, 30_000, 150),
                intervals: 3,
                expected: Verdict::NoRegression,
                step_up_at_tolerance: false,
            },
            Case {
                name: "just above tolerance stays undecided",
                interval: counts(30_000, 165, 30_000, 150),
                intervals: 20,
                expected: Verdict::Continue,
                step_up_at_tolerance: true,
            },
        ];
        for case in cases {
            let config = SequentialConfig {
                step_up_ratio: if case.step_up_at_tolerance { 1.1 } else { 1.5 },
                ..SequentialConfig::default()
            };
            let mut judge = ErrorRateJudge::new(&config).unwrap();
            for _ in 0..case.intervals {
                judge.observe(&case.interval).unwrap();
            }
            let assessment = judge.assess();
            assert_eq!(
                assessment.verdict, case.expected,
                "{}: {}",
                case.name, assessment.explanation
            );
            assert_eq!(judge.verdict(), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn missing_intervals_add_no_evidence_and_are_explained() {
        let mut judge = ErrorRateJudge::new(&SequentialConfig::default()).unwrap();
        for _ in 0..100 {
            judge.observe_missing();
        }
        let assessment = judge.assess();
        assert_eq!(assessment.verdict, Verdict::Continue);
        assert_eq!(assessment.evidence.regression, 1.0);
        assert_eq!(assessment.missing_intervals, 100);
        assert!(
            assessment
                .explanation
                .contains("100 interval(s) without data"),
            "{}",
            assessment.explanation
        );
        assert!(assessment.explanation.contains("no information yet"));
    }

    #[test]
    fn impossible_counts_are_rejected_without_changing_state() {
        let mut judge = ErrorRateJudge::new(&SequentialConfig::default()).unwrap();
        judge.observe(&counts(100, 1, 100, 1)).unwrap();
        let before = judge.clone();
        let error = judge.observe(&counts(10, 11, 100, 1)).unwrap_err();
        assert_eq!(
            error,
            InvalidCounts::MoreErrorsThanRequests {
                side: "canary",
                errors: 11,
                requests: 10
            }
        );
        assert!(judge.observe(&counts(10, 1, 100, 101)).is_err());
        assert_eq!(judge, before);
    }

    #[test]
    fn invalid_config_is_refused() {
        let config = SequentialConfig {
            alpha: 2.0,
            ..SequentialConfig::default()
        };
        assert_eq!(ErrorRateJudge::new(&config).unwrap_err().field, "alpha");
    }

    #[test]
    fn late_regression_is_reported_on_the_intervals_since_it_began() {
        // Ten healthy intervals, then the canary's error rate triples.
        let mut judge = ErrorRateJudge::new(&SequentialConfig::default()).unwrap();
        let mut intervals = 0;
        for _ in 0..10 {
            judge.observe(&counts(600, 3, 59_400, 297)).unwrap();
        }
        while judge.verdict() != Verdict::Regressed && intervals < 20 {
            judge.observe(&counts(600, 9, 59_400, 297)).unwrap();
            intervals += 1;
        }
        let assessment = judge.assess();
        assert_eq!(
            assessment.verdict,
            Verdict::Regressed,
            "{}",
            assessment.explanation
        );
        assert!(
            assessment
                .explanation
                .contains("since informative interval"),
            "{}",
            assessment.explanation
        );
        let estimate = assessment.ratio_estimate.unwrap();
        assert!(estimate > 2.0, "{estimate}: {}", assessment.explanation);
        assert!(
            assessment.ratio_interval.lower >= assessment.tolerated_ratio - 1e-9,
            "{}",
            assessment.explanation
        );
        // Without the late copies the same data take longer (or never) to decide.
        let mut whole_run = ErrorRateJudge::new(&SequentialConfig {
            late_onset_share: 0.0,
            ..SequentialConfig::default()
        })
        .unwrap();
        for _ in 0..10 {
            whole_run.observe(&counts(600, 3, 59_400, 297)).unwrap();
        }
        for _ in 0..intervals {
            whole_run.observe(&counts(600, 9, 59_400, 297)).unwrap();
        }
        assert_ne!(whole_run.verdict(), Verdict::Regressed);
    }

    #[test]
    fn assessment_explains_effect_interval_and_evidence() {
        let mut judge = ErrorRateJudge::new(&SequentialConfig::default()).unwrap();
        for _ in 0..10 {
            judge.observe(&counts(600, 6, 59_400, 297)).unwrap();
        }
        let assessment = judge.assess();
        let estimate = assessment.ratio_estimate.unwrap();
        assert!((1.7..2.4).contains(&estimate), "{estimate}");
        assert!(
            assessment.ratio_interval.lower >= assessment.tolerated_ratio - 1e-9,
            "{}",
            assessment.explanation
        );
        assert!(
            assessment.ratio_interval.lower < estimate
                && estimate < assessment.ratio_interval.upper
        );
        assert!(assessment.evidence.regression >= 100.0);
        for part in [
            "canary error rate",
            "98% confidence sequence",
            "roll back",
            "canary 60 errors in 6000 requests",
        ] {
            assert!(
                assessment.explanation.contains(part),
                "missing {part:?} in {}",
                assessment.explanation
            );
        }
        let json = serde_json::to_value(&assessment).unwrap();
        assert_eq!(json["verdict"], "Regressed");
    }

    #[test]
    fn judge_state_survives_serialization() {
        let mut judge = ErrorRateJudge::new(&SequentialConfig::default()).unwrap();
        for _ in 0..5 {
            judge.observe(&counts(600, 6, 59_400, 297)).unwrap();
        }
        let restored: ErrorRateJudge =
            serde_json::from_str(&serde_json::to_string(&judge).unwrap()).unwrap();
        // JSON may round the last bit of a float; nothing a human or a verdict can see.
        let (before, after) = (judge.assess(), restored.assess());
        assert_eq!(after.verdict, before.verdict);
        assert_eq!(after.explanation, before.explanation);
        let relative = (after.evidence.regression / before.evidence.regression - 1.0).abs();
        assert!(relative < 1e-12, "{relative}");
    }

    #[test]
    fn per_pod_counts_with_one_pod_each_judge_like_the_totals_and_bad_pods_are_rejected() {
        let config = SequentialConfig::default();
        let mut from_totals = ErrorRateJudge::new(&config).unwrap();
        let mut from_pods = ErrorRateJudge::new(&config).unwrap();
        for (canary, stable) in [([600, 9], [59_400, 300]), ([580, 7], [60_100, 310])] {
            let pods = PodErrorCounts {
                canary: vec![canary],
                stable: vec![stable],
            };
            from_totals.observe(&pods.totals()).unwrap();
            from_pods.observe_pods(&pods).unwrap();
        }
        assert_eq!(from_totals.evidence(), from_pods.evidence());

        // Several pods: the totals are the sums, and the split changes the evidence.
        let split = PodErrorCounts {
            canary: vec![[300, 4], [280, 3]],
            stable: vec![[30_000, 150], [30_100, 160]],
        };
        assert_eq!(split.totals(), counts(580, 7, 60_100, 310));
        let mut with_split = from_pods.clone();
        with_split.observe_pods(&split).unwrap();
        from_pods.observe(&split.totals()).unwrap();
        assert_ne!(with_split.evidence(), from_pods.evidence());
        assert!(
            with_split
                .assess()
                .explanation
                .contains("noise level learned from the pods of 1 interval(s)"),
            "{}",
            with_split.assess().explanation
        );
        assert!(!from_totals.assess().explanation.contains("pods"));

        let before = with_split.clone();
        let impossible = PodErrorCounts {
            canary: vec![[10, 11]],
            stable: vec![[100, 1]],
        };
        assert!(matches!(
            with_split.observe_pods(&impossible),
            Err(InvalidCounts::MoreErrorsThanRequests { side: "canary", .. })
        ));
        assert_eq!(with_split, before);
    }
}
