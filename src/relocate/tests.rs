use super::*;
use crate::store::docs::{Space, VolumeObserved};

const NOW: u64 = 1_000_000;
const BIG: u64 = 1 << 40;

fn nodes(v: &[&str]) -> Vec<NodeDoc> {
    v.iter().map(|n| NodeDoc { format: 1, name: n.to_string(), address: "10.0.0.1".into() }).collect()
}

/// A fresh state of `node` with `avail` bytes free and `vols` = (resource, role, disk).
fn state(node: &str, avail: u64, vols: &[(&str, &str, &str)]) -> NodeState {
    let mut s = NodeState { format: 1, node: node.into(), updated: NOW - 5, storages: Default::default(), volumes: Default::default() };
    s.storages.insert("pool".into(), Space { total: 1 << 41, avail, used: 0 });
    for (res, role, disk) in vols {
        s.volumes.insert(res.to_string(), VolumeObserved { ready: true, generation: 1, role: role.to_string(), disk: disk.to_string(), ..Default::default() });
    }
    s
}

fn vol(name: &str, on: &[&str]) -> VolumeDoc {
    VolumeDoc { resource: format!("pool.{name}"), ..VolumeDoc::for_test("pool", name, on) }
}

fn inputs<'a>(docs: &'a [VolumeDoc], n: &'a [NodeDoc], states: &'a [NodeState], allowed: &'a BTreeMap<String, Option<Vec<String>>>, max_hosts: usize) -> Inputs<'a> {
    Inputs { docs, nodes: n, states, allowed, now: NOW, max_hosts }
}

#[test]
fn a_move_lists_the_target_next_to_the_source_with_a_fresh_node_id() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"])];
    let n = nodes(&["a", "b", "c"]);
    let states = [state("a", BIG, &[("pool.vm-100-disk-0", "Primary", "UpToDate")]), state("b", BIG, &[("pool.vm-100-disk-0", "Secondary", "UpToDate")]), state("c", BIG, &[])];
    let none = BTreeMap::new();
    // DRBD 9: the guest may keep running on a; a itself may be the source.
    let p = plan_move(&inputs(&docs, &n, &states, &none, 32), "pool.vm-100-disk-0", "a", "c").unwrap();
    assert_eq!(p.moves.len(), 1, "{p:?}");
    let m = &p.moves[0];
    assert_eq!((m.from.as_str(), m.to.as_str(), m.node_id, m.port, m.source.as_str()), ("a", "c", 2, None, "a"));
    let mut d = docs[0].clone();
    record(&mut d, m, NOW);
    assert_eq!(d.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(d.moving, Some(ReplicaMove { from: "a".into(), to: "c".into(), since: NOW }));
    // What DRBD connects: all three on 9; on 8.4 the staying replica and the new one.
    assert_eq!(d.drbd_replicas(32).map(|r| r.node.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(d.drbd_replicas(2).map(|r| r.node.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    assert!(d.parked_on("a", 2) && !d.parked_on("a", 32) && !d.parked_on("b", 2));
    // Recorded already: reported under way, nothing new.
    let docs2 = [d];
    let again = plan_move(&inputs(&docs2, &n, &states, &none, 32), "pool.vm-100-disk-0", "a", "c").unwrap();
    assert!(again.moves.is_empty() && again.under_way == ["pool:vm-100-disk-0"], "{again:?}");
}

#[test]
fn drbd84_refuses_a_source_in_use_and_needs_an_uptodate_staying_replica() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"])];
    let n = nodes(&["a", "b", "c"]);
    let none = BTreeMap::new();
    let busy = [state("a", BIG, &[("pool.vm-100-disk-0", "Primary", "UpToDate")]), state("b", BIG, &[("pool.vm-100-disk-0", "Secondary", "UpToDate")]), state("c", BIG, &[])];
    let e = plan_move(&inputs(&docs, &n, &busy, &none, 2), "pool.vm-100-disk-0", "a", "c").unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(e.to_string().contains("qm migrate 100 b --online"), "{e}");
    // The guest moved to b: a's Secondary replica may go; b is the source.
    let moved = [state("a", BIG, &[("pool.vm-100-disk-0", "Secondary", "UpToDate")]), state("b", BIG, &[("pool.vm-100-disk-0", "Primary", "UpToDate")]), state("c", BIG, &[])];
    let p = plan_move(&inputs(&docs, &n, &moved, &none, 2), "pool.vm-100-disk-0", "a", "c").unwrap();
    assert_eq!(p.moves[0].source, "b");
    // b Outdated: a is the only good copy and would leave the resource: refused.
    let stale = [state("a", BIG, &[("pool.vm-100-disk-0", "Secondary", "UpToDate")]), state("b", BIG, &[("pool.vm-100-disk-0", "Secondary", "Outdated")]), state("c", BIG, &[])];
    let e = plan_move(&inputs(&docs, &n, &stale, &none, 2), "pool.vm-100-disk-0", "a", "c").unwrap_err();
    assert!(e.to_string().contains("no staying replica is known UpToDate") && e.to_string().contains("b Outdated"), "{e}");
    // On DRBD 9 a stays connected and is the source.
    assert_eq!(plan_move(&inputs(&docs, &n, &stale, &none, 32), "pool.vm-100-disk-0", "a", "c").unwrap().moves[0].source, "a");
}

#[test]
fn a_target_must_be_registered_alive_allowed_and_have_room() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"])];
    let n = nodes(&["a", "b", "c"]);
    let none = BTreeMap::new();
    let up = |c_avail| [state("a", BIG, &[("pool.vm-100-disk-0", "Secondary", "UpToDate")]), state("b", BIG, &[("pool.vm-100-disk-0", "Secondary", "UpToDate")]), state("c", c_avail, &[])];
    let res = "pool.vm-100-disk-0";
    assert_eq!(plan_move(&inputs(&docs, &n, &up(BIG), &none, 32), res, "a", "x").unwrap_err().kind(), "not-found");
    assert_eq!(plan_move(&inputs(&docs, &n, &up(BIG), &none, 32), res, "a", "a").unwrap_err().kind(), "invalid-input");
    let e = plan_move(&inputs(&docs, &n, &up(1024), &none, 32), res, "a", "c").unwrap_err();
    assert!(e.to_string().contains("needs 4.0M"), "{e}");
    let e = plan_move(&inputs(&docs, &n, &up(BIG), &none, 32), res, "a", "b").unwrap_err();
    assert!(e.to_string().contains("b already holds"), "{e}");
    let e = plan_move(&inputs(&docs, &n, &up(BIG), &none, 32), res, "c", "b").unwrap_err();
    assert!(e.to_string().contains("no replica on c"), "{e}");
    let only_ab: BTreeMap<String, Option<Vec<String>>> = [("pool".to_string(), Some(vec!["a".to_string(), "b".to_string()]))].into();
    let e = plan_move(&inputs(&docs, &n, &up(BIG), &only_ab, 32), res, "a", "c").unwrap_err();
    assert!(e.to_string().contains("storage.cfg `nodes`"), "{e}");
    let mut silent = up(BIG);
    silent[2].updated = NOW - 3600;
    let e = plan_move(&inputs(&docs, &n, &silent, &none, 32), res, "a", "c").unwrap_err();
    assert!(e.to_string().contains("has not reported"), "{e}");
}

#[test]
fn evacuate_spreads_by_room_and_refuses_when_nothing_can_go() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"]), vol("vm-101-disk-0", &["a", "c"]), vol("vm-102-disk-0", &["b", "c"])];
    let n = nodes(&["a", "b", "c", "d"]);
    let none = BTreeMap::new();
    fn all_up(v: &[&'static str]) -> Vec<(&'static str, &'static str, &'static str)> {
        v.iter().map(|r| (*r, "Secondary", "UpToDate")).collect()
    }
    let states = [
        state("a", BIG, &all_up(&["pool.vm-100-disk-0", "pool.vm-101-disk-0"])),
        state("b", BIG, &all_up(&["pool.vm-100-disk-0", "pool.vm-102-disk-0"])),
        state("c", 6 << 20, &all_up(&["pool.vm-101-disk-0", "pool.vm-102-disk-0"])),
        state("d", 5 << 20, &[]),
    ];
    let p = plan_evacuate(&inputs(&docs, &n, &states, &none, 32), "a").unwrap();
    // vm-100 to c (b holds it; c has more room than d); vm-101 (on c already) to b.
    let got: Vec<(&str, &str)> = p.moves.iter().map(|m| (m.volname.as_str(), m.to.as_str())).collect();
    assert_eq!(got, [("vm-100-disk-0", "c"), ("vm-101-disk-0", "b")], "{p:?}");
    // Two nodes: nowhere to go, refused as a whole.
    let n2 = nodes(&["a", "b"]);
    let e = plan_evacuate(&inputs(&docs[..1], &n2, &states[..2], &none, 32), "a").unwrap_err();
    assert!(e.to_string().contains("no node without a replica of it is left"), "{e}");
    // No room anywhere: refused, naming what each node has.
    let tight = [states[0].clone(), state("b", 1 << 20, &[]), state("c", 1 << 20, &[]), state("d", 1 << 20, &[])];
    let e = plan_evacuate(&inputs(&docs, &n, &tight, &none, 32), "a").unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(e.to_string().contains("nothing can move off a") && e.to_string().contains("no node has room"), "{e}");
}

#[test]
fn replicas_grow_on_the_roomiest_nodes_and_shrink_by_the_least_useful_never_the_last_good_one() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"])];
    let n = nodes(&["a", "b", "c", "d"]);
    let none = BTreeMap::new();
    let res = "pool.vm-100-disk-0";
    let states = [
        state("a", BIG, &[(res, "Primary", "UpToDate")]),
        state("b", BIG, &[(res, "Secondary", "UpToDate")]),
        state("c", 6 << 20, &[]),
        state("d", 8 << 20, &[]),
    ];
    let i = inputs(&docs, &n, &states, &none, 32);
    let p = plan_replicas(&i, res, 3).unwrap();
    assert_eq!(p.resizes.iter().map(|r| (r.node.as_str(), r.add, r.node_id)).collect::<Vec<_>>(), [("d", true, 2)]);
    assert!(plan_replicas(&i, res, 2).unwrap().resizes.is_empty());
    for bad in [0, 4] {
        assert_eq!(plan_replicas(&i, res, bad).unwrap_err().kind(), "invalid-input");
    }
    // Down to 1: a is in use, so b goes.
    let p = plan_replicas(&i, res, 1).unwrap();
    assert_eq!(p.resizes.iter().map(|r| (r.node.as_str(), r.add)).collect::<Vec<_>>(), [("b", false)]);
    // b the only UpToDate one and a (Outdated) in use: nothing may go.
    let stale = [state("a", BIG, &[(res, "Primary", "Outdated")]), states[1].clone()];
    let e = plan_replicas(&inputs(&docs, &n, &stale, &none, 32), res, 1).unwrap_err();
    assert!(e.to_string().contains("last UpToDate one stays"), "{e}");
    // Three, c Inconsistent: c goes first.
    let docs3 = vec![vol("vm-100-disk-0", &["c", "a", "b"])];
    let s3 = [state("a", BIG, &[(res, "Secondary", "UpToDate")]), states[1].clone(), state("c", BIG, &[(res, "Secondary", "Inconsistent")])];
    let p = plan_replicas(&inputs(&docs3, &n, &s3, &none, 32), res, 2).unwrap();
    assert_eq!(p.resizes.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["c"]);
    // DRBD 8.4: exactly two.
    let e = plan_replicas(&inputs(&docs, &n, &states, &none, 2), res, 3).unwrap_err();
    assert!(e.kind() == "refused" && e.to_string().contains("exactly 2 nodes"), "{e}");
    // No room for a third anywhere.
    let tight = [states[0].clone(), states[1].clone(), state("c", 1 << 20, &[]), state("d", 1 << 20, &[])];
    let e = plan_replicas(&inputs(&docs, &n, &tight, &none, 32), res, 3).unwrap_err();
    assert!(e.to_string().contains("0 found"), "{e}");
}
