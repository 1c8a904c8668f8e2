//! `drbdsetup status --json [--statistics]` (DRBD 9 only). Every field has a
//! default and unknown keys are kept in `extra`, so newer drbd-utils (which add
//! keys such as `tls` or `admin-lock`) never break us. drbdsetup-84 has no
//! `--json` (exit 20, "unrecognized option '--json'"): use events2 there.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{ConnectionStatus, DeviceStatus, PeerDeviceStatus, ResourceStatus};
use crate::error::{Error, Result};
use crate::exec::Output;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JResource {
    name: String,
    role: String,
    devices: Vec<JDevice>,
    connections: Vec<JConnection>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JDevice {
    volume: u32,
    minor: u32,
    #[serde(rename = "disk-state")]
    disk_state: String,
    open: Option<bool>,
    size: Option<u64>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JConnection {
    #[serde(rename = "peer-node-id")]
    peer_node_id: Option<u32>,
    name: String,
    #[serde(rename = "connection-state")]
    connection_state: String,
    #[serde(rename = "peer-role")]
    peer_role: String,
    peer_devices: Vec<JPeerDevice>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JPeerDevice {
    volume: u32,
    #[serde(rename = "replication-state")]
    replication_state: String,
    #[serde(rename = "peer-disk-state")]
    peer_disk_state: String,
    #[serde(rename = "out-of-sync")]
    out_of_sync: u64,
    #[serde(rename = "percent-resync-done")]
    percent_resync_done: Option<f64>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

fn flat(extra: BTreeMap<String, Value>) -> BTreeMap<String, String> {
    extra
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect()
}

/// True when the output is drbdsetup-84 refusing `--json` (8.4 module).
pub fn json_unsupported(out: &Output) -> bool {
    !out.success() && out.stderr.contains("unrecognized option") && out.stderr.contains("--json")
}

/// Parse the JSON array. A wrong top-level shape is a Tool error naming what was expected.
pub fn parse(text: &str) -> Result<Vec<ResourceStatus>> {
    let res: Vec<JResource> = serde_json::from_str(text).map_err(|e| {
        Error::Tool(format!("`drbdsetup status --json` printed something that is not its JSON array of resources: {e}"))
    })?;
    Ok(res
        .into_iter()
        .map(|r| ResourceStatus {
            name: r.name,
            role: r.role,
            devices: r
                .devices
                .into_iter()
                .map(|d| DeviceStatus {
                    volume: d.volume,
                    minor: d.minor,
                    disk: d.disk_state,
                    open: d.open,
                    size_kib: d.size,
                    extra: flat(d.extra),
                })
                .collect(),
            connections: r
                .connections
                .into_iter()
                .map(|c| ConnectionStatus {
                    peer_node_id: c.peer_node_id,
                    conn_name: c.name,
                    // drbdsetup's format string has a trailing space in "connection-state": "%s", (drbd.md §1.4)
                    connection: c.connection_state.trim().to_string(),
                    peer_role: c.peer_role,
                    peer_devices: c
                        .peer_devices
                        .into_iter()
                        .map(|p| PeerDeviceStatus {
                            volume: p.volume,
                            done_percent: if super::events2::is_syncing(&p.replication_state) {
                                p.percent_resync_done
                            } else {
                                None
                            },
                            replication: p.replication_state,
                            peer_disk: p.peer_disk_state,
                            out_of_sync_kib: p.out_of_sync,
                            extra: flat(p.extra),
                        })
                        .collect(),
                    extra: flat(c.extra),
                })
                .collect(),
            extra: flat(r.extra),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drbd::fixture;

    // Shape of drbd-utils' resource_status_json & co (reference/drbd.md §1.4), with a key from the future.
    const V9: &str = r#"[{"name": "vm-100-disk-0", "node-id": 1, "role": "Primary", "suspended": false,
      "write-ordering": "flush", "admin-lock": {"x": 1},
      "devices": [{"volume": 0, "minor": 1000, "disk-state": "UpToDate", "client": false, "open": true,
                   "quorum": true, "size": 2109208, "read": 0}],
      "connections": [{"peer-node-id": 0, "name": "pve1", "connection-state": "Connected", "congested": false,
                       "peer-role": "Secondary", "tls": false,
                       "paths": [{"this_host": {"address": "10.0.0.2", "port": 7000, "family": "ipv4"}, "established": true}],
                       "peer_devices": [{"volume": 0, "replication-state": "SyncSource", "peer-disk-state": "Inconsistent",
                                         "peer-client": false, "resync-suspended": "no", "out-of-sync": 1000,
                                         "percent-in-sync": 99.9, "percent-resync-done": 42.5}]},
                      {"peer-node-id": 2, "name": "pve3", "connection-state": "Connecting", "peer-role": "Unknown",
                       "peer_devices": [{"volume": 0, "replication-state": "Off", "peer-disk-state": "DUnknown",
                                         "percent-resync-done": 3.0}]}]}]"#;

    #[test]
    fn v9_status_maps() {
        let r = parse(V9).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!((r.name.as_str(), r.role.as_str()), ("vm-100-disk-0", "Primary"));
        assert_eq!(r.extra.get("node-id").map(String::as_str), Some("1"));
        assert_eq!(r.extra.get("admin-lock").map(String::as_str), Some(r#"{"x":1}"#));
        let d = &r.devices[0];
        assert_eq!((d.minor, d.disk.as_str(), d.open, d.size_kib), (1000, "UpToDate", Some(true), Some(2109208)));
        assert_eq!(d.extra.get("quorum").map(String::as_str), Some("true"));
        let c = &r.connections[0];
        assert_eq!(
            (c.peer_node_id, c.conn_name.as_str(), c.connection.as_str(), c.peer_role.as_str()),
            (Some(0), "pve1", "Connected", "Secondary")
        );
        assert!(c.extra.contains_key("paths"));
        let p = &c.peer_devices[0];
        assert_eq!(
            (p.replication.as_str(), p.peer_disk.as_str(), p.out_of_sync_kib, p.done_percent),
            ("SyncSource", "Inconsistent", 1000, Some(42.5))
        );
        assert_eq!(p.extra.get("resync-suspended").map(String::as_str), Some("no"));
        let p2 = &r.connections[1].peer_devices[0];
        assert_eq!((p2.replication.as_str(), p2.done_percent), ("Off", None), "no resync, no percentage");
    }

    #[test]
    fn empty_and_bad() {
        assert!(parse("[]").unwrap().is_empty());
        assert!(parse("[{}]").unwrap()[0].name.is_empty());
        let e = parse("{\"not\": \"an array\"}").unwrap_err();
        assert_eq!(e.kind(), "tool");
        assert!(parse("").is_err());
    }

    #[test]
    fn real_84_refusal_is_recognised() {
        let out = Output {
            status: 20,
            stdout: fixture("drbdsetup-status-json.primary.out"),
            stderr: fixture("drbdsetup-status-json.primary.err"),
        };
        assert!(json_unsupported(&out));
        assert!(parse(&out.stdout).is_err(), "8.4's usage text is not JSON");
        assert!(!json_unsupported(&Output::ok("[]")));
    }
}
