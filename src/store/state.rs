//! Observed state of a node, as its agent publishes it, in files that stay small:
//! the head `state/<node>.json` (heartbeat, space of its storages) and its replicas in
//! `state/<node>/NN.json`, SHARDS shards by a hash of the resource name.
//!
//! Why: pmxcfs refuses a file over 1 MiB with EFBIG (memdb.h), and one file holding
//! every replica of a node passed that at about 2,490 replicas
//! (measured on the real pmxcfs: tests/pmxcfs_store.rs writes that layout and gets EFBIG),
//! after which the agent could not publish at all.
//! In shards a node's state stays far below the cap at 10,000 volumes
//! (docs/ARCHITECTURE.md, "Store size"), a change of one replica rewrites one shard
//! rather than the whole state (pmxcfs sends every write to every node), and a reader
//! that wants one resource (activation) reads the head and one shard: the same cost at
//! 10 and at 10,000 volumes.
//!
//! Formats: a head of format 2 (STATE_FORMAT) keeps its volumes in the shards; a
//! head of format 1, written by drbdpool before the shards, holds them inline and is
//! still read as it is (its shard files, if any, are ignored). A drbdpool that knows
//! only format 1 refuses a format-2 head with "upgrade this node", never misreads it
//! as a node without replicas.
//!
//! Order of a write: the changed shards first, then the head. A reader that sees a
//! fresh heartbeat therefore sees shards at least as new as that heartbeat.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::docs::{NodeState, VolumeObserved};
use crate::backend::Space;
use super::{list_names, read_versioned_upto, remove_doc, write_atomic, write_doc, Store};
use crate::error::{Error, Result};

/// Shards per node: 10,000 replicas with two peers each are ~150 KB a shard.
pub const SHARDS: u32 = 32;
/// Format of a sharded head (and of its shards).
pub const STATE_FORMAT: u32 = 2;

/// Which shard holds a resource's observation.
pub fn shard_of(resource: &str) -> u32 {
    (crate::naming::fnv1a(resource.as_bytes()) % u64::from(SHARDS)) as u32
}

fn one() -> u32 {
    1
}

/// A head as read, with volumes of any lighter type `V` (format 1 carries them inline).
#[derive(Deserialize)]
struct HeadOf<V> {
    #[serde(default = "one")]
    format: u32,
    node: String,
    #[serde(default)]
    updated: u64,
    #[serde(default)]
    storages: BTreeMap<String, Space>,
    #[serde(default = "BTreeMap::new")]
    volumes: BTreeMap<String, V>,
}

/// A shard as read.
#[derive(Deserialize)]
struct ShardOf<V> {
    #[serde(default = "one")]
    format: u32,
    #[serde(default = "BTreeMap::new")]
    volumes: BTreeMap<String, V>,
}

/// A shard as written.
#[derive(Serialize)]
struct ShardOut<'a> {
    format: u32,
    node: &'a str,
    volumes: BTreeMap<&'a str, &'a VolumeObserved>,
}

/// The head as written: NodeState's fields without the volumes.
#[derive(Serialize)]
struct HeadOut<'a> {
    format: u32,
    node: &'a str,
    updated: u64,
    storages: &'a BTreeMap<String, Space>,
}

/// One node's published replicas, read into `V`: the head's heartbeat and space too.
pub struct Published<V> {
    /// The head's format: 1 for a state with its volumes inline (store/state.rs).
    pub format: u32,
    pub node: String,
    pub updated: u64,
    pub storages: BTreeMap<String, Space>,
    pub volumes: BTreeMap<String, V>,
}

impl Store {
    fn state_head_path(&self, node: &str) -> PathBuf {
        self.root().join("state").join(format!("{node}.json"))
    }

    fn state_shard_dir(&self, node: &str) -> PathBuf {
        self.root().join("state").join(node)
    }

    fn state_shard_path(&self, node: &str, shard: u32) -> PathBuf {
        self.state_shard_dir(node).join(format!("{shard:02}.json"))
    }

    /// Nodes that published a state (the heads' names).
    pub fn state_nodes(&self) -> Result<Vec<String>> {
        list_names(&self.root().join("state"))
    }

    /// A node's published state read into `V`; `only`: just that resource (head and one shard).
    pub fn published_as<V: DeserializeOwned + Send>(&self, node: &str, only: Option<&str>) -> Result<Option<Published<V>>> {
        let Some(head) = read_versioned_upto(&self.state_head_path(node), |h: &HeadOf<V>| h.format, STATE_FORMAT)? else {
            return Ok(None);
        };
        let mut volumes = head.volumes;
        if head.format >= STATE_FORMAT {
            volumes.extend(self.read_shards::<V>(node, only.map(shard_of))?);
        }
        if let Some(r) = only {
            volumes.retain(|k, _| k == r);
        }
        Ok(Some(Published { format: head.format, node: head.node, updated: head.updated, storages: head.storages, volumes }))
    }

    /// Every node's published state read into `V` (`list` wants role and disk only).
    pub fn all_published_as<V: DeserializeOwned + Send>(&self, only: Option<&str>) -> Result<Vec<Published<V>>> {
        let mut out = Vec::new();
        for n in self.state_nodes()? {
            if let Some(p) = self.published_as(&n, only)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Every node's heartbeat and space, without its volumes (placement, `node list`).
    pub fn node_heads(&self) -> Result<Vec<NodeState>> {
        let mut out = Vec::new();
        for n in self.state_nodes()? {
            let p = self.state_head_path(&n);
            if let Some(h) = read_versioned_upto(&p, |h: &HeadOf<serde::de::IgnoredAny>| h.format, STATE_FORMAT)? {
                out.push(NodeState::new(&h.node, h.updated, h.storages, BTreeMap::new()));
            }
        }
        Ok(out)
    }

    /// A node's whole state.
    pub fn node_state(&self, node: &str) -> Result<Option<NodeState>> {
        Ok(self.published_as::<VolumeObserved>(node, None)?.map(NodeState::from))
    }

    /// A node's state with only `resource` in its volumes: the head and one shard.
    pub fn node_state_of(&self, node: &str, resource: &str) -> Result<Option<NodeState>> {
        Ok(self.published_as::<VolumeObserved>(node, Some(resource))?.map(NodeState::from))
    }

    /// Every node's whole state.
    pub fn node_states(&self) -> Result<Vec<NodeState>> {
        Ok(self.all_published_as::<VolumeObserved>(None)?.into_iter().map(NodeState::from).collect())
    }

    /// Every node's state with only `resource` in its volumes (activation, fence, wait).
    pub fn node_states_of(&self, resource: &str) -> Result<Vec<NodeState>> {
        Ok(self.all_published_as::<VolumeObserved>(Some(resource))?.into_iter().map(NodeState::from).collect())
    }

    /// Publish a node's state, writing every shard that differs from what is on disk.
    pub fn put_node_state(&self, s: &NodeState) -> Result<()> {
        let on_disk = self.read_shards(&s.node, None)?;
        self.write_state(s, &on_disk)
    }

    /// Publish a node's state, writing only the shards that differ from `prev`, the
    /// state this process last published (the agent's memory). `None`: compare with disk.
    pub fn put_node_state_since(&self, prev: Option<&NodeState>, s: &NodeState) -> Result<()> {
        match prev {
            Some(p) if p.format >= STATE_FORMAT && p.node == s.node => self.write_state(s, &p.volumes),
            _ => self.put_node_state(s),
        }
    }

    /// The volumes in a node's shard files (not inline ones of a format-1 head): all of
    /// them, or just shard `only`.
    fn read_shards<V: DeserializeOwned + Send>(&self, node: &str, only: Option<u32>) -> Result<BTreeMap<String, V>> {
        let names = match only {
            Some(shard) => vec![format!("{shard:02}")],
            None => list_names(&self.state_shard_dir(node))?,
        };
        let dir = self.state_shard_dir(node);
        let shards = crate::fsio::read_all(&names, |s| {
            read_versioned_upto(&dir.join(format!("{s}.json")), |s: &ShardOf<V>| s.format, STATE_FORMAT)
        });
        let mut out = BTreeMap::new();
        for sh in shards {
            if let Some(sh) = sh? {
                out.extend(sh.volumes);
            }
        }
        Ok(out)
    }

    fn write_state(&self, s: &NodeState, before: &BTreeMap<String, VolumeObserved>) -> Result<()> {
        crate::naming::check_node_name(&s.node)?;
        let (new, old) = (split(&s.volumes), split(before));
        let dir = self.state_shard_dir(&s.node);
        for shard in 0..SHARDS {
            let (n, o) = (new.get(&shard), old.get(&shard));
            if n == o {
                continue;
            }
            let p = self.state_shard_path(&s.node, shard);
            match n {
                Some(v) => {
                    std::fs::create_dir_all(&dir).map_err(|e| Error::Store(format!("cannot create {}: {e}", dir.display())))?;
                    let out = ShardOut { format: STATE_FORMAT, node: &s.node, volumes: v.clone() };
                    // Compact: shards are for programs; `drbdpool status` shows them to people.
                    let data = serde_json::to_vec(&out).map_err(|e| Error::Store(format!("cannot encode {}: {e}", p.display())))?;
                    write_atomic(&p, &data)?;
                }
                None => remove_doc(&p)?,
            }
        }
        let head = HeadOut { format: STATE_FORMAT, node: &s.node, updated: s.updated, storages: &s.storages };
        write_doc(&self.state_head_path(&s.node), &head)
    }

    /// Remove a node's published state (head first: without it the shards are not read).
    pub fn remove_node_state(&self, node: &str) -> Result<()> {
        remove_doc(&self.state_head_path(node))?;
        for s in list_names(&self.state_shard_dir(node))? {
            remove_doc(&self.state_shard_dir(node).join(format!("{s}.json")))?;
        }
        match std::fs::remove_dir(self.state_shard_dir(node)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Store(format!("cannot remove {}: {e}", self.state_shard_dir(node).display()))),
        }
    }
}

/// Volumes by shard.
fn split(m: &BTreeMap<String, VolumeObserved>) -> BTreeMap<u32, BTreeMap<&str, &VolumeObserved>> {
    let mut b: BTreeMap<u32, BTreeMap<&str, &VolumeObserved>> = BTreeMap::new();
    for (k, v) in m {
        b.entry(shard_of(k)).or_default().insert(k.as_str(), v);
    }
    b
}

impl From<Published<VolumeObserved>> for NodeState {
    fn from(p: Published<VolumeObserved>) -> NodeState {
        NodeState { format: p.format, node: p.node, updated: p.updated, storages: p.storages, volumes: p.volumes }
    }
}

impl NodeState {
    /// A state as this build publishes it.
    pub fn new(node: &str, updated: u64, storages: BTreeMap<String, Space>, volumes: BTreeMap<String, VolumeObserved>) -> NodeState {
        NodeState { format: STATE_FORMAT, node: node.to_string(), updated, storages, volumes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(role: &str) -> VolumeObserved {
        VolumeObserved { ready: true, generation: 1, role: role.into(), disk: "UpToDate".into(), ..Default::default() }
    }

    fn state(n: usize) -> NodeState {
        let vols = (0..n).map(|i| (format!("dp-vm-{i}-disk-0"), obs("Secondary"))).collect();
        NodeState::new("pve1", 100, BTreeMap::new(), vols)
    }

    fn files(store: &Store) -> Vec<(String, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(store.root().join("state/pve1")).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            out.push((e.file_name().to_string_lossy().into_owned(), m.len(), m.modified().unwrap()));
        }
        out.sort();
        out
    }

    #[test]
    fn round_trip_whole_and_one_resource() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let s = state(500);
        store.put_node_state(&s).unwrap();
        assert_eq!(store.node_state("pve1").unwrap().unwrap(), s);
        let one = store.node_state_of("pve1", "dp-vm-7-disk-0").unwrap().unwrap();
        assert_eq!(one.volumes.keys().collect::<Vec<_>>(), ["dp-vm-7-disk-0"]);
        assert_eq!((one.updated, one.node.as_str()), (100, "pve1"));
        assert!(store.node_state_of("pve1", "dp-vm-9999-disk-0").unwrap().unwrap().volumes.is_empty());
        assert_eq!(store.node_states_of("dp-vm-7-disk-0").unwrap().len(), 1);
        // The head holds no volumes: `status` reads a few hundred bytes.
        let head = std::fs::metadata(store.root().join("state/pve1.json")).unwrap().len();
        assert!(head < 512, "head is {head} bytes");
    }

    #[test]
    fn a_change_of_one_replica_rewrites_one_shard_and_the_head() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let s = state(200);
        store.put_node_state(&s).unwrap();
        let before = files(&store);
        assert_eq!(before.len(), SHARDS as usize, "200 replicas fill every shard");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut t = s.clone();
        t.volumes.get_mut("dp-vm-3-disk-0").unwrap().role = "Primary".into();
        t.updated = 101;
        store.put_node_state_since(Some(&s), &t).unwrap();
        let after = files(&store);
        let changed: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).map(|(a, _)| a.0.clone()).collect();
        assert_eq!(changed, [format!("{:02}.json", shard_of("dp-vm-3-disk-0"))]);
        assert_eq!(store.node_state("pve1").unwrap().unwrap(), t);
        // Without memory the store compares with the disk: nothing to rewrite but the head.
        store.put_node_state(&t).unwrap();
        assert_eq!(files(&store), after);
    }

    #[test]
    fn a_shard_that_empties_is_removed_and_state_removal_takes_all() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let s = state(3);
        store.put_node_state(&s).unwrap();
        let mut t = s.clone();
        t.volumes.clear();
        store.put_node_state_since(Some(&s), &t).unwrap();
        assert!(files(&store).is_empty());
        assert!(store.node_state("pve1").unwrap().unwrap().volumes.is_empty());
        store.put_node_state(&s).unwrap();
        store.remove_node_state("pve1").unwrap();
        assert!(store.node_state("pve1").unwrap().is_none());
        assert!(!store.root().join("state/pve1").exists());
    }

    #[test]
    fn a_format_1_head_with_inline_volumes_is_read_and_its_stray_shards_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.put_node_state(&state(40)).unwrap();
        // An older drbdpool on that node wrote its state inline over the sharded one.
        let old = NodeState { format: 1, ..state(2) };
        write_doc(&store.root().join("state/pve1.json"), &old).unwrap();
        let got = store.node_state("pve1").unwrap().unwrap();
        assert_eq!(got.volumes, old.volumes);
        // The next publish of this build goes back to shards, compared with the disk.
        store.put_node_state_since(Some(&got), &state(5)).unwrap();
        assert_eq!(store.node_state("pve1").unwrap().unwrap().volumes, state(5).volumes);
    }

    #[test]
    fn a_newer_format_is_refused_not_misread() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        std::fs::write(store.root().join("state/pve1.json"), br#"{"format":3,"node":"pve1","updated":1}"#).unwrap();
        let e = store.node_state("pve1").unwrap_err().to_string();
        assert!(e.contains("upgrade this node"), "{e}");
    }

    #[test]
    fn ten_thousand_replicas_with_two_peers_stay_far_below_the_file_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let peer = |n: &str| crate::store::docs::PeerObserved {
            node: n.into(),
            connection: "Connected".into(),
            role: "Secondary".into(),
            disk: "UpToDate".into(),
            replication: "Established".into(),
            out_of_sync_kib: 0,
            sync_percent: None,
        };
        let vols = (0..10_000)
            .map(|i| {
                let o = VolumeObserved { size_kib: 33554432, peers: vec![peer("pve2"), peer("pve3")], ..obs("Secondary") };
                (format!("linstor-pool-vm-{}-disk-{}", 100 + i / 4, i % 4), o)
            })
            .collect();
        store.put_node_state(&NodeState::new("pve1", 1, BTreeMap::new(), vols)).unwrap();
        let biggest = files(&store).iter().map(|f| f.1).max().unwrap();
        assert!(biggest < 256 * 1024, "largest shard {biggest} bytes");
    }
}
