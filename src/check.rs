//! `drbdpool check`: verify the cluster store against itself and against this
//! node, for admins (after a crash, before an upgrade) and for the fault tests.
//! Read-only: it never changes anything, it says what to do.
//!
//! Store: every document readable; minors unique cluster-wide, ports unique per
//! node, resource names unique, node ids unique within a resource; replicas on
//! registered nodes; no volume left in `creating`/`deleting` longer than a bound;
//! no lock older than the lock lifetime; no temp file of a crashed writer.
//! This node: every configured DRBD resource, backing device (file image or LV)
//! and loop device belongs to a volume that lists this node ("leaked"); every
//! volume that lists this node has its backing device and resource here ("missing";
//! not a replica taken down by a rollback in progress). Backing devices are looked for in
//! the locations the documents name, in those of every drbdpool storage in storage.cfg
//! (`DRBDPOOL_STORAGE_CFG`, else /etc/pve/storage.cfg), and among the LVs of every VG: a
//! storage whose last volume document is gone still has its leaks found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::Result;
use crate::exec::{Cmd, RealRunner, Runner};
use crate::backend::BackendSpec;
use crate::store::docs::{VolumeDoc, VolumeState};
use crate::store::Store;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable word: unreadable, duplicate-minor, duplicate-port, duplicate-resource,
    /// duplicate-node-id, unregistered-node, stuck-creating, stuck-deleting, stale-lock,
    /// temp-file, leaked-resource, leaked-backing, leaked-loop, missing-backing, missing-resource,
    /// migration-window, stuck-rollback, local-unchecked, index-drift.
    pub kind: String,
    /// What it is about (volume id, node, path).
    pub subject: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn f(kind: &str, subject: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding { kind: kind.into(), subject: subject.into(), message: message.into() }
}

pub struct CheckOpts {
    /// Inspect this node's resources and backing devices too (None: store only).
    pub node: Option<String>,
    /// A volume in `creating`/`deleting` longer than this is reported.
    pub stuck_after: Duration,
    /// A lock directory older than this is stale.
    pub lock_lifetime: Duration,
}

/// Default bound for `creating`/`deleting`: an alloc gives up after at most
/// 30 s (protocol::ALLOC_BUDGET) and the agents roll back a `creating` volume after
/// `create_expiry` (300 s); anything older than that has nobody working on it.
pub fn default_stuck_after() -> Duration {
    crate::agent::reconcile::create_expiry() + Duration::from_secs(60)
}

fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

fn vid(v: &VolumeDoc) -> String {
    format!("{}:{}", v.storeid, v.volname)
}

/// Every finding, sorted (kind, subject).
pub fn check(store: &Store, o: &CheckOpts) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let docs = read_all(store, &mut out)?;
    check_store(store, &docs, o, &mut out)?;
    if let Some(node) = &o.node {
        let runner: Arc<dyn Runner> = Arc::new(RealRunner);
        match crate::node::replication_from_env(node, runner.clone()) {
            Ok(repl) => {
                let mut storeids: BTreeSet<String> = store.storeids()?.into_iter().collect();
                storeids.extend(docs.iter().map(|v| v.storeid.clone()));
                let configured = configured_storages(node, &mut out);
                storeids.extend(configured.iter().map(|(s, _)| s.clone()));
                let specs: Vec<BackendSpec> = configured.into_iter().map(|(_, b)| b).collect();
                check_local(node, &docs, &storeids, &specs, &*repl, &*runner, o, &mut out)
            }
            Err(e) => out.push(f(
                "local-unchecked",
                node.as_str(),
                format!("cannot inspect node {node}'s DRBD side: {e}; run `drbdpool check` on a node with drbd-utils, or `--cluster` for the store only"),
            )),
        }
    }
    out.sort_by(|a, b| (&a.kind, &a.subject).cmp(&(&b.kind, &b.subject)));
    out.dedup();
    Ok(out)
}

/// Read every volume document one by one, so one bad file does not hide the others.
fn read_all(store: &Store, out: &mut Vec<Finding>) -> Result<Vec<VolumeDoc>> {
    let mut docs = Vec::new();
    for sid in store.storeids()? {
        for name in store.volume_names(&sid)? {
            match store.volume(&sid, &name) {
                Ok(Some(v)) => docs.push(v),
                Ok(None) => {}
                Err(e) => out.push(f("unreadable", format!("{sid}:{name}"), format!("{e}; restore it from a backup of /etc/pve or remove it by hand"))),
            }
        }
    }
    Ok(docs)
}

fn check_store(store: &Store, docs: &[VolumeDoc], o: &CheckOpts, out: &mut Vec<Finding>) -> Result<()> {
    let mut minors: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut ports: BTreeMap<(String, u16), Vec<String>> = BTreeMap::new();
    let mut resources: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for v in docs {
        minors.entry(v.minor).or_default().push(vid(v));
        resources.entry(&v.resource).or_default().push(vid(v));
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for r in &v.replicas {
            ports.entry((r.node.clone(), v.port)).or_default().push(vid(v));
            if !ids.insert(r.node_id) || !names.insert(&r.node) {
                out.push(f(
                    "duplicate-node-id",
                    vid(v),
                    format!("node {} or node id {} appears twice in the replicas of {}: free the volume and allocate it again", r.node, r.node_id, vid(v)),
                ));
            }
        }
    }
    let dup_hint = "two volumes would fight over one DRBD device; free the newer one (`pvesm free`) and allocate it again";
    for (m, vs) in minors.iter().filter(|(_, vs)| vs.len() > 1) {
        out.push(f("duplicate-minor", format!("minor {m}"), format!("minor {m} is used by {}: {dup_hint}", vs.join(", "))));
    }
    for ((n, p), vs) in ports.iter().filter(|(_, vs)| vs.len() > 1) {
        out.push(f("duplicate-port", format!("{n}:{p}"), format!("port {p} on node {n} is used by {}: {dup_hint}", vs.join(", "))));
    }
    for (r, vs) in resources.iter().filter(|(_, vs)| vs.len() > 1) {
        out.push(f("duplicate-resource", r.to_string(), format!("resource name {r} is used by {}: {dup_hint}", vs.join(", "))));
    }

    let registered: BTreeSet<String> = store.nodes()?.into_iter().map(|n| n.name).collect();
    let states: BTreeMap<String, crate::store::docs::NodeState> = store.node_states()?.into_iter().map(|s| (s.node.clone(), s)).collect();
    let now = crate::protocol::now();
    for v in docs {
        for r in v.replicas.iter().filter(|r| !registered.contains(&r.node)) {
            out.push(f(
                "unregistered-node",
                vid(v),
                format!("{} has a replica on node {}, which is not registered: `drbdpool node add {} --address <ip>` or free the volume", vid(v), r.node, r.node),
            ));
        }
        if let Some(dp) = &v.dual_primary {
            let a = now.saturating_sub(dp.since);
            if a > o.stuck_after.as_secs() {
                out.push(f(
                    "migration-window",
                    vid(v),
                    format!(
                        "{} has allowed two primaries ({} -> {}) for {a}s: a live migration died in the middle. Once the guest runs on one node only, deactivate the volume on the other (or run `pvesm path` and stop the stray guest) to close the window",
                        vid(v),
                        dp.source,
                        dp.target
                    ),
                ));
            }
        }
        for (sn, m) in v.snapshots.iter().filter_map(|s| s.rollback.as_ref().map(|m| (&s.name, m))) {
            let a = now.saturating_sub(m.since);
            if a > o.stuck_after.as_secs() {
                out.push(f(
                    "stuck-rollback",
                    vid(v),
                    format!(
                        "{} has been marked for a rollback to {sn} on {} for {a}s: the rollback died in the middle and the other replicas stay down (discarded) until it finishes. Repeat it on {}: `qm rollback`/`pct rollback` (or `pvesm` snapshot_rollback) to {sn}",
                        vid(v),
                        m.source,
                        m.source
                    ),
                ));
            }
        }
        let mtime = std::fs::metadata(store.root().join("volumes").join(&v.storeid).join(format!("{}.json", v.volname))).and_then(|m| m.modified()).ok();
        match v.state {
            VolumeState::Creating => {
                let a = Duration::from_secs(now.saturating_sub(v.created));
                if a > o.stuck_after {
                    out.push(f(
                        "stuck-creating",
                        vid(v),
                        format!(
                            "{} has been `creating` for {}s: its alloc died. The agents roll it back; if none runs, start `drbdpool agent --once` on {} (or `pvesm free {}`)",
                            vid(v),
                            a.as_secs(),
                            nodes_of(v).join(", "),
                            vid(v)
                        ),
                    ));
                }
            }
            VolumeState::Deleting => {
                let a = mtime.map(age).unwrap_or_default();
                if a > o.stuck_after {
                    let holding: Vec<String> = nodes_of(v).into_iter().filter(|n| states.get(n).is_some_and(|s| s.volumes.contains_key(&v.resource))).collect();
                    out.push(f(
                        "stuck-deleting",
                        vid(v),
                        format!(
                            "{} has been `deleting` for {}s; node(s) {} still hold a replica: check `drbdpool status` and the agent there (`journalctl -u drbdpool-agent`)",
                            vid(v),
                            a.as_secs(),
                            if holding.is_empty() { "none (no agent removed the document)".to_string() } else { holding.join(", ") }
                        ),
                    ));
                }
            }
            VolumeState::Ready => {}
        }
    }

    // Locks of dead holders and temp files of crashed writers.
    if let Ok(rd) = std::fs::read_dir(store.lock_dir()) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with("drbdpool-") && !n.starts_with(".broken-drbdpool-") {
                continue;
            }
            let a = e.metadata().and_then(|m| m.modified()).map(age).unwrap_or_default();
            if a > o.lock_lifetime {
                out.push(f(
                    "stale-lock",
                    e.path().display().to_string(),
                    format!("lock {n} is {}s old (lifetime {}s): its holder died. It is broken by the next operation; or remove it: rmdir {}", a.as_secs(), o.lock_lifetime.as_secs(), e.path().display()),
                ));
            }
        }
    }
    for sid in store.storeids()? {
        for n in store.index_drift(&sid)? {
            out.push(f(
                "index-drift",
                format!("{sid}:{n}"),
                format!("the list index entry of {sid}:{n} disagrees with its document and no change mark says so: `list` shows stale size/state. Rebuild the index: rm -r {}", store.root().join("index").join(&sid).display()),
            ));
        }
    }
    let mut dirs = vec![store.root().join("nodes"), store.root().join("state"), store.root().join("usage")];
    dirs.extend(store.storeids()?.into_iter().flat_map(|s| [store.root().join("volumes").join(&s), store.root().join("index").join(&s)]));
    for d in dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let a = e.metadata().and_then(|m| m.modified()).map(age).unwrap_or_default();
                if a > Duration::from_secs(60) {
                    out.push(f("temp-file", e.path().display().to_string(), format!("temp file of a writer that died {}s ago: remove it (rm {})", a.as_secs(), e.path().display())));
                }
            }
        }
    }
    Ok(())
}

/// The drbdpool storages of storage.cfg (`DRBDPOOL_STORAGE_CFG`, else /etc/pve/storage.cfg):
/// (storeid, backend location). None when the file does not exist (not a PVE node).
fn configured_storages(node: &str, out: &mut Vec<Finding>) -> Vec<(String, BackendSpec)> {
    let path = std::env::var_os("DRBDPOOL_STORAGE_CFG").map(std::path::PathBuf::from).unwrap_or_else(|| "/etc/pve/storage.cfg".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            out.push(f("local-unchecked", node, format!("cannot read {}: {e}; leaked backing devices of storages without volumes are not looked for", path.display())));
            return Vec::new();
        }
    };
    let mut res = Vec::new();
    for (sid, props) in parse_storage_cfg(&text) {
        match crate::protocol::scfg::StorageCfg::parse(&props) {
            Ok(c) => res.push((sid, c.backend)),
            Err(e) => out.push(f("local-unchecked", format!("{node}:{sid}"), format!("storage {sid} in {}: {e}; its backing devices were not looked at", path.display()))),
        }
    }
    res
}

/// `drbdpool: <storeid>` sections of PVE's section config and their backend properties.
fn parse_storage_cfg(text: &str) -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
    let mut res: Vec<(String, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    let mut cur: Option<usize> = None;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            cur = None;
            if let Some((ty, id)) = line.split_once(':') {
                if ty.trim() == "drbdpool" && crate::naming::check_storeid(id.trim()).is_ok() {
                    res.push((id.trim().to_string(), serde_json::Map::new()));
                    cur = Some(res.len() - 1);
                }
            }
            continue;
        }
        let Some(i) = cur else { continue };
        let (k, v) = line.trim().split_once(char::is_whitespace).unwrap_or((line.trim(), ""));
        if matches!(k, "drbdpool-backend" | "vgname" | "thinpool" | "drbdpool-dir") {
            res[i].1.insert(k.to_string(), serde_json::Value::String(v.trim().to_string()));
        }
    }
    res
}

fn nodes_of(v: &VolumeDoc) -> Vec<String> {
    v.replicas.iter().map(|r| r.node.clone()).collect()
}

/// Storage locations named by the documents and by storage.cfg (the only places drbdpool puts
/// backing devices).
fn backends(docs: &[VolumeDoc], configured: &[BackendSpec]) -> Vec<BackendSpec> {
    let mut v: Vec<BackendSpec> = Vec::new();
    for b in docs.iter().map(|d| &d.backend).chain(configured) {
        if !v.contains(b) {
            v.push(b.clone());
        }
    }
    v
}

/// Backing device names present in one backend location, with a path for the message; in a
/// shared location (a VG) only names of this cluster's storages.
fn list_backings(spec: &BackendSpec, storeids: &BTreeSet<String>, runner: &dyn Runner) -> Result<Vec<(String, String)>> {
    let ours = |n: &str| storeids.iter().any(|s| n.starts_with(&format!("{s}.")));
    spec.backings(runner, &ours)
}

/// A backing device named as drbdpool names them: `<storeid>.<volume name>` of one of `storeids`.
fn drbdpool_named(name: &str, storeids: &BTreeSet<String>) -> bool {
    storeids.iter().any(|s| name.strip_prefix(s.as_str()).and_then(|r| r.strip_prefix('.')).is_some_and(|v| crate::naming::parse_volname(v).is_ok()))
}

/// Every loop device: (device, backing file, file deleted, inode).
fn all_loops(runner: &dyn Runner) -> Result<Vec<(String, String, bool, u64)>> {
    let o = runner.run(&Cmd::new("losetup").args(["-J", "-l", "-O", "NAME,BACK-FILE,BACK-INO"]))?;
    if !o.success() || o.stdout.trim().is_empty() {
        return Ok(vec![]);
    }
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap_or_default();
    let mut out = Vec::new();
    for d in v.get("loopdevices").and_then(|l| l.as_array()).into_iter().flatten() {
        let (Some(name), Some(file)) = (d.get("name").and_then(|x| x.as_str()), d.get("back-file").and_then(|x| x.as_str())) else { continue };
        let ino = d.get("back-ino").and_then(|x| x.as_u64().or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))).unwrap_or(0);
        let deleted = file.ends_with(" (deleted)");
        out.push((name.to_string(), file.trim_end_matches(" (deleted)").to_string(), deleted, ino));
    }
    Ok(out)
}

/// Loop devices of the file backend: one per image, none on a deleted image. Images are
/// recognized by name (`<storeid>.*.img`) and matched by inode, not by path: the kernel
/// shows a path relative to the mount the file was opened through (in the test lab, a
/// private bind mount per simulated node), so only the file name is reliable.
fn check_loops(node: &str, dirs: &[String], storeids: &BTreeSet<String>, runner: &dyn Runner, out: &mut Vec<Finding>) {
    use std::os::unix::fs::MetadataExt;
    let loops = match all_loops(runner) {
        Ok(l) => l,
        Err(e) => return out.push(f("local-unchecked", node, format!("cannot list loop devices: {e}"))),
    };
    let ours = |file: &str| {
        let base = Path::new(file).file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
        base.ends_with(".img") && storeids.iter().any(|s| base.starts_with(&format!("{s}.")))
    };
    let mut local: BTreeMap<u64, String> = BTreeMap::new();
    for d in dirs {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                local.insert(m.ino(), e.path().display().to_string());
            }
        }
    }
    let mut per_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (dev, file, deleted, ino) in loops.into_iter().filter(|l| ours(&l.1)) {
        if deleted {
            out.push(f("leaked-loop", dev.clone(), format!("loop device {dev} still holds the deleted image {file}: `losetup -d {dev}`")));
        } else if let Some(img) = local.get(&ino) {
            per_file.entry(img.clone()).or_default().push(dev);
        }
    }
    for (file, devs) in per_file.iter().filter(|(_, d)| d.len() > 1) {
        out.push(f("leaked-loop", format!("{node}:{file}"), format!("image {file} is attached to {} loop devices ({}): detach the ones DRBD does not use", devs.len(), devs.join(", "))));
    }
}

#[allow(clippy::too_many_arguments)]
fn check_local(
    node: &str,
    docs: &[VolumeDoc],
    storeids: &BTreeSet<String>,
    configured_specs: &[BackendSpec],
    repl: &dyn crate::drbd::Replication,
    runner: &dyn Runner,
    o: &CheckOpts,
    out: &mut Vec<Finding>,
) {
    // Replicas a finished move released here are this node's until its agent removed them.
    let mine: BTreeMap<&str, &VolumeDoc> =
        docs.iter().filter(|v| v.replica(node).is_some() || v.released.iter().any(|n| n == node)).map(|v| (v.resource.as_str(), v)).collect();
    let all: BTreeSet<&str> = docs.iter().map(|v| v.resource.as_str()).collect();
    let max_hosts = repl.max_hosts().unwrap_or(32);
    let configured: BTreeSet<String> = match repl.configured() {
        Ok(c) => c.into_iter().collect(),
        Err(e) => {
            out.push(f("local-unchecked", node, format!("cannot list the DRBD resources configured on {node}: {e}")));
            return;
        }
    };
    for r in configured.iter().filter(|r| !mine.contains_key(r.as_str())) {
        let why = if all.contains(r.as_str()) { "a volume that does not list this node" } else { "no volume" };
        out.push(f(
            "leaked-resource",
            format!("{node}:{r}"),
            format!("DRBD resource {r} is configured on {node} but belongs to {why}: the agent takes it down; if it stays, `drbdadm down {r}` and remove /etc/drbd.d/drbdpool/{r}.res after checking nobody uses it"),
        ));
    }
    let leaked = |path: &str| {
        f(
            "leaked-backing",
            format!("{node}:{path}"),
            format!("backing device {path} on {node} belongs to no volume that lists this node: check it holds nothing you need, then remove it (lvremove / rm)"),
        )
    };
    let mut backings: BTreeSet<String> = BTreeSet::new();
    let specs = backends(docs, configured_specs);
    for spec in &specs {
        match list_backings(spec, storeids, runner) {
            Ok(list) => {
                for (name, path) in list {
                    if !mine.get(name.as_str()).is_some_and(|v| v.backend == *spec) {
                        out.push(leaked(&path));
                    }
                    backings.insert(name);
                }
            }
            // A storage.cfg entry whose VG or directory is not on this node (`nodes` limits it).
            Err(e) if !backends(docs, &[]).contains(spec) => tracing::debug!(?spec, error = %e, "storage.cfg location not here"),
            Err(e) => out.push(f("local-unchecked", format!("{node}:{spec:?}"), format!("cannot list backing devices: {e}"))),
        }
    }
    // LVs of this cluster's storages in any VG, also where no document or storage.cfg entry
    // names that VG (a storage removed from storage.cfg with its volumes' LVs left behind).
    let lvm_known = specs.iter().any(|b| b.kind.caps().lvm);
    match crate::backend::lvmreport::lvs_all(runner) {
        Ok(rows) => {
            for r in rows {
                let (Some(name), Some(vg)) = (r.get("lv_name"), r.get("vg_name")) else { continue };
                if !drbdpool_named(name, storeids) || all.contains(name.as_str()) {
                    continue;
                }
                out.push(leaked(&format!("{vg}/{name}")));
            }
        }
        Err(e) if lvm_known => out.push(f("local-unchecked", node, format!("cannot list the LVs of this node: {e}"))),
        Err(e) => tracing::debug!(error = %e, "no LVM here; LVs not looked at"),
    }
    let dirs: Vec<String> = specs.iter().filter(|b| b.kind.caps().loops).filter_map(|b| b.dir.clone()).collect();
    if !dirs.is_empty() || !storeids.is_empty() {
        check_loops(node, &dirs, storeids, runner, out);
    }
    let now = crate::protocol::now();
    for (r, v) in &mine {
        // Replicas of `creating` volumes are made right now; `deleting` ones are going.
        let settled = v.state == VolumeState::Ready || (v.state == VolumeState::Creating && now.saturating_sub(v.created) > o.stuck_after.as_secs());
        if !settled || v.replica(node).is_none() {
            continue;
        }
        if !backings.contains(*r) {
            out.push(f("missing-backing", format!("{node}:{r}"), format!("{} lists {node} as a replica but its backing device is missing there: the agent recreates it (empty: it resyncs from a peer); check `journalctl -u drbdpool-agent`", vid(v))));
        }
        // Down on purpose during a rollback: discarded for a rollback on another node until the
        // mark is cleared (a mark left too long is reported as stuck-rollback), or this node is
        // the source and takes its resource down while it rolls the backing device back; its
        // agent or the repeated rollback brings it up, so only a mark past the bound counts here.
        let down_for_rollback = v.snapshots.iter().filter_map(|s| s.rollback.as_ref()).any(|m| {
            m.source != node || now.saturating_sub(m.since) <= o.stuck_after.as_secs()
        });
        // A move's source that DRBD 8.4 leaves out is down on purpose, its backing kept.
        if !configured.contains(*r) && !down_for_rollback && !v.parked_on(node, max_hosts) {
            out.push(f("missing-resource", format!("{node}:{r}"), format!("{} lists {node} as a replica but DRBD resource {r} is not configured there: check that the agent runs (`systemctl status drbdpool-agent`)", vid(v))));
        }
    }
}

/// The report as text: one finding per line, or a one-line "ok".
pub fn render(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "ok: no findings".into();
    }
    let mut s = String::new();
    for x in findings {
        s += &format!("{}: {}: {}\n", x.kind, x.subject, x.message);
    }
    s += &format!("{} finding(s)", findings.len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::exec::{Output, RecordingRunner};

    #[test]
    fn storage_cfg_sections_of_drbdpool_only() {
        let text = "dir: local\n\tpath /var/lib/vz\n\ndrbdpool: dp\n\tdrbdpool-backend file\n\tdrbdpool-dir /srv/dp\n\tnodes a,b\n\
                    lvmthin: local-lvm\n\tvgname pve\n\tthinpool data\n# a comment\ndrbdpool: thin1\n\tvgname ssd\n\tthinpool data\n";
        let got = parse_storage_cfg(text);
        assert_eq!(got.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["dp", "thin1"]);
        let dp = crate::protocol::scfg::StorageCfg::parse(&got[0].1).unwrap().backend;
        assert_eq!((dp.kind, dp.dir.as_deref()), (BackendKind::File, Some("/srv/dp")));
        let t = crate::protocol::scfg::StorageCfg::parse(&got[1].1).unwrap().backend;
        assert_eq!((t.kind, t.vg.as_deref(), t.thinpool.as_deref()), (BackendKind::Lvmthin, Some("ssd"), Some("data")));
    }

    /// Issue 18, 5: LVs of a storage with no volume document left are found in any VG,
    /// by name; PVE's own LVs and snapshot LVs are not taken for drbdpool's.
    #[test]
    fn leaked_lvs_of_a_storage_without_documents_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let repl = crate::drbd::sim::SimDrbd::new(dir.path(), "n1").unwrap();
        let rec = RecordingRunner::new();
        let lv = |n: &str, vg: &str| format!("{{\"lv_name\":\"{n}\",\"vg_name\":\"{vg}\",\"lv_attr\":\"Vwi-a-tz--\",\"lv_size\":\"4194304B\",\"pool_lv\":\"data\",\"data_percent\":\"0.00\",\"lv_path\":\"/dev/{vg}/{n}\"}}");
        let report = format!(
            "{{\"report\":[{{\"lv\":[{},{},{},{}]}}]}}",
            lv("dp.vm-100-disk-0", "ssd"),
            lv("vm-100-disk-0", "pve"),
            lv("dp.vm-100-disk-0_snap1", "ssd"),
            lv("other.vm-1-disk-0", "ssd")
        );
        rec.on(&["lvs"], Output::ok(report));
        rec.on(&["losetup"], Output::ok(""));
        let storeids: BTreeSet<String> = ["dp".to_string()].into();
        let o = CheckOpts { node: Some("n1".into()), stuck_after: Duration::from_secs(60), lock_lifetime: Duration::from_secs(120) };
        let mut out = Vec::new();
        check_local("n1", &[], &storeids, &[], &repl, &rec, &o, &mut out);
        let leaks: Vec<&str> = out.iter().filter(|x| x.kind == "leaked-backing").map(|x| x.subject.as_str()).collect();
        assert_eq!(leaks, ["n1:ssd/dp.vm-100-disk-0"], "{out:?}");
        // No LVM on the node and no LVM storage known: nothing to report about it.
        let rec = RecordingRunner::new();
        rec.on(&["lvs"], Output::fail(127, "lvs: command not found"));
        rec.on(&["losetup"], Output::ok(""));
        let mut out = Vec::new();
        check_local("n1", &[], &storeids, &[], &repl, &rec, &o, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
