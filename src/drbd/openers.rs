//! Who holds a DRBD device open, without the `open` key.
//!
//! drbd-utils 9.22 never prints `open` on DRBD 9 (events2 or `status --json`:
//! tests/fixtures/drbd9-real/, e.g. drbdsetup-events2-now-statistics.3node-primary.node1.out),
//! and on DRBD 9 a Secondary can be opened read-only, so neither the key nor the
//! role says whether a device is in use. This looks at the kernel's own answers:
//! - every process's open files (`/proc/<pid>/fd/*`): a file that is a block device
//!   of DRBD's major (147), or, when it cannot be stat'ed, a link named `/dev/drbd<minor>`;
//! - stacked block devices (`/sys/block/drbd<minor>/holders/*`, e.g. device-mapper);
//! - mounts in this mount namespace (`/proc/self/mountinfo`, field 3 `147:<minor>`).
//!
//! Processes that go away while being read are skipped (not errors): the scan is a
//! snapshot, as the kernel's own "opened by" message is.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// DRBD's block major (include/linux/major.h DRBD_MAJOR in the kernel source).
pub const DRBD_MAJOR: u32 = 147;

/// One holder of a device: a process fd, a stacked device or a mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opener {
    Process { pid: u32, comm: String, write: bool },
    Holder(String),
    Mount(String),
}

impl std::fmt::Display for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opener::Process { pid, comm, write } => {
                write!(f, "{comm} (pid {pid}, {})", if *write { "read-write" } else { "read-only" })
            }
            Opener::Holder(h) => write!(f, "block device {h} on top of it"),
            Opener::Mount(m) => write!(f, "mounted on {m}"),
        }
    }
}

/// Where the kernel's answers are read (tests point these at a fake tree).
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys_block: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots { proc: "/proc".into(), sys_block: "/sys/block".into() }
    }
}

/// The DRBD minor an open file is, from its metadata (block device of major 147) or,
/// without metadata, from the link's text `/dev/drbd<minor>`.
pub fn drbd_minor(link: &Path, meta: Option<&std::fs::Metadata>) -> Option<u32> {
    if let Some(m) = meta {
        if !m.file_type().is_block_device() {
            return None;
        }
        let rdev = m.rdev();
        return (nix::sys::stat::major(rdev) as u32 == DRBD_MAJOR).then_some(nix::sys::stat::minor(rdev) as u32);
    }
    link.to_str()?.strip_prefix("/dev/drbd")?.parse().ok()
}

/// O_ACCMODE of an fd from its fdinfo `flags:` line (octal); None if unreadable.
fn fd_writes(fdinfo: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(fdinfo).ok()?;
    let flags = text.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    let v = u32::from_str_radix(flags, 8).ok()?;
    Some(v & 0o3 != 0)
}

/// Every process fd under `proc` that `classify` maps to a key (a DRBD minor in
/// production), with the process. One pass over all processes.
pub fn scan_fds(
    proc: &Path,
    classify: &dyn Fn(&Path, Option<&std::fs::Metadata>) -> Option<u32>,
) -> BTreeMap<u32, Vec<Opener>> {
    let mut out: BTreeMap<u32, Vec<Opener>> = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir(proc) else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            // Only device nodes: sockets, pipes and anon inodes are never ours, and a stat
            // of a regular file can hang on a dead network filesystem.
            if !link.to_string_lossy().starts_with("/dev/") {
                continue;
            }
            // stat through the magic link: the opened file itself, in any mount namespace.
            let meta = std::fs::metadata(fd.path()).ok();
            if let Some(minor) = classify(&link, meta.as_ref()) {
                let comm = std::fs::read_to_string(p.path().join("comm")).map(|c| c.trim().to_string()).unwrap_or_default();
                let write = fd_writes(&p.path().join("fdinfo").join(fd.file_name())).unwrap_or(true);
                let o = Opener::Process { pid, comm, write };
                let v = out.entry(minor).or_default();
                if !v.contains(&o) {
                    v.push(o);
                }
            }
        }
    }
    out
}

/// Stacked devices and mounts of one minor.
fn holders_and_mounts(roots: &Roots, minor: u32, mountinfo: &str) -> Vec<Opener> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(roots.sys_block.join(format!("drbd{minor}")).join("holders")) {
        let mut hs: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        hs.sort();
        out.extend(hs.into_iter().map(Opener::Holder));
    }
    let dev = format!("{DRBD_MAJOR}:{minor}");
    for l in mountinfo.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[2] == dev {
            out.push(Opener::Mount(f[4].to_string()));
        }
    }
    out
}

/// Who holds each of `minors` open (minors nobody holds are absent).
pub fn openers(roots: &Roots, minors: &[u32]) -> BTreeMap<u32, Vec<Opener>> {
    if minors.is_empty() {
        return BTreeMap::new();
    }
    let mut out = scan_fds(&roots.proc, &|l, m| drbd_minor(l, m).filter(|n| minors.contains(n)));
    let mountinfo = std::fs::read_to_string(roots.proc.join("self/mountinfo")).unwrap_or_default();
    for &m in minors {
        let more = holders_and_mounts(roots, m, &mountinfo);
        if !more.is_empty() {
            out.entry(m).or_default().extend(more);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /proc and /sys/block: pid 4242 (qemu) holds drbd1000 read-write, pid 77 (blkid)
    /// drbd1001 read-only, pid 5 holds a socket and a regular file, "self" is not a pid.
    fn tree() -> (tempfile::TempDir, Roots) {
        let d = tempfile::tempdir().unwrap();
        let proc = d.path().join("proc");
        let mk = |pid: &str, comm: &str, fds: &[(&str, &str, &str)]| {
            let p = proc.join(pid);
            std::fs::create_dir_all(p.join("fd")).unwrap();
            std::fs::create_dir_all(p.join("fdinfo")).unwrap();
            std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            for (n, target, flags) in fds {
                symlink(target, p.join("fd").join(n)).unwrap();
                std::fs::write(p.join("fdinfo").join(n), format!("pos:\t0\nflags:\t{flags}\nmnt_id:\t25\n")).unwrap();
            }
        };
        mk("4242", "qemu-system-x86", &[("0", "/dev/null", "0100002"), ("17", "/dev/drbd1000", "02140002")]);
        mk("77", "blkid", &[("3", "/dev/drbd1001", "0100000")]);
        mk("5", "sshd", &[("3", "socket:[12345]", "02"), ("4", "/var/log/x", "02")]);
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(
            proc.join("self/mountinfo"),
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             90 22 147:1002 / /mnt/old rw,relatime shared:50 - ext4 /dev/drbd1002 rw\n",
        )
        .unwrap();
        let sys = d.path().join("sys/block");
        std::fs::create_dir_all(sys.join("drbd1003/holders/dm-7")).unwrap();
        std::fs::create_dir_all(sys.join("drbd1000/holders")).unwrap();
        (d, Roots { proc, sys_block: sys })
    }

    #[test]
    fn finds_processes_holders_and_mounts_per_minor() {
        let (_d, roots) = tree();
        let got = openers(&roots, &[1000, 1001, 1002, 1003, 1004]);
        assert_eq!(
            got.get(&1000),
            Some(&vec![Opener::Process { pid: 4242, comm: "qemu-system-x86".into(), write: true }])
        );
        assert_eq!(got.get(&1001), Some(&vec![Opener::Process { pid: 77, comm: "blkid".into(), write: false }]));
        assert_eq!(got.get(&1002), Some(&vec![Opener::Mount("/mnt/old".into())]));
        assert_eq!(got.get(&1003), Some(&vec![Opener::Holder("dm-7".into())]));
        assert_eq!(got.get(&1004), None, "nobody holds 1004");
        assert_eq!(got.len(), 4);
        // Only the minors asked about.
        let only = openers(&roots, &[1001]);
        assert_eq!(only.keys().copied().collect::<Vec<_>>(), vec![1001]);
        assert!(openers(&roots, &[]).is_empty());
        assert_eq!(
            got[&1000][0].to_string() + " / " + &got[&1001][0].to_string(),
            "qemu-system-x86 (pid 4242, read-write) / blkid (pid 77, read-only)"
        );
    }

    #[test]
    fn metadata_decides_when_the_file_can_be_stated() {
        // /dev/null is a character device (1:3): never a DRBD minor, whatever its link says.
        let null = std::fs::metadata("/dev/null").unwrap();
        assert_eq!(drbd_minor(Path::new("/dev/drbd5"), Some(&null)), None);
        assert_eq!(drbd_minor(Path::new("/dev/drbd5"), None), Some(5));
        assert_eq!(drbd_minor(Path::new("/dev/drbd/by-res/x/0"), None), None);
        assert_eq!(drbd_minor(Path::new("/dev/sda"), None), None);
    }

    /// The real /proc of this machine: this test process opens /dev/null read-only and
    /// /dev/zero read-write; the scan (readlink + stat through /proc/<pid>/fd + fdinfo)
    /// must find both with this pid, this comm and the right access modes.
    #[test]
    fn real_proc_finds_this_process_and_its_mode() {
        let rdev = |p: &str| std::fs::metadata(p).unwrap().rdev();
        let (null, zero) = (rdev("/dev/null"), rdev("/dev/zero"));
        let _ro = std::fs::File::open("/dev/null").unwrap();
        let _rw = std::fs::OpenOptions::new().read(true).write(true).open("/dev/zero").unwrap();
        let got = scan_fds(Path::new("/proc"), &|_, m| {
            let m = m.filter(|m| m.file_type().is_char_device())?;
            if m.rdev() == null {
                Some(1)
            } else if m.rdev() == zero {
                Some(2)
            } else {
                None
            }
        });
        let me = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string();
        let mine = |k: u32| -> Vec<bool> {
            got.get(&k)
                .into_iter()
                .flatten()
                .filter_map(|o| match o {
                    Opener::Process { pid, write, comm: c } if *pid == me && *c == comm => Some(*write),
                    _ => None,
                })
                .collect()
        };
        // Other test threads of this process may hold either too (both modes then).
        assert!(mine(1).contains(&false), "{got:?}");
        assert!(mine(2).contains(&true), "{got:?}");
    }
}
