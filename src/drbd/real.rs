//! The real `Replication`: drbdadm/drbdsetup through the exec seam, resource
//! files in a directory (default /etc/drbd.d, included by Debian's
//! /etc/drbd.conf as `drbd.d/*.res`).
//!
//! Safety rules (all proven by the command-sequence tests below):
//! - a candidate file is tested by drbdadm before it replaces the live one;
//!   an unchanged file is not rewritten;
//! - metadata is created only when drbdmeta finds none (`create-md --force`
//!   overwrites existing metadata, so it is never run on a device that has some);
//! - a failed `adjust` puts the previous file back and adjusts again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::events2::{self, Events2State};
use super::openers::{self, Opener};
use super::render::{self, file_name};
use super::version::{self, Flavor};
use super::{Applied, Replication, ResourcePlan, ResourceStatus};
use crate::error::{Error, Result};
use crate::exec::{Cmd, Output, Runner};

pub const DEFAULT_RES_DIR: &str = "/etc/drbd.d";
/// Metadata that was just created and never used: current UUID "just created".
const UUID_JUST_CREATED: &str = "0000000000000004";
/// Bring-up and reconfiguration may wait for the kernel (state changes, peers).
const SLOW: Duration = Duration::from_secs(60);
/// Peer slots in DRBD 9 metadata: room for peers added later (drbdadm would size it for the
/// file's peers only, `max-peers 2` for 3 hosts: tests/fixtures/drbd9-real/drbdadm-dump-md.fresh-md.node1.out).
/// drbd_backing_kib (drbd/mod.rs) reserves the bitmap of this many slots.
pub const PEER_SLOTS: u32 = 7;

pub struct DrbdAdm {
    runner: Arc<dyn Runner>,
    res_dir: PathBuf,
    /// `drbdadm -c <conf>`; None: drbdadm's own default (/etc/drbd.conf).
    conf: Option<PathBuf>,
    proc_drbd: PathBuf,
    flavor: Mutex<Option<Flavor>>,
    /// Extra environment for every drbdadm/drbdsetup call.
    env: Vec<(String, String)>,
    retry_delay: Duration,
    attempts: u32,
    /// Where openers of a device are looked for (DRBD 9: see openers.rs), and the block
    /// devices' queue limits (`sys_block`: a thin backing's discard limit for 8.4, discard.rs).
    open_roots: openers::Roots,
}

impl DrbdAdm {
    /// Resource directory from `DRBDPOOL_RES_DIR` (else /etc/drbd.d), main config from
    /// `DRBDPOOL_DRBD_CONF` (else drbdadm's default). A non-default directory must be
    /// included by the main config.
    pub fn new(runner: Arc<dyn Runner>) -> Self {
        let res_dir = std::env::var_os("DRBDPOOL_RES_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_RES_DIR.into());
        let mut d = Self::new_in(runner, res_dir);
        d.conf = std::env::var_os("DRBDPOOL_DRBD_CONF").map(PathBuf::from);
        d
    }
    /// Explicit resource directory, drbdadm's default main config; ignores the environment.
    pub fn new_in(runner: Arc<dyn Runner>, res_dir: impl Into<PathBuf>) -> Self {
        DrbdAdm {
            runner,
            res_dir: res_dir.into(),
            conf: None,
            proc_drbd: "/proc/drbd".into(),
            flavor: Mutex::new(None),
            env: Vec::new(),
            retry_delay: Duration::from_millis(500),
            attempts: 3,
            open_roots: openers::Roots::default(),
        }
    }
    pub fn with_res_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.res_dir = dir.into();
        self
    }
    pub fn with_conf(mut self, conf: impl Into<PathBuf>) -> Self {
        self.conf = Some(conf.into());
        self
    }
    pub fn with_proc_drbd(mut self, p: impl Into<PathBuf>) -> Self {
        self.proc_drbd = p.into();
        self
    }
    /// Skip detection (tests, or a caller that already asked).
    pub fn with_flavor(self, f: Flavor) -> Self {
        *self.flavor.lock().unwrap() = Some(f);
        self
    }
    pub fn with_env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Look for openers (and queue limits) under these roots instead of /proc and /sys/block (tests).
    pub fn with_open_roots(mut self, roots: openers::Roots) -> Self {
        self.open_roots = roots;
        self
    }
    pub fn with_retry(mut self, attempts: u32, delay: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.retry_delay = delay;
        self
    }

    pub fn res_dir(&self) -> &Path {
        &self.res_dir
    }
    /// The live resource file of `resource`.
    pub fn res_path(&self, resource: &str) -> PathBuf {
        self.res_dir.join(file_name(resource))
    }
    /// Hidden and not ending in .res, so drbd.conf's `*.res` include never sees it;
    /// unique per process and call, so a handler and the agent never share one.
    fn tmp_path(&self, resource: &str) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.res_dir.join(format!(".{}.{}-{n}.tmp", file_name(resource), std::process::id()))
    }

    /// DRBD 9 or 8.4 (asked once, then remembered).
    pub fn flavor(&self) -> Result<Flavor> {
        let mut g = self.flavor.lock().unwrap();
        if let Some(f) = *g {
            return Ok(f);
        }
        let (_, f) = version::detect(self.runner.as_ref(), &self.proc_drbd)?;
        *g = Some(f);
        Ok(f)
    }

    fn adm(&self) -> Cmd {
        let mut c = Cmd::new("drbdadm");
        for (k, v) in &self.env {
            c = c.env(k, v);
        }
        if let Some(conf) = &self.conf {
            c = c.arg("-c").arg(conf.to_string_lossy());
        }
        c
    }

    fn setup(&self) -> Cmd {
        let mut c = Cmd::new("drbdsetup");
        for (k, v) in &self.env {
            c = c.env(k, v);
        }
        c
    }

    /// One consistent snapshot of every resource the kernel knows (events2 works on 9 and 8.4).
    pub fn snapshot(&self) -> Result<Events2State> {
        self.events_now(None)
    }

    /// The kernel's state of `resource` alone (None: not up here). drbdsetup's `events2`
    /// takes a resource name on 9 and on 8.4 (`events2 {resource|all}` in both of
    /// drbd-utils' drbdsetup), so a node with many resources is not read in full for one.
    /// The answer is still picked out by name.
    pub fn snapshot_of(&self, resource: &str) -> Result<Option<ResourceStatus>> {
        Ok(self.events_now(Some(resource))?.resource(resource))
    }

    /// `drbdsetup events2 --now --statistics [resource]`, parsed.
    fn events_now(&self, resource: Option<&str>) -> Result<Events2State> {
        let cmd = self.setup().args(["events2", "--now", "--statistics"]).args(resource);
        let out = self.runner.run(&cmd)?;
        if !out.success() {
            let hint = if out.stderr.contains("modprobe") || out.status == 20 {
                " (is the drbd kernel module loaded? load the drbd module: modprobe drbd)"
            } else {
                ""
            };
            return Err(Error::Tool(format!(
                "`{}` failed (exit {}): {}{hint}",
                cmd.display(),
                out.status,
                out.stderr.trim()
            )));
        }
        let s = events2::parse_now(&out.stdout);
        if s.garbage_lines > 0 || !s.unknown.is_empty() {
            tracing::warn!(garbage = s.garbage_lines, unknown = ?s.unknown, "drbdsetup events2: unexpected output kept/skipped");
        }
        Ok(s)
    }

    /// Who holds the devices of `resource` open, by the kernel's answers (openers.rs).
    pub fn openers_of(&self, st: &ResourceStatus) -> Vec<Opener> {
        let minors: Vec<u32> = st.devices.iter().map(|d| d.minor).collect();
        openers::openers(&self.open_roots, &minors).into_values().flatten().collect()
    }

    /// DRBD 9's tools never say `open` (drbd9-real.md item 1): fill it, and who holds the
    /// device (`extra["opened-by"]`), from the kernel's answers. 8.4 is left as it
    /// reports: there a Secondary cannot be opened, so the Primary role already says it.
    fn fill_open(&self, mut rs: Vec<ResourceStatus>) -> Result<Vec<ResourceStatus>> {
        if self.flavor()? != Flavor::V9 {
            return Ok(rs);
        }
        let minors: Vec<u32> =
            rs.iter().flat_map(|r| r.devices.iter()).filter(|d| d.open.is_none()).map(|d| d.minor).collect();
        let found = openers::openers(&self.open_roots, &minors);
        for d in rs.iter_mut().flat_map(|r| r.devices.iter_mut()).filter(|d| d.open.is_none()) {
            let by = found.get(&d.minor);
            d.open = Some(by.is_some());
            if let Some(by) = by {
                d.extra.insert("opened-by".into(), by.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", "));
            }
        }
        Ok(rs)
    }

    fn is_up(&self, resource: &str) -> Result<bool> {
        Ok(self.snapshot_of(resource)?.is_some())
    }

    /// Does the backing device carry DRBD metadata? (Only asked while the resource is down.)
    /// `get-gi` is cheap but fails silently (exit 1) on a blank device, so a failure is
    /// confirmed with `dump-md`, which says "No valid meta data found". Only that answer
    /// counts as "none": anything unexplained is an error, never a licence to create-md.
    pub fn has_metadata(&self, resource: &str) -> Result<bool> {
        if self.runner.run(&self.adm().args(["get-gi", resource]))?.success() {
            return Ok(true);
        }
        let cmd = self.adm().args(["dump-md", resource]).timeout(SLOW);
        let out = self.runner.run(&cmd)?;
        let text = format!("{}\n{}", out.stdout, out.stderr);
        if out.success() || text.contains("unclean") {
            // Metadata with an unapplied activity log is still metadata (`up` applies it).
            return Ok(true);
        }
        if text.contains("No valid meta data found") {
            return Ok(false);
        }
        Err(Error::Tool(format!(
            "cannot tell whether {resource}'s backing device has DRBD metadata: `{}` failed (exit {}): {}; nothing was created",
            cmd.display(),
            out.status,
            out.stderr.trim()
        )))
    }

    /// Test the candidate file with drbdadm without touching the live one.
    fn test_candidate(&self, flavor: Flavor, resource: &str, tmp: &Path, live_exists: bool) -> Result<()> {
        let tmp_s = tmp.to_string_lossy().to_string();
        let live_s = self.res_path(resource).to_string_lossy().to_string();
        let cmd = match (flavor, live_exists) {
            // 9: the whole configuration with the candidate instead of the live file
            // (also catches minor/port clashes with other resources).
            (Flavor::V9, true) => {
                self.adm().args(["--config-to-test", &tmp_s, "--config-to-exclude", &live_s, "sh-nop"])
            }
            (_, false) => self.adm().args(["--config-to-test", &tmp_s, "sh-nop"]),
            // drbdadm-84 has no --config-to-exclude: test the candidate on its own.
            (Flavor::V84, true) => {
                let mut c = Cmd::new("drbdadm");
                for (k, v) in &self.env {
                    c = c.env(k, v);
                }
                c.args(["-c", &tmp_s, "sh-nop"])
            }
        };
        let out = self.runner.run(&cmd)?;
        if out.success() {
            Ok(())
        } else {
            Err(Error::Tool(format!(
                "drbdadm rejected the generated resource file for {resource} (`{}`, exit {}): {}; the live file was left unchanged",
                cmd.display(),
                out.status,
                out.stderr.trim()
            )))
        }
    }

    /// `create-md --force` (only where has_metadata found none, or on a wipe); on DRBD 9
    /// with PEER_SLOTS peer slots, so a peer added later has room in the bitmap.
    fn create_md(&self, resource: &str) -> Result<()> {
        let c = match self.flavor()? {
            Flavor::V9 => self.adm().args(["--", "--force", &format!("--max-peers={PEER_SLOTS}"), "create-md", resource]),
            Flavor::V84 => self.adm().args(["--", "--force", "create-md", resource]),
        };
        self.run_checked(c.timeout(SLOW)).map(|_| ())
    }

    fn run_checked(&self, cmd: Cmd) -> Result<Output> {
        self.runner.check(&cmd)
    }

    /// `drbdadm resize`, with `--assume-clean` when the new area reads zeroes on every
    /// replica (thin backends): no resync of the grown part.
    pub fn resize_opts(&self, resource: &str, assume_clean: bool) -> Result<()> {
        let mut c = self.adm();
        if assume_clean {
            c = c.args(["--", "--assume-clean"]);
        }
        self.run_checked(c.args(["resize", resource]).timeout(SLOW)).map(|_| ())
    }

    /// Current UUIDs of the local metadata towards every peer (one line per peer on 9).
    fn fresh_metadata(&self, resource: &str) -> Result<bool> {
        let out = self.run_checked(self.adm().args(["get-gi", resource]))?;
        let lines: Vec<&str> = out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        Ok(!lines.is_empty() && lines.iter().all(|l| l.split(':').next() == Some(UUID_JUST_CREATED)))
    }

    /// Render, and if the bytes differ from the live file, test the candidate with
    /// drbdadm and atomically replace the live file. Returns (changed, previous bytes).
    pub fn write_config(&self, plan: &ResourcePlan) -> Result<(bool, Option<Vec<u8>>)> {
        let flavor = self.flavor()?;
        let text = render::render(plan, flavor)?;
        let res = plan.resource.as_str();
        std::fs::create_dir_all(&self.res_dir)
            .map_err(|e| Error::Tool(format!("cannot create {}: {e}", self.res_dir.display())))?;
        let live = self.res_path(res);
        let old = match std::fs::read(&live) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Tool(format!("cannot read {}: {e}", live.display()))),
        };
        if old.as_deref() == Some(text.as_bytes()) {
            return Ok((false, old));
        }
        let tmp = self.tmp_path(res);
        std::fs::write(&tmp, &text).map_err(|e| Error::Tool(format!("cannot write {}: {e}", tmp.display())))?;
        let tested = self.test_candidate(flavor, res, &tmp, old.is_some());
        let _ = std::fs::remove_file(&tmp);
        tested?;
        self.write_live(res, text.as_bytes())?;
        Ok((true, old))
    }

    fn write_live(&self, resource: &str, data: &[u8]) -> Result<()> {
        crate::fsio::write_atomic(&self.res_path(resource), data)
            .map_err(|e| Error::Tool(format!("cannot write the resource file of {resource}: {e}")))
    }
}

impl DrbdAdm {
    fn cap_discard_84(&self, plan: &ResourcePlan) {
        match super::discard::cap_for_84(Path::new(&plan.backing), &self.open_roots.sys_block) {
            Ok(Some((old, new))) => tracing::info!(
                resource = %plan.resource,
                old,
                new,
                "lowered the backing's discard_max_bytes, which DRBD 8.4 would wrap to 0 and then resync this thin replica without discards"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                resource = %plan.resource,
                "{e}: DRBD 8.4 may resync this thin replica without discards, which allocates all of it"
            ),
        }
    }
}

fn retryable(out: &Output, needle: &str) -> bool {
    !out.success() && (out.stderr.contains(needle) || out.stdout.contains(needle))
}

impl DrbdAdm {
    /// `apply`; `blank`: the backing device was just made and reads zeroes (no metadata).
    fn apply_with(&self, plan: &ResourcePlan, blank: bool) -> Result<Applied> {
        let res = plan.resource.as_str();
        let (changed, old) = self.write_config(plan)?;
        crate::failpoint!("agent.after-resource-file");
        let mut applied = Applied { changed_config: changed, ..Default::default() };
        if plan.thin && self.flavor()? == Flavor::V84 {
            // Before the attach (in `up`) and before an adjust: both check rs-discard-granularity
            // against the backing's discard limit, which 8.4 wraps for thin LVs (discard.rs).
            self.cap_discard_84(plan);
        }
        if !self.is_up(res)? {
            // A blank device (just made, reads zeroes) has none: saves get-gi + dump-md.
            if blank || !self.has_metadata(res)? {
                self.create_md(res)?;
                applied.created_metadata = true;
            }
            let cmd = self.adm().args(["up", res]).timeout(SLOW);
            let out = self.runner.run(&cmd)?;
            if !out.success() {
                let hint = if out.stderr.contains("not defined in your config") {
                    format!(
                        " (is {}/*.res included by the main DRBD config, /etc/drbd.conf or DRBDPOOL_DRBD_CONF, \
                         and is this node's name one of the plan's hosts?)",
                        self.res_dir.display()
                    )
                } else {
                    String::new()
                };
                return Err(Error::Tool(format!(
                    "`{}` failed (exit {}): {}{hint}",
                    cmd.display(),
                    out.status,
                    out.stderr.trim()
                )));
            }
            return Ok(applied);
        }
        // Up: adjust even when the file is unchanged, to repair drift (e.g. a dropped connection).
        let adj = self.runner.run(&self.adm().args(["adjust", res]).timeout(SLOW))?;
        if adj.success() {
            return Ok(applied);
        }
        let mut msg = format!("`drbdadm adjust {res}` failed (exit {}): {}", adj.status, adj.stderr.trim());
        if changed {
            match &old {
                Some(prev) => {
                    self.write_live(res, prev)?;
                    let again = self.runner.run(&self.adm().args(["adjust", res]).timeout(SLOW))?;
                    msg.push_str("; the previous resource file was restored");
                    if !again.success() {
                        msg.push_str(&format!(" but adjusting to it failed too: {}", again.stderr.trim()));
                    }
                }
                None => msg.push_str("; there was no previous resource file to restore"),
            }
        }
        Err(Error::Tool(msg))
    }
}

impl Replication for DrbdAdm {
    fn apply(&self, plan: &ResourcePlan) -> Result<Applied> {
        self.apply_with(plan, false)
    }

    fn apply_blank(&self, plan: &ResourcePlan) -> Result<Applied> {
        self.apply_with(plan, true)
    }

    fn down(&self, resource: &str) -> Result<()> {
        let live = self.res_path(resource);
        if let Some(st) = self.snapshot_of(resource)? {
            // DRBD 9 with a read-only opener drops every connection first and only then fails
            // `(-2) Need access to UpToDate data`, leaving the replica up without peers
            // (tests/fixtures/drbd9-real/project.drbdadm-down-held-open-ro.node3.err): look first.
            if self.flavor()? == Flavor::V9 {
                let by = self.openers_of(&st);
                if !by.is_empty() {
                    let by: Vec<String> = by.iter().map(|o| o.to_string()).collect();
                    return Err(Error::Refused(format!(
                        "cannot take {resource} down: its device is open ({}); stop that first (nothing was changed)",
                        by.join(", ")
                    )));
                }
            }
            // Without its file drbdadm no longer knows the resource; drbdsetup does.
            let cmd = if live.exists() { self.adm() } else { self.setup() }.args(["down", resource]).timeout(SLOW);
            let out = self.runner.run(&cmd)?;
            if !out.success() {
                if retryable(&out, "held open") {
                    return Err(Error::Refused(format!(
                        "cannot take {resource} down: its device is still open (a guest or process uses it); stop that first"
                    )));
                }
                return Err(Error::Tool(format!(
                    "`{}` failed (exit {}): {}",
                    cmd.display(),
                    out.status,
                    out.stderr.trim()
                )));
            }
        }
        match std::fs::remove_file(&live) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Tool(format!("cannot remove {}: {e}", live.display()))),
        }
    }

    fn status(&self) -> Result<Vec<ResourceStatus>> {
        self.fill_open(self.snapshot()?.resources())
    }

    fn resource_status(&self, resource: &str) -> Result<Option<ResourceStatus>> {
        Ok(self.fill_open(self.snapshot_of(resource)?.into_iter().collect())?.pop())
    }

    fn promote(&self, resource: &str) -> Result<()> {
        let cmd = self.adm().args(["primary", resource]).timeout(SLOW);
        for attempt in 1..=self.attempts {
            let out = self.runner.run(&cmd)?;
            if out.success() {
                return Ok(());
            }
            // Two-phase commits of DRBD 9 collide now and then: try again.
            if retryable(&out, "Concurrent state changes detected") && attempt < self.attempts {
                std::thread::sleep(self.retry_delay);
                continue;
            }
            let err = out.stderr.trim();
            if err.contains("Multiple primaries not allowed") {
                return Err(Error::Refused(format!(
                    "cannot make {resource} Primary here: it is Primary on another node (two primaries are allowed only \
                     during a live migration); demote it there first. drbdadm said: {err}"
                )));
            }
            // DRBD 9 quorum: tests/fixtures/drbd9-real/drbdadm-primary.no-quorum.node2.err.
            if err.contains("(-25)") || err.contains("No quorum") {
                let seen = err.lines().find(|l| l.contains("for quorum")).map(str::trim);
                return Err(Error::Refused(format!(
                    "cannot make {resource} Primary here: this node has lost DRBD quorum ({}): too few of its replicas are \
                     reachable, and a minority must not write (split brain). drbdadm said: {}",
                    seen.unwrap_or("a majority of the replicas is not reachable"),
                    err.lines().next().unwrap_or(err).trim()
                )));
            }
            if err.contains("UpToDate") || err.contains("Need access to UpToDate data") || err.contains("(-2)") {
                return Err(Error::Refused(format!(
                    "cannot make {resource} Primary here: this replica has no access to UpToDate data. drbdadm said: {err}"
                )));
            }
            return Err(Error::Tool(format!("`{}` failed (exit {}): {err}", cmd.display(), out.status)));
        }
        unreachable!("the loop returns on its last attempt")
    }

    fn demote(&self, resource: &str) -> Result<()> {
        let cmd = self.adm().args(["secondary", resource]).timeout(SLOW);
        for attempt in 1..=self.attempts {
            let out = self.runner.run(&cmd)?;
            if out.success() {
                return Ok(());
            }
            // udev/blkid probes hold the device for a moment after a guest stops: retry those.
            if retryable(&out, "held open") {
                if attempt < self.attempts {
                    std::thread::sleep(self.retry_delay);
                    continue;
                }
                return Err(Error::Refused(format!(
                    "cannot make {resource} Secondary: its device is held open (a running guest or another process uses it); \
                     stop it first. drbdadm said: {}",
                    out.stderr.trim()
                )));
            }
            return Err(Error::Tool(format!(
                "`{}` failed (exit {}): {}",
                cmd.display(),
                out.status,
                out.stderr.trim()
            )));
        }
        unreachable!("the loop returns on its last attempt")
    }

    fn skip_initial_sync(&self, resource: &str) -> Result<()> {
        let r = self.snapshot_of(resource)?.ok_or_else(|| {
            Error::Refused(format!("cannot skip the initial sync of {resource}: it is not up on this node"))
        })?;
        let local_ok = !r.devices.is_empty() && r.devices.iter().all(|d| d.disk == "Inconsistent");
        let peers_ok = !r.connections.is_empty()
            && r.connections.iter().all(|c| {
                c.connection == "Connected"
                    && !c.peer_devices.is_empty()
                    && c.peer_devices.iter().all(|p| p.replication == "Established" && p.peer_disk == "Inconsistent")
            });
        if !local_ok || !peers_ok {
            let disks: Vec<String> = r.devices.iter().map(|d| d.disk.clone()).collect();
            let peers: Vec<String> = r
                .connections
                .iter()
                .map(|c| {
                    let pd: Vec<String> =
                        c.peer_devices.iter().map(|p| format!("{}/{}", p.replication, p.peer_disk)).collect();
                    format!("{} {} {}", c.conn_name, c.connection, pd.join(","))
                })
                .collect();
            return Err(Error::Refused(format!(
                "cannot skip the initial sync of {resource}: it needs every replica connected and Inconsistent with fresh \
                 metadata, but here disk is [{}] and peers are [{}]",
                disks.join(","),
                peers.join("; ")
            )));
        }
        if !self.fresh_metadata(resource)? {
            return Err(Error::Refused(format!(
                "cannot skip the initial sync of {resource}: its metadata has a data history (not just created); \
                 declaring the replicas identical could hide real differences, so a normal sync must run"
            )));
        }
        self.run_checked(
            self.adm().args(["--", "--clear-bitmap", "new-current-uuid", &format!("{resource}/0")]).timeout(SLOW),
        )
        .map(|_| ())
    }

    fn resize(&self, resource: &str, assume_clean: bool) -> Result<()> {
        self.resize_opts(resource, assume_clean)
    }

    /// Our resource files (`drbdpool-<res>.res`), whether the resource is up or not.
    fn max_hosts(&self) -> Result<usize> {
        Ok(self.flavor()?.max_hosts())
    }

    fn configured(&self) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.res_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Tool(format!("cannot list {}: {e}", self.res_dir.display()))),
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("drbdpool-").and_then(|r| r.strip_suffix(".res")).map(str::to_string)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Thick backing: this node's (arbitrary but fresh) data becomes the good copy and a full sync
    /// to the peers starts. Only called by the agent of replicas[0] on fresh metadata.
    /// The same commands as `make_sync_source`: DRBD has one way to make this node's data the good copy.
    fn start_initial_sync(&self, resource: &str) -> Result<()> {
        self.make_sync_source(resource)
    }

    /// `create-md --force` needs the resource file (and the resource down, checked first).
    fn wipe_metadata(&self, plan: &ResourcePlan) -> Result<()> {
        let res = plan.resource.as_str();
        if self.is_up(res)? {
            return Err(Error::Refused(format!("{res}: still up; take it down before recreating its metadata")));
        }
        self.write_config(plan)?;
        self.create_md(res)
    }

    fn make_sync_source(&self, resource: &str) -> Result<()> {
        self.run_checked(self.adm().args(["primary", "--force", resource]).timeout(SLOW))?;
        self.run_checked(self.adm().args(["secondary", resource]).timeout(SLOW)).map(|_| ())
    }

    fn outdate(&self, resource: &str) -> Result<()> {
        let cmd = self.adm().args(["outdate", resource]).timeout(SLOW);
        let out = self.runner.run(&cmd)?;
        if out.success() {
            return Ok(());
        }
        // DRBD 9 outdates only a replica it is not using: on a connected one drbdmeta says
        // `Device '1000' is configured!` (exit 20, tests/fixtures/drbd9-real/project.drbdadm-outdate.node3.err).
        if out.stderr.contains("is configured") {
            return Err(Error::Refused(format!(
                "cannot outdate {resource} here: it is up (DRBD outdates a replica that is up only through its \
                 connected peers); take it down first. drbdadm said: {}",
                out.stderr.lines().next().unwrap_or("").trim()
            )));
        }
        Err(Error::Tool(format!("`{}` failed (exit {}): {}", cmd.display(), out.status, out.stderr.trim())))
    }

    /// Allow or forbid two primaries at runtime (live-migration window), without
    /// touching the file: the next `apply` makes the file's value win again.
    fn set_dual_primary(&self, resource: &str, on: bool) -> Result<()> {
        let v = if on { "--allow-two-primaries=yes" } else { "--allow-two-primaries=no" };
        self.run_checked(self.adm().args(["net-options", v, resource]).timeout(SLOW)).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod rollback_tests;
