//! LocalNode and the agent with SimDrbd and the file backend on real loop devices.

#[path = "nodelab/mod.rs"]
mod common;

use std::os::unix::fs::MetadataExt;

use common::{can_loop, Lab};
use drbdpool::agent::Agent;
use drbdpool::drbd::drbd_backing_kib;
use drbdpool::drbd::{PlanHost, Replication, ResourcePlan};
use drbdpool::node::NodeOps;
use drbdpool::store::docs::VolumeState;

fn passes(agents: &mut [&mut Agent], n: usize) {
    for _ in 0..n {
        for a in agents.iter_mut() {
            a.pass().unwrap();
        }
    }
}

#[test]
fn agents_create_grow_and_delete_a_volume() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let mut vol = lab.volume("dp-r1", &["a", "b"], 4096);
    lab.store.put_volume(&vol).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    let mut b = Agent::new(lab.store.clone(), lab.local("b"));

    // Creation: a comes up alone (Connecting), b joins, a skips the initial sync.
    a.pass().unwrap();
    let sa = lab.store.node_state("a").unwrap().unwrap();
    assert_eq!(sa.volumes["dp-r1"].disk, "Inconsistent");
    assert_eq!(sa.volumes["dp-r1"].peers[0].connection, "Connecting");
    assert_eq!(sa.volumes["dp-r1"].peers[0].node, "b");
    passes(&mut [&mut b, &mut a], 1);
    b.pass().unwrap();
    for n in ["a", "b"] {
        let img = lab.image(n, "dp-r1");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), drbd_backing_kib(4096) * 1024, "{n}");
        assert_eq!(Lab::loops(&img).len(), 1, "{n}: one loop device");
        let s = lab.store.node_state(n).unwrap().unwrap();
        let o = &s.volumes["dp-r1"];
        assert!(o.ready && o.error.is_none(), "{n}: {o:?}");
        assert_eq!((o.disk.as_str(), o.generation, o.size_kib), ("UpToDate", 1, 4096), "{n}");
        assert_eq!(o.peers[0].connection, "Connected");
        assert!(s.storages["pool1"].total > 0);
    }

    assert_eq!(full_syncs(&lab, "a", "dp-r1") + full_syncs(&lab, "b", "dp-r1"), 0, "thin: initial sync skipped");

    // Nothing changed: the NodeState file is not rewritten.
    let p = lab.store.root().join("state/a.json");
    let before = std::fs::metadata(&p).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    passes(&mut [&mut a, &mut b], 2);
    let after = std::fs::metadata(&p).unwrap();
    assert_eq!((before.ino(), before.mtime_nsec()), (after.ino(), after.mtime_nsec()), "unchanged state was rewritten");

    // A restarted agent (no memory) re-applies idempotently and still writes nothing.
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    a.pass().unwrap();
    let again = std::fs::metadata(&p).unwrap();
    assert_eq!((before.ino(), before.mtime_nsec()), (again.ino(), again.mtime_nsec()), "restart rewrote the state");
    assert_eq!(lab.store.node_state("a").unwrap().unwrap().volumes["dp-r1"].disk, "UpToDate");

    // Heartbeat: a state older than 60 s is rewritten even if nothing changed.
    let mut st = lab.store.node_state("a").unwrap().unwrap();
    st.updated -= 61;
    lab.store.put_node_state(&st).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    a.pass().unwrap();
    let hb = lab.store.node_state("a").unwrap().unwrap();
    assert!(hb.updated >= st.updated + 61, "heartbeat not written");
    assert_eq!(hb.volumes, st.volumes);

    // Growth: size and generation bumped.
    vol.size_kib = 8192;
    vol.generation = 2;
    vol.state = VolumeState::Ready;
    lab.store.put_volume(&vol).unwrap();
    passes(&mut [&mut a, &mut b], 2);
    for n in ["a", "b"] {
        assert_eq!(std::fs::metadata(lab.image(n, "dp-r1")).unwrap().len(), drbd_backing_kib(8192) * 1024);
        let o = &lab.store.node_state(n).unwrap().unwrap().volumes["dp-r1"];
        assert_eq!((o.generation, o.size_kib, o.disk.as_str()), (2, 8192, "UpToDate"), "{n}: {o:?}");
    }

    // Deletion while a guest has it open on a: refused there and reported, b goes.
    lab.sim("a").promote("dp-r1").unwrap();
    lab.sim("a").set_open("dp-r1", true).unwrap();
    vol.state = VolumeState::Deleting;
    vol.generation = 3;
    lab.store.put_volume(&vol).unwrap();
    passes(&mut [&mut a, &mut b], 2);
    let oa = &lab.store.node_state("a").unwrap().unwrap().volumes["dp-r1"];
    assert!(oa.error.as_deref().unwrap_or("").contains("stop the guest"), "{oa:?}");
    assert!(lab.image("a", "dp-r1").exists(), "Invariant 2: an open Primary's backing must stay");
    assert!(!lab.image("b", "dp-r1").exists());
    assert!(lab.store.volume("pool1", "dp-r1-vol").unwrap().is_some(), "doc stays while a lists it");

    // Guest stops: everything goes, and the doc with it.
    lab.sim("a").set_open("dp-r1", false).unwrap();
    lab.sim("a").demote("dp-r1").unwrap();
    passes(&mut [&mut a, &mut b], 2);
    for n in ["a", "b"] {
        let img = lab.image(n, "dp-r1");
        assert!(!img.exists(), "{n}");
        assert!(lab.store.node_state(n).unwrap().unwrap().volumes.is_empty(), "{n}");
    }
    assert!(lab.store.volume("pool1", "dp-r1-vol").unwrap().is_none(), "finished deleting doc is removed");
    assert!(lab.sim("a").configured().unwrap().is_empty());
}

/// Issue 16: a storage's resync settings (`storages/<sid>.json`, recorded by activate_storage
/// from `drbdpool-resync-rate-*`) reach every replica of its volumes: a change is applied at the
/// next pass (resource file rewritten, DRBD adjusted), without a change of the volume.
#[test]
fn resync_settings_reach_every_replica() {
    if !can_loop() {
        return;
    }
    use drbdpool::store::docs::{Resync, StorageDoc};
    let lab = Lab::new(&["a", "b"]);
    let vol = lab.volume("dp-rs", &["a", "b"], 1024);
    lab.store.put_volume(&vol).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    let mut b = Agent::new(lab.store.clone(), lab.local("b"));
    passes(&mut [&mut a, &mut b], 3);
    for n in ["a", "b"] {
        assert_eq!(lab.sim(n).resync_of("dp-rs").unwrap(), Some(Resync::default()), "{n}: the defaults without a storage document");
    }
    let capped = Resync { max_kib: 50 * 1024, min_kib: 10 * 1024 };
    lab.store.put_storage_doc(&StorageDoc { format: 1, storeid: vol.storeid.clone(), resync: capped, nodes: None }).unwrap();
    passes(&mut [&mut a, &mut b], 1);
    for n in ["a", "b"] {
        assert_eq!(lab.sim(n).resync_of("dp-rs").unwrap(), Some(capped), "{n}: applied at the next pass");
        let o = &lab.store.node_state(n).unwrap().unwrap().volumes["dp-rs"];
        assert!(o.ready && o.error.is_none() && o.disk == "UpToDate", "{n}: {o:?}");
    }
    assert_eq!(lab.store.volume(&vol.storeid, &vol.volname).unwrap().unwrap().generation, vol.generation, "the volume did not change");
}

#[test]
fn one_failing_volume_does_not_stop_the_others_and_orphans_go_down() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a"]);
    let good = lab.volume("dp-good", &["a"], 1024);
    let mut bad = lab.volume("dp-bad", &["a", "ghost"], 1024);
    bad.port = 7001;
    bad.minor = 1001;
    lab.store.put_volume(&good).unwrap();
    lab.store.put_volume(&bad).unwrap();

    // An orphan: configured here, wanted by no document.
    let sim = lab.sim("a");
    let img = lab.node_dir("a").join("orphan.img");
    std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    sim.apply(&ResourcePlan {
        resource: "dp-orphan".into(),
        minor: 1002,
        port: 7002,
        secret: "x".into(),
        size_kib: 512,
        local: "a".into(),
        backing: img.to_string_lossy().into(),
        hosts: vec![PlanHost { name: "a".into(), node_id: 0, address: "10.99.0.1".into() }],
        thin: true,
        dual_primary: false,
        handler_store: None,
        resync: Default::default(),
    })
    .unwrap();

    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    a.pass().unwrap();
    let s = lab.store.node_state("a").unwrap().unwrap();
    let e = s.volumes["dp-bad"].error.as_deref().unwrap_or_default().to_string();
    assert!(e.contains("ghost") && e.contains("node add"), "{e}");
    assert!(!s.volumes["dp-bad"].ready);
    // A single-replica thin volume is UpToDate right away (nothing to sync with).
    assert!(s.volumes["dp-good"].ready && s.volumes["dp-good"].error.is_none(), "{:?}", s.volumes["dp-good"]);
    assert!(!s.volumes.contains_key("dp-orphan"));
    assert_eq!(sim.configured().unwrap(), vec!["dp-good".to_string()], "orphan taken down, bad never came up");
    assert!(img.exists(), "an orphan's backing is kept");
}

#[test]
fn local_node_refuses_what_is_unsafe() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let a = lab.local("a");
    let vol = lab.volume("dp-r2", &["a", "b"], 1024);
    let other = lab.volume("dp-r3", &["b"], 1024);
    lab.store.put_volume(&vol).unwrap();
    lab.store.put_volume(&other).unwrap();
    assert_eq!(a.ensure_replica(&other).unwrap_err().kind(), "invalid-input");
    let o = a.ensure_replica(&vol).unwrap();
    assert_eq!((o.disk.as_str(), o.ready), ("Inconsistent", true));
    assert_eq!(a.ensure_replica(&vol).unwrap(), o, "idempotent");
    // Peer not connected: no skipping, no promotion of Inconsistent data.
    assert_eq!(a.skip_initial_sync(&vol).unwrap_err().kind(), "refused");
    assert_eq!(a.promote(&vol).unwrap_err().kind(), "refused");
    assert_eq!(lab.local_thick("a").skip_initial_sync(&vol).unwrap_err().kind(), "refused", "thick: never skip");

    let b = lab.local("b");
    b.ensure_replica(&vol).unwrap();
    a.skip_initial_sync(&vol).unwrap();
    a.promote(&vol).unwrap();
    assert_eq!(b.promote(&vol).unwrap_err().kind(), "refused", "second primary without dual-primary");
    a.set_dual_primary(&vol, true).unwrap();
    b.set_dual_primary(&vol, true).unwrap();
    b.promote(&vol).unwrap();
    b.demote(&vol).unwrap();
    b.set_dual_primary(&vol, false).unwrap();
    assert_eq!(a.remove_replica(&vol).unwrap_err().kind(), "refused", "Primary is never removed");
    a.demote(&vol).unwrap();
    a.remove_replica(&vol).unwrap();
    a.remove_replica(&vol).unwrap();
    assert_eq!(a.observe(&vol).unwrap(), None);
    assert!(b.observe(&vol).unwrap().unwrap().ready);
    b.remove_replica(&vol).unwrap();
}

#[test]
fn thick_replicas_get_a_full_initial_sync_from_the_first_replica() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let vol = lab.volume("dp-thick", &["a", "b"], 2048);
    lab.store.put_volume(&vol).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local_thick("a"));
    let mut b = Agent::new(lab.store.clone(), lab.local_thick("b"));
    // b first: b is not replicas[0], so it must not start anything on its own.
    b.pass().unwrap();
    a.pass().unwrap();
    b.pass().unwrap();
    a.pass().unwrap();
    for n in ["a", "b"] {
        let o = &lab.store.node_state(n).unwrap().unwrap().volumes["dp-thick"];
        assert_eq!(o.disk, "UpToDate", "{n}: {o:?}");
    }
    assert_eq!(full_syncs(&lab, "b", "dp-thick"), 1, "thick: b must get a full initial sync");
    assert_eq!(full_syncs(&lab, "a", "dp-thick"), 0, "a is the sync source");
}

fn full_syncs(lab: &Lab, node: &str, res: &str) -> u32 {
    let st = lab.sim(node).status().unwrap().into_iter().find(|s| s.name == res).unwrap();
    st.devices[0].extra["sim-full-syncs"].parse().unwrap()
}

#[test]
fn concurrent_ensure_on_one_node_attaches_one_loop_device() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a"]);
    let vol = lab.volume("dp-race", &["a"], 1024);
    lab.store.put_volume(&vol).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| lab.local("a").ensure_replica(&vol).unwrap());
        }
    });
    assert_eq!(Lab::loops(&lab.image("a", "dp-race")).len(), 1);
}

/// DRBD 8.4 runs no unfence hook when a fenced peer reconnects with nothing to resync
/// (a missed ping under load): the agent drops the mark once its kernel shows the peer
/// Connected, UpToDate and in sync, and not while the peer is away.
#[test]
fn a_healed_outdated_mark_is_dropped_and_a_live_one_kept() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    lab.store.put_volume(&lab.volume("dp-r9", &["a", "b"], 4096)).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    let mut b = Agent::new(lab.store.clone(), lab.local("b"));
    passes(&mut [&mut a, &mut b], 3);
    let mut d = lab.store.volume("pool1", "dp-r9-vol").unwrap().unwrap();
    d.state = VolumeState::Ready; // as the alloc leaves it once both are UpToDate
    assert_eq!(lab.store.node_state("b").unwrap().unwrap().volumes["dp-r9"].disk, "UpToDate");

    // b is really away: the fence-peer handler's mark must stay.
    lab.sim("b").down("dp-r9").unwrap();
    d.outdated = vec!["b".into()];
    lab.store.put_volume(&d).unwrap();
    a.pass().unwrap();
    assert_eq!(lab.store.volume("pool1", "dp-r9-vol").unwrap().unwrap().outdated, vec!["b".to_string()], "b is not connected");

    // b's agent brings it back; with nothing written meanwhile there is nothing to resync.
    // b never clears its own mark (its kernel may show the link up while a already saw it go).
    b.pass().unwrap();
    b.pass().unwrap();
    assert_eq!(lab.store.node_state("b").unwrap().unwrap().volumes["dp-r9"].peers[0].connection, "Connected");
    assert_eq!(lab.store.volume("pool1", "dp-r9-vol").unwrap().unwrap().outdated, vec!["b".to_string()], "b keeps its own mark");
    a.pass().unwrap();
    let st = lab.store.node_state("a").unwrap().unwrap();
    assert_eq!(st.volumes["dp-r9"].peers[0].connection, "Connected", "{:?}", st.volumes["dp-r9"]);
    assert!(lab.store.volume("pool1", "dp-r9-vol").unwrap().unwrap().outdated.is_empty(), "a healed mark is dropped: {:?}", lab.sim("a").resource_status("dp-r9"));
}

/// A caller holding a `creating` copy of a document that has since been marked deleting
/// (a free, or the roll-back of a slow alloc) must not create a backing device: this
/// node's removal may already have run, and nothing would remove it again.
#[test]
fn ensure_from_a_stale_copy_of_a_deleted_volume_creates_nothing() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let vol = lab.volume("dp-gone", &["a", "b"], 1024);
    let mut deleting = vol.clone();
    deleting.state = VolumeState::Deleting;
    lab.store.put_volume(&deleting).unwrap();
    let a = lab.local("a");
    assert_eq!(a.ensure_replica(&vol).unwrap_err().kind(), "refused");
    lab.store.remove_volume("pool1", &vol.volname).unwrap();
    assert_eq!(a.ensure_replica(&vol).unwrap_err().kind(), "refused");
    assert!(!lab.image("a", "dp-gone").exists(), "no backing made for a volume being deleted");
}

/// Issue 18, 1: the peer dies the moment the initial-sync skip is sent. DRBD 8.4 marks it
/// UpToDate on the sending side at once (the sim's `crash_on_skip` models it), so the local
/// kernel shows the peer Connected and UpToDate although its replica never got the skip. alloc
/// must wait for the peer's own report, give up and roll back, instead of calling it ready.
#[test]
fn alloc_is_not_ready_while_the_peer_never_reported_uptodate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let res = drbdpool::naming::resource_name("pool1", "vm-100-disk-0");
    lab.sim("a").crash_on_skip(&res, "b").unwrap();
    // b's agent runs until b dies.
    let stop = Arc::new(AtomicBool::new(false));
    let h = {
        let (store, lb, simb, stop) = (lab.store.clone(), lab.local("b"), lab.sim("b"), stop.clone());
        std::thread::spawn(move || {
            let mut b = Agent::new(store, lb);
            while !stop.load(Ordering::SeqCst) && !simb.is_crashed() {
                let _ = b.pass();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let a = lab.local("a");
    let ctx = drbdpool::protocol::Ctx {
        store: &lab.store,
        node: &a,
        peer_timeout: Duration::from_secs(3),
        poll: Duration::from_millis(20),
        started: None,
        alloc_budget: Duration::from_secs(3),
        creation: drbdpool::protocol::Creation::Inline,
    };
    let scfg = serde_json::json!({"type": "drbdpool", "drbdpool-backend": "file", "drbdpool-dir": lab.shared_dir()});
    let req = serde_json::json!({"version": 1, "storeid": "pool1", "node": "a", "scfg": scfg, "args": {"vmid": 100, "size_kib": 4096}});
    let t0 = Instant::now();
    let r = drbdpool::protocol::handle(&ctx, "alloc", req.to_string().as_bytes());
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
    assert!(lab.sim("b").is_crashed(), "the skip was never sent, the test did not test anything: {r:?}");
    assert!(!r.ok, "alloc called the volume ready although b never reported its replica UpToDate: {r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.kind, "timeout", "{e:?}");
    assert!(e.message.contains("node(s) b did not report the replica UpToDate"), "{}", e.message);
    assert!(took < Duration::from_secs(6), "alloc took {took:?}");
    // Rolled back: a's replica gone at once, the document deleting (b still lists it).
    assert!(!lab.image("a", &res).exists());
    assert_eq!(lab.store.volume("pool1", "vm-100-disk-0").unwrap().unwrap().state, VolumeState::Deleting);
    // b boots again: its agent removes its replica, then the document goes.
    lab.sim("b").revive().unwrap();
    let mut ab = Agent::new(lab.store.clone(), lab.local("b"));
    let mut aa = Agent::new(lab.store.clone(), lab.local("a"));
    passes(&mut [&mut ab, &mut aa], 2);
    assert!(!lab.image("b", &res).exists());
    assert!(lab.store.volume("pool1", "vm-100-disk-0").unwrap().is_none());
}

/// The race behind the leaked backing of tests/stress.rs: an alloc helper on `a` makes a's
/// replica itself (a's agent leaves it alone meanwhile and does not list it), and a free from
/// another node runs before a's agent lists it: the free waits only for nodes that list the
/// resource, so it removes the document while a's replica is still there. a's agent then
/// finds the resource configured and wanted by no document: it must take it down AND remove
/// its backing (a drbdpool name of a known storage, no document owns it), else it leaks.
#[test]
fn a_replica_of_a_volume_removed_before_this_node_listed_it_leaves_no_backing() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let mut keep = lab.volume("pool1.vm-100-disk-0", &["a"], 1024);
    keep.volname = "vm-100-disk-0".into();
    keep.state = VolumeState::Ready;
    let mut vol = lab.volume("pool1.vm-100-disk-4", &["a", "b"], 1024);
    vol.volname = "vm-100-disk-4".into();
    vol.minor = 1001;
    vol.port = 7001;
    lab.store.put_volume(&keep).unwrap();
    lab.store.put_volume(&vol).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    a.pass().unwrap();
    let a_img = lab.image("a", &vol.resource);
    // What a's agent made itself is listed; keep only the alloc helper's case below.
    lab.local("a").remove_replica(&vol).unwrap();
    lab.store.remove_volume("pool1", &vol.volname).unwrap();
    a.pass().unwrap();
    assert!(!lab.store.node_state("a").unwrap().unwrap().volumes.contains_key(&vol.resource));
    // The alloc helper on a: document, then a's replica, a's agent not passing meanwhile.
    lab.store.put_volume(&vol).unwrap();
    lab.local("a").ensure_replica(&vol).unwrap();
    assert!(a_img.exists());
    // A free from b: a lists nothing, so its wait is over at once and the document goes.
    lab.store.remove_volume("pool1", &vol.volname).unwrap();
    a.pass().unwrap();
    assert!(lab.sim("a").configured().unwrap() == vec![keep.resource.clone()], "{:?}", lab.sim("a").configured());
    assert!(!a_img.exists(), "the backing of a removed volume is removed by its node's agent");
    assert!(lab.image("a", &keep.resource).exists(), "a live volume's backing is kept");
}

/// `node replace` (issue 16): a dies for good; its replica moves to c, which the agents sync
/// in full from b (the survivor); a's agent, were it to come back, destroys nothing.
#[test]
fn node_replace_moves_a_dead_nodes_replica_and_the_agents_sync_it() {
    if !can_loop() {
        return;
    }
    use std::io::{Seek, SeekFrom, Write};
    let lab = Lab::new(&["a", "b", "c"]);
    let res = "dp-rep";
    lab.store.put_volume(&lab.volume(res, &["a", "b"], 4096)).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    let mut b = Agent::new(lab.store.clone(), lab.local("b"));
    let mut c = Agent::new(lab.store.clone(), lab.local("c"));
    passes(&mut [&mut a, &mut b, &mut c], 3);
    let d = lab.store.volume("pool1", "dp-rep-vol").unwrap().unwrap();
    lab.store.update_volume(&d, |d| {
        d.state = VolumeState::Ready; // as the alloc leaves it
        Ok(drbdpool::store::Change::Quiet)
    }).unwrap();
    // The guest's data, on b (the sim's full sync copies the data area from the source).
    let record = b"acknowledged record 42\n";
    let mut f = std::fs::OpenOptions::new().write(true).open(lab.image("b", res)).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(record).unwrap();
    drop(f);

    // a is alive: refused, nothing written.
    let e = drbdpool::replace::replace(&lab.store, "a", "c", false).unwrap_err();
    assert!(e.to_string().contains("gone for good"), "{e}");
    assert_eq!(lab.store.volume("pool1", "dp-rep-vol").unwrap().unwrap().generation, d.generation);

    // a dies: its DRBD is down, its agent stopped long ago.
    lab.sim("a").down(res).unwrap();
    let mut sa = lab.store.node_state("a").unwrap().unwrap();
    sa.updated -= 3600;
    lab.store.put_node_state(&sa).unwrap();
    passes(&mut [&mut b, &mut c], 1);

    let dry = drbdpool::replace::replace(&lab.store, "a", "c", true).unwrap();
    assert_eq!((dry.moves.len(), dry.moves[0].source.as_str()), (1, "b"), "{dry:?}");
    assert_eq!(lab.store.volume("pool1", "dp-rep-vol").unwrap().unwrap().generation, d.generation, "a dry run writes nothing");

    let p = drbdpool::replace::replace(&lab.store, "a", "c", false).unwrap();
    assert!(p.skipped.is_empty(), "{p:?}");
    let now = lab.store.volume("pool1", "dp-rep-vol").unwrap().unwrap();
    assert_eq!(now.replicas.iter().map(|r| (r.node.as_str(), r.node_id)).collect::<Vec<_>>(), [("b", 1), ("c", 2)]);
    assert_eq!(now.generation, d.generation + 1);

    passes(&mut [&mut b, &mut c], 3);
    for n in ["b", "c"] {
        let o = &lab.store.node_state(n).unwrap().unwrap().volumes[res];
        assert_eq!((o.disk.as_str(), o.generation, o.error.as_deref()), ("UpToDate", now.generation, None), "{n}: {o:?}");
        assert_eq!(o.peers.iter().map(|p| (p.node.as_str(), p.connection.as_str())).collect::<Vec<_>>(), [(if n == "b" { "c" } else { "b" }, "Connected")]);
    }
    assert_eq!(full_syncs(&lab, "c", res), 1, "c was synced in full");
    let got = std::fs::read(lab.image("c", res)).unwrap();
    assert_eq!(&got[..record.len()], record, "c holds b's data");
    // Running it again: nothing left on a.
    let again = drbdpool::replace::replace(&lab.store, "a", "c", false).unwrap();
    assert!(again.moves.is_empty() && again.skipped.is_empty(), "{again:?}");

    // a comes back after all: its agent takes nothing away from anyone and keeps its own data.
    a.pass().unwrap();
    assert!(lab.image("a", res).exists(), "a's backing is kept (its data is nobody else's to destroy)");
    let o = &lab.store.node_state("c").unwrap().unwrap().volumes[res];
    assert_eq!(o.disk, "UpToDate");
}

/// `volume force-primary` (issue 16): a (Primary, the newest data) wrote while b was away, then
/// died for good. b comes back Outdated; it is made the good copy only with --yes and only once
/// a is silent; a is marked outdated first. When a returns with its own newer writes DRBD keeps
/// the two apart (split brain): a's mark stays, its data is not touched.
#[test]
fn force_primary_accepts_a_survivors_data_and_keeps_the_lost_node_apart() {
    if !can_loop() {
        return;
    }
    let lab = Lab::new(&["a", "b"]);
    let res = "dp-dr";
    lab.store.put_volume(&lab.volume(res, &["a", "b"], 4096)).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    let mut b = Agent::new(lab.store.clone(), lab.local("b"));
    passes(&mut [&mut a, &mut b], 3);
    let d = lab.store.volume("pool1", "dp-dr-vol").unwrap().unwrap();
    lab.store.update_volume(&d, |d| {
        d.state = VolumeState::Ready;
        Ok(drbdpool::store::Change::Quiet)
    }).unwrap();
    let d = lab.store.volume("pool1", "dp-dr-vol").unwrap().unwrap();
    lab.sim("a").promote(res).unwrap();
    lab.sim("b").down(res).unwrap();
    lab.sim("a").write(res).unwrap(); // b misses this
    lab.sim("a").down(res).unwrap(); // a dies for good
    b.pass().unwrap();
    // a's fence-peer handler outdated b before a died (the sim does not keep a down node's view).
    lab.sim("b").set_disk_as_left(res, "Outdated").unwrap();
    let disk = |n: &str| lab.sim(n).resource_status(res).unwrap().map(|s| s.devices[0].disk.clone());
    assert_eq!(disk("b").as_deref(), Some("Outdated"));

    let lb = lab.local("b");
    // a's agent reported just now: it may be alive.
    let e = drbdpool::recover::force_primary(&lab.store, &lb, &d, "b", true).unwrap_err();
    assert!(e.to_string().contains("a's agent reported"), "{e}");
    let mut sa = lab.store.node_state("a").unwrap().unwrap();
    sa.updated -= 3600;
    lab.store.put_node_state(&sa).unwrap();
    // Not on another node's behalf, and not without --yes.
    assert_eq!(drbdpool::recover::force_primary(&lab.store, &lab.local("a"), &d, "b", true).unwrap_err().kind(), "invalid-input");
    let e = drbdpool::recover::force_primary(&lab.store, &lb, &d, "b", false).unwrap_err();
    assert!(e.to_string().contains("--yes") && e.to_string().contains("Outdated") && e.to_string().contains("mark a outdated"), "{e}");
    assert_eq!(lab.store.volume("pool1", "dp-dr-vol").unwrap().unwrap(), d, "refusals change nothing");
    assert_eq!(disk("b").as_deref(), Some("Outdated"));

    let o = drbdpool::recover::force_primary(&lab.store, &lb, &d, "b", true).unwrap();
    assert_eq!((o.disk_before.as_str(), o.over.len()), ("Outdated", 1));
    assert_eq!(disk("b").as_deref(), Some("UpToDate"));
    let now = lab.store.volume("pool1", "dp-dr-vol").unwrap().unwrap();
    assert_eq!(now.outdated, ["a"]);
    assert_eq!(now.forced.as_ref().map(|f| (f.node.as_str(), f.disk_before.as_str())), Some(("b", "Outdated")));
    // Again: already UpToDate, nothing to force.
    assert_eq!(drbdpool::recover::force_primary(&lab.store, &lb, &now, "b", true).unwrap_err().kind(), "refused");

    // a comes back with its own writes: split brain, kept apart, a stays marked.
    passes(&mut [&mut a, &mut b], 3);
    let sa = lab.sim("a").resource_status(res).unwrap().unwrap();
    assert_eq!(sa.connections[0].connection, "StandAlone", "{sa:?}");
    assert_eq!(sa.devices[0].disk, "UpToDate", "a's own data is not discarded");
    assert_eq!(lab.store.volume("pool1", "dp-dr-vol").unwrap().unwrap().outdated, ["a"], "the mark stays while a is apart");
}

/// A volume on a and b, Ready, both holding MOVED_RECORD at offset 0; the agents of a, b and c.
fn moving_lab(max_hosts: usize) -> (Lab, Agent, Agent, Agent, drbdpool::store::docs::VolumeDoc) {
    use std::io::{Seek, SeekFrom, Write};
    let lab = Lab::new(&["a", "b", "c"]);
    for n in ["a", "b", "c"] {
        lab.sim(n).set_max_hosts(max_hosts).unwrap();
    }
    let res = "dp-mv";
    lab.store.put_volume(&lab.volume(res, &["a", "b"], 4096)).unwrap();
    let mut a = Agent::new(lab.store.clone(), lab.local("a"));
    let mut b = Agent::new(lab.store.clone(), lab.local("b"));
    let mut c = Agent::new(lab.store.clone(), lab.local("c"));
    passes(&mut [&mut a, &mut b, &mut c], 3);
    let d = lab.store.volume("pool1", "dp-mv-vol").unwrap().unwrap();
    lab.store.update_volume(&d, |d| {
        d.state = VolumeState::Ready;
        Ok(drbdpool::store::Change::Quiet)
    }).unwrap();
    // A replicated write: on both (the sim's full sync copies the data area from its source).
    for n in ["a", "b"] {
        let mut f = std::fs::OpenOptions::new().write(true).open(lab.image(n, res)).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(MOVED_RECORD).unwrap();
    }
    let d = lab.store.volume("pool1", "dp-mv-vol").unwrap().unwrap();
    (lab, a, b, c, d)
}

const MOVED_RECORD: &[u8] = b"acknowledged record 7\n";

fn move_a_to_c(lab: &Lab, max_hosts: usize) -> drbdpool::error::Result<drbdpool::relocate::Plan> {
    let t = drbdpool::relocate::Target::Volume { resource: "dp-mv", from: "a", to: "c" };
    drbdpool::relocate::relocate(&lab.store, max_hosts, t, false)
}

fn assert_moved_to_c(lab: &Lab) {
    let res = "dp-mv";
    let now = lab.store.volume("pool1", "dp-mv-vol").unwrap().unwrap();
    assert_eq!(now.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    assert!(now.moving.is_none() && now.released.is_empty(), "{now:?}");
    for n in ["b", "c"] {
        let o = &lab.store.node_state(n).unwrap().unwrap().volumes[res];
        assert_eq!((o.disk.as_str(), o.generation, o.error.as_deref()), ("UpToDate", now.generation, None), "{n}: {o:?}");
        let peers: Vec<(&str, &str)> = o.peers.iter().map(|p| (p.node.as_str(), p.connection.as_str())).collect();
        assert_eq!(peers, [(if n == "b" { "c" } else { "b" }, "Connected")], "{n}");
    }
    assert_eq!(full_syncs(lab, "c", res), 1, "c was synced in full");
    assert_eq!(&std::fs::read(lab.image("c", res)).unwrap()[..MOVED_RECORD.len()], MOVED_RECORD, "c holds the data");
    assert!(!lab.image("a", res).exists(), "a's replica is removed once the move is over");
    assert!(!lab.store.node_state("a").unwrap().unwrap().volumes.contains_key(res), "a publishes nothing of it");
    // Again: a holds nothing any more.
    let e = move_a_to_c(lab, 2).unwrap_err();
    assert!(e.to_string().contains("no replica on a"), "{e}");
}

/// `volume move` on DRBD 8.4 (two hosts per resource, issue 16): the source may not be in
/// use; it leaves the resource at once and keeps its data until c, synced from b, is UpToDate.
#[test]
fn volume_move_on_a_two_host_drbd_switches_the_peer_and_keeps_the_source_until_done() {
    if !can_loop() {
        return;
    }
    let res = "dp-mv";
    let (lab, mut a, mut b, mut c, d) = moving_lab(2);
    // A guest runs on a: refused, nothing written.
    lab.sim("a").promote(res).unwrap();
    passes(&mut [&mut a], 1);
    let e = move_a_to_c(&lab, 2).unwrap_err();
    assert!(e.to_string().contains("in use on a") && e.to_string().contains("qm migrate"), "{e}");
    assert_eq!(lab.store.volume("pool1", "dp-mv-vol").unwrap().unwrap().generation, d.generation);
    lab.sim("a").demote(res).unwrap();
    passes(&mut [&mut a], 1);

    let p = move_a_to_c(&lab, 2).unwrap();
    assert_eq!((p.moves.len(), p.moves[0].source.as_str()), (1, "b"), "{p:?}");
    let table = drbdpool::cli::status_table_with(&lab.store, None).unwrap();
    assert!(table.contains("moving a>c"), "{table}");
    // One pass each: a is taken down with its data kept, b switches to c, c starts its sync.
    passes(&mut [&mut a, &mut b, &mut c], 1);
    assert!(lab.image("a", res).exists(), "a's data stays until c is UpToDate");
    assert!(lab.sim("a").status().unwrap().iter().all(|s| s.name != res), "a is down");
    let oa = &lab.store.node_state("a").unwrap().unwrap().volumes[res];
    assert_eq!(oa.disk, "Outdated");
    passes(&mut [&mut a, &mut b, &mut c], 3);
    assert_moved_to_c(&lab);
}

/// `volume move` on DRBD 9: c joins as a third peer while the guest keeps running on a; a's
/// replica goes only after c is UpToDate and the guest has left a.
#[test]
fn volume_move_on_drbd9_keeps_the_source_connected_until_the_guest_left() {
    if !can_loop() {
        return;
    }
    let res = "dp-mv";
    let (lab, mut a, mut b, mut c, _) = moving_lab(32);
    lab.sim("a").promote(res).unwrap();
    passes(&mut [&mut a], 1);
    let p = move_a_to_c(&lab, 32).unwrap();
    assert_eq!(p.moves.len(), 1, "{p:?}");
    passes(&mut [&mut a, &mut b, &mut c], 3);
    let oc = &lab.store.node_state("c").unwrap().unwrap().volumes[res];
    assert_eq!(oc.disk, "UpToDate", "{oc:?}");
    let doc = lab.store.volume("pool1", "dp-mv-vol").unwrap().unwrap();
    assert!(doc.moving.is_some() && doc.replica("a").is_some(), "a stays while the guest runs there: {doc:?}");
    let oa = &lab.store.node_state("a").unwrap().unwrap().volumes[res];
    assert_eq!((oa.role.as_str(), oa.peers.len()), ("Primary", 2), "{oa:?}");
    // The guest left a (migrated to b).
    lab.sim("a").demote(res).unwrap();
    passes(&mut [&mut a, &mut b, &mut c], 3);
    assert_moved_to_c(&lab);
}

/// `volume replicas` (DRBD 9): 2 -> 3 adds c, synced in full; 3 -> 1 with the guest on a drops
/// c and b, whose agents remove them; a keeps the data.
#[test]
fn volume_replicas_adds_a_synced_replica_and_drops_the_ones_not_in_use() {
    if !can_loop() {
        return;
    }
    let res = "dp-mv";
    let (lab, mut a, mut b, mut c, _) = moving_lab(32);
    let set = |n| drbdpool::relocate::relocate(&lab.store, 32, drbdpool::relocate::Target::Replicas { resource: res, count: n }, false);
    let p = set(3).unwrap();
    assert_eq!(p.resizes.iter().map(|r| (r.node.as_str(), r.add)).collect::<Vec<_>>(), [("c", true)]);
    passes(&mut [&mut a, &mut b, &mut c], 3);
    let doc = lab.store.volume("pool1", "dp-mv-vol").unwrap().unwrap();
    for n in ["a", "b", "c"] {
        let o = &lab.store.node_state(n).unwrap().unwrap().volumes[res];
        assert_eq!((o.disk.as_str(), o.generation, o.peers.len()), ("UpToDate", doc.generation, 2), "{n}: {o:?}");
    }
    assert_eq!(full_syncs(&lab, "c", res), 1);
    assert_eq!(&std::fs::read(lab.image("c", res)).unwrap()[..MOVED_RECORD.len()], MOVED_RECORD);

    lab.sim("a").promote(res).unwrap();
    passes(&mut [&mut a], 1);
    let p = set(1).unwrap();
    assert_eq!(p.resizes.iter().map(|r| (r.node.as_str(), r.add)).collect::<Vec<_>>(), [("c", false), ("b", false)]);
    passes(&mut [&mut a, &mut b, &mut c], 2);
    let doc = lab.store.volume("pool1", "dp-mv-vol").unwrap().unwrap();
    assert_eq!((doc.replicas.len(), doc.released.len()), (1, 0), "{doc:?}");
    for n in ["b", "c"] {
        assert!(!lab.image(n, res).exists(), "{n}'s replica is removed");
    }
    let o = &lab.store.node_state("a").unwrap().unwrap().volumes[res];
    assert_eq!((o.role.as_str(), o.disk.as_str(), o.peers.len()), ("Primary", "UpToDate", 0), "{o:?}");
}
