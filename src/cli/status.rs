//! `canary status` and `canary list`: what is happening and why.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::cluster::{Connection, Failure, KubeArgs};
use super::output::{table, terminal_safe, time};
use super::{Exit, OutputFormat};
use crate::api::canary::{
    Canary, CanarySpec, CanaryStatus, PauseReason, Phase, RolloutStep, step_display,
};

/// Show a rollout: phase, revision, step, weight, each metric's latest verdict and why, the
/// next action and when, recent events, and the resource tree (Deployments, ReplicaSets and
/// ready pods of each version, the routing objects, the steps with where the rollout is).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  canary status web -n shop
  canary status web --watch                    # live until Ctrl-C
  canary status web --watch --exit-on-settle   # for scripts: ends with the rollout
  canary status web -o json

Steps are counted from 1 everywhere: `step 4/6` is the fourth of six (status.currentStepIndex 3).

Status holds deadlines as times (status.pauseEndsAt, each metric's nextMeasurementAt), never
countdowns; the time left (`next step in 45s`, JSON secondsLeftInStep) is counted when shown.

--watch keeps watching until interrupted (Ctrl-C exits 0). On a terminal it redraws every
second (countdowns stay live) and on every change of the Canary or its events; otherwise
(CI logs, -o json) it prints one line (or JSON object) per change. With --exit-on-settle it
exits when the rollout settles: 0 promoted (or nothing to do), 1 rolled back or failed, 4
rolled back because the metrics source was unreachable; with --timeout, 3 once that has
passed.")]
pub struct Args {
    /// The Canary.
    pub name: String,
    /// Follow changes until interrupted (or, with --exit-on-settle, until the rollout settles).
    #[arg(short, long)]
    pub watch: bool,
    /// With --watch: exit when the rollout settles (Idle, Promoted: 0; RolledBack, Failed: 1;
    /// rolled back because the metrics source was unreachable: 4).
    #[arg(long, requires = "watch")]
    pub exit_on_settle: bool,
    /// With --watch: give up after this long (exit 3).
    #[arg(long, value_name = "DURATION", requires = "watch")]
    pub timeout: Option<crate::api::Duration>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// List Canaries and where each rollout stands.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  canary list -n shop
  canary list -A -o json

A Canary at a timed pause step shows the time left after its message (`canary at 20%, holding
5m (3m10s left)`), counted from status.pauseEndsAt when listed.")]
pub struct ListArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// The documented JSON shape of `canary status -o json` (and the source of the human view).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub namespace: String,
    pub name: String,
    pub phase: Phase,
    /// The weight the rollout gives the canary.
    pub weight: u8,
    /// The weight the canary actually has (the routing's, or its share of the ready pods when
    /// split by replicas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_weight: Option<u8>,
    /// The header routes to the canary in place, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_routes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_images: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<PauseReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<crate::api::canary::RollbackReason>,
    /// Seconds since the current step (or pause, promotion, rollback) began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_in_step: Option<i64>,
    /// Seconds until the timed pause under way ends (absent at other steps); status holds
    /// the time (`status.pauseEndsAt`), this is counted when the view is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_left_in_step: Option<i64>,
    /// What happens next and when, in words.
    pub next: String,
    pub metrics: Vec<MetricView>,
    pub conditions: Vec<ConditionView>,
    pub events: Vec<EventView>,
    /// The Deployments, ReplicaSets, routing objects and steps (`canary status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<super::resource_tree::ResourceTree>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// `4/6`: the step under way counted from 1, as `kubectl get cnry` and events say it.
    pub display: String,
    /// The step under way counted from 1 (`4` of `4/6`).
    pub number: u32,
    pub total: u32,
    /// `status.currentStepIndex`, counted from 0 (`3` for `4/6`), as `promote@<index>` names it.
    pub current_step_index: u32,
    /// The same as `currentStepIndex`, kept because the JSON shape only grows within
    /// `v1alpha1`; deprecated: it reads as a step number and is not one.
    pub index: u32,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricView {
    pub run: String,
    pub metric: String,
    pub phase: crate::analysis::AnalysisPhase,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<crate::api::canary::MeasurementStatus>,
    /// For a `compare` metric: the sequential judge's latest verdict in words (effect,
    /// interval, evidence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventView {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// Phases after which a watch ends: nothing more will happen until a new revision.
pub fn is_settled(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Idle | Phase::Promoted | Phase::RolledBack | Phase::Failed
    )
}

/// A step of `spec` as people read it: blue-green's steps by what they do to the Services.
pub fn describe_step_of(spec: &CanarySpec, index: usize, step: &RolloutStep) -> String {
    let Some(blue_green) = spec.blue_green() else {
        return describe_step(step);
    };
    let switched = spec
        .rollout_steps()
        .iter()
        .take(index)
        .any(|s| *s == RolloutStep::SetWeight(100));
    match step {
        RolloutStep::SetWeight(0) => format!(
            "preview: the new revision ready behind {}",
            blue_green
                .preview_service
                .as_deref()
                .unwrap_or("no preview Service")
        ),
        RolloutStep::SetWeight(_) => {
            format!("switch {} to the new revision", blue_green.active_service)
        }
        RolloutStep::Analysis(_) if switched => format!("post-promotion {}", describe_step(step)),
        RolloutStep::Analysis(_) => format!("pre-promotion {}", describe_step(step)),
        RolloutStep::Pause(Some(d)) if switched => {
            format!("hold {d}: the previous revision still runs, for an instant switch back")
        }
        RolloutStep::Pause(Some(d)) => format!("auto-promotion in {d}"),
        RolloutStep::Pause(None) => "wait for `canary promote` to switch".into(),
        RolloutStep::SetHeaderRoute(_) => describe_step(step),
    }
}

pub fn describe_step(step: &RolloutStep) -> String {
    match step {
        RolloutStep::SetWeight(w) => format!("setWeight {w}%"),
        RolloutStep::Pause(Some(d)) => format!("pause {d}"),
        RolloutStep::Pause(None) => "pause until promoted".into(),
        RolloutStep::Analysis(a) => format!(
            "analysis {}",
            a.templates
                .iter()
                .map(|t| t.template_name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RolloutStep::SetHeaderRoute(route) if route.matches.is_empty() => {
            format!("remove header route {}", route.name)
        }
        RolloutStep::SetHeaderRoute(route) => format!(
            "header route {} ({}) to the canary",
            route.name,
            route
                .matches
                .iter()
                .map(|m| {
                    let v = &m.header_value;
                    match (&v.exact, &v.prefix, &v.regex) {
                        (Some(e), _, _) => format!("{}: {e}", m.header_name),
                        (_, Some(p), _) => format!("{}: {p}*", m.header_name),
                        (_, _, Some(r)) => format!("{} ~ {r}", m.header_name),
                        _ => m.header_name.clone(),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn seconds_until(at: &Option<String>, now: Timestamp) -> Option<i64> {
    let at: Timestamp = at.as_deref()?.parse().ok()?;
    Some(at.duration_since(now).as_secs())
}

/// Seconds until the timed pause under way ends: from `status.pauseEndsAt`, or, from a
/// controller that does not write it, from when the step started.
fn seconds_left_in_pause(spec: &CanarySpec, status: &CanaryStatus, now: Timestamp) -> Option<i64> {
    if let Some(left) = seconds_until(&status.pause_ends_at, now) {
        return Some(left);
    }
    if status.phase != Phase::Progressing {
        return None;
    }
    let index = status.current_step_index? as usize;
    let Some(RolloutStep::Pause(Some(duration))) = spec.rollout_steps().get(index).cloned() else {
        return None;
    };
    let started: Timestamp = status.step_started_at.as_deref()?.parse().ok()?;
    let ends = crate::api::duration::later(started, duration.as_std());
    Some(ends.duration_since(now).as_secs())
}

/// What happens next, in words, from the spec, the status and the time.
pub fn next_action(spec: &CanarySpec, status: &CanaryStatus, now: Timestamp) -> String {
    let target = &spec.target_ref.name;
    match status.phase {
        Phase::Initializing => format!("waiting for {} to be ready", spec.stable_name()),
        Phase::Idle | Phase::Promoted => {
            format!("waiting for a new revision of Deployment {target}")
        }
        Phase::RolledBack => format!(
            "waiting for a new revision of Deployment {target} (`canary retry` rolls {} out again)",
            status
                .failed_revision
                .as_deref()
                .unwrap_or("the rolled-back revision")
        ),
        Phase::Failed => "fix what the message says; the controller retries by itself".into(),
        Phase::Promoting => format!(
            "moving all traffic to {} once it runs the new revision",
            spec.stable_name()
        ),
        Phase::RollingBack => format!(
            "scaling the canary down once {} is ready",
            spec.stable_name()
        ),
        Phase::Paused => match status.pause_reason {
            Some(PauseReason::Step) => "waiting for `canary promote`".into(),
            Some(PauseReason::Manual) => "waiting for `canary resume` (or promote, abort)".into(),
            _ => "a human decides: `canary promote`, `canary resume` or `canary abort`".into(),
        },
        Phase::Progressing => {
            let steps = spec.rollout_steps();
            let index = status.current_step_index.unwrap_or(0) as usize;
            match steps.get(index) {
                Some(RolloutStep::SetWeight(100)) if spec.blue_green().is_some() => format!(
                    "switching {} to the new revision once all its pods are ready",
                    spec.blue_green().map_or("", |b| b.active_service.as_str())
                ),
                Some(RolloutStep::SetWeight(0)) if spec.blue_green().is_some() => {
                    "waiting for the preview's pods to be ready".into()
                }
                Some(RolloutStep::SetWeight(w)) => {
                    format!("moving {w}% of the traffic to the canary once its pods are ready")
                }
                Some(RolloutStep::Pause(Some(d))) => match seconds_left_in_pause(spec, status, now)
                {
                    Some(left) => format!("next step in {}s", left.max(0)),
                    None => format!("next step after {d}"),
                },
                Some(RolloutStep::Pause(None)) => "waiting for `canary promote`".into(),
                Some(RolloutStep::SetHeaderRoute(route)) => format!(
                    "setting header route {} once the canary's pods are ready",
                    route.name
                ),
                Some(RolloutStep::Analysis(_)) | None => {
                    let next = status
                        .analysis_runs
                        .iter()
                        .filter(|r| !r.phase.is_terminal())
                        .flat_map(|r| r.metrics.iter())
                        .filter_map(|m| {
                            seconds_until(&m.next_measurement_at, now).map(|s| (s, m.name.clone()))
                        })
                        .min();
                    match next {
                        Some((seconds, metric)) => {
                            format!("next measurement of {metric} in {}s", seconds.max(0))
                        }
                        None => "waiting for the analysis to finish".into(),
                    }
                }
            }
        }
    }
}

/// The view of a Canary (and its recent events) at `now`.
pub fn view(canary: &Canary, events: &[Event], now: Timestamp) -> StatusView {
    let status = canary.status.clone().unwrap_or_default();
    let steps = canary.spec.rollout_steps();
    let step = status.current_step_index.map(|index| StepView {
        display: step_display(index, steps.len()),
        number: (index.saturating_add(1)).min(steps.len() as u32),
        total: steps.len() as u32,
        current_step_index: index,
        index,
        description: steps
            .get(index as usize)
            .map(|step| describe_step_of(&canary.spec, index as usize, step))
            .unwrap_or_else(|| "all steps done".into()),
    });
    let metrics = status
        .analysis_runs
        .iter()
        .flat_map(|run| {
            run.metrics.iter().map(move |m| MetricView {
                run: run.name.clone(),
                metric: m.name.clone(),
                phase: m.phase,
                summary: m.message.clone(),
                latest: m.measurements.last().cloned(),
                evidence: m
                    .compare
                    .as_ref()
                    .and_then(|c| c.assessment.as_ref())
                    .map(|a| a.explanation.clone()),
            })
        })
        .collect();
    let events = latest_events(events, EVENTS_SHOWN);
    StatusView {
        namespace: canary.namespace().unwrap_or_default(),
        name: canary.name_any(),
        phase: status.phase,
        weight: status.canary_weight,
        effective_weight: status.effective_weight,
        header_routes: status
            .header_routes
            .iter()
            .map(|r| describe_step(&RolloutStep::SetHeaderRoute(r.clone())))
            .collect(),
        step,
        stable_revision: status.stable_revision.clone(),
        canary_revision: status.canary_revision.clone(),
        failed_revision: status.failed_revision.clone(),
        canary_images: status.canary_images.clone(),
        message: status.message.clone(),
        pause_reason: status.pause_reason,
        rollback_reason: status.rollback_reason,
        seconds_in_step: status
            .step_started_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| now.duration_since(t).as_secs()),
        seconds_left_in_step: seconds_left_in_pause(&canary.spec, &status, now)
            .map(|left| left.max(0)),
        next: next_action(&canary.spec, &status, now),
        metrics,
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionView {
                kind: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        events,
        tree: None,
    }
}

/// How many of a Canary's events `status` shows: the latest.
const EVENTS_SHOWN: usize = 8;

/// When `event` last happened: a repeated event (events.k8s.io `series`, or a core/v1
/// `count`) is as recent as its last repeat, not its first occurrence.
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.first_timestamp.as_ref().map(|t| t.0))
}

/// The `shown` most recent of `events`, oldest first (newest last, as a log reads).
fn latest_events(events: &[Event], shown: usize) -> Vec<EventView> {
    let mut events: Vec<(Option<Timestamp>, &Event)> =
        events.iter().map(|e| (last_seen(e), e)).collect();
    events.sort_by_key(|(time, _)| *time);
    let keep = events.len().saturating_sub(shown);
    events
        .drain(keep..)
        .map(|(time, e)| {
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .filter(|n| *n > 1);
            let message = e.message.clone().unwrap_or_default();
            EventView {
                time: time.map(|t| t.to_string()).unwrap_or_default(),
                kind: e.type_.clone().unwrap_or_default(),
                reason: e.reason.clone().unwrap_or_default(),
                message: match count {
                    Some(n) => format!("{message} (×{n})"),
                    None => message,
                },
            }
        })
        .collect()
}

/// `[██████░░░░░░░░░░░░░░] 30%`
/// `" (9% in effect)"` when the weight in effect is not the rollout's.
fn in_effect(view: &StatusView) -> String {
    match view.effective_weight {
        Some(effective) if effective != view.weight => format!(" ({effective}% in effect)"),
        _ => String::new(),
    }
}

pub fn weight_bar(weight: u8) -> String {
    let filled = usize::from(weight.min(100)) / 5;
    format!(
        "[{}{}] {weight}%",
        "█".repeat(filled),
        "░".repeat(20 - filled)
    )
}

/// The human view, several lines.
pub fn render(view: &StatusView) -> String {
    let mut out = format!(
        "Canary {}/{}: {:?}\n",
        view.namespace, view.name, view.phase
    );
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("  {name:<10} {value}\n"));
        }
    };
    let revision = match (&view.canary_revision, &view.canary_images) {
        (Some(r), Some(images)) => format!("{r} ({images})"),
        (Some(r), None) => r.clone(),
        (None, _) => String::new(),
    };
    field("canary", revision);
    field("stable", view.stable_revision.clone().unwrap_or_default());
    if let Some(failed) = &view.failed_revision {
        let reason = view
            .rollback_reason
            .map(|r| format!(" ({r:?})"))
            .unwrap_or_default();
        field("rolled back", format!("{failed}{reason}"));
    }
    field(
        "weight",
        format!("{}{}", weight_bar(view.weight), in_effect(view)),
    );
    for route in &view.header_routes {
        field("header route", route.clone());
    }
    if let Some(step) = &view.step {
        let elapsed = view
            .seconds_in_step
            .map(|s| format!(", {s}s in step"))
            .unwrap_or_default();
        let left = view
            .seconds_left_in_step
            .map(|s| format!(", {s}s left"))
            .unwrap_or_default();
        field(
            "step",
            format!("{} {}{elapsed}{left}", step.display, step.description),
        );
    }
    field("message", view.message.clone().unwrap_or_default());
    field("next", view.next.clone());
    if let Some(tree) = &view.tree {
        out.push_str(&format!(
            "  resources\n    Canary {}/{}\n",
            view.namespace, view.name
        ));
        out.push_str(&super::resource_tree::render(tree, "    "));
    }
    if !view.metrics.is_empty() {
        out.push_str("  metrics\n");
        let rows: Vec<Vec<String>> = view
            .metrics
            .iter()
            .map(|m| {
                let (value, verdict, reason) = match &m.latest {
                    Some(l) => (
                        l.value.clone().unwrap_or_else(|| "-".into()),
                        format!("{:?}", l.phase),
                        l.reason.clone(),
                    ),
                    None => ("-".into(), "-".into(), m.summary.clone()),
                };
                vec![
                    m.run.clone(),
                    m.metric.clone(),
                    format!("{:?}", m.phase),
                    value,
                    verdict,
                    reason,
                ]
            })
            .collect();
        for line in table(
            &["RUN", "METRIC", "PHASE", "LATEST", "VERDICT", "REASON"],
            &rows,
        )
        .lines()
        {
            out.push_str(&format!("    {line}\n"));
        }
        for metric in &view.metrics {
            if let Some(evidence) = &metric.evidence {
                out.push_str(&format!("    {} evidence: {evidence}\n", metric.metric));
            }
        }
    }
    if !view.conditions.is_empty() {
        let conditions: Vec<String> = view
            .conditions
            .iter()
            .map(|c| format!("{}={} ({})", c.kind, c.status, c.reason))
            .collect();
        out.push_str(&format!(
            "  {:<10} {}\n",
            "conditions",
            conditions.join(", ")
        ));
    }
    if !view.events.is_empty() {
        out.push_str("  events\n");
        let rows: Vec<Vec<String>> = view
            .events
            .iter()
            .map(|e| {
                vec![
                    e.time.clone(),
                    e.kind.clone(),
                    e.reason.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        for line in table(&["TIME", "TYPE", "REASON", "MESSAGE"], &rows).lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// One line per change, for logs: `12:00:01 web Progressing 20% step 2/4: canary at 20%`.
pub fn line(view: &StatusView, now: Timestamp) -> String {
    let step = view
        .step
        .as_ref()
        .map(|s| format!(" step {}", s.display))
        .unwrap_or_default();
    format!(
        "{} {}/{} {:?} {}%{}{step}: {}",
        time(now),
        view.namespace,
        view.name,
        view.phase,
        view.weight,
        in_effect(view),
        view.message.as_deref().unwrap_or("")
    )
}

/// Whether two [`line`]s say the same thing (their timestamps aside).
pub fn same_change(a: &str, b: &str) -> bool {
    a.split_once(' ').map(|(_, rest)| rest) == b.split_once(' ').map(|(_, rest)| rest)
}

async fn events_of(connection: &Connection, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(connection.client.clone(), &connection.namespace);
    let selector = format!("involvedObject.kind=Canary,involvedObject.name={name}");
    api.list(&ListParams::default().fields(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

pub async fn run(args: Args, output: OutputFormat) -> Result<Exit, Failure> {
    let connection = args.kube.connect().await?;
    let canary = connection.canary(&args.name).await?;
    if !args.watch {
        let events = events_of(&connection, &args.name).await;
        let mut current = view(&canary, &events, Timestamp::now());
        current.tree = Some(tree_of(&connection, &canary).await);
        print_view(&current, output);
        return Ok(Exit::Ok);
    }
    let mode = match output {
        OutputFormat::Json => WatchMode::Json,
        OutputFormat::Human if std::io::stdout().is_terminal() => WatchMode::Terminal,
        OutputFormat::Human => WatchMode::Lines,
    };
    watch(
        &connection,
        &args.name,
        mode,
        args.exit_on_settle,
        args.timeout.map(|d| d.as_std()),
    )
    .await
}

async fn tree_of(connection: &Connection, canary: &Canary) -> super::resource_tree::ResourceTree {
    let fetched = super::resource_tree::fetch(connection, canary).await;
    super::resource_tree::build(canary, &fetched)
}

fn print_view(view: &StatusView, output: OutputFormat) {
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(view).expect("view serialises")
        ),
        OutputFormat::Human => print!("{}", terminal_safe(&render(view))),
    }
}

/// How a watch shows what it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// A terminal: the whole view, redrawn in place.
    Terminal,
    /// Logs: one line per change.
    Lines,
    /// Scripts: one JSON object per change, one per line.
    Json,
}

/// Something a watch prints, and what it is compared with next time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub text: String,
    /// What makes two frames the same: on a terminal the whole view with its clock (so it is
    /// redrawn every second, countdowns included), in logs the change line without its
    /// timestamp.
    pub key: String,
}

/// What a watch prints for `view` at `now`, given the key of the last frame it printed;
/// `None` when that would say nothing new. Called on every change of the Canary or its
/// events and, on a terminal, every second.
pub fn watch_frame(
    mode: WatchMode,
    last_key: Option<&str>,
    view: &StatusView,
    now: Timestamp,
) -> Option<Frame> {
    let change_line = line(view, now);
    let change_key = change_line
        .split_once(' ')
        .map_or(change_line.as_str(), |(_, rest)| rest)
        .to_string();
    let frame = match mode {
        WatchMode::Terminal => {
            let text = format!(
                "\x1b[H\x1b[2J{}\n  watching, {}: Ctrl-C to stop\n",
                terminal_safe(&render(view)),
                time(now)
            );
            Frame {
                key: text.clone(),
                text,
            }
        }
        WatchMode::Lines => Frame {
            text: format!("{}\n", terminal_safe(&change_line)),
            key: change_key,
        },
        WatchMode::Json => Frame {
            text: format!(
                "{}\n",
                serde_json::to_string(view).expect("view serialises")
            ),
            key: change_key,
        },
    };
    (last_key != Some(frame.key.as_str())).then_some(frame)
}

/// How a watch ends once the rollout is in `phase`: with --exit-on-settle, when it settled
/// (0 promoted or nothing to do, 1 rolled back or failed, 4 rolled back for want of metrics);
/// otherwise it goes on.
pub fn watch_exit(
    exit_on_settle: bool,
    phase: Phase,
    rollback_reason: Option<crate::api::canary::RollbackReason>,
) -> Option<Exit> {
    if !exit_on_settle || !is_settled(phase) {
        return None;
    }
    Some(match (phase, rollback_reason) {
        // As `canary run --wait`: no data is not a bad canary.
        (Phase::RolledBack, Some(crate::api::canary::RollbackReason::MetricsUnavailable)) => {
            Exit::Inconclusive
        }
        (Phase::RolledBack | Phase::Failed, _) => Exit::Failed,
        _ => Exit::Ok,
    })
}

/// How often a terminal view is redrawn (its countdowns), and how often its resource tree is
/// read again (ready pods change without the Canary changing).
const REDRAW: Duration = Duration::from_secs(1);
const TREE_REFRESH: Duration = Duration::from_secs(5);

/// Follows a Canary until interrupted (or, with `exit_on_settle`, until its rollout
/// settles): redraws on a terminal, one line (or one JSON object) per change otherwise.
async fn watch(
    connection: &Connection,
    name: &str,
    mode: WatchMode,
    exit_on_settle: bool,
    timeout: Option<Duration>,
) -> Result<Exit, Failure> {
    use futures::future::Either;
    let interactive = mode == WatchMode::Terminal;
    // The tree is part of what a terminal and JSON show; log lines say only what changed.
    let with_tree = mode != WatchMode::Lines;
    let mut canaries = std::pin::pin!(connection.watch_canary(name));
    let mut event_changes = if interactive {
        Either::Left(event_changes(connection, name))
    } else {
        Either::Right(futures::stream::pending())
    };
    let mut redraw = tokio::time::interval(REDRAW);
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let timed_out = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let mut timed_out = std::pin::pin!(timed_out);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut canary: Option<Canary> = None;
    let mut events = Vec::new();
    let mut tree = None;
    let mut tree_read_at = tokio::time::Instant::now();
    let mut last_key: Option<String> = None;
    let mut last_problem = String::new();
    loop {
        // What woke the watch: a new version of the Canary, a change of its events, a tick.
        let mut refresh_tree = false;
        tokio::select! {
            next = canaries.next() => {
                match next {
                    Some(Ok(next)) => canary = Some(next),
                    // The watcher starts again by itself (an API server restart, an expired
                    // resourceVersion): said once, and the watch goes on.
                    Some(Err(e)) => {
                        let problem = format!("watching Canary {name}: {e}; retrying");
                        if problem != last_problem {
                            eprintln!("warning: {}", terminal_safe(&problem));
                            last_problem = problem;
                        }
                        tokio::time::sleep(REDRAW).await;
                        continue;
                    }
                    None => {
                        return Err(Failure::invalid(format!("the watch of Canary {name} ended")));
                    }
                }
                last_problem.clear();
                refresh_tree = with_tree;
                if interactive {
                    events = events_of(connection, name).await;
                }
            }
            Some(()) = event_changes.next() => {
                events = events_of(connection, name).await;
            }
            _ = redraw.tick(), if interactive => {
                refresh_tree = tree_read_at.elapsed() >= TREE_REFRESH;
            }
            _ = &mut timed_out => {
                return Err(Failure::new(
                    Exit::TimedOut,
                    format!("{name} did not settle within the timeout"),
                ));
            }
            _ = &mut interrupted => return Ok(Exit::Ok),
        }
        let Some(canary) = &canary else { continue };
        if refresh_tree || (with_tree && tree.is_none()) {
            tree = Some(tree_of(connection, canary).await);
            tree_read_at = tokio::time::Instant::now();
        }
        let now = Timestamp::now();
        let mut current = view(canary, &events, now);
        current.tree = tree.clone();
        if let Some(frame) = watch_frame(mode, last_key.as_deref(), &current, now) {
            print!("{}", frame.text);
            let _ = std::io::stdout().flush();
            last_key = Some(frame.key);
        }
        if let Some(exit) = watch_exit(exit_on_settle, current.phase, current.rollback_reason) {
            return Ok(exit);
        }
    }
}

/// A signal for every change of the Canary's events (the watch re-lists them then).
fn event_changes(
    connection: &Connection,
    name: &str,
) -> impl futures::Stream<Item = ()> + Unpin + use<> {
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Event> = Api::namespaced(connection.client.clone(), &connection.namespace);
    let selector = format!("involvedObject.kind=Canary,involvedObject.name={name}");
    Box::pin(
        watcher(api, watcher::Config::default().fields(&selector))
            .default_backoff()
            .filter_map(|event| {
                futures::future::ready(match event {
                    Ok(
                        watcher::Event::Apply(_)
                        | watcher::Event::Delete(_)
                        | watcher::Event::InitDone,
                    ) => Some(()),
                    _ => None,
                })
            }),
    )
}

/// The message, with the time left of a timed pause counted now (status holds no countdown).
fn message_with_time_left(view: &StatusView) -> String {
    let message = view.message.clone().unwrap_or_default();
    match view.seconds_left_in_step {
        Some(left) => {
            let left = crate::api::Duration::from(std::time::Duration::from_secs(
                left.max(1).unsigned_abs(),
            ));
            format!("{message} ({left} left)")
        }
        None => message,
    }
}

/// One row per Canary.
pub async fn list(args: ListArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let connection = args.kube.connect().await?;
    let api: Api<Canary> = if args.all_namespaces {
        Api::all(connection.client.clone())
    } else {
        connection.canaries()
    };
    let canaries = api
        .list(&ListParams::default())
        .await
        .map_err(|e| connection.failure("the Canaries", e))?;
    let now = Timestamp::now();
    let views: Vec<StatusView> = canaries.items.iter().map(|c| view(c, &[], now)).collect();
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&views).expect("views serialise")
        ),
        OutputFormat::Human => {
            if views.is_empty() {
                println!("no Canaries found");
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    vec![
                        v.namespace.clone(),
                        v.name.clone(),
                        format!("{:?}", v.phase),
                        format!("{}%{}", v.weight, in_effect(v)),
                        v.step
                            .as_ref()
                            .map(|s| s.display.clone())
                            .unwrap_or_else(|| "-".into()),
                        v.canary_revision
                            .clone()
                            .or(v.stable_revision.clone())
                            .unwrap_or_default(),
                        message_with_time_left(v),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                let header = [
                    "NAMESPACE",
                    "NAME",
                    "PHASE",
                    "WEIGHT",
                    "STEP",
                    "REVISION",
                    "MESSAGE",
                ];
                print!("{}", terminal_safe(&table(&header, &rows)));
            }
        }
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::assessment::{AnalysisPhase, Tally};
    use crate::analysis::measurement::MeasurementPhase;
    use crate::api::canary::{AnalysisRunStatus, MeasurementStatus, MetricStatus};

    fn canary(status: CanaryStatus) -> Canary {
        let mut canary: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "targetRef": {"name": "web"}, "service": {"port": 8080},
                "trafficRouting": {"istio": {"virtualService": {"name": "web"}, "destinationRule": {"name": "web"}}},
                "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"analysis": {"templates": [{"templateName": "success-rate"}]}}, {"pause": {}}],
            },
        }))
        .unwrap();
        canary.status = Some(status);
        canary
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn blue_green_steps_are_said_by_what_they_do_to_the_services() {
        let spec: CanarySpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"name": "api"}, "service": {"port": 3000},
            "strategy": {"blueGreen": {
                "activeService": "api-active", "previewService": "api-preview",
                "autoPromotionEnabled": false,
                "prePromotionAnalysis": {"templates": [{"templateName": "success-rate"}]},
                "postPromotionAnalysis": {"templates": [{"templateName": "success-rate"}]},
            }},
        }))
        .unwrap();
        let said: Vec<String> = spec
            .rollout_steps()
            .iter()
            .enumerate()
            .map(|(i, step)| describe_step_of(&spec, i, step))
            .collect();
        assert_eq!(
            said,
            [
                "preview: the new revision ready behind api-preview",
                "pre-promotion analysis success-rate",
                "wait for `canary promote` to switch",
                "switch api-active to the new revision",
                "post-promotion analysis success-rate",
                "hold 30s: the previous revision still runs, for an instant switch back",
            ]
        );
        let status = CanaryStatus {
            phase: Phase::Progressing,
            current_step_index: Some(3),
            ..Default::default()
        };
        assert_eq!(
            next_action(&spec, &status, at(0)),
            "switching api-active to the new revision once all its pods are ready"
        );
    }

    fn event(reason: &str, message: &str, first: i64, last: Option<(i64, i32)>) -> Event {
        use k8s_openapi::api::core::v1::EventSeries;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        Event {
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            event_time: Some(MicroTime(at(first))),
            series: last.map(|(last, count)| EventSeries {
                count: Some(count),
                last_observed_time: Some(MicroTime(at(last))),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn shows_the_latest_events_by_their_last_repeat_newest_last() {
        // Two rollouts: the second repeated `0% → 20%` (a series on the first one's event).
        let mut events = vec![
            event("RolloutStarted", "rolling out r2", 0, None),
            event("WeightChanged", "canary weight 0% → 20%", 1, Some((101, 2))),
            event("WeightChanged", "canary weight 20% → 50%", 10, None),
            event("Promoted", "promoted r2", 20, None),
            event("RolloutStarted", "rolling out r3", 100, None),
            event("WeightChanged", "canary weight 20% → 80%", 110, None),
        ];
        // The API server lists them in no particular order.
        events.reverse();
        let shown = latest_events(&events, 4);
        let messages: Vec<&str> = shown.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "promoted r2",
                "rolling out r3",
                "canary weight 0% → 20% (×2)",
                "canary weight 20% → 80%",
            ]
        );
        assert_eq!(shown[2].time, at(101).to_string());
        // Sub-second times sort by time, not as text ("…:00.5Z" before "…:00Z" as text).
        let mut close = event("A", "first", 0, None);
        let mut later = event("B", "second", 0, None);
        later.event_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            at(0) + jiff::SignedDuration::from_millis(500),
        ));
        close.event_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            at(0),
        ));
        let shown = latest_events(&[later, close], 8);
        assert_eq!(shown[1].message, "second");
    }

    #[test]
    fn says_what_happens_next_for_every_phase() {
        let base = CanaryStatus {
            stable_revision: Some("r1".into()),
            ..Default::default()
        };
        let cases: Vec<(CanaryStatus, &str)> = vec![
            (
                CanaryStatus {
                    phase: Phase::Idle,
                    ..base.clone()
                },
                "waiting for a new revision of Deployment web",
            ),
            (
                CanaryStatus {
                    phase: Phase::RolledBack,
                    failed_revision: Some("r2".into()),
                    ..base.clone()
                },
                "`canary retry` rolls r2 out again",
            ),
            (
                CanaryStatus {
                    phase: Phase::Progressing,
                    current_step_index: Some(0),
                    ..base.clone()
                },
                "moving 20% of the traffic",
            ),
            (
                CanaryStatus {
                    phase: Phase::Progressing,
                    current_step_index: Some(1),
                    step_started_at: Some(at(0).to_string()),
                    ..base.clone()
                },
                "next step in 45s",
            ),
            (
                CanaryStatus {
                    phase: Phase::Paused,
                    pause_reason: Some(PauseReason::Step),
                    ..base.clone()
                },
                "waiting for `canary promote`",
            ),
            (
                CanaryStatus {
                    phase: Phase::Paused,
                    pause_reason: Some(PauseReason::AnalysisInconclusive),
                    ..base.clone()
                },
                "a human decides",
            ),
            (
                CanaryStatus {
                    phase: Phase::Promoting,
                    ..base.clone()
                },
                "moving all traffic to web-stable",
            ),
            (
                CanaryStatus {
                    phase: Phase::Progressing,
                    current_step_index: Some(2),
                    analysis_runs: vec![AnalysisRunStatus {
                        name: "step-2".into(),
                        phase: AnalysisPhase::Running,
                        message: String::new(),
                        started_at: at(0).to_string(),
                        metrics: vec![MetricStatus {
                            name: "success-rate".into(),
                            template: "success-rate".into(),
                            phase: AnalysisPhase::Running,
                            message: "1 passed".into(),
                            tally: Tally::default(),
                            compare: None,
                            next_measurement_at: Some(at(20).to_string()),
                            last_passed_at: Some(at(10).to_string()),
                            measurements: vec![MeasurementStatus {
                                time: at(10).to_string(),
                                phase: MeasurementPhase::Successful,
                                value: Some("0.999".into()),
                                reason: "successCondition `result[0] >= 0.99` is true".into(),
                            }],
                        }],
                    }],
                    ..base.clone()
                },
                "next measurement of success-rate in 5s",
            ),
        ];
        for (status, expected) in cases {
            let view = view(&canary(status.clone()), &[], at(15));
            assert!(
                view.next.contains(expected),
                "{:?}: {}",
                status.phase,
                view.next
            );
        }
    }

    #[test]
    fn the_time_left_of_a_pause_is_counted_from_the_deadline_in_status() {
        // The controller writes when the pause ends, not a countdown; every view counts.
        let status = CanaryStatus {
            phase: Phase::Progressing,
            stable_revision: Some("r1".into()),
            canary_revision: Some("r2".into()),
            canary_weight: 20,
            current_step_index: Some(1),
            // The deadline in status wins over the spec's duration (resumed, restarted…).
            step_started_at: Some(at(0).to_string()),
            pause_ends_at: Some(at(90).to_string()),
            message: Some("canary at 20%, holding 1m".into()),
            ..Default::default()
        };
        // (now, next, seconds left, list message)
        let cases = [
            (
                15,
                "next step in 75s",
                75,
                "canary at 20%, holding 1m (1m15s left)",
            ),
            (
                89,
                "next step in 1s",
                1,
                "canary at 20%, holding 1m (1s left)",
            ),
            (
                95,
                "next step in 0s",
                0,
                "canary at 20%, holding 1m (1s left)",
            ),
        ];
        for (now, next, left, listed) in cases {
            let v = view(&canary(status.clone()), &[], at(now));
            assert_eq!(v.next, next, "at {now}");
            assert_eq!(v.seconds_left_in_step, Some(left), "at {now}");
            assert_eq!(message_with_time_left(&v), listed, "at {now}");
            let json = serde_json::to_value(&v).unwrap();
            assert_eq!(json["secondsLeftInStep"], left, "at {now}");
            assert_eq!(json["message"], "canary at 20%, holding 1m", "at {now}");
            assert!(
                render(&v).contains(&format!("s in step, {left}s left")),
                "{}",
                render(&v)
            );
        }
        // Not at a timed pause: nothing left to count.
        let gate = CanaryStatus {
            current_step_index: Some(3),
            pause_ends_at: None,
            message: Some("paused by a step".into()),
            ..status
        };
        let v = view(&canary(gate), &[], at(15));
        assert_eq!(v.seconds_left_in_step, None);
        assert_eq!(message_with_time_left(&v), "paused by a step");
    }

    #[test]
    fn renders_weight_step_metrics_and_one_line() {
        let status = CanaryStatus {
            phase: Phase::Progressing,
            stable_revision: Some("r1".into()),
            canary_revision: Some("r2".into()),
            canary_images: Some("app=web:2".into()),
            canary_weight: 20,
            current_step_index: Some(1),
            step_started_at: Some(at(0).to_string()),
            message: Some("canary at 20%".into()),
            ..Default::default()
        };
        let v = view(&canary(status), &[], at(15));
        let text = render(&v);
        assert!(text.contains("[████░░░░░░░░░░░░░░░░] 20%"), "{text}");
        assert!(
            text.contains("step       2/4 pause 1m, 15s in step"),
            "{text}"
        );
        assert!(text.contains("canary     r2 (app=web:2)"), "{text}");
        assert_eq!(
            line(&v, at(15)),
            "2027-01-15T08:00:15Z shop/web Progressing 20% step 2/4: canary at 20%"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["step"]["total"], 4);
        assert_eq!(json["weight"], 20);
        assert_eq!(json["next"], "next step in 45s");
    }

    #[test]
    fn the_weight_in_effect_is_shown_where_it_differs() {
        let status = CanaryStatus {
            phase: Phase::Paused,
            canary_revision: Some("r2".into()),
            canary_weight: 10,
            effective_weight: Some(50),
            header_routes: vec![
                serde_json::from_value(serde_json::json!({"name": "testers", "match": [
                    {"headerName": "canary", "headerValue": {"exact": "true"}},
                ]}))
                .unwrap(),
            ],
            ..Default::default()
        };
        let v = view(&canary(status.clone()), &[], at(0));
        let text = render(&v);
        assert!(text.contains("] 10% (50% in effect)"), "{text}");
        assert!(
            text.contains("header route testers (canary: true) to the canary"),
            "{text}"
        );
        assert!(line(&v, at(0)).contains(" 10% (50% in effect)"));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["effectiveWeight"], 50);
        let same = CanaryStatus {
            effective_weight: Some(10),
            ..status
        };
        let text = render(&view(&canary(same), &[], at(0)));
        assert!(!text.contains("in effect"), "{text}");
    }

    #[test]
    fn weight_bars() {
        assert_eq!(weight_bar(0), "[░░░░░░░░░░░░░░░░░░░░] 0%");
        assert_eq!(weight_bar(100), "[████████████████████] 100%");
        assert_eq!(weight_bar(50), "[██████████░░░░░░░░░░] 50%");
    }

    #[test]
    fn a_watch_redraws_a_terminal_every_second_and_logs_each_change_once() {
        let paused_at = |phase: Phase, message: &str| CanaryStatus {
            phase,
            stable_revision: Some("r1".into()),
            canary_revision: Some("r2".into()),
            canary_weight: 20,
            current_step_index: Some(1),
            step_started_at: Some(at(0).to_string()),
            message: Some(message.into()),
            ..Default::default()
        };
        let holding = canary(paused_at(Phase::Progressing, "holding"));
        // (mode, what was drawn last: status and time, now: status and time, prints, contains)
        let cases: Vec<(
            WatchMode,
            Option<(&Canary, i64)>,
            (&Canary, i64),
            bool,
            &str,
        )> = vec![
            (
                WatchMode::Terminal,
                None,
                (&holding, 15),
                true,
                "next step in 45s",
            ),
            // The same status a second later: the countdown moved, so the view is redrawn.
            (
                WatchMode::Terminal,
                Some((&holding, 15)),
                (&holding, 16),
                true,
                "next step in 44s",
            ),
            (
                WatchMode::Terminal,
                Some((&holding, 16)),
                (&holding, 16),
                false,
                "",
            ),
            (
                WatchMode::Lines,
                None,
                (&holding, 15),
                true,
                "Progressing 20% step 2/4: holding",
            ),
            // Logs get a line per change, not per second.
            (
                WatchMode::Lines,
                Some((&holding, 15)),
                (&holding, 16),
                false,
                "",
            ),
            (
                WatchMode::Json,
                Some((&holding, 15)),
                (&holding, 16),
                false,
                "",
            ),
        ];
        for (mode, last, (now_canary, now), prints, contains) in cases {
            let last_key = last.map(|(c, t)| {
                watch_frame(mode, None, &view(c, &[], at(t)), at(t))
                    .unwrap()
                    .key
            });
            let frame = watch_frame(
                mode,
                last_key.as_deref(),
                &view(now_canary, &[], at(now)),
                at(now),
            );
            assert_eq!(frame.is_some(), prints, "{mode:?} at {now}: {frame:?}");
            if let Some(frame) = frame {
                assert!(frame.text.contains(contains), "{mode:?}: {}", frame.text);
                match mode {
                    WatchMode::Terminal => assert!(frame.text.starts_with("\x1b[H\x1b[2J")),
                    _ => assert!(!frame.text.contains('\x1b') && frame.text.ends_with('\n')),
                }
            }
        }
        // A change of the status prints in every mode.
        let promoted = canary(paused_at(Phase::Promoted, "promoted r2"));
        for mode in [WatchMode::Terminal, WatchMode::Lines, WatchMode::Json] {
            let last = watch_frame(mode, None, &view(&holding, &[], at(15)), at(15)).unwrap();
            let next = watch_frame(mode, Some(&last.key), &view(&promoted, &[], at(15)), at(15));
            assert!(
                next.is_some_and(|f| f.text.contains("promoted r2")),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn a_watch_ends_on_settling_only_when_asked() {
        use crate::api::canary::RollbackReason;
        for phase in Phase::ALL {
            assert_eq!(watch_exit(false, phase, None), None, "{phase:?}");
            let expected = match phase {
                Phase::Idle | Phase::Promoted => Some(Exit::Ok),
                Phase::RolledBack | Phase::Failed => Some(Exit::Failed),
                _ => None,
            };
            assert_eq!(watch_exit(true, phase, None), expected, "{phase:?}");
        }
        let reason = Some(RollbackReason::MetricsUnavailable);
        assert_eq!(
            watch_exit(true, Phase::RolledBack, reason),
            Some(Exit::Inconclusive)
        );
        assert_eq!(
            watch_exit(
                true,
                Phase::RolledBack,
                Some(RollbackReason::AnalysisFailed)
            ),
            Some(Exit::Failed)
        );
    }

    #[test]
    fn the_step_reads_the_same_in_text_lines_and_json() {
        let status = CanaryStatus {
            phase: Phase::Paused,
            pause_reason: Some(PauseReason::Step),
            current_step_index: Some(3),
            ..Default::default()
        };
        let v = view(&canary(status), &[], at(0));
        assert!(
            render(&v).contains("step       4/4 pause until promoted"),
            "{}",
            render(&v)
        );
        assert!(
            line(&v, at(0)).contains(" step 4/4:"),
            "{}",
            line(&v, at(0))
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["step"]["display"], "4/4");
        assert_eq!(json["step"]["number"], 4);
        assert_eq!(json["step"]["currentStepIndex"], 3);
        assert_eq!(json["step"]["index"], 3, "kept for scripts that read it");
    }

    #[test]
    fn settled_phases_end_a_watch() {
        for phase in Phase::ALL {
            let settled = matches!(
                phase,
                Phase::Idle | Phase::Promoted | Phase::RolledBack | Phase::Failed
            );
            assert_eq!(is_settled(phase), settled, "{phase:?}");
        }
    }
}
