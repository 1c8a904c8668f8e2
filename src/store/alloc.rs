//! Minor numbers, TCP ports and per-resource node ids, derived from the existing
//! VolumeDocs while the caller holds the `drbdpool-alloc` lock. There is no
//! separate allocator file: the VolumeDoc written in state `creating` is the
//! reservation, so a crash leaks nothing that `free` or the agent cannot clean.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use crate::error::{Error, Result};
use crate::store::docs::VolumeDoc;

/// Minors below 1000 are left to admins' hand-made resources.
pub const MINORS: RangeInclusive<u32> = 1000..=1_048_575; // DRBD's minor limit is 2^20-1
pub const PORTS: RangeInclusive<u16> = 7000..=7999;
pub const MAX_NODE_ID: u8 = 31;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub minors: RangeInclusive<u32>,
    pub ports: RangeInclusive<u16>,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges { minors: MINORS, ports: PORTS }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub minor: u32,
    pub port: u16,
    /// One per replica node, in the order given.
    pub node_ids: Vec<u8>,
}

/// Allocate for a new resource on `nodes` (placement order), given every existing
/// volume of every drbdpool storage. Minors are unique cluster-wide (the device
/// path `/dev/drbd<minor>` is the same on every node); a port only has to be free
/// on the nodes that will listen on it, so it is unique among the volumes that
/// share a node with this one.
pub fn allocate(existing: &[VolumeDoc], nodes: &[String], r: &Ranges) -> Result<Allocation> {
    if nodes.is_empty() || nodes.len() > MAX_NODE_ID as usize + 1 {
        return Err(Error::InvalidInput(format!("a resource needs 1..={} replica nodes, got {}", MAX_NODE_ID as usize + 1, nodes.len())));
    }
    let minors: BTreeSet<u32> = existing.iter().map(|v| v.minor).collect();
    let minor = lowest_free(r.minors.clone(), &minors).ok_or_else(|| {
        Error::Conflict(format!(
            "all DRBD minors {}..{} are in use ({} volumes): free unused volumes first",
            r.minors.start(),
            r.minors.end(),
            existing.len()
        ))
    })?;
    let ports: BTreeSet<u32> = existing
        .iter()
        .filter(|v| v.replicas.iter().any(|x| nodes.contains(&x.node)))
        .map(|v| v.port as u32)
        .collect();
    let pr = (*r.ports.start() as u32)..=(*r.ports.end() as u32);
    let port = lowest_free(pr, &ports).ok_or_else(|| {
        Error::Conflict(format!(
            "all replication ports {}-{} are in use on node(s) {}: free unused volumes there or place the volume on other nodes",
            r.ports.start(),
            r.ports.end(),
            nodes.join(", ")
        ))
    })? as u16;
    Ok(Allocation { minor, port, node_ids: (0..nodes.len() as u8).collect() })
}

fn lowest_free(range: RangeInclusive<u32>, used: &BTreeSet<u32>) -> Option<u32> {
    // `used` is sorted: walk it once instead of probing every number.
    let mut cand = *range.start();
    for &u in used.range(range.clone()) {
        if u > cand {
            break;
        }
        if u == cand {
            cand = cand.checked_add(1)?;
        }
    }
    (cand <= *range.end()).then_some(cand)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(minor: u32, port: u16, nodes: &[&str]) -> VolumeDoc {
        let volname = format!("vm-1-disk-{minor}");
        VolumeDoc { resource: format!("r{minor}"), size_kib: 1024, minor, port, ..VolumeDoc::for_test("pool", &volname, nodes) }
    }
    fn n(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lowest_free_values() {
        let a = allocate(&[], &n(&["a", "b"]), &Ranges::default()).unwrap();
        assert_eq!(a, Allocation { minor: 1000, port: 7000, node_ids: vec![0, 1] });
        let ex = vec![doc(1000, 7000, &["a", "b"]), doc(1002, 7002, &["a", "b"]), doc(5, 7001, &["b", "c"])];
        let a = allocate(&ex, &n(&["a", "b"]), &Ranges::default()).unwrap();
        assert_eq!((a.minor, a.port), (1001, 7003));
        // Ports are per node: c and d share no node with the volumes on port 7000.
        let a = allocate(&ex, &n(&["c", "d"]), &Ranges::default()).unwrap();
        assert_eq!((a.minor, a.port), (1001, 7000));
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let r = Ranges { minors: 1000..=1001, ports: 7000..=7001 };
        let ex = vec![doc(1000, 7000, &["a"]), doc(1001, 7001, &["b"])];
        let e = allocate(&ex, &n(&["c"]), &r).unwrap_err();
        assert!(e.to_string().contains("minors 1000..1001"), "{e}");
        let ex = vec![doc(1000, 7000, &["a"]), doc(1001, 7001, &["a"])];
        let r = Ranges { minors: 1000..=1005, ports: 7000..=7001 };
        let e = allocate(&ex, &n(&["a", "b"]), &r).unwrap_err();
        assert_eq!(e.kind(), "conflict");
        assert!(e.to_string().contains("ports 7000-7001") && e.to_string().contains("a, b"), "{e}");
        assert!(allocate(&ex, &[], &r).is_err());
    }
}
