//! `LocalNode`: this node's side of a volume (NodeOps), built from a Backend
//! (per the VolumeDoc's BackendSpec) and a Replication (real DRBD or SimDrbd,
//! chosen by `replication_from_env`).

use std::sync::Arc;

use crate::backend::{backend_for, Backend, Backing};
use crate::drbd::{drbd_backing_kib, observe, PlanHost, Replication, ResourcePlan, ResourceStatus};
use crate::error::{Error, Result};
use crate::drbd::sim::SimDrbd;
use crate::exec::{RealRunner, Runner};
use super::NodeOps;
use crate::store::docs::{BackendSpec, Space, VolumeDoc, VolumeObserved, VolumeState};
use crate::store::Store;

/// Builds the backend of a BackendSpec. Production: `backend_for` with the real
/// runner; tests may map one spec to per-node directories.
pub type BackendFactory = Arc<dyn Fn(&BackendSpec) -> Result<Box<dyn Backend>> + Send + Sync>;

/// The real DRBD side (drbdadm/drbdsetup: crate::drbd::real::DrbdAdm).
pub fn real_replication(runner: Arc<dyn Runner>) -> Result<Box<dyn Replication>> {
    Ok(Box::new(crate::drbd::real::DrbdAdm::new(runner)))
}

/// `DRBDPOOL_DRBD=real|sim` (default real).
pub fn replication_from_env(node: &str, runner: Arc<dyn Runner>) -> Result<Box<dyn Replication>> {
    match std::env::var("DRBDPOOL_DRBD").unwrap_or_default().as_str() {
        "" | "real" => real_replication(runner),
        "sim" => Ok(Box::new(SimDrbd::from_env(node)?)),
        other => Err(Error::InvalidInput(format!("DRBDPOOL_DRBD={other:?}: use `real` or `sim`"))),
    }
}

/// This node's side of volumes, for the plugin handlers.
pub fn local_node(store: &Store, node: &str) -> Result<Box<dyn NodeOps>> {
    Ok(Box::new(LocalNode::from_env(store, node)?))
}

/// How often demote looks at an open device before refusing (300 ms apart).
const DEMOTE_OPEN_CHECKS: u32 = 3;

/// How the fresh replicas of a new volume get their first data generation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InitialSync {
    /// Thin backings read zeroes everywhere: the replicas are declared identical.
    Skip,
    /// Thick backing: this node's data is the source of a full sync.
    Full,
}

pub struct LocalNode {
    store: Store,
    node: String,
    backends: BackendFactory,
    repl: Box<dyn Replication>,
}

impl LocalNode {
    pub fn new(store: Store, node: &str, runner: Arc<dyn Runner>, repl: Box<dyn Replication>) -> LocalNode {
        let backends: BackendFactory = Arc::new(move |spec| backend_for(spec, runner.clone()));
        LocalNode { store, node: node.to_string(), backends, repl }
    }

    /// The real runner and the DRBD side of `DRBDPOOL_DRBD` (the agent and the plugin).
    pub fn from_env(store: &Store, node: &str) -> Result<LocalNode> {
        let runner: Arc<dyn Runner> = Arc::new(RealRunner);
        let repl = replication_from_env(node, runner.clone())?;
        Ok(LocalNode::new(store.clone(), node, runner, repl))
    }

    pub fn with_backends(store: Store, node: &str, backends: BackendFactory, repl: Box<dyn Replication>) -> LocalNode {
        LocalNode { store, node: node.to_string(), backends, repl }
    }

    pub fn replication(&self) -> &dyn Replication {
        &*self.repl
    }

    pub fn backend(&self, spec: &BackendSpec) -> Result<Box<dyn Backend>> {
        (self.backends)(spec)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serialize this node's changes of one resource between the agent and
    /// plugin helpers running at the same time (e.g. two `losetup --find` for one
    /// image, or a doubled initial-sync decision). A local flock: it dies with the process.
    fn lock(&self, res: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
        self.flock(&format!("{}-{res}.lock", self.node), nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(p, e)| Error::Tool(format!("cannot lock {}: {e}", p.display())))
    }

    /// Lock file `name` in DRBDPOOL_RUN_DIR (/run/drbdpool); Err carries the path.
    fn flock(
        &self,
        name: &str,
        how: nix::fcntl::FlockArg,
    ) -> std::result::Result<nix::fcntl::Flock<std::fs::File>, (std::path::PathBuf, std::io::Error)> {
        let dir = std::env::var_os("DRBDPOOL_RUN_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/run/drbdpool".into());
        std::fs::create_dir_all(&dir).map_err(|e| (dir.clone(), e))?;
        let p = dir.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| (p.clone(), e))?;
        nix::fcntl::Flock::lock(f, how).map_err(|(_, e)| (p, std::io::Error::from(e)))
    }

    fn creation_lock_name(&self, res: &str) -> Result<String> {
        crate::backend::lvmreport::check_name(res)?;
        Ok(format!("{}-{res}.creating", self.node))
    }

    /// Whether an alloc on this node is creating `res` right now (it holds the creation lock).
    pub fn creation_in_progress(&self, res: &str) -> bool {
        let Ok(name) = self.creation_lock_name(res) else { return false };
        matches!(self.flock(&name, nix::fcntl::FlockArg::LockExclusiveNonblock),
                 Err((_, e)) if e.raw_os_error() == Some(nix::errno::Errno::EWOULDBLOCK as i32))
    }

    fn check_replica(&self, vol: &VolumeDoc) -> Result<()> {
        if vol.replica(&self.node).is_none() {
            return Err(Error::InvalidInput(format!(
                "{}: node {} is not one of its replicas ({})",
                vol.resource,
                self.node,
                vol.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// The resource plan for this node, with addresses from the node registry.
    pub fn plan(&self, vol: &VolumeDoc, backing: &Backing, thin: bool, dual_primary: bool) -> Result<ResourcePlan> {
        let mut hosts = Vec::new();
        if vol.parked_on(&self.node, self.repl.max_hosts()?) {
            return Err(Error::Refused(format!(
                "{}: this node's replica is moving away and DRBD here takes only {} hosts per resource: it stays down until the move is over",
                vol.resource,
                self.repl.max_hosts()?
            )));
        }
        for r in vol.drbd_replicas(self.repl.max_hosts()?) {
            let n = self.store.node(&r.node)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "{}: replica node {} has no entry in the node registry (nodes/{}.json): add it with `drbdpool node add`",
                    vol.resource, r.node, r.node
                ))
            })?;
            hosts.push(PlanHost { name: r.node.clone(), node_id: r.node_id, address: n.address });
        }
        Ok(ResourcePlan {
            resource: vol.resource.clone(),
            minor: vol.minor,
            port: vol.port,
            secret: vol.secret.clone(),
            size_kib: vol.size_kib,
            local: self.node.clone(),
            backing: backing.path.clone(),
            hosts,
            thin,
            dual_primary,
            handler_store: {
                let root = self.store.root().to_string_lossy().into_owned();
                (root != crate::store::DEFAULT_ROOT).then_some(root)
            },
            resync: self.resync_of(&vol.storeid),
        })
    }

    /// This node's DRBD status of `res` alone.
    pub fn status_of(&self, res: &str) -> Result<Option<ResourceStatus>> {
        self.repl.resource_status(res)
    }

    /// DRBD's view of `vol` here, as this node publishes it (drbd/observe.rs).
    pub fn observed_from(&self, vol: &VolumeDoc, st: &ResourceStatus) -> VolumeObserved {
        observe::volume(vol, &self.node, st)
    }

    /// Thick backends: make this node's data the source of a full initial sync.
    pub fn start_initial_sync(&self, vol: &VolumeDoc) -> Result<()> {
        self.initial_sync(vol, InitialSync::Full)
    }

    /// The first data generation of fresh replicas, under the local lock and only while
    /// every replica is connected with fresh metadata (`initial_sync_due`).
    fn initial_sync(&self, vol: &VolumeDoc, how: InitialSync) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        if how == InitialSync::Skip && !self.is_thin(&vol.backend)? {
            return Err(Error::Refused(format!(
                "{}: the initial sync can only be skipped on thin backends (lvmthin, file)",
                vol.resource
            )));
        }
        let st = self.status_of(&vol.resource)?.ok_or_else(|| Error::Refused(format!("{}: not up on {}", vol.resource, self.node)))?;
        // The agent of this node and the alloc helper both try a skip; whoever comes second
        // finds every replica connected and UpToDate: nothing left to skip.
        if how == InitialSync::Skip && observe::all_uptodate(vol, &st) {
            return Ok(());
        }
        if !observe::initial_sync_due(vol, &st) {
            let when = match how {
                InitialSync::Skip => "can be skipped only while every replica is connected and Inconsistent with fresh metadata",
                InitialSync::Full => "starts only when every replica is connected and Inconsistent",
            };
            return Err(Error::Refused(format!("{}: the initial sync {when}", vol.resource)));
        }
        match how {
            InitialSync::Skip => self.repl.skip_initial_sync(&vol.resource),
            InitialSync::Full => self.repl.start_initial_sync(&vol.resource),
        }
    }

    /// `volume force-primary` (src/recover.rs): this replica's Consistent or Outdated data
    /// becomes the good copy, under the local lock and only while no peer is connected.
    pub fn force_good_copy(&self, vol: &VolumeDoc) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        let st = self.status_of(&vol.resource)?.ok_or_else(|| Error::Refused(format!("{}: not up on {}", vol.resource, self.node)))?;
        if let Some(c) = st.connections.iter().find(|c| c.connection == "Connected") {
            return Err(Error::Refused(format!("{}: Connected to {} now: not forcing this replica", vol.resource, c.conn_name)));
        }
        if st.devices.iter().all(|d| d.disk == "UpToDate") {
            return Ok(()); // done already (a second run after a crash)
        }
        self.repl.make_sync_source(&vol.resource)
    }

    /// Whether the backend reads zeroes where nothing was written (no initial sync needed).
    pub fn is_thin(&self, spec: &BackendSpec) -> Result<bool> {
        Ok(self.backend(spec)?.thin())
    }

    /// The resync settings of a storage (`storages/<storeid>.json`); DRBD's defaults
    /// are not used: an unreadable or missing document gives drbdpool's (Resync::default).
    pub fn resync_of(&self, storeid: &str) -> crate::store::docs::Resync {
        match self.store.storage_doc(storeid) {
            Ok(Some(d)) => d.resync,
            Ok(None) => Default::default(),
            Err(e) => {
                tracing::warn!(storeid, error = %e, "cannot read the storage's resync settings; using the defaults");
                Default::default()
            }
        }
    }

    /// The storage's space and the bytes allocated in the local backing devices `names`
    /// (Backend::space_and_allocated: one `lvs` on lvmthin).
    pub fn space_and_allocated(&self, spec: &BackendSpec, names: &[&str]) -> Result<(Space, std::collections::BTreeMap<String, u64>)> {
        self.backend(spec)?.space_and_allocated(names)
    }
}

impl NodeOps for LocalNode {
    fn name(&self) -> &str {
        &self.node
    }

    fn ensure_replica(&self, vol: &VolumeDoc) -> Result<VolumeObserved> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        // The caller's copy may predate a free or a creation roll-back whose removal here
        // (under this same lock) has already run: creating now would leave a backing device
        // no document owns. So the store's current document decides, read under the lock.
        let current = self.store.volume(&vol.storeid, &vol.volname)?;
        if vol.state == VolumeState::Deleting
            || current.as_ref().is_none_or(|c| c.state == VolumeState::Deleting || c.resource != vol.resource)
        {
            return Err(Error::Refused(format!("{}: volume is being deleted (or is gone); not creating a replica", vol.resource)));
        }
        let backend = self.backend(&vol.backend)?;
        // A linked clone being created gets its backing from the base's (only then: a
        // replica lost later is recreated empty and resyncs fully).
        if let (VolumeState::Creating, Some(parent)) = (vol.state, &vol.parent) {
            if backend.lookup(&vol.resource)?.is_none() {
                self.clone_backing(vol, parent, &*backend)?;
            }
        }
        // create() is idempotent and grows an existing device that is too small.
        let (backing, made) = backend.create_new(&vol.resource, drbd_backing_kib(vol.size_kib))?;
        crate::failpoint!("agent.after-backing");
        let plan = self.plan(vol, &backing, backend.thin(), vol.dual_primary.is_some())?;
        // Made just now on a thin backend: reads zeroes, so it has no DRBD metadata to look for.
        let applied = if made && backend.thin() { self.repl.apply_blank(&plan)? } else { self.repl.apply(&plan)? };
        crate::failpoint!("agent.after-apply");
        tracing::info!(resource = %vol.resource, created_md = applied.created_metadata, changed = applied.changed_config, "replica ensured");
        let st = self.status_of(&vol.resource)?.ok_or_else(|| {
            Error::Tool(format!("{}: apply succeeded but the resource is not up on {}", vol.resource, self.node))
        })?;
        Ok(self.observed_from(vol, &st))
    }

    fn remove_replica(&self, vol: &VolumeDoc) -> Result<()> {
        self.check_replica(vol)?;
        self.remove_here(vol)
    }

    fn observe(&self, vol: &VolumeDoc) -> Result<Option<VolumeObserved>> {
        if let Some(st) = self.status_of(&vol.resource)? {
            let mut o = self.observed_from(vol, &st);
            // The replica matches this generation only if the backing holds the planned size.
            let b = self.backend(&vol.backend)?.lookup(&vol.resource)?;
            if b.is_none_or(|b| b.size_kib < drbd_backing_kib(vol.size_kib)) {
                o.generation = 0;
            }
            return Ok(Some(o));
        }
        let configured = self.repl.configured()?.iter().any(|r| r == &vol.resource);
        let backing = self.backend(&vol.backend)?.lookup(&vol.resource)?;
        if !configured && backing.is_none() {
            return Ok(None);
        }
        Ok(Some(VolumeObserved {
            ready: false,
            generation: 0,
            role: "Unknown".into(),
            disk: if backing.is_some() { "Unconfigured".into() } else { "Diskless".into() },
            size_kib: 0,
            ..Default::default()
        }))
    }

    fn hold_creation(&self, vol: &VolumeDoc) -> Result<Option<Box<dyn std::any::Any>>> {
        let name = self.creation_lock_name(&vol.resource)?;
        let g = self
            .flock(&name, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(p, e)| Error::Tool(format!("cannot lock {}: {e}", p.display())))?;
        Ok(Some(Box::new(g)))
    }

    fn kernel_view(&self, vol: &VolumeDoc) -> Result<Option<VolumeObserved>> {
        Ok(self.status_of(&vol.resource)?.map(|st| self.observed_from(vol, &st)))
    }

    fn promote(&self, vol: &VolumeDoc) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        self.repl.promote(&vol.resource)
    }

    fn demote(&self, vol: &VolumeDoc) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        // A udev/blkid probe holds the device for a moment after a guest stops (the reason
        // DrbdAdm::demote retries "held open"): look again before refusing.
        for attempt in 1..=DEMOTE_OPEN_CHECKS {
            let Some(st) = self.status_of(&vol.resource)? else { break };
            let Some(open) = observe::open_note(&st) else { break };
            if attempt == DEMOTE_OPEN_CHECKS {
                return Err(Error::Refused(format!(
                    "{}: the replica on {} is {}{}; not demoting (stop the guest or process using it first)",
                    vol.resource, self.node, st.role, open
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        self.repl.demote(&vol.resource)
    }

    fn grow_backing(&self, vol: &VolumeDoc) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        self.backend(&vol.backend)?.resize(&vol.resource, drbd_backing_kib(vol.size_kib))?;
        Ok(())
    }

    fn grow_drbd(&self, vol: &VolumeDoc) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        let thin = self.is_thin(&vol.backend)?;
        self.repl.resize(&vol.resource, thin)
    }

    fn skip_initial_sync(&self, vol: &VolumeDoc) -> Result<()> {
        self.initial_sync(vol, InitialSync::Skip)
    }

    fn set_dual_primary(&self, vol: &VolumeDoc, on: bool) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        let backend = self.backend(&vol.backend)?;
        let backing = backend.lookup(&vol.resource)?.ok_or_else(|| {
            Error::NotFound(format!("{}: no local replica on {}; cannot change dual-primary", vol.resource, self.node))
        })?;
        let plan = self.plan(vol, &backing, backend.thin(), on)?;
        self.repl.apply(&plan)?;
        Ok(())
    }

    fn space(&self, spec: &BackendSpec) -> Result<Space> {
        self.backend(spec)?.space()
    }

    fn snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        let backend = self.snap_backend(vol)?;
        if backend.snapshot_path(&vol.resource, snap)?.is_some() {
            return Ok(());
        }
        // Only UpToDate data is the volume's data; an Outdated or syncing replica's is not.
        let disk = self.status_of(&vol.resource)?.and_then(|s| s.devices.first().map(|d| d.disk.clone()));
        if disk.as_deref() != Some("UpToDate") {
            return Err(Error::Refused(format!(
                "{}: the replica on {} is {}, not UpToDate: a snapshot of it would not hold the volume's data",
                vol.resource,
                self.node,
                disk.as_deref().unwrap_or("not up")
            )));
        }
        backend.snapshot(&vol.resource, snap)?;
        tracing::info!(resource = %vol.resource, snap, "snapshot taken");
        Ok(())
    }

    fn remove_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        let backend = self.snap_backend(vol)?;
        backend.deactivate_snapshot(&vol.resource, snap)?;
        backend.remove_snapshot(&vol.resource, snap)
    }

    fn snapshot_path(&self, vol: &VolumeDoc, snap: &str) -> Result<Option<String>> {
        if vol.replica(&self.node).is_none() {
            return Ok(None);
        }
        self.snap_backend(vol)?.snapshot_path(&vol.resource, snap)
    }

    fn activate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<String> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        self.snap_backend(vol)?.activate_snapshot(&vol.resource, snap)
    }

    fn deactivate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        self.snap_backend(vol)?.deactivate_snapshot(&vol.resource, snap)
    }

    fn rollback_source(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        let backend = self.snap_backend(vol)?;
        if backend.snapshot_path(&vol.resource, snap)?.is_none() {
            return Err(Error::NotFound(format!("{}: node {} has no snapshot {snap}", vol.resource, self.node)));
        }
        self.refuse_in_use(vol, "rolled back")?;
        self.repl.down(&vol.resource)?;
        backend.rollback(&vol.resource, snap)?;
        crate::failpoint!("rollback.after-local-rollback"); // data rolled back, DRBD still down
        let backing = backend.create(&vol.resource, drbd_backing_kib(vol.size_kib))?;
        let plan = self.plan(vol, &backing, backend.thin(), false)?;
        self.repl.apply(&plan)?;
        self.repl.make_sync_source(&vol.resource)?;
        tracing::info!(resource = %vol.resource, snap, "rolled back; this replica is the sync source");
        Ok(())
    }

    fn discard_replica(&self, vol: &VolumeDoc) -> Result<()> {
        self.check_replica(vol)?;
        let _lock = self.lock(&vol.resource)?;
        self.refuse_in_use(vol, "discarded for a rollback")?;
        self.repl.down(&vol.resource)?;
        let backend = self.backend(&vol.backend)?;
        let backing = backend.create(&vol.resource, drbd_backing_kib(vol.size_kib))?;
        let plan = self.plan(vol, &backing, backend.thin(), false)?;
        self.repl.wipe_metadata(&plan)?;
        tracing::info!(resource = %vol.resource, "replica discarded: it resyncs fully from the rolled-back replica");
        Ok(())
    }
}

impl LocalNode {
    /// Remove the backing device of `res`, a resource of this node that no volume document
    /// wants any more (its volume was freed or rolled back while its replica here was not
    /// listed in this node's published state, so the removal did not wait for this node).
    /// Only under the local lock, with the store re-read under it: an alloc writes its
    /// document before `ensure_replica` creates anything (under this same lock), so a
    /// document seen absent here means no creation of `res` can be running. Never while
    /// DRBD has the resource up, never when any document (of any name) owns `res`.
    pub fn remove_orphan_backing(&self, res: &str, spec: &BackendSpec) -> Result<bool> {
        let _lock = self.lock(res)?;
        if self.status_of(res)?.is_some() {
            return Ok(false);
        }
        for sid in self.store.storeids()? {
            for name in self.store.volume_names(&sid)? {
                // An unreadable document might be this one: keep the backing.
                match self.store.volume(&sid, &name)? {
                    Some(v) if v.resource == res => return Ok(false),
                    _ => {}
                }
            }
        }
        let backend = self.backend(spec)?;
        if backend.lookup(res)?.is_none() {
            return Ok(false);
        }
        backend.remove(res)?;
        tracing::warn!(resource = %res, "backing device of a volume that no longer exists removed");
        Ok(true)
    }
}

impl LocalNode {
    /// The clone's backing = a thin snapshot of the base's backing, which ends with the base's
    /// DRBD metadata: replaced by fresh metadata at once, so the clone is a new resource whose
    /// identical (base) data lets the initial sync be skipped as for a new thin volume.
    /// A crash between the two steps leaves the base's metadata: the clone then comes up
    /// with the base's data generation and the replicas sync fully (slower, still correct,
    /// since the base is identical everywhere).
    fn clone_backing(&self, vol: &VolumeDoc, parent: &str, backend: &dyn Backend) -> Result<()> {
        let base = self.store.volume(&vol.storeid, parent)?.ok_or_else(|| {
            Error::NotFound(format!("{}: its base volume {}:{parent} does not exist; cannot create the linked clone", vol.resource, vol.storeid))
        })?;
        let backing = backend.clone_from(&base.resource, &vol.resource)?;
        let plan = self.plan(vol, &backing, backend.thin(), false)?;
        self.repl.wipe_metadata(&plan)?;
        tracing::info!(resource = %vol.resource, base = %base.resource, "linked clone backing created with fresh metadata");
        Ok(())
    }

    fn snap_backend(&self, vol: &VolumeDoc) -> Result<Box<dyn Backend>> {
        let b = self.backend(&vol.backend)?;
        if !b.can_snapshot() {
            return Err(Error::Refused(format!(
                "{}: the {:?} backend on {} has no snapshots: use an lvmthin storage for snapshots",
                vol.resource, vol.backend.kind, self.node
            )));
        }
        Ok(b)
    }

    /// Invariant 2: never remove or change the data under a Primary or an open device.
    /// Take `vol` down here and remove its backing device and snapshots; refused while in use.
    fn remove_here(&self, vol: &VolumeDoc) -> Result<()> {
        let _lock = self.lock(&vol.resource)?;
        self.refuse_in_use(vol, "removed")?;
        self.repl.down(&vol.resource)?;
        let backend = self.backend(&vol.backend)?;
        if backend.can_snapshot() {
            for s in &vol.snapshots {
                backend.remove_snapshot(&vol.resource, &s.name)?;
            }
        }
        backend.remove(&vol.resource)?;
        tracing::info!(resource = %vol.resource, "replica removed");
        Ok(())
    }

    /// A finished move dropped this node's replica (`vol.released` lists it): remove it.
    pub fn remove_released(&self, vol: &VolumeDoc) -> Result<()> {
        if !vol.released.contains(&self.node) || vol.replica(&self.node).is_some() {
            return Err(Error::InvalidInput(format!("{}: node {} holds no released replica of it", vol.resource, self.node)));
        }
        self.remove_here(vol)
    }

    /// This node's replica is a move's source that DRBD leaves out (`VolumeDoc::parked_on`):
    /// take it down and keep the backing device, whose data is the fallback until the new
    /// replica is UpToDate. Refused while in use: a guest runs on it.
    pub fn park_replica(&self, vol: &VolumeDoc) -> Result<()> {
        let _lock = self.lock(&vol.resource)?;
        self.refuse_in_use(vol, "taken down for the move")?;
        self.repl.down(&vol.resource)
    }

    /// Most hosts one resource may have here.
    pub fn max_hosts(&self) -> Result<usize> {
        self.repl.max_hosts()
    }

    fn refuse_in_use(&self, vol: &VolumeDoc, what: &str) -> Result<()> {
        if let Some(st) = self.status_of(&vol.resource)? {
            let open = observe::open_note(&st);
            if st.role == "Primary" || open.is_some() {
                return Err(Error::Refused(format!(
                    "{}: not {what} on {}: the replica is {}{}; stop the guest using it first",
                    vol.resource,
                    self.node,
                    st.role,
                    open.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}
