//! The backing device's discard limit, as DRBD 8.4 in the kernel needs it for a
//! discard-aware resync.
//!
//! The in-tree DRBD 8.4 (seen on Debian 12's kernel 6.1 in the lab, tests/vm/scenarios/crash_resync.py)
//! checks `rs-discard-granularity` against the backing device's largest discard with
//! `bdev_max_discard_sectors(bdev) << 9` computed in 32 bits. A dm-thin LV allows discards of
//! 16 GiB (/sys/block/dm-N/queue/discard_max_bytes = 17179869184), the shift wraps to 0, and the
//! kernel logs "rs_discard_granularity changed to 0": every full resync of a thin replica then
//! writes the zeroes and allocates the whole LV. DRBD 9 clamps before it shifts and is not hit.
//!
//! The fix is on our side of the kernel: before DRBD 8.4 attaches a thin backing (and before an
//! adjust, which checks the option again) lower the device's `discard_max_bytes`, which the block
//! layer lets root lower, to 1 GiB. That only splits big discards into 1 GiB pieces.

use std::path::Path;

/// Limits at or above this wrap in DRBD 8.4's 32-bit shift.
const WRAPS_AT: u64 = 1 << 32;
/// What we lower such a limit to.
pub const CAPPED_MAX_BYTES: u64 = 1 << 30;

/// Lower `discard_max_bytes` of the block device behind `backing` (a path such as
/// /dev/ssd/vm-100-disk-0, a symlink to /dev/dm-N) under `sys_block` (/sys/block) when DRBD 8.4
/// would wrap it. Returns the (old, new) limit when it changed it. Best effort: the caller logs
/// an error and goes on (the resync is then only not discard-aware; no data is at stake).
pub fn cap_for_84(backing: &Path, sys_block: &Path) -> Result<Option<(u64, u64)>, String> {
    let queue = queue_dir(backing, sys_block)?;
    let read = |f: &str| -> Result<u64, String> {
        let p = queue.join(f);
        let s = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        s.trim().parse().map_err(|_| format!("{} holds {:?}, not a number", p.display(), s.trim()))
    };
    let max = read("discard_max_bytes")?;
    if max < WRAPS_AT {
        return Ok(None);
    }
    // The block layer refuses a limit that is not a multiple of the discard granularity.
    let gran = read("discard_granularity")?.max(512);
    let new = CAPPED_MAX_BYTES / gran * gran;
    let p = queue.join("discard_max_bytes");
    std::fs::write(&p, format!("{new}\n")).map_err(|e| format!("cannot write {new} to {}: {e}", p.display()))?;
    Ok(Some((max, new)))
}

/// `<sys_block>/<dev>/queue` of the block device `backing` is. By the device number: without
/// udev (the lab's guests) /dev/mapper/<vg>-<lv> is a device node of its own, not a link to
/// /dev/dm-N, so its name says nothing. A path that is no block device (tests) goes by the name
/// it resolves to.
fn queue_dir(backing: &Path, sys_block: &Path) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dev = std::fs::canonicalize(backing).map_err(|e| format!("cannot resolve {}: {e}", backing.display()))?;
    let meta = std::fs::metadata(&dev).map_err(|e| format!("cannot stat {}: {e}", dev.display()))?;
    if !meta.file_type().is_block_device() {
        let name = dev.file_name().ok_or_else(|| format!("{} has no device name", dev.display()))?;
        return Ok(sys_block.join(name).join("queue"));
    }
    let rdev = meta.rdev();
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let entries = std::fs::read_dir(sys_block).map_err(|e| format!("cannot list {}: {e}", sys_block.display()))?;
    for e in entries.flatten() {
        if std::fs::read_to_string(e.path().join("dev")).is_ok_and(|d| d.trim() == want) {
            return Ok(e.path().join("queue"));
        }
    }
    Err(format!("no entry of {} has device number {want} ({})", sys_block.display(), backing.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(dir: &Path, name: &str, max: u64, gran: u64) -> std::path::PathBuf {
        let q = dir.join("sys").join(name).join("queue");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("discard_max_bytes"), format!("{max}\n")).unwrap();
        std::fs::write(q.join("discard_granularity"), format!("{gran}\n")).unwrap();
        std::fs::create_dir_all(dir.join("dev/ssd")).unwrap();
        std::fs::write(dir.join("dev").join(name), b"").unwrap();
        let link = dir.join("dev/ssd").join(format!("lv-{name}"));
        std::os::unix::fs::symlink(dir.join("dev").join(name), &link).unwrap();
        link
    }

    fn limit(dir: &Path, name: &str) -> u64 {
        std::fs::read_to_string(dir.join("sys").join(name).join("queue/discard_max_bytes")).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn a_thin_lv_limit_that_wraps_is_lowered_to_1_gib() {
        let t = tempfile::tempdir().unwrap();
        // The lab's thin LV: 16 GiB, 64 KiB granularity.
        let lv = device(t.path(), "dm-4", 17179869184, 65536);
        assert_eq!(cap_for_84(&lv, &t.path().join("sys")).unwrap(), Some((17179869184, 1 << 30)));
        assert_eq!(limit(t.path(), "dm-4"), 1 << 30);
        // Once lowered, nothing more to do.
        assert_eq!(cap_for_84(&lv, &t.path().join("sys")).unwrap(), None);
    }

    #[test]
    fn limits_below_4_gib_are_left_alone_and_the_new_one_is_a_multiple_of_the_granularity() {
        let t = tempfile::tempdir().unwrap();
        // A loop device: UINT_MAX sectors rounded, just under 4 GiB.
        let lo = device(t.path(), "loop0", 4294966784, 4096);
        assert_eq!(cap_for_84(&lo, &t.path().join("sys")).unwrap(), None);
        assert_eq!(limit(t.path(), "loop0"), 4294966784);
        let odd = device(t.path(), "dm-7", 1 << 34, 3 * 65536);
        let (_, new) = cap_for_84(&odd, &t.path().join("sys")).unwrap().unwrap();
        assert_eq!(new % (3 * 65536), 0);
        assert!(new <= 1 << 30 && new > (1 << 30) - 3 * 65536);
    }

    /// The lab's case: a device node of its own (no udev link), found by its number.
    #[test]
    fn a_block_device_node_is_found_by_its_device_number() {
        if !nix::unistd::geteuid().is_root() {
            return; // mknod of a block device needs root
        }
        let t = tempfile::tempdir().unwrap();
        let q = t.path().join("sys/dm-9/queue");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(t.path().join("sys/dm-9/dev"), "253:9\n").unwrap();
        std::fs::create_dir_all(t.path().join("sys/vda")).unwrap();
        std::fs::write(t.path().join("sys/vda/dev"), "254:0\n").unwrap();
        std::fs::write(q.join("discard_max_bytes"), "17179869184\n").unwrap();
        std::fs::write(q.join("discard_granularity"), "65536\n").unwrap();
        let node = t.path().join("ssd-vm--100--disk--0");
        let dev = libc::makedev(253, 9);
        if nix::sys::stat::mknod(&node, nix::sys::stat::SFlag::S_IFBLK, nix::sys::stat::Mode::from_bits_truncate(0o600), dev).is_err() {
            return; // a file system that takes no device nodes
        }
        assert_eq!(cap_for_84(&node, &t.path().join("sys")).unwrap(), Some((17179869184, 1 << 30)));
        std::fs::remove_file(t.path().join("sys/dm-9/dev")).unwrap();
        let e = cap_for_84(&node, &t.path().join("sys")).unwrap_err();
        assert!(e.contains("device number 253:9"), "{e}");
    }

    #[test]
    fn a_device_without_sysfs_entry_is_an_error_that_names_the_file() {
        let t = tempfile::tempdir().unwrap();
        let lv = device(t.path(), "dm-1", 1 << 34, 65536);
        let e = cap_for_84(&lv, &t.path().join("nosys")).unwrap_err();
        assert!(e.contains("nosys/dm-1/queue/discard_max_bytes"), "{e}");
        let e = cap_for_84(&t.path().join("dev/ssd/missing"), &t.path().join("sys")).unwrap_err();
        assert!(e.contains("cannot resolve"), "{e}");
    }
}
