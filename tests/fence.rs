//! The fence-peer handler through the real binary: who gets outdated, the loser
//! of a race, and what happens without quorum (a read-only store, as pmxcfs is then).

use std::process::Command;

use drbdpool::store::docs::*;
use drbdpool::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_drbdpool");

fn setup() -> (tempfile::TempDir, Store, VolumeDoc) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (n, a) in [("pve1", "10.0.0.1"), ("pve2", "10.0.0.2")] {
        store.put_node(&NodeDoc { format: FORMAT, name: n.into(), address: a.into() }).unwrap();
    }
    let v = VolumeDoc::for_test("dp", "vm-100-disk-0", &["pve1", "pve2"]);
    store.put_volume(&v).unwrap();
    (dir, store, v)
}

fn fence(store: &Store, node: &str, res: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["--store", store.root().to_str().unwrap(), "--node", node, "fence-peer"])
        .env("DRBD_RESOURCE", res)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn primary_outdates_its_peer_and_the_peer_then_loses() {
    let (_d, store, v) = setup();
    let (rc, msg) = fence(&store, "pve1", &v.resource);
    assert_eq!(rc, 4, "{msg}");
    assert!(msg.contains("pve2 recorded outdated"), "{msg}");
    let doc = store.volume("dp", "vm-100-disk-0").unwrap().unwrap();
    assert_eq!(doc.outdated, vec!["pve2"]);
    // A mark of its own (store/marks.rs), not a desired-state change: the generation stays.
    assert_eq!(doc.generation, 1);
    let marks = store.fence_marks_of(&v.resource).unwrap();
    assert_eq!(marks.len(), 1);
    assert_eq!((marks[0].target.as_str(), marks[0].by.as_str()), ("pve2", "pve1"));
    // Idempotent: a second call changes nothing.
    assert_eq!(fence(&store, "pve1", &v.resource).0, 4);
    assert_eq!(store.fence_marks_of(&v.resource).unwrap().len(), 1);
    // The peer, racing to promote, learns it lost: DRBD then outdates its own disk.
    let (rc, msg) = fence(&store, "pve2", &v.resource);
    assert_eq!(rc, 6, "{msg}");
    assert_eq!(store.volume("dp", "vm-100-disk-0").unwrap().unwrap().outdated, vec!["pve2"]);
}

/// The lost node may have held the volume's lock at the cut (pmxcfs reaps it only
/// after 120 s): fence-peer on the survivor must not wait for it.
#[test]
fn a_lock_left_by_the_lost_node_does_not_hold_fence_peer() {
    let (_d, store, v) = setup();
    let _held_by_the_lost_node = store.lock(&drbdpool::store::lock::vol_lock_name(&v.resource)).unwrap();
    let _alloc_too = store.lock(drbdpool::store::lock::ALLOC_LOCK).unwrap();
    let t = std::time::Instant::now();
    let (rc, msg) = fence(&store, "pve2", &v.resource);
    assert_eq!(rc, 4, "{msg}");
    assert!(t.elapsed() < std::time::Duration::from_secs(1), "fence-peer took {:?}", t.elapsed());
    assert_eq!(store.volume("dp", "vm-100-disk-0").unwrap().unwrap().outdated, vec!["pve1"]);
}

/// Both sides of a broken replication link fence at once (both quorate, e.g. in a
/// live migration's two-primaries window): never may both be told to go on.
#[test]
fn racing_handlers_never_both_win() {
    for round in 0..20 {
        let (_d, store, v) = setup();
        let (s1, s2) = (store.clone(), store.clone());
        let (r1, r2) = (v.resource.clone(), v.resource.clone());
        let a = std::thread::spawn(move || fence(&s1, "pve1", &r1));
        let b = std::thread::spawn(move || fence(&s2, "pve2", &r2));
        let ((ra, ma), (rb, mb)) = (a.join().unwrap(), b.join().unwrap());
        assert!(!(ra == 4 && rb == 4), "round {round}: both won: {ma} / {mb}");
        assert!([4, 6].contains(&ra) && [4, 6].contains(&rb), "round {round}: {ma} / {mb}");
        let outdated = store.volume("dp", "vm-100-disk-0").unwrap().unwrap().outdated;
        // The winner's peer is marked; a side that yielded left no mark of its own.
        if ra == 4 {
            assert_eq!(outdated, vec!["pve2"], "round {round}");
        } else if rb == 4 {
            assert_eq!(outdated, vec!["pve1"], "round {round}");
        } else {
            assert!(outdated.is_empty(), "round {round}: {outdated:?}");
        }
    }
}

/// pmxcfs publishes the membership: without quorum the handler fails at once,
/// instead of a write that would block for the membership change.
#[test]
fn without_quorum_in_the_membership_it_fails_fast() {
    let (d, store, v) = setup();
    let members = d.path().join("members.json");
    std::fs::write(
        &members,
        r#"{"nodename": "pve1", "version": 3, "cluster": { "name": "c", "version": 2, "nodes": 2, "quorate": 0 },
"nodelist": { "pve1": { "id": 1, "online": 1}, "pve2": { "id": 2, "online": 0} } }"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--store", store.root().to_str().unwrap(), "--node", "pve1", "fence-peer"])
        .env("DRBD_RESOURCE", &v.resource)
        .env("DRBDPOOL_MEMBERS", &members)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("quorate") && msg.contains("keeping I/O frozen"), "{msg}");
    assert!(store.fence_marks().unwrap().is_empty());
}

#[test]
fn resync_target_drops_its_mark() {
    let (_d, store, v) = setup();
    assert_eq!(fence(&store, "pve1", &v.resource).0, 4);
    let st = Command::new(BIN)
        .args(["--store", store.root().to_str().unwrap(), "--node", "pve2", "after-resync-target"])
        .env("DRBD_RESOURCE", &v.resource)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(store.volume("dp", "vm-100-disk-0").unwrap().unwrap().outdated.is_empty());
    assert!(store.fence_marks().unwrap().is_empty());
}

#[test]
fn drbd9_unfence_on_the_fencer_names_the_peer_by_node_id() {
    let (_d, store, v) = setup();
    assert_eq!(fence(&store, "pve1", &v.resource).0, 4);
    let st = Command::new(BIN)
        .args(["--store", store.root().to_str().unwrap(), "--node", "pve1", "unfence-peer"])
        .env("DRBD_RESOURCE", &v.resource)
        .env("DRBD_PEER_NODE_ID", "1")
        .status()
        .unwrap();
    assert!(st.success());
    assert!(store.volume("dp", "vm-100-disk-0").unwrap().unwrap().outdated.is_empty());
}

#[test]
fn unknown_resource_keeps_io_frozen() {
    let (_d, store, _v) = setup();
    let (rc, msg) = fence(&store, "pve1", "nope");
    assert_eq!(rc, 1, "{msg}");
    assert!(msg.contains("keeping I/O frozen"), "{msg}");
}

/// Without quorum pmxcfs is read-only: the handler must fail (I/O stays frozen) and change nothing.
#[test]
fn without_quorum_nothing_is_written_and_io_stays_frozen() {
    if !nix::unistd::Uid::effective().is_root() || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and unshare for a read-only bind mount");
        return;
    }
    let (_d, store, v) = setup();
    let root = store.root().to_str().unwrap().to_string();
    let before = std::fs::read(store.root().join("volumes/dp/vm-100-disk-0.json")).unwrap();
    let script = format!(
        "mount --bind {root} {root} && mount -o remount,bind,ro {root} && DRBD_RESOURCE={res} {BIN} --store {root} --node pve1 fence-peer",
        res = v.resource
    );
    let out = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("keeping I/O frozen"), "{msg}");
    assert_eq!(std::fs::read(store.root().join("volumes/dp/vm-100-disk-0.json")).unwrap(), before);
}
