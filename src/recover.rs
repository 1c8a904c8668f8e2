//! `drbdpool volume force-primary VOL --node N --yes`: disaster recovery (issue 16).
//!
//! After a power loss of the whole cluster in which the node with the newest data never
//! comes back, the survivor's replica is only `Consistent` (DRBD 8.4 cannot know what its
//! dead peer wrote last) or `Outdated` (the peer fenced it, then died), and activation
//! rightly refuses it. This is the one explicit way to accept that data instead of a
//! hand-run `drbdadm primary --force` behind drbdpool's back: it runs on N itself, refuses
//! while any other replica may be reachable, records the decision in the store first (N's
//! outdated mark gone, every other replica marked outdated, `forced` with who and when),
//! and only then makes N's data the good copy (`primary --force; secondary`: a new data
//! generation, UpToDate). The marks keep drbdpool from ever promoting the replicas that
//! were passed over; each one is dropped by N's agent once DRBD shows it resynced from N
//! (drbd/observe.rs healed_outdated). A passed-over node that wrote after N last synced
//! with it comes back in split brain: DRBD keeps its data apart (StandAlone) and nothing
//! discards it without the admin.
//!
//! A crash between the two steps leaves the store saying `forced` while DRBD still shows
//! `Consistent`: running the command again finishes it (each step is idempotent).

use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::replace::AliveSign;
use crate::node::{LocalNode, NodeOps};
use crate::store::docs::{Forced, VolumeDoc, VolumeState};
use crate::store::{Change, Store};

/// What was done, for the command's report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub volume: String,
    pub node: String,
    pub disk_before: String,
    /// The replicas passed over, with when each one's agent last reported (unix seconds).
    pub over: Vec<(String, Option<u64>)>,
}

/// Disk states that hold a whole copy of the data, just not one DRBD can vouch for.
const FORCEABLE: [&str; 2] = ["Consistent", "Outdated"];

pub fn force_primary(store: &Store, local: &LocalNode, vol: &VolumeDoc, node: &str, yes: bool) -> Result<Outcome> {
    let id = format!("{}:{}", vol.storeid, vol.volname);
    let res = &vol.resource;
    if node != local.name() {
        return Err(crate::invalid!(
            "force-primary acts on this node's DRBD: run it on {node} itself (this is {})",
            local.name()
        ));
    }
    if vol.replica(node).is_none() {
        return Err(crate::invalid!(
            "{id} has no replica on {node} (replicas: {})",
            vol.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if vol.state != VolumeState::Ready {
        return Err(crate::refused!("{id} is {:?}, not ready: nothing to recover", vol.state));
    }
    let st = local.status_of(res)?.ok_or_else(|| {
        crate::refused!("{res} is not up on {node}: start drbdpool agent here and wait until `drbdpool status` shows the replica")
    })?;
    let disk = st.devices.first().map(|d| d.disk.clone()).unwrap_or_default();
    if disk == "UpToDate" {
        return Err(crate::refused!("{id} is already UpToDate on {node}: nothing to force; activate it as usual"));
    }
    if !FORCEABLE.contains(&disk.as_str()) {
        return Err(crate::refused!(
            "{id} is {disk} on {node}: that replica does not hold a whole copy of the data; it cannot become the good one"
        ));
    }
    if let Some(c) = st.connections.iter().find(|c| c.connection == "Connected") {
        return Err(crate::refused!(
            "{res} on {node} is Connected to {}: a reachable replica resyncs; force-primary is only for one that is gone",
            c.conn_name
        ));
    }
    let others: Vec<&str> = vol.replicas.iter().map(|r| r.node.as_str()).filter(|n| *n != node).collect();
    let membership = Membership::of_store(store)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let gone = crate::replace::gone_after().as_secs_f64().ceil() as u64;
    let mut over = Vec::new();
    for o in &others {
        let seen = store.node_state(o)?.map(|s| s.updated);
        match crate::replace::alive_sign(o, membership.as_ref(), seen, now, crate::replace::gone_after()) {
            Some(AliveSign::Online) => {
                return Err(crate::refused!(
                    "{o} is online in the cluster membership: its replica of {id} may hold newer data; start its agent so it resyncs, \
                     or shut it down for good first"
                ))
            }
            Some(AliveSign::Reported(age)) => {
                return Err(crate::refused!(
                    "{o}'s agent reported {age}s ago: its replica of {id} may hold newer data; bring it up so it resyncs, \
                     or power it off and run this again after {gone}s"
                ))
            }
            None => {}
        }
        over.push((o.to_string(), seen));
    }
    let lost = if others.is_empty() {
        String::new()
    } else {
        format!(" Whatever {} wrote after {node} last synced with it is given up.", others.join(" and "))
    };
    if !yes {
        return Err(crate::refused!(
            "{id} on {node} is {disk}: force-primary would make it the good copy (a new data generation) and mark {} outdated.{lost} \
             Run it again with --yes to accept that",
            if others.is_empty() { "no other replica".to_string() } else { others.join(", ") }
        ));
    }

    // The store first: once DRBD calls this data good, no passed-over replica may be promoted.
    store.update_volume(vol, |cur| {
        if cur.resource != *res || cur.state != VolumeState::Ready || cur.replica(node).is_none() {
            return Err(Error::Conflict(format!("{id} changed meanwhile; look at `drbdpool volume show {id}` and run this again")));
        }
        cur.outdated.retain(|n| n != node);
        for o in &others {
            if !cur.outdated.iter().any(|n| n == o) {
                cur.outdated.push(o.to_string());
            }
        }
        cur.forced = Some(Forced { node: node.to_string(), at: now, over: others.iter().map(|s| s.to_string()).collect(), disk_before: disk.clone() });
        Ok(Change::Quiet)
    })?
    .ok_or_else(|| Error::NotFound(format!("{id} was removed meanwhile")))?;
    for m in store.fence_marks_of(res)?.iter().filter(|m| m.target == node) {
        store.remove_fence_mark(m)?;
    }
    crate::failpoint!("force-primary.after-store");
    local.force_good_copy(vol)?;
    tracing::warn!(resource = %res, node, disk_before = %disk, over = ?others, "force-primary: this replica is now the good copy");
    Ok(Outcome { volume: id, node: node.to_string(), disk_before: disk, over })
}

pub fn render(o: &Outcome) -> String {
    let mut s = format!(
        "{}: {}'s replica ({} before) is now the good copy: UpToDate, a new data generation; activate it as usual.\n",
        o.volume, o.node, o.disk_before
    );
    for (n, seen) in &o.over {
        s += &format!(
            "  {n} marked outdated (its agent last reported {}): drbdpool never activates it; when it is back it resyncs from {}, \
             or, if it wrote after their last sync, DRBD keeps it apart as a split brain for you to decide.\n",
            seen.map(|t| format!("at unix time {t}")).unwrap_or_else(|| "never".into()),
            o.node
        );
    }
    s
}
