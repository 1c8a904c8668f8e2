//! DRBD's view of one resource, read against its volume document: the state this
//! node publishes (`VolumeObserved`, store/docs.rs) and the questions the node side
//! asks of DRBD (is it attached, open, due for its initial sync, is a fenced peer
//! healed). The parsers (events2.rs) give DRBD's words; this is the one place that
//! reads meaning into them, DRBD 8.4's differences included (8.4 has one peer, which
//! its events2 calls peer-node-id 0, conn-name `peer`: tests/fixtures/drbd84-real).

use super::ResourceStatus;
use crate::store::docs::{PeerObserved, VolumeDoc, VolumeObserved};

/// Disk states that mean "backing attached, metadata present".
pub fn attached(disk: &str) -> bool {
    matches!(disk, "UpToDate" | "Inconsistent" | "Outdated" | "Consistent" | "Negotiating")
}

/// " and open" (with who holds it, when the DRBD side says) for refusal messages;
/// None when no device of the resource is open.
pub fn open_note(st: &ResourceStatus) -> Option<String> {
    let d = st.devices.iter().find(|d| d.open == Some(true))?;
    Some(match d.extra.get("opened-by") {
        Some(by) => format!(" and open (by {by})"),
        None => " and open".into(),
    })
}

/// Translate DRBD's view of `vol` on node `me` into the published per-volume state.
/// `snapshots` is left empty (the agent's snapshot reconcile fills it).
pub fn volume(vol: &VolumeDoc, me: &str, st: &ResourceStatus) -> VolumeObserved {
    let dev = st.devices.first();
    let disk = dev.map(|d| d.disk.clone()).unwrap_or_else(|| "Diskless".into());
    let peers = st
        .connections
        .iter()
        .map(|c| {
            let others: Vec<_> = vol.replicas.iter().filter(|r| r.node != me).collect();
            // DRBD 8.4 has one peer, fakes peer-node-id 0 and names every connection "peer".
            let node = if others.len() == 1 && st.connections.len() == 1 {
                others[0].node.clone()
            } else {
                c.peer_node_id
                    .and_then(|id| others.iter().find(|r| r.node_id as u32 == id))
                    .map(|r| r.node.clone())
                    .unwrap_or_else(|| c.conn_name.clone())
            };
            let pd = c.peer_devices.first();
            PeerObserved {
                node,
                connection: c.connection.clone(),
                role: c.peer_role.clone(),
                disk: pd.map(|p| p.peer_disk.clone()).unwrap_or_else(|| "DUnknown".into()),
                replication: pd.map(|p| p.replication.clone()).unwrap_or_default(),
                out_of_sync_kib: pd.map(|p| p.out_of_sync_kib).unwrap_or(0),
                sync_percent: pd.and_then(|p| p.done_percent),
            }
        })
        .collect();
    VolumeObserved {
        ready: attached(&disk),
        generation: vol.generation,
        role: st.role.clone(),
        disk,
        open: dev.and_then(|d| d.open).unwrap_or(false),
        size_kib: dev.and_then(|d| d.size_kib).unwrap_or(0),
        peers,
        error: None,
        snapshots: Vec::new(),
        quorum: dev.and_then(|d| d.extra.get("quorum")).map(|q| q == "yes"),
    }
}

/// Every replica connected and Inconsistent, this one too: fresh metadata everywhere
/// (no node ever had good data, so nothing was ever written).
pub fn initial_sync_due(vol: &VolumeDoc, st: &ResourceStatus) -> bool {
    let local_inc = st.devices.first().is_some_and(|d| d.disk == "Inconsistent");
    let peers = vol.replicas.len().saturating_sub(1);
    local_inc
        && st.connections.len() == peers
        && st.connections.iter().all(|c| {
            c.connection == "Connected" && c.peer_devices.first().is_some_and(|p| p.peer_disk == "Inconsistent")
        })
}

/// Every replica connected and UpToDate: nothing left to skip.
pub fn all_uptodate(vol: &VolumeDoc, st: &ResourceStatus) -> bool {
    st.devices.first().is_some_and(|d| d.disk == "UpToDate")
        && st.connections.len() == vol.replicas.len().saturating_sub(1)
        && st.connections.iter().all(|c| {
            c.connection == "Connected" && c.peer_devices.first().is_some_and(|p| p.peer_disk == "UpToDate")
        })
}

/// Outdated peers of `vol` that this node's kernel shows healed: (node, its DRBD node id).
/// Healed = this disk UpToDate and the connection to that peer Connected, its disk UpToDate,
/// nothing out of sync. Judged by the replica that is not marked: with two replicas the one
/// that fenced, and with any number the one `volume force-primary` made the good copy (its
/// data is what the others resync to). A marked node never clears its own mark, because its
/// kernel may still show the link up for a ping timeout after the fencing side saw it go (the
/// lab's link_cut caught exactly that), and with three replicas another node's link says
/// nothing about the one that fenced.
pub fn healed_outdated(vol: &VolumeDoc, me: &str, st: &ResourceStatus) -> Vec<(String, u8)> {
    let forced_here = vol.forced.as_ref().is_some_and(|f| f.node == me);
    if (vol.replicas.len() != 2 && !forced_here) || vol.outdated.iter().any(|n| n == me) {
        return Vec::new();
    }
    if st.devices.is_empty() || !st.devices.iter().all(|d| d.disk == "UpToDate") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for peer in vol.replicas.iter().filter(|r| r.node != me && vol.outdated.contains(&r.node)) {
        // The connection to that peer: with two replicas and one connection it is that one (8.4's
        // events2 says peer-node-id:0 whatever the peer's id is, as `volume` above knows); else
        // DRBD 9's node id names it (a diskless tie-breaker is a second connection).
        let conn = match st.connections.as_slice() {
            [only] if vol.replicas.len() == 2 => Some(only),
            all => all.iter().find(|c| c.peer_node_id == Some(u32::from(peer.node_id))),
        };
        let healed = conn.is_some_and(|c| {
            c.connection == "Connected"
                && !c.peer_devices.is_empty()
                && c.peer_devices.iter().all(|p| super::peer_in_sync(&p.replication, &p.peer_disk, p.out_of_sync_kib))
        });
        if healed {
            out.push((peer.node.clone(), peer.node_id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drbd::events2::parse_now;
    use crate::drbd::{fixture, fixture9};

    /// A volume document with these replicas (node, node id), from its JSON form.
    fn doc(replicas: &[(&str, u8)]) -> VolumeDoc {
        let replicas: Vec<_> = replicas.iter().map(|(n, id)| serde_json::json!({"node": n, "node_id": id})).collect();
        serde_json::from_value(serde_json::json!({
            "storeid": "pool", "volname": "vm-100-disk-0", "vmid": 100, "resource": "r0", "size_kib": 262100,
            "minor": 0, "port": 7000, "replicas": replicas, "backend": {"kind": "lvmthin", "vg": "ssd", "thinpool": "data"},
            "secret": "s", "state": "ready", "created": 0, "generation": 3
        }))
        .unwrap()
    }

    /// 8.4's events2 calls its one peer node id 0 even where that is this node's own id:
    /// the peer is named after the other replica of the document.
    #[test]
    fn drbd84_names_its_one_peer_after_the_other_replica() {
        let st = parse_now(&fixture("drbdsetup-events2-now.primary.out")).resource("r0").unwrap();
        assert_eq!(st.connections[0].peer_node_id, Some(0), "fixture changed");
        let o = volume(&doc(&[("nodeA", 0), ("nodeB", 1)]), "nodeA", &st);
        assert_eq!((o.role.as_str(), o.disk.as_str(), o.ready, o.generation, o.size_kib), ("Primary", "UpToDate", true, 3, 262100));
        assert!(!o.open, "8.4 does not say: not open");
        assert_eq!(o.quorum, None, "8.4 has no quorum");
        let p = &o.peers[0];
        assert_eq!((p.node.as_str(), p.connection.as_str(), p.role.as_str(), p.disk.as_str()), ("nodeB", "Connected", "Secondary", "UpToDate"));
        // Fresh metadata on both, connected: the initial sync is due.
        let st = parse_now(&fixture("drbdsetup-events2-now-statistics.out")).resource("r0").unwrap();
        assert!(initial_sync_due(&doc(&[("nodeA", 0), ("nodeB", 1)]), &st));
        assert!(!initial_sync_due(&doc(&[("nodeA", 0), ("nodeB", 1), ("nodeC", 2)]), &st), "a replica is missing");
    }

    /// The fencing side of a healed 8.4 link drops the mark of its peer whatever the peer's node id:
    /// 8.4's events2 reports its one connection as peer-node-id 0, also when the peer is node 1.
    #[test]
    fn drbd84_heals_the_peer_whatever_its_node_id() {
        let st = parse_now(&fixture("drbdsetup-events2-now.primary.out")).resource("r0").unwrap();
        assert_eq!(st.connections[0].peer_node_id, Some(0), "fixture changed");
        for (me, peer) in [(("nodeA", 0), ("nodeB", 1)), (("nodeB", 1), ("nodeA", 0))] {
            let mut d = doc(&[me, peer]);
            d.outdated = vec![peer.0.to_string()];
            assert_eq!(healed_outdated(&d, me.0, &st), vec![(peer.0.to_string(), peer.1)], "{me:?} fenced {peer:?}");
        }
    }

    /// DRBD 9 with several peers: each is named by its node id.
    #[test]
    fn drbd9_names_peers_by_node_id() {
        let st = parse_now(&fixture9("drbdsetup-events2-now-statistics.3node-primary.node1.out")).resource("r0").unwrap();
        let o = volume(&doc(&[("pve1", 0), ("pve2", 1), ("pve3", 2)]), "pve1", &st);
        let names: Vec<_> = o.peers.iter().map(|p| (p.node.as_str(), p.replication.as_str())).collect();
        assert_eq!(names, vec![("pve3", "Established"), ("pve2", "Established")]);
        assert_eq!(o.quorum, Some(true));
        let lost = parse_now(&fixture9("drbdsetup-events2-now-statistics.3node-no-quorum-primary.node2.out")).resource("r0").unwrap();
        assert_eq!(volume(&doc(&[("pve1", 0), ("pve2", 1), ("pve3", 2)]), "pve2", &lost).quorum, Some(false));
        // Not a replica of the document: DRBD's connection name stands in.
        let o = volume(&doc(&[("pve1", 0), ("pve2", 1)]), "pve1", &st);
        assert_eq!(o.peers.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(), vec!["node3", "pve2"]);
        assert!(all_uptodate(&doc(&[("pve1", 0), ("pve2", 1), ("pve3", 2)]), &st));
        assert!(!initial_sync_due(&doc(&[("pve1", 0), ("pve2", 1), ("pve3", 2)]), &st));
    }
}
