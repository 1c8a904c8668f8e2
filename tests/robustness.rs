//! Robustness of every parser against bad input (issue "Reliability"): arbitrary bytes, and
//! mutations (truncation, byte flips, line shuffles, token/key deletion, hostile values) of the
//! real DRBD 8.4 outputs in tests/fixtures/drbd84-real and of valid store documents.
//! Contract: a clear error or a best-effort result, never a panic; reading the store never
//! changes it and an error names the offending file.
//!
//! Each property runs `cases(n)` generated inputs (env ROBUSTNESS_SCALE multiplies them) and
//! prints its count; run with `cargo test --release --test robustness -- --nocapture`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use drbdpool::doctor;
use drbdpool::drbd::{events2, version};
use drbdpool::ha;
use drbdpool::store::docs::{
    BackendKind, BackendSpec, DualPrimary, NodeDoc, NodeState, PeerObserved, SnapshotDoc, Space, VolumeDoc,
    VolumeObserved, FORMAT,
};
use drbdpool::store::Store;

// ---------- harness ----------

fn cases(n: u32) -> u32 {
    let scale: f64 = std::env::var("ROBUSTNESS_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64 * scale) as u32).max(1)
}

/// Run a property; panics inside `f` are caught by proptest, shrunk and reported as failures.
fn check<S: Strategy>(name: &str, n: u32, strategy: S, f: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let cfg = Config { cases: n, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(cfg);
    let ran = std::cell::Cell::new(0u32);
    let res = runner.run(&strategy, |v| {
        ran.set(ran.get() + 1);
        f(v)
    });
    if let Err(e) = res {
        panic!("{name}: {e}");
    }
    assert!(ran.get() >= n, "{name}: only {} of {n} cases ran", ran.get());
    eprintln!("robustness: {name}: {n} cases passed");
}

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drbd84-real").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// Fixture files whose name starts with one of `prefixes`.
fn fixtures(prefixes: &[&str]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drbd84-real");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)) && n.ends_with(".out"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no fixtures for {prefixes:?}");
    names.iter().map(|n| fixture(n)).collect()
}

// ---------- mutations ----------

/// Values that break naive number/enum parsing.
const HOSTILE: &[&str] = &[
    "",
    "-",
    "-1",
    "0",
    "-0",
    "255",
    "256",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999",
    "1e308",
    "1e999",
    "NaN",
    "inf",
    "-inf",
    "0x",
    "0xffffffffff",
    "1.5",
    ":",
    "::",
    "->",
    "a->",
    "->b",
    "/",
    "%",
    "{",
    "}",
    "[",
    "\"",
    "\\",
    "\u{0}",
    "é",
    "\u{feff}",
    "yes",
    "no",
    "Primary/",
    "/Secondary",
    "UpToDate/",
];

#[derive(Clone, Debug)]
enum Mutation {
    /// Cut the text at a point (a tool killed mid-output, a torn file).
    Truncate(Index),
    /// XOR one byte (bit rot, wrong encoding).
    Flip(Index, u8),
    /// Insert arbitrary bytes.
    Insert(Index, Vec<u8>),
    /// Remove a byte range.
    DeleteRange(Index, Index),
    /// Reorder the lines.
    ShuffleLines(u64),
    DeleteLine(Index),
    DuplicateLine(Index),
    /// Remove one whitespace-separated token (a missing key:value).
    DeleteToken(Index),
    /// Replace the value part (after the last ':' or '=') of a token, or the whole token.
    HostileValue(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::DeleteRange(a, b)),
        any::<u64>().prop_map(Mutation::ShuffleLines),
        any::<Index>().prop_map(Mutation::DeleteLine),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        any::<Index>().prop_map(Mutation::DeleteToken),
        (any::<Index>(), any::<Index>()).prop_map(|(t, v)| Mutation::HostileValue(t, v)),
        (any::<Index>(), any::<Index>()).prop_map(|(t, v)| Mutation::HostileValue(t, v)),
    ]
}

/// Byte spans of whitespace-separated tokens.
fn token_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in b.iter().enumerate() {
        match (c.is_ascii_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, b.len()));
    }
    out
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Truncate(i) => {
            let at = i.index(b.len() + 1);
            b.truncate(at);
        }
        Mutation::Flip(i, x) => {
            if !b.is_empty() {
                let at = i.index(b.len());
                b[at] ^= x;
            }
        }
        Mutation::Insert(i, bytes) => {
            let at = i.index(b.len() + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::DeleteRange(a, c) => {
            let (x, y) = (a.index(b.len() + 1), c.index(b.len() + 1));
            b.drain(x.min(y)..x.max(y));
        }
        Mutation::ShuffleLines(seed) => {
            let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
            // Fisher-Yates with a tiny LCG: deterministic per seed, shrinkable.
            let mut s = *seed | 1;
            for i in (1..lines.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lines.swap(i, (s >> 33) as usize % (i + 1));
            }
            b = lines.join(&b'\n');
        }
        Mutation::DeleteLine(i) | Mutation::DuplicateLine(i) => {
            let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
            let at = i.index(lines.len());
            if matches!(m, Mutation::DeleteLine(_)) {
                lines.remove(at);
            } else {
                let l = lines[at].clone();
                lines.insert(at, l);
            }
            b = lines.join(&b'\n');
        }
        Mutation::DeleteToken(i) => {
            let spans = token_spans(&b);
            if !spans.is_empty() {
                let (s, e) = spans[i.index(spans.len())];
                b.drain(s..e);
            }
        }
        Mutation::HostileValue(t, v) => {
            let spans = token_spans(&b);
            if !spans.is_empty() {
                let (s, e) = spans[t.index(spans.len())];
                let tok = &b[s..e];
                let vs = tok.iter().rposition(|&c| c == b':' || c == b'=').map_or(s, |p| s + p + 1);
                let val = HOSTILE[v.index(HOSTILE.len())].as_bytes();
                b.splice(vs..e, val.iter().copied());
            }
        }
    }
    b
}

/// One of `bases`, mutated 1..=4 times, as text (tool output is read lossily as UTF-8).
fn mutated(bases: Vec<String>) -> impl Strategy<Value = String> {
    let n = bases.len();
    (0..n, prop::collection::vec(mutation(), 1..=4)).prop_map(move |(i, ms)| {
        let mut b = bases[i].clone().into_bytes();
        for m in &ms {
            b = apply(b, m);
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

/// Mutated fixtures, plus some plain arbitrary text and arbitrary bytes.
fn tool_output(bases: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => mutated(bases),
        1 => ".{0,300}",
        1 => prop::collection::vec(any::<u8>(), 0..600).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

// ---------- tool output parsers ----------

/// events2 lines from the grammar (action, object, known keys) with hostile values, so the
/// parser's state merging, not just its tokenizer, sees bad data.
fn events2_line() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("exists"),
        Just("create"),
        Just("change"),
        Just("destroy"),
        Just("call"),
        Just("response"),
        Just("rename"),
        Just("-")
    ];
    let object = prop_oneof![
        Just("resource"),
        Just("device"),
        Just("connection"),
        Just("peer-device"),
        Just("path"),
        Just("helper"),
        Just("skipped"),
        Just("-")
    ];
    let known = prop_oneof![
        Just("name"),
        Just("role"),
        Just("volume"),
        Just("minor"),
        Just("disk"),
        Just("size"),
        Just("open"),
        Just("peer-node-id"),
        Just("conn-name"),
        Just("connection"),
        Just("replication"),
        Just("peer-disk"),
        Just("out-of-sync"),
        Just("done"),
        Just("new_name"),
        Just("helper"),
    ];
    let key = prop_oneof![3 => known.prop_map(str::to_string), 1 => "[a-z-]{1,8}"];
    let val = prop_oneof![
        3 => prop::sample::select(HOSTILE).prop_map(str::to_string),
        2 => prop_oneof![Just("r0"), Just("r1"), Just("0"), Just("1"), Just("UpToDate"), Just("SyncSource"), Just("Connected"), Just("Primary")].prop_map(str::to_string),
        1 => "[ -~]{0,12}".prop_map(|s| s.replace(' ', "")),
    ];
    let event = (word, object, prop::collection::vec((key, val), 0..8)).prop_map(|(w, o, kv)| {
        let mut l = format!("{w} {o}");
        for (k, v) in kv {
            l.push_str(&format!(" {k}:{v}"));
        }
        l
    });
    // `- skipped N` with hostile and huge N (their sum overflowed before the fix).
    let skipped =
        prop_oneof![prop::sample::select(HOSTILE).prop_map(str::to_string), any::<u64>().prop_map(|n| n.to_string())]
            .prop_map(|n| format!("- skipped {n}"));
    prop_oneof![8 => event, 2 => skipped]
}

fn events2_bases() -> Vec<String> {
    fixtures(&["drbdsetup-events2", "drbdsetup-84-events"])
}

#[test]
fn events2_never_panics() {
    check(
        "events2 mutated fixtures / garbage (parse_now + resources)",
        cases(2000),
        tool_output(events2_bases()),
        |text| {
            for l in text.lines() {
                let _ = events2::parse_line(l);
            }
            let s = events2::parse_now(&text);
            for r in s.resources() {
                let _ = s.resource(&r.name);
            }
            Ok(())
        },
    );
}

#[test]
fn events2_stream_of_hostile_lines_never_panics() {
    let base = fixture("drbdsetup-events2-now-statistics.syncsource.out");
    check(
        "events2 grammar lines with hostile values, fed after a real dump",
        cases(2000),
        prop::collection::vec(events2_line(), 1..40),
        |lines| {
            let mut s = events2::parse_now(&base);
            for l in &lines {
                match events2::parse_line(l) {
                    Ok(_) => {}
                    Err(why) => prop_assert!(!why.is_empty(), "an error says why"),
                }
                s.feed(l);
                // With a timestamp prefix too (`--timestamps`).
                s.feed(&format!("2026-11-24T20:39:59.867186+00:00 {l}"));
            }
            let _ = s.resources();
            Ok(())
        },
    );
}

#[test]
fn events2_skip_counts_do_not_overflow() {
    // Regression: `- skipped N` summed without saturation overflowed (panic in debug builds).
    let mut s = events2::Events2State::new();
    s.feed("- skipped 18446744073709551615");
    s.feed("- skipped 18446744073709551615");
    assert_eq!(s.skipped_events, u64::MAX);
}

/// The version line of /proc/drbd (read by version::detect when drbdadm names no module).
#[test]
fn proc_drbd_version_never_panics() {
    let bases = fixtures(&["proc-drbd"]);
    check("/proc/drbd mutated fixtures / garbage (version line)", cases(2000), tool_output(bases), |text| {
        let _ = version::parse_proc_drbd_version(&text);
        Ok(())
    });
}

#[test]
fn versions_never_panic() {
    let bases =
        vec![fixture("drbdadm--version.out"), fixture("modinfo-drbd.out"), fixture("proc-drbd.primary-uptodate.out")];
    check("drbdadm --version / version strings mutated", cases(2000), tool_output(bases), |text| {
        let v = version::parse_drbdadm_version(&text);
        if let Err(e) = version::classify(&v) {
            prop_assert!(!e.to_string().is_empty());
        }
        for w in text.split_whitespace() {
            if let Some(ver) = version::Ver::parse(w) {
                let _ = ver.to_string();
            }
            let _ = doctor::decode_version_code(w);
        }
        let _ = version::Ver::parse(&text);
        Ok(())
    });
}

const RULES_CFG: &str =
    "node-affinity: drbdpool-vm-100\n\tnodes pve1:2,pve2:2,pve3:1\n\tresources vm:100\n\tstrict 0\n\n\
node-affinity: admin-rule\n\tcomment keep me\n\tnodes pve3\n\tresources ct:101\n\tstrict 1\n";
const RESOURCES_CFG: &str = "vm: 100\n\tstate started\n\tmax_restart 1\n\nct: 101\n\tgroup x\n\n# comment\nvm: abc\n";

#[test]
fn ha_section_config_never_panics() {
    let bases = vec![RULES_CFG.to_string(), RESOURCES_CFG.to_string()];
    check("HA section config (rules.cfg, resources.cfg) mutated / garbage", cases(2000), tool_output(bases), |text| {
        let secs = ha::parse_sections(&text);
        for s in &secs {
            prop_assert!(!s.kind.contains('\n') && !s.id.contains('\n'));
        }
        let _ = ha::ha_guests(&text);
        Ok(())
    });
}

const COROSYNC_CONF: &str = "logging {\n  debug: off\n  to_syslog: yes\n}\n\nnodelist {\n  node {\n    name: pve1\n    nodeid: 1\n    quorum_votes: 1\n    ring0_addr: 10.0.0.1\n    ring1_addr: 10.1.0.1\n  }\n  node {\n    name: pve2\n    nodeid: 2\n    ring0_addr: 10.0.0.2\n  }\n}\n\nquorum {\n  provider: corosync_votequorum\n  two_node: 1\n  device {\n    model: net\n  }\n}\n\ntotem {\n  cluster_name: lab # comment\n  version: 2\n}\n";

#[test]
fn corosync_conf_never_panics() {
    let parsed = doctor::parse_corosync(COROSYNC_CONF);
    assert_eq!(parsed.nodes.len(), 2, "the base case parses: {parsed:?}");
    check("corosync.conf mutated / garbage", cases(2000), tool_output(vec![COROSYNC_CONF.to_string()]), |text| {
        let c = doctor::parse_corosync(&text);
        let _ = doctor::check_cluster(Some(&c), &[]);
        Ok(())
    });
}

// ---------- JSON-level mutations (status JSON, store documents) ----------

#[derive(Clone, Debug)]
enum JsonMut {
    DeleteKey(Index),
    Replace(Index, Index),
    /// Make a value an array of itself (wrong nesting).
    Wrap(Index),
    /// Raise `format` (a document from a newer drbdpool).
    Format(i64),
}

fn json_hostile() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!(null),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(256),
        json!(65536),
        json!(4294967296u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(""),
        json!("x"),
        json!("Primary"),
        json!("ready"),
        json!(true),
        json!([]),
        json!({}),
        json!([1, 2]),
        json!({"node": "x"}),
        json!("a".repeat(5000)),
    ]
}

/// Paths to every value in a JSON document (object keys and array indices).
fn json_paths(v: &serde_json::Value, prefix: &mut Vec<serde_json::Value>, out: &mut Vec<Vec<serde_json::Value>>) {
    out.push(prefix.clone());
    match v {
        serde_json::Value::Object(m) => {
            for (k, c) in m {
                prefix.push(serde_json::Value::String(k.clone()));
                json_paths(c, prefix, out);
                prefix.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                prefix.push(serde_json::Value::from(i));
                json_paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_path<'a>(v: &'a mut serde_json::Value, path: &[serde_json::Value]) -> &'a mut serde_json::Value {
    path.iter().fold(v, |cur, k| match k {
        serde_json::Value::String(s) => cur.get_mut(s.as_str()).unwrap(),
        n => cur.get_mut(n.as_u64().unwrap() as usize).unwrap(),
    })
}

fn apply_json(mut v: serde_json::Value, m: &JsonMut) -> serde_json::Value {
    let mut paths = Vec::new();
    json_paths(&v, &mut Vec::new(), &mut paths);
    match m {
        JsonMut::DeleteKey(i) => {
            let p = &paths[i.index(paths.len())];
            if let Some((last, parent)) = p.split_last() {
                match (at_path(&mut v, parent), last) {
                    (serde_json::Value::Object(o), serde_json::Value::String(k)) => {
                        o.remove(k);
                    }
                    (serde_json::Value::Array(a), n) => {
                        a.remove(n.as_u64().unwrap() as usize);
                    }
                    _ => {}
                }
            }
        }
        JsonMut::Replace(i, h) => {
            let hostile = json_hostile();
            *at_path(&mut v, &paths[i.index(paths.len())]) = hostile[h.index(hostile.len())].clone();
        }
        JsonMut::Wrap(i) => {
            let t = at_path(&mut v, &paths[i.index(paths.len())]);
            *t = serde_json::Value::Array(vec![t.take()]);
        }
        JsonMut::Format(f) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("format".into(), (*f).into());
            }
        }
    }
    v
}

fn json_mutation() -> impl Strategy<Value = JsonMut> {
    prop_oneof![
        3 => any::<Index>().prop_map(JsonMut::DeleteKey),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMut::Replace(a, b)),
        1 => any::<Index>().prop_map(JsonMut::Wrap),
        1 => prop_oneof![Just(-1i64), Just(0), Just(2), Just(1000), Just(u32::MAX as i64 + 1), any::<i64>()].prop_map(JsonMut::Format),
    ]
}

fn json_mutated(bases: Vec<serde_json::Value>) -> impl Strategy<Value = serde_json::Value> {
    let n = bases.len();
    (0..n, prop::collection::vec(json_mutation(), 1..=3))
        .prop_map(move |(i, ms)| ms.iter().fold(bases[i].clone(), |v, m| apply_json(v, m)))
}

// ---------- store documents ----------

fn sample_volume() -> VolumeDoc {
    // Every optional field set: the corruption cases mutate this document's keys.
    VolumeDoc {
        resource: "pve-vm-100-disk-0".into(),
        size_kib: 1048576,
        port: 7789,
        backend: BackendSpec {
            kind: BackendKind::Lvmthin,
            vg: Some("pve".into()),
            thinpool: Some("data".into()),
            dir: None,
        },
        secret: "c2VjcmV0".into(),
        parent: Some("base-9000-disk-0".into()),
        snapshots: vec![SnapshotDoc { name: "before".into(), created: 1764000000, origin: None, rollback: None }],
        outdated: vec!["pve2".into()],
        dual_primary: Some(DualPrimary { source: "pve1".into(), target: "pve2".into(), since: 1764000001 }),
        created: 1763000000,
        generation: 4,
        ..VolumeDoc::for_test("drbd1", "vm-100-disk-0", &["pve1", "pve2"])
    }
}

fn sample_node() -> NodeDoc {
    NodeDoc { format: FORMAT, name: "pve1".into(), address: "10.0.0.1".into() }
}

fn sample_state() -> NodeState {
    let mut storages = BTreeMap::new();
    storages.insert("drbd1".into(), Space { total: 100, avail: 60, used: 40 });
    let mut volumes = BTreeMap::new();
    volumes.insert(
        "pve-vm-100-disk-0".into(),
        VolumeObserved {
            ready: true,
            generation: 4,
            role: "Primary".into(),
            disk: "UpToDate".into(),
            open: true,
            size_kib: 1048576,
            peers: vec![PeerObserved {
                node: "pve2".into(),
                connection: "Connected".into(),
                role: "Secondary".into(),
                disk: "Inconsistent".into(),
                replication: "SyncSource".into(),
                out_of_sync_kib: 1024,
                sync_percent: Some(12.5),
            }],
            error: Some("x".into()),
            snapshots: vec![],
            quorum: None,
        },
    );
    NodeState { format: FORMAT, node: "pve1".into(), updated: 1764000002, storages, volumes }
}

/// Which document a case corrupts.
#[derive(Clone, Copy, Debug)]
enum DocKind {
    Volume,
    Node,
    State,
}

/// The bytes a corrupted document file holds.
fn corrupt_doc() -> impl Strategy<Value = (DocKind, Vec<u8>)> {
    let kind = prop_oneof![Just(DocKind::Volume), Just(DocKind::Node), Just(DocKind::State)];
    kind.prop_flat_map(|k| {
        let base = match k {
            DocKind::Volume => serde_json::to_value(sample_volume()).unwrap(),
            DocKind::Node => serde_json::to_value(sample_node()).unwrap(),
            DocKind::State => serde_json::to_value(sample_state()).unwrap(),
        };
        let text = serde_json::to_string_pretty(&base).unwrap();
        let bytes = prop_oneof![
            // JSON-level: missing keys, wrong types, newer format; then maybe also torn/flipped.
            4 => (json_mutated(vec![base]), prop::collection::vec(mutation(), 0..=2)).prop_map(|(v, ms)| {
                ms.iter().fold(serde_json::to_vec_pretty(&v).unwrap(), |b, m| apply(b, m))
            }),
            // Byte-level: truncated, flipped, garbage inserted.
            3 => prop::collection::vec(mutation(), 1..=3)
                .prop_map(move |ms| ms.iter().fold(text.clone().into_bytes(), |b, m| apply(b, m))),
            1 => prop::collection::vec(any::<u8>(), 0..300),
            1 => prop_oneof![
                Just(Vec::new()),
                Just(b"null".to_vec()),
                Just(b"[]".to_vec()),
                Just(b"{}".to_vec()),
                Just(b"{\"format\":2}".to_vec()),
                Just(b"{\"format\":1e999}".to_vec()),
                Just(b"\xef\xbb\xbf{\"format\":1}".to_vec()),
                Just("[".repeat(100_000).into_bytes()),
                Just(format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000)).into_bytes()),
            ],
        ];
        (Just(k), bytes)
    })
}

/// Every file under `dir` with its bytes, and every directory: compare before and after.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), None);
                todo.push(p);
            } else {
                out.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn error_names_file(e: &drbdpool::error::Error, file: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.kind(), "store", "{}", e);
    prop_assert!(e.to_string().contains(file), "error does not name {}: {}", file, e);
    Ok(())
}

#[test]
fn store_reads_of_corrupt_documents() {
    check(
        "store documents corrupted/truncated/newer (volume, nodes, node_state, all_volumes)",
        cases(1500),
        corrupt_doc(),
        |(kind, bytes)| {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::open(tmp.path()).unwrap();
            // Good neighbours, so listings have something valid to return too.
            store
                .put_volume(&VolumeDoc {
                    volname: "vm-101-disk-0".into(),
                    resource: "pve-vm-101-disk-0".into(),
                    ..sample_volume()
                })
                .unwrap();
            store.put_node(&NodeDoc { name: "pve2".into(), ..sample_node() }).unwrap();
            store.put_node_state(&NodeState { node: "pve2".into(), ..sample_state() }).unwrap();
            let (rel, name) = match kind {
                DocKind::Volume => ("volumes/drbd1/vm-100-disk-0.json", "vm-100-disk-0"),
                DocKind::Node => ("nodes/pve1.json", "pve1"),
                DocKind::State => ("state/pve1.json", "pve1"),
            };
            std::fs::write(tmp.path().join(rel), &bytes).unwrap();
            let before = snapshot(tmp.path());

            match kind {
                DocKind::Volume => {
                    match store.volume("drbd1", name) {
                        Ok(v) => prop_assert!(v.is_some()),
                        Err(e) => error_names_file(&e, rel)?,
                    }
                    match store.all_volumes() {
                        Ok(vs) => prop_assert_eq!(vs.len(), 2),
                        Err(e) => error_names_file(&e, rel)?,
                    }
                    match store.volumes("drbd1") {
                        Ok(vs) => prop_assert_eq!(vs.len(), 2),
                        Err(e) => error_names_file(&e, rel)?,
                    }
                    prop_assert_eq!(store.volume_names("drbd1").unwrap().len(), 2);
                }
                DocKind::Node => {
                    match store.node(name) {
                        Ok(n) => prop_assert!(n.is_some()),
                        Err(e) => error_names_file(&e, rel)?,
                    }
                    match store.nodes() {
                        Ok(ns) => prop_assert_eq!(ns.len(), 2),
                        Err(e) => error_names_file(&e, rel)?,
                    }
                }
                DocKind::State => {
                    match store.node_state(name) {
                        Ok(s) => prop_assert!(s.is_some()),
                        Err(e) => error_names_file(&e, rel)?,
                    }
                    match store.node_states() {
                        Ok(ss) => prop_assert_eq!(ss.len(), 2),
                        Err(e) => error_names_file(&e, rel)?,
                    }
                }
            }
            // The good neighbours still read.
            prop_assert!(store.node("pve2").is_ok() || matches!(kind, DocKind::Node));
            prop_assert_eq!(snapshot(tmp.path()), before, "reading changed the store");
            Ok(())
        },
    );
}

/// A newer drbdpool's document is refused with an upgrade hint, never misread.
#[test]
fn store_refuses_newer_format() {
    check(
        "store documents from a newer format",
        cases(300),
        (FORMAT + 1..=u32::MAX, any::<bool>()),
        |(f, extra_field)| {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::open(tmp.path()).unwrap();
            let mut v = serde_json::to_value(sample_volume()).unwrap();
            v["format"] = f.into();
            if extra_field {
                v["some_future_field"] = serde_json::json!({"x": [1, 2]});
            }
            std::fs::create_dir_all(tmp.path().join("volumes/drbd1")).unwrap();
            let rel = "volumes/drbd1/vm-100-disk-0.json";
            std::fs::write(tmp.path().join(rel), serde_json::to_vec(&v).unwrap()).unwrap();
            let before = snapshot(tmp.path());
            let e = store.volume("drbd1", "vm-100-disk-0").unwrap_err();
            error_names_file(&e, rel)?;
            prop_assert!(e.to_string().contains("upgrade"), "{}", e);
            prop_assert_eq!(snapshot(tmp.path()), before);
            Ok(())
        },
    );
}

/// Odd directory entries: a directory where a document should be, a non-UTF-8 name, temp files.
#[test]
fn store_odd_entries() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    store.put_node(&sample_node()).unwrap();
    std::fs::create_dir(tmp.path().join("nodes/dir.json")).unwrap();
    std::fs::write(tmp.path().join("nodes/.tmp-abc.json"), b"garbage").unwrap();
    std::fs::write(tmp.path().join("nodes").join(std::ffi::OsStr::from_bytes(b"bad\xff.json")), b"{}").unwrap();
    std::fs::write(tmp.path().join("volumes/not-a-dir"), b"x").unwrap();
    let before = snapshot(tmp.path());
    let e = store.nodes().unwrap_err();
    assert_eq!(e.kind(), "store");
    assert!(e.to_string().contains("nodes/dir.json"), "{e}");
    assert!(store.all_volumes().unwrap().is_empty());
    assert_eq!(snapshot(tmp.path()), before);
}
