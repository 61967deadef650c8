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
    // Bad canaries.
    ErrorsX1_5,
    ErrorsX2,
    ErrorsX5,
    Latency20,
    Latency100,
    TailOnly,
    LateOnsetErrorsX2,
    IntermittentErrorsX3,
}

impl Scenario {
    pub const HEALTHY: [Scenario; 7] = [
        Scenario::AaTest,
        Scenario::PodOverdispersion,
        Scenario::SharedIncidents,
        Scenario::DiurnalRamp,
        Scenario::MissingScrapes,
        Scenario::CounterResets,
        Scenario::WarmUp,
    ];
    pub const BAD: [Scenario; 8] = [
        Scenario::ErrorsX1_5,
        Scenario::ErrorsX2,
        Scenario::ErrorsX5,
        Scenario::Latency20,
        Scenario::Latency100,
        Scenario::TailOnly,
        Scenario::LateOnsetErrorsX2,
        Scenario::IntermittentErrorsX3,
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
            Scenario::ErrorsX1_5 => "errors ×1.5",
            Scenario::ErrorsX2 => "errors ×2",
            Scenario::ErrorsX5 => "errors ×5",
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
        };
        match self {
            Scenario::AaTest
            | Scenario::PodOverdispersion
            | Scenario::SharedIncidents
            | Scenario::DiurnalRamp
            | Scenario::MissingScrapes
            | Scenario::CounterResets => healthy,
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
}

impl CanaryTruth {
    pub fn is_bad(&self) -> bool {
        self.error_ratio != 1.0 || self.latency_scale != 1.0 || self.tail_fraction != 0.0
    }
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
    for interval in 0..INTERVALS {
        let truth = scenario.canary_truth(interval);
        let weight = schedule.weight(interval);
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
            } else {
                (1.0, 1.0, 1.0, 1.0)
            };
        let requests = poisson(&mut rng, rps * 60.0 * traffic_factor);
        let canary_requests = binomial(&mut rng, requests, weight);
        let stable_requests = requests - canary_requests;
        let canary_error_rate =
            (BASE_ERROR_RATE * truth.error_ratio * shared_error_factor * canary_noise).min(1.0);
        let stable_error_rate = (BASE_ERROR_RATE * shared_error_factor * stable_noise).min(1.0);
        let canary_probabilities = bucket_probabilities(
            MEDIAN_LATENCY * truth.latency_scale * shared_latency_factor * canary_latency_noise,
            truth.tail_fraction,
        );
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
            canary_bucket_probabilities: bucket_probabilities(
                MEDIAN_LATENCY * truth.latency_scale,
                truth.tail_fraction,
            ),
            resets,
            pods: pod_observation_now,
        });
    }
    observations
}
