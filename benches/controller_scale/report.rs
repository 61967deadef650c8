//! The figures of one run (one N), as JSON and as the printed table.

use serde::Serialize;

use crate::audit::Requests;

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    pub samples: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values`.
    pub fn of(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| -> Option<f64> {
            if values.is_empty() {
                return None;
            }
            let index = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            Some(values[index])
        };
        Percentiles {
            samples: values.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: values.last().copied(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub canaries: usize,
    pub rolling: usize,
    pub interval_seconds: f64,
    /// False when the rollouts did not all finish within the timeout: the figures cover
    /// what happened until then.
    pub completed: bool,
    pub problem: Option<String>,
    pub setup_seconds: f64,
    pub settle_seconds: f64,
    pub rss_mib_settled: f64,
    pub rss_mib_peak: f64,
    pub controller_cpu_seconds: f64,
    pub controller_cpu_seconds_rollout: f64,
    pub connections_settled: usize,
    pub connections_max: usize,
    /// The controller's requests from its start until every Canary was settled.
    pub requests_startup: Requests,
    /// The controller's requests from the first roll until the last rollout ended.
    pub requests_rollout: Requests,
    /// Every client's requests to the API server during the rollouts (its own metrics).
    pub apiserver_requests_rollout: f64,
    pub apiserver_cpu_seconds_rollout: f64,
    /// API server CPU seconds per second during the rollouts (2 would saturate 2 cores).
    pub apiserver_cores_rollout: f64,
    pub measurements: u64,
    pub measurements_expected: u64,
    pub requests_per_measurement: Option<f64>,
    pub prometheus_queries: f64,
    /// Reconciles the controller finished during the rollouts (its own metrics).
    pub reconciles_rollout: f64,
    pub tick_lag_ms: Percentiles,
    /// Measurements whose due time was not seen (several arrived in one status version).
    pub tick_lag_unmatched: u64,
    pub abort_ms: Percentiles,
    pub aborts_unanswered: usize,
    pub promoted: usize,
    pub rolled_back: usize,
    pub finish_seconds: f64,
    pub rollout_seconds: Percentiles,
    /// The machine's 1-minute load average when the rollouts started and ended (2 cores).
    pub load_average: [f64; 2],
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// The table of every run, one column per N.
pub fn table(results: &[RunResult]) -> String {
    let mut rows: Vec<(&str, Vec<String>)> = Vec::new();
    let mut row = |label: &'static str, cell: &dyn Fn(&RunResult) -> String| {
        rows.push((label, results.iter().map(cell).collect()));
    };
    row("completed (promoted + rolled back / N)", &|r| {
        format!(
            "{} ({} + {} / {})",
            if r.completed { "yes" } else { "NO" },
            r.promoted,
            r.rolled_back,
            r.canaries
        )
    });
    row("RSS after start / peak, MiB", &|r| {
        format!("{} / {}", number(r.rss_mib_settled), number(r.rss_mib_peak))
    });
    row("controller CPU s (total / rollouts)", &|r| {
        format!(
            "{} / {}",
            number(r.controller_cpu_seconds),
            number(r.controller_cpu_seconds_rollout)
        )
    });
    row("TCP connections to the API server (settled / max)", &|r| {
        format!("{} / {}", r.connections_settled, r.connections_max)
    });
    row("API requests at start (until settled)", &|r| {
        r.requests_startup.total.to_string()
    });
    row("API requests/s during rollouts", &|r| {
        number(r.requests_rollout.per_second)
    });
    row("  busiest 10 s", &|r| {
        r.requests_rollout.busiest_10s.to_string()
    });
    row("  controller's share of all API requests", &|r| {
        if r.apiserver_requests_rollout > 0.0 {
            format!(
                "{:.0}%",
                100.0 * r.requests_rollout.total as f64 / r.apiserver_requests_rollout
            )
        } else {
            "-".into()
        }
    });
    row("API requests per measurement", &|r| {
        r.requests_per_measurement.map_or("-".into(), number)
    });
    row("measurements taken / due", &|r| {
        format!("{} / {}", r.measurements, r.measurements_expected)
    });
    row("Prometheus queries / due", &|r| {
        format!("{:.0} / {}", r.prometheus_queries, r.measurements_expected)
    });
    row("reconciles per measurement", &|r| {
        if r.measurements == 0 {
            "-".into()
        } else {
            number(r.reconciles_rollout / r.measurements as f64)
        }
    });
    row("analysis tick lag p50 / p99, ms", &|r| {
        format!(
            "{} / {}",
            optional(r.tick_lag_ms.p50),
            optional(r.tick_lag_ms.p99)
        )
    });
    row("abort → 100% stable p50 / p99, ms", &|r| {
        format!(
            "{} / {}{}",
            optional(r.abort_ms.p50),
            optional(r.abort_ms.p99),
            if r.aborts_unanswered > 0 {
                format!(" ({} unanswered)", r.aborts_unanswered)
            } else {
                String::new()
            }
        )
    });
    row("time to finish all, s", &|r| number(r.finish_seconds));
    row("one rollout p50 / p99, s", &|r| {
        format!(
            "{} / {}",
            r.rollout_seconds.p50.map_or("-".into(), number),
            r.rollout_seconds.p99.map_or("-".into(), number)
        )
    });
    row("API server CPU s during rollouts (cores)", &|r| {
        format!(
            "{} ({})",
            number(r.apiserver_cpu_seconds_rollout),
            number(r.apiserver_cores_rollout)
        )
    });
    row("machine load average (start / end of rollouts)", &|r| {
        format!("{:.1} / {:.1}", r.load_average[0], r.load_average[1])
    });
    let header: Vec<String> = results
        .iter()
        .map(|r| {
            if r.rolling < r.canaries {
                format!("N={} ({} rolling)", r.canaries, r.rolling)
            } else {
                format!("N={}", r.canaries)
            }
        })
        .collect();
    let mut out = format!("| | {} |\n", header.join(" | "));
    out.push_str(&format!("| --- |{}\n", " --- |".repeat(results.len())));
    for (label, cells) in rows {
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    let mut verbs = String::new();
    for r in results {
        let mut top: Vec<(&String, &u64)> =
            r.requests_rollout.by_verb_and_resource.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let listed: Vec<String> = top
            .iter()
            .take(8)
            .map(|(what, n)| {
                let per = r
                    .requests_per_measurement
                    .and(Some(**n as f64 / r.measurements.max(1) as f64));
                format!(
                    "{what} {n} ({}/measurement)",
                    per.map_or("-".into(), number)
                )
            })
            .collect();
        verbs.push_str(&format!(
            "N={}: {}; codes {:?}\n",
            r.canaries,
            listed.join(", "),
            r.requests_rollout.by_code
        ));
    }
    out.push_str("\nThe controller's requests during the rollouts, by verb and resource:\n");
    out.push_str(&verbs);
    out
}
