//! The `job` provider on the real local control plane: the Job is created, Kubernetes' job
//! controller and KWOK run it (KWOK's built-in stages complete the pods of Jobs; a pod no
//! node can take never runs), the outcome is the measurement, and the Job is deleted.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use canary::analysis::run::{self, NoSecrets, Schedule};
use canary::api::analysis_template::AnalysisTemplateSpec;
use canary::metrics::Providers;
use canary::metrics::job::METRIC_LABEL;
use k8s_openapi::api::batch::v1::Job;
use kube::api::ListParams;

use cli::all_output;
use cluster::{TestNamespace, cluster, eventually};

/// A Job spec whose pod no node can take (`schedulable` false) or that KWOK completes.
fn job_spec(schedulable: bool, own_deadline: Option<u32>) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "backoffLimit": 0,
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "smoke", "image": "curlimages/curl", "args": ["{{args.url}}"]}],
        }},
    });
    if !schedulable {
        spec["template"]["spec"]["nodeSelector"] = serde_json::json!({"no-such-node": "true"});
    }
    if let Some(seconds) = own_deadline {
        spec["activeDeadlineSeconds"] = seconds.into();
    }
    spec
}

/// Runs a one-metric job template once in `ns`; returns the measurement (phase, value, reason).
async fn measure_once(ns: &TestNamespace, job: serde_json::Value) -> serde_json::Value {
    let spec: AnalysisTemplateSpec = serde_json::from_value(serde_json::json!({
        "args": [{"name": "url", "value": "http://checkout.shop/health"}],
        "metrics": [{"name": "smoke", "provider": {"job": job}}],
    }))
    .unwrap();
    let context = BTreeMap::from([("namespace".to_string(), ns.name.clone())]);
    let prepared = run::prepare("smoke", &spec, &BTreeMap::new(), &context, None, &NoSecrets)
        .unwrap_or_else(|p| panic!("{p:?}"));
    let source = Providers::new().unwrap().with_kube(ns.client.clone());
    let report = run::run(&source, &prepared, Schedule::Once, |_, _| {}).await;
    serde_json::to_value(&report.metrics[0].measurements[0]).unwrap()
}

async fn measurement_jobs(ns: &TestNamespace) -> Vec<Job> {
    ns.api::<Job>()
        .list(&ListParams::default().labels(&format!("{METRIC_LABEL}=smoke")))
        .await
        .unwrap()
        .items
}

/// Argo Rollouts' documented job metric, as written (no condition: the Job succeeding is the
/// success), through `canary analyze` with the cluster's kubeconfig.
#[tokio::test]
async fn argo_documented_job_metric_succeeds_when_the_job_completes_and_is_deleted() {
    let ns = cluster().namespace("job-ok").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: smoke
spec:
  args:
  - name: service
  metrics:
  - name: smoke
    provider:
      job:
        metadata:
          labels:
            team: checkout
        spec:
          backoffLimit: 1
          template:
            spec:
              containers:
              - name: test
                image: my-image:latest
                command: [my-test-script, "{{args.service}}.default.svc.cluster.local"]
              restartPolicy: Never
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_canary"))
        .args([
            "analyze",
            "-f",
            file.to_str().unwrap(),
            "--once",
            "--output",
            "json",
        ])
        .args(["--arg", "service=checkout", "--arg"])
        .arg(format!("namespace={}", ns.name))
        .env("KUBECONFIG", cluster().kubeconfig())
        .output()
        .unwrap();
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let measurement = &report["report"]["metrics"][0]["measurements"][0];
    assert_eq!(measurement["phase"], "Successful", "{measurement}");
    assert!(
        measurement["value"]
            .as_str()
            .unwrap()
            .contains(r#""succeeded":true"#),
        "{measurement}"
    );
    // Deleted afterwards (the Job at once; its pods by the garbage collector).
    eventually(
        "the measurement Job to be deleted",
        cluster::TIMEOUT,
        || async { measurement_jobs(&ns).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_failing_job_is_a_failed_measurement_with_the_jobs_reason() {
    let ns = cluster().namespace("job-fail").await;
    // Its own deadline of 2 s, and no node for its pod: the job controller fails it.
    let measurement =
        measure_once(&ns, serde_json::json!({"spec": job_spec(false, Some(2))})).await;
    assert_eq!(measurement["phase"], "Failed", "{measurement}");
    assert!(
        measurement["value"]
            .as_str()
            .unwrap()
            .contains("DeadlineExceeded"),
        "{measurement}"
    );
    eventually(
        "the measurement Job to be deleted",
        cluster::TIMEOUT,
        || async { measurement_jobs(&ns).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_job_still_running_at_the_timeout_is_an_error_and_is_deleted() {
    let ns = cluster().namespace("job-timeout").await;
    let started = std::time::Instant::now();
    let measurement = measure_once(
        &ns,
        serde_json::json!({"spec": job_spec(false, None), "timeout": "3s"}),
    )
    .await;
    assert_eq!(measurement["phase"], "Error", "{measurement}");
    let reason = measurement["reason"].as_str().unwrap();
    assert!(reason.contains("did not finish within 3s"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    eventually(
        "the measurement Job to be deleted",
        cluster::TIMEOUT,
        || async { measurement_jobs(&ns).await.is_empty().then_some(()) },
    )
    .await;
}
