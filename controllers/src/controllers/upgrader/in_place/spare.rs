//! The spare-host gate for Elemental rollouts (S9): a ClusterClass template change resets the
//! replaced machines' hosts, so before such a write every affected pool needs its own installed,
//! unassociated ElementalHost matching its selector.

use std::collections::BTreeMap;

use api::v1alpha1::LabelSelector;

/// ElementalHost label set once the OS is installed.
pub const INSTALLED: &str = "elementalhost.infrastructure.cluster.x-k8s.io/installed";
/// ElementalHost label naming the Machine the host is associated with.
pub const MACHINE_NAME: &str = "elementalhost.infrastructure.cluster.x-k8s.io/machine-name";
/// ElementalHost label set on a host waiting to be reset.
pub const NEEDS_RESET: &str = "elementalhost.infrastructure.cluster.x-k8s.io/needs-reset";

/// A pool a rollout replaces machines in, with the selector its ElementalMachines pick hosts by.
#[derive(Clone, Copy, Debug)]
pub struct Pool<'a> {
    /// The pool's name (the MachineDeployment, or the control plane).
    pub name: &'a str,
    /// `spec.selector` of the pool's ElementalMachines (an omitted one is empty and matches any
    /// host, as the provider reads it); `None` when it cannot be read, which matches no host.
    pub selector: Option<&'a LabelSelector>,
}

/// A pool without a spare host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pool {pool} has no installed, unassociated ElementalHost matching its selector")]
pub struct NoSpareHost {
    /// The pool's name.
    pub pool: String,
}

/// Whether a host's labels make it a spare: installed, not associated, not waiting for a reset.
pub fn is_spare(labels: &BTreeMap<String, String>) -> bool {
    labels.get(INSTALLED).map(String::as_str) == Some("true")
        && !labels.contains_key(MACHINE_NAME)
        && !labels.contains_key(NEEDS_RESET)
}

/// Checks that every pool gets a spare host of its own (one host cannot be the spare of two
/// pools); the first pool, in the given order, left without one is reported.
pub fn check(pools: &[Pool<'_>], hosts: &[&BTreeMap<String, String>]) -> Result<(), NoSpareHost> {
    let spares: Vec<&BTreeMap<String, String>> =
        hosts.iter().copied().filter(|h| is_spare(h)).collect();
    let candidates: Vec<Vec<usize>> = pools
        .iter()
        .map(|pool| {
            (0..spares.len())
                .filter(|&h| {
                    spares
                        .get(h)
                        .is_some_and(|l| pool.selector.is_some_and(|s| s.matches(l)))
                })
                .collect()
        })
        .collect();
    // Bipartite matching by augmenting paths: `owner[h]` is the pool host `h` is the spare of.
    let mut owner: Vec<Option<usize>> = vec![None; spares.len()];
    for (pool, named) in pools.iter().enumerate() {
        let mut seen = vec![false; spares.len()];
        if !augment(pool, &candidates, &mut owner, &mut seen) {
            return Err(NoSpareHost {
                pool: named.name.to_owned(),
            });
        }
    }
    Ok(())
}

fn augment(
    pool: usize,
    candidates: &[Vec<usize>],
    owner: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for &host in candidates.get(pool).map(Vec::as_slice).unwrap_or_default() {
        if seen.get(host).copied().unwrap_or(true) {
            continue;
        }
        if let Some(s) = seen.get_mut(host) {
            *s = true;
        }
        let current = owner.get(host).copied().flatten();
        if current.is_none_or(|other| augment(other, candidates, owner, seen)) {
            if let Some(o) = owner.get_mut(host) {
                *o = Some(pool);
            }
            return true;
        }
    }
    false
}
