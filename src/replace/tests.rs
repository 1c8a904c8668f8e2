use super::*;
use crate::store::docs::{PeerObserved, Space, VolumeObserved};

const NOW: u64 = 1_000_000;

fn nodes(v: &[&str]) -> Vec<NodeDoc> {
    v.iter().map(|n| NodeDoc { format: 1, name: n.to_string(), address: "10.0.0.1".into() }).collect()
}

/// A node's published state `age` seconds old, with `vols` = (resource, disk, peers connected).
fn state(node: &str, age: u64, avail: u64, vols: &[(&str, &str, &[(&str, &str)])]) -> NodeState {
    let mut s = NodeState { format: 1, node: node.into(), updated: NOW - age, storages: Default::default(), volumes: Default::default() };
    s.storages.insert("pool".into(), Space { total: 1 << 40, avail, used: 0 });
    for (res, disk, peers) in vols {
        let peers = peers
            .iter()
            .map(|(n, c)| PeerObserved { node: n.to_string(), connection: c.to_string(), role: "Unknown".into(), disk: "DUnknown".into(), replication: "Off".into(), out_of_sync_kib: 0, sync_percent: None })
            .collect();
        s.volumes.insert(res.to_string(), VolumeObserved { ready: true, generation: 1, role: "Secondary".into(), disk: disk.to_string(), peers, ..Default::default() });
    }
    s
}

fn vol(name: &str, on: &[&str]) -> VolumeDoc {
    VolumeDoc { resource: format!("pool.{name}"), ..VolumeDoc::for_test("pool", name, on) }
}

fn run(docs: &[VolumeDoc], states: &[NodeState], membership: Option<&Membership>) -> Result<Plan> {
    let n = nodes(&["a", "b", "c"]);
    plan(&Inputs { old: "a", new: "c", docs, nodes: &n, states, membership, now: NOW, gone_after: Duration::from_secs(150) })
}

const BIG: u64 = 1 << 40;

#[test]
fn a_dead_nodes_replicas_move_to_the_new_node_from_an_uptodate_survivor() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"]), vol("vm-101-disk-0", &["b", "a"]), vol("vm-102-disk-0", &["b", "c"])];
    let states = [
        state("a", 3600, BIG, &[]),
        state("b", 5, BIG, &[("pool.vm-100-disk-0", "UpToDate", &[("a", "Connecting")]), ("pool.vm-101-disk-0", "UpToDate", &[("a", "Connecting")])]),
        state("c", 5, BIG, &[]),
    ];
    let p = run(&docs, &states, None).unwrap();
    assert!(p.skipped.is_empty(), "{p:?}");
    let got: Vec<(&str, &str, u8)> = p.moves.iter().map(|m| (m.volname.as_str(), m.source.as_str(), m.node_id)).collect();
    // Node ids: never OLD's (a had 0 in the first, 1 in the second), never a survivor's.
    assert_eq!(got, [("vm-100-disk-0", "b", 2), ("vm-101-disk-0", "b", 2)]);
    // vm-102 uses port 7000 on c already: every moved volume (all on port 7000) gets another.
    let ports: BTreeSet<u16> = p.moves.iter().map(|m| m.port.expect("a new port")).collect();
    assert_eq!(ports, [7001, 7002].into(), "{p:?}");
}

#[test]
fn a_node_that_may_be_alive_is_refused_and_nothing_moves() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"])];
    let c = state("c", 5, BIG, &[]);
    // Its agent reported a minute ago.
    let e = run(&docs, &[state("a", 60, BIG, &[]), state("b", 5, BIG, &[("pool.vm-100-disk-0", "UpToDate", &[])]), c.clone()], None).unwrap_err();
    assert!(e.to_string().contains("reported 60s ago") && e.to_string().contains("gone for good"), "{e}");
    // Silent, but a survivor's DRBD is still connected to it.
    let b = state("b", 5, BIG, &[("pool.vm-100-disk-0", "UpToDate", &[("a", "Connected")])]);
    let e = run(&docs, &[b, c.clone()], None).unwrap_err();
    assert!(e.to_string().contains("still Connected to a"), "{e}");
    // Silent, but online in the membership.
    let m = Membership { source: "/etc/pve/.members".into(), quorate: true, online: [("a".to_string(), true)].into() };
    let b = state("b", 5, BIG, &[("pool.vm-100-disk-0", "UpToDate", &[("a", "Connecting")])]);
    let e = run(&docs, &[b, c], Some(&m)).unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(e.to_string().contains("online in the cluster membership"), "{e}");
}

#[test]
fn a_volume_without_an_uptodate_survivor_is_left_as_it_is() {
    let mut marked = vol("vm-101-disk-0", &["a", "b"]);
    marked.outdated = vec!["b".into()];
    let docs = vec![vol("vm-100-disk-0", &["a", "b"]), marked, vol("vm-102-disk-0", &["a"]), VolumeDoc { state: VolumeState::Creating, ..vol("vm-103-disk-0", &["a", "b"]) }];
    let b = state(
        "b",
        5,
        BIG,
        &[("pool.vm-100-disk-0", "Consistent", &[]), ("pool.vm-101-disk-0", "UpToDate", &[]), ("pool.vm-103-disk-0", "Inconsistent", &[])],
    );
    let p = run(&docs, &[b, state("c", 5, BIG, &[])], None).unwrap();
    assert!(p.moves.is_empty(), "{p:?}");
    let why: BTreeMap<&str, &str> = p.skipped.iter().map(|s| (s.volume.as_str(), s.why.as_str())).collect();
    assert!(why["pool:vm-100-disk-0"].contains("b Consistent") && why["pool:vm-100-disk-0"].contains("only good copy"), "{why:?}");
    assert!(why["pool:vm-101-disk-0"].contains("b marked outdated"), "{why:?}");
    assert!(why["pool:vm-102-disk-0"].contains("no other replica"), "{why:?}");
    assert!(why["pool:vm-103-disk-0"].contains("being created"), "{why:?}");
}

#[test]
fn the_new_node_must_be_registered_alive_and_have_room() {
    let docs = vec![vol("vm-100-disk-0", &["a", "b"])];
    let b = state("b", 5, BIG, &[("pool.vm-100-disk-0", "UpToDate", &[])]);
    let e = run(&docs, &[b.clone()], None).unwrap_err();
    assert!(e.to_string().contains("node c's agent has not reported"), "{e}");
    // 4096 KiB needed, 1 MiB free.
    let e = run(&docs, &[b.clone(), state("c", 5, 1 << 20, &[])], None).unwrap_err();
    assert!(e.to_string().contains("need 4.0 MiB") || e.to_string().contains("need 4"), "{e}");
    let n = nodes(&["a", "b"]);
    let states = [b, state("c", 5, BIG, &[])];
    let e = plan(&Inputs { old: "a", new: "c", docs: &docs, nodes: &n, states: &states, membership: None, now: NOW, gone_after: Duration::from_secs(150) }).unwrap_err();
    assert_eq!(e.kind(), "not-found");
    let e = plan(&Inputs { old: "a", new: "a", docs: &docs, nodes: &n, states: &states, membership: None, now: NOW, gone_after: Duration::from_secs(150) }).unwrap_err();
    assert_eq!(e.kind(), "invalid-input");
}
