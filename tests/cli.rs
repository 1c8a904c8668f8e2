//! The real binary: plugin JSON in/out and exit codes, node registry commands,
//! status/volume output. Methods that need the node side are covered in handlers.rs.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drbdpool"));
    c.env_remove("DRBDPOOL_STORE").env_remove("DRBDPOOL_NODE").env("RUST_LOG", "warn");
    c
}

fn plugin(store: &std::path::Path, method: &str, input: &str) -> (i32, Value, String) {
    let mut ch = bin()
        .args(["--store", store.to_str().unwrap(), "plugin", method])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ch.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = ch.wait_with_output().unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "exactly one reply line on stdout: {out:?}");
    (o.status.code().unwrap(), serde_json::from_str(&out).unwrap(), String::from_utf8(o.stderr).unwrap())
}

fn run(store: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let o = bin().arg("--store").arg(store).args(args).output().unwrap();
    (o.status.code().unwrap(), String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
}

#[test]
fn plugin_replies_and_exit_codes() {
    let (d, s) = store_with_nodes(&["pve1", "pve2"]);
    let n = FakeNode::new("pve1", &s); // publishes pve1's state, as its agent would
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let c = ctx(&s, &n, 5000);
    assert!(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1024})).ok);

    let req = |args: Value| json!({"version": 1, "storeid": "dp", "node": "pve1", "scfg": scfg(), "args": args}).to_string();
    let (rc, r, _) = plugin(d.path(), "status", &req(json!({})));
    assert_eq!((rc, &r["result"]["active"]), (0, &json!(true)));
    let (rc, r, _) = plugin(d.path(), "path", &req(json!({"volname": "vm-100-disk-0"})));
    assert_eq!((rc, &r["result"]["path"]), (0, &json!("/dev/drbd1000")));
    let (rc, r, _) = plugin(d.path(), "list", &req(json!({})));
    assert_eq!((rc, r["result"]["volumes"].as_array().unwrap().len()), (0, 1));
    let (rc, r, _) = plugin(d.path(), "path", &req(json!({"volname": "vm-100-disk-0; rm -rf /"})));
    assert_eq!((rc, &r["ok"], &r["error"]["kind"]), (1, &json!(false), &json!("invalid-input")));
    let (rc, r, _) = plugin(d.path(), "status", "not json");
    assert_eq!((rc, &r["error"]["kind"]), (1, &json!("invalid-input")));
    // The node name comes from the request when neither flag nor env is given.
    let (rc, r, _) = plugin(d.path(), "activate_storage", &json!({"version": 1, "storeid": "dp", "node": "pve7", "args": {}}).to_string());
    assert_eq!(rc, 1);
    assert!(r["error"]["message"].as_str().unwrap().contains("drbdpool node add pve7"), "{r}");
}

#[test]
fn node_commands_and_status() {
    let (d, s) = store_with_nodes(&[]);
    let p = d.path();
    assert_eq!(run(p, &["node", "add", "pve1", "--address", "10.1.1.1"]).0, 0);
    assert_eq!(run(p, &["node", "add", "pve2", "--address", "fd00::2"]).0, 0);
    let (rc, _, err) = run(p, &["node", "add", "pve3", "--address", "10.1.1.1"]);
    assert_eq!(rc, 5, "{err}");
    let (rc, _, err) = run(p, &["node", "add", "pve/3", "--address", "10.1.1.3"]);
    assert_eq!(rc, 2, "{err}");
    let (rc, out, _) = run(p, &["node", "list"]);
    assert_eq!(rc, 0);
    assert!(out.contains("pve2") && out.contains("fd00::2") && out.contains("never reported"), "{out}");

    let n = FakeNode::new("pve1", &s);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let c = ctx(&s, &n, 5000);
    assert!(call(&c, "alloc", "dp", json!({"vmid": 100, "size_kib": 1048576})).ok);
    std::thread::sleep(std::time::Duration::from_millis(100));

    let (rc, _, err) = run(p, &["node", "remove", "pve2"]);
    assert_eq!(rc, 4);
    assert!(err.contains("dp:vm-100-disk-0"), "{err}");
    let (rc, out, _) = run(p, &["status"]);
    assert_eq!(rc, 0);
    assert!(out.starts_with("VOLUME"), "{out}");
    assert!(out.contains("dp:vm-100-disk-0") && out.contains("1.0G") && out.contains("pve1:Connected"), "{out}");
    let (rc, out, _) = run(p, &["status", "--json"]);
    assert_eq!(rc, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["volumes"][0]["nodes"]["pve2"]["disk"], "UpToDate");
    let (rc, out, _) = run(p, &["volume", "show", "vm-100-disk-0"]);
    assert_eq!(rc, 0);
    assert!(out.contains("\"(hidden)\"") && out.contains("/dev/drbd1000"), "{out}");
    let (rc, _, _) = run(p, &["volume", "show", "dp:vm-9-disk-0"]);
    assert_eq!(rc, 3);
    // A linked clone by the name PVE shows (`qm config`): <base>/<name>; a wrong base is not it.
    assert!(call(&c, "create_base", "dp", json!({"volname": "vm-100-disk-0"})).ok);
    let cl = call(&c, "clone", "dp", json!({"volname": "base-100-disk-0", "vmid": 101}));
    assert_eq!(cl.result.unwrap()["volname"], "base-100-disk-0/vm-101-disk-0");
    let (rc, out, err) = run(p, &["volume", "show", "dp:base-100-disk-0/vm-101-disk-0"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("\"parent\": \"base-100-disk-0\""), "{out}");
    assert_eq!(run(p, &["volume", "show", "dp:base-7-disk-0/vm-101-disk-0"]).0, 3);
    assert!(call(&c, "free", "dp", json!({"volname": "base-100-disk-0/vm-101-disk-0"})).ok);
    let (rc, out, _) = run(p, &["volume", "list", "--json"]);
    assert_eq!(rc, 0);
    assert!(out.contains("dp.vm-100-disk-0"));
    assert!(call(&c, "free", "dp", json!({"volname": "base-100-disk-0"})).ok);
    assert_eq!(run(p, &["node", "remove", "pve2"]).0, 0);
    assert_eq!(run(p, &["node", "remove", "pve2"]).0, 3);
}

#[test]
fn help_documents_exit_codes() {
    let o = bin().arg("--help").output().unwrap();
    let h = String::from_utf8(o.stdout).unwrap();
    assert!(h.contains("Exit codes") && h.contains("4  refused"), "{h}");
}

/// `node replace` through the binary: refused while OLD reports, a dry run that says what
/// would move, the move, and exit code 9 with the reason for a volume left as it is.
#[test]
fn node_replace_refuses_a_live_node_and_names_what_it_leaves() {
    use drbdpool::store::docs::{NodeState, Space, VolumeDoc, VolumeObserved};
    let (d, s) = store_with_nodes(&["pve1", "pve2", "pve3"]);
    let good = VolumeDoc { resource: "dp.vm-100-disk-0".into(), ..VolumeDoc::for_test("dp", "vm-100-disk-0", &["pve1", "pve2"]) };
    let stale = VolumeDoc { resource: "dp.vm-101-disk-0".into(), port: 7001, minor: 1001, ..VolumeDoc::for_test("dp", "vm-101-disk-0", &["pve1", "pve2"]) };
    s.put_volume(&good).unwrap();
    s.put_volume(&stale).unwrap();
    let publish = |node: &str, age: u64, vols: &[(&str, &str)]| {
        let space = [("dp".to_string(), Space { total: 1 << 40, avail: 1 << 40, used: 0 })].into();
        let vols = vols.iter().map(|(r, disk)| (r.to_string(), VolumeObserved { ready: true, generation: 1, role: "Secondary".into(), disk: disk.to_string(), ..Default::default() })).collect();
        s.put_node_state(&NodeState::new(node, now() - age, space, vols)).unwrap();
    };
    publish("pve1", 10, &[]);
    publish("pve2", 1, &[("dp.vm-100-disk-0", "UpToDate"), ("dp.vm-101-disk-0", "Outdated")]);
    publish("pve3", 1, &[]);
    let (rc, _, err) = run(d.path(), &["node", "replace", "pve1", "pve3"]);
    assert_ne!(rc, 0);
    assert!(err.contains("pve1's agent reported 10s ago") && err.contains("gone for good"), "{err}");

    publish("pve1", 3600, &[]);
    let (rc, out, err) = run(d.path(), &["node", "replace", "pve1", "pve3", "--dry-run"]);
    assert_eq!(rc, 9, "{out}{err}");
    assert!(out.contains("dp:vm-100-disk-0: replica on pve1 would move to pve3") && out.contains("from pve2"), "{out}");
    assert!(out.contains("dp:vm-101-disk-0: left as it is") && out.contains("pve2 Outdated"), "{out}");
    assert_eq!(s.volume("dp", "vm-100-disk-0").unwrap().unwrap(), good, "a dry run changes nothing");

    let (rc, out, _) = run(d.path(), &["node", "replace", "pve1", "pve3", "--json"]);
    assert_eq!(rc, 9, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["moves"][0]["volname"].as_str(), v["moves"][0]["node_id"].as_u64()), (Some("vm-100-disk-0"), Some(2)), "{v}");
    assert_eq!(v["skipped"][0]["volume"], "dp:vm-101-disk-0");
    let now_doc = s.volume("dp", "vm-100-disk-0").unwrap().unwrap();
    assert_eq!(now_doc.replicas.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["pve2", "pve3"]);
    assert_eq!(s.volume("dp", "vm-101-disk-0").unwrap().unwrap(), stale, "left as it was");
    // pve1 still holds vm-101's replica: it cannot be unregistered yet.
    let (rc, _, err) = run(d.path(), &["node", "remove", "pve1"]);
    assert_ne!(rc, 0);
    assert!(err.contains("vm-101-disk-0"), "{err}");
}
