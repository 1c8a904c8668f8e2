//! Shared helpers of the agent tests: a temp store with registered nodes, the
//! file backend mapped to one directory per node, loop-device cleanup.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drbdpool::node::{BackendFactory, LocalNode};
use drbdpool::backend::file::FileBackend;
use drbdpool::drbd::sim::SimDrbd;
use drbdpool::exec::RealRunner;
use drbdpool::store::docs::{BackendKind, BackendSpec, NodeDoc, VolumeDoc, VolumeState};
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
    /// Like `local`, but the backend claims to be thick (thin() false), as LVM thick is.
    pub fn local_thick(&self, node: &str) -> LocalNode {
        let dir = self.node_dir(node).to_string_lossy().into_owned();
        let factory: BackendFactory = Arc::new(move |_spec: &BackendSpec| {
            Ok(Box::new(Thick(FileBackend::new(&dir, Arc::new(RealRunner))?)) as Box<dyn drbdpool::backend::Backend>)
        });
        LocalNode::with_backends(self.store.clone(), node, factory, Box::new(SimDrbd::new(self.sim_dir(), node).unwrap()))
    }
    pub fn sim(&self, node: &str) -> SimDrbd {
        SimDrbd::new(self.sim_dir(), node).unwrap()
    }
    pub fn volume(&self, res: &str, nodes: &[&str], size_kib: u64) -> VolumeDoc {
        VolumeDoc {
            vmid: 100,
            resource: res.into(),
            size_kib,
            backend: BackendSpec { kind: BackendKind::File, vg: None, thinpool: None, dir: Some(self.shared_dir()) },
            secret: "secret".into(),
            state: VolumeState::Creating,
            created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), // a `creating` doc older than the create expiry is rolled back
            ..VolumeDoc::for_test("pool1", &format!("{res}-vol"), nodes)
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

/// A file backend that reports itself thick: exercises the full-initial-sync path.
pub struct Thick(pub FileBackend);

impl drbdpool::backend::Backend for Thick {
    fn create(&self, n: &str, k: u64) -> drbdpool::error::Result<drbdpool::backend::Backing> {
        self.0.create(n, k)
    }
    fn remove(&self, n: &str) -> drbdpool::error::Result<()> {
        self.0.remove(n)
    }
    fn resize(&self, n: &str, k: u64) -> drbdpool::error::Result<drbdpool::backend::Backing> {
        self.0.resize(n, k)
    }
    fn lookup(&self, n: &str) -> drbdpool::error::Result<Option<drbdpool::backend::Backing>> {
        self.0.lookup(n)
    }
    fn space(&self) -> drbdpool::error::Result<drbdpool::store::docs::Space> {
        self.0.space()
    }
    fn thin(&self) -> bool {
        false
    }
    fn snapshot(&self, n: &str, s: &str) -> drbdpool::error::Result<()> {
        self.0.snapshot(n, s)
    }
    fn remove_snapshot(&self, n: &str, s: &str) -> drbdpool::error::Result<()> {
        self.0.remove_snapshot(n, s)
    }
    fn rollback(&self, n: &str, s: &str) -> drbdpool::error::Result<()> {
        self.0.rollback(n, s)
    }
    fn can_snapshot(&self) -> bool {
        false
    }
}
