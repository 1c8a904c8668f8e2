//! Command sequences of the LVM backends (testing tier 2): exact argv, the DRBD
//! filter on every call, replayed real `lvs`/`vgs` JSON output.

use std::sync::Arc;

use drbdpool::backend::{backend_for, Backend};
use drbdpool::exec::{Output, RecordingRunner};
use drbdpool::store::docs::{BackendKind, BackendSpec};

const F: &str = r#"--config devices { filter=["r|^/dev/drbd.*|"] }"#;
const LVS: &str = include_str!("fixtures/drbd84-real/lvs.json.out");
const VGS: &str = include_str!("fixtures/drbd84-real/vgs.json.out");

fn lvs_argv() -> String {
    format!("lvs {F} --reportformat json --units b -o lv_name,vg_name,lv_attr,lv_size,pool_lv,data_percent,lv_path vg0")
}

/// The fixture with vm-100-disk-0 removed (a VG with only the pool).
fn lvs_without_disk() -> String {
    LVS.lines().filter(|l| !l.contains("vm-100-disk-0")).collect::<Vec<_>>().join("\n").replace("\"lv_dm_path\":\"/dev/mapper/vg0-pool_tmeta\"},", "\"lv_dm_path\":\"/dev/mapper/vg0-pool_tmeta\"}")
}

fn thin(r: &RecordingRunner) -> Box<dyn Backend> {
    let spec = BackendSpec { kind: BackendKind::Lvmthin, vg: Some("vg0".into()), thinpool: Some("pool".into()), dir: None };
    backend_for(&spec, Arc::new(r.clone())).unwrap()
}

fn thick(r: &RecordingRunner) -> Box<dyn Backend> {
    let spec = BackendSpec { kind: BackendKind::Lvm, vg: Some("vg0".into()), thinpool: None, dir: None };
    backend_for(&spec, Arc::new(r.clone())).unwrap()
}

#[test]
fn every_lvm_call_carries_the_drbd_filter_and_never_accepts_all() {
    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::ok(LVS));
    let b = thin(&r);
    b.space().unwrap();
    b.lookup("vm-100-disk-0").unwrap();
    b.resize("vm-100-disk-0", 300 * 1024).unwrap();
    b.remove("vm-100-disk-0").unwrap();
    for c in r.cmds() {
        assert_eq!(c.args[0], "--config", "{}", c.display());
        assert_eq!(c.args[1], r#"devices { filter=["r|^/dev/drbd.*|"] }"#);
        assert!(!c.args[1].contains("a|"), "accept-all rule found: {}", c.display());
    }
}

#[test]
fn lvmthin_create_checks_pool_then_creates_thin_lv() {
    let r = RecordingRunner::new();
    r.once(&["lvs"], Output::ok(lvs_without_disk()));
    r.on(&["lvs"], Output::ok(LVS));
    let b = thin(&r).create("vm-100-disk-0", 262144).unwrap();
    assert_eq!(b.path, "/dev/vg0/vm-100-disk-0");
    assert_eq!(b.size_kib, 262144);
    assert_eq!(
        r.calls(),
        vec![lvs_argv(), format!("lvcreate {F} -V 262144k -T vg0/pool -n vm-100-disk-0"), lvs_argv()]
    );
}

#[test]
fn lvmthin_create_is_idempotent() {
    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::ok(LVS));
    thin(&r).create("vm-100-disk-0", 262144).unwrap();
    assert_eq!(r.calls(), vec![lvs_argv()], "an existing LV of the right size must not be touched");
}

#[test]
fn lvmthin_missing_pool_and_vg_are_clear_errors_and_change_nothing() {
    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::ok(r#"{"report":[{"lv":[]}]}"#));
    let e = thin(&r).create("vm-1-disk-0", 1024).unwrap_err();
    assert_eq!(e.kind(), "not-found");
    assert!(e.to_string().contains("thin pool vg0/pool not found"), "{e}");
    assert!(r.calls().iter().all(|c| c.starts_with("lvs ")));

    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::fail(5, "  Volume group \"vg0\" not found\n  Cannot process volume group vg0\n"));
    let e = thin(&r).space().unwrap_err();
    assert_eq!(e.kind(), "not-found");
    assert!(e.to_string().contains("volume group 'vg0' not found"), "{e}");

    let spec = BackendSpec { kind: BackendKind::Lvmthin, vg: Some("vg0".into()), thinpool: None, dir: None };
    let e = backend_for(&spec, Arc::new(RecordingRunner::new())).err().unwrap();
    assert_eq!(e.kind(), "invalid-input");
    assert!(e.to_string().contains("thinpool"), "{e}");
}

#[test]
fn lvmthin_space_is_the_pools_like_proxmox() {
    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::ok(include_str!("fixtures/drbd84-real/lvs.json.after-resize.out").replace("\"lv_name\":\"pool\",", "\"lv_name\":\"pool\", \"lv_attr\":\"twi-aotz--\",")));
    let s = thin(&r).space().unwrap();
    assert_eq!(s.total, 1073741824);
    // data_percent "3.14" in the fixture
    assert_eq!(s.used, (1073741824f64 * 314.0 / 10000.0) as u64);
    assert_eq!(s.avail, s.total - s.used);
}

/// `used` in list/size (issue 16): each thin LV's lv_size * data_percent from one `lvs`, the
/// same call as `space`; LVs of other pools and names not asked for are left out.
#[test]
fn lvmthin_allocation_per_volume_from_one_lvs() {
    let r = RecordingRunner::new();
    let lvs = LVS
        .replace(
            r#"{"lv_name":"vm-100-disk-0", "vg_name":"vg0", "lv_attr":"Vwi-a-tz--", "lv_size":"268435456B", "pool_lv":"pool", "data_percent":"0.00""#,
            r#"{"lv_name":"vm-100-disk-0", "vg_name":"vg0", "lv_attr":"Vwi-a-tz--", "lv_size":"268435456B", "pool_lv":"pool", "data_percent":"12.50""#,
        )
        .replace(
            r#"{"lv_name":"[lvol0_pmspare]""#,
            r#"{"lv_name":"vm-200-disk-0", "vg_name":"vg0", "lv_attr":"Vwi-a-tz--", "lv_size":"268435456B", "pool_lv":"otherpool", "data_percent":"50.00", "metadata_percent":"", "lv_path":"/dev/vg0/vm-200-disk-0", "lv_dm_path":""},
                  {"lv_name":"[lvol0_pmspare]""#,
        );
    assert!(lvs.contains("12.50") && lvs.contains("otherpool"), "fixture shape changed");
    r.on(&["lvs"], Output::ok(lvs));
    let a = thin(&r).allocated(&["vm-100-disk-0", "vm-200-disk-0", "vm-300-disk-0"]).unwrap();
    assert_eq!(a.into_iter().collect::<Vec<_>>(), vec![("vm-100-disk-0".to_string(), 268435456 / 8)]);
    assert_eq!(r.calls(), vec![lvs_argv()], "one lvs for all volumes");
    // What the agent runs every 10 s: the pool's space and the volumes' allocation, one lvs.
    r.clear();
    let (space, a) = thin(&r).space_and_allocated(&["vm-100-disk-0"]).unwrap();
    assert_eq!((space.total, a["vm-100-disk-0"]), (1073741824, 268435456 / 8));
    assert_eq!(r.calls(), vec![lvs_argv()], "space and allocation from one lvs");
    // Thick LVs allocate everything: no figures (the caller reports the size).
    let r = RecordingRunner::new();
    assert!(thick(&r).allocated(&["vm-100-disk-0"]).unwrap().is_empty());
    assert!(r.calls().is_empty());
}

#[test]
fn lvmthin_resize_grows_only() {
    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::ok(LVS));
    thin(&r).resize("vm-100-disk-0", 1024).unwrap();
    assert_eq!(r.calls(), vec![lvs_argv()], "never shrinks");
    r.clear();
    thin(&r).resize("vm-100-disk-0", 327680).unwrap();
    assert_eq!(r.calls()[1], format!("lvextend {F} -L 327680k vg0/vm-100-disk-0"));
}

#[test]
fn lvmthin_remove_and_snapshots() {
    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::ok(LVS));
    let b = thin(&r);
    b.remove("vm-100-disk-0").unwrap();
    assert_eq!(r.calls(), vec![lvs_argv(), format!("lvremove {F} -f vg0/vm-100-disk-0")]);
    r.clear();
    b.remove("vm-999-disk-0").unwrap();
    assert_eq!(r.calls(), vec![lvs_argv()], "removing a missing LV is a no-op");
    r.clear();
    b.snapshot("vm-100-disk-0", "s1").unwrap();
    assert_eq!(r.calls()[1], format!("lvcreate {F} -s -pr -n vm-100-disk-0_s1 vg0/vm-100-disk-0"));
    assert!(b.can_snapshot());

    let r = RecordingRunner::new();
    r.on(&["lvs"], Output::ok(LVS.replace("{\"lv_name\":\"pool\"", "{\"lv_name\":\"vm-100-disk-0_s1\", \"lv_size\":\"268435456B\"},{\"lv_name\":\"pool\"")));
    let b = thin(&r);
    b.rollback("vm-100-disk-0", "s1").unwrap();
    assert_eq!(
        r.calls(),
        vec![
            lvs_argv(),
            format!("lvremove {F} -f vg0/vm-100-disk-0"),
            format!("lvcreate {F} -kn -n vm-100-disk-0 -s vg0/vm-100-disk-0_s1"),
        ]
    );
    r.clear();
    b.remove_snapshot("vm-100-disk-0", "s1").unwrap();
    assert_eq!(r.calls()[1], format!("lvremove {F} -f vg0/vm-100-disk-0_s1"));

    // Snapshot devices: thin snapshots skip activation unless -K (as PVE's LvmThinPlugin).
    r.clear();
    assert_eq!(b.snapshot_path("vm-100-disk-0", "s1").unwrap().as_deref(), Some("/dev/vg0/vm-100-disk-0_s1"));
    assert_eq!(b.snapshot_path("vm-100-disk-0", "s2").unwrap(), None);
    r.clear();
    assert_eq!(b.activate_snapshot("vm-100-disk-0", "s1").unwrap(), "/dev/vg0/vm-100-disk-0_s1");
    assert_eq!(r.calls(), vec![lvs_argv(), format!("lvchange {F} -ay -K vg0/vm-100-disk-0_s1")]);
    r.clear();
    b.deactivate_snapshot("vm-100-disk-0", "s1").unwrap();
    assert_eq!(r.calls(), vec![lvs_argv(), format!("lvchange {F} -an vg0/vm-100-disk-0_s1")]);
    r.clear();
    assert_eq!(b.activate_snapshot("vm-100-disk-0", "s2").unwrap_err().kind(), "not-found");
    b.deactivate_snapshot("vm-100-disk-0", "s2").unwrap();
    assert_eq!(r.calls(), vec![lvs_argv(), lvs_argv()], "nothing activated for a missing snapshot");
    assert_eq!(b.snapshot_path("vm-100-disk-0", "../x").unwrap_err().kind(), "invalid-input");
}

#[test]
fn lvmthin_linked_clone_is_a_writable_thin_snapshot_of_the_base() {
    let r = RecordingRunner::new();
    r.once(&["lvs"], Output::ok(LVS));
    r.on(&["lvs"], Output::ok(LVS.replace("{\"lv_name\":\"pool\"", "{\"lv_name\":\"vm-102-disk-0\", \"lv_size\":\"268435456B\", \"lv_path\":\"/dev/vg0/vm-102-disk-0\"},{\"lv_name\":\"pool\"")));
    let b = thin(&r).clone_from("vm-100-disk-0", "vm-102-disk-0").unwrap();
    assert_eq!(b.path, "/dev/vg0/vm-102-disk-0");
    assert_eq!(r.calls(), vec![lvs_argv(), format!("lvcreate {F} -n vm-102-disk-0 -prw -kn -s vg0/vm-100-disk-0"), lvs_argv()]);
    // Idempotent: an existing clone is not created again.
    r.clear();
    thin(&r).clone_from("vm-100-disk-0", "vm-102-disk-0").unwrap();
    assert_eq!(r.calls(), vec![lvs_argv()]);
    // A missing base: not-found, nothing created.
    r.clear();
    assert_eq!(thin(&r).clone_from("vm-999-disk-0", "vm-103-disk-0").unwrap_err().kind(), "not-found");
    assert_eq!(r.calls(), vec![lvs_argv()]);
    // Thick LVM: refused.
    assert_eq!(thick(&r).clone_from("vm-100-disk-0", "vm-104-disk-0").unwrap_err().kind(), "refused");
}

#[test]
fn lvm_thick_create_space_and_no_snapshots() {
    let r = RecordingRunner::new();
    r.once(&["lvs"], Output::ok(r#"{"report":[{"lv":[]}]}"#));
    r.on(&["lvs"], Output::ok(LVS));
    r.on(&["vgs"], Output::ok(VGS));
    let b = thick(&r);
    b.create("vm-100-disk-0", 262144).unwrap();
    assert_eq!(r.calls()[1], format!("lvcreate {F} -Wy --yes -L 262144k -n vm-100-disk-0 vg0"));
    let s = b.space().unwrap();
    assert_eq!((s.total, s.avail, s.used), (2143289344, 1061158912, 2143289344 - 1061158912));
    assert_eq!(r.calls()[3], format!("vgs {F} --reportformat json --units b -o vg_name,vg_size,vg_free vg0"));
    assert!(!b.thin());
    assert!(!b.can_snapshot());
    assert_eq!(b.snapshot("vm-100-disk-0", "s").unwrap_err().kind(), "refused");
}

#[test]
fn bad_names_are_refused_before_any_command() {
    let r = RecordingRunner::new();
    let b = thin(&r);
    assert_eq!(b.create("../etc", 1).unwrap_err().kind(), "invalid-input");
    assert_eq!(b.snapshot("vm-1-disk-0", "a b").unwrap_err().kind(), "invalid-input");
    assert!(r.calls().is_empty());
}

/// A node that rebooted without VG autoactivation: the LV exists but is inactive, so
/// its device node is missing. Creating (ensuring) it activates it instead of failing later.
#[test]
fn existing_inactive_lv_is_activated() {
    let inactive = LVS.replace(r#""lv_name":"vm-100-disk-0", "vg_name":"vg0", "lv_attr":"Vwi-a-tz--""#, r#""lv_name":"vm-100-disk-0", "vg_name":"vg0", "lv_attr":"Vwi---tz--""#);
    assert_ne!(inactive, LVS, "fixture shape changed");
    for (b, r) in [("thin", RecordingRunner::new()), ("thick", RecordingRunner::new())] {
        r.on(&["lvs"], Output::ok(inactive.clone()));
        let backend = if b == "thin" { thin(&r) } else { thick(&r) };
        backend.create("vm-100-disk-0", 1024).unwrap();
        assert!(r.calls().contains(&format!("lvchange {F} -ay -K vg0/vm-100-disk-0")), "{b}: {:?}", r.calls());
        // An active LV is left alone.
        let r2 = RecordingRunner::new();
        r2.on(&["lvs"], Output::ok(LVS));
        let backend = if b == "thin" { thin(&r2) } else { thick(&r2) };
        backend.create("vm-100-disk-0", 1024).unwrap();
        assert!(!r2.calls().iter().any(|c| c.starts_with("lvchange")), "{b}: {:?}", r2.calls());
    }
}
