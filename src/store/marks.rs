//! Outdated marks written by the fence-peer handler, one empty file each:
//! `<root>/fence/<resource>@<outdated node>@<fencing node>@<token>`.
//!
//! Why not a field written under the volume lock: the handler runs while DRBD
//! keeps the survivor's I/O frozen, and the node that was lost may have held
//! the volume's lock at the cut; pmxcfs reaps such a lock only after 120 s
//! (docs/RELIABILITY.md). A mark needs no lock: it is one exclusive create,
//! which pmxcfs orders like every write and which succeeds only with quorum.
//! Everything in the name, nothing inside, so no reader ever sees half a mark.
//!
//! A volume's outdated set is its document's `outdated` list plus the targets
//! of its marks: `Store::volume` merges them, so every reader sees both. Marks
//! go away when the replica is healed (fence::unfence_if, under the volume
//! lock) or with the volume (Store::remove_volume).

use std::fs;
use std::path::PathBuf;

use crate::error::{Error, Result};

use super::docs::VolumeDoc;
use super::Store;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceMark {
    pub resource: String,
    /// The node whose replica is outdated.
    pub target: String,
    /// The node whose fence-peer handler wrote it.
    pub by: String,
    token: String,
}

impl FenceMark {
    fn file_name(&self) -> String {
        format!("{}@{}@{}@{}", self.resource, self.target, self.by, self.token)
    }

    fn parse(name: &str) -> Option<FenceMark> {
        let mut it = name.split('@');
        let (resource, target, by, token) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || [resource, target, by, token].iter().any(|s| s.is_empty() || s.starts_with('.')) {
            return None;
        }
        Some(FenceMark { resource: resource.into(), target: target.into(), by: by.into(), token: token.into() })
    }
}

impl Store {
    fn marks_dir(&self) -> PathBuf {
        self.root().join("fence")
    }

    /// Every outdated mark in the store (a handful at most: one per fenced replica).
    pub fn fence_marks(&self) -> Result<Vec<FenceMark>> {
        let dir = self.marks_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Store(format!("cannot read {}: {e}", dir.display()))),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::Store(format!("cannot read {}: {e}", dir.display())))?;
            if let Some(m) = FenceMark::parse(&e.file_name().to_string_lossy()) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        Ok(out)
    }

    pub fn fence_marks_of(&self, resource: &str) -> Result<Vec<FenceMark>> {
        Ok(self.fence_marks()?.into_iter().filter(|m| m.resource == resource).collect())
    }

    /// Record `target`'s replica of `resource` outdated, by `by`. Fails without quorum.
    pub fn add_fence_mark(&self, resource: &str, target: &str, by: &str) -> Result<FenceMark> {
        let dir = self.marks_dir();
        crate::fsio::with_write_retries(|| match fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        })
        .map_err(|e| Error::Store(crate::fsio::describe_write_error("create", &dir, &e)))?;
        let m = FenceMark { resource: resource.into(), target: target.into(), by: by.into(), token: format!("{:08x}", rand::random::<u32>()) };
        let p = dir.join(m.file_name());
        crate::fsio::with_write_retries(|| fs::OpenOptions::new().write(true).create_new(true).open(&p))
            .map_err(|e| Error::Store(crate::fsio::describe_write_error("create", &p, &e)))?;
        Ok(m)
    }

    pub fn remove_fence_mark(&self, m: &FenceMark) -> Result<()> {
        let p = self.marks_dir().join(m.file_name());
        match crate::fsio::with_write_retries(|| fs::remove_file(&p)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Store(crate::fsio::describe_write_error("remove", &p, &e))),
        }
    }
}

/// Add the targets of `marks` that are about `doc`'s resource to its outdated list.
pub fn merge_into(doc: &mut VolumeDoc, marks: &[FenceMark]) {
    let VolumeDoc { resource, replicas, outdated, .. } = doc;
    merge(resource, |n| replicas.iter().any(|r| r.node == n), outdated, marks);
}

/// The same for an index entry (`drbdpool status`): the index holds the document's own
/// `outdated`, never the marks, which come and go without a write of the document.
pub fn merge_into_entry(e: &mut super::index::Entry, marks: &[FenceMark]) {
    let super::index::Entry { resource, replicas, outdated, .. } = e;
    merge(resource, |n| replicas.iter().any(|r| r == n), outdated, marks);
}

fn merge(resource: &str, is_replica: impl Fn(&str) -> bool, outdated: &mut Vec<String>, marks: &[FenceMark]) {
    for m in marks.iter().filter(|m| m.resource == resource) {
        if is_replica(&m.target) && !outdated.contains(&m.target) {
            outdated.push(m.target.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_ignore_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.fence_marks().unwrap().is_empty());
        let m = s.add_fence_mark("dp.vm-100-disk-0", "pve2", "pve1").unwrap();
        fs::write(d.path().join("fence/.tmp-x"), b"").unwrap();
        fs::write(d.path().join("fence/not-a-mark"), b"").unwrap();
        assert_eq!(s.fence_marks().unwrap(), vec![m.clone()]);
        assert_eq!(s.fence_marks_of("dp.vm-100-disk-0").unwrap().len(), 1);
        assert!(s.fence_marks_of("dp.vm-101-disk-0").unwrap().is_empty());
        s.remove_fence_mark(&m).unwrap();
        s.remove_fence_mark(&m).unwrap(); // idempotent
        assert!(s.fence_marks().unwrap().is_empty());
    }
}
