//! Argo Rollouts' `job` provider: a measurement is a Kubernetes Job. It is created from the
//! metric's spec in the Canary's namespace (owned by the Canary, labelled with it and the
//! metric), watched until it completes or fails, and deleted with its pods afterwards,
//! whatever the outcome. The metric's timeout bounds the wait; a minute more is the Job's
//! `activeDeadlineSeconds` (unless its own is shorter), so Kubernetes stops the pods of a
//! Job given up on even if it could not be deleted.
//!
//! `result` is `{"job": NAME, "succeeded": true|false, "reason": …}`; a job metric without
//! conditions is judged by `result.succeeded`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ObjectMeta, PostParams, PropagationPolicy};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use tokio::sync::OnceCell;

use super::{MetricsError, MetricsSource, ProviderQuery, QueryOutput, QueryRequest};

const PROVIDER: &str = "the Kubernetes Job";
/// Label naming the Canary a measurement Job belongs to.
pub const CANARY_LABEL: &str = "canary.dev/canary";
/// Label naming the metric a measurement Job measures.
pub const METRIC_LABEL: &str = "canary.dev/metric";

/// How long after the metric's timeout Kubernetes stops a Job's pods by itself.
const DEADLINE_GRACE_SECONDS: u64 = 60;

/// What a Job measurement needs besides its timeout.
#[derive(Clone, Debug, PartialEq)]
pub struct JobQuery {
    pub namespace: String,
    pub metric: String,
    /// The rendered, checked spec.
    pub spec: JobSpec,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The Canary that owns the Job (so deleting the Canary deletes a Job left behind), set by
    /// the controller; `canary analyze` runs Jobs without an owner.
    pub owner: Option<OwnerReference>,
}

impl JobQuery {
    /// Sets the owning Canary: the owner reference and the [`CANARY_LABEL`].
    pub fn owned_by(&mut self, owner: OwnerReference) {
        self.labels
            .insert(CANARY_LABEL.to_string(), owner.name.clone());
        self.owner = Some(owner);
    }

    /// The Job to create: a name generated from the owner and the metric, the labels, the
    /// owner reference, and an `activeDeadlineSeconds` no longer than `timeout`.
    pub fn job(&self, timeout: std::time::Duration) -> Job {
        let mut spec = self.spec.clone();
        // A backstop for when the Job cannot be deleted (the controller stopped): a little
        // after the timeout, so that it is the timeout, not the deadline, that ends a Job
        // still running then, and says so.
        let deadline = i64::try_from(timeout.as_secs().saturating_add(DEADLINE_GRACE_SECONDS))
            .unwrap_or(i64::MAX);
        spec.active_deadline_seconds = Some(
            spec.active_deadline_seconds
                .map_or(deadline, |own| own.min(deadline)),
        );
        let mut labels = self.labels.clone();
        labels.insert(METRIC_LABEL.to_string(), label_value(&self.metric));
        let owner_name = self.owner.as_ref().map_or("canary", |o| o.name.as_str());
        Job {
            metadata: ObjectMeta {
                // Names are at most 63 characters; the API server adds 5 random ones.
                generate_name: Some(format!(
                    "{}-",
                    truncated(&format!("{owner_name}-{}", self.metric), 57)
                )),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        }
    }
}

/// `text` as a label value: at most 63 characters, ending in an alphanumeric one.
fn label_value(text: &str) -> String {
    truncated(text, 63)
}

fn truncated(text: &str, max: usize) -> String {
    let mut cut: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while cut.ends_with('-') {
        cut.pop();
    }
    cut
}

/// Runs measurement Jobs. The controller gives it its client; elsewhere (`canary analyze`)
/// the client is made from the kubeconfig on first use, so commands that run no Job never
/// need a cluster.
#[derive(Clone, Default)]
pub struct JobSource {
    client: Arc<OnceCell<Result<Client, String>>>,
}

impl std::fmt::Debug for JobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSource")
            .field("has_client", &self.client.initialized())
            .finish()
    }
}

impl JobSource {
    pub fn with_client(client: Client) -> Self {
        Self {
            client: Arc::new(OnceCell::new_with(Some(Ok(client)))),
        }
    }

    async fn client(&self) -> Result<Client, String> {
        self.client
            .get_or_init(|| async {
                Client::try_default().await.map_err(|e| {
                    format!("no Kubernetes client to run the Job with: {e}; set KUBECONFIG")
                })
            })
            .await
            .clone()
    }

    async fn run(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        let failed = |problem: String| MetricsError::Endpoint {
            provider: PROVIDER,
            address: request.address.clone(),
            problem,
        };
        let ProviderQuery::Job(query) = &request.provider else {
            return Err(failed(format!(
                "was asked a query for {}",
                request.provider.name()
            )));
        };
        let client = self.client().await.map_err(&failed)?;
        let jobs: Api<Job> = Api::namespaced(client, &query.namespace);
        let created = jobs
            .create(&PostParams::default(), &query.job(request.timeout))
            .await
            .map_err(|e| failed(format!("could not be created: {e}")))?;
        let name = created.metadata.name.clone().unwrap_or_default();
        let finished = tokio::time::timeout(
            request.timeout,
            await_condition(jobs.clone(), &name, is_finished),
        )
        .await;
        // Deleted whatever happened, with its pods; a failure to delete leaves it to the
        // owner reference (and says so in the log).
        let delete = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        if let Err(e) = jobs.delete(&name, &delete).await {
            tracing::warn!(namespace = %query.namespace, job = %name, error = %e, "could not delete a measurement Job");
        }
        let job = match finished {
            Err(_) => {
                return Err(failed(format!(
                    "{name} did not finish within {} (the metric's timeout); it was deleted",
                    crate::api::Duration::from_millis(
                        u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX)
                    )
                )));
            }
            Ok(Err(e)) => return Err(failed(format!("{name} could not be watched: {e}"))),
            Ok(Ok(None)) => {
                return Err(failed(format!(
                    "{name} was deleted by someone else before it finished"
                )));
            }
            Ok(Ok(Some(job))) => job,
        };
        Ok(QueryOutput::Json(outcome(&name, &job)))
    }
}

/// The Job's condition of `kind` (`Complete`, `Failed`) when it is true.
fn true_condition<'j>(
    job: &'j Job,
    kind: &str,
) -> Option<&'j k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
}

fn is_finished(job: Option<&Job>) -> bool {
    job.is_none_or(|job| {
        true_condition(job, "Complete").is_some() || true_condition(job, "Failed").is_some()
    })
}

/// `result` of a finished Job.
fn outcome(name: &str, job: &Job) -> serde_json::Value {
    match true_condition(job, "Failed") {
        Some(failed) => serde_json::json!({
            "job": name,
            "succeeded": false,
            "reason": failed.reason.clone().unwrap_or_else(|| "Failed".into()),
        }),
        None => serde_json::json!({"job": name, "succeeded": true}),
    }
}

impl MetricsSource for JobSource {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        self.run(request).await.map_err(MetricsError::shortened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_is_named_labelled_owned_and_bounded_by_the_timeout() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "activeDeadlineSeconds": 3600,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
        }))
        .unwrap();
        let mut query = JobQuery {
            namespace: "shop".into(),
            metric: "Smoke_Test".into(),
            spec,
            labels: BTreeMap::from([("team".into(), "a".into())]),
            annotations: BTreeMap::new(),
            owner: None,
        };
        query.owned_by(OwnerReference {
            api_version: "canary.dev/v1alpha1".into(),
            kind: "Canary".into(),
            name: "checkout".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        });
        let job = query.job(std::time::Duration::from_secs(120));
        assert_eq!(
            job.metadata.generate_name.as_deref(),
            Some("checkout-smoke-test-")
        );
        let labels = job.metadata.labels.unwrap();
        assert_eq!(labels[CANARY_LABEL], "checkout");
        assert_eq!(labels[METRIC_LABEL], "smoke-test");
        assert_eq!(labels["team"], "a");
        assert_eq!(job.metadata.owner_references.unwrap()[0].uid, "u-1");
        assert_eq!(job.spec.unwrap().active_deadline_seconds, Some(180));
    }
}
