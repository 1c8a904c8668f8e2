//! Which DRBD this node runs: the kernel module (9.x, or the in-tree 8.4 of
//! Debian/Proxmox stock kernels) and drbd-utils. Resource-file syntax and the
//! number of replicas per resource depend on it, so everything else asks here.

use std::fmt;

use crate::error::{Error, Result};
use crate::exec::{Cmd, Runner};

/// A DRBD version triple (e.g. 8.4.11, 9.2.12, 9.22.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ver {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Ver {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Ver { major, minor, patch }
    }
    /// `0x090200` style codes of `drbdadm --version`; 0 means "no module loaded".
    pub fn from_code(code: u32) -> Option<Ver> {
        if code == 0 {
            return None;
        }
        Some(Ver::new((code >> 16) & 0xff, (code >> 8) & 0xff, code & 0xff))
    }
    /// "8.4.11", "9.2.0", "9.2.0-rc.1" (suffixes ignored).
    pub fn parse(s: &str) -> Option<Ver> {
        let core: String = s.trim().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let mut it = core.split('.').filter(|p| !p.is_empty()).map(|p| p.parse::<u32>());
        let major = it.next()?.ok()?;
        let minor = it.next()?.ok()?;
        let patch = match it.next() {
            Some(p) => p.ok()?,
            None => 0,
        };
        Some(Ver::new(major, minor, patch))
    }
}

impl fmt::Display for Ver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What `drbdadm --version` and /proc/drbd told us.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    /// Kernel module version; None when no module is loaded.
    pub kernel: Option<Ver>,
    /// drbd-utils (drbdadm) version; None when drbdadm is missing.
    pub utils: Option<Ver>,
}

/// The resource-file dialect and feature set to use on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// DRBD 9 kernel module: node-id, connections, quorum, up to 32 nodes.
    V9,
    /// In-tree DRBD 8.4 module: 2 nodes per resource, fencing in disk{}, no quorum.
    V84,
}

impl Flavor {
    /// Most replicas one resource may have with this module.
    pub fn max_hosts(self) -> usize {
        match self {
            Flavor::V9 => 32,
            Flavor::V84 => 2,
        }
    }
    /// Refuse plans this module cannot run, before anything is written.
    pub fn check_hosts(self, resource: &str, hosts: usize) -> Result<()> {
        if self == Flavor::V84 && hosts < 2 {
            // drbdadm-84 reports "Missing section 'on <PEER> { ... }'" and would connect to "N/A".
            return Err(Error::Refused(format!(
                "resource {resource} has {hosts} replica(s) but the in-tree DRBD 8.4 kernel module needs exactly 2 nodes \
                 per resource: use 2 replicas"
            )));
        }
        if hosts > self.max_hosts() {
            return Err(Error::Refused(match self {
                Flavor::V84 => format!(
                    "resource {resource} needs {hosts} replicas but this node runs the in-tree DRBD 8.4 kernel module, \
                     which supports only 2 nodes per resource: use 2 replicas, or install DRBD 9 (drbd-dkms) on every node"
                ),
                Flavor::V9 => format!("resource {resource} needs {hosts} replicas; DRBD 9 supports at most 32"),
            }));
        }
        Ok(())
    }
}

/// Oldest DRBD 9 module we accept: `quorum majority` needs 9.0.18 (DRBD user guide).
pub const MIN_V9: Ver = Ver::new(9, 0, 18);
/// drbd-utils 9.x drive both 9 and (through drbdadm-84) 8.4 modules.
pub const MIN_UTILS: Ver = Ver::new(9, 0, 0);

/// Parse `drbdadm --version` (KEY=value lines; unknown lines ignored).
pub fn parse_drbdadm_version(text: &str) -> Versions {
    let mut v = Versions::default();
    let mut kernel_text = None;
    let mut utils_text = None;
    for line in text.lines() {
        let Some((k, val)) = line.split_once('=') else { continue };
        let val = val.trim();
        match k.trim() {
            "DRBD_KERNEL_VERSION_CODE" => v.kernel = parse_code(val).and_then(Ver::from_code),
            "DRBDADM_VERSION_CODE" => v.utils = parse_code(val).and_then(Ver::from_code),
            "DRBD_KERNEL_VERSION" => kernel_text = Ver::parse(val).filter(|x| x.major > 0),
            "DRBDADM_VERSION" => utils_text = Ver::parse(val),
            _ => {}
        }
    }
    // The *_CODE lines are authoritative; the text forms are fallbacks (8.4's drbdadm-84 prints no DRBD_KERNEL_VERSION).
    v.kernel = v.kernel.or(kernel_text);
    v.utils = v.utils.or(utils_text);
    v
}

fn parse_code(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The module version from /proc/drbd's first line (`version: 8.4.11 (api:1/proto:86-101)`).
pub fn parse_proc_drbd_version(text: &str) -> Option<Ver> {
    let first = text.lines().next()?;
    let rest = first.trim().strip_prefix("version:")?;
    Ver::parse(rest.trim())
}

/// Decide the flavor, or say exactly what is missing and how to fix it.
pub fn classify(v: &Versions) -> Result<Flavor> {
    let utils = v.utils.ok_or_else(|| {
        Error::Tool(
            "drbd-utils not found (drbdadm did not report a version): install them: apt-get install drbd-utils".into(),
        )
    })?;
    if utils < MIN_UTILS {
        return Err(Error::Tool(format!(
            "drbd-utils {utils} is too old: drbdpool needs drbd-utils {MIN_UTILS} or newer (they drive both DRBD 9 and 8.4 modules)"
        )));
    }
    let kernel = v.kernel.ok_or_else(|| {
        Error::Tool(
            "the DRBD kernel module is not loaded: load the drbd module: modprobe drbd \
             (and add `drbd` to /etc/modules-load.d/ so it loads at boot)"
                .into(),
        )
    })?;
    match (kernel.major, kernel.minor) {
        (8, 4) => Ok(Flavor::V84),
        (9, _) if kernel >= MIN_V9 => Ok(Flavor::V9),
        (9, _) => Err(Error::Tool(format!(
            "DRBD kernel module {kernel} is too old: drbdpool needs {MIN_V9} or newer for DRBD 9 (upgrade drbd-dkms), \
             or the in-tree 8.4 module"
        ))),
        _ => Err(Error::Tool(format!(
            "DRBD kernel module {kernel} is not supported: drbdpool runs with DRBD 9 (>= {MIN_V9}) or the in-tree 8.4 module; \
             unload it (rmmod drbd) and load a supported one (modprobe drbd)"
        ))),
    }
}

/// Ask drbdadm (and /proc/drbd when drbdadm reports no module) which DRBD this node runs.
pub fn detect(runner: &dyn Runner, proc_drbd: &std::path::Path) -> Result<(Versions, Flavor)> {
    let out = runner.run(&Cmd::new("drbdadm").arg("--version"))?;
    let mut v = parse_drbdadm_version(&out.stdout);
    if v.kernel.is_none() {
        // Old utils or a module loaded after drbdadm looked: /proc/drbd is the kernel's own word.
        if let Ok(text) = std::fs::read_to_string(proc_drbd) {
            v.kernel = parse_proc_drbd_version(&text);
        }
    }
    let flavor = classify(&v)?;
    Ok((v, flavor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drbd::fixture;
    use crate::exec::{Output, RecordingRunner};

    // Real output of drbdadm 9.22.0 on a host without the module (this build machine).
    const NO_MODULE: &str = "DRBDADM_BUILDTAG=GIT-hash:\\ 409097fe\nDRBDADM_API_VERSION=2\nDRBD_KERNEL_VERSION_CODE=0x000000\nDRBD_KERNEL_VERSION=0\nDRBDADM_VERSION_CODE=0x091600\nDRBDADM_VERSION=9.22.0\n";

    #[test]
    fn real_84_version_output() {
        let v = parse_drbdadm_version(&fixture("drbdadm--version.out"));
        assert_eq!(v.kernel, Some(Ver::new(8, 4, 11)));
        assert_eq!(v.utils, Some(Ver::new(9, 22, 0)));
        assert_eq!(classify(&v).unwrap(), Flavor::V84);
    }

    #[test]
    fn no_module_says_modprobe() {
        let v = parse_drbdadm_version(NO_MODULE);
        assert_eq!(v.kernel, None);
        assert_eq!(v.utils, Some(Ver::new(9, 22, 0)));
        let e = classify(&v).unwrap_err().to_string();
        assert!(e.contains("modprobe drbd"), "{e}");
    }

    #[test]
    fn v9_and_unsupported() {
        let v = parse_drbdadm_version("DRBD_KERNEL_VERSION_CODE=0x09020c\nDRBDADM_VERSION_CODE=0x091d00\n");
        assert_eq!(v.kernel, Some(Ver::new(9, 2, 12)));
        assert_eq!(classify(&v).unwrap(), Flavor::V9);
        let old9 = Versions { kernel: Some(Ver::new(9, 0, 16)), utils: Some(Ver::new(9, 22, 0)) };
        assert!(classify(&old9).unwrap_err().to_string().contains("too old"));
        let v83 = Versions { kernel: Some(Ver::new(8, 3, 16)), utils: Some(Ver::new(9, 22, 0)) };
        assert!(classify(&v83).unwrap_err().to_string().contains("not supported"));
        let old_utils = Versions { kernel: Some(Ver::new(8, 4, 11)), utils: Some(Ver::new(8, 9, 10)) };
        assert!(classify(&old_utils).unwrap_err().to_string().contains("too old"));
        let e = classify(&Versions::default()).unwrap_err().to_string();
        assert!(e.contains("apt-get install drbd-utils"), "{e}");
    }

    #[test]
    fn proc_drbd_first_line() {
        for f in ["proc-drbd.unconfigured.out", "proc-drbd.syncsource.out", "proc-drbd.after-resize.out"] {
            assert_eq!(parse_proc_drbd_version(&fixture(f)), Some(Ver::new(8, 4, 11)), "{f}");
        }
        assert_eq!(parse_proc_drbd_version("version: 9.1.8 (api:2/proto:86-121)\n"), Some(Ver::new(9, 1, 8)));
        assert_eq!(parse_proc_drbd_version("garbage\n"), None);
        assert_eq!(parse_proc_drbd_version(""), None);
    }

    #[test]
    fn eight_four_refuses_three_replicas() {
        assert!(Flavor::V84.check_hosts("r", 2).is_ok());
        assert!(Flavor::V84.check_hosts("r", 1).unwrap_err().to_string().contains("exactly 2 nodes"));
        assert!(Flavor::V9.check_hosts("r", 1).is_ok());
        let e = Flavor::V84.check_hosts("vm-100-disk-0", 3).unwrap_err();
        assert_eq!(e.kind(), "refused");
        assert!(e.to_string().contains("only 2 nodes"), "{e}");
        assert!(Flavor::V9.check_hosts("r", 3).is_ok());
    }

    #[test]
    fn detect_falls_back_to_proc_drbd() {
        let r = RecordingRunner::new();
        r.on(&["drbdadm", "--version"], Output::ok(NO_MODULE));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("drbd");
        std::fs::write(&p, "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: X\n").unwrap();
        let (v, f) = detect(&r, &p).unwrap();
        assert_eq!(f, Flavor::V84);
        assert_eq!(v.kernel, Some(Ver::new(8, 4, 11)));
        // No /proc/drbd either: the modprobe hint.
        let e = detect(&r, &dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("modprobe drbd"), "{e}");
        assert_eq!(r.calls(), vec!["drbdadm --version", "drbdadm --version"]);
    }
}
