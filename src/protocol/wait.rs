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
        let v = store.node_state(n)?.and_then(|s: NodeState| s.volumes.get(resource).cloned());
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
    loop {
        let p = pending()?;
        if p.is_empty() {
            return Ok(p);
        }
        if logged.as_ref() != Some(&p) {
            tracing::info!("waiting up to {}s for {what} on {}", timeout.as_secs(), p.join(", "));
            logged = Some(p.clone());
        }
        if start.elapsed() >= timeout {
            return Ok(p);
        }
        std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())).max(Duration::from_millis(1)));
    }
}
