//! `drbdpool check` finds what it claims to find: each kind of damage is made by
//! hand in a working two-node world, and `check` must name it (exit 9), while the
//! undamaged world checks clean (exit 0).

#[path = "faultlab/mod.rs"]
mod lab;

use std::process::Command;

use drbdpool::store::docs::{DualPrimary, Replica, RollbackMark, SnapshotDoc, VolumeState};
use lab::{can_run, World};
use serde_json::{json, Value};

fn kinds(f: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = f.iter().map(|x| x["kind"].as_str().unwrap().to_string()).collect();
    k.sort();
    k.dedup();
    k
}

fn has(f: &[Value], kind: &str, subject_part: &str) -> bool {
    f.iter().any(|x| x["kind"] == kind && x["subject"].as_str().unwrap().contains(subject_part) && !x["message"].as_str().unwrap().is_empty())
}

#[test]
fn check_names_each_kind_of_damage() {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    let (o, _) = w.plugin_pumped("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    w.assert_clean("fresh volume");
    let text = w.run("a", &["check"], &[]);
    assert_eq!((text.code, text.stdout.trim()), (0, "ok: no findings"));
    let good = w.store.volume(&w.sid, "vm-100-disk-0").unwrap().unwrap();

    // Store damage: a second document with the same minor, port and resource name.
    let mut dup = good.clone();
    dup.volname = "vm-100-disk-9".into();
    w.store.put_volume(&dup).unwrap();
    // A creating volume abandoned long ago, on an unregistered node with a doubled node id,
    // and a migration window left open.
    let mut old = good.clone();
    old.volname = "vm-100-disk-8".into();
    old.resource = w.res("vm-100-disk-8");
    old.minor = 1500;
    old.port = 7500;
    old.replicas = vec![Replica { node: "a".into(), node_id: 0 }, Replica { node: "zz".into(), node_id: 0 }];
    old.state = VolumeState::Creating;
    old.created -= 100_000;
    old.dual_primary = Some(DualPrimary { source: "a".into(), target: "zz".into(), since: old.created });
    // ... and a rollback whose helper died long ago (its source a: a's replica still counts as missing).
    old.snapshots.push(SnapshotDoc { name: "s1".into(), created: old.created, origin: Some("a".into()), rollback: Some(RollbackMark { source: "a".into(), since: old.created }) });
    w.store.put_volume(&old).unwrap();
    // A lock of a dead holder.
    let lock = w.store.lock_dir().join("drbdpool-vol-x");
    std::fs::create_dir_all(&lock).unwrap();
    let t = nix::sys::time::TimeVal::new(1_000_000, 0);
    nix::sys::stat::utimes(&lock, &t, &t).unwrap();
    // Node b: an image and a DRBD resource nobody wants.
    let ghost = w.res("vm-555-disk-0");
    std::fs::write(w.node_dir("b").join(format!("{ghost}.img")), b"").unwrap();
    let simb = w.base().join("sim/b");
    std::fs::copy(simb.join(format!("{}.json", good.resource)), simb.join(format!("{ghost}.json"))).unwrap();
    // Node a: the real volume's image is gone (disk replaced), and a deleted image still on a loop device.
    let img = w.node_dir("a").join(format!("{}.img", good.resource));
    std::fs::rename(&img, w.base().join("moved-away.img")).unwrap();
    let leak = w.node_dir("a").join(format!("{}.img", w.res("vm-556-disk-0")));
    std::fs::write(&leak, vec![0u8; 1 << 20]).unwrap();
    let out = Command::new("losetup").args(["-f", "--show"]).arg(&leak).output().unwrap();
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::remove_file(&leak).unwrap();

    let (ca, fa) = w.check("a");
    let (cb, fb) = w.check("b");
    let detach = || {
        let _ = Command::new("losetup").args(["-d", &dev]).status();
    };
    let all: Vec<Value> = fa.iter().chain(fb.iter()).cloned().collect();
    let k = kinds(&all);
    eprintln!("{}", serde_json::to_string_pretty(&all).unwrap());
    detach();
    assert_eq!((ca, cb), (9, 9));
    for want in [
        "duplicate-minor",
        "duplicate-port",
        "duplicate-resource",
        "duplicate-node-id",
        "unregistered-node",
        "stuck-creating",
        "migration-window",
        "stuck-rollback",
        "stale-lock",
        "leaked-backing",
        "leaked-resource",
        "leaked-loop",
        "missing-backing",
        "missing-resource",
    ] {
        assert!(k.iter().any(|x| x == want), "no {want} finding: {k:?}");
    }
    assert!(has(&fb, "leaked-backing", &ghost) && has(&fb, "leaked-resource", &ghost));
    assert!(has(&fa, "missing-backing", &good.resource), "{fa:?}");
    assert!(has(&fa, "missing-resource", "vm-100-disk-8"), "{fa:?}");
    assert!(has(&fa, "leaked-loop", &dev), "{fa:?}");
    assert!(has(&all, "stuck-rollback", "vm-100-disk-8"), "{all:?}");
    assert!(has(&all, "duplicate-port", "a:7000") && has(&all, "duplicate-port", "b:7000"));

    // The text form: one line per finding plus a count, exit 9.
    let o = w.run("b", &["check", "--cluster"], &[]);
    assert_eq!(o.code, 9);
    assert!(o.stdout.trim_end().ends_with("finding(s)"), "{}", o.stdout);
    assert!(!o.stdout.contains("leaked-backing"), "--cluster must not look at the node: {}", o.stdout);

    // Repaired by hand, clean again.
    std::fs::rename(w.base().join("moved-away.img"), &img).unwrap();
    w.store.remove_volume(&w.sid, "vm-100-disk-9").unwrap();
    w.store.remove_volume(&w.sid, "vm-100-disk-8").unwrap();
    std::fs::remove_dir(&lock).unwrap();
    std::fs::remove_file(w.node_dir("b").join(format!("{ghost}.img"))).unwrap();
    std::fs::remove_file(simb.join(format!("{ghost}.json"))).unwrap();
    w.assert_clean("after the repairs");
}

/// Issue 18, 5: a storage whose last volume document is gone still has its leaks found:
/// an image and a resource file left on b after the volume was freed. The image directory
/// comes from storage.cfg (no document names it any more).
#[test]
fn check_finds_leaks_of_a_storage_with_no_volume_left() {
    if !can_run() {
        return;
    }
    let w = World::new(&["a", "b"]);
    let (o, _) = w.plugin_pumped("a", "alloc", json!({"vmid": 100, "size_kib": 4096}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let good = w.store.volume(&w.sid, "vm-100-disk-0").unwrap().unwrap();
    let simb = w.base().join("sim/b");
    let mut res: Value = serde_json::from_str(&std::fs::read_to_string(simb.join(format!("{}.json", good.resource))).unwrap()).unwrap();
    let (o, _) = w.plugin_pumped("a", "free", json!({"volname": "vm-100-disk-0"}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for _ in 0..5 {
        if w.store.all_volumes().unwrap().is_empty() {
            break;
        }
        for n in ["a", "b"] {
            w.run(n, &["agent", "--once"], &[]);
        }
    }
    assert!(w.store.all_volumes().unwrap().is_empty(), "the storage has no volume left");
    // What a crashed removal would leave on b: an image and a resource file.
    let ghost = w.res("vm-300-disk-0");
    let img = w.node_dir("b").join(format!("{ghost}.img"));
    std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    res["resource"] = json!(ghost);
    res["backing"] = json!(format!("{}/{ghost}.img", w.shared()));
    std::fs::write(simb.join(format!("{ghost}.json")), res.to_string()).unwrap();
    // Without storage.cfg no document names the image directory: the image is not seen.
    let (_, fb) = w.check("b");
    assert!(has(&fb, "leaked-resource", &ghost) && !has(&fb, "leaked-backing", &ghost), "{fb:?}");
    let cfg = w.base().join("storage.cfg");
    std::fs::write(&cfg, format!("dir: local\n\tpath /var/lib/vz\n\ndrbdpool: {}\n\tdrbdpool-backend file\n\tdrbdpool-dir {}\n\tcontent images\n", w.sid, w.shared())).unwrap();
    let cfg = cfg.display().to_string();
    let o = w.run("b", &["check", "--json"], &[("DRBDPOOL_STORAGE_CFG", &cfg)]);
    let v: Value = serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {} {}", o.stdout, o.stderr));
    let fb = v["findings"].as_array().cloned().unwrap_or_default();
    assert_eq!(o.code, 9, "{fb:?}");
    assert!(has(&fb, "leaked-backing", &format!("{ghost}.img")), "{fb:?}");
    assert!(has(&fb, "leaked-resource", &ghost), "{fb:?}");
    // Repaired, clean (a has nothing left either).
    std::fs::remove_file(&img).unwrap();
    std::fs::remove_file(simb.join(format!("{ghost}.json"))).unwrap();
    for n in ["a", "b"] {
        let o = w.run(n, &["check"], &[("DRBDPOOL_STORAGE_CFG", &cfg)]);
        assert_eq!((o.code, o.stdout.trim()), (0, "ok: no findings"), "{n}: {}", o.stderr);
    }
}
