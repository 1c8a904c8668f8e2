//! Commands for people: status tables, volume list/show, node registry. The
//! plugin entry for the Perl shim is in `plugin`.

pub mod plugin;
mod table;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::naming;
use crate::store::docs::{NodeDoc, NodeState, VolumeDoc};
use crate::store::lock::ALLOC_LOCK;
use crate::store::Store;

pub use table::Table;

/// This node's name: flag (or `DRBDPOOL_NODE`, filled in by clap), else the
/// request's `node`, else `uname -n`.
pub fn node_name(flag: Option<&str>, request: Option<&str>) -> Result<String> {
    let n = match flag.or(request).filter(|s| !s.is_empty()) {
        Some(n) => n.to_string(),
        None => nix::sys::utsname::uname()
            .map_err(|e| Error::Other(anyhow::anyhow!("uname failed: {e}")))?
            .nodename()
            .to_string_lossy()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    naming::check_node_name(&n)?;
    Ok(n)
}

fn human(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

fn state_word(d: &VolumeDoc) -> &'static str {
    match d.state {
        crate::store::docs::VolumeState::Creating => "creating",
        crate::store::docs::VolumeState::Ready => "ready",
        crate::store::docs::VolumeState::Deleting => "deleting",
    }
}

/// One row per replica of every volume, joined with what that node published.
fn status_rows(store: &Store) -> Result<(Vec<VolumeDoc>, BTreeMap<String, NodeState>)> {
    let vols = store.all_volumes()?;
    let states = store.node_states()?.into_iter().map(|s| (s.node.clone(), s)).collect();
    Ok((vols, states))
}

pub fn status_json(store: &Store) -> Result<Value> {
    let (vols, states) = status_rows(store)?;
    let mut out = Vec::new();
    for v in &vols {
        let mut nodes = serde_json::Map::new();
        for r in &v.replicas {
            let o = states.get(&r.node).and_then(|s| s.volumes.get(&v.resource));
            nodes.insert(r.node.clone(), serde_json::to_value(o).unwrap_or(Value::Null));
        }
        out.push(json!({
            "volid": format!("{}:{}", v.storeid, v.volname), "resource": v.resource, "size": v.size_kib * 1024,
            "state": state_word(v), "minor": v.minor, "port": v.port, "outdated": v.outdated, "nodes": nodes,
        }));
    }
    Ok(json!({"volumes": out}))
}

pub fn status_table(store: &Store) -> Result<String> {
    let (vols, states) = status_rows(store)?;
    let mut t = Table::new(&["VOLUME", "SIZE", "STATE", "NODE", "ROLE", "DISK", "CONNECTION", "SYNC"]);
    for v in &vols {
        for (i, r) in v.replicas.iter().enumerate() {
            let o = states.get(&r.node).and_then(|s| s.volumes.get(&v.resource));
            let (role, mut disk, conn, sync) = match o {
                None => ("-".to_string(), "no report".to_string(), "-".to_string(), String::new()),
                Some(o) => (
                    o.role.clone(),
                    o.disk.clone(),
                    o.peers.iter().map(|p| format!("{}:{}", p.node, p.connection)).collect::<Vec<_>>().join(","),
                    o.peers.iter().filter_map(|p| p.sync_percent).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
                        .map(|p| format!("{p:.1}%")).unwrap_or_default(),
                ),
            };
            if v.outdated.contains(&r.node) {
                disk.push_str(" (fenced)");
            }
            if let Some(e) = o.and_then(|o| o.error.as_ref()) {
                disk.push_str(&format!(" error: {e}"));
            }
            let first = i == 0;
            t.row(vec![
                if first { format!("{}:{}", v.storeid, v.volname) } else { String::new() },
                if first { human(v.size_kib * 1024) } else { String::new() },
                if first { state_word(v).to_string() } else { String::new() },
                r.node.clone(),
                role,
                disk,
                conn,
                sync,
            ]);
        }
    }
    Ok(t.render())
}

pub fn volume_list(store: &Store, as_json: bool) -> Result<String> {
    let vols = store.all_volumes()?;
    if as_json {
        let v: Vec<Value> = vols
            .iter()
            .map(|v| json!({"volid": format!("{}:{}", v.storeid, v.volname), "resource": v.resource, "size": v.size_kib * 1024,
                "state": state_word(v), "minor": v.minor, "port": v.port,
                "replicas": v.replicas.iter().map(|r| r.node.clone()).collect::<Vec<_>>()}))
            .collect();
        return Ok(serde_json::to_string_pretty(&json!({"volumes": v})).unwrap());
    }
    let mut t = Table::new(&["VOLUME", "SIZE", "STATE", "RESOURCE", "DEVICE", "PORT", "REPLICAS"]);
    for v in &vols {
        t.row(vec![
            format!("{}:{}", v.storeid, v.volname),
            human(v.size_kib * 1024),
            state_word(v).into(),
            v.resource.clone(),
            v.device_path(),
            v.port.to_string(),
            v.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(","),
        ]);
    }
    Ok(t.render())
}

/// `storeid:volname`, or a bare volname found in exactly one storage.
pub fn find_volume(store: &Store, id: &str) -> Result<VolumeDoc> {
    let (sid, vol) = naming::split_volid(id);
    naming::parse_volname(vol)?;
    let sids = match sid {
        Some(s) => {
            naming::check_storeid(s)?;
            vec![s.to_string()]
        }
        None => store.storeids()?,
    };
    let mut found = Vec::new();
    for s in sids {
        if let Some(d) = store.volume(&s, vol)? {
            found.push(d);
        }
    }
    match found.len() {
        0 => Err(Error::NotFound(format!("volume {id} does not exist (see `drbdpool volume list`)"))),
        1 => Ok(found.remove(0)),
        _ => Err(crate::invalid!(
            "{vol} exists in several storages ({}): say which, as <storeid>:{vol}",
            found.iter().map(|d| d.storeid.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

pub fn volume_show(store: &Store, id: &str) -> Result<String> {
    let d = find_volume(store, id)?;
    let mut v = serde_json::to_value(&d).map_err(|e| Error::Other(e.into()))?;
    v["secret"] = json!("(hidden)");
    let mut obs = serde_json::Map::new();
    for r in &d.replicas {
        let o = store.node_state(&r.node)?.and_then(|s| s.volumes.get(&d.resource).cloned());
        obs.insert(r.node.clone(), serde_json::to_value(o).unwrap_or(Value::Null));
    }
    v["observed"] = Value::Object(obs);
    v["device"] = json!(d.device_path());
    Ok(serde_json::to_string_pretty(&v).unwrap())
}

pub fn node_add(store: &Store, name: &str, address: &str) -> Result<String> {
    naming::check_node_name(name)?;
    let ip: IpAddr = address
        .parse()
        .map_err(|_| crate::invalid!("address '{address}' is not an IPv4 or IPv6 address (no port, no host name)"))?;
    let _g = store.lock(ALLOC_LOCK)?;
    if let Some(n) = store.nodes()?.into_iter().find(|n| n.name != name && n.address.parse::<IpAddr>().ok() == Some(ip)) {
        return Err(Error::Conflict(format!("address {ip} is already registered for node {}", n.name)));
    }
    let old = store.node(name)?;
    store.put_node(&NodeDoc { format: crate::store::docs::FORMAT, name: name.to_string(), address: ip.to_string() })?;
    Ok(match old {
        Some(o) if o.address == ip.to_string() => format!("node {name} is already registered with address {ip}"),
        Some(o) => format!("node {name}: address changed from {} to {ip}", o.address),
        None => format!("registered node {name} with replication address {ip}"),
    })
}

pub fn node_remove(store: &Store, name: &str) -> Result<String> {
    naming::check_node_name(name)?;
    let _g = store.lock(ALLOC_LOCK)?;
    if store.node(name)?.is_none() {
        return Err(Error::NotFound(format!("node {name} is not registered (see `drbdpool node list`)")));
    }
    let held: Vec<String> =
        store.all_volumes()?.into_iter().filter(|v| v.replica(name).is_some()).map(|v| format!("{}:{}", v.storeid, v.volname)).collect();
    if !held.is_empty() {
        return Err(crate::refused!(
            "node {name} still holds replicas of {} volume(s): {}{}; move or free them first",
            held.len(),
            held.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if held.len() > 10 { ", ..." } else { "" }
        ));
    }
    store.remove_node(name)?;
    Ok(format!("removed node {name}"))
}

pub fn node_list(store: &Store, as_json: bool) -> Result<String> {
    let nodes = store.nodes()?;
    let states: BTreeMap<String, NodeState> = store.node_states()?.into_iter().map(|s| (s.node.clone(), s)).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if as_json {
        let v: Vec<Value> = nodes
            .iter()
            .map(|n| json!({"name": n.name, "address": n.address, "updated": states.get(&n.name).map(|s| s.updated), "storages": states.get(&n.name).map(|s| &s.storages)}))
            .collect();
        return Ok(serde_json::to_string_pretty(&json!({"nodes": v})).unwrap());
    }
    let mut t = Table::new(&["NODE", "ADDRESS", "AGENT", "STORAGES (avail/total)"]);
    for n in &nodes {
        let s = states.get(&n.name);
        t.row(vec![
            n.name.clone(),
            n.address.clone(),
            s.map(|s| format!("seen {}s ago", now.saturating_sub(s.updated))).unwrap_or_else(|| "never reported".into()),
            s.map(|s| s.storages.iter().map(|(k, v)| format!("{k} {}/{}", human(v.avail), human(v.total))).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
        ]);
    }
    Ok(t.render())
}

/// `drbdpool doctor`: every check with its level; (text, any failure).
pub fn doctor(store: Option<&Store>, json: bool) -> Result<(String, bool)> {
    use crate::doctor::{self, Level};
    let runner = crate::exec::RealRunner;
    let nodes = store.map(|s| s.nodes()).transpose()?.unwrap_or_default();
    let mut checks = vec![doctor::check_drbd_versions(&runner), doctor::check_lvm_filter(&runner)];
    let paths = doctor::Paths::default();
    checks.extend(doctor::check_cluster(doctor::read_corosync(&paths.corosync_conf).as_ref(), &nodes));
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if json {
        return Ok((serde_json::to_string_pretty(&checks).unwrap() + "\n", failed));
    }
    let mut out = String::new();
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!("{tag} {:<20} {}\n", c.name, c.message));
    }
    Ok((out, failed))
}

/// `drbdpool ha-sync`: one HA rule sync, reported.
pub fn ha_sync(store: &Store) -> Result<String> {
    let runner: std::sync::Arc<dyn crate::exec::Runner> = std::sync::Arc::new(crate::exec::RealRunner);
    let Some(sync) = crate::agent::ha_sync::HaSync::from_env(runner) else {
        return Err(Error::NotFound("no HA configuration here (/etc/pve/ha missing or DRBDPOOL_HA=off)".into()));
    };
    let rep = sync.sync(store)?;
    let mut out = String::new();
    for (what, ids) in [("added", &rep.added), ("changed", &rep.changed), ("removed", &rep.removed), ("unchanged", &rep.unchanged)] {
        for id in ids {
            out.push_str(&format!("{what:<10} {id}\n"));
        }
    }
    for c in &rep.conflicts {
        out.push_str(&format!("conflict   {c}\n"));
    }
    if out.is_empty() {
        out.push_str("no HA-managed guest has drbdpool disks\n");
    }
    Ok(out)
}
