//! Several compared metrics, one decision, one false-rollback budget.
//!
//! A weighted average of e-values (weights fixed in advance, summing to one) is an e-value,
//! whatever the dependence between the metrics. Rolling back when it reaches `1/alpha` keeps
//! the probability of any false rollback ≤ `alpha` for the whole set of metrics. A metric's
//! weight is its share of the budget: alone it triggers a rollback once its own e-value
//! reaches `1/(alpha · share)`, so a critical metric gets a large weight, a minor one a small
//! weight, and evidence from several moderately worse metrics adds up.
//!
//! "No regression" must hold for every metric (the canary is only fine if it is fine on all
//! of them), so each metric must reach `1/alpha` on its own.

use serde::{Deserialize, Serialize};

use super::{Evidence, InvalidConfig, Verdict, format_e_value};

/// One metric's latest evidence ([`Assessment::evidence`] or the judge's `evidence()`) with
/// its weight in the combined decision.
#[derive(Clone, Copy, Debug)]
pub struct WeightedMetric<'a> {
    pub name: &'a str,
    pub evidence: Evidence,
    /// Relative share of the false-rollback budget; any positive number (normalized).
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CombinedAssessment {
    pub verdict: Verdict,
    /// Weighted average of the metrics' evidence of regression.
    pub evidence_of_regression: f64,
    /// Names of metrics whose share of the evidence alone would exceed the threshold, or which
    /// contributed most when it is the sum that does.
    pub deciding_metrics: Vec<String>,
    pub explanation: String,
}

/// Combines the metrics' latest assessments under one `alpha`.
pub fn combine(
    alpha: f64,
    metrics: &[WeightedMetric<'_>],
) -> Result<CombinedAssessment, InvalidConfig> {
    if !(alpha > 0.0 && alpha < 0.5) {
        return Err(InvalidConfig {
            field: "alpha",
            value: alpha,
            expected: "in (0, 0.5)",
        });
    }
    if let Some(bad) = metrics
        .iter()
        .find(|m| !(m.weight > 0.0 && m.weight.is_finite()))
    {
        return Err(InvalidConfig {
            field: "weight",
            value: bad.weight,
            expected: "positive and finite",
        });
    }
    let total_weight: f64 = metrics.iter().map(|m| m.weight).sum();
    let contributions: Vec<f64> = metrics
        .iter()
        .map(|m| m.weight / total_weight * m.evidence.regression)
        .collect();
    let evidence_of_regression: f64 = contributions.iter().sum();
    let threshold = 1.0 / alpha;
    let all_safe = !metrics.is_empty()
        && metrics
            .iter()
            .all(|m| m.evidence.no_regression >= threshold);
    let verdict = if evidence_of_regression >= threshold {
        Verdict::Regressed
    } else if all_safe {
        Verdict::NoRegression
    } else {
        Verdict::Continue
    };
    let deciding_metrics: Vec<String> = match verdict {
        Verdict::Regressed => {
            let largest = contributions.iter().copied().fold(0.0, f64::max);
            metrics
                .iter()
                .zip(&contributions)
                .filter(|(_, c)| **c >= threshold || **c == largest)
                .map(|(m, _)| m.name.to_owned())
                .collect()
        }
        Verdict::NoRegression => metrics.iter().map(|m| m.name.to_owned()).collect(),
        Verdict::Continue => Vec::new(),
    };
    let explanation = match verdict {
        Verdict::Regressed => format!(
            "regressed: combined evidence {} ≥ {} over {} metric(s), driven by {}",
            format_e_value(evidence_of_regression),
            format_e_value(threshold),
            metrics.len(),
            deciding_metrics.join(", ")
        ),
        Verdict::NoRegression => format!(
            "each of {} metric(s) shown no worse than its step-up ratio: safe to step up",
            metrics.len()
        ),
        Verdict::Continue => {
            let pending: Vec<&str> = metrics
                .iter()
                .filter(|m| m.evidence.no_regression < threshold)
                .map(|m| m.name)
                .collect();
            format!(
                "continue: combined evidence of regression {} < {}; not yet shown safe: {}",
                format_e_value(evidence_of_regression),
                format_e_value(threshold),
                if pending.is_empty() {
                    "(no metrics)".to_owned()
                } else {
                    pending.join(", ")
                }
            )
        }
    };
    Ok(CombinedAssessment {
        verdict,
        evidence_of_regression,
        deciding_metrics,
        explanation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(regression: f64, no_regression: f64) -> Evidence {
        Evidence {
            regression,
            no_regression,
        }
    }

    #[test]
    fn verdicts_by_evidence_and_weights() {
        // (name, [(e regression, e no regression, weight)], expected verdict, deciding)
        type Case = (
            &'static str,
            Vec<(f64, f64, f64)>,
            Verdict,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("no metrics", vec![], Verdict::Continue, vec![]),
            (
                "one metric at threshold",
                vec![(100.0, 0.0, 1.0)],
                Verdict::Regressed,
                vec!["m0"],
            ),
            (
                "one of two at 1/alpha is not enough",
                vec![(100.0, 0.0, 1.0), (1.0, 1.0, 1.0)],
                Verdict::Continue,
                vec![],
            ),
            (
                "one of two at 2/alpha",
                vec![(199.0, 0.0, 1.0), (1.0, 1.0, 1.0)],
                Verdict::Regressed,
                vec!["m0"],
            ),
            (
                "two moderate add up",
                vec![(100.0, 0.0, 1.0), (100.0, 0.0, 1.0)],
                Verdict::Regressed,
                vec!["m0", "m1"],
            ),
            (
                "critical weight 9 of 10",
                vec![(112.0, 0.0, 9.0), (1.0, 1.0, 1.0)],
                Verdict::Regressed,
                vec!["m0"],
            ),
            (
                "minor weight 1 of 10",
                vec![(112.0, 0.0, 1.0), (1.0, 1.0, 9.0)],
                Verdict::Continue,
                vec![],
            ),
            (
                "all safe",
                vec![(0.1, 100.0, 1.0), (0.5, 250.0, 1.0)],
                Verdict::NoRegression,
                vec!["m0", "m1"],
            ),
            (
                "one not yet safe",
                vec![(0.1, 100.0, 1.0), (0.5, 50.0, 1.0)],
                Verdict::Continue,
                vec![],
            ),
        ];
        for (name, inputs, expected, deciding) in cases {
            let names: Vec<String> = (0..inputs.len()).map(|i| format!("m{i}")).collect();
            let metrics: Vec<WeightedMetric> = inputs
                .iter()
                .zip(&names)
                .map(
                    |((regression, no_regression, weight), name)| WeightedMetric {
                        name,
                        evidence: evidence(*regression, *no_regression),
                        weight: *weight,
                    },
                )
                .collect();
            let combined = combine(0.01, &metrics).unwrap();
            assert_eq!(
                combined.verdict, expected,
                "{name}: {}",
                combined.explanation
            );
            assert_eq!(combined.deciding_metrics, deciding, "{name}");
        }
    }

    #[test]
    fn invalid_weight_or_alpha_is_refused() {
        let zero = [WeightedMetric {
            name: "m",
            evidence: evidence(1.0, 1.0),
            weight: 0.0,
        }];
        assert_eq!(combine(0.01, &zero).unwrap_err().field, "weight");
        let fine = [WeightedMetric {
            name: "m",
            evidence: evidence(1.0, 1.0),
            weight: 1.0,
        }];
        assert_eq!(combine(0.0, &fine).unwrap_err().field, "alpha");
    }
}
