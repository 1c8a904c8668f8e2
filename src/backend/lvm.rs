//! LVM thick backend: one plain LV per replica. Fully allocated, so a new
//! replica needs a real initial sync (thin() is false) and no snapshots are
//! offered (thick LVM snapshots are slow and fill up; Proxmox offers none either).

use std::sync::Arc;

use super::lvmreport::{self as r, lvm};
use super::{need, Backend, BackendKind, BackendSpec, Backing, Caps, Kind, Space};
use crate::error::{Error, Result};
use crate::exec::Runner;

pub const KIND: Kind = Kind {
    kind: BackendKind::Lvm,
    name: "lvm",
    caps: Caps { thin: false, snapshots: false, linked_clones: false, lvm: true, loops: false },
    spec: |vg, _thinpool, _dir| {
        if vg.is_none() {
            return Err(crate::invalid!("a drbdpool storage with backend lvm needs 'vgname' in storage.cfg"));
        }
        Ok(BackendSpec { kind: BackendKind::Lvm, vg, thinpool: None, dir: None })
    },
    open: |spec, runner| Ok(Box::new(Lvm::new(need(&spec.vg, "vgname", "lvm")?, runner)?)),
    // Every LV of the VG, thin ones included: the VG is the location.
    list: |spec, runner, ours| {
        let Some(vg) = spec.vg.as_deref() else { return Ok(vec![]) };
        Ok(r::lvs(runner, vg)?
            .into_iter()
            .filter_map(|row| row.get("lv_name").cloned())
            .filter(|n| ours(n))
            .map(|n| (n.clone(), format!("{vg}/{n}")))
            .collect())
    },
};

pub struct Lvm {
    vg: String,
    runner: Arc<dyn Runner>,
}

impl Lvm {
    pub fn new(vg: &str, runner: Arc<dyn Runner>) -> Result<Self> {
        r::check_name(vg)?;
        Ok(Lvm { vg: vg.into(), runner })
    }
}

impl Backend for Lvm {
    fn create(&self, name: &str, size_kib: u64) -> Result<Backing> {
        r::check_name(name)?;
        let rows = r::lvs(&*self.runner, &self.vg)?;
        if let Some(row) = r::find(&rows, name) {
            let b = r::backing_of(row, &self.vg, name)?;
            if !r::is_active(row) {
                r::activate(&*self.runner, &self.vg, name)?;
            }
            return if b.size_kib < size_kib { self.resize(name, size_kib) } else { Ok(b) };
        }
        // -Wy --yes: reused extents may carry old signatures; wipe them without a prompt.
        self.runner.check(&lvm("lvcreate").args([
            "-Wy".to_string(),
            "--yes".into(),
            "-L".into(),
            format!("{size_kib}k"),
            "-n".into(),
            name.into(),
            self.vg.clone(),
        ]))?;
        self.lookup(name)?
            .ok_or_else(|| Error::Tool(format!("lvcreate reported success but LV {}/{name} is missing", self.vg)))
    }

    fn remove(&self, name: &str) -> Result<()> {
        r::check_name(name)?;
        if self.lookup(name)?.is_none() {
            return Ok(());
        }
        self.runner.check(&lvm("lvremove").args(["-f".to_string(), format!("{}/{name}", self.vg)]))?;
        Ok(())
    }

    fn resize(&self, name: &str, size_kib: u64) -> Result<Backing> {
        r::check_name(name)?;
        let cur = self
            .lookup(name)?
            .ok_or_else(|| Error::NotFound(format!("LV {}/{name} does not exist; nothing to resize", self.vg)))?;
        if cur.size_kib >= size_kib {
            return Ok(cur);
        }
        self.runner.check(&lvm("lvextend").args(["-L".to_string(), format!("{size_kib}k"), format!("{}/{name}", self.vg)]))?;
        self.lookup(name)?.ok_or_else(|| Error::Tool(format!("LV {}/{name} vanished during lvextend", self.vg)))
    }

    fn lookup(&self, name: &str) -> Result<Option<Backing>> {
        r::check_name(name)?;
        let rows = r::lvs(&*self.runner, &self.vg)?;
        r::find(&rows, name).map(|row| r::backing_of(row, &self.vg, name)).transpose()
    }

    fn space(&self) -> Result<Space> {
        let row = r::vgs(&*self.runner, &self.vg)?;
        let total = r::bytes(&row["vg_size"])?;
        let avail = r::bytes(&row["vg_free"])?;
        Ok(Space { total, avail, used: total.saturating_sub(avail) })
    }

    fn thin(&self) -> bool {
        KIND.caps.thin
    }

    fn snapshot(&self, _name: &str, _snap: &str) -> Result<()> {
        Err(no_snapshots())
    }
    fn remove_snapshot(&self, _name: &str, _snap: &str) -> Result<()> {
        Err(no_snapshots())
    }
    fn rollback(&self, _name: &str, _snap: &str) -> Result<()> {
        Err(no_snapshots())
    }
    fn can_snapshot(&self) -> bool {
        KIND.caps.snapshots
    }
}

fn no_snapshots() -> Error {
    Error::Refused("the lvm (thick) backend has no snapshots: use an lvmthin storage for snapshots".into())
}
