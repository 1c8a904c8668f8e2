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
