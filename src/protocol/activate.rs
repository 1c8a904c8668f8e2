//! activate / deactivate. The decision whether this node may become Primary is
//! a pure function (Invariant 1: never promote a replica that is not UpToDate;
//! dual-primary only for a real incoming live migration).

use serde_json::{json, Value};

use crate::error::Result;
use crate::refused;
use crate::store::docs::{DualPrimary, NodeState, VolumeDoc, VolumeObserved, VolumeState};
use crate::store::Change;

use super::{load, load_created, now, Args, Ctx};

/// A published Primary claim older than this is not trusted. Agents refresh their
/// state at least every 60 s; a node that cannot (no quorum: /etc/pve is read-only)
/// self-fences through the watchdog within 60 s, and a dead one says nothing more.
/// A Primary we are still connected to is seen in the local DRBD view anyway.
pub const STALE_AFTER_SECS: u64 = 90;

/// DRBD 9 shows a survivor `Consistent`, not UpToDate, for a moment after it loses the
/// Primary (1.2 s in tests/fixtures/drbd9-real/drbdsetup-events2-live.kill-and-promote.node2.out,
/// 0.1-1.2 s over the lab runs on DRBD 9.2.18): activate waits at most
/// this long for it to settle before deciding.
pub const CONSISTENT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    AlreadyPrimary,
    Promote,
    /// Open the live-migration window (allow two primaries) from `source`, then promote.
    PromoteForMigration { source: String },
}

/// May `local` become Primary for `doc`? `local_obs` is what DRBD here reports;
/// `states` what every node published; `departed` the nodes that have left this
/// node's quorate cluster membership (membership.rs; empty where none is
/// published); `now` unix seconds.
pub fn decide(
    doc: &VolumeDoc,
    local: &str,
    local_obs: Option<&VolumeObserved>,
    states: &[NodeState],
    departed: &[String],
    migrated_from: Option<&str>,
    now: u64,
) -> Result<Decision> {
    let name = format!("{}:{}", doc.storeid, doc.volname);
    let replica_nodes: Vec<&str> = doc.replicas.iter().map(|r| r.node.as_str()).collect();
    if doc.replica(local).is_none() {
        return Err(refused!(
            "volume {name} has no replica on node {local}: its replicas are on {}. Start the guest there or migrate it",
            replica_nodes.join(", ")
        ));
    }
    match doc.state {
        VolumeState::Ready => {}
        VolumeState::Creating => {
            return Err(refused!(
                "volume {name} is still being created: its replicas are made after the alloc; retry when `drbdpool status` shows it ready \
                 (why it is not: `drbdpool volume show {name}`, and {} on the node that allocated it)",
                super::finish::log_path().display()
            ))
        }
        VolumeState::Deleting => return Err(refused!("volume {name} is being deleted")),
    }
    if let Some(m) = doc.moving.as_ref().filter(|m| m.from == local) {
        if local_obs.is_none_or(|o| o.role != "Primary") {
            return Err(refused!(
                "the replica of {name} on {local} is moving to {} (`drbdpool volume move`, `node evacuate`): start the guest on {} instead \
                 ({}), or wait until the move is over",
                m.to,
                replica_nodes.iter().filter(|n| **n != local).copied().collect::<Vec<_>>().join(" or "),
                "`drbdpool status` shows its progress"
            ));
        }
    }
    let published = |n: &str| states.iter().find(|s| s.node == n).and_then(|s| s.volumes.get(&doc.resource).map(|v| (s, v)));
    // Where good data is, by the other nodes' own reports: only a fresh report says where it
    // is now; a stale one is named with its age (that node may be down).
    let mut fresh_good: Vec<String> = Vec::new();
    let mut stale_good: Vec<(String, u64)> = Vec::new();
    for n in replica_nodes.iter().copied().filter(|n| *n != local && !doc.outdated.iter().any(|o| o == n)) {
        if let Some((s, _)) = published(n).filter(|(_, v)| v.disk == "UpToDate") {
            let age = now.saturating_sub(s.updated);
            if age <= STALE_AFTER_SECS {
                fresh_good.push(format!("{n} (reported {age}s ago)"));
            } else {
                stale_good.push((n.to_string(), age));
            }
        }
    }
    let where_good = if !fresh_good.is_empty() {
        format!("UpToDate data is on {}: start the guest there", fresh_good.join(", "))
    } else if !stale_good.is_empty() {
        let list: Vec<String> = stale_good.iter().map(|(n, a)| format!("{n} reported UpToDate data {a}s ago")).collect();
        format!(
            "no node reports UpToDate data now: {} (its last report, older than {STALE_AFTER_SECS}s: that node or its agent may be down); \
             bring {} back and start the guest there once it reports again (`drbdpool status`); \
             only if it is gone for good, accept this replica's data with `drbdpool volume force-primary {}:{} --node {local}`",
            list.join(", "),
            stale_good.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" or "),
            doc.storeid,
            doc.volname
        )
    } else {
        "no other node reports an UpToDate replica; check `drbdpool status`".to_string()
    };
    let disk = local_obs.map(|o| o.disk.as_str()).filter(|d| !d.is_empty()).unwrap_or("unknown");
    let resync = (disk == "Inconsistent").then(|| interrupted_resync(local_obs, published(local).map(|(s, v)| (now.saturating_sub(s.updated), v))));
    let fenced = doc.outdated.iter().any(|o| o == local);
    match (&resync, fenced) {
        (Some(r), true) => {
            return Err(refused!(
                "the replica of {name} on {local} is Inconsistent: {r}; it is also marked outdated by the fence-peer handler: refusing to promote it; {where_good}"
            ))
        }
        (None, true) => {
            return Err(refused!("the replica of {name} on {local} was marked outdated by the fence-peer handler: refusing to promote it; {where_good}"))
        }
        (Some(r), false) => return Err(refused!("the replica of {name} on {local} is Inconsistent: {r}: refusing to promote it; {where_good}")),
        (None, false) => {}
    }
    if disk != "UpToDate" {
        return Err(refused!("the replica of {name} on {local} is {disk}, not UpToDate: refusing to promote it; {where_good}"));
    }
    // Who else is Primary: what DRBD here sees of connected peers, plus fresh
    // published claims (a peer we are cut off from may still be Primary).
    let mut others: Vec<String> = Vec::new();
    for p in local_obs.map(|o| o.peers.as_slice()).unwrap_or(&[]) {
        if p.node != local && p.role == "Primary" && !others.contains(&p.node) {
            others.push(p.node.clone());
        }
    }
    // A peer DRBD shows Connected here has its role from DRBD itself, fresher than
    // anything published; published claims count only for peers we cannot see.
    let connected: Vec<&str> = local_obs
        .map(|o| o.peers.iter().filter(|p| p.connection == "Connected").map(|p| p.node.as_str()).collect())
        .unwrap_or_default();
    // Claims of peers DRBD cannot see here: (node, age of its last report). A peer
    // that has also left the quorate membership is dead, or cut off without quorum
    // (its fence-peer fails, its I/O stays frozen): its claim need not grow stale.
    //
    // With DRBD 9 and 3+ replicas the resources run `quorum majority; on-no-quorum io-error`
    // (drbd/render.rs): when DRBD here has quorum, a peer it cannot see is in the minority and
    // cannot write, unless it still reaches a peer we see (a partial partition, where it may
    // have quorum too). So its claim does not count when every connected peer's fresh report
    // shows it cut off from that peer as well.
    let quorum_here = doc.replicas.len() >= 3 && local_obs.and_then(|o| o.quorum) == Some(true);
    let cut_off_from_all = |n: &str| {
        !connected.is_empty()
            && connected.iter().all(|c| {
                published(c).is_some_and(|(s, v)| {
                    now.saturating_sub(s.updated) <= STALE_AFTER_SECS && v.peers.iter().any(|p| p.node == n && p.connection != "Connected")
                })
            })
    };
    let mut unseen_claims: Vec<(String, u64)> = Vec::new();
    for n in replica_nodes
        .iter()
        .filter(|n| **n != local && !connected.contains(n) && !departed.iter().any(|d| d == *n))
        .filter(|n| !(quorum_here && cut_off_from_all(n)))
    {
        if let Some((s, v)) = published(n) {
            let age = now.saturating_sub(s.updated);
            if v.role == "Primary" && age <= STALE_AFTER_SECS && !others.iter().any(|o| o == n) {
                others.push(n.to_string());
                unseen_claims.push((n.to_string(), age));
            }
        }
    }
    let already = local_obs.is_some_and(|o| o.role == "Primary");
    match others.as_slice() {
        [] if already => Ok(Decision::AlreadyPrimary),
        [] => Ok(Decision::Promote),
        [one] if migrated_from == Some(one.as_str()) => Ok(Decision::PromoteForMigration { source: one.clone() }),
        _ if !unseen_claims.is_empty() && unseen_claims.len() == others.len() => {
            // Only reports, no live DRBD connection: the node may be dead or cut off.
            let (n, age) = &unseen_claims[0];
            Err(refused!(
                "volume {name} was Primary on {n} at its last report {age}s ago and DRBD here cannot reach {n}: \
                 if {n} is down, retry after its report is {STALE_AFTER_SECS}s old (HA recovery waits longer anyway); \
                 if it is running, stop the guest there first"
            ))
        }
        _ => Err(refused!(
            "volume {name} is Primary on {}: it is in use there (stop the guest there first; two primaries are only allowed during a live migration from that node)",
            others.join(", ")
        )),
    }
}

/// What an Inconsistent replica of a volume that is ready says about its resync: one running
/// now (this node's kernel shows a peer it syncs from), or one that stopped (nothing syncs it
/// now; this node's last report, `(age, state)`, may say from where and how far it got).
fn interrupted_resync(local_obs: Option<&VolumeObserved>, last: Option<(u64, &VolumeObserved)>) -> String {
    let target = |r: &str| r.starts_with("SyncTarget") || r == "WFBitMapT" || r == "WFSyncUUID" || r == "PausedSyncT";
    if let Some(p) = local_obs.and_then(|o| o.peers.iter().find(|p| p.connection == "Connected" && target(&p.replication))) {
        let done = p.sync_percent.map(|d| format!(", {d:.1}% done")).unwrap_or_default();
        return format!("it is being resynced from {} right now{done}; wait until `drbdpool status` shows it UpToDate", p.node);
    }
    let seen = last.and_then(|(age, o)| {
        o.peers.iter().find(|p| target(&p.replication)).map(|p| {
            let at = p.sync_percent.map(|d| format!(" at {d:.1}%")).unwrap_or_default();
            format!(" (this node last reported a resync from {}{at} {age}s ago)", p.node)
        })
    });
    format!(
        "a resync to it stopped before it finished and nothing resyncs it now{}, so it holds partial data",
        seen.unwrap_or_default()
    )
}

/// Where good data is, for refusals: the other replicas that published UpToDate and are not marked outdated.
pub fn where_good(doc: &VolumeDoc, local: &str, states: &[NodeState]) -> String {
    let good: Vec<&str> = doc
        .replicas
        .iter()
        .map(|r| r.node.as_str())
        .filter(|n| *n != local && !doc.outdated.iter().any(|o| o == n))
        .filter(|n| {
            states.iter().find(|s| s.node == *n).and_then(|s| s.volumes.get(&doc.resource)).is_some_and(|v| v.disk == "UpToDate")
        })
        .collect();
    if good.is_empty() {
        "no other node reports an UpToDate replica; check `drbdpool status`".to_string()
    } else {
        format!("UpToDate data is on {}: start the guest there", good.join(", "))
    }
}

/// The local view, waiting (at most CONSISTENT_WAIT) while DRBD shows the disk `Consistent`:
/// the moment after a peer loss in which DRBD 9 has not yet settled it to UpToDate.
fn settled_view(ctx: &Ctx, doc: &VolumeDoc) -> Result<Option<VolumeObserved>> {
    let start = std::time::Instant::now();
    let mut obs = ctx.node.ops()?.observe(doc)?;
    while obs.as_ref().is_some_and(|o| o.disk == "Consistent") && start.elapsed() < CONSISTENT_WAIT {
        std::thread::sleep(ctx.poll.min(CONSISTENT_WAIT.saturating_sub(start.elapsed())));
        obs = ctx.node.ops()?.observe(doc)?;
    }
    Ok(obs)
}

/// A promotion DRBD refused for lost quorum: say where good data is (drbd9-real.md item 4).
fn promote(ctx: &Ctx, doc: &VolumeDoc, local: &str) -> Result<()> {
    ctx.node.ops().and_then(|n| n.promote(doc)).map_err(|e| match e {
        crate::error::Error::Refused(m) if m.contains("quorum") => {
            let good = ctx.store.node_states_of(&doc.resource).map(|s| where_good(doc, local, &s)).unwrap_or_else(|se| {
                format!("the published states could not be read ({se}) to say where good data is")
            });
            crate::error::Error::Refused(format!(
                "{m}. Quorum is lost for {}:{} on {local}: bring back enough of its other replicas ({}) for a majority, \
                 or start the guest on a node that has quorum; by the last published states, {good}",
                doc.storeid,
                doc.volname,
                doc.replicas.iter().map(|r| r.node.as_str()).filter(|n| *n != local).collect::<Vec<_>>().join(", ")
            ))
        }
        e => e,
    })
}

pub fn activate(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    if let Some(snap) = a.opt_str("snapname")? {
        return super::snapshot::activate(ctx, sid, volname, snap);
    }
    let migrated_from = a.opt_str("migrated_from")?;
    if let Some(m) = migrated_from {
        crate::naming::check_node_name(m)?;
    }
    let doc = load_created(ctx, sid, volname)?;
    let local = ctx.node.name().to_string();
    let obs = if doc.replica(&local).is_some() { settled_view(ctx, &doc)? } else { None };
    let states = ctx.store.node_states_of(&doc.resource)?;
    let departed: Vec<String> = match crate::membership::Membership::of_store(ctx.store)? {
        Some(m) => doc.replicas.iter().map(|r| r.node.clone()).filter(|n| *n != local && m.departed(n)).collect(),
        None => Vec::new(),
    };
    match decide(&doc, &local, obs.as_ref(), &states, &departed, migrated_from, now())? {
        Decision::AlreadyPrimary => {}
        Decision::Promote => {
            crate::failpoint!("activate.before-promote");
            promote(ctx, &doc, &local)?
        }
        Decision::PromoteForMigration { source } => {
            tracing::info!("opening the live-migration window for {} from {source} to {local}", doc.resource);
            let doc = super::update(ctx, &doc, |d| {
                d.dual_primary = Some(DualPrimary { source: source.clone(), target: local.clone(), since: now() });
                Ok(Change::Desired)
            })?;
            ctx.node.ops()?.set_dual_primary(&doc, true)?;
            // DRBD checks allow-two-primaries on both sides: the source's agent must have
            // applied the window before we promote. On any failure the window closes again.
            if let Err(e) = wait_for_window(ctx, &doc, &source) {
                close_window(ctx, sid, volname, &local)?;
                return Err(e);
            }
            crate::failpoint!("activate.before-promote");
            if let Err(e) = promote(ctx, &doc, &local) {
                close_window(ctx, sid, volname, &local)?;
                return Err(e);
            }
        }
    }
    crate::failpoint!("activate.after-promote");
    Ok(json!({"path": doc.device_path()}))
}

/// DRBD refuses a second Primary unless both sides allow two primaries: wait
/// (bounded) until the source's agent reports the generation that opened the window.
fn wait_for_window(ctx: &Ctx, doc: &VolumeDoc, source: &str) -> Result<()> {
    let nodes = [source.to_string()];
    let what = format!("{} to allow two primaries", doc.resource);
    let pending = super::wait::until_published(ctx.store, &nodes, &doc.resource, ctx.peer_timeout, ctx.poll, &what, |o| {
        o.is_some_and(|o| o.generation >= doc.generation && o.error.is_none())
    })?;
    if !pending.is_empty() {
        return Err(crate::error::Error::Timeout(format!(
            "live migration of {}:{}: the agent on {source} did not allow two primaries within {}s, so this node was not promoted; \
             check `systemctl status drbdpool-agent` on {source}, then retry the migration",
            doc.storeid,
            doc.volname,
            ctx.peer_timeout.as_secs()
        )));
    }
    Ok(())
}

pub fn deactivate(ctx: &Ctx, sid: &str, a: &Args) -> Result<Value> {
    let volname = a.str("volname")?;
    if let Some(snap) = a.opt_str("snapname")? {
        return super::snapshot::deactivate(ctx, sid, volname, snap);
    }
    let doc = load(ctx, sid, volname)?;
    let local = ctx.node.name().to_string();
    if doc.replica(&local).is_none() {
        return Ok(json!({})); // nothing is active here
    }
    ctx.node.ops()?.demote(&doc)?;
    if doc.dual_primary.as_ref().is_some_and(|d| d.source == local || d.target == local) {
        // Migration finished (source demoted) or aborted (target demoted): close the window.
        close_window(ctx, sid, volname, &local)?;
    }
    Ok(json!({}))
}

/// End the live-migration window: no more dual-primary, in the store (agents apply it) and here.
fn close_window(ctx: &Ctx, sid: &str, volname: &str, local: &str) -> Result<()> {
    let mut closed = false;
    let doc = super::update(ctx, &load(ctx, sid, volname)?, |d| {
        if d.dual_primary.is_none() {
            return Ok(Change::Unchanged);
        }
        d.dual_primary = None;
        closed = true;
        Ok(Change::Desired)
    })?;
    if !closed {
        return Ok(());
    }
    tracing::info!("live-migration window of {} closed by {local}", doc.resource);
    ctx.node.ops().and_then(|n| n.set_dual_primary(&doc, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::docs::PeerObserved;

    fn doc() -> VolumeDoc {
        VolumeDoc { size_kib: 1024, ..VolumeDoc::for_test("pool", "vm-100-disk-0", &["a", "b"]) }
    }
    fn obs(role: &str, disk: &str, peers: &[(&str, &str)]) -> VolumeObserved {
        VolumeObserved {
            ready: true,
            generation: 1,
            role: role.into(),
            disk: disk.into(),
            peers: peers.iter().map(|(n, r)| PeerObserved { node: n.to_string(), role: r.to_string(), connection: "Connected".into(), ..Default::default() }).collect(),
            ..Default::default()
        }
    }
    fn state(node: &str, updated: u64, o: VolumeObserved) -> NodeState {
        let mut s = NodeState { format: 1, node: node.into(), updated, storages: Default::default(), volumes: Default::default() };
        s.volumes.insert("pool.vm-100-disk-0".into(), o);
        s
    }
    const NOW: u64 = 10_000;

    #[test]
    fn not_a_replica_names_replica_nodes() {
        let e = decide(&doc(), "c", None, &[], &[], None, NOW).unwrap_err();
        assert_eq!(e.kind(), "refused");
        assert!(e.to_string().contains("replicas are on a, b"), "{e}");
    }

    #[test]
    fn a_replica_moving_away_is_not_promoted_but_a_running_guest_keeps_it() {
        let d = VolumeDoc {
            moving: Some(crate::store::docs::ReplicaMove { from: "a".into(), to: "c".into(), since: 1 }),
            ..VolumeDoc::for_test("pool", "vm-100-disk-0", &["a", "b", "c"])
        };
        let e = decide(&d, "a", Some(&obs("Secondary", "UpToDate", &[])), &[], &[], None, NOW).unwrap_err();
        assert_eq!(e.kind(), "refused");
        assert!(e.to_string().contains("moving to c") && e.to_string().contains("start the guest on b or c"), "{e}");
        assert!(matches!(decide(&d, "a", Some(&obs("Primary", "UpToDate", &[])), &[], &[], None, NOW), Ok(Decision::AlreadyPrimary)));
    }

    #[test]
    fn not_ready_volume() {
        let mut d = doc();
        d.state = VolumeState::Creating;
        assert!(decide(&d, "a", Some(&obs("Secondary", "UpToDate", &[])), &[], &[], None, NOW).unwrap_err().to_string().contains("being created"));
        d.state = VolumeState::Deleting;
        assert!(decide(&d, "a", Some(&obs("Secondary", "UpToDate", &[])), &[], &[], None, NOW).unwrap_err().to_string().contains("deleted"));
    }

    #[test]
    fn outdated_node_refused_even_if_uptodate() {
        let mut d = doc();
        d.outdated = vec!["a".into()];
        let states = [state("b", NOW, obs("Secondary", "UpToDate", &[]))];
        let e = decide(&d, "a", Some(&obs("Secondary", "UpToDate", &[])), &states, &[], None, NOW).unwrap_err();
        assert!(e.to_string().contains("outdated") && e.to_string().contains("UpToDate data is on b"), "{e}");
    }

    #[test]
    fn local_disk_must_be_uptodate() {
        let states = [state("b", NOW, obs("Secondary", "UpToDate", &[]))];
        for disk in ["Outdated", "Inconsistent", "DUnknown", "Diskless", ""] {
            let e = decide(&doc(), "a", Some(&obs("Secondary", disk, &[])), &states, &[], None, NOW).unwrap_err();
            assert_eq!(e.kind(), "refused");
            assert!(e.to_string().contains("UpToDate data is on b"), "{disk}: {e}");
        }
        let e = decide(&doc(), "a", None, &[], &[], None, NOW).unwrap_err();
        assert!(e.to_string().contains("is unknown") && e.to_string().contains("no other node"), "{e}");
        // An outdated peer is not offered as the place of good data.
        let mut d = doc();
        d.outdated = vec!["b".into()];
        let e = decide(&d, "a", Some(&obs("Secondary", "Outdated", &[])), &states, &[], None, NOW).unwrap_err();
        assert!(e.to_string().contains("no other node"), "{e}");
    }

    #[test]
    fn promote_when_alone_and_idempotent_when_primary() {
        let states = [state("b", NOW, obs("Secondary", "UpToDate", &[]))];
        assert_eq!(decide(&doc(), "a", Some(&obs("Secondary", "UpToDate", &[("b", "Secondary")])), &states, &[], None, NOW).unwrap(), Decision::Promote);
        assert_eq!(decide(&doc(), "a", Some(&obs("Primary", "UpToDate", &[("b", "Secondary")])), &states, &[], None, NOW).unwrap(), Decision::AlreadyPrimary);
    }

    #[test]
    fn other_primary_refused_unless_migrating_from_it() {
        let local = obs("Secondary", "UpToDate", &[("b", "Primary")]);
        let e = decide(&doc(), "a", Some(&local), &[], &[], None, NOW).unwrap_err();
        assert!(e.to_string().contains("Primary on b"), "{e}");
        let e = decide(&doc(), "a", Some(&local), &[], &[], Some("c"), NOW).unwrap_err();
        assert!(e.to_string().contains("Primary on b"), "{e}");
        assert_eq!(decide(&doc(), "a", Some(&local), &[], &[], Some("b"), NOW).unwrap(), Decision::PromoteForMigration { source: "b".into() });
        // Already primary during the window (activate repeated): still the migration decision, idempotent.
        let both = obs("Primary", "UpToDate", &[("b", "Primary")]);
        assert_eq!(decide(&doc(), "a", Some(&both), &[], &[], Some("b"), NOW).unwrap(), Decision::PromoteForMigration { source: "b".into() });
    }

    #[test]
    fn published_primary_counts_only_while_fresh() {
        // Disconnected peer (not in the local view) that still publishes Primary: refuse (split brain).
        let local = obs("Secondary", "UpToDate", &[]);
        let fresh = [state("b", NOW - 10, obs("Primary", "UpToDate", &[]))];
        assert!(decide(&doc(), "a", Some(&local), &fresh, &[], None, NOW).unwrap_err().to_string().contains("Primary on b"));
        // A dead node's last word is not trusted forever (HA recovery).
        let stale = [state("b", NOW - STALE_AFTER_SECS - 1, obs("Primary", "UpToDate", &[]))];
        assert_eq!(decide(&doc(), "a", Some(&local), &stale, &[], None, NOW).unwrap(), Decision::Promote);
    }

    #[test]
    fn a_fresh_claim_of_a_peer_that_left_the_quorate_membership_does_not_hold_the_failover() {
        let local = obs("Secondary", "UpToDate", &[]);
        let fresh = [state("b", NOW - 3, obs("Primary", "UpToDate", &[]))];
        let departed = ["b".to_string()];
        assert_eq!(decide(&doc(), "a", Some(&local), &fresh, &departed, None, NOW).unwrap(), Decision::Promote);
        // Still a member (the replication link alone is cut): the claim holds.
        let e = decide(&doc(), "a", Some(&local), &fresh, &["c".to_string()], None, NOW).unwrap_err();
        assert!(e.to_string().contains("Primary on b"), "{e}");
        // DRBD here still sees it Primary: membership does not overrule the kernel.
        let connected = obs("Secondary", "UpToDate", &[("b", "Primary")]);
        let e = decide(&doc(), "a", Some(&connected), &fresh, &departed, None, NOW).unwrap_err();
        assert!(e.to_string().contains("Primary on b"), "{e}");
    }

    /// DRBD 9, 3 replicas: with quorum here, the claim of a peer cut off from every node we see
    /// does not hold the failover (that peer is in the minority: on-no-quorum io-error).
    #[test]
    fn with_drbd9_quorum_a_claim_of_a_peer_cut_off_from_all_does_not_hold_the_failover() {
        let d = VolumeDoc { size_kib: 1024, ..VolumeDoc::for_test("pool", "vm-100-disk-0", &["a", "b", "c"]) };
        let cut = |n: &str| PeerObserved { node: n.into(), role: "Unknown".into(), connection: "Connecting".into(), ..Default::default() };
        // a: UpToDate Secondary, quorum, c connected, b (the dead Primary) not.
        let local = VolumeObserved { quorum: Some(true), ..obs("Secondary", "UpToDate", &[("c", "Secondary")]) };
        let b_claim = state("b", NOW - 5, obs("Primary", "UpToDate", &[]));
        let c_sees_b_gone = state("c", NOW - 1, VolumeObserved { peers: vec![cut("b")], ..obs("Secondary", "UpToDate", &[]) });
        assert_eq!(decide(&d, "a", Some(&local), &[b_claim.clone(), c_sees_b_gone.clone()], &[], None, NOW).unwrap(), Decision::Promote);
        // c still reaches b (a partial partition: b may have quorum with c): the claim holds.
        let c_sees_b = state("c", NOW - 1, obs("Secondary", "UpToDate", &[("b", "Primary")]));
        let e = decide(&d, "a", Some(&local), &[b_claim.clone(), c_sees_b], &[], None, NOW).unwrap_err();
        assert!(e.to_string().contains("Primary on b"), "{e}");
        // c's report is stale: not known, the claim holds.
        let c_stale = state("c", NOW - STALE_AFTER_SECS - 1, VolumeObserved { peers: vec![cut("b")], ..obs("Secondary", "UpToDate", &[]) });
        assert!(decide(&d, "a", Some(&local), &[b_claim.clone(), c_stale], &[], None, NOW).is_err());
        // No quorum here, or DRBD does not say (8.4): the claim holds.
        for q in [Some(false), None] {
            let l = VolumeObserved { quorum: q, ..local.clone() };
            assert!(decide(&d, "a", Some(&l), &[b_claim.clone(), c_sees_b_gone.clone()], &[], None, NOW).is_err(), "{q:?}");
        }
        // Two replicas: DRBD has no quorum to lean on, the claim holds.
        let two = obs("Secondary", "UpToDate", &[]);
        let l = VolumeObserved { quorum: Some(true), ..two };
        assert!(decide(&doc(), "a", Some(&l), &[b_claim], &[], None, NOW).is_err());
    }

    #[test]
    fn connected_peer_role_from_drbd_beats_a_published_claim() {
        // b just demoted: DRBD here sees it Connected Secondary, its agent has not republished yet.
        let local = obs("Secondary", "UpToDate", &[("b", "Secondary")]);
        let lagging = [state("b", NOW - 1, obs("Primary", "UpToDate", &[]))];
        assert_eq!(decide(&doc(), "a", Some(&local), &lagging, &[], None, NOW).unwrap(), Decision::Promote);
    }

    /// Issue 18, 3: node a down, b Inconsistent after a resync that stopped, fenced too:
    /// the message names the interrupted resync and the fence mark, and does not point to a
    /// node whose last report is stale as if it were current.
    #[test]
    fn where_good_data_is_by_fresh_reports_and_an_interrupted_resync_is_named() {
        let mut d = doc();
        d.outdated = vec!["b".into()];
        let mut mine = obs("Secondary", "Inconsistent", &[]);
        mine.peers = vec![PeerObserved { node: "a".into(), connection: "Connecting".into(), replication: "Off".into(), ..Default::default() }];
        // b's own last report: a resync from a at 38 %.
        let mut last = obs("Secondary", "Inconsistent", &[]);
        last.peers = vec![PeerObserved { node: "a".into(), connection: "Connected".into(), replication: "SyncTarget".into(), sync_percent: Some(38.2), ..Default::default() }];
        let stale_a = state("a", NOW - 300, obs("Primary", "UpToDate", &[]));
        let states = [stale_a.clone(), state("b", NOW - 20, last.clone())];
        let e = decide(&d, "b", Some(&mine), &states, &[], None, NOW).unwrap_err().to_string();
        assert!(e.contains("is Inconsistent: a resync to it stopped") && e.contains("from a at 38.2% 20s ago"), "{e}");
        assert!(e.contains("also marked outdated by the fence-peer handler"), "{e}");
        assert!(!e.contains("UpToDate data is on a"), "a stale report named as current: {e}");
        assert!(e.contains("a reported UpToDate data 300s ago") && e.contains("may be down"), "{e}");
        // The same with a fresh report of a: named as the place to start the guest.
        let states = [state("a", NOW - 10, obs("Secondary", "UpToDate", &[])), state("b", NOW - 20, last)];
        let e = decide(&d, "b", Some(&mine), &states, &[], None, NOW).unwrap_err().to_string();
        assert!(e.contains("UpToDate data is on a (reported 10s ago): start the guest there"), "{e}");
        // A resync running now: wait for it.
        let mut syncing = obs("Secondary", "Inconsistent", &[]);
        syncing.peers = vec![PeerObserved { node: "a".into(), connection: "Connected".into(), replication: "SyncTarget".into(), sync_percent: Some(61.0), ..Default::default() }];
        let e = decide(&doc(), "b", Some(&syncing), &[stale_a], &[], None, NOW).unwrap_err().to_string();
        assert!(e.contains("being resynced from a right now, 61.0% done") && !e.contains("outdated"), "{e}");
        // Outdated (not Inconsistent) and fenced: the fence mark alone, as before.
        let e = decide(&d, "b", Some(&obs("Secondary", "Outdated", &[])), &[], &[], None, NOW).unwrap_err().to_string();
        assert!(e.contains("marked outdated by the fence-peer handler") && !e.contains("resync"), "{e}");
    }
}
