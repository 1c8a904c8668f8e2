//! The documents of the cluster store. Desired state (VolumeDoc, NodeDoc) is
//! written by the helper under the cluster lock; observed state (NodeState) is
//! written only by each node's own agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::alloc::Allocation;
/// The backend facts the documents carry (a VolumeDoc's `backend`, a NodeState's `storages`);
/// their home is backend/.
pub use crate::backend::{BackendKind, BackendSpec, Space};

/// Per-resource shared secret of the replication link (cram-hmac-alg sha256).
fn random_secret() -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(32).map(char::from).collect()
}

/// Format version of every document this build writes. A document with a
/// higher version is refused, never misread.
pub const FORMAT: u32 = 1;

fn format_v() -> u32 {
    FORMAT
}

/// One node of the cluster that can hold replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDoc {
    #[serde(default = "format_v")]
    pub format: u32,
    /// Proxmox node name (`uname -n`).
    pub name: String,
    /// Replication address (IPv4 or IPv6, no port) on the dedicated DRBD network.
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: String,
    /// DRBD node id within this resource (0..31).
    pub node_id: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Allocated (minor/port reserved), replicas being created.
    #[default]
    Creating,
    Ready,
    /// Being removed; agents take their replica down and delete it.
    Deleting,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDoc {
    pub name: String,
    pub created: u64,
    /// The node whose handler took the first copy (closest to PVE's freeze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A rollback to this snapshot is in progress: the other replicas discard
    /// their data and resync fully from `source` (src/protocol/snapshot.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackMark>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackMark {
    /// The node whose backing device is rolled back and becomes the sync source.
    pub source: String,
    pub since: u64,
}

/// Live-migration window: dual-primary allowed while `target` takes over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DualPrimary {
    pub source: String,
    pub target: String,
    pub since: u64,
}

/// `drbdpool volume force-primary`: the admin accepted `node`'s data as the good copy after
/// the replica with the newest data was lost (src/recover.rs); `over` were marked outdated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forced {
    pub node: String,
    pub at: u64,
    pub over: Vec<String>,
    /// The disk state DRBD showed on `node` before (Consistent, Outdated).
    pub disk_before: String,
}

/// `drbdpool volume move` / `node evacuate` under way (src/relocate.rs): `to` is listed in
/// `replicas` next to `from` and syncs; once `to` is UpToDate, `to`'s agent drops `from` (it
/// goes to `released`). Where DRBD takes fewer hosts than are listed (8.4: two), `from` is
/// left out of the resource during the move and keeps its backing, idle, until then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    pub from: String,
    pub to: String,
    pub since: u64,
}

/// Desired state of one volume (`volumes/<storeid>/<volname>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDoc {
    #[serde(default = "format_v")]
    pub format: u32,
    pub storeid: String,
    pub volname: String,
    pub vmid: u32,
    /// DRBD resource name; also the backing LV / file name. Unique cluster-wide.
    pub resource: String,
    pub size_kib: u64,
    pub minor: u32,
    pub port: u16,
    /// Placement order; replicas[0] is the node that creates the data (initial primary).
    pub replicas: Vec<Replica>,
    pub backend: BackendSpec,
    /// Per-resource shared secret for the replication link.
    pub secret: String,
    #[serde(default)]
    pub state: VolumeState,
    /// A template (`base-...`) volume: read-only, clones may reference it.
    #[serde(default)]
    pub base: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotDoc>,
    /// Nodes whose replica the fence-peer handler marked outdated: never promote there.
    #[serde(default)]
    pub outdated: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_primary: Option<DualPrimary>,
    /// The last `volume force-primary`, kept for `volume show` and the agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<Forced>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<ReplicaMove>,
    /// Nodes whose replica a finished move dropped: each one's agent removes its backing
    /// (once it is not in use there) and then its own name from here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
    pub created: u64,
    /// Bumped on every change of desired state (resize, replicas, ...).
    #[serde(default)]
    pub generation: u64,
}

impl VolumeDoc {
    /// A new volume on `nodes` (placement order) with the minor, port and node ids that
    /// store/alloc.rs chose: state `creating`, generation 1, a fresh replication secret,
    /// created now; no snapshots, outdated marks or migration window. The resource is
    /// named after the volume (naming::resource_name); a `base-` name is a template.
    pub fn new(storeid: &str, volname: &str, vmid: u32, size_kib: u64, backend: BackendSpec, nodes: &[String], al: &Allocation) -> VolumeDoc {
        VolumeDoc {
            format: FORMAT,
            storeid: storeid.to_string(),
            volname: volname.to_string(),
            vmid,
            resource: crate::naming::resource_name(storeid, volname),
            size_kib,
            minor: al.minor,
            port: al.port,
            replicas: nodes.iter().zip(&al.node_ids).map(|(n, id)| Replica { node: n.clone(), node_id: *id }).collect(),
            backend,
            secret: random_secret(),
            state: VolumeState::Creating,
            base: volname.starts_with("base-"),
            parent: None,
            snapshots: vec![],
            outdated: vec![],
            dual_primary: None,
            forced: None,
            moving: None,
            released: vec![],
            created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            generation: 1,
        }
    }

    /// The volume the tests start from (unit and integration tests share it): `new` on
    /// `nodes` (node ids 0, 1, ...) with the vmid from the name (0 if it has none), 4096 KiB,
    /// minor 1000, port 7000 and the default (lvmthin) backend, then made `ready`, with
    /// secret "s" and created 0 so that it compares equal across calls. A test changes
    /// what it needs with `VolumeDoc { field: ..., ..VolumeDoc::for_test(...) }`.
    #[doc(hidden)]
    pub fn for_test(storeid: &str, volname: &str, nodes: &[&str]) -> VolumeDoc {
        let vmid = crate::naming::parse_volname(volname).map(|v| v.vmid).unwrap_or(0);
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let al = Allocation { minor: 1000, port: 7000, node_ids: (0..nodes.len() as u8).collect() };
        VolumeDoc {
            state: VolumeState::Ready,
            secret: "s".into(),
            created: 0,
            ..VolumeDoc::new(storeid, volname, vmid, 4096, BackendSpec::default(), &nodes, &al)
        }
    }

    pub fn replica(&self, node: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.node == node)
    }
    pub fn device_path(&self) -> String {
        device_path(self.minor)
    }
    /// The replicas DRBD connects when it takes at most `max_hosts` per resource: all of
    /// them, except that a move's source is left out while the list is longer (DRBD 8.4
    /// during `volume move`: the new pair is the staying replica and the new one).
    pub fn drbd_replicas(&self, max_hosts: usize) -> impl Iterator<Item = &Replica> {
        let drop = self.moving.as_ref().filter(|_| self.replicas.len() > max_hosts).map(|m| m.from.as_str());
        self.replicas.iter().filter(move |r| Some(r.node.as_str()) != drop)
    }
    /// This node's replica is a move's source that DRBD leaves out for now (see `drbd_replicas`).
    pub fn parked_on(&self, node: &str, max_hosts: usize) -> bool {
        self.replicas.len() > max_hosts && self.moving.as_ref().is_some_and(|m| m.from == node)
    }
}

/// The DRBD device of a minor.
pub fn device_path(minor: u32) -> String {
    format!("/dev/drbd{minor}")
}

/// What a node sees of one peer of a resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct PeerObserved {
    pub node: String,
    /// Connected, Connecting, StandAlone, ... (DRBD words, kept verbatim)
    pub connection: String,
    pub role: String,
    pub disk: String,
    pub replication: String,
    #[serde(default)]
    pub out_of_sync_kib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_percent: Option<f64>,
}

/// What a node sees of its own replica of one resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct VolumeObserved {
    /// Backing device exists, metadata created, resource up.
    pub ready: bool,
    /// The VolumeDoc generation this replica was last reconciled to.
    pub generation: u64,
    /// Primary / Secondary / Unknown
    pub role: String,
    /// UpToDate / Outdated / Inconsistent / Diskless / ...
    pub disk: String,
    #[serde(default)]
    pub open: bool,
    #[serde(default)]
    pub size_kib: u64,
    #[serde(default)]
    pub peers: Vec<PeerObserved>,
    /// Last reconcile error for this volume, shown by `drbdpool status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Snapshots of the VolumeDoc that this node's backend holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// DRBD 9's quorum of this replica (`quorum:yes|no` of events2); None where DRBD does
    /// not say (8.4, or not up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<bool>,
}

/// Observed state of one node, written by its agent: the head `state/<node>.json`, its
/// volumes in shards `state/<node>/NN.json` (store/state.rs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    #[serde(default = "format_v")]
    pub format: u32,
    pub node: String,
    /// Unix seconds of the last write (heartbeat).
    pub updated: u64,
    #[serde(default)]
    pub storages: BTreeMap<String, Space>,
    /// Keyed by DRBD resource name.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeObserved>,
}

/// Thin allocation of this node's replicas (`usage/<node>.json`), written by its agent
/// (measured with the storage's space, one backend listing per storage, e.g. one `lvs`):
/// what `list` and `size` report as `used`. Apart from NodeState so that `list` reads a
/// few small files, not every node's state (megabytes at thousands of volumes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUsage {
    #[serde(default = "format_v")]
    pub format: u32,
    pub node: String,
    /// Unix seconds of the measurement.
    pub updated: u64,
    /// storeid -> volname -> bytes allocated in this node's backing device.
    #[serde(default)]
    pub storages: BTreeMap<String, BTreeMap<String, u64>>,
}

/// DRBD's upper limit of every resync rate option (drbd_limits.h: 4 GiB/s, in KiB/s).
pub const RESYNC_RATE_LIMIT_KIB: u64 = 4 << 20;
/// DRBD's lower limit of c-max-rate (drbd_limits.h, KiB/s).
pub const RESYNC_MAX_FLOOR_KIB: u64 = 250;

/// Resync speed of a storage's volumes: DRBD's dynamic resync controller (rendered by
/// drbd/render.rs), from the storage's `drbdpool-resync-rate-max` / `-min` properties.
/// KiB/s, as DRBD counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resync {
    /// c-max-rate (and resync-rate): the most the resync may use.
    pub max_kib: u64,
    /// c-min-rate: while guests write to the sync source, the resync is slowed down to
    /// this rate (0: never; it runs at the controller's rate, up to `max_kib`).
    pub min_kib: u64,
}

impl Default for Resync {
    /// Link speed even while guests write (issue 16: DRBD's own c-min-rate 250k held a rejoin
    /// to ~300 KB/s in the lab): no floor to slow down to, and DRBD's ceiling as the cap.
    fn default() -> Self {
        Resync { max_kib: RESYNC_RATE_LIMIT_KIB, min_kib: 0 }
    }
}

/// Storage-wide settings the agents need (`storages/<storeid>.json`): written by the helper
/// from storage.cfg when `activate_storage` (pvestatd, every 10 s on every node) finds them
/// changed, so a `pvesm set` reaches every replica without a storage.cfg on the agents' side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageDoc {
    #[serde(default = "format_v")]
    pub format: u32,
    pub storeid: String,
    #[serde(default)]
    pub resync: Resync,
    /// storage.cfg `nodes` (None: all nodes), for the commands that place replicas outside
    /// a PVE call (`node evacuate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}
