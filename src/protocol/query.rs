//! Read-only methods (status, list, path, size, features, formats) and the
//! snapshot methods drbdpool does not implement yet (refused, never faked).


use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::backend::BackendKind;
use crate::store::docs::VolumeDoc;

use super::{load, now, Args, Ctx};

/// Our agent refreshes its state at least every 60 s; older means it is not running.
const STATUS_STALE_SECS: u64 = 300;

pub fn activate_storage(ctx: &Ctx, sid: &str, scfg: &Map<String, Value>) -> Result<Value> {
    let name = ctx.node.name();
    match ctx.store.node(name)? {
        Some(_) => {
            record_storage_settings(ctx, sid, scfg);
            Ok(json!({}))
        }
        None => Err(Error::Refused(format!(
            "node {name} is not registered with drbdpool: run `drbdpool node add {name} --address <replication ip>` (registered: {})",
            names_or_none(ctx.store.nodes()?.iter().map(|n| n.name.clone()).collect())
        ))),
    }
}

/// Bring `storages/<sid>.json` (what the agents render the resync settings from) in line
/// with storage.cfg. PVE runs activate_storage on every node every 10 s (pvestatd's
/// storage_info) and before every volume operation, so a `pvesm set` reaches the agents
/// within seconds. A write only when something changed. Never fails the activation: a VM
/// start must not stop at a typo in a resync property (the shim's hooks refuse such a
/// value when it is set; a hand-edited one is logged and the recorded settings stay).
fn record_storage_settings(ctx: &Ctx, sid: &str, scfg: &Map<String, Value>) {
    let resync = match super::scfg::parse_resync(scfg) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("storage {sid}: {e}; the resync settings recorded before stay in force");
            return;
        }
    };
    let nodes = super::scfg::StorageCfg::parse(scfg).ok().and_then(|c| c.nodes);
    let r = (|| -> Result<()> {
        if ctx.store.storage_doc(sid)?.is_some_and(|d| d.resync == resync && d.nodes == nodes) {
            return Ok(());
        }
        ctx.store.put_storage_doc(&crate::store::docs::StorageDoc { format: crate::store::docs::FORMAT, storeid: sid.to_string(), resync, nodes })?;
        tracing::info!(
            "storage {sid}: resync settings recorded (max {}K/s, min {}K/s); the agents apply them to every volume",
            resync.max_kib,
            resync.min_kib
        );
        Ok(())
    })();
    if let Err(e) = r {
        tracing::warn!("storage {sid}: cannot record the resync settings now: {e}");
    }
}

fn names_or_none(v: Vec<String>) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// From this node's published state only: no tool calls, no other node, milliseconds.
/// Only the head of the state is read (store::head), never its volumes.
pub fn status(ctx: &Ctx, sid: &str, scfg: &Map<String, Value>) -> Result<Value> {
    let path = ctx.store.root().join("state").join(format!("{}.json", ctx.node.name()));
    let st = crate::store::head::read_state_head(&path)?;
    let inactive = json!({"total": 0, "avail": 0, "used": 0, "active": false});
    let Some(st) = st else {
        tracing::warn!("no published state for {} yet: is drbdpool-agent running here?", ctx.node.name());
        return Ok(inactive);
    };
    if now().saturating_sub(st.updated) > STATUS_STALE_SECS {
        tracing::warn!("published state of {} is {}s old: is drbdpool-agent running here?", ctx.node.name(), now().saturating_sub(st.updated));
        return Ok(inactive);
    }
    if let Some(s) = st.storages.get(sid) {
        return Ok(json!({"total": s.total, "avail": s.avail, "used": s.used, "active": true}));
    }
    // The agent is alive but publishes space only for storages that hold volumes:
    // ask the backend once ourselves (a new, still empty storage).
    let cfg = super::scfg::StorageCfg::parse(scfg)?;
    match ctx.node.ops().and_then(|n| n.space(&cfg.backend)) {
        Ok(s) => Ok(json!({"total": s.total, "avail": s.avail, "used": s.used, "active": true})),
        Err(e) => {
            tracing::warn!("storage {sid} on {}: {e}", ctx.node.name());
            Ok(inactive)
        }
    }
}

/// What `list` needs of a node's published state: role and disk per resource
/// (not peers and sizes, which are most of the state).
#[derive(Deserialize)]
struct RoleDisk {
    #[serde(default)]
    role: String,
    #[serde(default)]
    disk: String,
}

type RolesOnly = crate::store::state::Published<RoleDisk>;

fn one() -> u32 {
    crate::store::docs::FORMAT
}

fn entry(doc: &VolumeDoc, states: &[RolesOnly], used: &UsedOf) -> Value {
    let mut nodes = Map::new();
    for r in &doc.replicas {
        let o = states.iter().find(|s| s.node == r.node).and_then(|s| s.volumes.get(&doc.resource));
        nodes.insert(
            r.node.clone(),
            json!({"role": o.map(|o| o.role.as_str()).unwrap_or("Unknown"), "disk": o.map(|o| o.disk.as_str()).unwrap_or("Unknown")}),
        );
    }
    let mut v = json!({
        "volid": format!("{}:{}", doc.storeid, crate::naming::pve_volname(&doc.volname, doc.parent.as_deref())),
        "volname": doc.volname,
        "format": "raw",
        "size": doc.size_kib * 1024,
        "used": used.used(&doc.volname, doc.size_kib * 1024),
        "vmid": doc.vmid,
        "ctime": doc.created,
        "nodes": nodes,
    });
    if let Some(p) = &doc.parent {
        v["parent"] = json!(p);
    }
    v
}

/// `used` (bytes) of the volumes of one storage: this node's own measurement where it
/// holds a replica, else the largest a replica node published (a full resync may have
/// allocated a replica completely), else, unmeasured (thick LVM, no agent yet), the
/// provisioned size as before. Read from the agents' usage documents (`usage/<node>.json`,
/// agent/reconcile.rs), a few small files: no tool is run and no volume document read.
pub(crate) struct UsedOf {
    local: Option<HashMap<String, u64>>,
    others: Vec<HashMap<String, u64>>,
}

/// NodeUsage as `list` reads it: hash maps (no ordering work at 10,000 volumes).
#[derive(Deserialize)]
struct UsageRead {
    #[serde(default = "one")]
    format: u32,
    node: String,
    #[serde(default)]
    storages: HashMap<String, HashMap<String, u64>>,
}

impl UsedOf {
    pub(crate) fn read(ctx: &Ctx, sid: &str) -> Result<UsedOf> {
        let mut local = None;
        let mut others = Vec::new();
        for mut u in ctx.store.node_usages_as(|u: &UsageRead| u.format)? {
            let Some(m) = u.storages.remove(sid) else { continue };
            if u.node == ctx.node.name() {
                local = Some(m);
            } else {
                others.push(m);
            }
        }
        Ok(UsedOf { local, others })
    }

    pub(crate) fn used(&self, volname: &str, size: u64) -> u64 {
        let measured = match self.local.as_ref().and_then(|m| m.get(volname)) {
            Some(b) => Some(*b),
            None => self.others.iter().filter_map(|m| m.get(volname).copied()).max(),
        };
        // The backing device also holds DRBD's metadata: never more than the volume.
        measured.map_or(size, |b| b.min(size))
    }
}

/// One `list_images` entry in PVE's own shape (the shim passes it through unchanged).
#[derive(Serialize)]
pub struct ListItem {
    pub volid: String,
    pub format: &'static str,
    pub size: u64,
    /// Bytes really allocated (thin), see UsedOf.
    pub used: u64,
    pub vmid: u32,
    pub ctime: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[derive(Serialize)]
pub struct ListReply {
    pub volumes: Vec<ListItem>,
}

/// What `list` answers: typed entries (PVE's call, the hot one: serialized straight to
/// JSON by `drbdpool plugin list`, no Value tree), or entries with roles.
pub enum Listing {
    Plain(ListReply),
    WithRoles(Value),
}

pub fn list(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    match listing(ctx, sid, a)? {
        Listing::Plain(r) => serde_json::to_value(r).map_err(|e| Error::Other(anyhow::anyhow!("cannot encode the list: {e}"))),
        Listing::WithRoles(v) => Ok(v),
    }
}

pub fn listing(ctx: &Ctx, sid: &str, a: &Args) -> Result<Listing> {
    let vmid = a.opt_vmid("vmid")?;
    let vollist = a.str_list("vollist")?;
    let wanted: Option<BTreeSet<&str>> = vollist.map(|l| {
        l.into_iter().filter_map(|volid| match crate::naming::split_volid(volid) {
            (Some(s), v) if s == sid => Some(v),
            _ => None,
        }).collect()
    });
    // Roles cost a read of every node's published state (megabytes at thousands of
    // volumes) and PVE does not use them: only on request.
    if a.flag("nodes")? {
        return list_with_roles(ctx, sid, vmid, wanted.as_ref()).map(Listing::WithRoles);
    }
    let mut volumes = Vec::new();
    let used = UsedOf::read(ctx, sid)?;
    // Served from the list index (store/index.rs): one read per shard, not per volume.
    for (name, e) in ctx.store.list_entries_as::<crate::store::index::ListEntry>(sid, vmid)? {
        if e.state == crate::store::docs::VolumeState::Deleting {
            continue; // PVE must not see it (it would try to free it again)
        }
        // PVE's name (`<base>/<name>` for a linked clone) is the volid and what vollist holds.
        let pve = crate::naming::pve_volname(&name, e.parent.as_deref());
        if wanted.as_ref().is_some_and(|w| !w.contains(pve.as_str())) {
            continue;
        }
        let Ok(parsed) = crate::naming::parse_volname(&name) else { continue };
        volumes.push(ListItem {
            volid: format!("{sid}:{pve}"),
            format: "raw",
            size: e.size_kib * 1024,
            used: used.used(&name, e.size_kib * 1024),
            vmid: parsed.vmid,
            ctime: e.created,
            parent: e.parent,
        });
    }
    Ok(Listing::Plain(ListReply { volumes }))
}

fn list_with_roles(ctx: &Ctx, sid: &str, vmid: Option<u32>, wanted: Option<&BTreeSet<&str>>) -> Result<Value> {
    let states: Vec<RolesOnly> = ctx.store.all_published_as(None)?;
    let used = UsedOf::read(ctx, sid)?;
    let mut out = Vec::new();
    for name in ctx.store.volume_names(sid)? {
        // Filter on the name alone before reading documents.
        let Ok(parsed) = crate::naming::parse_volname(&name) else { continue };
        if vmid.is_some_and(|v| v != parsed.vmid) {
            continue;
        }
        if let Some(doc) = ctx.store.volume(sid, &name)? {
            if doc.state == crate::store::docs::VolumeState::Deleting {
                continue;
            }
            if wanted.is_some_and(|w| !w.contains(crate::naming::pve_volname(&name, doc.parent.as_deref()).as_str())) {
                continue;
            }
            out.push(entry(&doc, &states, &used));
        }
    }
    Ok(json!({"volumes": out}))
}

pub fn path(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    if let Some(snap) = a.opt_str("snapname")? {
        return super::snapshot::path(ctx, sid, volname, snap);
    }
    let doc = load(ctx, sid, volname)?;
    Ok(json!({"path": doc.device_path(), "vmid": doc.vmid, "vtype": "images"}))
}

pub fn size(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let doc = load(ctx, sid, a.str("volname")?)?;
    let bytes = doc.size_kib * 1024;
    // `used`: as in `list` (the agents' measurement, at most SPACE_EVERY old plus the write tolerance).
    let used = UsedOf::read(ctx, sid)?.used(&doc.volname, bytes);
    let mut v = json!({"size": bytes, "format": "raw", "used": used, "ctime": doc.created});
    if let Some(p) = &doc.parent {
        v["parent"] = json!(p);
    }
    Ok(v)
}

/// Which features work, per backend kind and per what the volume is. As PVE's plugins,
/// the row is chosen by `snap` (a snapshot is named), else `base` (a template), else `current`.
pub fn feature_supported(feature: &str, kind: BackendKind, base: bool, snapname: bool) -> Result<bool> {
    let caps = kind.caps();
    let (snaps, thin) = (caps.snapshots, caps.thin);
    // (current, base, snap)
    let (current, on_base, on_snap) = match feature {
        // Per-node backend snapshots, kept in step by the agents (src/protocol/snapshot.rs).
        "snapshot" => (snaps, false, false),
        // Linked clones of templates: thin snapshots of the base's backing (protocol::volume::clone).
        "clone" => (false, caps.linked_clones, false),
        // create_base: a store rename of an unused volume without snapshots.
        "template" => (true, false, false),
        // full clone / move: PVE copies between activated block devices; a snapshot is one
        // once activated (activate with snapname).
        "copy" => (true, true, snaps),
        // New volumes read zeroes on every replica (thin backing, initial sync skipped).
        "sparseinit" => (thin, thin, false),
        // rename: a store rename; the resource, device and snapshots stay.
        "rename" => (true, false, false),
        // PVE's storage replication (zfs send) does not apply: DRBD replicates.
        "replicate" => (false, false, false),
        other => return Err(crate::invalid!("unknown feature '{other}' (known: snapshot, clone, template, copy, sparseinit, rename, replicate)")),
    };
    Ok(if snapname {
        on_snap
    } else if base {
        on_base
    } else {
        current
    })
}

pub fn has_feature(ctx: &Ctx, sid: &str, cfg: &super::scfg::StorageCfg, a: &Args) -> Result<Value> {
    let feature = a.str("feature")?;
    let volname = a.str("volname")?;
    let parsed = crate::naming::parse_volname(volname)?;
    let snapname = a.opt_str("snapname")?;
    if let Some(s) = snapname {
        crate::naming::check_snap_name(s)?;
    }
    let _ = (ctx, sid, a.flag("running")?);
    let supported = feature_supported(feature, cfg.backend.kind, parsed.base, snapname.is_some())?;
    Ok(json!({"supported": supported}))
}

pub fn formats(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    load(ctx, sid, a.str("volname")?)?;
    // Without snapshots only the current data can travel; the shim streams it from the device.
    if a.opt_str("snapshot")?.is_some() || a.opt_str("base_snapshot")?.is_some() || a.flag("with_snapshots")? {
        return Ok(json!({"formats": []}));
    }
    Ok(json!({"formats": ["raw+size"]}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_tell_the_truth() {
        use BackendKind::*;
        // (feature, backend, base, snapname) -> supported
        let table: &[(&str, BackendKind, bool, bool, bool)] = &[
            ("snapshot", Lvmthin, false, false, true),
            ("snapshot", File, false, false, true),
            ("snapshot", Lvm, false, false, false),
            ("snapshot", Lvmthin, true, false, false),
            ("snapshot", Lvmthin, false, true, false),
            ("clone", Lvmthin, true, false, true),
            ("clone", File, true, false, true),
            ("clone", Lvm, true, false, false),
            ("clone", Lvmthin, false, true, false),
            ("clone", Lvmthin, false, false, false),
            ("template", Lvmthin, false, false, true),
            ("template", Lvm, false, false, true),
            ("template", Lvmthin, true, false, false),
            ("template", Lvmthin, false, true, false),
            ("copy", Lvmthin, false, false, true),
            ("copy", Lvmthin, true, false, true),
            ("copy", Lvmthin, false, true, true),
            ("copy", Lvm, false, true, false),
            ("copy", Lvm, false, false, true),
            ("sparseinit", Lvmthin, false, false, true),
            ("sparseinit", File, true, false, true),
            ("sparseinit", Lvm, false, false, false),
            ("sparseinit", Lvmthin, false, true, false),
            ("rename", Lvmthin, false, false, true),
            ("rename", Lvmthin, false, true, false),
            ("rename", Lvmthin, true, false, false),
            ("replicate", Lvmthin, false, false, false),
        ];
        for (f, k, base, snap, want) in table {
            assert_eq!(feature_supported(f, *k, *base, *snap).unwrap(), *want, "{f} {k:?} base={base} snap={snap}");
        }
        assert_eq!(feature_supported("teleport", Lvmthin, false, false).unwrap_err().kind(), "invalid-input");
    }
}
