//! The storage.cfg properties the helper reads. Values are checked here because
//! they end up in LVM command lines and paths on every node.

use serde_json::{Map, Value};

use crate::error::Result;
use crate::invalid;
use crate::backend::{BackendKind, BackendSpec};
use crate::store::docs::{Resync, RESYNC_MAX_FLOOR_KIB, RESYNC_RATE_LIMIT_KIB};

#[derive(Clone, Debug, PartialEq)]
pub struct StorageCfg {
    pub backend: BackendSpec,
    pub replicas: usize,
    /// `nodes` (None: every node).
    pub nodes: Option<Vec<String>>,
}

/// A rate as DRBD writes it, per second: digits and a unit K, M or G (KiB, MiB, GiB; either
/// case); `0` alone is allowed. Returns KiB/s.
pub fn parse_rate(k: &str, v: &str) -> Result<u64> {
    let bad = || {
        invalid!(
            "storage property {k} '{}' is not a rate: write digits and a unit K, M or G per second (e.g. 500K, 100M, 1G), or 0",
            v.escape_default()
        )
    };
    if v == "0" {
        return Ok(0);
    }
    let (num, unit) = v.split_at(v.len().saturating_sub(1));
    let mult: u64 = match unit {
        "K" | "k" => 1,
        "M" | "m" => 1 << 10,
        "G" | "g" => 1 << 20,
        _ => return Err(bad()),
    };
    if num.is_empty() || num.len() > 10 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let kib = num.parse::<u64>().map_err(|_| bad())?.checked_mul(mult).ok_or_else(bad)?;
    if kib > RESYNC_RATE_LIMIT_KIB {
        return Err(invalid!("storage property {k} '{v}' is above DRBD's limit of 4G per second"));
    }
    Ok(kib)
}

/// The resync properties, checked against each other (max at least DRBD's 250K, min <= max).
pub fn parse_resync(m: &Map<String, Value>) -> Result<Resync> {
    let d = Resync::default();
    let max_kib = match get(m, "drbdpool-resync-rate-max")? {
        Some(v) => parse_rate("drbdpool-resync-rate-max", &v)?,
        None => d.max_kib,
    };
    if max_kib < RESYNC_MAX_FLOOR_KIB {
        return Err(invalid!("storage property drbdpool-resync-rate-max must be at least 250K (DRBD's lowest c-max-rate)"));
    }
    let min_kib = match get(m, "drbdpool-resync-rate-min")? {
        Some(v) => parse_rate("drbdpool-resync-rate-min", &v)?,
        None => d.min_kib,
    };
    if min_kib > max_kib {
        return Err(invalid!(
            "storage property drbdpool-resync-rate-min ({min_kib}K) is above drbdpool-resync-rate-max ({max_kib}K): lower the min or raise the max"
        ));
    }
    Ok(Resync { max_kib, min_kib })
}

fn get(m: &Map<String, Value>, k: &str) -> Result<Option<String>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        // PVE hands `nodes` over as a hash {node => 1} after parsing.
        Some(Value::Object(o)) if k == "nodes" => Ok(Some(o.keys().cloned().collect::<Vec<_>>().join(","))),
        Some(v) => Err(invalid!("storage property '{k}' has an unexpected value {v}")),
    }
}

/// LVM VG/LV names: [A-Za-z0-9+_.-], not starting with '-'.
fn lvm_name(k: &str, v: &str) -> Result<String> {
    if v.len() > 120 || v.starts_with('-') || v == "." || v == ".." || !v.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'_' | b'.' | b'-')) {
        return Err(invalid!("storage property {k} '{}' is not a valid LVM name (letters, digits, + _ . -)", v.escape_default()));
    }
    Ok(v.to_string())
}

impl StorageCfg {
    pub fn parse(m: &Map<String, Value>) -> Result<StorageCfg> {
        let kind = match get(m, "drbdpool-backend")?.as_deref() {
            None => BackendKind::default(),
            Some(o) => BackendKind::from_name(o).ok_or_else(|| invalid!("storage property drbdpool-backend '{o}' is not one of {}", BackendKind::names()))?,
        };
        let vg = get(m, "vgname")?.map(|v| lvm_name("vgname", &v)).transpose()?;
        let thinpool = get(m, "thinpool")?.map(|v| lvm_name("thinpool", &v)).transpose()?;
        let dir = get(m, "drbdpool-dir")?;
        // What the kind needs of them, and which it keeps: backend/.
        let backend = BackendSpec::from_storage_cfg(kind, vg, thinpool, dir)?;
        let replicas = crate::placement::replica_count(get(m, "drbdpool-replicas")?.as_deref())?;
        let nodes = match get(m, "nodes")? {
            None => None,
            Some(s) => {
                let v: Vec<String> = s.split(|c: char| c == ',' || c.is_whitespace() || c == ';').filter(|x| !x.is_empty()).map(String::from).collect();
                for n in &v {
                    crate::naming::check_node_name(n).map_err(|e| invalid!("storage property nodes: {e}"))?;
                }
                Some(v)
            }
        };
        Ok(StorageCfg { backend, replicas, nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Result<StorageCfg> {
        StorageCfg::parse(v.as_object().unwrap())
    }

    #[test]
    fn defaults_and_kinds() {
        let c = p(json!({"vgname": "ssd", "thinpool": "data", "nodes": "pve1,pve2"})).unwrap();
        assert_eq!(c.backend.kind, BackendKind::Lvmthin);
        assert_eq!(c.replicas, 2);
        assert_eq!(c.nodes, Some(vec!["pve1".into(), "pve2".into()]));
        let c = p(json!({"drbdpool-backend": "file", "drbdpool-dir": "/var/lib/dp", "drbdpool-replicas": "3"})).unwrap();
        assert_eq!((c.backend.kind, c.backend.dir.as_deref(), c.replicas), (BackendKind::File, Some("/var/lib/dp"), 3));
        let c = p(json!({"drbdpool-backend": "lvm", "vgname": "vg0", "nodes": {"a": 1}})).unwrap();
        assert_eq!((c.backend.kind, c.nodes), (BackendKind::Lvm, Some(vec!["a".to_string()])));
    }

    #[test]
    fn resync_rates() {
        let r = |v: Value| parse_resync(v.as_object().unwrap());
        assert_eq!(r(json!({"vgname": "ssd", "thinpool": "data"})).unwrap(), Resync { max_kib: 4 << 20, min_kib: 0 });
        assert_eq!(r(json!({"drbdpool-resync-rate-max": "110M", "drbdpool-resync-rate-min": "20m"})).unwrap(), Resync { max_kib: 110 * 1024, min_kib: 20 * 1024 });
        assert_eq!(r(json!({"drbdpool-resync-rate-max": "4G", "drbdpool-resync-rate-min": "250k"})).unwrap(), Resync { max_kib: 4 << 20, min_kib: 250 });
        assert_eq!(r(json!({"drbdpool-resync-rate-max": "250K", "drbdpool-resync-rate-min": 0})).unwrap(), Resync { max_kib: 250, min_kib: 0 });
        assert_eq!(r(json!({"drbdpool-resync-rate-max": "250K", "drbdpool-resync-rate-min": "250K"})).unwrap(), Resync { max_kib: 250, min_kib: 250 });
    }

    #[test]
    fn bad_resync_rates() {
        for (v, want) in [
            (json!({"drbdpool-resync-rate-max": "100"}), "is not a rate"),
            (json!({"drbdpool-resync-rate-max": "100MB"}), "is not a rate"),
            (json!({"drbdpool-resync-rate-max": "-5M"}), "is not a rate"),
            (json!({"drbdpool-resync-rate-max": "1.5G"}), "is not a rate"),
            (json!({"drbdpool-resync-rate-max": "5G"}), "above DRBD's limit"),
            (json!({"drbdpool-resync-rate-max": "99999999999G"}), "is not a rate"),
            (json!({"drbdpool-resync-rate-max": "100K"}), "at least 250K"),
            (json!({"drbdpool-resync-rate-max": "0"}), "at least 250K"),
            (json!({"drbdpool-resync-rate-max": "50M", "drbdpool-resync-rate-min": "60M"}), "above drbdpool-resync-rate-max"),
            (json!({"drbdpool-resync-rate-min": "fast"}), "is not a rate"),
        ] {
            let e = parse_resync(v.as_object().unwrap()).unwrap_err();
            assert_eq!(e.kind(), "invalid-input");
            assert!(e.to_string().contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn bad_properties() {
        for (v, want) in [
            (json!({}), "needs 'vgname'"),
            (json!({"vgname": "ssd"}), "thinpool"),
            (json!({"vgname": "-x", "thinpool": "d"}), "not a valid LVM name"),
            (json!({"vgname": "a b", "thinpool": "d"}), "not a valid LVM name"),
            (json!({"drbdpool-backend": "zfs"}), "not one of"),
            (json!({"drbdpool-backend": "file", "drbdpool-dir": "rel"}), "absolute"),
            (json!({"drbdpool-backend": "file", "drbdpool-dir": "/a/../b"}), "absolute"),
            (json!({"drbdpool-backend": "file"}), "needs 'drbdpool-dir'"),
            (json!({"vgname": "a", "thinpool": "d", "drbdpool-replicas": "9"}), "drbdpool-replicas"),
            (json!({"vgname": "a", "thinpool": "d", "nodes": "a,b/c"}), "nodes"),
        ] {
            let e = p(v.clone()).unwrap_err();
            assert!(e.to_string().contains(want), "{v}: {e}");
        }
    }
}
