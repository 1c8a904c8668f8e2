//! Snapshots: snapshot, snapshot_delete, snapshot_rollback, rollback_is_possible,
//! snapshot_list, and the snapshot side of path/activate/deactivate.
//!
//! A volume snapshot is one backend snapshot of the backing device on every
//! replica node: lvmthin a read-only thin snapshot LV `<lv>_<snap>` (as PVE's
//! LvmThinPlugin), the file backend a copy of the image; thick lvm has none
//! (refused, `has_feature snapshot` false). The backing device includes DRBD's
//! internal metadata at its end; a snapshot copies it too, which matters only
//! for rollback (below).
//!
//! Desired state is `VolumeDoc.snapshots`. `snapshot` takes the local copy at
//! once if this node holds a replica (closest to PVE's guest freeze), records
//! the snapshot under the `drbdpool-vol-<res>` lock (generation+1), and waits,
//! bounded by DRBDPOOL_PEER_TIMEOUT_SECS, until every other replica's agent lists
//! it in its published `VolumeObserved.snapshots`; agents take missing snapshots
//! (only within SNAP_CATCHUP_SECS of their creation, and only of UpToDate data)
//! and delete removed ones. On timeout the snapshot is removed again: a copy
//! taken later would hold other data. Consistency: each node snapshots its
//! own backing device at a slightly different moment. DRBD keeps the replicas
//! identical, so a snapshot of an idle or frozen guest is the same everywhere,
//! but a snapshot of a guest that keeps writing is only as consistent as PVE's
//! freeze (qemu-guest-agent fs-freeze) makes it, and the copies on different
//! nodes may differ by in-flight writes. Hence rollback never trusts two copies
//! to be equal:
//!
//! Rollback rolls back ONE replica, the local one (the guest's node), and
//! resyncs every other replica fully from it: (1) refused while the volume is
//! Primary or open anywhere (the node is named); (2) the snapshot gets a
//! rollback mark {source: this node}; every other replica's agent takes its
//! resource down and recreates fresh DRBD metadata, and stays down, publishing
//! disk `Discarded`; (3) once all have, this node takes its resource down, rolls
//! the backing device back, brings it up and forces itself the sync source with
//! a new data generation (`primary --force; secondary`); (4) the mark is
//! cleared: the others come up Inconsistent and receive a full sync from this
//! node. A failure before (3) clears the mark and the discarded replicas resync
//! fully from the unchanged local data: never two different replicas that both
//! claim to be UpToDate. Other snapshots are kept (thin snapshots are
//! independent), so there are never blockers.
//!
//! Snapshot devices: `activate` with `snapname` makes the local snapshot a
//! readable block device (`lvchange -ay -K`; file backend: a read-only loop
//! device), `path` returns it, `deactivate` undoes it. PVE mounts CT snapshots
//! (`ro,noload`) for vzdump this way.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::naming::check_snap_name;
use crate::refused;
use crate::store::docs::{RollbackMark, SnapshotDoc, VolumeDoc, VolumeState};
use crate::store::Change;

use super::wait::{published, until_done, until_published};
use super::peers_of;
use super::{load, now, Args, Ctx};

fn names(doc: &VolumeDoc) -> String {
    doc.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(", ")
}

fn agent_hint(nodes: &[String]) -> String {
    format!("check `systemctl status drbdpool-agent` and `journalctl -u drbdpool-agent` on {}", nodes.join(", "))
}

/// The volume, checked to be a ready volume of a backend with snapshots.
fn load_snapshottable(ctx: &Ctx, sid: &str, volname: &str, method: &str) -> Result<VolumeDoc> {
    let doc = super::load_created(ctx, sid, volname)?;
    if !doc.backend.kind.caps().snapshots {
        return Err(refused!(
            "{method} of {sid}:{volname} refused: the {:?} backend has no snapshots; use an lvmthin storage for snapshots",
            doc.backend.kind
        ));
    }
    if doc.state != VolumeState::Ready {
        return Err(refused!("volume {sid}:{volname} is not ready (state {:?})", doc.state));
    }
    Ok(doc)
}

/// Change the document under its lock and bump its generation. Read afresh for the lock's
/// name: the callers' copy may be from before a wait.
fn update(ctx: &Ctx, sid: &str, volname: &str, f: impl FnOnce(&mut VolumeDoc) -> Result<()>) -> Result<VolumeDoc> {
    let at = load(ctx, sid, volname)?;
    super::update(ctx, &at, |d| f(d).map(|()| Change::Desired))
}

/// A rollback in progress (another one is refused; the same one may be repeated).
fn rollback_in_progress(doc: &VolumeDoc) -> Option<(&SnapshotDoc, &RollbackMark)> {
    doc.snapshots.iter().find_map(|s| s.rollback.as_ref().map(|m| (s, m)))
}

pub fn snapshot(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let snap = a.str("snap")?;
    check_snap_name(snap)?;
    let doc = load_snapshottable(ctx, sid, volname, "snapshot")?;
    let name = format!("{sid}:{volname}");
    if doc.snapshots.iter().any(|s| s.name == snap) {
        return Err(Error::Conflict(format!("snapshot {snap} of {name} already exists")));
    }
    if let Some((s, m)) = rollback_in_progress(&doc) {
        return Err(refused!("{name} is being rolled back to {} on {}: retry when that is finished", s.name, m.source));
    }
    let deadline = Instant::now() + ctx.peer_timeout;
    let local = ctx.node.name().to_string();
    let here = doc.replica(&local).is_some();
    if here {
        ctx.node.ops()?.snapshot(&doc, snap)?;
        crate::failpoint!("snapshot.after-local");
    }
    let recorded = update(ctx, sid, volname, |d| {
        if d.snapshots.iter().any(|s| s.name == snap) {
            return Err(Error::Conflict(format!("snapshot {snap} of {name} already exists")));
        }
        d.snapshots.push(SnapshotDoc { name: snap.into(), created: now(), origin: here.then(|| local.clone()), rollback: None });
        Ok(())
    });
    let doc = match recorded {
        Ok(d) => d,
        Err(e) => {
            // A concurrent call made the same snapshot: that one owns it, ours is the same LV/file.
            if here && e.kind() != "conflict" {
                let _ = ctx.node.ops().and_then(|n| n.remove_snapshot(&doc, snap));
            }
            return Err(e);
        }
    };
    crate::failpoint!("snapshot.after-doc");
    let peers = peers_of(ctx, &doc);
    let mut failed: Option<String> = None;
    let pending = until_done(deadline.saturating_duration_since(Instant::now()), ctx.poll, &format!("snapshot {snap} of {name}"), || {
        let mut p = Vec::new();
        for (n, o) in published(ctx.store, &peers, &doc.resource)? {
            if o.as_ref().is_some_and(|o| o.snapshots.iter().any(|s| s == snap)) {
                continue;
            }
            if let Some(err) = o.as_ref().and_then(|o| o.error.clone()).filter(|e| e.contains(&format!("snapshot {snap}"))) {
                failed = Some(format!("{n}: {err}"));
                return Ok(vec![]);
            }
            p.push(n);
        }
        Ok(p)
    })?;
    if failed.is_none() && pending.is_empty() {
        crate::failpoint!("snapshot.after-peers");
        tracing::info!("snapshot {snap} of {name} taken on {}", names(&doc));
        return Ok(json!({}));
    }
    // Undo: a copy taken later on the missing nodes would hold different data.
    let _ = update(ctx, sid, volname, |d| {
        d.snapshots.retain(|s| s.name != snap);
        Ok(())
    });
    if here {
        if let Err(e) = ctx.node.ops().and_then(|n| n.remove_snapshot(&doc, snap)) {
            tracing::error!("could not remove the local snapshot {snap} of {}: {e} (the agent retries)", doc.resource);
        }
    }
    Err(match failed {
        Some(f) => refused!("snapshot {snap} of {name} failed and was removed again: {f}"),
        None => Error::Timeout(format!(
            "snapshot {snap} of {name} was removed again: node(s) {} did not report their copy within {}s; {}",
            pending.join(", "),
            ctx.peer_timeout.as_secs(),
            agent_hint(&pending)
        )),
    })
}

pub fn snapshot_delete(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let snap = a.str("snap")?;
    check_snap_name(snap)?;
    let _running = a.flag("running")?;
    let doc = load(ctx, sid, volname)?;
    let name = format!("{sid}:{volname}");
    if let Some(s) = doc.snapshots.iter().find(|s| s.name == snap) {
        if let Some(m) = &s.rollback {
            return Err(refused!("{name} is being rolled back to {snap} on {}: delete the snapshot afterwards", m.source));
        }
    } else if !doc.backend.kind.caps().snapshots {
        return Err(refused!("snapshot_delete of {name} refused: the {:?} backend has no snapshots", doc.backend.kind));
    }
    let doc = update(ctx, sid, volname, |d| {
        d.snapshots.retain(|s| s.name != snap);
        Ok(())
    })?;
    crate::failpoint!("snapshot-delete.after-doc");
    // Also when the document did not list it: removes leftovers here (idempotent).
    if doc.replica(ctx.node.name()).is_some() {
        ctx.node.ops()?.remove_snapshot(&doc, snap)?;
        crate::failpoint!("snapshot-delete.after-local-remove");
    }
    let peers = peers_of(ctx, &doc);
    let what = format!("snapshot {snap} of {name} to be deleted");
    let pending = until_published(ctx.store, &peers, &doc.resource, ctx.peer_timeout, ctx.poll, &what, |o| {
        !o.is_some_and(|o| o.snapshots.iter().any(|s| s == snap))
    })?;
    if !pending.is_empty() {
        tracing::warn!("snapshot {snap} of {name} is deleted from the volume; the agents on {} remove their copies later; {}", pending.join(", "), agent_hint(&pending));
    }
    Ok(json!({}))
}

/// Why this node cannot roll `doc` back to `snap` (None: it can).
fn rollback_obstacle(ctx: &Ctx, doc: &VolumeDoc, snap: &str) -> Result<Option<String>> {
    let name = format!("{}:{}", doc.storeid, doc.volname);
    let local = ctx.node.name();
    if !doc.snapshots.iter().any(|s| s.name == snap) {
        return Err(Error::NotFound(format!("snapshot {snap} of {name} does not exist (see snapshot_list)")));
    }
    if doc.replica(local).is_none() {
        return Ok(Some(format!(
            "a rollback of {name} runs on a node that holds a replica ({}), not on {local}: migrate the guest there first",
            names(doc)
        )));
    }
    if ctx.node.ops()?.snapshot_path(doc, snap)?.is_none() {
        let peers = peers_of(ctx, doc);
        let with: Vec<String> = published(ctx.store, &peers, &doc.resource)?
            .into_iter()
            .filter(|(_, o)| o.as_ref().is_some_and(|o| o.snapshots.iter().any(|s| s == snap)))
            .map(|(n, _)| n)
            .collect();
        return Ok(Some(format!(
            "node {local} has no copy of snapshot {snap} of {name}; {}",
            if with.is_empty() { "no other node reports one either".to_string() } else { format!("roll back on {} instead", with.join(", ")) }
        )));
    }
    Ok(None)
}

pub fn rollback_is_possible(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let snap = a.str("snap")?;
    check_snap_name(snap)?;
    let doc = load_snapshottable(ctx, sid, volname, "rollback_is_possible")?;
    if let Some(why) = rollback_obstacle(ctx, &doc, snap)? {
        return Err(refused!("{why}"));
    }
    // Thin snapshots are independent: rolling back destroys no newer snapshot.
    Ok(json!({"possible": true, "blockers": []}))
}

pub fn snapshot_rollback(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let snap = a.str("snap")?;
    check_snap_name(snap)?;
    let doc = load_snapshottable(ctx, sid, volname, "snapshot_rollback")?;
    let name = format!("{sid}:{volname}");
    let local = ctx.node.name().to_string();
    if let Some(why) = rollback_obstacle(ctx, &doc, snap)? {
        return Err(refused!("{why}"));
    }
    if let Some((s, m)) = rollback_in_progress(&doc) {
        if s.name != snap || m.source != local {
            return Err(refused!(
                "{name} is already being rolled back to {} on {} (since {}): wait for that to finish; if that call died, repeat it on {}",
                s.name, m.source, m.since, m.source
            ));
        }
    }
    super::volume::refuse_in_use(ctx, &doc, |on| format!("volume {name} is in use (Primary or open) on {on}: stop the guest before rolling back"))?;
    let doc = update(ctx, sid, volname, |d| {
        let s = d.snapshots.iter_mut().find(|s| s.name == snap).ok_or_else(|| Error::NotFound(format!("snapshot {snap} of {name} was deleted meanwhile")))?;
        s.rollback = Some(RollbackMark { source: local.clone(), since: now() });
        Ok(())
    })?;
    crate::failpoint!("rollback.after-mark");
    let r = (|| -> Result<()> {
        let peers = peers_of(ctx, &doc);
        let mut failed: Option<String> = None;
        let pending = until_done(ctx.peer_timeout, ctx.poll, &format!("the other replicas of {name} to be discarded"), || {
            let mut p = Vec::new();
            for (n, o) in published(ctx.store, &peers, &doc.resource)? {
                match o {
                    Some(o) if o.disk == "Discarded" && o.generation >= doc.generation => {}
                    // The agent refused (e.g. the guest was started there meanwhile).
                    Some(o) if o.error.as_deref().is_some_and(|e| e.contains("discarded for a rollback")) => {
                        failed = Some(format!("{n}: {}", o.error.unwrap_or_default()));
                        return Ok(vec![]);
                    }
                    _ => p.push(n),
                }
            }
            Ok(p)
        })?;
        if let Some(f) = failed {
            return Err(refused!("rollback of {name} to {snap} not done: a replica could not be discarded ({f})"));
        }
        if !pending.is_empty() {
            return Err(Error::Timeout(format!(
                "rollback of {name} to {snap} not done: node(s) {} did not take their replica down within {}s; {}",
                pending.join(", "),
                ctx.peer_timeout.as_secs(),
                agent_hint(&pending)
            )));
        }
        crate::failpoint!("rollback.after-discarded");
        ctx.node.ops().and_then(|n| n.rollback_source(&doc, snap))
    })();
    crate::failpoint!("rollback.before-clear");
    // Clear the mark in every case: the discarded replicas come up and resync fully from
    // this node, rolled back or (on failure) unchanged.
    let cleared = update(ctx, sid, volname, |d| {
        for s in d.snapshots.iter_mut() {
            s.rollback = None;
        }
        Ok(())
    });
    match (r, cleared) {
        (Err(e), _) => Err(append(e, &format!("; the other replicas resync fully from {local}"))),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(d)) => {
            // Return once the others are back up (resyncing), so what follows sees them.
            let peers = peers_of(ctx, &d);
            let what = format!("the other replicas of {name} to come back");
            let pending = until_published(ctx.store, &peers, &d.resource, ctx.peer_timeout, ctx.poll, &what, |o| {
                o.is_some_and(|o| o.disk != "Discarded" && o.generation >= d.generation)
            })?;
            if !pending.is_empty() {
                tracing::warn!("{name}: the replicas on {} are not back yet; their agents bring them up and resync them from {local}", pending.join(", "));
            }
            tracing::info!("{name} rolled back to {snap} on {local}; the other replicas resync fully from it");
            Ok(json!({}))
        }
    }
}

/// The same error kind with more said.
fn append(e: Error, more: &str) -> Error {
    let m = format!("{e}{more}");
    match e {
        Error::InvalidInput(_) => Error::InvalidInput(m),
        Error::NotFound(_) => Error::NotFound(m),
        Error::Refused(_) => Error::Refused(m),
        Error::Conflict(_) => Error::Conflict(m),
        Error::Timeout(_) => Error::Timeout(m),
        Error::Tool(_) => Error::Tool(m),
        Error::Store(_) => Error::Store(m),
        Error::Other(_) => Error::Tool(m),
    }
}

pub fn snapshot_list(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let doc = load(ctx, sid, a.str("volname")?)?;
    let mut m = Map::new();
    for s in &doc.snapshots {
        m.insert(s.name.clone(), json!({"id": s.name, "timestamp": s.created}));
    }
    Ok(json!({"snapshots": m}))
}

/// The local snapshot's device (None: no such snapshot here).
fn local_snapshot_doc(ctx: &Ctx, sid: &str, volname: &str, snap: &str) -> Result<VolumeDoc> {
    check_snap_name(snap)?;
    let doc = load(ctx, sid, volname)?;
    if !doc.snapshots.iter().any(|s| s.name == snap) {
        return Err(Error::NotFound(format!("snapshot {snap} of {sid}:{volname} does not exist (see snapshot_list)")));
    }
    if doc.replica(ctx.node.name()).is_none() {
        return Err(refused!(
            "snapshot {snap} of {sid}:{volname} is only readable on its replica nodes ({}), not on {}",
            names(&doc),
            ctx.node.name()
        ));
    }
    Ok(doc)
}

pub fn path(ctx: &Ctx, sid: &str, volname: &str, snap: &str) -> Result<Value> {
    let doc = local_snapshot_doc(ctx, sid, volname, snap)?;
    let p = ctx.node.ops()?.snapshot_path(&doc, snap)?.ok_or_else(|| {
        refused!("node {} has no copy of snapshot {snap} of {sid}:{volname}", ctx.node.name())
    })?;
    Ok(json!({"path": p, "vmid": doc.vmid, "vtype": "images"}))
}

pub fn activate(ctx: &Ctx, sid: &str, volname: &str, snap: &str) -> Result<Value> {
    let doc = local_snapshot_doc(ctx, sid, volname, snap)?;
    Ok(json!({"path": ctx.node.ops()?.activate_snapshot(&doc, snap)?}))
}

pub fn deactivate(ctx: &Ctx, sid: &str, volname: &str, snap: &str) -> Result<Value> {
    check_snap_name(snap)?;
    let doc = load(ctx, sid, volname)?;
    if doc.replica(ctx.node.name()).is_some() {
        ctx.node.ops()?.deactivate_snapshot(&doc, snap)?;
    }
    Ok(json!({}))
}
