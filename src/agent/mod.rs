//! `drbdpool agent`: the reconciling service on every node (systemd unit
//! contrib/drbdpool-agent.service).
//!
//! Every `interval` (default 1 s) it polls the cluster store (pmxcfs and 9p
//! give no cross-node inotify), at once whenever `drbdsetup events2` reports
//! a DRBD state change here, and within WAKE_CHECK (200 ms) when a writer of a
//! volume document pokes this node's `wake/<node>` file (store/wake.rs); for every
//! volume of which this node is a replica:
//! - `creating`/`ready`: creates or grows the backing device, writes the
//!   resource file and brings it up (only when the doc's generation changed or
//!   the resource is not up); `replicas[0]` skips the initial sync of fresh
//!   thin replicas once all are connected (thick: starts a full sync from
//!   itself), and runs `drbdadm resize` once every replica reports the new
//!   generation;
//!   it follows the document's snapshots (takes missing ones younger than
//!   SNAP_CATCHUP_SECS, of UpToDate data only; deletes removed ones) and lists
//!   them in its published state; a linked clone's backing is made from the
//!   base's with fresh metadata; the initial-sync skip is for `creating` only;
//! - a rollback marked on another node: takes the replica down with fresh
//!   metadata (never while Primary/open), publishes disk `Discarded` and stays
//!   down until the mark is gone, then comes up for a full sync;
//! - `deleting`: takes the replica down and deletes its backing device, unless
//!   it is open or Primary (Invariant 2: refused and reported);
//! - resources configured here that no document wants are taken down (never
//!   when open or Primary; their backing devices are kept and logged);
//! - a `deleting` document that no node's NodeState lists any more is removed.
//!
//! Then it publishes this node's NodeState (`state/<node>.json`): space per
//! storage and per-volume role/disk/open/size/peers/ready/generation/error,
//! written only when the content changed (space: by more than 0.5 %), plus a
//! heartbeat every 60 s. A failing volume gets its `error` and does not stop
//! the others. Every step is idempotent: a restart at any moment is safe.
//!
//! What it does to this node's disks and DRBD resources is node/ (LocalNode); the DRBD
//! side is chosen there: `DRBDPOOL_DRBD=real` (default: drbdadm) or `sim` (SimDrbd, state
//! under `DRBDPOOL_SIM_DIR`, for machines without the DRBD module).

pub mod ha_sync;
pub mod reconcile;

use std::sync::Arc;
use std::time::Duration;

pub use reconcile::{Agent, HEARTBEAT_SECS};

use crate::error::Result;
use crate::exec::RealRunner;
use crate::node::LocalNode;
use crate::store::{wake, Store};

pub struct AgentOpts {
    pub store: Store,
    pub node: String,
    pub once: bool,
    pub interval: Duration,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9943); off when None.
    pub metrics_addr: Option<String>,
}

/// Run the agent: one pass (`once`) or forever.
pub fn run(opts: AgentOpts) -> Result<()> {
    let local = LocalNode::from_env(&opts.store, &opts.node)?;
    run_with(opts, local)
}

/// `run` with a given LocalNode (tests map backends per node).
pub fn run_with(opts: AgentOpts, local: LocalNode) -> Result<()> {
    let mut agent = Agent::new(opts.store.clone(), local);
    let mut ha = ha_sync::HaSync::from_env(Arc::new(RealRunner));
    let metrics = match &opts.metrics_addr {
        Some(addr) => {
            let data = Arc::new(std::sync::Mutex::new(crate::metrics::MetricsData {
                node: opts.node.clone(),
                state: None,
                volumes: Vec::new(),
                health: crate::metrics::AgentHealth { last_reconcile_ok: None, reconcile_errors: 0, up: true },
            }));
            crate::metrics::serve(addr, data.clone())?;
            tracing::info!(%addr, "serving Prometheus metrics on /metrics");
            Some(data)
        }
        None => None,
    };
    // DRBD state changes wake the loop at once; polling stays the backstop (and the only
    // trigger for store changes: pmxcfs has no cross-node notification).
    let (wake_tx, wake) = std::sync::mpsc::channel::<()>();
    if !opts.once && std::env::var("DRBDPOOL_DRBD").map(|v| v.is_empty() || v == "real").unwrap_or(true) {
        crate::drbd::events2::watch(wake_tx);
    }
    let mut poked = wake::WakeWatch::new(&opts.store, &opts.node);
    tracing::info!(node = %opts.node, interval = ?opts.interval, ha = ha.is_some(), "agent started");
    loop {
        let result = agent.pass();
        if let Some(m) = &metrics {
            update_metrics(m, &opts, result.is_ok());
        }
        match result {
            Ok(()) => {}
            Err(e) if opts.once => return Err(e),
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed; retrying"),
        }
        if let Some(ha) = ha.as_mut() {
            ha.maybe_run(&opts.store);
        }
        fold_list_indexes(&opts.store);
        if opts.once {
            return Ok(());
        }
        wait_for_work(&wake, &mut poked, opts.interval);
    }
}

/// Sleep until the next round, a DRBD event (then drain the burst of events), or a
/// poke in this node's wake file (checked every WAKE_CHECK: a local read on pmxcfs).
fn wait_for_work(events: &std::sync::mpsc::Receiver<()>, poked: &mut wake::WakeWatch, interval: Duration) {
    use std::sync::mpsc::RecvTimeoutError;
    let until = std::time::Instant::now() + interval;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match events.recv_timeout(left.min(wake::WAKE_CHECK)) {
            Ok(()) => {
                std::thread::sleep(Duration::from_millis(50));
                while events.try_recv().is_ok() {}
                return;
            }
            // No event watcher (sim, --once): the wake file alone.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(left.min(wake::WAKE_CHECK)),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if poked.changed() {
            tracing::debug!("woken by a store change for this node");
            return;
        }
    }
}

/// Keep each storage's list index current (store/index.rs): cheap when nothing
/// changed (one directory listing per storage); another node's agent may be at it.
fn fold_list_indexes(store: &crate::store::Store) {
    for sid in store.storeids().unwrap_or_default() {
        match store.compact_index(&sid) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(storeid = %sid, volumes = n, "list index updated"),
            Err(e) => tracing::warn!(storeid = %sid, error = %e, "cannot update the list index; `list` reads the documents meanwhile"),
        }
    }
}

/// Refresh what /metrics serves from what this pass published.
fn update_metrics(m: &std::sync::Mutex<crate::metrics::MetricsData>, opts: &AgentOpts, ok: bool) {
    let state = opts.store.node_state(&opts.node).ok().flatten();
    let volumes = opts.store.all_volumes().unwrap_or_default();
    let mut d = m.lock().unwrap_or_else(|p| p.into_inner());
    if ok {
        d.health.last_reconcile_ok = Some(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    } else {
        d.health.reconcile_errors += 1;
    }
    d.state = state;
    d.volumes = volumes;
}
