//! Several agents, each a separate process in its own network namespace (and a
//! private mount namespace that gives each node its own image directory behind
//! the storage's one path), sharing one store directory and the simulated DRBD.
//! They reconcile a volume's creation, growth and deletion (testing tier 4).
//!
//! The agents are this test binary re-run in child mode (`child_agent`) calling
//! `drbdpool::agent::run` exactly as `drbdpool agent` does.

#[path = "nodelab/mod.rs"]
mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{can_loop, Lab};
use drbdpool::agent::AgentOpts;
use drbdpool::drbd::drbd_backing_kib;
use drbdpool::store::docs::VolumeState;
use drbdpool::store::Store;

/// Child mode: run one agent until killed. A no-op in a normal test run.
#[test]
fn child_agent() {
    if std::env::var("DRBDPOOL_TEST_CHILD").ok().as_deref() != Some("1") {
        return;
    }
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info").try_init();
    let store = Store::open(std::env::var("DRBDPOOL_STORE").unwrap()).unwrap();
    let node = std::env::var("DRBDPOOL_NODE").unwrap();
    drbdpool::agent::run(AgentOpts { store, node, once: false, interval: Duration::from_millis(100), metrics_addr: None }).unwrap();
}

struct Agents {
    children: Vec<Child>,
    netns: Vec<String>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn netns_available(name: &str) -> bool {
    let ok = Command::new("ip").args(["netns", "add", name]).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("SKIP: cannot create network namespaces (`ip netns add` failed: not root or no iproute2)");
    }
    ok
}

fn start(lab: &Lab, nodes: &[&str]) -> Option<Agents> {
    let mut agents = Agents { children: vec![], netns: vec![] };
    let exe = std::env::current_exe().unwrap();
    for n in nodes {
        let ns = format!("dpt-{}-{n}", std::process::id());
        if !netns_available(&ns) {
            return None;
        }
        agents.netns.push(ns.clone());
        Command::new("ip").args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]).status().unwrap();
        let log = std::fs::File::create(lab.base().join(format!("agent-{n}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && exec "$3" --exact child_agent --nocapture --test-threads=1"#)
            .arg("sh")
            .arg(lab.node_dir(n))
            .arg(lab.shared_dir())
            .arg(&exe)
            .env("DRBDPOOL_TEST_CHILD", "1")
            .env("DRBDPOOL_STORE", lab.store.root())
            .env("DRBDPOOL_NODE", n)
            .env("DRBDPOOL_DRBD", "sim")
            .env("DRBDPOOL_SIM_DIR", lab.sim_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        agents.children.push(child);
    }
    Some(agents)
}

/// Wait (bounded) until `cond` holds; on timeout fail with the agents' logs.
fn wait_for(lab: &Lab, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut logs = String::new();
    for e in std::fs::read_dir(lab.base()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("agent-") {
            logs += &format!("--- {:?}\n{}\n", e.file_name(), std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    for s in lab.store.node_states().unwrap_or_default() {
        logs += &format!("--- state {}: {:?}\n", s.node, s.volumes);
    }
    panic!("timed out waiting for: {what}\n{logs}");
}

#[test]
fn three_agents_in_network_namespaces_reconcile_create_grow_delete() {
    if std::env::var("DRBDPOOL_TEST_CHILD").is_ok() || !can_loop() {
        return;
    }
    let nodes = ["a", "b", "c"];
    let lab = Lab::new(&nodes);
    let mut vol = lab.volume("dp-multi", &nodes, 4096);
    lab.store.put_volume(&vol).unwrap();
    let Some(agents) = start(&lab, &nodes) else { return };

    let all_at = |gen: u64, size: u64| {
        nodes.iter().all(|n| {
            lab.store.node_state(n).ok().flatten().and_then(|s| s.volumes.get("dp-multi").cloned()).is_some_and(|o| {
                o.ready && o.disk == "UpToDate" && o.generation == gen && o.size_kib == size && o.error.is_none()
                    && o.peers.len() == 2 && o.peers.iter().all(|p| p.connection == "Connected" && p.disk == "UpToDate")
            })
        })
    };
    wait_for(&lab, "all three replicas UpToDate at generation 1", || all_at(1, 4096));
    for n in nodes {
        let img = lab.image(n, "dp-multi");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), drbd_backing_kib(4096) * 1024, "{n}");
        assert_eq!(Lab::loops(&img).len(), 1, "{n}: exactly one loop device");
    }
    assert!(!lab.base().join("images/shared/dp-multi.img").exists(), "each agent must use its own directory");

    // Steady state: no agent rewrites its NodeState (10 passes each).
    let stamp = || nodes.map(|n| std::fs::metadata(lab.store.root().join(format!("state/{n}.json"))).map(|m| (m.ino(), m.mtime(), m.mtime_nsec())).unwrap());
    let before = stamp();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(before, stamp(), "NodeStates rewritten although nothing changed");

    // Growth.
    vol.size_kib = 12288;
    vol.generation = 2;
    vol.state = VolumeState::Ready;
    lab.store.put_volume(&vol).unwrap();
    wait_for(&lab, "all three replicas grown at generation 2", || all_at(2, 12288));
    for n in nodes {
        assert_eq!(std::fs::metadata(lab.image(n, "dp-multi")).unwrap().len(), drbd_backing_kib(12288) * 1024, "{n}");
    }

    // Deletion.
    vol.state = VolumeState::Deleting;
    vol.generation = 3;
    lab.store.put_volume(&vol).unwrap();
    wait_for(&lab, "volume document removed after every replica is gone", || {
        lab.store.volume("pool1", "dp-multi-vol").unwrap().is_none()
    });
    for n in nodes {
        let img = lab.image(n, "dp-multi");
        assert!(!img.exists(), "{n}: image left behind");
        assert!(Lab::loops(&img).is_empty(), "{n}: loop device left attached");
        assert!(!lab.store.node_state(n).unwrap().unwrap().volumes.contains_key("dp-multi"));
    }
    drop(agents);
}
