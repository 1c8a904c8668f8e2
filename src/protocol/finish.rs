//! The second half of an alloc or linked clone, outside PVE's storage lock
//! (`Creation::Background`): `drbdpool finish-create`, started detached by the call
//! that recorded the volume, makes this node's replica, waits for the peers', skips
//! the initial sync and marks the volume `ready`, or rolls it back, exactly as an
//! inline alloc does (volume::finish_or_roll_back is the one home of those steps).
//! Activation and the other methods that need a ready volume wait for it (load_created
//! in protocol/mod.rs).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::store::docs::{VolumeDoc, VolumeState};

use super::Ctx;

/// Where the detached creations write their log: `DRBDPOOL_CREATE_LOG`, else
/// /var/log/drbdpool/create.log. The PVE task that started one has ended by the time it
/// finishes, so its warnings and a roll-back's reason are kept here.
pub fn log_path() -> PathBuf {
    std::env::var_os("DRBDPOOL_CREATE_LOG").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/log/drbdpool/create.log"))
}

/// The finishers run at this niceness (and the tools they start with them): the next alloc,
/// holding PVE's storage lock, goes first. In the lab (1 vCPU, software emulation) ten
/// finishers at the caller's priority stretched the lock hold of the later allocs from 0.3 s to
/// 2.3 s, and 3 of 10 parallel allocs hit "got lock request timeout" (docs/BENCHMARKS.md, issue 16).
pub const FINISH_NICE: i32 = 19;

/// Start `drbdpool finish-create` for `doc`, detached: its own process group (the shim
/// kills the helper's group when a call runs over; this one must outlive the call), no
/// stdin/stdout (the shim reads the helper's stdout to its end), stderr to `log_path()`.
pub fn spawn(ctx: &Ctx, doc: &VolumeDoc, budget: Duration) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::Tool(format!("cannot find this program's own path to start finish-create: {e}")))?;
    let log = log_path();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let stderr = match OpenOptions::new().create(true).append(true).open(&log) {
        Ok(f) => Stdio::from(f),
        Err(e) => {
            tracing::warn!("cannot open {} ({e}): the background creation of {} logs nowhere", log.display(), doc.resource);
            Stdio::null()
        }
    };
    let mut cmd = Command::new(exe);
    // SAFETY: nice(2) only, between fork and exec; its result is ignored (a failure leaves the
    // finisher at the caller's priority, which is merely slower for the next lock holder).
    unsafe {
        cmd.pre_exec(|| {
            libc::nice(FINISH_NICE);
            Ok(())
        });
    }
    let child = cmd
        .arg("--store")
        .arg(ctx.store.root())
        .arg("--node")
        .arg(ctx.node.name())
        .args(["finish-create", &doc.storeid, &doc.volname, &doc.resource])
        .arg("--budget-ms")
        .arg(budget.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Tool(format!("cannot start `drbdpool finish-create` for {}: {e}", doc.resource)))?;
    tracing::debug!(resource = %doc.resource, pid = child.id(), "creation continues in the background");
    Ok(())
}

/// `drbdpool finish-create STOREID VOLNAME RESOURCE`: finish what the call recorded. Nothing
/// to do when the document is gone, is another volume by now (same name, other resource) or
/// is no longer `creating` (a free or an agent's expiry rolled it back; another finisher
/// marked it ready). On failure the volume is rolled back, as an inline alloc would. The
/// budget is `ctx.alloc_budget`, from now.
pub fn run(ctx: &Ctx, storeid: &str, volname: &str, resource: &str) -> Result<()> {
    let deadline = Instant::now() + ctx.alloc_budget;
    let Some(doc) = ctx.store.volume(storeid, volname)? else {
        tracing::info!("{storeid}:{volname} is gone; nothing to finish");
        return Ok(());
    };
    if doc.resource != resource || doc.state != VolumeState::Creating {
        tracing::info!("{storeid}:{volname} is {:?} as {}; nothing to finish for {resource}", doc.state, doc.resource);
        return Ok(());
    }
    let t0 = Instant::now();
    match super::volume::finish_or_roll_back(ctx, &doc, deadline) {
        Ok(()) => {
            tracing::info!(resource = %doc.resource, ms = t0.elapsed().as_millis() as u64, "{storeid}:{volname} created: ready");
            Ok(())
        }
        Err(e) => {
            tracing::error!(resource = %doc.resource, "{storeid}:{volname} could not be created and was rolled back: {e}");
            Err(e)
        }
    }
}
