//! Snapshot handlers (src/protocol/snapshot.rs) with the fake local node and fake peer agents.

mod common;

use common::*;
use drbdpool::node::NodeOps;
use drbdpool::protocol::Reply;
use drbdpool::store::docs::BackendKind;
use serde_json::{json, Value};

fn ok(r: Reply) -> Value {
    assert!(r.ok, "expected ok, got {:?}", r.error);
    r.result.unwrap()
}

fn err(r: Reply) -> (String, String) {
    assert!(!r.ok, "expected an error, got {:?}", r.result);
    let e = r.error.unwrap();
    (e.kind, e.message)
}

const V: &str = "vm-100-disk-0";
const RES: &str = "dp.vm-100-disk-0";

fn args(snap: &str) -> Value {
    json!({"volname": V, "snap": snap})
}

#[test]
fn snapshot_create_list_delete_on_two_nodes() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    let g0 = s.volume("dp", V).unwrap().unwrap().generation;

    assert_eq!(ok(call(&c, "snapshot", "dp", args("before-upgrade"))), json!({}));
    let d = s.volume("dp", V).unwrap().unwrap();
    assert_eq!(d.snapshots.len(), 1);
    assert_eq!((d.snapshots[0].name.as_str(), d.snapshots[0].origin.as_deref()), ("before-upgrade", Some("pve1")));
    assert_eq!(d.generation, g0 + 1);
    assert!(n.calls().contains(&format!("snapshot {RES} before-upgrade")));
    // The peer's agent reports its copy (that is what the handler waited for).
    let peer = s.node_state("pve2").unwrap().unwrap();
    assert_eq!(peer.volumes[RES].snapshots, vec!["before-upgrade".to_string()]);

    let l = ok(call(&c, "snapshot_list", "dp", json!({"volname": V})));
    assert_eq!(l["snapshots"]["before-upgrade"]["id"], "before-upgrade");
    assert_eq!(l["snapshots"]["before-upgrade"]["timestamp"], json!(d.snapshots[0].created));

    // Same name again: conflict, nothing changed.
    let (k, m) = err(call(&c, "snapshot", "dp", args("before-upgrade")));
    assert_eq!(k, "conflict", "{m}");
    assert_eq!(s.volume("dp", V).unwrap().unwrap(), d);
    // Bad names: invalid input, nothing changed.
    for bad in ["1x", "a b", "current", "x", "a;rm"] {
        let (k, m) = err(call(&c, "snapshot", "dp", args(bad)));
        assert_eq!(k, "invalid-input", "{bad}: {m}");
    }
    assert_eq!(s.volume("dp", V).unwrap().unwrap(), d);
    // vzdump's reserved name is a valid snapshot name.
    ok(call(&c, "snapshot", "dp", args("vzdump")));

    // A template cannot be made of a volume with snapshots (as LvmThinPlugin).
    let (k, m) = err(call(&c, "create_base", "dp", json!({"volname": V})));
    assert_eq!(k, "refused");
    assert!(m.contains("before-upgrade") && m.contains("vzdump"), "{m}");

    ok(call(&c, "snapshot_delete", "dp", json!({"volname": V, "snap": "vzdump", "running": 1})));
    let d = s.volume("dp", V).unwrap().unwrap();
    assert_eq!(d.snapshots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["before-upgrade"]);
    assert!(n.calls().contains(&format!("remove_snapshot {RES} vzdump")));
    assert!(!s.node_state("pve2").unwrap().unwrap().volumes[RES].snapshots.contains(&"vzdump".to_string()));
    // Deleting again is harmless.
    ok(call(&c, "snapshot_delete", "dp", json!({"volname": V, "snap": "vzdump"})));
}

#[test]
fn snapshot_is_removed_again_when_a_peer_does_not_take_it() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    drop(a); // pve2's agent stops
    let c = ctx(&s, &n, 300);
    let (k, m) = err(call(&c, "snapshot", "dp", args("s1")));
    assert_eq!(k, "timeout");
    assert!(m.contains("pve2") && m.contains("removed again"), "{m}");
    assert!(s.volume("dp", V).unwrap().unwrap().snapshots.is_empty());
    assert_eq!(n.calls().iter().filter(|c| c.contains("snapshot") && c.contains("s1")).cloned().collect::<Vec<_>>(),
        vec![format!("snapshot {RES} s1"), format!("remove_snapshot {RES} s1")]);
    assert!(n.observe(&s.volume("dp", V).unwrap().unwrap()).unwrap().unwrap().snapshots.is_empty());
}

#[test]
fn snapshot_refused_on_thick_lvm_and_of_a_stale_local_replica() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    n.set(RES, |o| o.disk = "Outdated".into());
    let (k, m) = err(call(&c, "snapshot", "dp", args("s1")));
    assert_eq!(k, "refused");
    assert!(m.contains("Outdated"), "{m}");
    assert!(s.volume("dp", V).unwrap().unwrap().snapshots.is_empty());

    let mut d = s.volume("dp", V).unwrap().unwrap();
    d.backend.kind = BackendKind::Lvm;
    s.put_volume(&d).unwrap();
    let (k, m) = err(call(&c, "snapshot", "dp", args("s1")));
    assert_eq!(k, "refused");
    assert!(m.contains("Lvm backend has no snapshots"), "{m}");
    // has_feature from the storage's backend.
    let req = json!({"version": 1, "storeid": "dp", "node": "pve1", "scfg": {"type": "drbdpool", "vgname": "ssd", "drbdpool-backend": "lvm"},
        "args": {"feature": "snapshot", "volname": V}});
    let r = drbdpool::protocol::handle(&c, "has_feature", req.to_string().as_bytes());
    assert_eq!(r.result, Some(json!({"supported": false})));
}

#[test]
fn rollback_refused_while_in_use_then_done_from_the_local_replica() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    ok(call(&c, "snapshot", "dp", args("s1")));
    assert_eq!(ok(call(&c, "rollback_is_possible", "dp", args("s1"))), json!({"possible": true, "blockers": []}));

    // Primary on the peer: refused, naming it; nothing marked.
    a.set_role("pve2", RES, "Primary", true);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (k, m) = err(call(&c, "snapshot_rollback", "dp", args("s1")));
    assert_eq!(k, "refused");
    assert!(m.contains("in use") && m.contains("pve2"), "{m}");
    // Primary here: refused too.
    a.set_role("pve2", RES, "Secondary", false);
    n.set(RES, |o| o.role = "Primary".into());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (_, m) = err(call(&c, "snapshot_rollback", "dp", args("s1")));
    assert!(m.contains("pve1"), "{m}");
    assert!(s.volume("dp", V).unwrap().unwrap().snapshots[0].rollback.is_none());
    assert!(!n.calls().iter().any(|c| c.starts_with("rollback_source")));
    n.set(RES, |o| o.role = "Secondary".into());

    // Unknown snapshot / not a replica here / no local copy.
    assert_eq!(err(call(&c, "snapshot_rollback", "dp", args("nope"))).0, "not-found");
    let n3 = FakeNode::new("pve3", &s);
    let c3 = ctx(&s, &n3, 300);
    let (k, m) = err(call(&c3, "rollback_is_possible", "dp", args("s1")));
    assert_eq!(k, "refused");
    assert!(m.contains("pve1, pve2"), "{m}");
    n.set(RES, |o| o.snapshots.clear());
    let (k, m) = err(call(&c, "snapshot_rollback", "dp", args("s1")));
    assert_eq!(k, "refused");
    assert!(m.contains("no copy") && m.contains("roll back on pve2"), "{m}");
    n.set(RES, |o| o.snapshots.push("s1".into()));

    let g = s.volume("dp", V).unwrap().unwrap().generation;
    assert_eq!(ok(call(&c, "snapshot_rollback", "dp", args("s1"))), json!({}));
    // The local rollback ran while the mark was set (peers discarded), and the mark is gone.
    assert!(n.calls().contains(&format!("rollback_source {RES} s1 marked=true")), "{:?}", n.calls());
    let d = s.volume("dp", V).unwrap().unwrap();
    assert!(d.snapshots.iter().all(|s| s.rollback.is_none()));
    assert_eq!(d.generation, g + 2, "mark set and cleared");
    assert_eq!(d.snapshots.len(), 1, "the snapshot stays");
}

#[test]
fn rollback_not_done_when_a_peer_does_not_discard() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    ok(call(&c, "snapshot", "dp", args("s1")));
    drop(a);
    let c = ctx(&s, &n, 300);
    let (k, m) = err(call(&c, "snapshot_rollback", "dp", args("s1")));
    assert_eq!(k, "timeout");
    assert!(m.contains("pve2") && m.contains("not done"), "{m}");
    assert!(!n.calls().iter().any(|c| c.starts_with("rollback_source")));
    assert!(s.volume("dp", V).unwrap().unwrap().snapshots[0].rollback.is_none(), "mark cleared");
}

#[test]
fn snapshot_devices_path_activate_deactivate() {
    let (_d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 3000);
    ok(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})));
    ok(call(&c, "snapshot", "dp", args("s1")));
    let snap_dev = format!("/dev/ssd/{RES}_s1");
    assert_eq!(ok(call(&c, "activate", "dp", json!({"volname": V, "snapname": "s1"}))), json!({"path": snap_dev}));
    assert_eq!(ok(call(&c, "path", "dp", json!({"volname": V, "snapname": "s1"}))), json!({"path": snap_dev, "vmid": 100, "vtype": "images"}));
    ok(call(&c, "deactivate", "dp", json!({"volname": V, "snapname": "s1"})));
    assert!(n.calls().contains(&format!("activate_snapshot {RES} s1")) && n.calls().contains(&format!("deactivate_snapshot {RES} s1")));
    // The volume itself was not promoted for that.
    assert!(!n.calls().iter().any(|c| c.starts_with("promote")));
    assert_eq!(err(call(&c, "path", "dp", json!({"volname": V, "snapname": "s2"}))).0, "not-found");
    let n3 = FakeNode::new("pve3", &s);
    let (k, m) = err(call(&ctx(&s, &n3, 300), "activate", "dp", json!({"volname": V, "snapname": "s1"})));
    assert_eq!(k, "refused");
    assert!(m.contains("pve1, pve2"), "{m}");
}
