//! Measurements taken off the reconcile path.
//!
//! A measurement waits on Prometheus (up to the metric's timeout) and then on its conditions,
//! while kube-runtime runs one reconcile per Canary at a time: a reconcile that awaited its
//! measurements would keep an abort waiting for them. So a reconcile only *starts* the due
//! measurements, each as a task owned by the controller, and returns; a finished task triggers
//! a reconcile of its Canary, which hands the result to `rollout::plan` (which stays pure).
//!
//! A measurement is keyed by the analysis run it belongs to (the run's start time tells a new
//! rollout's run from an old one of the same name) and by the time it was due, so a result is
//! only ever recorded into the run and the slot it was taken for: once the run ended, was
//! replaced by a newer rollout's, or the slot was filled, the key is no longer due and the
//! task is cancelled or its result dropped. Tasks of a deleted Canary are cancelled, and so
//! are all of them when the controller stops (losing leadership included): they hold nothing
//! of the controller but what they measure with.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use tokio::task::AbortHandle;

use crate::analysis::compare::CounterReadings;
use crate::api::canary::Canary;
use crate::rollout::NewMeasurement;

use super::ReadingsKey;

/// One due measurement of one metric of one analysis run of one Canary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MeasurementKey {
    pub namespace: String,
    pub canary: String,
    /// The Canary's uid: a Canary deleted and created again under its name is another one.
    pub uid: String,
    pub run: String,
    /// When the run started: tells this rollout's run from an earlier one of the same name.
    pub run_started_at: String,
    pub metric: String,
    /// When the measurement was due (the metric's `nextMeasurementAt`).
    pub due: String,
}

/// What a measurement task hands back.
#[derive(Clone, Debug)]
pub struct Finished {
    pub measurement: NewMeasurement,
    /// For a compare metric: the counter readings its interval ended on, for the next
    /// interval to start from once this one is recorded.
    pub readings: Option<(ReadingsKey, CounterReadings)>,
}

enum Entry {
    /// The task, and a number that tells it from an earlier, cancelled task of the same key
    /// that finished before its cancellation took effect.
    InFlight(AbortHandle, u64),
    Finished(Box<Finished>),
}

/// The measurements in flight and the finished ones not yet picked up by a reconcile.
pub struct Measurements {
    entries: Arc<Mutex<BTreeMap<MeasurementKey, Entry>>>,
    finished: mpsc::UnboundedSender<ObjectRef<Canary>>,
    started: AtomicU64,
}

/// Canaries with a finished measurement to pick up (give it to `Controller::reconcile_on`).
pub type FinishedCanaries = mpsc::UnboundedReceiver<ObjectRef<Canary>>;

impl Measurements {
    pub fn new() -> (Self, FinishedCanaries) {
        let (finished, receiver) = mpsc::unbounded();
        let measurements = Self {
            entries: Arc::default(),
            finished,
            started: AtomicU64::new(0),
        };
        (measurements, receiver)
    }

    /// Starts `work` as the measurement `key` of `canary`, unless it is in flight already or
    /// finished and not yet picked up. Returns at once.
    pub fn start(
        &self,
        key: MeasurementKey,
        canary: ObjectRef<Canary>,
        work: impl Future<Output = Finished> + Send + 'static,
    ) {
        let mut entries = lock(&self.entries);
        if entries.contains_key(&key) {
            return;
        }
        let shared = Arc::downgrade(&self.entries);
        let finished = self.finished.clone();
        let task_key = key.clone();
        let number = self.started.fetch_add(1, Ordering::Relaxed);
        // Spawned under the lock, so the task cannot finish before its entry exists.
        let task = tokio::spawn(async move {
            let result = work.await;
            let Some(entries) = shared.upgrade() else {
                return;
            };
            let mut entries = lock(&entries);
            // Only if still the task in flight for its key: otherwise it was cancelled while
            // finishing, and perhaps started again.
            let current =
                matches!(entries.get(&task_key), Some(Entry::InFlight(_, n)) if *n == number);
            if current {
                entries.insert(task_key, Entry::Finished(Box::new(result)));
                drop(entries);
                // The receiver is gone only when the controller stopped.
                let _ = finished.unbounded_send(canary);
            }
        });
        entries.insert(key, Entry::InFlight(task.abort_handle(), number));
    }

    /// The result of measurement `key`, if it finished; it is handed out once.
    pub fn take_finished(&self, key: &MeasurementKey) -> Option<Finished> {
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some(Entry::Finished(_)) => match entries.remove(key) {
                Some(Entry::Finished(finished)) => Some(*finished),
                _ => None,
            },
            _ => None,
        }
    }

    /// Cancels the measurements of Canary `namespace/canary` other than `due` (their run
    /// ended, was replaced, or their slot was filled) and drops their results.
    pub fn keep_only(&self, namespace: &str, canary: &str, due: &BTreeSet<MeasurementKey>) {
        lock(&self.entries).retain(|key, entry| {
            let keep = !(key.namespace == namespace && key.canary == canary) || due.contains(key);
            if !keep && let Entry::InFlight(task, _) = entry {
                task.abort();
            }
            keep
        });
    }

    /// Cancels every measurement of a deleted Canary.
    pub fn forget(&self, namespace: &str, canary: &str) {
        self.keep_only(namespace, canary, &BTreeSet::new());
    }

    /// How many measurements are in flight.
    pub fn in_flight(&self) -> usize {
        lock(&self.entries)
            .values()
            .filter(|e| matches!(e, Entry::InFlight(..)))
            .count()
    }
}

impl Drop for Measurements {
    /// The controller stopped (a signal, or this replica lost the lease): nothing will pick
    /// the results up, and another replica may be measuring already.
    fn drop(&mut self) {
        for entry in lock(&self.entries).values() {
            if let Entry::InFlight(task, _) = entry {
                task.abort();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a map that is still consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use jiff::Timestamp;

    use super::*;
    use crate::analysis::MeasurementPhase;
    use crate::api::canary::MeasurementStatus;

    fn key(run_started_at: &str, due: &str) -> MeasurementKey {
        MeasurementKey {
            namespace: "shop".into(),
            canary: "web".into(),
            uid: "u1".into(),
            run: "background".into(),
            run_started_at: run_started_at.into(),
            metric: "success-rate".into(),
            due: due.into(),
        }
    }

    fn finished(reason: &str) -> Finished {
        Finished {
            measurement: NewMeasurement {
                run: "background".into(),
                metric: "success-rate".into(),
                measurement: MeasurementStatus {
                    time: Timestamp::UNIX_EPOCH.to_string(),
                    phase: MeasurementPhase::Successful,
                    value: None,
                    reason: reason.into(),
                },
                compare: None,
            },
            readings: None,
        }
    }

    fn web() -> ObjectRef<Canary> {
        ObjectRef::new("web").within("shop")
    }

    #[tokio::test]
    async fn a_finished_measurement_triggers_its_canary_and_is_handed_out_once() {
        let (measurements, mut triggers) = Measurements::new();
        let due = key("t0", "t1");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        measurements.start(due.clone(), web(), async move {
            let _ = released.await;
            finished("first")
        });
        // Starting it again while in flight does nothing.
        measurements.start(due.clone(), web(), async { finished("second") });
        assert_eq!(measurements.in_flight(), 1);
        assert!(
            measurements.take_finished(&due).is_none(),
            "still in flight"
        );
        release.send(()).unwrap();
        let triggered = tokio::time::timeout(Duration::from_secs(10), triggers.next())
            .await
            .expect("a trigger within 10 s");
        assert_eq!(triggered, Some(web()));
        let result = measurements.take_finished(&due).expect("finished");
        assert_eq!(result.measurement.measurement.reason, "first");
        assert!(
            measurements.take_finished(&due).is_none(),
            "handed out once"
        );
        assert_eq!(measurements.in_flight(), 0);
    }

    #[tokio::test]
    async fn measurements_no_longer_due_are_cancelled_and_their_results_dropped() {
        let (measurements, _triggers) = Measurements::new();
        let old_run = key("t0", "t1");
        let current = key("t5", "t6");
        let other_canary = MeasurementKey {
            canary: "api".into(),
            ..old_run.clone()
        };
        let (dropped, cancelled) = tokio::sync::oneshot::channel::<()>();
        measurements.start(old_run.clone(), web(), async move {
            // Never finishes; dropping it (cancellation) drops the sender.
            let _dropped = dropped;
            std::future::pending::<Finished>().await
        });
        measurements.start(current.clone(), web(), std::future::pending());
        measurements.start(other_canary.clone(), web(), std::future::pending());
        assert_eq!(measurements.in_flight(), 3);
        // A newer rollout's run of the same name: the old run's measurement goes.
        measurements.keep_only("shop", "web", &BTreeSet::from([current.clone()]));
        tokio::time::timeout(Duration::from_secs(10), cancelled)
            .await
            .expect("the old run's task is cancelled within 10 s")
            .unwrap_err();
        assert_eq!(measurements.in_flight(), 2, "another Canary's stays");
        measurements.forget("shop", "web");
        assert_eq!(measurements.in_flight(), 1);
        // Started again after being cancelled: a new task.
        measurements.start(current.clone(), web(), async { finished("again") });
        let result = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(result) = measurements.take_finished(&current) {
                    return result;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("finished within 10 s");
        assert_eq!(result.measurement.measurement.reason, "again");
    }

    #[tokio::test]
    async fn a_stopped_controller_cancels_what_it_measures() {
        let (measurements, _triggers) = Measurements::new();
        let (dropped, cancelled) = tokio::sync::oneshot::channel::<()>();
        measurements.start(key("t0", "t1"), web(), async move {
            let _dropped = dropped;
            std::future::pending::<Finished>().await
        });
        drop(measurements);
        tokio::time::timeout(Duration::from_secs(10), cancelled)
            .await
            .expect("cancelled within 10 s")
            .unwrap_err();
    }
}
