//! `canary promote | pause | resume | abort | retry`: a request the controller acts on through
//! its watch; the command waits briefly for the controller's answer and says what changed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use super::cluster::{Failure, KubeArgs, api_failure};
use super::output::terminal_safe;
use super::{Exit, OutputFormat};
use crate::api::canary::{Canary, Phase, REQUEST_ANNOTATION, Request, RequestAction};

/// A manual request to the controller.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Canary.
    pub name: String,
    /// How long to wait for the controller's answer (exit 3 if none comes).
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

/// A request id unique enough for one Canary: time and process.
fn new_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", now.as_millis(), std::process::id())
}

/// The request in the Canary's annotation that the controller has not answered yet, if any:
/// writing another one now would overwrite it unseen.
pub fn unanswered_request(canary: &Canary) -> Option<Request> {
    let value = canary
        .metadata
        .annotations
        .as_ref()?
        .get(REQUEST_ANNOTATION)?;
    let pending = Request::parse(value).ok()?;
    (!pending.answered_in(canary.status.as_ref())).then_some(pending)
}

/// How long a new request waits for the controller to answer the one before it.
const UNANSWERED_WAIT: Duration = Duration::from_secs(5);

/// Writes `request` into the annotation, but only over an answered one, and only if the
/// Canary did not change since it was read (resourceVersion precondition): two operators'
/// requests never overwrite each other unseen.
async fn write_request(
    connection: &super::cluster::Connection,
    name: &str,
    request: &Request,
) -> Result<(), Failure> {
    let what = format!("Canary {}/{}", connection.namespace, name);
    let started = Instant::now();
    for _ in 0..50 {
        let canary = connection.canary(name).await?;
        applies(request.action, &canary).map_err(Failure::invalid)?;
        if let Some(pending) = unanswered_request(&canary) {
            if started.elapsed() >= UNANSWERED_WAIT {
                return Err(Failure::new(
                    Exit::TimedOut,
                    format!(
                        "{what} still has an unanswered {} request ({}) after {}s: is `canary controller` running? Not overwriting it",
                        pending.action.as_str(),
                        pending.id,
                        UNANSWERED_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let patch = json!({"metadata": {
            "resourceVersion": canary.metadata.resource_version,
            "annotations": {REQUEST_ANNOTATION: request.annotation_value()},
        }});
        match connection
            .canaries()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Changed since read (the controller's status, another request): read again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(api_failure(&what, e)),
        }
    }
    Err(Failure::new(
        Exit::TimedOut,
        format!("{what} kept changing while the request was being written: try again"),
    ))
}

pub async fn run(action: RequestAction, args: Args, output: OutputFormat) -> Result<Exit, Failure> {
    let connection = args.kube.connect().await?;
    let request = Request {
        action,
        id: new_id(),
    };
    let started = Instant::now();
    write_request(&connection, &args.name, &request).await?;

    let mut stream = std::pin::pin!(connection.watch_canary(&args.name));
    let timeout: Duration = args.timeout.as_std();
    let answered = tokio::time::timeout(timeout, async {
        while let Some(event) = stream.next().await {
            if let Ok(canary) = event
                && let Some(status) = &canary.status
                && let Some(last) = &status.last_request
                && last.id == request.id
            {
                return Some((canary.clone(), last.clone()));
            }
        }
        None
    })
    .await;
    let Ok(Some((canary, answer))) = answered else {
        return Err(Failure::new(
            Exit::TimedOut,
            format!(
                "the controller did not answer the {} request within {}: is `canary controller` running and watching namespace {}?",
                action.as_str(),
                args.timeout,
                connection.namespace
            ),
        ));
    };
    let status = canary.status.unwrap_or_default();
    let result = RequestResult {
        namespace: connection.namespace.clone(),
        canary: args.name.clone(),
        action,
        id: request.id,
        accepted: answer.accepted,
        message: answer.message.clone(),
        phase: status.phase,
        weight: status.canary_weight,
        milliseconds: started.elapsed().as_millis(),
    };
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&result).expect("result serialises")
        ),
        OutputFormat::Human if result.accepted => println!(
            "{}: {} ({}): now {:?}, canary weight {}% [{} ms]",
            args.name,
            action.as_str(),
            terminal_safe(&result.message),
            result.phase,
            result.weight,
            result.milliseconds
        ),
        OutputFormat::Human => {}
    }
    if result.accepted {
        Ok(Exit::Ok)
    } else {
        Err(Failure::invalid(format!(
            "the controller refused: {}",
            result.message
        )))
    }
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
    fn a_request_the_controller_has_not_answered_is_not_overwritten() {
        use crate::api::canary::RequestStatus;
        let answered = |id: &str, action: RequestAction| RequestStatus {
            id: id.into(),
            action,
            accepted: true,
            message: String::new(),
            at: String::new(),
        };
        // (annotation, last answer, unanswered?)
        let cases = [
            (None, None, false),
            (Some("abort:1"), None, true),
            (
                Some("abort:1"),
                Some(answered("1", RequestAction::Abort)),
                false,
            ),
            (
                Some("abort:1"),
                Some(answered("0", RequestAction::Pause)),
                true,
            ),
            // Same id, another action: a new request.
            (
                Some("abort:1"),
                Some(answered("1", RequestAction::Pause)),
                true,
            ),
            // Unparseable: the controller reports it; nothing to protect.
            (Some("nonsense"), None, false),
        ];
        for (annotation, last, unanswered) in cases {
            let mut c = canary(Phase::Progressing);
            if let Some(value) = annotation {
                c.metadata.annotations = Some(
                    [(REQUEST_ANNOTATION.to_string(), value.to_string())]
                        .into_iter()
                        .collect(),
                );
            }
            c.status.as_mut().unwrap().last_request = last.clone();
            assert_eq!(
                unanswered_request(&c).is_some(),
                unanswered,
                "{annotation:?} {last:?}"
            );
        }
    }
}
