//! Steering Proxmox HA to nodes that hold good data.
//!
//! The HA manager has no storage hook (tests/ha runs its real code): it
//! picks a recovery node from node-affinity rules only. So for every HA-managed
//! guest whose disks are on drbdpool we keep one strict node-affinity rule
//! `drbdpool-<vm|ct><vmid>` listing the nodes whose replicas of all its disks
//! are UpToDate and not marked outdated, all at one priority (why: the HA tier,
//! tests/ha, and docs/ARCHITECTURE.md "HA rules"). Guests that an admin's
//! positive resource-affinity rule keeps together share one rule
//! `drbdpool-<first guest>`, because PVE drops every node-affinity rule of a
//! "together" set that is in more than one. Rules are changed only through
//! `ha-manager rules ...` (the API takes the `domain-ha` lock and checks
//! feasibility), never by editing rules.cfg, and only when their content would
//! change. Where PVE's checker would drop our rule together with an admin's
//! (an admin node-affinity rule for the same guest, a "together" set whose
//! guests share no good node, a "separate" set with fewer good nodes than
//! guests), we write none for those guests and report the conflict: the
//! admin's rule stays in use, and activation still refuses a node without
//! good data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::exec::{Cmd, Runner};
use crate::store::docs::{NodeState, VolumeDoc, VolumeState};

pub const RULE_PREFIX: &str = "drbdpool-";

/// One section of a PVE section-config file (`type: id` + indented `key value` lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub kind: String,
    pub id: String,
    pub props: BTreeMap<String, String>,
}

/// Parse PVE's section-config text (rules.cfg, resources.cfg). Tolerant: lines it
/// does not understand are skipped, comments are ignored.
pub fn parse_sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if !indented {
            if let Some((kind, id)) = trimmed.split_once(':') {
                out.push(Section { kind: kind.trim().to_string(), id: id.trim().to_string(), props: BTreeMap::new() });
            }
            continue;
        }
        if let Some(sec) = out.last_mut() {
            let (k, v) = trimmed.split_once(char::is_whitespace).unwrap_or((trimmed, ""));
            sec.props.insert(k.to_string(), v.trim().to_string());
        }
    }
    out
}

/// A node-affinity rule as we want it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub resource: String,           // "vm:100", or "ct:101,vm:100" for a "together" set (sorted)
    pub nodes: BTreeMap<String, u32>, // node -> priority (0 = none given, as PVE writes it)
    pub strict: bool,
}

impl Rule {
    fn nodes_arg(&self) -> String {
        self.nodes
            .iter()
            .map(|(n, p)| if *p == 0 { n.clone() } else { format!("{n}:{p}") })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn resources(&self) -> BTreeSet<&str> {
        split_set(&self.resource)
    }

    fn from_section(s: &Section) -> Option<Rule> {
        if s.kind != "node-affinity" {
            return None;
        }
        let nodes = s
            .props
            .get("nodes")
            .map(|v| {
                v.split(',')
                    .filter(|x| !x.is_empty())
                    .map(|x| match x.split_once(':') {
                        Some((n, p)) => (n.to_string(), p.parse().unwrap_or(0)),
                        None => (x.to_string(), 0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Rule {
            id: s.id.clone(),
            resource: s.props.get("resources").cloned().unwrap_or_default(),
            nodes,
            strict: s.props.get("strict").map(|v| v == "1").unwrap_or(false),
        })
    }
}

/// What the sync decided; also what `drbdpool status` / the agent log report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Guests we could not steer, and why (admin rule, disks on disjoint nodes, ...).
    pub conflicts: Vec<String>,
}

/// HA-managed guests from resources.cfg: `vm: 100` / `ct: 101` -> ("vm", 100).
pub fn ha_guests(resources_cfg: &str) -> Vec<(String, u32)> {
    parse_sections(resources_cfg)
        .into_iter()
        .filter(|s| s.kind == "vm" || s.kind == "ct")
        .filter_map(|s| s.id.parse().ok().map(|id| (s.kind, id)))
        .collect()
}

/// The rules drbdpool wants (one per guest), and the guests it cannot steer.
/// A rule lists the nodes whose replicas of all the guest's disks are UpToDate
/// and not marked outdated. When no replica node is known good (no agent has
/// published yet, or every replica is behind), it lists every replica node:
/// activation then decides, and a node without a replica stays excluded.
pub fn desired_rules(
    guests: &[(String, u32)],
    volumes: &[VolumeDoc],
    states: &[NodeState],
    strict: bool,
) -> (Vec<Rule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut conflicts = Vec::new();
    for (kind, vmid) in guests {
        let disks: Vec<&VolumeDoc> =
            volumes.iter().filter(|v| v.vmid == *vmid && !v.base && v.state != VolumeState::Deleting).collect();
        if disks.is_empty() {
            continue;
        }
        // Nodes holding a replica of every disk.
        let mut common: Option<BTreeSet<&str>> = None;
        for d in &disks {
            let set: BTreeSet<&str> = d.replicas.iter().map(|r| r.node.as_str()).collect();
            common = Some(match common {
                None => set,
                Some(c) => c.intersection(&set).copied().collect(),
            });
        }
        let common = common.unwrap_or_default();
        let resource = format!("{kind}:{vmid}");
        if common.is_empty() {
            conflicts.push(format!(
                "{resource}: its disks have no replica node in common; move them so one node holds all of them"
            ));
            continue;
        }
        let good: BTreeSet<&str> = common
            .iter()
            .copied()
            .filter(|n| {
                disks.iter().all(|d| {
                    !d.outdated.iter().any(|o| o == n)
                        && states
                            .iter()
                            .find(|s| s.node == *n)
                            .and_then(|s| s.volumes.get(&d.resource))
                            .map(|o| o.disk == "UpToDate")
                            .unwrap_or(false)
                })
            })
            .collect();
        let listed = if good.is_empty() { &common } else { &good };
        let nodes = listed.iter().map(|n| (n.to_string(), 0)).collect();
        rules.push(Rule { id: format!("{RULE_PREFIX}{kind}{vmid}"), resource, nodes, strict });
    }
    (rules, conflicts)
}

fn split_set(v: &str) -> BTreeSet<&str> {
    v.split(',').map(str::trim).filter(|x| !x.is_empty()).collect()
}

/// An admin's enabled resource-affinity rule: (id, positive?, resources).
fn resource_affinity_rules(rules_cfg: &str) -> Vec<(String, bool, BTreeSet<String>)> {
    parse_sections(rules_cfg)
        .into_iter()
        .filter(|s| s.kind == "resource-affinity" && !is_disabled(s))
        .map(|s| {
            let res = split_set(s.props.get("resources").map(String::as_str).unwrap_or(""))
                .into_iter()
                .map(String::from)
                .collect();
            (s.id, s.props.get("affinity").map(|a| a == "positive").unwrap_or(false), res)
        })
        .collect()
}

fn is_disabled(s: &Section) -> bool {
    s.props.get("disable").is_some_and(|v| v.is_empty() || v == "1")
}

/// Fit the per-guest rules to the admin's resource-affinity rules in rules.cfg,
/// the way PVE's checker (PVE::HA::Rules, HA 5.2) needs them to stay in use:
/// - connected "together" (positive) sets get one rule for all their guests,
///   listing the nodes good for every one of them (PVE drops all node-affinity
///   rules of a set that is in more than one); none if they share no good node;
/// - a "separate" (negative) set whose guests' rules allow fewer nodes than it
///   has guests gets no rules for those guests (PVE would drop them all).
pub fn fit_resource_affinity(rules: Vec<Rule>, rules_cfg: &str) -> (Vec<Rule>, Vec<String>) {
    let affinity = resource_affinity_rules(rules_cfg);
    let mut conflicts = Vec::new();
    // Connected positive sets (PVE merges positive rules that share a resource).
    let mut sets: Vec<(Vec<String>, BTreeSet<String>)> = Vec::new();
    for (id, _, res) in affinity.iter().filter(|r| r.1) {
        let mut ids = vec![id.clone()];
        let mut merged = res.clone();
        sets.retain(|(i, r)| {
            if r.is_disjoint(&merged) {
                true
            } else {
                ids.extend(i.iter().cloned());
                merged.extend(r.iter().cloned());
                false
            }
        });
        ids.sort();
        sets.push((ids, merged));
    }
    let admin: Vec<Rule> = parse_sections(rules_cfg)
        .iter()
        .filter(|s| !s.id.starts_with(RULE_PREFIX) && !is_disabled(s))
        .filter_map(Rule::from_section)
        .collect();
    let mut out: Vec<Rule> = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (ids, members) in &sets {
        let ours: Vec<&Rule> = rules.iter().filter(|r| members.contains(&r.resource)).collect();
        if ours.is_empty() {
            continue;
        }
        // An admin's node-affinity rule for one of the set wins (PVE allows one per set).
        if let Some(a) = admin.iter().find(|a| a.resources().iter().any(|x| members.contains(*x))) {
            let names: Vec<&str> = ours.iter().map(|r| r.resource.as_str()).collect();
            conflicts.push(format!(
                "{}: resource-affinity rule(s) {} keep them together with {}, whose HA rule '{}' was written by \
                 hand; PVE allows one node-affinity rule per such set, so drbdpool writes none for them",
                names.join(","),
                ids.join(","),
                a.resource,
                a.id
            ));
            taken.extend(ours.iter().map(|r| r.id.clone()));
            continue;
        }
        if ours.len() < 2 {
            continue; // one of our rules: nothing to merge
        }
        for r in &ours {
            taken.insert(r.id.clone());
        }
        let mut nodes: BTreeSet<&String> = ours[0].nodes.keys().collect();
        for r in &ours[1..] {
            nodes = nodes.intersection(&r.nodes.keys().collect()).copied().collect();
        }
        let resources: Vec<&str> = ours.iter().map(|r| r.resource.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
        if nodes.is_empty() {
            conflicts.push(format!(
                "{}: resource-affinity rule(s) {} keep them together, but no node holds good replicas of all their \
                 disks; drbdpool writes no HA rule for them until one does",
                resources.join(","),
                ids.join(",")
            ));
            continue;
        }
        out.push(Rule {
            id: ours.iter().map(|r| r.id.clone()).min().unwrap_or_default(),
            resource: resources.join(","),
            nodes: nodes.into_iter().map(|n| (n.clone(), 0)).collect(),
            strict: ours.iter().any(|r| r.strict),
        });
    }
    out.extend(rules.into_iter().filter(|r| !taken.contains(&r.id)));
    // Negative sets: the nodes our rules allow must be at least as many as the guests they cover.
    let mut drop: BTreeSet<String> = BTreeSet::new();
    for (id, _, members) in affinity.iter().filter(|r| !r.1) {
        let ours: Vec<&Rule> = out.iter().filter(|r| r.resources().iter().any(|x| members.contains(*x))).collect();
        let located: usize = ours.iter().map(|r| r.resources().iter().filter(|x| members.contains(**x)).count()).sum();
        let allowed: BTreeSet<&String> = ours.iter().flat_map(|r| r.nodes.keys()).collect();
        if !ours.is_empty() && allowed.len() < located {
            let names: Vec<&str> = ours.iter().map(|r| r.resource.as_str()).collect();
            conflicts.push(format!(
                "{}: resource-affinity rule '{id}' keeps them apart, but only {} node(s) hold good replicas of their \
                 disks; drbdpool writes no HA rule for them until enough do",
                names.join(","),
                allowed.len()
            ));
            drop.extend(ours.iter().map(|r| r.id.clone()));
        }
    }
    out.retain(|r| !drop.contains(&r.id));
    out.sort_by(|a, b| a.id.cmp(&b.id));
    (out, conflicts)
}

/// Bring `ha-manager`'s node-affinity rules in line with `want`. `rules_cfg` is
/// the current rules.cfg text (read only). Commands run through `runner` as
/// `<ha_manager> rules add|set|remove ...`.
pub fn sync_rules(
    runner: &dyn Runner,
    ha_manager: &str,
    rules_cfg: &str,
    want: &[Rule],
    mut conflicts: Vec<String>,
) -> Result<SyncReport> {
    let sections = parse_sections(rules_cfg);
    let existing: Vec<Rule> = sections.iter().filter_map(Rule::from_section).collect();
    // Admin node-affinity rules PVE takes into account (a disabled one is skipped by its checker).
    let admin: Vec<Rule> = sections
        .iter()
        .filter(|s| !s.id.starts_with(RULE_PREFIX) && !is_disabled(s))
        .filter_map(Rule::from_section)
        .collect();
    let mut report = SyncReport::default();
    let mut errors = Vec::new();
    let run = |args: Vec<String>| -> Result<()> { runner.check(&Cmd::new(ha_manager).args(args)).map(|_| ()) };

    let mut kept: Vec<&Rule> = Vec::new();
    for rule in want {
        // An admin's own node-affinity rule for this guest wins.
        if let Some(user) = admin.iter().find(|r| !r.resources().is_disjoint(&rule.resources())) {
            conflicts.push(format!(
                "{}: HA rule '{}' was written by hand for this guest; drbdpool leaves it alone (wanted nodes {})",
                rule.resource,
                user.id,
                rule.nodes_arg()
            ));
            continue;
        }
        kept.push(rule);
    }
    // First our rules for guests that no longer need one, or that an admin's rule now covers (PVE
    // would ignore both: a resource may be in one node-affinity rule only), so that a rule taking
    // over a guest from another of ours (a "together" set) passes PVE's feasibility check.
    for cur in existing.iter().filter(|r| r.id.starts_with(RULE_PREFIX)) {
        if !kept.iter().any(|w| w.id == cur.id) {
            match run(vec!["rules".into(), "remove".into(), cur.id.clone()]) {
                Ok(()) => report.removed.push(cur.id.clone()),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    for rule in kept {
        let strict = if rule.strict { "1" } else { "0" };
        match existing.iter().find(|r| r.id == rule.id) {
            Some(cur) if cur.resources() == rule.resources() && cur.nodes == rule.nodes && cur.strict == rule.strict => {
                report.unchanged.push(rule.id.clone());
            }
            Some(_) => {
                let args = vec!["rules".into(), "set".into(), "node-affinity".into(), rule.id.clone(),
                    "--resources".into(), rule.resource.clone(), "--nodes".into(), rule.nodes_arg(),
                    "--strict".into(), strict.into()];
                match run(args) {
                    Ok(()) => report.changed.push(rule.id.clone()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            None => {
                let args = vec!["rules".into(), "add".into(), "node-affinity".into(), rule.id.clone(),
                    "--resources".into(), rule.resource.clone(), "--nodes".into(), rule.nodes_arg(),
                    "--strict".into(), strict.into(),
                    "--comment".into(), "managed by drbdpool: nodes holding good replicas of this guest's disks".into()];
                match run(args) {
                    Ok(()) => report.added.push(rule.id.clone()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
    }
    report.conflicts = conflicts;
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(Error::Tool(format!("updating HA rules: {}", errors.join("; "))))
    }
}

/// Read a file that may not exist (no HA configured yet) as empty text.
pub fn read_optional(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::Store(format!("cannot read {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Output, RecordingRunner};
    use crate::store::docs::*;

    fn vol(vmid: u32, name: &str, nodes: &[&str]) -> VolumeDoc {
        VolumeDoc { vmid, resource: format!("pool-{name}"), size_kib: 1024, ..VolumeDoc::for_test("pool", name, nodes) }
    }

    fn state(node: &str, disks: &[(&str, &str)]) -> NodeState {
        NodeState {
            format: 1,
            node: node.into(),
            updated: 0,
            storages: Default::default(),
            volumes: disks
                .iter()
                .map(|(r, d)| (r.to_string(), VolumeObserved { disk: d.to_string(), ..Default::default() }))
                .collect(),
        }
    }

    const RESOURCES: &str = "vm: 100\n\tstate started\n\nct: 101\n\tstate started\n\nvm: 102\n\tstate started\n";

    #[test]
    fn parses_section_config() {
        let s = parse_sections("node-affinity: r1\n\tresources vm:100\n\tnodes a:2,b:1\n\tstrict 1\n# c\n");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].props["nodes"], "a:2,b:1");
        assert_eq!(ha_guests(RESOURCES), vec![("vm".into(), 100), ("ct".into(), 101), ("vm".into(), 102)]);
    }

    #[test]
    fn only_nodes_with_good_replicas_of_every_disk_are_listed() {
        let vols = vec![vol(100, "vm-100-disk-0", &["pve1", "pve2"]), vol(100, "vm-100-disk-1", &["pve2", "pve1"])];
        let states = vec![
            state("pve1", &[("pool-vm-100-disk-0", "UpToDate"), ("pool-vm-100-disk-1", "Outdated")]),
            state("pve2", &[("pool-vm-100-disk-0", "UpToDate"), ("pool-vm-100-disk-1", "UpToDate")]),
        ];
        let (rules, conflicts) = desired_rules(&ha_guests(RESOURCES), &vols, &states, true);
        assert!(conflicts.is_empty());
        assert_eq!(rules.len(), 1, "only vm 100 has drbdpool disks");
        assert_eq!(rules[0].id, "drbdpool-vm100");
        assert_eq!(rules[0].nodes_arg(), "pve2", "pve1's disk-1 is Outdated");
    }

    #[test]
    fn no_good_replica_known_lists_every_replica_node() {
        let vols = vec![vol(100, "vm-100-disk-0", &["pve1", "pve2"])];
        let (rules, _) = desired_rules(&[("vm".into(), 100)], &vols, &[], true);
        assert_eq!(rules[0].nodes_arg(), "pve1,pve2");
    }

    #[test]
    fn fence_record_removes_a_node() {
        let mut v = vol(100, "vm-100-disk-0", &["pve1", "pve2"]);
        v.outdated = vec!["pve2".into()];
        let states = vec![
            state("pve1", &[("pool-vm-100-disk-0", "UpToDate")]),
            state("pve2", &[("pool-vm-100-disk-0", "UpToDate")]),
        ];
        let (rules, _) = desired_rules(&[("vm".into(), 100)], &[v], &states, true);
        assert_eq!(rules[0].nodes_arg(), "pve1");
    }

    #[test]
    fn disjoint_disks_are_a_conflict_not_a_rule() {
        let vols = vec![vol(100, "vm-100-disk-0", &["a", "b"]), vol(100, "vm-100-disk-1", &["c", "d"])];
        let (rules, conflicts) = desired_rules(&[("vm".into(), 100)], &vols, &[], true);
        assert!(rules.is_empty());
        assert!(conflicts[0].contains("no replica node in common"), "{conflicts:?}");
    }

    fn want() -> Vec<Rule> {
        vec![Rule {
            id: "drbdpool-vm100".into(),
            resource: "vm:100".into(),
            nodes: [("pve1".to_string(), 0), ("pve2".to_string(), 0)].into_iter().collect(),
            strict: true,
        }]
    }

    #[test]
    fn adds_missing_rule_with_exact_argv() {
        let r = RecordingRunner::new();
        let rep = sync_rules(&r, "ha-manager", "", &want(), vec![]).unwrap();
        assert_eq!(rep.added, vec!["drbdpool-vm100"]);
        assert_eq!(
            r.calls(),
            vec!["ha-manager rules add node-affinity drbdpool-vm100 --resources vm:100 --nodes pve1,pve2 --strict 1 --comment managed by drbdpool: nodes holding good replicas of this guest's disks"]
        );
    }

    #[test]
    fn no_churn_when_rule_already_matches() {
        let r = RecordingRunner::new();
        let cfg = "node-affinity: drbdpool-vm100\n\tresources vm:100\n\tnodes pve2,pve1\n\tstrict 1\n\tcomment x\n";
        let rep = sync_rules(&r, "ha-manager", cfg, &want(), vec![]).unwrap();
        assert_eq!(rep.unchanged, vec!["drbdpool-vm100"]);
        assert!(r.calls().is_empty(), "{:?}", r.calls());
    }

    #[test]
    fn changed_priorities_are_set_and_stale_rules_removed() {
        let r = RecordingRunner::new();
        let cfg = "node-affinity: drbdpool-vm100\n\tresources vm:100\n\tnodes pve1:2,pve2:2\n\tstrict 1\n\n\
                   node-affinity: drbdpool-vm999\n\tresources vm:999\n\tnodes pve1:2\n\tstrict 1\n";
        let rep = sync_rules(&r, "ha-manager", cfg, &want(), vec![]).unwrap();
        assert_eq!(rep.changed, vec!["drbdpool-vm100"]);
        assert_eq!(rep.removed, vec!["drbdpool-vm999"]);
        assert_eq!(r.calls()[0], "ha-manager rules remove drbdpool-vm999", "removals first");
        assert_eq!(r.calls()[1], "ha-manager rules set node-affinity drbdpool-vm100 --resources vm:100 --nodes pve1,pve2 --strict 1");
    }

    #[test]
    fn admin_rule_wins_and_is_reported() {
        let r = RecordingRunner::new();
        let cfg = "node-affinity: my-rule\n\tresources vm:100,vm:200\n\tnodes pve1\n";
        let rep = sync_rules(&r, "ha-manager", cfg, &want(), vec![]).unwrap();
        assert!(r.calls().is_empty());
        assert!(rep.conflicts[0].contains("'my-rule' was written by hand"), "{:?}", rep.conflicts);
    }

    #[test]
    fn admin_rule_written_after_ours_makes_us_remove_ours() {
        let r = RecordingRunner::new();
        let cfg = "node-affinity: drbdpool-vm100\n\tresources vm:100\n\tnodes pve1,pve2\n\tstrict 1\n\n\
                   node-affinity: my-rule\n\tresources vm:100\n\tnodes pve1\n";
        let rep = sync_rules(&r, "ha-manager", cfg, &want(), vec![]).unwrap();
        assert_eq!(r.calls(), vec!["ha-manager rules remove drbdpool-vm100"]);
        assert_eq!(rep.conflicts.len(), 1);
        // A disabled admin rule is not taken into account by PVE, nor by us.
        let r = RecordingRunner::new();
        let cfg = "node-affinity: my-rule\n\tresources vm:100\n\tnodes pve1\n\tdisable\n";
        let rep = sync_rules(&r, "ha-manager", cfg, &want(), vec![]).unwrap();
        assert_eq!(rep.added, vec!["drbdpool-vm100"]);
    }

    fn rule(id: &str, res: &str, nodes: &[&str]) -> Rule {
        Rule { id: id.into(), resource: res.into(), nodes: nodes.iter().map(|n| (n.to_string(), 0)).collect(), strict: true }
    }

    #[test]
    fn together_sets_share_one_rule_on_their_common_nodes() {
        let rules = vec![
            rule("drbdpool-vm100", "vm:100", &["a", "b"]),
            rule("drbdpool-vm101", "vm:101", &["b", "c"]),
            rule("drbdpool-vm102", "vm:102", &["b", "c"]),
            rule("drbdpool-vm103", "vm:103", &["a"]),
        ];
        // Two positive rules connected through vm:101 are one set for PVE.
        let cfg = "resource-affinity: t1\n\tresources vm:100,vm:101\n\taffinity positive\n\n\
                   resource-affinity: t2\n\tresources vm:101,vm:102,vm:200\n\taffinity positive\n";
        let (out, conflicts) = fit_resource_affinity(rules, cfg);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert_eq!(out, vec![rule("drbdpool-vm100", "vm:100,vm:101,vm:102", &["b"]), rule("drbdpool-vm103", "vm:103", &["a"])]);
    }

    #[test]
    fn together_without_common_node_or_with_an_admin_rule_gets_none() {
        let rules = vec![rule("drbdpool-vm100", "vm:100", &["a"]), rule("drbdpool-vm101", "vm:101", &["b"])];
        let cfg = "resource-affinity: t\n\tresources vm:100,vm:101\n\taffinity positive\n";
        let (out, conflicts) = fit_resource_affinity(rules.clone(), cfg);
        assert!(out.is_empty(), "{out:?}");
        assert!(conflicts[0].contains("no node holds good replicas"), "{conflicts:?}");
        let cfg = "resource-affinity: t\n\tresources vm:100,vm:200\n\taffinity positive\n\n\
                   node-affinity: mine\n\tresources vm:200\n\tnodes a\n";
        let (out, conflicts) = fit_resource_affinity(rules.clone(), cfg);
        assert_eq!(out, vec![rules[1].clone()]);
        assert!(conflicts[0].contains("'mine' was written by hand"), "{conflicts:?}");
        // A disabled positive rule changes nothing.
        let cfg = "resource-affinity: t\n\tresources vm:100,vm:101\n\taffinity positive\n\tdisable 1\n";
        assert_eq!(fit_resource_affinity(rules.clone(), cfg), (rules, vec![]));
    }

    #[test]
    fn separate_sets_need_as_many_good_nodes_as_guests() {
        let rules = vec![
            rule("drbdpool-vm100", "vm:100", &["a", "b"]),
            rule("drbdpool-vm101", "vm:101", &["a", "b"]),
            rule("drbdpool-vm102", "vm:102", &["b"]),
        ];
        let cfg = "resource-affinity: s\n\tresources vm:100,vm:101\n\taffinity negative\n";
        assert_eq!(fit_resource_affinity(rules.clone(), cfg).0.len(), 3);
        let cfg = "resource-affinity: s\n\tresources vm:100,vm:101,vm:102\n\taffinity negative\n";
        let (out, conflicts) = fit_resource_affinity(rules, cfg);
        assert!(out.is_empty(), "{out:?}");
        assert!(conflicts[0].contains("only 2 node(s)"), "{conflicts:?}");
    }

    #[test]
    fn ha_manager_failure_is_reported_with_its_message() {
        let r = RecordingRunner::new();
        r.on(&["ha-manager"], Output::fail(255, "no quorum"));
        let e = sync_rules(&r, "ha-manager", "", &want(), vec![]).unwrap_err().to_string();
        assert!(e.contains("no quorum") && e.contains("updating HA rules"), "{e}");
    }
}
