//! One reconcile of one Canary: observe → [`rollout::plan`] → apply → status.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::cache::{self, NotCached};
use super::liveness::RECONCILE_TIMEOUT;
use super::measurements::{Finished, MeasurementKey};
use super::unchanged;
use super::{Context, Error, ReadingsKey};
use crate::analysis::condition::{self, EVALUATION_TIMEOUT};
use crate::analysis::run::{self, PreparedMetric, SecretValues};
use crate::api::analysis_template::{AnalysisTemplateSpec, ClusterAnalysisTemplate, SecretKeyRef};
use crate::api::canary::{
    AnalysisArg, Canary, CanaryStatus, MeasurementStatus, RequestAction, RolloutStep, TemplateRef,
};
use crate::metrics::MetricsSource;
use crate::rollout::{
    self, Action, EventType, MetricDefinition, NewMeasurement, Observed, compare_window_start,
    due_measurements,
};
use crate::routing::ownership::{self, Claimant};
use crate::routing::{self, RouterWrite, RoutingObject, Snapshot, TrafficRouter};
use crate::workload::{self, Subset, autoscaler};

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "canary-controller";
/// Without timers, look at every Canary at least this often ...
const RESYNC: Duration = Duration::from_secs(300);
/// ... less up to this much, by Canary: Canaries started together (a controller restart)
/// would otherwise re-sync together, every 5 minutes, in one burst of requests.
const RESYNC_SPREAD: Duration = Duration::from_secs(60);

/// When to look at the Canary of `uid` again without a timer: [`RESYNC`] less a share of
/// [`RESYNC_SPREAD`] fixed by its uid.
fn resync_of(uid: &str) -> Duration {
    let spread = RESYNC_SPREAD.as_millis() as u64;
    RESYNC - Duration::from_millis(crate::workload::fnv1a64(uid.as_bytes()) % spread)
}

/// How soon to look again at a Canary whose cached copy predates our own status write.
const STALE_COPY_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs one reconcile of `canary`, abandoning it after [`RECONCILE_TIMEOUT`] (it is retried
/// like a failed one; status holds everything needed to continue), and tells the liveness
/// check when it started and when the Canary is due again.
async fn bounded(
    canary: &Canary,
    ctx: &Context,
    reconcile: impl Future<Output = Result<Option<Duration>, Error>>,
) -> Result<Requeue, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let running = ctx.liveness.started(&namespace, &name, Instant::now());
    let outcome = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile)
        .await
        .unwrap_or_else(|_| {
            Err(Error::TimedOut(format!(
                "the reconcile of Canary {namespace}/{name} took longer than {}s and was abandoned; retrying (is the API server slow?)",
                RECONCILE_TIMEOUT.as_secs()
            )))
        });
    // A failed reconcile is retried shortly.
    let next = outcome.as_ref().map_or(Some(Duration::ZERO), |next| *next);
    running.finished(next, Instant::now());
    outcome.map(|next| next.map_or_else(Requeue::await_change, Requeue::requeue))
}

/// Reconciles a Canary that is not being deleted.
pub async fn apply(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // Boxed: a reconcile's future is large (the objects it holds across awaits), and moved
    // by value it would overflow a worker thread's stack.
    bounded(&canary, &ctx, Box::pin(apply_unbounded(&canary, &ctx))).await
}

/// [`apply`]; returns when to look again.
async fn apply_unbounded(canary: &Canary, ctx: &Context) -> Result<Option<Duration>, Error> {
    let started = std::time::Instant::now();
    let namespace = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let status = canary.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    if ctx.status_writes.is_stale(&namespace, &name, &status) {
        // Our last status write is not in the watch cache yet; its event brings it shortly.
        debug!(
            namespace,
            canary = name,
            "the cached copy predates our status write"
        );
        return Ok(Some(STALE_COPY_RECHECK));
    }
    if let Some(object) = caches_lag(canary, ctx) {
        // Planning from a cache without our last write would do it again (or report the
        // weight we set as drift); its watch event brings it shortly.
        debug!(
            namespace,
            canary = name,
            object,
            "the cache does not show our write yet"
        );
        return Ok(Some(STALE_COPY_RECHECK));
    }

    let claimant = Claimant::of(canary);
    let conflicts = ownership::conflicts(&claimant, &namespace_peers(canary, ctx));
    if !conflicts.is_empty() {
        return refuse_shared(canary, &status, &claimant, &conflicts, now, ctx).await;
    }

    let (observed, mut read) = Box::pin(observe(canary, &status, ctx, now)).await?;
    let plan = rollout::plan(&canary.spec, &status, &observed, now);
    // Every reconcile: debug. The decisions among them are logged with their events.
    debug!(
        namespace, canary = name, phase = plan.status.phase.as_str(),
        weight = plan.status.canary_weight, actions = ?plan.actions,
        events = ?plan.events.iter().map(|e| e.reason).collect::<Vec<_>>(), "planned"
    );

    // The managed Deployments are built from the target as observe read it, and weights are
    // patched over the routing objects it read (the patches' test operations refuse them if
    // they changed since).
    for action in &plan.actions {
        if let Err(error) = Box::pin(apply_action(canary, &mut read, action, ctx)).await {
            if let Error::Invalid(problem) = &error {
                report_unappliable(canary, &status, problem, now, ctx).await;
            }
            return Err(error);
        }
    }
    let mut planned = plan.status.clone();
    // Owned now (said so before acting next time: a Canary that claimed first keeps what it
    // owns even against an older one).
    planned.claimed_objects = claimant.wants.iter().cloned().collect();
    // Every action applied: a problem reported by `report_unappliable` (or a conflict over
    // what this Canary owns) is over.
    if planned
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && (c.reason == CANNOT_APPLY || c.reason == ROUTING_CONFLICT))
    {
        rollout::set_condition(
            &mut planned.conditions,
            ("Ready", true, "Ready", "the spec is valid"),
            now,
            canary.metadata.generation,
        );
    }
    let mut stored_status = status.clone();
    if planned != status {
        let stored = write_status(canary, &planned, ctx).await?;
        stored_status = stored.clone();
        if stored == status {
            // The API server kept nothing of the change (an installed CRD older than the
            // controller prunes new fields): waiting for the cache to show it would be waiting
            // for nothing.
            warn!(
                namespace,
                canary = name,
                "the status write changed nothing: are the installed CRDs older than the controller?"
            );
        } else {
            ctx.status_writes.written_over(&namespace, &name, status);
        }
    }
    remove_answered_requests(canary, &stored_status, ctx).await;
    for event in &plan.events {
        publish(&ctx.recorder, canary, &plan.status, event).await;
    }
    for measured in &observed.measurements {
        if let Some(phase) = rollout::recorded_phase(&plan.status, measured) {
            ctx.metrics
                .measurement(&namespace, &name, &measured.metric, phase);
        }
    }
    ctx.metrics
        .observe(&namespace, &name, &plan.status, started.elapsed());
    ctx.metrics
        .measurements_in_flight(ctx.measurements.in_flight());
    let resync = resync_of(canary.metadata.uid.as_deref().unwrap_or_default());
    Ok(Some(plan.requeue_after.unwrap_or(resync).min(resync)))
}

/// The Ready reason of an action that cannot be applied.
const CANNOT_APPLY: &str = "CannotApply";

/// The Ready reason of a Canary that names what another Canary owns.
const ROUTING_CONFLICT: &str = "RoutingConflict";

/// The Canaries of `canary`'s namespace, as the cache holds them ([`ownership::conflicts`]
/// leaves the Canary itself out).
fn namespace_peers(canary: &Canary, ctx: &Context) -> Vec<Claimant> {
    let namespace = canary.namespace();
    ctx.canaries
        .state()
        .iter()
        .filter(|c| c.namespace() == namespace)
        .map(|c| Claimant::of(c))
        .collect()
}

/// A Canary that names objects another Canary owns: nothing is changed (no weight, no
/// subset, no Deployment), and why is said in status (`Ready=False`, reason
/// `RoutingConflict`) and by a Warning event, once per problem. It looks again shortly: the
/// owner may be deleted or point elsewhere (no watch event of this Canary says so).
async fn refuse_shared(
    canary: &Canary,
    status: &CanaryStatus,
    claimant: &Claimant,
    conflicts: &[ownership::Conflict],
    now: Timestamp,
    ctx: &Context,
) -> Result<Option<Duration>, Error> {
    let problem = ownership::refusal(&claimant.name, conflicts);
    let mut released = status.clone();
    released.claimed_objects = ownership::kept_when_refused(claimant, conflicts);
    report_problem(
        canary,
        status,
        released,
        (ROUTING_CONFLICT, &problem),
        now,
        ctx,
    )
    .await;
    let soon = if conflicts.iter().any(|c| c.owner_deleting) {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    Ok(Some(soon))
}

/// An action that cannot be applied as the spec stands (a routing object that cannot carry
/// the split, a missing template): said in status (`Ready=False`, reason `CannotApply`) and
/// by a Warning event, once per problem. The status is the one read, nothing else in it
/// changed: the plan's own status would claim what was not done. Retried like any failure.
async fn report_unappliable(
    canary: &Canary,
    status: &CanaryStatus,
    problem: &str,
    now: Timestamp,
    ctx: &Context,
) {
    report_problem(
        canary,
        status,
        status.clone(),
        (CANNOT_APPLY, problem),
        now,
        ctx,
    )
    .await
}

/// Says `problem` in status (`Ready=False` with `reason`, and the message; over `base`, the
/// stored `status` with what else must change) and by a Warning event, unless the Ready
/// condition says it already.
async fn report_problem(
    canary: &Canary,
    status: &CanaryStatus,
    base: CanaryStatus,
    (reason, problem): (&'static str, &str),
    now: Timestamp,
    ctx: &Context,
) {
    let reported_before = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.reason == reason && c.message == problem);
    let mut reported = base;
    if !reported_before {
        reported.message = Some(problem.to_string());
        rollout::set_condition(
            &mut reported.conditions,
            ("Ready", false, reason, problem),
            now,
            canary.metadata.generation,
        );
    }
    if reported != *status {
        let namespace = canary.namespace().unwrap_or_default();
        let name = canary.name_any();
        match write_status(canary, &reported, ctx).await {
            Ok(_) => ctx
                .status_writes
                .written_over(&namespace, &name, status.clone()),
            Err(e) => {
                warn!(namespace, canary = name, error = %e, "could not report a problem in status")
            }
        }
    }
    if !reported_before {
        let event = rollout::Event {
            kind: EventType::Warning,
            reason,
            message: problem.to_string(),
        };
        publish(&ctx.recorder, canary, status, &event).await;
    }
}

/// Reconciles a Canary being deleted, handing the service back to the user's Deployment
/// without a moment without endpoints: all traffic to stable; the target gets its replicas
/// back; once they are ready the router hands its objects back (e.g. both DestinationRule
/// subsets select the target's pods); only then is the finalizer removed and the managed
/// Deployments garbage-collected.
pub async fn cleanup(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    bounded(&canary, &ctx, Box::pin(cleanup_unbounded(&canary, &ctx))).await
}

/// [`cleanup`]; `None` once done (nothing more to look at).
async fn cleanup_unbounded(canary: &Canary, ctx: &Context) -> Result<Option<Duration>, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    // First, so that no measurement finishing meanwhile triggers one more reconcile, which
    // could come after the finalizer is gone and act on a stale copy.
    ctx.measurements.forget(&namespace, &canary.name_any());
    if let Some(object) = caches_lag(canary, ctx) {
        return Err(Error::Waiting(format!(
            "waiting for the cache to show the write of {object}"
        )));
    }
    // What another Canary owns is its to hand back, not this one's: a copy deleted must not
    // reset the original's weights or point its subsets at the copy's pods.
    let foreign: BTreeSet<String> =
        ownership::conflicts(&Claimant::of(canary), &namespace_peers(canary, ctx))
            .into_iter()
            .map(|c| c.object)
            .collect();
    let ours = |writes: Vec<RouterWrite>| -> Vec<RouterWrite> {
        writes
            .into_iter()
            .filter(|w| {
                !foreign.contains(&ownership::object_key(&w.object().kind, &w.object().name))
            })
            .collect()
    };
    let router = routing::router_for(&canary.spec);
    // Read once: the weights' reset leaves the objects as the release below needs them.
    let mut read = read_routing(ctx, &namespace, router.as_ref()).await?;
    let reset = match router.set_weight(&read, 0) {
        Ok(writes) => apply_writes(canary, ctx, &namespace, ours(writes), &mut read).await,
        Err(e) => Err(Error::Invalid(e.to_string())),
    };
    if let Err(e) = reset {
        warn!(namespace, canary = canary.name_any(), error = %e, "could not reset the weights on deletion");
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let desired = canary
        .status
        .as_ref()
        .and_then(|s| s.desired_replicas)
        .unwrap_or(1);
    let target = if foreign.contains(&ownership::object_key(
        "Deployment",
        &canary.spec.target_ref.name,
    )) {
        None
    } else {
        ctx.caches
            .deployment(&namespace, &canary.spec.target_ref.name)
    };
    if let Some(target) = target {
        if target.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
            let written = deployments
                .patch(
                    &canary.spec.target_ref.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": desired}})),
                )
                .await?;
            wrote(ctx, canary, "Deployment", Some(&target), Some(&written));
            return Err(Error::Waiting(format!(
                "waiting for Deployment {} to have {desired} available pods before letting go",
                canary.spec.target_ref.name
            )));
        }
        // Ready means the Deployment controller has seen the current spec and its pods of that
        // spec are available: a status read before the scale-up (or before the scale-down to 0
        // was processed) can still show the old pods as available.
        let state = workload::workload_state(&target);
        if !(state.settled && state.ready_replicas >= state.replicas.max(1)) {
            return Err(Error::Waiting(format!(
                "waiting for Deployment {} to have {desired} available pods before letting go",
                canary.spec.target_ref.name
            )));
        }
        let labels = target
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        let writes = router
            .release(&read, &labels)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        apply_writes(canary, ctx, &namespace, ours(writes), &mut read).await?;
    }
    ctx.metrics.forget(&namespace, &canary.name_any());
    ctx.readings.forget(&namespace, &canary.name_any());
    ctx.status_writes.forget(&namespace, &canary.name_any());
    ctx.pending_writes.forget(&namespace, &canary.name_any());
    ctx.prepared.forget(&namespace, &canary.name_any());
    ctx.liveness.forget(&namespace, &canary.name_any());
    Ok(None)
}

/// Remembers that this reconcile of `canary` wrote `kind` (`before` as cached, `after` as the
/// API server answered; `None`: absent), so that the next reconcile waits for the cache to
/// show it.
fn wrote<K: Resource>(
    ctx: &Context,
    canary: &Canary,
    kind: &str,
    before: Option<&K>,
    after: Option<&K>,
) {
    let Some(name) = after.or(before).and_then(|o| o.meta().name.clone()) else {
        return;
    };
    ctx.pending_writes.wrote(
        (&canary.namespace().unwrap_or_default(), &canary.name_any()),
        (kind, &name),
        before.and_then(cache::resource_version),
        after.and_then(cache::resource_version),
    );
}

/// The first object this Canary wrote that its cache does not show yet, as `Kind name`.
fn caches_lag(canary: &Canary, ctx: &Context) -> Option<String> {
    let namespace = canary.namespace().unwrap_or_default();
    let router_objects = routing::router_for(&canary.spec).objects();
    ctx.pending_writes
        .lagging((&namespace, &canary.name_any()), |kind, name| {
            ctx.caches
                .version_of(&namespace, (kind, name), &router_objects)
        })
}

/// Objects observe read that applying the plan needs again.
struct Read {
    /// The target Deployment.
    target: Option<Deployment>,
    /// `<target>-stable`, if it exists.
    stable: Option<Deployment>,
    /// `<target>-canary`, if it exists.
    canary: Option<Deployment>,
    /// The user's HPA of the target, if one is found and usable.
    user_autoscaler: Option<HorizontalPodAutoscaler>,
    /// The router the spec chose, and its objects.
    router: Box<dyn TrafficRouter>,
    routing: Snapshot,
}

async fn observe(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    now: Timestamp,
) -> Result<(Observed, Read), Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let target_deployment = ctx
        .caches
        .deployment(&namespace, &canary.spec.target_ref.name);
    let mut target = target_deployment.as_ref().map(workload::target_state);
    let stable = ctx
        .caches
        .deployment(&namespace, &canary.spec.stable_name());
    let canary_deployment = ctx
        .caches
        .deployment(&namespace, &canary.spec.canary_name());
    // Deployments of our names that some other owner made are never taken over (applying
    // over them would replace their pods, and deleting the Canary would delete them).
    for deployment in [&stable, &canary_deployment].into_iter().flatten() {
        if !owned_by(canary, deployment) {
            target = Some(Err(format!(
                "Deployment {} already exists and does not belong to Canary {} (no owner reference to it); the Canary would take it over: rename or delete that Deployment, or point spec.targetRef at another one",
                deployment.name_any(),
                canary.name_any()
            )));
        }
    }
    let (autoscaler, derived_autoscaler, user_autoscaler) = observe_autoscalers(canary, ctx);
    let stable_deployment = stable.clone();
    let stable = stable.map(|d| workload::workload_state(&d));
    let canary_workload = canary_deployment.as_ref().map(workload::workload_state);
    let requests = crate::api::canary::requests(canary.annotations());

    // Templates are fetched and prepared only when the plan can use them, or a measurement
    // is due (a settled Canary with its target on stable's revision needs neither).
    let target_revision = target
        .as_ref()
        .and_then(|t| t.as_ref().ok())
        .map(|t| t.revision.as_str());
    // An abort (or full promotion) waiting to be acted on goes first: it waits neither for
    // the templates to be readable nor for new measurements, whose outcome would not change
    // what the request does.
    let urgent = matches!(
        status.phase,
        crate::api::canary::Phase::Progressing | crate::api::canary::Phase::Paused
    ) && requests.iter().flatten().any(|r| {
        matches!(r.action, RequestAction::Abort | RequestAction::PromoteFull)
            && !r.answered_in(Some(status))
    });
    let due = due_measurements(status, now);
    let needed = rollout::needs_analysis(status, target_revision) || !due.is_empty();
    let (analysis, prepared) = if needed {
        match resolve_analysis(canary, ctx).await {
            Ok(Ok((definitions, prepared))) => (Ok(definitions), prepared),
            Ok(Err(problem)) => (Err(problem), BTreeMap::new()),
            // An abort must not wait for the API to serve templates again.
            Err(e) if urgent => (
                Err(format!("the analysis templates could not be read: {e}")),
                BTreeMap::new(),
            ),
            Err(e) => return Err(e),
        }
    } else {
        // Nothing to measure, but a missing or broken template is said now, not when the next
        // revision arrives; templates that cannot be read just now are no reason to fail a
        // reconcile that does not use them.
        let checked = match resolve_analysis(canary, ctx).await {
            Ok(Err(problem)) => Err(problem),
            Ok(Ok(_)) | Err(_) => Ok(BTreeMap::new()),
        };
        (checked, BTreeMap::new())
    };
    let measurements = if urgent {
        // Nothing new is started for a rollout about to end; what is in flight is cancelled
        // by the next reconcile, once its run is over.
        Vec::new()
    } else {
        measurements_due(canary, status, ctx, now, due, &prepared)
    };
    let router = routing::router_for(&canary.spec);
    let routing = read_routing(ctx, &namespace, router.as_ref()).await?;
    // An object that cannot carry the split is reported when a weight is set.
    let route_weight = router.current_weight(&routing).ok().flatten();
    let observed = Observed {
        router: router.capabilities(),
        route_weight,
        generation: canary.metadata.generation,
        target,
        stable,
        canary: canary_workload,
        requests,
        analysis,
        measurements,
        autoscaler,
        derived_autoscaler,
        canary_uid: canary.uid().unwrap_or_default(),
    };
    let read = Read {
        target: target_deployment,
        stable: stable_deployment,
        canary: canary_deployment,
        user_autoscaler,
        router,
        routing,
    };
    Ok((observed, read))
}

/// The finished measurements of `due` (the metrics due now, as `(run, metric)`); starts the
/// others, off the reconcile path (see [`super::measurements`]), and cancels the Canary's
/// measurements that are no longer due.
fn measurements_due(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    now: Timestamp,
    due: Vec<(String, String)>,
    prepared: &PreparedByMetric,
) -> Vec<NewMeasurement> {
    let namespace = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let mut finished = Vec::new();
    let mut still_due = BTreeSet::new();
    for (run_name, metric) in due {
        let (Some(prepared_metric), Some(key)) = (
            prepared.get(&(run_name.clone(), metric.clone())),
            measurement_key(canary, status, &run_name, &metric),
        ) else {
            continue;
        };
        still_due.insert(key.clone());
        match ctx.measurements.take_finished(&key) {
            Some(Finished {
                measurement,
                readings,
            }) => {
                if let Some((readings_key, at_end)) = readings {
                    // Used only if the next interval starts at this one's end, i.e. if the
                    // plan records it.
                    ctx.readings.put(readings_key, at_end);
                }
                finished.push(measurement);
            }
            None => ctx.measurements.start(
                key,
                ObjectRef::from_obj(canary),
                measure(canary, status, ctx, now, run_name, metric, prepared_metric),
            ),
        }
    }
    ctx.measurements.keep_only(&namespace, &name, &still_due);
    finished
}

/// What identifies the measurement of `run`/`metric` that is due now.
fn measurement_key(
    canary: &Canary,
    status: &CanaryStatus,
    run_name: &str,
    metric: &str,
) -> Option<MeasurementKey> {
    let run = status.analysis_runs.iter().find(|r| r.name == run_name)?;
    let due = run
        .metrics
        .iter()
        .find(|m| m.name == metric)?
        .next_measurement_at
        .clone()?;
    Some(MeasurementKey {
        namespace: canary.namespace().unwrap_or_default(),
        canary: canary.name_any(),
        uid: canary.uid().unwrap_or_default(),
        run: run_name.to_string(),
        run_started_at: run.started_at.clone(),
        metric: metric.to_string(),
        due,
    })
}

/// Takes one due measurement of `run`/`metric`: everything it needs is read now, so that it
/// runs as a task of its own.
fn measure(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
    now: Timestamp,
    run_name: String,
    metric: String,
    prepared_metric: &PreparedMetric,
) -> impl Future<Output = Finished> + Send + 'static {
    let providers = ctx.providers.clone();
    let prepared_metric = prepared_metric.clone();
    // For a compare metric: where the interval starts, and the readings it may start from.
    let compare_window = prepared_metric.compare.as_ref().map(|_| {
        let start = compare_window_start(status, &run_name, &metric, prepared_metric.interval, now);
        let key = ReadingsKey {
            namespace: canary.namespace().unwrap_or_default(),
            canary: canary.name_any(),
            run: run_name.clone(),
            metric: metric.clone(),
        };
        let previous = ctx.readings.get(&key);
        (start, key, previous)
    });
    async move {
        if let (Some(prepared_compare), Some((start, key, previous))) =
            (&prepared_metric.compare, compare_window)
        {
            // Both ends of the interval are read with explicit `time=`, so the counts are
            // exact and the next interval starts where this one ended (kept in status).
            let end = Timestamp::now();
            let outcome = crate::analysis::compare::measure(
                &providers,
                prepared_compare,
                &prepared_metric.request,
                start,
                end,
                previous.as_ref(),
            )
            .await;
            let (outcome, readings) = match outcome {
                Ok((measured, at_end)) => (Ok(measured), Some((key, at_end))),
                Err(e) => (Err(e.to_string()), None),
            };
            // The plan judges it when it records it (once, from the metric's whole record).
            return Finished {
                measurement: NewMeasurement {
                    run: run_name,
                    metric,
                    measurement: MeasurementStatus {
                        time: end.to_string(),
                        // Placeholders: `record` fills in the judge's phase, value and reason.
                        phase: crate::analysis::MeasurementPhase::Inconclusive,
                        value: None,
                        reason: String::new(),
                    },
                    compare: Some(outcome),
                },
                readings,
            };
        }
        let outcome = providers.instant_query(&prepared_metric.request).await;
        let judgement = prepared_metric
            .criteria
            .judge_bounded(outcome, prepared_metric.request.query.clone())
            .await;
        Finished {
            measurement: NewMeasurement {
                run: run_name,
                metric,
                measurement: MeasurementStatus {
                    time: Timestamp::now().to_string(),
                    phase: judgement.phase,
                    value: judgement.value,
                    reason: judgement.reason,
                },
                compare: None,
            },
            readings: None,
        }
    }
}

/// Whether `deployment` was made by this Canary (its owner reference names the Canary's uid).
fn owned_by(canary: &Canary, deployment: &Deployment) -> bool {
    owned(canary, &deployment.metadata)
}

/// Whether the object of `metadata` was made by this Canary.
fn owned(canary: &Canary, metadata: &ObjectMeta) -> bool {
    let uid = canary.metadata.uid.as_deref();
    metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| Some(owner.uid.as_str()) == uid)
}

/// Secrets read from the cluster for the templates' `valueFrom` references.
struct ClusterSecrets {
    values: BTreeMap<(String, String), String>,
    /// Whether the template refers to any Secret.
    referenced: bool,
}

impl SecretValues for ClusterSecrets {
    fn secret_value(&self, reference: &SecretKeyRef) -> Result<String, String> {
        self.values
            .get(&(reference.name.clone(), reference.key.clone()))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "Secret {} has no key {} (or cannot be read)",
                    reference.name, reference.key
                )
            })
    }
}

type Definitions = BTreeMap<String, Vec<MetricDefinition>>;
type PreparedByMetric = BTreeMap<(String, String), PreparedMetric>;

/// A template as read, with the Secrets it refers to; why not when it does not exist.
type FetchedTemplate = Result<(AnalysisTemplateSpec, ClusterSecrets), String>;

/// The metric definitions of every analysis run the spec can start, and the prepared queries;
/// `Ok(Err(problem))` when the spec or a template cannot run (reported in status), `Err` when
/// the API could not be read (retried with backoff, status untouched).
async fn resolve_analysis(canary: &Canary, ctx: &Context) -> Result<PreparedRuns, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let inputs = analysis_inputs(canary, ctx);
    if let Some(inputs) = &inputs
        && let Some(prepared) = ctx.prepared.get(&namespace, &name, inputs)
    {
        return Ok(prepared);
    }
    // A template used by several runs is read (with its secrets) once.
    let mut fetched: BTreeMap<TemplateRef, FetchedTemplate> = BTreeMap::new();
    let mut uses_secrets = false;
    for template_ref in canary.spec.template_refs() {
        if fetched.contains_key(template_ref) {
            continue;
        }
        let template = match fetch_template(ctx, &namespace, template_ref).await? {
            Ok(spec) => {
                let secrets = fetch_secrets(ctx, &namespace, &spec).await;
                uses_secrets |= secrets.referenced;
                Ok((spec, secrets))
            }
            Err(problem) => Err(problem),
        };
        fetched.insert(template_ref.clone(), template);
    }
    // Preparing compiles the conditions and tries them on sample results: CPU work (within
    // the cost limit), kept off the async workers that serve every other Canary.
    let owned = canary.clone();
    let default_prometheus = ctx.default_prometheus.clone();
    let prepared = condition::off_the_runtime(EVALUATION_TIMEOUT, move || {
        prepare_runs(&owned, default_prometheus.as_deref(), &fetched)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the analysis templates could not be prepared: {e}")));
    if let Some(inputs) = inputs {
        ctx.prepared
            .put(&namespace, &name, inputs, uses_secrets, prepared.clone());
    }
    Ok(prepared)
}

/// The analysis runs' metric definitions and prepared queries, or why they cannot run.
type PreparedRuns = Result<(Definitions, PreparedByMetric), String>;

/// What a Canary's prepared analysis is made from: its spec (by generation) and each
/// template's version (`None`: it does not exist). `None` when a template is not cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysisInputs {
    uid: String,
    generation: Option<i64>,
    templates: Vec<(TemplateRef, Option<String>)>,
}

fn analysis_inputs(canary: &Canary, ctx: &Context) -> Option<AnalysisInputs> {
    let namespace = canary.namespace().unwrap_or_default();
    let mut templates = Vec::new();
    for template_ref in canary.spec.template_refs() {
        let version = ctx
            .caches
            .template_version(
                &namespace,
                &template_ref.template_name,
                template_ref.cluster_scope,
            )
            .ok()?;
        templates.push((template_ref.clone(), version));
    }
    Some(AnalysisInputs {
        uid: canary.uid().unwrap_or_default(),
        generation: canary.metadata.generation,
        templates,
    })
}

/// How long a prepared analysis that reads Secrets is kept: a rotated token is used within
/// this time, without reading every Secret at every measurement.
const SECRETS_REFRESH: Duration = Duration::from_secs(60);

/// Each Canary's prepared analysis, kept while its spec and templates stay the same (and,
/// when it reads Secrets, for [`SECRETS_REFRESH`]): preparing compiles every condition, and
/// most reconciles need the analysis only to take a measurement.
#[derive(Default)]
pub struct PreparedAnalyses(
    std::sync::Mutex<BTreeMap<(String, String), (AnalysisInputs, Option<Instant>, PreparedRuns)>>,
);

impl PreparedAnalyses {
    fn get(&self, namespace: &str, canary: &str, inputs: &AnalysisInputs) -> Option<PreparedRuns> {
        let entries = self.entries();
        let (kept_inputs, secrets_read_at, prepared) =
            entries.get(&(namespace.to_string(), canary.to_string()))?;
        let fresh = secrets_read_at.is_none_or(|at| at.elapsed() < SECRETS_REFRESH);
        (kept_inputs == inputs && fresh).then(|| prepared.clone())
    }

    fn put(
        &self,
        namespace: &str,
        canary: &str,
        inputs: AnalysisInputs,
        uses_secrets: bool,
        prepared: PreparedRuns,
    ) {
        let secrets_read_at = uses_secrets.then(Instant::now);
        self.entries().insert(
            (namespace.to_string(), canary.to_string()),
            (inputs, secrets_read_at, prepared),
        );
    }

    pub fn forget(&self, namespace: &str, canary: &str) {
        self.entries()
            .remove(&(namespace.to_string(), canary.to_string()));
    }

    fn entries(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        BTreeMap<(String, String), (AnalysisInputs, Option<Instant>, PreparedRuns)>,
    > {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// [`resolve_analysis`] once the templates are read.
fn prepare_runs(
    canary: &Canary,
    default_prometheus: Option<&str>,
    fetched: &BTreeMap<TemplateRef, FetchedTemplate>,
) -> Result<(Definitions, PreparedByMetric), String> {
    let mut runs: Vec<(String, &[TemplateRef], &[AnalysisArg])> = Vec::new();
    if let Some(background) = &canary.spec.analysis {
        runs.push((
            rollout::BACKGROUND.into(),
            &background.templates,
            &background.args,
        ));
    }
    let steps = canary.spec.rollout_steps();
    for (i, step) in steps.iter().enumerate() {
        if let RolloutStep::Analysis(analysis) = step {
            runs.push((rollout::step_run(i), &analysis.templates, &analysis.args));
        }
    }
    let namespace = canary.namespace().unwrap_or_default();
    let context = BTreeMap::from([
        ("namespace".to_string(), namespace.clone()),
        ("target".to_string(), canary.spec.target_ref.name.clone()),
        ("canary".to_string(), canary.spec.canary_name()),
        ("stable".to_string(), canary.spec.stable_name()),
        ("workload".to_string(), canary.spec.canary_name()),
    ]);
    let mut definitions = BTreeMap::new();
    let mut prepared = BTreeMap::new();
    for (run_name, templates, args) in runs {
        let mut run_definitions = Vec::new();
        for (t, template_ref) in templates.iter().enumerate() {
            let where_ = if run_name == rollout::BACKGROUND {
                format!("spec.analysis.templates[{t}]")
            } else {
                format!("the analysis step {run_name}, templates[{t}]")
            };
            let (spec, secrets) = fetched
                .get(template_ref)
                .ok_or_else(|| format!("template {} was not read", template_ref.template_name))?
                .as_ref()
                .map_err(|problem| format!("{problem} ({where_})"))?;
            let args: BTreeMap<String, String> = args
                .iter()
                .filter(|a| spec.args.iter().any(|d| d.name == a.name))
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect();
            let analysis = run::prepare(
                &template_ref.template_name,
                spec,
                &args,
                &context,
                default_prometheus,
                secrets,
            )
            .map_err(|problems| {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                format!(
                    "template {} ({where_}) cannot run: {}",
                    template_ref.template_name,
                    list.join("; ")
                )
            })?;
            for mut metric in analysis.metrics {
                // A measurement Job belongs to its Canary: deleting the Canary deletes it.
                if let crate::metrics::ProviderQuery::Job(job) = &mut metric.request.provider
                    && let Some(mut owner) = canary.controller_owner_ref(&())
                {
                    // Blocking the owner's deletion would need the finalizers permission.
                    owner.block_owner_deletion = None;
                    job.owned_by(owner);
                }
                let key = (run_name.clone(), metric.name.clone());
                if prepared.contains_key(&key) {
                    return Err(format!(
                        "metric {} appears in two templates of {where_}: metric names must be unique within a run",
                        metric.name
                    ));
                }
                if let Some(problem) = rollout::endless_step_metric(
                    &run_name,
                    metric.limits.count,
                    metric.compare.is_some(),
                    metric.dry_run,
                ) {
                    return Err(format!(
                        "metric {} of template {} ({where_}) {problem}",
                        metric.name, template_ref.template_name
                    ));
                }
                run_definitions.push(MetricDefinition {
                    template: template_ref.template_name.clone(),
                    name: metric.name.clone(),
                    interval: metric.interval,
                    initial_delay: metric.initial_delay,
                    limits: metric.limits,
                    dry_run: metric.dry_run,
                    compare: metric.compare.as_ref().map(|c| c.setup.clone()),
                });
                prepared.insert(key, metric);
            }
        }
        definitions.insert(run_name, run_definitions);
    }
    Ok((definitions, prepared))
}

/// The template's spec, `Ok(Err(..))` if it does not exist, `Err` if it could not be read
/// (a transient API error is retried, not reported as an invalid spec).
async fn fetch_template(
    ctx: &Context,
    namespace: &str,
    template_ref: &TemplateRef,
) -> Result<Result<AnalysisTemplateSpec, String>, Error> {
    let name = &template_ref.template_name;
    let found = if template_ref.cluster_scope {
        match ctx.caches.cluster_template(name) {
            Ok(cached) => Ok(cached.map(|t| t.spec.0)),
            // A controller confined to namespaces reads them when it needs them.
            Err(NotCached) => Api::<ClusterAnalysisTemplate>::all(ctx.client.clone())
                .get_opt(name)
                .await
                .map(|t| t.map(|t| t.spec.0)),
        }
    } else {
        Ok(ctx.caches.template(namespace, name).map(|t| t.spec))
    };
    let kind = if template_ref.cluster_scope {
        "ClusterAnalysisTemplate".to_string()
    } else {
        format!("AnalysisTemplate {namespace}/")
    };
    let found = match found {
        // Not transient: say what is missing instead of retrying for ever.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Ok(Err(format!(
                "{kind}{name} cannot be read: the controller is not allowed to get it ({})",
                e.message
            )));
        }
        other => other?,
    };
    Ok(match found {
        Some(spec) => Ok(spec),
        None => Err(format!(
            "{kind}{name} does not exist: create it or fix templateName"
        )),
    })
}

async fn fetch_secrets(
    ctx: &Context,
    namespace: &str,
    spec: &AnalysisTemplateSpec,
) -> ClusterSecrets {
    let references: Vec<&SecretKeyRef> = spec
        .args
        .iter()
        .filter_map(|a| a.value_from.as_ref().map(|v| &v.secret_key_ref))
        .chain(spec.metrics.iter().flat_map(|m| {
            m.provider
                .prometheus
                .headers
                .iter()
                .filter_map(|h| h.value_from.as_ref().map(|v| &v.secret_key_ref))
        }))
        .collect();
    let referenced = !references.is_empty();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    // Each Secret is read once, however many of its keys are referenced.
    let mut read: BTreeMap<&str, Option<Secret>> = BTreeMap::new();
    let mut values = BTreeMap::new();
    for reference in references {
        if !read.contains_key(reference.name.as_str()) {
            let secret = secrets.get_opt(&reference.name).await.ok().flatten();
            read.insert(&reference.name, secret);
        }
        if let Some(secret) = &read[reference.name.as_str()]
            && let Some(value) = secret.data.as_ref().and_then(|d| d.get(&reference.key))
            && let Ok(text) = String::from_utf8(value.0.clone())
        {
            values.insert((reference.name.clone(), reference.key.clone()), text);
        }
    }
    ClusterSecrets { values, referenced }
}

async fn apply_action(
    canary: &Canary,
    read: &mut Read,
    action: &Action,
    ctx: &Context,
) -> Result<(), Error> {
    let target = read.target.as_ref();
    let namespace = canary.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    match action {
        Action::EnsureStable { revision, replicas } => ensure_managed(
            canary,
            target,
            ctx,
            Subset::Stable,
            revision,
            Some(*replicas),
        )
        .await
        .map(drop),
        Action::EnsureCanary { revision, replicas } => ensure_managed(
            canary,
            target,
            ctx,
            Subset::Canary,
            revision,
            Some(*replicas),
        )
        .await
        .map(drop),
        Action::ScaleCanary { replicas } => {
            let Some(current) = read.canary.clone() else {
                return Ok(());
            };
            if !owned_by(canary, &current) {
                return Ok(());
            }
            if target.is_none() {
                // The target is gone, so there is no template to apply: scaling the canary
                // down must not depend on one (the rollout ends Failed, traffic on stable).
                if current.spec.as_ref().and_then(|s| s.replicas) == Some(*replicas) {
                    return Ok(());
                }
                let written = deployments
                    .patch(
                        &canary.spec.canary_name(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                    )
                    .await?;
                wrote(ctx, canary, "Deployment", Some(&current), Some(&written));
                return Ok(());
            }
            let revision = workload::workload_state(&current)
                .revision
                .unwrap_or_default();
            ensure_managed(
                canary,
                target,
                ctx,
                Subset::Canary,
                &revision,
                Some(*replicas),
            )
            .await
            .map(drop)
        }
        Action::SetWeight { weight } => {
            let workload = routing::Workload {
                selector: target
                    .and_then(|t| t.spec.as_ref())
                    .and_then(|s| s.selector.match_labels.clone())
                    .unwrap_or_default(),
                port: canary.spec.service.port,
            };
            let invalid = |e: routing::RouterError| Error::Invalid(e.to_string());
            let mut writes = read
                .router
                .prepare(&read.routing, &workload)
                .map_err(invalid)?;
            writes.extend(
                read.router
                    .set_weight(&read.routing, *weight)
                    .map_err(invalid)?,
            );
            apply_writes(canary, ctx, &namespace, writes, &mut read.routing).await
        }
        Action::SetHeaderRoutes { routes } => {
            let writes = read
                .router
                .set_header_routes(&read.routing, routes)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            apply_writes(canary, ctx, &namespace, writes, &mut read.routing).await
        }
        Action::EnsureStableAutoscaled { revision, replicas } => {
            let stable = read.stable.clone();
            ensure_stable_autoscaled(canary, target, stable, ctx, revision, *replicas).await
        }
        Action::EnsureAutoscaler { min_replicas } => {
            ensure_autoscaler(canary, read.user_autoscaler.as_ref(), ctx, *min_replicas).await
        }
        Action::DeleteAutoscaler => {
            let stable = canary.spec.stable_name();
            let Some(derived) = ctx.caches.autoscaler(&namespace, &stable) else {
                return Ok(());
            };
            let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
            match api.delete(&stable, &Default::default()).await {
                Ok(_) => {
                    wrote(ctx, canary, "HorizontalPodAutoscaler", Some(&derived), None);
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Action::ScaleTargetToZero => {
            let written = deployments
                .patch(
                    &canary.spec.target_ref.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": 0}})),
                )
                .await?;
            wrote(ctx, canary, "Deployment", target, Some(&written));
            Ok(())
        }
    }
}

/// The field manager that holds `<target>-stable`'s `spec.replicas` while the controller hands
/// them over to the derived HPA (see [`ensure_stable_autoscaled`]).
pub const HANDOVER_FIELD_MANAGER: &str = "canary-controller-handover";

/// The user's HPA of the target and the derived one, as the rollout sees them, and the user's
/// object (the derived one is built from it).
fn observe_autoscalers(
    canary: &Canary,
    ctx: &Context,
) -> (
    Option<Result<rollout::Autoscaler, String>>,
    Option<rollout::DerivedAutoscaler>,
    Option<HorizontalPodAutoscaler>,
) {
    let namespace = canary.namespace().unwrap_or_default();
    let hpas = ctx.caches.autoscalers(&namespace);
    let stable = canary.spec.stable_name();
    let reference = canary.spec.autoscaler_ref.as_ref().map(|r| r.name.as_str());
    let found = autoscaler::user_autoscaler(&hpas, &canary.spec.target_ref.name, reference);
    let mut user = found
        .as_ref()
        .and_then(|f| f.as_ref().ok())
        .map(|h| (*h).clone());
    let mut autoscaler = found.map(|f| f.map(autoscaler::bounds));
    let mut derived = None;
    if let Some(existing) = hpas
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some(&stable))
    {
        if owned(canary, &existing.metadata) {
            derived = Some(autoscaler::derived_state(existing, user.as_ref(), &stable));
        } else if user.is_some() {
            // Never taken over: applying over it would change someone else's autoscaling.
            user = None;
            autoscaler = Some(Err(format!(
                "HorizontalPodAutoscaler {stable} already exists and does not belong to Canary {} (no owner reference to it); the controller derives an HPA of that name from {}: rename or delete it",
                canary.name_any(),
                autoscaler
                    .and_then(|a| a.ok())
                    .map(|a| a.name)
                    .unwrap_or_default()
            )));
        }
    }
    (autoscaler, derived, user)
}

/// Server-side applies the derived HPA `<target>-stable` from the user's `user`, with
/// `min_replicas`.
async fn ensure_autoscaler(
    canary: &Canary,
    user: Option<&HorizontalPodAutoscaler>,
    ctx: &Context,
    min_replicas: i32,
) -> Result<(), Error> {
    let user = user.ok_or_else(|| {
        Error::Invalid("the HorizontalPodAutoscaler of the target is gone".into())
    })?;
    let owner = canary
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("the Canary has no uid yet".into()))?;
    let stable = canary.spec.stable_name();
    let mut derived = autoscaler::derived(user, &stable, min_replicas, owner);
    derived.metadata.namespace = canary.namespace();
    let mut body = serde_json::to_value(&derived)?;
    body["apiVersion"] = json!("autoscaling/v2");
    body["kind"] = json!("HorizontalPodAutoscaler");
    let namespace = canary.namespace().unwrap_or_default();
    let cached = ctx.caches.autoscaler(&namespace, &stable);
    if let Some(cached) = &cached
        && unchanged::apply_changes_nothing(&body, &serde_json::to_value(cached)?)
    {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    let written = api
        .patch(
            &stable,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    wrote(
        ctx,
        canary,
        "HorizontalPodAutoscaler",
        cached.as_ref(),
        Some(&written),
    );
    Ok(())
}

/// Whether the field manager `manager` holds `spec.replicas` of `deployment` by apply.
fn applies_replicas(deployment: &Deployment, manager: &str) -> bool {
    applied_by(deployment, manager) == Some(true)
}

/// Whether the field manager `manager` applied `deployment` (`None`: it did not), and if so
/// whether it holds `spec.replicas`.
fn applied_by(deployment: &Deployment, manager: &str) -> Option<bool> {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(manager)
                && m.operation.as_deref() == Some("Apply")
                && m.subresource.is_none()
        })
        .map(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        })
        .next()
}

/// Server-side applies `<target>-stable` running `revision` without `spec.replicas`, which
/// the derived HPA writes (`replicas` only when it is created). Dropping a field the apply
/// alone owned would reset it to 1, so first the ownership is handed over as the Kubernetes
/// documentation says ("Server-Side Apply → Transferring ownership"): a second field manager
/// applies `spec.replicas` alone at its current value, then the main apply leaves it out.
async fn ensure_stable_autoscaled(
    canary: &Canary,
    target: Option<&Deployment>,
    stable: Option<Deployment>,
    ctx: &Context,
    revision: &str,
    replicas: i32,
) -> Result<(), Error> {
    let name = canary.spec.stable_name();
    let deployments: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &canary.namespace().unwrap_or_default());
    let stable = match stable {
        Some(stable) => stable,
        None => {
            ensure_managed(
                canary,
                target,
                ctx,
                Subset::Stable,
                revision,
                Some(replicas),
            )
            .await?
        }
    };
    if applies_replicas(&stable, FIELD_MANAGER) {
        let current = stable
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(replicas);
        // Not forced: had the HPA changed them since they were read, this fails and the next
        // reconcile hands over its value instead of undoing its decision.
        let written = deployments
            .patch(
                &name,
                &PatchParams::apply(HANDOVER_FIELD_MANAGER),
                &Patch::Apply(json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name},
                    "spec": {"replicas": current},
                })),
            )
            .await?;
        wrote(ctx, canary, "Deployment", Some(&stable), Some(&written));
    }
    ensure_managed(canary, target, ctx, Subset::Stable, revision, None).await?;
    Ok(())
}

/// Server-side applies `<target>-<subset>` running `revision` with `replicas` pods (`None`:
/// without `spec.replicas`, which someone else writes), unless it is so already; returns it.
async fn ensure_managed(
    canary: &Canary,
    target: Option<&Deployment>,
    ctx: &Context,
    subset: Subset,
    revision: &str,
    replicas: Option<i32>,
) -> Result<Deployment, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let target = target.ok_or_else(|| {
        Error::Invalid(format!(
            "Deployment {} is gone",
            canary.spec.target_ref.name
        ))
    })?;
    let template = template_of(canary, ctx, target, revision).await?;
    let name = match subset {
        Subset::Stable => canary.spec.stable_name(),
        Subset::Canary => canary.spec.canary_name(),
    };
    let owner = canary
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("the Canary has no uid yet".into()))?;
    let desired = workload::managed_deployment(
        target,
        &name,
        subset,
        revision,
        &template,
        replicas.unwrap_or(0),
        owner,
    );
    let mut body = serde_json::to_value(&desired)?;
    if replicas.is_none() {
        body["spec"]
            .as_object_mut()
            .map(|spec| spec.remove("replicas"));
    }
    body["apiVersion"] = json!("apps/v1");
    body["kind"] = json!("Deployment");
    let cached = ctx.caches.deployment(&namespace, &name);
    // Unchanged also in who holds what: an apply that gives `spec.replicas` up (to an HPA),
    // or takes them back, is sent even when the value stays.
    if let Some(cached) = cached.clone()
        && applied_by(&cached, FIELD_MANAGER) == Some(replicas.is_some())
        && unchanged::apply_changes_nothing(&body, &serde_json::to_value(&cached)?)
    {
        return Ok(cached);
    }
    let written = deployments
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    wrote(ctx, canary, "Deployment", cached.as_ref(), Some(&written));
    Ok(written)
}

/// The pod template of `revision`: the target's, the canary's or stable's current one, or one
/// from stable's ReplicaSet history (to restore stable after an abort during promotion).
async fn template_of(
    canary: &Canary,
    ctx: &Context,
    target: &Deployment,
    revision: &str,
) -> Result<PodTemplateSpec, Error> {
    let target_template = target
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    if workload::template_revision(&target_template) == revision {
        return Ok(target_template);
    }
    let namespace = canary.namespace().unwrap_or_default();
    for name in [canary.spec.canary_name(), canary.spec.stable_name()] {
        if let Some(d) = ctx.caches.deployment(&namespace, &name)
            && workload::workload_state(&d).revision.as_deref() == Some(revision)
        {
            return Ok(d.spec.map(|s| s.template).unwrap_or_default());
        }
    }
    let replica_sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{}=stable", crate::api::canary::SUBSET_LABEL);
    for rs in replica_sets
        .list(&ListParams::default().labels(&selector))
        .await?
    {
        let template = rs.spec.and_then(|s| s.template).unwrap_or_default();
        if workload::annotated_revision(&template) == Some(revision) {
            return Ok(template);
        }
    }
    Err(Error::Invalid(format!(
        "the pod template of revision {revision} is no longer available (not in the target, the managed Deployments or stable's ReplicaSets)"
    )))
}

/// The router's objects as they are now; one that does not exist is left out.
async fn read_routing(
    ctx: &Context,
    namespace: &str,
    router: &dyn TrafficRouter,
) -> Result<Snapshot, Error> {
    let mut snapshot = Snapshot::default();
    for object in router.objects() {
        let found = match ctx.caches.routing_object(namespace, &object) {
            Ok(cached) => cached,
            // Services, and kinds installed after the controller started.
            Err(NotCached) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), namespace, &object.api_resource());
                api.get_opt(&object.name).await?
            }
        };
        if let Some(found) = found {
            snapshot.insert(object, serde_json::to_value(&found)?);
        }
    }
    Ok(snapshot)
}

/// Applies a router's writes, in order, and puts each object as the API server answered
/// into `read`: a later write of the same reconcile (a weight after a header route) is
/// computed over the object as it now is, so its guards hold.
async fn apply_writes(
    canary: &Canary,
    ctx: &Context,
    namespace: &str,
    writes: Vec<RouterWrite>,
    read: &mut Snapshot,
) -> Result<(), Error> {
    for write in writes {
        let object: &RoutingObject = write.object();
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &object.api_resource());
        let before = read.get(object);
        let written = match &write {
            RouterWrite::Patch { patch, .. } => {
                if before.is_some_and(|live| unchanged::patch_changes_nothing(patch, live)) {
                    continue;
                }
                json_patch(&api, &object.name, patch.clone()).await?
            }
            RouterWrite::Apply { body, .. } => {
                let owner = canary
                    .controller_owner_ref(&())
                    .ok_or_else(|| Error::Invalid("the Canary has no uid yet".into()))?;
                let mut body = body.clone();
                body["metadata"]["ownerReferences"] = json!([owner]);
                if before.is_some_and(|live| unchanged::apply_changes_nothing(&body, live)) {
                    continue;
                }
                api.patch(
                    &object.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(body),
                )
                .await?
            }
        };
        // Waited for only where a cache holds the object (a Service is read afresh).
        if ctx.caches.routing_object(namespace, object).is_ok() {
            let version_before = before.and_then(|b| b["metadata"]["resourceVersion"].as_str());
            ctx.pending_writes.wrote(
                (namespace, &canary.name_any()),
                (&object.kind, &object.name),
                version_before.map(str::to_string),
                cache::resource_version(&written),
            );
        }
        read.insert(object.clone(), serde_json::to_value(&written)?);
    }
    Ok(())
}

async fn json_patch(
    api: &Api<DynamicObject>,
    name: &str,
    patch: serde_json::Value,
) -> Result<DynamicObject, Error> {
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    Ok(api
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await?)
}

/// Removes the request annotations that `stored` (the status as the API server holds it)
/// answers, each only if it still holds the value that was answered. A failure is retried by
/// the next reconcile: the answers stay in status while their annotations are there.
async fn remove_answered_requests(canary: &Canary, stored: &CanaryStatus, ctx: &Context) {
    let answered = crate::api::canary::answered_request_annotations(canary.annotations(), stored);
    if answered.is_empty() {
        return;
    }
    let operations: Vec<Value> = answered
        .iter()
        .flat_map(|(key, value)| {
            let path = format!(
                "/metadata/annotations/{}",
                key.replace('~', "~0").replace('/', "~1")
            );
            [
                json!({"op": "test", "path": path, "value": value}),
                json!({"op": "remove", "path": path}),
            ]
        })
        .collect();
    let namespace = canary.namespace().unwrap_or_default();
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch: json_patch::Patch = match serde_json::from_value(Value::Array(operations)) {
        Ok(patch) => patch,
        Err(e) => {
            return warn!(namespace, canary = canary.name_any(), error = %e, "building the patch that removes answered requests");
        }
    };
    if let Err(error) = api
        .patch(
            &canary.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await
    {
        info!(namespace, canary = canary.name_any(), %error, "answered requests not removed yet; retrying at the next reconcile");
    }
}

/// Writes `status`; returns the status as the API server stored it.
async fn write_status(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
) -> Result<CanaryStatus, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "Canary",
        "status": status,
    });
    let stored = api
        .patch_status(
            &canary.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    Ok(stored.status.unwrap_or_default())
}

/// The event's `action`: its reason, made distinct per message. kube's `Recorder` merges
/// events of the same reason and action into one series that keeps the first message; so two
/// `WeightDrift`s about different Deployments would show one message twice. Events of the same
/// reason and message still merge into a count.
pub(super) fn event_action(reason: &str, note: &str) -> String {
    let hash = crate::workload::fnv1a64(note.as_bytes());
    format!("{reason}-{:08x}", hash >> 32)
}

/// Publishes `event` about `canary`, whose status (as planned) is `status`, and logs it: the
/// controller's log has one line per decision, with the rollout's coordinates.
pub(super) async fn publish(
    recorder: &Recorder,
    canary: &Canary,
    status: &CanaryStatus,
    event: &rollout::Event,
) {
    let namespace = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let revision = status.revision.as_deref().unwrap_or("");
    let step = status.step_display.as_deref().unwrap_or("");
    let weight = status.canary_weight;
    // One line per decision, at the event's level (tracing wants the level as a constant).
    macro_rules! decision {
        ($level:ident) => {
            $level!(
                namespace,
                canary = name,
                revision,
                step,
                weight,
                reason = event.reason,
                "{}",
                event.message
            )
        };
    }
    match event.kind {
        EventType::Normal => decision!(info),
        EventType::Warning => decision!(warn),
    }
    let note: String = event.message.chars().take(1000).collect();
    let kube_event = KubeEvent {
        type_: match event.kind {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        },
        reason: event.reason.to_string(),
        note: Some(note.clone()),
        action: event_action(event.reason, &note),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&kube_event, &canary.object_ref(&())).await {
        warn!(canary = canary.name_any(), error = %e, "could not publish an event");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{RESYNC, RESYNC_SPREAD, resync_of};

    #[test]
    fn canaries_resync_at_most_five_minutes_apart_spread_over_the_last_minute() {
        let resyncs: Vec<Duration> = (0..300)
            .map(|i| resync_of(&format!("0b5e7c1a-{i:04}-4f3e-9d1c-5a6b7c8d9e0f")))
            .collect();
        assert!(
            resyncs
                .iter()
                .all(|r| *r <= RESYNC && *r > RESYNC - RESYNC_SPREAD)
        );
        assert_eq!(resync_of("same"), resync_of("same"), "fixed per Canary");
        // Spread: each 10 s slice of the minute gets some of 300 Canaries.
        for slice in 0..6 {
            let low = RESYNC - RESYNC_SPREAD + Duration::from_secs(10 * slice);
            let count = resyncs
                .iter()
                .filter(|r| **r > low && **r <= low + Duration::from_secs(10))
                .count();
            assert!(count >= 20, "slice {slice}: {count} of 300");
        }
    }
}
