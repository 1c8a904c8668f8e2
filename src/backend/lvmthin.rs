//! LVM thin backend (the default): one thin LV per replica in a thin pool.
//! Thin LVs read zeroes where nothing was written, so DRBD can skip the initial
//! full sync. Space is the pool's, computed as Proxmox's LvmThinPlugin does:
//! total = pool size, used = size * data_percent / 100.

use std::sync::Arc;

use super::lvmreport::{self as r, lvm};
use super::{need, Backend, BackendKind, BackendSpec, Backing, Caps, Kind, Space};
use crate::error::{Error, Result};
use crate::exec::Runner;

pub const KIND: Kind = Kind {
    kind: BackendKind::Lvmthin,
    name: "lvmthin",
    caps: Caps { thin: true, snapshots: true, linked_clones: true, lvm: true, loops: false },
    spec: |vg, thinpool, _dir| {
        if vg.is_none() || thinpool.is_none() {
            return Err(crate::invalid!("a drbdpool storage with backend lvmthin needs 'vgname' and 'thinpool' in storage.cfg"));
        }
        Ok(BackendSpec { kind: BackendKind::Lvmthin, vg, thinpool, dir: None })
    },
    open: |spec, runner| Ok(Box::new(LvmThin::new(need(&spec.vg, "vgname", "lvmthin")?, need(&spec.thinpool, "thinpool", "lvmthin")?, runner)?)),
    list: |spec, runner, ours| {
        let Some(vg) = spec.vg.as_deref() else { return Ok(vec![]) };
        Ok(r::lvs(runner, vg)?
            .into_iter()
            .filter(|row| row.get("pool_lv").map(String::as_str) == spec.thinpool.as_deref())
            .filter_map(|row| row.get("lv_name").cloned())
            .filter(|n| ours(n))
            .map(|n| (n.clone(), format!("{vg}/{n}")))
            .collect())
    },
};

pub struct LvmThin {
    vg: String,
    pool: String,
    runner: Arc<dyn Runner>,
}

impl LvmThin {
    pub fn new(vg: &str, pool: &str, runner: Arc<dyn Runner>) -> Result<Self> {
        r::check_name(vg)?;
        r::check_name(pool)?;
        Ok(LvmThin { vg: vg.into(), pool: pool.into(), runner })
    }

    fn snap_lv(name: &str, snap: &str) -> String {
        format!("{name}_{snap}")
    }

    fn pool_row<'a>(&self, rows: &'a [r::Row]) -> Result<&'a r::Row> {
        match r::find(rows, &self.pool) {
            Some(p) if p.get("lv_attr").is_some_and(|a| a.starts_with('t')) => Ok(p),
            Some(_) => Err(Error::InvalidInput(format!(
                "LV {}/{} is not a thin pool: fix the storage's thinpool",
                self.vg, self.pool
            ))),
            None => Err(Error::NotFound(format!(
                "LVM thin pool {}/{} not found on this node: create it (lvcreate --type thin-pool) or fix the storage's thinpool",
                self.vg, self.pool
            ))),
        }
    }

    fn space_in(&self, rows: &[r::Row]) -> Result<Space> {
        let pool = self.pool_row(rows)?;
        let total = r::bytes(&pool["lv_size"])?;
        let pct = r::percent(pool.get("data_percent").map(String::as_str).unwrap_or(""))?;
        let used = ((total as f64) * pct / 100.0) as u64;
        Ok(Space { total, avail: total.saturating_sub(used), used })
    }

    fn allocated_in(&self, rows: &[r::Row], names: &[&str]) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for n in names {
            let Some(row) = r::find(rows, n) else { continue };
            if row.get("pool_lv").map(String::as_str) != Some(self.pool.as_str()) {
                continue;
            }
            let size = r::bytes(row.get("lv_size").map(String::as_str).unwrap_or(""))?;
            let pct = r::percent(row.get("data_percent").map(String::as_str).unwrap_or(""))?;
            out.insert(n.to_string(), ((size as f64) * pct / 100.0) as u64);
        }
        Ok(out)
    }

    fn lookup_in(&self, rows: &[r::Row], name: &str) -> Result<Option<Backing>> {
        r::find(rows, name).map(|row| r::backing_of(row, &self.vg, name)).transpose()
    }

    fn remove_lv(&self, lv: &str) -> Result<()> {
        let rows = r::lvs(&*self.runner, &self.vg)?;
        if r::find(&rows, lv).is_none() {
            return Ok(());
        }
        self.runner.check(&lvm("lvremove").args(["-f".to_string(), format!("{}/{lv}", self.vg)]))?;
        Ok(())
    }
}

impl Backend for LvmThin {
    fn create(&self, name: &str, size_kib: u64) -> Result<Backing> {
        self.create_new(name, size_kib).map(|(b, _)| b)
    }

    fn create_new(&self, name: &str, size_kib: u64) -> Result<(Backing, bool)> {
        r::check_name(name)?;
        let rows = r::lvs(&*self.runner, &self.vg)?;
        self.pool_row(&rows)?;
        if let Some(b) = self.lookup_in(&rows, name)? {
            if r::find(&rows, name).is_some_and(|row| !r::is_active(row)) {
                r::activate(&*self.runner, &self.vg, name)?;
            }
            return if b.size_kib < size_kib { self.resize(name, size_kib) } else { Ok(b) }.map(|b| (b, false));
        }
        self.runner.check(&lvm("lvcreate").args([
            "-V".to_string(),
            format!("{size_kib}k"),
            "-T".into(),
            format!("{}/{}", self.vg, self.pool),
            "-n".into(),
            name.into(),
        ]))?;
        self.lookup(name)?
            .map(|b| (b, true))
            .ok_or_else(|| Error::Tool(format!("lvcreate reported success but LV {}/{name} is missing", self.vg)))
    }

    fn remove(&self, name: &str) -> Result<()> {
        r::check_name(name)?;
        self.remove_lv(name)
    }

    fn resize(&self, name: &str, size_kib: u64) -> Result<Backing> {
        r::check_name(name)?;
        let cur = self
            .lookup(name)?
            .ok_or_else(|| Error::NotFound(format!("LV {}/{name} does not exist; nothing to resize", self.vg)))?;
        if cur.size_kib >= size_kib {
            return Ok(cur); // grow only
        }
        self.runner.check(&lvm("lvextend").args(["-L".to_string(), format!("{size_kib}k"), format!("{}/{name}", self.vg)]))?;
        self.lookup(name)?.ok_or_else(|| Error::Tool(format!("LV {}/{name} vanished during lvextend", self.vg)))
    }

    fn lookup(&self, name: &str) -> Result<Option<Backing>> {
        r::check_name(name)?;
        let rows = r::lvs(&*self.runner, &self.vg)?;
        self.lookup_in(&rows, name)
    }

    fn space(&self) -> Result<Space> {
        let rows = r::lvs(&*self.runner, &self.vg)?;
        self.space_in(&rows)
    }

    /// lv_size * data_percent / 100 of each thin LV of this pool (the pool's own rule, as in `space`).
    fn allocated(&self, names: &[&str]) -> Result<std::collections::BTreeMap<String, u64>> {
        let rows = r::lvs(&*self.runner, &self.vg)?;
        self.allocated_in(&rows, names)
    }

    fn space_and_allocated(&self, names: &[&str]) -> Result<(Space, std::collections::BTreeMap<String, u64>)> {
        let rows = r::lvs(&*self.runner, &self.vg)?;
        Ok((self.space_in(&rows)?, self.allocated_in(&rows, names)?))
    }


    fn thin(&self) -> bool {
        KIND.caps.thin
    }

    /// Thin snapshot, read-only; LVM sets the activation-skip flag on thin snapshots,
    /// so using one needs `lvchange -ay -K` (as Proxmox's LvmThinPlugin does).
    fn snapshot(&self, name: &str, snap: &str) -> Result<()> {
        r::check_name(name)?;
        r::check_name(snap)?;
        let lv = Self::snap_lv(name, snap);
        let rows = r::lvs(&*self.runner, &self.vg)?;
        if r::find(&rows, name).is_none() {
            return Err(Error::NotFound(format!("LV {}/{name} does not exist; cannot snapshot it", self.vg)));
        }
        if r::find(&rows, &lv).is_some() {
            return Err(Error::Conflict(format!("snapshot LV {}/{lv} already exists", self.vg)));
        }
        self.runner.check(&lvm("lvcreate").args(["-s", "-pr", "-n", &lv, &format!("{}/{name}", self.vg)]))?;
        Ok(())
    }

    fn remove_snapshot(&self, name: &str, snap: &str) -> Result<()> {
        r::check_name(name)?;
        r::check_name(snap)?;
        self.remove_lv(&Self::snap_lv(name, snap))
    }

    /// Replace the LV by a writable thin snapshot of the snapshot; `-kn` so the new
    /// LV activates like any other (the caller has taken DRBD down first).
    fn rollback(&self, name: &str, snap: &str) -> Result<()> {
        r::check_name(name)?;
        r::check_name(snap)?;
        let lv = Self::snap_lv(name, snap);
        let rows = r::lvs(&*self.runner, &self.vg)?;
        if r::find(&rows, &lv).is_none() {
            return Err(Error::NotFound(format!("snapshot LV {}/{lv} does not exist; nothing to roll back to", self.vg)));
        }
        if r::find(&rows, name).is_some() {
            self.runner.check(&lvm("lvremove").args(["-f".to_string(), format!("{}/{name}", self.vg)]))?;
        }
        self.runner.check(&lvm("lvcreate").args(["-kn", "-n", name, "-s", &format!("{}/{lv}", self.vg)]))?;
        Ok(())
    }

    fn can_snapshot(&self) -> bool {
        KIND.caps.snapshots
    }

    fn snapshot_path(&self, name: &str, snap: &str) -> Result<Option<String>> {
        r::check_name(name)?;
        r::check_name(snap)?;
        let lv = Self::snap_lv(name, snap);
        let rows = r::lvs(&*self.runner, &self.vg)?;
        Ok(r::find(&rows, &lv).map(|_| format!("/dev/{}/{lv}", self.vg)))
    }

    /// `-K`: thin snapshots carry the activation-skip flag.
    fn activate_snapshot(&self, name: &str, snap: &str) -> Result<String> {
        let path = self.snapshot_path(name, snap)?.ok_or_else(|| {
            Error::NotFound(format!("snapshot LV {}/{} does not exist on this node", self.vg, Self::snap_lv(name, snap)))
        })?;
        self.runner.check(&lvm("lvchange").args(["-ay".to_string(), "-K".into(), format!("{}/{}", self.vg, Self::snap_lv(name, snap))]))?;
        Ok(path)
    }

    /// As PVE's LvmThinPlugin clone_image: a writable thin snapshot without the activation-skip flag.
    fn clone_from(&self, base: &str, name: &str) -> Result<Backing> {
        r::check_name(base)?;
        r::check_name(name)?;
        let rows = r::lvs(&*self.runner, &self.vg)?;
        if let Some(b) = self.lookup_in(&rows, name)? {
            return Ok(b);
        }
        if r::find(&rows, base).is_none() {
            return Err(Error::NotFound(format!("base LV {}/{base} does not exist on this node; cannot clone it", self.vg)));
        }
        self.runner.check(&lvm("lvcreate").args(["-n", name, "-prw", "-kn", "-s", &format!("{}/{base}", self.vg)]))?;
        self.lookup(name)?
            .ok_or_else(|| Error::Tool(format!("lvcreate reported success but LV {}/{name} is missing", self.vg)))
    }

    fn deactivate_snapshot(&self, name: &str, snap: &str) -> Result<()> {
        if self.snapshot_path(name, snap)?.is_none() {
            return Ok(());
        }
        self.runner.check(&lvm("lvchange").args(["-an".to_string(), format!("{}/{}", self.vg, Self::snap_lv(name, snap))]))?;
        Ok(())
    }
}
