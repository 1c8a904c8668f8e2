//! Snapshots end to end: the plugin handlers on node a (LocalNode), node b's agent
//! in a thread, SimDrbd and the file backend on real loop devices.

#[path = "nodelab/mod.rs"]
mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{can_loop, Lab};
use drbdpool::agent::Agent;
use drbdpool::node::LocalNode;
use drbdpool::drbd::Replication;
use drbdpool::protocol::{Ctx, Reply};
use drbdpool::store::docs::VolumeState;
use serde_json::{json, Value};

const RES: &str = "pool1.vm-100-disk-0";
const V: &str = "vm-100-disk-0";

/// An agent passing in the background until dropped.
struct Bg {
    stop: Arc<AtomicBool>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl Bg {
    fn spawn(mut agent: Agent) -> Bg {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let _ = agent.pass();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Bg { stop, h: Some(h) }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

fn call(node: &LocalNode, store: &drbdpool::store::Store, method: &str, args: Value) -> Reply {
    let ctx = Ctx { store, node, peer_timeout: Duration::from_secs(20), poll: Duration::from_millis(20), started: None, alloc_budget: Duration::from_secs(20), creation: drbdpool::protocol::Creation::Inline };
    let req = json!({"version": 1, "storeid": "pool1", "node": "a", "scfg": {"type": "drbdpool", "drbdpool-backend": "file", "drbdpool-dir": "/x"}, "args": args});
    drbdpool::protocol::handle(&ctx, method, req.to_string().as_bytes())
}

fn ok(r: Reply) -> Value {
    assert!(r.ok, "expected ok, got {:?}", r.error);
    r.result.unwrap()
}

fn write_at0(path: &std::path::Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_at0(path: impl AsRef<std::path::Path>, n: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut b = vec![0; n];
    f.read_exact(&mut b).unwrap();
    b
}

fn disk(lab: &Lab, node: &str) -> (String, u32) {
    let st = lab.sim(node).status().unwrap().into_iter().find(|s| s.name == RES).unwrap();
    (st.devices[0].disk.clone(), st.devices[0].extra["sim-full-syncs"].parse().unwrap())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn snapshot_rollback_and_delete_on_two_nodes() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let mut vol = lab.volume(RES, &["a", "b"], 4096);
    vol.volname = V.into();
    lab.store.put_volume(&vol).unwrap();
    let mut aa = Agent::new(lab.store.clone(), lab.local("a"));
    let mut ab = Agent::new(lab.store.clone(), lab.local("b"));
    for _ in 0..3 {
        aa.pass().unwrap();
        ab.pass().unwrap();
    }
    assert_eq!(disk(&lab, "a").0, "UpToDate");
    assert_eq!(disk(&lab, "b").0, "UpToDate");
    vol.state = VolumeState::Ready;
    vol.generation += 1;
    lab.store.put_volume(&vol).unwrap();
    aa.pass().unwrap();
    ab.pass().unwrap();

    // The guest wrote "old" (DRBD replicated it to both).
    for n in ["a", "b"] {
        write_at0(&lab.image(n, RES), b"old-data");
    }
    let a = lab.local("a");
    let b_agent = Bg::spawn(ab);
    assert_eq!(ok(call(&a, &lab.store, "snapshot", json!({"volname": V, "snap": "s1"}))), json!({}));
    for n in ["a", "b"] {
        let f = lab.node_dir(n).join(format!("{RES}.s1.snap"));
        assert_eq!(read_at0(&f, 8), b"old-data", "{n}'s snapshot copy");
    }
    let l = ok(call(&a, &lab.store, "snapshot_list", json!({"volname": V})));
    assert_eq!(l["snapshots"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["s1"]);

    // The snapshot as a read-only block device, for vzdump/mounting.
    let dev = ok(call(&a, &lab.store, "activate", json!({"volname": V, "snapname": "s1"})))["path"].as_str().unwrap().to_string();
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    assert_eq!(ok(call(&a, &lab.store, "path", json!({"volname": V, "snapname": "s1"})))["path"], json!(dev));
    assert_eq!(read_at0(&dev, 8), b"old-data");
    let ro = std::process::Command::new("blockdev").args(["--getro", &dev]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ro.stdout).trim(), "1", "snapshot device must be read-only");
    ok(call(&a, &lab.store, "deactivate", json!({"volname": V, "snapname": "s1"})));
    assert!(Lab::loops(&lab.node_dir("a").join(format!("{RES}.s1.snap"))).is_empty());

    // The guest wrote "new".
    for n in ["a", "b"] {
        write_at0(&lab.image(n, RES), b"new-data");
    }
    // Primary on b: refused, naming b, nothing changed.
    lab.sim("b").promote(RES).unwrap();
    wait_for("b to publish Primary", || lab.store.node_state("b").unwrap().unwrap().volumes[RES].role == "Primary");
    let r = call(&a, &lab.store, "snapshot_rollback", json!({"volname": V, "snap": "s1"}));
    let e = r.error.unwrap();
    assert_eq!(e.kind, "refused");
    assert!(e.message.contains("in use") && e.message.contains(" b"), "{}", e.message);
    assert_eq!(read_at0(lab.image("a", RES), 8), b"new-data");
    lab.sim("b").demote(RES).unwrap();
    wait_for("b to publish Secondary", || lab.store.node_state("b").unwrap().unwrap().volumes[RES].role == "Secondary");

    let before_b = disk(&lab, "b").1;
    assert_eq!(ok(call(&a, &lab.store, "rollback_is_possible", json!({"volname": V, "snap": "s1"}))), json!({"possible": true, "blockers": []}));
    assert_eq!(ok(call(&a, &lab.store, "snapshot_rollback", json!({"volname": V, "snap": "s1"}))), json!({}));
    assert_eq!(read_at0(lab.image("a", RES), 8), b"old-data", "a rolled back");
    assert_eq!(disk(&lab, "a").0, "UpToDate");
    // b comes back with fresh metadata and receives a full sync from a.
    wait_for("b to resync from a", || {
        lab.sim("b").status().unwrap().iter().any(|s| s.name == RES && s.devices[0].disk == "UpToDate")
    });
    assert_eq!(disk(&lab, "b").1, before_b + 1, "b got a full sync");
    assert_eq!(read_at0(lab.image("b", RES), 8), b"old-data", "b holds a's rolled-back data");
    aa.pass().unwrap();
    assert_eq!(disk(&lab, "a"), ("UpToDate".into(), 0));
    // a may be promoted again (the guest starts).
    lab.sim("a").promote(RES).unwrap();
    lab.sim("a").demote(RES).unwrap();

    // Delete: gone on both nodes.
    ok(call(&a, &lab.store, "snapshot_delete", json!({"volname": V, "snap": "s1"})));
    for n in ["a", "b"] {
        assert!(!lab.node_dir(n).join(format!("{RES}.s1.snap")).exists(), "{n}");
    }
    drop(b_agent);
    aa.pass().unwrap();
    assert!(lab.store.node_state("a").unwrap().unwrap().volumes[RES].snapshots.is_empty());
}

#[test]
fn agent_takes_recent_missing_snapshots_only() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let mut vol = lab.volume(RES, &["a", "b"], 2048);
    vol.volname = V.into();
    lab.store.put_volume(&vol).unwrap();
    let mut aa = Agent::new(lab.store.clone(), lab.local("a"));
    let mut ab = Agent::new(lab.store.clone(), lab.local("b"));
    for _ in 0..3 {
        aa.pass().unwrap();
        ab.pass().unwrap();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    vol.snapshots.push(drbdpool::store::docs::SnapshotDoc { name: "fresh".into(), created: now, origin: None, rollback: None });
    vol.snapshots.push(drbdpool::store::docs::SnapshotDoc { name: "old".into(), created: now - 3600, origin: None, rollback: None });
    vol.generation += 1;
    lab.store.put_volume(&vol).unwrap();
    ab.pass().unwrap();
    let o = &lab.store.node_state("b").unwrap().unwrap().volumes[RES];
    assert_eq!(o.snapshots, vec!["fresh".to_string()]);
    assert!(lab.node_dir("b").join(format!("{RES}.fresh.snap")).exists());
    assert!(!lab.node_dir("b").join(format!("{RES}.old.snap")).exists(), "an old snapshot is not taken late");
    // Removed from the document: the agent deletes its copy.
    vol.snapshots.clear();
    vol.generation += 1;
    lab.store.put_volume(&vol).unwrap();
    ab.pass().unwrap();
    assert!(!lab.node_dir("b").join(format!("{RES}.fresh.snap")).exists());
    assert!(lab.store.node_state("b").unwrap().unwrap().volumes[RES].snapshots.is_empty());
}

#[test]
fn linked_clone_of_a_template_on_two_nodes() {
    if !can_loop() {
        return;
    }
    let base_res = "pool1.vm-100-disk-0";
    let lab = Lab::new(&["a", "b"]);
    let mut base = lab.volume(base_res, &["a", "b"], 4096);
    base.volname = V.into();
    lab.store.put_volume(&base).unwrap();
    let mut aa = Agent::new(lab.store.clone(), lab.local("a"));
    let mut ab = Agent::new(lab.store.clone(), lab.local("b"));
    for _ in 0..3 {
        aa.pass().unwrap();
        ab.pass().unwrap();
    }
    // The template's data, identical on both (DRBD replicated it); then made a template.
    for n in ["a", "b"] {
        write_at0(&lab.image(n, base_res), b"template");
    }
    base.state = VolumeState::Ready;
    base.volname = "base-100-disk-0".into();
    base.base = true;
    base.generation += 1;
    lab.store.remove_volume("pool1", V).unwrap();
    lab.store.put_volume(&base).unwrap();
    for _ in 0..2 {
        aa.pass().unwrap();
        ab.pass().unwrap();
    }
    let a = lab.local("a");
    // Not while the template is not known identical everywhere (b's replica down: a sees it Connecting).
    lab.sim("b").down(base_res).unwrap();
    let r = call(&a, &lab.store, "clone", json!({"volname": "base-100-disk-0", "vmid": 102}));
    let e = r.error.unwrap();
    assert_eq!(e.kind, "refused");
    assert!(e.message.contains("a sees b Connecting"), "{}", e.message);
    assert!(lab.store.volume("pool1", "vm-102-disk-0").unwrap().is_none(), "nothing allocated");
    // b's agent brings it back.
    ab.pass().unwrap();
    aa.pass().unwrap();
    assert_eq!(lab.sim("b").status().unwrap().iter().find(|s| s.name == base_res).unwrap().devices[0].disk, "UpToDate");

    let b_agent = Bg::spawn(ab);
    let r = ok(call(&a, &lab.store, "clone", json!({"volname": "base-100-disk-0", "vmid": 102})));
    assert_eq!(r, json!({"volname": "base-100-disk-0/vm-102-disk-0"}));
    let cl = lab.store.volume("pool1", "vm-102-disk-0").unwrap().unwrap();
    assert_eq!((cl.parent.as_deref(), cl.state), (Some("base-100-disk-0"), VolumeState::Ready));
    assert_ne!(cl.resource, base_res);
    for n in ["a", "b"] {
        assert_eq!(read_at0(lab.image(n, &cl.resource), 8), b"template", "{n}: clone holds the template's data");
        let st = lab.sim(n).status().unwrap().into_iter().find(|s| s.name == cl.resource).unwrap();
        assert_eq!(st.devices[0].disk, "UpToDate", "{n}");
        assert_eq!(st.devices[0].extra["sim-full-syncs"], "0", "{n}: initial sync skipped, fresh metadata");
    }
    // The clone is its own resource: writing it leaves the template alone.
    write_at0(&lab.image("a", &cl.resource), b"clone-wr");
    assert_eq!(read_at0(lab.image("a", base_res), 8), b"template");
    drop(b_agent);
}

#[test]
fn a_peer_in_use_refuses_to_be_discarded() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let mut vol = lab.volume(RES, &["a", "b"], 2048);
    vol.volname = V.into();
    lab.store.put_volume(&vol).unwrap();
    let mut aa = Agent::new(lab.store.clone(), lab.local("a"));
    let mut ab = Agent::new(lab.store.clone(), lab.local("b"));
    for _ in 0..3 {
        aa.pass().unwrap();
        ab.pass().unwrap();
    }
    // A guest runs on b when a rollback from a is marked (started between check and mark).
    lab.sim("b").promote(RES).unwrap();
    lab.sim("b").set_open(RES, true).unwrap();
    vol.snapshots.push(drbdpool::store::docs::SnapshotDoc {
        name: "s1".into(),
        created: 1,
        origin: Some("a".into()),
        rollback: Some(drbdpool::store::docs::RollbackMark { source: "a".into(), since: 1 }),
    });
    vol.generation += 1;
    lab.store.put_volume(&vol).unwrap();
    ab.pass().unwrap();
    let o = &lab.store.node_state("b").unwrap().unwrap().volumes[RES];
    assert!(o.error.as_deref().is_some_and(|e| e.contains("discarded for a rollback") && e.contains("Primary")), "{o:?}");
    let st = lab.sim("b").status().unwrap().into_iter().find(|s| s.name == RES).unwrap();
    assert_eq!((st.role.as_str(), st.devices[0].disk.as_str()), ("Primary", "UpToDate"), "left alone");
    // The guest stops: the next pass discards it (down, fresh metadata), published as Discarded.
    lab.sim("b").set_open(RES, false).unwrap();
    lab.sim("b").demote(RES).unwrap();
    ab.pass().unwrap();
    assert_eq!(lab.store.node_state("b").unwrap().unwrap().volumes[RES].disk, "Discarded");
    assert!(lab.sim("b").status().unwrap().iter().all(|s| s.name != RES), "down while the mark is set");
    ab.pass().unwrap();
    assert!(lab.sim("b").status().unwrap().iter().all(|s| s.name != RES), "stays down");
    // Mark cleared (a's data unchanged): b comes back and resyncs fully from a.
    vol.snapshots[0].rollback = None;
    vol.generation += 1;
    lab.store.put_volume(&vol).unwrap();
    ab.pass().unwrap();
    let st = lab.sim("b").status().unwrap().into_iter().find(|s| s.name == RES).unwrap();
    assert_eq!((st.devices[0].disk.as_str(), st.devices[0].extra["sim-full-syncs"].as_str()), ("UpToDate", "1"));
}

#[test]
fn a_ready_volume_with_all_metadata_wiped_is_never_declared_in_sync() {
    if !can_loop() {
        return;
    }
    use drbdpool::node::NodeOps;
    let lab = Lab::new(&["a", "b"]);
    let mut vol = lab.volume(RES, &["a", "b"], 2048);
    vol.volname = V.into();
    lab.store.put_volume(&vol).unwrap();
    let mut aa = Agent::new(lab.store.clone(), lab.local("a"));
    let mut ab = Agent::new(lab.store.clone(), lab.local("b"));
    for _ in 0..3 {
        aa.pass().unwrap();
        ab.pass().unwrap();
    }
    vol.state = VolumeState::Ready;
    vol.generation += 1;
    lab.store.put_volume(&vol).unwrap();
    // A rollback that failed half-way on both sides: data kept, metadata fresh everywhere.
    write_at0(&lab.image("a", RES), b"a-differs");
    lab.local("a").discard_replica(&vol).unwrap();
    lab.local("b").discard_replica(&vol).unwrap();
    for _ in 0..3 {
        aa.pass().unwrap();
        ab.pass().unwrap();
    }
    for n in ["a", "b"] {
        assert_eq!(disk(&lab, n), ("Inconsistent".into(), 0), "{n}: must not be declared UpToDate");
    }
    let err = lab.store.node_state("a").unwrap().unwrap().volumes[RES].error.clone().unwrap_or_default();
    assert!(err.contains("not declaring them in sync"), "replicas[0] reports why: {err}");
}
