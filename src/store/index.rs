//! The list index: what `list` needs of every volume of a storage (size, ctime,
//! parent, state), in 16 shard files instead of one document per volume.
//! Reading 10,000 volume documents costs 28 ms on tmpfs before any parsing (more on
//! pmxcfs, where every open is a FUSE round trip); 16 small files cost well under
//! a millisecond. pmxcfs caps a file at 1 MiB, hence shards by vmid.
//!
//! The volume documents stay the truth; the index is a cache that is never trusted
//! where it could be stale:
//! - names come from the directory listing of the documents (a volume without an
//!   index entry is read directly; an entry without a document is dropped);
//! - every writer of a volume document creates a change mark `changed/<volname>`
//!   before and after its write (`Store::put_volume` and friends). A marked volume is
//!   read from its document. A crash between the write and the index update leaves
//!   the mark, so the index can be behind but never wrong.
//! - the index is folded forward (`compact`) by the agents, under a lock, with a
//!   claim (rename of the mark) taken before the document is read: a write that
//!   lands after that read creates its mark again with its second touch.
//! - until a storage's index is built (`complete` exists and names the current LAYOUT), `list`
//!   reads every document.
//!
//! Layout: `<root>/index/<storeid>/{shard-NN.json, complete, changed/<volname>}`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::docs::{VolumeDoc, VolumeState, FORMAT};
use super::{read_versioned, write_atomic, Store};
use crate::error::{Error, Result};

pub const SHARDS: u32 = 16;
const CLAIM: &str = ".claimed-";

/// The fields of one volume that `list` reports, and (layout 2) those `drbdpool status` and
/// `drbdpool volume list` show: both read the index instead of every document. Taken from the
/// document as written: `outdated` without the fence marks, which readers merge (marks.rs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size_kib: u64,
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub state: VolumeState,
    /// Empty in an entry an older drbdpool wrote (layout 1): the reader takes the document.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default)]
    pub minor: u32,
    #[serde(default)]
    pub port: u16,
    /// The replicas' nodes, in placement order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outdated: Vec<String>,
    /// A replica move under way (src/relocate.rs), for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<crate::store::docs::ReplicaMove>,
}

impl Entry {
    pub fn of(d: &VolumeDoc) -> Entry {
        Entry {
            size_kib: d.size_kib,
            created: d.created,
            parent: d.parent.clone(),
            state: d.state,
            resource: d.resource.clone(),
            minor: d.minor,
            port: d.port,
            replicas: d.replicas.iter().map(|r| r.node.clone()).collect(),
            outdated: d.outdated.clone(),
            moving: d.moving.clone(),
        }
    }

    /// Holds the CLI's fields (not an entry of layout 1).
    pub fn is_full(&self) -> bool {
        !self.resource.is_empty()
    }
}

/// What `list` (PVE's hot call) reads of an entry: the shard's other fields (the CLI's) are
/// skipped while parsing, not built into strings and vectors it would throw away.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ListEntry {
    pub size_kib: u64,
    pub created: u64,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub state: VolumeState,
}

/// A view of an index entry: parsed from a shard, or taken from the document of a volume
/// the index cannot vouch for.
pub trait IndexView: serde::de::DeserializeOwned {
    fn of(d: &VolumeDoc) -> Self;
}

impl IndexView for Entry {
    fn of(d: &VolumeDoc) -> Self {
        Entry::of(d)
    }
}

impl IndexView for ListEntry {
    fn of(d: &VolumeDoc) -> Self {
        ListEntry { size_kib: d.size_kib, created: d.created, parent: d.parent.clone(), state: d.state }
    }
}

/// What the index's entries hold, written into `complete`: 1 = `list`'s fields; 2 = also the
/// CLI's. An index of an older layout counts as not built: `list` reads the documents until an
/// agent rebuilds it (its next pass). Older binaries only look for the file and ignore the new
/// fields, so a rolling upgrade works both ways.
pub const LAYOUT: u32 = 2;

/// A shard file; written sorted (BTreeMap), read for `list` into a HashMap (no ordering work).
#[derive(Default, Serialize, Deserialize)]
struct ShardOf<M> {
    #[serde(default = "fmt")]
    format: u32,
    #[serde(default)]
    volumes: M,
}
type Shard = ShardOf<BTreeMap<String, Entry>>;

fn fmt() -> u32 {
    FORMAT
}

/// Which shard holds a volume: by its vmid (a `vmid` filter reads one shard);
/// names without one (never produced by the grammar) go to shard 0.
pub fn shard_of(volname: &str) -> u32 {
    crate::naming::parse_volname(volname).map(|v| v.vmid % SHARDS).unwrap_or(0)
}

fn serr(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::Store(format!("cannot {what} {}: {e}", p.display()))
}

impl Store {
    fn index_dir(&self, storeid: &str) -> PathBuf {
        self.root().join("index").join(storeid)
    }

    fn shard_path(&self, storeid: &str, shard: u32) -> PathBuf {
        self.index_dir(storeid).join(format!("shard-{shard:02}.json"))
    }

    /// Mark a volume as changed (before and after every write of its document).
    /// Creating an existing mark writes nothing, so the second touch is usually free.
    pub(super) fn mark_changed(&self, storeid: &str, volname: &str) -> Result<()> {
        let dir = self.index_dir(storeid).join("changed");
        let p = dir.join(volname);
        let create = || fs::OpenOptions::new().write(true).create_new(true).open(&p);
        match create() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir).map_err(|e| serr("create", &dir, e))?;
                match create() {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    Err(e) => Err(serr("create change mark", &p, e)),
                }
            }
            Err(e) => Err(serr("create change mark", &p, e)),
        }
    }

    /// Names marked as changed (claimed marks of a crashed compaction included).
    fn changed(&self, storeid: &str) -> Result<BTreeSet<String>> {
        let dir = self.index_dir(storeid).join("changed");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(serr("read", &dir, e)),
        };
        let mut out = BTreeSet::new();
        for e in rd {
            let n = e.map_err(|e| serr("read", &dir, e))?.file_name().to_string_lossy().into_owned();
            if let Some(c) = n.strip_prefix(CLAIM) {
                out.insert(c.to_string());
            } else if !n.starts_with('.') {
                out.insert(n);
            }
        }
        Ok(out)
    }

    fn read_shard<M: Default + serde::de::DeserializeOwned>(&self, storeid: &str, shard: u32) -> Result<ShardOf<M>> {
        Ok(read_versioned(&self.shard_path(storeid, shard), |s: &ShardOf<M>| s.format)?.unwrap_or_default())
    }

    fn write_shard(&self, storeid: &str, shard: u32, s: &Shard) -> Result<()> {
        let p = self.shard_path(storeid, shard);
        // Compact JSON: ~90 bytes a volume keeps a shard far below pmxcfs's 1 MiB.
        let data = serde_json::to_vec(s).map_err(|e| Error::Store(format!("cannot encode {}: {e}", p.display())))?;
        write_atomic(&p, &data)
    }

    pub fn index_complete(&self, storeid: &str) -> bool {
        fs::read_to_string(self.index_dir(storeid).join("complete"))
            .is_ok_and(|s| s.trim().parse::<u32>().is_ok_and(|l| l >= LAYOUT))
    }

    /// `list`'s view of a storage: (volname, entry) of every volume, sorted by name,
    /// optionally only those of one vmid. Deleting volumes are included (callers filter).
    pub fn list_entries(&self, storeid: &str, vmid: Option<u32>) -> Result<Vec<(String, Entry)>> {
        self.list_entries_as(storeid, vmid)
    }

    /// `list_entries` with only the fields of view `E` (ListEntry for `list`).
    pub fn list_entries_as<E: IndexView>(&self, storeid: &str, vmid: Option<u32>) -> Result<Vec<(String, E)>> {
        let names: Vec<String> = self
            .volume_names(storeid)?
            .into_iter()
            .filter(|n| vmid.is_none_or(|v| crate::naming::parse_volname(n).is_ok_and(|p| p.vmid == v)))
            .collect();
        let (mut index, changed) = if self.index_complete(storeid) {
            self.read_index(storeid, vmid.map(|v| v % SHARDS), names.len())?
        } else {
            (HashMap::new(), BTreeSet::new())
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match index.remove(&n) {
                Some(e) if !changed.contains(&n) => out.push((n, e)),
                _ => {
                    if let Some(d) = self.volume_doc(storeid, &n)? {
                        out.push((n, E::of(&d)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every volume of every storage as `drbdpool status` and `volume list` show it:
    /// (storeid, volname, entry), by storage then name, from the index like `list` (the
    /// documents only of marked volumes, of volumes without an entry, and of entries of an
    /// older layout). Deleting volumes are included.
    pub fn cli_entries(&self) -> Result<Vec<(String, String, Entry)>> {
        let marks = self.fence_marks()?;
        let mut out = Vec::new();
        for sid in self.storeids()? {
            for (n, e) in self.list_entries(&sid, None)? {
                let mut e = if e.is_full() {
                    e
                } else {
                    match self.volume_doc(&sid, &n)? {
                        Some(d) => Entry::of(&d),
                        None => continue,
                    }
                };
                super::marks::merge_into_entry(&mut e, &marks);
                out.push((sid.clone(), n, e));
            }
        }
        Ok(out)
    }

    /// The change marks, then the shards (all, or just `shard`). Marks first: a write
    /// after this reads a document whose mark we then see, or one whose index entry we
    /// read after the fold.
    fn read_index<E: IndexView>(&self, storeid: &str, shard: Option<u32>, capacity: usize) -> Result<(HashMap<String, E>, BTreeSet<String>)> {
        let changed = self.changed(storeid)?;
        let shards: Vec<u32> = match shard {
            Some(s) => vec![s],
            None => (0..SHARDS).collect(),
        };
        let mut index = HashMap::with_capacity(capacity);
        for s in shards {
            let shard: ShardOf<HashMap<String, E>> = self.read_shard(storeid, s)?;
            index.extend(shard.volumes);
        }
        Ok((index, changed))
    }

    /// Build the index of a storage from its documents (first use, or repair).
    /// Marks are left alone: a write racing the build has its mark.
    pub fn build_index(&self, storeid: &str) -> Result<()> {
        let _l = self.lock_timeout(&index_lock(storeid), Duration::from_secs(10))?;
        self.build_index_locked(storeid).map(|_| ())
    }

    /// Returns how many volumes it indexed.
    fn build_index_locked(&self, storeid: &str) -> Result<usize> {
        let mut shards: BTreeMap<u32, Shard> = (0..SHARDS).map(|s| (s, Shard::default())).collect();
        let names = self.volume_names(storeid)?;
        let count = names.len();
        for n in names {
            if let Some(d) = self.volume_doc(storeid, &n)? {
                shards.get_mut(&shard_of(&n)).expect("all shards").volumes.insert(n, Entry::of(&d));
            }
        }
        let dir = self.index_dir(storeid);
        fs::create_dir_all(dir.join("changed")).map_err(|e| serr("create", &dir, e))?;
        for (i, s) in &shards {
            self.write_shard(storeid, *i, s)?;
        }
        write_atomic(&dir.join("complete"), format!("{LAYOUT}\n").as_bytes())?;
        Ok(count)
    }

    /// Fold the change marks into the index (the agents call this each pass). Returns
    /// how many volumes were folded. Skips quietly when another node is at it.
    pub fn compact_index(&self, storeid: &str) -> Result<usize> {
        let complete = self.index_complete(storeid);
        let marks = if complete { self.changed(storeid)? } else { BTreeSet::new() };
        if complete && marks.is_empty() {
            return Ok(0);
        }
        let Ok(_l) = self.lock_timeout(&index_lock(storeid), Duration::ZERO) else { return Ok(0) };
        if !self.index_complete(storeid) {
            return self.build_index_locked(storeid);
        }
        let changed = self.index_dir(storeid).join("changed");
        let mut by_shard: BTreeMap<u32, Vec<(String, Option<Entry>)>> = BTreeMap::new();
        let mut claims = Vec::new();
        for n in self.changed(storeid)? {
            let (mark, claim) = (changed.join(&n), changed.join(format!("{CLAIM}{n}")));
            // Claim before reading: a write after our read recreates the mark.
            match fs::rename(&mark, &claim) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && claim.exists() => {} // left by a crash
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(serr("claim change mark", &mark, e)),
            }
            let doc = self.volume_doc(storeid, &n)?;
            by_shard.entry(shard_of(&n)).or_default().push((n, doc.as_ref().map(Entry::of)));
            claims.push(claim);
        }
        for (s, changes) in by_shard {
            let mut shard: Shard = self.read_shard(storeid, s)?;
            for (n, e) in changes {
                match e {
                    Some(e) => shard.volumes.insert(n, e),
                    None => shard.volumes.remove(&n),
                };
            }
            self.write_shard(storeid, s, &shard)?;
        }
        for c in &claims {
            if let Err(e) = fs::remove_file(c) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(serr("remove", c, e));
                }
            }
        }
        Ok(claims.len())
    }
}

impl Store {
    /// Volumes whose unmarked index entry disagrees with their document: what would
    /// make `list` wrong (for `drbdpool check`). A disagreement is looked at twice,
    /// so a write racing the check (its mark made after our first look) is not reported.
    pub fn index_drift(&self, storeid: &str) -> Result<Vec<String>> {
        if !self.index_complete(storeid) {
            return Ok(Vec::new());
        }
        // `list`'s view: does the unmarked entry disagree with the document?
        let disagrees = |e: Option<&Entry>, changed: &BTreeSet<String>, n: &str| -> Result<bool> {
            if changed.contains(n) {
                return Ok(false);
            }
            Ok(match (e, self.volume_doc(storeid, n)?) {
                (Some(e), Some(d)) => *e != Entry::of(&d),
                _ => false, // a missing entry or document: `list` goes by the directory listing
            })
        };
        let names = self.volume_names(storeid)?;
        // First look: the whole index read once. Second look, at each candidate only.
        let (index, changed) = self.read_index::<Entry>(storeid, None, names.len())?;
        let mut out = Vec::new();
        for n in names {
            if disagrees(index.get(&n), &changed, &n)? {
                let (again, changed) = self.read_index::<Entry>(storeid, Some(shard_of(&n)), 0)?;
                if disagrees(again.get(&n), &changed, &n)? {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }
}

fn index_lock(storeid: &str) -> String {
    format!("drbdpool-index-{storeid}")
}
