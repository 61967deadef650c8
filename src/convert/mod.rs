//! Bringing manifests over from Argo Rollouts and Flagger: a `Rollout` becomes a `Deployment`
//! and a `Canary`, a Flagger `Canary` becomes a `Canary` (and the AnalysisTemplate that holds
//! its metrics), their analysis templates become ours, and every other document passes through
//! unchanged, so the output is one stream to apply. Every field that cannot be carried is
//! reported as a [`Note`] with its path; the converted objects are checked as `canary validate`
//! checks them.
//!
//! Pure: text in, values and notes out. `canary convert` and `canary validate --convert` print it.

mod argo;
mod flagger;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::analysis::import::{self, Note, Severity, error, warning};
use crate::analysis::validate::{DocumentReport, validate_document};
use crate::api::API_VERSION;

pub const ARGO_API_VERSION: &str = "argoproj.io/v1alpha1";
pub const FLAGGER_API_VERSION: &str = "flagger.app/v1beta1";

/// One file to convert.
pub struct Input {
    pub file: String,
    pub text: String,
}

/// What became of one document of the input.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertedDocument {
    pub file: String,
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Kind name` of each object printed for it.
    pub produced: Vec<String>,
    pub notes: Vec<Note>,
    /// Providers its metrics use that are not supported here, as written (`datadog`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_providers: Vec<String>,
    #[serde(skip)]
    pub objects: Vec<Value>,
}

impl ConvertedDocument {
    /// `file[index] Kind name`, as reports name a document.
    pub fn label(&self) -> String {
        format!(
            "{}[{}] {} {}",
            self.file,
            self.index,
            self.kind.as_deref().unwrap_or("document"),
            self.name.as_deref().unwrap_or("(unnamed)")
        )
    }

    pub fn has_errors(&self) -> bool {
        self.notes.iter().any(|n| n.severity == Severity::Error)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FileError {
    pub file: String,
    pub error: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Conversion {
    pub file_errors: Vec<FileError>,
    pub documents: Vec<ConvertedDocument>,
}

impl Conversion {
    /// Errors: a file that cannot be read, a document that cannot be converted as it behaves,
    /// or a converted object our own validation refuses. Warnings (fields not carried) are not.
    pub fn has_errors(&self) -> bool {
        !self.file_errors.is_empty() || self.documents.iter().any(ConvertedDocument::has_errors)
    }

    /// Every object to apply, in input order.
    pub fn objects(&self) -> impl Iterator<Item = &Value> {
        self.documents.iter().flat_map(|d| &d.objects)
    }

    /// The objects as one YAML stream.
    pub fn yaml(&self) -> Result<String, String> {
        let mut out = String::new();
        for object in self.objects() {
            let text = serde_saphyr::to_string(object).map_err(|e| e.to_string())?;
            out.push_str("---\n");
            out.push_str(text.trim_end());
            out.push('\n');
        }
        Ok(out)
    }

    /// Each provider not supported here, with the documents whose metrics use it
    /// (`file[index] Kind name`), in the order met.
    pub fn unsupported_providers(&self) -> Vec<(String, Vec<String>)> {
        let mut providers: Vec<(String, Vec<String>)> = Vec::new();
        for d in &self.documents {
            for provider in &d.unsupported_providers {
                let document = d.label();
                match providers.iter_mut().find(|(p, _)| p == provider) {
                    Some((_, documents)) => documents.push(document),
                    None => providers.push((provider.clone(), vec![document])),
                }
            }
        }
        providers
    }

    /// One line per note (and per converted document), as `canary validate` prints findings,
    /// then one line per provider not supported here.
    pub fn human_report(&self) -> String {
        let mut out = String::new();
        for e in &self.file_errors {
            out.push_str(&format!("{}: error: {}\n", e.file, e.error));
        }
        for d in &self.documents {
            let what = d.label();
            if !d.produced.is_empty() {
                out.push_str(&format!("{what}: printed {}\n", d.produced.join(", ")));
            }
            let mut notes: Vec<&Note> = d.notes.iter().collect();
            notes.sort_by_key(|n| std::cmp::Reverse(n.severity));
            for note in notes {
                let severity = match note.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                out.push_str(&format!(
                    "{what}: {severity}: {}: {}\n",
                    note.field, note.message
                ));
            }
        }
        for (provider, documents) in self.unsupported_providers() {
            out.push_str(&format!(
                "provider {provider} is not supported, not converted: {}\n",
                documents.join(", ")
            ));
        }
        out
    }
}

/// What the converters may look up across every input file: the Deployment a `workloadRef`
/// names, the templates an analysis names, the MetricTemplates a Flagger Canary refers to.
pub(crate) struct Inputs {
    documents: Vec<Value>,
}

impl Inputs {
    fn find(&self, api_version: &str, kind: &str, name: &str) -> Option<&Value> {
        self.documents.iter().find(|d| {
            d.get("apiVersion").and_then(Value::as_str) == Some(api_version)
                && d.get("kind").and_then(Value::as_str) == Some(kind)
                && d.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        })
    }

    pub(crate) fn deployment(&self, name: &str) -> Option<&Value> {
        self.find("apps/v1", "Deployment", name)
    }

    /// An analysis template of that name in the input, in any of the kinds we read.
    pub(crate) fn has_template(&self, name: &str, cluster_scope: bool) -> bool {
        let kind = if cluster_scope {
            "ClusterAnalysisTemplate"
        } else {
            "AnalysisTemplate"
        };
        [API_VERSION, ARGO_API_VERSION]
            .iter()
            .any(|api| self.find(api, kind, name).is_some())
    }

    pub(crate) fn metric_template(&self, name: &str) -> Option<&Value> {
        self.find(FLAGGER_API_VERSION, "MetricTemplate", name)
    }
}

/// Converts every document of every file; see the module's documentation.
pub fn convert(inputs: &[Input]) -> Conversion {
    let mut conversion = Conversion::default();
    let mut parsed: Vec<(&str, Vec<Value>)> = Vec::new();
    for input in inputs {
        match serde_saphyr::from_multiple::<Value>(&input.text) {
            Ok(values) => {
                let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
                if values.is_empty() {
                    conversion.file_errors.push(FileError {
                        file: input.file.clone(),
                        error: "the file holds no documents".into(),
                    });
                }
                parsed.push((&input.file, values));
            }
            Err(e) => conversion.file_errors.push(FileError {
                file: input.file.clone(),
                error: format!("not valid YAML: {e}"),
            }),
        }
    }
    let context = Inputs {
        documents: parsed.iter().flat_map(|(_, v)| v.iter().cloned()).collect(),
    };
    // MetricTemplates a converted Flagger Canary folds into its own template: printed there,
    // with the Canary's threshold, not alone without one.
    let folded: BTreeMap<String, String> = context
        .documents
        .iter()
        .filter(|d| is(d, FLAGGER_API_VERSION, "Canary"))
        .flat_map(|canary| {
            let owner = flagger::analysis_template_name(canary);
            flagger::metric_template_refs(canary)
                .into_iter()
                .filter(|name| context.metric_template(name).is_some())
                .map(move |name| (name, owner.clone()))
        })
        .collect();
    for (file, values) in parsed {
        for (index, value) in values.into_iter().enumerate() {
            conversion
                .documents
                .push(convert_document(file, index, value, &context, &folded));
        }
    }
    conversion
}

fn is(value: &Value, api_version: &str, kind: &str) -> bool {
    value.get("apiVersion").and_then(Value::as_str) == Some(api_version)
        && value.get("kind").and_then(Value::as_str) == Some(kind)
}

fn convert_document(
    file: &str,
    index: usize,
    value: Value,
    context: &Inputs,
    folded: &BTreeMap<String, String>,
) -> ConvertedDocument {
    let (name, kind) = import::name_and_kind(&value);
    let mut document = ConvertedDocument {
        file: file.to_string(),
        index,
        kind,
        name,
        produced: Vec::new(),
        notes: Vec::new(),
        unsupported_providers: import::unsupported_providers_of(&value),
        objects: Vec::new(),
    };
    let (objects, notes) = if is(&value, ARGO_API_VERSION, "Rollout") {
        argo::convert_rollout(&value, context)
    } else if is(&value, FLAGGER_API_VERSION, "Canary") {
        flagger::convert_canary(&value, context)
    } else if is(&value, FLAGGER_API_VERSION, "MetricTemplate")
        && let Some(owner) = document.name.as_ref().and_then(|n| folded.get(n))
    {
        (
            Vec::new(),
            vec![warning(
                "metadata.name",
                format!(
                    "folded into AnalysisTemplate {owner} with the Canary's threshold (a MetricTemplate holds no threshold of its own)"
                ),
            )],
        )
    } else if is_template(&value) || is(&value, API_VERSION, "Canary") {
        let report = validate_document(
            import::read_document(index, value.clone()),
            &BTreeMap::new(),
        );
        let notes = notes_of(&report);
        let object = match &report.template {
            Some(template) => import::to_canary_resource(template),
            None => value,
        };
        let printable = !report.has_errors();
        (if printable { vec![object] } else { Vec::new() }, notes)
    } else {
        // Services, routing objects, HPAs, Deployments: the rest of the stream, as written.
        (vec![value], Vec::new())
    };
    document.produced = objects.iter().map(kind_and_name).collect();
    document.objects = objects;
    document.notes = notes;
    document
}

fn is_template(value: &Value) -> bool {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    matches!(
        (api, kind),
        (
            API_VERSION | ARGO_API_VERSION,
            "AnalysisTemplate" | "ClusterAnalysisTemplate"
        ) | (FLAGGER_API_VERSION, "MetricTemplate")
    )
}

fn notes_of(report: &DocumentReport) -> Vec<Note> {
    report
        .findings
        .iter()
        .map(|f| Note {
            severity: f.severity,
            field: match &f.metric {
                Some(metric) => format!("{} (metric {metric})", f.field),
                None => f.field.clone(),
            },
            message: f.message.clone(),
        })
        .collect()
}

/// A foreign object's `spec` (null when absent) and name ("" when absent).
pub(crate) fn spec_and_name(object: &Value) -> (Value, String) {
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let name = import::name_and_kind(object).0.unwrap_or_default();
    (spec, name)
}

fn kind_and_name(object: &Value) -> String {
    format!(
        "{} {}",
        object.get("kind").and_then(Value::as_str).unwrap_or("?"),
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

/// The converted Canary checked as `canary validate` checks one: the CRD's schema and CEL
/// rules, and the router's support of its steps. Findings say they are about the output.
pub(crate) fn check_converted_canary(canary: &Value) -> Vec<Note> {
    import::check_canary(canary.clone())
        .into_iter()
        .map(|note| {
            error(
                format!("(converted Canary) {}", note.field),
                format!("{} (what the API server would refuse too)", note.message),
            )
        })
        .collect()
}

/// A template produced by a conversion, checked as `canary validate` checks one.
pub(crate) fn check_converted_template(template: &Value) -> Vec<Note> {
    let report = validate_document(import::read_document(0, template.clone()), &BTreeMap::new());
    notes_of(&report)
        .into_iter()
        .map(|note| Note {
            field: format!("(converted AnalysisTemplate) {}", note.field),
            ..note
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading foreign fields

/// Fields of a foreign object that are not carried: each said with its reason (from `reasons`,
/// or that it has no counterpart), never dropped silently. `handled` are the fields converted.
pub(crate) fn not_carried(
    object: &Value,
    path: &str,
    handled: &[&str],
    reasons: &[(&str, &str)],
    notes: &mut Vec<Note>,
) {
    for key in object.as_object().into_iter().flat_map(|o| o.keys()) {
        if handled.contains(&key.as_str()) {
            continue;
        }
        let reason = reasons
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| "it has no counterpart in a canary.dev Canary".to_string());
        notes.push(warning(
            format!("{path}.{key}"),
            format!("not carried: {reason}"),
        ));
    }
}

/// A whole number within `0..=max`, or an error note.
pub(crate) fn whole_number(
    value: &Value,
    path: &str,
    max: u64,
    notes: &mut Vec<Note>,
) -> Option<u64> {
    let number = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match number {
        Some(n) if n <= max => Some(n),
        _ => {
            notes.push(error(
                path,
                format!("{value} is not a whole number from 0 to {max}"),
            ));
            None
        }
    }
}

/// `progressDeadlineSeconds`, within the Canary's bounds (10 s to a day).
pub(crate) fn progress_deadline(value: &Value, notes: &mut Vec<Note>) -> Option<u64> {
    let path = "spec.progressDeadlineSeconds";
    let seconds = whole_number(value, path, 86400, notes)?;
    if seconds < 10 {
        notes.push(warning(
            path,
            format!("{seconds} became 10, the shortest deadline a Canary takes"),
        ));
    }
    Some(seconds.max(10))
}

/// A duration as Argo and Flagger write them (`30s`, `1h`, or a number of seconds), in ours.
pub(crate) fn duration(
    value: &Value,
    path: &str,
    notes: &mut Vec<Note>,
) -> Option<crate::api::Duration> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().map(crate::api::Duration::from_secs),
        Value::String(s) => match s.trim().parse::<u64>() {
            Ok(seconds) => Some(crate::api::Duration::from_secs(seconds)),
            Err(_) => s.trim().parse().ok(),
        },
        _ => None,
    };
    if parsed.is_none() {
        notes.push(error(
            path,
            format!("{value} is not a duration (such as 30s, 5m, 1h) or a number of seconds"),
        ));
    }
    parsed
}

/// `spec.service.port` from a pod template: the first container port, said in a note.
pub(crate) fn first_container_port(
    pod_template: Option<&Value>,
    from: &str,
    notes: &mut Vec<Note>,
) -> Option<u64> {
    let containers = pod_template
        .and_then(|t| t.pointer("/spec/containers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, container) in containers.enumerate() {
        if let Some(port) = container
            .pointer("/ports/0/containerPort")
            .and_then(Value::as_u64)
        {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
            notes.push(warning(
                "spec.service.port",
                format!("set to {port}, the first containerPort of container {name} ({from}.spec.containers[{i}]): the port the Services and routing objects send traffic to; change it if that is another"),
            ));
            return Some(port);
        }
    }
    notes.push(error(
        "spec.service.port",
        format!("no containerPort in {from}: set spec.service.port of the converted Canary to the port the service listens on"),
    ));
    None
}

/// `metadata` of a converted object: the source's name and namespace (labels too, when asked).
pub(crate) fn metadata_of(source: &Value, with_labels: bool) -> Value {
    let mut metadata = serde_json::Map::new();
    for key in ["name", "namespace"]
        .iter()
        .chain(if with_labels { &["labels"][..] } else { &[] })
    {
        if let Some(v) = source.pointer(&format!("/metadata/{key}")) {
            metadata.insert(key.to_string(), v.clone());
        }
    }
    Value::Object(metadata)
}

#[cfg(test)]
mod tests;
