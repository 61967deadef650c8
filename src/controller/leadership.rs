//! Leader election: the replica holding the Lease `canary-controller` runs the controller, the
//! others wait as standbys and take over when the Lease is released or expires.
//!
//! kube-lease-manager keeps and renews the Lease, but a standby of its own only looks at the
//! Lease again when the expiry it last saw has passed: up to `LEASE_SECONDS - grace` (10 s)
//! after a leader that stopped on SIGTERM had already released it. So a standby here also
//! watches the Lease, and a release seen on the watch makes it look at once.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{Error, LeaderElection, reconcile, watch_backoff};

/// The Lease's name.
pub const LEASE_NAME: &str = "canary-controller";
/// How long a Lease is valid without renewal; a standby takes over after this at worst.
const LEASE_SECONDS: u64 = 15;
/// How long before expiry the leader renews.
const RENEW_BEFORE_EXPIRY_SECONDS: u64 = 5;
/// Wait after a failed Lease request (API server unreachable) before trying again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// This replica's place in the election: `is_leader` follows the Lease; dropping every
/// receiver of it makes the task release the Lease (if held) and end.
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// Joins the election for the Lease in `election.namespace`.
pub async fn join(client: Client, election: &LeaderElection) -> Result<Leadership, Error> {
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_BEFORE_EXPIRY_SECONDS)
        .with_field_manager(lease_field_manager(&election.identity))
        .build()
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "leader election: Lease {LEASE_NAME} in namespace {}: {e}; check that the \
                 namespace exists and the controller may get, create, patch, list and watch \
                 Leases there",
                election.namespace
            ))
        })?;
    let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
    let (state, is_leader) = watch::channel(false);
    let task = tokio::spawn(hold(manager, leases, state));
    Ok(Leadership { is_leader, task })
}

/// Keeps the Lease (renewing it while this replica leads, taking it when it is free) and
/// publishes whether this replica leads, until every receiver of `state` is gone; then
/// releases the Lease so that a standby takes over at once.
async fn hold(manager: LeaseManager, leases: Api<Lease>, state: watch::Sender<bool>) {
    let by_name = watcher::Config::default().fields(&format!("metadata.name={LEASE_NAME}"));
    let mut releases = watcher(leases, by_name)
        .backoff(watch_backoff())
        .applied_objects()
        .filter(|lease| std::future::ready(matches!(lease, Ok(lease) if is_released(lease))))
        .boxed();
    let mut leading = false;
    loop {
        tokio::select! {
            biased;
            _ = state.closed() => break,
            changed = manager.changed() => match changed {
                Ok(now_leading) => {
                    leading = now_leading;
                    if state.send(now_leading).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, lease = LEASE_NAME, "leader election: retrying");
                    tokio::select! {
                        _ = state.closed() => break,
                        _ = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                    }
                }
            },
            // Only a standby: the leader's own renewals show up here too. Interrupting
            // `changed()` is safe: it only re-reads the Lease or takes a free one, and a take
            // that was interrupted is found again on the next read.
            Some(_) = releases.next(), if !leading => {
                debug!(lease = LEASE_NAME, "the Lease was released: looking at it now");
                // On a Lease this replica does not hold and that has not expired, `release`
                // writes nothing and re-reads the Lease (the only way to make the manager
                // re-read it before the expiry it last saw).
                if let Err(e) = manager.release().await {
                    warn!(error = %e, lease = LEASE_NAME, "leader election: reading the Lease");
                }
            }
        }
    }
    if let Err(e) = manager.release().await {
        warn!(error = %e, lease = LEASE_NAME, "could not release the Lease: a standby takes over when it expires");
    }
}

/// The field manager of this replica's Lease writes. One per replica: a replica takes a free
/// Lease by server-side apply without force, and only a holder owned by another manager makes
/// the API server refuse (409) the second of two replicas taking it at the same moment. With
/// one manager for all, both writes succeeded and both replicas led until the next renewal.
fn lease_field_manager(identity: &str) -> String {
    /// The API server's limit on a field manager's length.
    const MAX_LENGTH: usize = 128;
    let name = format!("{}-{identity}", reconcile::FIELD_MANAGER);
    // A pod's name ends with what sets it apart from its siblings: keep the end.
    let excess = name.len().saturating_sub(MAX_LENGTH);
    let start = (excess..name.len())
        .find(|&i| name.is_char_boundary(i))
        .unwrap_or(name.len());
    name[start..].to_string()
}

/// Whether nobody holds `lease` (its holder released it, or it was just created).
fn is_released(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};

    use super::{is_released, lease_field_manager};

    #[test]
    fn each_replica_writes_the_lease_as_its_own_field_manager() {
        let long = format!("{}-7d9f-abc", "x".repeat(200));
        for (identity, manager) in [
            (
                "canary-7d9f-abc",
                "canary-controller-canary-7d9f-abc".to_string(),
            ),
            (
                "canary-7d9f-xyz",
                "canary-controller-canary-7d9f-xyz".to_string(),
            ),
            (&long, format!("{}-7d9f-abc", "x".repeat(119))),
        ] {
            assert_eq!(lease_field_manager(identity), manager, "{identity}");
            assert!(lease_field_manager(identity).len() <= 128);
        }
    }

    #[test]
    fn a_lease_without_a_holder_is_released() {
        let lease = |holder: Option<&str>| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        for (lease, released) in [
            (lease(Some("canary-7d9f-abc")), false),
            (lease(None), true),
            (lease(Some("")), true),
            (Lease::default(), true),
        ] {
            assert_eq!(is_released(&lease), released, "{lease:?}");
        }
    }
}
