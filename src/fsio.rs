//! Whole-file reads and atomic writes that hold on the real pmxcfs as well as on
//! a local file system. Used by the store and by drbd/ (resource files).
//!
//! What pmxcfs does differently, and what this module does about it
//! (docs/RELIABILITY.md "The store on the real pmxcfs"):
//! - `rename(tmp, doc)` over a document that is open on the writing node is not
//!   atomic for readers: libfuse first renames the open target aside
//!   (`.fuse_hidden…`), so for a moment the name exists on no node. The temp
//!   file, though, still exists until the second rename. Temp files are named
//!   after their target (`.tmp-<name>.<random>`), so a reader that finds a
//!   document missing while such a temp file is fresh knows a replace is under
//!   way and reads again (bounded) instead of concluding "no document".
//! - Around a membership change a write blocks, then fails with EPERM; while
//!   pmxcfs resyncs after a heal, writes fail with EBUSY for seconds. Both get
//!   bounded retries. EACCES means no quorum (or a refused operation): it fails
//!   at once with a message that says so, because a node without quorum must
//!   fail fast (the fence-peer handler keeps I/O frozen on that answer).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};

/// A temp file younger than this is taken as a write in flight; an older one is
/// a leftover of a crashed writer (a write takes milliseconds; a write blocked
/// across a membership change fails within ~15 s).
const IN_FLIGHT: Duration = Duration::from_secs(30);
/// How long a reader waits for an in-flight replace to land.
const SETTLE: Duration = Duration::from_secs(2);
/// How long writes retry EBUSY (pmxcfs resyncing after a heal: 1-4 s measured).
const BUSY_RETRY: Duration = Duration::from_secs(10);
/// How often a write retries EPERM (the write in flight when the membership changed).
const EPERM_RETRIES: u32 = 2;

const TMP_PREFIX: &str = ".tmp-";

/// The prefix of the temp files that replace `path` (`.tmp-<file name>.`).
fn tmp_prefix_for(path: &Path) -> Option<String> {
    path.file_name().map(|n| format!("{TMP_PREFIX}{}.", n.to_string_lossy()))
}

/// The document name a temp file is about to replace, if it is one of ours and fresh.
pub fn in_flight_target(dir: &Path, entry_name: &str) -> Option<String> {
    let rest = entry_name.strip_prefix(TMP_PREFIX)?;
    // `<target>.<random>`: the random part has no dot.
    let (target, random) = rest.rsplit_once('.')?;
    if target.is_empty() || random.is_empty() {
        return None;
    }
    // Gone since the directory was listed: it was renamed into place just now (seen on the
    // real pmxcfs: a listing with the temp file and without its target).
    let fresh = match fs::symlink_metadata(dir.join(entry_name)).and_then(|m| m.modified()) {
        Ok(t) => SystemTime::now().duration_since(t).unwrap_or_default() < IN_FLIGHT,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    fresh.then(|| target.to_string())
}

/// Is `path` there, or a replace of it under way (a fresh temp file named after it), in one
/// listing of its directory? A listing is one snapshot of the directory (pmxcfs copies it
/// under its memdb lock; libfuse buffers the whole of it on the first read), so a listing
/// with neither means the document was missing at that moment with nothing about to bring
/// it back.
fn present_or_in_flight(path: &Path) -> bool {
    let (Some(dir), Some(name), Some(prefix)) = (path.parent(), path.file_name(), tmp_prefix_for(path)) else { return false };
    let Ok(rd) = fs::read_dir(dir) else { return false };
    rd.flatten().any(|e| {
        let n = e.file_name();
        n == name || (n.to_string_lossy().starts_with(&prefix) && in_flight_target(dir, &n.to_string_lossy()).is_some())
    })
}

/// Open a file for reading; `Ok(None)` if it does not exist — and stays missing
/// once any replace of it that was under way has landed.
pub fn open_settled(path: &Path) -> std::io::Result<Option<fs::File>> {
    settled(path, || fs::File::open(path))
}

/// Read a whole file; `Ok(None)` if it does not exist — and stays missing once
/// any replace of it that was under way has landed.
pub fn read_settled(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    settled(path, || fs::read(path))
}

/// A failed open is not the answer by itself: on pmxcfs a replace leaves the name missing
/// for a moment, and a writer replacing a document back to back opens such a moment every
/// few milliseconds. So after a NotFound the directory is listed: the name there again (the
/// replace landed) or a temp file for it (one in flight) means read again; neither means
/// missing. A single "one last look" after the replace landed was not enough: it could fall
/// into the next replace's moment (fsio's test `readers_never_miss_…` missed 291 of 216,490
/// reads that way).
fn settled<T>(path: &Path, mut get: impl FnMut() -> std::io::Result<T>) -> std::io::Result<Option<T>> {
    let start = Instant::now();
    let mut pause = Duration::ZERO;
    loop {
        match get() {
            Ok(d) => return Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if start.elapsed() >= SETTLE || !present_or_in_flight(path) {
                    return Ok(None);
                }
                // The first retry at once (the name is usually back already), then back off.
                std::thread::sleep(pause);
                pause = (pause * 2).clamp(Duration::from_millis(1), Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Threads for reading many small files at once (`read_all`).
const READERS: usize = 8;

/// `f` over every item, on up to 8 threads, results in the items' order. On pmxcfs every
/// read is a few FUSE round trips that pmxcfs serves on several threads, so reading the 32
/// shards of a node's state (store/state.rs) in parallel waits for about 4 of them, not 32.
/// On a local file system the threads cost some 0.1 ms.
pub fn read_all<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 4 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(READERS);
    std::thread::scope(|sc| {
        let hs: Vec<_> = items.chunks(per).map(|c| sc.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
        hs.into_iter().flat_map(|h| h.join().expect("a reader thread panicked")).collect()
    })
}

/// The errno of an I/O error, also when it is wrapped (tempfile wraps the
/// error of creating a temp file with its path).
pub fn errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        // tempfile's PathError shows the inner error as "<message> (os error N) at path ...";
        // its type is not public, so the number is read from there.
        let inner = e.get_ref()?.to_string();
        let rest = &inner[inner.find("(os error ")? + "(os error ".len()..];
        rest[..rest.find(')')?].parse().ok()
    })
}

/// What went wrong with a write, for a person: EACCES/EPERM on /etc/pve mean no quorum.
pub fn describe_write_error(what: &str, path: &Path, e: &std::io::Error) -> String {
    let hint = match errno(e) {
        Some(libc::EACCES) | Some(libc::EPERM) if path.starts_with("/etc/pve") => {
            " (the cluster file system refuses writes: this node has no corosync quorum; check `pvecm status`)"
        }
        Some(libc::EBUSY) if path.starts_with("/etc/pve") => " (the cluster file system is still resyncing after a membership change; retry in a moment)",
        Some(libc::EFBIG) => " (pmxcfs caps a file at 1 MiB)",
        _ => "",
    };
    format!("cannot {what} {}: {e}{hint}", path.display())
}

/// Run one write step with the bounded retries pmxcfs needs: EBUSY for up to
/// BUSY_RETRY, EPERM up to EPERM_RETRIES times; anything else at once.
pub fn with_write_retries<T>(mut step: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let start = Instant::now();
    let mut eperm = 0;
    let mut pause = Duration::from_millis(50);
    loop {
        match step() {
            Ok(v) => return Ok(v),
            Err(e) => {
                let retry = match errno(&e) {
                    Some(libc::EBUSY) => start.elapsed() < BUSY_RETRY,
                    Some(libc::EPERM) => {
                        eperm += 1;
                        eperm <= EPERM_RETRIES
                    }
                    Some(libc::EINTR) => true,
                    _ => false,
                };
                if !retry {
                    return Err(e);
                }
                tracing::debug!("write step failed ({e}); retrying in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Write a file atomically: a temp file named after the target in the same
/// directory, fsync, rename over the target, fsync the directory (best effort:
/// pmxcfs has no fsync on directories).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::Store(format!("{} has no parent directory", path.display())))?;
    let prefix = tmp_prefix_for(path).ok_or_else(|| Error::Store(format!("{} has no file name", path.display())))?;
    let serr = |what: &str, e: std::io::Error| Error::Store(describe_write_error(what, path, &e));
    let tmp = with_write_retries(|| {
        let mut tmp = tempfile::Builder::new().prefix(&prefix).rand_bytes(8).tempfile_in(dir)?;
        tmp.write_all(data)?;
        tmp.as_file().sync_all()?;
        Ok(tmp)
    })
    .map_err(|e| serr("write", e))?;
    let tmp_path: PathBuf = tmp.path().to_path_buf();
    // Keep the temp file on failure only long enough to retry the rename; it is
    // removed when `tmp` drops.
    with_write_retries(|| fs::rename(&tmp_path, path)).map_err(|e| serr("rename into place", e))?;
    // The rename consumed the temp file: do not let its drop remove the new document.
    let _ = tmp.into_temp_path().keep();
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_all_keeps_the_order_on_one_thread_and_on_many() {
        for n in [0usize, 3, 4, 32, 33] {
            let items: Vec<usize> = (0..n).collect();
            let threads = std::sync::Mutex::new(std::collections::HashSet::new());
            let out = read_all(&items, |i| {
                threads.lock().unwrap().insert(std::thread::current().id());
                i * 2
            });
            assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
            let used = threads.lock().unwrap().len();
            assert!(if n >= 4 { used > 1 && used <= 8 } else { used <= 1 }, "{n} items on {used} threads");
        }
    }

    #[test]
    fn temp_files_name_their_target() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm-100-disk-0.json");
        let prefix = tmp_prefix_for(&p).unwrap();
        let t = tempfile::Builder::new().prefix(&prefix).rand_bytes(8).tempfile_in(d.path()).unwrap();
        let name = t.path().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(in_flight_target(d.path(), &name).as_deref(), Some("vm-100-disk-0.json"));
        assert!(present_or_in_flight(&p));
        assert!(!present_or_in_flight(&d.path().join("other.json")));
        // Not ours, or not a temp file.
        assert_eq!(in_flight_target(d.path(), "vm-100-disk-0.json"), None);
        assert_eq!(in_flight_target(d.path(), ".tmp-"), None);
    }

    #[test]
    fn stale_temp_files_are_not_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let name = ".tmp-a.json.abcdefgh";
        fs::write(d.path().join(name), b"x").unwrap();
        assert_eq!(in_flight_target(d.path(), name).as_deref(), Some("a.json"));
        let old = nix::sys::time::TimeVal::new(1_000_000, 0);
        nix::sys::stat::utimes(&d.path().join(name), &old, &old).unwrap();
        assert_eq!(in_flight_target(d.path(), name), None);
        // A missing document with only a stale temp file reads as missing at once.
        let t = Instant::now();
        assert_eq!(read_settled(&d.path().join("a.json")).unwrap(), None);
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_reader_waits_out_a_replace_in_flight() {
        // The pmxcfs window: the target is gone, the temp file not yet renamed.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("doc.json");
        let tmp = d.path().join(".tmp-doc.json.zzzzzzzz");
        fs::write(&tmp, b"new").unwrap();
        let (tmp2, p2) = (tmp.clone(), p.clone());
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::rename(&tmp2, &p2).unwrap();
        });
        assert_eq!(read_settled(&p).unwrap().as_deref(), Some(&b"new"[..]));
        h.join().unwrap();
    }

    #[test]
    fn readers_never_miss_a_document_replaced_the_libfuse_way() {
        // libfuse 2 without hard_remove replaces an open target in two renames: the target to
        // `.fuse_hidden…`, then the temp file over the name (reference/pmxcfs-real.md). A
        // writer doing that back to back: a reader whose one check falls between two of those
        // replaces must still find the document.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("doc.json");
        fs::write(&p, b"0").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dir, p, stop) = (d.path().to_path_buf(), p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let tmp = dir.join(format!(".tmp-doc.json.{n:08x}"));
                    fs::write(&tmp, b"1").unwrap();
                    let hidden = dir.join(format!(".fuse_hidden{n:016x}"));
                    fs::rename(&p, &hidden).unwrap();
                    fs::rename(&tmp, &p).unwrap();
                    fs::remove_file(&hidden).unwrap();
                }
                n
            })
        };
        let (t, mut reads, mut misses) = (Instant::now(), 0u64, 0u64);
        while t.elapsed() < Duration::from_secs(2) {
            reads += 1;
            if read_settled(&p).unwrap().is_none() {
                misses += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.join().unwrap();
        assert_eq!(misses, 0, "{misses} of {reads} reads missed a document replaced {writes} times");
    }

    #[test]
    fn writes_replace_and_leave_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"1").unwrap();
        write_atomic(&p, b"2").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn retries_busy_and_eperm_but_not_eacces() {
        let mut n = 0;
        let r = with_write_retries(|| {
            n += 1;
            if n < 3 {
                Err(std::io::Error::from_raw_os_error(libc::EBUSY))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r.unwrap(), 3);
        let mut n = 0;
        let r: std::io::Result<()> = with_write_retries(|| {
            n += 1;
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        });
        assert!(r.is_err());
        assert_eq!(n, 1 + EPERM_RETRIES);
        let mut n = 0;
        let r: std::io::Result<()> = with_write_retries(|| {
            n += 1;
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        });
        assert!(r.is_err());
        assert_eq!(n, 1);
        let m = describe_write_error("write", Path::new("/etc/pve/priv/drbdpool/x"), &std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(m.contains("no corosync quorum"), "{m}");
        // tempfile wraps the errno of a failed temp-file create with its path: still seen
        // (found on the real pmxcfs: the quorum hint was missing).
        let d = tempfile::tempdir().unwrap();
        let wrapped = tempfile::Builder::new().tempfile_in(d.path().join("no/such/dir")).unwrap_err();
        assert_eq!(errno(&wrapped), Some(libc::ENOENT), "{wrapped:?}");
    }
}
