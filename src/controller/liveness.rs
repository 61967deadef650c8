//! Whether the reconcile loop makes progress, for `/healthz`.
//!
//! Answering HTTP is not being alive: a controller whose reconciles hang (or whose loop stopped
//! scheduling them) still serves `/healthz`. So reconciles report when they start and end and
//! when their Canary is due again, and `/healthz` fails, saying why, when
//! - a reconcile has run far past [`RECONCILE_TIMEOUT`] (the timeout itself could not end it:
//!   something blocks the runtime), or
//! - a Canary was due a reconcile (its requeue time, or a retry after an error) well over
//!   [`STALL_GRACE`] ago and no reconcile at all has started since: the loop stands still.
//!
//! The kubelet then restarts the controller, which continues every rollout from its status.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long one reconcile may take before it is abandoned (and retried). A reconcile reads
/// caches and the API server and writes a few objects; measurements do not run inside it.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

/// How far past its bound a reconcile, or past its due time a Canary, may be before the
/// controller counts as stalled.
pub const STALL_GRACE: Duration = Duration::from_secs(30);

type CanaryKey = (String, String);

#[derive(Default)]
struct State {
    /// Reconciles in progress, by Canary, with when they started.
    running: BTreeMap<CanaryKey, Instant>,
    /// When each Canary is due its next reconcile.
    due: BTreeMap<CanaryKey, Instant>,
    last_started: Option<Instant>,
}

/// What the reconciles reported (see the module documentation).
#[derive(Default)]
pub struct Liveness(Mutex<State>);

/// Removes its reconcile from the running ones when dropped: when the reconcile ends, is
/// cancelled or panics.
pub struct Running<'a> {
    liveness: &'a Liveness,
    key: CanaryKey,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.liveness.state().running.remove(&self.key);
    }
}

impl Running<'_> {
    /// The reconcile ended and its Canary is due again after `next` (`None`: only on a change).
    pub fn finished(self, next: Option<Duration>, now: Instant) {
        let mut state = self.liveness.state();
        match next.and_then(|next| now.checked_add(next)) {
            Some(due) => state.due.insert(self.key.clone(), due),
            None => state.due.remove(&self.key),
        };
    }
}

impl Liveness {
    /// A reconcile of `namespace/name` starts.
    pub fn started(&self, namespace: &str, name: &str, now: Instant) -> Running<'_> {
        let key = (namespace.to_string(), name.to_string());
        let mut state = self.state();
        state.due.remove(&key);
        state.running.insert(key.clone(), now);
        state.last_started = Some(now);
        Running {
            liveness: self,
            key,
        }
    }

    /// A deleted Canary is due nothing any more.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.state()
            .due
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// `Err(why)` when the reconcile loop is stalled.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let state = self.state();
        let longest_running = state
            .running
            .iter()
            .min_by_key(|(_, started)| **started)
            .map(|(key, started)| (name(key), *started));
        let most_overdue = state
            .due
            .iter()
            .min_by_key(|(_, due)| **due)
            .map(|(key, due)| (name(key), *due));
        stalled(now, longest_running, most_overdue, state.last_started)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn name((namespace, name): &CanaryKey) -> String {
    format!("{namespace}/{name}")
}

/// The liveness decision, from times alone: the longest-running reconcile (Canary, start),
/// the Canary due a reconcile the longest (Canary, due time), and when the last reconcile
/// started.
pub fn stalled(
    now: Instant,
    longest_running: Option<(String, Instant)>,
    most_overdue: Option<(String, Instant)>,
    last_started: Option<Instant>,
) -> Result<(), String> {
    if let Some((canary, started)) = longest_running {
        let running = now.saturating_duration_since(started);
        if running > RECONCILE_TIMEOUT + STALL_GRACE {
            return Err(format!(
                "stalled: the reconcile of Canary {canary} has been running for {}s, past its {}s bound: something blocks the controller",
                running.as_secs(),
                RECONCILE_TIMEOUT.as_secs()
            ));
        }
    }
    if let Some((canary, due)) = most_overdue {
        let overdue = now.saturating_duration_since(due);
        let progress_since = last_started.is_some_and(|started| started >= due);
        if overdue > STALL_GRACE && !progress_since {
            return Err(format!(
                "stalled: Canary {canary} was due a reconcile {}s ago and no reconcile has started since: the reconcile loop is not running",
                overdue.as_secs()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_is_stalled_only_when_a_reconcile_overruns_or_nothing_runs_when_due() {
        let t0 = Instant::now();
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        let web = |time| Some(("shop/web".to_string(), time));
        // (case, now, longest running since, most overdue since, last started, stalled because)
        let cases: [(&str, Instant, _, _, _, Option<&str>); 9] = [
            ("idle, nothing due", at(1000), None, None, None, None),
            (
                "idle, due later",
                at(100),
                None,
                web(at(300)),
                Some(at(0)),
                None,
            ),
            (
                "a reconcile within its bound",
                at(20),
                web(at(0)),
                None,
                Some(at(0)),
                None,
            ),
            (
                "a reconcile past its timeout, within the grace",
                at(59),
                web(at(0)),
                None,
                Some(at(0)),
                None,
            ),
            (
                "a reconcile far past its bound",
                at(61),
                web(at(0)),
                None,
                Some(at(0)),
                Some("has been running for 61s, past its 30s bound"),
            ),
            (
                "due a little while ago",
                at(329),
                None,
                web(at(300)),
                Some(at(0)),
                None,
            ),
            (
                "due long ago, nothing started since",
                at(331),
                None,
                web(at(300)),
                Some(at(0)),
                Some("was due a reconcile 31s ago and no reconcile has started since"),
            ),
            (
                "due long ago, but other reconciles run: this one is queued behind them",
                at(400),
                None,
                web(at(300)),
                Some(at(350)),
                None,
            ),
            (
                "due long ago and never a reconcile",
                at(400),
                None,
                web(at(300)),
                None,
                Some("no reconcile has started since"),
            ),
        ];
        for (case, now, running, due, last, expected) in cases {
            let verdict = stalled(now, running, due, last);
            match (expected, verdict) {
                (None, Ok(())) => {}
                (Some(why), Err(message)) => assert!(
                    message.contains(why) && message.contains("shop/web"),
                    "{case}: {message}"
                ),
                (expected, verdict) => {
                    panic!("{case}: expected stalled={expected:?}, got {verdict:?}")
                }
            }
        }
    }

    #[test]
    fn reconciles_report_start_end_and_when_they_are_due_again() {
        let liveness = Liveness::default();
        let t0 = Instant::now();
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        let running = liveness.started("shop", "web", at(0));
        assert!(liveness.check(at(10)).is_ok());
        assert!(
            liveness.check(at(100)).is_err(),
            "a reconcile that never ends"
        );
        running.finished(Some(Duration::from_secs(5)), at(1));
        assert!(
            liveness.check(at(30)).is_ok(),
            "due at 6 s, within the grace"
        );
        assert!(liveness.check(at(40)).is_err(), "due at 6 s, nothing since");
        // A cancelled reconcile (dropped without finishing) is not running any more.
        drop(liveness.started("shop", "web", at(41)));
        assert!(
            liveness.check(at(200)).is_ok(),
            "not due again until it changes"
        );
        liveness
            .started("shop", "web", at(201))
            .finished(Some(Duration::from_secs(1)), at(201));
        liveness.forget("shop", "web");
        assert!(
            liveness.check(at(1000)).is_ok(),
            "a deleted Canary is due nothing"
        );
    }
}
