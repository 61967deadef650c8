//! The `deploy/` manifests on the real API server: they apply, and the controller's
//! ServiceAccount may do exactly what reconcile needs — and not more.

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeSet;
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
        // The user's HPA found and watched; the derived one for stable written and deleted.
        ("list", "horizontalpodautoscalers.autoscaling"),
        ("watch", "horizontalpodautoscalers.autoscaling"),
        ("create", "horizontalpodautoscalers.autoscaling"),
        ("patch", "horizontalpodautoscalers.autoscaling"),
        ("delete", "horizontalpodautoscalers.autoscaling"),
        ("patch", "virtualservices.networking.istio.io"),
        ("get", "destinationrules.networking.istio.io"),
        ("patch", "httproutes.gateway.networking.k8s.io"),
        ("get", "grpcroutes.gateway.networking.k8s.io"),
        // Watched, so that a hand edit of the weights is set back at once.
        ("watch", "virtualservices.networking.istio.io"),
        ("list", "destinationrules.networking.istio.io"),
        ("watch", "httproutes.gateway.networking.k8s.io"),
        ("list", "grpcroutes.gateway.networking.k8s.io"),
        ("get", "services"),
        ("create", "services"),
        ("patch", "services"),
        ("get", "secrets"),
        ("create", "events.events.k8s.io"),
        // Job metrics.
        ("create", "jobs.batch"),
        ("watch", "jobs.batch"),
        ("delete", "jobs.batch"),
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
        ("update", "httproutes.gateway.networking.k8s.io"),
        ("list", "services"),
        ("delete", "services"),
        // The user's HPA is read, never changed (server-side apply of the derived one is a patch).
        ("update", "horizontalpodautoscalers.autoscaling"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        // A measurement Job is created, watched and deleted, never changed or read alone.
        ("get", "jobs.batch"),
        ("patch", "jobs.batch"),
        ("update", "jobs.batch"),
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

/// The objects `kubectl kustomize DIR` builds.
fn kustomize(dir: &str) -> Vec<serde_json::Value> {
    let (ok, text) = kubectl(&["kustomize", dir]);
    assert!(ok, "kubectl kustomize {dir}: {text}");
    text.split("\n---\n")
        .map(|document| serde_saphyr::from_str(document).expect("kustomize output parses"))
        .collect()
}

/// (group, resource) of every cluster-scoped resource the API server serves, and the kinds.
fn cluster_scoped() -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let (ok, text) = kubectl(&["api-resources", "--namespaced=false", "--no-headers"]);
    assert!(ok, "kubectl api-resources: {text}");
    let mut resources = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for line in text.lines() {
        // NAME [SHORTNAMES] APIVERSION NAMESPACED KIND
        let columns: Vec<&str> = line.split_whitespace().collect();
        let [name, .., api_version, _, kind] = columns[..] else {
            continue;
        };
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        resources.insert((group.to_string(), name.to_string()));
        kinds.insert(kind.to_string());
    }
    (resources, kinds)
}

/// Every (group, resource, verb) a Role's or ClusterRole's rules grant.
fn grants(role: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut all = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(
            rule.get("resourceNames").is_none(),
            "no rule is limited by name: {rule}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    all.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    all
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the build"))
}

#[tokio::test]
async fn the_namespaced_install_is_the_cluster_wide_one_without_its_cluster_scoped_parts() {
    let _namespace = cluster().namespace("deploy-ns").await;
    let wide = kustomize("deploy/");
    let namespaced = kustomize("deploy/namespaced");
    let (scoped_resources, scoped_kinds) = cluster_scoped();
    assert!(scoped_kinds.contains("ClusterRole"), "{scoped_kinds:?}");

    // Nothing cluster-scoped, and everything in the one namespace.
    for object in &namespaced {
        let kind = object["kind"].as_str().unwrap();
        assert!(
            !scoped_kinds.contains(kind),
            "the namespaced install holds a cluster-scoped {kind}"
        );
        assert_eq!(object["metadata"]["namespace"], "default", "{object}");
        for subject in object["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["namespace"], "default", "{object}");
        }
    }
    // The cluster-wide install's namespaced objects are all there, and a Role with its binding.
    for object in wide
        .iter()
        .filter(|o| !scoped_kinds.contains(o["kind"].as_str().unwrap()))
    {
        find(
            &namespaced,
            object["kind"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap(),
        );
    }
    find(&namespaced, "RoleBinding", "canary-controller");

    // The Role grants exactly the ClusterRole's rules on namespaced resources.
    let on_namespaced = |grant: &(String, String, String)| {
        let resource = grant.1.split('/').next().unwrap().to_string();
        !scoped_resources.contains(&(grant.0.clone(), resource))
    };
    let cluster_role = grants(find(&wide, "ClusterRole", "canary-controller"));
    let role = grants(find(&namespaced, "Role", "canary-controller"));
    let expected: BTreeSet<_> = cluster_role
        .iter()
        .filter(|g| on_namespaced(g))
        .cloned()
        .collect();
    assert_eq!(role, expected);
    assert!(
        cluster_role.len() > role.len(),
        "the ClusterRole's cluster-scoped grants (ClusterAnalysisTemplates) are left out"
    );
    let lease = "canary-controller-leader-election";
    assert_eq!(
        grants(find(&namespaced, "Role", lease)),
        grants(find(&wide, "Role", lease)),
        "the same Lease permission"
    );

    // The same controller, confined to the namespace it runs in.
    let deployment = find(&namespaced, "Deployment", "canary-controller");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let wide_container = &find(&wide, "Deployment", "canary-controller")["spec"]["template"]["spec"]
        ["containers"][0];
    assert_eq!(container["image"], wide_container["image"]);
    assert_eq!(container["args"], wide_container["args"]);
    let env = container["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "CANARY_NAMESPACE"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "{env:?}"
    );
    // The API server takes it as it is.
    let (ok, text) = kubectl(&["apply", "--dry-run=server", "-k", "deploy/namespaced"]);
    assert!(
        ok,
        "kubectl apply --dry-run=server -k deploy/namespaced: {text}"
    );
}
