//! The node side: what one node does to its disks and its DRBD resources.
//! `NodeOps` declares each action once (what the plugin handlers and the agent need);
//! `LocalNode` (local.rs) implements it with real backends and real or simulated DRBD;
//! handler tests use a fake.

pub mod lazy;
pub mod local;

pub use lazy::LazyNode;
pub use local::{local_node, real_replication, replication_from_env, BackendFactory, LocalNode};

use crate::error::Result;
use crate::backend::{BackendSpec, Space};
use crate::store::docs::{VolumeDoc, VolumeObserved};

pub trait NodeOps {
    /// This node's name.
    fn name(&self) -> &str;
    /// Create (or complete) this node's replica: backing device, resource file,
    /// metadata, resource up. Idempotent; safe to run beside the agent.
    fn ensure_replica(&self, vol: &VolumeDoc) -> Result<VolumeObserved>;
    /// Take the local replica down and delete its backing device and resource file. Idempotent.
    fn remove_replica(&self, vol: &VolumeDoc) -> Result<()>;
    /// The local replica's current state (None: not configured here).
    fn observe(&self, vol: &VolumeDoc) -> Result<Option<VolumeObserved>>;
    // The two below have defaults: a node without creation races or a cheaper kernel view
    // (the handler tests' fake) needs neither.
    /// Held by an alloc for the whole creation of a volume (dropped: released; also when the
    /// process dies): this node's agent leaves that volume to the alloc meanwhile, so the two
    /// do not repeat each other's tool calls. Default: nothing to hold.
    fn hold_creation(&self, _vol: &VolumeDoc) -> Result<Option<Box<dyn std::any::Any>>> {
        Ok(None)
    }
    /// What this node's kernel says of the resource and its connected peers, without
    /// looking at the backing device (one status call: cheap enough to poll). The
    /// generation is not checked. None: not up here.
    fn kernel_view(&self, vol: &VolumeDoc) -> Result<Option<VolumeObserved>> {
        self.observe(vol)
    }
    /// Make the local replica Primary (the caller has checked that it may).
    fn promote(&self, vol: &VolumeDoc) -> Result<()>;
    /// Back to Secondary; refuses while the device is open.
    fn demote(&self, vol: &VolumeDoc) -> Result<()>;
    /// Grow the local backing device and then DRBD (`drbdadm resize`) once all replicas are grown.
    fn grow_backing(&self, vol: &VolumeDoc) -> Result<()>;
    fn grow_drbd(&self, vol: &VolumeDoc) -> Result<()>;
    /// Mark a freshly created, connected thin resource UpToDate on both sides without a full sync.
    fn skip_initial_sync(&self, vol: &VolumeDoc) -> Result<()>;
    /// Allow or forbid two primaries for this resource (live migration window).
    fn set_dual_primary(&self, vol: &VolumeDoc, on: bool) -> Result<()>;
    /// Free/total space of the storage's backend on this node.
    fn space(&self, vol_backend: &BackendSpec) -> Result<Space>;
    /// Take this node's snapshot `snap` of the backing device (only of UpToDate data). Idempotent.
    /// Refused on backends without snapshots.
    fn snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()>;
    /// Delete this node's snapshot. Idempotent.
    fn remove_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()>;
    /// The snapshot's device/file on this node, None if this node has no such snapshot.
    fn snapshot_path(&self, vol: &VolumeDoc, snap: &str) -> Result<Option<String>>;
    /// Make the snapshot a readable block device here; returns its path.
    fn activate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<String>;
    fn deactivate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()>;
    /// Rollback, on the replica that is rolled back (every peer discarded and down):
    /// take the resource down, roll the backing device back to `snap`, bring it up and
    /// make it the sync source with a new data generation.
    fn rollback_source(&self, vol: &VolumeDoc, snap: &str) -> Result<()>;
    /// Rollback, on every other replica: take the resource down and recreate its metadata,
    /// so it comes back Inconsistent and receives a full sync. Refused while Primary/open.
    fn discard_replica(&self, vol: &VolumeDoc) -> Result<()>;
}

/// What the plugin handlers hold of this node: its name at once, its actions when a
/// handler needs them. Every NodeOps is one; LazyNode (lazy.rs) builds the real node
/// side on the first `ops`, so no action is forwarded by hand.
pub trait NodeHandle {
    fn name(&self) -> &str;
    /// This node's actions; Err when the node side cannot be set up here.
    fn ops(&self) -> Result<&dyn NodeOps>;
}

impl<T: NodeOps> NodeHandle for T {
    fn name(&self) -> &str {
        NodeOps::name(self)
    }
    fn ops(&self) -> Result<&dyn NodeOps> {
        Ok(self)
    }
}
