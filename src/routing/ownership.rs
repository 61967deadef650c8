//! One Canary per object. Two Canaries that name the same routing object (a copied manifest)
//! or the same target Deployment would each write its own weights and subsets over the
//! other's, and the one deleted would hand the service "back" to its own pods. So every object
//! a Canary's rollout writes has one owner: the Canary that claimed it first (it lists it in
//! `status.claimedObjects`), or, when both or neither claimed it (created at the same moment),
//! the older one. Any other is refused and changes nothing, not even on deletion.
//!
//! The decision is pure: it reads the Canaries of the namespace as the controller's cache
//! holds them, so it costs no request.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::router_for;
use crate::api::canary::Canary;

/// What one Canary wants and holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub name: String,
    /// Seconds since the epoch (the API server's creation time); `None` sorts first.
    pub created: Option<i64>,
    /// Being deleted: it still owns what it holds until its finalizer has handed it back.
    pub deleting: bool,
    /// The objects its status says it claimed.
    pub holds: BTreeSet<String>,
    /// The objects its spec names: `Kind/name`.
    pub wants: BTreeSet<String>,
}

impl Claimant {
    pub fn of(canary: &Canary) -> Self {
        Self {
            name: canary.name_any(),
            created: canary
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            deleting: canary.metadata.deletion_timestamp.is_some(),
            holds: canary
                .status
                .as_ref()
                .map(|s| s.claimed_objects.iter().cloned().collect())
                .unwrap_or_default(),
            wants: wanted_objects(canary),
        }
    }

    /// Whether `self` owns `object` rather than `other`, both wanting it.
    fn precedes(&self, other: &Claimant, object: &str) -> bool {
        match (self.holds.contains(object), other.holds.contains(object)) {
            (true, false) => true,
            (false, true) => false,
            _ => (self.created, &self.name) < (other.created, &other.name),
        }
    }
}

/// The objects a Canary's rollout writes (its target Deployment, whose replicas it sets, and
/// its router's objects), as `Kind/name`, the form `status.claimedObjects` lists.
pub fn wanted_objects(canary: &Canary) -> BTreeSet<String> {
    let mut objects = BTreeSet::from([object_key("Deployment", &canary.spec.target_ref.name)]);
    objects.extend(
        router_for(&canary.spec)
            .objects()
            .into_iter()
            .map(|o| object_key(&o.kind, &o.name)),
    );
    objects
}

/// How an object is named in claims: `Kind/name`.
pub fn object_key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// An object another Canary owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `Kind/name`.
    pub object: String,
    pub owner: String,
    pub owner_deleting: bool,
}

/// The objects `me` wants that another Canary of its namespace (`others`) owns.
pub fn conflicts(me: &Claimant, others: &[Claimant]) -> Vec<Conflict> {
    let mut found = Vec::new();
    for object in &me.wants {
        let owner = others
            .iter()
            .filter(|o| o.name != me.name)
            // A Canary being deleted still owns what it holds, not what it only wants.
            .filter(|o| o.wants.contains(object) && (!o.deleting || o.holds.contains(object)))
            .filter(|o| o.precedes(me, object))
            .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        if let Some(owner) = owner {
            found.push(Conflict {
                object: object.clone(),
                owner: owner.name.clone(),
                owner_deleting: owner.deleting,
            });
        }
    }
    found
}

/// What a refused Canary still claims: what it holds, still wants and nobody else owns (the
/// loser of a simultaneous claim lets go, so that exactly one owner remains).
pub fn kept_when_refused(me: &Claimant, conflicts: &[Conflict]) -> Vec<String> {
    me.holds
        .iter()
        .filter(|o| me.wants.contains(*o) && !conflicts.iter().any(|c| &c.object == *o))
        .cloned()
        .collect()
}

/// What a refused Canary says: which objects, whose, and what to do.
pub fn refusal(me: &str, conflicts: &[Conflict]) -> String {
    let owned: Vec<String> = conflicts
        .iter()
        .map(|c| {
            let (kind, name) = c.object.split_once('/').unwrap_or(("", &c.object));
            let going = if c.owner_deleting {
                " (being deleted)"
            } else {
                ""
            };
            format!("{kind} {name} belongs to Canary {}{going}", c.owner)
        })
        .collect();
    format!(
        "{}: Canary {me} changes nothing while another Canary owns what it names. Give it routing objects and a target of its own (spec.trafficRouting, spec.targetRef), or delete the other Canary",
        owned.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimant(name: &str, created: i64, holds: &[&str], wants: &[&str]) -> Claimant {
        Claimant {
            name: name.into(),
            created: Some(created),
            deleting: false,
            holds: holds.iter().map(|s| s.to_string()).collect(),
            wants: wants.iter().map(|s| s.to_string()).collect(),
        }
    }

    const VS: &str = "VirtualService/web";
    const DR: &str = "DestinationRule/web";

    #[test]
    fn the_first_claimant_owns_an_object_and_a_later_one_is_refused() {
        let a = claimant("web", 100, &[VS, DR], &[VS, DR, "Deployment/web"]);
        let b = claimant("web-copy", 200, &[], &[VS, DR, "Deployment/other"]);
        assert!(conflicts(&a, std::slice::from_ref(&b)).is_empty());
        let refused = conflicts(&b, std::slice::from_ref(&a));
        assert_eq!(
            refused
                .iter()
                .map(|c| c.object.as_str())
                .collect::<Vec<_>>(),
            [DR, VS]
        );
        assert!(refused.iter().all(|c| c.owner == "web"));
    }

    #[test]
    fn a_claim_held_wins_over_age_and_age_breaks_ties() {
        let table = [
            // (a holds, b holds, a older) -> a owns
            (true, false, false, true),
            (false, true, true, false),
            (true, true, true, true),
            (true, true, false, false),
            (false, false, true, true),
            (false, false, false, false),
        ];
        for (a_holds, b_holds, a_older, a_owns) in table {
            let holds = |h: bool| if h { vec![VS] } else { vec![] };
            let (ta, tb) = if a_older { (1, 2) } else { (2, 1) };
            let a = claimant("a", ta, &holds(a_holds), &[VS]);
            let b = claimant("b", tb, &holds(b_holds), &[VS]);
            let a_refused = !conflicts(&a, std::slice::from_ref(&b)).is_empty();
            let b_refused = !conflicts(&b, std::slice::from_ref(&a)).is_empty();
            assert_eq!(
                (a_refused, b_refused),
                (!a_owns, a_owns),
                "a holds {a_holds}, b holds {b_holds}, a older {a_older}"
            );
        }
    }

    #[test]
    fn the_loser_of_a_simultaneous_claim_lets_go_of_what_it_lost_only() {
        let a = claimant("a", 1, &[VS, DR], &[VS, DR]);
        let b = claimant("b", 2, &[VS, "Deployment/b"], &[VS, "Deployment/b"]);
        let refused = conflicts(&b, std::slice::from_ref(&a));
        assert_eq!(kept_when_refused(&b, &refused), ["Deployment/b"]);
    }

    #[test]
    fn same_age_is_decided_by_name_so_exactly_one_owns() {
        let a = claimant("a", 5, &[], &[VS]);
        let b = claimant("b", 5, &[], &[VS]);
        assert!(conflicts(&a, std::slice::from_ref(&b)).is_empty());
        assert_eq!(conflicts(&b, std::slice::from_ref(&a)).len(), 1);
    }

    #[test]
    fn a_canary_being_deleted_keeps_what_it_holds_until_it_is_gone() {
        let mut a = claimant("a", 1, &[VS], &[VS, DR]);
        a.deleting = true;
        let b = claimant("b", 2, &[], &[VS, DR]);
        let refused = conflicts(&b, std::slice::from_ref(&a));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].object, VS);
        assert!(refused[0].owner_deleting);
        assert!(
            refusal("b", &refused)
                .contains("VirtualService web belongs to Canary a (being deleted)")
        );
        // Once gone from the cache, b owns both.
        assert!(conflicts(&b, &[]).is_empty());
    }

    #[test]
    fn canaries_naming_different_objects_do_not_conflict() {
        let a = claimant("a", 1, &[VS], &[VS, "Deployment/a"]);
        let b = claimant("b", 2, &[], &["VirtualService/b", "Deployment/b"]);
        assert!(conflicts(&b, std::slice::from_ref(&a)).is_empty());
        assert!(conflicts(&a, std::slice::from_ref(&b)).is_empty());
    }
}
