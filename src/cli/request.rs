//! `canary promote | pause | resume | abort | retry`: a request the controller acts on through
//! its watch; the command waits briefly for the controller's answer and says what changed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use super::cluster::{Failure, KubeArgs, api_failure};
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

pub async fn run(action: RequestAction, args: Args, output: OutputFormat) -> Result<Exit, Failure> {
    let connection = args.kube.connect().await?;
    let canary = connection.canary(&args.name).await?;
    applies(action, &canary).map_err(Failure::invalid)?;
    let request = Request {
        action,
        id: new_id(),
    };
    let started = Instant::now();
    connection
        .canaries()
        .patch(
            &args.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REQUEST_ANNOTATION: request.annotation_value()}}})),
        )
        .await
        .map_err(|e| api_failure(&format!("Canary {}/{}", connection.namespace, args.name), e))?;

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
            result.message,
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
}
