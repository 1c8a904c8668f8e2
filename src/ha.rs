//! Steering Proxmox HA to nodes that hold good data.
//!
//! The HA manager has no storage hook (reference/pve-storage-api.md §3.3): it
//! picks a recovery node from node-affinity rules only. So for every HA-managed
//! guest whose disks are on drbdpool we keep one node-affinity rule
//! `drbdpool-<vm|ct><vmid>` listing the nodes that hold replicas of all its
//! disks, UpToDate ones at a higher priority. Rules are changed only through
//! `ha-manager rules ...` (the API takes the `domain-ha` lock and checks
//! feasibility), never by editing rules.cfg, and only when their content would
//! change. A rule the admin wrote for the same guest wins: we report the
//! conflict and leave it alone (a resource may be in one node-affinity rule only).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::exec::{Cmd, Runner};
use crate::store::docs::{NodeState, VolumeDoc, VolumeState};

pub const RULE_PREFIX: &str = "drbdpool-";
const PRIO_GOOD: u32 = 2;
const PRIO_OTHER: u32 = 1;

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
    pub resource: String,           // "vm:100" or "ct:101"
    pub nodes: BTreeMap<String, u32>, // node -> priority
    pub strict: bool,
}

impl Rule {
    fn nodes_arg(&self) -> String {
        self.nodes.iter().map(|(n, p)| format!("{n}:{p}")).collect::<Vec<_>>().join(",")
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

/// The rules drbdpool wants, and the guests it cannot steer.
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
        let mut nodes = BTreeMap::new();
        for n in common {
            let good = disks.iter().all(|d| {
                !d.outdated.iter().any(|o| o == n)
                    && states
                        .iter()
                        .find(|s| s.node == n)
                        .and_then(|s| s.volumes.get(&d.resource))
                        .map(|o| o.disk == "UpToDate")
                        .unwrap_or(false)
            });
            nodes.insert(n.to_string(), if good { PRIO_GOOD } else { PRIO_OTHER });
        }
        rules.push(Rule { id: format!("{RULE_PREFIX}{kind}{vmid}"), resource, nodes, strict });
    }
    (rules, conflicts)
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
    let existing: Vec<Rule> = parse_sections(rules_cfg).iter().filter_map(Rule::from_section).collect();
    let mut report = SyncReport::default();
    let mut errors = Vec::new();
    let run = |args: Vec<String>| -> Result<()> { runner.check(&Cmd::new(ha_manager).args(args)).map(|_| ()) };

    for rule in want {
        // An admin's own node-affinity rule for this guest wins.
        if let Some(user) = existing
            .iter()
            .find(|r| !r.id.starts_with(RULE_PREFIX) && r.resource.split(',').any(|x| x.trim() == rule.resource))
        {
            conflicts.push(format!(
                "{}: HA rule '{}' was written by hand for this guest; drbdpool leaves it alone (wanted nodes {})",
                rule.resource,
                user.id,
                rule.nodes_arg()
            ));
            continue;
        }
        let strict = if rule.strict { "1" } else { "0" };
        match existing.iter().find(|r| r.id == rule.id) {
            Some(cur) if cur.resource == rule.resource && cur.nodes == rule.nodes && cur.strict == rule.strict => {
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
                    "--comment".into(), "managed by drbdpool: nodes holding replicas of this guest's disks".into()];
                match run(args) {
                    Ok(()) => report.added.push(rule.id.clone()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
    }
    // Our rules for guests that no longer need one.
    for cur in existing.iter().filter(|r| r.id.starts_with(RULE_PREFIX)) {
        if !want.iter().any(|w| w.id == cur.id) {
            match run(vec!["rules".into(), "remove".into(), cur.id.clone()]) {
                Ok(()) => report.removed.push(cur.id.clone()),
                Err(e) => errors.push(e.to_string()),
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
        VolumeDoc {
            format: 1,
            storeid: "pool".into(),
            volname: name.into(),
            vmid,
            resource: format!("pool-{name}"),
            size_kib: 1024,
            minor: 1000,
            port: 7000,
            replicas: nodes.iter().enumerate().map(|(i, n)| Replica { node: n.to_string(), node_id: i as u8 }).collect(),
            backend: BackendSpec::default(),
            secret: "s".into(),
            state: VolumeState::Ready,
            base: false,
            parent: None,
            snapshots: vec![],
            outdated: vec![],
            dual_primary: None,
            created: 0,
            generation: 1,
        }
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
    fn uptodate_nodes_get_the_higher_priority() {
        let vols = vec![vol(100, "vm-100-disk-0", &["pve1", "pve2"]), vol(100, "vm-100-disk-1", &["pve2", "pve1"])];
        let states = vec![
            state("pve1", &[("pool-vm-100-disk-0", "UpToDate"), ("pool-vm-100-disk-1", "Outdated")]),
            state("pve2", &[("pool-vm-100-disk-0", "UpToDate"), ("pool-vm-100-disk-1", "UpToDate")]),
        ];
        let (rules, conflicts) = desired_rules(&ha_guests(RESOURCES), &vols, &states, true);
        assert!(conflicts.is_empty());
        assert_eq!(rules.len(), 1, "only vm 100 has drbdpool disks");
        assert_eq!(rules[0].id, "drbdpool-vm100");
        assert_eq!(rules[0].nodes_arg(), "pve1:1,pve2:2");
    }

    #[test]
    fn fence_record_demotes_a_node() {
        let mut v = vol(100, "vm-100-disk-0", &["pve1", "pve2"]);
        v.outdated = vec!["pve2".into()];
        let states = vec![
            state("pve1", &[("pool-vm-100-disk-0", "UpToDate")]),
            state("pve2", &[("pool-vm-100-disk-0", "UpToDate")]),
        ];
        let (rules, _) = desired_rules(&[("vm".into(), 100)], &[v], &states, true);
        assert_eq!(rules[0].nodes_arg(), "pve1:2,pve2:1");
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
            nodes: [("pve1".to_string(), 2), ("pve2".to_string(), 1)].into_iter().collect(),
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
            vec!["ha-manager rules add node-affinity drbdpool-vm100 --resources vm:100 --nodes pve1:2,pve2:1 --strict 1 --comment managed by drbdpool: nodes holding replicas of this guest's disks"]
        );
    }

    #[test]
    fn no_churn_when_rule_already_matches() {
        let r = RecordingRunner::new();
        let cfg = "node-affinity: drbdpool-vm100\n\tresources vm:100\n\tnodes pve2:1,pve1:2\n\tstrict 1\n\tcomment x\n";
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
        assert_eq!(r.calls()[0], "ha-manager rules set node-affinity drbdpool-vm100 --resources vm:100 --nodes pve1:2,pve2:1 --strict 1");
        assert_eq!(r.calls()[1], "ha-manager rules remove drbdpool-vm999");
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
    fn ha_manager_failure_is_reported_with_its_message() {
        let r = RecordingRunner::new();
        r.on(&["ha-manager"], Output::fail(255, "no quorum"));
        let e = sync_rules(&r, "ha-manager", "", &want(), vec![]).unwrap_err().to_string();
        assert!(e.contains("no quorum") && e.contains("updating HA rules"), "{e}");
    }
}
