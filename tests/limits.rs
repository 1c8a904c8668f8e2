//! Resource limits with the real binary: a read-only cluster store (what /etc/pve
//! looks like without corosync quorum), a full file-backend file system, and a
//! registered peer whose agent never answers. Each: a clear error, fast or
//! within the bounded timeout, and nothing half-done afterwards.

#[path = "faultlab/mod.rs"]
mod lab;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab::{can_run, Out, World};
use serde_json::{json, Value};

/// Every file and directory under `root` with its content: compared before/after.
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn alloc(w: &World, node: &str) -> Value {
    let (o, v) = w.plugin_pumped(node, "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    assert_eq!(o.code, 0, "alloc: {} {}", o.stdout, o.stderr);
    v
}

/// Run a plugin call as `node` with the store read-only in its mount namespace.
fn ro_call(w: &World, node: &str, method: &str, args: Value) -> (Out, Value, Duration) {
    let pre = r#"mount --bind "$DRBDPOOL_STORE" "$DRBDPOOL_STORE" && mount -o remount,bind,ro "$DRBDPOOL_STORE""#;
    let t = Instant::now();
    let mut ch = w
        .cmd_with(node, pre, &["plugin", method], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ch.stdin.take().unwrap().write_all(w.request(node, args).as_bytes()).unwrap();
    let o: Out = ch.wait_with_output().unwrap().into();
    let el = t.elapsed();
    let v: Value = serde_json::from_str(o.stdout.trim()).unwrap_or(Value::Null);
    (o, v, el)
}

#[test]
fn read_only_store_fails_fast_and_changes_nothing() {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    alloc(&w, "a");
    w.round();
    let before = snapshot(w.store.root());
    let images_before: Vec<Vec<String>> = ["a", "b"].iter().map(|n| w.images(n)).collect();
    let calls = [
        ("alloc", json!({"vmid": 101, "size_kib": 4096})),
        ("free", json!({"volname": "vm-100-disk-0"})),
        ("resize", json!({"volname": "vm-100-disk-0", "size_bytes": 8u64 << 20})),
    ];
    for (m, args) in calls {
        let (o, v, el) = ro_call(&w, "a", m, args);
        assert_eq!(o.code, 1, "{m}: {}", o.stdout);
        assert_eq!(v["error"]["kind"], "store", "{m}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("Read-only file system") && msg.contains("quorum"), "{m}: {msg}");
        assert!(el < Duration::from_secs(3), "{m} took {el:?} against a read-only store");
        eprintln!("read-only store: {m} failed in {:.0} ms: {msg}", el.as_secs_f64() * 1000.0);
    }
    assert_eq!(snapshot(w.store.root()), before, "the store changed");
    let images_after: Vec<Vec<String>> = ["a", "b"].iter().map(|n| w.images(n)).collect();
    assert_eq!(images_after, images_before);
    let d = w.store.volume(&w.sid, "vm-100-disk-0").unwrap().unwrap();
    assert_eq!((d.size_kib, d.state), (4096, drbdpool::store::docs::VolumeState::Ready));
    w.assert_clean("after the read-only attempts");
}

/// A tmpfs mounted over a node's image directory (host namespace), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().unwrap();
        assert!(ok.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for f in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            for l in lab::loops(&f.path()) {
                let _ = Command::new("losetup").args(["-d", &l]).status();
            }
        }
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_backend_file_system_is_a_clear_error_and_nothing_half_done() {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    let _fs = Tmpfs::mount(&w.node_dir("a"), "2m");
    // Fill it: what is left is less than any volume's metadata needs.
    let filler = w.node_dir("a").join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", filler.display())).stderr(Stdio::null()).status();
    let t = Instant::now();
    let (o, v) = w.plugin_pumped("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    let el = t.elapsed();
    assert_eq!(o.code, 1, "{}", o.stdout);
    let msg = v["error"]["message"].as_str().unwrap_or_default().to_string();
    eprintln!("full file system: alloc failed in {:.0} ms: {msg}", el.as_secs_f64() * 1000.0);
    assert!(msg.contains("No space left") || msg.contains("not enough space"), "unclear error: {v}");
    // Rolled back: one agent round removes the document; no image, loop device or resource left.
    w.rounds_until("the failed volume's document removed", 5, || w.store.all_volumes().unwrap().is_empty());
    assert_eq!(w.images("a"), Vec::<String>::new());
    assert_eq!(w.images("b"), Vec::<String>::new());
    w.assert_clean("after the failed alloc");
    // Room again: the same alloc works and gets the same minor.
    std::fs::remove_file(&filler).unwrap();
    let (o, _) = w.plugin_pumped("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(w.store.volume(&w.sid, "vm-100-disk-0").unwrap().unwrap().minor, 1000);
    w.assert_clean("after the alloc with room");
}

#[test]
fn silent_peer_times_out_naming_it_and_rolls_back() {
    if !can_run() {
        return;
    }
    let mut w = World::new(&["a", "b"]);
    w.set_env("DRBDPOOL_PEER_TIMEOUT_SECS", "3");
    // Only a's agent runs: b is registered but never answers.
    w.nodes = vec!["a".into()];
    let t = Instant::now();
    let (o, v) = w.plugin_pumped("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    let el = t.elapsed();
    assert_eq!((o.code, &v["error"]["kind"]), (1, &json!("timeout")), "{}", o.stdout);
    let msg = v["error"]["message"].as_str().unwrap();
    eprintln!("silent peer: alloc failed after {:.1} s: {msg}", el.as_secs_f64());
    assert!(msg.contains("node(s) b did not report") && msg.contains("journalctl -u drbdpool-agent"), "{msg}");
    assert!(el < Duration::from_secs(8), "bounded by the 3 s peer timeout, took {el:?}");
    // a's replica was removed by the roll back; a's agent removes the document.
    w.rounds_until("document removed", 5, || w.store.all_volumes().unwrap().is_empty());
    assert!(w.images("a").is_empty() && w.images("b").is_empty());
    w.nodes = vec!["a".into(), "b".into()];
    w.assert_clean("after the timed-out alloc");
}
