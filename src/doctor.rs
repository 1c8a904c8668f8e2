//! `drbdpool doctor`: checks a node the way an experienced admin would before
//! trusting it with HA guests. Each check says what it saw and what to do.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::exec::{Cmd, Runner};
use crate::store::docs::NodeDoc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub message: String,
}

impl Check {
    fn new(name: &'static str, level: Level, message: impl Into<String>) -> Check {
        Check { name, level, message: message.into() }
    }
}

/// Where doctor looks; overridable so tests use fixtures.
#[derive(Clone, Debug)]
pub struct Paths {
    pub corosync_conf: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths { corosync_conf: PathBuf::from("/etc/pve/corosync.conf") }
    }
}

/// What doctor needs to know of the cluster's corosync configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Corosync {
    /// (node name, ring addresses)
    pub nodes: Vec<(String, Vec<String>)>,
    pub has_qdevice: bool,
    pub two_node: bool,
}

/// Parse corosync.conf (brace-structured `key: value`). Tolerant: unknown keys are ignored.
pub fn parse_corosync(text: &str) -> Corosync {
    let mut out = Corosync::default();
    let mut stack: Vec<String> = Vec::new();
    let mut cur_name: Option<String> = None;
    let mut cur_addrs: Vec<String> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(block) = line.strip_suffix('{') {
            let block = block.trim().to_string();
            if block == "device" && stack.last().map(String::as_str) == Some("quorum") {
                out.has_qdevice = true;
            }
            stack.push(block);
            continue;
        }
        if line == "}" {
            if stack.pop().as_deref() == Some("node") {
                if let Some(n) = cur_name.take() {
                    out.nodes.push((n, std::mem::take(&mut cur_addrs)));
                }
                cur_addrs.clear();
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            match (stack.last().map(String::as_str), k) {
                (Some("node"), "name") => cur_name = Some(v.to_string()),
                (Some("node"), k) if k.starts_with("ring") && k.ends_with("_addr") => cur_addrs.push(v.to_string()),
                (Some("quorum"), "two_node") => out.two_node = v == "1",
                _ => {}
            }
        }
    }
    out
}

/// Cluster-level checks from corosync.conf and the drbdpool node registry.
pub fn check_cluster(coro: Option<&Corosync>, nodes: &[NodeDoc]) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(coro) = coro else {
        out.push(Check::new(
            "quorum",
            Level::Warn,
            "no corosync.conf found: this is not a Proxmox cluster node; drbdpool's split-brain protection needs corosync quorum",
        ));
        return out;
    };
    let voters = coro.nodes.len();
    if voters == 2 && !coro.has_qdevice {
        out.push(Check::new(
            "quorum",
            Level::Warn,
            "2-node cluster without a QDevice: when one node dies the survivor loses quorum, /etc/pve turns read-only, \
             HA cannot recover and drbdpool's fence-peer handler cannot outdate the dead peer. Add a QDevice \
             (apt install corosync-qdevice on both nodes, corosync-qnetd on a third host; pvecm qdevice setup <IP>)",
        ));
    } else {
        out.push(Check::new("quorum", Level::Ok, format!("{voters} corosync nodes{}", if coro.has_qdevice { " + QDevice" } else { "" })));
    }
    if coro.two_node {
        out.push(Check::new(
            "quorum",
            Level::Warn,
            "corosync two_node is set: it relies on a fence race and breaks HA self-fencing; use a QDevice instead",
        ));
    }
    let ring_addrs: Vec<&str> = coro.nodes.iter().flat_map(|(_, a)| a.iter().map(String::as_str)).collect();
    let mut shared = Vec::new();
    for n in nodes {
        if ring_addrs.contains(&n.address.as_str()) {
            shared.push(format!("{} ({})", n.name, n.address));
        }
    }
    if shared.is_empty() {
        if !nodes.is_empty() {
            out.push(Check::new("replication-network", Level::Ok, "replication addresses are separate from corosync's"));
        }
    } else {
        out.push(Check::new(
            "replication-network",
            Level::Warn,
            format!(
                "replication shares corosync's network on {}: a resync can starve corosync and cost quorum. \
                 Give DRBD its own link (drbdpool node add <name> --address <replication IP>)",
                shared.join(", ")
            ),
        ));
    }
    out
}

/// LVM must never scan DRBD devices (design invariant 6).
pub fn check_lvm_filter(runner: &dyn Runner) -> Check {
    let out = runner.run(&Cmd::new("lvmconfig").args(["--type", "current", "devices/global_filter"]));
    match out {
        Ok(o) if o.success() && o.stdout.contains("/dev/drbd") && o.stdout.contains("r|") => {
            Check::new("lvm-filter", Level::Ok, format!("LVM ignores DRBD devices ({})", o.stdout.trim()))
        }
        Ok(_) => Check::new(
            "lvm-filter",
            Level::Warn,
            "LVM may scan DRBD devices (no r|^/dev/drbd.*| in devices/global_filter): a guest's LVM inside a volume could \
             be activated on the host. drbdpool's own LVM calls exclude them; add the filter from \
             /usr/share/doc/drbdpool/examples/lvm-global-filter.conf to /etc/lvm/lvm.conf",
        ),
        Err(e) => Check::new("lvm-filter", Level::Fail, format!("cannot run lvmconfig: {e} (install lvm2)")),
    }
}

/// DRBD module and utils present and of a supported version.
pub fn check_drbd_versions(runner: &dyn Runner) -> Check {
    match runner.run(&Cmd::new("drbdadm").arg("--version")) {
        Err(e) => Check::new("drbd", Level::Fail, format!("drbdadm not usable: {e} (apt install drbd-utils)")),
        Ok(o) => {
            let get = |key: &str| {
                o.stdout.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            };
            let utils = get("DRBDADM_VERSION=");
            // The module's version comes only as a code: 0x08040b = 8.4.11.
            let kernel = get("DRBD_KERNEL_VERSION_CODE=").and_then(|c| decode_version_code(&c));
            match (utils, kernel) {
                (Some(u), Some(k)) if k.starts_with("9.") || k.starts_with("8.4.") => Check::new(
                    "drbd",
                    Level::Ok,
                    format!("kernel module {k}{}, utils {u}", if k.starts_with("8.4.") { " (in-tree: 2 replicas per volume)" } else { "" }),
                ),
                (Some(u), Some(k)) => Check::new("drbd", Level::Fail, format!("DRBD kernel module {k} (utils {u}) is not supported: use the in-tree 8.4 or DRBD 9")),
                (Some(u), None) => Check::new("drbd", Level::Fail, format!("drbd-utils {u} found but no DRBD kernel module is loaded: modprobe drbd")),
                _ => Check::new("drbd", Level::Fail, format!("cannot read versions from `drbdadm --version`: {}", o.stderr.trim())),
            }
        }
    }
}

/// `0x08040b` -> "8.4.11" (drbd-utils prints versions as 0xMMmmpp codes).
pub fn decode_version_code(code: &str) -> Option<String> {
    let v = u32::from_str_radix(code.trim().trim_start_matches("0x"), 16).ok()?;
    if v == 0 {
        return None;
    }
    Some(format!("{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff))
}

pub fn read_corosync(path: &Path) -> Option<Corosync> {
    std::fs::read_to_string(path).ok().map(|t| parse_corosync(&t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Output, RecordingRunner};

    const TWO_NODES: &str = "totem {\n  cluster_name: lab\n}\nnodelist {\n  node {\n    name: pve1\n    nodeid: 1\n    ring0_addr: 192.168.1.11\n  }\n  node {\n    name: pve2\n    nodeid: 2\n    ring0_addr: 192.168.1.12\n  }\n}\nquorum {\n  provider: corosync_votequorum\n}\n";

    fn node(n: &str, a: &str) -> NodeDoc {
        NodeDoc { format: 1, name: n.into(), address: a.into() }
    }

    #[test]
    fn two_nodes_without_qdevice_warn() {
        let c = parse_corosync(TWO_NODES);
        assert_eq!(c.nodes.len(), 2);
        assert!(!c.has_qdevice);
        let checks = check_cluster(Some(&c), &[]);
        assert_eq!(checks[0].level, Level::Warn);
        assert!(checks[0].message.contains("QDevice"));
    }

    #[test]
    fn qdevice_is_recognised() {
        let text = TWO_NODES.replace("provider: corosync_votequorum\n", "provider: corosync_votequorum\n  device {\n    model: net\n    votes: 1\n  }\n");
        let c = parse_corosync(&text);
        assert!(c.has_qdevice);
        assert_eq!(check_cluster(Some(&c), &[])[0].level, Level::Ok);
    }

    #[test]
    fn replication_on_corosync_network_warns() {
        let c = parse_corosync(TWO_NODES);
        let checks = check_cluster(Some(&c), &[node("pve1", "192.168.1.11"), node("pve2", "10.10.0.2")]);
        let net = checks.iter().find(|c| c.name == "replication-network").unwrap();
        assert_eq!(net.level, Level::Warn);
        assert!(net.message.contains("pve1 (192.168.1.11)") && !net.message.contains("pve2"));
        let ok = check_cluster(Some(&c), &[node("pve1", "10.10.0.1"), node("pve2", "10.10.0.2")]);
        assert_eq!(ok.iter().find(|c| c.name == "replication-network").unwrap().level, Level::Ok);
    }

    #[test]
    fn lvm_filter_checked_through_lvmconfig() {
        let r = RecordingRunner::new();
        r.once(&["lvmconfig"], Output::ok("global_filter=[\"r|^/dev/drbd.*|\"]\n"));
        assert_eq!(check_lvm_filter(&r).level, Level::Ok);
        r.once(&["lvmconfig"], Output::fail(5, "Configuration node devices/global_filter not found"));
        assert_eq!(check_lvm_filter(&r).level, Level::Warn);
        assert_eq!(r.calls()[0], "lvmconfig --type current devices/global_filter");
    }

    #[test]
    fn drbd_versions_from_real_fixture() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/drbd84-real/drbdadm--version.out")).unwrap();
        let r = RecordingRunner::new();
        r.on(&["drbdadm", "--version"], Output::ok(text));
        let c = check_drbd_versions(&r);
        assert_eq!(c.level, Level::Ok, "{}", c.message);
        assert!(c.message.contains("8.4.11"), "{}", c.message);
        let r = RecordingRunner::new();
        r.on(&["drbdadm", "--version"], Output::ok("DRBDADM_BUILDTAG=x\nDRBDADM_VERSION=9.22.0\n"));
        assert!(check_drbd_versions(&r).message.contains("modprobe drbd"));
    }
}
