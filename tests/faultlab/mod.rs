//! A world for fault tests with the real binary: one store directory, the
//! simulated DRBD, and per node a private mount namespace (`unshare -m`) that
//! binds the node's own image directory over the storage's one `drbdpool-dir`,
//! so every simulated node has its own file-backend images on real loop devices.
//! Every command (plugin call, `agent --once`, `check`) runs as its own process.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use drbdpool::store::docs::NodeDoc;
use drbdpool::store::Store;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_drbdpool");

/// Root, loop devices and `unshare` are needed; without them the tests say SKIP.
pub fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ok = root
        && Path::new("/dev/loop-control").exists()
        && Command::new("unshare").args(["-m", "true"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("SKIP: needs root, loop devices and `unshare -m`");
    }
    ok
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub struct World {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<String>,
    pub store: Store,
    /// Env of every command (timeouts shortened for tests).
    pub env: Vec<(String, String)>,
    /// Replicas per volume.
    pub replicas: usize,
    /// Storage id, unique per world: resource, image and loop-device names of
    /// parallel tests never collide (`check` recognizes images by `<storeid>.`).
    pub sid: String,
}

impl World {
    pub fn new(nodes: &[&str]) -> World {
        let tmp = tempfile::Builder::new().prefix("dpfault").tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        for (i, n) in nodes.iter().enumerate() {
            store.put_node(&NodeDoc { format: 1, name: n.to_string(), address: format!("10.98.0.{}", i + 1) }).unwrap();
            std::fs::create_dir_all(tmp.path().join("images").join(n)).unwrap();
        }
        std::fs::create_dir_all(tmp.path().join("images/shared")).unwrap();
        let b = tmp.path();
        let env = vec![
            ("DRBDPOOL_STORE".into(), b.join("store").display().to_string()),
            ("DRBDPOOL_DRBD".into(), "sim".into()),
            ("DRBDPOOL_SIM_DIR".into(), b.join("sim").display().to_string()),
            ("DRBDPOOL_RUN_DIR".into(), b.join("run").display().to_string()),
            ("DRBDPOOL_PEER_TIMEOUT_SECS".into(), "10".into()),
            ("DRBDPOOL_LOCK_LIFETIME_SECS".into(), "3".into()),
            // Above the peer timeout (an alloc's whole budget), as in production (300 s > 45 s):
            // with 4 s, agents rolled back allocs still waiting for a slow peer under load.
            ("DRBDPOOL_CREATE_EXPIRY_SECS".into(), "15".into()),
            ("RUST_LOG".into(), "warn".into()),
            // The failpoints of alloc and clone are in the call itself; tests of the creation
            // finished after the call (protocol::finish) remove this.
            ("DRBDPOOL_CREATE_INLINE".into(), "1".into()),
            ("DRBDPOOL_CREATE_LOG".into(), b.join("create.log").display().to_string()),
        ];
        let sid = format!("t{:08x}", rand::random::<u32>());
        World { tmp, nodes: nodes.iter().map(|s| s.to_string()).collect(), store, env, replicas: 2.min(nodes.len()), sid }
    }

    pub fn unset_env(&mut self, k: &str) {
        self.env.retain(|(a, _)| a != k);
    }

    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.retain(|(a, _)| a != k);
        self.env.push((k.into(), v.into()));
    }

    /// The DRBD resource (and image) name of volume `vol`.
    pub fn res(&self, vol: &str) -> String {
        format!("{}.{vol}", self.sid)
    }

    pub fn base(&self) -> &Path {
        self.tmp.path()
    }
    pub fn shared(&self) -> String {
        self.base().join("images/shared").display().to_string()
    }
    pub fn node_dir(&self, n: &str) -> PathBuf {
        self.base().join("images").join(n)
    }

    pub fn scfg(&self) -> Value {
        json!({"type": "drbdpool", "drbdpool-backend": "file", "drbdpool-dir": self.shared(), "drbdpool-replicas": self.replicas.to_string(), "content": "images"})
    }

    /// `drbdpool <args>` as node `node`, in its own mount namespace.
    pub fn cmd(&self, node: &str, args: &[&str], extra: &[(&str, &str)]) -> Command {
        self.cmd_with(node, "true", args, extra)
    }

    /// `cmd` with a shell snippet run in the node's mount namespace first (e.g. a read-only remount).
    pub fn cmd_with(&self, node: &str, pre: &str, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(r#"mount --bind "$1" "$2" && {pre} && shift 2 && exec "$@""#))
            .arg("sh")
            .arg(self.node_dir(node))
            .arg(self.shared())
            .arg(BIN)
            .args(args);
        c.env_remove("DRBDPOOL_FAILPOINTS");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.env("DRBDPOOL_NODE", node);
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, node: &str, args: &[&str], extra: &[(&str, &str)]) -> Out {
        self.cmd(node, args, extra).stdin(Stdio::null()).output().unwrap().into()
    }

    pub fn request(&self, node: &str, args: Value) -> String {
        json!({"version": 1, "storeid": self.sid, "node": node, "scfg": self.scfg(), "args": args}).to_string()
    }

    /// Start `drbdpool plugin <method>` as `node` (request written, stdin closed).
    pub fn spawn_plugin(&self, node: &str, method: &str, args: Value, extra: &[(&str, &str)]) -> Child {
        let mut ch = self
            .cmd(node, &["plugin", method], extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin.take().unwrap().write_all(self.request(node, args).as_bytes()).unwrap();
        ch
    }

    /// A plugin call that needs no other node's agent (path, activate, ...).
    pub fn plugin(&self, node: &str, method: &str, args: Value, extra: &[(&str, &str)]) -> (Out, Value) {
        let o: Out = self.spawn_plugin(node, method, args, extra).wait_with_output().unwrap().into();
        let v = serde_json::from_str(o.stdout.trim()).unwrap_or(Value::Null);
        (o, v)
    }

    /// A plugin call while every node's agent runs `--once` passes in a loop (bounded).
    pub fn plugin_pumped(&self, node: &str, method: &str, args: Value, extra: &[(&str, &str)]) -> (Out, Value) {
        let ch = self.spawn_plugin(node, method, args, extra);
        let o = self.pump(ch);
        let v = serde_json::from_str(o.stdout.trim()).unwrap_or(Value::Null);
        (o, v)
    }

    /// Run agent passes on every node until `ch` exits.
    pub fn pump(&self, ch: Child) -> Out {
        let all: Vec<&str> = self.nodes.iter().map(String::as_str).collect();
        self.pump_on(ch, &all)
    }

    /// Run agent passes on `nodes` only until `ch` exits. Whether a pass on the calling
    /// node runs between a crash and the test's look at the store is up to the scheduler
    /// with `pump`; leaving that node out makes "no agent pass since the crash" certain.
    pub fn pump_on(&self, mut ch: Child, nodes: &[&str]) -> Out {
        let t = Instant::now();
        loop {
            if ch.try_wait().unwrap().is_some() {
                return ch.wait_with_output().unwrap().into();
            }
            assert!(t.elapsed() < Duration::from_secs(90), "command did not finish within 90 s");
            for n in nodes {
                let o = self.agent_once(n, &[]);
                assert_eq!(o.code, 0, "agent --once on {n} failed: {}", o.stderr);
            }
        }
    }

    /// A running `drbdpool agent --interval 0.2` for `node`, logging to `<base>/agent-<node>.log`.
    pub fn spawn_agent(&self, node: &str) -> KillOnDrop {
        let log = std::fs::File::create(self.base().join(format!("agent-{node}.log"))).unwrap();
        let ch = self
            .cmd(node, &["agent", "--interval", "0.2"], &[])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        KillOnDrop(ch)
    }

    pub fn agent_once(&self, node: &str, extra: &[(&str, &str)]) -> Out {
        self.run(node, &["agent", "--once"], extra)
    }

    /// One agent pass on every node (each must succeed).
    pub fn round(&self) {
        for n in &self.nodes {
            let o = self.agent_once(n, &[]);
            assert_eq!(o.code, 0, "agent --once on {n} failed: {}", o.stderr);
        }
    }

    /// Agent rounds until `cond` holds (at most `max` rounds).
    pub fn rounds_until(&self, what: &str, max: usize, mut cond: impl FnMut() -> bool) -> usize {
        for i in 0..max {
            if cond() {
                return i;
            }
            self.round();
        }
        assert!(cond(), "not reached after {max} agent rounds: {what}\n{}", self.dump());
        max
    }

    /// `drbdpool check --json` as `node`: (exit code, findings).
    pub fn check(&self, node: &str) -> (i32, Vec<Value>) {
        let o = self.run(node, &["check", "--json"], &[]);
        let v: Value = serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("check --json output: {e}: {} {}", o.stdout, o.stderr));
        (o.code, v["findings"].as_array().cloned().unwrap_or_default())
    }

    /// Findings of `check` on every node.
    pub fn findings(&self) -> Vec<Value> {
        self.nodes.iter().flat_map(|n| self.check(n).1).collect()
    }

    /// `check` clean on every node, plus the loop-device bookkeeping seen from here.
    pub fn assert_clean(&self, when: &str) {
        self.assert_clean_but(when, &[]);
    }

    /// Like `assert_clean`, but findings of the kinds in `allowed` are accepted.
    pub fn assert_clean_but(&self, when: &str, allowed: &[&str]) {
        for n in &self.nodes {
            let (code, mut f) = self.check(n);
            let all = f.len();
            f.retain(|x| !allowed.iter().any(|k| x["kind"] == *k));
            assert!((code == 0) == (all == 0) && f.is_empty(), "{when}: check on {n} exit {code}: {}\n{}", serde_json::to_string_pretty(&f).unwrap(), self.dump());
        }
        self.assert_images_match_docs(when);
    }

    /// Every node holds exactly the images of the volumes that list it, each on exactly one loop device.
    pub fn assert_images_match_docs(&self, when: &str) {
        let docs = self.store.all_volumes().unwrap();
        for n in &self.nodes {
            let mut want: Vec<String> = docs.iter().filter(|v| v.replica(n).is_some()).map(|v| format!("{}.img", v.resource)).collect();
            want.sort();
            let have = self.images(n);
            assert_eq!(have, want, "{when}: images on {n}");
            for i in &have {
                let l = loops(&self.node_dir(n).join(i));
                assert_eq!(l.len(), 1, "{when}: {n}/{i} on loop devices {l:?}");
            }
        }
    }

    pub fn images(&self, n: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.node_dir(n))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".img") && !f.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Store and published state, for failure messages.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for v in self.store.all_volumes().unwrap_or_default() {
            s += &format!("doc {}:{} {:?} gen {} size {} minor {} port {} on {:?}\n", v.storeid, v.volname, v.state, v.generation, v.size_kib, v.minor, v.port, v.replicas.iter().map(|r| &r.node).collect::<Vec<_>>());
        }
        for st in self.store.node_states().unwrap_or_default() {
            for (r, o) in &st.volumes {
                s += &format!("state {} {r}: ready {} gen {} {} {} size {} err {:?}\n", st.node, o.ready, o.generation, o.role, o.disk, o.size_kib, o.error);
            }
        }
        for n in &self.nodes {
            s += &format!("images {n}: {:?}\n", self.images(n));
        }
        s
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Loop devices attached to `file` (matched by inode by losetup).
pub fn loops(file: &Path) -> Vec<String> {
    let out = Command::new("losetup").arg("-j").arg(file).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(':').next().map(String::from)).collect()
}

impl Drop for World {
    fn drop(&mut self) {
        for d in std::fs::read_dir(self.base().join("images")).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                for l in loops(&f.path()) {
                    let _ = Command::new("losetup").args(["-d", &l]).status();
                }
            }
        }
    }
}
