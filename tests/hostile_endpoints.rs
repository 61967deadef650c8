//! Metric endpoints that misbehave, as real HTTP servers on 127.0.0.1, measured through the
//! real Prometheus source: one that echoes the request (its secret headers and query) in an
//! error page, one that answers a huge vector, and addresses a template must not reach
//! (link-local, cloud metadata, outside the controller's allow-list).

#[path = "support/http_endpoint.rs"]
mod http_endpoint;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use canary::analysis::MeasurementPhase;
use canary::analysis::run::{
    AnalysisReport, Measurement, NoSecrets, PreparedAnalysis, Schedule, SecretValues, prepare, run,
};
use canary::api::AnalysisTemplate;
use canary::api::analysis_template::SecretKeyRef;
use canary::metrics::{
    AddressPolicy, MetricsError, MetricsSource, PrometheusSource, Query, QueryOutput, QueryRequest,
};
use http_endpoint::{Endpoint, Received, response, vector_answer};

const TOKEN_ARG: &str = r#"t0ken/with+odd "chars""#;
const BEARER: &str = "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.sig-value";
/// `admin:pa55-w0rd!x`
const BASIC: &str = "Basic YWRtaW46cGE1NS13MHJkIXg=";
const API_KEY: &str = "k3y-Value-0001";
/// Parts of the secrets above that must appear nowhere people can read.
const NEVER_SHOWN: [&str; 6] = [
    "t0ken",
    "eyJhbGciOiJIUzI1NiJ9",
    "YWRtaW46",
    "pa55-w0rd",
    "k3y-Value",
    "sig-value",
];

/// The Secrets of the echo template, by key.
struct Secrets;

impl SecretValues for Secrets {
    fn secret_value(&self, reference: &SecretKeyRef) -> Result<String, String> {
        Ok(match reference.key.as_str() {
            "token" => TOKEN_ARG,
            "bearer" => BEARER,
            "basic" => BASIC,
            "api-key" => API_KEY,
            other => panic!("no secret key {other}"),
        }
        .to_string())
    }
}

fn template(text: &str) -> AnalysisTemplate {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("test template: {e}"))
}

/// A threshold metric and a compare metric, selecting by a secret argument and sending three
/// secret headers.
fn echo_template() -> AnalysisTemplate {
    template(
        r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: echoed}
spec:
  args:
  - {name: token, valueFrom: {secretKeyRef: {name: prom, key: token}}}
  metrics:
  - name: threshold
    successCondition: result[0] >= 0.0
    provider:
      prometheus:
        query: sum(x{tenant="{{args.token}}"})
        headers: &headers
        - {name: Authorization, valueFrom: {secretKeyRef: {name: prom, key: bearer}}}
        - {name: Proxy-Authorization, valueFrom: {secretKeyRef: {name: prom, key: basic}}}
        - {name: X-Api-Key, valueFrom: {secretKeyRef: {name: prom, key: api-key}}}
  - name: compared
    compare:
      requests: requests_total{tenant="{{args.token}}", workload="{{workload}}"}
      errors: errors_total{tenant="{{args.token}}", workload="{{workload}}"}
    provider: {prometheus: {headers: *headers}}
"#,
    )
}

/// What an endpoint that quotes the request back says: the request as received, and what a
/// gateway says about the credentials it refused (the token without its scheme, the
/// password inside the Basic header).
fn echo(request: &Received) -> String {
    let header = |name: &str| {
        request.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut text = format!("{}\n\n{}\n", request.head, request.body);
    if let Some(token) =
        header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
    {
        text.push_str(&format!("invalid token {token}\n"));
    }
    if let Some(basic) =
        header("proxy-authorization").and_then(|v| v.strip_prefix("Basic ").map(str::to_string))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .unwrap();
        let decoded = String::from_utf8(decoded).unwrap();
        let (user, password) = decoded.split_once(':').unwrap();
        text.push_str(&format!(
            "proxy user {user} with password {password} refused\n"
        ));
    }
    text
}

fn prepared(
    template: &AnalysisTemplate,
    address: &str,
    secrets: &dyn SecretValues,
) -> PreparedAnalysis {
    prepare(
        "echoed",
        &template.spec,
        &BTreeMap::new(),
        &BTreeMap::from([("target".to_string(), "web".to_string())]),
        Some(address),
        secrets,
    )
    .unwrap_or_else(|problems| panic!("template does not prepare: {problems:#?}"))
}

async fn measure_once(analysis: &PreparedAnalysis) -> AnalysisReport {
    let source = PrometheusSource::new().unwrap();
    run(&source, analysis, Schedule::Once, |_, _| {}).await
}

#[tokio::test]
async fn endpoints_echoing_the_request_in_an_error_never_show_a_secret() {
    // (how the endpoint answers, what the reason must still say)
    type Answer = fn(&Received) -> Vec<u8>;
    let endpoints: [(&str, Answer, &str); 3] = [
        (
            "401 text",
            |r| response("401 Unauthorized", "text/plain", echo(r).as_bytes(), true),
            "401 Unauthorized",
        ),
        (
            "400 Prometheus API error",
            |r| {
                let body = serde_json::json!({"status": "error", "errorType": "bad_data", "error": echo(r)});
                response(
                    "400 Bad Request",
                    "application/json",
                    body.to_string().as_bytes(),
                    true,
                )
            },
            "bad_data",
        ),
        (
            "502 html",
            |r| {
                let body = format!("<html><body><pre>{}</pre></body></html>", echo(r));
                response("502 Bad Gateway", "text/html", body.as_bytes(), false)
            },
            "502 Bad Gateway",
        ),
    ];
    for (name, answer, said) in endpoints {
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = received.clone();
        let endpoint = Endpoint::start(move |request| {
            recorded.lock().unwrap().push(request.clone());
            answer(request)
        });
        let report = measure_once(&prepared(&echo_template(), endpoint.url(), &Secrets)).await;

        // The secrets did reach the endpoint: there was something to leak.
        let sent = format!("{:?}", received.lock().unwrap());
        assert!(
            sent.contains("eyJhbGciOiJIUzI1NiJ9") && sent.contains(API_KEY),
            "{name}: {sent}"
        );

        let json = serde_json::to_string(&report).unwrap();
        for secret in NEVER_SHOWN {
            assert!(!json.contains(secret), "{name}: {secret} shown in {json}");
        }
        for metric in &report.metrics {
            let measurement = &metric.measurements[0];
            assert_eq!(
                measurement.phase,
                MeasurementPhase::Error,
                "{name}: {metric:#?}"
            );
            assert!(
                measurement.reason.contains(said),
                "{name}: {}",
                measurement.reason
            );
            assert!(
                measurement.reason.contains("<secret:"),
                "{name}: {}",
                measurement.reason
            );
        }
    }
}

/// 130,000 series (about 13 MB): what a query without aggregation over a big cluster returns.
fn huge_answer() -> &'static [u8] {
    static HUGE: OnceLock<Vec<u8>> = OnceLock::new();
    HUGE.get_or_init(|| vector_answer(130_000))
}

fn one_metric(address: &str) -> PreparedAnalysis {
    let template = template(
        r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: big}
spec:
  metrics:
  - name: per-pod
    successCondition: result[0] >= 0.0
    provider: {prometheus: {query: http_requests_total}}
"#,
    );
    prepared(&template, address, &NoSecrets)
}

/// The measurement of one metric whose endpoint answers `body` (with its length announced
/// or not).
async fn measure_answer(body: &'static [u8], announce_length: bool) -> Measurement {
    let endpoint =
        Endpoint::start(move |_| response("200 OK", "application/json", body, announce_length));
    let report = measure_once(&one_metric(endpoint.url())).await;
    report.metrics[0].measurements[0].clone()
}

#[tokio::test]
async fn answers_too_big_for_status_are_errors_that_say_how_to_aggregate() {
    // (answer, announced length, what the reason says)
    let cases: [(&str, &'static [u8], bool, &[&str]); 3] = [
        (
            "130k series, Content-Length",
            huge_answer(),
            true,
            &["more than 8 MiB", "sum by (pod)"],
        ),
        (
            "130k series, streamed",
            huge_answer(),
            false,
            &["more than 8 MiB", "sum by (pod)"],
        ),
        (
            "20k series",
            Box::leak(vector_answer(20_000).into_boxed_slice()),
            true,
            &[
                "returned 20000 series",
                "more than the 10000",
                "sum by (pod)",
            ],
        ),
    ];
    for (name, body, announce, said) in cases {
        let measurement = &measure_answer(body, announce).await;
        // Never print the whole measurement: before the bound, its value was megabytes.
        assert_eq!(
            measurement.phase,
            MeasurementPhase::Error,
            "{name}: {:?}",
            measurement.reason
        );
        for words in said {
            assert!(
                measurement.reason.contains(words),
                "{name}: {}",
                measurement.reason
            );
        }
        // What status would keep of it is small.
        let kept = serde_json::to_string(measurement).unwrap();
        assert!(kept.len() < 1024, "{name}: {} bytes", kept.len());
    }
}

#[tokio::test]
async fn a_large_answer_within_the_limits_keeps_a_bounded_value() {
    let body: &'static [u8] = Box::leak(vector_answer(5_000).into_boxed_slice());
    let measurement = &measure_answer(body, true).await;
    assert_eq!(
        measurement.phase,
        MeasurementPhase::Successful,
        "{:?}",
        measurement.reason
    );
    let value = measurement.value.as_deref().unwrap();
    assert!(value.starts_with("[0, 1, 2"), "{}", &value[..64]);
    assert!(value.len() <= 128, "{} bytes", value.len());
    assert!(measurement.reason.len() <= 512, "{}", measurement.reason);
}

/// One metric at `address`, with `headers` (name, inline value).
fn at_address(address: &str, headers: &[(&str, &str)]) -> AnalysisTemplate {
    let headers: Vec<serde_json::Value> = headers
        .iter()
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "canary.dev/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "where"},
        "spec": {"metrics": [{
            "name": "success-rate",
            "successCondition": "result[0] >= 0.99",
            "provider": {"prometheus": {"address": address, "query": "up", "headers": headers}},
        }]},
    }))
    .unwrap()
}

#[test]
fn templates_pointing_at_metadata_services_or_overriding_host_are_refused() {
    // (address, headers, field, what the message says)
    let cases: [(&str, &[(&str, &str)], &str, &str); 6] = [
        (
            "http://169.254.169.254/latest/meta-data",
            &[],
            "provider.prometheus.address",
            "link-local",
        ),
        (
            "http://[fe80::a9fe:a9fe]:9090",
            &[],
            "provider.prometheus.address",
            "link-local",
        ),
        (
            "http://metadata.google.internal",
            &[],
            "provider.prometheus.address",
            "instance-metadata",
        ),
        (
            "http://2852039166:9090",
            &[],
            "provider.prometheus.address",
            "169.254.169.254",
        ),
        (
            "http://prometheus:9090",
            &[("Host", "169.254.169.254")],
            "provider.prometheus.headers[0].name (Host)",
            "change where the request goes",
        ),
        (
            "http://prometheus:9090",
            &[("X-Forwarded-Host", "metadata")],
            "provider.prometheus.headers[0].name (X-Forwarded-Host)",
            "change where the request goes",
        ),
    ];
    let problems_of = |template: AnalysisTemplate| {
        prepare(
            "where",
            &template.spec,
            &BTreeMap::new(),
            &BTreeMap::new(),
            None,
            &NoSecrets,
        )
        .map(|_| ())
    };
    for (address, headers, field, said) in cases {
        let problems = problems_of(at_address(address, headers)).expect_err(address);
        let problem = problems
            .iter()
            .find(|p| p.field == format!("metrics[0].{field}"))
            .unwrap_or_else(|| panic!("{address}: no problem at {field}: {problems:#?}"));
        assert_eq!(problem.metric.as_deref(), Some("success-rate"));
        assert!(
            problem.message.contains(said),
            "{address}: {}",
            problem.message
        );
        assert!(
            problem.message.contains("--metrics-address-allow") || field.contains("headers"),
            "{}",
            problem.message
        );
    }
    // An ordinary address and header pass.
    problems_of(at_address(
        "http://prometheus.monitoring:9090",
        &[("X-Scope-OrgID", "team-a")],
    ))
    .unwrap_or_else(|problems| panic!("{problems:#?}"));
}

fn request_to(address: &str) -> QueryRequest {
    QueryRequest {
        address: address.to_string(),
        query: Query::plain("up"),
        time: None,
        timeout: std::time::Duration::from_secs(10),
        headers: Vec::new(),
        insecure: false,
        provider: canary::metrics::ProviderQuery::Prometheus,
    }
}

fn allowing(entries: &[&str]) -> PrometheusSource {
    PrometheusSource::with_policy(AddressPolicy::new(
        entries.iter().map(|e| e.parse().unwrap()).collect(),
    ))
    .unwrap()
}

#[tokio::test]
async fn an_allow_list_refuses_every_other_address_without_connecting() {
    let ok = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    let allowed = Endpoint::start(move |_| response("200 OK", "application/json", ok, true));
    let other = Endpoint::start(move |_| response("200 OK", "application/json", ok, true));
    let source = allowing(&[allowed.url()]);

    let answer = source.instant_query(&request_to(allowed.url())).await;
    assert_eq!(answer, Ok(QueryOutput::Vector(Vec::new())));

    let refused = source
        .instant_query(&request_to(other.url()))
        .await
        .unwrap_err();
    assert!(matches!(refused, MetricsError::Refused { .. }), "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("--metrics-address-allow") && message.contains(allowed.url()),
        "{message}"
    );
    assert_eq!(other.connections(), 0, "the refused address was contacted");

    // A name is checked as it resolves, when connecting: localhost is 127.0.0.1 (or ::1),
    // outside the one network allowed.
    let source = allowing(&["10.0.0.0/8"]);
    let by_name = format!("http://localhost:{}", other.port());
    let refused = source
        .instant_query(&request_to(&by_name))
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, MetricsError::Refused { .. }), "{message}");
    assert!(message.contains("localhost resolves to"), "{message}");
    assert_eq!(other.connections(), 0, "the refused address was contacted");

    // The same name, allowed by name, connects.
    let source = allowing(&["localhost"]);
    let answer = source.instant_query(&request_to(&by_name)).await;
    assert_eq!(answer, Ok(QueryOutput::Vector(Vec::new())));
}

#[tokio::test]
async fn link_local_addresses_are_refused_at_query_time_too() {
    let source = PrometheusSource::new().unwrap();
    for address in [
        "http://169.254.169.254",
        "http://[::ffff:169.254.169.254]:80",
    ] {
        let refused = source
            .instant_query(&request_to(address))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, MetricsError::Refused { .. }),
            "{address}: {refused}"
        );
        assert!(refused.to_string().contains("link-local"), "{refused}");
    }
    // Unless the operator allows that network.
    let endpoint_like = allowing(&["169.254.0.0/16"]);
    let error = endpoint_like
        .instant_query(&QueryRequest {
            timeout: std::time::Duration::from_millis(300),
            ..request_to("http://169.254.0.1:9")
        })
        .await
        .unwrap_err();
    assert!(!matches!(error, MetricsError::Refused { .. }), "{error}");
}

/// `canary validate` says which template, metric and field point at a metadata service.
#[test]
fn validate_names_the_template_metric_and_field_of_a_refused_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metadata.yaml");
    let yaml = serde_saphyr::to_string(&at_address(
        "http://169.254.169.254/latest",
        &[("Host", "prometheus")],
    ))
    .unwrap();
    std::fs::write(&file, yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_canary"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(2), "{shown}");
    for said in [
        "where",
        "success-rate",
        "metrics[0].provider.prometheus.address",
        "169.254.169.254 is a link-local address",
        "metrics[0].provider.prometheus.headers[0].name (Host)",
    ] {
        assert!(shown.contains(said), "{said} missing from {shown}");
    }
}

/// An Argo Rollouts AnalysisTemplate as Argo's docs write one for a multi-tenant Prometheus
/// behind a gateway: the address and the tenant header from arguments, the token as
/// `Bearer {{args.token}}` with the argument from a Secret (Argo's documented way). Read as
/// written and measured against a real endpoint that echoes the request in an error: every
/// placeholder arrives filled in, and the token appears nowhere people read.
#[tokio::test]
async fn placeholders_in_headers_and_the_address_are_filled_and_a_secret_token_stays_hidden() {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = received.clone();
    let endpoint = Endpoint::start(move |request| {
        recorded.lock().unwrap().push(request.clone());
        response(
            "401 Unauthorized",
            "text/plain",
            echo(request).as_bytes(),
            true,
        )
    });
    let argo = format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: tenant-rate}}
spec:
  args:
  - name: prometheus-host
    value: "127.0.0.1:{port}"
  - name: tenant
  - name: token
    valueFrom:
      secretKeyRef: {{name: prom, key: bearer-token}}
  metrics:
  - name: rate
    successCondition: result[0] >= 0
    provider:
      prometheus:
        address: http://{{{{args.prometheus-host}}}}
        headers:
        - key: X-Scope-OrgID
          value: "{{{{args.tenant}}}}"
        - key: Authorization
          value: "Bearer {{{{args.token}}}}"
        query: sum(rate(x{{namespace="{{{{args.tenant}}}}"}}[5m]))
"#,
        port = endpoint.port()
    );
    let documents = canary::analysis::import::read_documents(&argo).unwrap();
    let template = documents[0].outcome.as_ref().expect("the template is read");
    assert!(!template.has_errors(), "{:#?}", template.notes);
    struct Token;
    impl SecretValues for Token {
        fn secret_value(&self, reference: &SecretKeyRef) -> Result<String, String> {
            assert_eq!(reference.key, "bearer-token");
            Ok("eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.sig-value".into())
        }
    }
    let analysis = prepare(
        "tenant-rate",
        &template.spec,
        &BTreeMap::from([("tenant".to_string(), "team-a".to_string())]),
        &BTreeMap::new(),
        None,
        &Token,
    )
    .unwrap_or_else(|problems| panic!("the template does not prepare: {problems:#?}"));
    let report = measure_once(&analysis).await;

    let requests = received.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "the templated address was reached");
    let head = requests[0].head.to_lowercase();
    assert!(head.contains("x-scope-orgid: team-a"), "{head}");
    assert!(
        head.contains("authorization: bearer eyjhbgcioijiuzi1nij9.c2vjcmv0.sig-value"),
        "{head}"
    );
    assert!(!head.contains("{{"), "{head}");
    let json = serde_json::to_string(&report).unwrap();
    for secret in ["eyJhbGciOiJIUzI1NiJ9", "sig-value"] {
        assert!(!json.contains(secret), "{secret} shown in {json}");
    }
    assert!(json.contains("401 Unauthorized"), "{json}");
    assert!(
        !format!("{analysis:?}").contains("sig-value"),
        "{analysis:?}"
    );
}

/// A token written into the template, directly or through an argument with a plain value,
/// is still refused; only an argument from a Secret may carry it.
#[test]
fn a_credential_header_takes_its_token_only_from_a_secret_argument() {
    let with = |token_arg: &str, header: &str| {
        template(&format!(
            r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: t}}
spec:
  args: [{token_arg}]
  metrics:
  - name: m
    successCondition: result[0] >= 0.0
    provider:
      prometheus:
        address: http://prometheus:9090
        headers: [{{name: Authorization, value: "{header}"}}]
        query: up
"#
        ))
    };
    let problems = |template: &AnalysisTemplate| {
        prepare(
            "t",
            &template.spec,
            &BTreeMap::new(),
            &BTreeMap::new(),
            None,
            &Secrets,
        )
        .err()
        .unwrap_or_default()
    };
    let secret_arg = "{name: token, valueFrom: {secretKeyRef: {name: prom, key: bearer}}}";
    assert_eq!(
        problems(&with(secret_arg, "Bearer {{args.token}}")),
        Vec::new()
    );
    for (arg, header) in [
        (secret_arg, "Bearer abc123literal"),
        (
            "{name: token, value: abc123literal}",
            "Bearer {{args.token}}",
        ),
        ("{name: token}", "Bearer {{args.token}}"),
    ] {
        let found = problems(&with(arg, header));
        assert_eq!(found.len(), 1, "{arg} {header}: {found:#?}");
        assert!(
            found[0].message.contains("Secret"),
            "{arg} {header}: {found:#?}"
        );
        assert!(!found[0].message.contains("abc123literal"), "{found:#?}");
    }
}
