//! A cheap cross-node change signal for the agent: `wake/<node>` in the store.
//!
//! pmxcfs (and the lab's 9p share) gives no notification of another node's writes,
//! so the agent polls. A full reconcile pass costs several tool calls, so it runs
//! only every `--interval`; in between the agent reads this one small file every
//! WAKE_CHECK (a local read on pmxcfs) and reconciles at once when it changed.
//! Whoever writes a volume document that a node must act on (alloc, free, resize)
//! pokes that node's file: one small write per changed document and node, next to
//! the document write itself, so pmxcfs sees no high-frequency traffic. The signal
//! is only a hint: a lost or stale poke costs at most one `--interval`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{write_atomic, Store};

/// How often the agent reads its wake file between passes.
pub const WAKE_CHECK: Duration = Duration::from_millis(200);

fn path(store: &Store, node: &str) -> PathBuf {
    store.root().join("wake").join(node)
}

/// Ask `node`'s agent to reconcile now. Best effort: a failure only costs latency.
pub fn poke(store: &Store, node: &str, why: &str) {
    let p = path(store, node);
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let r = std::fs::create_dir_all(p.parent().expect("wake path has a parent"))
        .map_err(|e| crate::error::Error::Store(format!("cannot create {}: {e}", p.display())))
        .and_then(|_| write_atomic(&p, format!("{stamp} {why}\n").as_bytes()));
    if let Err(e) = r {
        tracing::debug!(node, error = %e, "could not poke the agent (it reconciles at its next interval)");
    }
}

/// The agent's side: remembers the last content seen.
pub struct WakeWatch {
    path: PathBuf,
    last: Option<Vec<u8>>,
}

impl WakeWatch {
    pub fn new(store: &Store, node: &str) -> WakeWatch {
        let path = path(store, node);
        let last = std::fs::read(&path).ok();
        WakeWatch { path, last }
    }

    /// True when the file changed since the last call (or since `new`).
    pub fn changed(&mut self) -> bool {
        let now = std::fs::read(&self.path).ok();
        if now.is_some() && now != self.last {
            self.last = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poke_is_seen_once_and_only_by_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut a = WakeWatch::new(&store, "node1");
        let mut b = WakeWatch::new(&store, "node2");
        assert!(!a.changed(), "no poke yet");
        poke(&store, "node1", "test");
        assert!(a.changed());
        assert!(!a.changed(), "the same poke is reported once");
        assert!(!b.changed(), "node2 was not poked");
        std::thread::sleep(Duration::from_millis(2));
        poke(&store, "node1", "test");
        assert!(a.changed(), "a second poke is seen again");
    }
}
