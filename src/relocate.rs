//! `drbdpool volume move VOL --from A --to B` and `drbdpool node evacuate NODE` (issue 16):
//! a live node's replicas move to other nodes while the guests keep running.
//!
//! Only the store changes here, one write per volume under the alloc lock (node ids and
//! ports stay unique): the document lists B next to A, with a fresh DRBD node id, and
//! records the move (`moving`). The agents do the rest (agent/reconcile.rs): B's agent
//! creates the backing device and fresh metadata and DRBD syncs B in full from an UpToDate
//! replica; once B reports UpToDate, B's agent drops A from the document (`released`), and
//! A's agent removes its replica when no guest uses it there any more.
//!
//! - DRBD 9: B joins as one more peer; A stays connected, and may stay Primary under a
//!   running guest, until B is UpToDate; A goes once the guest has left it.
//! - DRBD 8.4 (two hosts per resource): the staying replica's peer switches from A to B. A
//!   is taken down with its backing kept (its data as of the switch) until B is UpToDate.
//!   So A must not be Primary (a guest running there is named: migrate it first), and the
//!   staying replica must be UpToDate: it is the sync source. While B syncs, one replica is
//!   UpToDate and A's copy is held, as before the move; DRBD 8.4 cannot connect three.
//!
//! A crash or a kill at any point leaves each document with its move recorded or not; the
//! agents finish a recorded move whatever happens to this command, and running it again
//! reports the moves under way and records the rest.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::replace::{new_node_id, new_port, Skip, REPORTS_WITHIN};
use crate::store::docs::{NodeDoc, NodeState, Replica, ReplicaMove, VolumeDoc, VolumeState};
use crate::store::lock::ALLOC_LOCK;
use crate::store::{Change, Store};

/// One replica that moves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Move {
    pub storeid: String,
    pub volname: String,
    pub resource: String,
    pub size_kib: u64,
    pub from: String,
    pub to: String,
    /// The UpToDate replica `to` syncs from (DRBD picks among the UpToDate ones on 9).
    pub source: String,
    /// `to`'s DRBD node id in this resource.
    pub node_id: u8,
    /// The resource's port, when it must change (`to` already listens on the old one).
    pub port: Option<u16>,
}

/// `volume replicas`: one replica added (synced in full from an UpToDate one) or dropped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resize {
    pub storeid: String,
    pub volname: String,
    pub resource: String,
    pub node: String,
    pub add: bool,
    /// The new replica's DRBD node id (adds only).
    pub node_id: u8,
    /// The resource's port, when it must change (adds only).
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub resizes: Vec<Resize>,
    /// Volumes whose move was recorded before (the agents are carrying it out).
    pub under_way: Vec<String>,
    pub skipped: Vec<Skip>,
}

/// What a plan is made from: the store as read under the alloc lock.
pub struct Inputs<'a> {
    pub docs: &'a [VolumeDoc],
    pub nodes: &'a [NodeDoc],
    pub states: &'a [NodeState],
    /// storeid -> storage.cfg `nodes` (absent or None: every node).
    pub allowed: &'a BTreeMap<String, Option<Vec<String>>>,
    pub now: u64,
    /// Most hosts per resource DRBD takes here (8.4: 2).
    pub max_hosts: usize,
}

impl Inputs<'_> {
    fn fresh(&self, node: &str) -> Option<&NodeState> {
        self.states.iter().find(|s| s.node == node).filter(|s| self.now.saturating_sub(s.updated) < REPORTS_WITHIN.as_secs())
    }
    fn uptodate(&self, v: &VolumeDoc, node: &str) -> bool {
        !v.outdated.iter().any(|n| n == node)
            && self.fresh(node).and_then(|s| s.volumes.get(&v.resource)).is_some_and(|o| o.disk == "UpToDate" && o.error.is_none())
    }
    fn in_use(&self, v: &VolumeDoc, node: &str) -> bool {
        self.fresh(node).and_then(|s| s.volumes.get(&v.resource)).is_some_and(|o| o.role == "Primary" || o.open)
    }
    fn allowed_on(&self, v: &VolumeDoc, node: &str) -> bool {
        self.allowed.get(&v.storeid).and_then(|a| a.as_ref()).is_none_or(|a| a.iter().any(|n| n == node))
    }
    fn avail(&self, storeid: &str, node: &str) -> Option<u64> {
        self.fresh(node).and_then(|s| s.storages.get(storeid)).map(|sp| sp.avail)
    }
}

/// Why a volume's replica cannot move from `from` to `to` now.
enum NoMove {
    /// This very move is already recorded.
    UnderWay,
    Skip(String),
}

/// Check one move; `world` is the documents as the moves planned so far leave them.
fn check(i: &Inputs, v: &VolumeDoc, from: &str, to: &str, world: &[VolumeDoc]) -> std::result::Result<Move, NoMove> {
    let skip = |s: String| Err(NoMove::Skip(s));
    match v.state {
        VolumeState::Ready => {}
        VolumeState::Creating => return skip("still being created; run this again once its alloc finished or was rolled back".into()),
        VolumeState::Deleting => return skip("being deleted".into()),
    }
    if let Some(m) = &v.moving {
        if m.from == from && m.to == to {
            return Err(NoMove::UnderWay);
        }
        return skip(format!("another move is under way ({} to {}); run this again when it is over (`drbdpool status`)", m.from, m.to));
    }
    if v.dual_primary.is_some() {
        return skip("a live migration window is open; run this again when the migration is over".into());
    }
    if v.replica(from).is_none() {
        let on: Vec<&str> = v.replicas.iter().map(|r| r.node.as_str()).collect();
        return skip(format!("it has no replica on {from} (its replicas: {})", on.join(", ")));
    }
    if v.replica(to).is_some() {
        return skip(format!("{to} already holds one of its replicas"));
    }
    if v.released.iter().any(|n| n == to) {
        return skip(format!("{to} is still removing its earlier replica of it; run this again in a minute"));
    }
    if !i.allowed_on(v, to) {
        return skip(format!("storage {} may not use {to} (storage.cfg `nodes`)", v.storeid));
    }
    // DRBD 8.4: `from` leaves the resource at once, a staying replica is the only source.
    let switch = v.replicas.len() + 1 > i.max_hosts;
    if switch && i.in_use(v, from) {
        let others: Vec<&str> = v.replicas.iter().map(|r| r.node.as_str()).filter(|n| *n != from).collect();
        return skip(format!(
            "it is in use on {from} (a guest runs there), and DRBD 8.4 takes two nodes per resource, so {from} must leave it before {to} joins: \
             migrate guest {} to {} first (e.g. `qm migrate {} {} --online`), then run this again",
            v.vmid,
            others.join(" or "),
            v.vmid,
            others.first().unwrap_or(&"?")
        ));
    }
    let source = v.replicas.iter().map(|r| r.node.as_str()).filter(|n| !(switch && *n == from)).find(|n| i.uptodate(v, n));
    let Some(source) = source else {
        let seen: Vec<String> = v
            .replicas
            .iter()
            .map(|r| match i.fresh(&r.node).map(|s| s.volumes.get(&v.resource)) {
                None => format!("{} silent", r.node),
                Some(None) => format!("{} has none", r.node),
                Some(Some(o)) => format!("{} {}", r.node, o.disk),
            })
            .collect();
        return skip(format!(
            "no {}replica is known UpToDate ({}): moving it now could leave it without a good copy; \
             let its replicas sync (`drbdpool status`) and run this again",
            if switch { "staying " } else { "" },
            seen.join(", ")
        ));
    };
    let node_id = new_node_id(v, from).map_err(|e| NoMove::Skip(e.to_string()))?;
    let port = new_port(v, switch.then_some(from), to, world).map_err(|e| NoMove::Skip(e.to_string()))?;
    Ok(Move {
        storeid: v.storeid.clone(),
        volname: v.volname.clone(),
        resource: v.resource.clone(),
        size_kib: v.size_kib,
        from: from.to_string(),
        to: to.to_string(),
        source: source.to_string(),
        node_id,
        port,
    })
}

/// `m` done to a document: `to` listed last, the move recorded.
fn record(d: &mut VolumeDoc, m: &Move, now: u64) {
    d.replicas.push(Replica { node: m.to.clone(), node_id: m.node_id });
    d.moving = Some(ReplicaMove { from: m.from.clone(), to: m.to.clone(), since: now });
    if let Some(p) = m.port {
        d.port = p;
    }
}

fn id(v: &VolumeDoc) -> String {
    format!("{}:{}", v.storeid, v.volname)
}

fn check_target(i: &Inputs, to: &str) -> Result<()> {
    if !i.nodes.iter().any(|n| n.name == to) {
        return Err(Error::NotFound(format!("node {to} is not registered: add it first with `drbdpool node add {to} --address <ip>`")));
    }
    if i.fresh(to).is_none() {
        return Err(crate::refused!(
            "node {to}'s agent has not reported in the last {}s: start it there (systemctl start drbdpool-agent) and run this again",
            REPORTS_WITHIN.as_secs()
        ));
    }
    Ok(())
}

/// `volume move`: one volume's replica on `from` to `to`.
pub fn plan_move(i: &Inputs, resource: &str, from: &str, to: &str) -> Result<Plan> {
    if from == to {
        return Err(crate::invalid!("volume move needs two different nodes, got {from} twice"));
    }
    let v = i.docs.iter().find(|d| d.resource == resource).ok_or_else(|| Error::NotFound(format!("volume with resource {resource} is gone")))?;
    check_target(i, to)?;
    let mut p = Plan::default();
    match check(i, v, from, to, i.docs) {
        Ok(m) => {
            let need = m.size_kib * 1024;
            match i.avail(&v.storeid, to) {
                Some(a) if a >= need => p.moves.push(m),
                Some(a) => {
                    return Err(crate::refused!(
                        "node {to} has {} free in storage {} but {} needs {} (a full sync writes every block): free space there or pick another node",
                        crate::cli::human(a),
                        v.storeid,
                        id(v),
                        crate::cli::human(need)
                    ))
                }
                None => {
                    return Err(crate::refused!(
                        "node {to} reports no space for storage {}: is the storage's backend (volume group, thin pool or directory) set up there?",
                        v.storeid
                    ))
                }
            }
        }
        Err(NoMove::UnderWay) => p.under_way.push(id(v)),
        Err(NoMove::Skip(why)) => return Err(crate::refused!("{}: replica on {from} not moved to {to}: {why}", id(v))),
    }
    Ok(p)
}

/// `node evacuate`: every replica on `node` to the node with the most room that may take it.
pub fn plan_evacuate(i: &Inputs, node: &str) -> Result<Plan> {
    if !i.nodes.iter().any(|n| n.name == node) {
        return Err(Error::NotFound(format!("node {node} is not registered (`drbdpool node list`)")));
    }
    let mut p = Plan::default();
    let mut world: Vec<VolumeDoc> = i.docs.to_vec();
    // Space the planned moves take: (storeid, node) -> bytes.
    let mut taken: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (at, v) in i.docs.iter().enumerate().filter(|(_, v)| v.replica(node).is_some() && v.state != VolumeState::Deleting) {
        if v.moving.as_ref().is_some_and(|m| m.from == node) {
            p.under_way.push(id(v));
            continue;
        }
        let need = v.size_kib * 1024;
        let room = |n: &str| i.avail(&v.storeid, n).map(|a| a.saturating_sub(*taken.get(&(v.storeid.clone(), n.to_string())).unwrap_or(&0)));
        let mut cands: Vec<(&str, u64)> = i
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| *n != node && v.replica(n).is_none() && !v.released.iter().any(|r| r == n) && i.allowed_on(v, n))
            .filter_map(|n| room(n).map(|r| (n, r)))
            .collect();
        cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let Some(&(to, r)) = cands.first() else {
            let others: Vec<&str> = i.nodes.iter().map(|n| n.name.as_str()).filter(|n| *n != node && v.replica(n).is_none()).collect();
            p.skipped.push(Skip {
                volume: id(v),
                why: if others.is_empty() {
                    format!("no node without a replica of it is left to take {node}'s (add one with `drbdpool node add`)")
                } else {
                    format!(
                        "no node that may take it reports room for storage {} (candidates: {}; an agent must have reported within {}s)",
                        v.storeid,
                        others.join(", "),
                        REPORTS_WITHIN.as_secs()
                    )
                },
            });
            continue;
        };
        if r < need {
            p.skipped.push(Skip {
                volume: id(v),
                why: format!("no node has room: {to} has the most, {} free in storage {}, and it needs {}", crate::cli::human(r), v.storeid, crate::cli::human(need)),
            });
            continue;
        }
        match check(i, v, node, to, &world) {
            Ok(m) => {
                *taken.entry((v.storeid.clone(), to.to_string())).or_default() += need;
                record(&mut world[at], &m, i.now);
                p.moves.push(m);
            }
            Err(NoMove::UnderWay) => p.under_way.push(id(v)),
            Err(NoMove::Skip(why)) => p.skipped.push(Skip { volume: id(v), why }),
        }
    }
    if p.moves.is_empty() && p.under_way.is_empty() && !p.skipped.is_empty() {
        let lines: Vec<String> = p.skipped.iter().map(|k| format!("{}: {}", k.volume, k.why)).collect();
        return Err(crate::refused!("nothing can move off {node}:\n  {}", lines.join("\n  ")));
    }
    Ok(p)
}

/// `volume replicas`: add replicas on the nodes with the most room, or drop the ones that
/// matter least (not in use; not UpToDate before UpToDate; the last in placement order first),
/// never the last UpToDate one.
pub fn plan_replicas(i: &Inputs, resource: &str, count: usize) -> Result<Plan> {
    let v = i.docs.iter().find(|d| d.resource == resource).ok_or_else(|| Error::NotFound(format!("volume with resource {resource} is gone")))?;
    let name = id(v);
    if !(1..=crate::placement::MAX_REPLICAS).contains(&count) {
        return Err(crate::invalid!("{name}: {count} replicas is not valid: use 1 to {}", crate::placement::MAX_REPLICAS));
    }
    if i.max_hosts < crate::placement::MAX_REPLICAS && count != i.max_hosts {
        return Err(crate::refused!(
            "{name}: this cluster runs the in-tree DRBD 8.4 kernel module, which takes exactly {} nodes per resource: \
             the replica count stays {}; to change it, install DRBD 9 (drbd-dkms) on every node",
            i.max_hosts,
            v.replicas.len()
        ));
    }
    let busy = match v.state {
        VolumeState::Ready if v.moving.is_some() => Some("a move is under way; run this again when it is over".to_string()),
        VolumeState::Ready if v.dual_primary.is_some() => Some("a live migration window is open; run this again when it is over".to_string()),
        VolumeState::Ready => None,
        VolumeState::Creating => Some("still being created".to_string()),
        VolumeState::Deleting => Some("being deleted".to_string()),
    };
    if let Some(why) = busy {
        return Err(crate::refused!("{name}: {why}"));
    }
    let mut p = Plan::default();
    let have = v.replicas.len();
    if count == have {
        return Ok(p);
    }
    let good: Vec<&str> = v.replicas.iter().map(|r| r.node.as_str()).filter(|n| i.uptodate(v, n)).collect();
    if good.is_empty() {
        return Err(crate::refused!("{name}: no replica is known UpToDate now: let its replicas sync (`drbdpool status`) and run this again"));
    }
    let mut world = v.clone();
    if count > have {
        let need = v.size_kib * 1024;
        let mut cands: Vec<(&str, u64)> = i
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| v.replica(n).is_none() && !v.released.iter().any(|r| r == n) && i.allowed_on(v, n))
            .filter_map(|n| i.avail(&v.storeid, n).filter(|a| *a >= need).map(|a| (n, a)))
            .collect();
        cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        if cands.len() < count - have {
            return Err(crate::refused!(
                "{name}: {} more replica(s) need nodes without one that report {} free in storage {} (and that its `nodes` list allows); \
                 {} found{}",
                count - have,
                crate::cli::human(need),
                v.storeid,
                cands.len(),
                if cands.is_empty() { String::new() } else { format!(" ({})", cands.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")) }
            ));
        }
        for (node, _) in cands.into_iter().take(count - have) {
            let node_id = new_node_id(&world, node)?;
            let port = new_port(&world, None, node, i.docs)?;
            world.replicas.push(Replica { node: node.to_string(), node_id });
            if let Some(pt) = port {
                world.port = pt;
            }
            p.resizes.push(Resize { storeid: v.storeid.clone(), volname: v.volname.clone(), resource: v.resource.clone(), node: node.to_string(), add: true, node_id, port });
        }
    } else {
        // Least useful first: in use never; not UpToDate before UpToDate; later in placement first.
        let mut order: Vec<(usize, &str)> = v.replicas.iter().enumerate().map(|(k, r)| (k, r.node.as_str())).filter(|(_, n)| !i.in_use(v, n)).collect();
        order.sort_by_key(|(k, n)| (i.uptodate(v, n), std::cmp::Reverse(*k)));
        let mut left_good = good.len();
        for (_, node) in order {
            if p.resizes.len() == have - count {
                break;
            }
            if i.uptodate(v, node) {
                if left_good == 1 {
                    break;
                }
                left_good -= 1;
            }
            p.resizes.push(Resize { storeid: v.storeid.clone(), volname: v.volname.clone(), resource: v.resource.clone(), node: node.to_string(), add: false, node_id: 0, port: None });
        }
        if p.resizes.len() < have - count {
            return Err(crate::refused!(
                "{name}: cannot drop {} of its {have} replicas: a replica in use (a guest runs there) or its last UpToDate one stays",
                have - count
            ));
        }
    }
    Ok(p)
}

/// What to plan.
pub enum Target<'a> {
    Volume { resource: &'a str, from: &'a str, to: &'a str },
    Evacuate { node: &'a str },
    Replicas { resource: &'a str, count: usize },
}

/// Read the store under the alloc lock, plan, and unless `dry_run` record each move.
/// A volume whose document changed meanwhile is reported skipped.
pub fn relocate(store: &Store, max_hosts: usize, target: Target, dry_run: bool) -> Result<Plan> {
    match &target {
        Target::Volume { from, to, .. } => {
            crate::naming::check_node_name(from)?;
            crate::naming::check_node_name(to)?;
        }
        Target::Evacuate { node } => crate::naming::check_node_name(node)?,
        Target::Replicas { .. } => {}
    }
    let _g = store.lock(ALLOC_LOCK)?;
    let docs = store.all_volumes()?; // fence marks merged into `outdated`
    let (nodes, states) = (store.nodes()?, store.node_states()?);
    let mut allowed = BTreeMap::new();
    for sid in docs.iter().map(|d| d.storeid.clone()).collect::<std::collections::BTreeSet<_>>() {
        let a = store.storage_doc(&sid)?.and_then(|d| d.nodes);
        allowed.insert(sid, a);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let i = Inputs { docs: &docs, nodes: &nodes, states: &states, allowed: &allowed, now, max_hosts };
    let mut p = match target {
        Target::Volume { resource, from, to } => plan_move(&i, resource, from, to)?,
        Target::Evacuate { node } => plan_evacuate(&i, node)?,
        Target::Replicas { resource, count } => plan_replicas(&i, resource, count)?,
    };
    if dry_run {
        return Ok(p);
    }
    let mut done = Vec::new();
    for m in std::mem::take(&mut p.moves) {
        let at = docs.iter().find(|d| d.resource == m.resource).expect("planned from these documents");
        let mut why = None;
        store.update_volume(at, |cur| {
            if cur.resource != m.resource
                || cur.state != VolumeState::Ready
                || cur.replica(&m.from).is_none()
                || cur.replica(&m.to).is_some()
                || cur.moving.is_some()
                || cur.dual_primary.is_some()
            {
                why = Some("its document changed meanwhile; run this again".to_string());
                return Ok(Change::Unchanged);
            }
            record(cur, &m, now);
            Ok(Change::Desired)
        })?;
        crate::failpoint!("relocate.after-volume");
        if let Some(why) = why {
            p.skipped.push(Skip { volume: format!("{}:{}", m.storeid, m.volname), why });
            continue;
        }
        tracing::info!(resource = %m.resource, from = %m.from, to = %m.to, source = %m.source, "replica move recorded; the agents carry it out");
        done.push(m);
    }
    p.moves = done;
    if let Some(first) = p.resizes.first().cloned() {
        let at = docs.iter().find(|d| d.resource == first.resource).expect("planned from these documents");
        let planned: Vec<&str> = at.replicas.iter().map(|r| r.node.as_str()).collect();
        let mut changed = false;
        store.update_volume(at, |cur| {
            let now_on: Vec<&str> = cur.replicas.iter().map(|r| r.node.as_str()).collect();
            if cur.resource != first.resource || cur.state != VolumeState::Ready || cur.moving.is_some() || cur.dual_primary.is_some() || now_on != planned {
                return Ok(Change::Unchanged);
            }
            for r in &p.resizes {
                if r.add {
                    cur.replicas.push(Replica { node: r.node.clone(), node_id: r.node_id });
                    cur.released.retain(|n| *n != r.node);
                    if let Some(pt) = r.port {
                        cur.port = pt;
                    }
                } else {
                    cur.replicas.retain(|x| x.node != r.node);
                    cur.outdated.retain(|n| *n != r.node);
                    if !cur.released.contains(&r.node) {
                        cur.released.push(r.node.clone());
                    }
                }
            }
            changed = true;
            Ok(Change::Desired)
        })?;
        if !changed {
            p.skipped.push(Skip { volume: format!("{}:{}", first.storeid, first.volname), why: "its document changed meanwhile; run this again".into() });
            p.resizes.clear();
        } else {
            tracing::info!(resource = %first.resource, changes = p.resizes.len(), "replica count changed; the agents carry it out");
        }
    }
    Ok(p)
}

/// The command's report.
pub fn render(p: &Plan, dry_run: bool) -> String {
    let mut s = String::new();
    let verb = if dry_run { "would move" } else { "moving" };
    for m in &p.moves {
        s += &format!(
            "{}:{}: replica on {} {verb} to {} (node id {}{}); {} syncs in full from {}, then {}'s replica is removed\n",
            m.storeid,
            m.volname,
            m.from,
            m.to,
            m.node_id,
            m.port.map(|p| format!(", port {p}")).unwrap_or_default(),
            m.to,
            m.source,
            m.from
        );
    }
    for r in &p.resizes {
        let (verb, what) = match (r.add, dry_run) {
            (true, true) => ("would get", "a new replica"),
            (true, false) => ("gets", "a new replica"),
            (false, true) => ("would drop", "its replica"),
            (false, false) => ("drops", "its replica"),
        };
        s += &format!(
            "{}:{}: {} {verb} {what}{}\n",
            r.storeid,
            r.volname,
            r.node,
            if r.add { format!(" (node id {}), synced in full from an UpToDate one", r.node_id) } else { ", removed there by its agent".to_string() }
        );
    }
    for v in &p.under_way {
        s += &format!("{v}: a move is already under way (`drbdpool status` shows it)\n");
    }
    for k in &p.skipped {
        s += &format!("{}: left as it is: {}\n", k.volume, k.why);
    }
    if p.moves.is_empty() && p.resizes.is_empty() && p.under_way.is_empty() && p.skipped.is_empty() {
        s += "nothing to do\n";
    } else if !dry_run && !p.moves.is_empty() {
        s += &format!("{} move(s) recorded; the agents carry them out: watch with `drbdpool status --watch`\n", p.moves.len());
    }
    s
}

#[cfg(test)]
mod tests;
