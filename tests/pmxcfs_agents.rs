//! The multi-agent and concurrency tests (tests/multi_agent.rs, tests/concurrency.rs, tests/faults.rs
//! run them on a plain directory) on the tier-4 cluster of tests/pvecluster: real pmxcfs replicating the
//! store between two nodes with corosync quorum and a QDevice. Each node runs the real `drbdpool agent`
//! inside its own namespaces (simulated DRBD, file backend on loop devices in the node's own image
//! directory); plugin calls come from both nodes at once.

#[path = "pvecluster/mod.rs"]
mod pvecluster;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pvecluster::{host_name, ip, secs, wait_until, Cluster, Opts};
use serde_json::json;

#[test]
fn child() {
    pvecluster::child_main();
}

/// Every volume in the store has both replicas ready, UpToDate and connected, at the doc's generation
/// and size, as both agents publish them.
fn all_settled(c: &Cluster) -> bool {
    let s = c.store(2);
    let Ok(vols) = s.all_volumes() else { return false };
    vols.iter().all(|v| {
        v.state == drbdpool::store::docs::VolumeState::Ready
            && v.replicas.iter().all(|r| {
                s.node_state(&r.node).ok().flatten().and_then(|st| st.volumes.get(&v.resource).cloned()).is_some_and(|o| {
                    o.ready && o.disk == "UpToDate" && o.generation == v.generation && o.size_kib == v.size_kib && o.error.is_none()
                        && o.peers.iter().all(|p| p.connection == "Connected" && p.disk == "UpToDate")
                })
            })
    })
}

fn images(c: &Cluster, n: usize) -> BTreeSet<String> {
    std::fs::read_dir(c.host_dir(n).join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".img") && !f.starts_with('.'))
        .collect()
}

#[test]
fn agents_on_both_nodes_reconcile_concurrent_allocs_from_both_nodes() {
    if std::env::var_os("DRBDPOOL_TEST_CHILD").is_some() {
        return;
    }
    let Some(c) = Cluster::start(Opts::default()) else { return };
    for n in 1..=2 {
        let o = c.drbdpool(n, &["node", "add", host_name(n), "--address", &ip(n)], &[]);
        assert!(o.ok(), "{o}");
    }
    for n in 1..=2 {
        c.spawn_agent(n);
    }
    // Six allocs at once, three from each node, all for vmid 100: names, minors and ports are contested.
    let t = Instant::now();
    let outs: Vec<(usize, pvecluster::Out, serde_json::Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let c = &c;
                sc.spawn(move || {
                    let n = i % 2 + 1;
                    let (o, v) = c.plugin(n, "alloc", "dp", json!({"vmid": 100, "size_kib": 4096}));
                    (n, o, v)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("6 concurrent allocs from both nodes on pmxcfs: {}", secs(t.elapsed()));
    for (n, o, v) in &outs {
        assert!(v["ok"] == true, "alloc on {}: {o}\n{}", host_name(*n), c.logs());
    }
    let names: BTreeSet<String> = outs.iter().map(|(_, _, v)| v["result"]["volname"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 6, "a name was handed out twice: {names:?}");
    let vols = c.store(1).all_volumes().unwrap();
    assert_eq!(vols.len(), 6);
    let minors: BTreeSet<u32> = vols.iter().map(|v| v.minor).collect();
    let ports: BTreeSet<u16> = vols.iter().map(|v| v.port).collect();
    assert_eq!((minors.len(), ports.len()), (6, 6), "duplicate minor or port: {minors:?} {ports:?}");
    let t = wait_until("every replica UpToDate on both nodes", Duration::from_secs(60), || all_settled(&c));
    eprintln!("agents settled {} after the allocs", secs(t));
    let want: BTreeSet<String> = vols.iter().map(|v| format!("{}.img", v.resource)).collect();
    for n in 1..=2 {
        assert_eq!(images(&c, n), want, "images on {}", host_name(n));
    }

    // Grow one volume from pve2; both agents grow their replica.
    let (o, v) = c.plugin(2, "resize", "dp", json!({"volname": "vm-100-disk-0", "size_bytes": 8u64 << 20}));
    assert!(v["ok"] == true, "resize: {o}");
    wait_until("vm-100-disk-0 grown on both nodes", Duration::from_secs(60), || {
        all_settled(&c) && c.store(1).volume("dp", "vm-100-disk-0").ok().flatten().is_some_and(|d| d.size_kib == 8192)
    });

    // Free every volume from the node that did not allocate it, two nodes at once.
    std::thread::scope(|sc| {
        for (n, _, v) in &outs {
            let other = 3 - n;
            let name = v["result"]["volname"].as_str().unwrap().to_string();
            let c = &c;
            sc.spawn(move || {
                let (o, v) = c.plugin(other, "free", "dp", json!({"volname": name}));
                assert!(v["ok"] == true, "free {name} on {}: {o}", host_name(other));
            });
        }
    });
    wait_until("every document and image gone", Duration::from_secs(60), || {
        c.store(1).all_volumes().is_ok_and(|v| v.is_empty()) && images(&c, 1).is_empty() && images(&c, 2).is_empty()
    });
    for n in 1..=2 {
        let o = c.drbdpool(n, &["check"], &[]);
        assert!(o.ok(), "check on {}: {o}", host_name(n));
    }
}
