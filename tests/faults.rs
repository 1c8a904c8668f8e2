//! Every failpoint (src/failpoint.rs): the real binary dies there (exit 86, as
//! if killed), `drbdpool check` finds the store consistent (at most a lock of
//! the dead process, which the next call breaks), the next call or agent passes
//! complete or roll back the operation, and afterwards `check` is clean on every
//! node: no replica, image, loop device, minor or port leaked or handed out twice.
//! Two simulated nodes (a, b) with the file backend on real loop devices.

#[path = "faultlab/mod.rs"]
mod lab;

use std::time::Duration;

use drbdpool::drbd::drbd_backing_kib;
use drbdpool::failpoint::EXIT_CODE;
use drbdpool::store::docs::VolumeState;
use lab::{can_run, Out, World};
use serde_json::{json, Value};

const VOL: &str = "vm-100-disk-0";

fn fp_env(fp: &str) -> [(&str, &str); 1] {
    [("DRBDPOOL_FAILPOINTS", fp)]
}

fn assert_crashed(o: &Out, fp: &str) {
    assert_eq!(o.code, EXIT_CODE, "expected a stop at failpoint {fp}; stdout {} stderr {}", o.stdout, o.stderr);
    assert!(o.stderr.contains(&format!("failpoint {fp} hit")), "{}", o.stderr);
}

/// Right after a crash only a lock of the dead process may be reported (the next call breaks it).
fn assert_consistent_after_crash(w: &World, fp: &str) {
    for f in w.findings() {
        assert_eq!(f["kind"], "stale-lock", "{fp}: unexpected finding right after the crash: {f}\n{}", w.dump());
    }
    // The store's own invariants hold whatever state the operation was in.
    let docs = w.store.all_volumes().unwrap();
    let mut minors: Vec<u32> = docs.iter().map(|v| v.minor).collect();
    minors.dedup();
    assert_eq!(minors.len(), docs.len(), "{fp}: duplicate minor");
}

fn alloc(w: &World) -> Value {
    let (o, v) = w.plugin_pumped("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    assert_eq!(o.code, 0, "alloc: {} {}", o.stdout, o.stderr);
    v
}

fn published(w: &World, node: &str) -> Option<drbdpool::store::docs::VolumeObserved> {
    w.store.node_state(node).ok().flatten().and_then(|s| s.volumes.get(&w.res(VOL)).cloned())
}

fn alloc_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    let ch = w.spawn_plugin("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &fp_env(fp));
    assert_crashed(&w.pump(ch), fp);
    assert_consistent_after_crash(&w, fp);
    // Agents roll the dead alloc back once the create expiry (15 s here) has passed.
    w.rounds_until("the dead alloc's volume rolled back", 300, || {
        std::thread::sleep(Duration::from_millis(100));
        w.store.all_volumes().unwrap().is_empty()
    });
    // Nothing left on any node (agents removed their replicas before the doc went).
    w.round();
    // A lock the dead alloc held is broken by the next call that wants it (pmxcfs reaps it itself).
    w.assert_clean_but(&format!("{fp}: after roll back"), &["stale-lock"]);
    // The next alloc gets the same name, minor and port: nothing was leaked.
    let v = alloc(&w);
    assert_eq!(v["result"]["volname"], VOL);
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    assert_eq!((d.minor, d.port, d.state), (1000, 7000, VolumeState::Ready));
    w.assert_clean(&format!("{fp}: after the next alloc"));
}

fn free_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    alloc(&w);
    let ch = w.spawn_plugin("a", "free", json!({"volname": VOL}), &fp_env(fp));
    assert_crashed(&w.pump(ch), fp);
    assert_consistent_after_crash(&w, fp);
    // Marked deleting (or already removed by an agent pass that ran beside the free).
    let st = w.store.volume(&w.sid, VOL).unwrap().map(|d| d.state);
    assert!(st.is_none() || st == Some(VolumeState::Deleting), "{fp}: {st:?}");
    // Agents finish the deletion: replicas and then the document go.
    w.rounds_until("the volume deleted", 20, || w.store.all_volumes().unwrap().is_empty());
    // The dead free's volume lock: no later call takes it (the volume is gone), so once older
    // than the lock lifetime (3 s, a matter of load) it is reported; pmxcfs reaps it itself.
    w.assert_clean_but(&format!("{fp}: after the agents finished the free"), &["stale-lock"]);
    for n in ["a", "b"] {
        assert!(w.images(n).is_empty(), "{fp}: {n}");
    }
    // PVE retrying the free: idempotent.
    let (o, _) = w.plugin("a", "free", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stdout);
}

fn resize_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    alloc(&w);
    let ch = w.spawn_plugin("a", "resize", json!({"volname": VOL, "size_bytes": 8u64 << 20}), &fp_env(fp));
    assert_crashed(&w.pump(ch), fp);
    assert_consistent_after_crash(&w, fp);
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    assert_eq!((d.size_kib, d.state), (8192, VolumeState::Ready), "{fp}: the doc records the new size before any device grows");
    // Agents complete the resize: both backings grow, then DRBD.
    w.rounds_until("both replicas at 8 MiB", 20, || {
        ["a", "b"].iter().all(|n| published(&w, n).is_some_and(|o| o.size_kib == 8192 && o.generation == d.generation && o.disk == "UpToDate"))
    });
    // PVE's retry of the resize succeeds at once.
    let (o, v) = w.plugin_pumped("a", "resize", json!({"volname": VOL, "size_bytes": 8u64 << 20}), &[]);
    assert_eq!((o.code, &v["result"]["size"]), (0, &json!(8u64 << 20)), "{}", o.stderr);
    for n in ["a", "b"] {
        let len = std::fs::metadata(w.node_dir(n).join(format!("{}.img", w.res(VOL)))).unwrap().len();
        assert_eq!(len, drbd_backing_kib(8192) * 1024, "{fp}: {n}");
    }
    w.assert_clean(&format!("{fp}: after resize"));
}

fn activate_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    alloc(&w);
    let (o, _) = w.plugin("a", "activate", json!({"volname": VOL}), &fp_env(fp));
    assert_crashed(&o, fp);
    assert_consistent_after_crash(&w, fp);
    // PVE retries the start: activate is idempotent.
    let (o, v) = w.plugin("a", "activate", json!({"volname": VOL}), &[]);
    assert_eq!((o.code, &v["result"]["path"]), (0, &json!("/dev/drbd1000")), "{}", o.stderr);
    w.rounds_until("a Primary, b Secondary", 5, || {
        published(&w, "a").is_some_and(|o| o.role == "Primary") && published(&w, "b").is_some_and(|o| o.role == "Secondary")
    });
    w.assert_clean(&format!("{fp}: after activate"));
    let (o, _) = w.plugin("a", "deactivate", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (o, _) = w.plugin_pumped("a", "free", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    w.rounds_until("volume gone", 10, || w.store.all_volumes().unwrap().is_empty());
    w.assert_clean(&format!("{fp}: after free"));
}

/// The live-migration path: b runs the guest, a opens the two-primaries window and
/// dies before promoting. PVE's cleanup of a failed migration deactivates the volume
/// on the target, which closes the window; b stays the only Primary.
#[test]
fn activate_migration_window_before_promote() {
    if !can_run() {
        return;
    }
    let fp = "activate.before-promote";
    let w = World::new(&["a", "b"]);
    alloc(&w);
    let (o, _) = w.plugin("b", "activate", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stdout);
    w.round();
    let (o, _) = w.plugin_pumped("a", "activate", json!({"volname": VOL, "migrated_from": "b"}), &fp_env(fp));
    assert_crashed(&o, fp);
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    let dp = d.dual_primary.expect("window opened before the crash");
    assert_eq!((dp.source.as_str(), dp.target.as_str()), ("b", "a"));
    assert_consistent_after_crash(&w, fp);
    let (o, _) = w.plugin("a", "deactivate", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert!(w.store.volume(&w.sid, VOL).unwrap().unwrap().dual_primary.is_none(), "window left open");
    w.rounds_until("b Primary alone", 5, || {
        published(&w, "b").is_some_and(|o| o.role == "Primary") && published(&w, "a").is_some_and(|o| o.role == "Secondary")
    });
    w.assert_clean(&format!("{fp} (migration): after the cleanup"));
    // The migration can be retried and completes.
    let (o, _) = w.plugin_pumped("a", "activate", json!({"volname": VOL, "migrated_from": "b"}), &[]);
    assert_eq!(o.code, 0, "retried migration: {}", o.stdout);
    w.rounds_until("both Primary during the migration", 5, || {
        ["a", "b"].iter().all(|n| published(&w, n).is_some_and(|o| o.role == "Primary"))
    });
    // The source hands over: the window closes, a stays the only Primary.
    let (o, _) = w.plugin("b", "deactivate", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert!(w.store.volume(&w.sid, VOL).unwrap().unwrap().dual_primary.is_none());
    w.rounds_until("a Primary alone", 5, || {
        published(&w, "a").is_some_and(|o| o.role == "Primary") && published(&w, "b").is_some_and(|o| o.role == "Secondary")
    });
    w.assert_clean("after the migration");
}

/// b's agent dies at `fp` while a's alloc waits for it; the restarted agent completes the alloc.
fn agent_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    let ch = w.spawn_plugin("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    let t = std::time::Instant::now();
    while w.store.volume(&w.sid, VOL).unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "alloc wrote no document");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = w.agent_once("b", &fp_env(fp));
    assert_crashed(&o, fp);
    assert_consistent_after_crash(&w, fp);
    let o = w.pump(ch);
    assert_eq!(o.code, 0, "{fp}: alloc after b's agent restarted: {} {}", o.stdout, o.stderr);
    w.round();
    for n in ["a", "b"] {
        let p = published(&w, n).unwrap_or_else(|| panic!("{fp}: {n} publishes nothing\n{}", w.dump()));
        assert_eq!((p.disk.as_str(), p.error), ("UpToDate", None), "{fp}: {n}");
    }
    w.assert_clean(&format!("{fp}: after the alloc"));
    let (o, _) = w.plugin_pumped("a", "free", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    w.rounds_until("volume gone", 10, || w.store.all_volumes().unwrap().is_empty());
    w.assert_clean(&format!("{fp}: after free"));
}

const SNAP: &str = "s1";

fn write_at0(path: &std::path::Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_at0(path: &std::path::Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0; n];
    std::fs::File::open(path).unwrap().read_exact(&mut b).unwrap();
    b
}

fn image(w: &World, n: &str) -> std::path::PathBuf {
    w.node_dir(n).join(format!("{}.img", w.res(VOL)))
}

/// Snapshot copies (`<res>.<snap>.snap`, and temp copies) in node `n`'s image directory.
fn snaps(w: &World, n: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(w.node_dir(n))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.contains(".snap"))
        .collect();
    v.sort();
    v
}

/// Every replica node holds exactly the snapshots the document lists, none on a loop
/// device (check does not look at snapshots), and `check` is clean.
fn assert_snaps_match_doc(w: &World, when: &str) {
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    assert!(d.snapshots.iter().all(|s| s.rollback.is_none()), "{when}: a rollback mark is left");
    for n in ["a", "b"] {
        let mut want: Vec<String> = d.snapshots.iter().map(|s| format!("{}.{}.snap", w.res(VOL), s.name)).collect();
        want.sort();
        assert_eq!(snaps(w, n), want, "{when}: snapshots on {n}\n{}", w.dump());
        for f in &want {
            assert!(lab::loops(&w.node_dir(n).join(f)).is_empty(), "{when}: {n}/{f} left on a loop device");
        }
    }
    w.assert_clean(when);
}

fn snapshot_ok(w: &World) {
    let (o, _) = w.plugin_pumped("a", "snapshot", json!({"volname": VOL, "snap": SNAP}), &[]);
    assert_eq!(o.code, 0, "snapshot: {} {}", o.stdout, o.stderr);
}

/// Delete the snapshot and the volume; nothing may be left.
fn finish(w: &World, fp: &str) {
    let (o, _) = w.plugin_pumped("a", "snapshot_delete", json!({"volname": VOL, "snap": SNAP}), &[]);
    assert_eq!(o.code, 0, "{fp}: snapshot_delete: {}", o.stderr);
    w.round();
    assert_snaps_match_doc(w, &format!("{fp}: after snapshot_delete"));
    let (o, _) = w.plugin_pumped("a", "free", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{fp}: free: {}", o.stderr);
    w.rounds_until("volume gone", 10, || w.store.all_volumes().unwrap().is_empty());
    w.assert_clean(&format!("{fp}: after free"));
    for n in ["a", "b"] {
        assert!(snaps(w, n).is_empty() && w.images(n).is_empty(), "{fp}: {n} keeps {:?} {:?}", snaps(w, n), w.images(n));
    }
}

/// The snapshot call dies at `fp`; PVE's retry (or the agents) complete it: the snapshot
/// exists on both replicas and in the document, or nowhere.
fn snapshot_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    alloc(&w);
    let ch = w.spawn_plugin("a", "snapshot", json!({"volname": VOL, "snap": SNAP}), &fp_env(fp));
    assert_crashed(&w.pump(ch), fp);
    assert_consistent_after_crash(&w, fp);
    // The retry: done now, or already recorded by the dead call (conflict).
    let (o, v) = w.plugin_pumped("a", "snapshot", json!({"volname": VOL, "snap": SNAP}), &[]);
    assert!(o.code == 0 || v["error"]["kind"] == "conflict", "{fp}: retried snapshot: {} {}", o.stdout, o.stderr);
    w.rounds_until("both replicas report the snapshot", 10, || {
        ["a", "b"].iter().all(|n| published(&w, n).is_some_and(|o| o.snapshots == vec![SNAP.to_string()]))
    });
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    assert_eq!(d.snapshots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec![SNAP], "{fp}");
    assert_snaps_match_doc(&w, &format!("{fp}: after the retry"));
    finish(&w, fp);
}

/// snapshot_delete dies at `fp`; the agents (and PVE's retry) finish it.
fn snapshot_delete_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    alloc(&w);
    snapshot_ok(&w);
    // The snapshot call returns once the peers report their copy; a's agent lists the
    // snapshot only from its next pass. An agent deletes only copies it has listed, so
    // without this wait a's copy stayed until the retry (seen under load).
    w.rounds_until("both replicas report the snapshot", 10, || {
        ["a", "b"].iter().all(|n| published(&w, n).is_some_and(|o| o.snapshots == vec![SNAP.to_string()]))
    });
    let ch = w.spawn_plugin("a", "snapshot_delete", json!({"volname": VOL, "snap": SNAP}), &fp_env(fp));
    assert_crashed(&w.pump(ch), fp);
    assert_consistent_after_crash(&w, fp);
    assert!(w.store.volume(&w.sid, VOL).unwrap().unwrap().snapshots.is_empty(), "{fp}: the document still lists the snapshot");
    w.rounds_until("no replica reports the snapshot", 10, || {
        ["a", "b"].iter().all(|n| published(&w, n).is_some_and(|o| o.snapshots.is_empty()))
    });
    assert_snaps_match_doc(&w, &format!("{fp}: after the agents"));
    let (o, _) = w.plugin_pumped("a", "snapshot_delete", json!({"volname": VOL, "snap": SNAP}), &[]);
    assert_eq!(o.code, 0, "{fp}: retried snapshot_delete: {}", o.stderr);
    finish(&w, fp);
}

/// A volume with snapshot s1 of "old-data" whose replicas now hold "new-data".
fn rollback_world() -> World {
    let w = World::new(&["a", "b"]);
    alloc(&w);
    for n in ["a", "b"] {
        write_at0(&image(&w, n), b"old-data");
    }
    snapshot_ok(&w);
    for n in ["a", "b"] {
        write_at0(&image(&w, n), b"new-data");
    }
    w
}

/// After a rollback was retried: both replicas back, UpToDate, holding the snapshot's data.
fn assert_rolled_back(w: &World, fp: &str) {
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    w.rounds_until("both replicas UpToDate after the rollback", 20, || {
        ["a", "b"].iter().all(|n| published(w, n).is_some_and(|o| o.disk == "UpToDate" && o.generation >= d.generation && o.error.is_none()))
    });
    for n in ["a", "b"] {
        assert_eq!(read_at0(&image(w, n), 8), b"old-data", "{fp}: data on {n} after the rollback");
    }
    w.rounds_until("both replicas report the snapshot", 10, || {
        ["a", "b"].iter().all(|n| published(w, n).is_some_and(|o| o.snapshots == vec![SNAP.to_string()]))
    });
    assert_snaps_match_doc(w, &format!("{fp}: after the rollback"));
}

/// snapshot_rollback dies at `fp`; the mark stays (the other replicas stay discarded)
/// until the rollback is repeated on the same node, which completes it.
fn rollback_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = rollback_world();
    let ch = w.spawn_plugin("a", "snapshot_rollback", json!({"volname": VOL, "snap": SNAP}), &fp_env(fp));
    // Only b's agent runs (it discards its replica): no pass on a comes between the crash
    // and the check, whatever the scheduler does (`after-local-rollback` leaves a down).
    assert_crashed(&w.pump_on(ch, &["b"]), fp);
    assert_consistent_after_crash(&w, fp);
    // And once a's agent has run (it brings a's replica back up meanwhile).
    let o = w.agent_once("a", &[]);
    assert_eq!(o.code, 0, "{fp}: agent on a after the crash: {}", o.stderr);
    assert_consistent_after_crash(&w, &format!("{fp} (after a's agent pass)"));
    // Any other rollback is refused meanwhile, naming the node to repeat it on.
    let (o, v) = w.plugin("b", "snapshot_rollback", json!({"volname": VOL, "snap": SNAP}), &[]);
    assert!(o.code != 0 && v["error"]["kind"] == "refused", "{fp}: {}", o.stdout);
    let (o, _) = w.plugin_pumped("a", "snapshot_rollback", json!({"volname": VOL, "snap": SNAP}), &[]);
    assert_eq!(o.code, 0, "{fp}: repeated rollback: {} {}", o.stdout, o.stderr);
    assert_rolled_back(&w, fp);
    finish(&w, fp);
}

/// b's agent dies right after taking its copy while a's snapshot call waits for it.
fn agent_snapshot_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    alloc(&w);
    w.round();
    let ch = w.spawn_plugin("a", "snapshot", json!({"volname": VOL, "snap": SNAP}), &[]);
    wait_doc(&w, "the snapshot recorded", |d| !d.snapshots.is_empty());
    let o = w.agent_once("b", &fp_env(fp));
    assert_crashed(&o, fp);
    assert_consistent_after_crash(&w, fp);
    let o = w.pump(ch);
    assert_eq!(o.code, 0, "{fp}: snapshot after b's agent restarted: {} {}", o.stdout, o.stderr);
    w.round();
    assert_snaps_match_doc(&w, &format!("{fp}: after the snapshot"));
    finish(&w, fp);
}

/// b's agent dies right after discarding its replica for a's rollback; the restarted agent
/// reports it discarded and the rollback completes.
fn agent_discard_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = rollback_world();
    w.round();
    let ch = w.spawn_plugin("a", "snapshot_rollback", json!({"volname": VOL, "snap": SNAP}), &[]);
    wait_doc(&w, "the rollback mark", |d| d.snapshots.iter().any(|s| s.rollback.is_some()));
    let o = w.agent_once("b", &fp_env(fp));
    assert_crashed(&o, fp);
    assert_consistent_after_crash(&w, fp);
    let o = w.pump(ch);
    assert_eq!(o.code, 0, "{fp}: rollback after b's agent restarted: {} {}", o.stdout, o.stderr);
    assert_rolled_back(&w, fp);
    finish(&w, fp);
}

fn wait_doc(w: &World, what: &str, f: impl Fn(&drbdpool::store::docs::VolumeDoc) -> bool) {
    let t = std::time::Instant::now();
    while !w.store.volume(&w.sid, VOL).unwrap().is_some_and(|d| f(&d)) {
        assert!(t.elapsed() < Duration::from_secs(20), "not seen within 20 s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `drbdpool plugin alloc` does inside PVE's storage lock (protocol::Creation::Background):
/// it records the volume and returns while b's agent has not even looked at it; the replicas
/// are made by the detached `finish-create`, and an activation right after waits for them.
#[test]
fn background_alloc_returns_at_once_and_activation_waits_for_the_replicas() {
    if !can_run() {
        return;
    }
    let mut w = World::new(&["a", "b"]);
    w.unset_env("DRBDPOOL_CREATE_INLINE");
    let t = std::time::Instant::now();
    let (o, v) = w.plugin("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    let took = t.elapsed();
    assert_eq!((o.code, &v["result"]["volname"]), (0, &json!(VOL)), "{} {}", o.stdout, o.stderr);
    // No agent has run: an inline alloc would still be waiting for b (10 s peer timeout here).
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    assert_eq!(d.state, VolumeState::Creating, "the alloc returned before b has a replica");
    assert!(published(&w, "b").is_none(), "b's agent never ran");
    assert!(took < Duration::from_secs(5), "alloc took {took:?}");
    // The guest is started at once: activation waits (agents running) until the volume is ready.
    let (o, v) = w.plugin_pumped("a", "activate", json!({"volname": VOL}), &[]);
    assert_eq!((o.code, &v["result"]["path"]), (0, &json!("/dev/drbd1000")), "{} {}\n{}", o.stdout, o.stderr, w.dump());
    assert_eq!(w.store.volume(&w.sid, VOL).unwrap().unwrap().state, VolumeState::Ready);
    w.rounds_until("a Primary, b Secondary UpToDate", 5, || {
        published(&w, "a").is_some_and(|o| o.role == "Primary")
            && published(&w, "b").is_some_and(|o| o.role == "Secondary" && o.disk == "UpToDate")
    });
    let log = std::fs::read_to_string(w.base().join("create.log")).unwrap_or_default();
    assert!(!log.contains("ERROR"), "the background creation logged an error: {log}");
    w.assert_clean("after the background alloc and activation");
    let (o, _) = w.plugin("a", "deactivate", json!({"volname": VOL}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// The detached creation dies half-way (its failpoint): the alloc had already answered, so
/// nobody rolls it back at once; the agents do once the create expiry has passed, and
/// nothing is left behind. An activation meanwhile is refused, naming the creation log.
#[test]
fn a_background_creation_that_dies_is_rolled_back_by_the_agents() {
    if !can_run() {
        return;
    }
    let fp = "alloc.after-local-replica";
    let mut w = World::new(&["a", "b"]);
    w.unset_env("DRBDPOOL_CREATE_INLINE");
    let (o, v) = w.plugin_pumped("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &fp_env(fp));
    assert_eq!((o.code, &v["result"]["volname"]), (0, &json!(VOL)), "{} {}", o.stdout, o.stderr);
    let log = w.base().join("create.log");
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains(&format!("failpoint {fp} hit")) {
        assert!(t.elapsed() < Duration::from_secs(20), "the background creation did not reach {fp}: {:?}", std::fs::read_to_string(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    w.set_env("DRBDPOOL_PEER_TIMEOUT_SECS", "1");
    let (o, _) = w.plugin("a", "activate", json!({"volname": VOL}), &[]);
    assert_ne!(o.code, 0);
    assert!(o.stdout.contains("still being created") && o.stdout.contains("create.log"), "{}", o.stdout);
    w.rounds_until("the dead creation's volume rolled back", 300, || {
        std::thread::sleep(Duration::from_millis(100));
        w.store.all_volumes().unwrap().is_empty()
    });
    w.round();
    w.assert_clean_but("after the roll back of a dead background creation", &["stale-lock"]);
}

/// `volume move` (issue 16) stopped at `fp`, in the command or in the agents that carry it
/// out: the agents finish the move, the old replica goes only after the new one is UpToDate,
/// and nothing is left behind.
fn move_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b", "c"]);
    alloc(&w);
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    let to = ["b", "c"].into_iter().find(|n| d.replica(n).is_none()).unwrap();
    let stays = ["b", "c"].into_iter().find(|n| *n != to).unwrap();
    w.rounds_until("both replicas UpToDate", 10, || d.replicas.iter().all(|r| published(&w, &r.node).is_some_and(|o| o.disk == "UpToDate")));
    let id = format!("{}:{VOL}", w.sid);
    let args = ["volume", "move", id.as_str(), "--from", "a", "--to", to];
    if fp.starts_with("relocate.") {
        assert_crashed(&w.run(stays, &args, &fp_env(fp)), fp);
    } else {
        let o = w.run(stays, &args, &[]);
        assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
        // The node whose agent passes the failpoint: the target finishes, the source releases.
        let at = if fp == "move.after-finish" { to } else { "a" };
        let mut hit = false;
        for _ in 0..20 {
            let o = w.agent_once(at, &fp_env(fp));
            if o.code == EXIT_CODE {
                assert_crashed(&o, fp);
                hit = true;
                break;
            }
            assert_eq!(o.code, 0, "{}", o.stderr);
            for n in ["a", "b", "c"].into_iter().filter(|n| *n != at) {
                assert_eq!(w.agent_once(n, &[]).code, 0);
            }
        }
        assert!(hit, "{fp} never hit\n{}", w.dump());
    }
    // The old replica is kept as long as the new one is not UpToDate.
    w.rounds_until("the move is over", 20, || {
        let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
        assert!(
            d.replica("a").is_some() || published(&w, to).is_some_and(|o| o.disk == "UpToDate"),
            "{fp}: a dropped before {to} was UpToDate\n{}",
            w.dump()
        );
        d.moving.is_none() && d.released.is_empty() && d.replica("a").is_none()
    });
    w.round();
    for n in [stays, to] {
        let p = published(&w, n).unwrap_or_else(|| panic!("{fp}: {n} publishes nothing\n{}", w.dump()));
        assert_eq!((p.disk.as_str(), p.error), ("UpToDate", None), "{fp}: {n}");
    }
    assert!(published(&w, "a").is_none(), "{fp}: a still publishes the volume");
    w.assert_clean(&format!("{fp}: after the move"));
    // Running it again: a holds no replica any more, refused, nothing changes.
    let o = w.run(stays, &args, &[]);
    assert_eq!(o.code, 4, "{} {}", o.stdout, o.stderr);
    assert!(o.stderr.contains("no replica on a"), "{}", o.stderr);
}

/// `node replace` (issue 16) stopped right after it moved a volume in the store: the agents
/// sync the new node all the same, and running it again finds nothing left to do.
fn replace_case(fp: &str) {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b", "c"]);
    alloc(&w);
    let d = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    let dead = ["b", "c"].into_iter().find(|n| d.replica(n).is_some()).unwrap();
    let new = ["b", "c"].into_iter().find(|n| *n != dead).unwrap();
    w.rounds_until("both replicas UpToDate", 10, || d.replicas.iter().all(|r| published(&w, &r.node).is_some_and(|o| o.disk == "UpToDate")));
    // `dead` dies: its DRBD goes down, its agent stops (its last report an hour old).
    drbdpool::drbd::Replication::down(&drbdpool::drbd::sim::SimDrbd::new(w.base().join("sim"), dead).unwrap(), &w.res(VOL)).unwrap();
    let mut st = w.store.node_state(dead).unwrap().unwrap();
    st.updated -= 3600;
    w.store.put_node_state(&st).unwrap();
    let gone = [("DRBDPOOL_NODE_GONE_SECS", "0")];
    let live = |w: &World| {
        for n in ["a", new] {
            assert_eq!(w.agent_once(n, &[]).code, 0);
        }
    };
    live(&w);
    let env: Vec<(&str, &str)> = gone.iter().copied().chain(fp_env(fp)).collect();
    assert_crashed(&w.run("a", &["node", "replace", dead, new], &env), fp);
    let now = w.store.volume(&w.sid, VOL).unwrap().unwrap();
    assert!(now.replica(new).is_some() && now.replica(dead).is_none(), "{fp}: the move is in the store: {now:?}");
    for _ in 0..10 {
        live(&w);
        if published(&w, new).is_some_and(|o| o.disk == "UpToDate") {
            break;
        }
    }
    for n in ["a", new] {
        let p = published(&w, n).unwrap_or_else(|| panic!("{fp}: {n} publishes nothing\n{}", w.dump()));
        assert_eq!((p.disk.as_str(), p.error), ("UpToDate", None), "{fp}: {n}\n{}", w.dump());
    }
    let o = w.run("a", &["node", "replace", dead, new], &gone);
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("nothing to do"), "{}", o.stdout);
    for n in ["a", new] {
        let (code, f) = w.check(n);
        assert!(code == 0 && f.is_empty(), "{fp}: check on {n}: {f:?}");
    }
}

macro_rules! cases {
    ($($f:ident => $case:ident($fp:literal);)*) => {
        $(#[test] fn $f() { $case($fp) })*
        /// Every failpoint compiled in has a case here.
        #[test]
        fn every_failpoint_has_a_case() {
            let mut have = vec![$($fp),*];
            have.sort();
            let mut all = drbdpool::failpoint::ALL.to_vec();
            all.sort();
            assert_eq!(have, all);
        }
    };
}

cases! {
    alloc_after_lock => alloc_case("alloc.after-lock");
    alloc_after_doc => alloc_case("alloc.after-doc");
    alloc_after_local_replica => alloc_case("alloc.after-local-replica");
    alloc_after_peers_ready => alloc_case("alloc.after-peers-ready");
    alloc_after_skip_sync => alloc_case("alloc.after-skip-sync");
    alloc_before_ready => alloc_case("alloc.before-ready");
    free_after_deleting => free_case("free.after-deleting");
    free_after_local_remove => free_case("free.after-local-remove");
    free_before_doc_remove => free_case("free.before-doc-remove");
    resize_after_doc => resize_case("resize.after-doc");
    resize_after_local_grow => resize_case("resize.after-local-grow");
    resize_before_drbd_grow => resize_case("resize.before-drbd-grow");
    activate_before_promote => activate_case("activate.before-promote");
    activate_after_promote => activate_case("activate.after-promote");
    agent_after_backing => agent_case("agent.after-backing");
    agent_after_resource_file => agent_case("agent.after-resource-file");
    agent_after_apply => agent_case("agent.after-apply");
    agent_before_publish => agent_case("agent.before-publish");
    replace_after_volume => replace_case("replace.after-volume");
    relocate_after_volume => move_case("relocate.after-volume");
    move_after_finish => move_case("move.after-finish");
    move_after_release_remove => move_case("move.after-release-remove");
    snapshot_after_local => snapshot_case("snapshot.after-local");
    snapshot_after_doc => snapshot_case("snapshot.after-doc");
    snapshot_after_peers => snapshot_case("snapshot.after-peers");
    snapshot_delete_after_doc => snapshot_delete_case("snapshot-delete.after-doc");
    snapshot_delete_after_local_remove => snapshot_delete_case("snapshot-delete.after-local-remove");
    rollback_after_mark => rollback_case("rollback.after-mark");
    rollback_after_discarded => rollback_case("rollback.after-discarded");
    rollback_after_local_rollback => rollback_case("rollback.after-local-rollback");
    rollback_before_clear => rollback_case("rollback.before-clear");
    agent_after_snapshot => agent_snapshot_case("agent.after-snapshot");
    agent_after_discard => agent_discard_case("agent.after-discard");
}
