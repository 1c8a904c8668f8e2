//! File backend (labs and tests): a sparse file `<dir>/<name>.img` attached to
//! a loop device. Sparse files read zeroes where nothing was written, so it
//! counts as thin. Snapshots are copies `<dir>/<name>.<snap>.snap` made with
//! `cp --reflink=auto --sparse=always` (instant on reflink file systems, a
//! sparse full copy elsewhere).
//!
//! `lookup` does not attach: it reports the loop device if one is attached,
//! else the image file itself. `create` (idempotent) attaches, which is what
//! the agent calls after a reboot, when loop devices are gone.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::lvmreport::check_name;
use super::{need, Backend, BackendKind, BackendSpec, Backing, Caps, Kind, Space};
use crate::error::{Error, Result};
use crate::exec::{Cmd, Runner};

pub const KIND: Kind = Kind {
    kind: BackendKind::File,
    name: "file",
    caps: Caps { thin: true, snapshots: true, linked_clones: true, lvm: false, loops: true },
    // The path ends up in the agents' commands and resource files on every node.
    spec: |vg, _thinpool, dir| {
        match &dir {
            Some(d) if d.starts_with('/') && !d.split('/').any(|c| c == "..") && !d.contains(|c: char| c.is_whitespace() || c.is_control()) => {}
            Some(d) => return Err(crate::invalid!("storage property drbdpool-dir '{}' must be an absolute path without '..' or whitespace", d.escape_default())),
            None => return Err(crate::invalid!("a drbdpool storage with backend file needs 'drbdpool-dir' in storage.cfg")),
        }
        Ok(BackendSpec { kind: BackendKind::File, vg, thinpool: None, dir })
    },
    open: |spec, runner| Ok(Box::new(FileBackend::new(need(&spec.dir, "dir", "file")?, runner)?)),
    // Every image of the directory (drbdpool's own), a directory that is not here lists none.
    list: |spec, _runner, _ours| {
        let Some(dir) = spec.dir.as_deref() else { return Ok(vec![]) };
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(r) = n.strip_suffix(".img").filter(|r| !r.starts_with('.')) {
                v.push((r.to_string(), e.path().display().to_string()));
            }
        }
        Ok(v)
    },
};

pub struct FileBackend {
    dir: PathBuf,
    runner: Arc<dyn Runner>,
    snap_ok: OnceLock<bool>,
}

fn io(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::Tool(format!("cannot {what} {}: {e}", p.display()))
}

impl FileBackend {
    /// `dir` must exist (and be a directory).
    pub fn new(dir: &str, runner: Arc<dyn Runner>) -> Result<Self> {
        let d = PathBuf::from(dir);
        if !d.is_absolute() {
            return Err(Error::InvalidInput(format!("file backend dir {dir:?} must be an absolute path")));
        }
        if !d.is_dir() {
            return Err(Error::NotFound(format!(
                "file backend directory {dir} does not exist on this node: create it (mkdir -p {dir}) or fix the storage's dir"
            )));
        }
        Ok(FileBackend { dir: d, runner, snap_ok: OnceLock::new() })
    }

    pub fn image(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    fn snap_file(&self, name: &str, snap: &str) -> PathBuf {
        self.dir.join(format!("{name}.{snap}.snap"))
    }

    /// Loop devices currently backed by `file` (`losetup -J -l -j`).
    fn loops(&self, file: &Path) -> Result<Vec<String>> {
        let out = self.runner.check(&Cmd::new("losetup").args(["-J", "-l", "-j"]).arg(file.to_string_lossy()))?;
        if out.stdout.trim().is_empty() {
            return Ok(Vec::new()); // older util-linux prints nothing when there is no match
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .map_err(|e| Error::Tool(format!("cannot parse `losetup -J` output: {e}")))?;
        Ok(v.get("loopdevices")
            .and_then(|l| l.as_array())
            .map(|a| a.iter().filter_map(|d| d.get("name").and_then(|n| n.as_str()).map(String::from)).collect())
            .unwrap_or_default())
    }

    fn attach(&self, file: &Path) -> Result<String> {
        if let Some(l) = self.loops(file)?.into_iter().next() {
            return Ok(l);
        }
        let out = self.runner.check(&Cmd::new("losetup").args(["--find", "--show"]).arg(file.to_string_lossy()))?;
        let dev = out.stdout.trim().to_string();
        if !dev.starts_with("/dev/") {
            return Err(Error::Tool(format!("`losetup --find --show` printed {dev:?}, expected a /dev/loopN path")));
        }
        Ok(dev)
    }

    fn detach_all(&self, file: &Path) -> Result<()> {
        let loops = self.loops(file)?;
        if loops.is_empty() {
            return Ok(());
        }
        for l in &loops {
            self.runner.check(&Cmd::new("losetup").args(["-d", l]))?;
        }
        // `losetup -d` of a device someone still has open (udev's blkid probe right after
        // attach) only sets autoclear; the kernel detaches at the last close. Callers remove
        // or reuse the file next, so wait (bounded) until it is really free.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = self.loops(file)?;
            if left.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Refused(format!(
                    "{} is still attached to {} 5 s after `losetup -d`: something holds the device open (see `fuser -v {}`)",
                    file.display(),
                    left.join(", "),
                    left[0]
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn size_kib(file: &Path) -> Result<u64> {
        Ok(fs::metadata(file).map_err(|e| io("stat", file, e))?.len() / 1024)
    }

    fn cp(&self, from: &Path, to: &Path) -> Result<()> {
        self.runner.check(
            &Cmd::new("cp")
                .args(["--reflink=auto", "--sparse=always"])
                .arg(from.to_string_lossy())
                .arg(to.to_string_lossy())
                .timeout(std::time::Duration::from_secs(3600)),
        )?;
        Ok(())
    }
}

/// Sparse images on a full file system fail every write through the loop device
/// with a bare EIO. Allocate the last MiB (where DRBD keeps its metadata) now, so a
/// full disk is a clear error at creation, not an I/O error in the middle of it.
fn reserve_tail(f: &fs::File, len: u64) -> std::result::Result<(), nix::errno::Errno> {
    use std::os::fd::AsRawFd;
    let tail = len.min(1 << 20);
    match nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), (len - tail) as i64, tail as i64) {
        Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()), // file systems without fallocate: as before
        r => r,
    }
}

impl Backend for FileBackend {
    fn create(&self, name: &str, size_kib: u64) -> Result<Backing> {
        check_name(name)?;
        let img = self.image(name);
        if !img.exists() {
            // Write under a temp name and rename, so a crash never leaves a short image behind.
            let tmp = self.dir.join(format!(".{name}.img.tmp"));
            let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(|e| io("create", &tmp, e))?;
            f.set_len(size_kib * 1024).map_err(|e| io("size", &tmp, e))?;
            if let Err(e) = reserve_tail(&f, size_kib * 1024) {
                let _ = fs::remove_file(&tmp);
                return Err(match e {
                    nix::errno::Errno::ENOSPC => Error::Tool(format!(
                        "not enough space in {} for {name}: No space left on device for the image's metadata area; free space there (df {})",
                        self.dir.display(),
                        self.dir.display()
                    )),
                    e => Error::Tool(format!("cannot reserve the metadata area of {}: {e}", tmp.display())),
                });
            }
            f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
            fs::rename(&tmp, &img).map_err(|e| io("rename into place", &img, e))?;
        } else if Self::size_kib(&img)? < size_kib {
            return self.resize(name, size_kib);
        }
        let path = self.attach(&img)?;
        Ok(Backing { path, size_kib: Self::size_kib(&img)? })
    }

    fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let img = self.image(name);
        if !img.exists() {
            return Ok(());
        }
        self.detach_all(&img)?;
        match fs::remove_file(&img) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &img, e)),
        }
    }

    fn resize(&self, name: &str, size_kib: u64) -> Result<Backing> {
        check_name(name)?;
        let img = self.image(name);
        if !img.exists() {
            return Err(Error::NotFound(format!("image {} does not exist; nothing to resize", img.display())));
        }
        if Self::size_kib(&img)? < size_kib {
            let f = OpenOptions::new().write(true).open(&img).map_err(|e| io("open", &img, e))?;
            f.set_len(size_kib * 1024).map_err(|e| io("grow", &img, e))?;
            f.sync_all().map_err(|e| io("fsync", &img, e))?;
        }
        let path = self.attach(&img)?;
        // Tell the loop driver the file grew (`losetup -c`), so the device grows too.
        self.runner.check(&Cmd::new("losetup").args(["-c", &path]))?;
        Ok(Backing { path, size_kib: Self::size_kib(&img)? })
    }

    fn lookup(&self, name: &str) -> Result<Option<Backing>> {
        check_name(name)?;
        let img = self.image(name);
        if !img.exists() {
            return Ok(None);
        }
        let path = self.loops(&img)?.into_iter().next().unwrap_or_else(|| img.to_string_lossy().into_owned());
        Ok(Some(Backing { path, size_kib: Self::size_kib(&img)? }))
    }

    fn space(&self) -> Result<Space> {
        let s = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| Error::Tool(format!("statvfs {}: {e}", self.dir.display())))?;
        let f = s.fragment_size() as u64;
        let total = s.blocks() as u64 * f;
        let avail = s.blocks_available() as u64 * f;
        let used = total.saturating_sub(s.blocks_free() as u64 * f);
        Ok(Space { total, avail, used })
    }

    /// Blocks the sparse image files hold (st_blocks * 512).
    fn allocated(&self, names: &[&str]) -> Result<std::collections::BTreeMap<String, u64>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = std::collections::BTreeMap::new();
        for n in names {
            check_name(n)?;
            let img = self.image(n);
            match fs::metadata(&img) {
                Ok(m) => {
                    out.insert(n.to_string(), m.blocks() * 512);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("stat", &img, e)),
            }
        }
        Ok(out)
    }

    fn thin(&self) -> bool {
        KIND.caps.thin
    }

    fn snapshot(&self, name: &str, snap: &str) -> Result<()> {
        check_name(name)?;
        check_name(snap)?;
        let (img, sf) = (self.image(name), self.snap_file(name, snap));
        if !img.exists() {
            return Err(Error::NotFound(format!("image {} does not exist; cannot snapshot it", img.display())));
        }
        if sf.exists() {
            return Err(Error::Conflict(format!("snapshot {} already exists", sf.display())));
        }
        let tmp = self.dir.join(format!(".{name}.{snap}.snap.tmp"));
        self.cp(&img, &tmp)?;
        fs::rename(&tmp, &sf).map_err(|e| io("rename into place", &sf, e))
    }

    fn remove_snapshot(&self, name: &str, snap: &str) -> Result<()> {
        check_name(name)?;
        check_name(snap)?;
        let sf = self.snap_file(name, snap);
        if sf.exists() {
            self.detach_all(&sf)?;
        }
        match fs::remove_file(self.snap_file(name, snap)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &self.snap_file(name, snap), e)),
            _ => Ok(()),
        }
    }

    /// Copy the snapshot over the image. The loop device would keep the old inode,
    /// so it is detached; the next `create` attaches the new image.
    fn rollback(&self, name: &str, snap: &str) -> Result<()> {
        check_name(name)?;
        check_name(snap)?;
        let (img, sf) = (self.image(name), self.snap_file(name, snap));
        if !sf.exists() {
            return Err(Error::NotFound(format!("snapshot {} does not exist; nothing to roll back to", sf.display())));
        }
        let tmp = self.dir.join(format!(".{name}.img.rollback"));
        self.cp(&sf, &tmp)?;
        self.detach_all(&img)?;
        fs::rename(&tmp, &img).map_err(|e| io("rename into place", &img, e))
    }

    fn snapshot_path(&self, name: &str, snap: &str) -> Result<Option<String>> {
        check_name(name)?;
        check_name(snap)?;
        let sf = self.snap_file(name, snap);
        if !sf.exists() {
            return Ok(None);
        }
        Ok(Some(self.loops(&sf)?.into_iter().next().unwrap_or_else(|| sf.to_string_lossy().into_owned())))
    }

    /// Read-only loop device on the snapshot file (a snapshot never changes).
    fn activate_snapshot(&self, name: &str, snap: &str) -> Result<String> {
        check_name(name)?;
        check_name(snap)?;
        let sf = self.snap_file(name, snap);
        if !sf.exists() {
            return Err(Error::NotFound(format!("snapshot {} does not exist on this node", sf.display())));
        }
        if let Some(l) = self.loops(&sf)?.into_iter().next() {
            return Ok(l);
        }
        let out = self.runner.check(&Cmd::new("losetup").args(["--find", "--show", "--read-only"]).arg(sf.to_string_lossy()))?;
        let dev = out.stdout.trim().to_string();
        if !dev.starts_with("/dev/") {
            return Err(Error::Tool(format!("`losetup --find --show` printed {dev:?}, expected a /dev/loopN path")));
        }
        Ok(dev)
    }

    fn clone_from(&self, base: &str, name: &str) -> Result<Backing> {
        check_name(base)?;
        check_name(name)?;
        let (src, img) = (self.image(base), self.image(name));
        if !img.exists() {
            if !src.exists() {
                return Err(Error::NotFound(format!("base image {} does not exist; cannot clone it", src.display())));
            }
            let tmp = self.dir.join(format!(".{name}.img.clone"));
            self.cp(&src, &tmp)?;
            fs::rename(&tmp, &img).map_err(|e| io("rename into place", &img, e))?;
        }
        let path = self.attach(&img)?;
        Ok(Backing { path, size_kib: Self::size_kib(&img)? })
    }

    fn deactivate_snapshot(&self, name: &str, snap: &str) -> Result<()> {
        check_name(name)?;
        check_name(snap)?;
        let sf = self.snap_file(name, snap);
        if sf.exists() {
            self.detach_all(&sf)?;
        }
        Ok(())
    }

    /// True only if a probe copy with the snapshot command works in this directory.
    fn can_snapshot(&self) -> bool {
        KIND.caps.snapshots && *self.snap_ok.get_or_init(|| {
            let probe = self.dir.join(format!(".snapprobe-{}", std::process::id()));
            let copy = self.dir.join(format!(".snapprobe-{}.copy", std::process::id()));
            let ok = fs::write(&probe, b"probe").is_ok() && self.cp(&probe, &copy).is_ok() && fs::read(&copy).ok().as_deref() == Some(b"probe");
            let _ = fs::remove_file(&probe);
            let _ = fs::remove_file(&copy);
            ok
        })
    }
}
