//! `canary controller`: watches Canaries (and the Deployments they target or own) and drives
//! every rollout to its end. Reconcile = observe → `rollout::plan` → apply → status.

pub mod api_client;
pub mod cache;
mod express;
mod leadership;
pub mod liveness;
pub mod measurements;
pub mod metrics;
pub mod reconcile;
mod unchanged;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, error, info, warn};

use crate::analysis::compare::CounterReadings;
use crate::api::canary::{Canary, CanaryStatus};
use crate::metrics::Providers;
pub use leadership::LEASE_NAME;
pub use liveness::Liveness;
pub use measurements::Measurements;
pub use metrics::Metrics;

/// The finalizer that makes deletion send traffic back to stable first.
pub const FINALIZER: &str = "canary.dev/finalizer";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
    /// Not a failure: something to wait for (retried shortly).
    #[error("{0}")]
    Waiting(String),
    /// A reconcile took longer than its bound and was abandoned (retried).
    #[error("{0}")]
    TimedOut(String),
    #[error("serialising an object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(Box<finalizer::Error<Error>>),
    /// A bug met while reconciling one Canary (contained to it).
    #[error("{0}")]
    Panicked(String),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Every metrics provider (Prometheus, web, …), sharing one address policy.
    pub providers: Providers,
    pub default_prometheus: Option<String>,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub readings: ReadingsCache,
    pub status_writes: StatusWrites,
    /// Measurements in flight, off the reconcile path.
    pub measurements: Measurements,
    /// Whether reconciles make progress, for `/healthz`.
    pub liveness: Liveness,
    /// Every Canary the controller watches, as its cache holds them: who owns which object
    /// is decided from these without a request.
    pub canaries: Store<Canary>,
    /// The reconcile error last logged per Canary.
    pub logged_errors: LoggedErrors,
    /// What reconcile reads: Deployments, HPAs, templates and routing objects.
    pub caches: cache::Caches,
    /// Writes the caches may not show yet.
    pub pending_writes: cache::PendingWrites,
    /// Each Canary's prepared analysis.
    pub prepared: reconcile::PreparedAnalyses,
    /// One reconcile of a Canary at a time, across the queue and the express lane.
    pub reconcile_locks: express::ReconcileLocks,
}

/// The reconcile error last logged for each Canary, so that a problem retried every few
/// seconds is logged once per change of its message, not at every retry (status and events
/// say it meanwhile). Forgotten when a reconcile of that Canary succeeds, so the same problem
/// coming back later is logged again.
#[derive(Default)]
pub struct LoggedErrors(Mutex<BTreeMap<(String, String), String>>);

impl LoggedErrors {
    /// Whether `message` differs from the last one logged for the Canary (remembered now).
    pub fn is_new(&self, namespace: &str, canary: &str, message: &str) -> bool {
        let key = (namespace.to_string(), canary.to_string());
        let mut entries = self.entries();
        if entries.get(&key).is_some_and(|last| last == message) {
            return false;
        }
        entries.insert(key, message.to_string());
        true
    }

    pub fn forget(&self, namespace: &str, canary: &str) {
        self.entries()
            .remove(&(namespace.to_string(), canary.to_string()));
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A compare metric of one analysis run of one Canary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadingsKey {
    pub namespace: String,
    pub canary: String,
    pub run: String,
    pub metric: String,
}

/// The counter readings each compare metric's last interval ended on, so the next interval
/// starts from them (see [`CounterReadings`]). In memory only: after a restart or a change
/// of leader, the first interval reads its start again. At most one entry per compare metric
/// of each run of each Canary; a deleted Canary's are forgotten.
#[derive(Default)]
pub struct ReadingsCache(Mutex<BTreeMap<ReadingsKey, CounterReadings>>);

impl ReadingsCache {
    pub fn get(&self, key: &ReadingsKey) -> Option<CounterReadings> {
        self.entries().get(key).cloned()
    }

    pub fn put(&self, key: ReadingsKey, readings: CounterReadings) {
        self.entries().insert(key, readings);
    }

    pub fn forget(&self, namespace: &str, canary: &str) {
        self.entries()
            .retain(|key, _| !(key.namespace == namespace && key.canary == canary));
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<ReadingsKey, CounterReadings>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// For each Canary whose status this controller wrote, the status it wrote over. A reconcile
/// handed a copy that still shows that status (the watch cache has not caught up with the
/// write: a Deployment event, a timer or an annotation change came first) must not plan from
/// it: it would act on a request or record a measurement a second time, or undo a decision.
/// Only the controller writes status, so a copy with any other status is at least as new as
/// the write.
#[derive(Default)]
pub struct StatusWrites(Mutex<BTreeMap<(String, String), (CanaryStatus, std::time::Instant)>>);

/// How long to wait for the cache to show a write before planning anyway (a watch that
/// restarts re-lists; this only bounds a wait that should last milliseconds).
const CACHE_CATCH_UP: Duration = Duration::from_secs(30);

impl StatusWrites {
    /// `replaced`, the status a reconcile planned from, was written over.
    pub fn written_over(&self, namespace: &str, canary: &str, replaced: CanaryStatus) {
        self.entries().insert(
            (namespace.to_string(), canary.to_string()),
            (replaced, std::time::Instant::now()),
        );
    }

    /// Whether a copy of `canary` with `status` predates our last write of its status.
    pub fn is_stale(&self, namespace: &str, canary: &str, status: &CanaryStatus) -> bool {
        let key = (namespace.to_string(), canary.to_string());
        let mut entries = self.entries();
        let Some((replaced, at)) = entries.get(&key) else {
            return false;
        };
        if replaced == status && at.elapsed() < CACHE_CATCH_UP {
            return true;
        }
        // The cache shows the write (or something later): forget it.
        entries.remove(&key);
        false
    }

    pub fn forget(&self, namespace: &str, canary: &str) {
        self.entries()
            .remove(&(namespace.to_string(), canary.to_string()));
    }

    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), (CanaryStatus, std::time::Instant)>>
    {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How the controller process runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch one namespace; `None` for all.
    pub namespace: Option<String>,
    /// Prometheus for templates that name no address.
    pub prometheus: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Run only while holding this Lease (several replicas: one active, the others standby).
    pub leader_election: Option<LeaderElection>,
    /// Where metric queries may go (`--metrics-address-allow`, and the default refusals).
    pub metrics_address_policy: crate::metrics::AddressPolicy,
    /// At most this many Canaries reconciled at once (`--max-concurrent-reconciles`).
    pub max_concurrent_reconciles: u16,
}

/// The Lease that makes one replica the active controller.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    /// This replica's name in the Lease (the pod name in a cluster).
    pub identity: String,
}

/// The first wait before a watch retries after an error; it doubles up to
/// [`WATCH_RETRY_CAP`] and starts again from here after any event.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait before a watch retries. kube-runtime's default (0.8 s doubling to 30 s, up
/// to twice that with jitter) is one backoff shared by every watch of a `Controller` and reset
/// only by an object event: it grew through an API-server outage, then each watch's "too old
/// resourceVersion" (410) on reconnecting paused all of them again, and the controller stayed
/// deaf for minutes after the server was back. One active replica retrying this often is a
/// light load; a server that sheds load answers 429, which the client already backs off from.
const WATCH_RETRY_CAP: Duration = Duration::from_millis(500);

/// How the controller's watches back off after an error (see [`WATCH_RETRY_CAP`]).
pub fn watch_backoff() -> impl Backoff {
    watcher::ExponentialBackoff::from(
        backon::ExponentialBuilder::default()
            .with_min_delay(WATCH_RETRY_FIRST)
            .with_max_delay(WATCH_RETRY_CAP)
            .with_factor(2.0)
            .without_max_times(),
    )
}

/// What stopped the controller.
enum Stop {
    Signal,
    LostLeadership,
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Reconciles one Canary, containing a panic to that Canary: it is reported on the object and
/// retried after [`PANIC_RETRY`], while every other Canary goes on being served. (A panic is a
/// bug; input that could cause one is refused by validation, this is the last line.)
async fn reconcile(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let _turn = ctx
        .reconcile_locks
        .turn(&namespace, &canary.name_any())
        .await;
    // The express lane may have reconciled it while this waited: plan from the newest copy.
    let canary = ctx
        .canaries
        .get(&ObjectRef::from_obj(canary.as_ref()))
        .unwrap_or(canary);
    match contained(reconcile_contained(canary.clone(), ctx.clone())).await {
        Ok(result) => {
            if result.is_ok() {
                let namespace = canary.namespace().unwrap_or_default();
                ctx.logged_errors.forget(&namespace, &canary.name_any());
            }
            result
        }
        Err(payload) => {
            let what = panic_message(payload.as_ref());
            let namespace = canary.namespace().unwrap_or_default();
            error!(
                namespace,
                canary = canary.name_any(),
                panic = what,
                "reconcile panicked; this Canary is retried later, the others go on"
            );
            let message = format!(
                "internal error while reconciling: {what}; the controller retries this Canary every {}s and keeps serving the others (please report it)",
                PANIC_RETRY.as_secs()
            );
            report_internal_error(&canary, &ctx, &message).await;
            Err(Error::Panicked(message))
        }
    }
}

/// Says on the Canary (a Warning event and `status.message`) that reconciling it failed.
/// Best effort: the reconcile already failed, and the log has it too.
async fn report_internal_error(canary: &Canary, ctx: &Context, message: &str) {
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "ReconcileFailed".into(),
        note: Some(message.chars().take(1000).collect()),
        action: reconcile::event_action("ReconcileFailed", message),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &canary.object_ref(&())).await {
        warn!(canary = canary.name_any(), error = %e, "could not publish an event");
    }
    let api: Api<Canary> =
        Api::namespaced(ctx.client.clone(), &canary.namespace().unwrap_or_default());
    let patch = kube::api::Patch::Merge(serde_json::json!({"status": {"message": message}}));
    if let Err(e) = api
        .patch_status(
            &canary.name_any(),
            &kube::api::PatchParams::default(),
            &patch,
        )
        .await
    {
        warn!(canary = canary.name_any(), error = %e, "could not report the internal error in status");
    }
}

/// Runs `work`, turning a panic in it into `Err` with the panic's payload: one object's bug
/// must not unwind through the controller's loop and stop every other object.
async fn contained<F: std::future::Future>(
    work: F,
) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(work).catch_unwind().await
}

/// How soon a Canary whose reconcile panicked is tried again.
const PANIC_RETRY: Duration = Duration::from_secs(60);

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

async fn reconcile_contained(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer::finalizer(&api, FINALIZER, canary, |event| async {
        match event {
            FinalizerEvent::Apply(canary) => reconcile::apply(canary, ctx.clone()).await,
            FinalizerEvent::Cleanup(canary) => reconcile::cleanup(canary, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn error_policy(canary: Arc<Canary>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let namespace = canary.namespace().unwrap_or_default();
    let waiting = matches!(error, Error::Finalizer(e) if matches!(**e, finalizer::Error::CleanupFailed(Error::Waiting(_))));
    if let Error::Panicked(_) = error {
        ctx.metrics.reconcile_error(&namespace, &canary.name_any());
        return Requeue::requeue(PANIC_RETRY);
    }
    let name = canary.name_any();
    // Once per change of the message: a problem retried every 2 s would otherwise fill the
    // log (status and events say it meanwhile).
    let new = ctx
        .logged_errors
        .is_new(&namespace, &name, &error.to_string());
    if !waiting {
        ctx.metrics.reconcile_error(&namespace, &name);
    }
    match (waiting, new) {
        (true, true) => info!(namespace, canary = name, %error, "deleting"),
        (false, true) => {
            warn!(namespace, canary = name, %error, "reconcile failed; retrying (logged again when the error changes)")
        }
        (_, false) => debug!(namespace, canary = name, %error, "reconcile failed again; retrying"),
    }
    Requeue::requeue(Duration::from_secs(2))
}

/// What a Canary's reconcile acts on besides its status: its spec (generation), annotations
/// (manual requests), labels, finalizers and deletion. The controller's own status writes
/// change none of them, so their watch events do not put the Canary in the queue again,
/// where each such reconcile held a slot that a due Canary waited for.
fn wakes_canary(canary: &Canary) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let metadata = &canary.metadata;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        metadata.generation,
        &metadata.labels,
        &metadata.annotations,
        &metadata.finalizers,
        metadata.deletion_timestamp.is_some(),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    // Created first: the client counts its requests in it.
    let metrics = Metrics::default();
    let client = api_client::controller_client(metrics.kube_requests()).await?;
    let canaries: Api<Canary> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let providers = Providers::with_policy(config.metrics_address_policy.clone())
        .map_err(|e| Error::Invalid(e.to_string()))?
        .with_kube(client.clone());
    let (measurements, finished_measurements) = Measurements::new();
    let (express_lane, express_queue) = express::lane();
    // A finished measurement is picked up by a reconcile of its Canary.
    // The Canaries' cache, slimmed like the others (status is server-side applied, so its
    // field managers' record is as large as the status itself).
    let writer = kube::runtime::reflector::store::Writer::<Canary>::default();
    let store = writer.as_reader();
    let canary_changes = watcher::watcher(canaries, watcher::Config::default().any_semantic())
        .modify(|canary: &mut Canary| cache::slim_metadata(&mut canary.metadata))
        .reflect(writer)
        .applied_objects()
        .inspect_ok(move |canary| express_lane.offer(canary))
        .predicate_filter(wakes_canary, Default::default());
    let controller = Controller::for_stream(canary_changes, store.clone())
        .with_config(api_client::controller_config(
            config.max_concurrent_reconciles,
        ))
        .trigger_backoff(watch_backoff())
        .reconcile_on(finished_measurements);
    // Started before the Lease is held: a standby's caches are warm when it takes over.
    let (caches, cache_changes) =
        cache::Caches::start(&client, config.namespace.as_deref(), store.clone()).await;
    let ctx = Arc::new(Context {
        client: client.clone(),
        providers,
        default_prometheus: config.prometheus.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "canary-controller".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        metrics,
        readings: ReadingsCache::default(),
        status_writes: StatusWrites::default(),
        measurements,
        liveness: Liveness::default(),
        canaries: store.clone(),
        logged_errors: LoggedErrors::default(),
        caches,
        pending_writes: cache::PendingWrites::default(),
        prepared: reconcile::PreparedAnalyses::default(),
        reconcile_locks: express::ReconcileLocks::default(),
    });
    let ready = Arc::new(AtomicBool::new(false));
    let server = serve(config.listen, ctx.clone(), ready.clone()).await?;

    // With leader election, wait as a standby (ready, so rolling updates of the controller are
    // not held up) until this replica holds the Lease.
    let mut leadership = None;
    if let Some(election) = &config.leader_election {
        let leadership::Leadership {
            mut is_leader,
            task,
        } = leadership::join(client.clone(), election).await?;
        ready.store(true, Ordering::SeqCst);
        info!(
            identity = election.identity,
            lease = LEASE_NAME,
            namespace = election.namespace,
            "standby: waiting for the lease"
        );
        loop {
            if *is_leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = is_leader.changed() => {
                    if changed.is_err() {
                        return Err(Error::Invalid("leader election stopped".into()));
                    }
                }
                _ = termination() => {
                    drop(is_leader);
                    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
                    server.abort();
                    info!("controller stopped while standby");
                    return Ok(());
                }
            }
        }
        ready.store(false, Ordering::SeqCst);
        info!(
            identity = election.identity,
            "leader: starting the controller"
        );
        leadership = Some((is_leader, task));
    }
    let stop = Arc::new(std::sync::Mutex::new(Stop::Signal));
    let shutdown = {
        let stop = stop.clone();
        let lost = leadership.as_ref().map(|(is_leader, _)| is_leader.clone());
        async move {
            tokio::select! {
                _ = termination() => {}
                _ = leadership_lost(lost) => {
                    *stop.lock().unwrap_or_else(|e| e.into_inner()) = Stop::LostLeadership;
                    warn!("lost the lease: stopping so that this replica restarts as a standby");
                }
            }
        }
    };

    // A change of an object a Canary reads (its Deployments, HPA, templates, routing
    // objects) wakes that Canary.
    let controller = controller
        .reconcile_on(cache_changes)
        .graceful_shutdown_on(shutdown);
    let readiness = tokio::spawn({
        let ready = ready.clone();
        let caches_ready = ctx.clone();
        async move {
            // The store's ready signal wakes only its latest waiter (kube-runtime keeps one
            // waker per oneshot, and the controller's own runner waits on it too); the value is
            // remembered, so asking again after a short wait sees it.
            loop {
                match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        if let Err(e) = caches_ready.caches.wait_until_ready().await {
                            warn!(error = %e, "a cache stopped before it was filled");
                            return;
                        }
                        ready.store(true, Ordering::SeqCst);
                        info!("caches synced; ready");
                        return;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "the Canary cache stopped before it was filled");
                        return;
                    }
                    Err(_) => continue,
                }
            }
        }
    });
    info!(listen = %config.listen, namespace = ?config.namespace, "controller started");
    // Nothing is planned from a cache still filling (a Deployment not listed yet would look
    // deleted).
    let synced = tokio::select! {
        synced = ctx.caches.wait_until_ready() => synced.is_ok(),
        _ = termination() => false,
    };
    // Manual requests are answered beside the queue (see `express`); the queue's own
    // reconcile follows and finds them answered.
    let express = express::serve(express_queue, {
        let ctx = ctx.clone();
        move |object| {
            let ctx = ctx.clone();
            async move {
                let Some(canary) = ctx.canaries.get(&object) else {
                    return;
                };
                if !express::awaits_answer(&canary) {
                    return;
                }
                debug!(
                    namespace = object.namespace,
                    canary = object.name,
                    "manual request: reconciling ahead of the queue"
                );
                if let Err(error) = reconcile(canary.clone(), ctx.clone()).await {
                    // Logged; the queue's reconcile of the same event retries it.
                    error_policy(canary, &error, ctx);
                }
            }
        }
    });
    let run = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                // Logged by `error_policy`, once per change.
                Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "reconcile error"),
            }
        });
    // The lane ends with the Canaries' watch, which the queue owns.
    let run = futures::future::join(run, express);
    tokio::select! {
        _ = run, if synced => {}
        _ = leadership_lost(leadership.as_ref().map(|(is_leader, _)| is_leader.clone())) => {
            // Another replica may lead already: a reconcile still waiting on a slow query must
            // not act after it. Dropping the run cancels reconciles at their next await; what
            // they did not finish, the new leader plans again from status.
            *stop.lock().unwrap_or_else(|e| e.into_inner()) = Stop::LostLeadership;
            warn!("lost the lease: reconciles in progress cancelled");
        }
    }
    readiness.abort();
    server.abort();
    if let Some((is_leader, task)) = leadership {
        // Closing the channel releases the Lease, so a standby takes over at once.
        drop(is_leader);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    info!("controller stopped");
    match *stop.lock().unwrap_or_else(|e| e.into_inner()) {
        Stop::Signal => Ok(()),
        Stop::LostLeadership => Err(Error::Invalid(
            "lost the leader lease; restart to rejoin as a standby".into(),
        )),
    }
}

/// Resolves when this replica no longer holds the Lease (never without leader election).
async fn leadership_lost(is_leader: Option<tokio::sync::watch::Receiver<bool>>) {
    match is_leader {
        Some(mut is_leader) => loop {
            if is_leader.changed().await.is_err() || !*is_leader.borrow() {
                return;
            }
        },
        None => std::future::pending().await,
    }
}

async fn serve(
    listen: SocketAddr,
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State((ctx, _)): State<(Arc<Context>, Arc<AtomicBool>)>| async move {
                    ctx.metrics.encode()
                },
            ),
        )
        .route(
            "/healthz",
            get(
                |State((ctx, _)): State<(Arc<Context>, Arc<AtomicBool>)>| async move {
                    match ctx.liveness.check(std::time::Instant::now()) {
                        Ok(()) => (StatusCode::OK, "ok".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                },
            ),
        )
        .route(
            "/readyz",
            get(
                |State((_, ready)): State<(Arc<Context>, Arc<AtomicBool>)>| async move {
                    if ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
                    }
                },
            ),
        )
        .with_state((ctx, ready));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {listen}: {e}")))?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "the metrics server stopped");
        }
    }))
}

/// The Canaries of `namespace` for which `concerns` holds.
fn canaries_where(
    store: &Store<Canary>,
    namespace: Option<&str>,
    concerns: impl Fn(&Canary) -> bool,
) -> Vec<ObjectRef<Canary>> {
    store
        .state()
        .into_iter()
        .filter(|c| c.namespace().as_deref() == namespace && concerns(c))
        .map(|c| ObjectRef::from_obj(&*c))
        .collect()
}

/// The names of the Canaries an object's owner references name.
fn owning_canaries(object: &impl Resource) -> Vec<&str> {
    object
        .owner_references()
        .iter()
        .filter(|o| o.kind == "Canary")
        .map(|o| o.name.as_str())
        .collect()
}

/// The Canaries a Deployment concerns: its target, or one of its managed Deployments.
fn canaries_deploying(store: &Store<Canary>, deployment: &Deployment) -> Vec<ObjectRef<Canary>> {
    let name = deployment.name_any();
    let owners = owning_canaries(deployment);
    canaries_where(store, deployment.namespace().as_deref(), |c| {
        c.spec.target_ref.name == name || owners.contains(&c.name_any().as_str())
    })
}

/// The Canaries of `namespace` whose rollout writes `object` (`Kind/name`).
fn canaries_naming(store: &Store<Canary>, namespace: &str, object: &str) -> Vec<ObjectRef<Canary>> {
    canaries_where(store, Some(namespace), |c| {
        crate::routing::ownership::wanted_objects(c).contains(object)
    })
}

/// The Canaries an HPA concerns: it scales their target, their `spec.autoscalerRef` names it,
/// or it is the one derived for them.
fn canaries_autoscaled_by(
    store: &Store<Canary>,
    hpa: &HorizontalPodAutoscaler,
) -> Vec<ObjectRef<Canary>> {
    let name = hpa.name_any();
    let scales = hpa
        .spec
        .as_ref()
        .map(|s| s.scale_target_ref.name.clone())
        .unwrap_or_default();
    let owners = owning_canaries(hpa);
    canaries_where(store, hpa.namespace().as_deref(), |c| {
        c.spec.target_ref.name == scales
            || c.spec
                .autoscaler_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
            || owners.contains(&c.name_any().as_str())
    })
}

/// The Canaries (in `namespace`, if given) whose analysis names template `name` of that scope.
fn canaries_using(
    store: &kube::runtime::reflector::Store<Canary>,
    namespace: Option<&str>,
    name: &str,
    cluster_scope: bool,
) -> Vec<ObjectRef<Canary>> {
    store
        .state()
        .into_iter()
        .filter(|c| namespace.is_none() || c.namespace().as_deref() == namespace)
        .filter(|c| {
            c.spec
                .template_refs()
                .iter()
                .any(|t| t.template_name == name && t.cluster_scope == cluster_scope)
        })
        .map(|c| ObjectRef::from_obj(&*c))
        .collect()
}

#[cfg(test)]
mod containment_tests {
    use super::{contained, panic_message};

    #[tokio::test]
    async fn a_panicking_reconcile_is_contained_and_says_why() {
        let overflow = contained(async {
            let far = jiff::Timestamp::MAX;
            // What a year-long initialDelay once did inside a reconcile.
            let _ = far + jiff::SignedDuration::from_hours(1);
        })
        .await
        .expect_err("the panic is caught");
        assert!(
            panic_message(overflow.as_ref()).contains("overflow"),
            "{}",
            panic_message(overflow.as_ref())
        );
        let formatted = contained(async { panic!("bad {}", "input") })
            .await
            .expect_err("caught");
        assert_eq!(panic_message(formatted.as_ref()), "bad input");
        assert_eq!(contained(async { 7 }).await.ok(), Some(7));
    }
}

#[cfg(test)]
mod watch_backoff_tests {
    use std::time::Duration;

    use kube::runtime::utils::Backoff;

    use super::watch_backoff;

    #[test]
    fn watches_retry_within_half_a_second_and_start_again_quickly_after_an_event() {
        // Whole milliseconds: the factor is a float, so 200 ms comes out as 200.000003 ms.
        let mut backoff = watch_backoff().map(|wait| wait.as_millis());
        let waits: Vec<u128> = backoff.by_ref().take(6).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500, 500]);
        // Errors never end the watches: the waits go on at the cap.
        assert_eq!(backoff.nth(1_000), Some(500));
        let mut backoff = watch_backoff();
        backoff.nth(10);
        backoff.reset();
        assert_eq!(
            backoff.next(),
            Some(Duration::from_millis(100)),
            "after an event"
        );
    }
}

#[cfg(test)]
mod status_writes_tests {
    use super::StatusWrites;

    #[test]
    fn a_copy_from_before_our_own_write_is_not_planned_from() {
        use crate::api::canary::{CanaryStatus, Phase};
        let writes = StatusWrites::default();
        let before = CanaryStatus {
            phase: Phase::Progressing,
            canary_weight: 10,
            ..Default::default()
        };
        let written = CanaryStatus {
            phase: Phase::RolledBack,
            ..before.clone()
        };
        assert!(
            !writes.is_stale("shop", "web", &before),
            "nothing written yet"
        );
        writes.written_over("shop", "web", before.clone());
        // Any copy still showing the replaced status is stale: the very one planned from, or
        // a later one whose annotations or spec changed meanwhile.
        assert!(writes.is_stale("shop", "web", &before));
        assert!(
            writes.is_stale("shop", "web", &before),
            "until the cache catches up"
        );
        assert!(!writes.is_stale("other", "web", &before), "another Canary");
        // The cache caught up: planning goes on, and the write is forgotten.
        assert!(!writes.is_stale("shop", "web", &written));
        assert!(
            !writes.is_stale("shop", "web", &before),
            "forgotten once seen past"
        );
        writes.written_over("shop", "web", written.clone());
        writes.forget("shop", "web");
        assert!(!writes.is_stale("shop", "web", &written), "deleted Canary");
    }
}

#[cfg(test)]
mod wake_tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn canary() -> Canary {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "canary.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop", "generation": 3,
                         "annotations": {"team": "payments"}, "finalizers": [FINALIZER]},
            "spec": {"targetRef": {"name": "web"}, "service": {"port": 80}},
        }))
        .expect("a minimal Canary")
    }

    #[test]
    fn only_changes_that_reconcile_acts_on_wake_a_canary() {
        let before = wakes_canary(&canary());
        let changes: Vec<(&str, fn(&mut Canary), bool)> = vec![
            (
                "a status write",
                |c| {
                    c.status = Some(CanaryStatus {
                        canary_weight: 20,
                        message: Some("weight 20".into()),
                        ..CanaryStatus::default()
                    })
                },
                false,
            ),
            (
                "a new resourceVersion",
                |c| c.metadata.resource_version = Some("99".into()),
                false,
            ),
            ("a spec change", |c| c.metadata.generation = Some(4), true),
            (
                "a manual request",
                |c| {
                    c.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert("request.canary.dev/1-1".into(), "abort".into());
                },
                true,
            ),
            (
                "a label",
                |c| {
                    c.metadata
                        .labels
                        .get_or_insert_default()
                        .insert("tier".into(), "web".into());
                },
                true,
            ),
            (
                "the finalizer removed",
                |c| c.metadata.finalizers = None,
                true,
            ),
            (
                "deletion",
                |c| c.metadata.deletion_timestamp = Some(Time(Default::default())),
                true,
            ),
        ];
        for (change, apply, wakes) in changes {
            let mut changed = canary();
            apply(&mut changed);
            assert_eq!(wakes_canary(&changed) != before, wakes, "{change}");
        }
    }
}
