//! Preparing a `job` metric: the Job spec rendered from the arguments (values JSON-escaped
//! inside its strings) and read as a `batch/v1` JobSpec, so a mistake is reported by
//! `canary validate` with its field rather than by the API server at the first measurement.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobSpec;

use super::render::{self, Variables};
use super::run::ProviderRequest;
use crate::api::analysis_template::{JobMetadata, JobProvider};
use crate::metrics::job::JobQuery;
use crate::metrics::{ProviderQuery, Query};

/// Renders and checks a job metric; or every problem as (field under the metric, message).
pub(crate) fn prepare(
    job: &JobProvider,
    metric: &str,
    declared: &[&str],
    variables: &Variables,
) -> Result<ProviderRequest, Vec<(String, String)>> {
    let JobProvider {
        metadata,
        spec,
        timeout,
    } = job;
    let mut problems = Vec::new();
    let namespace = variables.context.get("namespace").cloned();
    if namespace.is_none() {
        problems.push((
            "provider.job".to_string(),
            "the Job runs in the Canary's namespace, which is not set: for `canary analyze` pass --arg namespace=NAME".to_string(),
        ));
    }
    let spec = match render::render_text(&spec.to_string(), declared, variables, &|_, value| {
        json_string_content(value)
    }) {
        Ok(rendered) if !rendered.secrets().is_empty() => {
            problems.push((
                "provider.job.spec".into(),
                "a Secret-backed argument would be written into the Job, where anyone who can read Jobs sees it: let the pod read the Secret itself (env[].valueFrom.secretKeyRef)".into(),
            ));
            None
        }
        Ok(rendered) => match serde_json::from_str::<JobSpec>(rendered.text_to_send()) {
            Ok(spec) => Some(spec),
            Err(e) => {
                problems.push((
                    "provider.job.spec".into(),
                    format!("is not a batch/v1 JobSpec: {e}"),
                ));
                None
            }
        },
        Err(e) => {
            problems.push(("provider.job.spec".into(), e.to_string()));
            None
        }
    };
    if let Some(spec) = &spec {
        let restart = spec
            .template
            .spec
            .as_ref()
            .and_then(|pod| pod.restart_policy.as_deref());
        if !matches!(restart, Some("Never" | "OnFailure")) {
            problems.push((
                "provider.job.spec.template.spec.restartPolicy".into(),
                "a Job's pods need restartPolicy Never or OnFailure".into(),
            ));
        }
    }
    if let Some(too_long) = timeout.and_then(crate::api::Duration::too_long) {
        problems.push(("provider.job.timeout".into(), too_long));
    }
    match (spec, namespace) {
        (Some(spec), Some(namespace)) if problems.is_empty() => {
            let JobMetadata {
                labels,
                annotations,
            } = metadata.clone().unwrap_or_default();
            Ok(ProviderRequest {
                address: format!("namespace {namespace}"),
                query: Query::plain(format!("a Job from metric {metric}'s job.spec")),
                timeout: job.timeout().as_std(),
                headers: Vec::new(),
                header_secrets: Vec::new(),
                insecure: false,
                provider: ProviderQuery::Job(Box::new(JobQuery {
                    namespace,
                    metric: metric.to_string(),
                    spec,
                    labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                    annotations,
                    owner: None,
                })),
                compare: None,
            })
        }
        _ => Err(problems),
    }
}

/// `value` as the inside of a JSON string (escaped, without the quotes).
fn json_string_content(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn provider(spec: serde_json::Value) -> JobProvider {
        serde_json::from_value(serde_json::json!({ "spec": spec })).unwrap()
    }

    fn variables(secret: bool) -> Variables {
        Variables {
            args: BTreeMap::from([("url".to_string(), "http://svc/\"x\"".to_string())]),
            context: BTreeMap::from([("namespace".to_string(), "shop".to_string())]),
            secret_args: if secret {
                BTreeSet::from(["url".to_string()])
            } else {
                BTreeSet::new()
            },
        }
    }

    fn spec(restart: &str) -> serde_json::Value {
        serde_json::json!({
            "backoffLimit": 1,
            "template": {"spec": {
                "restartPolicy": restart,
                "containers": [{"name": "smoke", "image": "curlimages/curl", "args": ["{{args.url}}"]}],
            }},
        })
    }

    #[test]
    fn arguments_are_rendered_into_the_spec_and_mistakes_are_named() {
        let prepared = prepare(
            &provider(spec("Never")),
            "smoke",
            &["url"],
            &variables(false),
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        let ProviderQuery::Job(job) = &prepared.provider else {
            panic!("not a job: {prepared:?}")
        };
        assert_eq!(job.namespace, "shop");
        let container = &job.spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.args.as_ref().unwrap()[0], "http://svc/\"x\"");

        let cases = [
            (spec("Always"), false, "restartPolicy Never or OnFailure"),
            (spec("Never"), true, "anyone who can read Jobs"),
            (
                serde_json::json!({"template": "nope"}),
                false,
                "is not a batch/v1 JobSpec",
            ),
        ];
        for (spec, secret, expected) in cases {
            let problems =
                prepare(&provider(spec), "smoke", &["url"], &variables(secret)).unwrap_err();
            assert!(problems[0].1.contains(expected), "{problems:?}");
        }
    }
}
