//! Latency comparison on Prometheus histogram buckets.
//!
//! For every bucket boundary `le`, a request slower than `le` is an "event", and the
//! error-rate machinery judges the ratio of the canary's slower-than-`le` fraction to
//! stable's. Together the boundaries describe the whole distribution: the canary is
//! stochastically slower exactly when some boundary's ratio exceeds one, so a shift of the
//! body shows at the middle boundaries and a tail-only regression at the high ones. The
//! per-boundary e-processes are averaged with equal, fixed weights, which is itself an
//! e-process (no independence needed), so the family of boundaries costs a factor of the
//! number of boundaries in evidence, not in error rate.

use serde::{Deserialize, Serialize};

use super::rate_ratio::{PodSplit, RateRatioEvidence, RatioGrid, log_sum_exp};
use super::{
    Assessment, Evidence, InvalidConfig, InvalidCounts, Reported, SequentialConfig, Verdict,
    capped_e_value, data_notes, decide, format_ratio, report,
};

/// One interval's histogram counts of both versions: for each `le` of the layout, in
/// order, then +Inf, the number of requests at most that slow (Prometheus' cumulative
/// `_bucket` series, as deltas over the interval).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistogramCounts {
    pub canary: Vec<u64>,
    pub stable: Vec<u64>,
}

/// One interval's histogram counts per pod (per series that identifies a process) of both
/// versions, each pod's cumulative bucket counts as in [`HistogramCounts`]. With these the
/// judge learns how noisy the pods are instead of allowing the configured maximum noise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodHistogramCounts {
    pub canary: Vec<Vec<u64>>,
    pub stable: Vec<Vec<u64>>,
}

/// Bucket boundaries that are not finite, positive and strictly increasing, or a bad config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidLatencySetup {
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    #[error(
        "latency bucket boundaries must be finite, positive and strictly increasing, without +Inf; got {0:?}"
    )]
    Layout(Vec<f64>),
    #[error(
        "judge.latencyBoundaries {missing:?} are not bucket boundaries of the histogram, whose le values are {layout:?}: use some of those"
    )]
    NotInLayout { missing: Vec<f64>, layout: Vec<f64> },
}

/// Sequential judge of the canary's latency distribution relative to stable's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyJudge {
    alpha: f64,
    tail_fraction: f64,
    grid: RatioGrid,
    /// The histogram's finite bucket boundaries `le`, increasing.
    boundaries: Vec<f64>,
    /// Indices into `boundaries` of those judged (`latencyBoundaries`; default all).
    judged: Vec<usize>,
    /// One e-process per judged boundary, on the slower-than-`le` rate ratio.
    per_boundary: Vec<RateRatioEvidence>,
    /// Stable requests slower than each judged boundary, summed over intervals.
    stable_slower: Vec<u64>,
    stable_requests: u64,
    canary_requests: u64,
    missing_intervals: u32,
    /// Intervals observed per pod (the noise level learned from them).
    #[serde(default)]
    pod_intervals: u32,
}

impl LatencyJudge {
    /// `boundaries` are the histogram's finite `le` values, increasing (+Inf is implied).
    pub fn new(config: &SequentialConfig, boundaries: &[f64]) -> Result<Self, InvalidLatencySetup> {
        config.validate()?;
        let well_formed = !boundaries.is_empty()
            && boundaries.iter().all(|b| b.is_finite() && *b > 0.0)
            && boundaries.windows(2).all(|pair| pair[0] < pair[1]);
        if !well_formed {
            return Err(InvalidLatencySetup::Layout(boundaries.to_vec()));
        }
        // A chosen boundary matches the layout's `le` up to the rounding of a decimal label.
        let index_of = |le: f64| {
            boundaries
                .iter()
                .position(|b| (b - le).abs() <= 1e-9 * le.abs().max(b.abs()))
        };
        let judged: Vec<usize> = if config.latency_boundaries.is_empty() {
            (0..boundaries.len()).collect()
        } else {
            let missing: Vec<f64> = config
                .latency_boundaries
                .iter()
                .copied()
                .filter(|le| index_of(*le).is_none())
                .collect();
            if !missing.is_empty() {
                return Err(InvalidLatencySetup::NotInLayout {
                    missing,
                    layout: boundaries.to_vec(),
                });
            }
            config
                .latency_boundaries
                .iter()
                .filter_map(|le| index_of(*le))
                .collect()
        };
        let grid = RatioGrid::new(
            1.0 + config.latency_tolerance,
            config.prior_scale,
            config.step_up_ratio,
        );
        let per_boundary = judged
            .iter()
            .map(|_| RateRatioEvidence::new(&grid, config.noise_shapes(), config.late_onset_share))
            .collect();
        Ok(Self {
            alpha: config.alpha,
            tail_fraction: config.latency_tail_fraction,
            grid,
            boundaries: boundaries.to_vec(),
            stable_slower: vec![0; judged.len()],
            judged,
            per_boundary,
            stable_requests: 0,
            canary_requests: 0,
            missing_intervals: 0,
            pod_intervals: 0,
        })
    }

    /// Adds one interval. Invalid counts are rejected without changing the judge.
    pub fn observe(&mut self, counts: &HistogramCounts) -> Result<(), InvalidCounts> {
        self.check_cumulative("canary", &counts.canary)?;
        self.check_cumulative("stable", &counts.stable)?;
        self.observe_checked(counts, None);
        Ok(())
    }

    /// Adds one interval given per pod: the null may then explain only as much
    /// interval-to-interval noise as the pods of each version show. Invalid counts are
    /// rejected without changing the judge.
    pub fn observe_pods(&mut self, pods: &PodHistogramCounts) -> Result<(), InvalidCounts> {
        for (side, version) in [("canary", &pods.canary), ("stable", &pods.stable)] {
            for pod in version {
                self.check_cumulative(side, pod)?;
            }
        }
        let sum = |version: &[Vec<u64>]| {
            let mut total = vec![0; self.boundaries.len() + 1];
            for pod in version {
                for (sum, count) in total.iter_mut().zip(pod) {
                    *sum += count;
                }
            }
            total
        };
        let totals = HistogramCounts {
            canary: sum(&pods.canary),
            stable: sum(&pods.stable),
        };
        self.observe_checked(&totals, Some(pods));
        // The noise level was learned from the pods when some version had several with
        // traffic (the same at every boundary: a pod's requests are its histogram's total).
        let several = |version: &[Vec<u64>]| {
            version
                .iter()
                .filter(|pod| pod.last().is_some_and(|&requests| requests > 0))
                .count()
                > 1
        };
        if !self.judged.is_empty() && (several(&pods.canary) || several(&pods.stable)) {
            self.pod_intervals += 1;
        }
        Ok(())
    }

    fn observe_checked(&mut self, counts: &HistogramCounts, pods: Option<&PodHistogramCounts>) {
        let HistogramCounts { canary, stable } = counts;
        let canary_total = *canary.last().expect("length checked");
        let stable_total = *stable.last().expect("length checked");
        let total = canary_total + stable_total;
        let canary_share = if total == 0 {
            0.0
        } else {
            canary_total as f64 / total as f64
        };
        for ((&index, evidence), stable_slower_sum) in self
            .judged
            .iter()
            .zip(&mut self.per_boundary)
            .zip(&mut self.stable_slower)
        {
            let canary_slower = canary_total - canary[index];
            let stable_slower = stable_total - stable[index];
            // Per pod: its requests and how many were slower than this boundary.
            let split = pods.map(|pods| {
                PodSplit::new(
                    slower_per_pod(&pods.canary, index),
                    slower_per_pod(&pods.stable, index),
                )
            });
            evidence.observe(
                &self.grid,
                canary_slower,
                stable_slower,
                canary_share,
                split.as_ref(),
            );
            *stable_slower_sum += stable_slower;
        }
        self.stable_requests += stable_total;
        self.canary_requests += canary_total;
    }

    /// Records an interval for which Prometheus returned no data.
    pub fn observe_missing(&mut self) {
        self.missing_intervals += 1;
    }

    fn check_cumulative(&self, side: &'static str, counts: &[u64]) -> Result<(), InvalidCounts> {
        let expected = self.boundaries.len() + 1;
        if counts.len() != expected {
            return Err(InvalidCounts::BucketCountMismatch {
                side,
                got: counts.len(),
                expected,
            });
        }
        let bounds_with_infinity = || self.boundaries.iter().copied().chain([f64::INFINITY]);
        for ((pair, le_before), le_after) in counts
            .windows(2)
            .zip(bounds_with_infinity())
            .zip(bounds_with_infinity().skip(1))
        {
            if pair[1] < pair[0] {
                return Err(InvalidCounts::NotCumulative {
                    side,
                    le_before,
                    le_after,
                });
            }
        }
        Ok(())
    }

    /// Each boundary's ln e-value of regression, computed once (each is a sum over the
    /// e-process copies and grid points, and the average and the strongest both need them).
    fn ln_e_regression_per_boundary(&self) -> Vec<f64> {
        self.per_boundary
            .iter()
            .map(|evidence| evidence.ln_e_regression(&self.grid))
            .collect()
    }

    /// The equal-weight average of the boundaries' e-values, in logs.
    fn ln_e_regression(per_boundary: &[f64]) -> f64 {
        log_sum_exp(per_boundary.iter().copied()) - (per_boundary.len() as f64).ln()
    }

    /// Judged boundaries (positions in `judged`) dense enough in stable's data to prove the
    /// absence of a regression.
    fn judged_for_no_regression(&self) -> impl Iterator<Item = usize> + '_ {
        let minimum = self.tail_fraction * self.stable_requests as f64;
        (0..self.judged.len()).filter(move |&index| {
            self.stable_requests > 0 && self.stable_slower[index] as f64 >= minimum
        })
    }

    /// No regression must hold at every judged boundary: the smallest of their e-values.
    /// Without any judged boundary there is no such evidence (1).
    fn weakest_no_regression(&self) -> Option<(usize, f64)> {
        self.judged_for_no_regression()
            .map(|index| {
                (
                    index,
                    self.per_boundary[index].ln_e_no_regression(&self.grid),
                )
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn strongest_regression(per_boundary: &[f64]) -> (usize, f64) {
        per_boundary
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("at least one boundary")
    }

    /// The e-values alone, without estimate, interval or explanation.
    pub fn evidence(&self) -> Evidence {
        let ln_no_regression = self.weakest_no_regression().map_or(0.0, |(_, ln_e)| ln_e);
        Evidence {
            regression: capped_e_value(Self::ln_e_regression(&self.ln_e_regression_per_boundary())),
            no_regression: capped_e_value(ln_no_regression),
        }
    }

    /// The verdict alone, without building the explanation.
    pub fn verdict(&self) -> Verdict {
        let ln_no_regression = self.weakest_no_regression().map_or(0.0, |(_, ln_e)| ln_e);
        decide(
            Self::ln_e_regression(&self.ln_e_regression_per_boundary()),
            ln_no_regression,
            self.alpha,
        )
    }

    pub fn assess(&self) -> Assessment {
        let per_boundary = self.ln_e_regression_per_boundary();
        let ln_regression = Self::ln_e_regression(&per_boundary);
        let weakest = self.weakest_no_regression();
        let ln_no_regression = weakest.map_or(0.0, |(_, ln_e)| ln_e);
        let verdict = decide(ln_regression, ln_no_regression, self.alpha);
        // Report the boundary that drives the decision: the strongest evidence of regression,
        // unless the canary looks fine, then the boundary that holds up early promotion.
        let (strongest, strongest_ln_e) = Self::strongest_regression(&per_boundary);
        let reported = match weakest {
            Some((index, _)) if verdict != Verdict::Regressed && strongest_ln_e < 0.0 => index,
            _ => strongest,
        };
        let le = self.boundaries[self.judged[reported]];
        let Reported {
            estimate: ratio_estimate,
            interval: ratio_interval,
            tolerated_ratio,
            evidence,
            since,
            clause,
        } = report(
            &self.per_boundary[reported],
            &self.grid,
            self.alpha,
            (ln_regression, ln_no_regression),
            verdict,
        );
        let missing = data_notes(self.missing_intervals, self.pod_intervals);
        let counts = format!(
            "canary {} requests, stable {}{missing}",
            self.canary_requests, self.stable_requests
        );
        let explanation = match ratio_estimate {
            None => format!(
                "no information yet ({counts}): latency needs traffic on both sides and requests slower than some bucket boundary"
            ),
            Some(estimate) => {
                let judged = match self.judged.len() {
                    1 => "judged at this bucket boundary only".to_owned(),
                    n if n == self.boundaries.len() => {
                        format!("evidence of regression averaged over {n} bucket boundaries")
                    }
                    n => format!(
                        "evidence of regression averaged over the {n} judged bucket boundaries of {}",
                        self.boundaries.len()
                    ),
                };
                format!(
                    "requests slower than le={le}: canary {}× stable's share{since} {clause} ({counts}; {judged})",
                    format_ratio(estimate),
                )
            }
        };
        Assessment {
            verdict,
            evidence,
            ratio_estimate,
            ratio_interval,
            tolerated_ratio,
            latency_bucket: Some(le),
            informative_intervals: self
                .per_boundary
                .iter()
                .map(|evidence| evidence.informative_intervals)
                .max()
                .unwrap_or(0),
            missing_intervals: self.missing_intervals,
            explanation,
        }
    }
}

/// Per pod: its requests and how many were slower than the boundary at `index`.
fn slower_per_pod(version: &[Vec<u64>], index: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
    version.iter().map(move |pod| {
        let total = *pod.last().expect("length checked");
        (total, total - pod[index])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: [f64; 5] = [0.05, 0.1, 0.25, 0.5, 1.0];

    /// Cumulative counts from per-bucket counts (last = above the highest boundary).
    fn cumulative(per_bucket: [u64; 6]) -> Vec<u64> {
        per_bucket
            .iter()
            .scan(0, |running, count| {
                *running += count;
                Some(*running)
            })
            .collect()
    }

    fn judge_after(canary: [u64; 6], stable: [u64; 6], intervals: usize) -> LatencyJudge {
        judge_at(&[], canary, stable, intervals)
    }

    /// [`judge_after`] judging only the boundaries `judged` (all when empty).
    fn judge_at(
        judged: &[f64],
        canary: [u64; 6],
        stable: [u64; 6],
        intervals: usize,
    ) -> LatencyJudge {
        let config = SequentialConfig {
            latency_boundaries: judged.to_vec(),
            ..SequentialConfig::default()
        };
        let mut judge = LatencyJudge::new(&config, &LAYOUT).unwrap();
        let counts = HistogramCounts {
            canary: cumulative(canary),
            stable: cumulative(stable),
        };
        for _ in 0..intervals {
            judge.observe(&counts).unwrap();
        }
        judge
    }

    #[test]
    fn judging_fewer_boundaries_finds_a_regression_at_them_sooner() {
        // Per interval, above 250 ms: stable 2%, canary 6.7%; above 500 ms: 0.4% and 5%.
        let stable = [2970, 2376, 475, 95, 18, 6];
        let canary = [30, 23, 3, 1, 2, 1];
        let regressed_after = |judged: &[f64]| {
            (1..=200)
                .find(|&n| judge_at(judged, canary, stable, n).verdict() == Verdict::Regressed)
                .expect("found within 200 intervals")
        };
        let all = regressed_after(&[]);
        let chosen = regressed_after(&[0.25, 0.5]);
        assert!(
            chosen < all,
            "{chosen} intervals at 2 boundaries, {all} at all 5"
        );
        // A regression elsewhere is not looked for: only the body moved here.
        let body = [5, 25, 22, 6, 1, 1];
        let tail_only = judge_at(&[1.0], body, stable, 3);
        assert_ne!(tail_only.verdict(), Verdict::Regressed);
        let assessment = judge_at(&[0.1], body, stable, 3).assess();
        assert_eq!(assessment.verdict, Verdict::Regressed);
        assert_eq!(assessment.latency_bucket, Some(0.1));
        assert!(
            assessment
                .explanation
                .contains("judged at this bucket boundary only"),
            "{}",
            assessment.explanation
        );
    }

    #[test]
    fn judged_boundaries_must_be_in_the_layout() {
        let config = SequentialConfig {
            latency_boundaries: vec![0.1, 0.3],
            ..SequentialConfig::default()
        };
        let error = LatencyJudge::new(&config, &LAYOUT).unwrap_err();
        assert_eq!(
            error,
            InvalidLatencySetup::NotInLayout {
                missing: vec![0.3],
                layout: LAYOUT.to_vec()
            }
        );
        assert!(error.to_string().contains("judge.latencyBoundaries [0.3]"));
    }

    #[test]
    fn verdicts_by_scenario() {
        // Stable per interval: 5,940 requests, about half below 50 ms, 10% above 100 ms.
        let stable = [2970, 2376, 475, 95, 18, 6];
        struct Case {
            name: &'static str,
            canary: [u64; 6],
            intervals: usize,
            expected: Verdict,
            reported_le: Option<f64>,
        }
        let cases = [
            Case {
                name: "no canary traffic",
                canary: [0; 6],
                intervals: 500,
                expected: Verdict::Continue,
                reported_le: None,
            },
            Case {
                name: "same distribution, short",
                canary: [30, 24, 5, 1, 0, 0],
                intervals: 5,
                expected: Verdict::Continue,
                reported_le: None,
            },
            Case {
                name: "body twice as slow",
                canary: [5, 25, 22, 6, 1, 1],
                intervals: 2,
                expected: Verdict::Regressed,
                reported_le: None,
            },
            Case {
                name: "tail only: 5% above 1 s",
                canary: [28, 23, 4, 1, 0, 4],
                intervals: 3,
                expected: Verdict::Regressed,
                reported_le: Some(1.0),
            },
            Case {
                name: "same distribution, 50% share, long",
                canary: [2970, 2376, 475, 95, 18, 6],
                intervals: 300,
                expected: Verdict::NoRegression,
                reported_le: None,
            },
        ];
        for case in cases {
            let judge = judge_after(case.canary, stable, case.intervals);
            let assessment = judge.assess();
            assert_eq!(
                assessment.verdict, case.expected,
                "{}: {}",
                case.name, assessment.explanation
            );
            assert_eq!(judge.verdict(), case.expected, "{}", case.name);
            if let Some(le) = case.reported_le {
                assert_eq!(
                    assessment.latency_bucket,
                    Some(le),
                    "{}: {}",
                    case.name,
                    assessment.explanation
                );
            }
        }
    }

    #[test]
    fn malformed_layouts_and_counts_are_rejected() {
        let config = SequentialConfig::default();
        for layout in [
            vec![],
            vec![0.1, 0.1],
            vec![0.2, 0.1],
            vec![0.1, f64::INFINITY],
            vec![-1.0],
        ] {
            assert!(
                matches!(
                    LatencyJudge::new(&config, &layout),
                    Err(InvalidLatencySetup::Layout(_))
                ),
                "{layout:?}"
            );
        }
        let mut judge = LatencyJudge::new(&config, &LAYOUT).unwrap();
        let before = judge.clone();
        let short = HistogramCounts {
            canary: vec![1, 2, 3],
            stable: cumulative([1; 6]),
        };
        assert_eq!(
            judge.observe(&short),
            Err(InvalidCounts::BucketCountMismatch {
                side: "canary",
                got: 3,
                expected: 6
            })
        );
        let decreasing = HistogramCounts {
            canary: cumulative([1; 6]),
            stable: vec![1, 2, 3, 2, 5, 6],
        };
        assert_eq!(
            judge.observe(&decreasing),
            Err(InvalidCounts::NotCumulative {
                side: "stable",
                le_before: 0.25,
                le_after: 0.5
            })
        );
        assert_eq!(judge, before);
    }

    #[test]
    fn sparse_tail_alone_cannot_promote_early() {
        // Stable never has a request above 0.25 s, so the canary's behaviour above it is
        // unknown: those boundaries are excluded from the no-regression requirement, which
        // still needs all judged boundaries to agree.
        let judge = judge_after(
            [2000, 2000, 2000, 0, 0, 0],
            [2000, 2000, 2000, 0, 0, 0],
            300,
        );
        let assessment = judge.assess();
        assert_eq!(
            assessment.verdict,
            Verdict::NoRegression,
            "{}",
            assessment.explanation
        );
        let judge = judge_after([0; 6], [0; 6], 40);
        assert_eq!(judge.assess().verdict, Verdict::Continue);
    }

    #[test]
    fn per_pod_histograms_sum_to_the_totals_and_a_bad_pod_is_rejected() {
        let config = SequentialConfig::default();
        let boundaries = [0.1, 0.5];
        let mut from_totals = LatencyJudge::new(&config, &boundaries).unwrap();
        let mut from_pods = LatencyJudge::new(&config, &boundaries).unwrap();
        let one_pod_each = PodHistogramCounts {
            canary: vec![vec![40, 55, 60]],
            stable: vec![vec![5_000, 5_800, 6_000]],
        };
        from_totals
            .observe(&HistogramCounts {
                canary: vec![40, 55, 60],
                stable: vec![5_000, 5_800, 6_000],
            })
            .unwrap();
        from_pods.observe_pods(&one_pod_each).unwrap();
        assert_eq!(from_totals.evidence(), from_pods.evidence());
        assert_eq!(from_totals.canary_requests, from_pods.canary_requests);
        assert_eq!(from_totals.stable_slower, from_pods.stable_slower);
        // One pod per version shows nothing about noise, and the explanation does not claim it.
        assert!(!from_pods.assess().explanation.contains("pods"));

        let before = from_pods.clone();
        let not_cumulative = PodHistogramCounts {
            canary: vec![vec![40, 55, 60]],
            stable: vec![vec![3_000, 2_900, 3_000], vec![2_000, 2_900, 3_000]],
        };
        assert!(matches!(
            from_pods.observe_pods(&not_cumulative),
            Err(InvalidCounts::NotCumulative { side: "stable", .. })
        ));
        assert_eq!(from_pods, before);
    }
}
