//! The rollout state machine: [`plan`] decides, from the Canary's spec and status, what was
//! observed and the time, what to do next. It performs no I/O and reads no clock; the
//! controller observes, calls it, applies the actions in order, and writes the status.
//!
//! Safety rules it keeps (each has a test):
//! - traffic moves to the canary only when the canary has enough ready pods for the weight;
//! - on rollback, abort or a superseding revision, traffic returns to stable *before* the
//!   canary is scaled down or replaced (actions are ordered);
//! - missing data or unreachable metrics never promote: only a Successful analysis advances an
//!   analysis step, and a failing or inconclusive one rolls back or pauses;
//! - every fact needed to continue is in the returned status.

mod analysis_runs;

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::analysis::assessment::AnalysisPhase;
use crate::api::canary::{
    CanarySpec, CanaryStatus, HeaderRoute, OnAnalysisFailure, PauseReason, Phase, Request,
    RequestAction, RequestStatus, RollbackReason, RolloutStep, step_display,
};
use crate::api::duration::later;
use crate::routing::{Capabilities, Granularity};

pub use analysis_runs::{
    BACKGROUND, MAX_JITTER, MetricDefinition, NewMeasurement, compare_window_start,
    due_measurements, endless_step_metric, first_measurement_jitter, recorded_phase, step_run,
};

/// What the controller saw of one managed Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    /// The revision its pod template carries (our annotation).
    pub revision: Option<String>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// Ready pods of the current template (`updatedReplicas` that are ready).
    pub ready_replicas: i32,
    /// The Deployment controller has seen the latest spec and finished updating pods.
    pub settled: bool,
    /// The Deployment controller gave up waiting for progress on the latest spec (its
    /// `Progressing` condition says `ProgressDeadlineExceeded`).
    pub stalled: bool,
}

impl WorkloadState {
    /// Runs `revision` with exactly `replicas` ready pods of it.
    pub fn is_ready(&self, revision: &str, replicas: i32) -> bool {
        self.settled
            && self.revision.as_deref() == Some(revision)
            && self.replicas == replicas
            && self.ready_replicas >= replicas
    }
}

/// What the controller saw of the user's Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetState {
    /// The revision of its pod template (a hash of the template).
    pub revision: String,
    /// Its `spec.replicas`: the service's size, until we have taken it over (then 0).
    pub replicas: i32,
    /// Its containers' images, for people (`app=registry/app:1.2`).
    pub images: String,
}

/// Everything [`plan`] needs from the outside world.
#[derive(Clone, Debug)]
pub struct Observed {
    pub generation: Option<i64>,
    /// The target Deployment, or why it cannot be used.
    pub target: Option<Result<TargetState, String>>,
    pub stable: Option<WorkloadState>,
    pub canary: Option<WorkloadState>,
    /// The request annotations (one per request, and the single slot), parsed.
    pub requests: Vec<Result<Request, String>>,
    /// Metric definitions of each analysis run (`background`, `step-N`), resolved from the
    /// templates; `Err` when a template is missing or invalid.
    pub analysis: Result<BTreeMap<String, Vec<MetricDefinition>>, String>,
    /// Measurements taken this reconcile (those [`due_measurements`] asked for).
    pub measurements: Vec<NewMeasurement>,
    /// The canary's weight in the routing as read (`None` if it could not be read, or no
    /// routing object holds one).
    pub route_weight: Option<u8>,
    /// What the spec's router can do.
    pub router: Capabilities,
    /// The user's HorizontalPodAutoscaler of the target (`None`: there is none), or why the one
    /// `spec.autoscalerRef` names cannot be used.
    pub autoscaler: Option<Result<Autoscaler, String>>,
    /// The HPA the controller derives for `<target>-stable`, as it is (`None`: it does not
    /// exist).
    pub derived_autoscaler: Option<DerivedAutoscaler>,
    /// The Canary's `metadata.uid`: offsets its metrics' schedules (see
    /// [`analysis_runs::first_measurement_jitter`]) so Canaries started together do not query
    /// together. Empty (the default): no offset.
    pub canary_uid: String,
}

/// The user's HorizontalPodAutoscaler of the target: its bounds (its metrics and behaviour
/// are copied by the adapter, the rollout needs only the bounds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autoscaler {
    pub name: String,
    /// `minReplicas` (1 when unset).
    pub min_replicas: i32,
    pub max_replicas: i32,
}

/// The derived HPA `<target>-stable` as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedAutoscaler {
    pub min_replicas: i32,
    /// It scales `<target>-stable` with the user's metrics, behaviour and `maxReplicas`, and is
    /// the Canary's: only its `minReplicas` may differ from what the rollout wants.
    pub in_sync: bool,
}

/// A change to make, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create or update `<target>-stable` to run `revision` with `replicas` pods.
    EnsureStable { revision: String, replicas: i32 },
    /// Create or update `<target>-canary` to run `revision` with `replicas` pods.
    EnsureCanary { revision: String, replicas: i32 },
    /// Scale `<target>-canary` (if it exists) without changing its template.
    ScaleCanary { replicas: i32 },
    /// Give the canary `weight` percent of the traffic and stable the rest.
    SetWeight { weight: u8 },
    /// Make the header routes to the canary exactly these.
    SetHeaderRoutes { routes: Vec<HeaderRoute> },
    /// Keep the user's Deployment at zero replicas: it is the desired spec, not a workload.
    ScaleTargetToZero,
    /// Autoscaled: [`Action::EnsureStable`] leaving `spec.replicas` to the derived HPA; written
    /// only when `<target>-stable` is created (with `replicas`), never otherwise.
    EnsureStableAutoscaled { revision: String, replicas: i32 },
    /// Server-side apply the derived HPA `<target>-stable`: the user's HPA scaling
    /// `<target>-stable`, with `minReplicas` raised to `min_replicas` during a rollout.
    EnsureAutoscaler { min_replicas: i32 },
    /// Delete the derived HPA: the user's is gone (the controller sizes stable again).
    DeleteAutoscaler,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A Kubernetes Event to record (reasons are DESIGN.md's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventType,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: CanaryStatus,
    pub events: Vec<Event>,
    /// Reconcile again after this long, even if nothing changes (timers: pauses, measurements,
    /// deadlines). Watches trigger earlier reconciles.
    pub requeue_after: Option<StdDuration>,
}

/// While waiting on Deployments or the router, look again at least this often.
pub const WAIT_RECHECK: StdDuration = StdDuration::from_secs(5);
/// How soon a plan asks to be looked at again for something due now that it could not do
/// (and between requests taken one per reconcile): a retry pace, never a floor for a time
/// something is due.
pub const MIN_REQUEUE: StdDuration = StdDuration::from_secs(1);

/// Replicas the canary needs to serve `weight` percent of a service of `desired` replicas
/// when a router splits the traffic ([`Granularity::Exact`]): proportional, rounded up,
/// never zero (the canary must be ready before it gets traffic).
pub fn canary_replicas(desired: i32, weight: u8) -> i32 {
    let share = (u64::from(desired.max(1).unsigned_abs()) * u64::from(weight)).div_ceil(100);
    i32::try_from(share).unwrap_or(i32::MAX).max(1)
}

/// The pods of each version, `(canary, stable)`, that realise `weight` percent of a service of
/// `desired` replicas when the pods are the split ([`Granularity::Replicas`]). The canary gets
/// the nearest share, `desired × weight / 100` rounded half up, and stable the rest; but while
/// the weight is strictly between 0 and 100 each version keeps at least one pod, so a service
/// of one replica runs one of each (50%), and one of ten at 95% runs nine canary pods and one
/// stable (90%).
pub fn replica_split(desired: i32, weight: u8) -> (i32, i32) {
    let desired = desired.max(1);
    match weight {
        0 => (0, desired),
        100.. => (desired, 0),
        _ if desired == 1 => (1, 1),
        _ => {
            let share = (i64::from(desired) * i64::from(weight) + 50) / 100;
            let canary = i32::try_from(share)
                .unwrap_or(i32::MAX)
                .clamp(1, desired - 1);
            (canary, desired - canary)
        }
    }
}

/// Split by replicas with stable autoscaled (stable keeps all its `stable` pods, the
/// controller does not shrink it): the canary's pods that make its share of both `weight`
/// percent, `stable × weight / (100 − weight)` rounded half up, at least one while it has
/// traffic; at 100 (no share can be reached while stable has pods) as many as stable.
pub fn canary_replicas_beside(stable: i32, weight: u8) -> i32 {
    let stable = i64::from(stable.max(1));
    match weight {
        0 => 0,
        100.. => i32::try_from(stable).unwrap_or(i32::MAX),
        _ => {
            let rest = i64::from(100 - weight);
            let share = (stable * i64::from(weight) + rest / 2) / rest;
            i32::try_from(share).unwrap_or(i32::MAX).max(1)
        }
    }
}

/// The derived HPA's `minReplicas`: the user's, raised during a rollout to `held` (stable's
/// size when it started, so stable can take all traffic back at once), within the user's max.
pub fn autoscaler_min_replicas(autoscaler: &Autoscaler, held: Option<i32>) -> i32 {
    let min = autoscaler.min_replicas;
    held.map_or(min, |held| held.min(autoscaler.max_replicas).max(min))
}

/// The canary's share (percent, rounded) of `canary + stable` ready pods; `None` without pods.
pub fn pod_share(canary: i32, stable: i32) -> Option<u8> {
    let (canary, stable) = (i64::from(canary.max(0)), i64::from(stable.max(0)));
    let total = canary + stable;
    (total > 0).then(|| u8::try_from((canary * 100 + total / 2) / total).unwrap_or(100))
}

/// Why `spec` cannot be rolled out with a router that can do `router`, if it cannot.
pub fn unsupported_by_router(spec: &CanarySpec, router: Capabilities) -> Option<String> {
    if router.header_routes {
        return None;
    }
    let index = spec
        .rollout_steps()
        .iter()
        .position(|s| matches!(s, RolloutStep::SetHeaderRoute(_)))?;
    let why = match router.granularity {
        Granularity::Replicas => {
            "without spec.trafficRouting the traffic is split by replicas behind one Service, which cannot route by header; use trafficRouting.istio or trafficRouting.gatewayAPI, or remove the step"
        }
        Granularity::Exact => {
            "the router of spec.trafficRouting cannot route by header; remove the step"
        }
        Granularity::Switch => "blue-green switches Services, which cannot route by header",
    };
    Some(format!("steps[{index}].setHeaderRoute: {why}"))
}

/// Whether [`plan`] can act on `Observed::analysis`: while a rollout is under way, and in a
/// settled phase only if the target runs another revision than stable (a rollout could
/// start). Otherwise the plan reads it only to say that it is broken (`Ready=False`), so a
/// template that cannot be read just now need not fail the reconcile.
pub fn needs_analysis(status: &CanaryStatus, target_revision: Option<&str>) -> bool {
    match status.phase {
        Phase::Idle | Phase::Promoted | Phase::RolledBack => target_revision
            .is_none_or(|revision| status.stable_revision.as_deref() != Some(revision)),
        // Past the analysis: promotion and rollback must not wait on templates.
        Phase::Promoting | Phase::RollingBack => false,
        _ => true,
    }
}

/// Decides what to do. See the module documentation for the rules.
pub fn plan(spec: &CanarySpec, status: &CanaryStatus, observed: &Observed, now: Timestamp) -> Plan {
    let mut planner = Planner {
        spec,
        observed,
        now,
        desired_before: status.desired_replicas,
        status: status.clone(),
        actions: Vec::new(),
        events: Vec::new(),
        requeue: None,
        answering: Vec::new(),
        answered: Vec::new(),
    };
    planner.run();
    planner.record_answers();
    planner.finish()
}

struct Planner<'a> {
    spec: &'a CanarySpec,
    observed: &'a Observed,
    now: Timestamp,
    /// The service's size as status knew it before this plan.
    desired_before: Option<i32>,
    status: CanaryStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Option<StdDuration>,
    /// The ids of the pending requests that the action taken this plan answers.
    answering: Vec<String>,
    /// Requests answered without being acted on (a promote of a finished step).
    answered: Vec<RequestStatus>,
}

/// The order in which requests pending together are acted on, one action per reconcile: an
/// abort first (the requests after it find the rollout ended and are told so), a pause last
/// (a rollout paused and resumed at once ends paused: a human decides).
const REQUEST_ORDER: [RequestAction; 6] = [
    RequestAction::Abort,
    RequestAction::PromoteFull,
    RequestAction::Promote,
    RequestAction::Resume,
    RequestAction::Retry,
    RequestAction::Pause,
];

/// Answers kept in `status.recentRequests` besides those whose annotation is still there.
const ANSWERS_KEPT: usize = 32;

impl Planner<'_> {
    fn run(&mut self) {
        self.status.observed_generation = self.observed.generation;
        let target = match &self.observed.target {
            Some(Ok(target)) => target.clone(),
            Some(Err(problem)) => return self.target_unusable(problem.clone()),
            None => {
                let name = self.spec.target_ref.name.clone();
                return self.target_unusable(format!(
                    "Deployment {name} (spec.targetRef) does not exist: create it, or fix targetRef.name"
                ));
            }
        };
        self.status.target_revision = Some(target.revision.clone());
        if target.replicas > 0 {
            self.status.desired_replicas = Some(target.replicas);
        }
        if let Some(stable) = self.autoscaled_stable_size() {
            // The derived HPA decides the service's size.
            self.status.desired_replicas = Some(stable);
        }
        if self.status.phase == Phase::Failed {
            self.status.phase = if self.status.stable_revision.is_some() {
                Phase::Idle
            } else {
                Phase::Initializing
            };
        }
        let request = self.take_request();
        match self.status.phase {
            Phase::Initializing => self.initialize(&target),
            Phase::Idle | Phase::Promoted | Phase::RolledBack => self.steady(&target, request),
            Phase::Progressing | Phase::Paused => self.progress(&target, request),
            Phase::Promoting => self.promote(request),
            Phase::RollingBack => self.roll_back(),
            Phase::Failed => unreachable!("left above"),
        }
        if target.replicas > 0 && self.status.stable_revision.is_some() {
            self.actions.push(Action::ScaleTargetToZero);
        }
        self.autoscale();
    }

    // -- autoscaling (the README's "Autoscaling (HPA)") -------------------------------------

    /// The user's HPA of the target, when one is found and usable.
    fn autoscaler(&self) -> Option<&Autoscaler> {
        self.observed.autoscaler.as_ref()?.as_ref().ok()
    }

    /// Autoscaled and stable exists: its current replicas (the derived HPA's to decide).
    fn autoscaled_stable_size(&self) -> Option<i32> {
        self.autoscaler()?;
        self.observed.stable.as_ref().map(|s| s.replicas)
    }

    /// Why `spec.autoscalerRef` cannot be used, if it cannot.
    fn autoscaler_problem(&self) -> Option<String> {
        self.observed.autoscaler.as_ref()?.as_ref().err().cloned()
    }

    /// Last, once the plan is decided: autoscaled, stable's replicas are the derived HPA's
    /// (stable is ensured without them) and the derived HPA is kept as the rollout wants it;
    /// otherwise a derived HPA left over goes (before stable's replicas are written again).
    fn autoscale(&mut self) {
        let Some(autoscaler) = self.autoscaler().cloned() else {
            self.status.held_stable_replicas = None;
            if self.observed.derived_autoscaler.is_some() {
                self.actions.insert(0, Action::DeleteAutoscaler);
            }
            return;
        };
        for action in &mut self.actions {
            if let Action::EnsureStable { revision, replicas } = action {
                *action = Action::EnsureStableAutoscaled {
                    revision: std::mem::take(revision),
                    replicas: *replicas,
                };
            }
        }
        let under_way = matches!(
            self.status.phase,
            Phase::Progressing | Phase::Paused | Phase::Promoting | Phase::RollingBack
        );
        if under_way {
            let size = self.desired();
            self.status.held_stable_replicas.get_or_insert(size);
        } else {
            self.status.held_stable_replicas = None;
        }
        let min_replicas = autoscaler_min_replicas(&autoscaler, self.status.held_stable_replicas);
        let current = self.observed.derived_autoscaler.as_ref();
        if !current.is_some_and(|d| d.in_sync && d.min_replicas == min_replicas) {
            self.actions.push(Action::EnsureAutoscaler { min_replicas });
        }
    }

    fn desired(&self) -> i32 {
        self.status.desired_replicas.unwrap_or(1).max(1)
    }

    fn now_text(&self) -> String {
        self.now.to_string()
    }

    fn event(&mut self, kind: EventType, reason: &'static str, message: String) {
        self.events.push(Event {
            kind,
            reason,
            message,
        });
    }

    fn requeue_in(&mut self, after: StdDuration) {
        // Something due later is looked at exactly when it is due (a floor would make a
        // measurement late). Something due now that this reconcile could not finish (a
        // measurement in flight, whose end wakes the Canary anyway; a metric whose template
        // is gone) is retried at a bounded pace, never in a busy loop.
        let after = if after.is_zero() { MIN_REQUEUE } else { after };
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    /// The current step as people read it (`4/6`).
    fn step_text(&self) -> String {
        self.step_text_of(self.status.current_step_index.unwrap_or(0))
    }

    fn step_text_of(&self, index: u32) -> String {
        step_display(index, self.spec.rollout_steps().len())
    }

    fn since(&self, at: &Option<String>) -> Option<SignedDuration> {
        Some(self.now.duration_since(analysis_runs::parse(at)?))
    }

    // -- the request annotations --------------------------------------------------------------

    /// The request to act on now, if one is pending. Of the requests pending together, one
    /// action is taken per plan, in [`REQUEST_ORDER`]; every pending request of that action
    /// gets the same answer (the same thing asked twice at once is done once), and the others
    /// wait for the next reconcile. A promote naming a step that is already finished is
    /// answered without skipping another. Malformed requests are reported in status.
    fn take_request(&mut self) -> Option<RequestAction> {
        let mut pending: Vec<Request> = Vec::new();
        let mut problem = None;
        for parsed in &self.observed.requests {
            match parsed {
                Ok(request) if !request.answered_in(Some(&self.status)) => {
                    pending.push(request.clone())
                }
                Ok(_) => {}
                Err(message) => {
                    problem.get_or_insert_with(|| message.clone());
                }
            }
        }
        if let Some(message) = problem {
            if self.status.message.as_deref() != Some(message.as_str()) {
                self.event(EventType::Warning, "InvalidRequest", message.clone());
            }
            self.status.message = Some(message);
        }
        pending.retain(|request| !self.answer_promote_of_another_step(request));
        let action = REQUEST_ORDER
            .into_iter()
            .find(|action| pending.iter().any(|r| r.action == *action))?;
        if pending.iter().any(|r| r.action != action) {
            // The next action is taken by the reconcile after this answer is written.
            self.requeue_in(MIN_REQUEUE);
        }
        self.answering = pending
            .into_iter()
            .filter(|r| r.action == action)
            .map(|r| r.id)
            .collect();
        // Refused unless the phase's handling acts on it and says so.
        let message = format!(
            "{} does not apply: the Canary is {}",
            action.as_str(),
            self.status.phase.as_str()
        );
        self.status.last_request = Some(RequestStatus {
            id: self.answering[0].clone(),
            action,
            accepted: false,
            message,
            at: self.now_text(),
        });
        Some(action)
    }

    /// Answers a promote that names another step than the current one, and says whether it
    /// did: finished already (accepted: what it asked is done) or not reached yet (refused).
    fn answer_promote_of_another_step(&mut self, request: &Request) -> bool {
        let under_way = matches!(self.status.phase, Phase::Progressing | Phase::Paused);
        let current = self.status.current_step_index.unwrap_or(0);
        let Some(step) = request.step.filter(|step| under_way && *step != current) else {
            return false;
        };
        let (asked, now_at) = (self.step_text_of(step), self.step_text());
        let (accepted, message) = if step < current {
            (
                true,
                format!(
                    "step {asked} was already finished by another request; the rollout is at step {now_at}: promote again to finish that one"
                ),
            )
        } else {
            (
                false,
                format!("promote does not apply: the rollout is at step {now_at}, not {asked}"),
            )
        };
        self.answered.push(RequestStatus {
            id: request.id.clone(),
            action: request.action,
            accepted,
            message,
            at: self.now_text(),
        });
        true
    }

    /// Puts this plan's answers into `status.recentRequests`: one per request answered, and
    /// keeps every answer whose annotation is still there (so it is not acted on again) and
    /// the latest [`ANSWERS_KEPT`] others.
    fn record_answers(&mut self) {
        let mut answers = std::mem::take(&mut self.answered);
        if let Some(last) = self.status.last_request.as_mut()
            && !self.answering.is_empty()
        {
            let together = self.answering.len();
            if together > 1 {
                last.message = format!(
                    "{} ({together} {} requests at once: done once)",
                    last.message,
                    last.action.as_str()
                );
            }
            let last = last.clone();
            answers.extend(self.answering.iter().map(|id| RequestStatus {
                id: id.clone(),
                ..last.clone()
            }));
        }
        if answers.is_empty() {
            return;
        }
        // Said before what the request caused (`Aborted`, `Paused`…), in the order answered.
        let said: Vec<Event> = answers.iter().map(request_event).collect();
        self.events.splice(0..0, said);
        let present = |answer: &RequestStatus| {
            self.observed
                .requests
                .iter()
                .flatten()
                .any(|request| request.id == answer.id && request.action == answer.action)
        };
        let mut recent = std::mem::take(&mut self.status.recent_requests);
        recent.extend(answers);
        let mut others = 0;
        let mut kept: Vec<RequestStatus> = recent
            .into_iter()
            .rev()
            .filter(|answer| {
                present(answer) || {
                    others += 1;
                    others <= ANSWERS_KEPT
                }
            })
            .collect();
        kept.reverse();
        self.status.recent_requests = kept;
    }

    fn answer_request(&mut self, accepted: bool, message: String) {
        if let Some(last) = self.status.last_request.as_mut() {
            last.accepted = accepted;
            last.message = message;
        }
    }

    fn refuse(&mut self, action: RequestAction, why: &str) {
        let message = format!("{} does not apply: {why}", action.as_str());
        self.answer_request(false, message);
    }

    // -- phases -------------------------------------------------------------------------------

    fn target_unusable(&mut self, problem: String) {
        if self.status.phase != Phase::Failed {
            self.event(EventType::Warning, "InvalidSpec", problem.clone());
        }
        match self.take_request() {
            // Traffic goes to stable anyway (below): that is what an abort asks.
            Some(RequestAction::Abort) => {
                self.answer_request(true, "traffic is on stable: the target is unusable".into());
                // Aborted: not rolled out again by itself once the target is usable.
                if let Some(aborted) = self.status.canary_revision.take() {
                    self.status.failed_revision = Some(aborted);
                    self.status.rollback_reason = Some(RollbackReason::Aborted);
                }
            }
            Some(other) => self.refuse(other, "the target is unusable; fix it first"),
            None => {}
        }
        analysis_runs::stop_measuring(&mut self.status, "the target became unusable");
        // Whatever was under way, the service keeps being served by stable.
        if self.status.stable_revision.is_some() {
            self.set_weight(0);
            self.remove_header_routes();
            self.actions.push(Action::ScaleCanary { replicas: 0 });
        }
        self.status.phase = Phase::Failed;
        self.status.message = Some(problem.clone());
        self.set_condition("Ready", false, "InvalidSpec", &problem);
    }

    /// Asks for stable to run `revision` at the desired replicas; whether it already does,
    /// with every pod ready.
    fn ensure_stable(&mut self, revision: &str) -> bool {
        let desired = self.desired();
        self.actions.push(Action::EnsureStable {
            revision: revision.to_owned(),
            replicas: desired,
        });
        self.observed
            .stable
            .as_ref()
            .is_some_and(|s| s.is_ready(revision, desired))
    }

    fn initialize(&mut self, target: &TargetState) {
        let desired = self.desired();
        if !self.ensure_stable(&target.revision) {
            self.status.message = Some(format!(
                "waiting for {} to run {} with {desired} ready pods",
                self.spec.stable_name(),
                target.revision
            ));
            self.set_condition(
                "Ready",
                true,
                "Initializing",
                "creating the stable Deployment",
            );
            self.requeue_in(WAIT_RECHECK);
            return;
        }
        self.set_weight(0);
        self.status.stable_revision = Some(target.revision.clone());
        self.status.phase = Phase::Idle;
        self.status.message = Some(format!(
            "{} runs {} ({}) with all traffic",
            self.spec.stable_name(),
            target.revision,
            target.images
        ));
        self.set_condition("Ready", true, "Initialized", "stable serves all traffic");
        self.set_condition("Progressing", false, "Idle", "no rollout under way");
    }

    fn steady(&mut self, target: &TargetState, request: Option<RequestAction>) {
        self.check_spec_while_settled();
        let stable = self.status.stable_revision.clone().unwrap_or_default();
        self.actions.push(Action::EnsureStable {
            revision: stable.clone(),
            replicas: self.desired(),
        });
        self.report_settled_drift();
        self.set_weight(0);
        self.remove_header_routes();
        let mut retry = false;
        if let Some(action) = request {
            match action {
                RequestAction::Retry
                    if self.status.failed_revision.as_deref() == Some(&target.revision) =>
                {
                    retry = true;
                    self.answer_request(true, format!("retrying {}", target.revision));
                }
                RequestAction::Retry => self.refuse(action, "no rolled-back revision to retry"),
                other => self.refuse(other, "no rollout is under way"),
            }
        }
        if !self.start_if_due(target, &stable, retry) {
            // Nothing rolls out: a canary whose traffic left earlier goes once its delay is up.
            self.scale_canary_down_when_due();
        }
    }

    /// From a settled phase: starts rolling out `target` when it is a revision to roll out;
    /// whether it did.
    fn start_if_due(&mut self, target: &TargetState, stable: &str, retry: bool) -> bool {
        if target.revision == stable {
            if self.status.failed_revision.take().is_some() {
                self.status.message = Some(format!("the target is back on stable {stable}"));
            }
            self.set_condition(
                "Progressing",
                false,
                self.status.phase.as_str(),
                "no rollout under way",
            );
            return false;
        }
        if self.status.failed_revision.as_deref() == Some(&target.revision) && !retry {
            let why = self
                .status
                .rollback_reason
                .map(|r| format!(" ({r:?})"))
                .unwrap_or_default();
            self.status.message = Some(format!(
                "revision {} was rolled back{why}; it is not rolled out again until `canary retry` or a new revision",
                target.revision
            ));
            return false;
        }
        if self.spec.suspend {
            self.status.message = Some(format!(
                "suspended: revision {} waits until spec.suspend is false",
                target.revision
            ));
            return false;
        }
        self.start_rollout(target, None)
    }

    /// With no rollout under way, a spec that could not start one (a template that does not
    /// exist or cannot run, a step the router cannot serve) is said now, in `Ready`, not
    /// only once a revision arrives; and `Ready` is true again once it is fixed.
    fn check_spec_while_settled(&mut self) {
        let problem = match &self.observed.analysis {
            Err(problem) => Some(problem.clone()),
            Ok(_) => unsupported_by_router(self.spec, self.observed.router)
                .or_else(|| self.autoscaler_problem()),
        };
        if let Some(problem) = problem {
            return self.invalid_analysis(problem);
        }
        let Some(reported) = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.reason == "InvalidSpec")
            .map(|c| c.message.clone())
        else {
            return;
        };
        if self.status.message.as_deref() == Some(reported.as_str()) {
            self.status.message = Some(format!(
                "the spec is valid again; {} serves all traffic",
                self.spec.stable_name()
            ));
        }
        self.set_condition("Ready", true, "Ready", "the spec is valid");
    }

    fn invalid_analysis(&mut self, problem: String) {
        // Reported once per problem: the Ready condition remembers it (the message may be
        // overwritten by what a held rollout says).
        let reported = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "InvalidSpec" && c.message == problem);
        if !reported {
            self.event(EventType::Warning, "InvalidSpec", problem.clone());
        }
        self.status.message = Some(problem.clone());
        self.set_condition("Ready", false, "InvalidSpec", &problem);
    }

    /// Starts rolling out `target`, unless the analysis it would need is invalid; whether it
    /// did.
    fn start_rollout(&mut self, target: &TargetState, superseded: Option<String>) -> bool {
        if let Err(problem) = &self.observed.analysis {
            self.invalid_analysis(problem.clone());
            return false;
        }
        if let Some(problem) = unsupported_by_router(self.spec, self.observed.router)
            .or_else(|| self.autoscaler_problem())
        {
            self.invalid_analysis(problem);
            return false;
        }
        let revision = target.revision.clone();
        self.status.failed_revision = None;
        self.status.rollback_reason = None;
        self.status.pause_reason = None;
        self.status.analysis_runs.clear();
        // The canary is replaced now, not scaled down later.
        self.status.canary_scale_down_at = None;
        self.status.withdrawn_weight = None;
        self.status.canary_revision = Some(revision.clone());
        self.status.canary_images = Some(target.images.clone());
        self.remove_header_routes();
        self.status.rollout_started_at = Some(self.now_text());
        self.status.step_started_at = Some(self.now_text());
        self.status.steps_fingerprint = Some(steps_fingerprint(&self.spec.rollout_steps()));
        // The previous rollout's facts are not this one's.
        self.status.canary_unready_since = None;
        self.set_condition(
            "Promoted",
            false,
            "RolloutStarted",
            &format!("{revision} is being rolled out: not promoted yet"),
        );
        self.set_condition("Ready", true, "Ready", "the spec is valid");
        let message = match &superseded {
            Some(old) => format!(
                "rolling out {revision} ({}), superseding {old}",
                target.images
            ),
            None => format!("rolling out {revision} ({})", target.images),
        };
        self.event(EventType::Normal, "RolloutStarted", message.clone());
        self.status.message = Some(message);
        if self.spec.skip_analysis {
            self.status.current_step_index = None;
            self.status.step_display = None;
            self.status.phase = Phase::Promoting;
            self.set_condition(
                "Progressing",
                true,
                "Promoting",
                "skipAnalysis: promoting at once",
            );
            self.promote(None);
            return true;
        }
        self.status.phase = Phase::Progressing;
        self.status.current_step_index = Some(0);
        self.status.canary_updated_at = Some(self.now_text());
        // Split by replicas, a canary pod has traffic as soon as it is ready: it gets none
        // before its first setWeight step.
        self.actions.push(Action::EnsureCanary {
            revision,
            replicas: self.canary_pods(self.status.canary_weight),
        });
        self.set_condition(
            "Progressing",
            true,
            "RolloutStarted",
            "the canary is being deployed",
        );
        self.walk_steps();
        true
    }

    fn progress(&mut self, target: &TargetState, request: Option<RequestAction>) {
        self.progress_steps(target, request);
        if matches!(self.status.phase, Phase::Progressing | Phase::Paused) {
            // Last, once this plan's weight is known: split by replicas, stable's size
            // follows the canary's weight.
            self.keep_stable_sized();
        }
    }

    fn progress_steps(&mut self, target: &TargetState, request: Option<RequestAction>) {
        if request == Some(RequestAction::Abort) {
            // Before anything else, a newer revision included: the human wants out.
            self.answer_request(true, "rolling back".into());
            return self.begin_rollback(
                RollbackReason::Aborted,
                "aborted by request: all traffic back to stable".into(),
            );
        }
        let canary_revision = self.status.canary_revision.clone().unwrap_or_default();
        let stable_revision = self.status.stable_revision.clone().unwrap_or_default();
        if target.revision != canary_revision {
            if target.revision == stable_revision {
                return self.begin_rollback(
                    RollbackReason::TargetReverted,
                    format!("the target went back to the stable revision {stable_revision}"),
                );
            }
            if !self.spec.suspend {
                // Traffic leaves the canary before its pods are replaced.
                self.set_weight(0);
                self.start_rollout(target, Some(canary_revision));
                return;
            }
        }
        if let Some(action) = request {
            match action {
                RequestAction::Abort => {
                    self.answer_request(true, "rolling back".into());
                    return self.begin_rollback(
                        RollbackReason::Aborted,
                        "aborted by request: all traffic back to stable".into(),
                    );
                }
                RequestAction::PromoteFull => {
                    self.answer_request(true, "promoting now".into());
                    self.status.phase = Phase::Promoting;
                    self.status.step_started_at = Some(self.now_text());
                    self.set_condition(
                        "Progressing",
                        true,
                        "Promoting",
                        "full promotion requested",
                    );
                    return self.promote(None);
                }
                RequestAction::Promote | RequestAction::Resume if self.spec.suspend => self.refuse(
                    action,
                    "spec.suspend holds the rollout: set it to false first",
                ),
                RequestAction::Promote => {
                    self.answer_request(true, "skipping to the next step".into());
                    self.status.phase = Phase::Progressing;
                    self.status.pause_reason = None;
                    // An analysis verdict the human overrides does not stop the next step:
                    // the background analysis starts afresh there.
                    self.drop_unsuccessful_runs();
                    self.advance_step();
                }
                RequestAction::Pause if self.status.phase == Phase::Paused => {
                    self.refuse(action, "the rollout is already paused")
                }
                RequestAction::Pause => {
                    self.answer_request(true, "paused".into());
                    return self.pause(PauseReason::Manual, "paused by request".into());
                }
                RequestAction::Resume if self.status.phase != Phase::Paused => {
                    self.refuse(action, "the rollout is not paused")
                }
                // One meaning each: `promote` passes an approval gate, `resume` undoes a
                // pause (a request's or an analysis verdict's); a gate stays closed.
                RequestAction::Resume if self.status.pause_reason == Some(PauseReason::Step) => {
                    let step = self.step_text();
                    self.refuse(
                        action,
                        &format!(
                            "the rollout waits at an approval gate (pause step {step}): `canary promote` passes it; resume continues after `canary pause` or a paused analysis"
                        ),
                    )
                }
                RequestAction::Resume => {
                    self.answer_request(true, "resumed".into());
                    self.status.phase = Phase::Progressing;
                    self.status.pause_reason = None;
                    // Resuming a failed or inconclusive analysis starts it afresh.
                    self.drop_unsuccessful_runs();
                    self.status.step_started_at = Some(self.now_text());
                }
                RequestAction::Retry => self.refuse(action, "a rollout is under way"),
            }
        }
        self.restart_steps_if_changed();
        if self.withdraw_traffic_while_unready() {
            // Whatever was measured meanwhile is dropped: a subset without pods served nothing.
            if self.deadline_exceeded() {
                let deadline = self.spec.progress_deadline();
                self.begin_rollback(
                    RollbackReason::ProgressDeadlineExceeded,
                    format!(
                        "{} had no ready pod for its traffic within the progress deadline ({deadline})",
                        self.spec.canary_name()
                    ),
                );
            }
            return;
        }
        match self.observed.router.granularity {
            Granularity::Exact | Granularity::Switch => self.correct_weight_drift(),
            Granularity::Replicas => self.report_replica_drift(),
        }
        // Measurements are recorded while paused too: a canary waiting for approval keeps
        // its traffic, so the background analysis keeps judging it.
        if let Ok(definitions) = &self.observed.analysis {
            analysis_runs::record(&mut self.status, definitions, &self.observed.measurements);
        }
        if self.deadline_exceeded() {
            let deadline = self.spec.progress_deadline();
            return self.begin_rollback(
                RollbackReason::ProgressDeadlineExceeded,
                format!(
                    "{} was not ready for its traffic within the progress deadline ({deadline})",
                    self.spec.canary_name()
                ),
            );
        }
        if self.status.phase == Phase::Paused || self.spec.suspend {
            match &self.observed.analysis {
                Err(problem) => {
                    let problem = problem.clone();
                    self.invalid_analysis(problem);
                }
                // A run whose templates changed starts afresh, held or not.
                Ok(_) if self.run_exists(BACKGROUND) => {
                    self.ensure_run(BACKGROUND);
                }
                Ok(_) => {}
            }
            self.background_verdict_while_held();
            if matches!(self.status.phase, Phase::Paused | Phase::Progressing) {
                self.hold_paused();
                if let Some(next) = analysis_runs::next_due(&self.status, self.now) {
                    self.requeue_in(next);
                }
            }
            if self.spec.suspend
                && self.status.phase == Phase::Progressing
                && self.observed.analysis.is_ok()
            {
                let waiting = if target.revision == canary_revision {
                    String::new()
                } else {
                    format!("; revision {} waits", target.revision)
                };
                self.status.message = Some(format!(
                    "suspended at {}% (step {}): spec.suspend holds the rollout{waiting}",
                    self.status.canary_weight,
                    self.step_text()
                ));
            }
            return;
        }
        let index = self.status.current_step_index.unwrap_or(0) as usize;
        if !matches!(
            self.spec.rollout_steps().get(index),
            Some(RolloutStep::SetWeight(_))
        ) {
            // The service may have been scaled since the last setWeight step.
            self.keep_canary_sized();
        }
        self.walk_steps();
    }

    /// Stable's size during a rollout: with a router, the whole service (the canary's pods are
    /// extra); split by replicas, what the canary's share leaves. When the service is scaled
    /// mid-rollout, stable is resized with it.
    fn keep_stable_sized(&mut self) {
        let revision = self.status.stable_revision.clone().unwrap_or_default();
        let replicas = self.stable_pods(self.status.canary_weight);
        let sized = self.observed.stable.as_ref().is_some_and(|s| {
            s.replicas == replicas && s.revision.as_deref() == Some(revision.as_str())
        });
        if !sized {
            self.actions
                .push(Action::EnsureStable { revision, replicas });
        }
    }

    /// The canary's pods for `weight`, as the router realises weights.
    fn canary_pods(&self, weight: u8) -> i32 {
        if self.autoscaler().is_some() && self.observed.router.granularity == Granularity::Replicas
        {
            return canary_replicas_beside(self.desired(), weight);
        }
        match self.observed.router.granularity {
            Granularity::Exact => canary_replicas(self.desired(), weight),
            // Blue-green: the preview may be smaller; it is the whole service once switched
            // to (and before: the switch waits for it at full size).
            Granularity::Switch => match (weight, self.spec.blue_green()) {
                (0, Some(b)) => b.preview_replica_count.unwrap_or(self.desired()),
                _ => self.desired(),
            },
            Granularity::Replicas => replica_split(self.desired(), weight).0,
        }
    }

    /// Stable's pods while the canary has `weight` (autoscaled: the HPA's, all of them).
    fn stable_pods(&self, weight: u8) -> i32 {
        if self.autoscaler().is_some() {
            return self.desired();
        }
        match self.observed.router.granularity {
            Granularity::Exact | Granularity::Switch => self.desired(),
            Granularity::Replicas => replica_split(self.desired(), weight).1,
        }
    }

    /// Split by replicas, the Deployments' sizes are the weight: someone who scaled one of them
    /// changed the canary's traffic. Their sizes are set back by the rest of the plan (every
    /// path sizes both); this reports it. Sizes the rollout itself is moving to (the next
    /// step's share, a withdrawn canary's, a service that was scaled) are not drift.
    fn report_replica_drift(&mut self) {
        if self.desired_before != Some(self.desired()) {
            return;
        }
        let weight = self.status.canary_weight;
        let revision = self.status.canary_revision.clone().unwrap_or_default();
        let stable_revision = self.status.stable_revision.clone().unwrap_or_default();
        let mut found = Vec::new();
        if let Some(c) = &self.observed.canary
            && c.revision.as_deref() == Some(revision.as_str())
        {
            let expected = [
                Some(weight),
                Some(self.pending_weight()),
                self.status.withdrawn_weight,
            ];
            if !expected
                .iter()
                .flatten()
                .any(|w| self.canary_pods(*w) == c.replicas)
            {
                found.push(format!(
                    "{} has {} replicas instead of {}",
                    self.spec.canary_name(),
                    c.replicas,
                    self.canary_pods(weight)
                ));
            }
        }
        if let Some(s) = &self.observed.stable
            && s.revision.as_deref() == Some(stable_revision.as_str())
            && s.replicas != self.stable_pods(weight)
        {
            found.push(format!(
                "{} has {} replicas instead of {}",
                self.spec.stable_name(),
                s.replicas,
                self.stable_pods(weight)
            ));
        }
        if !found.is_empty() {
            self.event(
                EventType::Warning,
                "WeightDrift",
                format!(
                    "the canary's {weight}% is its share of the pods, and {}: set back",
                    found.join(", ")
                ),
            );
        }
    }

    /// Ready pods of the canary's revision.
    fn canary_ready_pods(&self) -> i32 {
        let revision = self.status.canary_revision.clone().unwrap_or_default();
        self.observed
            .canary
            .as_ref()
            .filter(|c| c.revision.as_deref() == Some(revision.as_str()))
            .map_or(0, |c| c.ready_replicas)
    }

    /// A canary with traffic and no ready pod (its pods crashed, were evicted, its Deployment
    /// was deleted): its traffic goes to stable at once, and its analyses stop measuring (a
    /// subset that served nothing proves nothing). Once its pods are ready for the weight
    /// again, the weight, the step's clock and the analyses' clocks start again; the progress
    /// deadline decides meanwhile. Whether the traffic is withdrawn.
    fn withdraw_traffic_while_unready(&mut self) -> bool {
        let canary = self.spec.canary_name();
        if let Some(weight) = self.status.withdrawn_weight {
            if self.canary_can_serve(weight) {
                self.status.withdrawn_weight = None;
                self.event(
                    EventType::Normal,
                    "TrafficRestored",
                    format!("{canary} has ready pods again: canary weight 0% → {weight}%"),
                );
                self.set_weight(weight);
                self.status.step_started_at = Some(self.now_text());
                if let Ok(definitions) = &self.observed.analysis {
                    analysis_runs::resume_measuring(
                        &mut self.status,
                        definitions,
                        self.now,
                        &self.observed.canary_uid,
                    );
                }
                return false;
            }
        } else if self.status.canary_weight > 0 && self.canary_ready_pods() == 0 {
            let weight = self.status.canary_weight;
            self.status.withdrawn_weight = Some(weight);
            self.event(
                EventType::Warning,
                "TrafficWithdrawn",
                format!(
                    "{canary} has no ready pod: its {weight}% goes to stable until it is ready again (or the progress deadline passes)"
                ),
            );
            analysis_runs::hold_measuring(&mut self.status);
        } else {
            return false;
        }
        let weight = self.status.withdrawn_weight.unwrap_or_default();
        self.ensure_canary_at(weight);
        self.set_weight(0);
        self.status.message = Some(format!(
            "{canary} has no ready pod: its {weight}% is on stable until it is ready again; analysis on hold"
        ));
        self.requeue_in(WAIT_RECHECK);
        true
    }

    /// A background analysis that fails (or turns inconclusive) while the rollout holds (a
    /// pause step, a pause request, `spec.suspend`) acts as it would while progressing;
    /// pauses that are themselves a verdict stay as they are.
    fn background_verdict_while_held(&mut self) {
        if self.status.phase == Phase::Paused
            && !matches!(
                self.status.pause_reason,
                Some(PauseReason::Step | PauseReason::Manual)
            )
        {
            return;
        }
        let current_step = step_run(self.status.current_step_index.unwrap_or(0) as usize);
        for name in [BACKGROUND.to_string(), current_step] {
            let Some(phase) = self.run_phase(&name) else {
                continue;
            };
            if phase.is_terminal() && phase != AnalysisPhase::Successful {
                self.handle_run_outcome(&name, phase);
                return;
            }
        }
    }

    fn run_phase(&self, name: &str) -> Option<AnalysisPhase> {
        analysis_runs::run(&self.status, name).map(|r| r.phase)
    }

    fn run_exists(&self, name: &str) -> bool {
        self.run_phase(name).is_some()
    }

    /// Walks steps from the current one for as long as they complete at once.
    fn walk_steps(&mut self) {
        let steps = self.spec.rollout_steps();
        // Bounded: each pass either returns or advances one step.
        for _ in 0..=steps.len() {
            if self.status.phase != Phase::Progressing {
                return;
            }
            let index = self.status.current_step_index.unwrap_or(0) as usize;
            self.status.step_display = Some(self.step_text());
            if !self.background_analysis_ok(index) {
                return;
            }
            let Some(step) = steps.get(index) else {
                if !self.background_analysis_concluded() {
                    return;
                }
                self.status.phase = Phase::Promoting;
                self.status.step_started_at = Some(self.now_text());
                self.set_condition("Progressing", true, "Promoting", "every step passed");
                return self.promote(None);
            };
            let done = match step {
                RolloutStep::SetWeight(weight) => self.step_set_weight(*weight),
                RolloutStep::Pause(duration) => self.step_pause(*duration),
                RolloutStep::Analysis(_) => self.step_analysis(index),
                RolloutStep::SetHeaderRoute(route) => self.step_set_header_route(route),
            };
            if !done {
                return;
            }
            self.advance_step();
        }
    }

    /// Steps edited mid-rollout: the index kept in status points into the old list (past the
    /// end of a shorter one would promote at once), so the walk starts again from the first
    /// step, like Argo Rollouts does on a change of its steps' hash. Analysis step runs belong
    /// to the old steps and go; the background analysis goes on (restarted only if its own
    /// metrics changed).
    fn restart_steps_if_changed(&mut self) {
        let fingerprint = steps_fingerprint(&self.spec.rollout_steps());
        let Some(previous) = self.status.steps_fingerprint.replace(fingerprint.clone()) else {
            // Status written before fingerprints existed: take the steps as they are.
            return;
        };
        if previous == fingerprint {
            return;
        }
        self.event(
            EventType::Normal,
            "StepsChanged",
            format!(
                "the steps changed at step {}: starting again from the first step",
                self.step_text()
            ),
        );
        self.status.current_step_index = Some(0);
        self.status.step_started_at = Some(self.now_text());
        self.status.analysis_runs.retain(|r| r.name == BACKGROUND);
        // Those routes were the old steps' doing; the new steps add their own.
        self.remove_header_routes();
        if self.status.pause_reason == Some(PauseReason::Step) {
            // That pause step belonged to the old steps; pauses for a human's verdict stay.
            self.status.phase = Phase::Progressing;
            self.status.pause_reason = None;
        }
    }

    /// Someone (a GitOps sync, a person) changed the canary's weight in the routing: the
    /// rollout's weight is put back and the change reported, so the analysis never judges a
    /// canary without the traffic status claims it has.
    fn correct_weight_drift(&mut self) {
        let Some(found) = self.observed.route_weight else {
            return;
        };
        let weight = self.status.canary_weight;
        if found == weight {
            return;
        }
        if found < weight && !self.canary_can_serve(weight) {
            // Someone took traffic off a canary that is not ready for it (an emergency by
            // hand): status follows the routing instead of sending traffic back.
            self.event(
                EventType::Warning,
                "WeightDrift",
                format!(
                    "the routing gave the canary {found}% instead of the rollout's {weight}%; left at {found}% because the canary is not ready for {weight}%"
                ),
            );
            self.status.canary_weight = found;
            return;
        }
        self.event(
            EventType::Warning,
            "WeightDrift",
            format!(
                "the routing gave the canary {found}% instead of the rollout's {weight}%: set back to {weight}%"
            ),
        );
        self.set_weight(weight);
    }

    /// Settled, the canary has no traffic: a weight someone gave it in the routing is set
    /// back (by the plan's weight 0) and reported. A weight the routing held when last
    /// observed is the rollout's own, still being written (e.g. a write that failed), not
    /// drift.
    fn report_settled_drift(&mut self) {
        if self.observed.router.granularity == Granularity::Replicas {
            return;
        }
        let Some(found) = self.observed.route_weight else {
            return;
        };
        if found == 0 || self.status.effective_weight == Some(found) {
            return;
        }
        self.event(
            EventType::Warning,
            "WeightDrift",
            format!(
                "the routing gave the canary {found}% while {} (the rollout's weight is 0%): set back to 0%",
                self.status.phase.as_str()
            ),
        );
    }

    fn drop_unsuccessful_runs(&mut self) {
        self.status
            .analysis_runs
            .retain(|r| !r.phase.is_terminal() || r.phase == AnalysisPhase::Successful);
    }

    fn advance_step(&mut self) {
        let next = self.status.current_step_index.unwrap_or(0) + 1;
        self.status.current_step_index = Some(next);
        self.status.step_started_at = Some(self.now_text());
    }

    fn canary_ready_for(&self, weight: u8) -> bool {
        let revision = self.status.canary_revision.clone().unwrap_or_default();
        let wanted = self.canary_pods(weight);
        self.observed
            .canary
            .as_ref()
            .is_some_and(|c| c.is_ready(&revision, wanted))
    }

    /// The canary runs its revision with at least enough ready pods for `weight` (it may be
    /// mid-resize, unlike [`Self::canary_ready_for`], which wants exactly that many).
    fn canary_can_serve(&self, weight: u8) -> bool {
        let revision = self.status.canary_revision.clone().unwrap_or_default();
        let wanted = self.canary_pods(weight);
        self.observed.canary.as_ref().is_some_and(|c| {
            c.revision.as_deref() == Some(revision.as_str()) && c.ready_replicas >= wanted
        })
    }

    fn step_set_weight(&mut self, weight: u8) -> bool {
        if weight < self.status.canary_weight {
            // Less traffic first (the steps started again): the canary shrinks afterwards,
            // on a later reconcile, never while it still has the larger share.
            self.change_weight(weight);
            self.requeue_in(MIN_REQUEUE);
            return false;
        }
        let wanted = self.ensure_canary_at(weight);
        let canary = self.spec.canary_name();
        let active = self.spec.blue_green().map(|b| b.active_service.clone());
        if !self.canary_ready_for(weight) {
            self.status.message = Some(match (&active, weight) {
                (Some(_), 0) => {
                    format!("waiting for {wanted} ready pods of the preview ({canary})")
                }
                (Some(active), _) => format!(
                    "waiting for {wanted} ready pods of {canary} before switching {active} to it"
                ),
                (None, _) => format!(
                    "waiting for {wanted} ready canary pods before sending it {weight}% of the traffic"
                ),
            });
            self.requeue_in(WAIT_RECHECK);
            return false;
        }
        self.change_weight(weight);
        self.status.message = Some(match (&active, weight) {
            (Some(_), 0) => format!("the preview ({canary}) is ready"),
            (Some(active), _) => format!("{active} switched to the new revision ({canary})"),
            (None, _) => format!("canary at {weight}%"),
        });
        true
    }

    /// Adds (or, without matches, removes) a header route to the canary, once the canary is
    /// ready to serve what it routes.
    fn step_set_header_route(&mut self, route: &HeaderRoute) -> bool {
        let weight = self.status.canary_weight;
        if !self.canary_ready_for(weight) {
            self.ensure_canary_at(weight);
            self.status.message = Some(format!(
                "waiting for {} ready canary pods before routing header route {} to it",
                self.canary_pods(weight),
                route.name
            ));
            self.requeue_in(WAIT_RECHECK);
            return false;
        }
        let routes = &mut self.status.header_routes;
        let existing = routes.iter().position(|r| r.name == route.name);
        let message = match (existing, route.matches.is_empty()) {
            (Some(i), true) => {
                routes.remove(i);
                format!("header route {} removed", route.name)
            }
            (None, true) => return true,
            (Some(i), false) => {
                routes[i] = route.clone();
                format!("header route {} changed", route.name)
            }
            (None, false) => {
                routes.push(route.clone());
                format!(
                    "header route {} sends its requests to the canary",
                    route.name
                )
            }
        };
        self.event(EventType::Normal, "HeaderRouteSet", message.clone());
        self.status.message = Some(message);
        self.actions.push(Action::SetHeaderRoutes {
            routes: self.status.header_routes.clone(),
        });
        true
    }

    /// Header routes end with the rollout (promotion, abort, rollback, a newer revision).
    fn remove_header_routes(&mut self) {
        if !self.status.header_routes.is_empty() {
            self.status.header_routes.clear();
            self.actions
                .push(Action::SetHeaderRoutes { routes: Vec::new() });
        }
    }

    /// Moves the canary's traffic to `weight`, with an event when that is a change.
    fn change_weight(&mut self, weight: u8) {
        if self.status.canary_weight != weight {
            let switched = match self.spec.blue_green() {
                Some(b) if weight == 100 => {
                    format!("{} switched to the new revision: ", b.active_service)
                }
                _ => String::new(),
            };
            self.event(
                EventType::Normal,
                "WeightChanged",
                format!(
                    "{switched}canary weight {}% → {weight}%",
                    self.status.canary_weight
                ),
            );
        }
        self.set_weight(weight);
    }

    /// Asks for the canary at its revision with its share of pods for `weight`; the share.
    fn ensure_canary_at(&mut self, weight: u8) -> i32 {
        let revision = self.status.canary_revision.clone().unwrap_or_default();
        let replicas = self.canary_pods(weight);
        if self.observed.canary.as_ref().map(|c| c.replicas) != Some(replicas) {
            self.status.canary_updated_at = Some(self.now_text());
        }
        let in_place = self.observed.canary.as_ref().is_some_and(|c| {
            c.replicas == replicas && c.revision.as_deref() == Some(revision.as_str())
        });
        // Written only when it differs: a write of what is already there would also undo a
        // change made since it was read (a hand scale-up) before any reconcile saw and
        // reported it.
        if !in_place {
            self.actions
                .push(Action::EnsureCanary { revision, replicas });
        }
        replicas
    }

    fn step_pause(&mut self, duration: Option<crate::api::Duration>) -> bool {
        let Some(duration) = duration else {
            self.pause(
                PauseReason::Step,
                "paused by a step: waiting for `canary promote`".into(),
            );
            return false;
        };
        let elapsed = self.since(&self.status.step_started_at).unwrap_or_default();
        let total = analysis_runs::signed(duration.as_std());
        if elapsed >= total {
            return true;
        }
        if self.evidence_ends_pause(elapsed) {
            return true;
        }
        let left = total.saturating_sub(elapsed).unsigned_abs();
        // No countdown: status is rewritten only on news (`pauseEndsAt` says when it ends).
        self.status.message = Some(format!(
            "canary at {}%, holding {duration}",
            self.status.canary_weight
        ));
        self.requeue_in(left);
        false
    }

    /// Evidence-driven progression: a timed pause ends early once every compare metric of the
    /// background analysis says NoRegression with an interval measured in this step, and the
    /// step has lasted `minStepDuration`.
    fn evidence_ends_pause(&mut self, elapsed: SignedDuration) -> bool {
        let Some(background) = &self.spec.analysis else {
            return false;
        };
        let Ok(definitions) = &self.observed.analysis else {
            return false;
        };
        let Some(definitions) = definitions.get(BACKGROUND) else {
            return false;
        };
        let Some(step_started) = analysis_runs::parse(&self.status.step_started_at) else {
            return false;
        };
        let Some(why) =
            analysis_runs::no_regression_shown(&self.status, definitions, BACKGROUND, step_started)
        else {
            return false;
        };
        let minimum = background
            .min_step_duration
            .unwrap_or(crate::api::canary::DEFAULT_MIN_STEP_DURATION);
        let minimum_signed = analysis_runs::signed(minimum.as_std());
        if elapsed < minimum_signed {
            self.requeue_in(minimum_signed.saturating_sub(elapsed).unsigned_abs());
            return false;
        }
        self.event(
            EventType::Normal,
            "AnalysisPassed",
            format!(
                "no regression shown at {}% after {}: stepping up before the pause ends ({why})",
                self.status.canary_weight,
                crate::api::Duration::from(StdDuration::from_secs(
                    elapsed.unsigned_abs().as_secs()
                ))
            ),
        );
        true
    }

    fn step_analysis(&mut self, index: usize) -> bool {
        let name = step_run(index);
        match self.ensure_run(&name) {
            None => false,
            Some(AnalysisPhase::Successful) => {
                self.event(
                    EventType::Normal,
                    "AnalysisPassed",
                    format!("analysis {name} passed"),
                );
                true
            }
            Some(phase) => self.handle_run_outcome(&name, phase),
        }
    }

    /// Starts the background analysis when its step is reached; false if it stopped the walk.
    fn background_analysis_ok(&mut self, index: usize) -> bool {
        let Some(background) = &self.spec.analysis else {
            return true;
        };
        // Before its starting step, unless a run exists already (the steps started again).
        // Its clock starts when the canary first has traffic, not when the rollout starts: the
        // first measurement must not depend on how fast the canary's pods became ready.
        let before_start = (index as u32) < background.starting_step.unwrap_or(0)
            || (self.status.canary_weight == 0 && index < self.spec.rollout_steps().len());
        if before_start && !self.run_exists(BACKGROUND) {
            return true;
        }
        match self.ensure_run(BACKGROUND) {
            None => false,
            Some(AnalysisPhase::Successful) => true,
            Some(phase) => self.handle_run_outcome(BACKGROUND, phase),
        }
    }

    /// At the end of the steps: the background analysis must have passed as a whole, not
    /// merely not failed yet (a run that never measured anything usable does not promote).
    fn background_analysis_concluded(&mut self) -> bool {
        if self.spec.analysis.is_none() {
            return true;
        }
        let Some(definitions) = self.definitions_of(BACKGROUND) else {
            return false;
        };
        // A pass measured at the final weight: passes at earlier weights followed by errors
        // (Prometheus gone as the last step began) prove nothing about this one.
        let since = analysis_runs::parse(&self.status.weight_changed_at);
        if let Some(metric) =
            analysis_runs::awaiting_a_pass(&self.status, BACKGROUND, &definitions, since)
        {
            // Bounded: every measurement that is not a pass counts towards one of the
            // metric's limits, which end the run.
            self.status.message = Some(format!(
                "every step passed; promotion waits for a passing measurement of {metric} by the background analysis at the final weight ({}%)",
                self.status.canary_weight
            ));
            return false;
        }
        match analysis_runs::conclude(&mut self.status, BACKGROUND, &definitions) {
            // Its starting step was never reached: nothing to conclude.
            None | Some(AnalysisPhase::Successful) => true,
            Some(phase) => self.handle_run_outcome(BACKGROUND, phase),
        }
    }

    /// The metrics of run `name`; None (and the spec reported invalid) when its templates
    /// could not be resolved.
    fn definitions_of(&mut self, name: &str) -> Option<Vec<MetricDefinition>> {
        match &self.observed.analysis {
            Ok(definitions) => Some(definitions.get(name).cloned().unwrap_or_default()),
            Err(problem) => {
                let problem = problem.clone();
                self.invalid_analysis(problem);
                None
            }
        }
    }

    /// Creates the run if needed; returns its phase, or None when its definitions are missing.
    fn ensure_run(&mut self, name: &str) -> Option<AnalysisPhase> {
        let definitions = self.definitions_of(name)?;
        let phase = analysis_runs::ensure(
            &mut self.status,
            name,
            &definitions,
            self.now,
            &self.observed.canary_uid,
        );
        if let Some(next) = analysis_runs::next_due(&self.status, self.now) {
            self.requeue_in(next);
        }
        Some(phase)
    }

    /// Running: keep walking? Failed/Error: onAnalysisFailure. Inconclusive: pause.
    fn handle_run_outcome(&mut self, name: &str, phase: AnalysisPhase) -> bool {
        let summary = analysis_runs::summary(&self.status, name);
        match phase {
            AnalysisPhase::Running | AnalysisPhase::Pending => {
                if name != BACKGROUND {
                    self.status.message = Some(format!(
                        "canary at {}%: analysis {name} running ({summary})",
                        self.status.canary_weight
                    ));
                }
                name == BACKGROUND
            }
            AnalysisPhase::Failed => {
                let message = format!("analysis {name} {phase:?}: {summary}");
                self.event(EventType::Warning, "AnalysisFailed", message.clone());
                match self.spec.on_analysis_failure.unwrap_or_default() {
                    OnAnalysisFailure::Rollback => {
                        self.begin_rollback(RollbackReason::AnalysisFailed, message)
                    }
                    OnAnalysisFailure::Pause => self.pause(PauseReason::AnalysisFailed, message),
                }
                false
            }
            // Errors are no evidence against the canary, but it is never promoted without
            // data: the same policy acts, under a reason that says the metrics were missing.
            AnalysisPhase::Error => {
                let message = format!(
                    "analysis {name} could not measure the canary: {}; not promoted without data",
                    analysis_runs::errors(&self.status, name)
                );
                self.event(EventType::Warning, "MetricsUnavailable", message.clone());
                match self.spec.on_analysis_failure.unwrap_or_default() {
                    OnAnalysisFailure::Rollback => {
                        self.begin_rollback(RollbackReason::MetricsUnavailable, message)
                    }
                    OnAnalysisFailure::Pause => self.pause(PauseReason::AnalysisFailed, message),
                }
                false
            }
            AnalysisPhase::Inconclusive => {
                let message = format!(
                    "analysis {name} inconclusive: {summary}; a human decides (promote, resume or abort)"
                );
                self.pause(PauseReason::AnalysisInconclusive, message);
                false
            }
            AnalysisPhase::Successful => true,
        }
    }

    fn pause(&mut self, reason: PauseReason, message: String) {
        if self.status.phase != Phase::Paused || self.status.pause_reason != Some(reason) {
            self.event(EventType::Normal, "Paused", message.clone());
        }
        self.status.phase = Phase::Paused;
        self.status.pause_reason = Some(reason);
        self.status.step_started_at = Some(self.now_text());
        self.status.message = Some(message);
        self.set_condition("Progressing", true, "Paused", &format!("{reason:?}"));
    }

    fn hold_paused(&mut self) {
        // The canary keeps its weight and its share of the service's pods.
        self.ensure_canary_at(self.status.canary_weight);
        self.set_weight(self.status.canary_weight);
    }

    /// Sizes the canary for its current weight when it is not (the service was scaled).
    fn keep_canary_sized(&mut self) {
        let revision = self.status.canary_revision.clone().unwrap_or_default();
        let replicas = self.canary_pods(self.status.canary_weight);
        let sized = self.observed.canary.as_ref().is_some_and(|c| {
            c.replicas == replicas && c.revision.as_deref() == Some(revision.as_str())
        });
        if !sized {
            // A new template counts as a change even at the same size.
            self.status.canary_updated_at = Some(self.now_text());
            self.ensure_canary_at(self.status.canary_weight);
        }
    }

    /// The canary has not been ready for its weight (or the one its step is moving to) for
    /// longer than the progress deadline, counted from when it was first seen unready or last
    /// changed, whichever is later. Paused or not: its traffic would fail meanwhile.
    fn deadline_exceeded(&mut self) -> bool {
        let weight = self.status.canary_weight;
        if self.canary_ready_for(weight) || self.canary_ready_for(self.pending_weight()) {
            self.status.canary_unready_since = None;
            return false;
        }
        if self.status.canary_unready_since.is_none() {
            self.status.canary_unready_since = Some(self.now_text());
        }
        let deadline = analysis_runs::signed(self.spec.progress_deadline().as_std());
        let waited = [
            self.since(&self.status.canary_unready_since),
            self.since(&self.status.canary_updated_at),
        ]
        .into_iter()
        .flatten()
        .min();
        // Passed once reached: the wait below is then never zero.
        if waited.is_some_and(|waited| waited >= deadline) {
            return true;
        }
        // Look again when the deadline passes (sooner if something else is due), paused or not.
        let left = deadline.saturating_sub(waited.unwrap_or_default());
        self.requeue_in(left.unsigned_abs().min(WAIT_RECHECK));
        false
    }

    /// The weight the current step is working towards, if it is a setWeight step.
    fn pending_weight(&self) -> u8 {
        let index = self.status.current_step_index.unwrap_or(0) as usize;
        match self.spec.rollout_steps().get(index) {
            Some(RolloutStep::SetWeight(w)) => *w,
            _ => self.status.canary_weight,
        }
    }

    fn promote(&mut self, request: Option<RequestAction>) {
        if let Some(action) = request {
            match action {
                RequestAction::Abort => {
                    self.answer_request(
                        true,
                        "rolling back; stable returns to its revision".into(),
                    );
                    return self.begin_rollback(
                        RollbackReason::Aborted,
                        "aborted during promotion: stable returns to its previous revision".into(),
                    );
                }
                other => self.refuse(other, "the rollout is being promoted"),
            }
        }
        analysis_runs::stop_measuring(&mut self.status, "the canary was promoted");
        self.status.withdrawn_weight = None;
        self.remove_header_routes();
        let revision = self.status.canary_revision.clone().unwrap_or_default();
        let desired = self.desired();
        if !self.ensure_stable(&revision) {
            if self
                .observed
                .stable
                .as_ref()
                .is_some_and(|s| s.stalled && s.revision.as_deref() == Some(revision.as_str()))
            {
                return self.begin_rollback(
                    RollbackReason::ProgressDeadlineExceeded,
                    format!(
                        "promoting {revision}: {} made no progress running it within its progress deadline; stable returns to its previous revision",
                        self.spec.stable_name()
                    ),
                );
            }
            // The canary keeps serving its share until stable runs the new revision, unless it
            // has no ready pod to serve it with.
            if self.canary_ready_pods() == 0 {
                self.set_weight(0);
            } else {
                self.hold_paused();
            }
            self.status.message = Some(format!(
                "promoting {revision}: waiting for {} to run it with {desired} ready pods",
                self.spec.stable_name()
            ));
            self.requeue_in(WAIT_RECHECK);
            return;
        }
        self.set_weight(0);
        self.scale_canary_down_later();
        let message = format!(
            "promoted {revision} ({})",
            self.status.canary_images.clone().unwrap_or_default()
        );
        self.event(EventType::Normal, "Promoted", message.clone());
        self.status.stable_revision = Some(revision);
        self.status.canary_revision = None;
        self.status.current_step_index = None;
        self.status.step_display = None;
        self.status.phase = Phase::Promoted;
        self.status.message = Some(message.clone());
        self.set_condition("Progressing", false, "Promoted", &message);
        self.set_condition("Promoted", true, "Promoted", &message);
    }

    fn begin_rollback(&mut self, reason: RollbackReason, message: String) {
        let event_reason = match reason {
            RollbackReason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            RollbackReason::Aborted => "Aborted",
            RollbackReason::AnalysisFailed
            | RollbackReason::TargetReverted
            | RollbackReason::MetricsUnavailable => "RollingBack",
        };
        self.event(EventType::Warning, event_reason, message.clone());
        analysis_runs::stop_measuring(&mut self.status, "the canary was rolled back");
        self.status.withdrawn_weight = None;
        self.remove_header_routes();
        self.status.phase = Phase::RollingBack;
        self.status.rollback_reason = Some(reason);
        self.status.pause_reason = None;
        self.status.step_started_at = Some(self.now_text());
        self.status.message = Some(message);
        self.set_condition("Progressing", true, "RollingBack", &format!("{reason:?}"));
        self.roll_back();
    }

    fn roll_back(&mut self) {
        // Traffic first, then the canary's pods, then stable's revision (after an abort during
        // promotion stable may be part-way to the canary's revision).
        self.set_weight(0);
        if self.observed.router.granularity == Granularity::Replicas {
            // Split by replicas, the canary's pods are its traffic: they go at once (the pods'
            // own termination drains what they are serving).
            let now = self.now_text();
            self.status.canary_scale_down_at.get_or_insert(now);
        }
        self.scale_canary_down_later();
        let stable = self.status.stable_revision.clone().unwrap_or_default();
        if !self.ensure_stable(&stable) {
            self.requeue_in(WAIT_RECHECK);
            return;
        }
        let failed = self.status.canary_revision.take();
        let reason = self
            .status
            .rollback_reason
            .unwrap_or(RollbackReason::Aborted);
        let failed_name = failed.as_deref().unwrap_or("the canary");
        let message = match reason {
            // The cause (which metrics source, what error) stays in view: it is not the
            // canary's fault, and it is what to fix before `canary retry`.
            RollbackReason::MetricsUnavailable => format!(
                "rolled back {failed_name} ({reason:?}: {}); stable {stable} serves all traffic",
                self.status
                    .message
                    .as_deref()
                    .unwrap_or("the analysis could not measure")
            ),
            _ => format!(
                "rolled back {failed_name} ({reason:?}); stable {stable} serves all traffic"
            ),
        };
        self.event(EventType::Warning, "RolledBack", message.clone());
        self.status.failed_revision = failed;
        self.status.current_step_index = None;
        self.status.step_display = None;
        self.status.phase = Phase::RolledBack;
        self.status.message = Some(message.clone());
        self.set_condition("Progressing", false, "RolledBack", &message);
        self.set_condition("Promoted", false, &format!("{reason:?}"), &message);
    }

    /// The canary lost its traffic: its pods go once the scale-down delay has passed (proxies
    /// may still hold the previous routes for a moment), at once without a delay.
    fn scale_canary_down_later(&mut self) {
        let due = later(self.now, self.spec.scale_down_delay().as_std()).to_string();
        self.status.canary_scale_down_at.get_or_insert(due);
        self.scale_canary_down_when_due();
    }

    /// Once due, the canary is scaled to zero whenever it still has pods (the time stays in
    /// status until a new rollout, so planning again on the same facts changes nothing).
    fn scale_canary_down_when_due(&mut self) {
        let Some(left) = self
            .since(&self.status.canary_scale_down_at)
            .map(|elapsed| -elapsed)
        else {
            return;
        };
        if left.is_positive() {
            self.requeue_in(left.unsigned_abs());
            return;
        }
        if self.observed.canary.as_ref().is_none_or(|c| c.replicas > 0) {
            self.actions.push(Action::ScaleCanary { replicas: 0 });
        }
    }

    fn set_weight(&mut self, weight: u8) {
        if self.status.canary_weight != weight {
            self.status.weight_changed_at = Some(self.now_text());
        }
        self.status.canary_weight = weight;
        self.actions.push(Action::SetWeight { weight });
    }

    /// The weight in effect: the routing's, or, split by replicas, the canary's share of the
    /// ready pods.
    fn effective_weight(&self) -> Option<u8> {
        match self.observed.router.granularity {
            // As read (a weight this plan sets shows at the next reconcile, which its status
            // write brings); unreadable now: as last observed.
            Granularity::Exact | Granularity::Switch => {
                self.observed.route_weight.or(self.status.effective_weight)
            }
            Granularity::Replicas => {
                let ready = |w: &Option<WorkloadState>| w.as_ref().map_or(0, |w| w.ready_replicas);
                let canary = if self.status.canary_revision.is_some() {
                    ready(&self.observed.canary)
                } else {
                    // After promotion the canary's pods (if any are left) run stable's revision.
                    0
                };
                pod_share(canary, ready(&self.observed.stable))
            }
        }
    }

    /// When the timed pause step under way ends, if the rollout is at one and its clock runs
    /// (not paused or suspended, not without traffic).
    fn pause_ends_at(&self) -> Option<String> {
        if self.status.phase != Phase::Progressing
            || self.spec.suspend
            || self.status.withdrawn_weight.is_some()
        {
            return None;
        }
        let index = self.status.current_step_index? as usize;
        let Some(RolloutStep::Pause(Some(duration))) =
            self.spec.rollout_steps().get(index).cloned()
        else {
            return None;
        };
        let started = analysis_runs::parse(&self.status.step_started_at)?;
        Some(later(started, duration.as_std()).to_string())
    }

    /// Sets a condition, keeping its transition time when its status did not change.
    fn set_condition(&mut self, kind: &str, status: bool, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            (kind, status, reason, message),
            self.now,
            self.observed.generation,
        );
    }

    fn finish(mut self) -> Plan {
        self.status.effective_weight = self.effective_weight();
        // Derived here, once, so every path writes them the same way.
        self.status.step_display = self
            .status
            .current_step_index
            .map(|index| self.step_text_of(index));
        self.status.revision = self
            .status
            .canary_revision
            .clone()
            .or_else(|| self.status.stable_revision.clone());
        self.status.pause_ends_at = self.pause_ends_at();
        Plan {
            actions: order_actions(self.actions),
            status: self.status,
            events: self.events,
            requeue_after: self.requeue,
        }
    }
}

/// Sets the condition `(kind, status, reason, message)` in `conditions`, keeping its
/// transition time when its status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    (kind, status, reason, message): (&str, bool, &str, &str),
    now: Timestamp,
    generation: Option<i64>,
) {
    let status_text = if status { "True" } else { "False" };
    let reason = reason_token(reason);
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(c) if c.status == status_text && c.reason == reason && c.message == message => {}
        Some(c) => {
            if c.status != status_text {
                c.last_transition_time = Time(now);
            }
            c.status = status_text.into();
            c.reason = reason;
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: kind.into(),
            status: status_text.into(),
            reason,
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: generation,
        }),
    }
}

/// Condition reasons are CamelCase tokens.
fn reason_token(text: &str) -> String {
    text.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// The event of an answered request: `<Action>Requested` (Normal) naming the request's id
/// when it was acted on, `RequestRefused` (Warning) with the reason when it was not.
fn request_event(answer: &RequestStatus) -> Event {
    let id = &answer.id;
    if !answer.accepted {
        return Event {
            kind: EventType::Warning,
            reason: "RequestRefused",
            message: format!("request {id} refused: {}", answer.message),
        };
    }
    let reason = match answer.action {
        RequestAction::Promote => "PromoteRequested",
        RequestAction::PromoteFull => "PromoteFullRequested",
        RequestAction::Pause => "PauseRequested",
        RequestAction::Resume => "ResumeRequested",
        RequestAction::Abort => "AbortRequested",
        RequestAction::Retry => "RetryRequested",
    };
    Event {
        kind: EventType::Normal,
        reason,
        message: format!(
            "{} request {id} accepted: {}",
            answer.action.as_str(),
            answer.message
        ),
    }
}

/// Puts the actions in a safe order, one per kind (the last one decided wins): a weight that
/// takes all traffic off the canary goes before anything that scales or replaces canary pods; any
/// other weight goes after the canary was ensured, so traffic only reaches pods that exist.
fn order_actions(actions: Vec<Action>) -> Vec<Action> {
    let kind = |a: &Action| std::mem::discriminant(a);
    let mut last: Vec<Action> = Vec::new();
    for action in actions {
        last.retain(|a| kind(a) != kind(&action));
        last.push(action);
    }
    let (weights, mut rest): (Vec<Action>, Vec<Action>) = last
        .into_iter()
        .partition(|a| matches!(a, Action::SetWeight { .. }));
    match weights.first() {
        Some(Action::SetWeight { weight: 0 }) => {
            let mut ordered = weights;
            ordered.append(&mut rest);
            ordered
        }
        _ => {
            rest.extend(weights);
            rest
        }
    }
}

#[cfg(test)]
mod autoscaling_tests;
#[cfg(test)]
mod blue_green_tests;
#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod tests;

/// A stable fingerprint of the expanded steps (64-bit FNV-1a of their JSON), kept in status.
fn steps_fingerprint(steps: &[RolloutStep]) -> String {
    let text = serde_json::to_string(steps).unwrap_or_default();
    format!("{:016x}", crate::workload::fnv1a64(text.as_bytes()))
}
