//! Reading template files: ours (`canary.dev/v1alpha1` AnalysisTemplate and
//! ClusterAnalysisTemplate), Argo Rollouts' (`argoproj.io/v1alpha1` AnalysisTemplate and
//! ClusterAnalysisTemplate) and Flagger's (`flagger.app/v1beta1` MetricTemplate), as they are.
//! Foreign templates are converted into our model; whatever cannot be carried over is reported,
//! never dropped silently.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::render;
use crate::api::analysis_template::{
    AnalysisTemplate, AnalysisTemplateSpec, Argument, ClusterAnalysisTemplate, Header, Metric,
    MetricProvider, PrometheusProvider, SecretKeyRef, ValueFrom,
};
use crate::api::{API_VERSION, Duration};

/// Where a template came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Origin {
    Canary,
    ArgoRollouts,
    Flagger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// Something to tell the user about a document, located by field path.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    pub severity: Severity,
    pub field: String,
    pub message: String,
}

/// A template read from a document, in our model.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedTemplate {
    pub origin: Origin,
    /// The kind as written in the document.
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// True for cluster-scoped kinds.
    pub cluster_scoped: bool,
    /// What could be read. Items that could not are left out and have an error note.
    pub spec: AnalysisTemplateSpec,
    /// Each metric's position in the document (items that failed to read shift the rest).
    pub metric_positions: Vec<usize>,
    /// Conversion notes, warnings and errors.
    pub notes: Vec<Note>,
}

impl ImportedTemplate {
    /// A template with errors must not run; `canary validate` still checks what could be read.
    pub fn has_errors(&self) -> bool {
        self.notes.iter().any(|n| n.severity == Severity::Error)
    }
}

/// One YAML document of a file: imported, or the reasons it could not be.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Zero-based index of the document in its file.
    pub index: usize,
    /// The document's `metadata.name`, when it could be read.
    pub name: Option<String>,
    /// The document's `kind`, as written.
    pub kind: Option<String>,
    pub outcome: Result<ImportedTemplate, Vec<Note>>,
}

/// Reads every document of a YAML file. A YAML syntax error fails the whole file.
pub fn read_documents(text: &str) -> Result<Vec<Document>, String> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(values
        .into_iter()
        .filter(|v| !v.is_null())
        .enumerate()
        .map(|(index, value)| read_document(index, value))
        .collect())
}

/// A document's `metadata.name` and `kind`, where it has them.
pub(crate) fn name_and_kind(value: &Value) -> (Option<String>, Option<String>) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    (
        text(value.pointer("/metadata/name")),
        text(value.get("kind")),
    )
}

/// One document, already parsed, at `index` of its file.
pub fn read_document(index: usize, value: Value) -> Document {
    let (name, kind) = name_and_kind(&value);
    Document {
        index,
        name,
        kind,
        outcome: import(value),
    }
}

pub(crate) fn error(field: impl Into<String>, message: impl Into<String>) -> Note {
    Note {
        severity: Severity::Error,
        field: field.into(),
        message: message.into(),
    }
}

pub(crate) fn warning(field: impl Into<String>, message: impl Into<String>) -> Note {
    Note {
        severity: Severity::Warning,
        field: field.into(),
        message: message.into(),
    }
}

fn import(value: Value) -> Result<ImportedTemplate, Vec<Note>> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        (API_VERSION, "AnalysisTemplate") => import_ours::<AnalysisTemplate>(value, false),
        (API_VERSION, "ClusterAnalysisTemplate") => {
            import_ours::<ClusterAnalysisTemplate>(value, true)
        }
        ("argoproj.io/v1alpha1", "AnalysisTemplate" | "ClusterAnalysisTemplate") => {
            import_argo(&value, kind)
        }
        ("flagger.app/v1beta1", "MetricTemplate") => import_flagger(&value),
        // Not a template, but ours: checked against its CRD so a manifest can be validated whole.
        (API_VERSION, "Canary") => Err(check_canary(value)),
        ("argoproj.io/v1alpha1", "Rollout") | ("flagger.app/v1beta1", "Canary") => {
            Err(vec![warning(
                "apiVersion/kind",
                format!(
                    "skipped: {api_version} {kind} is not a template; `canary convert` (or `canary validate --convert`) turns it into a Deployment and a Canary"
                ),
            )])
        }
        _ => Err(vec![warning(
            "apiVersion/kind",
            format!("skipped: {api_version} {kind} is neither an analysis template nor a Canary"),
        )]),
    }
}

/// A Canary's fields and the CRD's CEL rules; an empty list when it is valid.
pub fn check_canary(value: Value) -> Vec<Note> {
    let mut notes = crd_rule_violations::<crate::api::canary::Canary>(&value);
    let mut unknown = Vec::new();
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    let parsed: Result<crate::api::canary::CanarySpec, _> =
        serde_ignored::deserialize(spec, |path| unknown.push(path.to_string()));
    match parsed {
        // The schema's finding names the field; the reader's first error would say it again,
        // less precisely ("spec: unknown variant").
        Err(_) if !notes.is_empty() => {}
        Err(e) => notes.push(error("spec", e.to_string())),
        Ok(spec) => {
            let router = crate::routing::capabilities_of(&spec);
            if let Some(problem) = crate::rollout::unsupported_by_router(&spec, router) {
                let (field, message) = problem
                    .split_once(": ")
                    .unwrap_or(("steps", problem.as_str()));
                notes.push(error(format!("spec.{field}"), message));
            }
        }
    }
    notes.extend(
        unknown
            .iter()
            .map(|path| unknown_field(&format!("spec.{path}"))),
    );
    notes
}

/// Our own kinds. Each argument and metric is read on its own, so that every problem of the
/// document is reported at once; unknown fields are errors (a typo such as `sucessCondition` must
/// not silently disable a check); the CRD's own CEL rules run on the document as written.
fn import_ours<K>(value: Value, cluster_scoped: bool) -> Result<ImportedTemplate, Vec<Note>>
where
    K: kube::CustomResourceExt + kube::Resource<DynamicType = ()>,
{
    let mut notes = crd_rule_violations::<K>(&value);
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    match spec.as_object() {
        None => notes.push(error("spec", "the template has no spec")),
        Some(fields) => {
            for key in fields.keys().filter(|k| *k != "args" && *k != "metrics") {
                notes.push(unknown_field(&format!("spec.{key}")));
            }
        }
    }
    let (args, _) = parse_list::<Argument>(&spec, "args", &mut notes);
    let (metrics, metric_positions) = parse_list::<Metric>(&spec, "metrics", &mut notes);
    if spec.get("metrics").is_none() {
        notes.push(error(
            "spec.metrics",
            "a template needs at least one metric",
        ));
    }
    finish(
        &value,
        Origin::Canary,
        &K::kind(&()),
        cluster_scoped,
        AnalysisTemplateSpec { args, metrics },
        metric_positions,
        notes,
    )
}

/// Reads `spec.<key>[]` item by item; each failure becomes a note on that item. Returns the
/// items read and their positions.
fn parse_list<T: DeserializeOwned>(
    spec: &Value,
    key: &str,
    notes: &mut Vec<Note>,
) -> (Vec<T>, Vec<usize>) {
    let items = spec
        .get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut parsed = Vec::new();
    let mut positions = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let label = match item.get("name").and_then(Value::as_str) {
            Some(name) => format!("spec.{key}[{i}] ({name})"),
            None => format!("spec.{key}[{i}]"),
        };
        let mut unknown = Vec::new();
        match serde_ignored::deserialize(item, |path| unknown.push(path.to_string())) {
            Ok(value) => {
                parsed.push(value);
                positions.push(i);
            }
            Err(e) => notes.push(error(label.clone(), e.to_string())),
        }
        notes.extend(
            unknown
                .iter()
                .map(|path| unknown_field(&format!("{label}.{path}"))),
        );
    }
    (parsed, positions)
}

fn unknown_field(path: &str) -> Note {
    error(
        path,
        "unknown field: check its spelling against the CRD (`canary crds`)",
    )
}

/// The CRD's schema (types, bounds, enums, patterns, required fields) and its
/// `x-kubernetes-validations` rules, evaluated here as the API server would, on the CRD the
/// Rust types generate.
fn crd_rule_violations<K: kube::CustomResourceExt>(value: &Value) -> Vec<Note> {
    let crd = K::crd();
    let Some(schema) = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
    else {
        return Vec::new();
    };
    let mut notes: Vec<Note> = crate::api::schema_validation::violations(&schema, value)
        .into_iter()
        .map(|v| error(v.field, v.message))
        .collect();
    if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, value, None) {
        // A rule on a field that already breaks the schema (a duration that is no duration)
        // can only fail to evaluate; the schema's finding says why.
        let broken: Vec<String> = notes.iter().map(|n| n.field.clone()).collect();
        notes.extend(
            errors
                .into_vec()
                .into_iter()
                .filter(|e| !broken.contains(&e.field_path))
                .map(|e| error(e.field_path.clone(), e.message.clone())),
        );
    }
    notes
}

/// The spec as a `canary.dev` resource, for `canary validate --convert`.
pub fn to_canary_resource(template: &ImportedTemplate) -> Value {
    let kind = if template.cluster_scoped {
        "ClusterAnalysisTemplate"
    } else {
        "AnalysisTemplate"
    };
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(template.name.clone()));
    if let (Some(ns), false) = (&template.namespace, template.cluster_scoped) {
        metadata.insert("namespace".into(), Value::String(ns.clone()));
    }
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": metadata,
        "spec": template.spec,
    })
}

// ---------------------------------------------------------------------------------------------
// Argo Rollouts

fn import_argo(value: &Value, kind: &str) -> Result<ImportedTemplate, Vec<Note>> {
    let mut notes = Vec::new();
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    let dry_run_names: BTreeSet<String> = spec
        .get("dryRun")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            d.get("metricName")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    if spec.get("measurementRetention").is_some() {
        notes.push(warning(
            "spec.measurementRetention",
            "not converted: measurements are summarised in status instead",
        ));
    }
    let args = spec
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, arg)| argo_arg(i, arg, &mut notes))
        .collect();
    warn_unconverted(
        &spec,
        &[
            "args",
            "metrics",
            "dryRun",
            "measurementRetention",
            "templates",
        ],
        "spec",
        &mut notes,
    );
    let composed: Vec<String> = spec
        .get("templates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let name = t.get("templateName").and_then(Value::as_str).unwrap_or("?");
            match t.get("clusterScope").and_then(Value::as_bool) {
                Some(true) => format!("ClusterAnalysisTemplate {name}"),
                _ => format!("AnalysisTemplate {name}"),
            }
        })
        .collect();
    if !composed.is_empty() {
        // Never dropped silently: the composed templates' metrics would be missing from the run.
        notes.push(error(
            "spec.templates",
            format!(
                "a template composed of other templates ({}) is not supported: name those templates in the Canary's analysis (`templates: [{{templateName: …}}, …]`) beside this one's own metrics; the Canary runs every template it names together, as one analysis",
                composed.join(", ")
            ),
        ));
    }
    let arg_defaults: std::collections::BTreeMap<String, String> = spec
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a.get("name")?.as_str()?.to_string(),
                scalar_text(a.get("value")?),
            ))
        })
        .collect();
    let metrics_value = spec.get("metrics").and_then(Value::as_array);
    if metrics_value.is_none_or(|m| m.is_empty()) && composed.is_empty() {
        notes.push(error(
            "spec.metrics",
            "an AnalysisTemplate needs at least one metric",
        ));
    }
    let (metrics, positions) = metrics_value
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, m)| {
            let m = resolve_templated_fields(
                m,
                &arg_defaults,
                &format!("spec.metrics[{i}]"),
                &mut notes,
            );
            argo_metric(i, &m, &dry_run_names, &mut notes).map(|m| (m, i))
        })
        .unzip();
    finish(
        value,
        Origin::ArgoRollouts,
        kind,
        kind == "ClusterAnalysisTemplate",
        AnalysisTemplateSpec { args, metrics },
        positions,
        notes,
    )
}

fn argo_arg(i: usize, arg: &Value, notes: &mut Vec<Note>) -> Option<Argument> {
    let field = format!("spec.args[{i}]");
    let Some(name) = arg.get("name").and_then(Value::as_str) else {
        notes.push(error(format!("{field}.name"), "an argument needs a name"));
        return None;
    };
    let value = arg.get("value").map(scalar_text);
    let value_from = match arg.get("valueFrom") {
        None => None,
        Some(from) => match from.get("secretKeyRef") {
            Some(secret) => secret_ref(secret).map(|secret_key_ref| ValueFrom { secret_key_ref }),
            None => {
                notes.push(warning(
                    format!("{field}.valueFrom"),
                    format!(
                        "only secretKeyRef is converted (fieldRef reads the Rollout's own fields); pass {name} as an argument instead"
                    ),
                ));
                None
            }
        },
    };
    Some(Argument {
        name: name.to_string(),
        value,
        value_from,
    })
}

fn secret_ref(value: &Value) -> Option<SecretKeyRef> {
    Some(SecretKeyRef {
        name: value.get("name")?.as_str()?.to_string(),
        key: value.get("key")?.as_str()?.to_string(),
    })
}

/// A metric name as our CRD takes it (`^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$`): Flagger's docs name
/// metrics `"404s percentage"`, Argo allows capitals. Lower-cased, every other character a
/// `-`, runs of `-` collapsed; `metric` when nothing is left.
pub fn metric_name(written: &str) -> String {
    let mut name = String::with_capacity(written.len());
    for c in written.trim().chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '_' | '.') {
            c
        } else {
            '-'
        };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if name.is_empty() {
        "metric".to_string()
    } else {
        name.to_string()
    }
}

/// [`metric_name`], with a note at `field` when it differs from what was written.
pub(crate) fn carried_metric_name(written: &str, field: &str, notes: &mut Vec<Note>) -> String {
    let name = metric_name(written);
    if name != written {
        notes.push(warning(
            field,
            format!("metric {written:?} is named {name:?} here: metric names are lower-case letters, digits, '-', '_' and '.'"),
        ));
    }
    name
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn argo_metric(
    i: usize,
    metric: &Value,
    dry_run_names: &BTreeSet<String>,
    notes: &mut Vec<Note>,
) -> Option<Metric> {
    let field = format!("spec.metrics[{i}]");
    let start = notes.len();
    let written = metric.get("name").and_then(Value::as_str).unwrap_or("");
    let name = if written.is_empty() {
        String::new()
    } else {
        carried_metric_name(written, &format!("{field}.name"), notes)
    };
    warn_unconverted(metric, ARGO_METRIC_FIELDS, &field, notes);
    let duration = |key: &str, notes: &mut Vec<Note>| -> Option<Duration> {
        let text = metric.get(key).map(scalar_text)?;
        text.parse()
            .map_err(|e: crate::api::duration::ParseDurationError| {
                notes.push(error(format!("{field}.{key}"), e.to_string()))
            })
            .ok()
    };
    let interval = duration("interval", notes);
    let initial_delay = duration("initialDelay", notes);
    let mut count = int_or_string(metric, "count", &field, notes);
    // Argo takes a single measurement of a metric that has neither interval nor count; ours
    // would measure every minute until the run ends.
    if metric.get("interval").is_none() && metric.get("count").is_none() {
        count = Some(1);
        notes.push(warning(
            format!("{field}.count"),
            "absent with no interval: one measurement, as in Argo Rollouts (count: 1)",
        ));
    }
    let failure_limit = int_or_string(metric, "failureLimit", &field, notes);
    let inconclusive_limit = int_or_string(metric, "inconclusiveLimit", &field, notes);
    let consecutive_error_limit = int_or_string(metric, "consecutiveErrorLimit", &field, notes);
    if metric.get("consecutiveSuccessLimit").is_some() {
        notes.push(warning(
            format!("{field}.consecutiveSuccessLimit"),
            "not converted: use count and failureLimit",
        ));
    }
    let condition = |key: &str, notes: &mut Vec<Note>| {
        let text = metric.get(key)?.as_str()?;
        if key == "successCondition" && passes_on_no_data(text) {
            notes.push(warning(
                format!("{field}.{key}"),
                format!("`{text}` passes when the query returns no data; here no data is never a pass (it is Inconclusive, and the metric's inconclusiveLimit decides), so that part never applies: to tolerate missing data, raise inconclusiveLimit"),
            ));
        }
        match expr_to_cel(text) {
            Ok(cel) => {
                if cel != text {
                    notes.push(warning(
                        format!("{field}.{key}"),
                        format!("Argo expression `{text}` converted to CEL `{cel}`"),
                    ));
                }
                Some(cel)
            }
            Err(why) => {
                notes.push(error(format!("{field}.{key}"), why));
                None
            }
        }
    };
    let success_condition = condition("successCondition", notes);
    let failure_condition = condition("failureCondition", notes);
    let provider = metric.get("provider").unwrap_or(&Value::Null);
    let mut web = None;
    let mut job = None;
    let mut graphite = None;
    let prometheus = match provider.get("prometheus") {
        Some(p) => argo_prometheus(p, &format!("{field}.provider.prometheus"), notes),
        // And its graphite provider (address, query).
        None if provider.get("graphite").is_some() => {
            match serde_json::from_value(provider["graphite"].clone()) {
                Ok(provider) => graphite = Some(provider),
                Err(e) => notes.push(error(format!("{field}.provider.graphite"), e.to_string())),
            }
            Some(PrometheusProvider::default())
        }
        // So has its job provider.
        None if provider.get("job").is_some() => {
            match serde_json::from_value(provider["job"].clone()) {
                Ok(provider) => job = Some(provider),
                Err(e) => notes.push(error(format!("{field}.provider.job"), e.to_string())),
            }
            Some(PrometheusProvider::default())
        }
        // Argo's web provider has this project's shape: taken as written.
        None if provider.get("web").is_some() => {
            match serde_json::from_value(provider["web"].clone()) {
                Ok(provider) => web = Some(provider),
                Err(e) => notes.push(error(format!("{field}.provider.web"), e.to_string())),
            }
            Some(PrometheusProvider::default())
        }
        // Argo's influxdb provider reads its address and token from a `profile` Secret.
        None if provider.get("influxdb").is_some() => {
            notes.push(error(
                format!("{field}.provider.influxdb"),
                "Argo's influxdb provider takes its address and token from a `profile` Secret, which is not converted: write the metric with this project's provider.influxdb (address, query, and the token in a header from a Secret; see the README's \"Metric providers\")".to_string(),
            ));
            None
        }
        None => {
            let names: Vec<&str> = provider
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            notes.push(error(
                format!("{field}.provider"),
                if names.is_empty() {
                    format!(
                        "the metric names no provider: write one of {}",
                        supported_providers().join(", ")
                    )
                } else {
                    names
                        .iter()
                        .map(|name| unsupported_provider(name))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ));
            None
        }
    };
    let dry_run = dry_run_names.contains(written) || dry_run_names.contains("*");
    if notes[start..].iter().any(|n| n.severity == Severity::Error) {
        return None;
    }
    Some(Metric {
        name,
        interval,
        initial_delay,
        count,
        success_condition,
        failure_condition,
        threshold_range: None,
        failure_limit,
        inconclusive_limit,
        consecutive_error_limit,
        dry_run,
        compare: None,
        provider: MetricProvider {
            prometheus: prometheus?,
            web,
            job,
            influxdb: None,
            graphite,
        },
    })
}

const ARGO_METRIC_FIELDS: &[&str] = &[
    "name",
    "interval",
    "initialDelay",
    "count",
    "successCondition",
    "failureCondition",
    "failureLimit",
    "inconclusiveLimit",
    "consecutiveErrorLimit",
    "consecutiveSuccessLimit",
    "provider",
];

const ARGO_PROMETHEUS_FIELDS: &[&str] = &[
    "address",
    "query",
    "timeout",
    "insecure",
    "headers",
    "authentication",
    "rangeQuery",
];

/// Fields of an Argo object that have no counterpart here: said, never dropped silently.
fn warn_unconverted(object: &Value, known: &[&str], field: &str, notes: &mut Vec<Note>) {
    for key in object.as_object().into_iter().flat_map(|o| o.keys()) {
        if !known.contains(&key.as_str()) {
            notes.push(warning(
                format!("{field}.{key}"),
                format!("{key} is not converted: it has no counterpart in canary.dev templates"),
            ));
        }
    }
}

/// The fields Argo renders from the run's arguments that are typed here (numbers,
/// durations) or compiled once (conditions).
const TEMPLATED_FIELDS: [&str; 8] = [
    "interval",
    "initialDelay",
    "count",
    "failureLimit",
    "inconclusiveLimit",
    "consecutiveErrorLimit",
    "successCondition",
    "failureCondition",
];

/// Argo renders `{{args.NAME}}` anywhere in a metric when the run starts; here those fields are
/// fixed in the template. A placeholder there takes the argument's value from the template
/// (said in a warning: a different value passed by the Canary would not reach it); an argument
/// without a value there is an error that says what to write.
fn resolve_templated_fields(
    metric: &Value,
    defaults: &std::collections::BTreeMap<String, String>,
    field: &str,
    notes: &mut Vec<Note>,
) -> Value {
    let mut resolved = metric.clone();
    for key in TEMPLATED_FIELDS {
        let Some(written) = metric.get(key).and_then(Value::as_str) else {
            continue;
        };
        if !written.contains("{{") {
            continue;
        }
        let mut text = written.to_string();
        let mut missing = Vec::new();
        for placeholder in render::placeholders(written) {
            let value = placeholder
                .strip_prefix("args.")
                .map(str::trim)
                .and_then(|name| defaults.get(name).map(|v| (name, v)));
            match value {
                Some((_, value)) => {
                    for form in [
                        format!("{{{{{placeholder}}}}}"),
                        format!("{{{{ {placeholder} }}}}"),
                    ] {
                        text = text.replace(&form, value);
                    }
                }
                None => missing.push(placeholder.to_string()),
            }
        }
        if missing.is_empty() {
            notes.push(warning(
                format!("{field}.{key}"),
                format!("`{written}` is `{text}`, the arguments' values in the template: Argo renders it when a run starts, here it is fixed, so a different value passed by the Canary's analysis args would not reach it"),
            ));
            resolved[key] = Value::String(text);
        } else {
            notes.push(error(
                format!("{field}.{key}"),
                format!("`{written}` uses {} without a value in the template: Argo fills it when a run starts, here {key} is fixed in the template; give the argument a value in spec.args, or write the value itself", missing.iter().map(|m| format!("{{{{{m}}}}}")).collect::<Vec<_>>().join(", ")),
            ));
            if let Some(object) = resolved.as_object_mut() {
                object.remove(key);
            }
        }
    }
    resolved
}

/// Whether an Argo success condition deliberately passes on an empty result
/// (`len(result) == 0 || …`, `isNaN(result[0]) or …`).
fn passes_on_no_data(condition: &str) -> bool {
    let compact: String = condition.chars().filter(|c| !c.is_whitespace()).collect();
    let alternative = compact.contains("||") || condition.split_whitespace().any(|w| w == "or");
    alternative
        && [
            "len(result)==0",
            "len(result)<1",
            "isNaN(result",
            "isNaN(default(result",
        ]
        .iter()
        .any(|empty| compact.contains(empty))
}

/// Argo's int-or-string fields (`count: 5`, `count: "5"`; placeholders are resolved before).
fn int_or_string(metric: &Value, key: &str, field: &str, notes: &mut Vec<Note>) -> Option<u32> {
    let value = metric.get(key)?;
    let parsed = match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    if parsed.is_none() {
        notes.push(error(
            format!("{field}.{key}"),
            format!("{} is not a non-negative whole number", scalar_text(value)),
        ));
    }
    parsed
}

fn argo_prometheus(
    value: &Value,
    field: &str,
    notes: &mut Vec<Note>,
) -> Option<PrometheusProvider> {
    let Some(query) = value.get("query").and_then(Value::as_str) else {
        notes.push(error(
            format!("{field}.query"),
            "a Prometheus metric needs a query",
        ));
        return None;
    };
    if value.get("authentication").is_some() {
        notes.push(error(
            format!("{field}.authentication"),
            "sigv4/oauth2 authentication is not supported; put the credential in a Secret and send it with headers[].valueFrom",
        ));
    }
    if value.get("rangeQuery").is_some() {
        notes.push(error(
            format!("{field}.rangeQuery"),
            "range queries are not supported: write an instant query (e.g. with rate(...[5m]))",
        ));
    }
    warn_unconverted(value, ARGO_PROMETHEUS_FIELDS, field, notes);
    let timeout = value.get("timeout").and_then(|t| match t {
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        Value::String(s) => s.parse().ok(),
        _ => None,
    });
    let headers = value
        .get("headers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some(Header {
                name: h.get("key")?.as_str()?.to_string(),
                value: h.get("value").map(scalar_text),
                value_from: None,
            })
        })
        .collect();
    Some(PrometheusProvider {
        address: value
            .get("address")
            .and_then(Value::as_str)
            .map(str::to_string),
        query: query.to_string(),
        timeout,
        headers,
        insecure: value
            .get("insecure")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// The metric providers of Argo Rollouts and Flagger, as each writes them, with the names
/// people know them by.
const PEER_PROVIDERS: &[(&str, &str)] = &[
    ("prometheus", "Prometheus"),
    ("web", "Web (an HTTP endpoint answering JSON)"),
    ("job", "Job (a Kubernetes Job)"),
    ("datadog", "Datadog"),
    ("newrelic", "New Relic"),
    ("cloudwatch", "Amazon CloudWatch"),
    ("wavefront", "Wavefront"),
    ("kayenta", "Kayenta"),
    ("graphite", "Graphite"),
    ("influxdb", "InfluxDB"),
    ("skywalking", "Apache SkyWalking"),
    ("dynatrace", "Dynatrace"),
    ("stackdriver", "Google Cloud Monitoring (Stackdriver)"),
    ("keptn", "Keptn"),
    ("splunk", "Splunk"),
    ("externalmetrics", "Kubernetes external metrics"),
    ("plugin", "a metric plugin"),
];

/// The providers a metric can have here: the fields of `provider` in our CRD, so that a
/// provider added there is supported everywhere, and no longer listed as unsupported.
pub fn supported_providers() -> Vec<String> {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(AnalysisTemplate::crd()).unwrap_or_default();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/metrics/items/properties/provider/properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether a provider as Argo or Flagger writes it (`newRelic`, `newrelic`) is one we have.
pub fn is_supported_provider(written: &str) -> bool {
    supported_providers()
        .iter()
        .any(|ours| ours.eq_ignore_ascii_case(written))
}

/// What is said of a metric whose provider we lack: which provider, that it is not
/// supported, and which are.
pub fn unsupported_provider(written: &str) -> String {
    let known = PEER_PROVIDERS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(written))
        .map(|(_, known_as)| format!(" ({known_as})"))
        .unwrap_or_default();
    format!(
        "provider {written}{known} is not supported: a metric here is measured with {}; this metric cannot be converted. Measure the same signal through one of those (e.g. a Prometheus that scrapes or remote-writes it), or drop the metric",
        supported_providers().join(", ")
    )
}

/// The unsupported providers a document's metrics use (Argo `metrics[].provider.<name>`,
/// Flagger `spec.provider.type`), as written, each once: what `canary convert` lists.
pub fn unsupported_providers_of(document: &Value) -> Vec<String> {
    let api_version = document
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut found: Vec<String> = Vec::new();
    if api_version.starts_with("argoproj.io/") {
        for metric in document
            .pointer("/spec/metrics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for name in metric
                .get("provider")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|p| p.keys())
            {
                found.push(name.clone());
            }
        }
    } else if api_version.starts_with("flagger.app/")
        && let Some(kind) = document
            .pointer("/spec/provider/type")
            .and_then(Value::as_str)
    {
        found.push(kind.to_string());
    }
    let mut unsupported: Vec<String> = Vec::new();
    for name in found {
        if !is_supported_provider(&name) && !unsupported.contains(&name) {
            unsupported.push(name);
        }
    }
    unsupported
}

/// Converts the common subset of Argo's `expr` language to CEL: `and`/`or`/`not`, `len`,
/// `asInt`/`asFloat`, `nil`, the `all/any/none/filter/map(list, {# …})` predicates, and integer
/// literals to doubles (CEL does not mix int and double in arithmetic), except list indexes.
pub fn expr_to_cel(expr: &str) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut bracket_depth = 0usize;
    // Calls whose parentheses are open, and the last one closed: a number compared with the
    // int that `size(...)`/`int(...)` returns must stay an int (CEL never equates 0 and 0.0).
    let mut open_calls: Vec<String> = Vec::new();
    let mut last_closed_call: Option<String> = None;
    let mut pending_call: Option<String> = None;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(chars.len());
            out.extend(&chars[start..i]);
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next_is_paren = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            last_closed_call = None;
            pending_call = next_is_paren.then(|| match word.as_str() {
                "len" => "size".to_string(),
                "asInt" => "int".to_string(),
                other => other.to_string(),
            });
            match (word.as_str(), next_is_paren) {
                ("and", false) => out.push_str("&&"),
                ("or", false) => out.push_str("||"),
                ("not", false) => out.push('!'),
                ("nil", false) => out.push_str("null"),
                ("len", true) => out.push_str("size"),
                ("asInt", true) => out.push_str("int"),
                ("asFloat", true) => out.push_str("double"),
                ("all" | "any" | "none" | "filter" | "map", true) => {
                    let (converted, consumed) = predicate(&word, &chars[i..])?;
                    out.push_str(&converted);
                    i += consumed;
                }
                _ => out.push_str(&word),
            }
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let number: String = chars[start..i].iter().collect();
            let inside_index = bracket_depth > 0;
            let compared_with_int = last_closed_call
                .as_deref()
                .is_some_and(|call| matches!(call, "size" | "int"))
                && out.trim_end().ends_with(['=', '<', '>']);
            last_closed_call = None;
            if number.contains('.') || inside_index || compared_with_int {
                out.push_str(&number);
            } else {
                out.push_str(&number);
                out.push_str(".0");
            }
            continue;
        }
        match c {
            '[' => bracket_depth += 1,
            ']' => bracket_depth = bracket_depth.saturating_sub(1),
            '(' => open_calls.push(pending_call.take().unwrap_or_default()),
            ')' => last_closed_call = open_calls.pop(),
            '#' => {
                return Err(
                    "`#` outside a predicate such as all(result, {# > 0.9}) cannot be converted"
                        .into(),
                );
            }
            c if c.is_whitespace() || "=<>!".contains(c) => {}
            _ => last_closed_call = None,
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

/// `all(list, {pred with #})` → `list.all(x, pred with x)`; returns text and chars consumed.
fn predicate(word: &str, rest: &[char]) -> Result<(String, usize), String> {
    let text: String = rest.iter().collect();
    let open = text.find('(').expect("caller saw a parenthesis");
    let mut depth = 0;
    let mut close = None;
    for (at, c) in text.char_indices().skip(open) {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(at);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.ok_or_else(|| format!("unbalanced parentheses after {word}"))?;
    let inner = &text[open + 1..close];
    let (list, body) = inner
        .split_once(',')
        .ok_or_else(|| format!("{word}(...) needs a list and a {{predicate}}"))?;
    let body = body.trim();
    // expr accepts the predicate with or without braces: `all(xs, {# > 1})`, `all(xs, # > 1)`.
    let body = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(body);
    let list = expr_to_cel(list.trim())?;
    let body = expr_to_cel(&body.replace('#', "x"))?;
    let macro_name = match word {
        "any" => "exists",
        "none" => return Ok((format!("!{list}.exists(x, {body})"), close + 1)),
        other => other,
    };
    let consumed = text[..close + 1].chars().count();
    Ok((format!("{list}.{macro_name}(x, {body})"), consumed))
}

// ---------------------------------------------------------------------------------------------
// Flagger

fn import_flagger(value: &Value) -> Result<ImportedTemplate, Vec<Note>> {
    let mut notes = Vec::new();
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    let provider = spec.get("provider").cloned().unwrap_or(Value::Null);
    let provider_type = provider.get("type").and_then(Value::as_str).unwrap_or("");
    if provider_type != "prometheus" {
        notes.push(error(
            "spec.provider.type",
            if provider_type.is_empty() {
                format!(
                    "the MetricTemplate names no provider type: write one of {}",
                    supported_providers().join(", ")
                )
            } else {
                unsupported_provider(provider_type)
            },
        ));
    }
    warn_unconverted(&spec, &["provider", "query"], "spec", &mut notes);
    if provider_type == "prometheus" {
        warn_unconverted(
            &provider,
            &["type", "address", "secretRef", "insecureSkipVerify"],
            "spec.provider",
            &mut notes,
        );
    }
    if provider.get("secretRef").is_some() {
        notes.push(warning(
            "spec.provider.secretRef",
            "not converted: put the full Authorization header value in a Secret and reference it from provider.prometheus.headers[].valueFrom",
        ));
    }
    let query = spec.get("query").and_then(Value::as_str).unwrap_or("");
    if query.is_empty() {
        notes.push(error("spec.query", "a MetricTemplate needs a query"));
    }
    // Flagger writes `{{ variables.x }}` for the Canary's templateVariables, and fills `name`,
    // `service` and `ingress` from the Canary; here they all become arguments. The context names
    // we share (namespace, interval) stay as they are. Flagger's `target` is the Deployment it
    // runs the canary in; ours is the user's Deployment, kept at zero replicas, and the canary
    // runs in `workload` (`<target>-canary`), so `target` becomes `workload`.
    let mut args: Vec<Argument> = Vec::new();
    let mut converted = query.to_string();
    let mut target_said = false;
    let mut expression_said = false;
    for placeholder in render::placeholders(query) {
        if placeholder == "target" {
            for written in ["{{target}}", "{{ target }}"] {
                converted = converted.replace(written, "{{workload}}");
            }
            if !std::mem::replace(&mut target_said, true) {
                notes.push(warning(
                    "spec.query",
                    "{{ target }} became {{workload}}: Flagger runs the canary in the target Deployment, canary runs it in <target>-canary (the `workload` context value)",
                ));
            }
            continue;
        }
        if render::CONTEXT_NAMES.contains(&placeholder) {
            continue;
        }
        if !is_flagger_variable(placeholder) {
            // A Go template expression (`{{ printf "%s-%s" namespace service }}`, a pipe, a
            // function call) is not a value canary can fill in; made an argument name, it
            // would render nothing Flagger meant.
            if !std::mem::replace(&mut expression_said, true) {
                notes.push(error(
                    "spec.query",
                    format!("`{{{{ {placeholder} }}}}` is a Go template expression, which Flagger evaluates and canary does not (it fills in names such as {{{{ namespace }}}} or {{{{ variables.x }}}}): write the text it produces into the query, or pass it as a templateVariable and write {{{{ variables.NAME }}}}"),
                ));
            }
            continue;
        }
        let name = placeholder
            .strip_prefix("variables.")
            .unwrap_or(placeholder)
            .trim();
        for written in [
            format!("{{{{{placeholder}}}}}"),
            format!("{{{{ {placeholder} }}}}"),
        ] {
            converted = converted.replace(&written, &format!("{{{{args.{name}}}}}"));
        }
        if !args.iter().any(|a| a.name == name) {
            if !placeholder.starts_with("variables.") {
                notes.push(warning(
                    "spec.query",
                    format!("{{{{ {placeholder} }}}} is filled in by Flagger from the Canary; here it is the argument {name}: pass it with --arg {name}=... or the Canary's analysis args"),
                ));
            }
            args.push(Argument {
                name: name.to_string(),
                value: None,
                value_from: None,
            });
        }
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("metric")
        .to_string();
    notes.push(warning(
        "spec",
        "Flagger keeps the pass/fail threshold in the Canary (analysis.metrics[].thresholdRange), not in the MetricTemplate: add thresholdRange (or a condition) to the converted metric before running it",
    ));
    let metric = Metric {
        name,
        interval: None,
        initial_delay: None,
        count: None,
        success_condition: None,
        failure_condition: None,
        threshold_range: None,
        failure_limit: None,
        inconclusive_limit: None,
        consecutive_error_limit: None,
        dry_run: false,
        compare: None,
        provider: MetricProvider {
            prometheus: PrometheusProvider {
                address: provider
                    .get("address")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                query: converted,
                timeout: None,
                headers: Vec::new(),
                insecure: provider
                    .get("insecureSkipVerify")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            web: None,
            job: None,
            influxdb: None,
            graphite: None,
        },
    };
    finish(
        value,
        Origin::Flagger,
        "MetricTemplate",
        false,
        AnalysisTemplateSpec {
            args,
            metrics: vec![metric],
        },
        vec![0],
        notes,
    )
}

/// `name`, `service`, `variables.direction`: what Flagger's templates name; anything else
/// (spaces, quotes, pipes) is an expression of Go's template language.
fn is_flagger_variable(placeholder: &str) -> bool {
    let name = placeholder
        .strip_prefix("variables.")
        .unwrap_or(placeholder);
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

fn finish(
    value: &Value,
    origin: Origin,
    kind: &str,
    cluster_scoped: bool,
    spec: AnalysisTemplateSpec,
    metric_positions: Vec<usize>,
    notes: Vec<Note>,
) -> Result<ImportedTemplate, Vec<Note>> {
    Ok(ImportedTemplate {
        origin,
        kind: kind.to_string(),
        name: value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        namespace: value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string),
        cluster_scoped,
        spec,
        metric_positions,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_argo_expressions_to_cel() {
        let cases = [
            ("result[0] >= 0.95", "result[0] >= 0.95"),
            ("result[0] >= 1", "result[0] >= 1.0"),
            (
                "len(result) == 0 or result[0] < 5",
                "size(result) == 0 || result[0] < 5.0",
            ),
            ("result[0] * 100 >= 99", "result[0] * 100.0 >= 99.0"),
            ("(result[0]) == 0", "(result[0]) == 0.0"),
            (
                "not isNaN(result[0]) and result[0] > 0.9",
                "! isNaN(result[0]) && result[0] > 0.9",
            ),
            ("all(result, {# > 0.9})", "result.all(x, x > 0.9)"),
            ("any(result, {# < 0.5})", "result.exists(x, x < 0.5)"),
            ("none(result, {# < 0.5})", "!result.exists(x, x < 0.5)"),
            ("all(result, # < 1000)", "result.all(x, x < 1000.0)"),
            ("asInt(result[0]) == 1", "int(result[0]) == 1"),
            ("result[0] == nil", "result[0] == null"),
            ("'and' == 'and'", "'and' == 'and'"),
        ];
        for (argo, cel) in cases {
            assert_eq!(expr_to_cel(argo).unwrap(), cel, "{argo}");
        }
        assert!(expr_to_cel("# > 1").is_err());
    }

    #[test]
    fn flagger_target_becomes_the_workload_that_runs_the_canary() {
        let documents = read_documents(
            "apiVersion: flagger.app/v1beta1\nkind: MetricTemplate\nmetadata: {name: latency}\nspec:\n  provider: {type: prometheus}\n  query: 'sum(rate(x{deployment=~\"{{ target }}\", pod=~\"{{target}}-.*\"}[{{ interval }}]))'\n",
        )
        .unwrap();
        let template = documents[0].outcome.as_ref().unwrap();
        let query = &template.spec.metrics[0].provider.prometheus.query;
        // Flagger runs the canary in the target Deployment; the controller runs it in
        // <target>-canary, the `workload` context value, and keeps the target at zero.
        assert_eq!(
            query,
            "sum(rate(x{deployment=~\"{{workload}}\", pod=~\"{{workload}}-.*\"}[{{ interval }}]))"
        );
        assert!(template.spec.args.is_empty(), "{:?}", template.spec.args);
        assert_eq!(
            template
                .notes
                .iter()
                .filter(|n| n.message.contains("{{ target }} became {{workload}}"))
                .count(),
            1,
            "{:?}",
            template.notes
        );
    }

    #[test]
    fn metric_names_are_carried_in_the_form_the_crd_takes() {
        for (written, ours) in [
            ("404s percentage", "404s-percentage"),
            ("request-success-rate", "request-success-rate"),
            ("Success Rate (p99)", "success-rate-p99"),
            ("  ", "metric"),
            ("latency_p99.ms", "latency_p99.ms"),
        ] {
            assert_eq!(metric_name(written), ours, "{written:?}");
        }
    }

    /// Argo takes one measurement of a metric without interval and count; with an interval it
    /// measures until the run ends.
    #[test]
    fn an_argo_metric_without_interval_or_count_is_measured_once() {
        let documents = read_documents(concat!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n",
            "  - {name: once, successCondition: 'result[0] > 0', provider: {prometheus: {query: up}}}\n",
            "  - {name: every, interval: 5m, successCondition: 'result[0] > 0', provider: {prometheus: {query: up}}}\n",
            "  - {name: three, count: 3, interval: 1m, successCondition: 'result[0] > 0', provider: {prometheus: {query: up}}}\n",
        ))
        .unwrap();
        let template = documents[0].outcome.as_ref().unwrap();
        let counts: Vec<Option<u32>> = template.spec.metrics.iter().map(|m| m.count).collect();
        assert_eq!(counts, vec![Some(1), None, Some(3)]);
        assert!(
            template.notes.iter().any(
                |n| n.field == "spec.metrics[0].count" && n.message.contains("one measurement")
            ),
            "{:?}",
            template.notes
        );
    }

    /// Argo's `spec.templates` (a template made of others) is refused with what to do, never
    /// dropped; any other field Argo has and we lack is named in a warning.
    #[test]
    fn composed_argo_templates_are_refused_clearly_and_unknown_fields_are_named() {
        let documents = read_documents(concat!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: rates}\nspec:\n",
            "  templates:\n  - templateName: error-rate\n  - {templateName: success-rate, clusterScope: true}\n",
            "  futureField: {x: 1}\n",
        ))
        .unwrap();
        let template = documents[0].outcome.as_ref().unwrap();
        let said: Vec<(&str, Severity, &str)> = template
            .notes
            .iter()
            .map(|n| (n.field.as_str(), n.severity, n.message.as_str()))
            .collect();
        assert!(
            said.iter().any(|(field, severity, message)| *field == "spec.templates"
                && *severity == Severity::Error
                && message.contains("(AnalysisTemplate error-rate, ClusterAnalysisTemplate success-rate) is not supported")
                && message.contains("name those templates in the Canary's analysis")),
            "{said:#?}"
        );
        assert!(
            said.iter()
                .any(|(field, severity, _)| *field == "spec.futureField"
                    && *severity == Severity::Warning),
            "{said:#?}"
        );
        assert!(
            !said.iter().any(|(field, _, _)| *field == "spec.metrics"),
            "{said:#?}"
        );
    }

    /// Argo renders arguments in a metric's count, interval, limits and conditions; here they
    /// take the arguments' values from the template (Argo's e2e templates are written so).
    #[test]
    fn templated_argo_fields_take_the_arguments_values() {
        let documents = read_documents(concat!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n",
            "  args:\n  - {name: runs, value: '2'}\n  - {name: every, value: 5s}\n  - {name: limit, value: '1'}\n  - {name: max, value: '4'}\n  - {name: passed}\n",
            "  metrics:\n",
            "  - name: m\n    count: '{{args.runs}}'\n    interval: '{{ args.every }}'\n    initialDelay: '{{args.every}}'\n    failureLimit: '{{args.limit}}'\n",
            "    failureCondition: 'result[0] > {{ args.max }}'\n    provider: {prometheus: {query: up}}\n",
            "  - name: n\n    count: '{{args.passed}}'\n    interval: 1m\n    successCondition: 'result[0] > 0'\n    provider: {prometheus: {query: up}}\n",
        ))
        .unwrap();
        let template = documents[0].outcome.as_ref().unwrap();
        let m = &template.spec.metrics[0];
        assert_eq!(m.count, Some(2));
        assert_eq!(m.interval, Some(Duration::from_secs(5)));
        assert_eq!(m.initial_delay, Some(Duration::from_secs(5)));
        assert_eq!(m.failure_limit, Some(1));
        assert_eq!(m.failure_condition.as_deref(), Some("result[0] > 4.0"));
        let error = template
            .notes
            .iter()
            .find(|n| n.field == "spec.metrics[1].count")
            .expect("a note on the count without a value");
        assert_eq!(error.severity, Severity::Error);
        assert!(
            error.message.contains("{{args.passed}} without a value"),
            "{error:?}"
        );
    }

    /// The providers we lack are named, said to be unsupported, and listed; the ones we have
    /// (read from the CRD) are never in that list.
    #[test]
    fn unsupported_providers_are_named_and_supported_ones_are_not_listed() {
        assert!(supported_providers().contains(&"prometheus".to_string()));
        assert!(is_supported_provider("prometheus"));
        for peer in [
            "datadog",
            "newRelic",
            "cloudWatch",
            "wavefront",
            "dynatrace",
            "stackdriver",
            "skywalking",
            "kayenta",
        ] {
            let supported = is_supported_provider(peer);
            let message = unsupported_provider(peer);
            assert!(
                supported || message.starts_with(&format!("provider {peer} (")),
                "{message}"
            );
            assert!(message.contains("is not supported"), "{message}");
        }
        let argo: Value = serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "spec": {"metrics": [
                {"name": "a", "provider": {"prometheus": {"query": "up"}}},
                {"name": "b", "provider": {"datadog": {"query": "x"}}},
                {"name": "c", "provider": {"datadog": {"query": "y"}}},
                {"name": "d", "provider": {"newRelic": {"query": "z"}}},
            ]},
        });
        assert_eq!(unsupported_providers_of(&argo), vec!["datadog", "newRelic"]);
        let flagger: Value = serde_json::json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "spec": {"provider": {"type": "prometheus"}, "query": "up"},
        });
        assert!(unsupported_providers_of(&flagger).is_empty());
    }

    /// A Go template expression in a Flagger query is said, not made an argument; an Argo
    /// condition that passes on no data is said, since here no data never passes.
    #[test]
    fn go_template_expressions_and_no_data_passes_are_reported() {
        let flagger = read_documents(concat!(
            "apiVersion: flagger.app/v1beta1\nkind: MetricTemplate\nmetadata: {name: latency}\nspec:\n",
            "  provider: {type: prometheus}\n",
            "  query: 'sum(x{route=~\"{{ printf \\\"kube_%s__%s\\\" namespace service }}\", d=\"{{ variables.direction }}\"})'\n",
        ))
        .unwrap();
        let template = flagger[0].outcome.as_ref().unwrap();
        assert!(
            template.notes.iter().any(|n| n.severity == Severity::Error
                && n.field == "spec.query"
                && n.message.contains("is a Go template expression")),
            "{:#?}",
            template.notes
        );
        let names: Vec<&str> = template.spec.args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, vec!["direction"]);

        let argo = read_documents(concat!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n",
            "  - {name: m, successCondition: 'len(result) == 0 || result[0] >= 0.95', provider: {prometheus: {query: up}}}\n",
            "  - {name: n, successCondition: 'result[0] >= 0.95', provider: {prometheus: {query: up}}}\n",
        ))
        .unwrap();
        let template = argo[0].outcome.as_ref().unwrap();
        let said: Vec<&str> = template
            .notes
            .iter()
            .filter(|n| n.message.contains("passes when the query returns no data"))
            .map(|n| n.field.as_str())
            .collect();
        assert_eq!(said, vec!["spec.metrics[0].successCondition"]);
    }

    /// Fields of a Flagger MetricTemplate we do not read are named, not ignored.
    #[test]
    fn unknown_flagger_fields_are_named() {
        let documents = read_documents(concat!(
            "apiVersion: flagger.app/v1beta1\nkind: MetricTemplate\nmetadata: {name: m}\nspec:\n",
            "  provider: {type: prometheus, address: 'http://p:9090', headers: {x: y}}\n",
            "  query: up\n  step: 1m\n",
        ))
        .unwrap();
        let template = documents[0].outcome.as_ref().unwrap();
        let warned: Vec<&str> = template
            .notes
            .iter()
            .filter(|n| n.severity == Severity::Warning && n.message.contains("is not converted"))
            .map(|n| n.field.as_str())
            .collect();
        assert_eq!(warned, vec!["spec.step", "spec.provider.headers"]);
    }
}
