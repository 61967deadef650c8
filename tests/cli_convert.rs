//! `canary convert` (and `canary validate --convert`, the same conversion) as users run it: the
//! binary, on real Argo Rollouts and Flagger manifests.

#[path = "support/cli.rs"]
mod cli;

use cli::{canary, stdout};

const SEED: &str = "tests/fixtures/convert/seed-bluegreen-rollout.yaml";

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(yaml).expect("the output is a YAML stream")
}

#[test]
fn converts_the_seed_rollout_into_a_deployment_a_canary_and_its_template() {
    let output = canary(&["convert", SEED]);
    let (yaml, report) = (stdout(&output), stderr(&output));
    assert_eq!(output.status.code(), Some(0), "{report}");
    let kinds: Vec<String> = documents(&yaml)
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Deployment api-server",
            "Canary api-server",
            "AnalysisTemplate success-rate"
        ]
    );
    // The notes go to stderr, by field; stdout is only what to apply.
    assert!(
        report.contains("Rollout api-server: warning: spec.service.port: set to 3000"),
        "{report}"
    );
    assert!(!yaml.contains("warning"), "{yaml}");

    // The converted stream is valid as canary validate sees it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("converted.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let again = canary(&["validate", path.to_str().unwrap()]);
    let text = stdout(&again);
    assert!(text.contains("AnalysisTemplate success-rate: ok"), "{text}");

    // validate, without --convert, says where a Rollout is read.
    let text = stdout(&canary(&["validate", SEED]));
    assert!(
        text.contains("Rollout api-server: warning: apiVersion/kind: skipped: argoproj.io/v1alpha1 Rollout is not a template; `canary convert`"),
        "{text}"
    );
}

#[test]
fn validate_convert_is_the_same_conversion() {
    for files in [
        &[SEED][..],
        &["tests/fixtures/convert/flagger/istio-progressive-delivery.yaml"][..],
        &[
            "tests/fixtures/argo/analysis-features.yaml",
            "tests/fixtures/argo/success-rate.yaml",
        ][..],
    ] {
        let convert = canary(&[&["convert"][..], files].concat());
        let validate = canary(&[&["validate", "--convert"][..], files].concat());
        assert_eq!(stdout(&convert), stdout(&validate), "{files:?}");
        assert_eq!(stderr(&convert), stderr(&validate), "{files:?}");
        assert_eq!(convert.status.code(), validate.status.code(), "{files:?}");
    }
}

#[test]
fn exits_2_when_something_cannot_be_carried_as_it_behaves_and_still_prints_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollout.yaml");
    std::fs::write(
        &path,
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}\n  strategy:\n    canary:\n      trafficRouting: {alb: {ingress: web}}\n      steps: [{setWeight: 50}]\n",
    )
    .unwrap();
    let output = canary(&["convert", path.to_str().unwrap()]);
    let report = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{report}");
    assert!(
        report.contains("error: spec.strategy.canary.trafficRouting.alb: no alb router"),
        "{report}"
    );
    assert!(stdout(&output).contains("kind: Canary"));
}

#[test]
fn json_output_has_the_objects_and_every_note() {
    let output = canary(&[
        "convert",
        "-o",
        "json",
        "tests/fixtures/convert/flagger/istio-progressive-delivery.yaml",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["converted"], true);
    assert_eq!(json["objects"][0]["kind"], "Canary");
    assert_eq!(json["objects"][1]["kind"], "AnalysisTemplate");
    let notes = json["documents"][0]["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["field"] == "spec.analysis.webhooks[1]"
                && n["severity"] == "warning"
                && n["message"].as_str().unwrap().contains("webhook load-test")),
        "{notes:?}"
    );
}

#[test]
fn help_explains_what_is_read_and_the_exit_codes() {
    let output = canary(&["convert", "--help"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0));
    for part in ["Argo Rollouts", "Flagger", "not be carried", "Exit codes"] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    let top = stdout(&canary(&["--help"]));
    assert!(top.contains("convert"), "{top}");
}

/// A template whose provider we lack is named in an error, and the conversion ends with one
/// line per unsupported provider naming the documents that use it (in JSON too).
#[test]
fn lists_each_provider_that_is_not_supported() {
    let files = [
        "tests/fixtures/peer-templates/argo/docs-analysis-datadog--01-loq-error-rate.yaml",
        "tests/fixtures/peer-templates/argo/docs-analysis-newrelic--01-success-rate.yaml",
        "tests/fixtures/peer-templates/flagger/docs-gitbook-usage-metrics--13-response-time-95pct.yaml",
    ];
    let mut args = vec!["validate", "--convert"];
    args.extend(files);
    let output = canary(&args);
    let report = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{report}");
    assert!(
        report.contains(
            "error: spec.metrics[0].provider: provider datadog (Datadog) is not supported"
        ),
        "{report}"
    );
    for (provider, file) in [
        ("datadog", files[0]),
        ("newRelic", files[1]),
        ("dynatrace", files[2]),
    ] {
        assert!(
            report.contains(&format!(
                "provider {provider} is not supported, not converted: {file}[0]"
            )),
            "{provider} in {report}"
        );
    }
    let mut args = vec!["convert", "-o", "json"];
    args.extend(files);
    let output = canary(&args);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let listed: Vec<&str> = json["unsupportedProviders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["provider"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["datadog", "newRelic", "dynatrace"]);
}
