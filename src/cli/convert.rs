//! `canary convert FILE…`: Argo Rollouts and Flagger manifests as `canary.dev` ones.

use std::path::PathBuf;

use super::{Exit, OutputFormat};
use crate::convert::{Conversion, Input, convert};

/// Convert Argo Rollouts and Flagger manifests into a Deployment, a Canary and its templates.
///
/// Reads Argo Rollouts `Rollout`s (canary with Istio subsets, the Gateway API plugin or no
/// router; blue-green; steps, background analysis, args, workloadRef), Flagger `Canary`s
/// (analysis interval, threshold, stepWeight(s), maxWeight, iterations, match, metrics,
/// webhooks) and the analysis templates of both (Argo AnalysisTemplate and
/// ClusterAnalysisTemplate, Flagger MetricTemplate). Every other document (Services, routing
/// objects, HPAs, Deployments, canary.dev objects) is printed as it is, so the output is one
/// stream to apply: `canary convert rollout.yaml | kubectl apply -f -`.
///
/// A note names every field that could not be carried, and why (on stderr; with -o json, in
/// the JSON on stdout). The converted objects are checked as `canary validate` checks them.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  canary convert rollout.yaml analysis-templates.yaml > canary.yaml\n  canary convert flagger-canary.yaml metric-templates.yaml | kubectl apply -f -\n\nExit codes: 0 converted (notes about fields not carried are warnings), 2 a file or document could not be converted as it behaves (errors on stderr; what could be converted is still printed)."
)]
pub struct Args {
    /// Manifest files (YAML, several documents per file). Templates are looked up across all
    /// of them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Reads the files; one that cannot be read is an error of the conversion, like bad YAML.
pub fn read_and_convert(files: &[PathBuf]) -> Conversion {
    let mut inputs = Vec::new();
    let mut unreadable = Vec::new();
    for file in files {
        let name = file.display().to_string();
        match std::fs::read_to_string(file) {
            Ok(text) => inputs.push(Input { file: name, text }),
            Err(e) => unreadable.push(crate::convert::FileError {
                file: name,
                error: format!("cannot read the file: {e}"),
            }),
        }
    }
    let mut conversion = convert(&inputs);
    conversion.file_errors.splice(0..0, unreadable);
    conversion
}

pub fn run(args: Args, output: OutputFormat) -> Exit {
    let conversion = read_and_convert(&args.files);
    match output {
        OutputFormat::Human => {
            if let Err(code) = print_yaml(&conversion) {
                return code;
            }
            eprint!("{}", conversion.human_report());
        }
        OutputFormat::Json => {
            let objects: Vec<&serde_json::Value> = conversion.objects().collect();
            let json = serde_json::json!({
                "converted": !conversion.has_errors(),
                "objects": objects,
                "fileErrors": conversion.file_errors,
                "documents": conversion.documents,
                "unsupportedProviders": unsupported_providers_json(&conversion),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("report serialises")
            );
        }
    }
    exit_of(&conversion)
}

/// The YAML stream on stdout.
pub fn print_yaml(conversion: &Conversion) -> Result<(), Exit> {
    match conversion.yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: could not write the converted objects as YAML: {e}");
            Err(Exit::Invalid)
        }
    }
}

pub fn exit_of(conversion: &Conversion) -> Exit {
    if conversion.has_errors() {
        Exit::Invalid
    } else {
        Exit::Ok
    }
}

/// `[{"provider": "datadog", "documents": ["file[0] AnalysisTemplate x"]}]`
pub fn unsupported_providers_json(conversion: &Conversion) -> serde_json::Value {
    conversion
        .unsupported_providers()
        .into_iter()
        .map(|(provider, documents)| serde_json::json!({"provider": provider, "documents": documents}))
        .collect()
}
