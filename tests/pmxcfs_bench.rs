//! scripts/bench.sh's pmxcfs mode (`BENCH_PMXCFS=1`): the plugin and CLI calls of the tmpfs run, with
//! the store at /etc/pve/priv/drbdpool on the real pmxcfs of the tier-4 cluster (tests/pvecluster:
//! corosync, pmxcfs, QDevice), so the FUSE cost of every open and read is in the figures. Not a test:
//! `#[ignore]`d, run by the script with `--ignored`; it appends JSON lines (label `pmxcfs-...`, volumes)
//! to `BENCH_RESULTS` for scripts/bench/report.pl, which puts them beside the tmpfs figures.
//! Knobs as bench.sh's: BENCH_PMXCFS_SIZES (default "1000 10000"), BENCH_COUNT, BENCH_WARMUP.

#[path = "pvecluster/mod.rs"]
mod pvecluster;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pvecluster::{host_name, ip, Cluster, Opts, STORE};
use serde_json::Value;

#[test]
fn child() {
    pvecluster::child_main();
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| d.to_string())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
#[ignore = "a benchmark: scripts/bench.sh runs it with BENCH_PMXCFS=1"]
fn pmxcfs_bench() {
    if std::env::var_os("DRBDPOOL_TEST_CHILD").is_some() {
        return;
    }
    let results = PathBuf::from(std::env::var("BENCH_RESULTS").expect("BENCH_RESULTS: the JSON-lines file to append to"));
    let sizes: Vec<usize> = env_or("BENCH_PMXCFS_SIZES", "1000 10000").split_whitespace().map(|s| s.parse().expect("a size")).collect();
    let (count, warmup) = (env_or("BENCH_COUNT", "200"), env_or("BENCH_WARMUP", "20"));
    let c = Cluster::start(Opts::default()).expect("the pmxcfs bench needs root (namespaces, FUSE)");
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_drbdpool-bench"));
    let helper = pvecluster::bin();
    // Inside pve1 (its /var/lib is its own overlay); `host` is the same directory seen from here.
    let work = PathBuf::from("/var/lib/drbdpool-bench");
    let host = |p: &Path| c.path(1, p.to_str().unwrap());
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&results).unwrap();
    let mut emit = |line: &str, n: usize| {
        let mut j: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let label = format!("pmxcfs-{}", j["label"].as_str().unwrap());
        j["label"] = label.into();
        j["volumes"] = n.into();
        writeln!(out, "{j}").unwrap();
    };

    alloc_writes(&c, &mut emit);

    for n in sizes {
        // Populate inside pve1, then copy the store into its /etc/pve, as the agents and helpers would
        // have written it there.
        let d = work.join(format!("n{n}"));
        let o = c.run(&mut c.command(1, &[bench.to_str().unwrap(), "populate", "--dir", d.to_str().unwrap(), "--volumes", &n.to_string(), "--sim"]));
        assert!(o.ok(), "populate: {o}");
        let t = Instant::now();
        let o = c.sh_retry(1, &format!("rm -rf {STORE} && mkdir -p {STORE} && cp -r {}/store/. {STORE}/", d.display()), std::time::Duration::from_secs(30));
        assert!(o.ok(), "copy the store into pmxcfs: {o}");
        eprintln!("pmxcfs bench: {n} volumes copied into pmxcfs in {:.1}s", t.elapsed().as_secs_f64());
        let manifest = d.join("manifest.json");
        let mut m: Value = serde_json::from_slice(&std::fs::read(host(&manifest)).unwrap()).unwrap();
        m["store"] = STORE.into();
        std::fs::write(host(&manifest), serde_json::to_vec(&m).unwrap()).unwrap();
        let vol = m["active"][0].as_str().unwrap().to_string();
        let req = |name: &str, args: &str| -> PathBuf {
            let p = d.join(format!("req-{name}.json"));
            let body = format!(
                r#"{{"args":{args},"node":"bench1","scfg":{{"content":"images,rootdir","drbdpool-backend":"file","drbdpool-dir":"{}"}},"storeid":"dp","version":1}}"#,
                d.join("images").display()
            );
            std::fs::write(host(&p), body).unwrap();
            p
        };
        let helper_env = |cmd: &mut std::process::Command| {
            cmd.env("DRBDPOOL_STORE", STORE)
                .env("DRBDPOOL_NODE", "bench1")
                .env("DRBDPOOL_DRBD", "sim")
                .env("DRBDPOOL_SIM_DIR", d.join("sim"))
                .env("DRBDPOOL_RUN_DIR", d.join("run"))
                .env("DRBDPOOL_BIN", &helper);
        };
        let time = |label: &str, stdin: Option<&Path>, argv: &[&str]| -> String {
            let mut a = vec![bench.to_str().unwrap(), "time", "--count", &count, "--warmup", &warmup, "--check", "--label", label];
            let s;
            if let Some(p) = stdin {
                s = p.display().to_string();
                a.extend(["--stdin", &s]);
            }
            a.push("--");
            a.extend_from_slice(argv);
            let mut cmd = c.command(1, &a);
            helper_env(&mut cmd);
            let o = c.run(&mut cmd);
            assert!(o.ok(), "{label}: {o}");
            o.stdout.clone()
        };
        let h = helper.to_str().unwrap();
        for (m, args) in [("status", "{}".to_string()), ("path", format!(r#"{{"volname":"{vol}"}}"#)), ("list", "{}".into()), ("activate", format!(r#"{{"volname":"{vol}"}}"#))] {
            let r = req(m, &args);
            emit(&time(&format!("bare-{m}"), Some(&r), &[h, "plugin", m]), n);
        }
        // The CLI reads every volume document (seconds a call at 10,000 on pmxcfs): its target is at 1,000.
        if n <= 1000 {
            emit(&time("cli-status", None, &[h, "status"]), n);
            emit(&time("cli-volume-list", None, &[h, "volume", "list"]), n);
        }
        // The populated heartbeat is minutes old by now: `status` would call the node inactive.
        let head = c.path(1, &format!("{STORE}/state/bench1.json"));
        let mut h: Value = serde_json::from_slice(&std::fs::read(&head).unwrap()).unwrap();
        h["updated"] = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().into();
        std::fs::write(&head, serde_json::to_vec(&h).unwrap()).unwrap();
        // The PVE side: the shim in one long-lived Perl process (scripts/bench/driver.pl), inside the node.
        let floor = work.join("true-static");
        if !host(&floor).exists() {
            std::fs::write(host(&work.join("true.c")), "int main(void) { return 0; }\n").unwrap();
            let o = c.sh(1, &format!("gcc -static -O2 -o {} {}", floor.display(), work.join("true.c").display()));
            assert!(o.ok(), "gcc -static: {o}");
        }
        let (shim, lib, driver) = (repo().join("perl-shim"), repo().join("perl-shim/t/lib"), repo().join("scripts/bench/driver.pl"));
        let argv = [
            "perl", "-I", shim.to_str().unwrap(), "-I", lib.to_str().unwrap(), driver.to_str().unwrap(),
            "--manifest", manifest.to_str().unwrap(), "--floor", floor.to_str().unwrap(), "--count", &count, "--warmup", &warmup,
        ];
        let mut cmd = c.command(1, &argv);
        helper_env(&mut cmd);
        let o = c.run(&mut cmd);
        assert!(o.ok(), "driver.pl on pmxcfs: {o}");
        for line in o.stdout.lines().filter(|l| l.starts_with('{')) {
            emit(line, n);
        }
        std::fs::remove_dir_all(host(&d)).unwrap();
    }
}

/// Alloc's store writes (issue 13: "counted and as few as the invariants allow"): both nodes registered
/// and their agents running, one warm-up alloc, then one alloc on pve1 under strace; every call of the
/// helper that changes something under /etc/pve is counted by kind (pmxcfs sends each to every node).
/// Emits `pmxcfs-alloc-writes` (volumes 0) with the counts and the traced alloc's wall time.
fn alloc_writes(c: &Cluster, emit: &mut impl FnMut(&str, usize)) {
    let mut agents = Vec::new();
    for n in 1..=2 {
        let o = c.drbdpool(n, &["node", "add", host_name(n), "--address", &ip(n)], &[]);
        assert!(o.ok(), "node add: {o}");
        agents.push(c.spawn_agent(n));
    }
    let (o, v) = c.plugin(1, "alloc", "dp", serde_json::json!({"vmid": 100, "size_kib": 4096}));
    assert!(v["ok"] == true, "warm-up alloc: {o}");
    let req = serde_json::json!({"version": 1, "storeid": "dp", "node": host_name(1), "scfg": c.scfg(), "args": {"vmid": 101, "size_kib": 4096}}).to_string();
    let trace = "/var/lib/drbdpool-bench-alloc.strace";
    let b = pvecluster::bin();
    let argv = [
        "strace", "-f", "-y", "-qq", "-o", trace, "-e",
        "trace=openat,open,creat,write,pwrite64,rename,renameat,renameat2,mkdir,mkdirat,rmdir,unlink,unlinkat,utimensat,fsync,fdatasync",
        b.to_str().unwrap(), "plugin", "alloc",
    ];
    let mut cmd = c.command(1, &argv);
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let mut ch = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    ch.stdin.take().unwrap().write_all(req.as_bytes()).unwrap();
    let o = ch.wait_with_output().unwrap();
    let took = t.elapsed();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"ok\":true"), "traced alloc: {}", String::from_utf8_lossy(&o.stdout));
    let text = std::fs::read_to_string(c.path(1, trace)).unwrap();
    let mut kinds: std::collections::BTreeMap<&str, u64> = Default::default();
    for l in text.lines() {
        // `[<pid> ]call(args) = result` (strace -f prefixes the pid once there is more than one
        // process); failed calls change nothing.
        let l = l.trim_start_matches(|ch: char| ch.is_ascii_digit()).trim_start();
        let Some((call, rest)) = l.split_once('(') else { continue };
        if rest.contains(") = -1") {
            continue;
        }
        let pve = rest.contains("\"/etc/pve/") || rest.contains("</etc/pve/");
        let kind = match call {
            "openat" | "open" | "creat" if rest.contains("O_CREAT") => "create",
            "write" | "pwrite64" => "write",
            "rename" | "renameat" | "renameat2" => "rename",
            "mkdir" | "mkdirat" => "mkdir",
            "rmdir" => "rmdir",
            "unlink" | "unlinkat" => "unlink",
            "utimensat" => "utime",
            "fsync" | "fdatasync" => "fsync",
            _ => continue,
        };
        if pve {
            *kinds.entry(kind).or_default() += 1;
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!("  {kind}: {}", l.chars().take(200).collect::<String>());
            }
        }
    }
    let changes: u64 = kinds.iter().filter(|(k, _)| **k != "fsync").map(|(_, v)| v).sum();
    eprintln!("pmxcfs bench: one alloc changed /etc/pve {changes} times ({kinds:?}) in {:.0} ms", took.as_secs_f64() * 1000.0);
    // The populated stores that follow have no agents of their own (bench1's state is populated).
    for pid in agents {
        c.kill_pid(pid);
    }
    let line = serde_json::json!({"label": "alloc-writes", "changes": changes, "kinds": kinds, "median_ms": took.as_secs_f64() * 1000.0, "n": 1});
    emit(&line.to_string(), 0);
}
