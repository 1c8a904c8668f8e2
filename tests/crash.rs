//! A helper process killed in the middle of alloc (after its document is written,
//! before the replicas are ready), or while it holds the alloc lock, leaves a
//! store that the next call completes or rolls back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use drbdpool::store::docs::VolumeState;
use drbdpool::store::lock::ALLOC_LOCK;
use drbdpool::store::Store;
use serde_json::json;

const CHILD_ENV: &str = "DRBDPOOL_TEST_CRASH_CHILD";

/// Child: alloc on pve1 while no agent runs on pve2, so it waits (and gets killed there).
#[test]
fn child_crash_entry() {
    let Ok(root) = std::env::var(CHILD_ENV) else { return };
    let s = Store::open(root).unwrap();
    if std::env::var("CHILD_MODE").as_deref() == Ok("hold-lock") {
        let _g = s.lock(ALLOC_LOCK).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 60_000);
    let _ = call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024}));
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn killed_between_doc_and_ready() {
    let (d, s) = store_with_nodes(&["pve1", "pve2"]);
    let mut kid = spawn_self("child_crash_entry", &[(CHILD_ENV, d.path().display().to_string())]);
    // Kill once the reservation is written and the local replica made.
    wait_for("the creating document", || {
        s.volume("dp", "vm-100-disk-0").ok().flatten().is_some_and(|v| v.state == VolumeState::Creating)
            && s.node_state("pve1").ok().flatten().is_some_and(|st| st.volumes.contains_key("dp.vm-100-disk-0"))
    });
    kid.kill().unwrap();
    kid.wait().unwrap();

    // Consistent: a readable reservation, no lock held, no temp files.
    let vols = assert_store_consistent(&s);
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].state, VolumeState::Creating);
    assert!(!s.lock_dir().join(ALLOC_LOCK).exists(), "alloc must not hold the lock while waiting");

    // Agents come up: the next alloc works at once and does not reuse the reservation.
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 5000);
    let r = call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024}));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.result.unwrap()["volname"], "vm-100-disk-1");
    assert_eq!(s.volume("dp", "vm-100-disk-1").unwrap().unwrap().minor, 1001);
    // PVE (or the admin) frees the leftover: it is rolled back completely.
    let r = call(&c, "free", "dp", json!({"volname": "vm-100-disk-0"}));
    assert!(r.ok, "{:?}", r.error);
    assert!(s.volume("dp", "vm-100-disk-0").unwrap().is_none());
    assert_eq!(assert_store_consistent(&s).len(), 1);
}

#[test]
fn killed_while_holding_the_lock() {
    let (d, s) = store_with_nodes(&["pve1", "pve2"]);
    let mut kid = spawn_self("child_crash_entry", &[(CHILD_ENV, d.path().display().to_string()), ("CHILD_MODE", "hold-lock".into())]);
    wait_for("the child's lock", || s.lock_dir().join(ALLOC_LOCK).exists());
    kid.kill().unwrap();
    kid.wait().unwrap();
    // While the dead holder's lock is fresh: a clear timeout.
    let e = s.lock_timeout(ALLOC_LOCK, Duration::from_millis(200)).unwrap_err();
    assert_eq!(e.kind(), "timeout");
    // Once it is older than the lifetime it is broken (lifetime shortened via the env knob).
    std::env::set_var("DRBDPOOL_LOCK_LIFETIME_SECS", "1");
    let g = s.lock_timeout(ALLOC_LOCK, Duration::from_secs(10)).unwrap();
    drop(g);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 5000);
    assert!(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})).ok);
}
