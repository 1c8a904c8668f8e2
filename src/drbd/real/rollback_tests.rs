//! Exact argv of the snapshot-rollback steps (RecordingRunner).

use super::*;
use crate::drbd::render::tests::plan;
use crate::exec::{Output, RecordingRunner};

fn setup() -> (RecordingRunner, tempfile::TempDir, DrbdAdm) {
    let r = RecordingRunner::new();
    let dir = tempfile::tempdir().unwrap();
    let adm = DrbdAdm::new_in(Arc::new(r.clone()), dir.path()).with_flavor(Flavor::V9);
    (r, dir, adm)
}

#[test]
fn wipe_metadata_writes_the_file_then_recreates_metadata_while_down() {
    let (r, dir, adm) = setup();
    r.on(&["drbdsetup", "events2", "--now", "--statistics"], Output::ok("exists -\n"));
    adm.wipe_metadata(&plan(2)).unwrap();
    let calls = r.calls();
    assert_eq!(calls[0], "drbdsetup events2 --now --statistics vm-100-disk-0");
    assert!(calls[1].starts_with("drbdadm --config-to-test ") && calls[1].ends_with(" sh-nop"), "{calls:?}");
    // DRBD 9: with room for peers added later (PEER_SLOTS).
    assert_eq!(calls[2..], ["drbdadm -- --force --max-peers=7 create-md vm-100-disk-0".to_string()]);
    assert!(dir.path().join("drbdpool-vm-100-disk-0.res").exists());
}

#[test]
fn wipe_metadata_refused_while_up() {
    let (r, _dir, adm) = setup();
    r.on(
        &["drbdsetup", "events2", "--now", "--statistics"],
        Output::ok("exists resource name:vm-100-disk-0 role:Secondary suspended:no\nexists device name:vm-100-disk-0 volume:0 minor:1000 disk:UpToDate client:no open:no\nexists -\n"),
    );
    assert_eq!(adm.wipe_metadata(&plan(2)).unwrap_err().kind(), "refused");
    assert!(!r.calls().iter().any(|c| c.contains("create-md")), "{:?}", r.calls());
}

#[test]
fn make_sync_source_forces_primary_then_secondary() {
    let (r, _dir, adm) = setup();
    adm.make_sync_source("vm-100-disk-0").unwrap();
    assert_eq!(r.calls(), vec!["drbdadm primary --force vm-100-disk-0", "drbdadm secondary vm-100-disk-0"]);
}
