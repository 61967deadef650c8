//! `canary crds`: print the CRDs generated from the Rust types (what `deploy/crds/` holds).

use std::io::Write;

use super::Exit;

/// Print the CustomResourceDefinitions as YAML, ready for `kubectl apply -f -`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  canary crds | kubectl apply --server-side -f -")]
pub struct Args {}

pub fn run(_: Args) -> Exit {
    let mut stdout = std::io::stdout().lock();
    for (_, crd) in crate::api::crds() {
        let yaml = match crate::api::crd_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("error: could not serialise a CRD: {e}");
                return Exit::Failed;
            }
        };
        if writeln!(stdout, "---\n{}", yaml.trim_end()).is_err() {
            return Exit::Failed;
        }
    }
    Exit::Ok
}
