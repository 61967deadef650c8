//! The CRDs committed under `deploy/crds/` must be exactly what the Rust types generate.
//! After changing `src/api`, regenerate them with `UPDATE_CRDS=1 cargo test --test crds`.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let mut drifted = Vec::new();
    for (file, crd) in canary::api::crds() {
        let generated = canary::api::crd_yaml(&crd).expect("CRD serialises");
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &generated).expect("write CRD");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "these CRDs differ from src/api: {drifted:?}; regenerate with `UPDATE_CRDS=1 cargo test --test crds` and commit them"
    );
}

#[test]
fn committed_crds_parse_as_crds_of_our_group() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
    for (file, _) in canary::api::crds() {
        let text = std::fs::read_to_string(dir.join(file)).expect("committed CRD exists");
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).expect("committed CRD parses");
        assert_eq!(crd.spec.group, canary::api::GROUP);
        assert_eq!(crd.spec.versions[0].name, canary::api::VERSION);
    }
}

#[test]
fn the_kustomization_installs_every_crd() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let text = std::fs::read_to_string(root.join("kustomization.yaml")).unwrap();
    let kustomization: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for (file, _) in canary::api::crds() {
        let path = format!("crds/{file}");
        assert!(
            resources.contains(&path.as_str()),
            "deploy/kustomization.yaml does not list {path}"
        );
    }
    for resource in resources {
        assert!(
            root.join(resource).exists(),
            "deploy/{resource} is listed but missing"
        );
    }
}
