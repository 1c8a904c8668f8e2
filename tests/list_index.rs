//! The list index (src/store/index.rs) against the documents it caches: whatever
//! the order of writes, folds, crashes inside a fold and writers that bypass it,
//! `list_entries` must equal what reading every document gives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use drbdpool::store::docs::{BackendKind, BackendSpec, VolumeDoc, VolumeState};
use drbdpool::store::index::Entry;
use drbdpool::store::Store;
use proptest::prelude::*;

const SID: &str = "dp";

fn doc(vmid: u32, disk: u32, size_kib: u64) -> VolumeDoc {
    let volname = format!("vm-{vmid}-disk-{disk}");
    VolumeDoc {
        resource: format!("pve-{volname}"),
        size_kib,
        minor: 1000 + vmid * 10 + disk,
        port: 7000 + (vmid * 10 + disk) as u16 % 1000,
        backend: BackendSpec { kind: BackendKind::File, vg: None, thinpool: None, dir: Some("/srv".into()) },
        secret: "c2VjcmV0".into(),
        created: 1_764_000_000,
        ..VolumeDoc::for_test(SID, &volname, &["pve1", "pve2"])
    }
}

/// What `list` must show: every document, read directly.
fn truth(s: &Store) -> Vec<(String, Entry)> {
    s.volumes(SID).unwrap().iter().map(|d| (d.volname.clone(), Entry::of(d))).collect()
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

fn marks(s: &Store) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.root().join("index").join(SID).join("changed"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn without_an_index_list_reads_the_documents() {
    let (_d, s) = store();
    for i in 0..5 {
        s.put_volume(&doc(100 + i, 0, 1024)).unwrap();
    }
    assert!(!s.index_complete(SID));
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    assert_eq!(s.list_entries(SID, Some(102)).unwrap().len(), 1);
}

#[test]
fn writes_are_seen_before_and_after_the_fold() {
    let (_d, s) = store();
    for i in 0..20 {
        s.put_volume(&doc(100 + i, 0, 1024)).unwrap();
    }
    // The first fold builds the index; the marks of the writes before it stay until the next.
    assert_eq!(s.compact_index(SID).unwrap(), 20);
    assert!(s.index_complete(SID));
    s.compact_index(SID).unwrap();
    assert!(marks(&s).is_empty(), "all marks folded: {:?}", marks(&s));
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));

    // A resize and a delete not yet folded: marked, so read from the documents.
    let mut d = doc(105, 0, 4096);
    d.state = VolumeState::Deleting;
    s.put_volume(&d).unwrap();
    s.remove_volume(SID, "vm-106-disk-0").unwrap();
    s.rename_volume(SID, "vm-107-disk-0", "base-107-disk-0").unwrap();
    assert_eq!(marks(&s), vec!["base-107-disk-0", "vm-105-disk-0", "vm-106-disk-0", "vm-107-disk-0"]);
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    assert_eq!(s.list_entries(SID, Some(105)).unwrap(), vec![("vm-105-disk-0".to_string(), Entry::of(&d))]);

    assert_eq!(s.compact_index(SID).unwrap(), 4);
    assert!(marks(&s).is_empty());
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    assert!(s.index_drift(SID).unwrap().is_empty());
}

#[test]
fn a_writer_that_bypasses_the_index_is_caught_by_the_listing_and_by_check() {
    let (_d, s) = store();
    for i in 0..4 {
        s.put_volume(&doc(100 + i, 0, 1024)).unwrap();
    }
    s.build_index(SID).unwrap();
    s.compact_index(SID).unwrap();
    let vdir = s.root().join("volumes").join(SID);
    // An older drbdpool (no marks) creates one volume and deletes another: the directory
    // listing is the truth for names.
    std::fs::write(vdir.join("vm-200-disk-0.json"), serde_json::to_vec(&doc(200, 0, 1)).unwrap()).unwrap();
    std::fs::remove_file(vdir.join("vm-101-disk-0.json")).unwrap();
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    // It resizes one: the index cannot know, but `check` says so and what to do.
    std::fs::write(vdir.join("vm-102-disk-0.json"), serde_json::to_vec(&doc(102, 0, 9999)).unwrap()).unwrap();
    assert_eq!(s.index_drift(SID).unwrap(), vec!["vm-102-disk-0"]);
    let o = drbdpool::check::CheckOpts {
        node: None,
        stuck_after: drbdpool::check::default_stuck_after(),
        lock_lifetime: std::time::Duration::from_secs(120),
    };
    let f = drbdpool::check::check(&s, &o).unwrap();
    let drift: Vec<_> = f.iter().filter(|f| f.kind == "index-drift").collect();
    assert_eq!(drift.len(), 1, "{f:?}");
    assert!(drift[0].message.contains("rm -r"), "{}", drift[0].message);
    // The remedy it names: drop the index; list reads documents, the next fold rebuilds.
    std::fs::remove_dir_all(s.root().join("index").join(SID)).unwrap();
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    s.compact_index(SID).unwrap();
    assert!(s.index_complete(SID));
    assert!(s.index_drift(SID).unwrap().is_empty());
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
}

#[test]
fn a_fold_that_died_after_its_claims_is_finished_by_the_next() {
    let (_d, s) = store();
    s.put_volume(&doc(100, 0, 1024)).unwrap();
    s.compact_index(SID).unwrap();
    s.compact_index(SID).unwrap();
    s.put_volume(&doc(100, 0, 2048)).unwrap();
    // Simulate the crash: the mark was claimed (renamed) but the shard never written.
    let ch = s.root().join("index").join(SID).join("changed");
    std::fs::rename(ch.join("vm-100-disk-0"), ch.join(".claimed-vm-100-disk-0")).unwrap();
    assert_eq!(s.list_entries(SID, None).unwrap()[0].1.size_kib, 2048, "a claimed mark still counts");
    assert_eq!(s.compact_index(SID).unwrap(), 1);
    assert!(marks(&s).is_empty(), "{:?}", marks(&s));
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    assert!(s.index_drift(SID).unwrap().is_empty());
}

#[test]
fn a_lock_held_elsewhere_makes_the_fold_wait_for_the_next_pass() {
    let (_d, s) = store();
    s.put_volume(&doc(100, 0, 1024)).unwrap();
    s.compact_index(SID).unwrap();
    s.put_volume(&doc(100, 0, 2048)).unwrap();
    let held = s.lock("drbdpool-index-dp").unwrap();
    assert_eq!(s.compact_index(SID).unwrap(), 0, "skips, does not block");
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    drop(held);
    assert_eq!(s.compact_index(SID).unwrap(), 1);
}

/// Writers and folders at once (threads in one process, as agents and plugin calls on one
/// node). The guarantee: a list shows every write that had completed when it began
/// (a write still in flight may or may not show). At the end the index matches the documents.
#[test]
fn concurrent_writers_and_folds_list_every_completed_write() {
    use std::sync::atomic::AtomicU64;
    let (_d, s) = store();
    for i in 0..16 {
        s.put_volume(&doc(100 + i, 0, 1)).unwrap();
    }
    s.compact_index(SID).unwrap();
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..16).map(|_| AtomicU64::new(1)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    // Each writer owns four volumes and only grows them.
    for w in 0..4u32 {
        let (s, done) = (s.clone(), done.clone());
        hs.push(std::thread::spawn(move || {
            for round in 2..60u64 {
                for k in 0..4 {
                    s.put_volume(&doc(100 + w * 4 + k, 0, round)).unwrap();
                    done[(w * 4 + k) as usize].store(round, Ordering::SeqCst);
                }
            }
        }));
    }
    let folder = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                s.compact_index(SID).unwrap();
            }
        })
    };
    let reader = {
        let (s, stop, done) = (s.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut lists = 0;
            while !stop.load(Ordering::Relaxed) {
                let before: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
                let l = s.list_entries(SID, None).unwrap();
                assert_eq!(l.len(), 16);
                for (i, (n, e)) in l.iter().enumerate() {
                    assert!(e.size_kib >= before[i], "{n}: listed {} but {} was written before the list began", e.size_kib, before[i]);
                }
                lists += 1;
            }
            lists
        })
    };
    for h in hs {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    folder.join().unwrap();
    assert!(reader.join().unwrap() > 0);
    assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
    s.compact_index(SID).unwrap();
    assert!(marks(&s).is_empty());
    assert!(s.index_drift(SID).unwrap().is_empty());
    assert!(truth(&s).iter().all(|(_, e)| e.size_kib == 59));
}

#[derive(Clone, Debug)]
enum Op {
    Put(u32, u64),
    Remove(u32),
    Fold,
    /// A fold that died after claiming every mark.
    DeadFold,
    Rebuild,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u32, 1..100u64).prop_map(|(v, s)| Op::Put(v, s)),
        1 => (0..6u32).prop_map(Op::Remove),
        2 => Just(Op::Fold),
        1 => Just(Op::DeadFold),
        1 => Just(Op::Rebuild),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_sequence_lists_the_documents(ops in proptest::collection::vec(op(), 1..40)) {
        let (_d, s) = store();
        for o in ops {
            match o {
                Op::Put(v, size) => s.put_volume(&doc(100 + v * 17, 0, size)).unwrap(),
                Op::Remove(v) => s.remove_volume(SID, &format!("vm-{}-disk-0", 100 + v * 17)).unwrap(),
                Op::Fold => { s.compact_index(SID).unwrap(); }
                Op::DeadFold => {
                    let ch = s.root().join("index").join(SID).join("changed");
                    for m in marks(&s).into_iter().filter(|m| !m.starts_with('.')) {
                        std::fs::rename(ch.join(&m), ch.join(format!(".claimed-{m}"))).unwrap();
                    }
                }
                Op::Rebuild => s.build_index(SID).unwrap(),
            }
            prop_assert_eq!(s.list_entries(SID, None).unwrap(), truth(&s));
            for v in 0..6u32 {
                let vmid = 100 + v * 17;
                let want: Vec<_> = truth(&s).into_iter().filter(|(n, _)| n.starts_with(&format!("vm-{vmid}-"))).collect();
                prop_assert_eq!(s.list_entries(SID, Some(vmid)).unwrap(), want);
            }
            prop_assert!(s.index_drift(SID).unwrap().is_empty());
        }
    }
}

/// `drbdpool status` and `volume list` (issue 13: < 50 ms at 1,000 volumes on pmxcfs) read the
/// index too. What they show must equal the documents with the fence marks merged, whatever
/// the marks did since the last fold, and whatever an older drbdpool left in the index.
#[test]
fn the_cli_reads_the_index_with_live_fence_marks_and_older_layouts() {
    let (_d, s) = store();
    for i in 0..6 {
        s.put_volume(&doc(100 + i, 0, 1024)).unwrap();
    }
    s.compact_index(SID).unwrap();
    s.compact_index(SID).unwrap();
    assert!(marks(&s).is_empty());
    let want = |s: &Store| -> Vec<(String, String, Entry)> {
        s.all_volumes().unwrap().iter().map(|d| (d.storeid.clone(), d.volname.clone(), Entry::of(d))).collect()
    };
    let cli = |s: &Store| s.cli_entries().unwrap();
    assert_eq!(cli(&s), want(&s));
    assert_eq!(cli(&s)[2].2.replicas, vec!["pve1", "pve2"]);

    // A fence mark made after the fold writes no document and no change mark: merged live.
    let m = s.add_fence_mark("pve-vm-102-disk-0", "pve2", "pve1").unwrap();
    assert!(marks(&s).is_empty());
    assert_eq!(cli(&s)[2].2.outdated, vec!["pve2"]);
    assert_eq!(cli(&s), want(&s));
    // A fold while the mark exists keeps it out of the index, so its removal shows at once.
    s.put_volume(&doc(102, 0, 2048)).unwrap();
    s.compact_index(SID).unwrap();
    s.remove_fence_mark(&m).unwrap();
    assert!(cli(&s)[2].2.outdated.is_empty(), "{:?}", cli(&s)[2]);
    assert_eq!(cli(&s)[2].2.size_kib, 2048);
    assert_eq!(cli(&s), want(&s));

    // An index of layout 1 (`complete` says 1): not built for this drbdpool; the documents are
    // read until the next fold rebuilds it.
    let complete = s.root().join("index").join(SID).join("complete");
    std::fs::write(&complete, "1\n").unwrap();
    assert!(!s.index_complete(SID));
    assert_eq!(cli(&s), want(&s));
    s.compact_index(SID).unwrap();
    assert_eq!(std::fs::read_to_string(&complete).unwrap().trim(), drbdpool::store::index::LAYOUT.to_string());

    // An entry an older agent folded into the new index, without the CLI's fields: the
    // document is read for it.
    let shard = s.root().join("index").join(SID).join(format!("shard-{:02}.json", 104 % drbdpool::store::index::SHARDS));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&shard).unwrap()).unwrap();
    let e = v["volumes"]["vm-104-disk-0"].as_object_mut().unwrap();
    for k in ["resource", "minor", "port", "replicas"] {
        e.remove(k);
    }
    std::fs::write(&shard, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(!s.list_entries(SID, Some(104)).unwrap()[0].1.is_full());
    assert_eq!(cli(&s), want(&s));
}
