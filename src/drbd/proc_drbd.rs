//! /proc/drbd of the 8.4 module: one block per minor, no resource names.
//! The caller maps minors to resources (the plan knows each volume's minor);
//! unmapped minors are reported as `minor-N` (drbdadm accepts that name too).
//! Under DRBD 9 the file has only the version line.

use std::collections::{BTreeMap, BTreeSet};

use super::{ConnectionStatus, DeviceStatus, PeerDeviceStatus, ResourceStatus};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcDrbd {
    /// `8.4.11 (api:1/proto:86-101)`
    pub version: Option<String>,
    pub devices: Vec<ProcDevice>,
    /// Lines that fit nowhere (skipped).
    pub garbage_lines: usize,
    /// Unknown keys or states seen, for logs and `doctor`.
    pub unknown: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcDevice {
    pub minor: u32,
    /// Connection state as 8.4 names it (`Connected`, `WFConnection`, `SyncSource`, `Unconfigured`, ...).
    pub cs: String,
    pub role: String,
    pub peer_role: String,
    pub disk: String,
    pub peer_disk: String,
    /// Replication protocol letter (`C`).
    pub protocol: Option<String>,
    /// I/O flags (`r-----`).
    pub flags: Option<String>,
    /// ns, nr, dw, dr, al, bm, lo, pe, ua, ap, ep, oos (KiB or counts).
    pub counters: BTreeMap<String, u64>,
    /// From the `sync'ed:` line while resyncing.
    pub sync_percent: Option<f64>,
    /// Anything else (`wo:f`, the `finish:` line, unknown keys).
    pub extra: BTreeMap<String, String>,
}

impl ProcDevice {
    pub fn out_of_sync_kib(&self) -> u64 {
        self.counters.get("oos").copied().unwrap_or(0)
    }
}

const COUNTERS: &[&str] = &["ns", "nr", "dw", "dr", "al", "bm", "lo", "pe", "ua", "ap", "ep", "oos"];
const CONN_STATES: &[&str] = &[
    "StandAlone",
    "Disconnecting",
    "Unconnected",
    "Timeout",
    "BrokenPipe",
    "NetworkFailure",
    "ProtocolError",
    "TearDown",
    "WFConnection",
    "WFReportParams",
    "Connected",
    "StartingSyncS",
    "StartingSyncT",
    "WFBitMapS",
    "WFBitMapT",
    "WFSyncUUID",
    "SyncSource",
    "SyncTarget",
    "VerifyS",
    "VerifyT",
    "PausedSyncS",
    "PausedSyncT",
    "Ahead",
    "Behind",
    "Unconfigured",
];

pub fn parse(text: &str) -> ProcDrbd {
    let mut p = ProcDrbd::default();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(v) = t.strip_prefix("version:") {
            p.version = Some(v.trim().to_string());
            continue;
        }
        if t.starts_with("srcversion:") || t.starts_with("GIT-hash:") {
            continue;
        }
        // ` 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----`
        if let Some((m, rest)) = t.split_once(": ") {
            if let Ok(minor) = m.parse::<u32>() {
                let mut d = ProcDevice { minor, ..Default::default() };
                for w in rest.split_whitespace() {
                    match w.split_once(':') {
                        Some(("cs", v)) => {
                            if !CONN_STATES.contains(&v) {
                                p.unknown.insert(format!("cs={v}"));
                            }
                            d.cs = v.to_string();
                        }
                        Some(("ro", v)) => {
                            let (a, b) = v.split_once('/').unwrap_or((v, ""));
                            d.role = a.to_string();
                            d.peer_role = b.to_string();
                        }
                        Some(("ds", v)) => {
                            let (a, b) = v.split_once('/').unwrap_or((v, ""));
                            d.disk = a.to_string();
                            d.peer_disk = b.to_string();
                        }
                        Some((k, v)) => {
                            p.unknown.insert(format!("device.{k}"));
                            d.extra.insert(k.to_string(), v.to_string());
                        }
                        None if w.len() == 1 && d.protocol.is_none() => d.protocol = Some(w.to_string()),
                        None if d.flags.is_none() => d.flags = Some(w.to_string()),
                        None => {
                            d.extra.insert(format!("word{}", d.extra.len()), w.to_string());
                        }
                    }
                }
                p.devices.push(d);
                continue;
            }
        }
        let Some(d) = p.devices.last_mut() else {
            p.garbage_lines += 1;
            continue;
        };
        if t.starts_with("ns:") {
            for w in t.split_whitespace() {
                match w.split_once(':') {
                    Some((k, v)) if COUNTERS.contains(&k) && v.parse::<u64>().is_ok() => {
                        d.counters.insert(k.to_string(), v.parse().unwrap());
                    }
                    Some((k, v)) => {
                        if k != "wo" {
                            p.unknown.insert(format!("counter.{k}"));
                        }
                        d.extra.insert(k.to_string(), v.to_string());
                    }
                    None => p.garbage_lines += 1,
                }
            }
        } else if t.starts_with('[') || t.starts_with("sync'ed:") || t.contains("sync'ed:") {
            // `[>....] sync'ed:  1.6% (260368/262100)K`
            let pct =
                t.split("sync'ed:").nth(1).and_then(|s| s.split('%').next()).and_then(|s| s.trim().parse::<f64>().ok());
            match pct {
                Some(x) => d.sync_percent = Some(x),
                None => p.garbage_lines += 1,
            }
            d.extra.insert("sync".into(), t.to_string());
        } else if t.starts_with("finish:") {
            d.extra.insert("finish".into(), t.to_string());
        } else if t.starts_with("resync:") || t.starts_with("act_log:") || t.starts_with("progress:") {
            // Extra lines some 8.4 builds print for the LRU caches / verify progress.
            let (k, v) = t.split_once(':').unwrap();
            d.extra.insert(k.to_string(), v.trim().to_string());
        } else {
            p.garbage_lines += 1;
        }
    }
    p
}

/// 8.4 connection states as DRBD 9 splits them into connection + replication
/// (the same mapping drbdsetup-84 uses for its events2 output).
fn split_cs(cs: &str) -> (&str, &str) {
    match cs {
        "WFConnection" | "WFReportParams" => ("Connecting", "Off"),
        "Connected" => ("Connected", "Established"),
        "StandAlone" | "Disconnecting" | "Unconnected" | "Timeout" | "BrokenPipe" | "NetworkFailure"
        | "ProtocolError" | "TearDown" => (cs, "Off"),
        other => ("Connected", other),
    }
}

/// Map into the common status types; unconfigured minors are left out.
/// `resource_of(minor)` names the resource (from the plans); unknown minors become `minor-N`.
pub fn to_status(p: &ProcDrbd, resource_of: impl Fn(u32) -> Option<String>) -> Vec<ResourceStatus> {
    let mut out = Vec::new();
    for d in p.devices.iter().filter(|d| d.cs != "Unconfigured") {
        let (connection, replication) = split_cs(&d.cs);
        let mut extra = d.extra.clone();
        extra.insert("cs".into(), d.cs.clone());
        if let Some(f) = &d.flags {
            extra.insert("flags".into(), f.clone());
        }
        if let Some(pr) = &d.protocol {
            extra.insert("protocol".into(), pr.clone());
        }
        let counters: BTreeMap<String, String> = d.counters.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        out.push(ResourceStatus {
            name: resource_of(d.minor).unwrap_or_else(|| format!("minor-{}", d.minor)),
            role: d.role.clone(),
            devices: vec![DeviceStatus {
                volume: 0,
                minor: d.minor,
                disk: d.disk.clone(),
                open: None,
                size_kib: None,
                extra: counters,
            }],
            connections: vec![ConnectionStatus {
                // 8.4 has one unnamed peer; events2 of drbdsetup-84 calls it node-id 0 "peer" too.
                peer_node_id: Some(0),
                conn_name: "peer".into(),
                connection: connection.to_string(),
                peer_role: d.peer_role.clone(),
                peer_devices: vec![PeerDeviceStatus {
                    volume: 0,
                    replication: replication.to_string(),
                    peer_disk: d.peer_disk.clone(),
                    out_of_sync_kib: d.out_of_sync_kib(),
                    done_percent: if super::events2::is_syncing(replication) { d.sync_percent } else { None },
                    extra: BTreeMap::new(),
                }],
                extra: BTreeMap::new(),
            }],
            extra,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drbd::fixture;

    fn one(name: &str) -> (ProcDrbd, ResourceStatus) {
        let p = parse(&fixture(name));
        assert_eq!(p.garbage_lines, 0, "{name}");
        assert!(p.unknown.is_empty(), "{name}: {:?}", p.unknown);
        assert_eq!(p.version.as_deref(), Some("8.4.11 (api:1/proto:86-101)"));
        let s = to_status(&p, |m| (m == 0).then(|| "r0".to_string()));
        assert_eq!(s.len(), 1, "{name}");
        (p, s.into_iter().next().unwrap())
    }

    fn summary(r: &ResourceStatus) -> (String, String, String, String, String, String, u64, Option<f64>) {
        let c = &r.connections[0];
        let pd = &c.peer_devices[0];
        (
            r.role.clone(),
            r.devices[0].disk.clone(),
            c.connection.clone(),
            c.peer_role.clone(),
            pd.replication.clone(),
            pd.peer_disk.clone(),
            pd.out_of_sync_kib,
            pd.done_percent,
        )
    }

    #[test]
    fn every_real_fixture() {
        let s = |a: &str| a.to_string();
        let cases = [
            (
                "proc-drbd.connected-inconsistent.nodeA.out",
                (
                    s("Secondary"),
                    s("Inconsistent"),
                    s("Connected"),
                    s("Secondary"),
                    s("Established"),
                    s("Inconsistent"),
                    262100,
                    None,
                ),
            ),
            (
                "proc-drbd.connected-inconsistent.nodeB.out",
                (
                    s("Secondary"),
                    s("Inconsistent"),
                    s("Connected"),
                    s("Secondary"),
                    s("Established"),
                    s("Inconsistent"),
                    262100,
                    None,
                ),
            ),
            (
                "proc-drbd.syncsource.out",
                (
                    s("Primary"),
                    s("UpToDate"),
                    s("Connected"),
                    s("Secondary"),
                    s("SyncSource"),
                    s("Inconsistent"),
                    260368,
                    Some(1.6),
                ),
            ),
            (
                "proc-drbd.synctarget.out",
                (
                    s("Secondary"),
                    s("Inconsistent"),
                    s("Connected"),
                    s("Primary"),
                    s("SyncTarget"),
                    s("UpToDate"),
                    260188,
                    Some(1.6),
                ),
            ),
            (
                "proc-drbd.primary-uptodate.out",
                (s("Primary"), s("UpToDate"), s("Connected"), s("Secondary"), s("Established"), s("UpToDate"), 0, None),
            ),
            (
                "proc-drbd.secondary-uptodate.out",
                (s("Secondary"), s("UpToDate"), s("Connected"), s("Primary"), s("Established"), s("UpToDate"), 0, None),
            ),
            (
                "proc-drbd.peer-lost.out",
                (s("Secondary"), s("UpToDate"), s("Connecting"), s("Unknown"), s("Off"), s("DUnknown"), 0, None),
            ),
            (
                "proc-drbd.primary-standalone-peer.out",
                (s("Primary"), s("UpToDate"), s("Connecting"), s("Unknown"), s("Off"), s("DUnknown"), 0, None),
            ),
            (
                "proc-drbd.after-resize.out",
                (s("Primary"), s("UpToDate"), s("Connected"), s("Secondary"), s("Established"), s("UpToDate"), 0, None),
            ),
        ];
        for (f, want) in cases {
            let (p, r) = one(f);
            assert_eq!(r.name, "r0");
            assert_eq!(summary(&r), want, "{f}");
            assert_eq!(p.devices[0].protocol.as_deref(), Some("C"));
            assert_eq!(r.extra.get("flags").map(String::as_str), Some("r-----"));
        }
        let (p, r) = one("proc-drbd.synctarget.out");
        assert_eq!(r.extra.get("cs").map(String::as_str), Some("SyncTarget"));
        assert!(p.devices[0].extra["finish"].contains("want: 1,760 K/sec"));
        assert_eq!(p.devices[0].counters["nr"], 1912);
    }

    #[test]
    fn unconfigured_and_unmapped() {
        let p = parse(&fixture("proc-drbd.unconfigured.out"));
        assert!(p.devices.is_empty() && p.garbage_lines == 0);
        let p = parse(&fixture("proc-drbd.primary-uptodate.out"));
        assert_eq!(to_status(&p, |_| None)[0].name, "minor-0");
        let p = parse("version: 8.4.11 (api:1/proto:86-101)\n 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n 1: cs:Unconfigured\n");
        assert_eq!(p.devices.len(), 2);
        assert_eq!(to_status(&p, |_| None).len(), 1);
    }

    #[test]
    fn tolerant() {
        let text = "version: 8.4.10 (api:1/proto:86-101)\n\
                    nonsense before any device\n \
                    1000: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r---a- zz:1\n    \
                    ns:39299964 nr:0 dw:40010044 dr:39257 al:1909 bm:0 lo:739 pe:1452 ua:0 ap:2048 ep:1 wo:f oos:94991724 new:7\n\
                    \t[====>...............] sync'ed: 29.3% (92764/131064)M\n\
                    \tfinish: 1:56:43 speed: 13,556 (10,832) K/sec (stalled)\n\
                    \tsomething else\n \
                    1001: cs:Warping ro:Secondary/Secondary ds:UpToDate/UpToDate C r-----\n";
        let p = parse(text);
        assert_eq!(p.garbage_lines, 2);
        for u in ["device.zz", "counter.new", "cs=Warping"] {
            assert!(p.unknown.contains(u), "{u}: {:?}", p.unknown);
        }
        let s = to_status(&p, |m| Some(format!("res{m}")));
        assert_eq!(s.len(), 2);
        let pd = &s[0].connections[0].peer_devices[0];
        assert_eq!((pd.out_of_sync_kib, pd.done_percent), (94991724, Some(29.3)));
        assert_eq!(s[0].extra.get("new").map(String::as_str), Some("7"));
        assert_eq!(s[1].connections[0].peer_devices[0].replication, "Warping", "unknown states are kept");
    }
}
