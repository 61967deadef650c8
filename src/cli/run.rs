//! `canary run`: what a CI job calls after pushing an image.

use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use super::cluster::{Connection, Failure, KubeArgs};
use super::output::terminal_safe;
use super::status::{StepView, line, same_change, view};
use super::{Exit, OutputFormat};
use crate::api::canary::{Canary, CanaryStatus, PauseReason, Phase, RollbackReason};
use crate::workload;

/// Roll out an image and (with --wait) follow that revision to its verdict.
///
/// Sets the image on the Canary's target Deployment, identifies the revision this creates,
/// and with --wait follows only that revision until the controller decides, and ends as soon
/// as it has: exit 0 when it is promoted (or, for the stable image, when the revision that
/// was out has been rolled back), 1 when it is rolled back or fails (also when an operator
/// aborts it), 2 on invalid input or when the controller finds the Canary's spec invalid
/// (e.g. a missing template; its message is printed), 3 on --timeout or when no controller
/// acknowledges the revision within --answer-timeout, 4 when its analysis is inconclusive
/// or the metrics source was unreachable, 5 when a newer revision supersedes it. When the
/// image is already live, nothing changes and it exits 0.
///
/// With -o json, every line on stdout is one JSON object: with --wait one
/// {"type":"progress",...} per change, then {"type":"result",...} last.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  canary run web --image web:1.4.2 --wait
  canary run web --image app=web:1.4.2 --image sidecar=proxy:2 --wait --timeout 30m
  canary run -l team=checkout --image checkout=checkout:9 --wait
  canary run web --image web:1.5 --wait --success-on-pause   # a manual gate counts as success
  canary run web --image web:1.5 --wait -o json | tee run.jsonl   # progress lines, then the result")]
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
    /// With --wait: exit 3 when no controller has acknowledged the revision in the Canary's
    /// status by then (is `canary controller` running and watching the namespace?).
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub answer_timeout: crate::api::Duration,
    /// With --wait: exit 0 when the rollout reaches a pause step that waits for `canary promote`.
    #[arg(long)]
    pub success_on_pause: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// The documented JSON shape of `canary run -o json`: its last line (progress lines come
/// before it with --wait).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// `result`, telling this line from the progress lines.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub namespace: String,
    pub canary: String,
    pub revision: String,
    pub images: String,
    /// `started`, `alreadyLive`, `promoted`, `reverted`, `rolledBack`, `failed`, `invalid`,
    /// `paused`, `inconclusive`, `metricsUnavailable`, `superseded`, `timedOut` or
    /// `unacknowledged`.
    pub result: &'static str,
    /// `exit` as the process exit code.
    pub exit_code: u8,
    #[serde(skip)]
    pub exit: Exit,
    pub message: String,
    /// One line per change seen while waiting.
    pub timeline: Vec<String>,
}

#[derive(Debug, PartialEq)]
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
                .map_err(|e| connection.failure(&format!("Canaries with labels {selector}"), e))?;
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
            .map_err(|e| {
                connection.failure(&format!("Deployment {}/{target}", connection.namespace), e)
            })?
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "Canary {} targets Deployment {target}, which does not exist",
                    canary.name_any()
                ))
            })?;
        let updates = container_updates(&deployment, &args.images)?;
        plans.push((canary.clone(), deployment, updates));
    }
    let bounds = Bounds {
        verdict: args.timeout.as_std(),
        answer: args.answer_timeout.as_std(),
    };
    let results =
        futures::future::join_all(plans.into_iter().map(|(canary, deployment, updates)| {
            roll_out(
                &connection,
                canary,
                deployment,
                updates,
                args.wait.then_some(bounds),
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
            // JSON Lines: the result is the last line, after the progress lines.
            OutputFormat::Json => println!(
                "{}",
                serde_json::to_string(&result).expect("result serialises")
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

/// Sets the images and, with `wait` bounds, follows the revision to its verdict.
async fn roll_out(
    connection: &Connection,
    canary: Canary,
    deployment: Deployment,
    updates: Vec<(String, String)>,
    wait: Option<Bounds>,
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
            .map_err(|e| connection.failure(&format!("Deployment {namespace}/{target}"), e))?
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
        kind: "result",
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
    let Some(bounds) = wait else {
        result.message = format!(
            "rolling out {images} as revision {revision}; follow it with `canary status {name} --watch`"
        );
        return Ok(result);
    };
    let followed = Followed {
        name: &name,
        revision: &revision,
        replaced: status.canary_revision.as_deref(),
        success_on_pause,
    };
    let outcome = follow(
        connection,
        &followed,
        &target,
        bounds,
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

/// What following a revision needs to know besides the Canary's status.
struct Followed<'a> {
    name: &'a str,
    revision: &'a str,
    /// The revision the canary was rolling out when the image was set (for a revert to the
    /// stable image: what gets rolled back).
    replaced: Option<&'a str>,
    success_on_pause: bool,
}

/// What one version of the Canary's status says about the followed revision.
#[derive(Debug, PartialEq)]
enum Reading {
    Verdict(Outcome),
    /// No verdict yet; whether the status shows that a controller has seen the revision,
    /// and, when the rollout waits for a human, what for.
    Pending {
        acknowledged: bool,
        waits_for: Option<String>,
    },
}

/// Decides from the status alone (pure, so every case is a table row in the tests).
fn read(status: &CanaryStatus, followed: &Followed) -> Reading {
    let Followed {
        name,
        revision,
        replaced,
        success_on_pause,
    } = *followed;
    let is = |r: &Option<String>| r.as_deref() == Some(revision);
    let message = status.message.clone().unwrap_or_default();
    let verdict = |exit, result, message| {
        Reading::Verdict(Outcome {
            exit,
            result,
            message,
        })
    };
    // Stable's revision alone is no answer while another revision is out (the image set was
    // the stable one): the controller has yet to roll that one back.
    let acknowledged = is(&status.target_revision)
        || is(&status.canary_revision)
        || is(&status.failed_revision)
        || (is(&status.stable_revision) && status.canary_revision.is_none());
    match status.phase {
        Phase::Promoted | Phase::Idle if is(&status.stable_revision) => {
            return verdict(
                Exit::Ok,
                "promoted",
                format!("promoted revision {revision}: {message}"),
            );
        }
        Phase::RolledBack if is(&status.failed_revision) => {
            let reason = status.rollback_reason;
            let (exit, result, why) = match reason {
                Some(RollbackReason::TargetReverted) => {
                    return verdict(
                        Exit::Superseded,
                        "superseded",
                        format!("revision {revision} was replaced by the stable revision: {message}"),
                    );
                }
                Some(RollbackReason::MetricsUnavailable) => (
                    Exit::Inconclusive,
                    "metricsUnavailable",
                    "the metrics source was unreachable, so it was not promoted; fix the source, then `canary retry` it".to_string(),
                ),
                Some(RollbackReason::Aborted) => {
                    (Exit::Failed, "rolledBack", "aborted by an operator".to_string())
                }
                Some(other) => (Exit::Failed, "rolledBack", format!("{other:?}")),
                None => (Exit::Failed, "rolledBack", "rolled back".to_string()),
            };
            return verdict(
                exit,
                result,
                format!("revision {revision} was rolled back ({why}): {message}"),
            );
        }
        // The image set was the stable one while another revision was out: the controller
        // rolled that one back, and the revision followed serves all traffic.
        Phase::RolledBack if is(&status.stable_revision) => {
            let rolled_back = status
                .failed_revision
                .as_deref()
                .or(replaced)
                .unwrap_or("the canary");
            let reason = status
                .rollback_reason
                .map(|r| format!(" ({r:?})"))
                .unwrap_or_default();
            return verdict(
                Exit::Ok,
                "reverted",
                format!(
                    "revision {revision} (stable) serves all traffic: the controller rolled back {rolled_back}{reason}"
                ),
            );
        }
        // The target is unusable for the controller (e.g. a Deployment of its names that it
        // does not own): nothing rolls out until the spec or cluster is fixed.
        Phase::Failed => {
            return verdict(
                Exit::Invalid,
                "invalid",
                format!("the controller cannot roll out Canary {name}: {message}"),
            );
        }
        _ => {}
    }
    // Another Canary owns what this one names: the controller changes nothing for it, for
    // any revision, until that is resolved.
    let not_ready = |reason: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == reason)
    };
    if let Some(conflict) = not_ready("RoutingConflict") {
        return verdict(
            Exit::Invalid,
            "invalid",
            format!(
                "the controller does not roll out revision {revision}: {}",
                conflict.message
            ),
        );
    }
    // The controller planned for this revision and found the spec unusable (a missing
    // template, a condition that does not compile, …): that is its answer until the spec
    // changes.
    if is(&status.target_revision)
        && let Some(invalid) = not_ready("InvalidSpec")
    {
        let held = if is(&status.canary_revision) {
            format!(
                "holds revision {revision} at {}% (it goes on once the spec is fixed)",
                status.canary_weight
            )
        } else {
            format!("does not roll out revision {revision}")
        };
        return verdict(
            Exit::Invalid,
            "invalid",
            format!(
                "the controller {held}: the Canary's spec is invalid: {}",
                invalid.message
            ),
        );
    }
    let ours = is(&status.canary_revision);
    let mut waits_for = None;
    if status.phase == Phase::Paused && ours {
        match status.pause_reason {
            Some(PauseReason::Step) if success_on_pause => {
                return verdict(
                    Exit::Ok,
                    "paused",
                    format!(
                        "revision {revision} reached a manual gate ({}% on the canary); `canary promote {name}` continues it",
                        status.canary_weight
                    ),
                );
            }
            Some(PauseReason::Step) => {
                waits_for = Some(format!(
                    "paused by a step: waiting for `canary promote {name}` (use --success-on-pause to stop waiting here)"
                ));
            }
            // onAnalysisFailure: pause after errors only: the metrics were missing.
            Some(PauseReason::AnalysisFailed) if analysis_only_errored(status) => {
                return verdict(
                    Exit::Inconclusive,
                    "metricsUnavailable",
                    format!("the metrics source was unreachable; paused for a human: {message}"),
                );
            }
            Some(PauseReason::AnalysisFailed) => {
                return verdict(
                    Exit::Failed,
                    "failed",
                    format!("analysis failed; paused for a human: {message}"),
                );
            }
            Some(PauseReason::AnalysisInconclusive) => {
                return verdict(
                    Exit::Inconclusive,
                    "inconclusive",
                    format!("analysis inconclusive; paused for a human: {message}"),
                );
            }
            Some(PauseReason::Manual) | None => {
                waits_for = Some(format!(
                    "paused by an operator: waiting for `canary resume {name}`"
                ));
            }
        }
    }
    Reading::Pending {
        acknowledged,
        waits_for,
    }
}

/// Whether an analysis ended in Error and none in Failed.
fn analysis_only_errored(status: &CanaryStatus) -> bool {
    use crate::analysis::AnalysisPhase;
    let phases = || status.analysis_runs.iter().map(|r| r.phase);
    phases().any(|p| p == AnalysisPhase::Error) && !phases().any(|p| p == AnalysisPhase::Failed)
}

/// One line of `-o json` while following: the change just seen.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProgressLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    namespace: &'a str,
    canary: &'a str,
    revision: &'a str,
    phase: Phase,
    weight: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a StepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// How long a Canary's watch may stay quiet before `run --wait` reads it once to be sure.
const QUIET_CANARY_CHECK: Duration = Duration::from_secs(5);

/// The bounds of a wait.
#[derive(Clone, Copy)]
struct Bounds {
    /// For the verdict (`--timeout`).
    verdict: Duration,
    /// For a sign that a controller saw the revision (`--answer-timeout`).
    answer: Duration,
}

/// Follows `revision` of Canary `name` to its verdict.
async fn follow(
    connection: &Connection,
    followed: &Followed<'_>,
    target: &str,
    bounds: Bounds,
    output: OutputFormat,
    timeline: &mut Vec<String>,
) -> Result<Outcome, Failure> {
    let Followed { name, revision, .. } = *followed;
    let namespace = &connection.namespace;
    let mut stream = std::pin::pin!(connection.watch_canary(name));
    // The target is watched too: a newer revision of it supersedes ours, whatever the Canary
    // shows yet.
    let mut target_changes = std::pin::pin!(connection.watch_deployment(target));
    let started = tokio::time::Instant::now();
    let deadline = started + bounds.verdict;
    let answer_deadline = started + bounds.answer;
    let mut acknowledged = false;
    let mut last_line = String::new();
    let mut last_note = None;
    // The last time the API server could not be reached, to say so if that is why we time out.
    let mut unreachable: Option<Failure> = None;
    // When the Canary was last seen: a quiet watch is checked by a read now and then (a
    // deletion missed while the watch was away).
    let mut last_seen = started;
    loop {
        let now_instant = tokio::time::Instant::now();
        if now_instant >= deadline {
            let why = unreachable
                .map(|f| format!(" ({})", f.message))
                .unwrap_or_default();
            return Ok(Outcome {
                exit: Exit::TimedOut,
                result: "timedOut",
                message: format!(
                    "revision {revision} had no verdict after {}{why}",
                    crate::api::Duration::from(bounds.verdict)
                ),
            });
        }
        if !acknowledged && now_instant >= answer_deadline {
            return Ok(Outcome {
                exit: Exit::TimedOut,
                result: "unacknowledged",
                message: format!(
                    "no controller acknowledged revision {revision} of Canary {namespace}/{name} within {} (nothing in its status names it): check that `canary controller` is running and watches namespace {namespace} (`kubectl -n canary-system get pods`, `kubectl -n canary-system logs deploy/canary-controller`)",
                    crate::api::Duration::from(bounds.answer)
                ),
            });
        }
        let next = tokio::select! {
            next = stream.next() => next,
            change = target_changes.next() => {
                use kube::runtime::watcher::{Error as WatchError, Event};
                match change {
                    Some(Ok(Event::Apply(current) | Event::InitApply(current))) => {
                        let current_revision = revision_of(&current)?;
                        if current_revision != revision {
                            return Ok(Outcome {
                                exit: Exit::Superseded,
                                result: "superseded",
                                message: format!(
                                    "revision {revision} was superseded by {current_revision} (Deployment {target} changed again)"
                                ),
                            });
                        }
                    }
                    Some(Ok(Event::Delete(_))) => {
                        return Err(Failure::invalid(format!(
                            "Deployment {namespace}/{target} was deleted while following revision {revision}"
                        )));
                    }
                    Some(Err(
                        WatchError::InitialListFailed(e)
                        | WatchError::WatchStartFailed(e)
                        | WatchError::WatchFailed(e),
                    )) => match connection.failure(&format!("Deployment {namespace}/{target}"), e) {
                        f if f.exit == Exit::TimedOut => unreachable = Some(f),
                        f => return Err(f),
                    },
                    _ => {}
                }
                continue;
            }
            // The clock (deadlines), and now and then a read of a quiet Canary.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if last_seen.elapsed() < QUIET_CANARY_CHECK {
                    continue;
                }
                None
            }
        };
        let canary = match next {
            Some(Ok(canary)) => canary,
            // The watcher starts again by itself at the next poll (not in a busy loop); an
            // API server that is away is waited for (bounded by --timeout), not taken for a
            // verdict.
            Some(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            None => match connection.canaries().get_opt(name).await {
                Ok(Some(canary)) => canary,
                Ok(None) => {
                    return Err(Failure::new(
                        Exit::Failed,
                        format!("Canary {name} was deleted while following revision {revision}"),
                    ));
                }
                Err(e) => match connection.failure(&format!("Canary {namespace}/{name}"), e) {
                    f if f.exit == Exit::TimedOut => {
                        unreachable = Some(f);
                        continue;
                    }
                    f => return Err(f),
                },
            },
        };
        unreachable = None;
        last_seen = tokio::time::Instant::now();
        let now = Timestamp::now();
        let current = view(&canary, &[], now);
        let this_line = line(&current, now);
        if !same_change(&this_line, &last_line) {
            match output {
                OutputFormat::Human => eprintln!("{}", terminal_safe(&this_line)),
                OutputFormat::Json => {
                    let progress = ProgressLine {
                        kind: "progress",
                        time: super::output::time(now),
                        namespace,
                        canary: name,
                        revision,
                        phase: current.phase,
                        weight: current.weight,
                        step: current.step.as_ref(),
                        message: current.message.as_deref(),
                    };
                    println!(
                        "{}",
                        serde_json::to_string(&progress).expect("progress serialises")
                    );
                }
            }
            timeline.push(this_line.clone());
            last_line = this_line;
        }
        let status = canary.status.unwrap_or_default();
        match read(&status, followed) {
            Reading::Verdict(outcome) => return Ok(outcome),
            Reading::Pending {
                acknowledged: seen,
                waits_for,
            } => {
                acknowledged |= seen;
                if waits_for.is_some() && waits_for != last_note {
                    if output == OutputFormat::Human
                        && let Some(note) = &waits_for
                    {
                        eprintln!("{note}");
                    }
                    last_note = waits_for;
                }
            }
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

    fn condition(
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        serde_json::from_value(json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-07T12:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn the_verdict_is_read_as_soon_as_the_status_has_it() {
        use crate::analysis::AnalysisPhase;
        let followed = Followed {
            name: "web",
            revision: "r2",
            replaced: None,
            success_on_pause: false,
        };
        let base = CanaryStatus {
            phase: Phase::Idle,
            stable_revision: Some("r1".into()),
            ..Default::default()
        };
        let invalid = condition(
            "Ready",
            "False",
            "InvalidSpec",
            "AnalysisTemplate ns/x does not exist: create it or fix templateName",
        );
        let errored_run = |phase| crate::api::canary::AnalysisRunStatus {
            name: "background".into(),
            phase,
            message: String::new(),
            started_at: String::new(),
            metrics: Vec::new(),
        };
        // (case, status, exit code, result word, words in the message); None: no verdict yet.
        let cases: Vec<(&str, CanaryStatus, Option<(Exit, &str, &str)>)> = vec![
            ("no controller has seen it", base.clone(), None),
            (
                "another Canary owns its routing",
                CanaryStatus {
                    phase: Phase::Initializing,
                    stable_revision: None,
                    conditions: vec![condition(
                        "Ready",
                        "False",
                        "RoutingConflict",
                        "VirtualService web belongs to Canary web-old",
                    )],
                    ..base.clone()
                },
                Some((Exit::Invalid, "invalid", "belongs to Canary web-old")),
            ),
            (
                "promoted",
                CanaryStatus {
                    phase: Phase::Promoted,
                    stable_revision: Some("r2".into()),
                    ..base.clone()
                },
                Some((Exit::Ok, "promoted", "promoted revision r2")),
            ),
            (
                "rolled back by the analysis",
                CanaryStatus {
                    phase: Phase::RolledBack,
                    failed_revision: Some("r2".into()),
                    rollback_reason: Some(RollbackReason::AnalysisFailed),
                    ..base.clone()
                },
                Some((Exit::Failed, "rolledBack", "rolled back (AnalysisFailed)")),
            ),
            (
                "rolled back without metrics",
                CanaryStatus {
                    phase: Phase::RolledBack,
                    failed_revision: Some("r2".into()),
                    rollback_reason: Some(RollbackReason::MetricsUnavailable),
                    ..base.clone()
                },
                Some((
                    Exit::Inconclusive,
                    "metricsUnavailable",
                    "the metrics source was unreachable",
                )),
            ),
            (
                "the target went back to stable",
                CanaryStatus {
                    phase: Phase::RolledBack,
                    failed_revision: Some("r2".into()),
                    rollback_reason: Some(RollbackReason::TargetReverted),
                    ..base.clone()
                },
                Some((
                    Exit::Superseded,
                    "superseded",
                    "replaced by the stable revision",
                )),
            ),
            (
                "a missing template, the controller saw r2",
                CanaryStatus {
                    target_revision: Some("r2".into()),
                    conditions: vec![invalid.clone()],
                    ..base.clone()
                },
                Some((
                    Exit::Invalid,
                    "invalid",
                    "does not roll out revision r2: the Canary's spec is invalid: AnalysisTemplate ns/x does not exist",
                )),
            ),
            (
                "a stale InvalidSpec about an earlier revision",
                CanaryStatus {
                    target_revision: Some("r1".into()),
                    conditions: vec![invalid.clone()],
                    ..base.clone()
                },
                None,
            ),
            (
                "a template deleted mid-rollout",
                CanaryStatus {
                    phase: Phase::Progressing,
                    canary_revision: Some("r2".into()),
                    canary_weight: 20,
                    target_revision: Some("r2".into()),
                    conditions: vec![invalid],
                    ..base.clone()
                },
                Some((Exit::Invalid, "invalid", "holds revision r2 at 20%")),
            ),
            (
                "the target unusable",
                CanaryStatus {
                    phase: Phase::Failed,
                    message: Some("Deployment web-canary already exists".into()),
                    ..base.clone()
                },
                Some((
                    Exit::Invalid,
                    "invalid",
                    "cannot roll out Canary web: Deployment web-canary already exists",
                )),
            ),
            (
                "paused after errors only",
                CanaryStatus {
                    phase: Phase::Paused,
                    canary_revision: Some("r2".into()),
                    pause_reason: Some(PauseReason::AnalysisFailed),
                    analysis_runs: vec![errored_run(AnalysisPhase::Error)],
                    ..base.clone()
                },
                Some((
                    Exit::Inconclusive,
                    "metricsUnavailable",
                    "paused for a human",
                )),
            ),
            (
                "paused after a failure",
                CanaryStatus {
                    phase: Phase::Paused,
                    canary_revision: Some("r2".into()),
                    pause_reason: Some(PauseReason::AnalysisFailed),
                    analysis_runs: vec![
                        errored_run(AnalysisPhase::Error),
                        errored_run(AnalysisPhase::Failed),
                    ],
                    ..base.clone()
                },
                Some((Exit::Failed, "failed", "analysis failed")),
            ),
            (
                "at a manual gate",
                CanaryStatus {
                    phase: Phase::Paused,
                    canary_revision: Some("r2".into()),
                    pause_reason: Some(PauseReason::Step),
                    ..base.clone()
                },
                None,
            ),
        ];
        for (case, status, expected) in cases {
            match (read(&status, &followed), expected) {
                (Reading::Verdict(outcome), Some((exit, result, words))) => {
                    assert_eq!((outcome.exit, outcome.result), (exit, result), "{case}");
                    assert!(
                        outcome.message.contains(words),
                        "{case}: {}",
                        outcome.message
                    );
                }
                (Reading::Pending { .. }, None) => {}
                (reading, expected) => panic!("{case}: {reading:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn following_the_stable_image_ends_when_the_revision_that_was_out_is_rolled_back() {
        let followed = Followed {
            name: "web",
            revision: "r1",
            replaced: Some("r2"),
            success_on_pause: false,
        };
        let out = CanaryStatus {
            phase: Phase::Progressing,
            stable_revision: Some("r1".into()),
            canary_revision: Some("r2".into()),
            ..Default::default()
        };
        assert_eq!(
            read(&out, &followed),
            Reading::Pending {
                acknowledged: false,
                waits_for: None
            },
            "stable's revision alone is no answer while r2 is out"
        );
        for failed in [Some("r2".to_string()), None] {
            let rolled_back = CanaryStatus {
                phase: Phase::RolledBack,
                canary_revision: None,
                failed_revision: failed.clone(),
                rollback_reason: Some(RollbackReason::TargetReverted),
                ..out.clone()
            };
            let Reading::Verdict(outcome) = read(&rolled_back, &followed) else {
                panic!("{failed:?}: no verdict");
            };
            assert_eq!((outcome.exit, outcome.result), (Exit::Ok, "reverted"));
            assert!(
                outcome.message.contains("revision r1 (stable) serves all traffic: the controller rolled back r2 (TargetReverted)"),
                "{}",
                outcome.message
            );
        }
    }

    #[test]
    fn several_rollouts_exit_with_the_most_serious_outcome() {
        assert_eq!(worse(Exit::Ok, Exit::Superseded), Exit::Superseded);
        assert_eq!(worse(Exit::Failed, Exit::TimedOut), Exit::Failed);
        assert_eq!(worse(Exit::TimedOut, Exit::Ok), Exit::TimedOut);
    }
}
