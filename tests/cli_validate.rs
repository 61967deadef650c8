//! `canary validate` as users run it: the binary, on real files.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/cluster.rs"]
mod cluster;

use cli::{canary, stdout};

#[test]
fn accepts_the_argo_and_flagger_documentation_examples() {
    let output = canary(&[
        "validate",
        "tests/fixtures/argo/success-rate.yaml",
        "tests/fixtures/argo/analysis-features.yaml",
        "tests/fixtures/flagger/linkerd-latency.yaml",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("AnalysisTemplate success-rate: ok"), "{text}");
    // Conversions are shown, not hidden.
    assert!(
        text.contains("converted to CEL `result.all(x, x < 500.0) && ! isNaN(result[0])`"),
        "{text}"
    );
    assert!(
        text.contains("MetricTemplate grpc-error-rate-percentage: warning"),
        "{text}"
    );
}

#[test]
fn reports_every_problem_of_a_broken_template_at_once() {
    let output = canary(&["validate", "tests/fixtures/canary/broken.yaml"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    let expected = [
        "spec.metrics[0] (typo).sucessCondition: unknown field",
        "metric bad-cel: spec.metrics[1].successCondition: `result[0] >=` is not valid CEL",
        "metric int-equality: spec.metrics[2].successCondition: `result[0] == 0` compares a result with the whole number 0",
        "metric undeclared-arg: spec.metrics[3].provider.prometheus.query: {{args.job}} is used but the template declares no argument \"job\"",
        "spec.metrics[4]: a metric needs successCondition, failureCondition, thresholdRange or compare",
        "spec.metrics[5].thresholdRange: thresholdRange.min must not be greater than max",
        "spec.metrics[5] (bad-range): invalid duration \"5 minutes\"",
    ];
    for line in expected {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("no measurement can pass or fail").count(),
        1,
        "{text}"
    );
}

#[test]
fn reports_each_bad_judge_setting_once() {
    let output = canary(&["validate", "tests/fixtures/canary/bad-judge.yaml"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    // What the CRD's rules say, `prepare` does not repeat; what only `prepare` checks, it says.
    let expected = [
        (
            "spec.metrics[0].compare: compare.judge.alpha must be in (0, 0.5)",
            "alpha",
        ),
        (
            "spec.metrics[0].compare: compare.weight must be between 0.01 and 1000",
            "weight",
        ),
        (
            "spec.metrics[1].compare: compare.judge tolerances must be in [0, 10]",
            "olerance",
        ),
        (
            "metric noise: spec.metrics[2].compare.judge.maxIntervalNoiseCv: sequential judge setting `maxIntervalNoiseCv` is 9, but must be in [0, 3]",
            "maxIntervalNoiseCv",
        ),
        (
            "metric thresholds: spec.metrics[3].compare.judge.latencyBoundaries: sequential judge setting `latencyBoundaries` is 0.25, but must be positive and greater than the boundary before it",
            "latencyBoundaries",
        ),
    ];
    for (line, _) in expected {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(text.lines().count(), expected.len(), "{text}");
    for (_, setting) in expected {
        let lines = text.lines().filter(|line| line.contains(setting)).count();
        assert_eq!(lines, 1, "{setting} in:\n{text}");
    }
}

#[test]
fn rejects_what_cannot_be_converted_and_says_why() {
    let output = canary(&[
        "validate",
        "tests/fixtures/argo/oauth2.yaml",
        "tests/fixtures/argo/datadog.yaml",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("authentication: sigv4/oauth2 authentication is not supported"),
        "{text}"
    );
    assert!(
        text.contains("spec.metrics[0].provider: provider datadog (Datadog) is not supported: a metric here is measured with graphite, influxdb, job, prometheus, web"),
        "{text}"
    );
}

#[test]
fn converted_templates_are_valid_canary_templates() {
    let output = canary(&[
        "validate",
        "--convert",
        "tests/fixtures/argo/analysis-features.yaml",
        "tests/fixtures/argo/success-rate.yaml",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let converted = stdout(&output);
    assert!(
        converted.contains("apiVersion: canary.dev/v1alpha1"),
        "{converted}"
    );
    assert!(
        converted.contains("kind: ClusterAnalysisTemplate"),
        "{converted}"
    );
    assert!(converted.contains("dryRun: true"), "{converted}");
    assert!(converted.contains("secretKeyRef"), "{converted}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("converted.yaml");
    std::fs::write(&path, &converted).unwrap();
    let again = canary(&["validate", path.to_str().unwrap()]);
    let text = stdout(&again);
    assert_eq!(again.status.code(), Some(0), "{text}\n{converted}");
    assert_eq!(text.matches(": ok").count(), 2, "{text}");
}

#[test]
fn json_output_has_the_documented_shape() {
    let output = canary(&[
        "validate",
        "-o",
        "json",
        "tests/fixtures/canary/broken.yaml",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["valid"], false);
    let findings = json["files"][0]["documents"][0]["findings"]
        .as_array()
        .unwrap();
    assert!(findings.len() >= 7, "{findings:?}");
    assert!(
        findings
            .iter()
            .all(|f| f["severity"] == "error" && f["field"].is_string())
    );
}

#[test]
fn missing_and_malformed_files_are_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "metrics: [unclosed").unwrap();
    let output = canary(&["validate", "no-such-file.yaml", bad.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("no-such-file.yaml: error: cannot read the file"),
        "{text}"
    );
    assert!(text.contains("bad.yaml: error: not valid YAML"), "{text}");
}

#[test]
fn the_replica_canary_example_is_valid() {
    let output = canary(&["validate", "deploy/examples/replica-canary.yaml"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("Canary order-service: ok"), "{text}");
    assert!(
        text.contains("AnalysisTemplate order-service-success-rate: ok"),
        "{text}"
    );
}

#[test]
fn the_gateway_api_example_is_valid() {
    let output = canary(&["validate", "deploy/examples/gateway-api-canary.yaml"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("Canary web: ok"), "{text}");
    assert!(text.contains("AnalysisTemplate success-rate: ok"), "{text}");
}

#[test]
fn validates_a_whole_manifest_with_its_canary_and_skips_other_kinds() {
    let output = canary(&["validate", "deploy/examples/istio-canary.yaml"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("Canary web: ok"), "{text}");
    assert!(
        text.contains("VirtualService web: warning: apiVersion/kind: skipped"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("canary.yaml");
    std::fs::write(
        &broken,
        "apiVersion: canary.dev/v1alpha1\nkind: Canary\nmetadata: {name: web}\nspec:\n  targetRef: {name: web}\n  service: {port: 8080}\n  trafficRouting: {istio: {virtualService: {name: web}, destinationRule: {name: web}}}\n  steps: [{setWeight: 50}, {setWeight: 10}]\n  stepWeigth: 5\n",
    )
    .unwrap();
    let output = canary(&["validate", broken.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("setWeight steps must not decrease"), "{text}");
    assert!(text.contains("spec.stepWeigth: unknown field"), "{text}");
}

#[test]
fn names_the_mistakes_of_compare_metrics() {
    let output = canary(&["validate", "tests/fixtures/canary/broken-compare.yaml"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    let expected = [
        "metric rate-not-counter: spec.metrics[0].compare.requests: the query uses rate(...): a comparison reads raw counters",
        "metric same-series: spec.metrics[1].compare.latencyBuckets: the query reads the same series for canary and stable",
        "errorTolerence",
    ];
    for line in expected {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn explains_a_canary_with_two_routers_or_none_that_fits_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, spec: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: canary.dev/v1alpha1\nkind: Canary\nmetadata: {{name: web}}\nspec:\n  targetRef: {{name: web}}\n  service: {{port: 8080}}\n{spec}"
            ),
        )
        .unwrap();
        path
    };
    let header_step = "  steps:\n  - setHeaderRoute: {name: testers, match: [{headerName: canary, headerValue: {exact: 'true'}}]}\n  - setWeight: 10\n";
    let cases = [
        (
            "two.yaml",
            format!(
                "  trafficRouting:\n    istio: {{virtualService: {{name: web}}, destinationRule: {{name: web}}}}\n    gatewayAPI: {{httpRoute: web, stableService: web-stable, canaryService: web-canary}}\n{header_step}"
            ),
            "trafficRouting names exactly one router: istio or gatewayAPI",
        ),
        (
            "none.yaml",
            format!("  trafficRouting: {{}}\n{header_step}"),
            "trafficRouting names exactly one router",
        ),
        (
            "replicas.yaml",
            header_step.to_string(),
            "spec.steps[0].setHeaderRoute: without spec.trafficRouting the traffic is split by replicas behind one Service, which cannot route by header",
        ),
    ];
    for (file, spec, expected) in cases {
        let output = canary(&["validate", write(file, &spec).to_str().unwrap()]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(2), "{file}: {text}");
        assert!(text.contains(expected), "{file}: {text}");
    }
    // No router, for plain weights, is valid.
    // Each router alone serves them; no router, plain weights.
    for (file, spec) in [
        (
            "istio.yaml",
            format!(
                "  trafficRouting:\n    istio: {{virtualService: {{name: web}}, destinationRule: {{name: web}}}}\n{header_step}"
            ),
        ),
        (
            "gateway.yaml",
            format!(
                "  trafficRouting:\n    gatewayAPI: {{httpRoute: web, stableService: web-stable, canaryService: web-canary}}\n{header_step}"
            ),
        ),
        ("plain.yaml", "  steps: [{setWeight: 10}]\n".to_string()),
    ] {
        let output = canary(&["validate", write(file, &spec).to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{file}: {}", stdout(&output));
    }
}

// -- Canaries: the CRD's schema and CEL rules, as the API server runs them -------------------

/// A valid Canary with `change` merged into its spec (`null` removes a field).
fn canary_document(change: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "targetRef": {"name": "web"},
        "service": {"port": 8080},
        "trafficRouting": {"istio": {
            "virtualService": {"name": "web"}, "destinationRule": {"name": "web"},
        }},
        "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 50}],
    });
    for (key, value) in change.as_object().unwrap() {
        if value.is_null() {
            spec.as_object_mut().unwrap().remove(key);
        } else {
            spec[key] = value.clone();
        }
    }
    serde_json::json!({
        "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": "web"},
        "spec": spec,
    })
}

/// Bad Canaries: (name, spec change, what `canary validate` says, what the API server's
/// refusal names — `None` when only the local check is asserted).
fn bad_canaries() -> Vec<(
    &'static str,
    serde_json::Value,
    &'static str,
    Option<&'static str>,
)> {
    use serde_json::json;
    vec![
        (
            "a weight over 100",
            json!({"steps": [{"setWeight": 150}]}),
            "spec.steps[0].setWeight: must be at most 100 (is 150)",
            Some("spec.steps[0].setWeight"),
        ),
        (
            "two routers",
            json!({"trafficRouting": {
                "istio": {"virtualService": {"name": "web"}, "destinationRule": {"name": "web"}},
                "gatewayAPI": {"httpRoute": "web", "stableService": "s", "canaryService": "c"},
            }}),
            "spec.trafficRouting: trafficRouting names exactly one router",
            Some("trafficRouting names exactly one router"),
        ),
        (
            "pause and setWeight in one step",
            json!({"steps": [{"setWeight": 10, "pause": {}}]}),
            "spec.steps: each step has exactly one of setWeight, pause, analysis or setHeaderRoute",
            Some("each step has exactly one of"),
        ),
        (
            "decreasing weights",
            json!({"steps": [{"setWeight": 50}, {"setWeight": 10}]}),
            "spec.steps: setWeight steps must not decrease",
            Some("setWeight steps must not decrease"),
        ),
        (
            "port 0",
            json!({"service": {"port": 0}}),
            "spec.service.port: must be at least 1 (is 0)",
            Some("spec.service.port"),
        ),
        (
            "a progress deadline under 10 s",
            json!({"progressDeadlineSeconds": 5}),
            "spec.progressDeadlineSeconds: must be at least 10 (is 5)",
            Some("spec.progressDeadlineSeconds"),
        ),
        (
            "65 steps",
            json!({"steps": (0..65).map(|_| json!({"setWeight": 10})).collect::<Vec<_>>()}),
            "spec.steps: must have at most 64 items (has 65)",
            Some("spec.steps"),
        ),
        (
            "no targetRef",
            json!({"targetRef": null}),
            "spec.targetRef: is required",
            Some("spec.targetRef"),
        ),
        (
            "an empty target name",
            json!({"targetRef": {"name": ""}}),
            "spec.targetRef.name: must be at least 1 characters long (is 0)",
            Some("spec.targetRef.name"),
        ),
        (
            "an unknown failure policy",
            json!({"onAnalysisFailure": "explode"}),
            "spec.onAnalysisFailure: unsupported value \"explode\": use one of \"rollback\", \"pause\"",
            None,
        ),
        (
            "blue-green beside steps",
            json!({"strategy": {"blueGreen": {"activeService": "web"}}}),
            "spec: strategy.blueGreen switches Services instead of walking steps: remove steps",
            Some("strategy.blueGreen switches Services instead of walking steps"),
        ),
        (
            "blue-green without an active Service",
            json!({"steps": null, "trafficRouting": null, "strategy": {"blueGreen": {"previewService": "web-preview"}}}),
            "spec.strategy.blueGreen.activeService: is required",
            Some("spec.strategy.blueGreen.activeService"),
        ),
        (
            "a duration in words",
            json!({"steps": [{"setWeight": 10}, {"pause": {"duration": "5 minutes"}}]}),
            "spec.steps[1].pause.duration: \"5 minutes\" does not match the pattern",
            None,
        ),
    ]
}

#[test]
fn refuses_the_canaries_the_api_server_refuses_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, document: &serde_json::Value| {
        let path = dir.path().join(format!("{}.yaml", name.replace(' ', "-")));
        std::fs::write(&path, serde_json::to_string_pretty(document).unwrap()).unwrap();
        canary(&["validate", path.to_str().unwrap()])
    };
    let good = check("good", &canary_document(serde_json::json!({})));
    assert_eq!(good.status.code(), Some(0), "{}", stdout(&good));
    assert!(
        stdout(&good).contains("Canary web: ok"),
        "{}",
        stdout(&good)
    );
    for (name, change, expected, _) in bad_canaries() {
        let output = check(name, &canary_document(change));
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {text}");
        assert!(
            text.contains(&format!("Canary web: error: {expected}")),
            "{name}: expected {expected:?} in:\n{text}"
        );
        assert_eq!(text.lines().count(), 1, "{name}: said once:\n{text}");
    }
}

#[tokio::test]
async fn the_api_server_refuses_the_same_canaries() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let ns = cluster::cluster().namespace("validate-agree").await;
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("canary.dev", "v1alpha1", "Canary"));
    let api: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let create = |document: serde_json::Value| {
        let api = api.clone();
        let dry_run = dry_run.clone();
        async move {
            let object: DynamicObject = serde_json::from_value(document).unwrap();
            api.create(&dry_run, &object).await
        }
    };
    create(canary_document(serde_json::json!({})))
        .await
        .expect("the API server accepts the valid Canary");
    for (name, change, _, refusal) in bad_canaries() {
        let Some(refusal) = refusal else { continue };
        let error = create(canary_document(change))
            .await
            .expect_err(&format!("the API server accepted {name}"));
        assert!(
            error.to_string().contains(refusal),
            "{name}: the API server said {error}"
        );
    }
}

/// Placeholders in the address and in header values are rendered and checked like the query's:
/// the template is valid as written (a token by reference through a Secret-backed argument),
/// and a value that makes no URL is reported on the address.
#[test]
fn renders_placeholders_in_the_address_and_headers() {
    let file = "tests/fixtures/argo/tenant-headers.yaml";
    let output = canary(&["validate", file]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("AnalysisTemplate tenant-success-rate: ok"),
        "{text}"
    );
    let output = canary(&["validate", file, "--arg", "prometheus=mimir:9009"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("spec.metrics[0].provider.prometheus.address: {{args.prometheus}} renders to \"mimir:9009\", which is not an http:// or https:// URL"),
        "{text}"
    );
    let output = canary(&["validate", file, "--arg", "tenant=a\nX-Other: 1"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("headers[0].value (X-Scope-OrgID): the value of args.tenant contains a line break or control character"), "{text}");
}
