//! The binary's own surface: the kubectl plugin alias, `canary crds`, help and exit codes.

#[path = "support/cli.rs"]
mod cli;

use std::process::Command;

use cli::{canary, stdout};

#[test]
fn works_as_a_kubectl_plugin_under_the_name_kubectl_canary() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-canary");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_canary"), &plugin).unwrap();

    let help = Command::new(&plugin).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "{text}");
    assert!(text.contains("Usage: kubectl canary"), "{text}");

    // Same behaviour: the same output for the same command.
    let as_plugin = Command::new(&plugin).arg("crds").output().unwrap();
    assert_eq!(as_plugin.status.code(), Some(0));
    assert_eq!(as_plugin.stdout, canary(&["crds"]).stdout);
}

#[test]
fn crds_prints_the_committed_crds() {
    let output = canary(&["crds"]);
    assert_eq!(output.status.code(), Some(0));
    let printed = stdout(&output);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
    for (file, _) in canary::api::crds() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            printed.contains(committed.trim_end()),
            "{file} is not what `canary crds` prints"
        );
    }
}

#[test]
fn help_documents_the_exit_codes_and_usage_errors_exit_2() {
    let help = canary(&["--help"]);
    let text = stdout(&help);
    for line in [
        "0  promoted, passed or ok",
        "4  inconclusive",
        "5  superseded",
    ] {
        assert!(text.contains(line), "{text}");
    }
    let unknown = canary(&["analyse-this"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn prints_shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let output = canary(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = stdout(&output);
        for word in ["run", "status", "abort", "success-on-pause"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
}
