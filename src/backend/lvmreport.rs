//! Shared LVM plumbing: the device filter every call carries (Invariant 6) and
//! the parser of `--reportformat json --units b` output.
//!
//! The filter only rejects DRBD devices; it never appends `a|.*|`, because with
//! an accept-all rule LVM found suspended DRBD devices through /dev/block/147:N
//! and hung (LINSTOR's LvmCommands.java rejects DRBD devices the same way).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::exec::{Cmd, Output, Runner};

pub const LVM_FILTER: &str = r#"devices { filter=["r|^/dev/drbd.*|"] }"#;

/// `tool --config '<filter>'`: the start of every LVM command we run.
pub fn lvm(tool: &str) -> Cmd {
    Cmd::new(tool).arg("--config").arg(LVM_FILTER)
}

/// One row of an LVM JSON report (all values are strings in LVM's JSON).
pub type Row = BTreeMap<String, String>;

/// Rows of the first report of `lvs`/`vgs --reportformat json`; `key` is "lv" or "vg".
pub fn parse_report(json: &str, key: &str) -> Result<Vec<Row>> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::Tool(format!("cannot parse LVM JSON report: {e}")))?;
    let rows = v
        .get("report")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get(key))
        .and_then(|r| r.as_array())
        .ok_or_else(|| Error::Tool(format!("LVM JSON report has no report[0].{key} array")))?;
    let mut out = Vec::new();
    for r in rows {
        let obj = r.as_object().ok_or_else(|| Error::Tool("LVM JSON report row is not an object".into()))?;
        out.push(obj.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect());
    }
    Ok(out)
}

/// "1073741824B" (from `--units b`) -> bytes.
pub fn bytes(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches(['B', 'b']);
    t.parse::<u64>().map_err(|_| Error::Tool(format!("unexpected LVM size {s:?} (expected bytes like \"1073741824B\")")))
}

/// "3.14" -> 3.14; "" (not applicable) -> 0.
pub fn percent(s: &str) -> Result<f64> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(0.0);
    }
    t.parse::<f64>().map_err(|_| Error::Tool(format!("unexpected LVM percentage {s:?}")))
}

pub const LVS_FIELDS: &str = "lv_name,vg_name,lv_attr,lv_size,pool_lv,data_percent,lv_path";

/// Every LV of `vg` (one `lvs` call). A missing VG is a clear NotFound.
pub fn lvs(runner: &dyn Runner, vg: &str) -> Result<Vec<Row>> {
    let cmd = lvm("lvs").args(["--reportformat", "json", "--units", "b", "-o", LVS_FIELDS, vg]);
    let out = runner.run(&cmd)?;
    check_vg(&cmd, &out, vg)?;
    parse_report(&out.stdout, "lv")
}

/// Every LV of every VG on this node (one `lvs` call).
pub fn lvs_all(runner: &dyn Runner) -> Result<Vec<Row>> {
    let cmd = lvm("lvs").args(["--reportformat", "json", "--units", "b", "-o", LVS_FIELDS]);
    let out = runner.run(&cmd)?;
    if !out.success() {
        return Err(Error::Tool(format!("{} failed: {}", cmd.display(), out.stderr.trim())));
    }
    parse_report(&out.stdout, "lv")
}

/// `vgs` row of `vg`.
pub fn vgs(runner: &dyn Runner, vg: &str) -> Result<Row> {
    let cmd = lvm("vgs").args(["--reportformat", "json", "--units", "b", "-o", "vg_name,vg_size,vg_free", vg]);
    let out = runner.run(&cmd)?;
    check_vg(&cmd, &out, vg)?;
    parse_report(&out.stdout, "vg")?
        .into_iter()
        .find(|r| r.get("vg_name").map(String::as_str) == Some(vg))
        .ok_or_else(|| vg_missing(vg))
}

fn vg_missing(vg: &str) -> Error {
    Error::NotFound(format!(
        "LVM volume group '{vg}' not found on this node: create it (vgcreate) or fix the storage's vgname"
    ))
}

fn check_vg(cmd: &Cmd, out: &Output, vg: &str) -> Result<()> {
    if out.success() {
        return Ok(());
    }
    if out.stderr.contains("not found") && out.stderr.contains(vg) {
        return Err(vg_missing(vg));
    }
    Err(Error::Tool(format!("`{}` failed (exit {}): {}", cmd.display(), out.status, out.stderr.trim())))
}

/// The row of LV `name` (exact match; hidden `[x]` LVs never match a valid name).
pub fn find<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.get("lv_name").map(String::as_str) == Some(name))
}

/// lv_attr's fifth character is the state: `a` active. A node that rebooted
/// without VG autoactivation (or after `vgchange -an`) has its LVs inactive.
pub fn is_active(row: &Row) -> bool {
    row.get("lv_attr").and_then(|a| a.chars().nth(4)).is_some_and(|c| c == 'a')
}

/// Activate an existing LV so its device node exists (`-K`: also when it carries
/// the activation-skip flag, as thin snapshots do).
pub fn activate(runner: &dyn crate::exec::Runner, vg: &str, lv: &str) -> Result<()> {
    runner.check(&lvm("lvchange").args(["-ay".to_string(), "-K".into(), format!("{vg}/{lv}")])).map(|_| ())
}

pub fn backing_of(row: &Row, vg: &str, name: &str) -> Result<super::Backing> {
    let path = match row.get("lv_path").map(String::as_str) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => format!("/dev/{vg}/{name}"),
    };
    Ok(super::Backing { path, size_kib: bytes(row.get("lv_size").map(String::as_str).unwrap_or(""))? / 1024 })
}

/// LV and snapshot names become argv and device paths: keep them to LVM's own grammar.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 120
        && !name.starts_with(['-', '.'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid backing volume name {name:?}: use letters, digits and + _ . - (not starting with - or .)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LVS: &str = include_str!("../../tests/fixtures/drbd84-real/lvs.json.out");
    const VGS: &str = include_str!("../../tests/fixtures/drbd84-real/vgs.json.out");

    #[test]
    fn parses_real_lvs_report() {
        let rows = parse_report(LVS, "lv").unwrap();
        assert_eq!(rows.len(), 5);
        let pool = find(&rows, "pool").unwrap();
        assert_eq!(bytes(&pool["lv_size"]).unwrap(), 1073741824);
        assert_eq!(&pool["lv_attr"][..1], "t");
        let v = find(&rows, "vm-100-disk-0").unwrap();
        let b = backing_of(v, "vg0", "vm-100-disk-0").unwrap();
        assert_eq!(b.path, "/dev/vg0/vm-100-disk-0");
        assert_eq!(b.size_kib, 262144);
        assert!(find(&rows, "pool_tdata").is_none());
    }

    #[test]
    fn parses_real_vgs_report() {
        let rows = parse_report(VGS, "vg").unwrap();
        assert_eq!(bytes(&rows[0]["vg_free"]).unwrap(), 1061158912);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_report("{}", "lv").unwrap_err().kind(), "tool");
        assert_eq!(bytes("12MiB").unwrap_err().kind(), "tool");
        assert_eq!(check_name("../x").unwrap_err().kind(), "invalid-input");
        assert_eq!(check_name("-x").unwrap_err().kind(), "invalid-input");
        check_name("vm-100-disk-0").unwrap();
    }
}
