//! The storage.cfg properties the helper reads. Values are checked here because
//! they end up in LVM command lines and paths on every node.

use serde_json::{Map, Value};

use crate::error::Result;
use crate::invalid;
use crate::store::docs::{BackendKind, BackendSpec};

#[derive(Clone, Debug, PartialEq)]
pub struct StorageCfg {
    pub backend: BackendSpec,
    pub replicas: usize,
    /// `nodes` (None: every node).
    pub nodes: Option<Vec<String>>,
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
            None | Some("lvmthin") => BackendKind::Lvmthin,
            Some("lvm") => BackendKind::Lvm,
            Some("file") => BackendKind::File,
            Some(o) => return Err(invalid!("storage property drbdpool-backend '{o}' is not one of lvmthin, lvm, file")),
        };
        let vg = get(m, "vgname")?.map(|v| lvm_name("vgname", &v)).transpose()?;
        let thinpool = get(m, "thinpool")?.map(|v| lvm_name("thinpool", &v)).transpose()?;
        let dir = get(m, "drbdpool-dir")?;
        match kind {
            BackendKind::Lvmthin if vg.is_none() || thinpool.is_none() => {
                return Err(invalid!("a drbdpool storage with backend lvmthin needs 'vgname' and 'thinpool' in storage.cfg"))
            }
            BackendKind::Lvm if vg.is_none() => return Err(invalid!("a drbdpool storage with backend lvm needs 'vgname' in storage.cfg")),
            BackendKind::File => match &dir {
                Some(d) if d.starts_with('/') && !d.split('/').any(|c| c == "..") && !d.contains(|c: char| c.is_whitespace() || c.is_control()) => {}
                Some(d) => return Err(invalid!("storage property drbdpool-dir '{}' must be an absolute path without '..' or whitespace", d.escape_default())),
                None => return Err(invalid!("a drbdpool storage with backend file needs 'drbdpool-dir' in storage.cfg")),
            },
            _ => {}
        }
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
        let backend = BackendSpec {
            kind,
            vg,
            thinpool: if kind == BackendKind::Lvmthin { thinpool } else { None },
            dir: if kind == BackendKind::File { dir } else { None },
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
