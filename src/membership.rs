//! The cluster membership as pmxcfs publishes it in `/etc/pve/.members`
//! (JSON made by pmxcfs's status.c: `cluster.quorate`, and per node `online`).
//!
//! drbdpool asks it two things: is this node in the quorate partition (the
//! fence-peer handler fails at once without, instead of blocking on a write),
//! and has a peer left that partition (activation then need not wait for the
//! peer's last published Primary claim to grow stale: a node outside the
//! quorate membership either is dead or has no quorum, and then its own
//! fence-peer fails and DRBD keeps its I/O frozen).
//!
//! The file is found beside the store: `/etc/pve/.members` when the store is
//! under /etc/pve, else `DRBDPOOL_MEMBERS` (tests). No file, no membership:
//! callers then keep their decisions without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub source: PathBuf,
    pub quorate: bool,
    /// Every node of the cluster, and whether it is in this node's partition.
    pub online: BTreeMap<String, bool>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    cluster: Option<RawCluster>,
    #[serde(default)]
    nodelist: BTreeMap<String, RawNode>,
}

#[derive(Deserialize)]
struct RawCluster {
    #[serde(default)]
    quorate: u8,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    online: u8,
}

impl Membership {
    /// Where the membership of `store`'s cluster is published, if anywhere.
    pub fn path_for(store: &Store) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("DRBDPOOL_MEMBERS").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        store.root().starts_with("/etc/pve").then(|| PathBuf::from("/etc/pve/.members"))
    }

    /// The membership, or `None` where none is published (a test store, a
    /// node without pmxcfs, a standalone pmxcfs with no cluster yet).
    pub fn of_store(store: &Store) -> Result<Option<Membership>> {
        match Self::path_for(store) {
            Some(p) => Self::read(&p),
            None => Ok(None),
        }
    }

    pub fn read(path: &Path) -> Result<Option<Membership>> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Store(format!("cannot read the cluster membership {}: {e}", path.display()))),
        };
        Self::parse(path, &data)
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<Option<Membership>> {
        // A standalone pmxcfs answers `{}`: no cluster, no membership to go by.
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(None);
        }
        let raw: Raw = serde_json::from_slice(data)
            .map_err(|e| Error::Store(format!("{} is not the membership pmxcfs publishes: {e}", path.display())))?;
        let Some(cluster) = raw.cluster else { return Ok(None) };
        Ok(Some(Membership {
            source: path.to_path_buf(),
            quorate: cluster.quorate == 1,
            online: raw.nodelist.into_iter().map(|(n, v)| (n, v.online == 1)).collect(),
        }))
    }

    /// Has `node` left this node's quorate partition? False whenever we cannot
    /// tell: no quorum here, or a node the cluster does not know by that name.
    pub fn departed(&self, node: &str) -> bool {
        self.quorate && self.online.get(node) == Some(&false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape pmxcfs's cfs_create_memberlist_msg writes.
    const TWO_NODES_ONE_GONE: &str = r#"{
"nodename": "pve2",
"version": 7,
"cluster": { "name": "lab", "version": 2, "nodes": 2, "quorate": 1 },
"nodelist": {
  "pve1": { "id": 1, "online": 0},
  "pve2": { "id": 2, "online": 1, "ip": "10.213.0.2"}
  }
}
"#;

    #[test]
    fn reads_what_pmxcfs_publishes() {
        let m = Membership::parse(Path::new(".members"), TWO_NODES_ONE_GONE.as_bytes()).unwrap().unwrap();
        assert!(m.quorate);
        assert!(m.departed("pve1"));
        assert!(!m.departed("pve2"));
        assert!(!m.departed("pve3"), "an unknown name is never taken as departed");
        let lost = TWO_NODES_ONE_GONE.replace("\"quorate\": 1", "\"quorate\": 0");
        let m = Membership::parse(Path::new(".members"), lost.as_bytes()).unwrap().unwrap();
        assert!(!m.departed("pve1"), "without quorum here nothing is known of the others");
    }

    #[test]
    fn standalone_and_broken() {
        assert_eq!(Membership::parse(Path::new("m"), b"{}\n").unwrap(), None);
        assert_eq!(Membership::parse(Path::new("m"), b"").unwrap(), None);
        let e = Membership::parse(Path::new("m"), b"{not json").unwrap_err();
        assert_eq!(e.kind(), "store");
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Membership::read(&d.path().join("none")).unwrap(), None);
    }
}
