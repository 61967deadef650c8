//! Decision-quality benchmark of canary judges (in-process track).
//!
//! Simulates healthy and bad canaries over a grid of noise types, traffic levels and weight
//! schedules, feeds identical counts to our sequential judge, the baselines and the oracle,
//! and reports false rollbacks, detection, time to detect, exposure and promotion time.
//!
//! ```text
//! cargo bench --bench decision_quality -- --quick          # minutes: a subset of cells
//! cargo bench --bench decision_quality                     # the full grid (2,000 / 500 runs)
//! cargo bench --bench decision_quality -- --json out.json  # where the JSON goes
//! ```

mod methods;
mod replay;
mod report;
mod simulation;

use std::time::Instant;

use clap::Parser;

use methods::{Decision, MethodKind};
use simulation::{INTERVALS, Scenario, Schedule, simulate_run};

#[derive(Parser, Debug)]
#[command(about = "Decision-quality benchmark of canary judges (in-process track)")]
struct Arguments {
    /// A subset of the grid with fewer runs, for development.
    #[arg(long)]
    quick: bool,
    /// Instead of the grid: variants of our judge on a few cells, to show what each design
    /// choice costs.
    #[arg(long, conflicts_with = "quick")]
    ablation: bool,
    /// Instead of the grid: the production-noise healthy cells (drift, heavy noise, bursts,
    /// latency jitter, the tolerance edge) and the bad cells the issue-17 targets name, at
    /// 100 and 1000 rps, 1% and stepped.
    /// With --ablation: the variants of our judge on these cells.
    #[arg(long, conflicts_with = "quick")]
    production_noise: bool,
    /// With --ablation: only these variants (indices into the ablation's list, from 0), to
    /// save time.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<usize>,
    /// Runs per healthy cell (default 2,000; 300 with --quick).
    #[arg(long)]
    healthy_runs: Option<usize>,
    /// Runs per bad cell (default 500; 200 with --quick).
    #[arg(long)]
    bad_runs: Option<usize>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seed of the whole benchmark; every run's seed derives from it and the cell.
    #[arg(long, default_value_t = 20_240_601)]
    seed: u64,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/decision-quality.json")]
    json: String,
    /// The real-Prometheus replay track instead of the grid: a few cells' counters written as
    /// OpenMetrics, backfilled with promtool, read back by every method through the compare
    /// metrics' PromQL path (instant queries with `time=`), decisions checked against the
    /// in-process ones for the same seeds.
    #[arg(long, conflicts_with_all = ["quick", "ablation"])]
    replay: bool,
    /// Runs per cell of the replay track.
    #[arg(long, default_value_t = 100)]
    replay_runs: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Cell {
    pub scenario: Scenario,
    pub rps: f64,
    pub schedule: Schedule,
    pub runs: usize,
}

/// What one method did in one run.
#[derive(Clone, Copy, Debug)]
pub struct RunOutcome {
    pub decision: Decision,
    /// Interval (0-based) in which the decision was taken.
    pub interval: usize,
    /// Canary requests served while the canary was bad, up to and including the decision.
    pub exposure: u64,
    /// Interval (0-based) of the first early step up, for methods that step up and keep
    /// judging.
    pub step_up: Option<usize>,
}

fn cells(arguments: &Arguments) -> Vec<Cell> {
    let healthy_runs = arguments
        .healthy_runs
        .unwrap_or(if arguments.quick { 300 } else { 2_000 });
    let bad_runs = arguments
        .bad_runs
        .unwrap_or(if arguments.quick { 200 } else { 500 });
    let (rps_levels, schedules, healthy, bad): (&[f64], &[Schedule], &[Scenario], &[Scenario]) =
        if arguments.production_noise {
            (
                &[100.0, 1000.0],
                &[Schedule::OnePercent, Schedule::Stepped],
                &Scenario::PRODUCTION_NOISE,
                &[
                    Scenario::ErrorsX1_2,
                    Scenario::ErrorsX1_5,
                    Scenario::ErrorsX2,
                    Scenario::Latency15,
                    Scenario::Latency20,
                ],
            )
        } else if arguments.quick {
            (
                &[100.0, 1000.0],
                &[Schedule::OnePercent, Schedule::Stepped],
                &[
                    Scenario::AaTest,
                    Scenario::PodOverdispersion,
                    Scenario::SharedIncidents,
                ],
                &[
                    Scenario::ErrorsX2,
                    Scenario::ErrorsX5,
                    Scenario::Latency20,
                    Scenario::Latency100,
                ],
            )
        } else {
            (
                &[10.0, 100.0, 1000.0],
                &[
                    Schedule::OnePercent,
                    Schedule::FivePercent,
                    Schedule::Stepped,
                ],
                &Scenario::HEALTHY,
                &Scenario::BAD,
            )
        };
    if arguments.ablation && !arguments.production_noise {
        let cell = |scenario: Scenario, rps, schedule| Cell {
            scenario,
            rps,
            schedule,
            runs: if scenario.is_healthy() {
                healthy_runs
            } else {
                bad_runs
            },
        };
        return vec![
            cell(Scenario::ErrorsX2, 1000.0, Schedule::OnePercent),
            cell(Scenario::ErrorsX5, 1000.0, Schedule::OnePercent),
            cell(Scenario::ErrorsX2, 100.0, Schedule::Stepped),
            cell(Scenario::Latency20, 100.0, Schedule::OnePercent),
            cell(Scenario::Latency20, 1000.0, Schedule::OnePercent),
            cell(Scenario::Latency20, 1000.0, Schedule::FivePercent),
            cell(Scenario::ErrorsX2, 1000.0, Schedule::FivePercent),
            cell(Scenario::LateOnsetErrorsX2, 1000.0, Schedule::OnePercent),
            cell(Scenario::LateOnsetErrorsX2, 100.0, Schedule::Stepped),
            cell(Scenario::IntermittentErrorsX3, 1000.0, Schedule::OnePercent),
            cell(Scenario::AaTest, 1000.0, Schedule::FivePercent),
            cell(Scenario::PodOverdispersion, 1000.0, Schedule::OnePercent),
            cell(Scenario::PodOverdispersion, 1000.0, Schedule::FivePercent),
            cell(Scenario::PodOverdispersion, 100.0, Schedule::Stepped),
        ];
    }
    let mut cells = Vec::new();
    for (scenarios, runs) in [(healthy, healthy_runs), (bad, bad_runs)] {
        for &scenario in scenarios {
            for &rps in rps_levels {
                for &schedule in schedules {
                    cells.push(Cell {
                        scenario,
                        rps,
                        schedule,
                        runs,
                    });
                }
            }
        }
    }
    cells
}

/// SplitMix64 finaliser: independent-looking seeds from structured inputs.
fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// The seed of one run depends on the cell's identity, not its position in the grid, so a
/// quick run reproduces the same runs as the full one for the cells they share.
fn run_seed(base: u64, cell: &Cell, run: usize) -> u64 {
    let scenario = Scenario::HEALTHY
        .iter()
        .chain(&Scenario::BAD)
        .position(|s| *s == cell.scenario)
        .expect("known scenario") as u64;
    let schedule = cell.schedule as u64;
    mix(base ^ mix(scenario << 40 ^ (cell.rps as u64) << 8 ^ schedule) ^ mix(run as u64))
}

fn run_once(cell: &Cell, methods: &[MethodKind], seed: u64) -> Vec<RunOutcome> {
    let pods = methods.iter().any(|m| m.uses_pods());
    let observations = simulate_run(cell.scenario, cell.rps, cell.schedule, seed, pods);
    decide(&observations, methods)
}

/// Every method on the same observations, each until its first decision.
fn decide(observations: &[simulation::Observation], methods: &[MethodKind]) -> Vec<RunOutcome> {
    methods
        .iter()
        .map(|kind| {
            let mut method = kind.build();
            let mut exposure = 0;
            for observation in observations {
                if observation.truth.is_bad() {
                    exposure += observation.errors.canary_requests;
                }
                let decision = method.observe(observation);
                if decision != Decision::Continue {
                    return RunOutcome {
                        decision,
                        interval: observation.interval,
                        exposure,
                        step_up: method.stepped_up_at(),
                    };
                }
            }
            RunOutcome {
                decision: Decision::Promote,
                interval: INTERVALS - 1,
                exposure,
                step_up: method.stepped_up_at(),
            }
        })
        .collect()
}

fn main() {
    let arguments = Arguments::parse();
    if arguments.replay {
        let json = if arguments.json == "target/decision-quality.json" {
            "target/decision-quality-replay.json".to_string()
        } else {
            arguments.json.clone()
        };
        replay::run(arguments.seed, arguments.replay_runs, &json);
        return;
    }
    let cells = cells(&arguments);
    let methods: Vec<MethodKind> = if arguments.ablation {
        (0..methods::VARIANTS.len())
            .filter(|index| arguments.variants.is_empty() || arguments.variants.contains(index))
            .map(MethodKind::Variant)
            .chain([
                MethodKind::Oracle,
                MethodKind::OracleAtTolerance,
                MethodKind::TwoLooks,
            ])
            .collect()
    } else {
        MethodKind::ALL.to_vec()
    };
    let jobs: Vec<(usize, usize)> = cells
        .iter()
        .enumerate()
        .flat_map(|(index, cell)| (0..cell.runs).map(move |run| (index, run)))
        .collect();
    let started = Instant::now();
    eprintln!(
        "{} cells, {} runs, {} methods, {} threads",
        cells.len(),
        jobs.len(),
        methods.len(),
        arguments.threads
    );
    let threads = arguments.threads.max(1);
    let mut outcomes: Vec<Vec<Vec<RunOutcome>>> = cells
        .iter()
        .map(|cell| Vec::with_capacity(cell.runs))
        .collect();
    let per_thread: Vec<Vec<(usize, Vec<RunOutcome>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|worker| {
                let jobs = &jobs;
                let cells = &cells;
                let methods = &methods;
                let seed = arguments.seed;
                scope.spawn(move || {
                    jobs.iter()
                        .skip(worker)
                        .step_by(threads)
                        .map(|&(cell_index, run)| {
                            let cell = &cells[cell_index];
                            (
                                cell_index,
                                run_once(cell, methods, run_seed(seed, cell, run)),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("worker panicked"))
            .collect()
    });
    for (cell_index, run) in per_thread.into_iter().flatten() {
        outcomes[cell_index].push(run);
    }
    let elapsed = started.elapsed();
    let command = format!(
        "cargo bench --bench decision_quality --{}{}{}{}{} --seed {}",
        if arguments.quick { " --quick" } else { "" },
        if arguments.production_noise {
            " --production-noise"
        } else {
            ""
        },
        if arguments.ablation {
            " --ablation"
        } else {
            ""
        },
        arguments
            .healthy_runs
            .map_or(String::new(), |n| format!(" --healthy-runs {n}")),
        arguments
            .bad_runs
            .map_or(String::new(), |n| format!(" --bad-runs {n}")),
        arguments.seed
    );
    let results = report::summarise(&cells, &methods, &outcomes);
    let targets = if arguments.ablation {
        Vec::new()
    } else {
        report::check_targets(&results)
    };
    if arguments.ablation {
        println!("{}", report::ablation_markdown(&command, elapsed, &results));
    } else {
        println!(
            "{}",
            report::markdown(&command, elapsed, &results, &targets)
        );
    }
    let json = report::json(&command, elapsed, &results, &targets);
    if let Some(parent) = std::path::Path::new(&arguments.json).parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(
        &arguments.json,
        serde_json::to_string_pretty(&json).expect("serializable"),
    )
    .unwrap_or_else(|error| panic!("cannot write {}: {error}", arguments.json));
    eprintln!("wrote {} in {:.0} s", arguments.json, elapsed.as_secs_f64());
}
