use super::*;
use crate::backend::Space;
use crate::store::docs::{PeerObserved, Replica, VolumeObserved, FORMAT};

fn vol(resource: &str, volname: &str, minor: u32, nodes: &[(&str, u8)]) -> VolumeDoc {
    VolumeDoc {
        vmid: 100,
        resource: resource.into(),
        minor,
        port: 7789,
        replicas: nodes.iter().map(|(n, id)| Replica { node: n.to_string(), node_id: *id }).collect(),
        created: 1,
        ..VolumeDoc::for_test("drbd1", volname, &[])
    }
}

/// pve1 is Primary of a syncing volume and Secondary of one whose peer is gone.
fn fixture() -> MetricsData {
    let mut storages = BTreeMap::new();
    storages.insert("drbd1".to_string(), Space { total: 107374182400, avail: 96636764160, used: 10737418240 });
    let mut volumes = BTreeMap::new();
    volumes.insert(
        "pve-vm-100-disk-0".to_string(),
        VolumeObserved {
            ready: true,
            generation: 1,
            role: "Primary".into(),
            disk: "UpToDate".into(),
            open: true,
            size_kib: 4096,
            peers: vec![PeerObserved {
                node: "pve2".into(),
                connection: "Connected".into(),
                role: "Secondary".into(),
                disk: "Inconsistent".into(),
                replication: "SyncSource".into(),
                out_of_sync_kib: 1536,
                sync_percent: Some(62.5),
            }],
            error: None,
            snapshots: vec![],
            quorum: None,
        },
    );
    volumes.insert(
        "pve-vm-101-disk-0".to_string(),
        VolumeObserved {
            ready: true,
            generation: 2,
            role: "Secondary".into(),
            disk: "Outdated".into(),
            open: false,
            size_kib: 0, // not yet known: falls back to the document's size
            peers: vec![PeerObserved {
                node: "pve3".into(),
                connection: "WFConnection".into(), // DRBD 8.4 word outside drbd-reactor's set
                role: "Unknown".into(),
                disk: "DUnknown".into(),
                replication: "Off".into(),
                out_of_sync_kib: 0,
                sync_percent: None,
            }],
            error: Some("lvcreate failed".into()),
            snapshots: vec![],
            quorum: None,
        },
    );
    MetricsData {
        node: "pve1".into(),
        state: Some(NodeState { format: FORMAT, node: "pve1".into(), updated: 1764150000, storages, volumes }),
        volumes: vec![
            vol("pve-vm-100-disk-0", "vm-100-disk-0", 1000, &[("pve1", 0), ("pve2", 1)]),
            vol("pve-vm-101-disk-0", "vm-101-disk-0", 1001, &[("pve3", 0), ("pve1", 1)]),
        ],
        health: AgentHealth { last_reconcile_ok: Some(1764149990), reconcile_errors: 3, up: true },
    }
}

#[test]
fn golden_render() {
    let got = render(&fixture());
    if std::env::var_os("DRBDPOOL_BLESS").is_some() {
        // Regenerate after an intended change, then review the diff of golden.prom.
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics/golden.prom"), &got).unwrap();
        return;
    }
    let want = include_str!("golden.prom");
    if got != want {
        // Print the first differing line: a full diff of ~150 lines is unreadable.
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got.lines().count(), want.lines().count(), "line count");
        panic!("rendered text differs from golden.prom (trailing newline?)");
    }
}

/// Every family: HELP then TYPE once, its samples contiguous; every sample line well-formed.
fn check_exposition(text: &str) -> usize {
    let mut seen: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut samples = 0;
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(!seen.contains(&name), "family {name} appears twice");
            let ty = lines.next().unwrap();
            assert!(ty.starts_with(&format!("# TYPE {name} ")), "TYPE must follow HELP: {ty}");
            assert!(ty.ends_with(" gauge") || ty.ends_with(" counter"), "{ty}");
            seen.push(name.clone());
            current = name;
            continue;
        }
        let name_end = l.find(['{', ' ']).expect("sample has a value");
        assert_eq!(&l[..name_end], current, "sample outside its family: {l}");
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value), "bad value in {l}");
        if l.as_bytes()[name_end] == b'{' {
            let close = l.rfind('}').expect("labels closed");
            assert_eq!(&l[close..close + 2], "} ", "{l}");
        }
        samples += 1;
    }
    samples
}

#[test]
fn rendered_text_is_well_formed() {
    let n = check_exposition(&render(&fixture()));
    assert!(n > 50, "{n} samples");
    // Before the first reconcile: health only.
    let mut d = fixture();
    d.state = None;
    d.health.last_reconcile_ok = None;
    let text = render(&d);
    assert_eq!(check_exposition(&text), 2);
    assert!(text.contains("drbdpool_agent_up{node=\"pve1\"} 1\n"));
    assert!(!text.contains("drbd_resource_role"));
}

#[test]
fn enum_series_mark_exactly_the_current_value() {
    let text = render(&fixture());
    let ones: Vec<&str> = text.lines().filter(|l| l.starts_with("drbd_device_state{") && l.ends_with(" 1")).collect();
    assert_eq!(
        ones,
        vec![
            "drbd_device_state{name=\"pve-vm-100-disk-0\",volume=\"0\",minor=\"1000\",drbd_device_state=\"UpToDate\"} 1",
            "drbd_device_state{name=\"pve-vm-101-disk-0\",volume=\"0\",minor=\"1001\",drbd_device_state=\"Outdated\"} 1",
        ]
    );
    // A state outside drbd-reactor's set still shows up, as the only 1.
    assert!(text.contains(
        "drbd_connection_state{name=\"pve-vm-101-disk-0\",conn_name=\"pve3\",peer_node_id=\"0\",drbd_connection_state=\"WFConnection\"} 1\n"
    ));
    assert!(text.contains(
        "drbd_connection_state{name=\"pve-vm-101-disk-0\",conn_name=\"pve3\",peer_node_id=\"0\",drbd_connection_state=\"Connected\"} 0\n"
    ));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape_label("x\ny"), "x\\ny");
    assert_eq!(escape_label("plain-é"), "plain-é");
    let mut d = fixture();
    d.node = "we\"ird\\node\nname".into();
    let text = render(&d);
    assert!(text.contains("drbdpool_agent_up{node=\"we\\\"ird\\\\node\\nname\"} 1\n"), "{text}");
    check_exposition(&text);
}

#[test]
fn values_format_like_prometheus() {
    assert_eq!(fmt_value(1.0), "1");
    assert_eq!(fmt_value(62.5), "62.5");
    assert_eq!(fmt_value(f64::NAN), "NaN");
    assert_eq!(fmt_value(f64::INFINITY), "+Inf");
    assert_eq!(fmt_value(f64::NEG_INFINITY), "-Inf");
    assert_eq!(fmt_value(107374182400.0), "107374182400");
}

#[test]
fn bind_rejects_bad_addresses_clearly() {
    for bad in ["", "localhost", "9943", "127.0.0.1", "1.2.3.4:99999", "[::1:9943"] {
        let e = bind(bad).unwrap_err();
        assert_eq!(e.kind(), "invalid-input", "{bad}: {e}");
        assert!(e.to_string().contains("IP:port"), "{e}");
    }
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let e = bind(&addr).unwrap_err();
    assert_eq!(e.kind(), "conflict");
    assert!(e.to_string().contains(&addr) && e.to_string().contains("pick another port"), "{e}");
}

fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("head and body");
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("Content-Length").parse().unwrap();
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (head.to_string(), body.to_string())
}

#[test]
fn serves_metrics_over_loopback() {
    let data = Arc::new(Mutex::new(fixture()));
    let listener = bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let d2 = data.clone();
    serve_listener(listener, move || render(&d2.lock().unwrap())).unwrap();

    let (head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert_eq!(body, render(&fixture()));

    // The agent updates the shared data; the next scrape sees it.
    data.lock().unwrap().health.reconcile_errors = 7;
    let (_, body) = http(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert!(body.contains("drbdpool_agent_reconcile_errors_total{node=\"pve1\"} 7\n"));

    let (head, _) = http(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    let (head, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    let (head, _) = http(addr, &vec![b'A'; 20_000]);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");

    // A client that connects and stays silent is dropped after the read timeout; others are then served.
    let t0 = Instant::now();
    let _silent = TcpStream::connect(addr).unwrap();
    let (head, _) = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "));
    assert!(t0.elapsed() < READ_TIMEOUT + Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn serve_uses_the_shared_data() {
    let data = Arc::new(Mutex::new(fixture()));
    // Find a free port, release it, and serve there (serve() binds by address).
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    serve(&addr, data.clone()).unwrap();
    let (head, body) = http(addr.parse().unwrap(), b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK"));
    assert_eq!(body, render(&fixture()));
    assert_eq!(serve(&addr, data).unwrap_err().kind(), "conflict");
}
