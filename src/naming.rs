//! Names and sizes as PVE passes them: the volume-name grammar, storage ids,
//! the DRBD resource name derived from them, and size limits. Everything that
//! reaches a path, an LV name or a resource file is checked here first.

use crate::error::{Error, Result};
use crate::invalid;

/// Longest volume name we accept (LV names allow 127 with the VG; keep well under).
pub const MAX_VOLNAME: usize = 100;
/// PVE allows at most 1024 disks per guest (`$MAX_VOLUMES_PER_GUEST`).
pub const MAX_DISKS_PER_GUEST: u32 = 1024;
/// 1 PiB: anything bigger is a typo or a unit mix-up.
pub const MAX_SIZE_BYTES: u64 = 1 << 50;
pub const MAX_VMID: u64 = 999_999_999;
/// Longest DRBD resource name we generate.
pub const MAX_RESOURCE: usize = 48;

/// What kind of name PVE gave us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolKind {
    Disk(u32),
    Cloudinit,
    State(String),
    Fleece(u32),
    Pvc(String),
    /// Anything else starting `vm-<vmid>-` / `base-<vmid>-` (explicit `pvesm alloc` names).
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolName {
    pub name: String,
    pub vmid: u32,
    /// `base-` prefix: a template.
    pub base: bool,
    pub kind: VolKind,
}

/// Parse a vmid as PVE writes it: decimal, 1..=999999999, no sign, no leading zero.
pub fn parse_vmid(s: &str) -> Result<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid!("vmid '{s}' is not a number: a vmid is a decimal number 1..{MAX_VMID}"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(invalid!("vmid '{s}' has a leading zero: write it as PVE does (e.g. 100)"));
    }
    match s.parse::<u64>() {
        Ok(v) if (1..=MAX_VMID).contains(&v) => Ok(v as u32),
        _ => Err(invalid!("vmid '{s}' is out of range: a vmid is 1..{MAX_VMID}")),
    }
}

pub fn check_vmid(v: u64) -> Result<u32> {
    if (1..=MAX_VMID).contains(&v) {
        Ok(v as u32)
    } else {
        Err(invalid!("vmid {v} is out of range: a vmid is 1..{MAX_VMID}"))
    }
}

/// Character rules shared by every volume name.
fn check_chars(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid!("volume name is empty"));
    }
    if name.len() > MAX_VOLNAME {
        let head: String = name.chars().take(20).collect();
        return Err(invalid!("volume name '{}...' is {} bytes long: at most {MAX_VOLNAME} are allowed", head.escape_default(), name.len()));
    }
    if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(invalid!("volume name '{}' contains a path character: volume names are plain names, no '/'", name.escape_default()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'))) {
        return Err(invalid!(
            "volume name '{}' contains '{}': only letters, digits and _ . + - are allowed (no whitespace or shell characters)",
            name.escape_default(),
            c.escape_default()
        ));
    }
    Ok(())
}

fn small_number(s: &str, what: &str, full: &str) -> Result<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) || s.len() > 6 {
        return Err(invalid!("volume name '{full}': {what} number '{s}' is not a plain decimal number"));
    }
    let n: u32 = s.parse().map_err(|_| invalid!("volume name '{full}': bad {what} number '{s}'"))?;
    if n >= MAX_DISKS_PER_GUEST {
        return Err(invalid!("volume name '{full}': {what} number {n} is too big (PVE allows {MAX_DISKS_PER_GUEST} per guest)"));
    }
    Ok(n)
}

/// Parse any volume name we accept: `vm-<vmid>-...` or `base-<vmid>-...`.
pub fn parse_volname(name: &str) -> Result<VolName> {
    check_chars(name)?;
    let (base, rest) = if let Some(r) = name.strip_prefix("vm-") {
        (false, r)
    } else if let Some(r) = name.strip_prefix("base-") {
        (true, r)
    } else {
        return Err(invalid!("volume name '{name}' must start with 'vm-<vmid>-' or 'base-<vmid>-' (e.g. vm-100-disk-0)"));
    };
    let (vmid_s, tail) = rest
        .split_once('-')
        .ok_or_else(|| invalid!("volume name '{name}' must look like vm-<vmid>-<name> (e.g. vm-100-disk-0)"))?;
    let vmid = parse_vmid(vmid_s).map_err(|e| invalid!("volume name '{name}': {e}"))?;
    if tail.is_empty() {
        return Err(invalid!("volume name '{name}' has nothing after 'vm-{vmid}-' (e.g. vm-{vmid}-disk-0)"));
    }
    let kind = if let Some(n) = tail.strip_prefix("disk-") {
        VolKind::Disk(small_number(n, "disk", name)?)
    } else if tail == "cloudinit" {
        VolKind::Cloudinit
    } else if let Some(s) = tail.strip_prefix("state-") {
        if s.is_empty() {
            return Err(invalid!("volume name '{name}': state volumes are vm-<vmid>-state-<snapshot name>"));
        }
        VolKind::State(s.to_string())
    } else if let Some(n) = tail.strip_prefix("fleece-") {
        VolKind::Fleece(small_number(n, "fleece", name)?)
    } else if let Some(p) = tail.strip_prefix("pvc-") {
        VolKind::Pvc(p.to_string())
    } else {
        VolKind::Other(tail.to_string())
    };
    Ok(VolName { name: name.to_string(), vmid, base, kind })
}

/// Check an explicit name given to alloc: valid, and for the vmid of the request.
pub fn check_alloc_name(name: &str, vmid: u32) -> Result<VolName> {
    let v = parse_volname(name)?;
    if v.vmid != vmid {
        return Err(invalid!("volume name '{name}' belongs to vmid {} but the request is for vmid {vmid}: names must start with vm-{vmid}- or base-{vmid}-", v.vmid));
    }
    Ok(v)
}

/// The lowest free `vm-<vmid>-disk-N` given the names already in use.
pub fn next_disk_name<'a>(vmid: u32, existing: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let mut used = vec![false; MAX_DISKS_PER_GUEST as usize];
    for n in existing {
        if let Ok(v) = parse_volname(n) {
            if let (VolKind::Disk(i), true) = (&v.kind, v.vmid == vmid) {
                // base-X-disk-N and vm-X-disk-N share the number (PVE does the same).
                used[*i as usize] = true;
            }
        }
    }
    used.iter()
        .position(|u| !u)
        .map(|i| format!("vm-{vmid}-disk-{i}"))
        .ok_or_else(|| Error::Conflict(format!("vmid {vmid} already has {MAX_DISKS_PER_GUEST} disks on this storage: free some first")))
}

/// PVE's storage id rule: `^[a-z][a-z0-9\-\_\.]*[a-z0-9]$`.
pub fn check_storeid(s: &str) -> Result<()> {
    let b = s.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.'))
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid!(
            "storage id '{}' is not valid: it must match ^[a-z][a-z0-9-_.]*[a-z0-9]$ (lower case, at most 64 characters)",
            s.escape_default()
        ))
    }
}

/// PVE's snapshot name rule (pve-snapshot-name: `^[a-zA-Z][a-zA-Z0-9_-]{1,39}$`);
/// `current` is PVE's name for the live state. `vzdump` (CT backups) is allowed.
pub fn check_snap_name(s: &str) -> Result<()> {
    let b = s.as_bytes();
    let ok = (2..=40).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'));
    if !ok {
        return Err(invalid!(
            "snapshot name '{}' is not valid: it must start with a letter and contain only letters, digits, '_' and '-' (2 to 40 characters)",
            s.escape_default()
        ));
    }
    if s == "current" {
        return Err(invalid!("snapshot name 'current' is reserved for the live state: choose another name"));
    }
    Ok(())
}

/// Node names as Proxmox allows them (host names), so they are safe in file names.
pub fn check_node_name(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid!("node name '{}' is not a valid host name (letters, digits and '-', at most 63)", s.escape_default()))
    }
}

/// A linked clone's name as PVE knows it: `<base>/<volname>` (e.g.
/// `base-100-disk-0/vm-101-disk-0`), the ZFS and RBD plugins' form, so that
/// PVE's `volume_is_base_and_used` (PVE/Storage.pm) finds the clones of a base
/// through `parse_volname` and refuses to free it. The store keys every volume by
/// its own name (`vm-101-disk-0`); anything else is the plain name.
pub fn pve_volname(volname: &str, parent: Option<&str>) -> String {
    match parent {
        Some(p) => format!("{p}/{volname}"),
        None => volname.to_string(),
    }
}

/// Split a name as PVE passes it: `<base>/<volname>` -> (Some(base), volname), a plain
/// name -> (None, name). Both parts are checked; the first must be a template.
pub fn split_pve_volname(name: &str) -> Result<(Option<&str>, &str)> {
    let Some((base, own)) = name.split_once('/') else { return Ok((None, name)) };
    let b = parse_volname(base).map_err(|e| invalid!("volume name '{}': {e}", name.escape_default()))?;
    if !b.base {
        return Err(invalid!(
            "volume name '{}': the part before '/' must be the template (base-<vmid>-...) the volume was cloned from",
            name.escape_default()
        ));
    }
    parse_volname(own).map_err(|e| invalid!("volume name '{}': {e}", name.escape_default()))?;
    Ok((Some(base), own))
}

/// Split `storeid:volname` (or a bare volname).
pub fn split_volid(s: &str) -> (Option<&str>, &str) {
    match s.split_once(':') {
        Some((a, b)) => (Some(a), b),
        None => (None, s),
    }
}

/// LVM refuses LV names containing these (lvm(8), "reserved").
const LVM_RESERVED: &[&str] = &[
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage",
    "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
];

pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The DRBD resource (and backing LV/file) name of a volume: `<storeid>.<volname>`
/// when that is short and safe, else a readable prefix plus a hash of both parts.
/// Deterministic; uses only [A-Za-z0-9_.-]; never starts with '-' or LVM's
/// reserved prefixes. Collisions are still checked at alloc under the lock.
pub fn resource_name(storeid: &str, volname: &str) -> String {
    let plain = format!("{storeid}.{volname}");
    let safe_chars = plain.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    let reserved = LVM_RESERVED.iter().any(|r| plain.contains(r)) || plain.starts_with("snapshot") || plain.starts_with("pvmove");
    if plain.len() <= MAX_RESOURCE && safe_chars && !reserved {
        return plain;
    }
    let h = fnv1a(format!("{storeid}:{volname}").as_bytes());
    let mut prefix: String = plain
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .take(MAX_RESOURCE - 12)
        .collect();
    if prefix.starts_with("snapshot") || prefix.starts_with("pvmove") {
        prefix = format!("dp-{}", &prefix[..prefix.len().min(MAX_RESOURCE - 15)]);
    }
    format!("{prefix}-h{:010x}", h & 0xff_ffff_ffff)
}

/// Parse a size that may arrive as a JSON number or a string of digits.
fn parse_u64(v: &serde_json::Value, what: &str) -> Result<u64> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| invalid!("{what} {n} is not a whole non-negative number")),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| invalid!("{what} '{s}' is too big"))
        }
        other => Err(invalid!("{what} {other} is not a number")),
    }
}

/// Alloc sizes arrive in KiB (PVE units). Returns KiB.
pub fn check_size_kib(v: &serde_json::Value) -> Result<u64> {
    let kib = parse_u64(v, "size_kib")?;
    if kib == 0 {
        return Err(invalid!("size 0 is not allowed: give the size in KiB (e.g. 4194304 for 4 GiB)"));
    }
    if kib > MAX_SIZE_BYTES / 1024 {
        return Err(invalid!("size {kib} KiB is more than 1 PiB: alloc sizes are in KiB; check the unit"));
    }
    Ok(kib)
}

/// Resize sizes arrive in bytes. Returns KiB, rounded up.
pub fn check_size_bytes(v: &serde_json::Value) -> Result<u64> {
    let b = parse_u64(v, "size_bytes")?;
    if b == 0 {
        return Err(invalid!("size 0 is not allowed: resize sizes are in bytes"));
    }
    if b > MAX_SIZE_BYTES {
        return Err(invalid!("size {b} bytes is more than 1 PiB: resize sizes are in bytes; check the unit"));
    }
    Ok(b.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot_names_follow_pve() {
        for ok in ["vzdump", "s1", "before-upgrade", "A_b-9", &"a".repeat(40)] {
            check_snap_name(ok).unwrap();
        }
        for bad in ["", "a", "1abc", "-x", "a b", "a.b", "a/b", "current", &"a".repeat(41), "\u{e9}t\u{e9}"] {
            assert_eq!(check_snap_name(bad).unwrap_err().kind(), "invalid-input", "{bad}");
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_pve_names() {
        let v = parse_volname("vm-100-disk-0").unwrap();
        assert_eq!((v.vmid, v.base, v.kind), (100, false, VolKind::Disk(0)));
        assert_eq!(parse_volname("base-9-disk-12").unwrap().kind, VolKind::Disk(12));
        assert!(parse_volname("base-9-disk-1").unwrap().base);
        assert_eq!(parse_volname("vm-1-cloudinit").unwrap().kind, VolKind::Cloudinit);
        assert_eq!(parse_volname("vm-1-state-pre_upgrade").unwrap().kind, VolKind::State("pre_upgrade".into()));
        assert_eq!(parse_volname("vm-1-fleece-3").unwrap().kind, VolKind::Fleece(3));
        assert_eq!(parse_volname("vm-1-pvc-abc-123").unwrap().kind, VolKind::Pvc("abc-123".into()));
        assert_eq!(parse_volname("vm-999999999-my.data+x").unwrap().kind, VolKind::Other("my.data+x".into()));
    }

    #[test]
    fn refuses_bad_names_naming_the_rule() {
        let cases = [
            ("", "empty"),
            ("vm-1/../x", "path character"),
            ("../etc", "path character"),
            ("vm-1-a b", "contains ' '"),
            ("vm-1-a;rm", "contains ';'"),
            ("vm-1-$(x)", "contains '$'"),
            ("vm-1-a\nb", "contains '\\n'"),
            ("disk-0", "must start with"),
            ("vm-x-disk-0", "not a number"),
            ("vm-0-disk-0", "out of range"),
            ("vm-1000000000-disk-0", "out of range"),
            ("vm-01-disk-0", "leading zero"),
            ("vm-1-", "nothing after"),
            ("vm-1", "must look like"),
            ("vm-1-disk-x", "not a plain decimal"),
            ("vm-1-disk-1024", "too big"),
            ("vm-1-state-", "state volumes"),
        ];
        for (n, want) in cases {
            let e = parse_volname(n).unwrap_err();
            assert_eq!(e.kind(), "invalid-input", "{n}");
            assert!(e.to_string().contains(want), "{n}: {e}");
        }
        let long = format!("vm-1-{}", "a".repeat(200));
        assert!(parse_volname(&long).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn clone_names_as_pve_knows_them() {
        assert_eq!(pve_volname("vm-101-disk-0", Some("base-100-disk-0")), "base-100-disk-0/vm-101-disk-0");
        assert_eq!(pve_volname("vm-101-disk-0", None), "vm-101-disk-0");
        assert_eq!(split_pve_volname("base-100-disk-0/vm-101-disk-0").unwrap(), (Some("base-100-disk-0"), "vm-101-disk-0"));
        assert_eq!(split_pve_volname("base-100-disk-0/base-101-disk-0").unwrap(), (Some("base-100-disk-0"), "base-101-disk-0"));
        assert_eq!(split_pve_volname("vm-101-disk-0").unwrap(), (None, "vm-101-disk-0"));
        for (bad, want) in [
            ("vm-100-disk-0/vm-101-disk-0", "must be the template"),
            ("base-100-disk-0/vm-101-disk-0/x", "path character"),
            ("base-100-disk-0/", "volume name is empty"),
            ("/vm-101-disk-0", "volume name is empty"),
            ("base-100-disk-0/../x", "path character"),
        ] {
            let e = split_pve_volname(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid-input");
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn alloc_name_must_match_vmid() {
        assert!(check_alloc_name("vm-100-disk-3", 100).is_ok());
        assert!(check_alloc_name("base-100-disk-3", 100).is_ok());
        let e = check_alloc_name("vm-101-disk-3", 100).unwrap_err();
        assert!(e.to_string().contains("vmid 101"), "{e}");
    }

    #[test]
    fn next_disk_fills_gaps_and_shares_numbers_with_base() {
        assert_eq!(next_disk_name(5, []).unwrap(), "vm-5-disk-0");
        let ex = ["vm-5-disk-0", "base-5-disk-1", "vm-5-disk-3", "vm-6-disk-2", "vm-5-cloudinit"];
        assert_eq!(next_disk_name(5, ex).unwrap(), "vm-5-disk-2");
        let all: Vec<String> = (0..1024).map(|i| format!("vm-5-disk-{i}")).collect();
        assert_eq!(next_disk_name(5, all.iter().map(|s| s.as_str())).unwrap_err().kind(), "conflict");
    }

    #[test]
    fn storeid_rule() {
        for ok in ["drbdpool", "a1", "my-pool.x_y9"] {
            check_storeid(ok).unwrap();
        }
        for bad in ["", "a", "Pool", "1pool", "pool-", "po ol", "po/ol", "pool_"] {
            assert!(check_storeid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_names_are_safe_and_deterministic() {
        assert_eq!(resource_name("pool", "vm-100-disk-0"), "pool.vm-100-disk-0");
        let odd = [
            ("pool", "vm-1-x+y"),
            ("pool", "vm-1-x_tmeta"),
            ("snapshots", "vm-1-disk-0"),
            ("pool", &format!("vm-1-{}", "z".repeat(90))),
        ];
        for (s, v) in odd {
            let r = resource_name(s, v);
            assert_eq!(r, resource_name(s, v));
            assert!(r.len() <= MAX_RESOURCE, "{r}");
            assert!(r.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')), "{r}");
            assert!(!LVM_RESERVED.iter().any(|x| r.contains(x)), "{r}");
            assert!(!r.starts_with("snapshot") && !r.starts_with('-'), "{r}");
        }
        assert_ne!(resource_name("pool", "vm-1-x+y"), resource_name("pool", "vm-1-x_y"));
        let a = format!("vm-1-{}a", "z".repeat(90));
        let b = format!("vm-1-{}b", "z".repeat(90));
        assert_ne!(resource_name("pool", &a), resource_name("pool", &b));
    }

    #[test]
    fn sizes() {
        assert_eq!(check_size_kib(&json!(4)).unwrap(), 4);
        assert_eq!(check_size_kib(&json!("4194304")).unwrap(), 4194304);
        for bad in [json!(0), json!(-1), json!(1.5), json!("12k"), json!(""), json!(null), json!(1u64 << 41)] {
            assert_eq!(check_size_kib(&bad).unwrap_err().kind(), "invalid-input", "{bad}");
        }
        assert_eq!(check_size_bytes(&json!(1025)).unwrap(), 2);
        assert_eq!(check_size_bytes(&json!(1u64 << 30)).unwrap(), 1 << 20);
        assert!(check_size_bytes(&json!((1u64 << 50) + 1)).unwrap_err().to_string().contains("1 PiB"));
        assert!(check_size_bytes(&json!(0)).is_err());
    }

    fn safe_resource(r: &str) -> bool {
        r.len() <= MAX_RESOURCE
            && !r.starts_with('-')
            && r.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
            && !LVM_RESERVED.iter().any(|x| r.contains(x))
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_is_refused_or_safe(s in "\\PC{0,120}") {
            if let Ok(v) = parse_volname(&s) {
                proptest::prop_assert!(v.name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'+' | b'-')));
                proptest::prop_assert!(safe_resource(&resource_name("dp", &v.name)));
            }
        }

        #[test]
        fn plausible_names_give_safe_distinct_resources(
            sid in "[a-z][a-z0-9._-]{0,30}[a-z0-9]",
            a in "vm-[1-9][0-9]{0,8}-[A-Za-z0-9_.+-]{1,80}",
            b in "vm-[1-9][0-9]{0,8}-[A-Za-z0-9_.+-]{1,80}",
        ) {
            if let (Ok(va), Ok(vb)) = (parse_volname(&a), parse_volname(&b)) {
                let (ra, rb) = (resource_name(&sid, &va.name), resource_name(&sid, &vb.name));
                proptest::prop_assert!(safe_resource(&ra), "{}", ra);
                proptest::prop_assert!(a == b || ra != rb, "{} and {} both map to {}", a, b, ra);
            }
        }
    }
}
