//! Handler tests: the protocol methods against a temp store, a fake local node
//! and fake peer agents.

mod common;

use common::*;
use drbdpool::store::docs::VolumeState;
use serde_json::json;

fn ok(r: drbdpool::protocol::Reply) -> serde_json::Value {
    assert!(r.ok, "expected ok, got {:?}", r.error);
    r.result.unwrap()
}
fn err(r: drbdpool::protocol::Reply) -> (String, String) {
    assert!(!r.ok, "expected an error, got {:?}", r.result);
    let e = r.error.unwrap();
    (e.kind, e.message)
}

#[test]
fn alloc_creates_waits_and_marks_ready() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let _agents = FakeAgents::spawn(&s, &["pve2", "pve3"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 5000);
    let r = ok(call(&c, "alloc", "dp", json!({"vmid": 100, "fmt": "raw", "size_kib": 1048576})));
    assert_eq!(r, json!({"volname": "vm-100-disk-0"}));
    let d = s.volume("dp", "vm-100-disk-0").unwrap().unwrap();
    assert_eq!((d.state, d.minor, d.port, d.size_kib), (VolumeState::Ready, 1000, 7000, 1048576));
    assert_eq!(d.replicas[0].node, "pve1", "local node first");
    assert_eq!(d.replicas.len(), 2);
    assert_eq!(d.resource, "dp.vm-100-disk-0");
    assert_eq!(d.secret.len(), 32);
    assert_eq!(n.calls(), ["ensure_replica dp.vm-100-disk-0", "skip_initial_sync dp.vm-100-disk-0"]);
    // Next one: next name, next minor, next port; strings for numbers (Perl) work too.
    let r = ok(call(&c, "alloc", "dp", json!({"vmid": "100", "size_kib": "4096"})));
    assert_eq!(r["volname"], "vm-100-disk-1");
    let d2 = s.volume("dp", "vm-100-disk-1").unwrap().unwrap();
    assert_eq!((d2.minor, d2.port), (1001, 7001));
    assert_ne!(d.secret, d2.secret);
    // Explicit names.
    assert_eq!(ok(call(&c, "alloc", "dp", json!({"vmid": 100, "name": "vm-100-cloudinit", "size_kib": 4096})))["volname"], "vm-100-cloudinit");
    let (k, m) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "name": "vm-100-cloudinit", "size_kib": 4096})));
    assert_eq!(k, "conflict", "{m}");
}

#[test]
fn alloc_bad_input_changes_nothing() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 100);
    for (args, want) in [
        (json!({"vmid": 100, "name": "vm-101-disk-0", "size_kib": 1}), "vmid 101"),
        (json!({"vmid": 100, "name": "vm-100-a b", "size_kib": 1}), "contains ' '"),
        (json!({"vmid": 100, "name": "../../etc/passwd", "size_kib": 1}), "path character"),
        (json!({"vmid": 100, "size_kib": 0}), "size 0"),
        (json!({"vmid": 100, "size_kib": "1G"}), "not a number"),
        (json!({"vmid": 0, "size_kib": 1}), "out of range"),
        (json!({"vmid": 100, "fmt": "qcow2", "size_kib": 1}), "raw"),
        (json!({"vmid": 100}), "size_kib"),
    ] {
        let (k, m) = err(call(&c, "alloc", "dp", args.clone()));
        assert_eq!(k, "invalid-input", "{args}: {m}");
        assert!(m.contains(want), "{args}: {m}");
    }
    let (k, _) = err(call(&c, "alloc", "Bad_Store", json!({"vmid": 100, "size_kib": 1})));
    assert_eq!(k, "invalid-input");
    assert!(s.all_volumes().unwrap().is_empty());
    assert!(n.calls().is_empty());
    // Request-level errors.
    let r = drbdpool::protocol::handle(&c, "alloc", b"{\"version\": 2, \"storeid\": \"dp\"}");
    assert!(err(r).1.contains("newer"));
    let r = drbdpool::protocol::handle(&c, "alloc", b"{\"version\": 1, \"storeid\"");
    assert!(err(r).1.contains("not valid JSON"));
    let r = drbdpool::protocol::handle(&c, "frobnicate", br#"{"version": 1, "storeid": "dp"}"#);
    assert!(err(r).1.contains("unknown method"));
}

#[test]
fn alloc_too_few_nodes_is_refused() {
    let (_d, s) = store_with_nodes(&["pve1"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 100);
    let (k, m) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1})));
    assert_eq!(k, "refused");
    assert!(m.contains("needs 2 replica") && m.contains("pve1"), "{m}");
    assert!(s.all_volumes().unwrap().is_empty());
}

#[test]
fn alloc_peer_timeout_rolls_back_and_names_the_node() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let n = FakeNode::new("pve1", &s); // no agent on pve2
    let c = ctx(&s, &n, 300);
    let (k, m) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    assert_eq!(k, "timeout");
    assert!(m.contains("pve2") && m.contains("systemctl status drbdpool-agent"), "{m}");
    let d = s.volume("dp", "vm-100-disk-0").unwrap().unwrap();
    assert_eq!(d.state, VolumeState::Deleting);
    assert_eq!(n.calls(), ["ensure_replica dp.vm-100-disk-0", "remove_replica dp.vm-100-disk-0"]);
    // Not listed to PVE; its minor stays reserved until the agents are done.
    assert_eq!(ok(call(&c, "list", "dp", json!({})))["volumes"], json!([]));
    // free finishes it: pve2 never had it.
    ok(call(&c, "free", "dp", json!({"volname": "vm-100-disk-0"})));
    assert!(s.volume("dp", "vm-100-disk-0").unwrap().is_none());
}

#[test]
fn alloc_waits_for_uptodate() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    *n.disk_after_create.lock().unwrap() = "Inconsistent".into();
    let c = ctx(&s, &n, 300);
    let (k, m) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    assert_eq!(k, "timeout");
    assert!(m.contains("UpToDate") && m.contains("pve1"), "{m}");
}

#[test]
fn free_refuses_in_use_then_removes() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    a.set_role("pve2", "dp.vm-100-disk-0", "Primary", true);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (k, m) = err(call(&c, "free", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!(k, "refused");
    assert!(m.contains("in use") && m.contains("pve2"), "{m}");
    assert_eq!(s.volume("dp", "vm-100-disk-0").unwrap().unwrap().state, VolumeState::Ready);
    a.set_role("pve2", "dp.vm-100-disk-0", "Secondary", false);
    n.set("dp.vm-100-disk-0", |o| o.open = true);
    let (_, m) = err(call(&c, "free", "dp", json!({"volname": "vm-100-disk-0"})));
    assert!(m.contains("pve1"), "{m}");
    n.set("dp.vm-100-disk-0", |o| o.open = false);
    std::thread::sleep(std::time::Duration::from_millis(100));
    ok(call(&c, "free", "dp", json!({"volname": "vm-100-disk-0"})));
    assert!(s.volume("dp", "vm-100-disk-0").unwrap().is_none());
    assert!(n.calls().contains(&"remove_replica dp.vm-100-disk-0".to_string()));
    // Idempotent.
    ok(call(&c, "free", "dp", json!({"volname": "vm-100-disk-0"})));
}

/// DRBD 9 shows a survivor Consistent for up to 1.2 s after it loses the Primary
/// (tests/fixtures/drbd9-real/drbdsetup-events2-live.kill-and-promote.node2.out): activate
/// waits that out (bounded by CONSISTENT_WAIT) instead of refusing; a disk that stays
/// Consistent is refused after the bound.
#[test]
fn activate_waits_out_a_short_consistent_window() {
    use drbdpool::protocol::activate::CONSISTENT_WAIT;
    use std::time::{Duration, Instant};
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let _a = FakeAgents::spawn(&s, &["pve2", "pve3"]);
    let n = FakeNode::new("pve1", &s);
    let mut c = ctx(&s, &n, 3000);
    c.poll = Duration::from_millis(50);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    let res = "dp.vm-100-disk-0";
    n.set(res, |o| o.disk = "Consistent".into());
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(600));
            n.set(res, |o| o.disk = "UpToDate".into());
        });
        assert_eq!(ok(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"}))), json!({"path": "/dev/drbd1000"}));
    });
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(550) && took < CONSISTENT_WAIT, "{took:?}");
    assert_eq!(n.calls().iter().filter(|c| c.starts_with("promote")).count(), 1);
    // Stays Consistent: refused once the bound is spent, nothing promoted.
    ok(call(&c, "deactivate", "dp", json!({"volname": "vm-100-disk-0"})));
    n.set(res, |o| o.disk = "Consistent".into());
    let t0 = Instant::now();
    let (k, m) = err(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    let took = t0.elapsed();
    assert_eq!(k, "refused");
    assert!(m.contains("is Consistent, not UpToDate"), "{m}");
    assert!(took >= CONSISTENT_WAIT && took < CONSISTENT_WAIT + Duration::from_secs(1), "{took:?}");
    assert_eq!(n.calls().iter().filter(|c| c.starts_with("promote")).count(), 1);
    assert!(CONSISTENT_WAIT <= Duration::from_secs(3));
}

/// DRBD 9 refuses to promote without quorum; activate says so and where good data is.
#[test]
fn activate_without_quorum_says_quorum_is_lost_and_where_good_data_is() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let _a = FakeAgents::spawn(&s, &["pve2", "pve3"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    // What DrbdAdm::promote makes of the real `(-25) No quorum` (src/drbd/real/tests.rs).
    *n.promote_refusal.lock().unwrap() = Some(
        "cannot make dp.vm-100-disk-0 Primary here: this node has lost DRBD quorum (1 of 3 nodes visible, need 2 for quorum)".into(),
    );
    let (k, m) = err(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!(k, "refused");
    assert!(m.contains("lost DRBD quorum (1 of 3 nodes visible"), "{m}");
    assert!(m.contains("Quorum is lost for dp:vm-100-disk-0 on pve1"), "{m}");
    assert!(m.contains("UpToDate data is on pve2"), "{m}");
    // Any other refusal comes through as it is.
    *n.promote_refusal.lock().unwrap() = Some("something else".into());
    let (k, m) = err(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!((k.as_str(), m.as_str()), ("refused", "something else"));
}

#[test]
fn activate_decisions_and_migration_window() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let a = FakeAgents::spawn(&s, &["pve2", "pve3"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    let res = "dp.vm-100-disk-0";
    // Not a replica here.
    let n3 = FakeNode::new("pve3", &s);
    drop(a);
    let a = FakeAgents::spawn(&s, &["pve2"]);
    let c3 = ctx(&s, &n3, 100);
    let (k, m) = err(call(&c3, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!(k, "refused");
    assert!(m.contains("pve1, pve2"), "{m}");
    // Local replica not UpToDate.
    n.set(res, |o| o.disk = "Outdated".into());
    let (k, m) = err(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!(k, "refused");
    assert!(m.contains("Outdated") && m.contains("UpToDate data is on pve2"), "{m}");
    n.set(res, |o| o.disk = "UpToDate".into());
    // Promote, idempotent.
    assert_eq!(ok(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"}))), json!({"path": "/dev/drbd1000"}));
    ok(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!(n.calls().iter().filter(|c| c.starts_with("promote")).count(), 1);
    // Peer Primary: refused unless migrating from it.
    n.set(res, |o| o.role = "Secondary".into());
    a.set_role("pve2", res, "Primary", true);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (_, m) = err(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert!(m.contains("Primary on pve2"), "{m}");
    ok(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0", "migrated_from": "pve2"})));
    let d = s.volume("dp", "vm-100-disk-0").unwrap().unwrap();
    assert_eq!(d.dual_primary.as_ref().map(|x| (x.source.as_str(), x.target.as_str())), Some(("pve2", "pve1")));
    assert!(n.calls().contains(&format!("set_dual_primary {res} true")));
    // The source went away; the target deactivating (aborted migration) closes the window.
    a.set_role("pve2", res, "Secondary", false);
    ok(call(&c, "deactivate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert!(s.volume("dp", "vm-100-disk-0").unwrap().unwrap().dual_primary.is_none());
    assert!(n.calls().contains(&format!("set_dual_primary {res} false")));
    // Fenced node.
    let mut d = s.volume("dp", "vm-100-disk-0").unwrap().unwrap();
    d.outdated = vec!["pve1".into()];
    s.put_volume(&d).unwrap();
    let (_, m) = err(call(&c, "activate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert!(m.contains("outdated"), "{m}");
    // Deactivate while open: the node's refusal comes through.
    n.set(res, |o| o.open = true);
    let (k, m) = err(call(&c, "deactivate", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!(k, "refused");
    assert!(m.contains("qemu"), "{m}");
}

#[test]
fn resize_grows_only() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    let (k, m) = err(call(&c, "resize", "dp", json!({"volname": "vm-100-disk-0", "size_bytes": 512 * 1024, "running": 0})));
    assert_eq!(k, "refused");
    assert!(m.contains("shrinking"), "{m}");
    let r = ok(call(&c, "resize", "dp", json!({"volname": "vm-100-disk-0", "size_bytes": 2 * 1024 * 1024 + 1, "running": 1})));
    assert_eq!(r, json!({"size": 2049 * 1024}));
    let d = s.volume("dp", "vm-100-disk-0").unwrap().unwrap();
    assert_eq!((d.size_kib, d.generation), (2049, 2));
    let calls = n.calls();
    assert!(calls.ends_with(&["grow_backing dp.vm-100-disk-0 2049".into(), "grow_drbd dp.vm-100-disk-0 2049".into()]), "{calls:?}");
    assert_eq!(ok(call(&c, "size", "dp", json!({"volname": "vm-100-disk-0"})))["size"], 2049 * 1024);
}

#[test]
fn rename_and_create_base_move_the_document() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    let r = ok(call(&c, "rename", "dp", json!({"volname": "vm-100-disk-0", "target_vmid": 101})));
    assert_eq!(r["volname"], "vm-101-disk-0");
    assert!(s.volume("dp", "vm-100-disk-0").unwrap().is_none());
    let d = s.volume("dp", "vm-101-disk-0").unwrap().unwrap();
    assert_eq!((d.vmid, d.resource.as_str()), (101, "dp.vm-100-disk-0"));
    let r = ok(call(&c, "create_base", "dp", json!({"volname": "vm-101-disk-0"})));
    assert_eq!(r["volname"], "base-101-disk-0");
    assert!(s.volume("dp", "base-101-disk-0").unwrap().unwrap().base);
    // Names are not reused while the moved volume exists.
    ok(call(&c, "alloc", "dp", json!({"vmid": 101, "size_kib": 1024})));
    assert!(s.volume("dp", "vm-101-disk-1").unwrap().is_some());
    let (k, _) = err(call(&c, "rename", "dp", json!({"volname": "vm-101-disk-1", "target_vmid": 101, "target_volname": "base-101-disk-0"})));
    assert_eq!(k, "invalid-input");
    // Linked clone of the template: same replica nodes, parent recorded, ready.
    let r = ok(call(&c, "clone", "dp", json!({"volname": "base-101-disk-0", "vmid": 102})));
    assert_eq!(r["volname"], "base-101-disk-0/vm-102-disk-0", "PVE's name of a linked clone carries its base");
    let base = s.volume("dp", "base-101-disk-0").unwrap().unwrap();
    let cl = s.volume("dp", "vm-102-disk-0").unwrap().unwrap();
    assert_eq!((cl.parent.as_deref(), cl.state, cl.size_kib, cl.base), (Some("base-101-disk-0"), drbdpool::store::docs::VolumeState::Ready, base.size_kib, false));
    assert_eq!(cl.replicas.iter().map(|r| &r.node).collect::<Vec<_>>(), base.replicas.iter().map(|r| &r.node).collect::<Vec<_>>());
    assert_ne!((cl.minor, cl.port, &cl.resource), (base.minor, base.port, &base.resource));
    assert!(n.calls().contains(&format!("skip_initial_sync {}", cl.resource)), "{:?}", n.calls());
    // Not from a non-template, not from a snapshot.
    let (k, m) = err(call(&c, "clone", "dp", json!({"volname": "vm-101-disk-1", "vmid": 103})));
    assert_eq!(k, "refused");
    assert!(m.contains("not a template"), "{m}");
    let (k, m) = err(call(&c, "clone", "dp", json!({"volname": "base-101-disk-0", "vmid": 103, "snap": "s1"})));
    assert_eq!(k, "refused");
    assert!(m.contains("snapshot"), "{m}");
    // A template that is not identical everywhere (local replica Outdated) is not cloned.
    n.set(&base.resource, |o| o.disk = "Outdated".into());
    let (k, m) = err(call(&c, "clone", "dp", json!({"volname": "base-101-disk-0", "vmid": 103})));
    assert_eq!(k, "refused");
    assert!(m.contains("pve1: Outdated"), "{m}");
    assert!(s.volume("dp", "vm-103-disk-0").unwrap().is_none());
}

/// Issue 16: a template with linked clones cannot be freed. PVE's own check needs the
/// clone's volid to carry the base (`base-…/vm-…`); the helper refuses as well, for
/// clones PVE cannot see (listed by their own name before issue 16).
#[test]
fn base_with_clones_is_not_freed_and_clones_go_by_pve_names() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    assert_eq!(ok(call(&c, "create_base", "dp", json!({"volname": "vm-100-disk-0"})))["volname"], "base-100-disk-0");
    let cl = ok(call(&c, "clone", "dp", json!({"volname": "base-100-disk-0", "vmid": 101})))["volname"].as_str().unwrap().to_string();
    assert_eq!(cl, "base-100-disk-0/vm-101-disk-0");
    // list: the volid PVE parses; vollist filters by it.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let l = ok(call(&c, "list", "dp", json!({})));
    let volids: Vec<&str> = l["volumes"].as_array().unwrap().iter().map(|v| v["volid"].as_str().unwrap()).collect();
    assert_eq!(volids, ["dp:base-100-disk-0", "dp:base-100-disk-0/vm-101-disk-0"]);
    assert_eq!(l["volumes"][1]["parent"], "base-100-disk-0");
    let l = ok(call(&c, "list", "dp", json!({"vollist": ["dp:base-100-disk-0/vm-101-disk-0"]})));
    assert_eq!(l["volumes"].as_array().unwrap().len(), 1);
    let l = ok(call(&c, "list", "dp", json!({"nodes": true})));
    assert_eq!(l["volumes"][1]["volid"], "dp:base-100-disk-0/vm-101-disk-0");
    // Every method takes PVE's name; the clone's own name works too (clones of 0.1.0).
    for name in ["base-100-disk-0/vm-101-disk-0", "vm-101-disk-0"] {
        let sz = ok(call(&c, "size", "dp", json!({"volname": name})));
        assert_eq!(sz["parent"], "base-100-disk-0", "{name}");
        ok(call(&c, "path", "dp", json!({"volname": name})));
    }
    // A wrong base is not this volume; a base part that is no template is invalid.
    let (k, m) = err(call(&c, "path", "dp", json!({"volname": "base-999-disk-0/vm-101-disk-0"})));
    assert_eq!(k, "not-found");
    assert!(m.contains("a linked clone of base-100-disk-0, not of base-999-disk-0"), "{m}");
    let (k, _) = err(call(&c, "free", "dp", json!({"volname": "vm-100-disk-0/vm-101-disk-0"})));
    assert_eq!(k, "invalid-input");
    // The base: refused while its clone exists, nothing changed.
    let before = s.volume("dp", "base-100-disk-0").unwrap().unwrap();
    let (k, m) = err(call(&c, "free", "dp", json!({"volname": "base-100-disk-0", "is_base": true})));
    assert_eq!(k, "refused");
    assert!(m.contains("still in use by linked clones (dp:base-100-disk-0/vm-101-disk-0)"), "{m}");
    assert_eq!(s.volume("dp", "base-100-disk-0").unwrap().unwrap(), before, "refused: nothing changed");
    // Reassigned to another guest (rename): still a clone of the base, named so.
    let r = ok(call(&c, "rename", "dp", json!({"volname": "base-100-disk-0/vm-101-disk-0", "target_vmid": 105})));
    assert_eq!(r["volname"], "base-100-disk-0/vm-105-disk-0");
    let r = ok(call(&c, "rename", "dp", json!({"volname": "base-100-disk-0/vm-105-disk-0", "target_vmid": 101, "target_volname": "base-100-disk-0/vm-101-disk-0"})));
    assert_eq!(r["volname"], "base-100-disk-0/vm-101-disk-0");
    // The clone goes by PVE's name; then the base can go.
    ok(call(&c, "free", "dp", json!({"volname": "base-100-disk-0/vm-101-disk-0"})));
    assert!(s.volume("dp", "vm-101-disk-0").unwrap().is_none());
    ok(call(&c, "free", "dp", json!({"volname": "base-100-disk-0", "is_base": true})));
    assert!(s.volume("dp", "base-100-disk-0").unwrap().is_none());
}

/// Issue 16: `used` is the thin allocation the agents measured (usage/<node>.json), this
/// node's own where it holds a replica; list and size run no tool and touch no backend.
#[test]
fn list_and_size_report_the_measured_allocation_as_used() {
    use drbdpool::store::docs::NodeUsage;
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    let mib = 1024 * 1024;
    for vmid in [100, 101, 102] {
        ok(call(&c, "alloc", "dp", json!({"vmid": vmid, "size_kib": 64 * 1024})));
    }
    let usage = |node: &str, vols: &[(&str, u64)]| NodeUsage {
        format: 1,
        node: node.into(),
        updated: now(),
        storages: [("dp".to_string(), vols.iter().map(|(v, b)| (v.to_string(), *b)).collect())].into(),
    };
    // Before any agent measured: the size, as before.
    let used = |c: &drbdpool::protocol::Ctx| -> Vec<u64> {
        let l = ok(call(c, "list", "dp", json!({})));
        l["volumes"].as_array().unwrap().iter().map(|v| v["used"].as_u64().unwrap()).collect()
    };
    assert_eq!(used(&c), [64 * mib; 3]);
    // pve1 (this node) and pve2 measured; vm-101 only pve2 has; vm-102 nobody.
    s.put_node_usage(&usage("pve1", &[("vm-100-disk-0", 3 * mib)])).unwrap();
    s.put_node_usage(&usage("pve2", &[("vm-100-disk-0", 60 * mib), ("vm-101-disk-0", 5 * mib), ("vm-101-disk-0x", 1)])).unwrap();
    s.put_node_usage(&usage("pve3", &[("vm-101-disk-0", 7 * mib), ("vm-102-disk-0", 65 * mib)])).unwrap();
    let calls_before = n.calls();
    assert_eq!(used(&c), [3 * mib, 7 * mib, 64 * mib], "own figure first, else the largest published, never above the size");
    assert_eq!(n.calls(), calls_before, "list ran nothing on the node");
    let sz = ok(call(&c, "size", "dp", json!({"volname": "vm-100-disk-0"})));
    assert_eq!((sz["size"].as_u64(), sz["used"].as_u64()), (Some(64 * mib), Some(3 * mib)));
    let l = ok(call(&c, "list", "dp", json!({"nodes": true, "vmid": 101})));
    assert_eq!(l["volumes"][0]["used"], 7 * mib);
    // Seen from pve2: its own figure.
    let n2 = FakeNode::quiet("pve2", &s);
    let c2 = ctx(&s, &n2, 3000);
    assert_eq!(used(&c2)[0], 60 * mib);
}

/// Issue 16: activate_storage records the storage's resync settings for the agents (only on a
/// change); a bad value is refused by alloc (nothing made) and never fails an activation.
#[test]
fn resync_properties_are_recorded_and_bad_ones_change_nothing() {
    use drbdpool::store::docs::Resync;
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    let with = |extra: serde_json::Value| {
        let mut m = scfg();
        m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        m
    };
    let run = |method: &str, scfg: serde_json::Value, args: serde_json::Value| {
        let req = json!({"version": 1, "storeid": "dp", "node": "pve1", "scfg": scfg, "args": args});
        drbdpool::protocol::handle(&c, method, req.to_string().as_bytes())
    };
    ok(run("activate_storage", scfg(), json!({})));
    assert_eq!(s.storage_doc("dp").unwrap().unwrap().resync, Resync::default());
    let p = s.root().join("storages/dp.json");
    let m0 = std::fs::metadata(&p).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    ok(run("activate_storage", scfg(), json!({})));
    assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), m0, "unchanged settings are not rewritten");
    let capped = with(json!({"drbdpool-resync-rate-max": "110M", "drbdpool-resync-rate-min": "20M"}));
    ok(run("activate_storage", capped.clone(), json!({})));
    let want = Resync { max_kib: 110 * 1024, min_kib: 20 * 1024 };
    assert_eq!(s.storage_doc("dp").unwrap().unwrap().resync, want);
    // A bad value (hand-edited storage.cfg): activation still works, the recorded settings stay.
    let bad = with(json!({"drbdpool-resync-rate-max": "100MB"}));
    ok(run("activate_storage", bad.clone(), json!({})));
    assert_eq!(s.storage_doc("dp").unwrap().unwrap().resync, want);
    // ... and no new volume is made under it.
    let r = run("alloc", bad, json!({"vmid": 100, "size_kib": 1024}));
    let (k, m) = err(r);
    assert_eq!(k, "invalid-input");
    assert!(m.contains("drbdpool-resync-rate-max '100MB' is not a rate"), "{m}");
    assert!(s.volume_names("dp").unwrap().is_empty(), "nothing allocated");
    ok(run("alloc", capped, json!({"vmid": 100, "size_kib": 1024})));
}

#[test]
fn queries() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "activate_storage", "dp", json!({})));
    let st = ok(call(&c, "status", "dp", json!({})));
    assert_eq!(st, json!({"total": TOTAL, "avail": AVAIL, "used": TOTAL - AVAIL, "active": true}));
    // A storage the agent does not publish yet (no volumes): asked from the backend directly.
    assert_eq!(ok(call(&c, "status", "other", json!({}))), json!({"total": TOTAL, "avail": AVAIL, "used": TOTAL - AVAIL, "active": true}));
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    ok(call(&c, "alloc", "dp", json!({"vmid": 200, "size_kib": 2048})));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let l = ok(call(&c, "list", "dp", json!({"vmid": 200})));
    let v = &l["volumes"][0];
    assert_eq!(l["volumes"].as_array().unwrap().len(), 1);
    assert_eq!((v["volid"].as_str(), v["size"].as_u64(), v["format"].as_str()), (Some("dp:vm-200-disk-0"), Some(2048 * 1024), Some("raw")));
    assert!(v.get("nodes").is_none() && v.get("volname").is_none(), "PVE's entry only: {v}");
    let l = ok(call(&c, "list", "dp", json!({"vmid": 200, "nodes": true})));
    assert_eq!(l["volumes"][0]["nodes"]["pve2"], json!({"role": "Secondary", "disk": "UpToDate"}));
    let l = ok(call(&c, "list", "dp", json!({"vollist": ["dp:vm-100-disk-0", "x:vm-200-disk-0"]})));
    assert_eq!(l["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(ok(call(&c, "path", "dp", json!({"volname": "vm-200-disk-0"}))), json!({"path": "/dev/drbd1001", "vmid": 200, "vtype": "images"}));
    let (k, _) = err(call(&c, "path", "dp", json!({"volname": "vm-300-disk-0"})));
    assert_eq!(k, "not-found");
    assert_eq!(ok(call(&c, "has_feature", "dp", json!({"feature": "snapshot", "volname": "vm-200-disk-0", "running": 0}))), json!({"supported": true}));
    assert_eq!(ok(call(&c, "has_feature", "dp", json!({"feature": "copy", "volname": "vm-200-disk-0"}))), json!({"supported": true}));
    assert_eq!(ok(call(&c, "snapshot_list", "dp", json!({"volname": "vm-200-disk-0"}))), json!({"snapshots": {}}));
    assert_eq!(ok(call(&c, "export_formats", "dp", json!({"volname": "vm-200-disk-0", "with_snapshots": 0}))), json!({"formats": ["raw+size"]}));
    assert_eq!(ok(call(&c, "import_formats", "dp", json!({"volname": "vm-200-disk-0", "with_snapshots": 1}))), json!({"formats": []}));
    // An unregistered node.
    let n9 = FakeNode::new("pve9", &s);
    let c9 = ctx(&s, &n9, 100);
    let (k, m) = err(call(&c9, "activate_storage", "dp", json!({})));
    assert_eq!(k, "refused");
    assert!(m.contains("drbdpool node add pve9"), "{m}");
}

#[test]
fn store_documents_newer_format_and_truncated_json() {
    let (d, s) = store_with_nodes(&["pve1"]);
    std::fs::create_dir_all(d.path().join("volumes/dp")).unwrap();
    std::fs::write(d.path().join("volumes/dp/vm-1-disk-0.json"), br#"{"format": 2, "storeid": "dp"}"#).unwrap();
    let e = s.volume("dp", "vm-1-disk-0").unwrap_err();
    assert_eq!(e.kind(), "store");
    assert!(e.to_string().contains("newer drbdpool") && e.to_string().contains("upgrade"), "{e}");
    std::fs::write(d.path().join("volumes/dp/vm-1-disk-0.json"), br#"{"format": 1, "storeid": "d"#).unwrap();
    let e = s.volume("dp", "vm-1-disk-0").unwrap_err();
    assert!(e.to_string().contains("vm-1-disk-0.json is not a valid drbdpool document"), "{e}");
    // A handler reports it as a store error, it does not crash.
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 100);
    let (k, _) = err(call(&c, "path", "dp", json!({"volname": "vm-1-disk-0"})));
    assert_eq!(k, "store");
}

#[test]
fn status_is_fast_with_10000_volumes() {
    use drbdpool::store::docs::{NodeState, Space, VolumeObserved};
    let (_d, s) = store_with_nodes(&["pve1"]);
    let mut st = NodeState { format: 1, node: "pve1".into(), updated: now(), storages: Default::default(), volumes: Default::default() };
    st.storages.insert("dp".into(), Space { total: 10, avail: 4, used: 6 });
    for i in 0..10_000 {
        st.volumes.insert(format!("dp.vm-{i}-disk-0"), VolumeObserved { ready: true, generation: 1, role: "Secondary".into(), disk: "UpToDate".into(), ..Default::default() });
    }
    s.put_node_state(&st).unwrap();
    let n = FakeNode::quiet("pve1", &s);
    let c = ctx(&s, &n, 100);
    let t = std::time::Instant::now();
    let r = ok(call(&c, "status", "dp", json!({})));
    let took = t.elapsed();
    assert_eq!(r, json!({"total": 10, "avail": 4, "used": 6, "active": true}));
    // Debug build on a shared machine: generous, but far below pvestatd's budget.
    assert!(took < std::time::Duration::from_millis(500), "status took {took:?}");
    assert!(n.calls().is_empty());
}

#[test]
fn crash_inside_rename_leaves_a_usable_document() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    // The file was moved but the content not yet rewritten.
    s.rename_volume("dp", "vm-100-disk-0", "vm-101-disk-3").unwrap();
    let d = s.volume("dp", "vm-101-disk-3").unwrap().unwrap();
    assert_eq!((d.volname.as_str(), d.vmid, d.resource.as_str()), ("vm-101-disk-3", 101, "dp.vm-100-disk-0"));
    assert_eq!(ok(call(&c, "path", "dp", json!({"volname": "vm-101-disk-3"})))["vmid"], 101);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Arbitrary names and sizes never panic, never create anything, and get a clear error kind.
    #[test]
    fn arbitrary_args_are_refused_cleanly(name in "\\PC{0,80}", size in proptest::prelude::any::<i64>(), method_i in 0usize..6) {
        let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
        let n = FakeNode::quiet("pve1", &s);
        let c = ctx(&s, &n, 50);
        let method = ["alloc", "free", "path", "activate", "resize", "rename"][method_i];
        let r = call(&c, method, "dp", json!({"vmid": 100, "name": name, "volname": name, "size_kib": size, "size_bytes": size, "target_vmid": 101}));
        if let Some(e) = &r.error {
            proptest::prop_assert!(["invalid-input", "not-found", "refused", "timeout"].contains(&e.kind.as_str()), "{:?}", e);
            proptest::prop_assert!(!e.message.is_empty());
        }
        if !r.ok {
            proptest::prop_assert!(s.all_volumes().unwrap().iter().all(|v| v.state != VolumeState::Ready));
        }
    }
}

/// Issue 18, 4: a failed alloc gives up at its budget counted from the start of the call,
/// lock wait included, and removes its local replica inside the roll-back allowance.
#[test]
fn alloc_gives_up_at_its_budget_from_the_start_of_the_call() {
    use std::time::{Duration, Instant};
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let n = FakeNode::new("pve1", &s); // no agent on pve2: the alloc must fail
    let mut c = ctx(&s, &n, 10_000);
    c.alloc_budget = Duration::from_millis(800);
    // Another alloc holds the alloc lock for the first 500 ms of this call.
    let t0 = Instant::now();
    c.started = Some(t0);
    let holder = {
        let s = s.clone();
        let g = s.lock(drbdpool::store::lock::ALLOC_LOCK).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            drop(g);
        })
    };
    let (k, m) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    let took = t0.elapsed();
    holder.join().unwrap();
    assert_eq!(k, "timeout", "{m}");
    assert!(m.contains("pve2") && m.contains("within 0s of the start of the alloc"), "{m}");
    // The 10 s peer timeout did not count, nor did the lock wait come on top of the budget.
    assert!(took >= Duration::from_millis(800) && took < Duration::from_millis(2500), "alloc took {took:?}");
    assert_eq!(n.calls(), ["ensure_replica dp.vm-100-disk-0", "remove_replica dp.vm-100-disk-0"]);

    // Called when its budget and the roll-back allowance are already spent (a helper that
    // started late on a loaded node): it fails at once and leaves the local removal to the
    // agent of this node, which it wakes.
    let late = Instant::now() - c.alloc_budget - drbdpool::protocol::ROLLBACK_ALLOWANCE - Duration::from_secs(1);
    c.started = Some(late);
    let n2 = FakeNode::new("pve1", &s);
    let mut c2 = ctx(&s, &n2, 10_000);
    c2.alloc_budget = c.alloc_budget;
    c2.started = Some(late);
    let t1 = Instant::now();
    let (k, _) = err(call(&c2, "alloc", "dp", json!({"vmid": 101, "size_kib": 1024})));
    assert!(k == "timeout", "{k}");
    assert!(t1.elapsed() < Duration::from_millis(1500), "{:?}", t1.elapsed());
    assert!(!n2.calls().iter().any(|c| c.starts_with("remove_replica")), "{:?}", n2.calls());
    assert!(s.root().join("wake/pve1").exists(), "this node's agent was not woken to remove the replica");
    assert_eq!(s.volume("dp", "vm-101-disk-0").unwrap().unwrap().state, VolumeState::Deleting);
}

/// The defaults leave a margin inside the shim's limit for an alloc: its budget, the
/// roll-back allowance and at least 10 s more for the process, the roll-back's own steps
/// and a loaded node (issue 18: a 45 s wait made a failed alloc take 47-48 s against 55 s).
#[test]
fn alloc_defaults_fit_inside_the_shim_limit() {
    let shim = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/perl-shim/PVE/Storage/Custom/DRBDPool/Helper.pm")).unwrap();
    let limit: u64 = shim
        .lines()
        .find_map(|l| l.trim().strip_prefix("alloc => ").map(|v| v.trim_end_matches(',').trim().parse().unwrap()))
        .expect("no alloc timeout in the shim");
    let (_d, s) = store_with_nodes(&["pve1"]);
    let n = FakeNode::new("pve1", &s);
    std::env::remove_var("DRBDPOOL_PEER_TIMEOUT_SECS");
    let c = drbdpool::protocol::Ctx::new(&s, &n);
    assert_eq!(c.peer_timeout.as_secs(), 45, "free and resize keep their peer wait");
    let used = (c.alloc_budget + drbdpool::protocol::ROLLBACK_ALLOWANCE).as_secs();
    assert!(used + 10 <= limit, "alloc budget {}s + roll-back allowance leave less than 10 s of the shim's {limit}s", c.alloc_budget.as_secs());
    assert!(c.started.is_some(), "the CLI's deadline counts from the start of the call");
}

/// Issue 18, 3: a new alloc of a name whose volume is being removed (a rolled-back create
/// waiting for a dead node) says so and names what it waits for.
#[test]
fn alloc_of_a_name_being_removed_says_what_it_waits_for() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 300);
    let (k, _) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024, "name": "vm-100-disk-0"})));
    assert_eq!(k, "timeout");
    // pve2 had announced its replica, then died: its last report is old.
    let mut st = drbdpool::store::docs::NodeState { format: 1, node: "pve2".into(), updated: now() - 400, storages: Default::default(), volumes: Default::default() };
    st.volumes.insert("dp.vm-100-disk-0".into(), Default::default());
    s.put_node_state(&st).unwrap();
    let (k, m) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024, "name": "vm-100-disk-0"})));
    assert_eq!(k, "conflict");
    assert!(m.contains("already exists and is being removed"), "{m}");
    assert!(m.contains("waiting for the agent on pve2") && m.contains("s old: the node or its agent is down"), "{m}");
    // A live name is still plainly "already exists".
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let c = ctx(&s, &n, 5000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024, "name": "vm-100-disk-5"})));
    let (k, m) = err(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024, "name": "vm-100-disk-5"})));
    assert_eq!((k.as_str(), m.as_str()), ("conflict", "volume dp:vm-100-disk-5 already exists"));
}
