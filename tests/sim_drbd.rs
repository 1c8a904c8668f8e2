//! The simulated DRBD enforces the rules real DRBD enforces.

use drbdpool::drbd::sim::SimDrbd;
use drbdpool::drbd::{PlanHost, Replication, ResourcePlan, ResourceStatus};

struct World {
    _d: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn world() -> World {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    World { _d: d, dir }
}

impl World {
    fn node(&self, n: &str) -> SimDrbd {
        SimDrbd::new(self.dir.join("sim"), n).unwrap()
    }
    /// A zeroed backing "device" (a regular file) for node `n`.
    fn backing(&self, n: &str, kib: u64) -> String {
        let p = self.dir.join(format!("{n}.img"));
        if !p.exists() {
            std::fs::File::create(&p).unwrap().set_len(kib * 1024).unwrap();
        }
        p.to_string_lossy().into()
    }
    fn plan(&self, n: &str, hosts: &[&str], size: u64) -> ResourcePlan {
        ResourcePlan {
            resource: "r0".into(),
            minor: 1000,
            port: 7000,
            secret: "s".into(),
            size_kib: size,
            local: n.into(),
            backing: self.backing(n, 2048),
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| PlanHost { name: h.to_string(), node_id: i as u8, address: format!("10.0.0.{}", i + 1) })
                .collect(),
            thin: true,
            dual_primary: false,
            handler_store: None,
            resync: Default::default(),
        }
    }
}

fn st(s: &SimDrbd) -> ResourceStatus {
    s.status().unwrap().into_iter().find(|r| r.name == "r0").expect("r0 up")
}
fn disk(s: &SimDrbd) -> String {
    st(s).devices[0].disk.clone()
}

#[test]
fn create_md_connect_skip_sync_promote_rules() {
    let w = world();
    let (a, b) = (w.node("a"), w.node("b"));
    let applied = a.apply(&w.plan("a", &["a", "b"], 1024)).unwrap();
    assert!(applied.created_metadata);
    let s = st(&a);
    assert_eq!(s.devices[0].disk, "Inconsistent");
    assert_eq!(s.connections[0].connection, "Connecting");
    assert_eq!(s.connections[0].peer_devices[0].peer_disk, "DUnknown");
    // Skipping the initial sync needs the peer connected.
    assert_eq!(a.skip_initial_sync("r0").unwrap_err().kind(), "refused");
    assert_eq!(a.promote("r0").unwrap_err().kind(), "refused", "Inconsistent must not be promoted");

    assert!(b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap().created_metadata);
    assert_eq!(st(&a).connections[0].connection, "Connected");
    assert_eq!(st(&a).connections[0].peer_devices[0].peer_disk, "Inconsistent");
    a.skip_initial_sync("r0").unwrap();
    assert_eq!((disk(&a), disk(&b)), ("UpToDate".into(), "UpToDate".into()));
    assert_eq!(a.skip_initial_sync("r0").unwrap_err().kind(), "refused", "never on pre-existing data");

    // Re-apply is idempotent and keeps metadata.
    let again = a.apply(&w.plan("a", &["a", "b"], 1024)).unwrap();
    assert!(!again.created_metadata && !again.changed_config);

    a.promote("r0").unwrap();
    let e = b.promote("r0").unwrap_err();
    assert!(e.to_string().contains("Multiple primaries not allowed"), "{e}");
    // Both sides must allow two primaries.
    let mut pb = w.plan("b", &["a", "b"], 1024);
    pb.dual_primary = true;
    b.apply(&pb).unwrap();
    assert_eq!(b.promote("r0").unwrap_err().kind(), "refused");
    let mut pa = w.plan("a", &["a", "b"], 1024);
    pa.dual_primary = true;
    a.apply(&pa).unwrap();
    b.promote("r0").unwrap();
    b.demote("r0").unwrap();

    // Open devices cannot be demoted or taken down.
    a.set_open("r0", true).unwrap();
    assert_eq!(a.demote("r0").unwrap_err().kind(), "refused");
    assert_eq!(a.down("r0").unwrap_err().kind(), "refused");
    assert_eq!(b.set_open("r0", true).unwrap_err().kind(), "refused", "a Secondary cannot be opened");
    a.set_open("r0", false).unwrap();
}

#[test]
fn stale_node_is_outdated_then_resynced_and_split_brain_stands_alone() {
    let w = world();
    let (a, b) = (w.node("a"), w.node("b"));
    a.apply(&w.plan("a", &["a", "b"], 1024)).unwrap();
    b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap();
    a.skip_initial_sync("r0").unwrap();
    // b goes away, a is Primary and writes.
    b.down("r0").unwrap();
    assert!(b.status().unwrap().is_empty());
    a.promote("r0").unwrap();
    a.write("r0").unwrap();
    // b comes back with the same secret but a wrong port: not connected, and Outdated.
    let mut pb = w.plan("b", &["a", "b"], 1024);
    pb.port = 7001;
    assert!(!b.apply(&pb).unwrap().created_metadata, "metadata survives down on the device");
    assert_eq!(disk(&b), "Outdated");
    assert_eq!(b.promote("r0").unwrap_err().kind(), "refused");
    // Right config: connects and resyncs.
    b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap();
    assert_eq!(disk(&b), "UpToDate");
    assert_eq!(st(&b).connections[0].connection, "Connected");

    // Split brain: both promote while apart, each writes.
    a.demote("r0").unwrap();
    b.down("r0").unwrap();
    a.promote("r0").unwrap();
    a.demote("r0").unwrap();
    a.down("r0").unwrap();
    b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap();
    b.promote("r0").unwrap();
    b.demote("r0").unwrap();
    a.apply(&w.plan("a", &["a", "b"], 1024)).unwrap();
    assert_eq!(st(&a).connections[0].connection, "StandAlone");
}

#[test]
fn resize_follows_the_smallest_backing_and_needs_peers() {
    let w = world();
    let (a, b) = (w.node("a"), w.node("b"));
    a.apply(&w.plan("a", &["a", "b"], 1024)).unwrap();
    // Too small a backing is refused like drbdadm does.
    let mut big = w.plan("b", &["a", "b"], 4096);
    assert_eq!(b.apply(&big).unwrap_err().kind(), "tool");
    b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap();
    a.skip_initial_sync("r0").unwrap();
    // Plan grows to 1500 KiB on both nodes; resize on one side grows both.
    a.apply(&w.plan("a", &["a", "b"], 1500)).unwrap();
    big.size_kib = 1500;
    b.apply(&big).unwrap();
    a.resize("r0", true).unwrap();
    assert_eq!(st(&b).devices[0].size_kib, Some(1500));
    assert_eq!(st(&a).devices[0].size_kib, Some(1500));
    b.down("r0").unwrap();
    assert_eq!(a.resize("r0", true).unwrap_err().kind(), "refused");
}

/// The lost initial-sync skip of DRBD 8.4 (issue 18): the peer dies the moment the skip is
/// sent. The sender marks it UpToDate at once and keeps showing it Connected and UpToDate;
/// the dead peer's metadata stays fresh, so when it comes back it is synced in full.
#[test]
fn a_skip_lost_to_a_dying_peer_is_believed_by_the_sender_only() {
    let w = world();
    let (a, b) = (w.node("a"), w.node("b"));
    a.apply(&w.plan("a", &["a", "b"], 1024)).unwrap();
    b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap();
    assert_eq!((disk(&a).as_str(), disk(&b).as_str()), ("Inconsistent", "Inconsistent"));
    a.crash_on_skip("r0", "b").unwrap();
    a.skip_initial_sync("r0").unwrap();
    assert!(b.is_crashed());
    assert!(b.status().unwrap().is_empty(), "b is down");
    let sa = st(&a);
    assert_eq!(sa.devices[0].disk, "UpToDate");
    let c = &sa.connections[0];
    assert_eq!((c.connection.as_str(), c.peer_devices[0].peer_disk.as_str()), ("Connected", "UpToDate"), "a still believes b: {c:?}");
    // Nothing runs on a crashed node.
    assert_eq!(b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap_err().kind(), "tool");
    // a's ping timeout: b is seen gone.
    a.notice_lost_peers("r0").unwrap();
    let c = st(&a).connections[0].clone();
    assert_eq!((c.connection.as_str(), c.peer_devices[0].peer_disk.as_str()), ("Connecting", "DUnknown"));
    // b boots: its metadata is fresh (it never applied the skip), so it gets a full sync.
    b.revive().unwrap();
    b.apply(&w.plan("b", &["a", "b"], 1024)).unwrap();
    assert_eq!(disk(&b), "UpToDate");
    assert_eq!(st(&b).devices[0].extra["sim-full-syncs"], "1", "the replica that missed the skip is synced in full");
    // The skip is armed once only.
    assert!(!w.dir.join("sim/.crash-on-skip-r0").exists());
}
