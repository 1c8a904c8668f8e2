//! `drbdpool agent --metrics-addr`: the real binary serves Prometheus metrics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drbdpool");

fn get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn agent_serves_metrics_on_the_given_address() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let sim = dir.path().join("sim");
    std::fs::create_dir_all(&sim).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let st = Command::new(BIN).args(["--store", store.to_str().unwrap(), "node", "add", "n1", "--address", "127.0.0.1"]).status().unwrap();
    assert!(st.success());
    let mut child = Command::new(BIN)
        .args(["--store", store.to_str().unwrap(), "--node", "n1", "agent", "--metrics-addr", &addr])
        .env("DRBDPOOL_DRBD", "sim")
        .env("DRBDPOOL_SIM_DIR", &sim)
        .env("DRBDPOOL_HA", "off")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut body = None;
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(b) = get(&addr).filter(|b| b.contains("drbdpool_agent_last_reconcile_success_timestamp_seconds{node=\"n1\"} 1")) {
            body = Some(b);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let body = body.expect("metrics served within 10 s");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("drbdpool_agent_up{node=\"n1\"} 1"), "{body}");
}

#[test]
fn bad_metrics_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--store", dir.path().to_str().unwrap(), "--node", "n1", "agent", "--metrics-addr", "not-an-address"])
        .env("DRBDPOOL_DRBD", "sim")
        .env("DRBDPOOL_SIM_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}
