//! Shared helpers of the agent tests: a temp store with registered nodes, the
//! file backend mapped to one directory per node, loop-device cleanup.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drbdpool::agent::{BackendFactory, LocalNode};
use drbdpool::backend::file::FileBackend;
use drbdpool::drbd::sim::SimDrbd;
use drbdpool::exec::RealRunner;
use drbdpool::store::docs::{BackendKind, BackendSpec, NodeDoc, Replica, VolumeDoc, VolumeState};
use drbdpool::store::Store;

pub fn can_loop() -> bool {
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: /dev/loop-control missing: no loop devices here");
        return false;
    }
    true
}

/// A test world: store, sim dir, per-node image dirs. Detaches its loop devices on drop.
pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub store: Store,
}

impl Lab {
    pub fn new(nodes: &[&str]) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        for (i, n) in nodes.iter().enumerate() {
            store.put_node(&NodeDoc { format: 1, name: n.to_string(), address: format!("10.99.0.{}", i + 1) }).unwrap();
            std::fs::create_dir_all(tmp.path().join("images").join(n)).unwrap();
        }
        std::fs::create_dir_all(tmp.path().join("images").join("shared")).unwrap();
        Lab { tmp, store }
    }
    pub fn base(&self) -> &Path {
        self.tmp.path()
    }
    pub fn sim_dir(&self) -> PathBuf {
        self.base().join("sim")
    }
    /// The directory the storage names (each node maps it to its own).
    pub fn shared_dir(&self) -> String {
        self.base().join("images").join("shared").to_string_lossy().into()
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.base().join("images").join(node)
    }
    pub fn image(&self, node: &str, res: &str) -> PathBuf {
        self.node_dir(node).join(format!("{res}.img"))
    }
    /// A LocalNode whose file backend keeps `node`'s images in its own directory
    /// (on a real cluster each node has its own disk behind the same path).
    pub fn local(&self, node: &str) -> LocalNode {
        let dir = self.node_dir(node).to_string_lossy().into_owned();
        let factory: BackendFactory = Arc::new(move |spec: &BackendSpec| {
            assert_eq!(spec.kind, BackendKind::File);
            Ok(Box::new(FileBackend::new(&dir, Arc::new(RealRunner))?) as Box<dyn drbdpool::backend::Backend>)
        });
        LocalNode::with_backends(self.store.clone(), node, factory, Box::new(SimDrbd::new(self.sim_dir(), node).unwrap()))
    }
    pub fn sim(&self, node: &str) -> SimDrbd {
        SimDrbd::new(self.sim_dir(), node).unwrap()
    }
    pub fn volume(&self, res: &str, nodes: &[&str], size_kib: u64) -> VolumeDoc {
        VolumeDoc {
            format: 1,
            storeid: "pool1".into(),
            volname: format!("{res}-vol"),
            vmid: 100,
            resource: res.into(),
            size_kib,
            minor: 1000,
            port: 7000,
            replicas: nodes.iter().enumerate().map(|(i, n)| Replica { node: n.to_string(), node_id: i as u8 }).collect(),
            backend: BackendSpec { kind: BackendKind::File, vg: None, thinpool: None, dir: Some(self.shared_dir()) },
            secret: "secret".into(),
            state: VolumeState::Creating,
            base: false,
            parent: None,
            snapshots: vec![],
            outdated: vec![],
            dual_primary: None,
            created: 1,
            generation: 1,
        }
    }
    /// Loop devices attached to `file`.
    pub fn loops(file: &Path) -> Vec<String> {
        let out = std::process::Command::new("losetup").arg("-j").arg(file).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(':').next().map(String::from)).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let images = self.base().join("images");
        for d in std::fs::read_dir(&images).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                for l in Lab::loops(&f.path()) {
                    let _ = std::process::Command::new("losetup").args(["-d", &l]).status();
                }
            }
        }
    }
}
