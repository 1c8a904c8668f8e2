//! drbdpool-bench: the tools behind scripts/bench.sh (docs/BENCHMARKS.md).
//! Not installed, not part of the test suite.
//!
//!   populate   a store with N volumes as a cluster would hold them: registered
//!              nodes, VolumeDocs with 2 replicas each, every node's published
//!              NodeState, and (with --sim) the simulated DRBD side of the local
//!              node's replicas (up, UpToDate, Primary where it is replicas[0]);
//!   time       run a command C times (request on stdin, stdout read to the end,
//!              as the shim does) and report median/p99 wall time and peak RSS;
//!   agent-rss  run the agent's reconcile passes in this process over a populated
//!              store and report VmHWM (peak RSS) from /proc/self/status.
//!
//! Every document goes through the library's types and serialization; only the
//! per-file fsync of `Store::put_*` is skipped so that 10,000 volumes take seconds.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use drbdpool::backend::sim::SimBackend;
use drbdpool::backend::{Backend, BackendKind, BackendSpec, Space};
use drbdpool::drbd::sim::SimDrbd;
use drbdpool::drbd::{PlanHost, Replication, ResourcePlan};
use drbdpool::store::alloc::Allocation;
use drbdpool::store::docs::*;
use drbdpool::store::Store;

#[derive(Parser)]
#[command(name = "drbdpool-bench", about = "Benchmark tools for drbdpool (see docs/BENCHMARKS.md)")]
struct Opts {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Populate <dir>/store (and <dir>/images*, <dir>/sim) with N volumes; writes <dir>/manifest.json
    Populate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        volumes: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value = "dp")]
        storeid: String,
        /// Replicas per volume (at most --nodes)
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Also bring the local node's replicas (and their peers) up in the simulated DRBD
        #[arg(long)]
        sim: bool,
    },
    /// Run CMD --count times after --warmup runs; prints one JSON line
    Time {
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// File whose content is written to every run's stdin
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// Label for the JSON line
        #[arg(long, default_value = "")]
        label: String,
        /// Fail if a run exits non-zero (off for the floor binary, which ignores stdin)
        #[arg(long)]
        check: bool,
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
    /// The floor of `list` for this store layout: read every volume document of a storage
    /// (readdir + one read per file, no parsing) in this process; prints one JSON line
    ReadDocs {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "dp")]
        storeid: String,
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Agent passes over a populated store (sim DRBD, loop-free file backing) in this process; prints VmHWM
    AgentRss {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        passes: usize,
    },
}

fn main() -> Result<()> {
    match Opts::parse().cmd {
        Cmd::Populate { dir, volumes, nodes, storeid, replicas, sim } => populate(&dir, volumes, nodes, replicas, &storeid, sim),
        Cmd::Time { count, warmup, stdin, label, check, cmd } => time(count, warmup, stdin.as_deref(), &label, check, &cmd),
        Cmd::AgentRss { dir, passes } => agent_rss(&dir, passes),
        Cmd::ReadDocs { dir, storeid, count } => read_docs(&dir, &storeid, count),
    }
}

// ---------------------------------------------------------------- populate

pub const LOCAL: &str = "bench1";
const SIZE_KIB: u64 = 32 * 1024 * 1024; // 32 GiB guest disks (sparse files: no space used)

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn node_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("bench{i}")).collect()
}

/// Volume i: 4 disks per VM, replicas on nodes (i mod n, i+1 mod n, ...).
fn volume_doc(i: usize, storeid: &str, nodes: &[String], replicas: usize, images: &Path, t: u64) -> VolumeDoc {
    let vmid = 100 + (i / 4) as u32;
    let volname = format!("vm-{vmid}-disk-{}", i % 4);
    let placed: Vec<String> = (0..replicas).map(|k| nodes[(i + k) % nodes.len()].clone()).collect();
    // The allocator keeps ports unique among volumes sharing a node (7000-7999):
    // more than 1,000 volumes on 3 nodes is beyond it; the bench only needs the files.
    let al = Allocation { minor: 1000 + i as u32, port: 7000 + (i % 1000) as u16, node_ids: (0..replicas as u8).collect() };
    let backend = BackendSpec { kind: BackendKind::File, vg: None, thinpool: None, dir: Some(images.to_string_lossy().into_owned()) };
    VolumeDoc {
        // From the volume's number, so every run writes the same store.
        secret: format!("{:032x}", (i as u128).wrapping_mul(0x9e3779b97f4a7c15f39cc0605cedc835)),
        state: VolumeState::Ready,
        created: t - 86400 + i as u64,
        ..VolumeDoc::new(storeid, &volname, vmid, SIZE_KIB, backend, &placed, &al)
    }
}

/// What the agent of `node` publishes for `v` when all is well: UpToDate, connected,
/// Primary on replicas[0] (its guest runs there).
fn observed(v: &VolumeDoc, node: &str) -> VolumeObserved {
    let role = |n: &str| if v.replicas[0].node == n { "Primary" } else { "Secondary" };
    VolumeObserved {
        ready: true,
        generation: v.generation,
        role: role(node).into(),
        disk: "UpToDate".into(),
        open: role(node) == "Primary",
        size_kib: v.size_kib,
        peers: v
            .replicas
            .iter()
            .filter(|r| r.node != node)
            .map(|r| PeerObserved {
                node: r.node.clone(),
                connection: "Connected".into(),
                role: role(&r.node).into(),
                disk: "UpToDate".into(),
                replication: "Established".into(),
                out_of_sync_kib: 0,
                sync_percent: None,
            })
            .collect(),
        error: None,
        snapshots: vec![],
        quorum: None,
    }
}

/// Same bytes as `store::write_doc` (pretty JSON), without its per-file fsync.
fn write_json<T: serde::Serialize>(path: &Path, doc: &T) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(doc)?).with_context(|| format!("write {}", path.display()))
}

fn populate(dir: &Path, n: usize, nnodes: usize, replicas: usize, storeid: &str, sim: bool) -> Result<()> {
    if replicas < 2 || replicas > nnodes {
        bail!("--replicas {replicas} with --nodes {nnodes}: give 2 to {nnodes} replicas (and at least 2 nodes)");
    }
    drbdpool::naming::check_storeid(storeid)?;
    let t0 = Instant::now();
    let store_dir = dir.join("store");
    if store_dir.exists() {
        bail!("{} exists: populate a fresh directory", store_dir.display());
    }
    let store = Store::open(&store_dir)?;
    let nodes = node_names(nnodes);
    let images = dir.join("images"); // the local node's drbdpool-dir
    std::fs::create_dir_all(&images)?;
    for (k, name) in nodes.iter().enumerate() {
        store.put_node(&NodeDoc { format: FORMAT, name: name.clone(), address: format!("10.99.0.{}", k + 1) })?;
    }
    let t = now();
    let vdir = store_dir.join("volumes").join(storeid);
    std::fs::create_dir_all(&vdir)?;
    let docs: Vec<VolumeDoc> = (0..n).map(|i| volume_doc(i, storeid, &nodes, replicas, &images, t)).collect();
    for v in &docs {
        write_json(&vdir.join(format!("{}.json", v.volname)), v)?;
    }
    // The list index, as the agents build it on their first pass over a storage.
    store.build_index(storeid)?;
    // Every node's agent publishes all its replicas plus space per storage.
    let space = Space { total: 4 << 40, avail: 3 << 40, used: 1 << 40 };
    for name in &nodes {
        let volumes: BTreeMap<String, VolumeObserved> =
            docs.iter().filter(|v| v.replica(name).is_some()).map(|v| (v.resource.clone(), observed(v, name))).collect();
        store.put_node_state(&NodeState::new(name, t, BTreeMap::from([(storeid.to_string(), space.clone())]), volumes))?;
        // and the thin allocation of each replica (agent/reconcile.rs, `used` in list).
        let used: BTreeMap<String, u64> = docs.iter().filter(|v| v.replica(name).is_some()).map(|v| (v.volname.clone(), (v.size_kib << 10) / 3)).collect();
        store.put_node_usage(&NodeUsage { format: FORMAT, node: name.clone(), updated: t, storages: BTreeMap::from([(storeid.to_string(), used)]) })?;
    }
    let docs_secs = t0.elapsed().as_secs_f64();

    let mut active = Vec::new();
    let mut sim_count = 0;
    if sim {
        let sim_dir = dir.join("sim");
        std::fs::create_dir_all(&sim_dir)?;
        let addr: BTreeMap<&str, String> = nodes.iter().enumerate().map(|(k, n)| (n.as_str(), format!("10.99.0.{}", k + 1))).collect();
        let mut sims = BTreeMap::new();
        for name in &nodes {
            sims.insert(name.clone(), SimDrbd::new(&sim_dir, name)?);
            std::fs::create_dir_all(dir.join(format!("images-{name}")))?;
        }
        for v in docs.iter().filter(|v| v.replica(LOCAL).is_some()) {
            let backing_kib = drbdpool::drbd::drbd_backing_kib(v.size_kib);
            let hosts: Vec<PlanHost> =
                v.replicas.iter().map(|r| PlanHost { name: r.node.clone(), node_id: r.node_id, address: addr[r.node.as_str()].clone() }).collect();
            for r in &v.replicas {
                // The local node's backing is where its file backend looks; peers get their own directory.
                let d = if r.node == LOCAL { images.clone() } else { dir.join(format!("images-{}", r.node)) };
                let img = d.join(format!("{}.img", v.resource));
                std::fs::File::create(&img)?.set_len(backing_kib * 1024)?;
                let plan = ResourcePlan {
                    resource: v.resource.clone(),
                    minor: v.minor,
                    port: v.port,
                    secret: v.secret.clone(),
                    size_kib: v.size_kib,
                    local: r.node.clone(),
                    backing: img.to_string_lossy().into_owned(),
                    hosts: hosts.clone(),
                    thin: true,
                    dual_primary: false,
                    handler_store: Some(store_dir.to_string_lossy().into_owned()),
                    resync: Default::default(),
                };
                sims[&r.node].apply(&plan)?;
            }
            // As the agent of replicas[0] does for fresh thin replicas, then the guest starts there.
            let first = &sims[&v.replicas[0].node];
            first.skip_initial_sync(&v.resource)?;
            first.promote(&v.resource)?;
            if v.replicas[0].node == LOCAL && active.len() < 1000 {
                active.push(v.volname.clone());
            }
            sim_count += 1;
        }
    } else {
        active = docs.iter().filter(|v| v.replicas[0].node == LOCAL).take(1000).map(|v| v.volname.clone()).collect();
    }
    let all: Vec<&str> = docs.iter().map(|v| v.volname.as_str()).take(1000).collect();
    let manifest = json!({
        "store": store_dir,
        "sim_dir": if sim { Some(dir.join("sim")) } else { None },
        "storeid": storeid,
        "node": LOCAL,
        "nodes": nodes,
        "volumes": n,
        "scfg": {"type": "drbdpool", "drbdpool-backend": "file", "drbdpool-dir": images, "content": "images,rootdir"},
        "volnames": all,
        "active": active,
        "sim_replicas": sim_count,
        "state_bytes": dir_bytes(&store_dir.join("state"))?,
        "store_bytes": dir_bytes(&store_dir)?,
        "store_files": file_count(&store_dir)?,
        "largest_file_bytes": largest_file(&store_dir)?,
    });
    write_json(&dir.join("manifest.json"), &manifest)?;
    eprintln!(
        "populated {} with {n} volumes on {nnodes} nodes in {:.2}s (docs {docs_secs:.2}s, sim replicas of {LOCAL}: {sim_count})",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------- time

struct Run {
    secs: f64,
    maxrss_kib: i64,
}

/// Spawn once: stdin fed, stdout and stderr read to EOF, then reaped with wait4
/// (for the child's own ru_maxrss).
fn run_once(cmd: &[String], input: &[u8], check: bool) -> Result<Run> {
    let t = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", cmd[0]))?;
    let mut si = child.stdin.take().unwrap();
    let _ = si.write_all(input); // a floor binary exits without reading: EPIPE is fine
    drop(si);
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out)?;
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err)?;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain wait4 on our own child; std's Child is not waited on afterwards.
    let w = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let secs = t.elapsed().as_secs_f64();
    if w != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if check && !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{} failed (status {status}): {}{}", cmd.join(" "), String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    }
    std::mem::forget(child);
    Ok(Run { secs, maxrss_kib: ru.ru_maxrss })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let k = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[k.clamp(1, sorted.len()) - 1]
}

fn time(count: usize, warmup: usize, stdin: Option<&Path>, label: &str, check: bool, cmd: &[String]) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let input = match stdin {
        Some(p) => std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
        None => Vec::new(),
    };
    for _ in 0..warmup {
        run_once(cmd, &input, check)?;
    }
    let mut ms = Vec::with_capacity(count);
    let mut rss = 0;
    for _ in 0..count {
        let r = run_once(cmd, &input, check)?;
        ms.push(r.secs * 1000.0);
        rss = rss.max(r.maxrss_kib);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{}",
        json!({"label": label, "n": count, "median_ms": pct(&ms, 50.0), "p99_ms": pct(&ms, 99.0),
               "min_ms": ms[0], "max_ms": ms[ms.len() - 1], "maxrss_kib": rss})
    );
    Ok(())
}

fn read_docs(dir: &Path, storeid: &str, count: usize) -> Result<()> {
    let vdir = dir.join("store").join("volumes").join(storeid);
    let mut ms = Vec::new();
    let mut files = 0;
    for _ in 0..count.max(1) {
        let t = Instant::now();
        files = 0;
        let mut bytes = 0;
        for e in std::fs::read_dir(&vdir)? {
            bytes += std::fs::read(e?.path())?.len();
            files += 1;
        }
        std::hint::black_box(bytes);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{}", json!({"label": "floor-read-docs", "n": ms.len(), "files": files, "median_ms": pct(&ms, 50.0), "p99_ms": pct(&ms, 99.0)}));
    Ok(())
}

// ---------------------------------------------------------------- agent-rss

fn vm_kib(field: &str) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let line = s.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow!("no {field} in /proc/self/status"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn agent_rss(dir: &Path, passes: usize) -> Result<()> {
    let store = Store::open(dir.join("store"))?;
    let sim_dir = dir.join("sim");
    if !sim_dir.is_dir() {
        bail!("{} missing: populate with --sim first", sim_dir.display());
    }
    let images = dir.join("images");
    let start_hwm = vm_kib("VmHWM:")?;
    let repl: Box<dyn Replication> = Box::new(SimDrbd::new(&sim_dir, LOCAL)?);
    // Every volume's backing a sparse image without a loop device: a node of 1,000 volumes
    // cannot get 1,000 loop devices on a shared build machine; the rest is the production code.
    let factory: drbdpool::node::BackendFactory = Arc::new(move |_spec: &BackendSpec| Ok(Box::new(SimBackend::new(&images)) as Box<dyn Backend>));
    let local = drbdpool::node::LocalNode::with_backends(store.clone(), LOCAL, factory, repl);
    let mut agent = drbdpool::agent::Agent::new(store.clone(), local);
    let mut pass_ms = Vec::new();
    for _ in 0..passes {
        let t = Instant::now();
        agent.pass()?;
        pass_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let st = store.node_state(LOCAL)?.ok_or_else(|| anyhow!("the agent published no state"))?;
    let errors = st.volumes.values().filter(|o| o.error.is_some()).count();
    println!(
        "{}",
        json!({"label": "agent", "passes": passes, "volumes_published": st.volumes.len(), "volume_errors": errors,
               "vm_hwm_kib": vm_kib("VmHWM:")?, "vm_rss_kib": vm_kib("VmRSS:")?, "hwm_before_kib": start_hwm,
               "pass_ms": pass_ms})
    );
    if errors > 0 {
        bail!("{errors} volumes have reconcile errors: the measurement is not of a healthy node");
    }
    Ok(())
}

/// Bytes of every file under `dir` (the store's size as pmxcfs would count it, without overhead).
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut sum = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        sum += if m.is_dir() { dir_bytes(&e.path())? } else { m.len() };
    }
    Ok(sum)
}

/// The largest file under `dir`: pmxcfs refuses any over 1 MiB (memdb.h).
fn largest_file(dir: &Path) -> Result<u64> {
    let mut max = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        max = max.max(if m.is_dir() { largest_file(&e.path())? } else { m.len() });
    }
    Ok(max)
}

/// Files (and directories, which pmxcfs counts as inodes too) under `dir`.
fn file_count(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        n += 1 + if e.metadata()?.is_dir() { file_count(&e.path())? } else { 0 };
    }
    Ok(n)
}
