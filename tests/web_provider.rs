//! The `web` provider as users run it: Argo Rollouts' documented web templates, as written,
//! through `canary analyze`, against a real HTTP server on loopback.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/http_endpoint.rs"]
mod http_endpoint;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cli::{all_output, canary};
use http_endpoint::{Endpoint, Received, response};

/// An endpoint that answers every request with `answer` and keeps what it received.
fn endpoint(answer: Vec<u8>) -> (Endpoint, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    let endpoint = Endpoint::start(move |request| {
        kept.lock().unwrap().push(request.clone());
        answer.clone()
    });
    (endpoint, received)
}

fn json_answer(body: &str) -> Vec<u8> {
    response("200 OK", "application/json", body.as_bytes(), true)
}

/// Writes `yaml` (with `URL` replaced by `url`) to a file and runs `canary analyze --once`
/// on it with `args`; returns the exit code and the JSON report.
fn analyze(yaml: &str, url: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("template.yaml");
    std::fs::write(&file, yaml.replace("URL", url)).unwrap();
    let mut command = vec![
        "analyze",
        "-f",
        file.to_str().unwrap(),
        "--once",
        "--output",
        "json",
    ];
    for arg in args {
        command.extend(["--arg", arg]);
    }
    let output = canary(&command);
    let text = all_output(&output);
    let report = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), report, text)
}

fn measurement(report: &serde_json::Value) -> &serde_json::Value {
    &report["report"]["metrics"][0]["measurements"][0]
}

/// Argo Rollouts' documentation example (analysis/web), with the token argument from a Secret.
const ARGO_WEB_EXAMPLE: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: webmetric
spec:
  args:
  - name: service-name
  - name: api-token
    valueFrom:
      secretKeyRef:
        name: token-secret
        key: apiToken
  metrics:
  - name: webmetric
    successCondition: "result.ok && result.successPercent >= 0.90"
    provider:
      web:
        url: "URL/api/v1/measurement?service={{ args.service-name }}"
        headers:
          - key: Authorization
            value: "Bearer {{ args.api-token }}"
        jsonPath: "{$.data}"
"#;

#[test]
fn argo_documented_web_template_measures_a_json_path_with_a_secret_header() {
    let (server, received) = endpoint(json_answer(
        r#"{"data": {"ok": true, "successPercent": 0.95}}"#,
    ));
    let (code, report, text) = analyze(
        ARGO_WEB_EXAMPLE,
        server.url(),
        &["service-name=check out&x=1", "api-token=t0ken-s3cret"],
    );
    assert_eq!(code, 0, "{text}");
    let m = measurement(&report);
    assert_eq!(m["phase"], "Successful", "{m}");
    assert_eq!(m["value"], r#"{"ok":true,"successPercent":0.95}"#, "{m}");
    assert!(!text.contains("t0ken-s3cret"), "{text}");
    let received = received.lock().unwrap();
    let head = &received[0].head;
    // The argument stays one query parameter, and the token arrives in the header.
    assert!(
        head.starts_with("GET /api/v1/measurement?service=check%20out%26x%3D1 HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_lowercase()
            .contains("authorization: bearer t0ken-s3cret"),
        "{head}"
    );
}

#[test]
fn a_result_below_the_condition_fails_and_nothing_at_the_path_is_inconclusive() {
    let (low, _) = endpoint(json_answer(
        r#"{"data": {"ok": true, "successPercent": 0.5}}"#,
    ));
    let (code, report, text) = analyze(
        ARGO_WEB_EXAMPLE,
        low.url(),
        &["service-name=web", "api-token=t0ken-s3cret"],
    );
    assert_eq!(code, 1, "{text}");
    assert_eq!(measurement(&report)["phase"], "Failed", "{text}");

    let (empty, _) = endpoint(json_answer(r#"{"other": 1}"#));
    let (code, report, text) = analyze(
        ARGO_WEB_EXAMPLE,
        empty.url(),
        &["service-name=web", "api-token=t0ken-s3cret"],
    );
    assert_eq!(code, 4, "{text}");
    let m = measurement(&report);
    assert_eq!(m["phase"], "Inconclusive", "{m}");
    assert!(m["reason"].as_str().unwrap().contains("no data"), "{m}");
}

/// Argo's POST form: `method`, `jsonBody` with an argument inside, `timeoutSeconds`, a boolean
/// at `jsonPath`.
#[test]
fn post_sends_the_json_body_with_arguments_escaped() {
    let (server, received) = endpoint(json_answer(r#"{"data": {"ok": true}}"#));
    let yaml = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: post
spec:
  args:
  - name: service
  metrics:
  - name: check
    successCondition: result == true
    provider:
      web:
        method: POST
        url: "URL/check"
        timeoutSeconds: 5
        jsonBody:
          service: "{{args.service}}"
          window: 5m
        jsonPath: "{$.data.ok}"
"#;
    let (code, report, text) = analyze(yaml, server.url(), &[r#"service=a"b"#]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(measurement(&report)["phase"], "Successful", "{text}");
    let received = received.lock().unwrap();
    assert!(received[0].head.starts_with("POST /check "), "{received:?}");
    assert!(
        received[0]
            .head
            .to_lowercase()
            .contains("content-type: application/json"),
        "{received:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"service": "a\"b", "window": "5m"}),
        "{received:?}"
    );
}

/// The rules every metrics request follows: no redirect is followed, what the endpoint
/// answers has the secret taken out, the metric's timeout bounds the request.
#[test]
fn redirects_echoed_secrets_and_slow_endpoints_are_errors_that_leak_nothing() {
    let (elsewhere, elsewhere_received) = endpoint(json_answer(r#"{"data": {}}"#));
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: {}/steal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        elsewhere.url()
    );
    let (redirecting, _) = endpoint(redirect.into_bytes());
    let (code, report, text) = analyze(
        ARGO_WEB_EXAMPLE,
        redirecting.url(),
        &["service-name=web", "api-token=t0ken-s3cret"],
    );
    assert_eq!(code, 4, "{text}");
    let reason = measurement(&report)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("redirects are not followed"), "{reason}");
    assert!(elsewhere_received.lock().unwrap().is_empty());

    // An error page that quotes the request back.
    let echo = Endpoint::start(|request| {
        response(
            "401 Unauthorized",
            "text/plain",
            format!("refused: {}", request.head).as_bytes(),
            true,
        )
    });
    let (code, report, text) = analyze(
        ARGO_WEB_EXAMPLE,
        echo.url(),
        &["service-name=web", "api-token=t0ken-s3cret"],
    );
    assert_eq!(code, 4, "{text}");
    let reason = measurement(&report)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("answered 401"), "{reason}");
    assert!(reason.contains("<secret:api-token>"), "{reason}");
    assert!(!text.contains("t0ken-s3cret"), "{text}");

    let slow = Endpoint::start(|_| {
        std::thread::sleep(Duration::from_secs(4));
        json_answer(r#"{"data": {"ok": true, "successPercent": 1}}"#)
    });
    let yaml = ARGO_WEB_EXAMPLE.replace(
        "        jsonPath:",
        "        timeoutSeconds: 1\n        jsonPath:",
    );
    let started = std::time::Instant::now();
    let (code, report, text) = analyze(
        &yaml,
        slow.url(),
        &["service-name=web", "api-token=t0ken-s3cret"],
    );
    assert_eq!(code, 4, "{text}");
    let reason = measurement(&report)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("did not answer within 1000 ms"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// `canary validate` names the field of each mistake in a web metric.
#[test]
fn validate_names_each_bad_web_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: bad-web
spec:
  metrics:
  - name: check
    successCondition: result == true
    provider:
      web:
        url: "http://checker.example:8080/x"
        headers:
        - key: Authorization
          value: "Bearer abc123"
        jsonPath: "{$.data[}"
"#,
    )
    .unwrap();
    let output = canary(&["validate", file.to_str().unwrap()]);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    for expected in [
        "provider.web.headers[0].value (Authorization)",
        "a credential is written into the template",
        "provider.web.jsonPath",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
}
