//! `canary analyze` as users run it: the binary, a real Prometheus, the bundled templates.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/http_endpoint.rs"]
mod http_endpoint;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::process::Output;
use std::sync::OnceLock;

use cli::{all_output as text, canary};
use jiff::{SignedDuration, Timestamp};
use prometheus::{OpenMetrics, Prometheus};

/// One hour of a generic HTTP app's data, ending ten minutes ago: 100 requests a second, 0.2%
/// of them 5xx for the first 30 minutes, then 5% (a regression) for the last 30.
struct Dataset {
    prometheus: Prometheus,
    start: Timestamp,
}

const NAMESPACE: &str = "shop";
const POD: &str = "checkout-canary-7d9f8c6b5d-x2x9q";
const REGRESSION_AT_MINUTE: i64 = 30;

fn dataset() -> &'static Dataset {
    static DATASET: OnceLock<Dataset> = OnceLock::new();
    DATASET.get_or_init(|| {
        let now = Timestamp::now().as_second();
        let start = Timestamp::from_second(now - now % 60 - 70 * 60).unwrap();
        let mut data = OpenMetrics::new();
        let (mut ok, mut errors) = (0.0, 0.0);
        let (mut count, mut sum) = (0.0, 0.0);
        for second in (0..=60 * 60).step_by(15) {
            let time = start + SignedDuration::from_secs(second);
            let error_share = if second >= REGRESSION_AT_MINUTE * 60 {
                0.05
            } else {
                0.002
            };
            if second > 0 {
                errors += 1500.0 * error_share;
                ok += 1500.0 * (1.0 - error_share);
                count += 1500.0;
                sum += 1500.0 * 0.05;
            }
            let labels =
                |code: &'static str| [("namespace", NAMESPACE), ("pod", POD), ("code", code)];
            data.counter("http_requests_total", &labels("200"), time, ok);
            data.counter("http_requests_total", &labels("503"), time, errors);
            data.histogram(
                "http_request_duration_seconds",
                &[("namespace", NAMESPACE), ("pod", POD)],
                time,
                &[
                    (0.025, count * 0.2),
                    (0.05, count * 0.6),
                    (0.1, count * 0.95),
                    (0.25, count * 0.999),
                ],
                sum,
                count,
            );
        }
        Dataset {
            prometheus: Prometheus::builder().backfill(&data).start(),
            start,
        }
    })
}

fn minute(n: i64) -> String {
    (dataset().start + SignedDuration::from_mins(n)).to_string()
}

fn analyze_generic(extra: &[&str]) -> Output {
    analyze_at(&dataset().prometheus.url(), extra)
}

/// `canary analyze` of the generic HTTP template in namespace shop against the Prometheus at
/// `url`, plus `extra` flags.
fn analyze_at(url: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "analyze",
        "-f",
        "analysis-templates/generic-http.yaml",
        "--prometheus",
        url,
        "--arg",
        "namespace=shop",
    ];
    args.extend_from_slice(extra);
    canary(&args)
}

/// `canary analyze` of `workload` over minutes `[from, to]` of the dataset, plus `extra` flags.
fn retrospective(workload: &str, from: i64, to: i64, extra: &[&str]) -> Output {
    let (workload, from, to) = (format!("workload={workload}"), minute(from), minute(to));
    let mut args = vec!["--arg", &workload, "--from", &from, "--to", &to];
    args.extend_from_slice(extra);
    analyze_generic(&args)
}

#[test]
fn retrospective_run_passes_before_the_regression() {
    let output = retrospective("checkout-canary", 5, 25, &[]);
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("Verdict: Successful (exit 0) for template generic-http"),
        "{shown}"
    );
    assert!(
        shown.contains("Metric success-rate: Successful — 5 of 5 measurements taken"),
        "{shown}"
    );
    // The measured success rate is the data's: 99.8%.
    assert!(shown.contains("0.998"), "{shown}");
}

#[test]
fn retrospective_run_fails_after_the_regression_and_says_why() {
    let output = retrospective(
        "checkout-canary",
        REGRESSION_AT_MINUTE + 2,
        REGRESSION_AT_MINUTE + 20,
        &[],
    );
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("Metric success-rate: Failed — 2 failed measurements exceed failureLimit 1"),
        "{shown}"
    );
    assert!(
        shown.contains("successCondition `result[0] >= 0.99` is false"),
        "{shown}"
    );
    assert!(shown.contains("0.95"), "{shown}");
    // Latency did not regress; its metric was still running when the run stopped.
    assert!(shown.contains("Metric latency-p99: Successful"), "{shown}");
    assert!(shown.contains("Verdict: Failed (exit 1)"), "{shown}");
}

#[test]
fn series_that_do_not_exist_are_inconclusive_never_a_pass() {
    let output = retrospective("no-such-app", 5, 25, &[]);
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(4), "{shown}");
    assert!(
        shown.contains("no data: the query returned no series"),
        "{shown}"
    );
    assert!(
        shown.contains("no-such-app"),
        "the reason names the query: {shown}"
    );
    assert!(shown.contains("Verdict: Inconclusive (exit 4)"), "{shown}");
}

#[test]
fn json_output_carries_the_report() {
    let output = retrospective(
        "checkout-canary",
        REGRESSION_AT_MINUTE - 3,
        REGRESSION_AT_MINUTE + 10,
        &["--output", "json"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["exitCode"], 1);
    assert_eq!(json["report"]["phase"], "Failed");
    let success = &json["report"]["metrics"][0];
    assert_eq!(success["name"], "success-rate");
    let measurements = success["measurements"].as_array().unwrap();
    // Before the regression the measurements pass, after it they fail: the verdict is the
    // data's, measured at the right instants.
    let phases: Vec<&str> = measurements
        .iter()
        .map(|m| m["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"Successful"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"Failed"), "{phases:?}");
    assert_eq!(success["tally"]["failed"], 2);
    assert!(measurements[0]["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn an_unreachable_prometheus_is_reported_not_passed() {
    // Port 1 is privileged and unused: nothing listens there.
    let closed = "http://127.0.0.1:1";
    let output = analyze_at(closed, &["--arg", "workload=checkout-canary", "--once"]);
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(4), "{shown}");
    assert!(shown.contains("is unreachable"), "{shown}");
    assert!(
        shown.contains("ended without a successful query"),
        "{shown}"
    );
}

#[test]
fn live_mode_measures_at_each_interval_until_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("live.yaml");
    std::fs::write(
        &template,
        r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: always-one
spec:
  metrics:
  - name: one
    interval: 1s
    count: 3
    successCondition: result >= 1.0
    provider:
      prometheus:
        query: scalar(vector(1))
"#,
    )
    .unwrap();
    let url = dataset().prometheus.url();
    let output = canary(&[
        "analyze",
        "-f",
        template.to_str().unwrap(),
        "--prometheus",
        &url,
        "-o",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let times: Vec<Timestamp> = json["report"]["metrics"][0]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= SignedDuration::from_millis(900),
            "measurements too close: {gap:?}"
        );
    }
}

#[test]
fn secret_arguments_are_shown_as_placeholders_in_text_and_json() {
    let url = dataset().prometheus.url();
    let analyze = |tenant: &str, output: &str| {
        let tenant = format!("tenant={tenant}");
        let (from, to) = (minute(10), minute(11));
        canary(&[
            "analyze",
            "-f",
            "tests/fixtures/canary/secret-arg.yaml",
            "--prometheus",
            &url,
            "--arg",
            &tenant,
            "--from",
            &from,
            "--to",
            &to,
            "--output",
            output,
        ])
    };
    // The value reaches Prometheus: it selects the namespace's series.
    let output = analyze(NAMESPACE, "human");
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(r#"sum(http_requests_total{namespace="<secret:tenant>"})"#),
        "{shown}"
    );
    // The template's address is replaced, and named without its password.
    assert!(
        shown.contains("names Prometheus http://prometheus.invalid:9090;"),
        "{shown}"
    );
    assert!(!shown.contains("pa55word"), "{shown}");

    let secret = "s3cret-tenant-with-no-data";
    for format in ["human", "json"] {
        let output = analyze(secret, format);
        let shown = text(&output);
        assert_eq!(output.status.code(), Some(4), "{shown}");
        assert!(
            shown.contains("no data: the query returned no series"),
            "{shown}"
        );
        assert!(shown.contains("<secret:tenant>"), "{shown}");
        assert!(!shown.contains(secret), "{format}: {shown}");
    }
}

/// An endpoint that answers every query with an error page quoting the request it got (its
/// form body holds the query, the secret form-encoded): what `canary analyze` prints never
/// holds the secret, in any encoding.
#[test]
fn an_endpoint_echoing_the_request_never_shows_a_secret_argument() {
    let endpoint = http_endpoint::Endpoint::start(|request| {
        let page = format!("bad request:\n{}\n\n{}", request.head, request.body);
        http_endpoint::response("400 Bad Request", "text/plain", page.as_bytes(), true)
    });
    let secret = "s3cret/tenant+with \"quotes\"";
    // As the form body carries it: what the endpoint echoes.
    let encoded = "s3cret%2Ftenant%2Bwith+%5C%22quotes%5C%22";
    let tenant = format!("tenant={secret}");
    for format in ["human", "json"] {
        let output = canary(&[
            "analyze",
            "-f",
            "tests/fixtures/canary/secret-arg.yaml",
            "--prometheus",
            endpoint.url(),
            "--arg",
            &tenant,
            "--once",
            "--output",
            format,
        ]);
        let shown = text(&output);
        assert_eq!(output.status.code(), Some(4), "{shown}");
        assert!(shown.contains("400 Bad Request"), "{format}: {shown}");
        assert!(shown.contains("<secret:tenant>"), "{format}: {shown}");
        for form in [secret, encoded, "s3cret"] {
            assert!(!shown.contains(form), "{format}: {form} in {shown}");
        }
    }
}

#[test]
fn invalid_input_exits_2_with_a_clear_message() {
    let url = dataset().prometheus.url();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "analyze",
                "-f",
                "analysis-templates/generic-http.yaml",
                "--prometheus",
                &url,
                "--once",
            ],
            "context value \"namespace\" is not set",
        ),
        (
            &[
                "analyze",
                "-f",
                "analysis-templates/generic-http.yaml",
                "--prometheus",
                &url,
                "--arg",
                "namespace=shop",
                "--arg",
                "workload=x",
                "--arg",
                "nope=1",
                "--once",
            ],
            "argument \"nope\" was given but the template declares no such argument",
        ),
        (
            &[
                "analyze",
                "-f",
                "tests/fixtures/canary/broken.yaml",
                "--prometheus",
                &url,
                "--once",
            ],
            "no valid template in the file",
        ),
        (
            &[
                "analyze",
                "-f",
                "analysis-templates/generic-http.yaml",
                "--prometheus",
                &url,
                "--arg",
                "namespace=shop",
                "--arg",
                "workload=x",
                "--from",
                "-1h",
                "--to",
                "-2h",
            ],
            "must be after --from",
        ),
    ];
    for (args, expected) in cases {
        let output = canary(args);
        let shown = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {shown}");
        assert!(shown.contains(expected), "{args:?}: {shown}");
    }
}

/// A declared argument named like a context value (`namespace`, as Argo's templates often
/// declare it) is set by `--arg`: the query selects the namespace given, and passes.
#[test]
fn an_argument_named_namespace_is_set_by_arg() {
    let (from, to) = (minute(20), minute(22));
    let output = canary(&[
        "analyze",
        "-f",
        "tests/fixtures/argo/namespace-arg.yaml",
        "--prometheus",
        &dataset().prometheus.url(),
        "--arg",
        "namespace=shop",
        "--from",
        &from,
        "--to",
        &to,
    ]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(
        said.contains(r#"sum(http_requests_total{namespace="shop"})"#),
        "{said}"
    );
}
