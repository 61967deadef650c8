//! Simulated stable and canary traffic with known truth, one-minute intervals.
//!
//! Every method sees exactly the counts a Prometheus query would return per interval:
//! request and error counter deltas and cumulative `le` bucket deltas for each version.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Gamma, Hypergeometric, Normal, Poisson};
use serde::Serialize;
use statrs::function::erf::erfc;

use canary::analysis::compare::pod_group;
use canary::analysis::sequential::{
    ErrorCounts, HistogramCounts, PodErrorCounts, PodHistogramCounts,
};

/// One-minute intervals per run: a 30-minute analysis.
pub const INTERVALS: usize = 30;
/// Prometheus client libraries' default histogram buckets, in seconds.
pub const BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
pub const BASE_ERROR_RATE: f64 = 0.005;
const MEDIAN_LATENCY: f64 = 0.05;
const LATENCY_SIGMA: f64 = 0.5;
/// Tail-only regression: this fraction of canary requests is this many times slower.
const TAIL_FRACTION: f64 = 0.02;
const TAIL_SLOWDOWN: f64 = 8.0;
/// Per-pod, per-minute coefficient of variation of the error rate in the overdispersion cell.
const POD_ERROR_CV: f64 = 0.25;
/// Per-pod, per-minute standard deviation of log latency scale in the overdispersion cell.
const POD_LATENCY_LOG_SD: f64 = 0.05;
const STABLE_PODS: u32 = 10;
/// Production noise the independent-noise cells lack (issue 17). Slow drift: every pod's
/// error rate carries its own AR(1) factor in log space with this stationary coefficient of
/// variation (inside the judge's default per-interval allowance of 0.2).
const DRIFT_CV: f64 = 0.2;
/// Heavier per-minute noise: independent Gamma factors per pod and minute with this cv.
const HEAVY_NOISE_CV: f64 = 0.5;
/// Bursts: each pod, in this fraction of its minutes, has this many times its error rate.
const BURST_PROBABILITY: f64 = 0.05;
const BURST_FACTOR: f64 = 3.0;
/// Latency jitter: per pod and minute, the latency scale varies by this log-sd (10%).
const LATENCY_JITTER_LOG_SD: f64 = 0.1;
/// The judge's default tolerances (`SequentialConfig::default()`), where the tolerance-edge
/// canary sits.
const TOLERANCE: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Schedule {
    #[serde(rename = "1%")]
    OnePercent,
    #[serde(rename = "5%")]
    FivePercent,
    /// 1, 2, 5, 10, 20, 50% for five minutes each.
    #[serde(rename = "stepped")]
    Stepped,
}

impl Schedule {
    pub fn weight(self, interval: usize) -> f64 {
        match self {
            Schedule::OnePercent => 0.01,
            Schedule::FivePercent => 0.05,
            Schedule::Stepped => [0.01, 0.02, 0.05, 0.10, 0.20, 0.50][(interval / 5).min(5)],
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Schedule::OnePercent => "1%",
            Schedule::FivePercent => "5%",
            Schedule::Stepped => "stepped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scenario {
    // Healthy canaries with noise.
    AaTest,
    PodOverdispersion,
    SharedIncidents,
    DiurnalRamp,
    MissingScrapes,
    CounterResets,
    WarmUp,
    /// Every pod's error rate drifts slowly: AR(1) in log space, cv 0.2, ρ 0.8 per minute.
    DriftRho08,
    /// The same with ρ 0.95: a pod's excess lasts about 20 minutes.
    DriftRho095,
    /// Independent per-pod, per-minute error-rate noise of cv 0.5.
    HeavyNoise,
    /// Each pod has ×3 errors in 5% of its minutes.
    Bursts,
    /// Each pod's latency scale varies by 10% from minute to minute.
    LatencyJitter,
    /// Exactly at the tolerance: errors ×1.1, and the canary's share of requests slower than
    /// every boundary 1.1 × stable's (capped at one).
    ToleranceEdge,
    /// Latency +5%: inside a 10% tolerance read as "latency may be 10% higher"; today's
    /// judge reads the tolerance on exceedance ratios, which a 5% shift exceeds in the tail.
    Latency5,
    // Bad canaries.
    ErrorsX1_2,
    ErrorsX1_3,
    ErrorsX1_5,
    ErrorsX2,
    ErrorsX5,
    Latency15,
    Latency20,
    Latency100,
    TailOnly,
    LateOnsetErrorsX2,
    IntermittentErrorsX3,
}

impl Scenario {
    pub const HEALTHY: [Scenario; 14] = [
        Scenario::AaTest,
        Scenario::PodOverdispersion,
        Scenario::SharedIncidents,
        Scenario::DiurnalRamp,
        Scenario::MissingScrapes,
        Scenario::CounterResets,
        Scenario::WarmUp,
        Scenario::DriftRho08,
        Scenario::DriftRho095,
        Scenario::HeavyNoise,
        Scenario::Bursts,
        Scenario::LatencyJitter,
        Scenario::ToleranceEdge,
        Scenario::Latency5,
    ];
    pub const BAD: [Scenario; 11] = [
        Scenario::ErrorsX1_2,
        Scenario::ErrorsX1_3,
        Scenario::ErrorsX1_5,
        Scenario::ErrorsX2,
        Scenario::ErrorsX5,
        Scenario::Latency15,
        Scenario::Latency20,
        Scenario::Latency100,
        Scenario::TailOnly,
        Scenario::LateOnsetErrorsX2,
        Scenario::IntermittentErrorsX3,
    ];

    /// The healthy cells issue 17 added: production noise outside the judge's independent
    /// per-interval noise model, and canaries at or inside the tolerance.
    pub const PRODUCTION_NOISE: [Scenario; 7] = [
        Scenario::DriftRho08,
        Scenario::DriftRho095,
        Scenario::HeavyNoise,
        Scenario::Bursts,
        Scenario::LatencyJitter,
        Scenario::ToleranceEdge,
        Scenario::Latency5,
    ];

    pub fn is_healthy(self) -> bool {
        Self::HEALTHY.contains(&self)
    }

    pub fn label(self) -> &'static str {
        match self {
            Scenario::AaTest => "A/A",
            Scenario::PodOverdispersion => "pod overdispersion",
            Scenario::SharedIncidents => "shared incidents",
            Scenario::DiurnalRamp => "diurnal ramp",
            Scenario::MissingScrapes => "missing scrapes",
            Scenario::CounterResets => "counter resets",
            Scenario::WarmUp => "warm-up (separate)",
            Scenario::DriftRho08 => "drift cv 0.2, ρ 0.8",
            Scenario::DriftRho095 => "drift cv 0.2, ρ 0.95",
            Scenario::HeavyNoise => "per-minute noise cv 0.5",
            Scenario::Bursts => "bursts (5% of minutes ×3)",
            Scenario::LatencyJitter => "latency jitter 10%",
            Scenario::ToleranceEdge => "at the tolerance (×1.1)",
            Scenario::Latency5 => "latency +5%",
            Scenario::ErrorsX1_2 => "errors ×1.2",
            Scenario::ErrorsX1_3 => "errors ×1.3",
            Scenario::ErrorsX1_5 => "errors ×1.5",
            Scenario::ErrorsX2 => "errors ×2",
            Scenario::ErrorsX5 => "errors ×5",
            Scenario::Latency15 => "latency +15%",
            Scenario::Latency20 => "latency +20%",
            Scenario::Latency100 => "latency +100%",
            Scenario::TailOnly => "tail only (2% ×8)",
            Scenario::LateOnsetErrorsX2 => "late onset ×2 @10m",
            Scenario::IntermittentErrorsX3 => "intermittent ×3",
        }
    }

    /// The canary's deviation from stable in `interval`.
    fn canary_truth(self, interval: usize) -> CanaryTruth {
        let healthy = CanaryTruth {
            error_ratio: 1.0,
            latency_scale: 1.0,
            tail_fraction: 0.0,
            latency_survival_factor: 1.0,
            within_tolerance: false,
        };
        match self {
            Scenario::AaTest
            | Scenario::PodOverdispersion
            | Scenario::SharedIncidents
            | Scenario::DiurnalRamp
            | Scenario::MissingScrapes
            | Scenario::CounterResets
            | Scenario::DriftRho08
            | Scenario::DriftRho095
            | Scenario::HeavyNoise
            | Scenario::Bursts
            | Scenario::LatencyJitter => healthy,
            Scenario::ToleranceEdge => CanaryTruth {
                error_ratio: 1.0 + TOLERANCE,
                latency_survival_factor: 1.0 + TOLERANCE,
                within_tolerance: true,
                ..healthy
            },
            Scenario::Latency5 => CanaryTruth {
                latency_scale: 1.05,
                within_tolerance: true,
                ..healthy
            },
            Scenario::ErrorsX1_2 => CanaryTruth {
                error_ratio: 1.2,
                ..healthy
            },
            Scenario::ErrorsX1_3 => CanaryTruth {
                error_ratio: 1.3,
                ..healthy
            },
            Scenario::Latency15 => CanaryTruth {
                latency_scale: 1.15,
                ..healthy
            },
            Scenario::WarmUp => match interval {
                0 => CanaryTruth {
                    error_ratio: 3.0,
                    latency_scale: 1.5,
                    ..healthy
                },
                1 => CanaryTruth {
                    error_ratio: 2.0,
                    latency_scale: 1.25,
                    ..healthy
                },
                2 => CanaryTruth {
                    error_ratio: 1.5,
                    latency_scale: 1.1,
                    ..healthy
                },
                _ => healthy,
            },
            Scenario::ErrorsX1_5 => CanaryTruth {
                error_ratio: 1.5,
                ..healthy
            },
            Scenario::ErrorsX2 => CanaryTruth {
                error_ratio: 2.0,
                ..healthy
            },
            Scenario::ErrorsX5 => CanaryTruth {
                error_ratio: 5.0,
                ..healthy
            },
            Scenario::Latency20 => CanaryTruth {
                latency_scale: 1.2,
                ..healthy
            },
            Scenario::Latency100 => CanaryTruth {
                latency_scale: 2.0,
                ..healthy
            },
            Scenario::TailOnly => CanaryTruth {
                tail_fraction: TAIL_FRACTION,
                ..healthy
            },
            Scenario::LateOnsetErrorsX2 if interval >= 10 => CanaryTruth {
                error_ratio: 2.0,
                ..healthy
            },
            Scenario::LateOnsetErrorsX2 => healthy,
            // Three bad minutes, three good ones, starting good.
            Scenario::IntermittentErrorsX3 if (interval / 3) % 2 == 1 => CanaryTruth {
                error_ratio: 3.0,
                ..healthy
            },
            Scenario::IntermittentErrorsX3 => healthy,
        }
    }

    /// First interval in which the canary is bad (detection time is counted from here).
    pub fn onset(self) -> Option<usize> {
        (0..INTERVALS).find(|&interval| self.canary_truth(interval).is_bad())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CanaryTruth {
    pub error_ratio: f64,
    pub latency_scale: f64,
    pub tail_fraction: f64,
    /// The canary's share of requests slower than every boundary is this many times stable's
    /// (capped at one): 1.1 puts it exactly at the default latency tolerance.
    pub latency_survival_factor: f64,
    /// Different from stable, but at or inside the tolerance: a healthy canary.
    pub within_tolerance: bool,
}

impl CanaryTruth {
    pub fn is_bad(&self) -> bool {
        !self.within_tolerance
            && (self.error_ratio != 1.0
                || self.latency_scale != 1.0
                || self.tail_fraction != 0.0
                || self.latency_survival_factor != 1.0)
    }

    /// The canary's per-bucket probabilities (+Inf last) when stable's are `stable` and the
    /// canary's latency scale (with shared factors) gives `shifted`.
    pub fn canary_buckets(&self, shifted: Vec<f64>) -> Vec<f64> {
        if self.latency_survival_factor == 1.0 {
            return shifted;
        }
        // All mass beyond the last boundary has survival one everywhere: the cap is the edge.
        let mut everything_slow = vec![0.0; shifted.len()];
        *everything_slow.last_mut().expect("buckets") = 1.0;
        latency_null_point(
            &everything_slow,
            &shifted,
            self.latency_survival_factor - 1.0,
        )
    }
}

/// Per-bucket probabilities (+Inf last) whose survival function at every boundary is
/// `min(S_truth, (1 + tolerance)·S_stable)`: non-increasing, so a distribution, and within the
/// judge's latency null at every boundary. The truth itself when it is already within.
pub fn latency_null_point(truth: &[f64], stable: &[f64], tolerance: f64) -> Vec<f64> {
    // Survival at each finite boundary, summed from the top so that far tails keep their
    // (tiny) values instead of rounding to zero.
    let survival = |probabilities: &[f64]| {
        let mut above = 0.0;
        let mut survival: Vec<f64> = probabilities[1..]
            .iter()
            .rev()
            .map(|p| {
                above += p;
                above
            })
            .collect();
        survival.reverse();
        survival
    };
    let (truth_survival, stable_survival) = (survival(truth), survival(stable));
    let capped: Vec<f64> = truth_survival
        .iter()
        .zip(&stable_survival)
        .map(|(t, s)| t.min((1.0 + tolerance) * s))
        .collect();
    if capped == truth_survival {
        return truth.to_vec();
    }
    let mut above = 1.0;
    capped
        .iter()
        .chain([&0.0])
        .map(|&survival| {
            let probability = (above - survival).max(0.0);
            above = survival;
            probability
        })
        .collect()
}

/// What a query returns for one interval, and the truth the oracle may use.
#[derive(Clone, Debug)]
pub struct Observation {
    pub interval: usize,
    /// The query returned no data for this interval (the counts roll into the next one).
    pub missing: bool,
    pub errors: ErrorCounts,
    pub histogram: HistogramCounts,
    pub truth: CanaryTruth,
    /// Bucket probabilities (per bucket, not cumulative, +Inf last) of stable and canary when
    /// there is no extra noise: the oracle's null and alternative.
    pub stable_bucket_probabilities: Vec<f64>,
    pub canary_bucket_probabilities: Vec<f64>,
    /// A pod of (canary, stable) restarted in this interval: its counters start from zero
    /// (what the replay track writes as a new series).
    pub resets: [bool; 2],
    /// The same counts per pod, when asked for (`None` for a missing interval).
    pub pods: Option<PodObservation>,
}

/// One interval's counts per pod of both versions (they sum to the versions' counts).
#[derive(Clone, Debug, PartialEq)]
pub struct PodObservation {
    pub errors: PodErrorCounts,
    pub histograms: PodHistogramCounts,
}

impl PodObservation {
    /// The pods as compare metrics read them, summed into groups by [`pod_group`] (pods in
    /// name order, which is index order here).
    pub fn grouped(&self) -> PodObservation {
        fn group<T: Clone>(pods: &[T], add: impl Fn(&mut T, &T)) -> Vec<T> {
            let mut groups: Vec<T> = Vec::new();
            for (index, pod) in pods.iter().enumerate() {
                match groups.get_mut(pod_group(index)) {
                    Some(group) => add(group, pod),
                    None => groups.push(pod.clone()),
                }
            }
            groups
        }
        let add_errors = |group: &mut [u64; 2], pod: &[u64; 2]| {
            group[0] += pod[0];
            group[1] += pod[1];
        };
        let add_buckets = |group: &mut Vec<u64>, pod: &Vec<u64>| {
            for (sum, count) in group.iter_mut().zip(pod) {
                *sum += count;
            }
        };
        PodObservation {
            errors: PodErrorCounts {
                canary: group(&self.errors.canary, add_errors),
                stable: group(&self.errors.stable, add_errors),
            },
            histograms: PodHistogramCounts {
                canary: group(&self.histograms.canary, add_buckets),
                stable: group(&self.histograms.stable, add_buckets),
            },
        }
    }
}

/// Pods of each version at a canary weight: stable has ten, the canary as many as its share
/// of the traffic needs at the same load per pod (at least one).
fn pod_counts(weight: f64) -> [u32; 2] {
    [
        ((f64::from(STABLE_PODS) * weight / (1.0 - weight)).round() as u32).max(1),
        STABLE_PODS,
    ]
}

/// Splits one version's counts among `pods` equally loaded pods without extra noise: requests
/// multinomially, errors as the requests they belong to (hypergeometric), and each bucket's
/// requests in proportion to the pods' requests.
fn split_among_pods(rng: &mut StdRng, counts: &VersionCounts, pods: u32) -> Vec<VersionCounts> {
    let requests = multinomial(
        rng,
        counts.requests,
        &vec![1.0 / f64::from(pods); pods as usize],
    );
    let mut errors_left = counts.errors;
    let mut requests_left = counts.requests;
    let mut buckets_left = counts.buckets.clone();
    let mut split = Vec::with_capacity(pods as usize);
    for (index, &pod_requests) in requests.iter().enumerate() {
        let last = index + 1 == requests.len();
        let errors = if last || requests_left == 0 {
            errors_left
        } else {
            hypergeometric(rng, requests_left, errors_left, pod_requests)
        };
        let share = if requests_left == 0 {
            0.0
        } else {
            pod_requests as f64 / requests_left as f64
        };
        let buckets: Vec<u64> = buckets_left
            .iter_mut()
            .map(|left| {
                let drawn = if last {
                    *left
                } else {
                    binomial(rng, *left, share)
                };
                *left -= drawn;
                drawn
            })
            .collect();
        errors_left -= errors;
        requests_left -= pod_requests;
        split.push(VersionCounts {
            requests: pod_requests,
            errors,
            buckets,
        });
    }
    split
}

/// How many of `successes` marked items of a population of `population` fall among `draws`
/// drawn without replacement. rand_distr's sampler where it can set itself up; it cannot
/// for some large populations with a small mode (its first probability underflows), and
/// then the marked items are placed one by one, exactly.
fn hypergeometric(rng: &mut StdRng, population: u64, successes: u64, draws: u64) -> u64 {
    if let Ok(distribution) = Hypergeometric::new(population, successes, draws) {
        return distribution.sample(rng);
    }
    let mut drawn = 0;
    for placed in 0..successes {
        // This marked item is among the draws with the draws' share of the places left.
        if rng.random::<f64>() * ((population - placed) as f64) < (draws - drawn) as f64 {
            drawn += 1;
        }
    }
    drawn
}

fn pod_observation(canary: &[VersionCounts], stable: &[VersionCounts]) -> PodObservation {
    let errors = |pods: &[VersionCounts]| pods.iter().map(|p| [p.requests, p.errors]).collect();
    let histograms = |pods: &[VersionCounts]| pods.iter().map(|p| cumulative(&p.buckets)).collect();
    PodObservation {
        errors: PodErrorCounts {
            canary: errors(canary),
            stable: errors(stable),
        },
        histograms: PodHistogramCounts {
            canary: histograms(canary),
            stable: histograms(stable),
        },
    }
}

/// Per-bucket probabilities (not cumulative, +Inf last) of a lognormal latency with median
/// `median`, where a fraction `tail_fraction` of requests is `TAIL_SLOWDOWN` times slower.
pub fn bucket_probabilities(median: f64, tail_fraction: f64) -> Vec<f64> {
    let lognormal_cdf = |median: f64, x: f64| {
        0.5 * erfc(-(x.ln() - median.ln()) / (LATENCY_SIGMA * std::f64::consts::SQRT_2))
    };
    let cdf = |x: f64| {
        (1.0 - tail_fraction) * lognormal_cdf(median, x)
            + tail_fraction * lognormal_cdf(median * TAIL_SLOWDOWN, x)
    };
    let mut probabilities = Vec::with_capacity(BOUNDARIES.len() + 1);
    let mut below = 0.0;
    for le in BOUNDARIES {
        let cumulative = cdf(le);
        probabilities.push((cumulative - below).max(0.0));
        below = cumulative;
    }
    probabilities.push((1.0 - below).max(0.0));
    probabilities
}

/// Draws a multinomial through successive conditional binomials.
fn multinomial(rng: &mut StdRng, trials: u64, probabilities: &[f64]) -> Vec<u64> {
    let mut counts = Vec::with_capacity(probabilities.len());
    let mut remaining = trials;
    let mut remaining_probability = 1.0;
    for (index, &probability) in probabilities.iter().enumerate() {
        if index + 1 == probabilities.len() {
            counts.push(remaining);
            break;
        }
        let conditional = if remaining_probability <= 0.0 {
            0.0
        } else {
            (probability / remaining_probability).clamp(0.0, 1.0)
        };
        let drawn = binomial(rng, remaining, conditional);
        counts.push(drawn);
        remaining -= drawn;
        remaining_probability -= probability;
    }
    counts
}

fn binomial(rng: &mut StdRng, trials: u64, probability: f64) -> u64 {
    if trials == 0 || probability <= 0.0 {
        return 0;
    }
    if probability >= 1.0 {
        return trials;
    }
    Binomial::new(trials, probability)
        .expect("valid binomial")
        .sample(rng)
}

fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean).expect("valid poisson").sample(rng) as u64
}

fn cumulative(per_bucket: &[u64]) -> Vec<u64> {
    per_bucket
        .iter()
        .scan(0, |running, count| {
            *running += count;
            Some(*running)
        })
        .collect()
}

/// Average of `pods` independent Gamma(mean 1, cv) factors.
fn pod_average(rng: &mut StdRng, pods: u32, cv: f64) -> f64 {
    let shape = 1.0 / (cv * cv);
    let gamma = Gamma::new(shape, 1.0 / shape).expect("valid gamma");
    (0..pods).map(|_| gamma.sample(rng)).sum::<f64>() / f64::from(pods)
}

/// The per-pod noise of the production-noise cells, carried from minute to minute: every pod
/// of both versions has its own factors (alike pods, so stable's ten average theirs out and
/// the canary's one does not: the canary's rate relative to stable's wanders).
struct ProductionNoise {
    scenario: Scenario,
    /// Log error-rate factor of every pod that may exist (drift cells), canary then stable.
    drift: [Vec<f64>; 2],
}

/// More canary pods than any schedule needs (ten at 50%).
const MAX_PODS: usize = 16;

impl ProductionNoise {
    fn new(rng: &mut StdRng, scenario: Scenario) -> Option<Self> {
        matches!(
            scenario,
            Scenario::DriftRho08
                | Scenario::DriftRho095
                | Scenario::HeavyNoise
                | Scenario::Bursts
                | Scenario::LatencyJitter
        )
        .then(|| {
            let log_sd = Self::drift_log_sd();
            let normal = Normal::new(0.0, log_sd).expect("valid normal");
            let mut start = || (0..MAX_PODS).map(|_| normal.sample(rng)).collect();
            Self {
                scenario,
                drift: [start(), start()],
            }
        })
    }

    /// Log-space sd of a lognormal factor with cv `DRIFT_CV`.
    fn drift_log_sd() -> f64 {
        (1.0 + DRIFT_CV * DRIFT_CV).ln().sqrt()
    }

    /// This minute's (error-rate factor, latency-scale factor) of each pod of both versions,
    /// every error factor with mean one.
    fn next(
        &mut self,
        rng: &mut StdRng,
        [canary_pods, stable_pods]: [u32; 2],
    ) -> [Vec<(f64, f64)>; 2] {
        let scenario = self.scenario;
        let log_sd = Self::drift_log_sd();
        let rho: f64 = match scenario {
            Scenario::DriftRho08 => 0.8,
            _ => 0.95,
        };
        let innovation = Normal::new(0.0, log_sd * (1.0 - rho * rho).sqrt()).expect("valid normal");
        let heavy_shape = 1.0 / (HEAVY_NOISE_CV * HEAVY_NOISE_CV);
        let heavy = Gamma::new(heavy_shape, 1.0 / heavy_shape).expect("valid gamma");
        let jitter = Normal::new(0.0, LATENCY_JITTER_LOG_SD).expect("valid normal");
        // Bursts keep the mean at one: ×3 in 5% of minutes, the rest scaled down to match.
        let quiet = 1.0 / (1.0 - BURST_PROBABILITY + BURST_PROBABILITY * BURST_FACTOR);
        let mut version = |drift: &mut Vec<f64>, pods: u32| -> Vec<(f64, f64)> {
            if matches!(scenario, Scenario::DriftRho08 | Scenario::DriftRho095) {
                for log_factor in drift.iter_mut() {
                    *log_factor = rho * *log_factor + innovation.sample(rng);
                }
            }
            (0..pods as usize)
                .map(|pod| match scenario {
                    Scenario::DriftRho08 | Scenario::DriftRho095 => {
                        ((drift[pod] - log_sd * log_sd / 2.0).exp(), 1.0)
                    }
                    Scenario::HeavyNoise => (heavy.sample(rng), 1.0),
                    Scenario::Bursts => {
                        let burst = rng.random::<f64>() < BURST_PROBABILITY;
                        (quiet * if burst { BURST_FACTOR } else { 1.0 }, 1.0)
                    }
                    Scenario::LatencyJitter => (1.0, jitter.sample(rng).exp()),
                    _ => (1.0, 1.0),
                })
                .collect()
        };
        let [canary_drift, stable_drift] = &mut self.drift;
        [
            version(canary_drift, canary_pods),
            version(stable_drift, stable_pods),
        ]
    }
}

fn mean_error_factor(pods: &[(f64, f64)]) -> f64 {
    pods.iter().map(|(error, _)| error).sum::<f64>() / pods.len() as f64
}

/// A version's latency scale when its alike-loaded pods have these scales (geometric mean:
/// close to the mixture for small spreads).
fn mean_latency_factor(pods: &[(f64, f64)]) -> f64 {
    (pods.iter().map(|(_, latency)| latency.ln()).sum::<f64>() / pods.len() as f64).exp()
}

/// Counts of one version in one interval before the scrape.
#[derive(Clone, Debug, Default)]
struct VersionCounts {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl VersionCounts {
    fn add(&mut self, other: &VersionCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
        } else {
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                *mine += theirs;
            }
        }
    }

    /// A pod restart between scrapes: Prometheus' reset handling loses what the pod counted
    /// since its last scrape, here a fraction `lost` of this version's interval.
    fn lose(&mut self, rng: &mut StdRng, lost: f64) {
        let kept = 1.0 - lost;
        let errors = binomial(rng, self.errors, kept);
        self.requests = errors + binomial(rng, self.requests - self.errors, kept);
        self.errors = errors;
        for bucket in &mut self.buckets {
            *bucket = binomial(rng, *bucket, kept);
        }
    }
}

/// One simulated run: both versions' traffic over `INTERVALS` one-minute intervals. With
/// `pods`, the counts per pod too: in the pod-overdispersion scenario each pod is simulated
/// with its own noise (and the versions' counts are their sums); elsewhere pods are alike and
/// the versions' counts are split among them from a separate random stream, so the versions'
/// counts are the same with or without `pods`.
pub fn simulate_run(
    scenario: Scenario,
    rps: f64,
    schedule: Schedule,
    seed: u64,
    pods: bool,
) -> Vec<Observation> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pod_rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let stable_probabilities = bucket_probabilities(MEDIAN_LATENCY, 0.0);
    let diurnal_phase = rng.random::<f64>() * std::f64::consts::TAU;
    let mut incident_left = 0;
    let mut pending_canary = VersionCounts::default();
    let mut pending_stable = VersionCounts::default();
    let mut observations = Vec::with_capacity(INTERVALS);
    // Its own stream, so the cells that existed before it keep their runs.
    let mut noise_rng = StdRng::seed_from_u64(seed ^ 0x5851_f42d_4c95_7f2d);
    let mut production_noise = ProductionNoise::new(&mut noise_rng, scenario);
    for interval in 0..INTERVALS {
        let truth = scenario.canary_truth(interval);
        let weight = schedule.weight(interval);
        let pod_factors = production_noise
            .as_mut()
            .map(|noise| noise.next(&mut noise_rng, pod_counts(weight)));
        let traffic_factor = match scenario {
            // A full swing between half and one and a half times the mean within the run.
            Scenario::DiurnalRamp => {
                1.0 + 0.5
                    * (diurnal_phase + std::f64::consts::TAU * interval as f64 / INTERVALS as f64)
                        .sin()
            }
            _ => 1.0,
        };
        // A dependency both versions use fails: 10× errors and 2× latency for 3 minutes.
        if scenario == Scenario::SharedIncidents && incident_left == 0 && rng.random::<f64>() < 0.05
        {
            incident_left = 3;
        }
        let (shared_error_factor, shared_latency_factor) = if incident_left > 0 {
            incident_left -= 1;
            (10.0, 2.0)
        } else {
            (1.0, 1.0)
        };
        let (canary_noise, stable_noise, canary_latency_noise, stable_latency_noise) =
            if scenario == Scenario::PodOverdispersion {
                let [canary_pods, _] = pod_counts(weight);
                let latency_jitter = |rng: &mut StdRng, pods: u32| {
                    let sd = POD_LATENCY_LOG_SD / f64::from(pods).sqrt();
                    Normal::new(0.0, sd)
                        .expect("valid normal")
                        .sample(rng)
                        .exp()
                };
                (
                    pod_average(&mut rng, canary_pods, POD_ERROR_CV),
                    pod_average(&mut rng, STABLE_PODS, POD_ERROR_CV),
                    latency_jitter(&mut rng, canary_pods),
                    latency_jitter(&mut rng, STABLE_PODS),
                )
            } else if let Some([canary, stable]) = &pod_factors {
                (
                    mean_error_factor(canary),
                    mean_error_factor(stable),
                    mean_latency_factor(canary),
                    mean_latency_factor(stable),
                )
            } else {
                (1.0, 1.0, 1.0, 1.0)
            };
        let requests = poisson(&mut rng, rps * 60.0 * traffic_factor);
        let canary_requests = binomial(&mut rng, requests, weight);
        let stable_requests = requests - canary_requests;
        let canary_error_rate =
            (BASE_ERROR_RATE * truth.error_ratio * shared_error_factor * canary_noise).min(1.0);
        let stable_error_rate = (BASE_ERROR_RATE * shared_error_factor * stable_noise).min(1.0);
        let canary_probabilities = truth.canary_buckets(bucket_probabilities(
            MEDIAN_LATENCY * truth.latency_scale * shared_latency_factor * canary_latency_noise,
            truth.tail_fraction,
        ));
        let stable_interval_probabilities =
            if shared_latency_factor == 1.0 && stable_latency_noise == 1.0 {
                stable_probabilities.clone()
            } else {
                bucket_probabilities(
                    MEDIAN_LATENCY * shared_latency_factor * stable_latency_noise,
                    0.0,
                )
            };
        // Per-pod noise simulated pod by pod, when the pods are asked for.
        let noisy_pods = (pods && scenario == Scenario::PodOverdispersion).then(|| {
            let [canary_pods, stable_pods] = pod_counts(weight);
            let mut simulate_pods =
                |requests: u64, pods: u32, error_rate: f64, median: f64, tail_fraction: f64| {
                    let gamma_shape = 1.0 / (POD_ERROR_CV * POD_ERROR_CV);
                    let gamma = Gamma::new(gamma_shape, 1.0 / gamma_shape).expect("valid gamma");
                    let jitter = Normal::new(0.0, POD_LATENCY_LOG_SD).expect("valid normal");
                    multinomial(
                        &mut rng,
                        requests,
                        &vec![1.0 / f64::from(pods); pods as usize],
                    )
                    .into_iter()
                    .map(|pod_requests| {
                        let rate = (error_rate * gamma.sample(&mut rng)).min(1.0);
                        let probabilities = bucket_probabilities(
                            median * jitter.sample(&mut rng).exp(),
                            tail_fraction,
                        );
                        VersionCounts {
                            requests: pod_requests,
                            errors: binomial(&mut rng, pod_requests, rate),
                            buckets: multinomial(&mut rng, pod_requests, &probabilities),
                        }
                    })
                    .collect::<Vec<_>>()
                };
            [
                simulate_pods(
                    canary_requests,
                    canary_pods,
                    BASE_ERROR_RATE * truth.error_ratio * shared_error_factor,
                    MEDIAN_LATENCY * truth.latency_scale * shared_latency_factor,
                    truth.tail_fraction,
                ),
                simulate_pods(
                    stable_requests,
                    stable_pods,
                    BASE_ERROR_RATE * shared_error_factor,
                    MEDIAN_LATENCY * shared_latency_factor,
                    0.0,
                ),
            ]
        });
        // The production-noise cells pod by pod, each pod with its own factors.
        let noisy_pods = noisy_pods.or_else(|| {
            let [canary_factors, stable_factors] = pod_factors.as_ref().filter(|_| pods)?;
            let mut simulate_pods =
                |requests: u64, factors: &[(f64, f64)], error_rate: f64, median: f64| {
                    let shares = vec![1.0 / factors.len() as f64; factors.len()];
                    multinomial(&mut rng, requests, &shares)
                        .into_iter()
                        .zip(factors)
                        .map(
                            |(pod_requests, &(error_factor, latency_factor))| VersionCounts {
                                requests: pod_requests,
                                errors: binomial(
                                    &mut rng,
                                    pod_requests,
                                    (error_rate * error_factor).min(1.0),
                                ),
                                buckets: multinomial(
                                    &mut rng,
                                    pod_requests,
                                    &bucket_probabilities(median * latency_factor, 0.0),
                                ),
                            },
                        )
                        .collect::<Vec<_>>()
                };
            Some([
                simulate_pods(
                    canary_requests,
                    canary_factors,
                    BASE_ERROR_RATE * truth.error_ratio * shared_error_factor,
                    MEDIAN_LATENCY * truth.latency_scale * shared_latency_factor,
                ),
                simulate_pods(
                    stable_requests,
                    stable_factors,
                    BASE_ERROR_RATE * shared_error_factor,
                    MEDIAN_LATENCY * shared_latency_factor,
                ),
            ])
        });
        let (mut canary, mut stable) = match &noisy_pods {
            Some([canary_pods, stable_pods]) => {
                let sum = |pods: &[VersionCounts]| {
                    let mut total = VersionCounts::default();
                    for pod in pods {
                        total.add(pod);
                    }
                    total
                };
                (sum(canary_pods), sum(stable_pods))
            }
            None => (
                VersionCounts {
                    requests: canary_requests,
                    errors: binomial(&mut rng, canary_requests, canary_error_rate),
                    buckets: multinomial(&mut rng, canary_requests, &canary_probabilities),
                },
                VersionCounts {
                    requests: stable_requests,
                    errors: binomial(&mut rng, stable_requests, stable_error_rate),
                    buckets: multinomial(&mut rng, stable_requests, &stable_interval_probabilities),
                },
            ),
        };
        let mut resets = [false; 2];
        if scenario == Scenario::CounterResets {
            // Each version restarts a pod in 10% of the intervals; the canary's single pod
            // loses up to a quarter of the minute (one 15 s scrape), stable's ten pods a tenth
            // of that.
            let canary_pods = 1.0;
            for ((counts, pods), reset) in [
                (&mut canary, canary_pods),
                (&mut stable, f64::from(STABLE_PODS)),
            ]
            .into_iter()
            .zip(resets.iter_mut())
            {
                if rng.random::<f64>() < 0.1 {
                    let lost = rng.random::<f64>() * 0.25 / pods;
                    counts.lose(&mut rng, lost);
                    *reset = true;
                }
            }
        }
        pending_canary.add(&canary);
        pending_stable.add(&stable);
        let missing = scenario == Scenario::MissingScrapes && rng.random::<f64>() < 0.1;
        let mut pod_observation_now = None;
        let (errors, histogram) = if missing {
            (ErrorCounts::default(), HistogramCounts::default())
        } else {
            let canary = std::mem::take(&mut pending_canary);
            let stable = std::mem::take(&mut pending_stable);
            if pods {
                pod_observation_now = Some(match &noisy_pods {
                    // Never missing, so nothing pending from an earlier interval.
                    Some([canary_pods, stable_pods]) => pod_observation(canary_pods, stable_pods),
                    None => {
                        let [canary_pods, stable_pods] = pod_counts(weight);
                        pod_observation(
                            &split_among_pods(&mut pod_rng, &canary, canary_pods),
                            &split_among_pods(&mut pod_rng, &stable, stable_pods),
                        )
                    }
                });
            }
            (
                ErrorCounts {
                    canary_requests: canary.requests,
                    canary_errors: canary.errors,
                    stable_requests: stable.requests,
                    stable_errors: stable.errors,
                },
                HistogramCounts {
                    canary: cumulative(&canary.buckets),
                    stable: cumulative(&stable.buckets),
                },
            )
        };
        observations.push(Observation {
            interval,
            missing,
            errors,
            histogram,
            truth,
            stable_bucket_probabilities: stable_probabilities.clone(),
            canary_bucket_probabilities: truth.canary_buckets(bucket_probabilities(
                MEDIAN_LATENCY * truth.latency_scale,
                truth.tail_fraction,
            )),
            resets,
            pods: pod_observation_now,
        });
    }
    observations
}
