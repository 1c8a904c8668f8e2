//! One reconcile pass of the agent: desired state (VolumeDocs) -> local
//! replicas, then publish this node's observed state (NodeState).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::node::LocalNode;
use crate::drbd::observe::{self, healed_outdated};
use crate::drbd::ResourceStatus;
use crate::error::{Error, Result};
use crate::node::NodeOps;
use crate::store::docs::{NodeState, NodeUsage, Resync, Space, VolumeDoc, VolumeObserved, VolumeState, FORMAT};
use crate::store::{Change, Store};

/// A `creating` volume older than this has no alloc working on it any more (an
/// alloc gives up after at most 30 s, protocol::ALLOC_BUDGET): the agents roll it back.
/// `DRBDPOOL_CREATE_EXPIRY_SECS`, else 300 s.
pub fn create_expiry() -> std::time::Duration {
    std::env::var("DRBDPOOL_CREATE_EXPIRY_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(std::time::Duration::from_secs(300))
}

/// Rewrite the NodeState at least this often even if nothing changed.
pub const HEARTBEAT_SECS: u64 = 60;
/// Re-measure storage space at most this often (an `lvs` per storage).
pub const SPACE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A snapshot missing here is taken only this soon after the helper recorded it: later
/// the data has moved on and a copy would silently differ from the other replicas'.
pub const SNAP_CATCHUP_SECS: u64 = 120;

/// The rollback in progress on another node (`since` of its mark), if any.
fn rollback_elsewhere(vol: &VolumeDoc, me: &str) -> Option<u64> {
    vol.snapshots.iter().filter_map(|s| s.rollback.as_ref()).find(|m| m.source != me).map(|m| m.since)
}

pub struct Agent {
    store: Store,
    local: LocalNode,
    /// resource -> (generation, dual_primary, resync settings) last ensured successfully by
    /// this process: a change of any of them rewrites the resource file and adjusts DRBD.
    applied: HashMap<String, (u64, bool, Resync)>,
    /// storeid -> resync settings (`storages/<storeid>.json`), read once per pass.
    resync: HashMap<String, Resync>,
    /// Resources of deleting docs already removed here (saves backend lookups).
    removed: HashSet<String>,
    /// resource -> generation for which `drbdadm resize` was run (once per generation:
    /// if DRBD's size still differs afterwards, repeating it every second would not help).
    resized: HashMap<String, u64>,
    /// resource -> rollback mark (`since`) for which this replica was discarded.
    discarded: HashMap<String, u64>,
    /// (resource, snapshot) found missing here and too old to take now (looked up once).
    snap_missing: HashSet<(String, String)>,
    last: Option<NodeState>,
    space: Option<(std::time::Instant, BTreeSet<String>, BTreeMap<String, Space>)>,
    /// The usage document last written (None: not yet this process).
    last_usage: Option<NodeUsage>,
}

type Usage = BTreeMap<String, BTreeMap<String, u64>>;

/// Allocation moves with every write: a change of more than 1 MiB plus 0.5 % of a volume's
/// figure, or a volume added or gone, is worth a write to pmxcfs.
fn usage_close(a: &Usage, b: &Usage) -> bool {
    a.len() == b.len()
        && a.iter().all(|(sid, x)| {
            b.get(sid).is_some_and(|y| {
                x.len() == y.len()
                    && x.iter().all(|(v, p)| y.get(v).is_some_and(|q| p.abs_diff(*q) <= (1 << 20) + (*p).max(*q) / 200))
            })
        })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Space moves with every write on thin pools; only a change of more than 0.5 %
/// of the total is worth a write to pmxcfs (which keeps every write on every node).
fn storages_close(a: &BTreeMap<String, Space>, b: &BTreeMap<String, Space>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, x)| {
            b.get(k).is_some_and(|y| {
                let tol = x.total.max(y.total) / 200;
                x.total == y.total && x.avail.abs_diff(y.avail) <= tol && x.used.abs_diff(y.used) <= tol
            })
        })
}

impl Agent {
    pub fn new(store: Store, local: LocalNode) -> Agent {
        Agent { store, local, applied: HashMap::new(), resync: HashMap::new(), removed: HashSet::new(), resized: HashMap::new(), discarded: HashMap::new(), snap_missing: HashSet::new(), last: None, space: None, last_usage: None }
    }

    pub fn local(&self) -> &LocalNode {
        &self.local
    }

    fn node(&self) -> &str {
        self.local.name()
    }

    /// Every VolumeDoc, read one by one so a bad document does not hide the others.
    /// Returns the docs and whether every document could be read.
    fn read_docs(&self) -> Result<(Vec<VolumeDoc>, bool)> {
        let mut docs = Vec::new();
        let mut complete = true;
        for sid in self.store.storeids()? {
            for name in self.store.volume_names(&sid)? {
                match self.store.volume(&sid, &name) {
                    Ok(Some(v)) => docs.push(v),
                    Ok(None) => {} // removed meanwhile
                    Err(e) => {
                        complete = false;
                        tracing::warn!(storeid = %sid, volume = %name, error = %e, "cannot read volume document");
                    }
                }
            }
        }
        Ok((docs, complete))
    }

    /// One pass. Errors of single volumes are recorded in their `error` field;
    /// only a failure to read the store or DRBD's status fails the pass.
    pub fn pass(&mut self) -> Result<()> {
        if self.last.is_none() {
            self.last = self.store.node_state(self.node()).ok().flatten();
        }
        let (mut docs, complete) = self.read_docs()?;
        self.expire_creating(&mut docs);
        let sids: BTreeSet<&str> = docs.iter().map(|v| v.storeid.as_str()).collect();
        self.resync = sids.into_iter().map(|sid| (sid.to_string(), self.local.resync_of(sid))).collect();
        let states = self.store.node_states().unwrap_or_default();
        let mut status: BTreeMap<String, ResourceStatus> =
            self.local.replication().status()?.into_iter().map(|s| (s.name.clone(), s)).collect();
        let mut volumes = BTreeMap::new();
        let mut mine = BTreeSet::new();
        // Moves to this node that may be finished once this pass's state is published.
        let mut finishing = Vec::new();

        let me = self.node().to_string();
        let max_hosts = self.local.max_hosts()?;
        for vol in docs.iter().filter(|v| v.released.contains(&me) && v.replica(&me).is_none()) {
            mine.insert(vol.resource.clone()); // not an orphan: this handles it
            if let Some(o) = self.reconcile_released(vol, status.get(&vol.resource)) {
                volumes.insert(vol.resource.clone(), o);
            }
        }
        for vol in docs.iter().filter(|v| v.replica(&me).is_some()) {
            mine.insert(vol.resource.clone());
            let res = vol.resource.clone();
            // An alloc on this node is creating it right now and does this node's part itself
            // (the same tool calls): leave it alone, keep what was published, until it is done.
            if vol.state == VolumeState::Creating && self.local.creation_in_progress(&res) {
                tracing::debug!(resource = %res, "an alloc on this node is creating it; not touching it this pass");
                if let Some(o) = self.last.as_ref().and_then(|s| s.volumes.get(&res)) {
                    volumes.insert(res, o.clone());
                }
                continue;
            }
            let r = match vol.state {
                VolumeState::Creating | VolumeState::Ready if vol.parked_on(&me, max_hosts) => self.reconcile_parked(vol, status.get(&res)),
                VolumeState::Creating | VolumeState::Ready => match rollback_elsewhere(vol, &me) {
                    Some(since) => self.reconcile_discard(vol, since).map(Some),
                    None => self.reconcile_live(vol, &mut status, &states, max_hosts).map(|o| o.map(|o| self.reconcile_snapshots(vol, o))),
                },
                VolumeState::Deleting => self.reconcile_delete(vol, status.get(&res)),
            };
            match r {
                Ok(Some(o)) => {
                    if vol.moving.as_ref().is_some_and(|m| m.to == me) {
                        finishing.push((vol.clone(), o.clone()));
                    }
                    volumes.insert(res, o);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(resource = %res, error = %e, "reconcile failed");
                    let mut o = match status.get(&res) {
                        Some(st) => self.local.observed_from(vol, st),
                        None => VolumeObserved { role: "Unknown".into(), disk: "Unconfigured".into(), ..Default::default() },
                    };
                    o.generation = self.applied.get(&res).map(|a| a.0).unwrap_or(0);
                    o.ready = o.ready && o.generation == vol.generation;
                    o.error = Some(e.to_string());
                    o.snapshots = self.published_snapshots(&res);
                    volumes.insert(res, o);
                }
            }
        }

        self.clear_healed_outdated(&docs, &status);

        // Resources configured here that no document wants (only when every doc was readable).
        if complete {
            let candidates: Vec<String> = self.local.replication().configured()?.into_iter().filter(|r| !mine.contains(r)).collect();
            // Re-read the documents after listing: an alloc writes its document before it
            // configures its replica, so whatever is configured by now has its document
            // visible now, while the list read at the start of the pass may predate it.
            let fresh: Option<Vec<VolumeDoc>> = if candidates.is_empty() {
                None
            } else {
                match self.read_docs()? {
                    (fresh, true) => Some(fresh),
                    _ => None,
                }
            };
            let wanted: Option<BTreeSet<String>> =
                fresh.as_ref().map(|f| f.iter().filter(|v| v.replica(&me).is_some()).map(|v| v.resource.clone()).collect());
            for res in candidates {
                if wanted.as_ref().is_none_or(|w| w.contains(&res)) {
                    continue; // wanted after all (picked up next pass), or the store could not be read in full
                }
                if let Some(o) = self.take_down_orphan(&res, status.get(&res)) {
                    volumes.insert(res, o);
                } else if let Some(spec) = fresh.as_deref().and_then(|f| self.orphan_backend(&res, f)) {
                    // Down now, and no document owns it: its volume was removed (a free or a
                    // roll-back that did not wait for this node, whose published state did not
                    // list the replica an alloc helper here had just made). Its backing is
                    // nobody's data: remove it (re-checked under the local lock).
                    match self.local.remove_orphan_backing(&res, &spec) {
                        Ok(_) => {}
                        Err(e) => tracing::warn!(resource = %res, error = %e, "cannot remove the backing of a removed volume; kept"),
                    }
                }
            }
        }

        let storages = self.storages(&docs);
        crate::failpoint!("agent.before-publish");
        self.publish(storages, volumes)?;
        // After publishing: whoever reads the document without the old replica finds this
        // node's UpToDate report already there.
        for (vol, o) in &finishing {
            self.finish_move(vol, o, &states);
        }

        // A deleting doc that no node lists anymore is finished: remove it.
        if complete {
            let states = self.store.node_states()?;
            for vol in docs.iter().filter(|v| v.state == VolumeState::Deleting) {
                if states.iter().all(|s| !s.volumes.contains_key(&vol.resource)) {
                    // Re-read under our eyes: only remove what is still `deleting`.
                    if let Ok(Some(cur)) = self.store.volume(&vol.storeid, &vol.volname) {
                        if cur.state == VolumeState::Deleting && cur.resource == vol.resource {
                            self.store.remove_volume(&vol.storeid, &vol.volname)?;
                            tracing::info!(resource = %vol.resource, "all replicas gone; volume document removed");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Drop outdated marks that the kernel shows are over: DRBD 8.4 runs no unfence hook
    /// when a fenced peer reconnects with nothing to resync (a missed ping under load fences
    /// the peer, then it is back in a second), and the mark would refuse that replica's
    /// promotion for good. DRBD itself is the witness, asked again under the volume lock.
    fn clear_healed_outdated(&self, docs: &[VolumeDoc], status: &BTreeMap<String, ResourceStatus>) {
        let me = self.node();
        for vol in docs.iter().filter(|v| !v.outdated.is_empty() && v.state == VolumeState::Ready) {
            let Some(st) = status.get(&vol.resource) else { continue };
            for (node, peer_id) in healed_outdated(vol, me, st) {
                let fresh = || -> Result<bool> {
                    Ok(match self.local.replication().resource_status(&vol.resource)? {
                        Some(st) => healed_outdated(vol, me, &st).iter().any(|(n, _)| *n == node),
                        None => false,
                    })
                };
                match crate::fence::unfence_if(&self.store, me, &vol.resource, Some(peer_id), std::time::Duration::from_secs(1), fresh) {
                    Ok(Some(n)) => tracing::info!(resource = %vol.resource, node = %n, "outdated mark dropped: DRBD shows the replica UpToDate and in sync"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(resource = %vol.resource, node = %node, error = %e, "cannot drop the outdated mark now; retrying next pass"),
                }
            }
        }
    }

    /// Roll back volumes whose alloc died (still `creating` after `create_expiry`):
    /// mark them `deleting` so every replica node removes what it made. Any agent
    /// may do it (the allocating node may be the one that died); under the
    /// volume lock, and the alloc only marks a volume ready that is still `creating`.
    fn expire_creating(&self, docs: &mut [VolumeDoc]) {
        let limit = create_expiry().as_secs_f64();
        for v in docs.iter_mut().filter(|v| v.state == VolumeState::Creating && (now().saturating_sub(v.created) as f64) > limit) {
            let mut rolled = false;
            let r = self.store.update_volume_timeout(v, std::time::Duration::from_secs(1), |cur| {
                if cur.state != VolumeState::Creating || cur.resource != v.resource {
                    return Ok(Change::Unchanged);
                }
                cur.state = VolumeState::Deleting;
                rolled = true;
                Ok(Change::Desired)
            });
            if let (true, Ok(Some(cur))) = (rolled, &r) {
                tracing::warn!(resource = %cur.resource, "volume still `creating` after {limit}s: its alloc died; rolling it back");
            }
            match r {
                Ok(Some(cur)) => *v = cur,
                Ok(None) => {}
                Err(e) => tracing::warn!(resource = %v.resource, error = %e, "cannot roll back a stale `creating` volume now; retrying next pass"),
            }
        }
    }

    fn reconcile_live(
        &mut self,
        vol: &VolumeDoc,
        status: &mut BTreeMap<String, ResourceStatus>,
        states: &[NodeState],
        max_hosts: usize,
    ) -> Result<Option<VolumeObserved>> {
        let res = &vol.resource;
        // DRBD 8.4 during a move: this replica stays and its peer changes from the move's
        // source to its target. Never while the source is Primary: it would lose its only
        // peer under a running guest (the move refuses that; this closes the race with a
        // guest started meanwhile, as DRBD here sees it).
        if let Some(m) = vol.moving.as_ref().filter(|_| vol.replicas.len() > max_hosts) {
            if let Some(c) = status.get(res).and_then(|st| st.connections.iter().find(|c| c.conn_name == m.from && c.peer_role == "Primary")) {
                return Err(Error::Refused(format!(
                    "{res}: moving {} to {}, but {} is Primary here ({}): not switching peers under a running guest; \
                     migrate the guest off {} (or stop it), then the move goes on",
                    m.from, m.to, m.from, c.connection, m.from
                )));
            }
        }
        // Not up here: (re)create it only if the document still wants it. A new replica is
        // first announced (listed, not ready): a `deleting` document is removed only once no
        // node lists its resource, so either that removal sees the announcement and waits,
        // or the re-read below sees the document gone or deleting. The re-read also stops a
        // pass whose document list predates a `free` from re-creating what that free removed.
        if !status.contains_key(res) {
            if !self.last.as_ref().is_some_and(|s| s.volumes.contains_key(res)) {
                self.announce(res)?;
            }
            let live = matches!(self.store.volume(&vol.storeid, &vol.volname)?, Some(cur) if cur.resource == *res && cur.state != VolumeState::Deleting);
            if !live {
                tracing::info!(resource = %res, "volume rolled back or removed meanwhile; not creating a replica");
                self.local.remove_replica(vol)?; // leftovers of an interrupted attempt; idempotent
                self.removed.insert(res.clone());
                return Ok(None);
            }
        }
        self.removed.remove(res);
        let key = (vol.generation, vol.dual_primary.is_some(), self.resync.get(&vol.storeid).copied().unwrap_or_default());
        if self.applied.get(res) != Some(&key) || !status.contains_key(res) {
            self.applied.remove(res);
            self.local.ensure_replica(vol)?;
            self.applied.insert(res.clone(), key);
            self.refresh(res, status)?;
        }
        let first = vol.replicas.first().is_some_and(|r| r.node == self.node());
        if first {
            let st = status.get(res).ok_or_else(|| Error::Tool(format!("{res}: not up after apply")))?;
            if observe::initial_sync_due(vol, st) {
                let thin = self.local.is_thin(&vol.backend)?;
                if thin && vol.state == VolumeState::Creating {
                    tracing::info!(resource = %res, "fresh thin replicas connected: skipping the initial sync");
                    self.local.skip_initial_sync(vol)?;
                    self.refresh(res, status)?;
                } else if thin {
                    // A ready volume whose replicas all show fresh metadata holds data that fresh
                    // metadata does not describe (a rollback or clone that failed half-way wipes
                    // metadata, not data): declaring it in sync could hide differences.
                    return Err(Error::Refused(format!(
                        "{res}: every replica has fresh metadata but the volume is not new: not declaring them in sync; \
                         pick the replica with the right data and make it the sync source by hand (drbdadm primary --force {res}; drbdadm secondary {res})"
                    )));
                } else {
                    tracing::info!(resource = %res, "fresh thick replicas connected: starting the full initial sync from here");
                    self.local.start_initial_sync(vol)?;
                    self.refresh(res, status)?;
                }
            }
            // Grow DRBD once every replica reports its backing grown for this generation.
            let st = &status[res];
            let size = st.devices.first().and_then(|d| d.size_kib).unwrap_or(0);
            if size < vol.size_kib
                && self.resized.get(res) != Some(&vol.generation)
                && self.all_replicas_at(vol, states)
                && st.connections.iter().all(|c| c.connection == "Connected")
            {
                tracing::info!(resource = %res, from = size, to = vol.size_kib, "growing the DRBD device");
                self.local.grow_drbd(vol)?;
                self.resized.insert(res.clone(), vol.generation);
                self.refresh(res, status)?;
            }
        }
        let st = status.get(res).ok_or_else(|| Error::Tool(format!("{res}: not up after apply")))?;
        Ok(Some(self.local.observed_from(vol, st)))
    }

    /// A move's source that DRBD leaves out here (8.4): down, backing kept, published
    /// Outdated (its data stops at the switch) until the move is over.
    fn reconcile_parked(&mut self, vol: &VolumeDoc, st: Option<&ResourceStatus>) -> Result<Option<VolumeObserved>> {
        let res = &vol.resource;
        if st.is_some() {
            self.local.park_replica(vol)?;
            self.applied.remove(res);
            tracing::info!(resource = %res, to = %vol.moving.as_ref().map(|m| m.to.as_str()).unwrap_or(""), "replica moving away: taken down, backing kept until the new one is UpToDate");
        }
        Ok(Some(VolumeObserved {
            ready: false,
            generation: vol.generation,
            role: "Secondary".into(),
            disk: "Outdated".into(),
            snapshots: self.published_snapshots(res),
            ..Default::default()
        }))
    }

    /// On a move's target: once this replica is UpToDate at the document's generation and
    /// the source is not in use (or its agent is silent), drop the source from the document
    /// (it goes to `released`; its agent removes it). Under the volume lock, only if the
    /// same move is still recorded.
    fn finish_move(&self, vol: &VolumeDoc, o: &VolumeObserved, states: &[NodeState]) {
        let Some(m) = vol.moving.as_ref().filter(|m| m.to == self.node()) else { return };
        if o.disk != "UpToDate" || o.generation != vol.generation || o.error.is_some() {
            return;
        }
        let fresh = |s: &&NodeState| now().saturating_sub(s.updated) < crate::replace::REPORTS_WITHIN.as_secs();
        let in_use = states
            .iter()
            .filter(fresh)
            .find(|s| s.node == m.from)
            .and_then(|s| s.volumes.get(&vol.resource))
            .is_some_and(|f| f.role == "Primary" || f.open);
        if in_use {
            tracing::info!(resource = %vol.resource, from = %m.from, "new replica UpToDate; the old one goes once the guest has left {}", m.from);
            return;
        }
        let r = self.store.update_volume(vol, |cur| {
            if cur.moving.as_ref() != Some(m) || cur.resource != vol.resource {
                return Ok(crate::store::Change::Unchanged);
            }
            cur.replicas.retain(|r| r.node != m.from);
            cur.outdated.retain(|n| *n != m.from);
            if !cur.released.contains(&m.from) {
                cur.released.push(m.from.clone());
            }
            cur.moving = None;
            Ok(crate::store::Change::Desired)
        });
        match r {
            Ok(_) => {
                crate::failpoint!("move.after-finish");
                for mark in self.store.fence_marks().unwrap_or_default().iter().filter(|k| k.resource == vol.resource && k.target == m.from) {
                    let _ = self.store.remove_fence_mark(mark);
                }
                tracing::info!(resource = %vol.resource, from = %m.from, to = %m.to, "move finished: the new replica is UpToDate, the old one is released")
            }
            Err(e) => tracing::warn!(resource = %vol.resource, error = %e, "cannot record the finished move; trying again next pass"),
        }
    }

    /// A replica a finished move dropped: remove it here once it is not in use, then take
    /// this node's name off the document's `released` list. None: nothing left to publish.
    fn reconcile_released(&mut self, vol: &VolumeDoc, st: Option<&ResourceStatus>) -> Option<VolumeObserved> {
        let res = &vol.resource;
        if let Err(e) = self.local.remove_released(vol) {
            tracing::warn!(resource = %res, error = %e, "released replica not removed yet");
            let mut o = match st {
                Some(st) => self.local.observed_from(vol, st),
                None => VolumeObserved { role: "Unknown".into(), disk: "Unknown".into(), ..Default::default() },
            };
            o.ready = false;
            o.error = Some(format!("{e} (this replica was moved away; it is removed once the guest has left)"));
            return Some(o);
        }
        self.applied.remove(res);
        crate::failpoint!("move.after-release-remove");
        let me = self.node().to_string();
        let r = self.store.update_volume(vol, |cur| {
            if cur.resource != vol.resource || !cur.released.contains(&me) {
                return Ok(crate::store::Change::Unchanged);
            }
            cur.released.retain(|n| *n != me);
            Ok(crate::store::Change::Quiet)
        });
        if let Err(e) = r {
            tracing::warn!(resource = %res, error = %e, "released replica removed; cannot update the document yet");
        } else {
            tracing::info!(resource = %res, "released replica removed");
        }
        None
    }

    fn published_snapshots(&self, res: &str) -> Vec<String> {
        self.last.as_ref().and_then(|s| s.volumes.get(res)).map(|o| o.snapshots.clone()).unwrap_or_default()
    }

    /// Make this node's snapshots follow the document: take missing recent ones, delete
    /// removed ones. What was published last is what exists here (no backend listing per pass).
    fn reconcile_snapshots(&mut self, vol: &VolumeDoc, mut o: VolumeObserved) -> VolumeObserved {
        let res = &vol.resource;
        let have = self.published_snapshots(res);
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for s in have.iter().filter(|s| !vol.snapshots.iter().any(|d| &d.name == *s)) {
            match self.local.remove_snapshot(vol, s) {
                Ok(()) => tracing::info!(resource = %res, snap = %s, "snapshot deleted"),
                Err(e) => {
                    errors.push(format!("deleting snapshot {s}: {e}"));
                    out.push(s.clone());
                }
            }
        }
        for d in &vol.snapshots {
            if have.contains(&d.name) {
                out.push(d.name.clone());
                continue;
            }
            let key = (res.clone(), d.name.clone());
            if self.snap_missing.contains(&key) {
                continue;
            }
            match self.local.snapshot_path(vol, &d.name) {
                Ok(Some(_)) => {
                    out.push(d.name.clone());
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    errors.push(format!("looking up snapshot {}: {e}", d.name));
                    continue;
                }
            }
            if now().saturating_sub(d.created) > SNAP_CATCHUP_SECS {
                tracing::warn!(resource = %res, snap = %d.name, "snapshot missing here and too old to take now: not rolled back from here");
                self.snap_missing.insert(key);
                continue;
            }
            match self.local.snapshot(vol, &d.name) {
                Ok(()) => {
                    crate::failpoint!("agent.after-snapshot");
                    out.push(d.name.clone())
                }
                Err(e) => errors.push(format!("taking snapshot {}: {e}", d.name)),
            }
        }
        o.snapshots = out;
        if !errors.is_empty() {
            o.error = Some(errors.join("; "));
        }
        o
    }

    /// Another replica is being rolled back: stay down with fresh metadata until the
    /// mark is gone, then the normal path brings this replica up for a full sync.
    fn reconcile_discard(&mut self, vol: &VolumeDoc, since: u64) -> Result<VolumeObserved> {
        let res = &vol.resource;
        if self.discarded.get(res) != Some(&since) {
            self.applied.remove(res);
            self.local.discard_replica(vol)?;
            crate::failpoint!("agent.after-discard");
            self.discarded.insert(res.clone(), since);
        }
        Ok(VolumeObserved {
            ready: false,
            generation: vol.generation,
            role: "Unknown".into(),
            disk: "Discarded".into(),
            snapshots: self.published_snapshots(res),
            ..Default::default()
        })
    }

    /// Every other replica's agent reports this generation, without error.
    fn all_replicas_at(&self, vol: &VolumeDoc, states: &[NodeState]) -> bool {
        vol.replicas.iter().filter(|r| r.node != self.node()).all(|r| {
            states
                .iter()
                .find(|s| s.node == r.node)
                .and_then(|s| s.volumes.get(&vol.resource))
                .is_some_and(|o| o.generation >= vol.generation && o.error.is_none())
        })
    }

    fn refresh(&self, res: &str, status: &mut BTreeMap<String, ResourceStatus>) -> Result<()> {
        match self.local.status_of(res)? {
            Some(s) => status.insert(res.to_string(), s),
            None => status.remove(res),
        };
        Ok(())
    }

    /// Ok(None): nothing left here (not listed in the NodeState any more).
    fn reconcile_delete(&mut self, vol: &VolumeDoc, st: Option<&ResourceStatus>) -> Result<Option<VolumeObserved>> {
        self.applied.remove(&vol.resource);
        if st.is_none() && self.removed.contains(&vol.resource) {
            return Ok(None);
        }
        self.local.remove_replica(vol)?;
        self.removed.insert(vol.resource.clone());
        Ok(None)
    }

    /// Take down a resource no document wants. Its backing device is kept (no
    /// document says which backend holds it, and it may be someone's data);
    /// an open or Primary one is left up and reported (Invariant 2).
    fn take_down_orphan(&self, res: &str, st: Option<&ResourceStatus>) -> Option<VolumeObserved> {
        if let Some(st) = st {
            let open = st.devices.iter().any(|d| d.open == Some(true));
            if st.role == "Primary" || open {
                tracing::error!(resource = %res, role = %st.role, open, "resource not wanted by any volume document but in use: left up");
                return Some(VolumeObserved {
                    role: st.role.clone(),
                    disk: st.devices.first().map(|d| d.disk.clone()).unwrap_or_default(),
                    open,
                    error: Some(format!(
                        "{res} is configured on {} but no volume document wants it, and it is {}{}: left up; check it by hand",
                        self.node(),
                        st.role,
                        if open { " and open" } else { "" }
                    )),
                    ..Default::default()
                });
            }
        }
        match self.local.replication().down(res) {
            Ok(()) => {
                tracing::warn!(resource = %res, "resource not wanted by any volume document: taken down (backing device kept)");
                None
            }
            Err(e) => Some(VolumeObserved {
                role: "Unknown".into(),
                disk: "Unknown".into(),
                error: Some(format!("{res}: not wanted by any volume document; taking it down failed: {e}")),
                ..Default::default()
            }),
        }
    }

    /// The backend of `res` when it is exactly a drbdpool resource name `<storeid>.<volname>`
    /// of a storage that still has volumes here (their documents give the backend), and no
    /// document in `docs` owns it. None: not provably ours; keep whatever it is.
    fn orphan_backend(&self, res: &str, docs: &[VolumeDoc]) -> Option<crate::store::docs::BackendSpec> {
        if docs.iter().any(|v| v.resource == res) {
            return None;
        }
        docs.iter()
            .find(|v| {
                res.strip_prefix(v.storeid.as_str()).and_then(|r| r.strip_prefix('.')).is_some_and(|name| {
                    crate::naming::parse_volname(name).is_ok() && crate::naming::resource_name(&v.storeid, name) == res
                })
            })
            .map(|v| v.backend.clone())
    }

    /// Space of every storage that has volumes, as this node sees it.
    fn storages(&mut self, docs: &[VolumeDoc]) -> BTreeMap<String, Space> {
        let ids: BTreeSet<String> = docs.iter().map(|v| v.storeid.clone()).collect();
        if let Some((at, known, s)) = &self.space {
            if at.elapsed() < SPACE_EVERY && *known == ids {
                return s.clone();
            }
        }
        let (out, usage) = self.measure(docs);
        self.space = Some((std::time::Instant::now(), ids, out.clone()));
        if let Err(e) = self.publish_usage(usage) {
            tracing::warn!(error = %e, "cannot publish the volumes' allocation; `list` reports their full size meanwhile");
        }
        out
    }

    fn publish_usage(&mut self, storages: Usage) -> Result<()> {
        if self.last_usage.is_none() {
            self.last_usage = self.store.node_usages()?.into_iter().find(|u| u.node == self.node());
        }
        if self.last_usage.as_ref().is_some_and(|u| usage_close(&u.storages, &storages)) {
            return Ok(());
        }
        let u = NodeUsage { format: FORMAT, node: self.node().to_string(), updated: now(), storages };
        self.store.put_node_usage(&u)?;
        self.last_usage = Some(u);
        Ok(())
    }

    /// Space per storage, and storeid -> volname -> bytes allocated here for every volume
    /// with a replica here (not being removed): one backend listing per storage (lvmthin:
    /// one `lvs` answers both).
    fn measure(&self, docs: &[VolumeDoc]) -> (BTreeMap<String, Space>, Usage) {
        let me = self.node();
        let mut by_sid: BTreeMap<&str, (&VolumeDoc, Vec<&VolumeDoc>)> = BTreeMap::new();
        for v in docs {
            let e = by_sid.entry(v.storeid.as_str()).or_insert((v, Vec::new()));
            if v.replica(me).is_some() && v.state != VolumeState::Deleting {
                e.1.push(v);
            }
        }
        let (mut space, mut usage) = (BTreeMap::new(), Usage::new());
        for (sid, (first, mine)) in by_sid {
            let names: Vec<&str> = mine.iter().map(|v| v.resource.as_str()).collect();
            match self.local.space_and_allocated(&first.backend, &names) {
                Ok((s, a)) => {
                    space.insert(sid.to_string(), s);
                    let m: BTreeMap<String, u64> =
                        mine.iter().filter_map(|v| a.get(&v.resource).map(|b| (v.volname.clone(), *b))).collect();
                    if !m.is_empty() {
                        usage.insert(sid.to_string(), m);
                    }
                }
                Err(e) => tracing::debug!(storeid = %sid, error = %e, "no space figures for this storage here"),
            }
        }
        (space, usage)
    }

    /// Write the NodeState only when its content changed, or for the heartbeat.
    /// Publish at once that this node is about to create a replica of `res`.
    fn announce(&mut self, res: &str) -> Result<()> {
        let mut s = self.last.clone().unwrap_or_else(|| NodeState::new(self.node(), 0, BTreeMap::new(), BTreeMap::new()));
        s.volumes.insert(res.to_string(), VolumeObserved { role: "Unknown".into(), disk: "Unconfigured".into(), ..Default::default() });
        s.updated = now();
        self.store.put_node_state_since(self.last.as_ref(), &s)?;
        self.last = Some(s);
        Ok(())
    }

    fn publish(&mut self, storages: BTreeMap<String, Space>, volumes: BTreeMap<String, VolumeObserved>) -> Result<()> {
        let t = now();
        if let Some(prev) = &self.last {
            let same = prev.volumes == volumes && storages_close(&prev.storages, &storages);
            if same && t < prev.updated + HEARTBEAT_SECS && prev.updated <= t {
                return Ok(());
            }
        }
        let s = NodeState::new(self.node(), t, storages, volumes);
        self.store.put_node_state_since(self.last.as_ref(), &s)?;
        tracing::debug!(node = %s.node, "node state published");
        self.last = Some(s);
        Ok(())
    }
}
