//! What one huge metrics answer costs in memory: the peak RSS over the process' baseline
//! while a 130,000-series answer (about 13 MB, a query without aggregation over a big
//! cluster) is read, the way the controller reads answers (`PrometheusSource`: at most
//! 8 MiB read, at most 10,000 series kept) and the way it read them before
//! (`prometheus-http-query` reading and parsing the whole answer), and the same for an
//! answer within the limits.
//!
//! `cargo bench --bench answer_memory` prints a table and writes
//! `target/answer-memory.json`. Each measurement runs in a process of its own, so one's
//! peak does not hide another's.

#[path = "../tests/support/http_endpoint.rs"]
mod http_endpoint;

use std::process::Command;

use canary::metrics::{MetricsSource, PrometheusSource, Query, QueryRequest};
use http_endpoint::{Endpoint, response, vector_answer};

const SERIES: [usize; 2] = [130_000, 9_000];
const WAYS: [&str; 2] = ["bounded", "whole"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--measure") {
        let way = &args[at + 1];
        let series: usize = args[at + 2].parse().expect("a series count");
        println!("{}", measure(way, series));
        return;
    }
    let mut rows = Vec::new();
    println!(
        "{:>8} {:>9} {:>8} {:>12} {:>14}  outcome",
        "series", "body MB", "way", "baseline MiB", "peak over MiB"
    );
    for series in SERIES {
        for way in WAYS {
            let output = Command::new(std::env::current_exe().unwrap())
                .args(["--measure", way, &series.to_string()])
                .output()
                .expect("the measuring process runs");
            let line = String::from_utf8_lossy(&output.stdout);
            let row: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
                panic!("{e}: {line} {}", String::from_utf8_lossy(&output.stderr))
            });
            let mib = |key: &str| row[key].as_f64().unwrap_or_default() / 1024.0;
            println!(
                "{:>8} {:>9.1} {:>8} {:>12.1} {:>14.1}  {}",
                series,
                row["bodyBytes"].as_f64().unwrap_or_default() / 1e6,
                way,
                mib("baselineKib"),
                mib("peakKib") - mib("baselineKib"),
                row["outcome"].as_str().unwrap_or_default()
            );
            rows.push(row);
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/answer-memory.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("written to {}", path.display());
}

/// `VmHWM` (peak) of this process, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn measure(way: &str, series: usize) -> serde_json::Value {
    let body: &'static [u8] = Box::leak(vector_answer(series).into_boxed_slice());
    let endpoint = Endpoint::start(move |_| response("200 OK", "application/json", body, true));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let baseline = peak_kib();
    let outcome = runtime.block_on(async {
        match way {
            "bounded" => {
                let request = QueryRequest {
                    address: endpoint.url().to_string(),
                    query: Query::plain("http_requests_total"),
                    time: None,
                    timeout: std::time::Duration::from_secs(60),
                    headers: Vec::new(),
                    insecure: false,
                    provider: canary::metrics::ProviderQuery::Prometheus,
                };
                match PrometheusSource::new()
                    .unwrap()
                    .instant_query(&request)
                    .await
                {
                    Ok(canary::metrics::QueryOutput::Vector(v)) => format!("{} series", v.len()),
                    Ok(other) => format!("{other:?}"),
                    Err(canary::metrics::MetricsError::AnswerTooLarge { limit, .. }) => {
                        format!("Error measurement: answer over {} MiB", limit >> 20)
                    }
                    Err(canary::metrics::MetricsError::TooManySeries { series, limit, .. }) => {
                        format!("Error measurement: {series} series, over {limit}")
                    }
                    Err(e) => format!("Error measurement: {e}"),
                }
            }
            _ => {
                let client =
                    prometheus_http_query::Client::from(reqwest::Client::new(), endpoint.url())
                        .unwrap();
                match client.query("http_requests_total").post().await {
                    Ok(answer) => format!(
                        "{} series",
                        answer.data().as_vector().map_or(0, |v| v.len())
                    ),
                    Err(e) => format!("Error: {e}"),
                }
            }
        }
    });
    serde_json::json!({
        "way": way,
        "series": series,
        "bodyBytes": body.len(),
        "baselineKib": baseline,
        "peakKib": peak_kib(),
        "outcome": outcome,
    })
}
