//! `drbdpool node replace OLD NEW`: a node that is gone for good hands its replicas to
//! another node (issue 16).
//!
//! Only the store changes here. For every volume with a replica on OLD the document drops
//! OLD and lists NEW (last in placement order, with a DRBD node id the resource never used
//! for OLD), its generation bumped; the agents then do what they do for any change of
//! desired state: each survivor re-renders the resource file and runs `drbdadm adjust`
//! (DRBD 8.4: the one peer changes; DRBD 9: a peer goes, one comes), NEW's agent creates
//! the backing device and fresh metadata, and DRBD syncs NEW in full from the UpToDate
//! replica. A crash or a kill at any point leaves each document either as it was or
//! replaced (one write per volume, under its lock); running the command again finishes the
//! rest.
//!
//! Refused as a whole, changing nothing, while OLD may be alive: it is in the quorate
//! membership, its agent published within `gone_after`, or a survivor's DRBD still shows
//! it Connected. A live OLD could hold data newer than the survivors', and its agent would
//! take its replicas down under a running guest's feet. A volume is left as it is, and
//! named, when no other replica is known UpToDate (OLD may have had the only good copy),
//! while it is being created or deleted or live-migrated, or when NEW already holds one
//! of its replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::store::alloc::{MAX_NODE_ID, PORTS};
use crate::store::docs::{NodeDoc, NodeState, Replica, VolumeDoc, VolumeState};
use crate::store::lock::ALLOC_LOCK;
use crate::store::{Change, Store};

/// A live agent writes its state at least every 60 s (reconcile::HEARTBEAT_SECS): a node
/// that published within twice that, and some slack, counts as reporting.
pub const REPORTS_WITHIN: Duration = Duration::from_secs(150);

/// How long OLD must have been silent to be taken as gone: REPORTS_WITHIN, or
/// `DRBDPOOL_NODE_GONE_SECS` (the lab kills a node and goes on at once).
pub fn gone_after() -> Duration {
    std::env::var("DRBDPOOL_NODE_GONE_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(REPORTS_WITHIN)
}

/// Why a node may still be alive (node replace and force-primary both refuse then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliveSign {
    /// Online in the quorate membership.
    Online,
    /// Its agent reported this many seconds ago, less than `gone_after`.
    Reported(u64),
}

/// Whether `node` may be alive by the membership and its agent's last report (`updated`,
/// unix seconds; None: never reported). None: it looks gone.
pub fn alive_sign(node: &str, membership: Option<&Membership>, updated: Option<u64>, now: u64, gone_after: Duration) -> Option<AliveSign> {
    if membership.is_some_and(|m| m.online.get(node) == Some(&true)) {
        return Some(AliveSign::Online);
    }
    let age = now.saturating_sub(updated?);
    (age < gone_after.as_secs_f64().ceil() as u64).then_some(AliveSign::Reported(age))
}

/// One volume that moves from OLD to NEW.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Move {
    pub storeid: String,
    pub volname: String,
    pub resource: String,
    pub size_kib: u64,
    /// The UpToDate replica that NEW syncs from.
    pub source: String,
    /// NEW's DRBD node id in this resource.
    pub node_id: u8,
    /// The resource's port, when it must change (NEW already listens on the old one).
    pub port: Option<u16>,
}

/// A volume left as it is, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skip {
    pub volume: String,
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub skipped: Vec<Skip>,
}

/// What the plan is made from: the store as read under the alloc lock.
pub struct Inputs<'a> {
    pub old: &'a str,
    pub new: &'a str,
    /// Every volume document, with the fence marks merged in (`outdated`).
    pub docs: &'a [VolumeDoc],
    pub nodes: &'a [NodeDoc],
    pub states: &'a [NodeState],
    pub membership: Option<&'a Membership>,
    pub now: u64,
    pub gone_after: Duration,
}

impl Inputs<'_> {
    /// A survivor's or NEW's state is recent enough to go by.
    fn fresh(&self, s: &NodeState) -> bool {
        self.now.saturating_sub(s.updated) < REPORTS_WITHIN.as_secs()
    }
    fn state(&self, node: &str) -> Option<&NodeState> {
        self.states.iter().find(|s| s.node == node)
    }
}

/// Decide what moves. An error: nothing may move (OLD may be alive, NEW cannot take it).
pub fn plan(i: &Inputs) -> Result<Plan> {
    let (old, new) = (i.old, i.new);
    if old == new {
        return Err(crate::invalid!("node replace needs two different nodes, got {old} twice"));
    }
    if !i.nodes.iter().any(|n| n.name == new) {
        return Err(Error::NotFound(format!("node {new} is not registered: add it first with `drbdpool node add {new} --address <ip>`")));
    }
    let Some(new_state) = i.state(new).filter(|s| i.fresh(s)) else {
        return Err(crate::refused!(
            "node {new}'s agent has not reported in the last {}s: start it there (systemctl start drbdpool-agent) and run this again",
            REPORTS_WITHIN.as_secs()
        ));
    };
    check_gone(i)?;

    let mut out = Plan::default();
    let mut need: BTreeMap<&str, u64> = BTreeMap::new();
    // The documents as the planned moves leave them: a port picked for one move is taken
    // for the next.
    let mut world: Vec<VolumeDoc> = i.docs.to_vec();
    for (at, v) in i.docs.iter().enumerate().filter(|(_, v)| v.replica(old).is_some()) {
        let id = format!("{}:{}", v.storeid, v.volname);
        let skip = |why: String| Skip { volume: id.clone(), why };
        if v.state == VolumeState::Deleting {
            continue; // being freed: its replica on OLD goes with the document
        }
        if v.state == VolumeState::Creating {
            out.skipped.push(skip("still being created; run this again once its alloc finished or was rolled back".into()));
            continue;
        }
        if v.replica(new).is_some() {
            out.skipped.push(skip(format!("{new} already holds one of its replicas; replace {old} with another node for this volume")));
            continue;
        }
        if v.dual_primary.is_some() {
            out.skipped.push(skip("a live migration window is open; run this again when the migration is over".into()));
            continue;
        }
        let Some(source) = source_of(i, v) else {
            out.skipped.push(skip(format!(
                "no other replica is known UpToDate ({}): {old} may have had the only good copy; bring {old} back if you can, \
                 or accept a survivor's data explicitly, then run this again",
                survivors_seen(i, v)
            )));
            continue;
        };
        *need.entry(v.storeid.as_str()).or_default() += v.size_kib * 1024;
        let m = Move {
            storeid: v.storeid.clone(),
            volname: v.volname.clone(),
            resource: v.resource.clone(),
            size_kib: v.size_kib,
            source,
            node_id: new_node_id(v, old)?,
            port: new_port(v, Some(old), new, &world)?,
        };
        moved(&mut world[at], &m, old, new);
        out.moves.push(m);
    }
    // A full sync writes every block on NEW (thin pools included): it needs the whole size.
    for (sid, bytes) in need {
        match new_state.storages.get(sid) {
            Some(sp) if sp.avail >= bytes => {}
            Some(sp) => {
                return Err(crate::refused!(
                    "node {new} has {} free in storage {sid} but the replicas from {old} need {}: free space there or replace {old} with a node that has room",
                    crate::cli::human(sp.avail),
                    crate::cli::human(bytes)
                ))
            }
            None => {
                return Err(crate::refused!(
                    "node {new} reports no space for storage {sid}: is the storage's backend (volume group, thin pool or directory) set up there?"
                ))
            }
        }
    }
    Ok(out)
}

/// OLD must look dead: out of the membership, silent, and no survivor connected to it.
fn check_gone(i: &Inputs) -> Result<()> {
    let old = i.old;
    match alive_sign(old, i.membership, i.state(old).map(|s| s.updated), i.now, i.gone_after) {
        Some(AliveSign::Online) => {
            return Err(crate::refused!(
                "node {old} is online in the cluster membership ({}): node replace is for a node that is gone for good; \
                 shut it down first (a node in maintenance keeps its replicas)",
                i.membership.map(|m| m.source.display().to_string()).unwrap_or_default()
            ))
        }
        Some(AliveSign::Reported(age)) => {
            return Err(crate::refused!(
                "node {old}'s agent reported {age}s ago: it may be alive; node replace is for a node that is gone for good. \
                 Stop it (or wait {}s after it died) and run this again",
                i.gone_after.as_secs()
            ))
        }
        None => {}
    }
    for s in i.states.iter().filter(|s| s.node != old && i.fresh(s)) {
        if let Some((res, _)) = s.volumes.iter().find(|(_, o)| o.peers.iter().any(|p| p.node == old && p.connection == "Connected")) {
            return Err(crate::refused!(
                "{} is still Connected to {old} for {res}: {old} is alive as DRBD sees it; node replace is for a node that is gone for good",
                s.node
            ));
        }
    }
    Ok(())
}

/// A replica other than OLD's that a live agent reports UpToDate and no fence mark outdated.
fn source_of(i: &Inputs, v: &VolumeDoc) -> Option<String> {
    v.replicas
        .iter()
        .filter(|r| r.node != i.old && !v.outdated.contains(&r.node))
        .find(|r| {
            i.state(&r.node)
                .filter(|s| i.fresh(s))
                .and_then(|s| s.volumes.get(&v.resource))
                .is_some_and(|o| o.disk == "UpToDate")
        })
        .map(|r| r.node.clone())
}

/// "pve2 Outdated, pve3 silent" for the skip message.
fn survivors_seen(i: &Inputs, v: &VolumeDoc) -> String {
    let seen: Vec<String> = v
        .replicas
        .iter()
        .filter(|r| r.node != i.old)
        .map(|r| match i.state(&r.node).filter(|s| i.fresh(s)).map(|s| s.volumes.get(&v.resource)) {
            None => format!("{} silent", r.node),
            Some(None) => format!("{} has none", r.node),
            Some(Some(_)) if v.outdated.contains(&r.node) => format!("{} marked outdated", r.node),
            Some(Some(o)) => format!("{} {}", r.node, o.disk),
        })
        .collect();
    if seen.is_empty() {
        "it has no other replica".into()
    } else {
        seen.join(", ")
    }
}

/// `m` done to a document: OLD's replica gone, NEW's last, OLD's outdated mark dropped.
fn moved(d: &mut VolumeDoc, m: &Move, old: &str, new: &str) {
    d.replicas.retain(|r| r.node != old);
    d.replicas.push(Replica { node: new.to_string(), node_id: m.node_id });
    d.outdated.retain(|n| n != old);
    if let Some(port) = m.port {
        d.port = port;
    }
}

/// The lowest node id neither a survivor nor OLD used: the survivors' metadata may still
/// hold a bitmap for OLD's id (DRBD 9), which says nothing about NEW's empty disk.
pub(crate) fn new_node_id(v: &VolumeDoc, old: &str) -> Result<u8> {
    let used: BTreeSet<u8> = v.replicas.iter().map(|r| r.node_id).collect();
    (0..=MAX_NODE_ID)
        .find(|id| !used.contains(id))
        .ok_or_else(|| crate::refused!("{}: no DRBD node id left for a replica in place of {old}", v.resource))
}

/// The port stays unless NEW already listens on it for another volume; then the lowest
/// port free on every node of the new replica set (store/alloc.rs's rule). `old`: the
/// replica that leaves the set (None: every replica stays connected, as during a move).
pub(crate) fn new_port(v: &VolumeDoc, old: Option<&str>, new: &str, docs: &[VolumeDoc]) -> Result<Option<u16>> {
    let others = || docs.iter().filter(|d| d.resource != v.resource);
    if !others().any(|d| d.port == v.port && d.replica(new).is_some()) {
        return Ok(None);
    }
    let set: Vec<&str> = v.replicas.iter().map(|r| r.node.as_str()).filter(|n| Some(*n) != old).chain([new]).collect();
    let used: BTreeSet<u16> =
        others().filter(|d| d.replicas.iter().any(|r| set.contains(&r.node.as_str()))).map(|d| d.port).collect();
    PORTS.clone().find(|p| !used.contains(p)).map(Some).ok_or_else(|| {
        crate::refused!("{}: every replication port {}-{} is in use on {}", v.resource, PORTS.start(), PORTS.end(), set.join(", "))
    })
}

/// Read the store under the alloc lock (ports and node ids stay unique), plan, and unless
/// `dry_run` write each move. Returns the plan as carried out: a volume whose document
/// changed meanwhile is reported skipped.
pub fn replace(store: &Store, old: &str, new: &str, dry_run: bool) -> Result<Plan> {
    crate::naming::check_node_name(old)?;
    crate::naming::check_node_name(new)?;
    let _g = store.lock(ALLOC_LOCK)?;
    let docs = store.all_volumes()?; // fence marks merged into `outdated`
    let all_marks = store.fence_marks()?;
    let (nodes, states) = (store.nodes()?, store.node_states()?);
    let membership = Membership::of_store(store)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let inputs = Inputs { old, new, docs: &docs, nodes: &nodes, states: &states, membership: membership.as_ref(), now, gone_after: gone_after() };
    let mut p = plan(&inputs)?;
    if dry_run {
        return Ok(p);
    }
    let mut done = Vec::new();
    for m in std::mem::take(&mut p.moves) {
        let at = docs.iter().find(|d| d.resource == m.resource).expect("planned from these documents");
        let mut why = None;
        store.update_volume(at, |cur| {
            if cur.resource != m.resource || cur.state != VolumeState::Ready || cur.replica(old).is_none() || cur.replica(new).is_some() || cur.dual_primary.is_some() {
                why = Some("its document changed meanwhile; run this again".to_string());
                return Ok(Change::Unchanged);
            }
            moved(cur, &m, old, new);
            Ok(Change::Desired)
        })?;
        crate::failpoint!("replace.after-volume");
        if let Some(why) = why {
            p.skipped.push(Skip { volume: format!("{}:{}", m.storeid, m.volname), why });
            continue;
        }
        // OLD's replica is gone: a mark that outdates it says nothing any more.
        for mark in all_marks.iter().filter(|k| k.resource == m.resource && k.target == old) {
            store.remove_fence_mark(mark)?;
        }
        tracing::info!(resource = %m.resource, old, new, source = %m.source, "replica moved in the store; the agents sync it");
        done.push(m);
    }
    p.moves = done;
    Ok(p)
}

/// The command's report.
pub fn render(p: &Plan, old: &str, new: &str, dry_run: bool) -> String {
    let mut s = String::new();
    let verb = if dry_run { "would move" } else { "moved" };
    for m in &p.moves {
        s += &format!(
            "{}:{}: replica on {old} {verb} to {new} (node id {}{}); {new} syncs in full from {}\n",
            m.storeid,
            m.volname,
            m.node_id,
            m.port.map(|p| format!(", port {p}")).unwrap_or_default(),
            m.source
        );
    }
    for k in &p.skipped {
        s += &format!("{}: left as it is: {}\n", k.volume, k.why);
    }
    if p.moves.is_empty() && p.skipped.is_empty() {
        s += &format!("no volume has a replica on {old}; nothing to do\n");
    } else if !dry_run && !p.moves.is_empty() {
        s += &format!(
            "{} volume(s) now list {new}; watch the sync with `drbdpool status --watch`. {}\n",
            p.moves.len(),
            if p.skipped.is_empty() { format!("When no volume lists {old} any more: `drbdpool node remove {old}`.") } else { String::new() }
        );
    }
    s
}

#[cfg(test)]
mod tests;
