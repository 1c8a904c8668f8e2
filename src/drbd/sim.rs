//! `SimDrbd`: a simulated `Replication` for machines without the DRBD module
//! (Rust tests, the Perl tests, benchmarks). Real DRBD is exercised in the
//! qemu lab (tests/vm/); this is for fast tests that should still fail where
//! production would.
//!
//! All simulated nodes of one machine share a directory (`DRBDPOOL_SIM_DIR`):
//! `<dir>/<node>/<resource>.json` is node's "resource file + kernel state"
//! (config, up, role, disk, data generation). Every operation takes an
//! exclusive flock on `<dir>/.lock`, so agents in separate processes see one
//! consistent world. The "metadata" (data generation, consistency) is written
//! into the last 4 KiB of the backing device, as DRBD's internal metadata is:
//! a fresh (zeroed) device has none, `down` keeps it, deleting the device loses it.
//!
//! Rules enforced (the ones drbdpool's safety depends on):
//! - Two nodes are Connected only when both are up, list each other, and use the
//!   same port and secret; otherwise Connecting, with peer role Unknown and peer
//!   disk DUnknown.
//! - First `apply` on a device without metadata = create-md: disk Inconsistent.
//!   The backing device must exist and hold the size (else an error, as drbdadm).
//! - `promote` needs UpToDate data ("(-2) Need access to UpToDate data") and is
//!   refused while a connected peer is Primary unless both allow two primaries
//!   ("(-1) Multiple primaries not allowed by config"). Promoting while a peer
//!   is not connected starts a new data generation (DRBD's new current UUID);
//!   so does `write` (a test hook: a guest writes) while a peer is away.
//! - A node whose data generation another node has moved past is Outdated
//!   (the sim assumes the fence-peer handler did its job; real DRBD without
//!   fencing would show the stale node UpToDate until it connects).
//! - On connect the older side is synced from the newer UpToDate side, instantly
//!   (no SyncSource/SyncTarget phases are modelled; full syncs of an Inconsistent
//!   node are counted in the device's `extra["sim-full-syncs"]`); both Inconsistent stay so;
//!   diverged generations (both wrote while apart) = split brain: StandAlone.
//! - `skip_initial_sync` only when this node and every peer are connected,
//!   Inconsistent and have never been UpToDate; then all are UpToDate.
//! - A lost skip (test hook `crash_on_skip`): the peer dies the moment the skip is
//!   sent, before it applied it. As DRBD 8.4 does, the sending node marks that peer
//!   UpToDate at once and keeps showing it Connected and UpToDate after it died (until
//!   its ping timeout: test hook `notice_lost_peers`), while the dead peer's metadata
//!   stays fresh (Inconsistent): when it comes back (`revive`) it is fully synced.
//! - `demote` and `down` are refused while the device is open (`set_open`, a
//!   test hook standing for a running guest; only a Primary can be opened, as
//!   DRBD 8.4 refuses opens on a Secondary).
//! - `resize` needs every peer connected; the new size is the smallest usable
//!   backing size (backing minus the sim's 4 KiB metadata) of all replicas,
//!   capped at the planned size.
//!
//! - A full sync (of an Inconsistent node) copies the data area from the source.
//! - `wipe_metadata` (resource down) zeroes the metadata: the next apply is create-md;
//!   `make_sync_source` is `primary --force; secondary`: new generation, UpToDate.
//!
//! Not modelled: timing (everything is instant), resync progress, protocol
//! details, quorum, diskless nodes, network partitions other than "not up",
//! I/O errors, more than one volume per resource, the real parser of resource files.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    Applied, ConnectionStatus, DeviceStatus, PeerDeviceStatus, PlanHost, Replication, ResourcePlan, ResourceStatus,
};
use crate::error::{Error, Result};

/// Size of the sim's metadata area at the end of the backing device.
pub const SIM_MD_KIB: u64 = 4;
const MD_MAGIC: &[u8] = b"DRBDPOOL-SIM-MD\n";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Md {
    /// Current data generation (0 = none: never UpToDate).
    uuid: u64,
    /// Earlier generations this data descends from (newest last).
    history: Vec<u64>,
    /// Inconsistent | UpToDate | Outdated
    disk: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SimHost {
    name: String,
    node_id: u8,
    address: String,
}

/// One node's view of one resource (`<dir>/<node>/<resource>.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SimRes {
    resource: String,
    node: String,
    minor: u32,
    port: u16,
    secret: String,
    backing: String,
    hosts: Vec<SimHost>,
    dual_primary: bool,
    /// Planned (net) size.
    want_size_kib: u64,
    /// Current device size.
    size_kib: u64,
    up: bool,
    role: String,
    open: bool,
    md: Md,
    /// Full syncs this node received (Inconsistent -> UpToDate from a peer); reported
    /// as `extra["sim-full-syncs"]` so tests can tell a skipped initial sync from a full one.
    #[serde(default)]
    full_syncs: u32,
    /// Peers that are gone without this node having noticed: its kernel still shows them
    /// Connected, with this peer disk (DRBD 8.4 until the ping timeout; see `crash_on_skip`).
    #[serde(default)]
    believed: BTreeMap<String, String>,
    /// The resync settings of the plan last applied (what a resource file would say).
    #[serde(default)]
    resync: crate::store::docs::Resync,
}

impl SimRes {
    fn peers(&self) -> impl Iterator<Item = &SimHost> {
        self.hosts.iter().filter(move |h| h.name != self.node)
    }
    fn lists(&self, node: &str) -> bool {
        self.hosts.iter().any(|h| h.name == node)
    }
    fn consistent(&self) -> bool {
        self.md.disk == "UpToDate" || self.md.disk == "Outdated"
    }
}

pub struct SimDrbd {
    dir: PathBuf,
    node: String,
}

fn serr(what: &str, p: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tool(format!("sim drbd: cannot {what} {}: {e}", p.display()))
}

fn refused(res: &str, msg: &str) -> Error {
    Error::Refused(format!("{res}: State change failed: {msg}"))
}

impl SimDrbd {
    pub fn new(dir: impl Into<PathBuf>, node: &str) -> Result<SimDrbd> {
        let dir = dir.into();
        if node.is_empty() || node.contains('/') || node.starts_with('.') {
            return Err(Error::InvalidInput(format!("sim drbd: invalid node name {node:?}")));
        }
        fs::create_dir_all(dir.join(node)).map_err(|e| serr("create", &dir.join(node), e))?;
        Ok(SimDrbd { dir, node: node.to_string() })
    }

    /// From `DRBDPOOL_SIM_DIR` (required: the simulated nodes must agree on it).
    pub fn from_env(node: &str) -> Result<SimDrbd> {
        match std::env::var_os("DRBDPOOL_SIM_DIR") {
            Some(d) if !d.is_empty() => SimDrbd::new(PathBuf::from(d), node),
            _ => Err(Error::InvalidInput(
                "DRBDPOOL_DRBD=sim needs DRBDPOOL_SIM_DIR: a directory shared by all simulated nodes on this machine".into(),
            )),
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>> {
        let p = self.dir.join(".lock");
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(|e| serr("open", &p, e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| serr("lock", &p, e))
    }

    fn path(&self, node: &str, res: &str) -> PathBuf {
        self.dir.join(node).join(format!("{res}.json"))
    }

    fn load(&self, node: &str, res: &str) -> Result<Option<SimRes>> {
        let p = self.path(node, res);
        match fs::read(&p) {
            Ok(d) => serde_json::from_slice(&d).map(Some).map_err(|e| serr("parse", &p, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(serr("read", &p, e)),
        }
    }

    fn save(&self, r: &SimRes) -> Result<()> {
        let p = self.path(&r.node, &r.resource);
        let data = serde_json::to_vec_pretty(r).map_err(|e| serr("encode", &p, e))?;
        crate::fsio::write_atomic(&p, &data)?;
        crate::failpoint!("agent.after-resource-file"); // sim: resource file written, metadata not yet
        write_md(&r.backing, &r.md)
    }

    /// Every node's state of `res` (including this node's), by node name.
    fn world(&self, res: &str) -> Result<BTreeMap<String, SimRes>> {
        let mut out = BTreeMap::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| serr("read", &self.dir, e))?;
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let node = e.file_name().to_string_lossy().into_owned();
            if let Some(r) = self.load(&node, res)? {
                out.insert(node, r);
            }
        }
        Ok(out)
    }

    fn mine<'a>(&self, w: &'a BTreeMap<String, SimRes>, res: &str) -> Result<&'a SimRes> {
        w.get(&self.node).filter(|r| r.up).ok_or_else(|| {
            Error::NotFound(format!("{res}: no such resource up on {} (sim): run apply first", self.node))
        })
    }

    /// Bring the shared world of `res` to the state DRBD would reach: outdate
    /// stale nodes, sync connected pairs. Saves what changed.
    fn settle(&self, w: &mut BTreeMap<String, SimRes>) -> Result<()> {
        let before = w.clone();
        // Outdate nodes whose generation another node has moved past (fencing assumed).
        let all: Vec<Md> = w.values().map(|r| r.md.clone()).collect();
        for r in w.values_mut() {
            if r.md.disk == "UpToDate" && all.iter().any(|o| o.history.contains(&r.md.uuid)) {
                r.md.disk = "Outdated".into();
            }
        }
        // Sync: repeat until nothing changes (a chain A->B->C settles in a few rounds).
        for _ in 0..w.len() + 1 {
            let names: Vec<String> = w.keys().cloned().collect();
            let mut changed = false;
            for a in &names {
                for b in &names {
                    if a == b || connection(w, a, b) != "Connected" {
                        continue;
                    }
                    let (src, dst) = (w[a].clone(), w[b].clone());
                    if src.md.disk != "UpToDate" {
                        continue;
                    }
                    let dst_older = dst.md.disk == "Inconsistent" || src.md.history.contains(&dst.md.uuid);
                    let same = dst.md.uuid == src.md.uuid && dst.md.disk != "Inconsistent";
                    if dst_older || (same && dst.md.disk != "UpToDate") {
                        let d = w.get_mut(b).unwrap();
                        if d.md.disk == "Inconsistent" {
                            d.full_syncs += 1;
                            copy_data(&src.backing, &d.backing, src.size_kib.min(d.size_kib))?;
                        }
                        d.md = src.md.clone();
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        // A peer that is really connected again is seen as it is.
        let names: Vec<String> = w.keys().cloned().collect();
        for a in &names {
            let live: Vec<String> = names.iter().filter(|b| *b != a && connection(w, a, b) == "Connected").cloned().collect();
            w.get_mut(a).unwrap().believed.retain(|b, _| !live.contains(b));
        }
        for (n, r) in w.iter() {
            if before.get(n) != Some(r) {
                self.save(r)?;
            }
        }
        Ok(())
    }

    fn status_of(&self, w: &BTreeMap<String, SimRes>, me: &SimRes) -> ResourceStatus {
        let connections = me
            .peers()
            .map(|h| {
                let mut c = connection(w, &me.node, &h.name);
                let peer = w.get(&h.name).filter(|_| c == "Connected");
                let believed = if peer.is_none() { me.believed.get(&h.name) } else { None };
                if believed.is_some() {
                    c = "Connected";
                }
                ConnectionStatus {
                    peer_node_id: Some(h.node_id as u32),
                    conn_name: h.name.clone(),
                    connection: c.to_string(),
                    peer_role: match (peer, believed) {
                        (Some(p), _) => p.role.clone(),
                        (None, Some(_)) => "Secondary".into(),
                        (None, None) => "Unknown".into(),
                    },
                    peer_devices: vec![PeerDeviceStatus {
                        volume: 0,
                        replication: if peer.is_some() || believed.is_some() { "Established" } else { "Off" }.into(),
                        peer_disk: peer.map(|p| p.md.disk.clone()).or_else(|| believed.cloned()).unwrap_or_else(|| "DUnknown".into()),
                        out_of_sync_kib: 0,
                        done_percent: None,
                        extra: BTreeMap::new(),
                    }],
                    extra: BTreeMap::new(),
                }
            })
            .collect();
        ResourceStatus {
            name: me.resource.clone(),
            role: me.role.clone(),
            devices: vec![DeviceStatus {
                volume: 0,
                minor: me.minor,
                disk: me.md.disk.clone(),
                open: Some(me.open),
                size_kib: Some(me.size_kib),
                extra: BTreeMap::from([("sim-full-syncs".to_string(), me.full_syncs.to_string())]),
            }],
            connections,
            extra: BTreeMap::from([("sim".to_string(), "yes".to_string())]),
        }
    }

    /// Run `f` on the settled world of `res` under the lock; saves what `f` changed.
    fn with_world<T>(
        &self,
        res: &str,
        f: impl FnOnce(&mut BTreeMap<String, SimRes>) -> Result<T>,
    ) -> Result<T> {
        let _g = self.lock()?;
        let mut w = self.world(res)?;
        self.settle(&mut w)?;
        let before = w.clone();
        let out = f(&mut w)?;
        for (n, r) in w.iter() {
            if before.get(n) != Some(r) {
                self.save(r)?;
            }
        }
        self.settle(&mut w)?;
        Ok(out)
    }

    /// Test hook: a guest writes to the Primary. While a peer is not connected
    /// this starts a new data generation (the peer becomes Outdated).
    pub fn write(&self, res: &str) -> Result<()> {
        self.with_world(res, |w| {
            let me = self.mine(w, res)?.clone();
            if me.role != "Primary" {
                return Err(Error::Refused(format!("{res}: cannot write on a Secondary (wrong medium type)")));
            }
            if me.peers().any(|h| connection(w, &me.node, &h.name) != "Connected") {
                bump(&mut w.get_mut(&self.node).unwrap().md);
            }
            Ok(())
        })
    }

    fn crash_mark(&self, node: &str) -> PathBuf {
        self.dir.join(format!(".crashed-{node}"))
    }

    fn crash_on_skip_mark(&self, res: &str) -> PathBuf {
        self.dir.join(format!(".crash-on-skip-{res}"))
    }

    /// Test hook: the next `skip_initial_sync` of `res` (from any node) does not reach
    /// `victim`: that node dies the moment the skip is sent (see the module comment).
    pub fn crash_on_skip(&self, res: &str, victim: &str) -> Result<()> {
        let p = self.crash_on_skip_mark(res);
        fs::write(&p, victim).map_err(|e| serr("write", &p, e))
    }

    /// Whether this node is down after a simulated crash (until `revive`).
    pub fn is_crashed(&self) -> bool {
        self.crash_mark(&self.node).exists()
    }

    /// Test hook: this node boots again (its resources stay down until the next apply).
    pub fn revive(&self) -> Result<()> {
        let p = self.crash_mark(&self.node);
        fs::remove_file(&p).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }).map_err(|e| serr("remove", &p, e))
    }

    /// Test hook: this node's ping timeout passed: peers that died are no longer shown Connected.
    pub fn notice_lost_peers(&self, res: &str) -> Result<()> {
        self.with_world(res, |w| {
            if let Some(m) = w.get_mut(&self.node) {
                m.believed.clear();
            }
            Ok(())
        })
    }

    /// Test hook: the disk state a lost peer leaves behind where the sim cannot derive it,
    /// because a node that is down is not in its world: `Consistent` (DRBD 8.4 after a power
    /// loss of both nodes) or `Outdated` (the peer fenced this node, then died).
    pub fn set_disk_as_left(&self, res: &str, disk: &str) -> Result<()> {
        if disk != "Consistent" && disk != "Outdated" {
            return Err(Error::InvalidInput(format!("set_disk_as_left: {disk}: use Consistent or Outdated")));
        }
        self.with_world(res, |w| {
            let me = w.get_mut(&self.node).filter(|r| r.up).ok_or_else(|| Error::NotFound(format!("{res}: not up")))?;
            me.md.disk = disk.to_string();
            Ok(())
        })
    }

    /// Test hook: a guest opens (true) or closes the device.
    /// The resync settings this node last applied to `res` (tests).
    pub fn resync_of(&self, res: &str) -> Result<Option<crate::store::docs::Resync>> {
        Ok(self.load(&self.node, res)?.map(|r| r.resync))
    }

    /// Make this simulated node take at most `n` hosts per resource (2: as DRBD 8.4).
    pub fn set_max_hosts(&self, n: usize) -> Result<()> {
        let p = self.dir.join(&self.node).join("max-hosts");
        fs::write(&p, n.to_string()).map_err(|e| serr("write", &p, e))
    }

    pub fn set_open(&self, res: &str, open: bool) -> Result<()> {
        self.with_world(res, |w| {
            let me = w.get_mut(&self.node).filter(|r| r.up).ok_or_else(|| Error::NotFound(format!("{res}: not up")))?;
            if open && me.role != "Primary" {
                return Err(Error::Refused(format!("{res}: cannot open a Secondary (Wrong medium type)")));
            }
            me.open = open;
            Ok(())
        })
    }
}

/// The connection state `a` sees towards `b`.
fn connection(w: &BTreeMap<String, SimRes>, a: &str, b: &str) -> &'static str {
    let (Some(ra), rb) = (w.get(a), w.get(b)) else { return "StandAlone" };
    if !ra.up {
        return "StandAlone";
    }
    let Some(rb) = rb.filter(|r| r.up) else { return "Connecting" };
    if !ra.lists(b) || !rb.lists(a) || ra.port != rb.port || ra.secret != rb.secret {
        return "Connecting";
    }
    // Split brain: both hold data and neither descends from the other.
    if ra.consistent()
        && rb.consistent()
        && ra.md.uuid != rb.md.uuid
        && !ra.md.history.contains(&rb.md.uuid)
        && !rb.md.history.contains(&ra.md.uuid)
    {
        return "StandAlone";
    }
    "Connected"
}

/// A full sync copies the data area (bitmap-based resyncs are not modelled: the sim's
/// `write` hook writes no data).
fn copy_data(from: &str, to: &str, kib: u64) -> Result<()> {
    let mut src = File::open(from).map_err(|e| serr("open sync source", Path::new(from), e))?;
    let mut dst = OpenOptions::new().write(true).open(to).map_err(|e| serr("open sync target", Path::new(to), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = kib * 1024;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n]).map_err(|e| serr("read sync source", Path::new(from), e))?;
        dst.write_all(&buf[..n]).map_err(|e| serr("write sync target", Path::new(to), e))?;
        left -= n as u64;
    }
    dst.sync_all().map_err(|e| serr("fsync", Path::new(to), e))
}

fn bump(md: &mut Md) {
    if md.uuid != 0 {
        md.history.push(md.uuid);
        if md.history.len() > 64 {
            md.history.remove(0);
        }
    }
    md.uuid = rand::random::<u64>() | 1;
}

/// Size of a block device or file in KiB (seeking to the end works for both).
fn device_kib(path: &str) -> Result<u64> {
    let mut f = File::open(path).map_err(|e| serr("open backing device", Path::new(path), e))?;
    Ok(f.seek(SeekFrom::End(0)).map_err(|e| serr("size", Path::new(path), e))? / 1024)
}

fn usable(path: &str) -> Result<u64> {
    Ok(device_kib(path)?.saturating_sub(SIM_MD_KIB))
}

fn read_md(path: &str) -> Result<Option<Md>> {
    let kib = device_kib(path)?;
    if kib < SIM_MD_KIB {
        return Ok(None);
    }
    let mut f = File::open(path).map_err(|e| serr("open backing device", Path::new(path), e))?;
    f.seek(SeekFrom::Start((kib - SIM_MD_KIB) * 1024)).map_err(|e| serr("seek", Path::new(path), e))?;
    let mut buf = vec![0u8; (SIM_MD_KIB * 1024) as usize];
    f.read_exact(&mut buf).map_err(|e| serr("read metadata of", Path::new(path), e))?;
    if !buf.starts_with(MD_MAGIC) {
        return Ok(None);
    }
    let body = &buf[MD_MAGIC.len()..];
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    Ok(serde_json::from_slice(&body[..end]).ok())
}

fn write_md(path: &str, md: &Md) -> Result<()> {
    let kib = device_kib(path)?;
    let mut buf = MD_MAGIC.to_vec();
    buf.extend(serde_json::to_vec(md).map_err(|e| serr("encode metadata for", Path::new(path), e))?);
    buf.resize((SIM_MD_KIB * 1024) as usize, 0);
    let mut f = OpenOptions::new().write(true).open(path).map_err(|e| serr("open backing device", Path::new(path), e))?;
    f.seek(SeekFrom::Start((kib - SIM_MD_KIB) * 1024)).map_err(|e| serr("seek", Path::new(path), e))?;
    f.write_all(&buf).map_err(|e| serr("write metadata to", Path::new(path), e))?;
    f.sync_all().map_err(|e| serr("fsync", Path::new(path), e))
}

impl Replication for SimDrbd {
    fn apply(&self, plan: &ResourcePlan) -> Result<Applied> {
        if plan.local != self.node {
            return Err(Error::InvalidInput(format!(
                "{}: plan is for node {} but this sim node is {}",
                plan.resource, plan.local, self.node
            )));
        }
        if !plan.hosts.iter().any(|h| h.name == self.node) {
            return Err(Error::InvalidInput(format!("{}: this node {} is not one of the plan's hosts", plan.resource, self.node)));
        }
        let res = plan.resource.clone();
        if self.is_crashed() {
            return Err(Error::Tool(format!("{res}: node {} is down (sim crash); nothing runs there until it is revived", self.node)));
        }
        self.with_world(&res, |w| {
            let backing_kib = device_kib(&plan.backing)?;
            if backing_kib < plan.size_kib + SIM_MD_KIB {
                return Err(Error::Tool(format!(
                    "{res}: (111) Low.dev. smaller than requested DRBD-dev. size: backing {} has {backing_kib} KiB, need {} KiB",
                    plan.backing,
                    plan.size_kib + SIM_MD_KIB
                )));
            }
            let prev = w.get(&self.node).cloned();
            let mut applied = Applied::default();
            let mut r = prev.clone().unwrap_or_default();
            let hosts: Vec<SimHost> = plan
                .hosts
                .iter()
                .map(|h: &PlanHost| SimHost { name: h.name.clone(), node_id: h.node_id, address: h.address.clone() })
                .collect();
            let config_changed = prev.as_ref().is_none_or(|p| {
                p.minor != plan.minor
                    || p.port != plan.port
                    || p.secret != plan.secret
                    || p.backing != plan.backing
                    || p.hosts != hosts
                    || p.dual_primary != plan.dual_primary
                    || p.want_size_kib != plan.size_kib
                    || p.resync != plan.resync
            });
            applied.changed_config = config_changed;
            if prev.as_ref().is_none_or(|p| !p.up || p.backing != plan.backing) {
                // attach: metadata comes from the device; none there = create-md
                r.md = match read_md(&plan.backing)? {
                    Some(md) => md,
                    None => {
                        applied.created_metadata = true;
                        Md { uuid: 0, history: vec![], disk: "Inconsistent".into() }
                    }
                };
                r.size_kib = plan.size_kib;
                r.role = "Secondary".into();
                r.open = false;
            }
            r.resource = res.clone();
            r.node = self.node.clone();
            r.minor = plan.minor;
            r.port = plan.port;
            r.secret = plan.secret.clone();
            r.backing = plan.backing.clone();
            r.hosts = hosts;
            r.dual_primary = plan.dual_primary;
            r.want_size_kib = plan.size_kib;
            r.resync = plan.resync;
            r.up = true;
            if !plan.dual_primary && r.role == "Primary" {
                if let Some(p) = r.peers().find(|h| w.get(&h.name).is_some_and(|o| o.up && o.role == "Primary")) {
                    return Err(refused(&res, &format!("cannot forbid two primaries while {} is Primary too", p.name)));
                }
            }
            w.insert(self.node.clone(), r);
            Ok(applied)
        })
    }

    fn down(&self, resource: &str) -> Result<()> {
        let _g = self.lock()?;
        let mut w = self.world(resource)?;
        self.settle(&mut w)?;
        let Some(me) = w.get(&self.node) else { return Ok(()) };
        if me.open {
            return Err(refused(resource, "(-12) Device is held open by someone"));
        }
        // Metadata stays on the backing device, as with real DRBD.
        if Path::new(&me.backing).exists() {
            write_md(&me.backing, &me.md)?;
        }
        let p = self.path(&self.node, resource);
        fs::remove_file(&p).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }).map_err(|e| serr("remove", &p, e))?;
        w.remove(&self.node);
        self.settle(&mut w)
    }

    fn status(&self) -> Result<Vec<ResourceStatus>> {
        let mut out = Vec::new();
        for res in self.configured()? {
            let _g = self.lock()?;
            let mut w = self.world(&res)?;
            self.settle(&mut w)?;
            if let Some(me) = w.get(&self.node).filter(|r| r.up) {
                out.push(self.status_of(&w, me));
            }
        }
        Ok(out)
    }

    fn resource_status(&self, resource: &str) -> Result<Option<ResourceStatus>> {
        let _g = self.lock()?;
        let mut w = self.world(resource)?;
        self.settle(&mut w)?;
        Ok(w.get(&self.node).filter(|r| r.up).map(|me| self.status_of(&w, me)))
    }

    fn promote(&self, resource: &str) -> Result<()> {
        self.with_world(resource, |w| {
            let me = self.mine(w, resource)?.clone();
            if me.role == "Primary" {
                return Ok(());
            }
            if me.md.disk != "UpToDate" {
                return Err(refused(resource, &format!("(-2) Need access to UpToDate data (local disk is {})", me.md.disk)));
            }
            for h in me.peers() {
                if connection(w, &me.node, &h.name) == "Connected" && w[&h.name].role == "Primary" && !(me.dual_primary && w[&h.name].dual_primary) {
                    return Err(refused(resource, "(-1) Multiple primaries not allowed by config"));
                }
            }
            let away = me.peers().any(|h| connection(w, &me.node, &h.name) != "Connected");
            let m = w.get_mut(&self.node).unwrap();
            if away {
                bump(&mut m.md);
            }
            m.role = "Primary".into();
            Ok(())
        })
    }

    fn demote(&self, resource: &str) -> Result<()> {
        self.with_world(resource, |w| {
            self.mine(w, resource)?;
            let m = w.get_mut(&self.node).unwrap();
            if m.open {
                return Err(refused(resource, "(-12) Device is held open by someone"));
            }
            m.role = "Secondary".into();
            Ok(())
        })
    }

    fn skip_initial_sync(&self, resource: &str) -> Result<()> {
        self.with_world(resource, |w| {
            let me = self.mine(w, resource)?.clone();
            let fresh = |r: &SimRes| r.md.disk == "Inconsistent" && r.md.uuid == 0 && r.md.history.is_empty();
            if !fresh(&me) {
                return Err(refused(resource, &format!("skip_initial_sync needs fresh metadata here; local disk is {}", me.md.disk)));
            }
            for h in me.peers() {
                if connection(w, &me.node, &h.name) != "Connected" {
                    return Err(refused(resource, &format!("skip_initial_sync needs every peer connected; {} is not", h.name)));
                }
                if !fresh(&w[&h.name]) {
                    return Err(refused(resource, &format!("skip_initial_sync: peer {} has no fresh metadata (disk {})", h.name, w[&h.name].md.disk)));
                }
            }
            let uuid = rand::random::<u64>() | 1;
            let mark = self.crash_on_skip_mark(resource);
            let victim = fs::read_to_string(&mark).ok().map(|v| v.trim().to_string()).filter(|v| me.peers().any(|h| h.name == *v));
            let names: Vec<String> = std::iter::once(me.node.clone()).chain(me.peers().map(|h| h.name.clone())).collect();
            for n in names {
                if Some(&n) == victim.as_ref() {
                    // Dies before applying the skip: its metadata stays fresh, its resource down.
                    let v = w.get_mut(&n).unwrap();
                    v.up = false;
                    v.role = "Secondary".into();
                    let p = self.crash_mark(&n);
                    fs::write(&p, b"").map_err(|e| serr("write", &p, e))?;
                    continue;
                }
                w.get_mut(&n).unwrap().md = Md { uuid, history: vec![], disk: "UpToDate".into() };
            }
            if let Some(v) = victim {
                // DRBD 8.4 marks the peer UpToDate as soon as it sends the skip.
                w.get_mut(&me.node).unwrap().believed.insert(v, "UpToDate".into());
                let _ = fs::remove_file(&mark);
            }
            Ok(())
        })
    }

    // The sim keeps no bitmap of the grown area: with or without assume_clean the
    // replicas stay in sync (the lab measures the real resync).
    fn resize(&self, resource: &str, _assume_clean: bool) -> Result<()> {
        self.with_world(resource, |w| {
            let me = self.mine(w, resource)?.clone();
            let mut size = me.want_size_kib.min(usable(&me.backing)?);
            for h in me.peers() {
                if connection(w, &me.node, &h.name) != "Connected" {
                    return Err(refused(resource, &format!("resize needs every peer connected; {} is not", h.name)));
                }
                size = size.min(usable(&w[&h.name].backing)?).min(w[&h.name].want_size_kib);
            }
            if size < me.size_kib {
                return Err(refused(resource, "resize would shrink the device; refusing"));
            }
            for n in std::iter::once(me.node.clone()).chain(me.peers().map(|h| h.name.clone())) {
                w.get_mut(&n).unwrap().size_kib = size;
            }
            Ok(())
        })
    }

    fn outdate(&self, resource: &str) -> Result<()> {
        self.with_world(resource, |w| {
            let Some(m) = w.get_mut(&self.node) else { return Ok(()) };
            if m.role == "Primary" {
                return Err(refused(resource, "(-7) cannot outdate a Primary"));
            }
            if m.md.disk == "UpToDate" {
                m.md.disk = "Outdated".into();
            }
            Ok(())
        })
    }

    fn max_hosts(&self) -> Result<usize> {
        let p = self.dir.join(&self.node).join("max-hosts");
        match fs::read_to_string(&p) {
            Ok(t) => t.trim().parse().map_err(|e| serr("parse", &p, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(32),
            Err(e) => Err(serr("read", &p, e)),
        }
    }

    fn configured(&self) -> Result<Vec<String>> {
        let d = self.dir.join(&self.node);
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(|e| serr("read", &d, e))?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(s) = n.strip_suffix(".json") {
                if !s.starts_with('.') {
                    out.push(s.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn wipe_metadata(&self, plan: &ResourcePlan) -> Result<()> {
        let res = plan.resource.as_str();
        let _g = self.lock()?;
        if self.load(&self.node, res)?.is_some_and(|r| r.up) {
            return Err(refused(res, "still up; take it down before recreating its metadata"));
        }
        let kib = device_kib(&plan.backing)?;
        if kib < SIM_MD_KIB {
            return Err(Error::Tool(format!("{res}: backing {} too small for metadata", plan.backing)));
        }
        let mut f = OpenOptions::new().write(true).open(&plan.backing).map_err(|e| serr("open backing device", Path::new(&plan.backing), e))?;
        f.seek(SeekFrom::Start((kib - SIM_MD_KIB) * 1024)).map_err(|e| serr("seek", Path::new(&plan.backing), e))?;
        f.write_all(&vec![0u8; (SIM_MD_KIB * 1024) as usize]).map_err(|e| serr("wipe metadata of", Path::new(&plan.backing), e))?;
        f.sync_all().map_err(|e| serr("fsync", Path::new(&plan.backing), e))
    }

    /// As `primary --force; secondary`: a new data generation, UpToDate, whatever the disk was.
    fn make_sync_source(&self, resource: &str) -> Result<()> {
        self.with_world(resource, |w| {
            self.mine(w, resource)?;
            let m = w.get_mut(&self.node).unwrap();
            bump(&mut m.md);
            m.md.disk = "UpToDate".into();
            Ok(())
        })
    }

    fn start_initial_sync(&self, resource: &str) -> Result<()> {
        self.with_world(resource, |w| {
            let me = self.mine(w, resource)?.clone();
            if me.md.disk != "Inconsistent" || me.md.uuid != 0 {
                return Err(refused(resource, &format!("initial sync only from fresh metadata; local disk is {}", me.md.disk)));
            }
            let m = w.get_mut(&self.node).unwrap();
            bump(&mut m.md);
            m.md.disk = "UpToDate".into();
            Ok(())
        })
    }
}
