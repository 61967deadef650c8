//! The analysis runner against a real Prometheus (and against Prometheus servers that are
//! down or never answer): a retrospective run with a known verdict, no data, 0/0, errors and
//! timeouts, a live scrape measured once, and hostile argument values.

#[path = "support/analysis.rs"]
mod analysis;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/victoria_metrics.rs"]
mod victoria_metrics;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use analysis::{metric, t0};
use canary::analysis::run::{
    AnalysisReport, MetricReport, NoSecrets, PreparedAnalysis, Schedule, SecretValues, prepare, run,
};
use canary::analysis::{AnalysisPhase, MeasurementPhase};
use canary::api::AnalysisTemplate;
use canary::api::analysis_template::SecretKeyRef;
use canary::metrics::{
    MetricsError, MetricsSource, PrometheusSource, Query, QueryOutput, QueryRequest,
};
use jiff::{SignedDuration, Timestamp};
use prometheus::{Kind, MetricsServer, OpenMetrics, Prometheus};
use victoria_metrics::VictoriaMetrics;

fn minutes(m: i64) -> SignedDuration {
    SignedDuration::from_mins(m)
}

const NAMESPACE: &str = "shop";
/// Healthy latency: cumulative share of requests per bucket (seconds); p99 = 0.233333 s.
const BUCKETS: [(f64, f64); 5] = [
    (0.025, 0.5),
    (0.05, 0.8),
    (0.1, 0.95),
    (0.25, 0.995),
    (0.5, 1.0),
];

/// Generic HTTP metrics (`http_requests_total`, `http_request_duration_seconds`) for a version
/// whose share of errors at each 15 s step is `error_share(t)`, with 600 requests a step (or
/// none when `requests` is 0), from t0-10m to t0+5m; plus a gauge `x{job="web"} 1` for the
/// injection test.
fn dataset() -> OpenMetrics {
    let mut om = OpenMetrics::new();
    let regression_starts = t0() + minutes(2);
    let versions: [(&str, f64, &dyn Fn(Timestamp) -> f64); 2] = [
        // 0.5% errors, then 5% for every step after t0+2m.
        ("late", 600.0, &|t| {
            if t > regression_starts { 0.05 } else { 0.005 }
        }),
        // No requests at all: every rate is 0, every ratio 0/0.
        ("idle", 0.0, &|_| 0.0),
    ];
    let mut totals = [(0.0f64, 0.0f64, [0.0f64; 5], 0.0f64); 2];
    let start = t0() - minutes(10);
    let mut t = start;
    while t <= t0() + minutes(5) {
        for ((version, requests, error_share), (total, errors, buckets, sum)) in
            versions.iter().zip(totals.iter_mut())
        {
            if t > start {
                *total += requests;
                *errors += requests * error_share(t);
                for (count, (_, share)) in buckets.iter_mut().zip(BUCKETS) {
                    *count += requests * share;
                }
                *sum += requests * 0.04;
            }
            let pod = format!("{version}-7d4b9c-x2x7q");
            let base = [("namespace", NAMESPACE), ("pod", pod.as_str())];
            emit_http(&mut om, &base, t, (*total, *errors), buckets, *sum);
        }
        om.sample("x", Kind::Gauge, "x", &[("job", "web")], t, 1.0);
        t += SignedDuration::from_secs(15);
    }
    om
}

/// One sample of generic HTTP metrics: `http_requests_total` by code (200, 500) and the
/// `http_request_duration_seconds` histogram in [`BUCKETS`].
fn emit_http(
    om: &mut OpenMetrics,
    base: &[(&str, &str)],
    t: Timestamp,
    (total, errors): (f64, f64),
    buckets: &[f64; 5],
    sum: f64,
) {
    for (code, value) in [("200", total - errors), ("500", errors)] {
        let mut labels = base.to_vec();
        labels.push(("code", code));
        om.counter("http_requests_total", &labels, t, value);
    }
    let histogram: Vec<(f64, f64)> = BUCKETS
        .iter()
        .zip(buckets.iter())
        .map(|((le, _), c)| (*le, *c))
        .collect();
    om.histogram(
        "http_request_duration_seconds",
        base,
        t,
        &histogram,
        sum,
        total,
    );
}

/// One Prometheus holding [`dataset`], shared by the tests that only read it (it is stopped
/// when the test process exits).
fn backfilled() -> &'static Prometheus {
    static PROMETHEUS: OnceLock<Prometheus> = OnceLock::new();
    PROMETHEUS.get_or_init(|| Prometheus::builder().backfill(&dataset()).start())
}

fn template_file(file: &str) -> AnalysisTemplate {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "analysis-templates", file]
        .iter()
        .collect();
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn template_text(text: &str) -> AnalysisTemplate {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("test template: {e}"))
}

fn prepared(
    template: &AnalysisTemplate,
    args: &[(&str, &str)],
    context: &[(&str, &str)],
    address: &str,
) -> PreparedAnalysis {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    prepare(
        template.metadata.name.as_deref().unwrap(),
        &template.spec,
        &map(args),
        &map(context),
        Some(address),
        &NoSecrets,
    )
    .unwrap_or_else(|problems| panic!("template does not prepare: {problems:#?}"))
}

async fn analyse(analysis: &PreparedAnalysis, schedule: Schedule) -> AnalysisReport {
    let source = PrometheusSource::new().unwrap();
    run(&source, analysis, schedule, |_, _| {}).await
}

fn phases(metric: &MetricReport) -> Vec<MeasurementPhase> {
    metric.measurements.iter().map(|m| m.phase).collect()
}

/// One metric over `query`, with a short timeout, for the error and injection tests.
fn single_metric(args: &str, query: &str, extra: &str) -> AnalysisTemplate {
    template_text(&format!(
        r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: probe
spec:
  args: {args}
  metrics:
    - name: probe
      interval: 1m
      count: 5
      successCondition: result[0] >= 0
{extra}
      provider:
        prometheus:
          timeout: 500ms
          query: '{query}'
"#
    ))
}

/// The stores holding [`dataset`]: Prometheus, and VictoriaMetrics (a Prometheus-compatible
/// API), so "any Prometheus API" is a tested claim.
fn stores() -> [String; 2] {
    [backfilled().url(), victoria_backfilled().url()]
}

/// One VictoriaMetrics holding [`dataset`], shared like [`backfilled`].
fn victoria_backfilled() -> &'static VictoriaMetrics {
    static STORE: OnceLock<VictoriaMetrics> = OnceLock::new();
    STORE.get_or_init(|| VictoriaMetrics::with(&dataset()))
}

#[tokio::test]
async fn retrospective_run_finds_a_regression_that_starts_at_a_known_minute() {
    for address in stores() {
        retrospective_regression_in(&address).await;
    }
}

async fn retrospective_regression_in(address: &str) {
    let template = template_file("generic-http.yaml");
    let analysis = prepared(
        &template,
        &[],
        &[("namespace", NAMESPACE), ("workload", "late")],
        address,
    );

    // Errors rise from 0.5% to 5% right after t0+2m: the measurements at t0, +1m and +2m see
    // only the healthy minutes and pass; +3m and +4m fail, and the second failure exceeds
    // failureLimit 1.
    let report = analyse(
        &analysis,
        Schedule::Retrospective {
            from: t0(),
            to: t0() + minutes(10),
        },
    )
    .await;
    assert_eq!(report.phase, AnalysisPhase::Failed, "{report:#?}");
    let success = metric(&report, "success-rate");
    use MeasurementPhase::{Failed, Successful};
    assert_eq!(
        phases(success),
        [Successful, Successful, Successful, Failed, Failed],
        "{success:#?}"
    );
    let times: Vec<Timestamp> = success.measurements.iter().map(|m| m.time).collect();
    let expected_times: Vec<Timestamp> = (0..5).map(|i| t0() + minutes(i)).collect();
    assert_eq!(times, expected_times);
    let values: Vec<&str> = success
        .measurements
        .iter()
        .map(|m| m.value.as_deref().unwrap())
        .collect();
    assert_eq!(
        values,
        ["[0.995]", "[0.995]", "[0.995]", "[0.95]", "[0.95]"]
    );
    assert_eq!(
        success.message,
        "2 failed measurements exceed failureLimit 1"
    );
    assert_eq!(report.finished_at, t0() + minutes(4));
    // Latency did not regress.
    assert_eq!(
        metric(&report, "latency-p99").phase,
        AnalysisPhase::Successful
    );
    assert_eq!(
        metric(&report, "latency-mean").phase,
        AnalysisPhase::Successful
    );

    // "What would it have decided at t0+2m?" — the window ends before the regression: pass.
    let report = analyse(
        &analysis,
        Schedule::Retrospective {
            from: t0(),
            to: t0() + minutes(2),
        },
    )
    .await;
    assert_eq!(report.phase, AnalysisPhase::Successful, "{report:#?}");
    let success = metric(&report, "success-rate");
    assert_eq!(phases(success), [Successful; 3]);
    assert!(
        success
            .message
            .starts_with("ended after 3 of 5 measurements"),
        "{success:#?}"
    );
}

#[tokio::test]
async fn missing_series_and_zero_traffic_are_inconclusive_never_passed() {
    let prometheus = backfilled();
    let template = template_file("generic-http.yaml");
    let window = Schedule::Retrospective {
        from: t0(),
        to: t0() + minutes(4),
    };

    // A workload with no series at all.
    let analysis = prepared(
        &template,
        &[],
        &[("namespace", NAMESPACE), ("workload", "nonexistent")],
        &prometheus.url(),
    );
    let report = analyse(&analysis, window).await;
    assert_eq!(report.phase, AnalysisPhase::Inconclusive, "{report:#?}");
    for m in &report.metrics {
        assert_eq!(m.phase, AnalysisPhase::Inconclusive, "{m:#?}");
        assert_eq!(m.measurements.len(), 3, "inconclusiveLimit 2 + 1: {m:#?}");
        for x in &m.measurements {
            assert_eq!(x.phase, MeasurementPhase::Inconclusive);
            assert_eq!(x.value.as_deref(), Some("[]"));
            assert!(
                x.reason
                    .starts_with("no data: the query returned no series"),
                "{x:#?}"
            );
            assert!(
                x.reason.contains("nonexistent-[a-z0-9]+"),
                "names the query: {x:#?}"
            );
        }
    }

    // A workload whose series exist but saw no request: 0/0 = NaN.
    let analysis = prepared(
        &template,
        &[],
        &[("namespace", NAMESPACE), ("workload", "idle")],
        &prometheus.url(),
    );
    let report = analyse(&analysis, window).await;
    assert_eq!(report.phase, AnalysisPhase::Inconclusive, "{report:#?}");
    for m in &report.metrics {
        assert_eq!(m.phase, AnalysisPhase::Inconclusive, "{m:#?}");
        for x in &m.measurements {
            assert_eq!(x.phase, MeasurementPhase::Inconclusive);
            assert_eq!(x.value.as_deref(), Some("[NaN]"));
            assert!(x.reason.starts_with("no data: the value is NaN"), "{x:#?}");
            assert!(
                x.reason
                    .ends_with(&canary::analysis::measurement::one_line(&m.query)),
                "names the query: {x:#?}"
            );
        }
    }
}

#[tokio::test]
async fn a_prometheus_that_is_down_is_an_error_with_a_clear_message() {
    // Port 1 is privileged and unused: nothing listens there (a port that was free a moment
    // ago could be taken by another test's process in between).
    let address = "http://127.0.0.1:1".to_string();
    let template = single_metric("[]", "sum(up)", "");
    let analysis = prepared(&template, &[], &[], &address);
    let started = Instant::now();

    let report = analyse(&analysis, Schedule::Once).await;
    assert_eq!(report.phase, AnalysisPhase::Error, "{report:#?}");
    let probe = metric(&report, "probe");
    assert_eq!(probe.phase, AnalysisPhase::Error);
    assert_eq!(phases(probe), [MeasurementPhase::Error]);
    let reason = &probe.measurements[0].reason;
    assert!(
        reason.starts_with(&format!("Prometheus at {address} is unreachable")),
        "{reason}"
    );
    assert!(reason.contains("check the address"), "{reason}");
    assert!(
        probe.message.contains("without a successful query"),
        "{probe:#?}"
    );

    // Retrospectively, errors are retried at each interval until consecutiveErrorLimit (4).
    let report = analyse(
        &analysis,
        Schedule::Retrospective {
            from: t0(),
            to: t0() + minutes(10),
        },
    )
    .await;
    let probe = metric(&report, "probe");
    assert_eq!(probe.phase, AnalysisPhase::Error, "{probe:#?}");
    assert_eq!(probe.measurements.len(), 5, "{probe:#?}");
    assert_eq!(
        probe.message,
        "5 consecutive query errors exceed consecutiveErrorLimit 4"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_prometheus_that_never_answers_times_out_as_configured() {
    // Accepts connections (the kernel completes the handshake) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", silent.local_addr().unwrap());
    let template = single_metric("[]", "sum(up)", "      consecutiveErrorLimit: 1");
    let analysis = prepared(&template, &[], &[], &address);

    let started = Instant::now();
    let report = analyse(&analysis, Schedule::Once).await;
    let elapsed = started.elapsed();
    assert_eq!(report.phase, AnalysisPhase::Error, "{report:#?}");
    let probe = metric(&report, "probe");
    let reason = &probe.measurements[0].reason;
    assert_eq!(
        reason,
        &format!("Prometheus at {address} did not answer within 500 ms (the metric's timeout)")
    );
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
        "the 500ms timeout was honoured: took {elapsed:?}"
    );

    // Two consecutive timeouts exceed consecutiveErrorLimit 1 and end the run.
    let started = Instant::now();
    let report = analyse(
        &analysis,
        Schedule::Retrospective {
            from: t0(),
            to: t0() + minutes(10),
        },
    )
    .await;
    let probe = metric(&report, "probe");
    assert_eq!(probe.phase, AnalysisPhase::Error, "{probe:#?}");
    assert_eq!(probe.measurements.len(), 2, "{probe:#?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);
}

#[tokio::test]
async fn a_live_scrape_is_measured_once_the_data_is_there() {
    // The page a version of "web" exposes: every scrape adds 200 requests; 1 of them fails
    // while healthy, 100 once `broken` is set.
    let broken = Arc::new(AtomicBool::new(false));
    let page = {
        let broken = broken.clone();
        let totals = std::sync::Mutex::new((0.0f64, 0.0f64, [0.0f64; 5], 0.0f64));
        move |_scrape: u64| {
            let mut guard = totals.lock().unwrap();
            let (total, errors, buckets, sum) = &mut *guard;
            *total += 200.0;
            *errors += if broken.load(Ordering::SeqCst) {
                100.0
            } else {
                1.0
            };
            for (count, (_, share)) in buckets.iter_mut().zip(BUCKETS) {
                *count += 200.0 * share;
            }
            *sum += 200.0 * 0.04;
            let labels = r#"namespace="live",pod="web-5d8f7c-abcde""#;
            let mut text = String::from("# TYPE http_requests_total counter\n");
            text += &format!(
                "http_requests_total{{{labels},code=\"200\"}} {}\n",
                *total - *errors
            );
            text += &format!("http_requests_total{{{labels},code=\"500\"}} {}\n", *errors);
            text += "# TYPE http_request_duration_seconds histogram\n";
            for ((le, _), count) in BUCKETS.iter().zip(buckets.iter()) {
                text += &format!(
                    "http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
                );
            }
            text +=
                &format!("http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}\n");
            text += &format!("http_request_duration_seconds_sum{{{labels}}} {sum}\n");
            text += &format!("http_request_duration_seconds_count{{{labels}}} {total}\n");
            text
        }
    };
    let server = MetricsServer::start(page);
    // The target's own labels stand in for what Kubernetes service discovery would add.
    let prometheus = Prometheus::builder().scrape("web", server.addr()).start();

    // Measure over the last 10 s (the context's interval overrides the metric's 1m).
    let template = template_file("generic-http.yaml");
    let analysis = prepared(
        &template,
        &[],
        &[
            ("namespace", "live"),
            ("workload", "web"),
            ("interval", "10s"),
        ],
        &prometheus.url(),
    );
    prometheus.wait_for_series(
        r#"sum(rate(http_requests_total{namespace="live"}[10s])) > 0"#,
        Duration::from_secs(30),
    );
    assert!(server.scrapes() >= 2);

    let report = analyse(&analysis, Schedule::Once).await;
    assert_eq!(report.phase, AnalysisPhase::Successful, "{report:#?}");
    let values: Vec<(&str, &str)> = report
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.measurements[0].value.as_deref().unwrap()))
        .collect();
    assert_eq!(
        values,
        [
            ("success-rate", "[0.995]"),
            ("latency-p99", "[0.233333]"),
            ("latency-mean", "[0.04]")
        ]
    );

    // Break it: half of the new requests fail. Once the window holds only broken scrapes the
    // single measurement fails (0.5 < 0.99). Polled, with a bound.
    broken.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let measurement = loop {
        let report = analyse(&analysis, Schedule::Once).await;
        let m = metric(&report, "success-rate").measurements[0].clone();
        if m.value.as_deref() == Some("[0.5]") {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the success rate never reached 0.5: last {m:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        measurement.phase,
        MeasurementPhase::Failed,
        "{measurement:#?}"
    );
    assert!(measurement.reason.contains("is false"), "{measurement:#?}");
}

#[tokio::test]
async fn hostile_argument_values_cannot_change_the_query() {
    let prometheus = backfilled();
    let template = single_metric("[{name: job}]", r#"sum(x{job="{{args.job}}"})"#, "");
    let at_t0 = Schedule::Retrospective {
        from: t0(),
        to: t0(),
    };

    // The control: an honest value finds the series, so an empty result below means the
    // value was kept inside the label matcher.
    let honest = prepared(&template, &[("job", "web")], &[], &prometheus.url());
    let report = analyse(&honest, at_t0).await;
    assert_eq!(report.phase, AnalysisPhase::Successful, "{report:#?}");
    assert_eq!(
        metric(&report, "probe").measurements[0].value.as_deref(),
        Some("[1]")
    );

    let injection = r#"web"} or vector(1) or x{job=""#;
    // Pasted in unescaped, this value would have made the query return 2 (1 + vector(1)).
    let source = PrometheusSource::new().unwrap();
    let naive = QueryRequest {
        address: prometheus.url(),
        query: Query::plain(format!(r#"sum(x{{job="{injection}"}})"#)),
        time: Some(t0()),
        timeout: Duration::from_secs(5),
        headers: vec![],
        insecure: false,
        provider: canary::metrics::ProviderQuery::Prometheus,
    };
    let Ok(QueryOutput::Vector(series)) = source.instant_query(&naive).await else {
        panic!("the naive query should run");
    };
    assert_eq!(series.len(), 1);
    assert_eq!(
        series[0].value, 2.0,
        "the unescaped injection works: {series:?}"
    );

    for hostile in [
        r#"} or vector(1) or x{job=""#,
        injection,
        "web\"}) or vector(1) #",
        "web\n\"} or vector(1)",
        r#"web\"} or vector(1) or x{job=\""#,
        "web` or vector(1) `",
    ] {
        let analysis = prepared(&template, &[("job", hostile)], &[], &prometheus.url());
        let report = analyse(&analysis, at_t0).await;
        let probe = metric(&report, "probe");
        let x = &probe.measurements[0];
        assert_eq!(
            x.phase,
            MeasurementPhase::Inconclusive,
            "{hostile:?}: {probe:#?}"
        );
        assert_eq!(x.value.as_deref(), Some("[]"), "{hostile:?}: {probe:#?}");
        assert!(
            x.reason
                .starts_with("no data: the query returned no series")
        );
        assert_eq!(probe.phase, AnalysisPhase::Inconclusive, "{probe:#?}");
        // The rendered query keeps the template's shape: one sum over one matcher.
        assert!(
            probe.query.starts_with("sum(x{job=\"") && probe.query.ends_with("\"})"),
            "{}",
            probe.query
        );
    }
}

/// Gives every Secret reference one value, as the controller does after reading the Secret.
struct SecretsHolding(&'static str);

impl SecretValues for SecretsHolding {
    fn secret_value(&self, _: &SecretKeyRef) -> Result<String, String> {
        Ok(self.0.to_string())
    }
}

#[tokio::test]
async fn secret_arguments_reach_prometheus_but_reasons_show_placeholders() {
    let prometheus = backfilled();
    let template = single_metric(
        "[{name: job, valueFrom: {secretKeyRef: {name: prom, key: job}}}]",
        r#"sum(x{job="{{args.job}}"})"#,
        "",
    );
    let at_t0 = Schedule::Retrospective {
        from: t0(),
        to: t0(),
    };
    let prepare_with = |secret: &'static str| {
        prepare(
            "probe",
            &template.spec,
            &BTreeMap::new(),
            &BTreeMap::new(),
            Some(&prometheus.url()),
            &SecretsHolding(secret),
        )
        .unwrap_or_else(|problems| panic!("{problems:#?}"))
    };

    // The secret value is what Prometheus receives (by POST): it selects the series.
    let report = analyse(&prepare_with("web"), at_t0).await;
    let probe = metric(&report, "probe");
    assert_eq!(report.phase, AnalysisPhase::Successful, "{report:#?}");
    assert_eq!(probe.measurements[0].value.as_deref(), Some("[1]"));
    assert_eq!(probe.query, r#"sum(x{job="<secret:job>"})"#);

    // A value that selects nothing: the no-data reason names the query as people see it.
    let secret = "s3cret-job-nobody-has";
    let report = analyse(&prepare_with(secret), at_t0).await;
    let probe = metric(&report, "probe");
    let x = &probe.measurements[0];
    assert_eq!(x.phase, MeasurementPhase::Inconclusive, "{probe:#?}");
    assert_eq!(
        x.reason,
        r#"no data: the query returned no series (check that the metric exists and the labels match): sum(x{job="<secret:job>"})"#
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains(secret), "{json}");
}

/// A real Prometheus answering an unaggregated query over more series than an analysis query
/// may return: the measurement is an Error that says how many series and to aggregate (it
/// passed before, with a value of megabytes that status could not hold); aggregated, the
/// same data passes.
#[tokio::test]
async fn a_query_over_too_many_series_is_an_error_that_says_to_aggregate() {
    let series = canary::metrics::prometheus::MAX_SERIES + 1;
    let mut om = OpenMetrics::new();
    for i in 0..series {
        let pod = format!("web-{i:05}");
        om.sample("pod_up", Kind::Gauge, "pod_up", &[("pod", &pod)], t0(), 1.0);
    }
    let prometheus = Prometheus::builder().backfill(&om).start();
    let at_t0 = Schedule::Retrospective {
        from: t0(),
        to: t0(),
    };
    let measure = |query: &str| {
        let analysis = prepared(&single_metric("[]", query, ""), &[], &[], &prometheus.url());
        async move {
            let report = analyse(&analysis, at_t0).await;
            metric(&report, "probe").measurements[0].clone()
        }
    };
    let unaggregated = measure("pod_up").await;
    assert_eq!(
        unaggregated.phase,
        MeasurementPhase::Error,
        "{}",
        unaggregated.reason
    );
    for said in [
        format!("returned {series} series"),
        "more than the 10000".to_string(),
        "sum by (pod)".to_string(),
    ] {
        assert!(
            unaggregated.reason.contains(&said),
            "{}",
            unaggregated.reason
        );
    }
    let aggregated = measure("count(pod_up)").await;
    assert_eq!(
        aggregated.phase,
        MeasurementPhase::Successful,
        "{aggregated:?}"
    );
    assert_eq!(aggregated.value, Some(format!("[{series}]")));
}

/// Per-pod counters of a canary with one pod and a stable with three, read through a real
/// Prometheus by compare metrics that name their `podLabel`: each interval's counts come per
/// pod as well, summing to the versions' totals, and the judge uses them.
/// The real source, counting the queries that reach it.
struct CountingSource<'a> {
    inner: &'a PrometheusSource,
    queries: AtomicUsize,
}

impl<'a> CountingSource<'a> {
    fn new(inner: &'a PrometheusSource) -> Self {
        Self {
            inner,
            queries: Default::default(),
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl MetricsSource for CountingSource<'_> {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.inner.instant_query(request).await
    }
}

#[tokio::test]
async fn compare_metrics_with_a_pod_label_read_counts_per_pod() {
    let mut om = OpenMetrics::new();
    // (workload, pod, requests per 15 s step, error share)
    let pods = [
        ("web-canary", "web-canary-0", 50.0, 0.01),
        ("web-stable", "web-stable-0", 150.0, 0.01),
        ("web-stable", "web-stable-1", 150.0, 0.012),
        ("web-stable", "web-stable-2", 100.0, 0.008),
    ];
    let mut totals = [(0.0f64, 0.0f64, [0.0f64; 5]); 4];
    let start = t0() - minutes(10);
    let mut t = start;
    while t <= t0() + minutes(5) {
        for ((workload, pod, requests, error_share), (total, errors, buckets)) in
            pods.iter().zip(totals.iter_mut())
        {
            if t > start {
                *total += requests;
                *errors += (requests * error_share).round();
                for (count, (_, share)) in buckets.iter_mut().zip(BUCKETS) {
                    *count += (requests * share).round();
                }
            }
            let base = [
                ("namespace", NAMESPACE),
                ("workload", *workload),
                ("pod", *pod),
            ];
            emit_http(&mut om, &base, t, (*total, *errors), buckets, *total * 0.04);
        }
        t += SignedDuration::from_secs(15);
    }
    let prometheus = Prometheus::builder().backfill(&om).start();
    let victoria = VictoriaMetrics::with(&om);
    for address in [prometheus.url(), victoria.url()] {
        compare_per_pod_in(&address).await;
    }
}

async fn compare_per_pod_in(address: &str) {
    let template = template_text(
        r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: per-pod}
spec:
  metrics:
  - name: error-rate
    interval: 1m
    compare:
      requests: http_requests_total{namespace="shop", workload="{{workload}}"}
      errors: http_requests_total{namespace="shop", workload="{{workload}}", code=~"5.."}
      podLabel: pod
    provider: {prometheus: {}}
  - name: latency
    interval: 1m
    compare:
      latencyBuckets: http_request_duration_seconds_bucket{namespace="shop", workload="{{workload}}"}
      podLabel: pod
    provider: {prometheus: {}}
"#,
    );
    let analysis = prepared(
        &template,
        &[],
        &[("canary", "web-canary"), ("stable", "web-stable")],
        address,
    );
    let source = PrometheusSource::new().unwrap();
    for metric in &analysis.metrics {
        let compare = metric.compare.as_ref().unwrap();
        let (measured, at_end) = canary::analysis::compare::measure(
            &source,
            compare,
            &metric.request,
            t0(),
            t0() + minutes(1),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", metric.name));
        // The next minute from the readings this one ended on: half the queries, the same
        // counts as reading both ends again. Readings of another instant, or from another
        // Prometheus or tenant (other address or headers), are not used.
        let mut other_tenant = metric.request.clone();
        other_tenant
            .headers
            .push(("X-Scope-OrgID".into(), "another-tenant".into()));
        let next = |from: Timestamp, request, previous| {
            let counting = CountingSource::new(&source);
            async move {
                let (next, _) = canary::analysis::compare::measure(
                    &counting,
                    compare,
                    request,
                    from,
                    from + minutes(1),
                    previous,
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", metric.name));
                (next.counts, counting.queries())
            }
        };
        let request = &metric.request;
        let (fresh, fresh_queries) = next(t0() + minutes(1), request, None).await;
        let (reused, reused_queries) = next(t0() + minutes(1), request, Some(&at_end)).await;
        let (_, other_instant) = next(t0() + minutes(2), request, Some(&at_end)).await;
        let (_, other_source) = next(t0() + minutes(1), &other_tenant, Some(&at_end)).await;
        assert_eq!(reused, fresh, "{}", metric.name);
        let reads_per_instant = compare.queries.len() * 2;
        assert_eq!(
            (fresh_queries, reused_queries, other_instant, other_source),
            (
                2 * reads_per_instant,
                reads_per_instant,
                2 * reads_per_instant,
                2 * reads_per_instant
            ),
            "{}: queries without, with and with unusable previous readings",
            metric.name
        );
        let counts = measured.counts;
        let pods = counts
            .pods
            .unwrap_or_else(|| panic!("{}: no per-pod counts", metric.name));
        assert_eq!(pods.canary.len(), 1, "{}: {pods:?}", metric.name);
        assert_eq!(pods.stable.len(), 3, "{}: {pods:?}", metric.name);
        for (total, pods) in [
            (&counts.canary, &pods.canary),
            (&counts.stable, &pods.stable),
        ] {
            let summed: Vec<u64> = (0..total.len())
                .map(|i| pods.iter().map(|pod| pod[i]).sum())
                .collect();
            assert_eq!(
                &summed, total,
                "{}: pods do not sum to the total",
                metric.name
            );
        }
        // Four 15 s steps in the minute: stable's pods served 600, 600 and 400 requests.
        let requests: Vec<u64> = pods.stable.iter().map(|pod| pod[0]).collect();
        if metric.name == "error-rate" {
            assert_eq!(requests, vec![600, 600, 400]);
        } else {
            let totals: Vec<u64> = pods.stable.iter().map(|pod| *pod.last().unwrap()).collect();
            assert_eq!(totals, vec![600, 600, 400]);
        }
    }
    // Judged over five minutes: a healthy canary, judged on its pods, is not rolled back.
    let report = analyse(
        &analysis,
        Schedule::Retrospective {
            from: t0(),
            to: t0() + minutes(5),
        },
    )
    .await;
    for name in ["error-rate", "latency"] {
        let metric = metric(&report, name);
        assert_eq!(
            metric.phase,
            AnalysisPhase::Successful,
            "{name}: {}",
            metric.message
        );
    }
}
