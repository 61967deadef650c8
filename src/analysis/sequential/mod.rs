//! The sequential canary-vs-stable judge: anytime-valid tests on counts.
//!
//! Pure: no I/O, no clock. The caller feeds one interval of counts at a time (deltas of
//! Prometheus counters for the canary and the stable workload) and gets back an
//! [`Assessment`] with the evidence, the effect estimate with its time-uniform confidence
//! interval, a [`Verdict`] and a sentence for humans. The judge may be asked after every
//! interval without inflating false rollbacks: the probability that a canary within tolerance
//! is ever judged `Regressed` is at most `alpha`.
//!
//! - [`ErrorRateJudge`]: request and error counts (conditional beta-binomial mixture e-process
//!   on the error-rate ratio).
//! - [`LatencyJudge`]: histogram bucket counts per `le`, one e-process per bucket boundary on
//!   the ratio of slower-than-`le` fractions, averaged.
//! - [`combine`]: several metrics into one decision within the same `alpha`.
//!
//! The math, its references and the benchmark are in `docs/sequential-judge.md`.
//!
//! ```
//! use canary::analysis::sequential::{
//!     ErrorCounts, ErrorRateJudge, HistogramCounts, LatencyJudge, SequentialConfig, Verdict,
//!     WeightedMetric, combine,
//! };
//!
//! let config = SequentialConfig::default(); // alpha 0.01, tolerances 10%
//! let mut errors = ErrorRateJudge::new(&config)?;
//! let mut latency = LatencyJudge::new(&config, &[0.05, 0.1, 0.25, 0.5])?;
//! // Ten minutes of a canary at 1% of 1000 rps with twice stable's error rate and a slower
//! // body (cumulative bucket counts per `le`, +Inf last).
//! for _ in 0..10 {
//!     errors.observe(&ErrorCounts {
//!         canary_requests: 600,
//!         canary_errors: 6,
//!         stable_requests: 59_400,
//!         stable_errors: 297,
//!     })?;
//!     latency.observe(&HistogramCounts {
//!         canary: vec![150, 400, 560, 590, 600],
//!         stable: vec![29_700, 53_500, 58_800, 59_300, 59_400],
//!     })?;
//! }
//! let assessment = errors.assess();
//! assert_eq!(assessment.verdict, Verdict::Regressed);
//! println!("{}", assessment.explanation);
//! let combined = combine(
//!     config.alpha,
//!     &[
//!         WeightedMetric { name: "error-rate", evidence: errors.evidence(), weight: 1.0 },
//!         WeightedMetric { name: "latency", evidence: latency.evidence(), weight: 1.0 },
//!     ],
//! )?;
//! assert_eq!(combined.verdict, Verdict::Regressed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod combine;
mod config;
mod error_rate;
mod latency;
mod rate_ratio;

#[cfg(test)]
mod optional_stopping_tests;

pub use combine::{CombinedAssessment, WeightedMetric, combine};
pub use config::{InvalidConfig, SequentialConfig};
pub use error_rate::{ErrorCounts, ErrorRateJudge, PodErrorCounts};
pub use latency::{HistogramCounts, InvalidLatencySetup, LatencyJudge, PodHistogramCounts};
pub use rate_ratio::RatioInterval;

use serde::{Deserialize, Serialize};

/// What the evidence says so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Verdict {
    /// The canary is worse than stable by more than the tolerance (e-value ≥ 1/alpha).
    Regressed,
    /// The data show the canary no worse than the step-up ratio (`stepUpRatio`, ×1.5 by
    /// default; the tolerance if set to it): safe to step up or promote early.
    NoRegression,
    /// Not enough evidence either way yet.
    Continue,
}

/// The two e-values of a metric (or of a combination of metrics). Each is capped at 1e300 so
/// that it stays a finite number in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// E-value against "no regression beyond tolerance"; `Regressed` when ≥ 1/alpha.
    pub regression: f64,
    /// E-value against "regression beyond tolerance"; `NoRegression` when ≥ 1/alpha.
    pub no_regression: f64,
}

/// The judge's answer after an interval, for one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assessment {
    pub verdict: Verdict,
    pub evidence: Evidence,
    /// Estimated ratio canary/stable of the judged rate (error rate, or the fraction of
    /// requests slower than [`Assessment::latency_bucket`]); `None` before any information.
    pub ratio_estimate: Option<f64>,
    /// Time-uniform 1 − 2·alpha confidence interval on that ratio; it excludes the tolerated
    /// ratio whenever the verdict is `Regressed`, or `NoRegression` with the step-up ratio at
    /// the tolerance (a `NoRegression` against a higher step-up ratio shows an interval below
    /// about that ratio).
    pub ratio_interval: RatioInterval,
    /// The ratio above which the canary counts as regressed (1 + tolerance).
    pub tolerated_ratio: f64,
    /// For latency: the bucket boundary `le` the estimate and interval refer to.
    pub latency_bucket: Option<f64>,
    /// Intervals that carried information (traffic on both sides and at least one event).
    pub informative_intervals: u32,
    /// Intervals the caller reported as missing (no data from Prometheus).
    pub missing_intervals: u32,
    /// One sentence: the effect, the interval, the evidence and what it means.
    pub explanation: String,
}

/// Largest e-value reported; beyond it only the verdict matters.
const EVIDENCE_CAP_LN: f64 = 690.0;

fn capped_e_value(ln_e: f64) -> f64 {
    ln_e.min(EVIDENCE_CAP_LN).exp()
}

/// Counts that cannot come from real counters: the interval is rejected, and the judge's
/// state is left as it was.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidCounts {
    #[error(
        "{side} reported {errors} errors but only {requests} requests in one interval; check that the error query selects a subset of the request query"
    )]
    MoreErrorsThanRequests {
        side: &'static str,
        errors: u64,
        requests: u64,
    },
    #[error(
        "{side} histogram has {got} bucket counts but the layout has {expected} (one per `le`, including +Inf)"
    )]
    BucketCountMismatch {
        side: &'static str,
        got: usize,
        expected: usize,
    },
    #[error(
        "{side} histogram counts decrease from `le`={le_before} to `le`={le_after}; cumulative Prometheus buckets never do (mixed series or a counter reset inside the window?)"
    )]
    NotCumulative {
        side: &'static str,
        le_before: f64,
        le_after: f64,
    },
}

/// Regressed beats NoRegression: both at once is practically impossible, and if it ever
/// happened, rolling back is the safe reading.
fn decide(ln_regression: f64, ln_no_regression: f64, alpha: f64) -> Verdict {
    let threshold = -alpha.ln();
    if ln_regression >= threshold {
        Verdict::Regressed
    } else if ln_no_regression >= threshold {
        Verdict::NoRegression
    } else {
        Verdict::Continue
    }
}

/// The part of every explanation after the effect itself: interval, evidence, threshold and
/// what the verdict means.
/// `interval_alpha`: the interval is at level `1 − 2·interval_alpha` (alpha itself, or a late
/// copy's share of it).
fn evidence_clause(
    alpha: f64,
    interval_alpha: f64,
    interval: RatioInterval,
    tolerated_ratio: f64,
    step_up_ratio: f64,
    evidence: Evidence,
    verdict: Verdict,
) -> String {
    let meaning = match verdict {
        Verdict::Regressed => "regressed, roll back".to_owned(),
        // Against the step-up ratio, which may be above the tolerance: say which.
        Verdict::NoRegression if step_up_ratio > tolerated_ratio + 1e-9 => format!(
            "not worse than {}× stable, safe to step up",
            format_ratio(step_up_ratio)
        ),
        Verdict::NoRegression => "no regression beyond tolerance, safe to step up".to_owned(),
        Verdict::Continue => "not decided yet, keep observing".to_owned(),
    };
    format!(
        "({}% confidence sequence {}–{}×, tolerated {}×); evidence of regression {} and of none {}, threshold {}: {meaning}",
        format_percent(100.0 * (1.0 - 2.0 * interval_alpha)),
        format_ratio(interval.lower),
        format_ratio(interval.upper),
        format_ratio(tolerated_ratio),
        format_e_value(evidence.regression),
        format_e_value(evidence.no_regression),
        format_e_value(1.0 / alpha),
    )
}

/// What the counts did not show: intervals without data, and whether the noise level was
/// learned from per-pod counts (why the judge allowed less interval-to-interval noise than
/// its configured maximum).
fn data_notes(missing_intervals: u32, pod_intervals: u32) -> String {
    let mut notes = String::new();
    if missing_intervals > 0 {
        notes.push_str(&format!("; {missing_intervals} interval(s) without data"));
    }
    if pod_intervals > 0 {
        notes.push_str(&format!(
            "; noise level learned from the pods of {pod_intervals} interval(s)"
        ));
    }
    notes
}

/// What a judge reports of one rate-ratio e-process: the estimate and its interval on the
/// window behind the verdict (for a regression that began late, the intervals since it began,
/// at that copy's share of alpha), and the evidence sentence.
struct Reported {
    estimate: Option<f64>,
    interval: RatioInterval,
    tolerated_ratio: f64,
    evidence: Evidence,
    /// " since informative interval n …" for a late window, empty otherwise.
    since: String,
    /// [`evidence_clause`] for this window.
    clause: String,
}

fn report(
    rate_ratio: &rate_ratio::RateRatioEvidence,
    grid: &rate_ratio::RatioGrid,
    alpha: f64,
    (ln_regression, ln_no_regression): (f64, f64),
    verdict: Verdict,
) -> Reported {
    let window = if verdict == Verdict::Regressed {
        rate_ratio.strongest_window(grid)
    } else {
        rate_ratio.whole_window()
    };
    let interval = window.confidence_sequence(grid, window.alpha_share(alpha));
    let tolerated_ratio = grid.null_ratio();
    let evidence = Evidence {
        regression: capped_e_value(ln_regression),
        no_regression: capped_e_value(ln_no_regression),
    };
    Reported {
        estimate: window.estimate(grid),
        interval,
        tolerated_ratio,
        evidence,
        since: window.since_note(),
        clause: evidence_clause(
            alpha,
            window.alpha_share(alpha),
            interval,
            tolerated_ratio,
            grid.step_up_ratio(),
            evidence,
            verdict,
        ),
    }
}

/// A confidence level in percent with at most two decimals and no trailing zeros ("98",
/// "99.83"), never rounded up to "100".
fn format_percent(percent: f64) -> String {
    // The small offset keeps 98 (computed as 97.999…) from showing as 97.99.
    let text = format!("{:.2}", (percent * 100.0 + 1e-6).floor() / 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn format_ratio(ratio: f64) -> String {
    if ratio.is_infinite() {
        "∞".to_owned()
    } else if ratio >= 10.0 {
        format!("{ratio:.0}")
    } else {
        format!("{ratio:.2}")
    }
}

fn format_e_value(e: f64) -> String {
    if e >= 1e4 || (e > 0.0 && e < 1e-3) {
        format!("{e:.1e}")
    } else {
        format!("{e:.2}")
    }
}
