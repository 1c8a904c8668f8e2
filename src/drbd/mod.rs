//! DRBD: version detection, resource-file rendering (9 and 8.4 syntax), safe
//! apply, DRBD's state typed once (events2.rs parses it on 9 and 8.4, observe.rs
//! says what it means for a volume), and the `Replication` trait with a real side
//! (drbdadm/drbdsetup through the exec seam) and a simulated side (files in a
//! directory, for tests on machines without the kernel module).

use std::collections::BTreeMap;

pub mod sim;

use crate::error::Result;

/// Backing size for a DRBD device of `net_kib`: DRBD keeps its internal metadata
/// at the end of the backing device (4 KiB superblock + 32 KiB activity log +
/// a bitmap of 1 bit per 4 KiB per peer slot; real::PEER_SLOTS (7) slots as
/// LINSTOR's default, which DRBD 9 metadata is created with and which also covers DRBD 8.4's
/// single peer), rounded up to 64 KiB.
pub fn drbd_backing_kib(net_kib: u64) -> u64 {
    let bitmap = (u64::from(real::PEER_SLOTS) * net_kib).div_ceil(32768).div_ceil(4) * 4;
    (net_kib + 36 + bitmap).div_ceil(64) * 64
}

/// Everything needed to render and bring up one resource on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePlan {
    pub resource: String,
    pub minor: u32,
    pub port: u16,
    pub secret: String,
    pub size_kib: u64,
    /// This node's name (must be one of `hosts`).
    pub local: String,
    /// Local backing device path.
    pub backing: String,
    /// All replica hosts, in placement order.
    pub hosts: Vec<PlanHost>,
    /// Backing is thin: skip the initial full sync.
    pub thin: bool,
    /// Allow two primaries (only during a live migration window).
    pub dual_primary: bool,
    /// The cluster store the DRBD handlers (fence-peer, unfence) must use when it is not the
    /// default /etc/pve/priv/drbdpool: DRBD runs them without our environment.
    pub handler_store: Option<String>,
    /// Resync speed (the storage's `drbdpool-resync-rate-*`): rendered as DRBD's dynamic
    /// resync controller settings (render.rs).
    pub resync: crate::store::docs::Resync,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanHost {
    pub name: String,
    pub node_id: u8,
    pub address: String,
}

/// What `apply` did, so the caller knows whether fresh metadata was created.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Applied {
    pub created_metadata: bool,
    pub changed_config: bool,
}

/// One resource as DRBD reports it. Unknown keys/values are kept in `extra`, never dropped.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ResourceStatus {
    pub name: String,
    pub role: String,
    pub devices: Vec<DeviceStatus>,
    pub connections: Vec<ConnectionStatus>,
    pub extra: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct DeviceStatus {
    pub volume: u32,
    pub minor: u32,
    pub disk: String,
    pub open: Option<bool>,
    pub size_kib: Option<u64>,
    pub extra: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConnectionStatus {
    pub peer_node_id: Option<u32>,
    pub conn_name: String,
    pub connection: String,
    pub peer_role: String,
    pub peer_devices: Vec<PeerDeviceStatus>,
    pub extra: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct PeerDeviceStatus {
    pub volume: u32,
    pub replication: String,
    pub peer_disk: String,
    pub out_of_sync_kib: u64,
    pub done_percent: Option<f64>,
    pub extra: BTreeMap<String, String>,
}

/// Is a connected peer's copy the same as ours, as far as DRBD says (ours UpToDate is checked
/// by the caller)? The peer must be UpToDate, and the out-of-sync counter must be 0 unless
/// replication is `Established`: then DRBD has nothing left to resync, whatever the counter
/// says. DRBD 9.2.18 kept `out-of-sync:4044` after a finished resync, Established and
/// UpToDate (events2 at the end of the resync: tests/fixtures/drbd9-real/drbdsetup-events2-live.resync.node3.out;
/// still 6 s later: drbdsetup-status-json-statistics.resync-done-6s-later.node3.out), so the
/// counter is never trusted on its own.
pub fn peer_in_sync(replication: &str, peer_disk: &str, out_of_sync_kib: u64) -> bool {
    peer_disk == "UpToDate" && (out_of_sync_kib == 0 || replication == "Established")
}

pub trait Replication: Send + Sync {
    /// Render the resource file, test it with drbdadm, replace the live one atomically,
    /// create metadata if the backing device has none, and bring the resource up (or adjust it).
    /// Restores the previous file if adjust fails. Idempotent.
    fn apply(&self, plan: &ResourcePlan) -> Result<Applied>;
    /// `apply` when the caller has just created the backing device and it reads zeroes (a new
    /// thin LV or sparse file): it cannot carry DRBD metadata, so looking for it is skipped.
    /// Never for a device that existed before, or a thick one (stale metadata may survive
    /// there). Default: `apply`.
    fn apply_blank(&self, plan: &ResourcePlan) -> Result<Applied> {
        self.apply(plan)
    }
    /// Take the resource down and remove its resource file. Idempotent.
    fn down(&self, resource: &str) -> Result<()>;
    /// State of every configured resource, one consistent snapshot.
    fn status(&self) -> Result<Vec<ResourceStatus>>;
    /// State of one resource (None: not up here), asked for that resource alone: `activate`
    /// and the agent's refresh on a node with 1,000 resources must not read them all.
    fn resource_status(&self, resource: &str) -> Result<Option<ResourceStatus>>;
    fn promote(&self, resource: &str) -> Result<()>;
    fn demote(&self, resource: &str) -> Result<()>;
    /// Declare freshly created, connected, Inconsistent/Inconsistent data UpToDate without a full sync.
    fn skip_initial_sync(&self, resource: &str) -> Result<()>;
    /// `drbdadm resize` after every backing device has grown.
    /// `assume_clean`: thin backing reads zeroes in the grown area on every replica, so
    /// it needs no resync (`--assume-clean`); thick backing must resync it.
    fn resize(&self, resource: &str, assume_clean: bool) -> Result<()>;
    /// Mark the local replica Outdated (fence-peer on the peer's request).
    fn outdate(&self, resource: &str) -> Result<()>;
    /// Allow or forbid two primaries at runtime (live-migration window; docs/ARCHITECTURE.md).
    /// Default for sides that cannot: a clear refusal.
    fn set_dual_primary(&self, resource: &str, on: bool) -> Result<()> {
        let _ = on;
        Err(crate::error::Error::Refused(format!("{resource}: this replication side cannot toggle allow-two-primaries")))
    }
    /// Most hosts one resource may have here (DRBD 8.4: 2). Default: DRBD 9's 32.
    fn max_hosts(&self) -> Result<usize> {
        Ok(32)
    }
    /// Names of the resources configured on this node (resource files), up or not.
    /// Default: the resources `status` reports.
    fn configured(&self) -> Result<Vec<String>> {
        Ok(self.status()?.into_iter().map(|r| r.name).collect())
    }
    /// Snapshot rollback, on the replicas that are NOT rolled back: with the resource down,
    /// write its resource file and create fresh metadata on the backing device, so the
    /// next `apply` brings it up Inconsistent and it receives a full sync. Leaves it down.
    fn wipe_metadata(&self, plan: &ResourcePlan) -> Result<()> {
        Err(crate::error::Error::Refused(format!("{}: this DRBD side cannot recreate metadata", plan.resource)))
    }
    /// Snapshot rollback, on the rolled-back replica (up, every peer down): declare this
    /// node's data the good copy with a new data generation (`primary --force`, `secondary`),
    /// so peers with fresh metadata sync fully from it.
    fn make_sync_source(&self, resource: &str) -> Result<()> {
        Err(crate::error::Error::Refused(format!("{resource}: this DRBD side cannot force a sync source")))
    }
    /// Thick backends: declare this node's fresh data the good copy so a full initial
    /// sync runs to the peers (`drbdadm primary --force` then `drbdadm secondary`).
    fn start_initial_sync(&self, resource: &str) -> Result<()> {
        Err(crate::error::Error::Tool(format!(
            "{resource}: this DRBD side cannot start an initial full sync (start_initial_sync not implemented)"
        )))
    }
}

/// DRBD's state words (the value sets of drbd-reactor's src/drbd.rs; 8.4's events2 maps
/// its own names onto these). The parsers keep words outside them as unknown; the
/// metrics export one series per word, in this order.
pub mod words {
    pub const ROLES: &[&str] = &["Unknown", "Primary", "Secondary"];
    pub const DISKS: &[&str] = &[
        "Diskless",
        "Attaching",
        "Detaching",
        "Failed",
        "Negotiating",
        "Inconsistent",
        "Outdated",
        "DUnknown",
        "Consistent",
        "UpToDate",
    ];
    pub const CONNECTIONS: &[&str] = &[
        "StandAlone",
        "Disconnecting",
        "Unconnected",
        "Timeout",
        "BrokenPipe",
        "NetworkFailure",
        "ProtocolError",
        "TearDown",
        "Connecting",
        "Connected",
    ];
    pub const REPLICATIONS: &[&str] = &[
        "Off",
        "Established",
        "StartingSyncS",
        "StartingSyncT",
        "WFBitMapS",
        "WFBitMapT",
        "WFSyncUUID",
        "SyncSource",
        "SyncTarget",
        "VerifyS",
        "VerifyT",
        "PausedSyncS",
        "PausedSyncT",
        "Ahead",
        "Behind",
    ];
}

// The DRBD side proper (sim.rs is the simulated side, kept by the node side).
pub mod discard;
pub mod events2;
pub mod observe;
pub mod openers;
pub mod real;
pub mod render;
pub mod version;

/// Real outputs of the DRBD tools, copied from the lab (tests/fixtures/drbd84-real/README.md).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/drbd84-real/");
    std::fs::read_to_string(format!("{p}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Real outputs of DRBD 9.2.18 from the lab's guests (tests/fixtures/drbd9-real/README.md).
#[cfg(test)]
pub(crate) fn fixture9(name: &str) -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/drbd9-real/");
    std::fs::read_to_string(format!("{p}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 9.2.18 kept a stale count after a finished resync (node3 towards node2: Established,
    /// UpToDate, 4044 KiB): in sync by the state words. A resync in progress is not.
    #[test]
    fn a_stale_out_of_sync_count_alone_does_not_make_a_peer_unsynced() {
        let done = events2::parse_now(&fixture9("drbdsetup-events2-live.resync.node3.out")).resources();
        let pds: Vec<&PeerDeviceStatus> = done[0].connections.iter().flat_map(|c| c.peer_devices.iter()).collect();
        let mut counts: Vec<u64> = pds.iter().map(|p| p.out_of_sync_kib).collect();
        counts.sort();
        assert_eq!(counts, vec![0, 4044], "fixture changed");
        for p in &pds {
            assert!(peer_in_sync(&p.replication, &p.peer_disk, p.out_of_sync_kib), "{p:?}");
        }
        let syncing = events2::parse_now(&fixture9("drbdsetup-events2-now-statistics.resync-synctarget.node3.out"));
        let r0 = syncing.resource("r0").unwrap();
        let pd = r0.connections.iter().flat_map(|c| c.peer_devices.iter()).find(|p| p.replication == "SyncTarget").unwrap();
        assert!(pd.out_of_sync_kib > 0 && pd.replication != "Established", "fixture changed: {pd:?}");
        assert!(!peer_in_sync(&pd.replication, &pd.peer_disk, pd.out_of_sync_kib));
        // A count without a replication word is trusted; a peer not UpToDate never is in sync.
        assert!(!peer_in_sync("", "UpToDate", 4044));
        assert!(peer_in_sync("", "UpToDate", 0));
        assert!(!peer_in_sync("Established", "Outdated", 0));
        assert!(!peer_in_sync("SyncSource", "Inconsistent", 0));
    }
}
