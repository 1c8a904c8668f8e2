//! Which nodes hold the replicas of a new volume: the storage's replica count,
//! this node first when it is registered and has room (reads stay local and
//! the creating node does not wait on the network for its first writes), then
//! the nodes with the most free space from their published NodeState; nodes that
//! published nothing come last; ties by name. The storage's `nodes` list is honoured.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::invalid;
use crate::store::docs::{NodeDoc, NodeState};

pub const DEFAULT_REPLICAS: usize = 2;
pub const MAX_REPLICAS: usize = 3;

/// `drbdpool-replicas` from storage.cfg: 1..=3, default 2.
pub fn replica_count(prop: Option<&str>) -> Result<usize> {
    match prop.map(str::trim) {
        None | Some("") => Ok(DEFAULT_REPLICAS),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
            _ => Err(invalid!("storage property drbdpool-replicas '{s}' is not valid: use 1, 2 or 3 (default 2)")),
        },
    }
}

pub struct Request<'a> {
    pub storeid: &'a str,
    pub replicas: usize,
    pub local: &'a str,
    pub size_bytes: u64,
    /// storage.cfg `nodes` (None: all nodes).
    pub allowed: Option<&'a [String]>,
}

/// Pick `replicas` node names, in placement order (the first one creates the data).
pub fn place(req: &Request, nodes: &[NodeDoc], states: &[NodeState]) -> Result<Vec<String>> {
    let avail: BTreeMap<&str, u64> = states
        .iter()
        .filter_map(|s| s.storages.get(req.storeid).map(|sp| (s.node.as_str(), sp.avail)))
        .collect();
    let mut cands: Vec<(&str, Option<u64>)> = nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| req.allowed.is_none_or(|a| a.iter().any(|x| x == n)))
        .map(|n| (n, avail.get(n).copied()))
        .collect();
    let fits = |a: Option<u64>| a.is_none_or(|a| a >= req.size_bytes);
    cands.sort_by(|a, b| {
        let la = a.0 == req.local && fits(a.1);
        let lb = b.0 == req.local && fits(b.1);
        lb.cmp(&la)
            .then(b.1.is_some().cmp(&a.1.is_some()))
            .then(b.1.cmp(&a.1))
            .then(a.0.cmp(b.0))
    });
    if cands.len() < req.replicas {
        let names: Vec<&str> = cands.iter().map(|c| c.0).collect();
        let registered: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(Error::Refused(format!(
            "storage '{}' needs {} replica node(s) but only {} can hold them ({}){}; registered drbdpool nodes: {}. \
             Register nodes with `drbdpool node add <name> --address <ip>` or lower drbdpool-replicas",
            req.storeid,
            req.replicas,
            names.len(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") },
            req.allowed.map(|a| format!(" within the storage's nodes list [{}]", a.join(","))).unwrap_or_default(),
            if registered.is_empty() { "none".to_string() } else { registered.join(", ") },
        )));
    }
    Ok(cands.into_iter().take(req.replicas).map(|c| c.0.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Space;

    fn nodes(v: &[&str]) -> Vec<NodeDoc> {
        v.iter().map(|n| NodeDoc { format: 1, name: n.to_string(), address: "10.0.0.1".into() }).collect()
    }
    fn st(node: &str, avail: u64) -> NodeState {
        let mut s = NodeState { format: 1, node: node.into(), updated: 0, storages: Default::default(), volumes: Default::default() };
        s.storages.insert("pool".into(), Space { total: 100, avail, used: 100 - avail });
        s
    }
    fn req<'a>(n: usize, local: &'a str, allowed: Option<&'a [String]>) -> Request<'a> {
        Request { storeid: "pool", replicas: n, local, size_bytes: 10, allowed }
    }

    #[test]
    fn count() {
        assert_eq!(replica_count(None).unwrap(), 2);
        assert_eq!(replica_count(Some("3")).unwrap(), 3);
        for bad in ["0", "4", "two", "-1"] {
            assert_eq!(replica_count(Some(bad)).unwrap_err().kind(), "invalid-input");
        }
    }

    #[test]
    fn local_first_then_free_space_then_unknown_then_name() {
        let ns = nodes(&["a", "b", "c", "d", "e"]);
        let ss = vec![st("b", 50), st("c", 80), st("d", 80)];
        assert_eq!(place(&req(3, "a", None), &ns, &ss).unwrap(), ["a", "c", "d"]);
        assert_eq!(place(&req(2, "x", None), &ns, &ss).unwrap(), ["c", "d"]);
        assert_eq!(place(&req(5, "x", None), &ns, &ss).unwrap(), ["c", "d", "b", "a", "e"]);
        // Local node without room is not preferred.
        let ss2 = vec![st("a", 5), st("b", 50)];
        assert_eq!(place(&req(2, "a", None), &ns, &ss2).unwrap(), ["b", "a"]);
    }

    #[test]
    fn honours_nodes_list_and_refuses_too_few() {
        let ns = nodes(&["a", "b", "c"]);
        let allowed = vec!["b".to_string(), "c".to_string()];
        assert_eq!(place(&req(2, "a", Some(&allowed)), &ns, &[]).unwrap(), ["b", "c"]);
        let e = place(&req(3, "a", Some(&allowed)), &ns, &[]).unwrap_err();
        assert_eq!(e.kind(), "refused");
        assert!(e.to_string().contains("(b, c)") && e.to_string().contains("a, b, c"), "{e}");
        let e = place(&req(2, "a", None), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
    }
}
