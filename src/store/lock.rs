//! Cluster-wide lock with pmxcfs's mkdir protocol (reference pve-storage-api.md §4.4):
//! `mkdir <lockdir>/<name>` succeeds for exactly one node; on EEXIST we send the
//! pmxcfs "unlock request" (utime 0,0) so expired locks get reaped, and retry with
//! a short sleep until a bounded timeout. On a plain directory (tests, labs)
//! nobody reaps, so we break a lock ourselves once its mtime is older than the
//! lifetime (120 s, like pmxcfs). Only names of our own: `drbdpool-alloc`,
//! `drbdpool-vol-<resource>`; never `storage-<id>`, which PVE already holds around
//! alloc/free (taking it again would deadlock until the timeout).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::invalid;

use super::Store;

pub const ALLOC_LOCK: &str = "drbdpool-alloc";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(120);

pub fn vol_lock_name(resource: &str) -> String {
    format!("drbdpool-vol-{resource}")
}

fn env_secs(var: &str) -> Option<Duration> {
    std::env::var(var).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| *s >= 0.0).map(Duration::from_secs_f64)
}

/// Lock timeout: `DRBDPOOL_LOCK_TIMEOUT_SECS`, else 10 s (PVE's own default).
pub fn default_timeout() -> Duration {
    env_secs("DRBDPOOL_LOCK_TIMEOUT_SECS").unwrap_or(DEFAULT_TIMEOUT)
}

/// Lock lifetime: `DRBDPOOL_LOCK_LIFETIME_SECS` (tests of dead holders), else 120 s.
pub fn lifetime() -> Duration {
    env_secs("DRBDPOOL_LOCK_LIFETIME_SECS").unwrap_or(DEFAULT_LIFETIME)
}

/// Held lock; the directory is removed on drop, if it can still be ours.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
    /// The inode we made (plain directories only: pmxcfs has no stable st_ino).
    ino: Option<u64>,
    taken: Instant,
    life: Duration,
}

/// How much younger than its lifetime a lock must be for its holder to remove it.
/// Others judge a lock's age by its mtime, which pmxcfs keeps in whole seconds
/// (and our clock may differ from the reaping node's by a little).
fn release_margin(life: Duration, pmxcfs: bool) -> Duration {
    if pmxcfs {
        (life / 4).min(Duration::from_secs(5))
    } else {
        (life / 10).min(Duration::from_secs(2))
    }
}

impl LockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LockGuard {
    /// May the directory at our path still be ours? Only while the lock is younger
    /// than its lifetime: after that pmxcfs (or a breaker on a plain directory) may
    /// have removed it and another node made it anew under the same name — with
    /// the same st_ino on pmxcfs, so the inode cannot tell (docs/RELIABILITY.md).
    fn still_ours(&self) -> bool {
        let pmxcfs = self.ino.is_none();
        if self.taken.elapsed() + release_margin(self.life, pmxcfs) >= self.life {
            return false;
        }
        match (self.ino, fs::metadata(&self.path)) {
            (Some(ino), Ok(m)) => m.ino() == ino,
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.still_ours() {
            tracing::warn!(
                "not removing lock {}: held {:.1}s, past its {}s lifetime, so it may be another holder's now (an expired lock is reaped)",
                self.path.display(),
                self.taken.elapsed().as_secs_f64(),
                self.life.as_secs()
            );
            return;
        }
        if let Err(e) = crate::fsio::with_write_retries(|| fs::remove_dir(&self.path)) {
            tracing::warn!("cannot remove lock {}: {e}", self.path.display());
        }
    }
}

impl Store {
    /// Take lock `name` with the default timeout.
    pub fn lock(&self, name: &str) -> Result<LockGuard> {
        self.lock_timeout(name, default_timeout())
    }

    pub fn lock_timeout(&self, name: &str, timeout: Duration) -> Result<LockGuard> {
        if !name.starts_with("drbdpool-") || name.contains('/') || name.len() > 120 {
            return Err(invalid!("lock name '{name}' is not one of ours (drbdpool-alloc, drbdpool-vol-<resource>)"));
        }
        let dir = self.lock_dir();
        let pmxcfs = is_pmxcfs(&dir);
        if !pmxcfs {
            fs::create_dir_all(&dir).map_err(|e| Error::Store(format!("cannot create lock directory {}: {e}", dir.display())))?;
        }
        let path = dir.join(name);
        let start = Instant::now();
        let life = lifetime();
        let mut sleep = Duration::from_millis(20);
        let mut made_dir = false;
        loop {
            let attempt = Instant::now();
            match fs::create_dir(&path) {
                Ok(()) => {
                    let ino = if pmxcfs { None } else { Some(fs::metadata(&path).map(|m| m.ino()).unwrap_or(0)) };
                    tracing::debug!("took lock {}", path.display());
                    // The lifetime counts from the mkdir's start: a mkdir that blocked
                    // (membership change) used up part of it.
                    return Ok(LockGuard { path, ino, taken: attempt, life });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if pmxcfs {
                        // The unlock request: pmxcfs deletes the lock if it is older than 120 s.
                        let _ = nix::sys::stat::utimes(&path, &nix::sys::time::TimeVal::new(0, 0), &nix::sys::time::TimeVal::new(0, 0));
                    } else {
                        break_if_expired(&path, life);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !made_dir => {
                    // No lock directory yet: a fresh cluster has no priv/lock until PVE's
                    // first cfs_lock makes it (or a test removed it). Make it, once.
                    made_dir = true;
                    match fs::create_dir(&dir) {
                        Ok(()) => tracing::info!("created the lock directory {}", dir.display()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(_) if !pmxcfs => {
                            fs::create_dir_all(&dir)
                                .map_err(|e| Error::Store(format!("cannot create lock directory {}: {e}", dir.display())))?;
                        }
                        Err(e) => {
                            return Err(Error::Store(crate::fsio::describe_write_error("create the lock directory", &dir, &e)));
                        }
                    }
                    continue;
                }
                Err(e) if matches!(crate::fsio::errno(&e), Some(libc::EBUSY) | Some(libc::EINTR)) => {
                    // pmxcfs resyncing after a membership change: retry within the timeout.
                    tracing::debug!("lock {}: {e}; retrying", path.display());
                }
                Err(e) => {
                    return Err(Error::Store(format!(
                        "cannot take lock {}: {e} (without corosync quorum /etc/pve is read-only: check `pvecm status`)",
                        path.display()
                    )))
                }
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout(format!(
                    "could not get lock '{name}' within {:.1}s: another drbdpool operation holds it ({}); retry in a moment. \
                     A lock left by a dead process expires after {}s",
                    timeout.as_secs_f64(),
                    path.display(),
                    life.as_secs()
                )));
            }
            std::thread::sleep(sleep.min(timeout.saturating_sub(start.elapsed())).max(Duration::from_millis(1)));
            sleep = (sleep * 2).min(Duration::from_millis(200)) + Duration::from_millis(rand::random::<u64>() % 20);
        }
    }
}

/// Break a lock on a plain directory whose holder did not refresh it within `life`.
/// The expired directory is first renamed aside (atomic, only one breaker wins);
/// if what we moved turns out to be a fresh lock, it is put back.
fn break_if_expired(path: &Path, life: Duration) {
    let Ok(m) = fs::metadata(path) else { return };
    let Ok(mtime) = m.modified() else { return };
    let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
    if age < life {
        return;
    }
    let aside = path.with_file_name(format!(
        ".broken-{}-{}-{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id(),
        rand::random::<u32>()
    ));
    if fs::rename(path, &aside).is_err() {
        return; // someone else broke or released it
    }
    match fs::metadata(&aside) {
        Ok(m2) if m2.ino() == m.ino() => {
            tracing::warn!("broke expired lock {} (held for {}s, lifetime {}s)", path.display(), age.as_secs(), life.as_secs());
            let _ = fs::remove_dir(&aside);
        }
        _ => {
            // A fresh lock slipped in between stat and rename: restore it unless replaced.
            let _ = nix::fcntl::renameat2(None, &aside, None, path, nix::fcntl::RenameFlags::RENAME_NOREPLACE);
            let _ = fs::remove_dir(&aside);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    #[test]
    fn exclusive_and_released_on_drop() {
        let (_d, s) = store();
        let g = s.lock(ALLOC_LOCK).unwrap();
        assert!(g.path().is_dir());
        let e = s.lock_timeout(ALLOC_LOCK, Duration::from_millis(150)).unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert!(e.to_string().contains("drbdpool-alloc") && e.to_string().contains("retry"), "{e}");
        drop(g);
        let _g2 = s.lock_timeout(ALLOC_LOCK, Duration::from_millis(150)).unwrap();
        // Other names are independent.
        let _g3 = s.lock_timeout(&vol_lock_name("pool.vm-1-disk-0"), Duration::from_millis(50)).unwrap();
    }

    #[test]
    fn refuses_foreign_names() {
        let (_d, s) = store();
        assert_eq!(s.lock("storage-pool").unwrap_err().kind(), "invalid-input");
        assert_eq!(s.lock("drbdpool-../x").unwrap_err().kind(), "invalid-input");
    }

    #[test]
    fn dead_holder_lock_expires() {
        let (_d, s) = store();
        // A holder that died: the directory stays with an old mtime.
        let p = s.lock_dir().join(ALLOC_LOCK);
        fs::create_dir_all(&p).unwrap();
        let old = nix::sys::time::TimeVal::new(1_000_000, 0);
        nix::sys::stat::utimes(&p, &old, &old).unwrap();
        let g = s.lock_timeout(ALLOC_LOCK, Duration::from_secs(2)).unwrap();
        // A fresh lock is not broken.
        assert_eq!(s.lock_timeout(ALLOC_LOCK, Duration::from_millis(100)).unwrap_err().kind(), "timeout");
        drop(g);
        assert!(!p.exists());
    }

    #[test]
    fn a_holder_past_the_lifetime_leaves_the_lock_alone() {
        // pmxcfs keeps st_ino per path, so only the age can tell: a holder that
        // outlived the lifetime must not remove a lock another node made since.
        let (_d, s) = store();
        let mut g = s.lock(ALLOC_LOCK).unwrap();
        g.ino = None; // as on pmxcfs
        g.life = Duration::from_millis(200);
        std::thread::sleep(Duration::from_millis(250));
        // Reaped and taken by someone else meanwhile.
        fs::remove_dir(g.path()).unwrap();
        fs::create_dir(g.path()).unwrap();
        let p = g.path().to_path_buf();
        drop(g);
        assert!(p.is_dir(), "the late holder removed another holder's lock");
        // A holder within its lifetime releases as before.
        fs::remove_dir(&p).unwrap();
        let mut g = s.lock(ALLOC_LOCK).unwrap();
        g.ino = None;
        drop(g);
        assert!(!p.exists());
    }

    #[test]
    fn a_missing_lock_directory_is_created() {
        let (_d, s) = store();
        let dir = s.lock_dir();
        let _ = fs::remove_dir_all(&dir);
        let g = s.lock_timeout(ALLOC_LOCK, Duration::from_secs(1)).unwrap();
        assert!(g.path().is_dir());
    }

    #[test]
    fn threads_exclude_each_other() {
        let (_d, s) = store();
        let inside = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                let inside = inside.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let _g = s.lock_timeout(ALLOC_LOCK, Duration::from_secs(20)).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::sleep(Duration::from_millis(2));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}

/// pmxcfs (a FUSE file system) reaps expired locks itself; anywhere else (a test
/// directory, the lab's 9p share) we must break them. Decided by the file
/// system of the nearest existing ancestor, not by the path.
pub fn is_pmxcfs(dir: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let mut p = Some(dir);
    while let Some(d) = p {
        if let Ok(st) = nix::sys::statfs::statfs(d) {
            return st.filesystem_type().0 as i64 == FUSE_SUPER_MAGIC && d.starts_with("/etc/pve");
        }
        p = d.parent();
    }
    false
}

#[cfg(test)]
mod pmxcfs_tests {
    use super::is_pmxcfs;

    #[test]
    fn plain_directories_are_not_pmxcfs() {
        let d = tempfile::tempdir().unwrap();
        assert!(!is_pmxcfs(d.path()));
        assert!(!is_pmxcfs(&d.path().join("not/yet/created")));
        // /etc/pve without pmxcfs mounted (the lab's 9p share, or nothing) is a plain directory too.
        assert!(!is_pmxcfs(std::path::Path::new("/etc/pve/priv/lock")));
    }
}
