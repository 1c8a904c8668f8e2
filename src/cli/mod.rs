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

pub fn human(bytes: u64) -> String {
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

fn state_word(s: crate::store::docs::VolumeState) -> &'static str {
    match s {
        crate::store::docs::VolumeState::Creating => "creating",
        crate::store::docs::VolumeState::Ready => "ready",
        crate::store::docs::VolumeState::Deleting => "deleting",
    }
}

/// One volume as `status` and `volume list` show it: from the list index (store/index.rs),
/// not the document, so a call reads 16 shards instead of every document (each a FUSE round
/// trip on pmxcfs).
struct Row {
    storeid: String,
    volname: String,
    e: crate::store::index::Entry,
}

fn rows(store: &Store) -> Result<Vec<Row>> {
    Ok(store.cli_entries()?.into_iter().map(|(storeid, volname, e)| Row { storeid, volname, e }).collect())
}

/// One row per replica of every volume, joined with what that node published.
fn status_rows(store: &Store) -> Result<(Vec<Row>, BTreeMap<String, NodeState>)> {
    let vols = rows(store)?;
    let states = store.node_states()?.into_iter().map(|s| (s.node.clone(), s)).collect();
    Ok((vols, states))
}

pub fn status_json(store: &Store) -> Result<Value> {
    let (vols, states) = status_rows(store)?;
    let mut out = Vec::new();
    for v in &vols {
        let mut nodes = serde_json::Map::new();
        for r in &v.e.replicas {
            let o = states.get(r).and_then(|s| s.volumes.get(&v.e.resource));
            nodes.insert(r.clone(), serde_json::to_value(o).unwrap_or(Value::Null));
        }
        out.push(json!({
            "volid": format!("{}:{}", v.storeid, v.volname), "resource": v.e.resource, "size": v.e.size_kib * 1024,
            "state": state_word(v.e.state), "minor": v.e.minor, "port": v.e.port, "outdated": v.e.outdated, "nodes": nodes,
        }));
    }
    Ok(json!({"volumes": out}))
}

pub fn status_table(store: &Store) -> Result<String> {
    status_table_with(store, None)
}

/// Remembers each peer's out-of-sync amount between refreshes of `status --watch`,
/// so the table can show the resync rate and an ETA.
#[derive(Default)]
pub struct SyncTracker {
    seen: BTreeMap<(String, String, String), (u64, std::time::Instant)>,
    rate: BTreeMap<(String, String, String), f64>,
}

impl SyncTracker {
    /// Record `oos_kib` now; the rate (KiB/s) when it went down since the last sample.
    fn observe(&mut self, key: (String, String, String), oos_kib: u64) -> Option<f64> {
        let now = std::time::Instant::now();
        if let Some((prev, at)) = self.seen.get(&key).copied() {
            let dt = now.duration_since(at).as_secs_f64();
            if oos_kib < prev && dt > 0.0 {
                self.rate.insert(key.clone(), (prev - oos_kib) as f64 / dt);
                self.seen.insert(key.clone(), (oos_kib, now));
            } else if oos_kib > prev {
                self.rate.remove(&key);
                self.seen.insert(key.clone(), (oos_kib, now));
            }
        } else {
            self.seen.insert(key.clone(), (oos_kib, now));
        }
        self.rate.get(&key).copied()
    }
}

/// "1h02m", "3m20s", "45s"
fn eta(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `drbdpool status --watch`: redraw every `every` until interrupted.
pub fn status_watch(store: &Store, every: std::time::Duration) -> Result<()> {
    use std::io::Write;
    let mut tracker = SyncTracker::default();
    loop {
        let table = status_table_with(store, Some(&mut tracker))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut out = std::io::stdout().lock();
        // Clear the screen and home the cursor, like watch(1).
        let _ = write!(out, "\x1b[2J\x1b[H");
        let _ = writeln!(out, "drbdpool status, every {:.0}s (unix time {now}); Ctrl-C to stop\n", every.as_secs_f64());
        let _ = write!(out, "{table}");
        let _ = out.flush();
        drop(out);
        std::thread::sleep(every);
    }
}

/// `node replace --wait`: until `node`'s replicas of `resources` are UpToDate, a line every
/// 5 s (when `print`) with each one's disk and the sync's progress, rate and ETA as
/// `status --watch` shows them.
pub fn wait_synced(store: &Store, node: &str, resources: &[String], print: bool) -> Result<()> {
    let mut tracker = SyncTracker::default();
    let mut last_print: Option<std::time::Instant> = None;
    loop {
        let st = store.node_state(node)?;
        let mut pending = Vec::new();
        for res in resources {
            let o = st.as_ref().and_then(|s| s.volumes.get(res));
            match o {
                // UpToDate, and no peer still in a sync with it (the source's side may lag a moment).
                Some(o) if o.disk == "UpToDate" && o.ready && o.peers.iter().all(|p| p.connection == "Connected" && !p.replication.contains("Sync")) => {}
                Some(o) => pending.push(format!("{res} {} {}", o.disk, sync_cell(res, node, &o.peers, Some(&mut tracker))).trim_end().to_string()),
                None => pending.push(format!("{res} not reported by {node} yet")),
            }
        }
        if pending.is_empty() {
            if print {
                println!("{node}: all {} replica(s) UpToDate", resources.len());
            }
            return Ok(());
        }
        if print && last_print.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
            println!("{node}: {} of {} syncing: {}", pending.len(), resources.len(), pending.join("; "));
            last_print = Some(std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `volume move --wait` / `node evacuate --wait`: until each volume's move is over (its old
/// replica dropped from the document and removed there), a line every 5 s (when `print`)
/// with the new replica's disk and the sync's progress, rate and ETA.
pub fn wait_moved(store: &Store, vols: &[(String, String)], print: bool) -> Result<()> {
    let mut tracker = SyncTracker::default();
    let mut last_print: Option<std::time::Instant> = None;
    loop {
        let mut pending = Vec::new();
        for (sid, name) in vols {
            let Some(d) = store.volume(sid, name)? else { continue }; // freed meanwhile
            if let Some(m) = &d.moving {
                let o = store.node_state(&m.to)?.and_then(|s| s.volumes.get(&d.resource).cloned());
                pending.push(match o {
                    Some(o) if o.disk == "UpToDate" => format!("{sid}:{name} {} UpToDate, waiting for {} to be left (a guest still runs there?)", m.to, m.from),
                    Some(o) => format!("{sid}:{name} {} {} {}", m.to, o.disk, sync_cell(&d.resource, &m.to, &o.peers, Some(&mut tracker))).trim_end().to_string(),
                    None => format!("{sid}:{name} {} not reported yet", m.to),
                });
            } else if let Some(from) = d.released.first() {
                pending.push(format!("{sid}:{name} {from} removing its old replica"));
            }
        }
        if pending.is_empty() {
            if print {
                println!("all {} move(s) over", vols.len());
            }
            return Ok(());
        }
        if print && last_print.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
            println!("{} of {} moving: {}", pending.len(), vols.len(), pending.join("; "));
            last_print = Some(std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The status table; with a tracker, resyncs show their rate and ETA.
pub fn status_table_with(store: &Store, mut tracker: Option<&mut SyncTracker>) -> Result<String> {
    let (vols, states) = status_rows(store)?;
    let mut t = Table::new(&["VOLUME", "SIZE", "STATE", "NODE", "ROLE", "DISK", "CONNECTION", "SYNC"]);
    for v in &vols {
        for (i, node) in v.e.replicas.iter().enumerate() {
            let o = states.get(node).and_then(|s| s.volumes.get(&v.e.resource));
            let (role, mut disk, conn, sync) = match o {
                None => ("-".to_string(), "no report".to_string(), "-".to_string(), String::new()),
                Some(o) => (
                    o.role.clone(),
                    o.disk.clone(),
                    o.peers.iter().map(|p| format!("{}:{}", p.node, p.connection)).collect::<Vec<_>>().join(","),
                    sync_cell(&v.e.resource, node, &o.peers, tracker.as_deref_mut()),
                ),
            };
            if v.e.outdated.contains(node) {
                disk.push_str(" (fenced)");
            }
            if let Some(e) = o.and_then(|o| o.error.as_ref()) {
                disk.push_str(&format!(" error: {e}"));
            }
            let first = i == 0;
            t.row(vec![
                if first { format!("{}:{}", v.storeid, v.volname) } else { String::new() },
                if first { human(v.e.size_kib * 1024) } else { String::new() },
                match (&v.e.moving, first) {
                    (Some(m), true) => format!("moving {}>{}", m.from, m.to),
                    (None, true) => state_word(v.e.state).to_string(),
                    (_, false) => String::new(),
                },
                node.clone(),
                role,
                disk,
                conn,
                sync,
            ]);
        }
    }
    Ok(t.render())
}

/// The SYNC column: the least-synced peer's progress, plus rate and ETA when watching.
fn sync_cell(res: &str, node: &str, peers: &[crate::store::docs::PeerObserved], tracker: Option<&mut SyncTracker>) -> String {
    let Some(p) = peers.iter().filter(|p| p.sync_percent.is_some()).min_by(|a, b| {
        a.sync_percent.partial_cmp(&b.sync_percent).unwrap_or(std::cmp::Ordering::Equal)
    }) else {
        return String::new();
    };
    let mut cell = format!("{:.1}%", p.sync_percent.unwrap_or(0.0));
    if let Some(t) = tracker {
        if p.out_of_sync_kib > 0 {
            if let Some(rate) = t.observe((res.to_string(), node.to_string(), p.node.clone()), p.out_of_sync_kib) {
                if rate > 0.0 {
                    cell.push_str(&format!(" {}/s ETA {}", human((rate * 1024.0) as u64), eta(p.out_of_sync_kib as f64 / rate)));
                }
            }
        }
    }
    cell
}

pub fn volume_list(store: &Store, as_json: bool) -> Result<String> {
    let vols = rows(store)?;
    if as_json {
        let v: Vec<Value> = vols
            .iter()
            .map(|v| json!({"volid": format!("{}:{}", v.storeid, v.volname), "resource": v.e.resource, "size": v.e.size_kib * 1024,
                "state": state_word(v.e.state), "minor": v.e.minor, "port": v.e.port, "replicas": v.e.replicas}))
            .collect();
        return Ok(serde_json::to_string_pretty(&json!({"volumes": v})).unwrap());
    }
    let mut t = Table::new(&["VOLUME", "SIZE", "STATE", "RESOURCE", "DEVICE", "PORT", "REPLICAS"]);
    for v in &vols {
        t.row(vec![
            format!("{}:{}", v.storeid, v.volname),
            human(v.e.size_kib * 1024),
            state_word(v.e.state).into(),
            v.e.resource.clone(),
            crate::store::docs::device_path(v.e.minor),
            v.e.port.to_string(),
            v.e.replicas.join(","),
        ]);
    }
    Ok(t.render())
}

/// `storeid:volname`, or a bare volname found in exactly one storage.
pub fn find_volume(store: &Store, id: &str) -> Result<VolumeDoc> {
    let (sid, vol) = naming::split_volid(id);
    // PVE's name of a linked clone (`<base>/<name>`, as in `qm config`) or its own name.
    let (base, vol) = naming::split_pve_volname(vol)?;
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
            if base.is_none_or(|b| d.parent.as_deref() == Some(b)) {
                found.push(d);
            }
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
        let o = store.node_state_of(&r.node, &d.resource)?.and_then(|s| s.volumes.get(&d.resource).cloned());
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
        store.all_volumes()?.into_iter().filter(|v| v.replica(name).is_some() || v.released.iter().any(|n| n == name)).map(|v| format!("{}:{}", v.storeid, v.volname)).collect();
    if !held.is_empty() {
        return Err(crate::refused!(
            "node {name} still holds replicas of {} volume(s): {}{}; move them (`drbdpool node evacuate {name}`) or free them first; \
             a replica a move released goes once its agent has removed it",
            held.len(),
            held.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if held.len() > 10 { ", ..." } else { "" }
        ));
    }
    store.remove_node(name)?;
    store.remove_node_state(name)?;
    Ok(format!("removed node {name}"))
}

pub fn node_list(store: &Store, as_json: bool) -> Result<String> {
    let nodes = store.nodes()?;
    let states: BTreeMap<String, NodeState> = store.node_heads()?.into_iter().map(|s| (s.node.clone(), s)).collect();
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

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn eta_formats() {
        assert_eq!(eta(45.2), "45s");
        assert_eq!(eta(200.0), "3m20s");
        assert_eq!(eta(3720.0), "1h02m");
    }

    #[test]
    fn tracker_rate_from_falling_out_of_sync() {
        let mut t = SyncTracker::default();
        let k = ("r".to_string(), "a".to_string(), "b".to_string());
        assert_eq!(t.observe(k.clone(), 10_000), None);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let r = t.observe(k.clone(), 9_000).expect("a rate once out-of-sync falls");
        assert!(r > 1_000.0 && r < 1_000.0 / 0.04, "{r}");
        // A new resync (out-of-sync grows) forgets the old rate.
        assert_eq!(t.observe(k, 50_000), None);
    }
}
