//! The file backend for real: sparse files on loop devices (testing tier 4, root).

use std::sync::Arc;

use drbdpool::backend::{backend_for, Backend};
use drbdpool::exec::RealRunner;
use drbdpool::store::docs::{BackendKind, BackendSpec};

fn can_loop() -> bool {
    if !std::path::Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: /dev/loop-control missing (no loop device support here)");
        return false;
    }
    true
}

fn backend(dir: &std::path::Path) -> Box<dyn Backend> {
    let spec = BackendSpec { kind: BackendKind::File, vg: None, thinpool: None, dir: Some(dir.to_string_lossy().into()) };
    backend_for(&spec, Arc::new(RealRunner)).unwrap()
}

fn dev_size(dev: &str) -> u64 {
    use std::io::Seek;
    std::fs::File::open(dev).unwrap().seek(std::io::SeekFrom::End(0)).unwrap()
}

#[test]
fn file_backend_lifecycle_on_loop_devices() {
    if !can_loop() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let b = backend(d.path());
    let name = format!("t-{}-life", std::process::id());
    assert_eq!(b.lookup(&name).unwrap(), None);

    let made = b.create(&name, 4096).unwrap();
    assert!(made.path.starts_with("/dev/loop"), "{made:?}");
    assert_eq!(made.size_kib, 4096);
    assert_eq!(dev_size(&made.path), 4096 * 1024);
    let img = d.path().join(format!("{name}.img"));
    use std::os::unix::fs::MetadataExt;
    // Sparse but for the reserved last MiB (DRBD's metadata area: a full disk fails at creation).
    assert_eq!(std::fs::metadata(&img).unwrap().blocks() * 512, 1 << 20, "image must be sparse but for its last MiB");

    // Idempotent: same loop device, no second attachment.
    assert_eq!(b.create(&name, 4096).unwrap(), made);
    assert_eq!(b.lookup(&name).unwrap(), Some(made.clone()));

    let grown = b.resize(&name, 8192).unwrap();
    assert_eq!(grown.path, made.path);
    assert_eq!(dev_size(&grown.path), 8192 * 1024, "losetup -c must make the device follow the file");
    assert_eq!(b.resize(&name, 1024).unwrap().size_kib, 8192, "never shrinks");

    // Snapshots: copy, write, roll back.
    assert!(b.can_snapshot());
    std::fs::write(&made.path, b"before").unwrap();
    b.snapshot(&name, "s1").unwrap();
    assert_eq!(b.snapshot(&name, "s1").unwrap_err().kind(), "conflict");
    std::fs::write(&made.path, b"after!").unwrap();
    b.rollback(&name, "s1").unwrap();
    let again = b.create(&name, 8192).unwrap();
    let mut buf = vec![0u8; 6];
    use std::io::Read;
    std::fs::File::open(&again.path).unwrap().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"before");
    b.remove_snapshot(&name, "s1").unwrap();
    b.remove_snapshot(&name, "s1").unwrap();

    b.remove(&name).unwrap();
    assert!(!img.exists());
    assert_eq!(b.lookup(&name).unwrap(), None);
    b.remove(&name).unwrap();
    let out = std::process::Command::new("losetup").args(["-j"]).arg(&img).output().unwrap();
    assert!(out.stdout.is_empty(), "loop device left attached: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn file_backend_space_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let b = backend(d.path());
    let s = b.space().unwrap();
    assert!(s.total > 0 && s.avail <= s.total && s.used <= s.total, "{s:?}");
    assert!(b.thin());
    assert_eq!(b.resize("nope", 10).unwrap_err().kind(), "not-found");
    assert_eq!(b.create("a/b", 10).unwrap_err().kind(), "invalid-input");

    let spec = BackendSpec { kind: BackendKind::File, vg: None, thinpool: None, dir: Some("/nonexistent/drbdpool".into()) };
    let e = backend_for(&spec, Arc::new(RealRunner)).err().unwrap();
    assert_eq!(e.kind(), "not-found");
    assert!(e.to_string().contains("mkdir -p /nonexistent/drbdpool"), "{e}");
    let spec = BackendSpec { kind: BackendKind::File, vg: None, thinpool: None, dir: None };
    assert_eq!(backend_for(&spec, Arc::new(RealRunner)).err().unwrap().kind(), "invalid-input");
}
