//! The `deploy/` manifests on the real API server: they apply, and the controller's
//! ServiceAccount may do exactly what reconcile needs — and not more.

#[path = "support/cluster.rs"]
mod cluster;

use std::process::Command;

use cluster::cluster;

fn kubectl(args: &[&str]) -> (bool, String) {
    let repo = env!("CARGO_MANIFEST_DIR");
    let output = Command::new(format!("{repo}/scripts/cluster"))
        .arg("kubectl")
        .args(args)
        .current_dir(repo)
        .output()
        .expect("running kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn the_kustomization_applies_and_rbac_is_least_privilege() {
    let _namespace = cluster().exclusive_namespace("deploy").await;
    // A server-side dry run cannot put objects into a namespace it only pretends to create.
    let (ok, text) = kubectl(&["apply", "-f", "deploy/namespace.yaml"]);
    assert!(ok, "applying deploy/namespace.yaml: {text}");
    let (ok, text) = kubectl(&["apply", "--dry-run=server", "-k", "deploy/"]);
    assert!(ok, "kubectl apply --dry-run=server -k deploy/: {text}");
    let (ok, text) = kubectl(&["apply", "-f", "deploy/rbac.yaml"]);
    assert!(ok, "applying deploy/rbac.yaml: {text}");
    let who = "--as=system:serviceaccount:canary-system:canary-controller";
    let allowed = [
        ("watch", "canaries.canary.dev"),
        ("patch", "canaries.canary.dev"),
        ("patch", "canaries.canary.dev/status"),
        ("list", "analysistemplates.canary.dev"),
        ("get", "clusteranalysistemplates.canary.dev"),
        ("create", "deployments.apps"),
        ("patch", "deployments.apps"),
        ("watch", "deployments.apps"),
        ("list", "replicasets.apps"),
        ("patch", "virtualservices.networking.istio.io"),
        ("get", "destinationrules.networking.istio.io"),
        ("get", "secrets"),
        ("create", "events.events.k8s.io"),
    ];
    for (verb, resource) in [
        ("get", "leases.coordination.k8s.io"),
        ("patch", "leases.coordination.k8s.io"),
        ("watch", "leases.coordination.k8s.io"),
    ] {
        let (ok, text) = kubectl(&["auth", "can-i", verb, resource, "-n", "canary-system", who]);
        assert!(
            ok && text.trim() == "yes",
            "{verb} {resource} in canary-system must be allowed: {text}"
        );
        let (_, text) = kubectl(&["auth", "can-i", verb, resource, "-n", "default", who]);
        assert_eq!(
            text.trim(),
            "no",
            "{verb} {resource} elsewhere must be denied"
        );
    }
    for (verb, resource) in allowed {
        let (ok, text) = kubectl(&["auth", "can-i", verb, resource, "-A", who]);
        assert!(
            ok && text.trim() == "yes",
            "{verb} {resource} must be allowed: {text}"
        );
    }
    let denied = [
        ("list", "secrets"),
        ("watch", "secrets"),
        ("delete", "deployments.apps"),
        ("delete", "canaries.canary.dev"),
        // Canaries are read from the watch cache; status is written by a patch.
        ("get", "canaries.canary.dev"),
        ("create", "pods"),
        ("update", "virtualservices.networking.istio.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ];
    for (verb, resource) in denied {
        let (_, text) = kubectl(&["auth", "can-i", verb, resource, "-A", who]);
        assert_eq!(text.trim(), "no", "{verb} {resource} must be denied");
    }
    let (ok, text) = kubectl(&[
        "delete",
        "-f",
        "deploy/rbac.yaml",
        "-f",
        "deploy/namespace.yaml",
        "--wait=false",
    ]);
    assert!(ok, "cleaning up: {text}");
}
