//! Where replicas keep their data: LVM thin (default), LVM thick, or sparse
//! files on loop devices (labs and tests); sim.rs, sparse files without the loop
//! device, stands in for them where loop devices cannot be had (benchmarks).
//! Every LVM call excludes /dev/drbd* and reads LVM's JSON report.
//!
//! A kind's facts (its name, what it can do, the storage.cfg properties it needs,
//! how it lists its devices) are declared once, in its module's `KIND`, and
//! registered in `KINDS`: callers ask `BackendKind::caps` instead of matching on
//! the kind.

pub mod file;
pub mod lvm;
pub mod lvmreport;
pub mod lvmthin;
pub mod sim;
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

/// What a kind of backend can do, known from the kind alone: the plugin's handlers and
/// `drbdpool check` decide on it from a VolumeDoc or storage.cfg, without this node's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Reads zeroes where nothing was written: new replicas need no initial sync (sparseinit).
    pub thin: bool,
    /// Per-node snapshots: snapshot, rollback, activate with a snapname.
    pub snapshots: bool,
    /// Linked clones of a template (Backend::clone_from).
    pub linked_clones: bool,
    /// Its devices are LVs: `lvs` has to work on a node that uses it.
    pub lvm: bool,
    /// Its images (in `dir`) are attached to loop devices.
    pub loops: bool,
}

/// One kind of backend: its name (storage.cfg's `drbdpool-backend`, the documents' `kind`),
/// what it can do, and how its spec, its backend and the list of its devices are made.
pub struct Kind {
    pub kind: BackendKind,
    pub name: &'static str,
    pub caps: Caps,
    /// The spec of a storage of this kind from storage.cfg's `vgname`, `thinpool` and
    /// `drbdpool-dir` (names already checked); refused when one it needs is missing.
    spec: fn(vg: Option<String>, thinpool: Option<String>, dir: Option<String>) -> Result<BackendSpec>,
    open: fn(&BackendSpec, Arc<dyn Runner>) -> Result<Box<dyn Backend>>,
    /// The backing devices in the spec's location that may be drbdpool's: (name, path to show).
    /// `ours` tells drbdpool's names from others where the location is shared (a VG).
    list: fn(&BackendSpec, &dyn Runner, ours: &dyn Fn(&str) -> bool) -> Result<Vec<(String, String)>>,
}

/// The registration point: every kind of backend, in the order storage.cfg's error lists them.
/// A new backend is its module, its BackendKind variant and one line here.
const KINDS: &[&Kind] = &[&lvmthin::KIND, &lvm::KIND, &file::KIND];

impl BackendKind {
    fn entry(self) -> &'static Kind {
        KINDS.iter().copied().find(|k| k.kind == self).expect("every BackendKind is registered in backend::KINDS")
    }
    pub fn caps(self) -> Caps {
        self.entry().caps
    }
    pub fn name(self) -> &'static str {
        self.entry().name
    }
    /// The kind storage.cfg's `drbdpool-backend` names (None: not a registered name).
    pub fn from_name(name: &str) -> Option<BackendKind> {
        KINDS.iter().find(|k| k.name == name).map(|k| k.kind)
    }
    /// "lvmthin, lvm, file": the names `from_name` knows, for error messages.
    pub fn names() -> String {
        KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
    }
}

impl BackendSpec {
    /// The spec of a storage.cfg entry of `kind` (see Kind::spec).
    pub fn from_storage_cfg(kind: BackendKind, vg: Option<String>, thinpool: Option<String>, dir: Option<String>) -> Result<BackendSpec> {
        (kind.entry().spec)(vg, thinpool, dir)
    }
    /// The backing devices in this location that may be drbdpool's, without making the
    /// backend (a location this node does not have lists nothing or fails, never refuses).
    pub fn backings(&self, runner: &dyn Runner, ours: &dyn Fn(&str) -> bool) -> Result<Vec<(String, String)>> {
        (self.kind.entry().list)(self, runner, ours)
    }
}

/// A property the spec of `kind` needs: missing or empty is a clear InvalidInput.
fn need<'a>(v: &'a Option<String>, what: &str, kind: &str) -> Result<&'a str> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Error::InvalidInput(format!(
            "storage backend '{kind}' needs '{what}': set it on the storage (pvesm set <storage> --{what} ...)"
        ))),
    }
}

/// The backend a VolumeDoc's BackendSpec names. Missing properties are a clear
/// InvalidInput; a missing VG or pool shows up (NotFound) on the first LVM call,
/// a missing directory here.
pub fn backend_for(spec: &BackendSpec, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    (spec.kind.entry().open)(spec, runner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_registered_under_its_json_name() {
        for k in [BackendKind::Lvmthin, BackendKind::Lvm, BackendKind::File] {
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.name()));
            assert_eq!(BackendKind::from_name(k.name()), Some(k));
        }
        assert_eq!(BackendKind::names(), "lvmthin, lvm, file");
        assert_eq!(BackendKind::from_name("zfs"), None);
    }
}
