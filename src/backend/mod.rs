//! Where replicas keep their data: LVM thin (default), LVM thick, or sparse
//! files on loop devices (labs and tests). Every LVM call excludes /dev/drbd*
//! and reads LVM's JSON report.

pub mod file;
pub mod lvm;
pub mod lvmreport;
pub mod lvmthin;
mod spec;

pub use spec::{BackendKind, BackendSpec, Space};

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::exec::Runner;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backing {
    pub path: String,
    pub size_kib: u64,
}

pub trait Backend: Send + Sync {
    /// Create the backing device `name` of `size_kib` (rounded up as the backend needs). Idempotent.
    fn create(&self, name: &str, size_kib: u64) -> Result<Backing>;
    /// `create`, and whether this call made the device (false: it existed). Default: a lookup
    /// first; backends that list anyway override it to save that call.
    fn create_new(&self, name: &str, size_kib: u64) -> Result<(Backing, bool)> {
        let existed = self.lookup(name)?.is_some();
        Ok((self.create(name, size_kib)?, !existed))
    }
    /// Delete it. Idempotent.
    fn remove(&self, name: &str) -> Result<()>;
    /// Grow to at least `size_kib`. Never shrinks.
    fn resize(&self, name: &str, size_kib: u64) -> Result<Backing>;
    fn lookup(&self, name: &str) -> Result<Option<Backing>>;
    fn space(&self) -> Result<Space>;
    /// Bytes actually allocated in the backing devices `names` (thin allocation), from one
    /// listing of the backend (lvmthin: the same `lvs` as `space`). Names the backend does
    /// not hold are left out. Default (thick): nothing, the caller counts the full size.
    fn allocated(&self, names: &[&str]) -> Result<std::collections::BTreeMap<String, u64>> {
        let _ = names;
        Ok(Default::default())
    }
    /// `space` and `allocated` together; lvmthin answers both from one `lvs`.
    fn space_and_allocated(&self, names: &[&str]) -> Result<(Space, std::collections::BTreeMap<String, u64>)> {
        Ok((self.space()?, self.allocated(names)?))
    }
    /// Thin backends read zeroes where nothing was written: no initial sync is needed.
    fn thin(&self) -> bool;
    /// Snapshots (None from backends that cannot).
    fn snapshot(&self, name: &str, snap: &str) -> Result<()>;
    fn remove_snapshot(&self, name: &str, snap: &str) -> Result<()>;
    fn rollback(&self, name: &str, snap: &str) -> Result<()>;
    fn can_snapshot(&self) -> bool;
    /// The device or file of snapshot `snap` of `name` if it exists (not activated).
    fn snapshot_path(&self, name: &str, snap: &str) -> Result<Option<String>> {
        let _ = (name, snap);
        Ok(None)
    }
    /// Make the snapshot readable as a block device (for mounting/backup); returns its path.
    fn activate_snapshot(&self, name: &str, snap: &str) -> Result<String> {
        let _ = snap;
        Err(Error::Refused(format!("{name}: this backend has no snapshots to activate")))
    }
    /// Linked clone: create `name` as a writable thin snapshot of `base` (file backend: a
    /// copy). Idempotent: an existing `name` is returned as is.
    fn clone_from(&self, base: &str, name: &str) -> Result<Backing> {
        let _ = base;
        Err(Error::Refused(format!("{name}: this backend cannot make linked clones")))
    }
    /// Undo `activate_snapshot`. Idempotent.
    fn deactivate_snapshot(&self, name: &str, snap: &str) -> Result<()> {
        let _ = (name, snap);
        Ok(())
    }
}

/// The backend a VolumeDoc's BackendSpec names. Missing properties are a clear
/// InvalidInput; a missing VG or pool shows up (NotFound) on the first LVM call,
/// a missing directory here.
pub fn backend_for(spec: &BackendSpec, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    fn need<'a>(v: &'a Option<String>, what: &str, kind: &str) -> Result<&'a str> {
        match v.as_deref() {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(Error::InvalidInput(format!(
                "storage backend '{kind}' needs '{what}': set it on the storage (pvesm set <storage> --{what} ...)"
            ))),
        }
    }
    Ok(match spec.kind {
        BackendKind::Lvmthin => {
            Box::new(lvmthin::LvmThin::new(need(&spec.vg, "vgname", "lvmthin")?, need(&spec.thinpool, "thinpool", "lvmthin")?, runner)?)
        }
        BackendKind::Lvm => Box::new(lvm::Lvm::new(need(&spec.vg, "vgname", "lvm")?, runner)?),
        BackendKind::File => Box::new(file::FileBackend::new(need(&spec.dir, "dir", "file")?, runner)?),
    })
}
