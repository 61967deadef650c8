//! The mixture e-process on the ratio of two event rates, conditioned on the total events of
//! each interval.
//!
//! Per interval the canary served a share `w` of the requests. Given that `k` events (errors,
//! or requests slower than a latency bucket) happened in total, each one is the canary's with
//! probability `p = w·r / (w·r + 1 − w)`, where `r` is the ratio of the canary's event rate to
//! stable's. Conditioning on `k` removes everything both versions share: load swings, diurnal
//! ramps, incidents in a common dependency.
//!
//! Overdispersion: the canary's rate may wobble from interval to interval by a Gamma factor of
//! shape `κ` (stable's by the matching shape `κ·(1−w)/(w·r)` on a common scale, as independent
//! pods would). Then the canary's events given `k` follow a beta-binomial law
//! `BB(k; κ, κ/odds)` with `odds = r·w/(1−w)`; for `κ → ∞` it is the binomial. The noise level
//! is unknown, so the judge keeps the likelihood of every ratio on a grid under each noise
//! level of a fixed ladder (from pure Poisson to the configured maximum).
//!
//! Evidence against `H0: r ≤ r0`, for any noise level on the ladder:
//!
//! ```text
//!          Σ_i π_i · Π_t f(x_t | r_i, κ̂_{t−1})          (mixture over ratios above r0)
//!   E_t = ---------------------------------------
//!          max_κ max_{r ≤ r0} Π_t f(x_t | r, κ)       (best-fitting null)
//! ```
//!
//! The numerator is a mixture of likelihoods in which each interval uses the noise level that
//! fitted best *before* it (a predictable plug-in), so it is a valid alternative density. The
//! denominator is at least the likelihood of the true null, so `E_t` is bounded by a test
//! martingale under the truth and, by Ville's inequality, exceeds `1/α` with probability at
//! most `α` however often it is looked at ("universal inference", Wasserman, Ramdas and
//! Balakrishnan 2020, with the plug-in alternative of sequential likelihood-ratio tests). When
//! the data are Poisson the best-fitting noise level is zero and nothing is paid for the
//! robustness; when they are overdispersed, the null explains one noisy interval as noise and
//! one busy minute cannot trigger a rollback. The mirror image (mixture below `r0`, null
//! maximised over `r ≥ r0`) proves the absence of a regression.

use serde::{Deserialize, Serialize};
use statrs::function::gamma::ln_gamma;

/// Distance between neighbouring grid points in natural-log ratio units (5%).
const GRID_STEP: f64 = 0.05;
/// Grid points on each side of the tolerance boundary: covers ratios from r0/20 to r0·20.
const GRID_POINTS_PER_SIDE: usize = 60;
/// Beyond this many events the rising factorial is computed from `ln_gamma` rather than a
/// product of its factors.
const DIRECT_PRODUCT_LIMIT: u64 = 16;

/// How one interval's events of each version split among its pods (the series that identify
/// a process): per pod, its requests and its events.
///
/// Under the noise model every pod's rate wobbles by its own Gamma factor, with shape
/// proportional to its expected events (the canary's total has shape `κ`; a pod with `n`
/// requests has shape `κ·n/N_c`, `N_c` the canary's requests; for stable's pods this takes
/// the ratio at one, within the tolerance of the truth under the null). Given a version's
/// total, its pods' events then follow a Dirichlet-multinomial law, independent of the
/// canary/stable split; for `κ → ∞` the multinomial with the pods' request shares. Adding
/// that likelihood to every noise level makes the null pay for claiming noise the pods do not
/// show: on clean data it is judged near Poisson, at full power, while noisy pods still buy
/// the robustness. The assumption: the canary's pods are no noisier, per expected event, than
/// what the pods show.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PodSplit {
    /// Per version, its pods with traffic and their totals.
    versions: [PodsOfVersion; 2],
}

#[derive(Clone, Debug, PartialEq)]
struct PodsOfVersion {
    /// `(requests, events)` of each pod with requests.
    pods: Vec<(u64, u64)>,
    requests: u64,
    events: u64,
}

impl PodsOfVersion {
    fn new(pods: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let pods: Vec<(u64, u64)> = pods
            .into_iter()
            .filter(|(requests, _)| *requests > 0)
            .collect();
        Self {
            requests: pods.iter().map(|(n, _)| n).sum(),
            events: pods.iter().map(|(_, x)| x).sum(),
            pods,
        }
    }
}

impl PodSplit {
    /// `(requests, events)` per pod of the canary and of stable; pods without requests say
    /// nothing and are left out.
    pub(crate) fn new(
        canary: impl IntoIterator<Item = (u64, u64)>,
        stable: impl IntoIterator<Item = (u64, u64)>,
    ) -> Self {
        Self {
            versions: [PodsOfVersion::new(canary), PodsOfVersion::new(stable)],
        }
    }

    /// Whether some version has several pods with traffic: only then does the split say
    /// anything about the noise level.
    pub(crate) fn several_pods(&self) -> bool {
        self.versions.iter().any(|version| version.pods.len() > 1)
    }

    /// Log-likelihood of both versions' pod splits under noise `shape` (`None`: Poisson),
    /// without the multinomial coefficient (the same for every noise level).
    fn log_likelihood(&self, shape: Option<f64>) -> f64 {
        let canary_requests = self.versions[0].requests;
        if canary_requests == 0 {
            return 0.0;
        }
        self.versions
            .iter()
            .filter(|version| version.pods.len() > 1)
            .map(|version| match shape {
                None => version
                    .pods
                    .iter()
                    .map(|&(n, x)| x as f64 * (n as f64 / version.requests as f64).ln())
                    .sum(),
                Some(kappa) => {
                    let per_request = kappa / canary_requests as f64;
                    version
                        .pods
                        .iter()
                        .map(|&(n, x)| ln_rising_factorial(per_request * n as f64, x))
                        .sum::<f64>()
                        - ln_rising_factorial(per_request * version.requests as f64, version.events)
                }
            })
            .sum()
    }
}

/// Fixed grid of log rate ratios with the mixture weights over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RatioGrid {
    /// `ln r` of each grid point; the middle one is the tolerance boundary `ln r0`.
    log_ratios: Vec<f64>,
    /// Log prior weights of the points above the boundary (summing to one).
    log_prior_above: Vec<f64>,
    /// Log prior weights of the points below the boundary (summing to one).
    log_prior_below: Vec<f64>,
    /// The grid point of the step-up ratio: `NoRegression` tests `r ≥` this point.
    step_up_index: usize,
    /// Log prior weights of the points below the step-up point (summing to one).
    log_prior_below_step_up: Vec<f64>,
}

impl RatioGrid {
    /// `step_up_ratio`: the ratio `NoRegression` tests against, raised to `null_ratio` if
    /// below it and rounded to the nearest grid point.
    pub(crate) fn new(null_ratio: f64, prior_scale: f64, step_up_ratio: f64) -> Self {
        let null_log_ratio = null_ratio.ln();
        let log_ratios = (0..=2 * GRID_POINTS_PER_SIDE)
            .map(|index| null_log_ratio + (index as f64 - GRID_POINTS_PER_SIDE as f64) * GRID_STEP)
            .collect();
        // Half-normal weights in distance from the boundary: most mass on effects near the
        // tolerance, where evidence is hardest to collect, but heavy enough tails that large
        // regressions are still detected within a couple of intervals.
        let half_normal: Vec<f64> = (1..=GRID_POINTS_PER_SIDE)
            .map(|distance| -0.5 * (distance as f64 * GRID_STEP / prior_scale).powi(2))
            .collect();
        let normaliser = log_sum_exp(half_normal.iter().copied());
        let log_prior_side: Vec<f64> = half_normal.iter().map(|w| w - normaliser).collect();
        let steps_above = ((step_up_ratio.max(null_ratio) / null_ratio).ln() / GRID_STEP).round();
        let step_up_index = GRID_POINTS_PER_SIDE + (steps_above as usize).min(GRID_POINTS_PER_SIDE);
        // The same half-normal shape, in distance below the step-up point.
        let below_step_up: Vec<f64> = (1..=step_up_index)
            .rev()
            .map(|distance| -0.5 * (distance as f64 * GRID_STEP / prior_scale).powi(2))
            .collect();
        let normaliser = log_sum_exp(below_step_up.iter().copied());
        Self {
            log_ratios,
            log_prior_above: log_prior_side.clone(),
            log_prior_below: log_prior_side.into_iter().rev().collect(),
            step_up_index,
            log_prior_below_step_up: below_step_up.iter().map(|w| w - normaliser).collect(),
        }
    }

    /// The ratio `NoRegression` is judged against (a grid point).
    pub(crate) fn step_up_ratio(&self) -> f64 {
        self.log_ratios[self.step_up_index].exp()
    }

    fn boundary_index(&self) -> usize {
        GRID_POINTS_PER_SIDE
    }

    pub(crate) fn null_ratio(&self) -> f64 {
        self.log_ratios[self.boundary_index()].exp()
    }
}

/// Accumulated evidence about the rate ratio of one metric (or one latency bucket).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RateRatioEvidence {
    /// Gamma shapes of the canary's rate noise considered, `None` for pure Poisson.
    noise_shapes: Vec<Option<f64>>,
    /// Log-likelihood of each grid point under each noise level (`[level][point]`), summed over
    /// the informative intervals; only the binomial coefficient, common to all, is dropped.
    log_likelihood: Vec<Vec<f64>>,
    /// Log-likelihood of each grid point where every interval used the noise level that fitted
    /// best before it (the numerator's predictable plug-in).
    plug_in_log_likelihood: Vec<f64>,
    /// Intervals with at least one event and traffic on both sides.
    pub(crate) informative_intervals: u32,
    pub(crate) canary_events: u64,
    pub(crate) stable_events: u64,
    /// Log weight of the copy of the e-process that starts with the first interval.
    log_weight_from_start: f64,
    /// Copies that start later (late onset), each with its fixed weight.
    late_starts: Vec<LateStart>,
}

/// Informative intervals after which the late copies of the e-process start: doubling gaps,
/// so a regression that begins after `n ≥ 4` intervals finds a copy started after at least
/// `n/2` (earlier onsets cost the copy from the start only a few intervals).
const LATE_STARTS_AFTER: [u32; 3] = [3, 7, 15];

/// A copy of the e-process that starts after `after` informative intervals. Its likelihoods
/// are the running totals minus the totals at its start, kept in `at_start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LateStart {
    after: u32,
    log_weight: f64,
    /// `(log_likelihood, plug_in_log_likelihood)` when the copy started; `None` before.
    at_start: Option<(Vec<Vec<f64>>, Vec<f64>)>,
}

/// The intervals one copy of the e-process has seen: its log-likelihoods, its weight, its
/// first informative interval (0-based) and how many informative intervals it covers.
pub(crate) struct Window {
    log_likelihood: Vec<Vec<f64>>,
    plug_in_log_likelihood: Vec<f64>,
    pub(crate) log_weight: f64,
    pub(crate) first_interval: u32,
    pub(crate) intervals: u32,
}

impl RateRatioEvidence {
    /// `late_onset_share`: the fixed share of the evidence of regression given to the copies
    /// that start late, in equal parts (0: only the copy from the first interval).
    pub(crate) fn new(
        grid: &RatioGrid,
        noise_shapes: Vec<Option<f64>>,
        late_onset_share: f64,
    ) -> Self {
        let points = grid.log_ratios.len();
        let late_starts = if late_onset_share > 0.0 {
            let log_weight = (late_onset_share / LATE_STARTS_AFTER.len() as f64).ln();
            LATE_STARTS_AFTER
                .iter()
                .map(|&after| LateStart {
                    after,
                    log_weight,
                    at_start: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            log_likelihood: vec![vec![0.0; points]; noise_shapes.len()],
            noise_shapes,
            plug_in_log_likelihood: vec![0.0; points],
            informative_intervals: 0,
            canary_events: 0,
            stable_events: 0,
            log_weight_from_start: (1.0 - late_onset_share).ln(),
            late_starts,
        }
    }

    /// The noise level whose best ratio explains the intervals so far best; before any data,
    /// the middle of the ladder.
    fn best_fitting_noise_level(&self) -> usize {
        if self.informative_intervals == 0 {
            return self.noise_shapes.len() / 2;
        }
        self.log_likelihood
            .iter()
            .map(|per_point| per_point.iter().copied().fold(f64::NEG_INFINITY, f64::max))
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(level, _)| level)
    }

    /// Adds one interval: the canary's and stable's events and the canary's share of the
    /// requests, and if given, how each version's events split among its pods: then a noise
    /// level must also explain that split (see [`PodSplit`]), so the null can claim only as
    /// much per-interval noise as the pods show. An interval without events or without
    /// traffic on one side carries no information about the ratio and changes nothing.
    pub(crate) fn observe(
        &mut self,
        grid: &RatioGrid,
        canary_events: u64,
        stable_events: u64,
        canary_share: f64,
        pods: Option<&PodSplit>,
    ) {
        let total_events = canary_events + stable_events;
        if total_events == 0 || !(canary_share > 0.0 && canary_share < 1.0) {
            return;
        }
        let pod_terms: Option<Vec<f64>> = pods.map(|pods| {
            self.noise_shapes
                .iter()
                .map(|shape| pods.log_likelihood(*shape))
                .collect()
        });
        for late in &mut self.late_starts {
            if late.at_start.is_none() && late.after == self.informative_intervals {
                late.at_start = Some((
                    self.log_likelihood.clone(),
                    self.plug_in_log_likelihood.clone(),
                ));
            }
        }
        let plug_in_level = self.best_fitting_noise_level();
        let base_log_odds = (canary_share / (1.0 - canary_share)).ln();
        // The canary's odds at each grid ratio: the same for every noise level.
        let mut odds_at = [0.0; 2 * GRID_POINTS_PER_SIDE + 1];
        for (odds, log_ratio) in odds_at.iter_mut().zip(&grid.log_ratios) {
            *odds = (log_ratio + base_log_odds).exp();
        }
        for (level, (shape, per_point)) in self
            .noise_shapes
            .iter()
            .zip(&mut self.log_likelihood)
            .enumerate()
        {
            let pod_term = pod_terms.as_ref().map_or(0.0, |terms| terms[level]);
            // Γ(x+a)/Γ(a) with a = κ does not depend on the ratio: once per level.
            let canary_term = shape.map_or(0.0, |a| ln_rising_factorial(a, canary_events));
            for (index, &odds) in odds_at.iter().enumerate() {
                let log_likelihood = match shape {
                    // Binomial: x·ln p + (k − x)·ln(1 − p) = x·ln odds − k·ln(1 + odds).
                    None => canary_events as f64 * odds.ln() - total_events as f64 * odds.ln_1p(),
                    // Beta-binomial BB(k; a = κ, b = κ/odds) without the binomial coefficient:
                    // Γ(x+a)/Γ(a) · Γ(y+b)/Γ(b) · Γ(a+b)/Γ(k+a+b), y = stable events.
                    Some(a) => {
                        let b = a / odds;
                        canary_term + ln_rising_factorial(b, stable_events)
                            - ln_rising_factorial(a + b, total_events)
                    }
                } + pod_term;
                per_point[index] += log_likelihood;
                if level == plug_in_level {
                    self.plug_in_log_likelihood[index] += log_likelihood;
                }
            }
        }
        self.informative_intervals += 1;
        self.canary_events += canary_events;
        self.stable_events += stable_events;
    }

    /// ln of the e-value against `H0: r ≤ r0` (evidence of a regression): the fixed-weight
    /// average of the copies started with the first interval and after 3, 7 and 15
    /// informative intervals. A copy not started yet, or without data since its start,
    /// counts at exactly one.
    pub(crate) fn ln_e_regression(&self, grid: &RatioGrid) -> f64 {
        if self.informative_intervals == 0 {
            // Exactly one, not one up to rounding of the prior's normalisation.
            return 0.0;
        }
        let from_start = self.log_weight_from_start
            + ln_e_regression_of(
                grid,
                &self.log_likelihood,
                &self.plug_in_log_likelihood,
                None,
            );
        let late = self.late_starts.iter().map(|late| {
            late.log_weight
                + match &late.at_start {
                    Some((at_start, plug_in_at_start))
                        if self.informative_intervals > late.after =>
                    {
                        ln_e_regression_of(
                            grid,
                            &self.log_likelihood,
                            &self.plug_in_log_likelihood,
                            Some((at_start, plug_in_at_start)),
                        )
                    }
                    _ => 0.0,
                }
        });
        log_sum_exp(
            std::iter::once(from_start)
                .chain(late)
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    /// The copy whose weighted evidence of regression is largest, as a window of intervals:
    /// the one the explanation reports when a regression is found.
    pub(crate) fn strongest_window(&self, grid: &RatioGrid) -> Window {
        let whole = self.whole_window();
        let mut best = (whole.log_weight + whole.ln_e_regression(grid), None);
        for late in &self.late_starts {
            let Some((at_start, plug_in_at_start)) = &late.at_start else {
                continue;
            };
            if self.informative_intervals <= late.after {
                continue;
            }
            // Scored in place; only the winner is built as a window.
            let weighted = late.log_weight
                + ln_e_regression_of(
                    grid,
                    &self.log_likelihood,
                    &self.plug_in_log_likelihood,
                    Some((at_start, plug_in_at_start)),
                );
            if weighted > best.0 {
                best = (weighted, Some((late, at_start, plug_in_at_start)));
            }
        }
        let Some((late, at_start, plug_in_at_start)) = best.1 else {
            return whole;
        };
        Window {
            log_likelihood: self
                .log_likelihood
                .iter()
                .zip(at_start)
                .map(|(now, then)| now.iter().zip(then).map(|(a, b)| a - b).collect())
                .collect(),
            plug_in_log_likelihood: self
                .plug_in_log_likelihood
                .iter()
                .zip(plug_in_at_start)
                .map(|(a, b)| a - b)
                .collect(),
            log_weight: late.log_weight,
            first_interval: late.after,
            intervals: self.informative_intervals - late.after,
        }
    }

    /// All intervals as one window (the copy from the first interval), for the estimate and
    /// interval when no late copy dominates.
    pub(crate) fn whole_window(&self) -> Window {
        Window {
            log_likelihood: self.log_likelihood.clone(),
            plug_in_log_likelihood: self.plug_in_log_likelihood.clone(),
            log_weight: self.log_weight_from_start,
            first_interval: 0,
            intervals: self.informative_intervals,
        }
    }

    /// ln of the e-value against `H0': r ≥ k`, `k` the grid's step-up ratio (evidence that
    /// the canary is no worse than `k` times stable: safe to step up). The same construction
    /// as against the tolerance, mirrored: valid for the same reasons at any `k`.
    pub(crate) fn ln_e_no_regression(&self, grid: &RatioGrid) -> f64 {
        if self.informative_intervals == 0 {
            return 0.0;
        }
        let step_up = grid.step_up_index;
        let below = &self.plug_in_log_likelihood[..step_up];
        log_sum_exp(
            below
                .iter()
                .zip(&grid.log_prior_below_step_up)
                .map(|(l, p)| l + p),
        ) - best_null(&self.log_likelihood, step_up..grid.log_ratios.len())
    }

    /// Maximum-likelihood ratio over all intervals, once there is any information.
    #[cfg(test)]
    pub(crate) fn estimate(&self, grid: &RatioGrid) -> Option<f64> {
        self.whole_window().estimate(grid)
    }

    /// Time-uniform confidence sequence for the ratio over all intervals at level
    /// `1 − 2·alpha` (see [`Window::confidence_sequence`]).
    #[cfg(test)]
    pub(crate) fn confidence_sequence(&self, grid: &RatioGrid, alpha: f64) -> RatioInterval {
        self.whole_window().confidence_sequence(grid, alpha)
    }
}

/// Largest log-likelihood over all noise levels (`[level][point]`) and the grid points in
/// `points`.
fn best_null(log_likelihood: &[Vec<f64>], points: std::ops::Range<usize>) -> f64 {
    log_likelihood
        .iter()
        .flat_map(|per_point| per_point[points.clone()].iter().copied())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// ln of the e-value against `H0: r ≤ r0` of the intervals since `at_start` (all of them for
/// `None`): the plug-in mixture over ratios above `r0` against the best-fitting null, both on
/// those intervals only. Without allocation, for tight loops.
fn ln_e_regression_of(
    grid: &RatioGrid,
    log_likelihood: &[Vec<f64>],
    plug_in_log_likelihood: &[f64],
    at_start: Option<(&Vec<Vec<f64>>, &Vec<f64>)>,
) -> f64 {
    let boundary = grid.boundary_index();
    let plug_in = |index: usize| {
        plug_in_log_likelihood[index] - at_start.map_or(0.0, |(_, then)| then[index])
    };
    let numerator = log_sum_exp(
        (boundary + 1..grid.log_ratios.len())
            .zip(&grid.log_prior_above)
            .map(|(index, prior)| plug_in(index) + prior),
    );
    let null = log_likelihood
        .iter()
        .enumerate()
        .flat_map(|(level, per_point)| {
            per_point[..=boundary]
                .iter()
                .enumerate()
                .map(move |(index, now)| now - at_start.map_or(0.0, |(then, _)| then[level][index]))
        })
        .fold(f64::NEG_INFINITY, f64::max);
    numerator - null
}

impl Window {
    /// The share of `alpha` at which this window's interval is reported: all of it for the
    /// whole run, the copy's weight for a late one (a union bound over the copies).
    pub(crate) fn alpha_share(&self, alpha: f64) -> f64 {
        if self.first_interval == 0 {
            alpha
        } else {
            alpha * self.log_weight.exp()
        }
    }

    /// " since informative interval n" for a late window, empty for the whole run.
    pub(crate) fn since_note(&self) -> String {
        if self.first_interval == 0 {
            String::new()
        } else {
            format!(
                " since informative interval {} (a regression that began late)",
                self.first_interval + 1
            )
        }
    }

    fn ln_e_regression(&self, grid: &RatioGrid) -> f64 {
        if self.intervals == 0 {
            return 0.0;
        }
        ln_e_regression_of(
            grid,
            &self.log_likelihood,
            &self.plug_in_log_likelihood,
            None,
        )
    }

    /// Largest log-likelihood over the noise levels at each grid point.
    fn profile_log_likelihood(&self) -> Vec<f64> {
        (0..self.plug_in_log_likelihood.len())
            .map(|index| best_null(&self.log_likelihood, index..index + 1))
            .collect()
    }

    /// Maximum-likelihood ratio on the grid, once there is any information.
    pub(crate) fn estimate(&self, grid: &RatioGrid) -> Option<f64> {
        if self.intervals == 0 {
            return None;
        }
        let (best, _) = self
            .profile_log_likelihood()
            .into_iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        Some(grid.log_ratios[best].exp())
    }

    /// Time-uniform confidence sequence for the ratio at level `1 − 2·alpha`: the grid ratios
    /// whose best likelihood over the noise levels is within a factor `1/(2·alpha)` of the
    /// two-sided plug-in mixture's (Robbins' prior-to-posterior ratio), widened outwards by
    /// one grid step. A bound at the end of the grid is reported as unbounded (0 or infinity).
    ///
    /// Why `2·alpha`: the two-sided mixture puts half its weight on each side of the
    /// tolerance, so at this level the interval excludes the tolerance exactly when a
    /// one-sided e-value reaches `1/alpha`. The interval shown then agrees with the verdict.
    pub(crate) fn confidence_sequence(&self, grid: &RatioGrid, alpha: f64) -> RatioInterval {
        let two_sided_prior = grid
            .log_prior_below
            .iter()
            .chain(&grid.log_prior_above)
            .map(|p| p - std::f64::consts::LN_2);
        let without_boundary = self
            .plug_in_log_likelihood
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != grid.boundary_index())
            .map(|(_, l)| *l);
        let ln_mixture = log_sum_exp(without_boundary.zip(two_sided_prior).map(|(l, p)| l + p));
        let threshold = ln_mixture + (2.0 * alpha).ln();
        let profile = self.profile_log_likelihood();
        let inside = |l: &f64| *l > threshold;
        let first = profile.iter().position(inside);
        let last = profile.iter().rposition(inside);
        let (Some(first), Some(last)) = (first, last) else {
            // Only if the plug-in fits better than every fixed noise level at every ratio (the
            // noise model does not fit): claim nothing.
            return RatioInterval {
                lower: 0.0,
                upper: f64::INFINITY,
            };
        };
        let lower = if first == 0 {
            0.0
        } else {
            grid.log_ratios[first - 1].exp()
        };
        let upper = if last + 1 == grid.log_ratios.len() {
            f64::INFINITY
        } else {
            grid.log_ratios[last + 1].exp()
        };
        RatioInterval { lower, upper }
    }
}

/// A time-uniform confidence interval on a rate ratio; `upper` may be infinite.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RatioInterval {
    pub lower: f64,
    /// `null` when unbounded.
    #[serde(with = "infinite_as_null")]
    #[schemars(with = "Option<f64>")]
    pub upper: f64,
}

/// JSON has no infinity: an unbounded upper end is written as `null`.
mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_some(value)
        } else {
            serializer.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::INFINITY))
    }
}

/// ln(Γ(a + n) / Γ(a)) = ln(a·(a+1)·…·(a+n−1)).
fn ln_rising_factorial(a: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else if n <= DIRECT_PRODUCT_LIMIT && a < 1e15 {
        // A product of at most 16 factors below 1e16 stays far from overflow, and one `ln` is
        // much cheaper than two `ln_gamma` calls; counts per interval are usually small.
        (0..n).map(|j| a + j as f64).product::<f64>().ln()
    } else if a >= STIRLING_FROM {
        ln_gamma_stirling(a + n as f64) - ln_gamma_stirling(a)
    } else {
        ln_gamma(a + n as f64) - ln_gamma(a)
    }
}

/// Above this argument the Stirling series below is accurate to 1e-12.
const STIRLING_FROM: f64 = 10.0;

/// ln Γ(z) by the Stirling series with four correction terms; several times faster than the
/// general Lanczos approximation and the judge calls it per grid point and interval.
fn ln_gamma_stirling(z: f64) -> f64 {
    let inverse = 1.0 / z;
    let inverse_squared = inverse * inverse;
    let correction = inverse
        * (1.0 / 12.0
            - inverse_squared
                * (1.0 / 360.0 - inverse_squared * (1.0 / 1260.0 - inverse_squared / 1680.0)));
    (z - 0.5) * z.ln() - z + 0.5 * (2.0 * std::f64::consts::PI).ln() + correction
}

pub(crate) fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.map(|v| (v - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence_after(
        noise_shapes: &[Option<f64>],
        null_ratio: f64,
        intervals: &[(u64, u64, f64)],
    ) -> (RatioGrid, RateRatioEvidence) {
        let grid = RatioGrid::new(null_ratio, 1.0, null_ratio);
        let mut evidence = RateRatioEvidence::new(&grid, noise_shapes.to_vec(), 0.0);
        for &(canary, stable, share) in intervals {
            evidence.observe(&grid, canary, stable, share, None);
        }
        (grid, evidence)
    }

    #[test]
    fn stirling_series_matches_ln_gamma() {
        for z in [10.0, 10.5, 37.2, 1e3, 4.5e6, 1e12] {
            let reference = ln_gamma(z);
            let fast = ln_gamma_stirling(z);
            assert!(
                (reference - fast).abs() <= 1e-12 * reference.abs().max(1.0),
                "z={z}: {reference} vs {fast}"
            );
        }
    }

    #[test]
    fn rising_factorial_agrees_between_product_and_gamma_paths() {
        for a in [0.3, 1.0, 7.5, 123.0, 4.0e6] {
            for n in [1_u64, 5, 16, 17, 3_000] {
                let by_gamma = ln_gamma(a + n as f64) - ln_gamma(a);
                let direct = ln_rising_factorial(a, n);
                assert!(
                    (by_gamma - direct).abs() < 1e-9 * by_gamma.abs().max(1.0),
                    "a={a} n={n}: {by_gamma} vs {direct}"
                );
            }
        }
    }

    /// The default ladder: Poisson, then coefficients of variation 0.05 to 0.5.
    fn ladder() -> Vec<Option<f64>> {
        crate::analysis::sequential::SequentialConfig::default().noise_shapes()
    }

    #[test]
    fn beta_binomial_tends_to_binomial_for_large_shape() {
        let data = [(4, 100, 0.05), (9, 80, 0.05)];
        let (grid, binomial) = evidence_after(&[None], 1.1, &data);
        let (_, nearly_binomial) = evidence_after(&[Some(1e9)], 1.1, &data);
        let difference = binomial.ln_e_regression(&grid) - nearly_binomial.ln_e_regression(&grid);
        assert!(difference.abs() < 1e-3, "{difference}");
    }

    #[test]
    fn uninformative_intervals_leave_everything_neutral() {
        // No events, no canary traffic, no stable traffic: nothing is learned.
        let (grid, evidence) =
            evidence_after(&ladder(), 1.1, &[(0, 0, 0.05), (3, 5, 0.0), (3, 0, 1.0)]);
        assert_eq!(evidence.informative_intervals, 0);
        assert_eq!(evidence.ln_e_regression(&grid), 0.0);
        assert_eq!(evidence.ln_e_no_regression(&grid), 0.0);
        assert_eq!(evidence.estimate(&grid), None);
        let interval = evidence.confidence_sequence(&grid, 0.01);
        assert_eq!(interval.lower, 0.0);
        assert_eq!(interval.upper, f64::INFINITY);
    }

    #[test]
    fn evidence_points_the_right_way() {
        // (canary events, stable events, canary share) repeated, and which e-value must grow.
        struct Case {
            name: &'static str,
            interval: (u64, u64, f64),
            regression_grows: bool,
        }
        let cases = [
            Case {
                name: "canary 5× stable",
                interval: (25, 95, 0.05),
                regression_grows: true,
            },
            Case {
                name: "canary equal",
                interval: (5, 95, 0.05),
                regression_grows: false,
            },
            Case {
                name: "canary clean",
                interval: (0, 100, 0.05),
                regression_grows: false,
            },
            Case {
                name: "half share, 2×",
                interval: (66, 34, 0.5),
                regression_grows: true,
            },
        ];
        for noise_shapes in [vec![None], vec![Some(11.0)], ladder()] {
            for case in &cases {
                let (grid, evidence) = evidence_after(&noise_shapes, 1.1, &[case.interval; 20]);
                let regression = evidence.ln_e_regression(&grid);
                let no_regression = evidence.ln_e_no_regression(&grid);
                if case.regression_grows {
                    assert!(
                        regression > 100_f64.ln(),
                        "{} {noise_shapes:?}: {regression}",
                        case.name
                    );
                    assert!(
                        no_regression < 0.0,
                        "{} {noise_shapes:?}: {no_regression}",
                        case.name
                    );
                } else {
                    assert!(
                        regression < 0.0,
                        "{} {noise_shapes:?}: {regression}",
                        case.name
                    );
                }
            }
        }
    }

    #[test]
    fn confidence_sequence_covers_the_estimate_and_shrinks() {
        let (grid, short) = evidence_after(&ladder(), 1.1, &[(10, 95, 0.05); 3]);
        let (_, long) = evidence_after(&ladder(), 1.1, &[(10, 95, 0.05); 60]);
        let short_interval = short.confidence_sequence(&grid, 0.01);
        let long_interval = long.confidence_sequence(&grid, 0.01);
        // 10 of 105 events at a 5% share: ratio ≈ (10/95)/(5/95) ≈ 2.1.
        let estimate = long.estimate(&grid).unwrap();
        assert!((1.9..2.4).contains(&estimate), "{estimate}");
        assert!(long_interval.lower < estimate && estimate < long_interval.upper);
        assert!(short_interval.lower <= long_interval.lower);
        assert!(short_interval.upper >= long_interval.upper);
        assert!(
            long_interval.lower > 1.5 && long_interval.upper < 3.0,
            "{long_interval:?}"
        );
    }

    #[test]
    fn one_huge_noisy_interval_is_explained_as_noise() {
        // One interval with 40,000 events of which the canary has 13% at a 10% share (odds
        // ratio 1.34, 22% above the tolerance): the binomial calls it overwhelming; with 20%
        // per-interval noise on the ladder it is weak evidence.
        let data = [(5_200, 34_800, 0.1)];
        let (grid, binomial) = evidence_after(&[None], 1.1, &data);
        let (_, robust) = evidence_after(&ladder(), 1.1, &data);
        assert!(binomial.ln_e_regression(&grid) > 50.0);
        let single = robust.ln_e_regression(&grid);
        assert!(single < 1.0, "{single}");
        // The same excess in every interval is not noise: it is detected.
        let (_, persistent) = evidence_after(&ladder(), 1.1, &[(5_200, 34_800, 0.1); 20]);
        assert!(persistent.ln_e_regression(&grid) > 100_f64.ln());
    }

    #[test]
    fn late_copies_are_a_fixed_weight_average_that_starts_at_one() {
        // After one interval only the copy from the start has data; the late ones count at
        // exactly one with their weights: E = (1 − s)·E_whole + s. Weights that did not sum
        // to one (a sum of copies instead of an average) would fail this.
        let grid = RatioGrid::new(1.1, 1.0, 1.1);
        let share = 0.5;
        for data in [[(30, 95, 0.05); 1], [(2, 95, 0.05); 1]] {
            let mut whole = RateRatioEvidence::new(&grid, ladder(), 0.0);
            let mut averaged = RateRatioEvidence::new(&grid, ladder(), share);
            for &(canary, stable, canary_share) in &data {
                whole.observe(&grid, canary, stable, canary_share, None);
                averaged.observe(&grid, canary, stable, canary_share, None);
            }
            let expected = ((1.0 - share) * whole.ln_e_regression(&grid).exp() + share).ln();
            let actual = averaged.ln_e_regression(&grid);
            assert!((expected - actual).abs() < 1e-9, "{expected} vs {actual}");
        }
        // A regression that starts after 8 healthy intervals: the copy started after 7 sees
        // one healthy interval, the copy from the start eight; the average gets ahead and
        // reports the late window.
        let mut whole = RateRatioEvidence::new(&grid, ladder(), 0.0);
        let mut averaged = RateRatioEvidence::new(&grid, ladder(), share);
        let intervals = [(5, 95, 0.05); 8].into_iter().chain([(15, 95, 0.05); 4]);
        for (canary, stable, canary_share) in intervals {
            whole.observe(&grid, canary, stable, canary_share, None);
            averaged.observe(&grid, canary, stable, canary_share, None);
        }
        assert!(averaged.ln_e_regression(&grid) > whole.ln_e_regression(&grid) + 1.0);
        let window = averaged.strongest_window(&grid);
        assert_eq!((window.first_interval, window.intervals), (7, 5));
        let estimate = window.estimate(&grid).unwrap();
        assert!(estimate > 2.0, "{estimate}");
    }

    #[test]
    fn poisson_data_costs_little_for_the_robustness() {
        // ×2 at 1% of 1000 rps with 0.5% errors, exactly as expected each minute.
        let data = [(6, 297, 600.0 / 60_000.0); 12];
        let (grid, binomial) = evidence_after(&[None], 1.1, &data);
        let (_, adaptive) = evidence_after(&ladder(), 1.1, &data);
        let (_, fixed_noise) = evidence_after(&[Some(25.0)], 1.1, &data);
        let binomial = binomial.ln_e_regression(&grid);
        let adaptive = adaptive.ln_e_regression(&grid);
        let fixed_noise = fixed_noise.ln_e_regression(&grid);
        assert!(
            adaptive > binomial - 1.0,
            "adaptive {adaptive} vs binomial {binomial}"
        );
        assert!(
            adaptive > fixed_noise,
            "adaptive {adaptive} vs fixed cv 0.2 {fixed_noise}"
        );
    }
}
