//! Concurrency with the real binary: three simulated nodes share one store, their
//! agents run, and 40 helper processes at once allocate and free volumes, while
//! lock holders are SIGKILLed inside the cluster-wide alloc lock and inside a
//! volume lock (parked at a failpoint with the `sleep` action). Afterwards
//! nothing is duplicated or leaked and `drbdpool check` is clean on every node.

#[path = "faultlab/mod.rs"]
mod lab;

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lab::{can_run, KillOnDrop, Out, World};
use serde_json::{json, Value};

/// A helper parked at `fp` (action sleep), its stderr in a file we poll.
fn park(w: &World, node: &str, vmid: u32, fp: &str, log: &str) -> Child {
    let err = std::fs::File::create(w.base().join(log)).unwrap();
    let mut ch = w
        .cmd(node, &["plugin", "alloc"], &[("DRBDPOOL_FAILPOINTS", &format!("{fp}=sleep"))])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    ch.stdin.take().unwrap().write_all(w.request(node, json!({"vmid": vmid, "size_kib": 2048})).as_bytes()).unwrap();
    ch
}

/// Wait until the parked helper reports the failpoint, then SIGKILL it.
fn kill_when_parked(w: &World, mut ch: Child, fp: &str, log: &str) {
    let t = Instant::now();
    while !std::fs::read_to_string(w.base().join(log)).unwrap_or_default().contains(&format!("failpoint {fp} hit")) {
        assert!(t.elapsed() < Duration::from_secs(180), "{log}: never reached {fp}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    ch.kill().unwrap();
    ch.wait().unwrap();
}

fn finish(chs: Vec<(String, Child)>) -> Vec<(String, Out, Value)> {
    chs.into_iter()
        .map(|(what, ch)| {
            let o: Out = ch.wait_with_output().unwrap().into();
            let v: Value = serde_json::from_str(o.stdout.trim()).unwrap_or(Value::Null);
            (what, o, v)
        })
        .collect()
}

fn assert_all_ok(rs: &[(String, Out, Value)], w: &World) {
    let bad: Vec<String> = rs.iter().filter(|(_, o, v)| o.code != 0 || v["ok"] != true).map(|(w, o, _)| format!("{w}: {} {}", o.stdout.trim(), o.stderr.trim())).collect();
    assert!(bad.is_empty(), "{} of {} calls failed:\n{}\n{}", bad.len(), rs.len(), bad.join("\n"), w.dump());
}

#[test]
fn forty_processes_three_nodes_killed_lock_holders() {
    if !can_run() {
        return;
    }
    let nodes = ["a", "b", "c"];
    let mut w = World::new(&nodes);
    // Budgets sized for 2 shared cores: a killed holder blocks the alloc lock for its lifetime (8 s).
    w.set_env("DRBDPOOL_LOCK_LIFETIME_SECS", "8");
    w.set_env("DRBDPOOL_LOCK_TIMEOUT_SECS", "150");
    w.set_env("DRBDPOOL_PEER_TIMEOUT_SECS", "40");
    w.set_env("DRBDPOOL_CREATE_EXPIRY_SECS", "60");
    let _agents: Vec<KillOnDrop> = nodes.iter().map(|n| w.spawn_agent(n)).collect();
    let t0 = Instant::now();

    // Phase 1: two helpers die inside the alloc lock, one inside its volume's lock
    // (before marking it ready); 24 allocations run meanwhile, 8 per node, on 4 vmids.
    let v1 = park(&w, "a", 900, "alloc.after-lock", "victim1.log");
    let v3 = park(&w, "c", 902, "alloc.before-ready", "victim3.log");
    let mut chs = Vec::new();
    for i in 0..24u32 {
        let n = nodes[i as usize % 3];
        chs.push((format!("alloc#{i} on {n}"), w.spawn_plugin(n, "alloc", json!({"vmid": 100 + i % 4, "size_kib": 2048}), &[])));
    }
    let v2 = park(&w, "b", 901, "alloc.after-lock", "victim2.log");
    std::thread::scope(|s| {
        s.spawn(|| kill_when_parked(&w, v1, "alloc.after-lock", "victim1.log"));
        s.spawn(|| kill_when_parked(&w, v3, "alloc.before-ready", "victim3.log"));
        s.spawn(|| kill_when_parked(&w, v2, "alloc.after-lock", "victim2.log"));
    });
    let r1 = finish(chs);
    assert_all_ok(&r1, &w);
    let phase1 = t0.elapsed();

    // Phase 2: 40 processes at once: 20 frees of phase-1 volumes and 20 new allocations.
    let t1 = Instant::now();
    let names: Vec<(String, String)> = r1
        .iter()
        .map(|(what, _, v)| (what.rsplit(' ').next().unwrap().to_string(), v["result"]["volname"].as_str().unwrap().to_string()))
        .collect();
    let mut chs = Vec::new();
    for (i, (n, vol)) in names.iter().take(20).enumerate() {
        // Free from another node than the allocating one half of the time.
        let from = if i % 2 == 0 { n.clone() } else { nodes[(i + 1) % 3].to_string() };
        chs.push((format!("free {vol} on {from}"), w.spawn_plugin(&from, "free", json!({"volname": vol}), &[])));
        let m = nodes[i % 3];
        chs.push((format!("alloc2#{i} on {m}"), w.spawn_plugin(m, "alloc", json!({"vmid": 200 + i as u32 % 3, "size_kib": 2048}), &[])));
    }
    let r2 = finish(chs);
    assert_all_ok(&r2, &w);
    let phase2 = t1.elapsed();

    // Agents settle: frees finish, the killed alloc's volume is rolled back after the expiry.
    let t2 = Instant::now();
    loop {
        let docs = w.store.all_volumes().unwrap();
        if docs.iter().all(|d| d.state == drbdpool::store::docs::VolumeState::Ready) && docs.len() == 24 {
            break;
        }
        assert!(t2.elapsed() < Duration::from_secs(150), "agents did not settle:\n{}", w.dump());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every agent has published a pass over the final documents: exactly the replicas the
    // documents give its node, each ready at the document's generation (removals included).
    loop {
        let docs = w.store.all_volumes().unwrap();
        let states = w.store.node_states().unwrap();
        let settled = nodes.iter().all(|n| {
            let want: Vec<(&str, u64)> = docs.iter().filter(|d| d.replica(n).is_some()).map(|d| (d.resource.as_str(), d.generation)).collect();
            states.iter().find(|s| s.node == *n).is_some_and(|s| {
                s.volumes.len() == want.len() && want.iter().all(|(r, g)| s.volumes.get(*r).is_some_and(|o| o.ready && o.generation >= *g))
            })
        });
        if settled {
            break;
        }
        assert!(t2.elapsed() < Duration::from_secs(150), "agents did not publish the settled state:\n{}", w.dump());
        std::thread::sleep(Duration::from_millis(200));
    }
    let settle = t2.elapsed();

    let docs = w.store.all_volumes().unwrap();
    let mut vols: Vec<&str> = docs.iter().map(|d| d.volname.as_str()).collect();
    vols.sort();
    vols.dedup();
    assert_eq!(vols.len(), 24, "24 + 20 allocated, 20 freed, 1 rolled back");
    assert!(docs.iter().all(|d| d.vmid != 900 && d.vmid != 901 && d.vmid != 902), "killed allocs left volumes:\n{}", w.dump());
    w.assert_clean_but("after both phases", &["stale-lock"]);
    // Stale locks of the killed holders are broken by the next taker: take them now.
    let (o, _) = w.plugin_pumped("a", "alloc", json!({"vmid": 300, "size_kib": 2048}), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    w.assert_clean("after the final alloc");
    eprintln!(
        "stress: phase1 (24 allocs + 3 killed holders) {:.1}s, phase2 (20 frees + 20 allocs) {:.1}s, settle {:.1}s",
        phase1.as_secs_f64(),
        phase2.as_secs_f64(),
        settle.as_secs_f64()
    );
}
