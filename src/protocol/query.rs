//! Read-only methods (status, list, path, size, features, formats) and the
//! snapshot methods drbdpool does not implement yet (refused, never faked).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::store::docs::{Space, VolumeDoc};

use super::{load, not_supported, now, Args, Ctx};

/// Our agent refreshes its state at least every 60 s; older means it is not running.
const STATUS_STALE_SECS: u64 = 300;

pub fn activate_storage(ctx: &Ctx) -> Result<Value> {
    let name = ctx.node.name();
    match ctx.store.node(name)? {
        Some(_) => Ok(json!({})),
        None => Err(Error::Refused(format!(
            "node {name} is not registered with drbdpool: run `drbdpool node add {name} --address <replication ip>` (registered: {})",
            names_or_none(ctx.store.nodes()?.iter().map(|n| n.name.clone()).collect())
        ))),
    }
}

fn names_or_none(v: Vec<String>) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Only what `status` needs of a NodeState: serde skips the (large) volumes map.
#[derive(Deserialize)]
struct StorageOnly {
    updated: u64,
    #[serde(default)]
    storages: BTreeMap<String, Space>,
}

/// From this node's published state only: no tool calls, no other node, milliseconds.
pub fn status(ctx: &Ctx, sid: &str, scfg: &Map<String, Value>) -> Result<Value> {
    let path = ctx.store.root().join("state").join(format!("{}.json", ctx.node.name()));
    let st: Option<StorageOnly> = crate::store::read_doc(&path)?;
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
    match ctx.node.space(&cfg.backend) {
        Ok(s) => Ok(json!({"total": s.total, "avail": s.avail, "used": s.used, "active": true})),
        Err(e) => {
            tracing::warn!("storage {sid} on {}: {e}", ctx.node.name());
            Ok(inactive)
        }
    }
}

fn entry(doc: &VolumeDoc, states: &[crate::store::docs::NodeState]) -> Value {
    let mut nodes = Map::new();
    for r in &doc.replicas {
        let o = states.iter().find(|s| s.node == r.node).and_then(|s| s.volumes.get(&doc.resource));
        nodes.insert(
            r.node.clone(),
            json!({"role": o.map(|o| o.role.as_str()).unwrap_or("Unknown"), "disk": o.map(|o| o.disk.as_str()).unwrap_or("Unknown")}),
        );
    }
    let mut v = json!({
        "volid": format!("{}:{}", doc.storeid, doc.volname),
        "volname": doc.volname,
        "format": "raw",
        "size": doc.size_kib * 1024,
        "vmid": doc.vmid,
        "ctime": doc.created,
        "nodes": nodes,
    });
    if let Some(p) = &doc.parent {
        v["parent"] = json!(p);
    }
    v
}

pub fn list(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let vmid = a.opt_vmid("vmid")?;
    let vollist = a.str_list("vollist")?;
    let wanted: Option<Vec<&str>> = vollist.map(|l| {
        l.into_iter().filter_map(|volid| match crate::naming::split_volid(volid) {
            (Some(s), v) if s == sid => Some(v),
            _ => None,
        }).collect()
    });
    let states = ctx.store.node_states()?;
    let mut out = Vec::new();
    for name in ctx.store.volume_names(sid)? {
        // Filter on the name alone before reading documents.
        let Ok(parsed) = crate::naming::parse_volname(&name) else { continue };
        if vmid.is_some_and(|v| v != parsed.vmid) || wanted.as_ref().is_some_and(|w| !w.contains(&name.as_str())) {
            continue;
        }
        if let Some(doc) = ctx.store.volume(sid, &name)? {
            if doc.state == crate::store::docs::VolumeState::Deleting {
                continue; // PVE must not see it (it would try to free it again)
            }
            out.push(entry(&doc, &states));
        }
    }
    Ok(json!({"volumes": out}))
}

pub fn path(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    if a.opt_str("snapname")?.is_some() {
        return Err(not_supported("snapshots"));
    }
    let doc = load(ctx, sid, volname)?;
    Ok(json!({"path": doc.device_path(), "vmid": doc.vmid, "vtype": "images"}))
}

pub fn size(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let doc = load(ctx, sid, a.str("volname")?)?;
    let bytes = doc.size_kib * 1024;
    // `used`: drbdpool does not track thin allocation per volume; report the provisioned size.
    let mut v = json!({"size": bytes, "format": "raw", "used": bytes, "ctime": doc.created});
    if let Some(p) = &doc.parent {
        v["parent"] = json!(p);
    }
    Ok(v)
}

pub fn snapshot_unsupported(ctx: &Ctx, sid: &str, a: &Args, method: &str) -> Result<Value> {
    let volname = a.str("volname")?;
    load(ctx, sid, volname)?;
    a.str("snap")?;
    Err(Error::Refused(format!("{method} of {sid}:{volname} refused: snapshots are not supported by drbdpool yet")))
}

pub fn snapshot_list(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let doc = load(ctx, sid, a.str("volname")?)?;
    let mut m = Map::new();
    for s in &doc.snapshots {
        m.insert(s.name.clone(), json!({"id": s.name, "timestamp": s.created}));
    }
    Ok(json!({"snapshots": m}))
}

/// Features that really work today. Everything else is false.
pub fn feature_supported(feature: &str, snapname: bool) -> Result<bool> {
    Ok(match feature {
        // create_base: a store rename of an inactive volume.
        "template" => !snapname,
        // rename: a store rename; the resource and device stay the same.
        "rename" => !snapname,
        // full clone / move: PVE copies between two activated block devices.
        "copy" => !snapname,
        "snapshot" | "clone" | "sparseinit" | "replicate" => false,
        other => return Err(crate::invalid!("unknown feature '{other}' (known: snapshot, clone, template, copy, sparseinit, rename, replicate)")),
    })
}

pub fn has_feature(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let feature = a.str("feature")?;
    let volname = a.str("volname")?;
    crate::naming::parse_volname(volname)?;
    let _ = (ctx, sid, a.flag("running")?);
    let supported = feature_supported(feature, a.opt_str("snapname")?.is_some())?;
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
        assert!(feature_supported("template", false).unwrap());
        assert!(!feature_supported("template", true).unwrap());
        assert!(feature_supported("rename", false).unwrap());
        assert!(feature_supported("copy", false).unwrap());
        assert!(!feature_supported("copy", true).unwrap());
        for f in ["snapshot", "clone", "sparseinit", "replicate"] {
            assert!(!feature_supported(f, false).unwrap(), "{f}");
        }
        assert_eq!(feature_supported("teleport", false).unwrap_err().kind(), "invalid-input");
    }
}
