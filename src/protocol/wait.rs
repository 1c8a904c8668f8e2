//! Bounded waits on other nodes' agents, which publish their observed state in
//! `state/<node>.json`. Never wait without a bound: PVE holds its storage lock
//! for at most 60 s around alloc/free.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::store::docs::{NodeState, VolumeObserved};
use crate::store::Store;

/// The published view of `resource` on each of `nodes` (None: no state or not listed).
pub fn published(store: &Store, nodes: &[String], resource: &str) -> Result<BTreeMap<String, Option<VolumeObserved>>> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let v = store.node_state_of(n, resource)?.and_then(|s: NodeState| s.volumes.get(resource).cloned());
        out.insert(n.clone(), v);
    }
    Ok(out)
}

/// Wait (bounded) until `done` holds for what each of `nodes` published about
/// `resource` (None: nothing published); returns the nodes still not done.
pub fn until_published(
    store: &Store,
    nodes: &[String],
    resource: &str,
    timeout: Duration,
    poll: Duration,
    what: &str,
    done: impl Fn(Option<&VolumeObserved>) -> bool,
) -> Result<Vec<String>> {
    until_done(timeout, poll, what, || {
        Ok(published(store, nodes, resource)?.into_iter().filter(|(_, o)| !done(o.as_ref())).map(|(n, _)| n).collect())
    })
}

/// Poll `pending` until it returns an empty list (done) or `timeout` passes; returns
/// the nodes still pending at the end. `what` is logged while waiting.
pub fn until_done(
    timeout: Duration,
    poll: Duration,
    what: &str,
    mut pending: impl FnMut() -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    let start = Instant::now();
    let mut logged: Option<Vec<String>> = None;
    let mut progress = Progress::new(start);
    loop {
        let p = pending()?;
        if p.is_empty() {
            return Ok(p);
        }
        if logged.as_ref() != Some(&p) {
            tracing::info!("waiting up to {}s for {what} on {}", timeout.as_secs(), p.join(", "));
            logged = Some(p.clone());
        }
        if progress.due(Instant::now()) {
            eprintln!("{}", progress_line(what, &p, start.elapsed(), timeout));
        }
        if start.elapsed() >= timeout {
            return Ok(p);
        }
        std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())).max(Duration::from_millis(1)));
    }
}

/// A wait that lasts is progress an admin wants in the task log (the shim passes plain
/// lines through and drops routine INFO lines): first after PROGRESS_AFTER, then every
/// PROGRESS_EVERY. Most waits (an alloc's peers) end well before.
pub const PROGRESS_AFTER: Duration = Duration::from_secs(3);
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

struct Progress {
    start: Instant,
    last: Option<Instant>,
}

impl Progress {
    fn new(start: Instant) -> Self {
        Progress { start, last: None }
    }

    fn due(&mut self, now: Instant) -> bool {
        let due = match self.last {
            None => now.duration_since(self.start) >= PROGRESS_AFTER,
            Some(t) => now.duration_since(t) >= PROGRESS_EVERY,
        };
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// A plain line (not a log line: the shim shows it in the task log).
fn progress_line(what: &str, pending: &[String], elapsed: Duration, timeout: Duration) -> String {
    format!(
        "drbdpool: still waiting for {what} on {} ({}s so far, at most {}s more)",
        pending.join(", "),
        elapsed.as_secs(),
        timeout.saturating_sub(elapsed).as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_for_waits_that_last() {
        let t0 = Instant::now();
        let mut p = Progress::new(t0);
        assert!(!p.due(t0 + Duration::from_millis(2900)), "a short wait prints nothing");
        assert!(p.due(t0 + PROGRESS_AFTER));
        assert!(!p.due(t0 + PROGRESS_AFTER + Duration::from_secs(9)));
        assert!(p.due(t0 + PROGRESS_AFTER + PROGRESS_EVERY));
        let l = progress_line("the replica of dp:vm-100-disk-0 to be ready", &["pve2".into()], Duration::from_secs(3), Duration::from_secs(45));
        assert_eq!(l, "drbdpool: still waiting for the replica of dp:vm-100-disk-0 to be ready on pve2 (3s so far, at most 42s more)");
        // Not in the helper's log format, which the shim drops below WARN.
        assert!(!l.chars().next().unwrap().is_ascii_digit());
    }
}
