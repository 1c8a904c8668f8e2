//! The benchmark tools still run (scripts/bench.sh, docs/BENCHMARKS.md): a store
//! of 10 volumes is populated and answers plugin calls. No timing is asserted.

use std::process::{Command, Stdio};
use std::io::Write;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_drbdpool-bench"))
}

#[test]
fn populate_ten_volumes_and_time_a_plugin_call() {
    let d = tempfile::tempdir().unwrap();
    let out = bench().args(["populate", "--volumes", "10", "--sim", "--dir"]).arg(d.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["volumes"], 10);
    let store = drbdpool::store::Store::open(d.path().join("store")).unwrap();
    let docs = store.volumes("dp").unwrap();
    assert_eq!(docs.len(), 10);
    assert!(docs.iter().all(|v| v.replicas.len() == 2));
    assert_eq!(store.nodes().unwrap().len(), 3);
    let st = store.node_state("bench1").unwrap().unwrap();
    assert_eq!(st.volumes.len(), docs.iter().filter(|v| v.replica("bench1").is_some()).count());

    // An already Primary volume: activate through the real helper with the sim.
    let vol = m["active"][0].as_str().unwrap().to_string();
    let req = serde_json::json!({"version": 1, "storeid": "dp", "node": "bench1",
        "scfg": {"drbdpool-backend": "file", "drbdpool-dir": d.path().join("images")}, "args": {"volname": vol}});
    let reqf = d.path().join("req.json");
    std::fs::write(&reqf, req.to_string()).unwrap();
    let helper = env!("CARGO_BIN_EXE_drbdpool");
    let env = [
        ("DRBDPOOL_STORE", d.path().join("store")),
        ("DRBDPOOL_SIM_DIR", d.path().join("sim")),
        ("DRBDPOOL_RUN_DIR", d.path().join("run")),
    ];
    let mut c = Command::new(helper);
    c.args(["plugin", "activate"]).envs(env.iter().cloned()).env("DRBDPOOL_DRBD", "sim").env("DRBDPOOL_NODE", "bench1");
    let mut ch = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    ch.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let o = ch.wait_with_output().unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reply["ok"], true, "{reply} {}", String::from_utf8_lossy(&o.stderr));

    let out = bench()
        .args(["time", "--count", "2", "--warmup", "0", "--check", "--label", "path", "--stdin"])
        .arg(&reqf)
        .args(["--", helper, "plugin", "path"])
        .env("DRBDPOOL_STORE", d.path().join("store"))
        .env("DRBDPOOL_NODE", "bench1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["n"], 2);
    assert!(t["median_ms"].as_f64().unwrap() > 0.0 && t["maxrss_kib"].as_i64().unwrap() > 0, "{t}");

    // A store that exists is not overwritten.
    let again = bench().args(["populate", "--volumes", "1", "--dir"]).arg(d.path()).output().unwrap();
    assert!(!again.status.success());
}
