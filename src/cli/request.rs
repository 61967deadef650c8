//! `canary promote | pause | resume | abort | retry`: a request the controller acts on through
//! its watch, written as its own annotation so that concurrent requests never replace each
//! other; the command waits (bounded) for the controller's answer to it and says what changed,
//! or why it is still queued.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use super::cluster::{Connection, Failure, KubeArgs};
use super::output::terminal_safe;
use super::{Exit, OutputFormat};
use crate::api::canary::{self, Canary, Phase, Request, RequestAction, RequestStatus};

/// A manual request to the controller.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Canary.
    pub name: String,
    /// How long to wait for the controller's answer (exit 3 if none comes; the request stays
    /// queued).
    #[arg(long, default_value = "15s")]
    pub timeout: crate::api::Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `canary promote`: finish the current step now (with --full: skip every remaining step).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  canary promote web           # past a manual gate or the current step\n  canary promote web --full    # promote now, skipping the remaining steps and analysis"
)]
pub struct PromoteArgs {
    /// Skip every remaining step and analysis: promote now.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub request: Args,
}

/// The documented JSON shape of the request commands' `-o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestResult {
    pub namespace: String,
    pub canary: String,
    pub action: RequestAction,
    pub id: String,
    pub accepted: bool,
    pub message: String,
    pub phase: Phase,
    pub weight: u8,
    /// From writing the request to the controller's answer.
    pub milliseconds: u128,
}

/// Whether `action` can apply in `phase`; if not, why (refused before anything is written).
pub fn applies(action: RequestAction, canary: &Canary) -> Result<(), String> {
    let status = canary.status.clone().unwrap_or_default();
    let phase = status.phase;
    let under_way = matches!(phase, Phase::Progressing | Phase::Paused);
    let ok = match action {
        RequestAction::Promote | RequestAction::PromoteFull => under_way,
        RequestAction::Pause => phase == Phase::Progressing,
        RequestAction::Resume => phase == Phase::Paused,
        RequestAction::Abort => under_way || phase == Phase::Promoting,
        RequestAction::Retry => phase == Phase::RolledBack && status.failed_revision.is_some(),
    };
    if ok {
        return Ok(());
    }
    let state = match phase {
        Phase::Idle | Phase::Promoted => format!(
            "no rollout is under way ({phase:?}; stable {} serves all traffic)",
            status.stable_revision.as_deref().unwrap_or("-")
        ),
        Phase::RolledBack => format!(
            "the last rollout was already rolled back (revision {})",
            status.failed_revision.as_deref().unwrap_or("-")
        ),
        Phase::Paused => "the rollout is already paused".to_string(),
        Phase::Progressing => "the rollout is not paused".to_string(),
        other => format!("the Canary is {other:?}"),
    };
    let hint = if action == RequestAction::Retry {
        " (retry applies to a rolled-back revision)"
    } else {
        ""
    };
    Err(format!("nothing to {}: {state}{hint}", action.as_str()))
}

/// A request id unique enough for one Canary (time and process), and a valid annotation key
/// name after [`canary::REQUEST_KEY_PREFIX`].
fn new_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", now.as_millis(), std::process::id())
}

/// Where one written request stands, as a version of its Canary shows it.
#[derive(Debug, PartialEq)]
enum Standing {
    Answered(RequestStatus),
    /// Still to be acted on, with the other requests waiting beside it (their actions).
    Pending {
        others: Vec<RequestAction>,
    },
    /// Neither annotated nor answered: not written yet in this version, or, once it was seen
    /// pending, withdrawn by someone.
    Absent,
}

fn standing(canary: &Canary, request: &Request) -> Standing {
    if let Some(answer) = canary.status.as_ref().and_then(|status| {
        status
            .answers()
            .find(|a| a.id == request.id && a.action == request.action)
    }) {
        return Standing::Answered(answer.clone());
    }
    let pending = canary::requests(canary.annotations());
    let mut mine = false;
    let mut others = Vec::new();
    for other in pending.into_iter().flatten() {
        if other.id == request.id && other.action == request.action {
            mine = true;
        } else if !other.answered_in(canary.status.as_ref()) {
            others.push(other.action);
        }
    }
    if mine {
        Standing::Pending { others }
    } else {
        Standing::Absent
    }
}

/// `3 other requests pending (abort, 2 promote)`, for the progress line.
fn describe_pending(others: &[RequestAction]) -> String {
    let mut counts: Vec<(RequestAction, usize)> = Vec::new();
    for action in others {
        match counts.iter_mut().find(|(a, _)| a == action) {
            Some((_, n)) => *n += 1,
            None => counts.push((*action, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(action, n)| match n {
            1 => action.as_str().to_string(),
            n => format!("{n} {}", action.as_str()),
        })
        .collect();
    match others.len() {
        0 => "no other request pending".to_string(),
        1 => format!("1 other request pending ({})", parts.join(", ")),
        n => format!("{n} other requests pending ({})", parts.join(", ")),
    }
}

/// Writes the request as its own annotation, `request.canary.dev/<id>: <action>`: requests of
/// other ids are other keys, so concurrent writers never overwrite each other.
async fn write_request(
    connection: &Connection,
    name: &str,
    request: &Request,
) -> Result<(), Failure> {
    let (key, value) = request.annotation();
    let patch = json!({"metadata": {"annotations": {key: value}}});
    connection
        .canaries()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|e| connection.failure(&format!("Canary {}/{name}", connection.namespace), e))
}

pub async fn run(action: RequestAction, args: Args, output: OutputFormat) -> Result<Exit, Failure> {
    let connection = args.kube.connect().await?;
    let name = &args.name;
    let timeout: Duration = args.timeout.as_std();
    let started = Instant::now();
    applies(action, &connection.canary(name).await?).map_err(Failure::invalid)?;

    // Watching before writing: every status the controller writes after the request is seen,
    // so its answer cannot be missed among the answers to others.
    let mut stream = std::pin::pin!(connection.watch_canary(name));
    let mut canary = next_canary(&mut stream, started + timeout)
        .await
        .ok_or_else(|| {
            Failure::new(
                Exit::TimedOut,
                format!(
                    "could not watch Canary {}/{name} within {}: is the API server reachable?",
                    connection.namespace, args.timeout
                ),
            )
        })?;
    applies(action, &canary).map_err(Failure::invalid)?;
    let status = canary.status.clone().unwrap_or_default();
    let request = Request {
        action,
        id: new_id(),
        // A promote finishes the step it was asked at: concurrent ones finish it once.
        step: (action == RequestAction::Promote).then(|| status.current_step_index.unwrap_or(0)),
    };
    let (key, _) = request.annotation();
    let written = Instant::now();
    write_request(&connection, name, &request).await?;

    let answers_before: Vec<String> = status.answers().map(|a| a.id.clone()).collect();
    let mut others_answered = std::collections::BTreeSet::new();
    let mut shown = (String::new(), None::<Instant>);
    let mut seen_pending = false;
    let answer = loop {
        match standing(&canary, &request) {
            Standing::Answered(answer) => break answer,
            // The watch has not brought the version with the request yet.
            Standing::Absent if !seen_pending => {}
            Standing::Absent => {
                return Err(Failure::invalid(format!(
                    "the {} request {key} was removed from Canary {}/{name} before the controller answered it (withdrawn by someone): nothing was done",
                    action.as_str(),
                    connection.namespace
                )));
            }
            Standing::Pending { others } => {
                seen_pending = true;
                // A line when what it waits behind changes, at most one a second.
                let line = describe_pending(&others);
                let due = shown
                    .1
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                if !others.is_empty() && line != shown.0 && due {
                    eprintln!(
                        "{name}: {} request queued, {line}; waiting for the controller",
                        action.as_str()
                    );
                    shown = (line, Some(Instant::now()));
                }
            }
        }
        if let Some(status) = &canary.status {
            others_answered.extend(
                status
                    .answers()
                    .filter(|a| a.id != request.id && !answers_before.contains(&a.id))
                    .map(|a| a.id.clone()),
            );
        }
        match next_canary(&mut stream, started + timeout).await {
            Some(next) => canary = next,
            None => {
                let others = match standing(&canary, &request) {
                    Standing::Pending { others } => others,
                    _ => Vec::new(),
                };
                return Err(unanswered(
                    &connection.namespace,
                    name,
                    &request,
                    &args.timeout,
                    others_answered.len(),
                    &others,
                ));
            }
        }
    };
    let status = canary.status.unwrap_or_default();
    let result = RequestResult {
        namespace: connection.namespace.clone(),
        canary: name.clone(),
        action,
        id: request.id,
        accepted: answer.accepted,
        message: answer.message.clone(),
        phase: status.phase,
        weight: status.canary_weight,
        milliseconds: written.elapsed().as_millis(),
    };
    match output {
        // A refusal is the error line (below): stdout holds one JSON document either way.
        OutputFormat::Json if result.accepted => println!(
            "{}",
            serde_json::to_string_pretty(&result).expect("result serialises")
        ),
        OutputFormat::Human if result.accepted => println!(
            "{}: {} ({}): now {:?}, canary weight {}% [{} ms]",
            name,
            action.as_str(),
            terminal_safe(&result.message),
            result.phase,
            result.weight,
            result.milliseconds
        ),
        OutputFormat::Human | OutputFormat::Json => {}
    }
    if result.accepted {
        return Ok(Exit::Ok);
    }
    // At an approval gate, say the command that passes it, with this Canary's name.
    let gate = action == RequestAction::Resume
        && status.phase == Phase::Paused
        && status.pause_reason == Some(canary::PauseReason::Step);
    let hint = if gate {
        format!(
            "; to pass the gate: canary promote {name} -n {}",
            connection.namespace
        )
    } else {
        String::new()
    };
    Err(Failure::invalid(format!(
        "the controller refused: {}{hint}",
        result.message
    )))
}

/// The next version of the Canary from the watch, or `None` at `deadline`.
async fn next_canary(
    stream: &mut std::pin::Pin<
        &mut impl futures::Stream<Item = Result<Canary, kube::runtime::watcher::Error>>,
    >,
    deadline: Instant,
) -> Option<Canary> {
    loop {
        let event = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .ok()??;
        match event {
            Ok(canary) => return Some(canary),
            // The watcher starts again by itself; not in a busy loop.
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Why no answer came in time, and what to do: a busy controller is not a missing one.
fn unanswered(
    namespace: &str,
    name: &str,
    request: &Request,
    timeout: &crate::api::Duration,
    others_answered: usize,
    others: &[RequestAction],
) -> Failure {
    let (key, _) = request.annotation();
    let action = request.action.as_str();
    let state = if others_answered > 0 {
        format!(
            "the controller is busy: it answered {others_answered} other request(s) meanwhile, and this {action} request is still queued ({})",
            describe_pending(others)
        )
    } else {
        format!(
            "the controller answered no request meanwhile ({}): is `canary controller` running and watching namespace {namespace}?",
            describe_pending(others)
        )
    };
    Failure::new(
        Exit::TimedOut,
        format!(
            "no answer to the {action} request within {timeout}: {state}. The request stays queued and is acted on when the controller gets to it: follow it with `canary status {name} -n {namespace}`, or withdraw it with `kubectl annotate cnry {name} -n {namespace} {key}-`"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canary::CanaryStatus;

    fn canary(phase: Phase) -> Canary {
        let mut canary: Canary = serde_json::from_value(json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web"},
            "spec": {
                "targetRef": {"name": "web"}, "service": {"port": 8080},
                "trafficRouting": {"istio": {"virtualService": {"name": "web"}, "destinationRule": {"name": "web"}}},
                "stepWeight": 10, "maxWeight": 50,
            },
        }))
        .unwrap();
        canary.status = Some(CanaryStatus {
            phase,
            stable_revision: Some("r1".into()),
            failed_revision: (phase == Phase::RolledBack).then(|| "r2".into()),
            ..Default::default()
        });
        canary
    }

    #[test]
    fn refuses_what_does_not_apply_before_writing_anything() {
        use RequestAction::*;
        let cases = [
            (
                Promote,
                Phase::Idle,
                Err("nothing to promote: no rollout is under way"),
            ),
            (
                Abort,
                Phase::Promoted,
                Err("nothing to abort: no rollout is under way"),
            ),
            (Abort, Phase::RolledBack, Err("already rolled back")),
            (Resume, Phase::Progressing, Err("not paused")),
            (Pause, Phase::Paused, Err("already paused")),
            (
                Retry,
                Phase::Idle,
                Err("retry applies to a rolled-back revision"),
            ),
            (Promote, Phase::Paused, Ok(())),
            (PromoteFull, Phase::Progressing, Ok(())),
            (Abort, Phase::Promoting, Ok(())),
            (Retry, Phase::RolledBack, Ok(())),
        ];
        for (action, phase, expected) in cases {
            let result = applies(action, &canary(phase));
            match expected {
                Ok(()) => assert!(result.is_ok(), "{action:?} in {phase:?}: {result:?}"),
                Err(text) => assert!(
                    result.as_ref().is_err_and(|m| m.contains(text)),
                    "{action:?} in {phase:?}: {result:?}"
                ),
            }
        }
    }

    #[test]
    fn a_written_request_is_answered_pending_beside_others_or_withdrawn() {
        use crate::api::canary::RequestStatus;
        let answer = |id: &str, action: RequestAction| RequestStatus {
            id: id.into(),
            action,
            accepted: true,
            message: "done".into(),
            at: String::new(),
        };
        let mine = Request {
            action: RequestAction::Promote,
            id: "9-1".into(),
            step: Some(1),
        };
        // (annotations, answers in status, standing)
        let cases = [
            (
                vec![("request.canary.dev/9-1", "promote@1")],
                vec![],
                Standing::Pending { others: vec![] },
            ),
            (
                vec![
                    ("request.canary.dev/9-1", "promote@1"),
                    ("request.canary.dev/8-1", "abort"),
                    ("request.canary.dev/7-1", "pause"),
                    ("canary.dev/request", "pause:6"),
                ],
                // 7-1 is answered already (its annotation not yet removed).
                vec![answer("7-1", RequestAction::Pause)],
                Standing::Pending {
                    others: vec![RequestAction::Pause, RequestAction::Abort],
                },
            ),
            (
                vec![("request.canary.dev/9-1", "promote@1")],
                vec![answer("9-1", RequestAction::Promote)],
                Standing::Answered(answer("9-1", RequestAction::Promote)),
            ),
            // Answered and its annotation removed by the controller.
            (
                vec![],
                vec![answer("9-1", RequestAction::Promote)],
                Standing::Answered(answer("9-1", RequestAction::Promote)),
            ),
            // The same id answered for another action is not this request's answer.
            (
                vec![],
                vec![answer("9-1", RequestAction::Abort)],
                Standing::Absent,
            ),
        ];
        for (annotations, answers, expected) in cases {
            let mut c = canary(Phase::Paused);
            c.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            c.status.as_mut().unwrap().recent_requests = answers.clone();
            assert_eq!(standing(&c, &mine), expected, "{annotations:?} {answers:?}");
        }
        assert_eq!(
            describe_pending(&[
                RequestAction::Promote,
                RequestAction::Abort,
                RequestAction::Promote
            ]),
            "3 other requests pending (2 promote, abort)"
        );
    }
}
