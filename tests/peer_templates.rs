//! The peers' own documented templates (`tests/fixtures/peer-templates/`: Argo Rollouts' docs,
//! examples and e2e tests, Flagger's docs, tutorials and e2e scripts, each file one document
//! copied unchanged with its source named in a header), read by `canary validate` and
//! `canary convert` as a user brings them:
//!
//! - each validates: no error, or only "provider X is not supported" for a provider canary
//!   lacks, or one of the refusals listed in [`REFUSED`], each with its reason;
//! - each convertible one converts faithfully: every metric keeps its query, address, window,
//!   interval, count and limits (Argo), or becomes the query Flagger would run with the
//!   variables mapped (Flagger), not just "no error".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use canary::analysis::import::{Severity, metric_name};
use canary::analysis::render;
use canary::analysis::validate::validate_text;
use canary::api::Duration;
use canary::convert::{Input, convert};
use serde_json::Value;

const FIXTURES: &str = "tests/fixtures/peer-templates";

/// Valid for their own tool, refused here on purpose: (file, field, what the error says).
const REFUSED: &[(&str, &str, &str)] = &[
    // A fragment of Argo's docs (headers only): a web metric needs its url.
    (
        "argo/docs-features-analysis--12-unnamed.yaml",
        "spec.metrics[0].provider.web",
        "missing field `url`",
    ),
    // Argo's InfluxDB provider reads its address and token from a `profile` Secret.
    (
        "argo/docs-analysis-influxdb--01-error-rate.yaml",
        "spec.metrics[0].provider.influxdb",
        "takes its address and token from a `profile` Secret, which is not converted",
    ),
    // Argo's Graphite docs write `results[0]`; the expression environment (Argo's and ours)
    // names the value `result`, so the condition is refused rather than guessed at.
    (
        "argo/docs-analysis-graphite--01-success-rate.yaml",
        "spec.metrics[0].successCondition",
        "uses the variable \"results\": conditions can only see `result`",
    ),
    // A range query's result is a matrix; an analysis judges an instant vector.
    (
        "argo/docs-analysis-prometheus--02-range-query-example.yaml",
        "spec.metrics[0].provider.prometheus.rangeQuery",
        "range queries are not supported",
    ),
    // SigV4 and OAuth2 need a token exchange canary does not do; a header from a Secret can.
    (
        "argo/docs-analysis-prometheus--03-success-rate.yaml",
        "spec.metrics[0].provider.prometheus.authentication",
        "sigv4/oauth2 authentication is not supported",
    ),
    (
        "argo/docs-analysis-prometheus--04-success-rate.yaml",
        "spec.metrics[0].provider.prometheus.authentication",
        "sigv4/oauth2 authentication is not supported",
    ),
    // Templates of templates: the Canary names the composed templates itself.
    (
        "argo/docs-features-analysis--07-rates.yaml",
        "spec.templates",
        "(AnalysisTemplate error-rate) is not supported: name those templates in the Canary's analysis",
    ),
    (
        "argo/docs-features-analysis--10-rates.yaml",
        "spec.templates",
        "(AnalysisTemplate success-rate, AnalysisTemplate error-rate) is not supported",
    ),
    // Arguments the Rollout passes, used where canary's template holds a fixed value.
    (
        "argo/test-e2e-functional-rollout-bg-analysis-withargs--01-analysis-secret.yaml",
        "spec.metrics[0].interval",
        "uses {{args.analysis-interval}} without a value in the template",
    ),
    (
        "argo/test-e2e-functional-rollout-secret-withargs--01-analysis-secret-args.yaml",
        "spec.metrics[0].failureLimit",
        "uses {{args.failure-limit}} without a value in the template",
    ),
    // A Go template expression: Flagger evaluates it, canary fills in names only.
    (
        "flagger/docs-gitbook-tutorials-skipper-progressive-delivery--01-latency.yaml",
        "spec.query",
        "`{{ printf \"kube(ew)?_%s__%s_canary__.*__%s_canary(_[0-9]+)?\" namespace ingress service }}` is a Go template expression",
    ),
];

fn fixtures() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES);
    let mut files: Vec<PathBuf> = ["argo", "flagger"]
        .iter()
        .flat_map(|peer| std::fs::read_dir(root.join(peer)).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

fn document(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("a fixture is one YAML document")
}

#[test]
fn every_fixture_names_its_source_repository_path_and_commit() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 80, "{} fixtures", fixtures.len());
    for (file, text) in &fixtures {
        let header = text.lines().next().unwrap_or_default();
        let repository = if file.starts_with("argo/") {
            "github.com/argoproj/argo-rollouts"
        } else {
            "github.com/fluxcd/flagger"
        };
        let commit = header.rsplit("commit ").next().unwrap_or_default();
        assert!(
            header.starts_with(&format!("# Source: {repository}, path "))
                && commit.len() == 40
                && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{file}: {header}"
        );
    }
}

/// Each fixture validates, or is refused only for a provider canary lacks or a listed reason.
#[test]
fn every_fixture_validates_or_is_refused_for_a_stated_reason() {
    let mut refused_as_listed = 0;
    let mut unsupported = 0;
    let mut ok = 0;
    for (file, text) in fixtures() {
        let reports = validate_text(&text, &BTreeMap::new()).unwrap();
        assert_eq!(reports.len(), 1, "{file}");
        let errors: Vec<_> = reports[0]
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        let listed: Vec<_> = REFUSED.iter().filter(|(f, _, _)| *f == file).collect();
        if !listed.is_empty() {
            for (_, field, said) in &listed {
                assert!(
                    errors
                        .iter()
                        .any(|e| e.field == *field && e.message.contains(said)),
                    "{file}: no error at {field} saying {said:?}: {errors:#?}"
                );
            }
            refused_as_listed += 1;
            continue;
        }
        let provider_errors = errors
            .iter()
            .filter(|e| e.field.ends_with(".provider") || e.field == "spec.provider.type")
            .count();
        for e in &errors {
            assert!(
                (e.field.ends_with(".provider") || e.field == "spec.provider.type")
                    && e.message.starts_with("provider ")
                    && e.message
                        .contains(" is not supported: a metric here is measured with "),
                "{file}: an error that is neither an unsupported provider nor listed: {e:#?}"
            );
        }
        if provider_errors > 0 {
            unsupported += 1;
        } else {
            ok += 1;
        }
    }
    eprintln!(
        "valid {ok}, unsupported provider {unsupported}, refused as listed {refused_as_listed}"
    );
    assert_eq!(refused_as_listed, REFUSED.len(), "files listed in REFUSED");
    assert!(ok >= 30, "{ok} valid");
}

/// The converted template (by `canary convert`) of each fixture that converts.
fn converted(file: &str, text: &str) -> Option<Value> {
    let conversion = convert(&[Input {
        file: file.to_string(),
        text: text.to_string(),
    }]);
    if conversion.has_errors() {
        return None;
    }
    let objects: Vec<&Value> = conversion.objects().collect();
    assert_eq!(objects.len(), 1, "{file}");
    Some(objects[0].clone())
}

fn duration(value: &Value) -> Duration {
    match value {
        Value::Number(n) => Duration::from_secs(n.as_u64().unwrap()),
        Value::String(s) => s
            .parse::<u64>()
            .map(Duration::from_secs)
            .unwrap_or_else(|_| s.parse().unwrap()),
        other => panic!("not a duration: {other}"),
    }
}

fn number(value: &Value) -> u64 {
    match value {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        other => panic!("not a number: {other}"),
    }
}

/// The value of `{{args.NAME}}` written in the template, or the text itself.
fn resolved(value: &Value, args: &BTreeMap<String, Value>) -> Value {
    match value.as_str().and_then(|s| {
        s.trim()
            .strip_prefix("{{")?
            .strip_suffix("}}")?
            .trim()
            .strip_prefix("args.")
    }) {
        Some(name) => args[name.trim()].clone(),
        None => value.clone(),
    }
}

#[test]
fn every_convertible_argo_fixture_keeps_each_metric_as_argo_runs_it() {
    let mut checked = 0;
    for (file, text) in fixtures()
        .into_iter()
        .filter(|(f, _)| f.starts_with("argo/"))
    {
        let Some(ours) = converted(&file, &text) else {
            continue;
        };
        let argo = document(&text);
        assert_eq!(ours["apiVersion"], "canary.dev/v1alpha1", "{file}");
        assert_eq!(ours["kind"], argo["kind"], "{file}");
        let args: BTreeMap<String, Value> = argo["spec"]["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a["name"].as_str()?.to_string(), a.get("value")?.clone())))
            .collect();
        let theirs = argo["spec"]["metrics"].as_array().unwrap();
        let mine = ours["spec"]["metrics"].as_array().unwrap();
        assert_eq!(theirs.len(), mine.len(), "{file}");
        for (a, m) in theirs.iter().zip(mine) {
            let context = format!("{file}: {a}\n→ {m}");
            assert_eq!(
                m["name"],
                metric_name(a["name"].as_str().unwrap()),
                "{context}"
            );
            let (p, q) = (&a["provider"]["prometheus"], &m["provider"]["prometheus"]);
            assert_eq!(q["query"], p["query"], "{context}");
            assert_eq!(q.get("address"), p.get("address"), "{context}");
            match a.get("interval") {
                Some(i) => assert_eq!(
                    duration(&m["interval"]),
                    duration(&resolved(i, &args)),
                    "{context}"
                ),
                None => assert!(m.get("interval").is_none(), "{context}"),
            }
            let count = match (a.get("count"), a.get("interval")) {
                (Some(c), _) => Some(number(&resolved(c, &args))),
                (None, None) => Some(1),
                (None, Some(_)) => None,
            };
            assert_eq!(m.get("count").map(number), count, "{context}");
            for limit in ["failureLimit", "inconclusiveLimit", "consecutiveErrorLimit"] {
                assert_eq!(
                    m.get(limit).map(number),
                    a.get(limit).map(|l| number(&resolved(l, &args))),
                    "{limit} in {context}"
                );
            }
            for condition in ["successCondition", "failureCondition"] {
                assert_eq!(
                    m.get(condition).is_some(),
                    a.get(condition).is_some(),
                    "{condition} in {context}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} metrics checked");
}

/// Representative conversions, field by field.
#[test]
fn representative_argo_fixtures_convert_to_these_metrics() {
    let cases = [
        (
            "argo/docs-analysis-prometheus--01-success-rate.yaml",
            "/spec/metrics/0/successCondition",
            "result[0] >= 0.95",
        ),
        (
            "argo/docs-features-analysis--01-success-rate.yaml",
            "/spec/metrics/0/successCondition",
            "result[0] >= 0.95",
        ),
        (
            "argo/docs-features-analysis--01-success-rate.yaml",
            "/spec/metrics/0/interval",
            "5m",
        ),
    ];
    let fixtures: BTreeMap<String, String> = fixtures().into_iter().collect();
    for (file, pointer, expected) in cases {
        let ours = converted(file, &fixtures[file]).unwrap_or_else(|| panic!("{file} converts"));
        assert_eq!(
            ours.pointer(pointer).and_then(Value::as_str),
            Some(expected),
            "{file}: {ours}"
        );
    }
}

#[test]
fn every_convertible_flagger_fixture_becomes_the_query_flagger_runs() {
    let mut checked = 0;
    for (file, text) in fixtures()
        .into_iter()
        .filter(|(f, _)| f.starts_with("flagger/"))
    {
        let flagger = document(&text);
        if flagger["spec"]["provider"]["type"] != "prometheus" {
            continue;
        }
        let conversion = convert(&[Input {
            file: file.clone(),
            text: text.clone(),
        }]);
        // Alone, a MetricTemplate has no threshold (Flagger keeps it in the Canary): the
        // converted metric is printed once a Canary gives it one. Validation read it whole.
        let reports = validate_text(&text, &BTreeMap::new()).unwrap();
        if reports[0].has_errors() {
            // Refused, and said so: see every_fixture_validates_or_is_refused_for_a_stated_reason.
            continue;
        }
        let template = reports[0].template.as_ref().expect("read");
        let metric = &template.spec.metrics[0];
        let query = flagger["spec"]["query"].as_str().unwrap();
        let mut expected = query.to_string();
        for (flagger_form, ours) in [
            ("{{ target }}", "{{workload}}".to_string()),
            ("{{target}}", "{{workload}}".to_string()),
        ] {
            expected = expected.replace(flagger_form, &ours);
        }
        for variable in render::placeholders(query) {
            if let Some(name) = variable.strip_prefix("variables.") {
                for written in [
                    format!("{{{{ {variable} }}}}"),
                    format!("{{{{{variable}}}}}"),
                ] {
                    expected = expected.replace(&written, &format!("{{{{args.{name}}}}}"));
                }
            }
        }
        for placeholder in ["name", "service", "ingress", "route"] {
            for written in [
                format!("{{{{ {placeholder} }}}}"),
                format!("{{{{{placeholder}}}}}"),
            ] {
                expected = expected.replace(&written, &format!("{{{{args.{placeholder}}}}}"));
            }
        }
        assert_eq!(metric.provider.prometheus.query, expected, "{file}");
        assert_eq!(
            metric.provider.prometheus.address.as_deref(),
            flagger["spec"]["provider"]["address"].as_str(),
            "{file}"
        );
        assert!(!conversion.file_errors.iter().any(|_| true), "{file}");
        checked += 1;
    }
    assert!(checked >= 18, "{checked} Flagger templates checked");
}
