//! Where replicas keep their data: LVM thin (default), LVM thick, or sparse
//! files on loop devices (labs and tests). Every LVM call excludes /dev/drbd*
//! and reads LVM's JSON report.

use crate::error::Result;
use crate::store::docs::Space;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backing {
    pub path: String,
    pub size_kib: u64,
}

pub trait Backend: Send + Sync {
    /// Create the backing device `name` of `size_kib` (rounded up as the backend needs). Idempotent.
    fn create(&self, name: &str, size_kib: u64) -> Result<Backing>;
    /// Delete it. Idempotent.
    fn remove(&self, name: &str) -> Result<()>;
    /// Grow to at least `size_kib`. Never shrinks.
    fn resize(&self, name: &str, size_kib: u64) -> Result<Backing>;
    fn lookup(&self, name: &str) -> Result<Option<Backing>>;
    fn space(&self) -> Result<Space>;
    /// Thin backends read zeroes where nothing was written: no initial sync is needed.
    fn thin(&self) -> bool;
    /// Snapshots (None from backends that cannot).
    fn snapshot(&self, name: &str, snap: &str) -> Result<()>;
    fn remove_snapshot(&self, name: &str, snap: &str) -> Result<()>;
    fn rollback(&self, name: &str, snap: &str) -> Result<()>;
    fn can_snapshot(&self) -> bool;
}
