//! The cluster store: desired and observed state as small JSON documents in a
//! directory (/etc/pve/priv/drbdpool in production, a temp dir in tests).
//! Every write is atomic (temp file, fsync, rename, fsync dir) because a crash
//! at any point must leave either the old or the new document, never a torn one.

pub mod alloc;
pub mod docs;
pub mod head;
pub mod index;
pub mod lock;
pub mod marks;
pub mod state;
pub mod wake;

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use docs::{NodeDoc, NodeUsage, StorageDoc, VolumeDoc, FORMAT};

pub const DEFAULT_ROOT: &str = "/etc/pve/priv/drbdpool";

/// What an `update_volume` change did to the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing: not written.
    Unchanged,
    /// Desired state changed: written with `generation` + 1, so every agent applies it.
    Desired,
    /// Written with the same generation: nothing for the agents to apply (alloc's
    /// creating -> ready).
    Quiet,
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store directory: explicit flag, else `DRBDPOOL_STORE`, else /etc/pve/priv/drbdpool.
    pub fn resolve_root(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os("DRBDPOOL_STORE") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_ROOT),
        }
    }

    /// Open (and create the sub-directories of) a store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in ["nodes", "volumes", "state"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| {
                Error::Store(format!(
                    "cannot create store directory {}: {e} (is /etc/pve mounted and quorate? set --store or DRBDPOOL_STORE for a test store)",
                    d.display()
                ))
            })?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where locks live: pmxcfs only gives mkdir-lock semantics in /etc/pve/priv/lock.
    pub fn lock_dir(&self) -> PathBuf {
        if self.root.starts_with("/etc/pve") {
            PathBuf::from("/etc/pve/priv/lock")
        } else {
            self.root.join("lock")
        }
    }

    fn volume_path(&self, storeid: &str, volname: &str) -> PathBuf {
        self.root.join("volumes").join(storeid).join(format!("{volname}.json"))
    }

    // ---- volumes ----

    /// A volume's document, with the fence-peer handler's outdated marks merged
    /// into `outdated` (store/marks.rs).
    pub fn volume(&self, storeid: &str, volname: &str) -> Result<Option<VolumeDoc>> {
        let mut d = self.volume_doc(storeid, volname)?;
        if let Some(d) = d.as_mut() {
            marks::merge_into(d, &self.fence_marks()?);
        }
        Ok(d)
    }

    /// The document alone, as written (no marks merged).
    pub fn volume_as_written(&self, storeid: &str, volname: &str) -> Result<Option<VolumeDoc>> {
        self.volume_doc(storeid, volname)
    }

    fn volume_doc(&self, storeid: &str, volname: &str) -> Result<Option<VolumeDoc>> {
        let mut d: Option<VolumeDoc> = read_versioned(&self.volume_path(storeid, volname), |d: &VolumeDoc| d.format)?;
        if let Some(d) = d.as_mut() {
            // The file name is authoritative: a crash inside `rename_volume` + `put_volume`
            // can leave the renamed file with the old name inside.
            if d.volname != volname {
                if let Ok(v) = crate::naming::parse_volname(volname) {
                    d.volname = v.name;
                    d.vmid = v.vmid;
                    d.base = v.base;
                }
            }
        }
        Ok(d)
    }

    /// Atomically move a volume's document to a new name (the content is not changed).
    pub fn rename_volume(&self, storeid: &str, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.volume_path(storeid, from), self.volume_path(storeid, to));
        self.mark_changed(storeid, from)?;
        self.mark_changed(storeid, to)?;
        fs::rename(&a, &b).map_err(|e| Error::Store(format!("cannot rename {} to {}: {e}", a.display(), b.display())))?;
        self.mark_changed(storeid, from)?;
        self.mark_changed(storeid, to)
    }

    pub fn put_volume(&self, v: &VolumeDoc) -> Result<()> {
        let dir = self.root.join("volumes").join(&v.storeid);
        fs::create_dir_all(&dir).map_err(|e| Error::Store(format!("cannot create {}: {e}", dir.display())))?;
        // Change marks around the write keep the list index honest (store/index.rs).
        self.mark_changed(&v.storeid, &v.volname)?;
        write_doc(&self.volume_path(&v.storeid, &v.volname), v)?;
        self.mark_changed(&v.storeid, &v.volname)
    }

    /// The write path of an existing volume document: under its `drbdpool-vol-<resource>`
    /// lock (`at.resource`: the caller names the document it read, and so the lock), read
    /// it again (fence marks merged, as `volume`), let `f` change it, and write it back as
    /// `f` says (`Change`). `Ok(None)`: the document is gone; `f` not called. An error of
    /// `f` writes nothing. A changed `volname` moves the file first (`rename_volume`), so
    /// at no moment two documents name one resource.
    pub fn update_volume(&self, at: &VolumeDoc, f: impl FnOnce(&mut VolumeDoc) -> Result<Change>) -> Result<Option<VolumeDoc>> {
        self.update_volume_timeout(at, lock::default_timeout(), f)
    }

    /// `update_volume` with its own lock timeout.
    pub fn update_volume_timeout(
        &self,
        at: &VolumeDoc,
        timeout: std::time::Duration,
        f: impl FnOnce(&mut VolumeDoc) -> Result<Change>,
    ) -> Result<Option<VolumeDoc>> {
        let _g = self.lock_timeout(&lock::vol_lock_name(&at.resource), timeout)?;
        let Some(mut d) = self.volume(&at.storeid, &at.volname)? else { return Ok(None) };
        match f(&mut d)? {
            Change::Unchanged => return Ok(Some(d)),
            Change::Desired => d.generation += 1,
            Change::Quiet => {}
        }
        if d.volname != at.volname {
            self.rename_volume(&at.storeid, &at.volname, &d.volname)?;
        }
        self.put_volume(&d)?;
        Ok(Some(d))
    }

    pub fn remove_volume(&self, storeid: &str, volname: &str) -> Result<()> {
        let resource = match self.volume_doc(storeid, volname) {
            Ok(Some(d)) => d.resource,
            _ => crate::naming::resource_name(storeid, volname),
        };
        self.mark_changed(storeid, volname)?;
        remove_doc(&self.volume_path(storeid, volname))?;
        self.mark_changed(storeid, volname)?;
        // A volume made later under the same name must not inherit old marks.
        for m in self.fence_marks_of(&resource)? {
            self.remove_fence_mark(&m)?;
        }
        Ok(())
    }

    /// Volume names of one storage, from the directory listing alone (no document reads).
    pub fn volume_names(&self, storeid: &str) -> Result<Vec<String>> {
        list_names(&self.root.join("volumes").join(storeid))
    }

    /// All volume documents of one storage.
    pub fn volumes(&self, storeid: &str) -> Result<Vec<VolumeDoc>> {
        let marks = self.fence_marks()?;
        let mut out = Vec::new();
        for name in self.volume_names(storeid)? {
            if let Some(mut v) = self.volume_doc(storeid, &name)? {
                marks::merge_into(&mut v, &marks);
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Store ids that have volumes.
    pub fn storeids(&self) -> Result<Vec<String>> {
        let dir = self.root.join("volumes");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| Error::Store(format!("cannot read {}: {e}", dir.display())))? {
            let e = e.map_err(|e| Error::Store(format!("cannot read {}: {e}", dir.display())))?;
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every volume of every drbdpool storage (what an agent reconciles).
    pub fn all_volumes(&self) -> Result<Vec<VolumeDoc>> {
        let mut out = Vec::new();
        for s in self.storeids()? {
            out.extend(self.volumes(&s)?);
        }
        Ok(out)
    }

    // ---- nodes ----

    pub fn node(&self, name: &str) -> Result<Option<NodeDoc>> {
        read_versioned(&self.root.join("nodes").join(format!("{name}.json")), |d: &NodeDoc| d.format)
    }

    pub fn put_node(&self, n: &NodeDoc) -> Result<()> {
        write_doc(&self.root.join("nodes").join(format!("{}.json", n.name)), n)
    }

    pub fn remove_node(&self, name: &str) -> Result<()> {
        remove_doc(&self.root.join("nodes").join(format!("{name}.json")))
    }

    pub fn nodes(&self) -> Result<Vec<NodeDoc>> {
        let mut out = Vec::new();
        for name in list_names(&self.root.join("nodes"))? {
            if let Some(n) = self.node(&name)? {
                out.push(n);
            }
        }
        Ok(out)
    }

    // ---- observed state: store/state.rs ----

    /// A storage's settings for the agents (None: never written; the defaults apply).
    pub fn storage_doc(&self, storeid: &str) -> Result<Option<StorageDoc>> {
        read_versioned(&self.root.join("storages").join(format!("{storeid}.json")), |d: &StorageDoc| d.format)
    }

    pub fn put_storage_doc(&self, d: &StorageDoc) -> Result<()> {
        crate::naming::check_storeid(&d.storeid)?;
        let dir = self.root.join("storages");
        fs::create_dir_all(&dir).map_err(|e| Error::Store(format!("cannot create {}: {e}", dir.display())))?;
        write_doc(&dir.join(format!("{}.json", d.storeid)), d)
    }

    /// Compact JSON: ~45 bytes a replica (450 KB at 10,000), far below pmxcfs's 1 MiB per file.
    pub fn put_node_usage(&self, u: &NodeUsage) -> Result<()> {
        let dir = self.root.join("usage");
        fs::create_dir_all(&dir).map_err(|e| Error::Store(format!("cannot create {}: {e}", dir.display())))?;
        let p = dir.join(format!("{}.json", u.node));
        let data = serde_json::to_vec(u).map_err(|e| Error::Store(format!("cannot encode {}: {e}", p.display())))?;
        write_atomic(&p, &data)
    }

    /// Every node's usage document (`usage/<node>.json`); none yet: empty.
    pub fn node_usages(&self) -> Result<Vec<NodeUsage>> {
        self.node_usages_as(|d: &NodeUsage| d.format)
    }

    /// The same into a lighter type (`list` wants hash maps, not sorted ones).
    pub fn node_usages_as<T: DeserializeOwned>(&self, format_of: fn(&T) -> u32) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for name in list_names(&self.root.join("usage"))? {
            if let Some(u) = read_versioned(&self.root.join("usage").join(format!("{name}.json")), format_of)? {
                out.push(u);
            }
        }
        Ok(out)
    }
}

/// `<name>.json` files of a directory, without the suffix, sorted. Temp files are skipped.
fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Store(format!("cannot read {}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::Store(format!("cannot read {}: {e}", dir.display())))?;
        let n = e.file_name();
        let n = n.to_string_lossy();
        if let Some(stem) = n.strip_suffix(".json") {
            if !stem.starts_with('.') {
                out.push(stem.to_string());
            }
        } else if let Some(target) = crate::fsio::in_flight_target(dir, &n) {
            // A replace in flight: on pmxcfs the document itself may be missing
            // for a moment (fsio.rs); it is there, listing it is right.
            if let Some(stem) = target.strip_suffix(".json").filter(|s| !s.starts_with('.')) {
                out.push(stem.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[derive(serde::Deserialize)]
struct FormatOnly {
    #[serde(default)]
    format: u32,
}

/// What one parse of a document's bytes says.
enum Parsed<T> {
    Doc(T),
    /// Refused for good (a newer format).
    Final(Error),
    /// Does not parse: maybe torn, read it again.
    Torn(serde_json::Error),
}

fn newer_format(path: &Path, f: u32, max: u32) -> Error {
    Error::Store(format!(
        "{} has format {f} but this drbdpool understands up to {max}: it was written by a newer drbdpool; upgrade this node",
        path.display()
    ))
}

/// Read and parse a document; `None` if it does not exist. A document that does not parse
/// is read again a few times before it is called invalid: on the real pmxcfs a read on one
/// node while another node replaces the document can return a torn mix of the old and the
/// new content ("trailing characters", seen once in ~1,100 reads of tests/pmxcfs_store.rs's
/// replace storm). Writes are whole-file renames, so a torn read heals on the next read; a
/// document that is really damaged stays so.
fn read_parsed<T>(path: &Path, parse: impl Fn(&[u8]) -> Parsed<T>) -> Result<Option<T>> {
    const READS: u32 = 5;
    let mut attempt = 1;
    loop {
        let data = match crate::fsio::read_settled(path) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::Store(format!("cannot read {}: {e}", path.display()))),
        };
        match parse(&data) {
            Parsed::Doc(d) => return Ok(Some(d)),
            Parsed::Final(e) => return Err(e),
            Parsed::Torn(e) if attempt < READS => {
                tracing::debug!(path = %path.display(), attempt, error = %e, "document did not parse; reading it again (a replace may be under way)");
                std::thread::sleep(std::time::Duration::from_millis(2 * attempt as u64));
                attempt += 1;
            }
            Parsed::Torn(e) => return Err(Error::Store(format!("{} is not a valid drbdpool document: {e}", path.display()))),
        }
    }
}

/// Read a document; `None` if it does not exist. A newer format is refused.
pub fn read_doc<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    read_parsed(path, |data| {
        if let Ok(f) = serde_json::from_slice::<FormatOnly>(data) {
            if f.format > FORMAT {
                return Parsed::Final(newer_format(path, f.format, FORMAT));
            }
        }
        match serde_json::from_slice::<T>(data) {
            Ok(d) => Parsed::Doc(d),
            Err(e) => Parsed::Torn(e),
        }
    })
}

/// `read_doc` in one parse, for types that carry their `format`: the document is
/// parsed as `T` and its format checked afterwards; only a document that does not
/// parse is looked at again, to tell a newer format from a broken file.
pub fn read_versioned<T: DeserializeOwned>(path: &Path, format_of: impl Fn(&T) -> u32) -> Result<Option<T>> {
    read_versioned_upto(path, format_of, FORMAT)
}

/// `read_versioned` for a document with its own format line (store/state.rs), up to `max`.
pub fn read_versioned_upto<T: DeserializeOwned>(path: &Path, format_of: impl Fn(&T) -> u32, max: u32) -> Result<Option<T>> {
    read_parsed(path, |data| match serde_json::from_slice::<T>(data) {
        Ok(d) if format_of(&d) > max => Parsed::Final(newer_format(path, format_of(&d), max)),
        Ok(d) => Parsed::Doc(d),
        Err(e) => match serde_json::from_slice::<FormatOnly>(data) {
            Ok(f) if f.format > max => Parsed::Final(newer_format(path, f.format, max)),
            _ => Parsed::Torn(e),
        },
    })
}

/// Write a document atomically: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_doc<T: Serialize>(path: &Path, doc: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(doc).map_err(|e| Error::Store(format!("cannot encode {}: {e}", path.display())))?;
    write_atomic(path, &data)
}

/// Atomic writes live in crate::fsio (shared with drbd/); kept here for the store's callers.
pub use crate::fsio::write_atomic;

fn remove_doc(path: &Path) -> Result<()> {
    match crate::fsio::with_write_retries(|| fs::remove_file(path)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Store(crate::fsio::describe_write_error("remove", path, &e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docs::VolumeState;

    /// A torn read (what pmxcfs can return while another node replaces the file) heals on a
    /// re-read; a document that stays damaged is still reported as such.
    #[test]
    fn a_document_that_does_not_parse_is_read_again_before_it_is_called_invalid() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.json");
        let good = serde_json::to_vec(&NodeDoc { format: FORMAT, name: "a".into(), address: "10.0.0.1".into() }).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(b"\"}\n}");
        std::fs::write(&p, &torn).unwrap();
        let fixer = {
            let (p, good) = (p.clone(), good.clone());
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(1));
                write_atomic(&p, &good).unwrap();
            })
        };
        let n: NodeDoc = read_doc(&p).unwrap().unwrap();
        fixer.join().unwrap();
        assert_eq!(n.name, "a");
        let v: Option<NodeDoc> = read_versioned(&p, |n: &NodeDoc| n.format).unwrap();
        assert!(v.is_some());
        std::fs::write(&p, &torn).unwrap();
        let e = read_versioned(&p, |n: &NodeDoc| n.format).unwrap_err();
        assert!(e.to_string().contains("not a valid drbdpool document: trailing characters"), "{e}");
        assert!(read_doc::<NodeDoc>(&p).unwrap_err().to_string().contains("trailing characters"));
    }

    fn store() -> (tempfile::TempDir, Store, VolumeDoc) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let v = VolumeDoc::for_test("pool", "vm-100-disk-0", &["a", "b"]);
        s.put_volume(&v).unwrap();
        (d, s, v)
    }

    #[test]
    fn update_volume_writes_as_the_change_says() {
        let (_d, s, v) = store();
        let read = || s.volume("pool", "vm-100-disk-0").unwrap().unwrap();
        let r = s.update_volume(&v, |d| {
            d.size_kib = 8192;
            Ok(Change::Desired)
        });
        assert_eq!((r.unwrap().unwrap().generation, read().size_kib, read().generation), (2, 8192, 2));
        s.update_volume(&v, |d| {
            d.state = VolumeState::Deleting;
            Ok(Change::Quiet)
        })
        .unwrap();
        assert_eq!((read().state, read().generation), (VolumeState::Deleting, 2));
        let r = s.update_volume(&v, |d| {
            d.size_kib = 1;
            Ok(Change::Unchanged)
        });
        assert_eq!(r.unwrap().unwrap().size_kib, 1, "the caller sees what it did");
        assert_eq!(read().size_kib, 8192, "not written");
        let e = s.update_volume(&v, |d| {
            d.size_kib = 1;
            Err(Error::Conflict("no".into()))
        });
        assert_eq!(e.unwrap_err().kind(), "conflict");
        assert_eq!(read().size_kib, 8192, "an error writes nothing");
        // The lock is released every time.
        drop(s.lock_timeout(&lock::vol_lock_name(&v.resource), std::time::Duration::ZERO).unwrap());
    }

    #[test]
    fn update_volume_of_a_missing_document_does_nothing() {
        let (_d, s, v) = store();
        let gone = VolumeDoc { volname: "vm-100-disk-1".into(), ..v };
        assert_eq!(s.update_volume(&gone, |_| panic!("not called")).unwrap(), None);
        assert_eq!(s.volume_names("pool").unwrap(), ["vm-100-disk-0"]);
    }

    #[test]
    fn update_volume_moves_a_renamed_document() {
        let (_d, s, v) = store();
        s.update_volume(&v, |d| {
            d.volname = "base-100-disk-0".into();
            d.base = true;
            Ok(Change::Desired)
        })
        .unwrap();
        assert_eq!(s.volume_names("pool").unwrap(), ["base-100-disk-0"]);
        let d = s.volume("pool", "base-100-disk-0").unwrap().unwrap();
        assert_eq!((d.resource.as_str(), d.base, d.generation), (v.resource.as_str(), true, 2));
    }
}
