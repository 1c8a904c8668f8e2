//! The agent's HA step: keep Proxmox HA node-affinity rules pointing at nodes
//! with good (UpToDate, not outdated) replicas (decisions in `crate::ha`). One agent in the cluster
//! does it at a time (cluster lock `drbdpool-ha`, not waited for); it runs every
//! `every` and writes only what changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::exec::Runner;
use crate::ha;
use crate::store::Store;

pub struct HaSync {
    /// Directory of resources.cfg / rules.cfg (read only).
    pub dir: PathBuf,
    /// The `ha-manager` command (a recording stand-in in tests).
    pub ha_manager: String,
    pub runner: Arc<dyn Runner>,
    pub every: Duration,
    /// strict node-affinity: DRBD 8.4 cannot attach diskless, so a guest must only run on a replica node.
    pub strict: bool,
    last: Option<Instant>,
    last_conflicts: Vec<String>,
}

impl HaSync {
    /// From the environment: `DRBDPOOL_HA=off` disables; `DRBDPOOL_HA_DIR` (default /etc/pve/ha) must exist,
    /// `DRBDPOOL_HA_MANAGER` (default ha-manager).
    pub fn from_env(runner: Arc<dyn Runner>) -> Option<HaSync> {
        if std::env::var("DRBDPOOL_HA").as_deref() == Ok("off") {
            return None;
        }
        let dir = PathBuf::from(std::env::var("DRBDPOOL_HA_DIR").unwrap_or_else(|_| "/etc/pve/ha".into()));
        if !dir.is_dir() {
            return None;
        }
        let ha_manager = std::env::var("DRBDPOOL_HA_MANAGER").unwrap_or_else(|_| "ha-manager".into());
        Some(HaSync::new(dir, ha_manager, runner))
    }

    pub fn new(dir: PathBuf, ha_manager: String, runner: Arc<dyn Runner>) -> HaSync {
        HaSync { dir, ha_manager, runner, every: Duration::from_secs(10), strict: true, last: None, last_conflicts: Vec::new() }
    }

    /// One sync if it is due and no other agent is doing it.
    pub fn maybe_run(&mut self, store: &Store) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let guard = match store.lock_timeout("drbdpool-ha", Duration::from_millis(200)) {
            Ok(g) => g,
            Err(_) => return, // another node's agent is at it
        };
        match self.sync(store) {
            Ok(rep) => {
                for id in rep.added.iter().chain(&rep.changed).chain(&rep.removed) {
                    tracing::info!(rule = %id, "HA node-affinity rule updated");
                }
                if rep.conflicts != self.last_conflicts {
                    for c in &rep.conflicts {
                        tracing::warn!("HA: {c}");
                    }
                    self.last_conflicts = rep.conflicts;
                }
            }
            Err(e) => tracing::warn!(error = %e, "HA rule sync failed; will retry"),
        }
        drop(guard);
    }

    pub fn sync(&self, store: &Store) -> Result<ha::SyncReport> {
        let resources = ha::read_optional(&self.dir.join("resources.cfg"))?;
        let rules = ha::read_optional(&self.dir.join("rules.cfg"))?;
        let guests = ha::ha_guests(&resources);
        let (want, mut conflicts) = ha::desired_rules(&guests, &store.all_volumes()?, &store.node_states()?, self.strict);
        let (want, fit) = ha::fit_resource_affinity(want, &rules);
        conflicts.extend(fit);
        ha::sync_rules(self.runner.as_ref(), &self.ha_manager, &rules, &want, conflicts)
    }
}
