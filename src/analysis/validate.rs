//! `canary validate`: everything that can be checked about template files without running a
//! query — YAML syntax, fields, the CRD's CEL rules, every condition compiled and type-checked,
//! every query rendered — reported all at once, located by document, metric and field.

use std::collections::BTreeMap;

use serde::Serialize;

use super::import::{self, ImportedTemplate, Note, Origin, Severity};
use super::render::CONTEXT_NAMES;
use super::run::{self, NO_CONDITION, SecretValues, WEIGHT_OUT_OF_RANGE};
use crate::api::analysis_template::SecretKeyRef;

/// Stand-in values so that queries render without a cluster; real values come at run time.
const PLACEHOLDER_ADDRESS: &str = "http://prometheus.example:9090";

#[derive(Clone, Debug, Serialize)]
pub struct DocumentReport {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    pub findings: Vec<Finding>,
    /// The template in our model, when the document could be read.
    #[serde(skip)]
    pub template: Option<ImportedTemplate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub field: String,
    pub message: String,
}

impl DocumentReport {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Validates the text of one file. `args` fill template arguments where given; the rest get
/// placeholder values.
pub fn validate_text(
    text: &str,
    args: &BTreeMap<String, String>,
) -> Result<Vec<DocumentReport>, String> {
    let documents = import::read_documents(text)?;
    Ok(documents
        .into_iter()
        .map(|document| validate_document(document, args))
        .collect())
}

/// Validates one document read by [`import::read_document`].
pub fn validate_document(
    document: import::Document,
    args: &BTreeMap<String, String>,
) -> DocumentReport {
    let (template, notes) = match document.outcome {
        Ok(template) => {
            let notes = template.notes.clone();
            (Some(template), notes)
        }
        Err(notes) => (None, notes),
    };
    let mut findings: Vec<Finding> = notes.into_iter().map(finding_of_note).collect();
    if let Some(template) = &template
        && !template.spec.metrics.is_empty()
    {
        findings.extend(check_runnable(template, args));
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    DocumentReport {
        index: document.index,
        name: document.name,
        kind: document.kind,
        origin: template.as_ref().map(|t| t.origin),
        findings,
        template,
    }
}

fn finding_of_note(note: Note) -> Finding {
    Finding {
        severity: note.severity,
        metric: None,
        field: note.field,
        message: note.message,
    }
}

/// `metrics[2].successCondition` of the read template as `spec.metrics[3].successCondition` of
/// the document, when metrics before it could not be read.
fn document_field(template: &ImportedTemplate, field: &str) -> String {
    let position = field
        .strip_prefix("metrics[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(index, rest)| Some((index.parse::<usize>().ok()?, rest)));
    match position {
        Some((index, rest)) => format!(
            "spec.metrics[{}]{rest}",
            template
                .metric_positions
                .get(index)
                .copied()
                .unwrap_or(index)
        ),
        None => format!("spec.{field}"),
    }
}

struct PlaceholderSecrets;

impl SecretValues for PlaceholderSecrets {
    fn secret_value(&self, _: &SecretKeyRef) -> Result<String, String> {
        // Shaped so that it fits wherever Argo templates put a Secret: a header value, a
        // query value, or a whole web URL (Argo's own example takes the URL from a Secret).
        Ok("https://secret-placeholder.example/".into())
    }
}

/// Renders and compiles the template as a run would, with placeholders for what only a run has.
fn check_runnable(template: &ImportedTemplate, given: &BTreeMap<String, String>) -> Vec<Finding> {
    let mut args: BTreeMap<String, String> = given
        .iter()
        .filter(|(k, _)| template.spec.args.iter().any(|a| &a.name == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for arg in &template.spec.args {
        if arg.value.is_none() && arg.value_from.is_none() {
            // An argument that is the whole address stands for a URL.
            let whole_address = template.spec.metrics.iter().any(|m| {
                m.provider.prometheus.address.as_deref().is_some_and(|a| {
                    a.trim()
                        .strip_prefix("{{")
                        .is_some_and(|rest| rest.trim().starts_with(&format!("args.{}", arg.name)))
                })
            });
            args.entry(arg.name.clone()).or_insert_with(|| {
                if whole_address {
                    "http://placeholder".into()
                } else {
                    "placeholder".into()
                }
            });
        }
    }
    let context: BTreeMap<String, String> = CONTEXT_NAMES
        .iter()
        .filter(|name| **name != "interval")
        .map(|name| {
            (
                name.to_string(),
                given.get(*name).cloned().unwrap_or_else(|| match *name {
                    // Distinct, so a comparison's two renderings can be told apart.
                    "canary" | "stable" => format!("placeholder-{name}"),
                    _ => "placeholder".into(),
                }),
            )
        })
        .collect();
    // The CRD's rules on a compare's judge settings cover the settings `prepare` checks first
    // (alpha, then the tolerances), and `prepare` stops at the first invalid one: when a rule
    // said the judge is misconfigured, `prepare` can only say the same again.
    let judge_rule_fields: Vec<String> = template
        .notes
        .iter()
        .filter(|note| {
            [
                run::JUDGE_ALPHA_OUT_OF_RANGE,
                run::JUDGE_TOLERANCES_OUT_OF_RANGE,
            ]
            .contains(&note.message.as_str())
        })
        .map(|note| format!("{}.judge", note.field))
        .collect();
    let judge_rule_failed = |field: &str| {
        judge_rule_fields
            .iter()
            .any(|judge| field.starts_with(judge.as_str()))
    };
    match run::prepare(
        &template.name,
        &template.spec,
        &args,
        &context,
        Some(PLACEHOLDER_ADDRESS),
        &PlaceholderSecrets,
    ) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            // Said already: for our kind by the CRD's own rule, for a Flagger MetricTemplate (which
            // has no threshold by design) by its import note.
            .filter(|p| !(template.origin != Origin::ArgoRollouts && p.message == NO_CONDITION))
            // Said already by the CRD's own rule, in the same words.
            .filter(|p| p.message != WEIGHT_OUT_OF_RANGE)
            .map(|p| Finding {
                severity: Severity::Error,
                field: document_field(template, &p.field),
                metric: p.metric,
                message: p.message,
            })
            .filter(|finding| !judge_rule_failed(&finding.field))
            .collect(),
    }
}
