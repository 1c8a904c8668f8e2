//! Many allocations at once in one store: threads in one process and several
//! OS processes (this test binary re-executed). No duplicate name, minor, port;
//! nothing lost.

mod common;

use common::*;
use drbdpool::store::docs::VolumeState;
use drbdpool::store::Store;
use serde_json::json;

const CHILD_ENV: &str = "DRBDPOOL_TEST_ALLOC_CHILD";

fn alloc_many(s: &Store, node: &str, vmid: u32, n: usize) -> Vec<String> {
    let fake = FakeNode::quiet(node, s);
    let c = ctx(s, &fake, 30_000);
    (0..n)
        .map(|_| {
            let r = call(&c, "alloc", "dp", json!({"vmid": vmid, "size_kib": 1024}));
            assert!(r.ok, "{:?}", r.error);
            r.result.unwrap()["volname"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn threads_allocate_without_duplicates() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let _a = FakeAgents::spawn(&s, &["pve2", "pve3"]);
    let hs: Vec<_> = (0..6)
        .map(|i| {
            let s = s.clone();
            // Half the threads fight over the same vmid's disk names.
            std::thread::spawn(move || alloc_many(&s, "pve1", if i % 2 == 0 { 100 } else { 200 + i }, 8))
        })
        .collect();
    let mut names: Vec<String> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    names.sort();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "a name was handed out twice");
    let vols = assert_store_consistent(&s);
    assert_eq!(vols.len(), 48);
    assert!(vols.iter().all(|v| v.state == VolumeState::Ready));
    assert_eq!(vols.iter().filter(|v| v.vmid == 100).count(), 24);
    assert!(!s.lock_dir().join("drbdpool-alloc").exists(), "lock left behind");
}

/// Entry of a child process (does nothing in a normal test run).
#[test]
fn child_alloc_entry() {
    let Ok(root) = std::env::var(CHILD_ENV) else { return };
    let node = std::env::var("CHILD_NODE").unwrap();
    let s = Store::open(root).unwrap();
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let (s, node) = (s.clone(), node.clone());
            std::thread::spawn(move || alloc_many(&s, &node, 100, 6))
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn processes_allocate_without_duplicates() {
    let (d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    // Every node's agent is faked here; the children act as the helper on pve1..pve3.
    let _a = FakeAgents::spawn(&s, &["pve1", "pve2", "pve3"]);
    let kids: Vec<_> = (0..4)
        .map(|i| spawn_self("child_alloc_entry", &[(CHILD_ENV, d.path().display().to_string()), ("CHILD_NODE", format!("pve{}", i % 3 + 1))]))
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success(), "a child process failed");
    }
    let vols = assert_store_consistent(&s);
    assert_eq!(vols.len(), 4 * 2 * 6, "volumes lost");
    assert!(vols.iter().all(|v| v.state == VolumeState::Ready));
    let mut disks: Vec<String> = vols.iter().map(|v| v.volname.clone()).collect();
    disks.sort_by_key(|n| n.rsplit('-').next().unwrap().parse::<u32>().unwrap());
    let want: Vec<String> = (0..48).map(|i| format!("vm-100-disk-{i}")).collect();
    assert_eq!(disks, want, "disk numbers must be dense and unique");
    assert!(!s.lock_dir().join("drbdpool-alloc").exists(), "lock left behind");
}
