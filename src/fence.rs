//! DRBD's fence-peer handler for 2-node resources (`fencing resource-and-stonith`).
//!
//! When a Primary loses its peer, or a Secondary wants to become Primary without
//! one, DRBD freezes I/O and runs `drbdpool fence-peer`. We record in the
//! cluster store that the peer's replica is outdated. That write succeeds only
//! with corosync quorum (pmxcfs is read-only without it), so on an isolated node
//! the handler fails, I/O stays frozen, and the HA watchdog fences the node:
//! the two sides can never both write (design invariant 3).
//!
//! Exit codes are DRBD's (8.4 drbd_nl.c conn_try_outdate_peer): 4 = peer outdated,
//! 6 = the peer already fenced us (DRBD then outdates our own disk), anything
//! else = handler failed, I/O stays frozen.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::docs::VolumeDoc;
use crate::store::Store;

pub const EXIT_PEER_OUTDATED: i32 = 4;
pub const EXIT_WE_ARE_OUTDATED: i32 = 6;
pub const EXIT_FROZEN: i32 = 1;

/// The handler's decision, with the reason that goes to the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub exit: i32,
    pub message: String,
}

/// Find the volume whose DRBD resource is `resource`.
pub fn volume_by_resource(store: &Store, resource: &str) -> Result<VolumeDoc> {
    store
        .all_volumes()?
        .into_iter()
        .find(|v| v.resource == resource)
        .ok_or_else(|| Error::NotFound(format!("no drbdpool volume uses DRBD resource '{resource}'")))
}

/// fence-peer: outdate every other replica of `resource` in the store, unless we were outdated first.
pub fn fence_peer(store: &Store, local: &str, resource: &str, lock_timeout: Duration) -> Decision {
    match try_fence(store, local, resource, lock_timeout) {
        Ok(d) => d,
        Err(e) => Decision {
            exit: EXIT_FROZEN,
            message: format!(
                "cannot record the peer of {resource} as outdated ({e}); keeping I/O frozen. Without cluster quorum this is \
                 intended: the HA watchdog fences this node"
            ),
        },
    }
}

fn try_fence(store: &Store, local: &str, resource: &str, lock_timeout: Duration) -> Result<Decision> {
    let probe = volume_by_resource(store, resource)?;
    let _guard = store.lock_timeout(&crate::store::lock::vol_lock_name(resource), lock_timeout)?;
    // Re-read under the lock: the peer may have fenced us a moment ago.
    let mut doc = store
        .volume(&probe.storeid, &probe.volname)?
        .ok_or_else(|| Error::NotFound(format!("volume {} vanished while fencing", probe.volname)))?;
    if doc.replica(local).is_none() {
        return Err(Error::Refused(format!("{local} holds no replica of {resource}")));
    }
    if doc.outdated.iter().any(|n| n == local) {
        return Ok(Decision {
            exit: EXIT_WE_ARE_OUTDATED,
            message: format!("{resource}: {local} was already recorded outdated by its peer; outdating the local disk"),
        });
    }
    let peers: Vec<String> = doc.replicas.iter().filter(|r| r.node != local).map(|r| r.node.clone()).collect();
    let mut added = Vec::new();
    for p in &peers {
        if !doc.outdated.contains(p) {
            doc.outdated.push(p.clone());
            added.push(p.clone());
        }
    }
    if !added.is_empty() {
        doc.generation += 1;
        store.put_volume(&doc)?; // fails without quorum: that is the safety
    }
    Ok(Decision {
        exit: EXIT_PEER_OUTDATED,
        message: format!("{resource}: peer(s) {} recorded outdated; {local} may continue", peers.join(", ")),
    })
}

/// The replica that is UpToDate again loses its outdated mark. DRBD 9 runs
/// `unfence-peer` on the fencing node and names the peer by node id; 8.4 runs
/// `after-resync-target` on the resynced node itself (no peer id). Returns the
/// node unmarked, if any.
pub fn unfence(store: &Store, local: &str, resource: &str, peer_node_id: Option<u8>, lock_timeout: Duration) -> Result<Option<String>> {
    unfence_if(store, local, resource, peer_node_id, lock_timeout, || Ok(true))
}

/// `unfence` only if `still_healed` holds when asked under the volume lock: the
/// fence-peer handler takes the same lock, so a link loss noticed after that check
/// marks the replica again after us, never before.
pub fn unfence_if(
    store: &Store,
    local: &str,
    resource: &str,
    peer_node_id: Option<u8>,
    lock_timeout: Duration,
    still_healed: impl FnOnce() -> Result<bool>,
) -> Result<Option<String>> {
    let probe = volume_by_resource(store, resource)?;
    let _guard = store.lock_timeout(&crate::store::lock::vol_lock_name(resource), lock_timeout)?;
    if !still_healed()? {
        return Ok(None);
    }
    let Some(mut doc) = store.volume(&probe.storeid, &probe.volname)? else { return Ok(None) };
    let target = match peer_node_id {
        Some(id) => doc
            .replicas
            .iter()
            .find(|r| r.node_id == id)
            .map(|r| r.node.clone())
            .ok_or_else(|| Error::NotFound(format!("{resource} has no replica with DRBD node id {id}")))?,
        None => local.to_string(),
    };
    if !doc.outdated.contains(&target) {
        return Ok(None);
    }
    doc.outdated.retain(|n| *n != target);
    doc.generation += 1;
    store.put_volume(&doc)?;
    Ok(Some(target))
}
