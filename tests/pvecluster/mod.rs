//! Tier 4 on the real cluster stack: two Proxmox-like nodes (pve1, pve2) and a QDevice host (qnetd),
//! each in its own network + mount + UTS namespace, on one machine.
//!
//! - Network: a bridge in a namespace of its own (the "switch"); one veth pair per host, its switch end
//!   on the bridge, its other end `eth0` in the host's namespace with 10.213.0.<n>/24. These addresses
//!   exist only inside these namespaces; nothing is configured in the machine's own network namespace.
//! - Mounts (private to each host): overlays on /etc and /var/lib (own hosts, hostname, corosync
//!   config + authkey, QDevice certificates, /var/lib/pve-cluster/config.db, /var/lib/corosync), fresh
//!   tmpfs on /run and /dev/shm (pid files, libqb shared memory), the host's own log directory on
//!   /var/log, and on the nodes a file-backend image directory on /var/lib/drbdpool-images.
//! - Per node: corosync (knet, secauth, config as `pvecm create` + `pvecm qdevice setup` write it),
//!   corosync-qdevice (ffsplit, TLS) and pmxcfs (built by tests/pvecluster/build-pmxcfs.sh from
//!   ../shared/third_party) mounted at the node's own /etc/pve; corosync-qnetd on the third host.
//!   The drbdpool store is at its production path /etc/pve/priv/drbdpool (locks in /etc/pve/priv/lock).
//!
//! Everything started is tracked by pid and stopped (SIGTERM, then SIGKILL) on drop, also when the
//! test panics; every child also gets PR_SET_PDEATHSIG(SIGKILL), so a killed test process leaves
//! nothing running. The namespaces go away with their last process; loop devices on the nodes'
//! images are detached. Clusters in one test binary run one at a time (a process-wide mutex).
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const CLUSTER: &str = "drbdpool";
pub const NODES: [&str; 2] = ["pve1", "pve2"];
pub const QNETD: usize = 3;
pub const IMAGES: &str = "/var/lib/drbdpool-images";
pub const STORE: &str = "/etc/pve/priv/drbdpool";

pub fn host_name(n: usize) -> &'static str {
    match n {
        1 => "pve1",
        2 => "pve2",
        3 => "qnetd",
        _ => panic!("no host {n}"),
    }
}
pub fn ip(n: usize) -> String {
    format!("10.213.0.{n}")
}

/// The real drbdpool binary: `DRBDPOOL_BIN`, else the one cargo built for this test.
pub fn bin() -> PathBuf {
    match std::env::var_os("DRBDPOOL_BIN") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_drbdpool")),
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Build (or find cached) pmxcfs. None: the tier is skipped (message printed).
fn pmxcfs_binary() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo().join("tests/pvecluster/build-pmxcfs.sh");
        let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("run build-pmxcfs.sh");
        match out.status.code() {
            Some(0) => Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim())),
            Some(77) => None,
            c => panic!("{} failed (exit {c:?})", script.display()),
        }
    })
    .clone()
}

/// Output of a command run on a host.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    fn from(o: Output, took: Duration) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            took,
        }
    }
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "exit {} after {:.3}s; stdout: {}; stderr: {}", self.code, self.took.as_secs_f64(), self.stdout.trim(), self.stderr.trim())
    }
}

#[derive(Clone, Debug)]
pub struct Opts {
    /// corosync-qdevice + corosync-qnetd for the third vote (else a bare 2-node cluster).
    pub qdevice: bool,
    /// Make /etc/pve/priv/lock, as a PVE node that ever took a cluster lock has it. Off: a fresh cluster.
    pub priv_lock: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts { qdevice: true, priv_lock: true }
    }
}

struct Proc {
    host: usize,
    what: String,
    child: Child,
}

pub struct Host {
    pub name: &'static str,
    /// The process holding this host's namespaces (`unshare -n -m -u sleep`).
    holder: Child,
    /// This host's directory on the machine (overlay upper dirs, logs, images).
    pub dir: PathBuf,
}

pub struct Cluster {
    pub opts: Opts,
    pub work: PathBuf,
    pub pmxcfs: PathBuf,
    switch: Child,
    hosts: Vec<Host>,
    procs: Mutex<Vec<Proc>>,
    /// Environment of every drbdpool command (simulated DRBD, shortened timeouts).
    pub env: Vec<(String, String)>,
    /// How long `start` took, by phase.
    pub setup: Vec<(&'static str, Duration)>,
    _serial: MutexGuard<'static, ()>,
}

fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kill the child with SIGKILL when the thread that spawned it ends (the test process dying included).
fn pdeathsig(c: &mut Command) -> &mut Command {
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn run_ok(c: &mut Command, what: &str) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(o.status.success(), "{what}: exit {:?}: {}{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes; returns the time it took.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if cond() {
            return t.elapsed();
        }
        assert!(t.elapsed() < timeout, "timed out after {} waiting for: {what}", secs(timeout));
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// Start a cluster, or None when the tier is skipped (not root, no pmxcfs source, no namespaces):
    /// the reason is printed. With CI=true a missing prerequisite fails instead.
    pub fn start(opts: Opts) -> Option<Cluster> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        if !nix::unistd::geteuid().is_root() {
            assert!(!ci, "tier 4 on pmxcfs needs root (CI=true)");
            eprintln!("SKIP: the pmxcfs cluster tier needs root (namespaces, FUSE)");
            return None;
        }
        let serial = serial();
        let t0 = Instant::now();
        let pmxcfs = pmxcfs_binary()?;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let work = repo().join("tests/pvecluster/work").join(format!(
            "run-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("sim")).unwrap();
        let holder = |args: &[&str]| {
            let mut c = Command::new("unshare");
            c.args(args).args(["sleep", "infinity"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
            pdeathsig(&mut c).spawn().expect("unshare")
        };
        let switch = holder(&["--net"]);
        let mut c = Cluster {
            opts: opts.clone(),
            work: work.clone(),
            pmxcfs,
            switch,
            hosts: vec![],
            procs: Mutex::new(vec![]),
            env: vec![
                ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
                ("DRBDPOOL_DRBD".into(), "sim".into()),
                ("DRBDPOOL_SIM_DIR".into(), work.join("sim").display().to_string()),
                ("DRBDPOOL_HA".into(), "off".into()),
                ("DRBDPOOL_PEER_TIMEOUT_SECS".into(), "30".into()),
                ("DRBDPOOL_CREATE_EXPIRY_SECS".into(), "60".into()),
                ("RUST_LOG".into(), "warn".into()),
            ],
            setup: vec![("pmxcfs build/cache", t0.elapsed())],
            _serial: serial,
        };
        // Namespaces must be in place before anything is configured in them.
        for n in 1..=3 {
            let dir = work.join(host_name(n));
            std::fs::create_dir_all(dir.join("log")).unwrap();
            std::fs::create_dir_all(dir.join("images")).unwrap();
            let h = holder(&["--net", "--mount", "--uts", "--propagation", "private"]);
            c.hosts.push(Host { name: host_name(n), holder: h, dir });
        }
        std::thread::sleep(Duration::from_millis(50)); // unshare(2) done before exec of sleep
        let sw = c.switch.id().to_string();
        let in_switch = |args: &[&str]| run_ok(Command::new("nsenter").args(["-t", &sw, "-n", "ip"]).args(args), &format!("ip {args:?} in the switch"));
        in_switch(&["link", "add", "br0", "type", "bridge"]);
        in_switch(&["link", "set", "br0", "up"]);
        for n in 1..=3 {
            let pid = c.hosts[n - 1].holder.id().to_string();
            let sw_end = format!("sw{n}");
            in_switch(&["link", "add", &sw_end, "type", "veth", "peer", "name", "eth0", "netns", &pid]);
            in_switch(&["link", "set", &sw_end, "master", "br0", "up"]);
            let d = c.hosts[n - 1].dir.display().to_string();
            let hosts: String = (1..=3).map(|i| format!("{} {}\n", ip(i), host_name(i))).collect();
            // The host's private mounts and network.
            let script = format!(
                r#"set -e
ip link set lo up; ip addr add {ip}/24 dev eth0; ip link set eth0 up
mkdir -p {d}/etc.up {d}/etc.wk {d}/lib.up {d}/lib.wk
mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc.up,workdir={d}/etc.wk /etc
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={d}/lib.up,workdir={d}/lib.wk /var/lib
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount --bind {d}/log /var/log
hostname {name}; echo {name} > /etc/hostname
printf '127.0.0.1 localhost\n{hosts}' > /etc/hosts
rm -rf /etc/pve /var/lib/pve-cluster /var/lib/corosync /etc/corosync/qnetd /etc/corosync/qdevice /etc/corosync/corosync.conf
mkdir -p /etc/pve /var/lib/pve-cluster /var/lib/corosync /run/pve-cluster /run/corosync-qdevice /run/corosync-qnetd /run/lock /var/log/corosync {images}
mount --bind {d}/images {images}
"#,
                ip = ip(n),
                name = host_name(n),
                images = IMAGES,
            );
            let o = c.sh(n, &script);
            assert!(o.ok(), "setting up host {}: {o}", host_name(n));
        }
        c.setup.push(("namespaces, network, mounts", t0.elapsed()));
        c.configure();
        c.setup.push(("corosync config, authkey, QDevice certificates", t0.elapsed()));
        if opts.qdevice {
            c.spawn(QNETD, "corosync-qnetd", &["corosync-qnetd", "-f"]);
        }
        for n in 1..=2 {
            c.spawn(n, "corosync", &["corosync", "-f"]);
        }
        if opts.qdevice {
            // corosync-qdevice gives up (CS_ERR_LIBRARY) if corosync's cmap does not answer yet.
            for n in 1..=2 {
                let t = Instant::now();
                while !c.quorumtool(n).contains("Quorum provider") {
                    assert!(t.elapsed() < Duration::from_secs(30), "corosync on {} does not answer:\n{}", host_name(n), c.logs());
                    std::thread::sleep(Duration::from_millis(50));
                }
                c.spawn(n, "corosync-qdevice", &["corosync-qdevice", "-f"]);
            }
        }
        for n in 1..=2 {
            let t = Instant::now();
            // With the QDevice: its vote counted ("Flags: Quorate Qdevice") and 3 votes in total.
            while !(c.quorate(n) && (!opts.qdevice || c.quorumtool(n).lines().any(|l| l.starts_with("Total votes:") && l.trim_end().ends_with('3')))) {
                assert!(t.elapsed() < Duration::from_secs(60), "corosync on {} not quorate (qdevice {}):\n{}\n{}", host_name(n), opts.qdevice, c.quorumtool(n), c.logs());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        c.setup.push(("corosync quorate on both nodes", t0.elapsed()));
        for n in 1..=2 {
            let p = c.pmxcfs.display().to_string();
            c.spawn(n, "pmxcfs", &[&p, "-f"]);
        }
        for n in 1..=2 {
            let took = Instant::now();
            while !c.members(n).is_some_and(|m| m["cluster"]["quorate"] == 1 && NODES.iter().all(|x| m["nodelist"][x]["online"] == 1)) {
                assert!(took.elapsed() < Duration::from_secs(60), "pmxcfs on {} not quorate with both nodes online:\n{}", host_name(n), c.logs());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // What PVE's own setup makes; priv/lock only appears with PVE's first cluster lock.
        let mk = if opts.priv_lock { "mkdir -p /etc/pve/priv/lock" } else { "mkdir -p /etc/pve/priv" };
        let o = c.sh_retry(1, mk, Duration::from_secs(20));
        assert!(o.ok(), "{mk}: {o}");
        c.setup.push(("pmxcfs mounted and quorate on both nodes", t0.elapsed()));
        eprintln!(
            "pvecluster: {} up in {} ({})",
            work.display(),
            secs(t0.elapsed()),
            c.setup.iter().map(|(w, d)| format!("{w} at {}", secs(*d))).collect::<Vec<_>>().join(", ")
        );
        Some(c)
    }

    fn holder_pid(&self, n: usize) -> String {
        self.hosts[n - 1].holder.id().to_string()
    }

    /// The host's view of `path` (through its mount namespace), readable from the test process.
    pub fn path(&self, n: usize, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder_pid(n)))
    }

    /// A command run inside host `n`'s namespaces, with a clean environment (PATH only).
    pub fn command(&self, n: usize, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder_pid(n), "-n", "-m", "-u", "--"]).args(argv).env_clear().env("PATH", &self.env[0].1);
        pdeathsig(&mut c);
        c
    }

    pub fn run(&self, c: &mut Command) -> Out {
        let t = Instant::now();
        let o = c.stdin(Stdio::null()).output().expect("spawn nsenter");
        Out::from(o, t.elapsed())
    }

    /// `sh -c script` on host `n`.
    pub fn sh(&self, n: usize, script: &str) -> Out {
        self.run(&mut self.command(n, &["sh", "-c", script]))
    }

    /// `sh` until it succeeds (writes right after start-up can meet EBUSY while pmxcfs syncs).
    pub fn sh_retry(&self, n: usize, script: &str, timeout: Duration) -> Out {
        let t = Instant::now();
        loop {
            let o = self.sh(n, script);
            if o.ok() || t.elapsed() > timeout {
                return o;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `drbdpool <args>` on node `n` as a Command (store at its default path, node name = hostname).
    pub fn drbdpool_cmd(&self, n: usize, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let b = bin();
        let mut argv = vec![b.to_str().unwrap()];
        argv.extend_from_slice(args);
        let mut c = self.command(n, &argv);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    }

    pub fn drbdpool(&self, n: usize, args: &[&str], extra: &[(&str, &str)]) -> Out {
        self.run(&mut self.drbdpool_cmd(n, args, extra))
    }

    /// `drbdpool <args>` with `input` on stdin (plugin calls).
    pub fn drbdpool_stdin(&self, n: usize, args: &[&str], input: &str, extra: &[(&str, &str)]) -> Out {
        let t = Instant::now();
        let mut ch = self.drbdpool_cmd(n, args, extra).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        ch.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        Out::from(ch.wait_with_output().unwrap(), t.elapsed())
    }

    /// Start a tracked long-running process on host `n`, logging to `<host dir>/log/<what>.out`.
    pub fn spawn(&self, n: usize, what: &str, argv: &[&str]) -> u32 {
        let mut c = self.command(n, argv);
        self.spawn_cmd(n, what, &mut c)
    }

    pub fn spawn_cmd(&self, n: usize, what: &str, c: &mut Command) -> u32 {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.hosts[n - 1].dir.join("log").join(format!("{what}.out"))).unwrap();
        let child = c.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let pid = child.id();
        self.procs.lock().unwrap().push(Proc { host: n, what: what.into(), child });
        pid
    }

    /// `drbdpool agent --interval 0.2` on node `n`.
    pub fn spawn_agent(&self, n: usize) -> u32 {
        let mut c = self.drbdpool_cmd(n, &["agent", "--interval", "0.2"], &[]);
        self.spawn_cmd(n, "agent", &mut c)
    }

    /// Stop the tracked process `pid` (SIGKILL) and reap it.
    pub fn kill_pid(&self, pid: u32) {
        let mut ps = self.procs.lock().unwrap();
        if let Some(i) = ps.iter().position(|p| p.child.id() == pid) {
            let mut p = ps.remove(i);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// A hard kill of node `n`: SIGKILL its corosync, qdevice, pmxcfs and agents at once.
    pub fn kill_node(&self, n: usize) {
        let mut ps = self.procs.lock().unwrap();
        for p in ps.iter_mut().filter(|p| p.host == n) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.child.id() as i32), nix::sys::signal::Signal::SIGKILL);
        }
        for p in ps.iter_mut().filter(|p| p.host == n) {
            let _ = p.child.wait();
        }
        ps.retain(|p| p.host != n);
    }

    fn link(&self, n: usize, state: &str) {
        run_ok(
            Command::new("nsenter").args(["-t", &self.switch.id().to_string(), "-n", "ip", "link", "set", &format!("sw{n}"), state]),
            &format!("link sw{n} {state}"),
        );
    }
    /// Cut host `n` off the network: its veth's switch end goes down (the host loses carrier).
    pub fn cut(&self, n: usize) {
        self.link(n, "down");
    }
    pub fn heal(&self, n: usize) {
        self.link(n, "up");
    }

    /// `corosync-quorumtool -s` on node `n` (its text; empty when corosync does not answer).
    pub fn quorumtool(&self, n: usize) -> String {
        self.run(&mut self.command(n, &["corosync-quorumtool", "-s"])).stdout
    }

    /// (quorate, number of member nodes) as corosync on node `n` reports them.
    pub fn quorum(&self, n: usize) -> (bool, usize) {
        let q = self.quorumtool(n);
        let field = |k: &str| q.lines().find(|l| l.starts_with(k)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string());
        (field("Quorate").as_deref() == Some("Yes"), field("Nodes").and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    pub fn quorate(&self, n: usize) -> bool {
        self.quorum(n).0
    }

    pub fn wait_quorate(&self, n: usize, timeout: Duration) -> Duration {
        let t = Instant::now();
        while !self.quorate(n) {
            assert!(t.elapsed() < timeout, "corosync on {} not quorate after {}:\n{}\n{}", host_name(n), secs(timeout), self.quorumtool(n), self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        t.elapsed()
    }

    /// pmxcfs's `/etc/pve/.members` on node `n`.
    pub fn members(&self, n: usize) -> Option<serde_json::Value> {
        let s = std::fs::read_to_string(self.path(n, "/etc/pve/.members")).ok()?;
        serde_json::from_str(&s).ok()
    }

    /// Whether node `n`'s pmxcfs lists `node` online.
    pub fn online(&self, n: usize, node: &str) -> bool {
        self.members(n).is_some_and(|m| m["nodelist"][node]["online"] == 1)
    }

    /// The drbdpool store as seen on node `n` (a plain Store over the /proc path: for seeding documents
    /// and looking at them from the test; drbdpool's own commands run inside the node).
    pub fn store(&self, n: usize) -> drbdpool::store::Store {
        drbdpool::store::Store::open(self.path(n, STORE)).expect("open the store through /proc/<pid>/root")
    }

    /// The storage configuration the plugin calls use: file backend in each node's own image directory.
    pub fn scfg(&self) -> serde_json::Value {
        serde_json::json!({"type": "drbdpool", "drbdpool-backend": "file", "drbdpool-dir": IMAGES, "drbdpool-replicas": "2", "content": "images"})
    }

    /// A plugin call on node `n` (JSON request on stdin): (output, parsed reply).
    pub fn plugin(&self, n: usize, method: &str, storeid: &str, args: serde_json::Value) -> (Out, serde_json::Value) {
        let req = serde_json::json!({"version": 1, "storeid": storeid, "node": host_name(n), "scfg": self.scfg(), "args": args}).to_string();
        let o = self.drbdpool_stdin(n, &["plugin", method], &req, &[]);
        let v = serde_json::from_str(o.stdout.trim()).unwrap_or(serde_json::Value::Null);
        (o, v)
    }

    /// Tails of every log of every host (for failure messages).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            for e in std::fs::read_dir(h.dir.join("log")).into_iter().flatten().flatten() {
                let p = e.path();
                let files = if p.is_dir() { std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()).collect() } else { vec![p] };
                for f in files {
                    let t = std::fs::read_to_string(&f).unwrap_or_default();
                    let tail: Vec<&str> = t.lines().rev().take(15).collect();
                    s += &format!("--- {}\n{}\n", f.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
        }
        s
    }

    /// corosync.conf as `pvecm create` writes it (PVE::Corosync), plus the quorum device section
    /// `pvecm qdevice setup` adds. Logging goes to a file: these namespaces have no syslog.
    pub fn corosync_conf(&self) -> String {
        let nodes: String = (1..=2)
            .map(|n| format!("  node {{\n    name: {}\n    nodeid: {n}\n    quorum_votes: 1\n    ring0_addr: {}\n  }}\n", host_name(n), ip(n)))
            .collect();
        let device = if self.opts.qdevice {
            format!(
                "  device {{\n    model: net\n    net {{\n      algorithm: ffsplit\n      host: {}\n      tls: on\n    }}\n    votes: 1\n  }}\n",
                ip(QNETD)
            )
        } else {
            String::new()
        };
        format!(
            "logging {{\n  debug: off\n  to_syslog: no\n  to_logfile: yes\n  logfile: /var/log/corosync/corosync.log\n  timestamp: on\n}}\n\n\
             nodelist {{\n{nodes}}}\n\n\
             quorum {{\n{device}  provider: corosync_votequorum\n}}\n\n\
             totem {{\n  cluster_name: {CLUSTER}\n  config_version: {}\n  interface {{\n    linknumber: 0\n  }}\n  ip_version: ipv4-6\n  link_mode: passive\n  secauth: on\n  version: 2\n}}\n",
            if self.opts.qdevice { 2 } else { 1 }
        )
    }

    fn configure(&self) {
        let key: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect(); // corosync-keygen writes 256 random bytes
        let conf = self.corosync_conf();
        for n in 1..=2 {
            std::fs::write(self.path(n, "/etc/corosync/corosync.conf"), &conf).unwrap();
            let k = self.path(n, "/etc/corosync/authkey");
            std::fs::write(&k, &key).unwrap();
            std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        }
        if !self.opts.qdevice {
            return;
        }
        // What `pvecm qdevice setup` does: a CA and server certificate on the QNetd host, a cluster
        // certificate signed by it, imported on every node.
        let w = self.work.display().to_string();
        let step = |n: usize, script: &str| {
            let o = self.sh(n, &format!("set -e; cd {w}; {script}"));
            assert!(o.ok(), "QDevice certificates on {}: {script}: {o}", host_name(n));
        };
        step(QNETD, "corosync-qnetd-certutil -i >/dev/null && cp /etc/corosync/qnetd/nssdb/qnetd-cacert.crt .");
        step(1, "corosync-qdevice-net-certutil -i -c qnetd-cacert.crt >/dev/null && corosync-qdevice-net-certutil -r -n drbdpool >/dev/null && cp /etc/corosync/qdevice/net/nssdb/qdevice-net-node.crq .");
        step(QNETD, "corosync-qnetd-certutil -s -c qdevice-net-node.crq -n drbdpool >/dev/null && cp /etc/corosync/qnetd/nssdb/cluster-drbdpool.crt .");
        step(1, "corosync-qdevice-net-certutil -M -c cluster-drbdpool.crt >/dev/null && cp /etc/corosync/qdevice/net/nssdb/qdevice-net-node.p12 .");
        step(2, "corosync-qdevice-net-certutil -i -c qnetd-cacert.crt >/dev/null && corosync-qdevice-net-certutil -m -c qdevice-net-node.p12 >/dev/null");
    }

    /// Loop devices attached to images of this cluster's nodes.
    fn loops(&self) -> Vec<String> {
        let mut v = vec![];
        for h in &self.hosts {
            for f in std::fs::read_dir(h.dir.join("images")).into_iter().flatten().flatten() {
                let o = Command::new("losetup").arg("-j").arg(f.path()).output();
                if let Ok(o) = o {
                    v.extend(String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.split(':').next().map(String::from)));
                }
            }
        }
        v
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("pvecluster: logs of {}\n{}", self.work.display(), self.logs());
        }
        let mut ps = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        // Agents and helpers first, then pmxcfs, qdevice, corosync, qnetd (reverse start order).
        ps.reverse();
        for p in &ps {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let t = Instant::now();
        for p in &mut ps {
            while p.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for l in self.loops() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        // The namespaces (and every mount in them) end with their holders.
        for h in &mut self.hosts {
            let _ = h.holder.kill();
            let _ = h.holder.wait();
        }
        let _ = self.switch.kill();
        let _ = self.switch.wait();
        if panicking || std::env::var_os("DRBDPOOL_KEEP_CLUSTER").is_some() {
            eprintln!("pvecluster: kept {}", self.work.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

// ---- child processes: this test binary re-run inside a node, calling drbdpool's library ----

/// Run the test binary's `child` test inside node `n` as `kind` (see `child_main`), with piped stdio.
pub fn spawn_child(c: &Cluster, n: usize, kind: &str, env: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = c.command(n, &[exe.to_str().unwrap(), "--exact", "child", "--nocapture", "--test-threads=1"]);
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    cmd.env("DRBDPOOL_TEST_CHILD", kind);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap()
}

/// A process on a node holding drbdpool locks, taken with drbdpool's own lock code (`Store::lock`).
pub struct Holder {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Holder {
    /// Take `locks` on node `n` (blocks until held or panics with the child's report).
    pub fn take(c: &Cluster, n: usize, locks: &[&str], env: &[(&str, &str)]) -> Holder {
        let joined = locks.join(",");
        let mut e = vec![("HOLD_LOCKS", joined.as_str())];
        e.extend_from_slice(env);
        let mut child = spawn_child(c, n, "hold", &e);
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut h = Holder { child, out };
        let l = h.line();
        assert!(l.starts_with("held"), "lock holder on {}: {l}", host_name(n));
        h
    }
    /// The child's next line of its own (libtest's "running 1 test" lines skipped); "" at EOF.
    fn line(&mut self) -> String {
        loop {
            let mut s = String::new();
            if std::io::BufRead::read_line(&mut self.out, &mut s).unwrap() == 0 {
                return String::new();
            }
            // libtest prints "test child ... " without a newline before the child's first line.
            let s = s.trim().trim_start_matches("test child ... ");
            if s.starts_with("held") || s.starts_with("released") || s.starts_with("error") {
                return s.to_string();
            }
        }
    }
    /// Drop the guards (drbdpool's unlock) and wait for the process to end.
    pub fn release(mut self) {
        let _ = self.child.stdin.as_mut().unwrap().write_all(b"release\n");
        let l = self.line();
        assert_eq!(l, "released", "lock holder: {l}");
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Child mode (DRBDPOOL_TEST_CHILD): a no-op in a normal test run.
/// - `hold`: take the locks in HOLD_LOCKS (comma-separated) with `Store::lock`, print `held`, wait for a
///   line on stdin, drop the guards, print `released`.
/// - `rewrite`: rewrite volume REWRITE_VOL of storage REWRITE_SID and this node's NodeDoc REWRITE_COUNT
///   times each with `put_volume` / `put_node`, while a thread reads both documents on this node (as
///   this node's own agent and CLI do); prints `done <seconds>`.
/// - `write-loop`: `put_node` of this node's NodeDoc until the file WRITE_STOP exists; one JSON line per
///   write on stdout: {start_ms, ms, ok, kind, exit, message}.
pub fn child_main() {
    let Ok(kind) = std::env::var("DRBDPOOL_TEST_CHILD") else { return };
    use drbdpool::store::docs::NodeDoc;
    let store = drbdpool::store::Store::open(STORE).expect("open the store");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let mut stdout = std::io::stdout();
    match kind.as_str() {
        "hold" => {
            let names = std::env::var("HOLD_LOCKS").unwrap();
            let mut guards = vec![];
            for n in names.split(',') {
                match store.lock_timeout(n, Duration::from_secs(20)) {
                    Ok(g) => guards.push(g),
                    Err(e) => {
                        println!("error taking {n}: {e}");
                        std::process::exit(1);
                    }
                }
            }
            println!("held");
            stdout.flush().unwrap();
            let mut l = String::new();
            let _ = std::io::stdin().read_line(&mut l);
            drop(guards);
            println!("released");
        }
        "rewrite" => {
            let sid = std::env::var("REWRITE_SID").unwrap();
            let vol = std::env::var("REWRITE_VOL").unwrap();
            let count: usize = std::env::var("REWRITE_COUNT").unwrap().parse().unwrap();
            let mut doc = store.volume(&sid, &vol).unwrap().expect("the volume to rewrite");
            let node = store.node(&host).unwrap().expect("this node's NodeDoc");
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let (store, stop, sid, vol, host) = (store.clone(), stop.clone(), sid.clone(), vol.clone(), host.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = store.volume(&sid, &vol);
                        let _ = store.node(&host);
                    }
                })
            };
            let t = Instant::now();
            for _ in 0..count {
                doc.generation += 1;
                store.put_volume(&doc).expect("put_volume");
                store.put_node(&node).expect("put_node");
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            reader.join().unwrap();
            println!("done {:.3}", t.elapsed().as_secs_f64());
        }
        "write-loop" => {
            let stop = PathBuf::from(std::env::var("WRITE_STOP").unwrap());
            let addr = std::env::var("WRITE_ADDR").unwrap();
            while !stop.exists() {
                let start = now_ms();
                let t = Instant::now();
                let r = store.put_node(&NodeDoc { format: 1, name: host.clone(), address: addr.clone() });
                let line = match r {
                    Ok(()) => serde_json::json!({"start_ms": start, "ms": t.elapsed().as_millis() as u64, "ok": true}),
                    Err(e) => serde_json::json!({"start_ms": start, "ms": t.elapsed().as_millis() as u64, "ok": false,
                        "kind": e.kind(), "exit": e.exit_code(), "message": e.to_string()}),
                };
                println!("{line}");
                stdout.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        k => panic!("unknown child kind {k}"),
    }
}

impl Cluster {
    /// Host `n`'s directory on this machine (log/, images/, overlay upper dirs).
    pub fn host_dir(&self, n: usize) -> PathBuf {
        self.hosts[n - 1].dir.clone()
    }
}
