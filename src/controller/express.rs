//! Manual requests (promote, abort, pause, …) skip the reconcile queue.
//!
//! Once all its slots are busy, kube-runtime's runner takes the Canaries that are due in no
//! particular order (they wait in a hash set), so with a hundred Canaries rolling at once an
//! `abort` waited up to 14 s behind routine measurements. A Canary whose annotations hold a
//! request not answered yet is reconciled here instead, as soon as its watch event arrives,
//! beside the queue. [`ReconcileLocks`] keeps this reconcile and the queue's reconcile of the
//! same Canary from ever running at the same time.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use futures::channel::mpsc;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::OwnedMutexGuard;

use crate::api::canary::{Canary, requests};

/// How many manual requests are reconciled at once, beside the queue's own slots. Requests
/// are rare; this bounds a burst (e.g. `canary abort` of every Canary of a namespace).
const CONCURRENT_REQUESTS: usize = 4;

/// Whether `canary` holds a manual request that its status does not answer yet. Invalid
/// requests are reported by the queue's reconcile and left for a human: nothing to hurry.
pub fn awaits_answer(canary: &Canary) -> bool {
    canary.metadata.deletion_timestamp.is_none()
        && requests(canary.annotations())
            .into_iter()
            .flatten()
            .any(|request| !request.answered_in(canary.status.as_ref()))
}

/// One lock per Canary, held for the whole of each of its reconciles.
#[derive(Default)]
pub struct ReconcileLocks(Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>);

/// The right to reconcile one Canary; the next one waits until it is dropped.
pub struct ReconcileTurn<'a> {
    guard: Option<OwnedMutexGuard<()>>,
    locks: &'a ReconcileLocks,
    key: (String, String),
}

impl ReconcileLocks {
    /// Waits until no other reconcile of `namespace`/`name` runs.
    pub async fn turn(&self, namespace: &str, name: &str) -> ReconcileTurn<'_> {
        let key = (namespace.to_string(), name.to_string());
        let lock = self.entries().entry(key.clone()).or_default().clone();
        ReconcileTurn {
            guard: Some(lock.lock_owned().await),
            locks: self,
            key,
        }
    }

    /// How many Canaries have a lock (held or waited for).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ReconcileTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Forgotten when nobody holds or waits for it, so deleted Canaries leave nothing.
        // Cloning an entry happens under the same mutex, so the count cannot grow meanwhile.
        let mut entries = self.locks.entries();
        if let Entry::Occupied(entry) = entries.entry(self.key.clone())
            && Arc::strong_count(entry.get()) == 1
        {
            entry.remove();
        }
    }
}

/// Where Canaries with a request come in: fed from the Canaries' watch.
#[derive(Clone)]
pub struct ExpressLane {
    sender: mpsc::UnboundedSender<ObjectRef<Canary>>,
    /// Canaries queued or being reconciled here, and whether a newer event came meanwhile.
    queued: Arc<Mutex<HashMap<ObjectRef<Canary>, bool>>>,
}

/// What [`serve`] takes the Canaries from.
pub struct ExpressQueue {
    receiver: mpsc::UnboundedReceiver<ObjectRef<Canary>>,
    queued: Arc<Mutex<HashMap<ObjectRef<Canary>, bool>>>,
}

pub fn lane() -> (ExpressLane, ExpressQueue) {
    let (sender, receiver) = mpsc::unbounded();
    let queued = Arc::default();
    (
        ExpressLane {
            sender,
            queued: Arc::clone(&queued),
        },
        ExpressQueue { receiver, queued },
    )
}

impl ExpressLane {
    /// Queues `canary` if it holds an unanswered request. A Canary already queued is not
    /// queued twice; one being reconciled is reconciled once more afterwards (a second
    /// request may have come after its copy was read).
    pub fn offer(&self, canary: &Canary) {
        if !awaits_answer(canary) {
            return;
        }
        let object = ObjectRef::from_obj(canary);
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        match queued.entry(object.clone()) {
            Entry::Occupied(mut again) => *again.get_mut() = true,
            Entry::Vacant(entry) => {
                entry.insert(false);
                // Closed only when the lane stops, and then nothing is reconciled anyway.
                let _ = self.sender.unbounded_send(object);
            }
        }
    }
}

/// Runs `reconcile` for each Canary offered, up to [`CONCURRENT_REQUESTS`] at once, until
/// every [`ExpressLane`] is dropped.
pub async fn serve<F, Fut>(queue: ExpressQueue, reconcile: F)
where
    F: Fn(ObjectRef<Canary>) -> Fut,
    Fut: Future<Output = ()>,
{
    let ExpressQueue { receiver, queued } = queue;
    let reconcile = &reconcile;
    receiver
        .map(|object| {
            let queued = Arc::clone(&queued);
            async move {
                loop {
                    reconcile(object.clone()).await;
                    let mut queued = queued.lock().unwrap_or_else(PoisonError::into_inner);
                    match queued.get_mut(&object) {
                        Some(again) if *again => *again = false,
                        _ => {
                            queued.remove(&object);
                            break;
                        }
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENT_REQUESTS)
        .for_each(|()| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::canary::{CanaryStatus, RequestAction, RequestStatus};

    fn canary(
        name: &str,
        annotations: &[(&str, &str)],
        answered: &[(&str, RequestAction)],
    ) -> Canary {
        let mut canary: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "canary.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRef": {"name": "web"}, "service": {"port": 80}},
        }))
        .expect("a minimal Canary");
        canary.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        canary.status = Some(CanaryStatus {
            recent_requests: answered
                .iter()
                .map(|(id, action)| RequestStatus {
                    id: id.to_string(),
                    action: *action,
                    accepted: true,
                    message: String::new(),
                    at: "2026-12-07T00:00:00Z".into(),
                })
                .collect(),
            ..CanaryStatus::default()
        });
        canary
    }

    #[test]
    fn only_unanswered_valid_requests_of_live_canaries_are_hurried() {
        use RequestAction::*;
        let cases: Vec<(&str, Canary, bool)> = vec![
            ("no annotations", canary("a", &[], &[]), false),
            (
                "an unrelated annotation",
                canary("a", &[("team", "payments")], &[]),
                false,
            ),
            (
                "an abort not answered yet",
                canary("a", &[("request.canary.dev/1-1", "abort")], &[]),
                true,
            ),
            (
                "the single-slot form",
                canary("a", &[("canary.dev/request", "promote:7")], &[]),
                true,
            ),
            (
                "an answered abort",
                canary(
                    "a",
                    &[("request.canary.dev/1-1", "abort")],
                    &[("1-1", Abort)],
                ),
                false,
            ),
            (
                "the same id answered for another action",
                canary(
                    "a",
                    &[("request.canary.dev/1-1", "abort")],
                    &[("1-1", Pause)],
                ),
                true,
            ),
            (
                "one answered, one not",
                canary(
                    "a",
                    &[
                        ("request.canary.dev/1-1", "pause"),
                        ("request.canary.dev/1-2", "resume"),
                    ],
                    &[("1-1", Pause)],
                ),
                true,
            ),
            (
                "an invalid request (reported by the queue, left for a human)",
                canary("a", &[("request.canary.dev/1-1", "explode")], &[]),
                false,
            ),
        ];
        for (case, canary, hurried) in cases {
            assert_eq!(awaits_answer(&canary), hurried, "{case}");
        }
        let mut deleted = canary("a", &[("request.canary.dev/1-1", "abort")], &[]);
        deleted.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!awaits_answer(&deleted), "a Canary being deleted");
    }

    #[tokio::test]
    async fn a_request_is_reconciled_once_and_again_only_if_another_came_meanwhile() {
        let (lane, queue) = lane();
        let abort = canary("web", &[("request.canary.dev/1-1", "abort")], &[]);
        let reconciled = Arc::new(AtomicUsize::new(0));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn({
            let reconciled = Arc::clone(&reconciled);
            serve(queue, move |object| {
                let reconciled = Arc::clone(&reconciled);
                let started_tx = started_tx.clone();
                let mut release = release.clone();
                async move {
                    assert_eq!(object.name, "web");
                    reconciled.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).expect("the test listens");
                    release.wait_for(|go| *go).await.expect("the test releases");
                }
            })
        });
        // Ignored: nothing to answer.
        lane.offer(&canary("quiet", &[], &[]));
        lane.offer(&abort);
        tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .expect("the request is reconciled at once");
        // Two more events while it runs: one more reconcile, not two.
        lane.offer(&abort);
        lane.offer(&abort);
        release_tx.send(true).expect("the lane listens");
        tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .expect("reconciled once more for the events that came meanwhile");
        drop(lane);
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the lane stops when its sender is dropped")
            .expect("no panic");
        assert_eq!(reconciled.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn reconciles_of_one_canary_take_turns_and_leave_no_lock_behind() {
        let locks = Arc::new(ReconcileLocks::default());
        let first = locks.turn("shop", "web").await;
        let waiting = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move {
                let _second = locks.turn("shop", "web").await;
            }
        });
        // Another Canary is not held up.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.turn("shop", "api"))
            .await
            .expect("another Canary's turn is free");
        drop(other);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the second turn waits for the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the second turn comes once the first ends")
            .expect("no panic");
        assert!(locks.is_empty(), "no lock is kept for nobody");
    }
}
