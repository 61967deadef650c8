//! `canary run`: what a CI job calls after pushing an image.

use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use super::cluster::{Connection, Failure, KubeArgs, api_failure};
use super::output::terminal_safe;
use super::status::{line, same_change, view};
use super::{Exit, OutputFormat};
use crate::api::canary::{Canary, PauseReason, Phase, RollbackReason};
use crate::workload;

/// Roll out an image and (with --wait) follow that revision to its verdict.
///
/// Sets the image on the Canary's target Deployment, identifies the revision this creates,
/// and with --wait follows only that revision: exit 0 when it is promoted, 1 when it is rolled
/// back or fails (also when an operator aborts it), 3 on timeout, 4 when its analysis is
/// inconclusive and a human must decide, 5 when a newer revision supersedes it, 2 on invalid
/// input (no such Canary or container, no access). When the image is already live, nothing
/// changes and it exits 0.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  canary run web --image web:1.4.2 --wait
  canary run web --image app=web:1.4.2 --image sidecar=proxy:2 --wait --timeout 30m
  canary run -l team=checkout --image checkout=checkout:9 --wait
  canary run web --image web:1.5 --wait --success-on-pause   # a manual gate counts as success")]
pub struct Args {
    /// The Canary (or select several with -l).
    #[arg(required_unless_present = "selector", conflicts_with = "selector")]
    pub name: Option<String>,
    /// Every Canary with these labels.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// `[container=]image`; the container may be left out when there is only one (repeatable).
    #[arg(long = "image", required = true, value_name = "[CONTAINER=]IMAGE")]
    pub images: Vec<String>,
    /// Follow the revision until it is promoted, rolled back or superseded.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 3).
    #[arg(long, default_value = "30m")]
    pub timeout: crate::api::Duration,
    /// With --wait: exit 0 when the rollout reaches a pause step that waits for `canary promote`.
    #[arg(long)]
    pub success_on_pause: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// The documented JSON shape of `canary run -o json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub namespace: String,
    pub canary: String,
    pub revision: String,
    pub images: String,
    /// `started`, `alreadyLive`, `promoted`, `rolledBack`, `failed`, `paused`, `inconclusive`,
    /// `superseded` or `timedOut`.
    pub result: &'static str,
    /// `exit` as the process exit code.
    pub exit_code: u8,
    #[serde(skip)]
    pub exit: Exit,
    pub message: String,
    /// One line per change seen while waiting.
    pub timeline: Vec<String>,
}

struct Outcome {
    exit: Exit,
    result: &'static str,
    message: String,
}

/// Parses `[container=]image`.
fn parse_image(text: &str) -> Result<(Option<&str>, &str), Failure> {
    let (container, image) = match text.split_once('=') {
        Some((c, i)) => (Some(c), i),
        None => (None, text),
    };
    if image.is_empty() || container.is_some_and(str::is_empty) {
        return Err(Failure::invalid(format!(
            "--image {text:?} is not [CONTAINER=]IMAGE"
        )));
    }
    Ok((container, image))
}

/// The containers to change in `deployment`, as (name, image); errors name what exists.
fn container_updates(
    deployment: &Deployment,
    images: &[String],
) -> Result<Vec<(String, String)>, Failure> {
    let name = deployment.name_any();
    let containers: Vec<String> = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    images
        .iter()
        .map(|text| {
            let (container, image) = parse_image(text)?;
            let container = match container {
                Some(c) if containers.iter().any(|n| n == c) => c.to_string(),
                Some(c) => {
                    return Err(Failure::invalid(format!(
                        "Deployment {name} has no container {c} (containers: {})",
                        containers.join(", ")
                    )));
                }
                None if containers.len() == 1 => containers[0].clone(),
                None => {
                    return Err(Failure::invalid(format!(
                        "Deployment {name} has {} containers ({}): name one, --image CONTAINER=IMAGE",
                        containers.len(),
                        containers.join(", ")
                    )));
                }
            };
            Ok((container, image.to_string()))
        })
        .collect()
}

fn image_of(deployment: &Deployment, container: &str) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .image
        .clone()
}

fn revision_of(deployment: &Deployment) -> Result<String, Failure> {
    workload::target_state(deployment)
        .map(|t| t.revision)
        .map_err(Failure::invalid)
}

pub async fn run(args: Args, output: OutputFormat) -> Result<Exit, Failure> {
    let connection = args.kube.connect().await?;
    let canaries: Vec<Canary> = match (&args.name, &args.selector) {
        (Some(name), _) => vec![connection.canary(name).await?],
        (None, Some(selector)) => {
            let list = connection
                .canaries()
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| api_failure(&format!("Canaries with labels {selector}"), e))?;
            if list.items.is_empty() {
                return Err(Failure::invalid(format!(
                    "no Canary in namespace {} has the labels {selector}",
                    connection.namespace
                )));
            }
            list.items
        }
        (None, None) => unreachable!("clap requires a name or a selector"),
    };
    // Validate everything before changing anything.
    let deployments: Api<Deployment> =
        Api::namespaced(connection.client.clone(), &connection.namespace);
    let mut plans = Vec::new();
    for canary in &canaries {
        let target = &canary.spec.target_ref.name;
        let deployment = deployments
            .get_opt(target)
            .await
            .map_err(|e| api_failure(&format!("Deployment {}/{target}", connection.namespace), e))?
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "Canary {} targets Deployment {target}, which does not exist",
                    canary.name_any()
                ))
            })?;
        let updates = container_updates(&deployment, &args.images)?;
        plans.push((canary.clone(), deployment, updates));
    }
    let timeout = args.timeout.as_std();
    let results =
        futures::future::join_all(plans.into_iter().map(|(canary, deployment, updates)| {
            roll_out(
                &connection,
                canary,
                deployment,
                updates,
                args.wait,
                timeout,
                args.success_on_pause,
                output,
            )
        }))
        .await;
    let mut worst = Exit::Ok;
    for result in results {
        let result = result?;
        worst = worse(worst, result.exit);
        match output {
            OutputFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(&result).expect("result serialises")
            ),
            OutputFormat::Human => {
                println!(
                    "{}/{}: {}",
                    result.namespace,
                    result.canary,
                    terminal_safe(&result.message)
                )
            }
        }
    }
    Ok(worst)
}

/// The exit code of several rollouts: any failure first, then timeouts, then the rest.
fn worse(a: Exit, b: Exit) -> Exit {
    let rank = |e: Exit| match e {
        Exit::Ok => 0,
        Exit::Superseded => 1,
        Exit::Inconclusive => 2,
        Exit::TimedOut => 3,
        Exit::Failed => 4,
        Exit::Invalid => 5,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[allow(clippy::too_many_arguments)]
async fn roll_out(
    connection: &Connection,
    canary: Canary,
    deployment: Deployment,
    updates: Vec<(String, String)>,
    wait: bool,
    timeout: Duration,
    success_on_pause: bool,
    output: OutputFormat,
) -> Result<RunResult, Failure> {
    let namespace = connection.namespace.clone();
    let name = canary.name_any();
    let target = canary.spec.target_ref.name.clone();
    let deployments: Api<Deployment> = Api::namespaced(connection.client.clone(), &namespace);
    let unchanged = updates
        .iter()
        .all(|(container, image)| image_of(&deployment, container).as_deref() == Some(image));
    let updated = if unchanged {
        deployment
    } else {
        let containers: Vec<_> = updates
            .iter()
            .map(|(name, image)| json!({"name": name, "image": image}))
            .collect();
        deployments
            .patch(
                &target,
                &PatchParams::default(),
                &Patch::Strategic(
                    json!({"spec": {"template": {"spec": {"containers": containers}}}}),
                ),
            )
            .await
            .map_err(|e| api_failure(&format!("Deployment {namespace}/{target}"), e))?
    };
    // The API server's copy (with its defaults) is what the controller hashes too.
    let revision = revision_of(&updated)?;
    let images = updates
        .iter()
        .map(|(c, i)| format!("{c}={i}"))
        .collect::<Vec<_>>()
        .join(",");
    let status = canary.status.clone().unwrap_or_default();
    let live =
        status.stable_revision.as_deref() == Some(&revision) && status.canary_revision.is_none();
    let mut result = RunResult {
        namespace: namespace.clone(),
        canary: name.clone(),
        revision: revision.clone(),
        images: images.clone(),
        result: "started",
        exit_code: Exit::Ok as u8,
        exit: Exit::Ok,
        message: String::new(),
        timeline: Vec::new(),
    };
    if live {
        result.result = "alreadyLive";
        result.message = format!("{images} (revision {revision}) is already live; nothing to do");
        return Ok(result);
    }
    if !wait {
        result.message = format!(
            "rolling out {images} as revision {revision}; follow it with `canary status {name} --watch`"
        );
        return Ok(result);
    }
    let outcome = follow(
        connection,
        &name,
        &target,
        &revision,
        timeout,
        success_on_pause,
        output,
        &mut result.timeline,
    )
    .await?;
    result.result = outcome.result;
    result.exit_code = outcome.exit as u8;
    result.exit = outcome.exit;
    result.message = outcome.message;
    Ok(result)
}

/// Follows `revision` of Canary `name` to its verdict.
#[allow(clippy::too_many_arguments)]
async fn follow(
    connection: &Connection,
    name: &str,
    target: &str,
    revision: &str,
    timeout: Duration,
    success_on_pause: bool,
    output: OutputFormat,
    timeline: &mut Vec<String>,
) -> Result<Outcome, Failure> {
    let deployments: Api<Deployment> =
        Api::namespaced(connection.client.clone(), &connection.namespace);
    let mut stream = std::pin::pin!(connection.watch_canary(name));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_line = String::new();
    let mut reported_pause = false;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            // Look at the target too, even when the Canary does not change.
            _ = tokio::time::sleep(Duration::from_secs(2)) => None,
        };
        if tokio::time::Instant::now() >= deadline {
            return Ok(Outcome {
                exit: Exit::TimedOut,
                result: "timedOut",
                message: format!(
                    "revision {revision} had no verdict after {}",
                    crate::api::Duration::from(timeout)
                ),
            });
        }
        // A newer revision of the target supersedes ours, whatever the Canary shows yet.
        if let Ok(Some(current)) = deployments.get_opt(target).await
            && let Ok(current_revision) = revision_of(&current)
            && current_revision != revision
        {
            return Ok(Outcome {
                exit: Exit::Superseded,
                result: "superseded",
                message: format!(
                    "revision {revision} was superseded by {current_revision} (Deployment {target} changed again)"
                ),
            });
        }
        let canary = match next {
            Some(Ok(canary)) => canary,
            Some(Err(e)) => return Err(Failure::invalid(format!("watching Canary {name}: {e}"))),
            None => match connection.canaries().get_opt(name).await {
                Ok(Some(canary)) => canary,
                Ok(None) => {
                    return Err(Failure::new(
                        Exit::Failed,
                        format!("Canary {name} was deleted while following revision {revision}"),
                    ));
                }
                Err(e) => return Err(api_failure(&format!("Canary {name}"), e)),
            },
        };
        let now = Timestamp::now();
        let current = view(&canary, &[], now);
        let this_line = line(&current, now);
        if !same_change(&this_line, &last_line) {
            if output == OutputFormat::Human {
                eprintln!("{}", terminal_safe(&this_line));
            }
            timeline.push(this_line.clone());
            last_line = this_line;
        }
        let status = canary.status.clone().unwrap_or_default();
        let ours = status.canary_revision.as_deref() == Some(revision);
        let message = status.message.clone().unwrap_or_default();
        match status.phase {
            Phase::Promoted | Phase::Idle
                if status.stable_revision.as_deref() == Some(revision) =>
            {
                return Ok(Outcome {
                    exit: Exit::Ok,
                    result: "promoted",
                    message: format!("promoted revision {revision}: {message}"),
                });
            }
            Phase::RolledBack if status.failed_revision.as_deref() == Some(revision) => {
                let reason = status.rollback_reason;
                if reason == Some(RollbackReason::TargetReverted) {
                    return Ok(Outcome {
                        exit: Exit::Superseded,
                        result: "superseded",
                        message: format!(
                            "revision {revision} was replaced by the stable revision: {message}"
                        ),
                    });
                }
                let why = match reason {
                    Some(RollbackReason::Aborted) => "aborted by an operator".to_string(),
                    Some(other) => format!("{other:?}"),
                    None => "rolled back".into(),
                };
                return Ok(Outcome {
                    exit: Exit::Failed,
                    result: "rolledBack",
                    message: format!("revision {revision} was rolled back ({why}): {message}"),
                });
            }
            Phase::Failed => {
                return Ok(Outcome {
                    exit: Exit::Failed,
                    result: "failed",
                    message: format!("the Canary failed: {message}"),
                });
            }
            Phase::Paused if ours => match status.pause_reason {
                Some(PauseReason::Step) if success_on_pause => {
                    return Ok(Outcome {
                        exit: Exit::Ok,
                        result: "paused",
                        message: format!(
                            "revision {revision} reached a manual gate ({}% on the canary); `canary promote {name}` continues it",
                            status.canary_weight
                        ),
                    });
                }
                Some(PauseReason::Step) => {
                    if !reported_pause && output == OutputFormat::Human {
                        eprintln!(
                            "paused by a step: waiting for `canary promote {name}` (use --success-on-pause to stop waiting here)"
                        );
                    }
                    reported_pause = true;
                }
                Some(PauseReason::AnalysisFailed) => {
                    return Ok(Outcome {
                        exit: Exit::Failed,
                        result: "failed",
                        message: format!("analysis failed; paused for a human: {message}"),
                    });
                }
                Some(PauseReason::AnalysisInconclusive) => {
                    return Ok(Outcome {
                        exit: Exit::Inconclusive,
                        result: "inconclusive",
                        message: format!("analysis inconclusive; paused for a human: {message}"),
                    });
                }
                Some(PauseReason::Manual) | None => {
                    if !reported_pause && output == OutputFormat::Human {
                        eprintln!("paused by an operator: waiting for `canary resume {name}`");
                    }
                    reported_pause = true;
                }
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(containers: &[&str]) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers":
                    containers.iter().map(|c| json!({"name": c, "image": format!("{c}:1")})).collect::<Vec<_>>()
                }},
            },
        }))
        .unwrap()
    }

    #[test]
    fn images_name_their_container_when_there_are_several() {
        let one = deployment(&["app"]);
        assert_eq!(
            container_updates(&one, &["web:2".into()]).unwrap(),
            vec![("app".to_string(), "web:2".to_string())]
        );
        let two = deployment(&["app", "proxy"]);
        let err = container_updates(&two, &["web:2".into()]).unwrap_err();
        assert!(
            err.message.contains("has 2 containers (app, proxy)"),
            "{}",
            err.message
        );
        let err = container_updates(&two, &["db=postgres:16".into()]).unwrap_err();
        assert!(
            err.message
                .contains("no container db (containers: app, proxy)"),
            "{}",
            err.message
        );
        assert_eq!(err.exit, Exit::Invalid);
        assert!(parse_image("=x").is_err() && parse_image("app=").is_err());
        assert_eq!(
            container_updates(&two, &["proxy=envoy:1.30".into()]).unwrap(),
            vec![("proxy".to_string(), "envoy:1.30".to_string())]
        );
    }

    #[test]
    fn several_rollouts_exit_with_the_most_serious_outcome() {
        assert_eq!(worse(Exit::Ok, Exit::Superseded), Exit::Superseded);
        assert_eq!(worse(Exit::Failed, Exit::TimedOut), Exit::Failed);
        assert_eq!(worse(Exit::TimedOut, Exit::Ok), Exit::TimedOut);
    }
}
