//! Every template in `analysis-templates/` against a real Prometheus holding data in that
//! system's own metric format: a healthy version passes, an error regression fails the success
//! rate, a latency regression fails the latency metrics, a version without traffic (0/0) and a
//! version without series are Inconclusive with a "no data" reason.
//!
//! The data is backfilled with promtool at fixed timestamps, so every value is exact: each
//! 15 s "scrape" adds 600 requests; healthy versions fail 0.5% of them (success rate 0.995),
//! regressed ones 5% (0.95); latency histograms put the p99 at 233.33 ms (healthy) or
//! 2000 ms (slow), means are 40 ms and 400 ms.

#[path = "support/analysis.rs"]
mod analysis;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::BTreeMap;
use std::path::PathBuf;

use analysis::{metric, t0};
use canary::analysis::run::{AnalysisReport, NoSecrets, Schedule, prepare, run};
use canary::analysis::{AnalysisPhase, MeasurementPhase};
use canary::metrics::PrometheusSource;
use jiff::{SignedDuration, Timestamp};
use prometheus::{Kind, OpenMetrics, Prometheus};

/// The first measurement of every analysis; data starts 10 minutes earlier.
const STEP_SECONDS: i64 = 15;
const REQUESTS_PER_STEP: f64 = 600.0;
const NAMESPACE: &str = "shop";

/// Bucket bounds in seconds with the cumulative share of requests at or below each.
const HEALTHY_BUCKETS: [(f64, f64); 7] = [
    (0.025, 0.5),
    (0.05, 0.8),
    (0.1, 0.95),
    (0.25, 0.995),
    (0.5, 1.0),
    (1.0, 1.0),
    (2.5, 1.0),
];
const SLOW_BUCKETS: [(f64, f64); 7] = [
    (0.025, 0.05),
    (0.05, 0.1),
    (0.1, 0.4),
    (0.25, 0.7),
    (0.5, 0.85),
    (1.0, 0.97),
    (2.5, 1.0),
];

/// How a version behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    requests: f64,
    error_share: f64,
    buckets: &'static [(f64, f64); 7],
    mean_seconds: f64,
}

const HEALTHY: Behaviour = Behaviour {
    requests: REQUESTS_PER_STEP,
    error_share: 0.005,
    buckets: &HEALTHY_BUCKETS,
    mean_seconds: 0.04,
};
const ERRORS: Behaviour = Behaviour {
    error_share: 0.05,
    ..HEALTHY
};
const SLOW: Behaviour = Behaviour {
    buckets: &SLOW_BUCKETS,
    mean_seconds: 0.4,
    ..HEALTHY
};
const IDLE: Behaviour = Behaviour {
    requests: 0.0,
    ..HEALTHY
};

/// The versions every system's data holds (a version named "absent" has no series at all).
const VERSIONS: [(&str, Behaviour); 4] = [
    ("healthy", HEALTHY),
    ("errors", ERRORS),
    ("slow", SLOW),
    ("idle", IDLE),
];

/// Cumulative counters of one version at one instant.
#[derive(Clone, Default)]
struct Totals {
    requests: f64,
    errors: f64,
    /// Cumulative count per bucket of `HEALTHY_BUCKETS`' bounds (all profiles share them).
    buckets: [f64; 7],
    sum_seconds: f64,
    /// The latest mean latency (for gauges such as HAProxy's average).
    mean_seconds: f64,
}

impl Totals {
    fn advance(&mut self, b: Behaviour) {
        self.requests += b.requests;
        self.errors += b.requests * b.error_share;
        for (count, (_, share)) in self.buckets.iter_mut().zip(b.buckets.iter()) {
            *count += b.requests * share;
        }
        self.sum_seconds += b.requests * b.mean_seconds;
        self.mean_seconds = b.mean_seconds;
    }

    fn successes(&self) -> f64 {
        self.requests - self.errors
    }

    /// `(le, cumulative count)` with `le` in seconds times `scale` (1000 for milliseconds).
    fn histogram(&self, scale: f64) -> Vec<(f64, f64)> {
        HEALTHY_BUCKETS
            .iter()
            .zip(self.buckets.iter())
            .map(|((le, _), count)| (le * scale, *count))
            .collect()
    }
}

/// Writes one version's metrics at one instant in a system's own format.
type Emit = fn(&mut OpenMetrics, &str, Timestamp, &Totals);

/// Data for `versions` from t0-10m to t0+5m, one sample every 15 s.
fn backfill(emit: Emit, versions: &[(&str, Behaviour)]) -> OpenMetrics {
    let mut om = OpenMetrics::new();
    let mut totals: Vec<Totals> = vec![Totals::default(); versions.len()];
    let start = t0() - SignedDuration::from_mins(10);
    let end = t0() + SignedDuration::from_mins(5);
    let mut t = start;
    while t <= end {
        for ((name, behaviour), totals) in versions.iter().zip(totals.iter_mut()) {
            if t > start {
                totals.advance(*behaviour);
            }
            emit(&mut om, name, t, totals);
        }
        t += SignedDuration::from_secs(STEP_SECONDS);
    }
    om
}

fn load_template(file: &str) -> canary::api::AnalysisTemplate {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "analysis-templates", file]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let template: canary::api::AnalysisTemplate = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    assert_eq!(
        template.metadata.namespace, None,
        "{file}: a ready-to-apply template names no namespace"
    );
    for metric in &template.spec.metrics {
        assert_eq!(
            metric.provider.prometheus.address, None,
            "{file}: {} must leave the address to --prometheus",
            metric.name
        );
    }
    template
}

/// Runs `file` for `version` retrospectively over [t0, t0+4m].
async fn analyse(
    prometheus: &Prometheus,
    file: &str,
    args: &[(&str, &str)],
    version: &str,
) -> AnalysisReport {
    let template = load_template(file);
    let args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.replace("{version}", version)))
        .collect();
    let context = BTreeMap::from([
        ("namespace".to_string(), NAMESPACE.to_string()),
        ("workload".to_string(), version.to_string()),
    ]);
    let prepared = prepare(
        template.metadata.name.as_deref().unwrap(),
        &template.spec,
        &args,
        &context,
        Some(&prometheus.url()),
        &NoSecrets,
    )
    .unwrap_or_else(|problems| panic!("{file} does not prepare: {problems:#?}"));
    let source = PrometheusSource::new().unwrap();
    let schedule = Schedule::Retrospective {
        from: t0(),
        to: t0() + SignedDuration::from_mins(4),
    };
    run(&source, &prepared, schedule, |_, _| {}).await
}

/// What one metric must have ended as: its phase, the value of its measurements and a
/// fragment of their reason (every measurement taken must agree).
struct Expect<'a> {
    metric: &'a str,
    phase: AnalysisPhase,
    measurement: MeasurementPhase,
    value: &'a str,
    reason: &'a str,
}

fn check(
    file: &str,
    version: &str,
    report: &AnalysisReport,
    overall: AnalysisPhase,
    expected: &[Expect],
) {
    let context = format!("{file} for version {version:?}: {report:#?}");
    assert_eq!(report.phase, overall, "{context}");
    assert_eq!(
        report.metrics.len(),
        expected.len(),
        "every metric of the template is checked: {context}"
    );
    for e in expected {
        let m = metric(report, e.metric);
        assert_eq!(m.phase, e.phase, "metric {}: {context}", e.metric);
        assert!(!m.measurements.is_empty(), "metric {}: {context}", e.metric);
        for (i, measurement) in m.measurements.iter().enumerate() {
            assert_eq!(
                measurement.time,
                t0() + SignedDuration::from_mins(i as i64),
                "measurements are taken at t0 + i minutes: {context}"
            );
            assert_eq!(
                measurement.phase, e.measurement,
                "metric {}: {context}",
                e.metric
            );
            assert_eq!(
                measurement.value.as_deref(),
                Some(e.value),
                "metric {}: {context}",
                e.metric
            );
            assert!(
                measurement.reason.contains(e.reason),
                "metric {}: reason {:?} should contain {:?}",
                e.metric,
                measurement.reason,
                e.reason
            );
        }
    }
}

/// The per-system facts the shared scenarios need.
struct System {
    file: &'static str,
    emit: Emit,
    /// Template arguments; `{version}` is replaced by the version's name.
    args: &'static [(&'static str, &'static str)],
    /// Latency values: (healthy p99, slow p99, healthy mean, slow mean); `None` p99 when the
    /// template has no p99 metric.
    p99: Option<(&'static str, &'static str)>,
    mean: (&'static str, &'static str),
    /// The rendered p99/mean threshold range, as the reason prints it.
    p99_range: &'static str,
    mean_range: &'static str,
    /// The reason of a latency-mean measurement when there was no traffic.
    idle_mean_reason: &'static str,
}

const SUCCESS_OK: &str = "successCondition `result[0] >= 0.99` is true";
const SUCCESS_FAILED: &str = "successCondition `result[0] >= 0.99` is false";
const NAN: &str = "no data: the value is NaN";
const NO_SERIES: &str = "no data: the query returned no series";

/// The expectations of the latency metrics (p99 only where the template has one).
fn latency<'a>(
    has_p99: bool,
    ok: bool,
    p99_value: &'a str,
    p99_reason: &'a str,
    mean_value: &'a str,
) -> Vec<Expect<'a>> {
    let (phase, measurement, range_reason) = if ok {
        (
            AnalysisPhase::Successful,
            MeasurementPhase::Successful,
            "within thresholdRange",
        )
    } else {
        (
            AnalysisPhase::Failed,
            MeasurementPhase::Failed,
            "is outside thresholdRange",
        )
    };
    let mut expected = Vec::new();
    if has_p99 {
        expected.push(Expect {
            metric: "latency-p99",
            phase,
            measurement,
            value: p99_value,
            reason: p99_reason,
        });
    }
    expected.push(Expect {
        metric: "latency-mean",
        phase,
        measurement,
        value: mean_value,
        reason: range_reason,
    });
    expected
}

async fn exercise(system: System) {
    let prometheus = Prometheus::builder()
        .backfill(&backfill(system.emit, &VERSIONS))
        .start();
    let file = system.file;
    let has_p99 = system.p99.is_some();
    let (healthy_p99, slow_p99) = system.p99.unwrap_or(("", ""));
    let (healthy_mean, slow_mean) = system.mean;
    let bracket = |s: &str| format!("[{s}]");

    // Healthy: every measurement of every metric passes, and the analysis passes.
    let report = analyse(&prometheus, file, system.args, "healthy").await;
    let (hp, hm) = (bracket(healthy_p99), bracket(healthy_mean));
    let mut expected = vec![Expect {
        metric: "success-rate",
        phase: AnalysisPhase::Successful,
        measurement: MeasurementPhase::Successful,
        value: "[0.995]",
        reason: SUCCESS_OK,
    }];
    expected.extend(latency(has_p99, true, &hp, "within thresholdRange", &hm));
    check(
        file,
        "healthy",
        &report,
        AnalysisPhase::Successful,
        &expected,
    );
    assert_eq!(
        metric(&report, "success-rate").measurements.len(),
        5,
        "count: 5"
    );

    // Error regression: the success rate fails on its second failed measurement
    // (failureLimit 1); latency is fine and the analysis stops there.
    let report = analyse(&prometheus, file, system.args, "errors").await;
    let mut expected = vec![Expect {
        metric: "success-rate",
        phase: AnalysisPhase::Failed,
        measurement: MeasurementPhase::Failed,
        value: "[0.95]",
        reason: SUCCESS_FAILED,
    }];
    expected.extend(latency(has_p99, true, &hp, "within thresholdRange", &hm));
    check(file, "errors", &report, AnalysisPhase::Failed, &expected);
    assert_eq!(metric(&report, "success-rate").measurements.len(), 2);
    assert!(
        metric(&report, "success-rate")
            .message
            .contains("exceed failureLimit 1"),
        "{report:#?}"
    );

    // Latency regression: the latency metrics fail, the success rate does not.
    let report = analyse(&prometheus, file, system.args, "slow").await;
    let (sp, sm) = (bracket(slow_p99), bracket(slow_mean));
    let p99_reason = format!("{slow_p99} is outside thresholdRange {}", system.p99_range);
    let mut expected = vec![Expect {
        metric: "success-rate",
        phase: AnalysisPhase::Successful,
        measurement: MeasurementPhase::Successful,
        value: "[0.995]",
        reason: SUCCESS_OK,
    }];
    expected.extend(latency(has_p99, false, &sp, &p99_reason, &sm));
    check(file, "slow", &report, AnalysisPhase::Failed, &expected);
    let mean = metric(&report, "latency-mean");
    let mean_reason = format!(
        "{slow_mean} is outside thresholdRange {}",
        system.mean_range
    );
    assert!(
        mean.measurements[0].reason.contains(&mean_reason),
        "{mean:#?}"
    );

    // No traffic: 0/0 is NaN, never a pass; three such measurements exceed inconclusiveLimit 2.
    let report = analyse(&prometheus, file, system.args, "idle").await;
    assert_eq!(
        report.phase,
        AnalysisPhase::Inconclusive,
        "{file}: {report:#?}"
    );
    for m in &report.metrics {
        assert_eq!(m.phase, AnalysisPhase::Inconclusive, "{file}: {m:#?}");
        assert_eq!(m.measurements.len(), 3, "{file}: {m:#?}");
        let expected_reason = if m.name == "latency-mean" {
            system.idle_mean_reason
        } else {
            NAN
        };
        for x in &m.measurements {
            assert_eq!(x.phase, MeasurementPhase::Inconclusive, "{file}: {m:#?}");
            assert!(x.reason.contains(expected_reason), "{file}: {m:#?}");
            assert!(
                x.reason
                    .ends_with(&canary::analysis::measurement::one_line(&m.query)),
                "the reason names the query: {m:#?}"
            );
        }
        assert!(m.message.contains("exceed inconclusiveLimit 2"), "{m:#?}");
    }

    // Series that do not exist: Inconclusive, the reason names the rendered query.
    let report = analyse(&prometheus, file, system.args, "absent").await;
    assert_eq!(
        report.phase,
        AnalysisPhase::Inconclusive,
        "{file}: {report:#?}"
    );
    for m in &report.metrics {
        assert_eq!(m.phase, AnalysisPhase::Inconclusive, "{file}: {m:#?}");
        for x in &m.measurements {
            assert_eq!(x.value.as_deref(), Some("[]"), "{file}: {m:#?}");
            assert!(x.reason.starts_with(NO_SERIES), "{file}: {m:#?}");
            assert!(
                x.reason
                    .ends_with(&canary::analysis::measurement::one_line(&m.query)),
                "{file}: {m:#?}"
            );
            assert!(
                m.query.contains("absent"),
                "the query was rendered for the version: {m:#?}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// The systems' metric formats
// ------------------------------------------------------------------------------------------

fn istio(om: &mut OpenMetrics, version: &str, t: Timestamp, x: &Totals) {
    for (reporter, errors) in [("destination", x.errors), ("source", x.requests)] {
        // The source side is made to look broken: the template must read the destination's view.
        let base = [
            ("reporter", reporter),
            ("destination_workload", version),
            ("destination_workload_namespace", NAMESPACE),
            ("destination_service", "web.shop.svc.cluster.local"),
            ("source_workload", "frontend"),
        ];
        for (code, value) in [("200", x.requests - errors), ("503", errors)] {
            let mut labels = base.to_vec();
            labels.push(("response_code", code));
            om.counter("istio_requests_total", &labels, t, value);
        }
        if reporter == "destination" {
            om.histogram(
                "istio_request_duration_milliseconds",
                &base,
                t,
                &x.histogram(1000.0),
                x.sum_seconds * 1000.0,
                x.requests,
            );
        }
    }
}

fn envoy(om: &mut OpenMetrics, version: &str, t: Timestamp, x: &Totals) {
    envoy_cluster(om, &format!("{NAMESPACE}_{version}_80"), t, x);
}

/// Envoy Gateway, each backendRef its own cluster: the version as the canary backend (the
/// second, `backend/1`) of route `<version>`'s split rule, beside a busy, fast and faultless
/// stable backend (`backend/0`) that a query must not mix in.
fn envoy_gateway(om: &mut OpenMetrics, version: &str, t: Timestamp, x: &Totals) {
    let rule = format!("httproute/{NAMESPACE}/{version}/rule/0");
    envoy_cluster(om, &format!("{rule}/backend/1"), t, x);
    let stable = Totals {
        requests: x.requests * 10.0,
        errors: 0.0,
        buckets: [x.requests * 10.0; 7],
        sum_seconds: x.requests * 10.0 * 0.001,
        mean_seconds: 0.001,
    };
    envoy_cluster(om, &format!("{rule}/backend/0"), t, &stable);
}

/// One Envoy cluster's upstream statistics, as Envoy's `/stats/prometheus` names them.
fn envoy_cluster(om: &mut OpenMetrics, cluster: &str, t: Timestamp, x: &Totals) {
    let base = [("envoy_cluster_name", cluster)];
    // Envoy exposes its counters without a `_total` suffix.
    for (class, code, value) in [("2", "200", x.successes()), ("5", "503", x.errors)] {
        om.sample(
            "envoy_cluster_upstream_rq_xx",
            Kind::Unknown,
            "envoy_cluster_upstream_rq_xx",
            &[("envoy_response_code_class", class), base[0]],
            t,
            value,
        );
        om.sample(
            "envoy_cluster_upstream_rq",
            Kind::Unknown,
            "envoy_cluster_upstream_rq",
            &[("envoy_response_code", code), base[0]],
            t,
            value,
        );
    }
    om.histogram(
        "envoy_cluster_upstream_rq_time",
        &base,
        t,
        &x.histogram(1000.0),
        x.sum_seconds * 1000.0,
        x.requests,
    );
}

fn ingress_nginx(om: &mut OpenMetrics, version: &str, t: Timestamp, x: &Totals) {
    let common = [
        ("controller_class", "k8s.io/ingress-nginx"),
        ("controller_namespace", "ingress-nginx"),
        ("controller_pod", "ingress-nginx-controller-6b9f7c-q2wzl"),
        ("ingress", version),
        ("method", "GET"),
        ("namespace", NAMESPACE),
        ("path", "/"),
        ("service", "web"),
    ];
    // Requests the canary backend served carry its upstream name; the stable backend's carry
    // an empty `canary` label and are made to look broken here, so the template must select
    // the canary's requests only.
    for (canary, errors) in [("shop-web-canary-80", x.errors), ("", x.requests)] {
        for (status, value) in [("200", x.requests - errors), ("503", errors)] {
            let mut labels = common.to_vec();
            labels.push(("canary", canary));
            labels.push(("status", status));
            // The controller's counter has no `_total` suffix.
            om.sample(
                "nginx_ingress_controller_requests",
                Kind::Unknown,
                "nginx_ingress_controller_requests",
                &labels,
                t,
                value,
            );
        }
    }
    let mut labels = common.to_vec();
    labels.push(("canary", "shop-web-canary-80"));
    labels.push(("status", "200"));
    om.histogram(
        "nginx_ingress_controller_request_duration_seconds",
        &labels,
        t,
        &x.histogram(1.0),
        x.sum_seconds,
        x.requests,
    );
}

fn linkerd(om: &mut OpenMetrics, version: &str, t: Timestamp, x: &Totals) {
    for (direction, errors) in [("inbound", x.errors), ("outbound", x.requests)] {
        // Outbound responses (the version's own calls to others) are made to look broken.
        let base = [
            ("deployment", version),
            ("direction", direction),
            ("namespace", NAMESPACE),
            ("pod", "web-canary-7d4b9c-x2x7q"),
            ("tls", "true"),
        ];
        for (classification, code, value) in [
            ("success", "200", x.requests - errors),
            ("failure", "503", errors),
        ] {
            let mut labels = base.to_vec();
            labels.push(("classification", classification));
            labels.push(("status_code", code));
            om.counter("response_total", &labels, t, value);
        }
        if direction == "inbound" {
            om.histogram(
                "response_latency_ms",
                &base,
                t,
                &x.histogram(1000.0),
                x.sum_seconds * 1000.0,
                x.requests,
            );
        }
    }
}

fn haproxy(om: &mut OpenMetrics, version: &str, t: Timestamp, x: &Totals) {
    // As HAProxy 2.6's built-in exporter names them (checked against a running 2.6).
    let proxy = [("proxy", version)];
    for (code, value) in [
        ("1xx", 0.0),
        ("2xx", x.successes()),
        ("3xx", 0.0),
        ("4xx", 0.0),
        ("5xx", x.errors),
        ("other", 0.0),
    ] {
        om.counter(
            "haproxy_backend_http_responses_total",
            &[proxy[0], ("code", code)],
            t,
            value,
        );
    }
    om.counter("haproxy_backend_http_requests_total", &proxy, t, x.requests);
    om.sample(
        "haproxy_backend_response_time_average_seconds",
        Kind::Gauge,
        "haproxy_backend_response_time_average_seconds",
        &proxy,
        t,
        x.mean_seconds,
    );
}

fn generic_http(om: &mut OpenMetrics, version: &str, t: Timestamp, x: &Totals) {
    // Two pods of the version, sharing the traffic; and a pod of another Deployment whose name
    // starts like this one's, which the pod pattern must not pick up.
    let pods = [
        format!("{version}-7d4b9c-x2x7q"),
        format!("{version}-7d4b9c-p9k2m"),
    ];
    for pod in &pods {
        let base = [
            ("namespace", NAMESPACE),
            ("pod", pod.as_str()),
            ("job", "web"),
        ];
        for (code, value) in [("200", x.successes() / 2.0), ("500", x.errors / 2.0)] {
            let mut labels = base.to_vec();
            labels.push(("code", code));
            labels.push(("method", "get"));
            om.counter("http_requests_total", &labels, t, value);
        }
        let halves: Vec<(f64, f64)> = x
            .histogram(1.0)
            .iter()
            .map(|(le, c)| (*le, c / 2.0))
            .collect();
        om.histogram(
            "http_request_duration_seconds",
            &base,
            t,
            &halves,
            x.sum_seconds / 2.0,
            x.requests / 2.0,
        );
    }
    let other = format!("{version}-admin-7d4b9c-x2x7q");
    om.counter(
        "http_requests_total",
        &[
            ("namespace", NAMESPACE),
            ("pod", &other),
            ("job", "web"),
            ("code", "500"),
            ("method", "get"),
        ],
        t,
        x.requests,
    );
}

// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn istio_template() {
    exercise(System {
        file: "istio.yaml",
        emit: istio,
        args: &[],
        p99: Some(("233.333333", "2000")),
        mean: ("40", "400"),
        p99_range: "[-Inf, 500]",
        mean_range: "[-Inf, 250]",
        idle_mean_reason: NAN,
    })
    .await;
}

#[tokio::test]
async fn envoy_gateway_api_template() {
    exercise(System {
        file: "envoy-gateway-api.yaml",
        emit: envoy,
        args: &[("cluster", "shop_{version}_80")],
        p99: Some(("233.333333", "2000")),
        mean: ("40", "400"),
        p99_range: "[-Inf, 500]",
        mean_range: "[-Inf, 250]",
        idle_mean_reason: NAN,
    })
    .await;
}

#[tokio::test]
async fn envoy_gateway_api_template_on_envoy_gateways_per_backend_clusters() {
    exercise(System {
        file: "envoy-gateway-api.yaml",
        emit: envoy_gateway,
        args: &[("cluster", "httproute/shop/{version}/rule/0/backend/1")],
        p99: Some(("233.333333", "2000")),
        mean: ("40", "400"),
        p99_range: "[-Inf, 500]",
        mean_range: "[-Inf, 250]",
        idle_mean_reason: NAN,
    })
    .await;
}

#[tokio::test]
async fn ingress_nginx_template() {
    exercise(System {
        file: "ingress-nginx.yaml",
        emit: ingress_nginx,
        args: &[("ingress", "{version}")],
        p99: Some(("0.233333", "2")),
        mean: ("0.04", "0.4"),
        p99_range: "[-Inf, 0.5]",
        mean_range: "[-Inf, 0.25]",
        idle_mean_reason: NAN,
    })
    .await;
}

#[tokio::test]
async fn linkerd_template() {
    exercise(System {
        file: "linkerd.yaml",
        emit: linkerd,
        args: &[],
        p99: Some(("233.333333", "2000")),
        mean: ("40", "400"),
        p99_range: "[-Inf, 500]",
        mean_range: "[-Inf, 250]",
        idle_mean_reason: NAN,
    })
    .await;
}

#[tokio::test]
async fn haproxy_template() {
    exercise(System {
        file: "haproxy.yaml",
        emit: haproxy,
        args: &[("backend", "{version}")],
        p99: None,
        mean: ("0.04", "0.4"),
        p99_range: "",
        mean_range: "[-Inf, 0.25]",
        // HAProxy's average is a gauge; without requests in the window the query is empty.
        idle_mean_reason: NO_SERIES,
    })
    .await;
}

#[tokio::test]
async fn generic_http_template() {
    exercise(System {
        file: "generic-http.yaml",
        emit: generic_http,
        args: &[],
        p99: Some(("0.233333", "2")),
        mean: ("0.04", "0.4"),
        p99_range: "[-Inf, 0.5]",
        mean_range: "[-Inf, 0.25]",
        idle_mean_reason: NAN,
    })
    .await;
}

/// The template for a replica canary behind a plain Service reads the same app metrics by pod;
/// the decoy pod of a look-alike Deployment (`<version>-admin-…`) must not count.
#[tokio::test]
async fn plain_service_template() {
    exercise(System {
        file: "plain-service.yaml",
        emit: generic_http,
        args: &[],
        p99: Some(("0.233333", "2")),
        mean: ("0.04", "0.4"),
        p99_range: "[-Inf, 0.5]",
        mean_range: "[-Inf, 0.25]",
        idle_mean_reason: NAN,
    })
    .await;
}

/// The compare template judges each version against a healthy stable ("healthy") over
/// [t0, t0+4m], reading raw counters at both ends of every interval: a healthy twin is never
/// judged regressed and passes; ×10 errors and a slow body are Regressed (Failed) at once; a
/// canary without traffic or without series is Inconclusive, never passed.
#[tokio::test]
async fn istio_compare_template() {
    let mut versions = VERSIONS.to_vec();
    versions.push(("twin", HEALTHY));
    let prometheus = Prometheus::builder()
        .backfill(&backfill(istio, &versions))
        .start();
    let template = load_template("istio-compare.yaml");
    let source = PrometheusSource::new().unwrap();
    let url = prometheus.url();
    let analyse = |canary: &'static str| run_istio_compare(&url, &source, &template, canary, 4);
    // (canary, error-rate phase, latency phase, overall, a fragment of the error-rate message)
    let cases = [
        (
            "twin",
            AnalysisPhase::Successful,
            AnalysisPhase::Successful,
            AnalysisPhase::Successful,
            "canary error rate 1.00× stable's",
        ),
        (
            "errors",
            AnalysisPhase::Failed,
            AnalysisPhase::Successful,
            AnalysisPhase::Failed,
            "regressed, roll back",
        ),
        (
            "slow",
            AnalysisPhase::Successful,
            AnalysisPhase::Failed,
            AnalysisPhase::Failed,
            "canary error rate 1.00× stable's",
        ),
        (
            "idle",
            AnalysisPhase::Inconclusive,
            AnalysisPhase::Inconclusive,
            AnalysisPhase::Inconclusive,
            "nothing was compared",
        ),
        (
            "absent",
            AnalysisPhase::Inconclusive,
            AnalysisPhase::Inconclusive,
            AnalysisPhase::Inconclusive,
            "nothing was compared",
        ),
    ];
    for (canary, error_rate, latency, overall, message) in cases {
        let report = analyse(canary).await;
        let context = format!("canary {canary}: {report:#?}");
        assert_eq!(report.phase, overall, "{context}");
        let errors = metric(&report, "error-rate");
        assert_eq!(errors.phase, error_rate, "{context}");
        assert!(errors.message.contains(message), "{context}");
        assert_eq!(metric(&report, "latency").phase, latency, "{context}");
        for m in &report.metrics {
            let first = m.measurements.first().expect("measured");
            let detail = first.compare.as_ref().expect("compare detail");
            // The first window is the interval before t0; then windows are back to back.
            assert_eq!(
                detail.window_start,
                t0() - SignedDuration::from_mins(1),
                "{context}"
            );
            for pair in m.measurements.windows(2) {
                assert_eq!(
                    pair[1].compare.as_ref().unwrap().window_start,
                    pair[0].time,
                    "{context}"
                );
            }
        }
        if canary == "errors" {
            // Exact counts: 4 scrapes of 600 requests per minute, 5% vs 0.5% failing.
            let first = &errors.measurements[0];
            assert_eq!(first.phase, MeasurementPhase::Failed, "{context}");
            let counts = &first.compare.as_ref().unwrap().counts;
            assert_eq!(counts.canary, vec![2400, 120], "{context}");
            assert_eq!(counts.stable, vec![2400, 12], "{context}");
        }
        if canary == "twin" {
            let counts = &metric(&report, "latency").measurements[0]
                .compare
                .as_ref()
                .unwrap()
                .counts;
            assert_eq!(counts.canary, counts.stable, "{context}");
            assert_eq!(counts.canary.last(), Some(&2400), "{context}");
        }
    }
}

/// Runs an Istio compare `template` for `canary` against stable `healthy`, retrospectively
/// over `[t0, t0 + minutes]`.
async fn run_istio_compare(
    prometheus: &str,
    source: &PrometheusSource,
    template: &canary::api::AnalysisTemplate,
    canary: &str,
    minutes: i64,
) -> AnalysisReport {
    let context = BTreeMap::from([
        ("namespace".to_string(), NAMESPACE.to_string()),
        ("canary".to_string(), canary.to_string()),
        ("stable".to_string(), "healthy".to_string()),
    ]);
    let prepared = prepare(
        "istio-compare",
        &template.spec,
        &BTreeMap::new(),
        &context,
        Some(prometheus),
        &NoSecrets,
    )
    .unwrap_or_else(|problems| panic!("istio-compare.yaml does not prepare: {problems:#?}"));
    let schedule = Schedule::Retrospective {
        from: t0(),
        to: t0() + SignedDuration::from_mins(minutes),
    };
    run(source, &prepared, schedule, |_, _| {}).await
}

/// The Istio compare template with its latency judged only at chosen bucket boundaries
/// (`judge.latencyBoundaries`, in the histogram's milliseconds): a slow body is still caught at
/// 100 and 250 ms, a healthy twin passes, and a boundary the histogram does not have is an
/// Error that names the setting and the boundaries it has.
#[tokio::test]
async fn istio_compare_template_judges_latency_at_chosen_boundaries() {
    let mut versions = VERSIONS.to_vec();
    versions.push(("twin", HEALTHY));
    let prometheus = Prometheus::builder()
        .backfill(&backfill(istio, &versions))
        .start();
    let source = PrometheusSource::new().unwrap();
    let url = prometheus.url();
    let latency_report = |boundaries: Vec<f64>, canary: &'static str| {
        let mut template = load_template("istio-compare.yaml");
        let latency = template
            .spec
            .metrics
            .iter_mut()
            .find(|m| m.name == "latency")
            .and_then(|m| m.compare.as_mut())
            .expect("a latency compare metric");
        latency
            .judge
            .get_or_insert_with(Default::default)
            .latency_boundaries = boundaries;
        let (url, source) = (url.clone(), source.clone());
        async move {
            let report = run_istio_compare(&url, &source, &template, canary, 2).await;
            metric(&report, "latency").clone()
        }
    };
    let slow = latency_report(vec![100.0, 250.0], "slow").await;
    assert_eq!(slow.phase, AnalysisPhase::Failed, "{slow:#?}");
    assert!(
        slow.message.contains("judged bucket boundaries of"),
        "{slow:#?}"
    );
    let twin = latency_report(vec![100.0, 250.0], "twin").await;
    assert_eq!(twin.phase, AnalysisPhase::Successful, "{twin:#?}");
    let wrong = latency_report(vec![300.0], "twin").await;
    let first = wrong.measurements.first().expect("measured");
    assert_eq!(first.phase, MeasurementPhase::Error, "{wrong:#?}");
    assert!(
        first
            .reason
            .contains("judge.latencyBoundaries [300.0] are not bucket boundaries"),
        "{wrong:#?}"
    );
}

/// Every file in analysis-templates/ is covered by a test above, so a new template cannot be
/// added without one.
#[test]
fn every_template_is_exercised() {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "analysis-templates"]
        .iter()
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "envoy-gateway-api.yaml",
            "generic-http.yaml",
            "haproxy.yaml",
            "ingress-nginx.yaml",
            "istio-compare.yaml",
            "istio.yaml",
            "linkerd.yaml",
            "plain-service.yaml"
        ]
    );
    for file in &files {
        load_template(file);
    }
}
