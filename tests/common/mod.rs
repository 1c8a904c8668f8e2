//! Test doubles for handler tests: a fake local node (NodeOps) that keeps its
//! replicas in memory and publishes its NodeState like its agent would, and fake
//! peer agents that publish the state of other nodes from the store.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use drbdpool::error::{Error, Result};
use drbdpool::node::{NodeHandle, NodeOps};
use drbdpool::store::docs::{BackendSpec, NodeDoc, NodeState, PeerObserved, Space, VolumeDoc, VolumeObserved, VolumeState};
use drbdpool::store::Store;

pub const TOTAL: u64 = 100 << 30;
pub const AVAIL: u64 = 60 << 30;

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn store_with_nodes(nodes: &[&str]) -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        s.put_node(&NodeDoc { format: 1, name: n.to_string(), address: format!("10.0.0.{}", i + 1) }).unwrap();
    }
    (d, s)
}

pub struct FakeNode {
    pub name: String,
    pub store: Store,
    pub replicas: Mutex<BTreeMap<String, VolumeObserved>>,
    pub calls: Mutex<Vec<String>>,
    /// Disk state of new replicas after the initial sync skip.
    pub disk_after_create: Mutex<String>,
    /// Publish this node's NodeState (off when fake agents publish for this node too).
    pub publishes: bool,
    /// The refusal `promote` returns instead of promoting (DRBD saying no).
    pub promote_refusal: Mutex<Option<String>>,
}

impl FakeNode {
    pub fn new(name: &str, store: &Store) -> FakeNode {
        let f = Self::unpublished(name, store);
        f.publish();
        f
    }
    fn unpublished(name: &str, store: &Store) -> FakeNode {
        FakeNode {
            name: name.into(),
            store: store.clone(),
            replicas: Mutex::new(BTreeMap::new()),
            calls: Mutex::new(Vec::new()),
            disk_after_create: Mutex::new("UpToDate".into()),
            publishes: true,
            promote_refusal: Mutex::new(None),
        }
    }
    /// A node whose NodeState is published by `FakeAgents` instead.
    pub fn quiet(name: &str, store: &Store) -> FakeNode {
        let mut f = FakeNode::unpublished(name, store);
        f.publishes = false;
        f
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn log(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
    pub fn set(&self, res: &str, f: impl FnOnce(&mut VolumeObserved)) {
        f(self.replicas.lock().unwrap().get_mut(res).expect("no such replica"));
        self.publish();
    }
    /// Write this node's NodeState as its agent would.
    pub fn publish(&self) {
        if !self.publishes {
            return;
        }
        let mut s = NodeState { format: 1, node: self.name.clone(), updated: now(), storages: BTreeMap::new(), volumes: BTreeMap::new() };
        s.storages.insert("dp".into(), Space { total: TOTAL, avail: AVAIL, used: TOTAL - AVAIL });
        s.volumes = self.replicas.lock().unwrap().clone();
        self.store.put_node_state(&s).unwrap();
    }
}

impl NodeOps for FakeNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn ensure_replica(&self, vol: &VolumeDoc) -> Result<VolumeObserved> {
        self.log(format!("ensure_replica {}", vol.resource));
        let o = VolumeObserved { ready: true, generation: vol.generation, role: "Secondary".into(), disk: "Inconsistent".into(), size_kib: vol.size_kib, ..Default::default() };
        self.replicas.lock().unwrap().entry(vol.resource.clone()).or_insert(o.clone());
        self.publish();
        Ok(o)
    }
    fn remove_replica(&self, vol: &VolumeDoc) -> Result<()> {
        self.log(format!("remove_replica {}", vol.resource));
        self.replicas.lock().unwrap().remove(&vol.resource);
        self.publish();
        Ok(())
    }
    fn observe(&self, vol: &VolumeDoc) -> Result<Option<VolumeObserved>> {
        Ok(self.replicas.lock().unwrap().get(&vol.resource).cloned())
    }
    fn promote(&self, vol: &VolumeDoc) -> Result<()> {
        self.log(format!("promote {}", vol.resource));
        if let Some(m) = self.promote_refusal.lock().unwrap().clone() {
            return Err(Error::Refused(m));
        }
        self.set(&vol.resource, |o| o.role = "Primary".into());
        Ok(())
    }
    fn demote(&self, vol: &VolumeDoc) -> Result<()> {
        self.log(format!("demote {}", vol.resource));
        let open = self.replicas.lock().unwrap().get(&vol.resource).is_some_and(|o| o.open);
        if open {
            return Err(Error::Refused(format!("{} is open on {} (held by qemu pid 4242)", vol.resource, self.name)));
        }
        if self.replicas.lock().unwrap().contains_key(&vol.resource) {
            self.set(&vol.resource, |o| o.role = "Secondary".into());
        }
        Ok(())
    }
    fn grow_backing(&self, vol: &VolumeDoc) -> Result<()> {
        self.log(format!("grow_backing {} {}", vol.resource, vol.size_kib));
        Ok(())
    }
    fn grow_drbd(&self, vol: &VolumeDoc) -> Result<()> {
        self.log(format!("grow_drbd {} {}", vol.resource, vol.size_kib));
        let g = vol.generation;
        let s = vol.size_kib;
        self.set(&vol.resource, |o| {
            o.generation = g;
            o.size_kib = s;
        });
        Ok(())
    }
    fn skip_initial_sync(&self, vol: &VolumeDoc) -> Result<()> {
        self.log(format!("skip_initial_sync {}", vol.resource));
        let d = self.disk_after_create.lock().unwrap().clone();
        self.set(&vol.resource, |o| o.disk = d);
        Ok(())
    }
    fn set_dual_primary(&self, vol: &VolumeDoc, on: bool) -> Result<()> {
        self.log(format!("set_dual_primary {} {on}", vol.resource));
        Ok(())
    }
    fn space(&self, _b: &BackendSpec) -> Result<Space> {
        Ok(Space { total: TOTAL, avail: AVAIL, used: TOTAL - AVAIL })
    }
    fn snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.log(format!("snapshot {} {snap}", vol.resource));
        let disk = self.replicas.lock().unwrap().get(&vol.resource).map(|o| o.disk.clone());
        if disk.as_deref() != Some("UpToDate") {
            return Err(Error::Refused(format!("{}: replica on {} is {disk:?}, not UpToDate", vol.resource, self.name)));
        }
        let s = snap.to_string();
        self.set(&vol.resource, |o| {
            if !o.snapshots.contains(&s) {
                o.snapshots.push(s)
            }
        });
        Ok(())
    }
    fn remove_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.log(format!("remove_snapshot {} {snap}", vol.resource));
        if self.replicas.lock().unwrap().contains_key(&vol.resource) {
            self.set(&vol.resource, |o| o.snapshots.retain(|s| s != snap));
        }
        Ok(())
    }
    fn snapshot_path(&self, vol: &VolumeDoc, snap: &str) -> Result<Option<String>> {
        let has = self.replicas.lock().unwrap().get(&vol.resource).is_some_and(|o| o.snapshots.iter().any(|s| s == snap));
        Ok(has.then(|| format!("/dev/ssd/{}_{snap}", vol.resource)))
    }
    fn activate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<String> {
        self.log(format!("activate_snapshot {} {snap}", vol.resource));
        self.snapshot_path(vol, snap)?.ok_or_else(|| Error::NotFound(format!("no snapshot {snap} here")))
    }
    fn deactivate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.log(format!("deactivate_snapshot {} {snap}", vol.resource));
        Ok(())
    }
    fn rollback_source(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        // The mark must be in place (peers discarded) before the local rollback.
        let marked = vol.snapshots.iter().any(|s| s.name == snap && s.rollback.as_ref().is_some_and(|m| m.source == self.name));
        self.log(format!("rollback_source {} {snap} marked={marked}", vol.resource));
        Ok(())
    }
    fn discard_replica(&self, vol: &VolumeDoc) -> Result<()> {
        self.log(format!("discard_replica {}", vol.resource));
        Ok(())
    }
}

/// Fake agents of other nodes: every few ms they publish, for each volume they hold,
/// ready + UpToDate at the doc's generation, and drop volumes marked deleting.
pub struct FakeAgents {
    stop: Arc<AtomicBool>,
    h: Option<JoinHandle<()>>,
    /// Role each agent reports, per (node, resource).
    pub roles: Arc<Mutex<BTreeMap<(String, String), (String, bool)>>>,
}

impl FakeAgents {
    pub fn spawn(store: &Store, nodes: &[&str]) -> FakeAgents {
        let stop = Arc::new(AtomicBool::new(false));
        let roles: Arc<Mutex<BTreeMap<(String, String), (String, bool)>>> = Arc::default();
        let (st, s, ns, r) = (stop.clone(), store.clone(), nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(), roles.clone());
        let h = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let vols = s.all_volumes().unwrap_or_default();
                for n in &ns {
                    let mut state = NodeState { format: 1, node: n.clone(), updated: now(), storages: BTreeMap::new(), volumes: BTreeMap::new() };
                    state.storages.insert("dp".into(), Space { total: TOTAL, avail: AVAIL / 2, used: TOTAL - AVAIL / 2 });
                    for v in vols.iter().filter(|v| v.replica(n).is_some() && v.state != VolumeState::Deleting) {
                        let (role, open) = r.lock().unwrap().get(&(n.clone(), v.resource.clone())).cloned().unwrap_or(("Secondary".into(), false));
                        let peers = v.replicas.iter().filter(|x| x.node != *n).map(|x| PeerObserved { node: x.node.clone(), connection: "Connected".into(), role: "Secondary".into(), disk: "UpToDate".into(), replication: "Established".into(), ..Default::default() }).collect();
                        if v.snapshots.iter().any(|s| s.rollback.as_ref().is_some_and(|m| m.source != *n)) {
                            state.volumes.insert(v.resource.clone(), VolumeObserved { generation: v.generation, role: "Unknown".into(), disk: "Discarded".into(), ..Default::default() });
                            continue;
                        }
                        state.volumes.insert(v.resource.clone(), VolumeObserved { ready: true, generation: v.generation, role, disk: "UpToDate".into(), open, size_kib: v.size_kib, peers, error: None, snapshots: v.snapshots.iter().map(|s| s.name.clone()).collect(), quorum: None });
                    }
                    if s.node_state(n).ok().flatten().map(|o| o.volumes) != Some(state.volumes.clone()) {
                        let _ = s.put_node_state(&state);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        FakeAgents { stop, h: Some(h), roles }
    }
    pub fn set_role(&self, node: &str, res: &str, role: &str, open: bool) {
        self.roles.lock().unwrap().insert((node.into(), res.into()), (role.into(), open));
    }
}

impl Drop for FakeAgents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

pub fn scfg() -> serde_json::Value {
    serde_json::json!({"type": "drbdpool", "vgname": "ssd", "thinpool": "data", "content": "images,rootdir"})
}

/// Call a method the way the CLI does, from a JSON request.
pub fn call(ctx: &drbdpool::protocol::Ctx, method: &str, storeid: &str, args: serde_json::Value) -> drbdpool::protocol::Reply {
    let req = serde_json::json!({"version": 1, "storeid": storeid, "node": ctx.node.name(), "scfg": scfg(), "args": args});
    drbdpool::protocol::handle(ctx, method, req.to_string().as_bytes())
}

pub fn ctx<'a>(store: &'a Store, node: &'a dyn NodeHandle, peer_timeout_ms: u64) -> drbdpool::protocol::Ctx<'a> {
    drbdpool::protocol::Ctx { store, node, peer_timeout: Duration::from_millis(peer_timeout_ms), poll: Duration::from_millis(10), started: None, alloc_budget: Duration::from_millis(peer_timeout_ms), creation: drbdpool::protocol::Creation::Inline }
}

/// Re-exec this test binary to run `test_name` as a separate OS process with `env`.
pub fn spawn_self(test_name: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test_name, "--nocapture", "--test-threads=1"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(std::process::Stdio::null());
    c.spawn().unwrap()
}

/// Consistency of a store after concurrent or interrupted allocations.
pub fn assert_store_consistent(s: &Store) -> Vec<VolumeDoc> {
    let vols = s.all_volumes().unwrap();
    let mut minors: Vec<u32> = vols.iter().map(|v| v.minor).collect();
    minors.sort();
    minors.dedup();
    assert_eq!(minors.len(), vols.len(), "duplicate minor");
    let mut res: Vec<&str> = vols.iter().map(|v| v.resource.as_str()).collect();
    res.sort();
    res.dedup();
    assert_eq!(res.len(), vols.len(), "duplicate resource");
    let mut per_node: BTreeMap<(String, u16), String> = BTreeMap::new();
    for v in &vols {
        for r in &v.replicas {
            if let Some(o) = per_node.insert((r.node.clone(), v.port), v.volname.clone()) {
                panic!("port {} used twice on {}: {} and {}", v.port, r.node, o, v.volname);
            }
        }
    }
    // No temp files left behind.
    for e in std::fs::read_dir(s.root().join("volumes/dp")).into_iter().flatten().flatten() {
        assert!(!e.file_name().to_string_lossy().starts_with(".tmp"), "leftover {:?}", e.path());
    }
    vols
}
