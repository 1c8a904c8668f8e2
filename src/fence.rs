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

/// Find the volume whose DRBD resource is `resource`. Resource names are
/// `<storeid>.<volname>` unless that was too long (naming::resource_name), so the
/// document is looked up directly first; only a hashed name needs the full scan
/// (the handler runs while I/O is frozen: it must not cost a read per volume).
pub fn volume_by_resource(store: &Store, resource: &str) -> Result<VolumeDoc> {
    for (i, _) in resource.match_indices('.') {
        let (sid, vol) = (&resource[..i], &resource[i + 1..]);
        if crate::naming::check_storeid(sid).is_err() || crate::naming::parse_volname(vol).is_err() {
            continue;
        }
        if let Some(d) = store.volume(sid, vol)? {
            if d.resource == resource {
                return Ok(d);
            }
        }
    }
    store
        .all_volumes()?
        .into_iter()
        .find(|v| v.resource == resource)
        .ok_or_else(|| Error::NotFound(format!("no drbdpool volume uses DRBD resource '{resource}'")))
}

/// fence-peer: outdate every other replica of `resource` in the store, unless we were outdated first.
pub fn fence_peer(store: &Store, local: &str, resource: &str) -> Decision {
    match try_fence(store, local, resource) {
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

/// No volume lock here (store/marks.rs says why): the marks are exclusive creates,
/// and two handlers racing (both sides of a broken link, both quorate) are told
/// apart by looking after writing: each writes its marks, then reads all marks of
/// the resource. Writes are totally ordered, so at least one of the two sees the
/// other's; whoever sees itself marked yields (removes its own, exit 6). Both may
/// yield, then neither side is promoted: safe, never two writers.
fn try_fence(store: &Store, local: &str, resource: &str) -> Result<Decision> {
    if let Some(m) = crate::membership::Membership::of_store(store)? {
        if !m.quorate {
            return Err(Error::Store(format!("{local} is not in the quorate cluster membership ({})", m.source.display())));
        }
    }
    let doc = volume_by_resource(store, resource)?;
    if doc.replica(local).is_none() {
        return Err(Error::Refused(format!("{local} holds no replica of {resource}")));
    }
    let we_are_outdated = |d: &VolumeDoc| d.outdated.iter().any(|n| n == local);
    if we_are_outdated(&doc) {
        return Ok(Decision {
            exit: EXIT_WE_ARE_OUTDATED,
            message: format!("{resource}: {local} was already recorded outdated by its peer; outdating the local disk"),
        });
    }
    let peers: Vec<String> = doc.replicas.iter().filter(|r| r.node != local).map(|r| r.node.clone()).collect();
    let mut ours = Vec::new();
    for p in peers.iter().filter(|p| !doc.outdated.contains(p)) {
        ours.push(store.add_fence_mark(resource, p, local)?); // fails without quorum: that is the safety
    }
    if !ours.is_empty() {
        // Look after writing: did the peer mark us meanwhile?
        let now = store.volume(&doc.storeid, &doc.volname)?;
        if now.as_ref().is_some_and(|d| we_are_outdated(d)) {
            for m in &ours {
                store.remove_fence_mark(m)?;
            }
            return Ok(Decision {
                exit: EXIT_WE_ARE_OUTDATED,
                message: format!("{resource}: {local}'s peer recorded {local} outdated at the same moment; {local} yields and outdates its disk"),
            });
        }
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
    // The marks to drop are those that exist before DRBD is asked: a mark the
    // fence-peer handler writes after that check (it takes no lock) stays.
    let marks = store.fence_marks_of(resource)?;
    if !still_healed()? {
        return Ok(None);
    }
    let Some(doc) = store.volume(&probe.storeid, &probe.volname)? else { return Ok(None) };
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
    // The document's own list first (under the lock), then the marks. Not through
    // Store::update_volume: that writes the document with the marks merged, which would
    // fold other nodes' marks into it; here the document is written as written, and the
    // marks (listed before DRBD was asked) are dropped separately, all under one lock.
    if let Some(mut w) = store.volume_as_written(&probe.storeid, &probe.volname)?.filter(|w| w.outdated.contains(&target)) {
        w.outdated.retain(|n| *n != target);
        w.generation += 1;
        store.put_volume(&w)?;
    }
    for m in marks.iter().filter(|m| m.target == target) {
        store.remove_fence_mark(m)?;
    }
    Ok(Some(target))
}
