//! Every failpoint (src/failpoint.rs): the real binary dies there (exit 86, as
//! if killed), `drbdpool check` finds the store consistent (at most a lock of
//! the dead process, which the next call breaks), the next call or agent passes
//! complete or roll back the operation, and afterwards `check` is clean on every
//! node: no replica, image, loop device, minor or port leaked or handed out twice.
//! Two simulated nodes (a, b) with the file backend on real loop devices.

#[path = "faultlab/mod.rs"]
mod lab;

use std::time::Duration;

use drbdpool::agent::drbd_backing_kib;
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
    // Agents roll the dead alloc back once the create expiry (4 s here) has passed.
    w.rounds_until("the dead alloc's volume rolled back", 80, || {
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
    w.assert_clean(&format!("{fp}: after the agents finished the free"));
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
}
