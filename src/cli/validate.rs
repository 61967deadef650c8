//! `canary validate FILE…`: check template files (ours, Argo Rollouts', Flagger's) without
//! running a query, and optionally print them converted to `canary.dev` templates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::{Exit, OutputFormat, parse_key_value};
use crate::analysis::import::Severity;
use crate::analysis::validate::{DocumentReport, validate_text};

/// Check analysis template files and report every problem at once.
///
/// Reads canary.dev AnalysisTemplate/ClusterAnalysisTemplate, Argo Rollouts
/// AnalysisTemplate/ClusterAnalysisTemplate and Flagger MetricTemplate files as they are.
/// Every CEL condition is compiled and type-checked and every query rendered (arguments without
/// a value get a placeholder unless given with --arg).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  canary validate analysis-templates/*.yaml\n  canary validate argo-template.yaml --convert > canary-template.yaml\n\nExit codes: 0 all valid (warnings allowed), 2 a problem was found."
)]
pub struct Args {
    /// Template files (YAML, several documents per file allowed).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Argument values to render queries with, NAME=VALUE (repeatable).
    #[arg(long = "arg", value_parser = parse_key_value)]
    pub args: Vec<(String, String)>,
    /// Convert instead of only checking: exactly `canary convert` (Argo Rollouts and Flagger
    /// Canaries too), the YAML on stdout and the report on stderr.
    #[arg(long)]
    pub convert: bool,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    documents: Vec<DocumentReport>,
}

pub fn run(args: Args, output: OutputFormat) -> Exit {
    if args.convert {
        return convert(&args.files, output);
    }
    let given: BTreeMap<String, String> = args.args.into_iter().collect();
    let mut reports = Vec::new();
    for file in &args.files {
        let name = file.display().to_string();
        let report = match std::fs::read_to_string(file) {
            Err(e) => FileReport {
                file: name,
                error: Some(format!("cannot read the file: {e}")),
                documents: Vec::new(),
            },
            Ok(text) => match validate_text(&text, &given) {
                Ok(documents) => FileReport {
                    file: name,
                    error: None,
                    documents,
                },
                Err(e) => FileReport {
                    file: name,
                    error: Some(format!("not valid YAML: {e}")),
                    documents: Vec::new(),
                },
            },
        };
        reports.push(report);
    }
    let failed = reports
        .iter()
        .any(|r| r.error.is_some() || r.documents.iter().any(DocumentReport::has_errors));

    match output {
        OutputFormat::Json => {
            let json = serde_json::json!({ "valid": !failed, "files": reports });
            let text = serde_json::to_string_pretty(&json).expect("report serialises");
            println!("{text}");
        }
        OutputFormat::Human => print!("{}", human(&reports)),
    }
    if failed { Exit::Invalid } else { Exit::Ok }
}

/// `--convert`: exactly `canary convert`, with the report on stderr in both formats, so that
/// stdout holds only the YAML to apply.
fn convert(files: &[PathBuf], output: OutputFormat) -> Exit {
    let conversion = super::convert::read_and_convert(files);
    if let Err(code) = super::convert::print_yaml(&conversion) {
        return code;
    }
    match output {
        OutputFormat::Human => eprint!("{}", conversion.human_report()),
        OutputFormat::Json => {
            let json = serde_json::json!({
                "converted": !conversion.has_errors(),
                "fileErrors": conversion.file_errors,
                "documents": conversion.documents,
                "unsupportedProviders": super::convert::unsupported_providers_json(&conversion),
            });
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&json).expect("report serialises")
            );
        }
    }
    super::convert::exit_of(&conversion)
}

fn human(reports: &[FileReport]) -> String {
    let mut out = String::new();
    for report in reports {
        if let Some(error) = &report.error {
            out.push_str(&format!("{}: error: {error}\n", report.file));
            continue;
        }
        if report.documents.is_empty() {
            out.push_str(&format!(
                "{}: error: the file holds no documents\n",
                report.file
            ));
        }
        for document in &report.documents {
            let what = format!(
                "{}[{}] {} {}",
                report.file,
                document.index,
                document.kind.as_deref().unwrap_or("document"),
                document.name.as_deref().unwrap_or("(unnamed)")
            );
            if document.findings.is_empty() {
                out.push_str(&format!("{what}: ok\n"));
            }
            for finding in &document.findings {
                let severity = match finding.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                let metric = finding
                    .metric
                    .as_ref()
                    .map(|m| format!("metric {m}: "))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{what}: {severity}: {metric}{}: {}\n",
                    finding.field, finding.message
                ));
            }
        }
    }
    out
}
