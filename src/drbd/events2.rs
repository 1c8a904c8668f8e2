//! `drbdsetup events2` (DRBD 9, and the 9-shaped form drbdsetup-84 prints for
//! the 8.4 module): `[timestamp] <action> <object> key:value ...` lines.
//!
//! `change` lines carry only the keys that changed, so state is a merging
//! cache: `Events2State::feed` one line at a time (a live stream) or
//! `parse_now` for the whole output of `events2 --now [--statistics]`.
//! Tolerant: unknown keys are kept in `extra` and reported, unknown values
//! are kept as they are and reported, garbage lines are skipped and counted.

use std::collections::{BTreeMap, BTreeSet};

use super::{ConnectionStatus, DeviceStatus, PeerDeviceStatus, ResourceStatus};

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// `exists|create|change|destroy|call|response|rename <object> k:v ...`
    Event { action: String, object: String, fields: Vec<(String, String)> },
    /// `exists -`: the initial state dump is complete.
    InitialDone,
    /// `- skipped N`: the kernel dropped N events; cached state may be stale.
    Skipped(u64),
}

/// Parse one line; `None` for blank lines, `Err` (with the reason) for garbage.
pub fn parse_line(line: &str) -> Result<Option<Line>, String> {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    if words.is_empty() {
        return Ok(None);
    }
    // `--timestamps` prefix: 2026-11-24T20:39:59.867186+00:00
    if looks_like_timestamp(words[0]) {
        words.remove(0);
    }
    match words.as_slice() {
        [] => Ok(None),
        ["exists", "-"] => Ok(Some(Line::InitialDone)),
        ["-", "skipped", n, ..] => {
            n.parse().map(|n| Some(Line::Skipped(n))).map_err(|_| format!("bad skip count {n:?}"))
        }
        [action, object, rest @ ..] => {
            if !ACTIONS.contains(action) {
                return Err(format!("unknown action {action:?}"));
            }
            let mut fields = Vec::with_capacity(rest.len());
            for w in rest {
                let (k, v) = w.split_once(':').ok_or_else(|| format!("{w:?} is not key:value"))?;
                // `--diff` prints old->new; the new value is the state.
                let v = v.rsplit_once("->").map_or(v, |(_, new)| new);
                fields.push((k.to_string(), v.to_string()));
            }
            Ok(Some(Line::Event { action: action.to_string(), object: object.to_string(), fields }))
        }
        _ => Err("too few words".into()),
    }
}

const ACTIONS: &[&str] = &["exists", "create", "change", "destroy", "call", "response", "rename"];

fn looks_like_timestamp(w: &str) -> bool {
    w.len() >= 19 && w.as_bytes()[0].is_ascii_digit() && w.as_bytes().get(10) == Some(&b'T') && w.contains(':')
}

// Keys each object may carry (drbd-utils drbdsetup_events2.c and the real 8.4 fixtures).
const RESOURCE_KEYS: &[&str] =
    &["name", "role", "suspended", "write-ordering", "may_promote", "promotion_score", "force-io-failures", "new_name"];
const DEVICE_KEYS: &[&str] = &[
    "name",
    "volume",
    "minor",
    "disk",
    "backing_dev",
    "client",
    "open",
    "quorum",
    "size",
    "read",
    "written",
    "al-writes",
    "bm-writes",
    "upper-pending",
    "lower-pending",
    "al-suspended",
    "blocked",
];
const CONNECTION_KEYS: &[&str] =
    &["name", "peer-node-id", "conn-name", "connection", "role", "congested", "ap-in-flight", "rs-in-flight"];
const PEER_DEVICE_KEYS: &[&str] = &[
    "name",
    "peer-node-id",
    "conn-name",
    "volume",
    "replication",
    "peer-disk",
    "peer-client",
    "resync-suspended",
    "received",
    "sent",
    "out-of-sync",
    "pending",
    "unacked",
    "done",
    "dbdt1",
    "eta",
];
const PATH_KEYS: &[&str] = &["name", "peer-node-id", "conn-name", "local", "peer", "established"];
const HELPER_KEYS: &[&str] = &["name", "peer-node-id", "conn-name", "volume", "minor", "helper", "status"];

// Value sets: DRBD 9 and 8.4 mapped names.
use super::words::{CONNECTIONS, DISKS, REPLICATIONS, ROLES};

/// Merged state of every resource seen on the stream, plus what was odd about it.
#[derive(Clone, Debug, Default)]
pub struct Events2State {
    resources: BTreeMap<String, ResourceStatus>,
    /// `exists -` was seen: the initial dump is complete.
    pub initial_done: bool,
    /// Lines that could not be parsed at all (skipped).
    pub garbage_lines: usize,
    /// Events the kernel reported as skipped (`- skipped N`).
    pub skipped_events: u64,
    /// Unknown objects/keys/values seen (`device.key`, `role=Value`, ...), for logs and `doctor`.
    pub unknown: BTreeSet<String>,
}

impl Events2State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed many lines (e.g. the whole output of `--now`).
    pub fn feed_all(&mut self, text: &str) {
        for l in text.lines() {
            self.feed(l);
        }
    }

    /// Feed one line of the stream.
    pub fn feed(&mut self, line: &str) {
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some(Line::InitialDone)) => self.initial_done = true,
            // Saturating: N comes from the stream; a sum must not overflow (a panic in debug builds).
            Ok(Some(Line::Skipped(n))) => self.skipped_events = self.skipped_events.saturating_add(n),
            Ok(Some(Line::Event { action, object, fields })) => self.apply(&action, &object, fields),
            Err(why) => {
                self.garbage_lines += 1;
                tracing::debug!(line, why, "events2: skipped garbage line");
            }
        }
    }

    /// Snapshot of every resource, sorted by name, with sync % filled in where DRBD gave none.
    pub fn resources(&self) -> Vec<ResourceStatus> {
        self.resources.values().cloned().map(fill_sync_percent).collect()
    }

    pub fn resource(&self, name: &str) -> Option<ResourceStatus> {
        self.resources.get(name).cloned().map(fill_sync_percent)
    }

    fn note_unknown_keys(&mut self, object: &str, known: &[&str], fields: &[(String, String)]) {
        for (k, _) in fields {
            if !known.contains(&k.as_str()) {
                self.unknown.insert(format!("{object}.{k}"));
            }
        }
    }

    fn check_value(&mut self, key: &str, v: &str, set: &[&str]) {
        if !set.contains(&v) {
            self.unknown.insert(format!("{key}={v}"));
        }
    }

    fn apply(&mut self, action: &str, object: &str, fields: Vec<(String, String)>) {
        let get = |k: &str| fields.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
        let Some(name) = get("name").map(str::to_string) else {
            self.garbage_lines += 1;
            return;
        };
        let destroy = action == "destroy";
        match object {
            "resource" => {
                self.note_unknown_keys(object, RESOURCE_KEYS, &fields);
                if destroy {
                    self.resources.remove(&name);
                    return;
                }
                if action == "rename" {
                    if let (Some(new), Some(mut r)) = (get("new_name"), self.resources.remove(&name)) {
                        r.name = new.to_string();
                        self.resources.insert(new.to_string(), r);
                    }
                    return;
                }
                if let Some(v) = get("role") {
                    self.check_value("role", v, ROLES);
                }
                let r = self.res(&name);
                for (k, v) in fields {
                    match k.as_str() {
                        "name" => {}
                        "role" => r.role = v,
                        _ => {
                            r.extra.insert(k, v);
                        }
                    }
                }
            }
            "device" => {
                self.note_unknown_keys(object, DEVICE_KEYS, &fields);
                let vol = get("volume").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
                if let Some(v) = get("disk") {
                    self.check_value("disk", v, DISKS);
                }
                let mut bad = Vec::new();
                let r = self.res(&name);
                if destroy {
                    r.devices.retain(|d| d.volume != vol);
                    return;
                }
                let d = match r.devices.iter().position(|d| d.volume == vol) {
                    Some(i) => &mut r.devices[i],
                    None => {
                        r.devices.push(DeviceStatus { volume: vol, ..Default::default() });
                        r.devices.sort_by_key(|d| d.volume);
                        let i = r.devices.iter().position(|d| d.volume == vol).unwrap();
                        &mut r.devices[i]
                    }
                };
                for (k, v) in fields {
                    match k.as_str() {
                        "name" | "volume" => {}
                        "minor" if v.parse::<u32>().is_ok() => d.minor = v.parse().unwrap(),
                        "disk" => d.disk = v,
                        "open" => d.open = yes_no(&v),
                        "size" if v.parse::<u64>().is_ok() => d.size_kib = v.parse().ok(),
                        "minor" | "size" => {
                            bad.push(format!("device.{k}={v}"));
                            d.extra.insert(k, v);
                        }
                        _ => {
                            d.extra.insert(k, v);
                        }
                    }
                }
                self.unknown.extend(bad);
            }
            "connection" | "peer-device" | "path" => {
                let known = match object {
                    "connection" => CONNECTION_KEYS,
                    "peer-device" => PEER_DEVICE_KEYS,
                    _ => PATH_KEYS,
                };
                self.note_unknown_keys(object, known, &fields);
                let peer_id = get("peer-node-id").and_then(|v| v.parse::<u32>().ok());
                let conn_name = get("conn-name").unwrap_or("").to_string();
                for (k, set) in [("connection", CONNECTIONS), ("replication", REPLICATIONS), ("peer-disk", DISKS)] {
                    if let Some(v) = get(k) {
                        self.check_value(k, v, set);
                    }
                }
                if object == "connection" {
                    if let Some(v) = get("role") {
                        self.check_value("role", v, ROLES);
                    }
                }
                let mut bad = Vec::new();
                let r = self.res(&name);
                let pos = r.connections.iter().position(|c| match peer_id {
                    Some(id) => c.peer_node_id == Some(id),
                    None => c.conn_name == conn_name,
                });
                if destroy && object == "connection" {
                    if let Some(i) = pos {
                        r.connections.remove(i);
                    }
                    return;
                }
                let c = match pos {
                    Some(i) => &mut r.connections[i],
                    None => {
                        r.connections.push(ConnectionStatus {
                            peer_node_id: peer_id,
                            conn_name: conn_name.clone(),
                            ..Default::default()
                        });
                        r.connections.last_mut().unwrap()
                    }
                };
                if !conn_name.is_empty() {
                    c.conn_name = conn_name;
                }
                match object {
                    "connection" => {
                        for (k, v) in fields {
                            match k.as_str() {
                                "name" | "peer-node-id" | "conn-name" => {}
                                "connection" => c.connection = v,
                                "role" => c.peer_role = v,
                                _ => {
                                    c.extra.insert(k, v);
                                }
                            }
                        }
                    }
                    "path" => {
                        let key = format!("path {} {}", get("local").unwrap_or("?"), get("peer").unwrap_or("?"));
                        if destroy {
                            c.extra.remove(&key);
                        } else if let Some(est) = get("established") {
                            c.extra.insert(key, format!("established:{est}"));
                        }
                    }
                    _ => {
                        let vol = get("volume").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
                        if destroy {
                            c.peer_devices.retain(|p| p.volume != vol);
                            return;
                        }
                        let p = match c.peer_devices.iter().position(|p| p.volume == vol) {
                            Some(i) => &mut c.peer_devices[i],
                            None => {
                                c.peer_devices.push(PeerDeviceStatus { volume: vol, ..Default::default() });
                                c.peer_devices.last_mut().unwrap()
                            }
                        };
                        for (k, v) in fields {
                            match k.as_str() {
                                "name" | "peer-node-id" | "conn-name" | "volume" => {}
                                "replication" => {
                                    // A finished resync leaves no stale "done" behind.
                                    if !is_syncing(&v) {
                                        p.done_percent = None;
                                    }
                                    p.replication = v;
                                }
                                "peer-disk" => p.peer_disk = v,
                                "out-of-sync" if v.parse::<u64>().is_ok() => p.out_of_sync_kib = v.parse().unwrap(),
                                "done" if v.parse::<f64>().is_ok() => p.done_percent = v.parse().ok(),
                                "out-of-sync" | "done" => {
                                    bad.push(format!("peer-device.{k}={v}"));
                                    p.extra.insert(k, v);
                                }
                                _ => {
                                    p.extra.insert(k, v);
                                }
                            }
                        }
                    }
                }
                self.unknown.extend(bad);
            }
            "helper" => {
                // Handler calls are events, not state; keep the last one for diagnostics.
                self.note_unknown_keys(object, HELPER_KEYS, &fields);
                let helper = get("helper").unwrap_or("?").to_string();
                let what = match get("status") {
                    Some(s) => format!("{action} status:{s}"),
                    None => action.to_string(),
                };
                self.res(&name).extra.insert(format!("helper {helper}"), what);
            }
            other => {
                self.unknown.insert(format!("object {other}"));
            }
        }
    }

    fn res(&mut self, name: &str) -> &mut ResourceStatus {
        self.resources
            .entry(name.to_string())
            .or_insert_with(|| ResourceStatus { name: name.to_string(), ..Default::default() })
    }
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

pub(crate) fn is_syncing(replication: &str) -> bool {
    replication.starts_with("Sync") || replication.starts_with("PausedSync")
}

/// 8.4 and events2 without `done:` give no resync progress: estimate it as the
/// in-sync share of the device (exact for a full initial sync).
fn fill_sync_percent(mut r: ResourceStatus) -> ResourceStatus {
    let sizes: BTreeMap<u32, u64> = r.devices.iter().filter_map(|d| Some((d.volume, d.size_kib?))).collect();
    for c in &mut r.connections {
        for p in &mut c.peer_devices {
            if p.done_percent.is_none() && is_syncing(&p.replication) {
                if let Some(&size) = sizes.get(&p.volume).filter(|s| **s > 0) {
                    let done = 100.0 * size.saturating_sub(p.out_of_sync_kib) as f64 / size as f64;
                    p.done_percent = Some((done * 10.0).round() / 10.0);
                }
            }
        }
    }
    r
}

/// Parse the complete output of `drbdsetup events2 --now [--statistics]`.
pub fn parse_now(text: &str) -> Events2State {
    let mut s = Events2State::new();
    s.feed_all(text);
    s
}

/// Tells, line by line of a live `drbdsetup events2` stream, whether DRBD's state changed.
/// The initial dump (`exists` lines up to `exists -`) is not a change; after it every
/// event is, and so are a report of skipped events (the cached view may be stale) and a
/// line that does not parse (something happened that this parser does not know).
#[derive(Debug, Default)]
pub struct ChangeWatch {
    dumped: bool,
}

impl ChangeWatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_change(&mut self, line: &str) -> bool {
        match parse_line(line) {
            Ok(None) => false,
            Ok(Some(Line::InitialDone)) => {
                self.dumped = true;
                false
            }
            Ok(Some(Line::Event { action, .. })) => self.dumped && action != "exists",
            Ok(Some(Line::Skipped(_))) | Err(_) => self.dumped,
        }
    }
}

/// Follow `drbdsetup events2 all` (9 and 8.4 print the same shape) on a thread and send
/// a wake-up for every change after the initial dump (`ChangeWatch`); restart it 5 s
/// after it ends. The thread ends when the receiver is gone.
pub fn watch(wake: std::sync::mpsc::Sender<()>) {
    std::thread::spawn(move || loop {
        let cmd = crate::exec::Cmd::new("drbdsetup").args(["events2", "all"]);
        let mut changes = ChangeWatch::new();
        let mut gone = false;
        let r = crate::exec::stream_lines(&cmd, |line| {
            if changes.is_change(line) && wake.send(()).is_err() {
                gone = true;
                return false;
            }
            true
        });
        if gone {
            return;
        }
        if let Err(e) = r {
            tracing::debug!(error = %e, "drbdsetup events2 not available; polling only");
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drbd::fixture;

    #[test]
    fn now_84_connected_inconsistent() {
        let s = parse_now(&fixture("drbdsetup-events2-now-statistics.out"));
        assert!(s.initial_done);
        assert_eq!(s.garbage_lines, 0);
        assert!(s.unknown.is_empty(), "{:?}", s.unknown);
        let r = s.resources();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!((r.name.as_str(), r.role.as_str()), ("r0", "Secondary"));
        assert_eq!(r.extra.get("write-ordering").map(String::as_str), Some("flush"));
        assert_eq!(r.devices.len(), 1);
        let d = &r.devices[0];
        assert_eq!((d.volume, d.minor, d.disk.as_str(), d.size_kib), (0, 0, "Inconsistent", Some(262100)));
        assert_eq!(d.open, None); // 8.4 does not say
        assert_eq!(d.extra.get("blocked").map(String::as_str), Some("no"));
        let c = &r.connections[0];
        assert_eq!(
            (c.peer_node_id, c.conn_name.as_str(), c.connection.as_str(), c.peer_role.as_str()),
            (Some(0), "peer", "Connected", "Secondary")
        );
        let p = &c.peer_devices[0];
        assert_eq!(
            (p.replication.as_str(), p.peer_disk.as_str(), p.out_of_sync_kib),
            ("Established", "Inconsistent", 262100)
        );
        assert_eq!(p.done_percent, None);
    }

    #[test]
    fn now_without_statistics_and_primary() {
        let s = parse_now(&fixture("drbdsetup-events2-now.out"));
        let r = s.resource("r0").unwrap();
        assert_eq!(r.devices[0].size_kib, None);
        assert_eq!(r.devices[0].disk, "Inconsistent");
        let s = parse_now(&fixture("drbdsetup-events2-now.primary.out"));
        let r = s.resource("r0").unwrap();
        assert_eq!(r.role, "Primary");
        assert_eq!(r.connections[0].peer_devices[0].peer_disk, "UpToDate");
        assert_eq!(r.connections[0].peer_devices[0].out_of_sync_kib, 0);
    }

    #[test]
    fn syncsource_gets_estimated_percent() {
        let s = parse_now(&fixture("drbdsetup-events2-now-statistics.syncsource.out"));
        let p = s.resource("r0").unwrap().connections[0].peer_devices[0].clone();
        assert_eq!(p.replication, "SyncSource");
        assert_eq!(p.out_of_sync_kib, 257308);
        // (262100 - 257308) / 262100 = 1.83 %
        assert_eq!(p.done_percent, Some(1.8));
    }

    #[test]
    fn recorded_stream_merges_changes() {
        let text = fixture("drbdsetup-events2.recorded-on-nodeB.out");
        let lines: Vec<&str> = text.lines().collect();
        let mut s = Events2State::new();
        // Up to and including the NetworkFailure change (line 7).
        for l in &lines[..7] {
            s.feed(l);
        }
        assert!(s.initial_done);
        let r = s.resource("r0").unwrap();
        assert_eq!(r.connections[0].connection, "NetworkFailure");
        assert_eq!(r.connections[0].peer_role, "Unknown");
        assert_eq!(r.connections[0].peer_devices[0].peer_disk, "DUnknown");
        assert_eq!(r.role, "Secondary");
        assert_eq!(r.devices[0].disk, "UpToDate", "unchanged keys survive a change line");
        for l in &lines[7..] {
            s.feed(l);
        }
        assert_eq!(s.garbage_lines, 0);
        assert!(s.unknown.is_empty(), "{:?}", s.unknown);
        let r = s.resource("r0").unwrap();
        assert_eq!(r.role, "Secondary");
        assert_eq!(r.devices[0].disk, "UpToDate");
        assert_eq!(r.devices[0].size_kib, Some(327632));
        let c = &r.connections[0];
        assert_eq!((c.connection.as_str(), c.peer_role.as_str()), ("Connected", "Primary"));
        let p = &c.peer_devices[0];
        // peer-disk was last carried by the 20:40:33 change; later lines omit it.
        assert_eq!((p.replication.as_str(), p.peer_disk.as_str(), p.out_of_sync_kib), ("Established", "UpToDate", 0));
        assert_eq!(r.extra.get("helper after-resync-target").map(String::as_str), Some("response status:0"));
    }

    #[test]
    fn tolerant_of_garbage_unknowns_skips_and_destroy() {
        let mut s = Events2State::new();
        s.feed_all(
            "exists resource name:r1 role:Secondary shiny-new-key:42\n\
             this is not an event\n\
             exists device name:r1 volume:0 minor:1001 disk:Frobnicated open:unknown size:lots\n\
             exists peer-device name:r1 peer-node-id:2 conn-name:pve3 volume:0 replication:SyncTarget peer-disk:UpToDate out-of-sync:100 done:37.50\n\
             exists weird-object name:r1 a:b\n\
             \n\
             exists -\n\
             - skipped 3\n\
             change resource name:r1 role:Secondary->Primary\n\
             create path name:r1 peer-node-id:2 conn-name:pve3 local:ipv4:10.0.0.1:7000 peer:ipv4:10.0.0.3:7000 established:yes\n\
             change connection name:r1 peer-node-id:2 conn-name:pve3 connection:Connected role:Secondary\n\
             exists resource name:r2 role:Secondary\n\
             destroy resource name:r2\n\
             change device name:r1 broken\n",
        );
        assert_eq!(s.garbage_lines, 2);
        assert_eq!(s.skipped_events, 3);
        for u in ["resource.shiny-new-key", "disk=Frobnicated", "device.size=lots", "object weird-object"] {
            assert!(s.unknown.contains(u), "{u} not in {:?}", s.unknown);
        }
        let all = s.resources();
        assert_eq!(all.len(), 1, "r2 destroyed");
        let r = &all[0];
        assert_eq!(r.role, "Primary", "--diff old->new takes the new value");
        assert_eq!(r.extra.get("shiny-new-key").map(String::as_str), Some("42"));
        assert_eq!(r.devices[0].disk, "Frobnicated", "unknown values are kept");
        assert_eq!(r.devices[0].extra.get("size").map(String::as_str), Some("lots"));
        assert_eq!(r.devices[0].open, None);
        let c = &r.connections[0];
        assert_eq!((c.peer_node_id, c.conn_name.as_str(), c.connection.as_str()), (Some(2), "pve3", "Connected"));
        assert_eq!(
            c.extra.get("path ipv4:10.0.0.1:7000 ipv4:10.0.0.3:7000").map(String::as_str),
            Some("established:yes")
        );
        assert_eq!(c.peer_devices[0].done_percent, Some(37.5), "DRBD's own done: wins");
        // Sync finished: the stale percentage goes.
        s.feed(
            "change peer-device name:r1 peer-node-id:2 conn-name:pve3 volume:0 replication:Established out-of-sync:0",
        );
        assert_eq!(s.resource("r1").unwrap().connections[0].peer_devices[0].done_percent, None);
    }

    #[test]
    fn empty_and_unconfigured() {
        let s = parse_now("exists -\n");
        assert!(s.initial_done && s.resources().is_empty());
        let s = parse_now("");
        assert!(!s.initial_done);
    }

    /// The recorded live streams (8.4 without, 9 with `--timestamps`): the dump wakes
    /// nothing, every line after it does.
    #[test]
    fn a_live_stream_is_a_change_after_its_initial_dump() {
        for text in [
            fixture("drbdsetup-events2.recorded-on-nodeB.out"),
            crate::drbd::fixture9("drbdsetup-events2-live.kill-and-promote.node2.out"),
        ] {
            let lines: Vec<&str> = text.lines().collect();
            let dump = lines.iter().position(|l| l.ends_with("exists -")).expect("fixture has its dump") + 1;
            let mut w = ChangeWatch::new();
            let woke: Vec<bool> = lines.iter().map(|l| w.is_change(l)).collect();
            assert!(woke[..dump].iter().all(|c| !c), "the dump is no change");
            assert!(woke[dump..].iter().all(|c| *c), "every event after it is");
            assert!(dump < lines.len(), "fixture has events after the dump");
        }
        let mut w = ChangeWatch::new();
        assert!(!w.is_change("- skipped 3"), "before the dump nothing is a change");
        w.is_change("exists -");
        assert!(w.is_change("- skipped 3") && w.is_change("not an event") && !w.is_change(""));
        assert!(!w.is_change("exists resource name:r0 role:Secondary"));
    }
}
