//! Command-sequence tests (RecordingRunner: exact argv) and, further down,
//! tests against the real drbd-utils parser (tier 3, skipped when drbdadm is
//! not installed).

use std::os::unix::fs::MetadataExt;

use super::*;
use crate::drbd::openers::Roots;
use crate::drbd::{fixture, fixture9};
use crate::drbd::render::tests::plan;
use crate::exec::{Output, RecordingRunner};

const RES: &str = "vm-100-disk-0";
const DOWN: &str = "exists -\n";

fn up_state(disk: &str, conn: &str, repl: &str, peer_disk: &str) -> String {
    format!(
        "exists resource name:{RES} role:Secondary suspended:no write-ordering:flush may_promote:no promotion_score:0\n\
         exists device name:{RES} volume:0 minor:1000 disk:{disk} client:no open:no quorum:yes size:262144\n\
         exists connection name:{RES} peer-node-id:1 conn-name:pve2 connection:{conn} role:Secondary congested:no\n\
         exists peer-device name:{RES} peer-node-id:1 conn-name:pve2 volume:0 replication:{repl} peer-disk:{peer_disk} peer-client:no resync-suspended:no out-of-sync:262144\n\
         exists -\n"
    )
}

struct T {
    r: RecordingRunner,
    dir: tempfile::TempDir,
    adm: DrbdAdm,
}

fn setup(flavor: Flavor) -> T {
    let r = RecordingRunner::new();
    let dir = tempfile::tempdir().unwrap();
    // No openers unless a test makes a fake /proc (never this machine's).
    let roots = Roots { proc: dir.path().join("no-proc"), sys_block: dir.path().join("no-sys") };
    let adm = DrbdAdm::new_in(Arc::new(r.clone()), dir.path())
        .with_flavor(flavor)
        .with_retry(3, Duration::ZERO)
        .with_open_roots(roots);
    T { r, dir, adm }
}

impl T {
    fn live(&self) -> PathBuf {
        self.dir.path().join("drbdpool-vm-100-disk-0.res")
    }
    /// The candidate path the first command tested: hidden, next to the live file, not `*.res`.
    fn tmp(&self) -> String {
        let prefix = format!("{}/.drbdpool-vm-100-disk-0.res.{}-", self.dir.path().display(), std::process::id());
        let cmds = self.r.cmds();
        let arg = cmds.first().and_then(|c| c.args.iter().find(|a| a.ends_with(".tmp"))).expect("a candidate was tested");
        assert!(arg.starts_with(&prefix), "{arg} should start with {prefix}");
        arg.clone()
    }
    /// A fake /proc in which `comm` (pid 539) holds /dev/drbd<minor>, read-only or read-write.
    fn opened_by(&self, minor: u32, comm: &str, write: bool) {
        let p = self.dir.path().join("no-proc/539");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::create_dir_all(p.join("fdinfo")).unwrap();
        std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        std::os::unix::fs::symlink(format!("/dev/drbd{minor}"), p.join("fd/3")).unwrap();
        let flags = if write { "0100002" } else { "0100000" };
        std::fs::write(p.join("fdinfo/3"), format!("pos:\t0\nflags:\t{flags}\n")).unwrap();
    }
    fn events(&self, text: &str) {
        self.r.on(&["drbdsetup", "events2", "--now", "--statistics"], Output::ok(text));
    }
}

/// Real drbd-utils 9.22 on a blank device: get-gi exits 1 silently, dump-md says why.
fn no_md(r: &RecordingRunner) {
    r.on(&["drbdadm", "get-gi"], Output::fail(1, ""));
    r.on(&["drbdadm", "dump-md"], Output::fail(1, "No valid meta data found\n"));
}

#[test]
fn apply_fresh_creates_metadata_and_brings_up() {
    let t = setup(Flavor::V9);
    t.events(DOWN);
    no_md(&t.r);
    let a = t.adm.apply(&plan(2)).unwrap();
    assert_eq!(a, Applied { created_metadata: true, changed_config: true });
    assert_eq!(
        t.r.calls(),
        vec![
            format!("drbdadm --config-to-test {} sh-nop", t.tmp()),
            "drbdsetup events2 --now --statistics vm-100-disk-0".into(),
            "drbdadm get-gi vm-100-disk-0".into(),
            "drbdadm dump-md vm-100-disk-0".into(),
            "drbdadm -- --force --max-peers=7 create-md vm-100-disk-0".into(),
            "drbdadm up vm-100-disk-0".into(),
        ]
    );
    assert_eq!(std::fs::read_to_string(t.live()).unwrap(), render::render(&plan(2), Flavor::V9).unwrap());
    // 8.4 metadata has one peer and no --max-peers: unchanged.
    let t = setup(Flavor::V84);
    t.events(DOWN);
    no_md(&t.r);
    t.adm.apply(&plan(2)).unwrap();
    assert!(t.r.calls().contains(&"drbdadm -- --force create-md vm-100-disk-0".to_string()), "{:?}", t.r.calls());
    assert!(!Path::new(&t.tmp()).exists(), "candidate cleaned up");
}

/// Issue 18: before DRBD 8.4 attaches a thin backing, a discard limit that its 32-bit shift
/// would wrap (a thin LV's 16 GiB) is lowered; DRBD 9 and thick backings are left alone.
#[test]
fn apply_84_thin_lowers_a_discard_limit_the_kernel_would_wrap() {
    for (flavor, thin, lowered) in [(Flavor::V84, true, true), (Flavor::V9, true, false), (Flavor::V84, false, false)] {
        let t = setup(flavor);
        t.events(DOWN);
        no_md(&t.r);
        let q = t.dir.path().join("no-sys/dm-4/queue");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("discard_max_bytes"), "17179869184\n").unwrap();
        std::fs::write(q.join("discard_granularity"), "65536\n").unwrap();
        std::fs::write(t.dir.path().join("dm-4"), b"").unwrap();
        let backing = t.dir.path().join("lv");
        std::os::unix::fs::symlink(t.dir.path().join("dm-4"), &backing).unwrap();
        let mut p = plan(2);
        p.backing = backing.to_string_lossy().into_owned();
        p.thin = thin;
        t.adm.apply(&p).unwrap();
        let now = std::fs::read_to_string(q.join("discard_max_bytes")).unwrap();
        let want = if lowered { "1073741824" } else { "17179869184" };
        assert_eq!(now.trim(), want, "{flavor:?} thin={thin}");
    }
}

#[test]
fn apply_up_failure_explains_include() {
    let t = setup(Flavor::V9);
    t.events(DOWN);
    t.r.on(&["drbdadm", "get-gi"], Output::ok("0000000000000004:0:0:0:0:0:0:0:0:0:0:0\n"));
    t.r.on(&["drbdadm", "up"], Output::fail(1, "'vm-100-disk-0' not defined in your config (for this host).\n"));
    let e = t.adm.apply(&plan(2)).unwrap_err().to_string();
    assert!(e.contains("included by the main DRBD config"), "{e}");
}

#[test]
fn apply_never_wipes_existing_metadata() {
    let t = setup(Flavor::V9);
    t.events(DOWN);
    // A replica that was up before (reboot, agent restart): metadata with history.
    t.r.on(
        &["drbdadm", "get-gi"],
        Output::ok("A1B2C3D4E5F60708:0000000000000000:0000000000000000:0000000000000000:1:1:0:1:0:0:0\n"),
    );
    let a = t.adm.apply(&plan(2)).unwrap();
    assert_eq!(a, Applied { created_metadata: false, changed_config: true });
    let calls = t.r.calls();
    assert!(!calls.iter().any(|c| c.contains("create-md") || c.contains("dump-md")), "{calls:?}");
    assert_eq!(calls.last().unwrap(), "drbdadm up vm-100-disk-0");
    // Metadata whose activity log was not applied (crash) is metadata too.
    let t = setup(Flavor::V84);
    t.events(DOWN);
    t.r.on(&["drbdadm", "get-gi"], Output::fail(255, ""));
    t.r.on(&["drbdadm", "dump-md"], Output::fail(255, "Found meta data is \"unclean\", please apply-al first\n"));
    assert!(!t.adm.apply(&plan(2)).unwrap().created_metadata);
    assert!(!t.r.calls().iter().any(|c| c.contains("create-md")));
}

#[test]
fn apply_does_nothing_when_metadata_state_is_unknown() {
    let t = setup(Flavor::V9);
    t.events(DOWN);
    t.r.on(
        &["drbdadm", "get-gi"],
        Output::fail(20, "open(/dev/pve/vm-100-disk-0) failed: No such file or directory\n"),
    );
    t.r.on(
        &["drbdadm", "dump-md"],
        Output::fail(20, "open(/dev/pve/vm-100-disk-0) failed: No such file or directory\n"),
    );
    let e = t.adm.apply(&plan(2)).unwrap_err();
    assert_eq!(e.kind(), "tool");
    assert!(e.to_string().contains("nothing was created"), "{e}");
    let calls = t.r.calls();
    assert!(!calls.iter().any(|c| c.contains("create-md") || c.ends_with(" up vm-100-disk-0")), "{calls:?}");
}

#[test]
fn apply_unchanged_skips_write_and_test_but_adjusts() {
    let t = setup(Flavor::V9);
    std::fs::write(t.live(), render::render(&plan(2), Flavor::V9).unwrap()).unwrap();
    let ino = std::fs::metadata(t.live()).unwrap().ino();
    t.events(&up_state("UpToDate", "Connected", "Established", "UpToDate"));
    let a = t.adm.apply(&plan(2)).unwrap();
    assert_eq!(a, Applied::default());
    assert_eq!(t.r.calls(), vec!["drbdsetup events2 --now --statistics vm-100-disk-0", "drbdadm adjust vm-100-disk-0"]);
    assert_eq!(std::fs::metadata(t.live()).unwrap().ino(), ino, "file not rewritten");
}

#[test]
fn apply_changed_tests_against_the_rest_then_adjusts() {
    let t = setup(Flavor::V9);
    let mut old = plan(2);
    old.port = 7001;
    std::fs::write(t.live(), render::render(&old, Flavor::V9).unwrap()).unwrap();
    t.events(&up_state("UpToDate", "Connected", "Established", "UpToDate"));
    let mut p = plan(2);
    p.dual_primary = true;
    let a = t.adm.apply(&p).unwrap();
    assert_eq!(a, Applied { created_metadata: false, changed_config: true });
    assert_eq!(
        t.r.calls(),
        vec![
            format!("drbdadm --config-to-test {} --config-to-exclude {} sh-nop", t.tmp(), t.live().display()),
            "drbdsetup events2 --now --statistics vm-100-disk-0".into(),
            "drbdadm adjust vm-100-disk-0".into(),
        ]
    );
    assert!(std::fs::read_to_string(t.live()).unwrap().contains("allow-two-primaries yes;"));
}

#[test]
fn apply_restores_previous_file_when_adjust_fails() {
    let t = setup(Flavor::V9);
    let mut old = plan(2);
    old.port = 7001;
    let old_text = render::render(&old, Flavor::V9).unwrap();
    std::fs::write(t.live(), &old_text).unwrap();
    t.events(&up_state("UpToDate", "Connected", "Established", "UpToDate"));
    t.r.once(
        &["drbdadm", "adjust"],
        Output::fail(10, "vm-100-disk-0: Failure: (102) Local address(port) already in use.\n"),
    );
    let e = t.adm.apply(&plan(2)).unwrap_err();
    assert_eq!(e.kind(), "tool");
    assert!(
        e.to_string().contains("already in use") && e.to_string().contains("previous resource file was restored"),
        "{e}"
    );
    assert_eq!(
        t.r.calls(),
        vec![
            format!("drbdadm --config-to-test {} --config-to-exclude {} sh-nop", t.tmp(), t.live().display()),
            "drbdsetup events2 --now --statistics vm-100-disk-0".into(),
            "drbdadm adjust vm-100-disk-0".into(),
            "drbdadm adjust vm-100-disk-0".into(),
        ]
    );
    assert_eq!(std::fs::read_to_string(t.live()).unwrap(), old_text);
}

#[test]
fn apply_rejected_candidate_changes_nothing() {
    let t = setup(Flavor::V9);
    std::fs::write(t.live(), "old bytes\n").unwrap();
    t.r.on(
        &["drbdadm", "--config-to-test"],
        Output::fail(10, "x.res:0: conflicting use of device-minor 'device-minor:pve1:1000'\n"),
    );
    let e = t.adm.apply(&plan(2)).unwrap_err();
    assert!(
        e.to_string().contains("conflicting use of device-minor") && e.to_string().contains("left unchanged"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(t.live()).unwrap(), "old bytes\n");
    assert_eq!(t.r.calls().len(), 1, "nothing after the failed test: {:?}", t.r.calls());
    assert!(!Path::new(&t.tmp()).exists());
}

#[test]
fn apply_84_tests_candidate_alone_when_live_exists() {
    let t = setup(Flavor::V84);
    std::fs::write(t.live(), "old bytes\n").unwrap();
    t.events(&up_state("UpToDate", "Connected", "Established", "UpToDate"));
    t.adm.apply(&plan(2)).unwrap();
    assert_eq!(t.r.calls()[0], format!("drbdadm -c {} sh-nop", t.tmp()));
    assert!(std::fs::read_to_string(t.live()).unwrap().contains("device /dev/drbd1000 minor 1000;"));
}

#[test]
fn apply_84_refuses_three_replicas_before_any_command() {
    let t = setup(Flavor::V84);
    let e = t.adm.apply(&plan(3)).unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(t.r.calls().is_empty());
    assert!(!t.live().exists());
}

#[test]
fn conf_flag_goes_first() {
    let t = setup(Flavor::V9);
    let adm =
        DrbdAdm::new_in(Arc::new(t.r.clone()), t.dir.path()).with_flavor(Flavor::V9).with_conf("/tmp/x/drbd.conf");
    adm.outdate(RES).unwrap();
    assert_eq!(t.r.calls(), vec!["drbdadm -c /tmp/x/drbd.conf outdate vm-100-disk-0"]);
}

#[test]
fn promote_retries_concurrent_state_changes() {
    let t = setup(Flavor::V9);
    let busy =
        Output::fail(11, "vm-100-disk-0: State change failed: (-19) Concurrent state changes detected and aborted\n");
    t.r.once(&["drbdadm", "primary"], busy.clone());
    t.r.once(&["drbdadm", "primary"], busy);
    t.adm.promote(RES).unwrap();
    assert_eq!(t.r.calls(), vec!["drbdadm primary vm-100-disk-0"; 3]);
}

#[test]
fn promote_while_peer_primary_is_refused() {
    let t = setup(Flavor::V84);
    t.r.on(&["drbdadm", "primary"], Output::fail(11, fixture("drbdadm-primary-while-peer-primary.err")));
    let e = t.adm.promote(RES).unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(e.to_string().contains("Primary on another node"), "{e}");
    assert_eq!(t.r.calls().len(), 1, "no retry for a real refusal");
}

#[test]
fn demote_held_open_is_refused_after_retries() {
    let t = setup(Flavor::V9);
    t.r.on(&["drbdadm", "secondary"], Output::fail(11, "vm-100-disk-0: State change failed: (-12) Device is held open by someone\nadditional info from kernel:\n/dev/drbd1000 opened by qemu-system-x86 (pid 4242) at 2026-11-26 09:00:00\n"));
    let e = t.adm.demote(RES).unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(e.to_string().contains("held open") && e.to_string().contains("qemu"), "{e}");
    assert_eq!(t.r.calls(), vec!["drbdadm secondary vm-100-disk-0"; 3]);
    // A transient probe: succeeds on the second try.
    let t = setup(Flavor::V9);
    t.r.once(
        &["drbdadm", "secondary"],
        Output::fail(11, "0: State change failed: (-12) Device is held open by someone\n"),
    );
    t.adm.demote(RES).unwrap();
    assert_eq!(t.r.calls().len(), 2);
}

#[test]
fn skip_initial_sync_on_fresh_connected_inconsistent() {
    let t = setup(Flavor::V9);
    t.events(&up_state("Inconsistent", "Connected", "Established", "Inconsistent"));
    t.r.on(
        &["drbdadm", "get-gi"],
        Output::ok("0000000000000004:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0:0\n"),
    );
    t.adm.skip_initial_sync(RES).unwrap();
    assert_eq!(
        t.r.calls(),
        vec![
            "drbdsetup events2 --now --statistics vm-100-disk-0",
            "drbdadm get-gi vm-100-disk-0",
            "drbdadm -- --clear-bitmap new-current-uuid vm-100-disk-0/0",
        ]
    );
}

#[test]
fn skip_initial_sync_refuses_used_metadata() {
    let t = setup(Flavor::V84);
    t.events(&up_state("Inconsistent", "Connected", "Established", "Inconsistent"));
    t.r.on(
        &["drbdadm", "get-gi"],
        Output::ok("C0FFEE0000000001:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0\n"),
    );
    let e = t.adm.skip_initial_sync(RES).unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(!t.r.calls().iter().any(|c| c.contains("new-current-uuid")));
}

#[test]
fn skip_initial_sync_refuses_unless_connected_and_inconsistent_both_sides() {
    for (disk, conn, repl, peer) in [
        ("Inconsistent", "Connecting", "Off", "DUnknown"),
        ("Inconsistent", "Connected", "Established", "UpToDate"),
        ("UpToDate", "Connected", "Established", "Inconsistent"),
        ("Inconsistent", "Connected", "SyncTarget", "Inconsistent"),
    ] {
        let t = setup(Flavor::V9);
        t.events(&up_state(disk, conn, repl, peer));
        let e = t.adm.skip_initial_sync(RES).unwrap_err();
        assert_eq!(e.kind(), "refused", "{disk} {conn} {repl} {peer}");
        assert!(e.to_string().contains(conn), "{e}");
        assert_eq!(t.r.calls(), vec!["drbdsetup events2 --now --statistics vm-100-disk-0"], "nothing run for {disk}/{peer}");
    }
    let t = setup(Flavor::V9);
    t.events(DOWN);
    assert!(t.adm.skip_initial_sync(RES).unwrap_err().to_string().contains("not up"));
}

#[test]
fn down_takes_down_then_removes_file_idempotently() {
    let t = setup(Flavor::V9);
    std::fs::write(t.live(), "x").unwrap();
    t.r.once(&["drbdsetup", "events2"], Output::ok(up_state("UpToDate", "Connected", "Established", "UpToDate")));
    t.r.on(&["drbdsetup", "events2"], Output::ok(DOWN));
    t.adm.down(RES).unwrap();
    assert!(!t.live().exists());
    t.adm.down(RES).unwrap();
    assert_eq!(
        t.r.calls(),
        vec![
            "drbdsetup events2 --now --statistics vm-100-disk-0",
            "drbdadm down vm-100-disk-0",
            "drbdsetup events2 --now --statistics vm-100-disk-0",
        ]
    );
}

#[test]
fn down_without_file_uses_drbdsetup() {
    let t = setup(Flavor::V9);
    t.events(&up_state("UpToDate", "Connected", "Established", "UpToDate"));
    t.adm.down(RES).unwrap();
    assert_eq!(t.r.calls()[1], "drbdsetup down vm-100-disk-0");
}

#[test]
fn status_parses_events2_and_explains_missing_module() {
    let t = setup(Flavor::V84);
    t.events(&fixture("drbdsetup-events2-now-statistics.syncsource.out"));
    let s = t.adm.status().unwrap();
    assert_eq!(s[0].role, "Primary");
    assert_eq!(s[0].connections[0].peer_devices[0].replication, "SyncSource");
    let t = setup(Flavor::V9);
    let r = RecordingRunner::new();
    r.on(&["drbdsetup"], Output::fail(20, "Failed to modprobe drbd (No such file or directory)\n"));
    let adm = DrbdAdm::new_in(Arc::new(r), t.dir.path()).with_flavor(Flavor::V9);
    let e = adm.status().unwrap_err().to_string();
    assert!(e.contains("modprobe drbd"), "{e}");
}

/// One resource is asked for by name (drbdsetup's `events2 {resource|all}`, 9 and 8.4),
/// never by reading every resource; one that is not up is None.
#[test]
fn resource_status_asks_for_that_resource_alone() {
    for flavor in [Flavor::V9, Flavor::V84] {
        let t = setup(flavor);
        t.r.on(&["drbdsetup", "events2", "--now", "--statistics", "r0"], Output::ok(fixture("drbdsetup-events2-now.primary.out")));
        t.r.on(&["drbdsetup", "events2", "--now", "--statistics", "r1"], Output::ok(DOWN));
        let st = t.adm.resource_status("r0").unwrap().unwrap();
        assert_eq!((st.name.as_str(), st.role.as_str()), ("r0", "Primary"));
        assert_eq!(t.adm.resource_status("r1").unwrap(), None);
        assert_eq!(
            t.r.calls(),
            vec!["drbdsetup events2 --now --statistics r0", "drbdsetup events2 --now --statistics r1"],
            "{flavor:?}"
        );
    }
}

#[test]
fn small_commands_exact_argv() {
    let t = setup(Flavor::V9);
    t.adm.set_dual_primary(RES, true).unwrap();
    t.adm.set_dual_primary(RES, false).unwrap();
    t.adm.resize(RES, false).unwrap();
    t.adm.resize(RES, true).unwrap();
    t.adm.outdate(RES).unwrap();
    assert_eq!(
        t.r.calls(),
        vec![
            "drbdadm net-options --allow-two-primaries=yes vm-100-disk-0",
            "drbdadm net-options --allow-two-primaries=no vm-100-disk-0",
            "drbdadm resize vm-100-disk-0",
            "drbdadm -- --assume-clean resize vm-100-disk-0",
            "drbdadm outdate vm-100-disk-0",
        ]
    );
}

#[test]
fn flavor_is_detected_once() {
    let r = RecordingRunner::new();
    r.on(&["drbdadm", "--version"], Output::ok(fixture("drbdadm--version.out")));
    let dir = tempfile::tempdir().unwrap();
    let adm = DrbdAdm::new_in(Arc::new(r.clone()), dir.path());
    assert_eq!(adm.flavor().unwrap(), Flavor::V84);
    assert_eq!(adm.flavor().unwrap(), Flavor::V84);
    assert_eq!(r.calls(), vec!["drbdadm --version"]);
}

/// Real 9.2.18: `drbdadm primary` with 1 of 3 nodes visible (drbd9-real.md item 4).
#[test]
fn promote_without_quorum_is_a_refusal_that_says_so() {
    let t = setup(Flavor::V9);
    t.r.on(&["drbdadm", "primary"], Output::fail(11, fixture9("drbdadm-primary.no-quorum.node2.err")));
    let e = t.adm.promote(RES).unwrap_err();
    assert_eq!((e.kind(), e.exit_code()), ("refused", 4));
    let m = e.to_string();
    assert!(m.contains("lost DRBD quorum (1 of 3 nodes visible, need 2 for quorum)"), "{m}");
    assert!(m.contains("(-25) No quorum"), "{m}");
    assert_eq!(t.r.calls().len(), 1, "no retry for a real refusal");
}

/// drbd-utils 9.22 never prints `open` (drbd9-real.md item 1): on DRBD 9 status fills it from
/// the kernel's answers (openers.rs); 8.4 keeps what it reports (nothing).
#[test]
fn status_on_9_knows_an_open_device_without_the_open_key() {
    let ev = fixture9("drbdsetup-events2-now-statistics.3node-primary.node1.out");
    assert!(!ev.contains("open:"), "fixture changed: the tools say open now");
    let t = setup(Flavor::V9);
    t.events(&ev);
    let d = &t.adm.status().unwrap()[0].devices[0];
    assert_eq!((d.minor, d.open), (0, Some(false)));
    t.opened_by(0, "qemu-system-x86", true);
    let d = t.adm.status().unwrap()[0].devices[0].clone();
    assert_eq!(d.open, Some(true));
    assert_eq!(d.extra["opened-by"], "qemu-system-x86 (pid 539, read-write)");
    assert_eq!(t.adm.resource_status("r0").unwrap().unwrap().devices[0].open, Some(true));
    let t = setup(Flavor::V84);
    t.events(&ev);
    t.opened_by(0, "qemu-system-x86", true);
    assert_eq!(t.adm.status().unwrap()[0].devices[0].open, None, "8.4 unchanged");
}

/// Real 9.2.18 `down` with a read-only opener drops every connection, then fails
/// (project.drbdadm-down-held-open-ro.node3.err; the replica stays up with quorum:no,
/// project.drbdadm-status.after-failed-down-ro.node3.out). So nothing is run while it is open.
#[test]
fn down_on_9_with_an_opener_runs_nothing() {
    assert!(fixture9("project.drbdadm-down-held-open-ro.node3.err").contains("(-2) Need access to UpToDate data"));
    assert!(fixture9("project.drbdadm-status.after-failed-down-ro.node3.out").contains("quorum:no"));
    for write in [false, true] {
        let t = setup(Flavor::V9);
        std::fs::write(t.live(), "x").unwrap();
        t.events(&up_state("UpToDate", "Connected", "Established", "UpToDate"));
        t.opened_by(1000, "blkid", write);
        let e = t.adm.down(RES).unwrap_err();
        assert_eq!(e.kind(), "refused");
        assert!(e.to_string().contains("blkid (pid 539"), "{e}");
        assert_eq!(t.r.calls(), vec!["drbdsetup events2 --now --statistics vm-100-disk-0"], "no drbdadm down");
        assert!(t.live().exists(), "resource file kept");
    }
    // The kernel's own refusal, should an opener come between the look and `down`.
    let t = setup(Flavor::V9);
    std::fs::write(t.live(), "x").unwrap();
    t.events(&up_state("UpToDate", "Connected", "Established", "UpToDate"));
    t.r.on(&["drbdadm", "down"], Output::fail(11, fixture9("project.drbdadm-down-held-open-rw.node1.err")));
    assert_eq!(t.adm.down(RES).unwrap_err().kind(), "refused");
    // 8.4: unchanged, drbdadm decides.
    let t = setup(Flavor::V84);
    std::fs::write(t.live(), "x").unwrap();
    t.r.once(&["drbdsetup", "events2"], Output::ok(up_state("UpToDate", "Connected", "Established", "UpToDate")));
    t.r.on(&["drbdsetup", "events2"], Output::ok(DOWN));
    t.opened_by(1000, "blkid", false);
    t.adm.down(RES).unwrap();
    assert_eq!(t.r.calls()[1], "drbdadm down vm-100-disk-0");
}

/// Real 9.2.18 `drbdadm outdate` on a connected Secondary (drbd9-real.md item 8).
#[test]
fn outdate_of_an_up_replica_is_a_refusal() {
    let t = setup(Flavor::V9);
    t.r.on(&["drbdadm", "outdate"], Output::fail(20, fixture9("project.drbdadm-outdate.node3.err")));
    let e = t.adm.outdate(RES).unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert!(e.to_string().contains("Device '1000' is configured!"), "{e}");
    let t = setup(Flavor::V9);
    t.r.on(&["drbdadm", "outdate"], Output::fail(10, "something else\n"));
    assert_eq!(t.adm.outdate(RES).unwrap_err().kind(), "tool");
}

// ---------------------------------------------------------------------------
// Tier 3: the real drbd-utils parser (drbdadm -d with a pretend node name and
// module version; needs no kernel module, no /etc/drbd.conf, no /var/lib/drbd).

mod real_utils {
    use super::*;
    use crate::exec::RealRunner;

    fn have_drbdadm() -> bool {
        let ok = RealRunner
            .run(&Cmd::new("drbdadm").arg("--version"))
            .map(|o| o.stdout.contains("DRBDADM_VERSION"))
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIPPED: drbdadm is not installed (apt-get install drbd-utils); real-parser test not run");
        }
        ok
    }

    fn override_version(f: Flavor) -> &'static str {
        match f {
            Flavor::V9 => "9.2.0",
            Flavor::V84 => "8.4.11",
        }
    }

    /// `drbdadm -d -c FILE up RES` as `node`; returns stdout (the drbdsetup/drbdmeta commands).
    fn dry_up(file: &Path, node: &str, f: Flavor) -> Output {
        RealRunner
            .run(
                &Cmd::new("drbdadm")
                    .args(["-d", "-c", &file.to_string_lossy(), "up", RES])
                    .env("__DRBD_NODE__", node)
                    .env("DRBD_DRIVER_VERSION_OVERRIDE", override_version(f)),
            )
            .unwrap()
    }

    fn write(dir: &Path, p: &ResourcePlan, f: Flavor) -> PathBuf {
        let path = dir.join(format!("{}-{:?}.res", p.resource, f));
        std::fs::write(&path, render::render(p, f).unwrap()).unwrap();
        path
    }

    #[test]
    fn v9_two_nodes_parsed_by_real_drbdadm() {
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &plan(2), Flavor::V9);
        let out = dry_up(&file, "pve2", Flavor::V9);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let want = [
            "drbdsetup new-resource vm-100-disk-0 1 --auto-promote=no",
            "drbdsetup new-minor vm-100-disk-0 1000 0",
            "drbdsetup new-peer vm-100-disk-0 0 --_name=pve1 --fencing=resource-and-stonith --shared-secret=Zm9vYmFyYmF6cXV4 --cram-hmac-alg=sha256 --protocol=C",
            "drbdsetup new-path vm-100-disk-0 0 ipv4:10.99.1.2:7000 ipv4:10.99.1.1:7000",
            // The resync controller (render.rs resync_lines): peer-device options in DRBD 9.
            "drbdsetup peer-device-options vm-100-disk-0 0 0 --c-plan-ahead=20 --c-fill-target=1M --c-max-rate=4194304k --c-min-rate=0k --resync-rate=4194304k",
            "drbdmeta 1000 v09 /dev/pve/vm-100-disk-0 internal apply-al",
            "drbdsetup attach 1000 /dev/pve/vm-100-disk-0 /dev/pve/vm-100-disk-0 internal --discard-zeroes-if-aligned=yes --rs-discard-granularity=65536 --al-updates=yes --al-extents=67",
            "drbdsetup connect vm-100-disk-0 0",
        ];
        assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want);
        // The handlers are part of the configuration drbdadm understood.
        let dump = RealRunner
            .run(
                &Cmd::new("drbdadm")
                    .args(["-c", &file.to_string_lossy(), "dump", RES])
                    .env("__DRBD_NODE__", "pve2")
                    .env("DRBD_DRIVER_VERSION_OVERRIDE", "9.2.0"),
            )
            .unwrap();
        assert!(dump.stdout.contains("fence-peer       \"/usr/bin/drbdpool fence-peer\";"), "{}", dump.stdout);
        assert!(dump.stdout.contains("unfence-peer     \"/usr/bin/drbdpool unfence-peer\";"), "{}", dump.stdout);
    }

    #[test]
    fn v9_three_nodes_dual_primary_parsed_by_real_drbdadm() {
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut p = plan(3);
        p.dual_primary = true;
        let file = write(dir.path(), &p, Flavor::V9);
        let out = dry_up(&file, "pve3", Flavor::V9);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines[0],
            "drbdsetup new-resource vm-100-disk-0 2 --auto-promote=no --quorum=majority --on-no-quorum=io-error"
        );
        assert!(
            lines.contains(&"drbdsetup new-path vm-100-disk-0 0 ipv4:10.99.1.3:7000 ipv4:10.99.1.1:7000"),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"drbdsetup new-path vm-100-disk-0 1 ipv4:10.99.1.3:7000 ipv4:10.99.1.2:7000"),
            "{lines:?}"
        );
        let peers: Vec<&&str> = lines.iter().filter(|l| l.starts_with("drbdsetup new-peer")).collect();
        assert_eq!(peers.len(), 2);
        for l in peers {
            assert!(
                l.contains("--allow-two-primaries=yes")
                    && l.contains("--cram-hmac-alg=sha256")
                    && !l.contains("fencing"),
                "{l}"
            );
        }
        assert!(
            lines.contains(&"drbdsetup connect vm-100-disk-0 0")
                && lines.contains(&"drbdsetup connect vm-100-disk-0 1")
        );
    }

    #[test]
    fn v9_single_node_parsed_by_real_drbdadm() {
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &plan(1), Flavor::V9);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("connection") && !text.contains("fencing") && !text.contains("quorum"), "{text}");
        let out = dry_up(&file, "pve1", Flavor::V9);
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert_eq!(out.stdout.lines().next(), Some("drbdsetup new-resource vm-100-disk-0 0 --auto-promote=no"));
        assert!(out.stdout.contains("drbdsetup attach 1000 /dev/pve/vm-100-disk-0"), "{}", out.stdout);
    }

    /// drbd9-real.md item 2: every DRBD 9 file we render turns auto-promote off, as the real
    /// drbdadm reads it (the default is on: drbdsetup-show-defaults.r0.node1.out).
    #[test]
    fn v9_every_file_turns_auto_promote_off_for_real_drbdadm() {
        assert!(fixture9("drbdsetup-show-defaults.r0.node1.out").contains("auto-promote    \tyes; # default"));
        assert!(!fixture9("project-rendered.3node.res").contains("auto-promote"), "the file before the fix");
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for n in 1..=4 {
            for dual in [false, true] {
                let mut p = plan(n);
                p.dual_primary = dual;
                let file = write(dir.path(), &p, Flavor::V9);
                let out = dry_up(&file, "pve1", Flavor::V9);
                assert_eq!(out.status, 0, "{n} hosts: {}", out.stderr);
                let first = out.stdout.lines().next().unwrap_or_default().to_string();
                assert!(
                    first.starts_with("drbdsetup new-resource vm-100-disk-0 0 --auto-promote=no"),
                    "{n} hosts, dual {dual}: {first}"
                );
            }
        }
    }

    /// drbd9-real.md item 9: DRBD 9 metadata gets PEER_SLOTS slots, whatever the file's peers.
    #[test]
    fn v9_create_md_with_peer_slots_is_accepted() {
        assert!(fixture9("drbdadm-dump-md.fresh-md.node1.out").contains("max-peers 2;"), "what drbdadm makes alone");
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for n in [2, 3] {
            let file = write(dir.path(), &plan(n), Flavor::V9);
            let out = RealRunner
                .run(
                    &Cmd::new("drbdadm")
                        .args(["-d", "-c", &file.to_string_lossy(), "--", "--force", "--max-peers=7", "create-md", RES])
                        .env("__DRBD_NODE__", "pve1")
                        .env("DRBD_DRIVER_VERSION_OVERRIDE", "9.2.0"),
                )
                .unwrap();
            assert_eq!(out.status, 0, "{}", out.stderr);
            assert_eq!(out.stdout.trim(), "drbdmeta 1000 v09 /dev/pve/vm-100-disk-0 internal create-md 7 --force");
        }
    }

    #[test]
    fn v84_two_nodes_parsed_by_real_drbdadm() {
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &plan(2), Flavor::V84);
        let out = dry_up(&file, "pve1", Flavor::V84);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let want = [
            "drbdsetup-84 new-resource vm-100-disk-0",
            "drbdsetup-84 new-minor vm-100-disk-0 1000 0",
            "drbdmeta 1000 v08 /dev/pve/vm-100-disk-0 internal apply-al",
            // The resync controller and the activity log: disk options of attach in 8.4.
            "drbdsetup-84 attach 1000 /dev/pve/vm-100-disk-0 /dev/pve/vm-100-disk-0 internal --resync-rate=4194304k --c-min-rate=0k --c-max-rate=4194304k --c-fill-target=1M --c-plan-ahead=20 --discard-zeroes-if-aligned=yes --rs-discard-granularity=65536 --al-updates=yes --al-extents=67 --fencing=resource-and-stonith",
            "drbdsetup-84 connect vm-100-disk-0 ipv4:10.99.1.1:7000 ipv4:10.99.1.2:7000 --protocol=C --cram-hmac-alg=sha256 --shared-secret=Zm9vYmFyYmF6cXV4",
        ];
        assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want);
        // Same command shapes as the real 8.4 lab's `drbdadm -d up r0` (fixture).
        let lab = fixture("drbdadm-sh-nop.out");
        for prefix in
            ["drbdsetup-84 new-resource ", "drbdsetup-84 new-minor ", "drbdsetup-84 attach ", "drbdsetup-84 connect "]
        {
            assert!(lab.contains(prefix) && out.stdout.contains(prefix), "{prefix}");
        }
    }

    /// Issue 18, 2: the activity-log size and the discard-aware resync reach drbdsetup's
    /// attach through the real parser, per flavor, sized by the volume (10 GiB: 320 extents),
    /// and thick backing gets no discard options.
    #[test]
    fn activity_log_and_thin_resync_options_reach_attach() {
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for f in [Flavor::V84, Flavor::V9] {
            let mut p = plan(2);
            p.size_kib = 10 << 20;
            let out = dry_up(&write(dir.path(), &p, f), "pve1", f);
            assert_eq!(out.status, 0, "{}", out.stderr);
            let attach = out.stdout.lines().find(|l| l.contains(" attach ")).unwrap_or_else(|| panic!("{}", out.stdout));
            for want in ["--al-extents=320", "--al-updates=yes", "--rs-discard-granularity=65536", "--discard-zeroes-if-aligned=yes"] {
                assert!(attach.split(' ').any(|w| w == want), "{f:?}: {want} not in {attach}");
            }
            p.thin = false;
            p.resource = "vm-100-disk-0".into();
            let out = dry_up(&write(dir.path(), &p, f), "pve1", f);
            assert_eq!(out.status, 0, "{}", out.stderr);
            let attach = out.stdout.lines().find(|l| l.contains(" attach ")).unwrap();
            assert!(attach.contains("--al-extents=320") && !attach.contains("discard"), "{f:?}: {attach}");
        }
    }

    /// Issue 16: a capped resync (drbdpool-resync-rate-max 110M, -min 20M) in both dialects,
    /// as the real parser passes it to the kernel; a value beyond DRBD's range is refused there,
    /// so these lines are checked, not just copied.
    #[test]
    fn resync_controller_parsed_by_real_drbdadm() {
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut p = plan(2);
        p.resync = crate::store::docs::Resync { max_kib: 110 * 1024, min_kib: 20 * 1024 };
        let opts = "--c-plan-ahead=20 --c-fill-target=1M --c-max-rate=112640k --c-min-rate=20480k --resync-rate=112640k";
        let out = dry_up(&write(dir.path(), &p, Flavor::V9), "pve1", Flavor::V9);
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert!(out.stdout.lines().any(|l| l == format!("drbdsetup peer-device-options vm-100-disk-0 1 0 {opts}")), "{}", out.stdout);
        let out = dry_up(&write(dir.path(), &p, Flavor::V84), "pve1", Flavor::V84);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let attach = out.stdout.lines().find(|l| l.starts_with("drbdsetup-84 attach ")).unwrap_or_default().to_string();
        for o in opts.split(' ') {
            assert!(attach.contains(o), "{o} in {attach}");
        }
        // Three replicas (DRBD 9): every peer device gets them.
        let mut p3 = plan(3);
        p3.resync = p.resync;
        let out = dry_up(&write(dir.path(), &p3, Flavor::V9), "pve3", Flavor::V9);
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert_eq!(out.stdout.lines().filter(|l| l.starts_with("drbdsetup peer-device-options") && l.ends_with(opts)).count(), 2, "{}", out.stdout);
        // The parser checks ranges: 8G is above DRBD's c-max-rate limit.
        let text = render::render(&p, Flavor::V9).unwrap().replace("c-max-rate 112640k;", "c-max-rate 8G;");
        let bad = dir.path().join("bad.res");
        std::fs::write(&bad, text).unwrap();
        let out = dry_up(&bad, "pve1", Flavor::V9);
        assert_ne!(out.status, 0, "drbdadm accepted c-max-rate 8G: {}", out.stdout);
    }

    #[test]
    fn v84_commands_we_run_are_accepted() {
        if !have_drbdadm() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &plan(2), Flavor::V84);
        let f = file.to_string_lossy().to_string();
        for (args, want) in [
            (
                vec!["--", "--clear-bitmap", "new-current-uuid", "vm-100-disk-0/0"],
                "drbdsetup-84 new-current-uuid 1000 --clear-bitmap",
            ),
            (
                vec!["--", "--force", "create-md", RES],
                "drbdmeta 1000 v08 /dev/pve/vm-100-disk-0 internal create-md --force",
            ),
            (vec!["net-options", "--allow-two-primaries=yes", RES], "--allow-two-primaries=yes"),
            (vec!["--", "--assume-clean", "resize", RES], "drbdsetup-84 resize 1000 --assume-clean"),
            (vec!["primary", RES], "drbdsetup-84 primary 1000"),
            (vec!["secondary", RES], "drbdsetup-84 secondary 1000"),
            (vec!["outdate", RES], "drbdsetup-84 outdate 1000"),
            (vec!["get-gi", RES], "drbdsetup-84 get-gi 1000"),
        ] {
            let out = RealRunner
                .run(
                    &Cmd::new("drbdadm")
                        .args(["-d", "-c", &f])
                        .args(args.clone())
                        .env("__DRBD_NODE__", "pve1")
                        .env("DRBD_DRIVER_VERSION_OVERRIDE", "8.4.11"),
                )
                .unwrap();
            assert_eq!(out.status, 0, "{args:?}: {}", out.stderr);
            assert!(out.stdout.contains(want), "{args:?}: {}", out.stdout);
        }
    }

    /// The safe-apply step (render, test with drbdadm, atomic replace) with the real drbdadm,
    /// against a temp main config that includes a temp resource directory.
    fn write_config_with_real_drbdadm(f: Flavor) {
        let dir = tempfile::tempdir().unwrap();
        let res_dir = dir.path().join("drbd.d");
        std::fs::create_dir(&res_dir).unwrap();
        let conf = dir.path().join("drbd.conf");
        std::fs::write(&conf, format!("global {{ usage-count no; }}\ninclude \"{}/*.res\";\n", res_dir.display()))
            .unwrap();
        let adm = DrbdAdm::new_in(Arc::new(RealRunner), &res_dir)
            .with_conf(&conf)
            .with_flavor(f)
            .with_env("__DRBD_NODE__", "pve1")
            .with_env("DRBD_DRIVER_VERSION_OVERRIDE", override_version(f));
        // Fresh.
        assert_eq!(adm.write_config(&plan(2)).unwrap(), (true, None));
        // Unchanged.
        assert!(!adm.write_config(&plan(2)).unwrap().0);
        // Changed (tested against the rest of the configuration, or alone on 8.4).
        let mut p = plan(2);
        p.port = 7005;
        assert!(adm.write_config(&p).unwrap().0);
        assert!(std::fs::read_to_string(adm.res_path(RES)).unwrap().contains(":7005;"));
        // Another resource on the same minor: drbdadm refuses, its file is never written.
        let mut clash = plan(2);
        clash.resource = "vm-101-disk-0".into();
        let e = adm.write_config(&clash).unwrap_err().to_string();
        assert!(e.contains("conflicting use") || e.contains("minor"), "{e}");
        assert!(!adm.res_path("vm-101-disk-0").exists());
        let left: Vec<_> = std::fs::read_dir(&res_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "no temp files left: {left:?}");
    }

    #[test]
    fn v9_write_config_with_real_drbdadm() {
        if have_drbdadm() {
            write_config_with_real_drbdadm(Flavor::V9);
        }
    }

    #[test]
    fn v84_write_config_with_real_drbdadm() {
        if have_drbdadm() {
            write_config_with_real_drbdadm(Flavor::V84);
        }
    }
}

// ---------------------------------------------------------------------------
// Real drbdmeta on a loop device (root only; no kernel module needed):
// apply() creates metadata on an empty device and never again once it exists.

mod real_metadata {
    use super::*;
    use crate::exec::RealRunner;

    /// drbdsetup needs the kernel module: script those calls, run everything else for real.
    struct Hybrid {
        rec: RecordingRunner,
    }
    impl Runner for Hybrid {
        fn run(&self, cmd: &Cmd) -> Result<Output> {
            let out = self.rec.run(cmd)?;
            if cmd.program == "drbdsetup" || cmd.args.iter().any(|a| a == "up") {
                Ok(out)
            } else {
                RealRunner.run(cmd)
            }
        }
    }

    struct Loop {
        dev: String,
        _img: tempfile::NamedTempFile,
    }
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = RealRunner.run(&Cmd::new("losetup").args(["-d", &self.dev]));
        }
    }

    /// Net size of the test's DRBD device, KiB; the loop device is sized as the agent sizes backings.
    const NET: u64 = 64 << 10;

    fn loop_device() -> Option<Loop> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: not root, cannot attach a loop device for the real drbdmeta test");
            return None;
        }
        let img = tempfile::NamedTempFile::new().ok()?;
        img.as_file().set_len(crate::drbd::drbd_backing_kib(NET) * 1024).ok()?;
        let out = RealRunner.run(&Cmd::new("losetup").args(["-f", "--show", &img.path().to_string_lossy()])).ok()?;
        if !out.success() {
            eprintln!("SKIPPED: losetup failed: {}", out.stderr.trim());
            return None;
        }
        Some(Loop { dev: out.stdout.trim().to_string(), _img: img })
    }

    fn run(f: Flavor) {
        if RealRunner.run(&Cmd::new("drbdmeta")).is_err() {
            eprintln!("SKIPPED: drbdmeta is not installed (apt-get install drbd-utils)");
            return;
        }
        let Some(lo) = loop_device() else { return };
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("drbd.conf");
        std::fs::write(&conf, format!("global {{ usage-count no; }}\ninclude \"{}/*.res\";\n", dir.path().display()))
            .unwrap();
        let rec = RecordingRunner::new();
        rec.on(&["drbdsetup", "events2"], Output::ok(DOWN));
        let version = if f == Flavor::V9 { "9.2.0" } else { "8.4.11" };
        let adm = DrbdAdm::new_in(Arc::new(Hybrid { rec: rec.clone() }), dir.path())
            .with_conf(&conf)
            .with_flavor(f)
            .with_env("__DRBD_NODE__", "pve1")
            .with_env("DRBD_DRIVER_VERSION_OVERRIDE", version);
        let mut p = plan(2);
        p.backing = lo.dev.clone();
        // Without a resource file drbdadm cannot look: an error, not a guess.
        assert_eq!(adm.has_metadata(RES).unwrap_err().kind(), "tool");
        assert!(adm.write_config(&p).unwrap().0);
        assert!(!adm.has_metadata(RES).unwrap(), "a zeroed device has no metadata");
        let a = adm.apply(&p).unwrap();
        assert_eq!(a, Applied { created_metadata: true, changed_config: false });
        assert!(adm.has_metadata(RES).unwrap());
        assert!(adm.fresh_metadata(RES).unwrap(), "just-created metadata");
        if f == Flavor::V9 {
            // PEER_SLOTS slots, and the data area still holds the net size drbd_backing_kib was
            // asked for (the loop device is drbd_backing_kib(NET) KiB).
            let dump = RealRunner
                .run(
                    &Cmd::new("drbdadm")
                        .args(["-c", &conf.to_string_lossy(), "dump-md", RES])
                        .env("__DRBD_NODE__", "pve1")
                        .env("DRBD_DRIVER_VERSION_OVERRIDE", version),
                )
                .unwrap();
            assert!(dump.stdout.contains("max-peers 7;"), "{}", dump.stdout);
            let bm_offset: u64 = dump
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("# bm_offset "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no bm_offset in {}", dump.stdout));
            assert!(bm_offset / 1024 >= NET, "data area {} KiB < {NET} KiB", bm_offset / 1024);
        }
        // Second run (e.g. after a reboot, resource down): metadata exists, so no create-md.
        rec.clear();
        let a = adm.apply(&p).unwrap();
        assert_eq!(a, Applied { created_metadata: false, changed_config: false });
        let calls = rec.calls();
        assert!(!calls.iter().any(|c| c.contains("create-md")), "{calls:?}");
        assert!(calls.iter().any(|c| c.ends_with("up vm-100-disk-0")), "{calls:?}");
    }

    #[test]
    fn v9_metadata_created_once_on_a_real_device() {
        run(Flavor::V9);
    }

    #[test]
    fn v84_metadata_created_once_on_a_real_device() {
        run(Flavor::V84);
    }
}
