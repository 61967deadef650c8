//! How the CEL cost estimate relates to evaluation time: evaluates conditions at and around
//! the cost limit on results of several sizes, prints a table and writes
//! `target/condition-cost.json`. `cargo bench --bench condition_cost`.

use std::time::{Duration, Instant};

use canary::analysis::condition::{COST_LIMIT, Condition, ResultValue};

fn main() {
    let cases: Vec<(String, usize)> = vec![
        ("result[0] >= 0.95".into(), 1_000),
        ("result.all(x, x < 10.0)".into(), 1_000),
        ("result.all(x, x < 10.0)".into(), 1_000_000),
        ("result.map(x, x * 2.0).all(y, y < 10.0)".into(), 1_000),
        ("result.map(x, x * 2.0).all(y, y < 10.0)".into(), 3_000),
        ("result.filter(x, x < 10.0).size() > 0".into(), 3_000),
    ];
    println!(
        "{:<48} {:>9} {:>12} {:>10} {:>9}",
        "condition", "series", "est. cost", "time ms", "ns/unit"
    );
    let mut rows = Vec::new();
    for (source, series) in cases {
        let condition = Condition::compile(&source).expect("the benchmark's conditions compile");
        let result = ResultValue::Vector(vec![0.5; series]);
        let cost = condition.estimated_cost(series as u64);
        let mut times: Vec<Duration> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let verdict = condition.evaluate(&result);
                assert!(verdict.is_ok(), "{source}: {verdict:?}");
                started.elapsed()
            })
            .collect();
        times.sort();
        let median = times[1];
        let per_unit = median.as_secs_f64() * 1e9 / cost as f64;
        let shown: String = source.chars().take(48).collect();
        println!(
            "{shown:<48} {series:>9} {cost:>12} {:>10.1} {per_unit:>9.1}",
            median.as_secs_f64() * 1e3
        );
        rows.push(serde_json::json!({
            "condition": source, "series": series, "estimatedCost": cost,
            "medianSeconds": median.as_secs_f64(), "nanosecondsPerUnit": per_unit,
        }));
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/condition-cost.json");
    let report = serde_json::json!({"costLimit": COST_LIMIT, "rows": rows});
    std::fs::write(path, serde_json::to_string_pretty(&report).unwrap())
        .expect("writing target/condition-cost.json");
    println!("written to {path}");
}
