//! Seeded Monte Carlo checks of the guarantee that matters: looking after every interval, a
//! canary at the edge of the null hypothesis is judged wrongly with probability ≤ alpha.
//!
//! They use alpha = 0.05 so that a few hundred runs resolve the rate (the guarantee is the
//! same for every alpha), run in a few seconds in debug builds, and each one also checks that
//! the judge does reject clear regressions, so a judge that never decides cannot pass.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Gamma, Poisson};

use super::{
    ErrorCounts, ErrorRateJudge, HistogramCounts, LatencyJudge, PodErrorCounts, SequentialConfig,
    Verdict,
};

const ALPHA: f64 = 0.05;
const INTERVALS: usize = 30;

fn config() -> SequentialConfig {
    SequentialConfig {
        alpha: ALPHA,
        ..SequentialConfig::default()
    }
}

/// Largest rate of wrong verdicts compatible with a true rate of `ALPHA`: three binomial
/// standard errors above it.
fn tolerated_rate(runs: usize) -> f64 {
    ALPHA + 3.0 * (ALPHA * (1.0 - ALPHA) / runs as f64).sqrt()
}

fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean).expect("positive mean").sample(rng) as u64
}

/// Product of `pods` independent Gamma factors' mean: the rate multiplier of a version served
/// by that many pods whose error rates wobble independently with coefficient of variation `cv`.
fn pod_noise(rng: &mut StdRng, pods: u32, cv: f64) -> f64 {
    if cv == 0.0 {
        return 1.0;
    }
    let shape = 1.0 / (cv * cv);
    let gamma = Gamma::new(shape, 1.0 / shape).expect("valid gamma");
    (0..pods).map(|_| gamma.sample(rng)).sum::<f64>() / f64::from(pods)
}

struct ErrorScenario {
    canary_share: f64,
    requests_per_interval: f64,
    base_error_rate: f64,
    error_ratio: f64,
    pod_cv: f64,
    /// Intervals before `error_ratio` applies (a late onset); before it, `early_ratio`.
    onset: usize,
    early_ratio: f64,
}

/// Fraction of runs in which the judge ever returned `target`, looking after every interval.
fn error_verdict_rate(scenario: &ErrorScenario, target: Verdict, runs: usize, seed: u64) -> f64 {
    error_verdicts(scenario, &config(), target, runs, seed).0
}

/// Runs `runs` error judges, each fed one interval at a time by `observe` and looked at after
/// every interval. Returns the fraction of runs with the `target` verdict and the mean
/// interval (1-based) of that verdict, counting runs without one as `INTERVALS + 1`.
fn error_runs(
    judge_config: &SequentialConfig,
    target: Verdict,
    runs: usize,
    seed: u64,
    mut observe: impl FnMut(&mut ErrorRateJudge, &mut StdRng, usize),
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hits = 0;
    let mut total_time = 0;
    for _ in 0..runs {
        let mut judge = ErrorRateJudge::new(judge_config).unwrap();
        let mut time = INTERVALS + 1;
        for interval in 0..INTERVALS {
            observe(&mut judge, &mut rng, interval);
            if judge.verdict() == target {
                hits += 1;
                time = interval + 1;
                break;
            }
        }
        total_time += time;
    }
    (hits as f64 / runs as f64, total_time as f64 / runs as f64)
}

/// Fraction of runs with the `target` verdict, and the mean interval (1-based) of the verdict
/// counting runs without one as `INTERVALS + 1`.
fn error_verdicts(
    scenario: &ErrorScenario,
    judge_config: &SequentialConfig,
    target: Verdict,
    runs: usize,
    seed: u64,
) -> (f64, f64) {
    error_runs(judge_config, target, runs, seed, |judge, rng, interval| {
        let error_ratio = if interval < scenario.onset {
            scenario.early_ratio
        } else {
            scenario.error_ratio
        };
        let requests = poisson(rng, scenario.requests_per_interval);
        let canary_requests = Binomial::new(requests, scenario.canary_share)
            .unwrap()
            .sample(rng);
        let stable_requests = requests - canary_requests;
        let canary_rate =
            scenario.base_error_rate * error_ratio * pod_noise(rng, 1, scenario.pod_cv);
        let stable_rate = scenario.base_error_rate * pod_noise(rng, 10, scenario.pod_cv);
        let counts = ErrorCounts {
            canary_requests,
            canary_errors: poisson(rng, canary_requests as f64 * canary_rate).min(canary_requests),
            stable_requests,
            stable_errors: poisson(rng, stable_requests as f64 * stable_rate).min(stable_requests),
        };
        judge.observe(&counts).unwrap();
    })
}

#[test]
fn error_judge_false_rollbacks_stay_below_alpha_under_optional_stopping() {
    let runs = 500;
    let tolerance_boundary = 1.0 + config().error_tolerance;
    // (name, canary share, requests per interval, base error rate, pod cv)
    let cells = [
        ("low traffic, 5%", 0.05, 6_000.0, 0.005, 0.0),
        ("high traffic, 20%", 0.2, 60_000.0, 0.005, 0.0),
        ("pod overdispersion", 0.05, 60_000.0, 0.005, 0.2),
    ];
    for (seed, (name, canary_share, requests_per_interval, base_error_rate, pod_cv)) in
        cells.into_iter().enumerate()
    {
        let at_boundary = ErrorScenario {
            canary_share,
            requests_per_interval,
            base_error_rate,
            error_ratio: tolerance_boundary,
            pod_cv,
            onset: 0,
            early_ratio: tolerance_boundary,
        };
        let false_rollbacks =
            error_verdict_rate(&at_boundary, Verdict::Regressed, runs, seed as u64);
        assert!(
            false_rollbacks <= tolerated_rate(runs),
            "{name}: false rollback rate {false_rollbacks} above alpha {ALPHA}"
        );
        let regressed = ErrorScenario {
            error_ratio: 3.0,
            ..at_boundary
        };
        let detections = error_verdict_rate(&regressed, Verdict::Regressed, 100, 100 + seed as u64);
        assert!(
            detections >= 0.9,
            "{name}: detected only {detections} of x3 regressions"
        );
    }
}

/// `NoRegression` is judged against the step-up ratio: a canary exactly that much worse than
/// stable steps up with probability at most alpha, whether the step-up ratio is the default
/// (above the tolerance) or the tolerance itself.
#[test]
fn error_judge_false_early_promotions_stay_below_alpha() {
    let runs = 400;
    for (step_up_ratio, seed) in [
        (config().step_up_ratio, 7),
        (1.0 + config().error_tolerance, 17),
    ] {
        let judge_config = SequentialConfig {
            step_up_ratio,
            ..config()
        };
        let at_boundary = ErrorScenario {
            canary_share: 0.5,
            requests_per_interval: 60_000.0,
            base_error_rate: 0.01,
            error_ratio: step_up_ratio,
            pod_cv: 0.0,
            onset: 0,
            early_ratio: 1.0,
        };
        let (false_promotions, _) = error_verdicts(
            &at_boundary,
            &judge_config,
            Verdict::NoRegression,
            runs,
            seed,
        );
        assert!(
            false_promotions <= tolerated_rate(runs),
            "false early promotions {false_promotions} at step-up ratio {step_up_ratio}"
        );
    }
    let at_boundary = ErrorScenario {
        canary_share: 0.5,
        requests_per_interval: 60_000.0,
        base_error_rate: 0.01,
        error_ratio: 1.0 + config().error_tolerance,
        pod_cv: 0.0,
        onset: 0,
        early_ratio: 1.0,
    };
    let healthy = ErrorScenario {
        error_ratio: 0.8,
        ..at_boundary
    };
    let promotions = error_verdict_rate(&healthy, Verdict::NoRegression, 100, 8);
    assert!(
        promotions >= 0.9,
        "promoted only {promotions} of clearly better canaries"
    );
}

/// The step-up ratio is what lets a healthy canary advance early: at 1% of 1000 rps (three
/// canary errors a minute), proving "within the 10% tolerance" almost never happens within a
/// 30-minute analysis, proving "not worse than ×1.5" does in most runs. A ×2 canary never
/// steps up.
#[test]
fn step_up_ratio_advances_healthy_canaries_sooner_and_never_doubled_ones() {
    let healthy = ErrorScenario {
        canary_share: 0.01,
        requests_per_interval: 60_000.0,
        base_error_rate: 0.005,
        error_ratio: 1.0,
        pod_cv: 0.0,
        onset: 0,
        early_ratio: 1.0,
    };
    let at_tolerance = SequentialConfig {
        step_up_ratio: 1.0,
        ..SequentialConfig::default()
    };
    let (rate_at_tolerance, time_at_tolerance) =
        error_verdicts(&healthy, &at_tolerance, Verdict::NoRegression, 200, 21);
    let (rate_with_margin, time_with_margin) = error_verdicts(
        &healthy,
        &SequentialConfig::default(),
        Verdict::NoRegression,
        200,
        21,
    );
    assert!(
        rate_with_margin >= 0.5
            && rate_at_tolerance <= 0.05
            && time_with_margin + 5.0 <= time_at_tolerance,
        "step-up at ×1.5: {rate_with_margin} of runs, mean {time_with_margin} intervals; \
         at the tolerance: {rate_at_tolerance}, mean {time_at_tolerance}"
    );
    let doubled = ErrorScenario {
        error_ratio: 2.0,
        ..healthy
    };
    let (doubled_steps, _) = error_verdicts(
        &doubled,
        &SequentialConfig::default(),
        Verdict::NoRegression,
        200,
        22,
    );
    assert_eq!(doubled_steps, 0.0, "a doubled error rate stepped up");
}

/// The late-onset copies of the e-process (started after 3, 7 and 15 informative intervals)
/// keep alpha also when the null changes over time: a canary better than stable at first and
/// at the tolerance boundary later, the case where a copy that started late sees only
/// boundary data. They must also pay off: a ×3 regression from interval 10 is found sooner
/// than by the judge without them.
#[test]
fn late_onset_copies_keep_alpha_and_find_late_regressions_sooner() {
    let runs = 500;
    let boundary = 1.0 + config().error_tolerance;
    let better_then_boundary = ErrorScenario {
        canary_share: 0.05,
        requests_per_interval: 20_000.0,
        base_error_rate: 0.005,
        error_ratio: boundary,
        pod_cv: 0.0,
        onset: 8,
        early_ratio: 0.5,
    };
    let (false_rollbacks, _) = error_verdicts(
        &better_then_boundary,
        &config(),
        Verdict::Regressed,
        runs,
        21,
    );
    assert!(
        false_rollbacks <= tolerated_rate(runs),
        "better, then at the boundary: false rollback rate {false_rollbacks}"
    );
    let late_regression = ErrorScenario {
        error_ratio: 3.0,
        onset: 10,
        early_ratio: 1.0,
        ..better_then_boundary
    };
    let (with_copies, time_with) =
        error_verdicts(&late_regression, &config(), Verdict::Regressed, 200, 22);
    let without_config = SequentialConfig {
        late_onset_share: 0.0,
        ..config()
    };
    let (without_copies, time_without) = error_verdicts(
        &late_regression,
        &without_config,
        Verdict::Regressed,
        200,
        22,
    );
    assert!(with_copies >= 0.9, "late ×3 detected in only {with_copies}");
    assert!(
        time_with < time_without - 1.0,
        "late-onset copies: mean detection interval {time_with} (detected {with_copies}), without: {time_without} (detected {without_copies})"
    );
}

const LAYOUT: [f64; 8] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0];

/// Cumulative bucket counts of `requests` lognormal latencies with the given median, drawn as
/// a multinomial through successive binomials.
fn histogram(rng: &mut StdRng, requests: u64, median: f64) -> Vec<u64> {
    let sigma = 0.5;
    let cdf = |x: f64| {
        0.5 * statrs::function::erf::erfc(
            -(x.ln() - median.ln()) / (sigma * std::f64::consts::SQRT_2),
        )
    };
    let mut cumulative = Vec::with_capacity(LAYOUT.len() + 1);
    let mut remaining = requests;
    let mut probability_below = 0.0;
    let mut count_below = 0;
    for le in LAYOUT {
        let bucket_probability = cdf(le) - probability_below;
        let conditional = (bucket_probability / (1.0 - probability_below)).clamp(0.0, 1.0);
        let in_bucket = Binomial::new(remaining, conditional).unwrap().sample(rng);
        remaining -= in_bucket;
        count_below += in_bucket;
        probability_below = cdf(le);
        cumulative.push(count_below);
    }
    cumulative.push(requests);
    cumulative
}

fn latency_verdict_rate(
    canary_slowdown: f64,
    shared_incidents: bool,
    runs: usize,
    seed: u64,
) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hits = 0;
    for _ in 0..runs {
        let mut judge = LatencyJudge::new(&config(), &LAYOUT).unwrap();
        for _ in 0..INTERVALS {
            // A shared incident slows both versions alike for an interval.
            let shared = if shared_incidents && rng.random::<f64>() < 0.1 {
                3.0
            } else {
                1.0
            };
            let requests = poisson(&mut rng, 4_000.0);
            let canary_requests = Binomial::new(requests, 0.05).unwrap().sample(&mut rng);
            let counts = HistogramCounts {
                canary: histogram(&mut rng, canary_requests, 0.05 * shared * canary_slowdown),
                stable: histogram(&mut rng, requests - canary_requests, 0.05 * shared),
            };
            judge.observe(&counts).unwrap();
            if judge.verdict() == Verdict::Regressed {
                hits += 1;
                break;
            }
        }
    }
    hits as f64 / runs as f64
}

#[test]
fn latency_judge_false_rollbacks_stay_below_alpha_under_optional_stopping() {
    let runs = 400;
    for (seed, shared_incidents) in [(11, false), (12, true)] {
        let false_rollbacks = latency_verdict_rate(1.0, shared_incidents, runs, seed);
        assert!(
            false_rollbacks <= tolerated_rate(runs),
            "shared incidents {shared_incidents}: false rollback rate {false_rollbacks}"
        );
    }
    let detections = latency_verdict_rate(1.5, true, 100, 13);
    assert!(
        detections >= 0.9,
        "detected only {detections} of +50% latency regressions"
    );
}

/// Error counts simulated pod by pod: one canary pod and ten stable pods with the same load
/// each, every pod's error rate wobbling by its own Gamma factor of coefficient of variation
/// `pod_cv` per interval. Returns the fraction of runs judged `Regressed` and the mean interval
/// of that verdict (`INTERVALS + 1` without one), judged from the per-pod counts or from the
/// versions' totals only.
fn pod_error_verdicts(
    error_ratio: f64,
    pod_cv: f64,
    with_pods: bool,
    runs: usize,
    seed: u64,
) -> (f64, f64) {
    const STABLE_PODS: usize = 10;
    error_runs(
        &config(),
        Verdict::Regressed,
        runs,
        seed,
        |judge, rng, _| {
            // 20,000 requests per pod and interval at 2% errors: 400 errors per pod, so the
            // per-interval noise, not Poisson counting, limits what one interval can show.
            let mut pod = |ratio: f64| {
                let requests = poisson(rng, 20_000.0);
                let rate = 0.02 * ratio * pod_noise(rng, 1, pod_cv);
                [requests, poisson(rng, requests as f64 * rate).min(requests)]
            };
            let pods = PodErrorCounts {
                canary: vec![pod(error_ratio)],
                stable: (0..STABLE_PODS).map(|_| pod(1.0)).collect(),
            };
            if with_pods {
                judge.observe_pods(&pods).unwrap();
            } else {
                judge.observe(&pods.totals()).unwrap();
            }
        },
    )
}

#[test]
fn noise_learned_from_pods_keeps_alpha_with_noisy_pods_and_is_faster_on_clean_ones() {
    let runs = 300;
    // At the tolerance boundary, with clean pods and with noisy ones (cv 0.15 per pod, within
    // the ladder for the single canary pod): wrong rollbacks at most alpha.
    let boundary = 1.0 + config().error_tolerance;
    for (seed, pod_cv) in [(21, 0.0), (22, 0.15)] {
        let (false_rollbacks, _) = pod_error_verdicts(boundary, pod_cv, true, runs, seed);
        assert!(
            false_rollbacks <= tolerated_rate(runs),
            "pod cv {pod_cv}: false rollback rate {false_rollbacks} with per-pod counts"
        );
    }
    // Clean pods and a 1.25x canary: from the totals alone the null may claim 20% noise per
    // interval; the pods show there is none, so the same runs are judged sooner.
    let (detected_with, time_with) = pod_error_verdicts(1.25, 0.0, true, 100, 23);
    let (detected_without, time_without) = pod_error_verdicts(1.25, 0.0, false, 100, 23);
    assert!(detected_with >= 0.95, "detected {detected_with} with pods");
    assert!(
        time_with + 1.0 < time_without,
        "with pods {time_with} intervals on average, without {time_without} ({detected_without})"
    );
}
