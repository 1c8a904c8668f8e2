//! Methods that change desired state: alloc, free, resize, create_base, rename
//! (clone: linked clones of templates). Each writes the store
//! under its lock and then waits, bounded, for the other nodes' agents.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::naming;
use crate::placement;
use crate::refused;
use crate::store::alloc::{allocate, Ranges};
use crate::store::docs::{PeerObserved, VolumeDoc, VolumeObserved, VolumeState};
use crate::store::lock::{vol_lock_name, ALLOC_LOCK};
use crate::store::Change;

use super::scfg::StorageCfg;
use super::wait::{published, until_done, until_published};
use super::peers_of;
use super::{load_created, now, update, Args, Creation, Ctx, BACKGROUND_CREATE_BUDGET};

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Wake the agents of the other replica nodes now instead of at their next round.
fn poke_peers(ctx: &Ctx, doc: &VolumeDoc, why: &str) {
    for n in peers_of(ctx, doc) {
        crate::store::wake::poke(ctx.store, &n, why);
    }
}

/// What this node's kernel says about `node`'s replica over their DRBD connection.
fn kernel_peer<'v>(view: &'v Option<VolumeObserved>, node: &str) -> Option<&'v PeerObserved> {
    view.as_ref()?.peers.iter().find(|p| p.node == node && p.connection == "Connected")
}

/// Re-read this node's kernel view at most this often while waiting (each read runs
/// drbdsetup: not free on a busy node, where the agents work at the same time).
const KERNEL_POLL: Duration = Duration::from_millis(500);

/// This node's kernel view of `doc` (None when this node holds no replica), throttled.
struct KernelView<'c> {
    node: &'c dyn crate::node::NodeHandle,
    doc: &'c VolumeDoc,
    on: bool,
    at: Option<Instant>,
    view: Option<VolumeObserved>,
}

impl<'c> KernelView<'c> {
    fn new(ctx: &'c Ctx, doc: &'c VolumeDoc) -> Self {
        KernelView { node: ctx.node, doc, on: doc.replica(ctx.node.name()).is_some(), at: None, view: None }
    }

    fn get(&mut self) -> Result<&Option<VolumeObserved>> {
        if self.on && self.at.is_none_or(|t| t.elapsed() >= KERNEL_POLL) {
            self.view = self.node.ops()?.kernel_view(self.doc)?;
            self.at = Some(Instant::now());
        }
        Ok(&self.view)
    }
}

fn agent_hint(nodes: &[String]) -> String {
    format!("check `systemctl status drbdpool-agent` and `journalctl -u drbdpool-agent` on {}", nodes.join(", "))
}

pub fn alloc(ctx: &Ctx, sid: &str, cfg: &StorageCfg, a: &Args) -> Result<Value> {
    let vmid = a.vmid("vmid")?;
    match a.opt_str("fmt")? {
        None | Some("raw") => {}
        Some(f) => return Err(crate::invalid!("format '{f}' is not supported: drbdpool volumes are raw block devices")),
    }
    let size_kib = naming::check_size_kib(a.raw("size_kib").ok_or_else(|| crate::invalid!("argument 'size_kib' is missing"))?)?;
    let explicit = a.opt_str("name")?.map(|n| naming::check_alloc_name(n, vmid)).transpose()?;
    let local = ctx.node.name().to_string();
    // One budget for the whole call, counted from its start (lock wait included): PVE's own
    // lock around alloc allows 60 s and the shim kills the helper at 55 s (ALLOC_BUDGET).
    let deadline = ctx.started.unwrap_or_else(Instant::now) + ctx.alloc_budget;

    let doc = {
        let _g = ctx.store.lock_timeout(ALLOC_LOCK, left(deadline).min(crate::store::lock::default_timeout()))?;
        crate::failpoint!("alloc.after-lock");
        let names = ctx.store.volume_names(sid)?;
        let volname = match &explicit {
            Some(n) if names.contains(&n.name) => {
                return Err(exists_conflict(ctx, sid, &n.name));
            }
            Some(n) => n.name.clone(),
            None => naming::next_disk_name(vmid, names.iter().map(String::as_str))?,
        };
        let all = ctx.store.all_volumes()?;
        let resource = naming::resource_name(sid, &volname);
        if let Some(o) = all.iter().find(|v| v.resource == resource) {
            return Err(Error::Conflict(format!(
                "the DRBD resource name {resource} for {sid}:{volname} is already used by {}:{}: choose another volume name",
                o.storeid, o.volname
            )));
        }
        let placed = placement::place(
            &placement::Request { storeid: sid, replicas: cfg.replicas, local: &local, size_bytes: size_kib * 1024, allowed: cfg.nodes.as_deref() },
            &ctx.store.nodes()?,
            &ctx.store.node_heads()?,
        )?;
        let al = allocate(&all, &placed, &Ranges::default())?;
        let doc = VolumeDoc::new(sid, &volname, vmid, size_kib, cfg.backend.clone(), &placed, &al);
        // This document is the reservation of minor, port and name.
        ctx.store.put_volume(&doc)?;
        crate::failpoint!("alloc.after-doc");
        doc
    };
    poke_peers(ctx, &doc, "alloc");
    tracing::info!(
        "allocated {sid}:{} as {} (minor {}, port {}) on {}",
        doc.volname,
        doc.resource,
        doc.minor,
        doc.port,
        doc.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(", ")
    );
    finish_or_hand_off(ctx, &doc, deadline)?;
    Ok(json!({"volname": doc.volname}))
}

/// After the document is written: make the replicas in this call, or hand that to a detached
/// `drbdpool finish-create` and return (Creation, in protocol/mod.rs, says why). A finisher
/// that cannot be started leaves the work to this call.
fn finish_or_hand_off(ctx: &Ctx, doc: &VolumeDoc, deadline: Instant) -> Result<()> {
    if ctx.creation == Creation::Background {
        match super::finish::spawn(ctx, doc, BACKGROUND_CREATE_BUDGET) {
            Ok(()) => {
                tracing::info!("{}:{}: recorded; its replicas are made in the background (activation waits for them)", doc.storeid, doc.volname);
                return Ok(());
            }
            Err(e) => tracing::warn!("{e}; making the replicas in this call instead"),
        }
    }
    finish_or_roll_back(ctx, doc, deadline)
}

/// The second half of a create, wherever it runs (this call, or `finish-create`): the
/// replicas and `ready`, or on failure the roll-back.
pub(super) fn finish_or_roll_back(ctx: &Ctx, doc: &VolumeDoc, deadline: Instant) -> Result<()> {
    finish_create(ctx, doc, deadline).inspect_err(|_| roll_back_create(ctx, doc, deadline))
}

/// "already exists", and when the existing volume is being removed (a free, or the roll-back of
/// a failed create waiting for a node's agent), what the removal waits for.
fn exists_conflict(ctx: &Ctx, sid: &str, volname: &str) -> Error {
    let plain = Error::Conflict(format!("volume {sid}:{volname} already exists"));
    let Ok(Some(doc)) = ctx.store.volume(sid, volname) else { return plain };
    if doc.state != VolumeState::Deleting {
        return plain;
    }
    let states = ctx.store.node_states_of(&doc.resource).unwrap_or_default();
    let t = now();
    // The document goes once no node's published state lists the resource any more.
    let waiting: Vec<String> = doc
        .replicas
        .iter()
        .filter_map(|r| {
            let s = states.iter().find(|s| s.node == r.node)?;
            s.volumes.contains_key(&doc.resource).then(|| {
                let age = t.saturating_sub(s.updated);
                if age > super::activate::STALE_AFTER_SECS {
                    format!("{} (its last report is {age}s old: the node or its agent is down)", r.node)
                } else {
                    format!("{} (last report {age}s ago)", r.node)
                }
            })
        })
        .collect();
    let what = if waiting.is_empty() {
        "no node lists a replica any more; the next agent pass removes the document".to_string()
    } else {
        format!("waiting for the agent on {} to remove its replica", waiting.join(", "))
    };
    Error::Conflict(format!(
        "volume {sid}:{volname} already exists and is being removed (a free, or the roll-back of a create that failed): {what}. \
         Allocate it again once it is gone (`drbdpool volume list`), or use another name"
    ))
}

fn finish_create(ctx: &Ctx, doc: &VolumeDoc, deadline: Instant) -> Result<()> {
    let local = ctx.node.name().to_string();
    let name = format!("{}:{}", doc.storeid, doc.volname);
    let t0 = Instant::now();
    let is_replica = doc.replica(&local).is_some();
    let _creating = if is_replica { ctx.node.ops()?.hold_creation(doc)? } else { None };
    if is_replica {
        ctx.node.ops()?.ensure_replica(doc)?;
        crate::failpoint!("alloc.after-local-replica");
        tracing::info!(resource = %doc.resource, ms = t0.elapsed().as_millis() as u64, "alloc: local replica up");
    }
    let peers = peers_of(ctx, &doc);
    let what = format!("the replica of {name} to be ready");
    // A peer is ready when its agent says so, or as soon as this node's kernel sees it
    // connected with its disk attached (the agent publishes that a round later).
    let mut kv = KernelView::new(ctx, doc);
    let pending = until_done(left(deadline), ctx.poll, &what, || {
        let view = kv.get()?;
        let pubd = published(ctx.store, &peers, &doc.resource)?;
        Ok(peers
            .iter()
            .filter(|n| {
                let said = pubd.get(*n).cloned().flatten().is_some_and(|o| o.ready && o.generation >= doc.generation);
                let seen = kernel_peer(view, n).is_some_and(|p| crate::drbd::observe::attached(&p.disk));
                !(said || seen)
            })
            .cloned()
            .collect())
    })?;
    if !pending.is_empty() {
        return Err(Error::Timeout(format!(
            "volume {name} was not created: node(s) {} did not report the new replica ready within {}s of the start of the alloc; {}. The half-made volume is being removed",
            pending.join(", "),
            ctx.alloc_budget.as_secs(),
            agent_hint(&pending)
        )));
    }
    crate::failpoint!("alloc.after-peers-ready");
    tracing::info!(resource = %doc.resource, ms = t0.elapsed().as_millis() as u64, "alloc: peers ready");
    // Thick backing: replicas[0]'s agent starts the full initial sync instead.
    if doc.replicas[0].node == local && doc.backend.kind.caps().thin {
        // A peer's "ready" means its disk is attached; the DRBD connection may still be coming
        // up, and the skip is refused until it is: retry that refusal until the deadline.
        loop {
            match ctx.node.ops().and_then(|n| n.skip_initial_sync(doc)) {
                Ok(()) => break,
                Err(Error::Refused(m)) if !left(deadline).is_zero() => {
                    tracing::debug!(resource = %doc.resource, "initial-sync skip not possible yet ({m}); retrying");
                    std::thread::sleep(KERNEL_POLL);
                }
                Err(e) => return Err(e),
            }
        }
        crate::failpoint!("alloc.after-skip-sync");
        // The peers' agents publish what their kernels now show: wake them.
        poke_peers(ctx, doc, "initial-sync skip");
    }
    // Thin and sparse-file backings read zeroes everywhere: the replicas are UpToDate
    // right after the sync skip. Thick LVM syncs in the background instead.
    if doc.backend.kind.caps().thin {
        let all: Vec<String> = doc.replicas.iter().map(|r| r.node.clone()).collect();
        let mut kv = KernelView::new(ctx, doc);
        let pending = until_done(left(deadline), ctx.poll, &format!("{name} to be UpToDate"), || {
            let mut p = Vec::new();
            let pubd = published(ctx.store, &peers, &doc.resource)?;
            // This node's own disk from its kernel; every other replica only by what that
            // node itself published. This node's kernel is no witness for a peer: DRBD 8.4
            // marks the peer UpToDate as soon as it sends the initial-sync skip, unconfirmed,
            // and keeps showing a peer that died meanwhile Connected and UpToDate until its
            // ping timeout (the sim models it: SimDrbd::crash_on_skip). Such a peer comes back
            // with fresh metadata and gets a full sync; the volume must not be called ready.
            let view = kv.get()?;
            for n in &all {
                let up = if *n == local {
                    view.as_ref().is_some_and(|o| o.disk == "UpToDate")
                } else {
                    pubd.get(n).cloned().flatten().is_some_and(|o| o.disk == "UpToDate" && o.generation >= doc.generation)
                };
                if !up {
                    p.push(n.clone());
                }
            }
            Ok(p)
        })?;
        if !pending.is_empty() {
            return Err(Error::Timeout(format!(
                "volume {name} was not created: node(s) {} did not report the replica UpToDate within {}s of the start of the alloc \
                 (the node may have died before it applied the initial-sync skip); {}. The half-made volume is being removed",
                pending.join(", "),
                ctx.alloc_budget.as_secs(),
                agent_hint(&pending)
            )));
        }
    }
    tracing::info!(resource = %doc.resource, ms = t0.elapsed().as_millis() as u64, "alloc: all replicas UpToDate");
    update(ctx, doc, |d| {
        crate::failpoint!("alloc.before-ready");
        if d.state != VolumeState::Creating {
            // Rolled back meanwhile (an agent expired it, or a free ran): never resurrect it.
            return Err(Error::Conflict(format!("volume {name} was rolled back (state {:?}) while it was being created; allocate it again", d.state)));
        }
        d.state = VolumeState::Ready;
        // Readiness is for the callers of `list`/`activate`; the agents have applied this already.
        Ok(Change::Quiet)
    })
    .map(drop)
}

/// A failed create: mark the document `deleting` so every agent removes what it
/// made (the last one removes the document), and remove our own replica now.
fn roll_back_create(ctx: &Ctx, doc: &VolumeDoc, deadline: Instant) {
    // Bounded: the call must return inside the shim's limit (ROLLBACK_ALLOWANCE).
    let by = deadline + super::ROLLBACK_ALLOWANCE;
    let r = ctx.store.update_volume_timeout(doc, left(by).max(Duration::from_secs(1)), |d| {
        d.state = VolumeState::Deleting;
        Ok(Change::Desired)
    });
    match r {
        Ok(_) => poke_peers(ctx, doc, "roll back"),
        Err(e) => tracing::error!("could not mark {}:{} for deletion: {e}", doc.storeid, doc.volname),
    }
    if doc.replica(ctx.node.name()).is_some() {
        if left(by).is_zero() {
            // Too late in the call: this node's agent removes it (the document says deleting).
            crate::store::wake::poke(ctx.store, ctx.node.name(), "roll back");
            tracing::warn!("{}: leaving the removal of the local replica to this node's agent (the alloc is out of time)", doc.resource);
        } else if let Err(e) = ctx.node.ops().and_then(|n| n.remove_replica(doc)) {
            tracing::error!("could not remove the local replica of {}: {e} (the agent retries)", doc.resource);
        }
    }
}

/// Invariant 2 for the handlers that need the volume idle everywhere: refused where it is
/// Primary or open (`in_use`), in words of the caller's (`why` gets the node list).
pub(crate) fn refuse_in_use(ctx: &Ctx, doc: &VolumeDoc, why: impl FnOnce(&str) -> String) -> Result<()> {
    let busy = in_use(ctx, doc)?;
    if busy.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(why(&busy.join(", "))))
}

/// Nodes where the volume is Primary or open (Invariant 2), from the local view and published states.
fn in_use(ctx: &Ctx, doc: &VolumeDoc) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let local = ctx.node.name().to_string();
    if doc.replica(&local).is_some() {
        if let Some(o) = ctx.node.ops()?.observe(doc)? {
            if o.role == "Primary" || o.open {
                out.push(local.clone());
            }
            for p in o.peers.iter().filter(|p| p.role == "Primary") {
                out.push(p.node.clone());
            }
        }
    }
    let nodes = peers_of(ctx, &doc);
    for (n, o) in published(ctx.store, &nodes, &doc.resource)? {
        if o.is_some_and(|o| o.role == "Primary" || o.open) {
            out.push(n);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn free(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    naming::parse_volname(volname)?;
    let Some(doc) = ctx.store.volume(sid, volname)? else {
        tracing::info!("{sid}:{volname} does not exist; nothing to free");
        return Ok(json!({}));
    };
    if doc.base && doc.state != VolumeState::Deleting {
        let clones = clones_of(ctx, sid, volname)?;
        if !clones.is_empty() {
            return Err(refused!(
                "base volume {sid}:{volname} is still in use by linked clones ({}): remove those first (or make them full copies with a full clone / move disk)",
                clones.join(", ")
            ));
        }
    }
    refuse_in_use(ctx, &doc, |on| {
        format!("volume {sid}:{volname} is in use (Primary or open) on {on}: stop the guest using it before removing the disk")
    })?;
    let doc = update(ctx, &doc, |d| {
        if d.state == VolumeState::Deleting {
            return Ok(Change::Unchanged);
        }
        d.state = VolumeState::Deleting;
        Ok(Change::Desired)
    })?;
    poke_peers(ctx, &doc, "free");
    crate::failpoint!("free.after-deleting");
    let local = ctx.node.name().to_string();
    if doc.replica(&local).is_some() {
        ctx.node.ops()?.remove_replica(&doc)?;
        crate::failpoint!("free.after-local-remove");
    }
    let peers = peers_of(ctx, &doc);
    let what = format!("the replicas of {sid}:{volname} to be removed");
    let pending = until_published(ctx.store, &peers, &doc.resource, ctx.peer_timeout, ctx.poll, &what, |o| o.is_none())?;
    if pending.is_empty() {
        let _g = ctx.store.lock(&vol_lock_name(&doc.resource))?;
        crate::failpoint!("free.before-doc-remove");
        ctx.store.remove_volume(sid, volname)?;
    } else {
        tracing::warn!(
            "{sid}:{volname} stays marked for deletion until the agents on {} have removed their replicas; {}",
            pending.join(", "),
            agent_hint(&pending)
        );
    }
    Ok(json!({}))
}

/// The linked clones of `base` that are not being removed, as PVE names them. From the
/// list index (store/index.rs: one read per shard), not from every volume document.
fn clones_of(ctx: &Ctx, sid: &str, base: &str) -> Result<Vec<String>> {
    Ok(ctx
        .store
        .list_entries_as::<crate::store::index::ListEntry>(sid, None)?
        .into_iter()
        .filter(|(_, e)| e.parent.as_deref() == Some(base) && e.state != VolumeState::Deleting)
        .map(|(n, _)| format!("{sid}:{}", naming::pve_volname(&n, Some(base))))
        .collect())
}

pub fn resize(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let want_kib = naming::check_size_bytes(a.raw("size_bytes").ok_or_else(|| crate::invalid!("argument 'size_bytes' is missing"))?)?;
    let _running = a.flag("running")?;
    let doc = load_created(ctx, sid, volname)?;
    let local = ctx.node.name().to_string();
    if doc.replica(&local).is_none() {
        return Err(refused!(
            "resize {sid}:{volname} on a node that holds a replica ({}), not on {local}",
            doc.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if doc.state != VolumeState::Ready {
        return Err(refused!("volume {sid}:{volname} is not ready (state {:?})", doc.state));
    }
    if want_kib < doc.size_kib {
        return Err(refused!("shrinking {sid}:{volname} from {} KiB to {want_kib} KiB is not supported: volumes only grow", doc.size_kib));
    }
    // Equal size still runs the grow steps: a resize that timed out is finished by repeating it.
    let doc = update(ctx, &doc, |d| {
        if want_kib <= d.size_kib {
            return Ok(Change::Unchanged);
        }
        d.size_kib = want_kib;
        Ok(Change::Desired)
    })?;
    poke_peers(ctx, &doc, "resize");
    crate::failpoint!("resize.after-doc");
    ctx.node.ops()?.grow_backing(&doc)?;
    crate::failpoint!("resize.after-local-grow");
    let peers = peers_of(ctx, &doc);
    let what = format!("the replicas of {sid}:{volname} to grow");
    let pending = until_published(ctx.store, &peers, &doc.resource, ctx.peer_timeout, ctx.poll, &what, |o| {
        o.is_some_and(|o| o.generation >= doc.generation)
    })?;
    if !pending.is_empty() {
        return Err(Error::Timeout(format!(
            "{sid}:{volname}: the backing devices on {} did not grow within {}s, so DRBD was not resized yet; {}; then repeat the resize",
            pending.join(", "),
            ctx.peer_timeout.as_secs(),
            agent_hint(&pending)
        )));
    }
    crate::failpoint!("resize.before-drbd-grow");
    ctx.node.ops()?.grow_drbd(&doc)?;
    Ok(json!({"size": doc.size_kib * 1024}))
}

/// Rename a volume in the store: the DRBD resource, minor and backing device stay.
fn store_rename(ctx: &Ctx, sid: &str, doc: &VolumeDoc, new: &naming::VolName) -> Result<()> {
    let _g = ctx.store.lock(ALLOC_LOCK)?;
    if ctx.store.volume(sid, &new.name)?.is_some() {
        return Err(Error::Conflict(format!("volume {sid}:{} already exists", new.name)));
    }
    // The new name moves the file first, then the content is written (Store::update_volume).
    update(ctx, doc, |d| {
        d.volname = new.name.clone();
        d.vmid = new.vmid;
        d.base = new.base;
        Ok(Change::Desired)
    })
    .map(drop)
}

pub fn create_base(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let parsed = naming::parse_volname(volname)?;
    if parsed.base {
        return Err(crate::invalid!("{sid}:{volname} is already a template volume"));
    }
    let doc = load_created(ctx, sid, volname)?;
    if doc.state != VolumeState::Ready {
        return Err(refused!("volume {sid}:{volname} is not ready (state {:?})", doc.state));
    }
    if !doc.snapshots.is_empty() {
        return Err(refused!(
            "{sid}:{volname} has snapshots ({}): delete them before converting it to a template",
            doc.snapshots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    refuse_in_use(ctx, &doc, |on| format!("volume {sid}:{volname} is in use on {on}: stop the guest before converting it to a template"))?;
    let new = naming::parse_volname(&format!("base-{}", &volname["vm-".len()..]))?;
    store_rename(ctx, sid, &doc, &new)?;
    Ok(json!({"volname": naming::pve_volname(&new.name, doc.parent.as_deref())}))
}

pub fn rename(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let target_vmid = a.vmid("target_vmid")?;
    let doc = load_created(ctx, sid, volname)?;
    if doc.state != VolumeState::Ready {
        return Err(refused!("volume {sid}:{volname} is not ready (state {:?})", doc.state));
    }
    let new = match a.opt_str("target_volname")? {
        // PVE may hand a clone's target in its own form `<base>/<name>`: the name is what counts.
        Some(n) => naming::check_alloc_name(naming::split_pve_volname(n)?.1, target_vmid)?,
        None => {
            let names = ctx.store.volume_names(sid)?;
            naming::parse_volname(&naming::next_disk_name(target_vmid, names.iter().map(String::as_str))?)?
        }
    };
    if new.base != doc.base {
        return Err(crate::invalid!("renaming {volname} to {} would change whether it is a template; use create_base for that", new.name));
    }
    store_rename(ctx, sid, &doc, &new)?;
    Ok(json!({"volname": naming::pve_volname(&new.name, doc.parent.as_deref())}))
}

/// Linked clone of a template: a new volume on the template's replica nodes whose backing
/// on each is a thin snapshot of the template's backing (lvmthin `lvcreate -n <new> -prw -kn -s
/// <vg>/<base>`; file backend: a copy) with fresh DRBD metadata. The template's data is the
/// same on every replica (checked: UpToDate everywhere, connected, nothing out of sync), so the
/// clones are identical too and the initial sync is skipped as for a new thin volume.
pub fn clone(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    let vmid = a.vmid("vmid")?;
    let snap = a.opt_str("snap")?;
    let base = load_created(ctx, sid, volname)?;
    let name = format!("{sid}:{volname}");
    if !base.base {
        return Err(refused!("{name} is not a template: linked clones are made from templates (create_base first), else use a full clone"));
    }
    if snap.is_some() {
        return Err(refused!("linked clones of a snapshot are not supported: clone the template {name} itself, or use a full clone"));
    }
    if !base.backend.kind.caps().linked_clones {
        return Err(refused!("linked clones need thin backing; the lvm (thick) backend of {name} has none: use a full clone"));
    }
    if base.state != VolumeState::Ready {
        return Err(refused!("template {name} is not ready (state {:?})", base.state));
    }
    let unsynced = not_identical(ctx, &base)?;
    if !unsynced.is_empty() {
        return Err(refused!(
            "template {name} is not identical on all its replicas ({}): a linked clone needs the same base data on every node; wait for the sync, or use a full clone",
            unsynced.join("; ")
        ));
    }
    let deadline = ctx.started.unwrap_or_else(Instant::now) + ctx.alloc_budget;
    let doc = {
        let _g = ctx.store.lock_timeout(ALLOC_LOCK, left(deadline).min(crate::store::lock::default_timeout()))?;
        let names = ctx.store.volume_names(sid)?;
        let new = naming::next_disk_name(vmid, names.iter().map(String::as_str))?;
        let all = ctx.store.all_volumes()?;
        let resource = naming::resource_name(sid, &new);
        if let Some(o) = all.iter().find(|v| v.resource == resource) {
            return Err(Error::Conflict(format!(
                "the DRBD resource name {resource} for {sid}:{new} is already used by {}:{}: remove that first",
                o.storeid, o.volname
            )));
        }
        let nodes: Vec<String> = base.replicas.iter().map(|r| r.node.clone()).collect();
        let al = allocate(&all, &nodes, &Ranges::default())?;
        let doc = VolumeDoc {
            parent: Some(base.volname.clone()),
            ..VolumeDoc::new(sid, &new, vmid, base.size_kib, base.backend.clone(), &nodes, &al)
        };
        ctx.store.put_volume(&doc)?;
        doc
    };
    poke_peers(ctx, &doc, "clone");
    tracing::info!("linked clone {sid}:{} of {name} allocated as {} (minor {}, port {})", doc.volname, doc.resource, doc.minor, doc.port);
    finish_or_hand_off(ctx, &doc, deadline)?;
    // PVE's name for it: `<base>/<name>`, so PVE sees the base is in use (naming::pve_volname).
    Ok(json!({"volname": naming::pve_volname(&doc.volname, doc.parent.as_deref())}))
}

/// Replicas of `doc` that are not known to hold the same data as the others, with why.
fn not_identical(ctx: &Ctx, doc: &VolumeDoc) -> Result<Vec<String>> {
    let local = ctx.node.name().to_string();
    let others = peers_of(ctx, &doc);
    let mut views = published(ctx.store, &others, &doc.resource)?;
    if doc.replica(&local).is_some() {
        views.insert(local.clone(), ctx.node.ops()?.observe(doc)?);
    }
    let mut out = Vec::new();
    for (n, o) in views {
        match o {
            None => out.push(format!("{n}: no state")),
            Some(o) if o.disk != "UpToDate" => out.push(format!("{n}: {}", o.disk)),
            Some(o) => {
                // A count is not trusted on its own: not in a state DRBD calls in sync (drbd::peer_in_sync).
                for p in o.peers.iter().filter(|p| {
                    p.connection != "Connected"
                        || (p.out_of_sync_kib > 0 && !crate::drbd::peer_in_sync(&p.replication, &p.disk, p.out_of_sync_kib))
                }) {
                    out.push(format!("{n} sees {} {} with {} KiB out of sync", p.node, p.connection, p.out_of_sync_kib));
                }
            }
        }
    }
    Ok(out)
}
