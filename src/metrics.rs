//! Prometheus metrics of one node: what its agent observed (NodeState) plus agent health,
//! rendered in the text exposition format (version 0.0.4) and served over a minimal
//! HTTP/1.1 endpoint. Off unless the admin gives an address (`--metrics-addr`).
//!
//! Names and labels follow drbd-reactor's prometheus plugin (LINBIT/drbd-reactor,
//! src/plugin/prometheus.rs, `enums = true`) where our data fits, so its dashboards work:
//! `drbd_resource_role{name,drbd_resource_role}`, `drbd_device_state{name,volume,minor,drbd_device_state}`,
//! `drbd_connection_state{name,conn_name,peer_node_id,drbd_connection_state}`,
//! `drbd_peerdevice_outofsync_bytes{name,conn_name,peer_node_id,volume}`, `drbd_device_size_bytes`,
//! `drbd_device_open`, `drbd_resource_resources`. Ours carry the `drbdpool_` prefix.
//! Sync rate: DRBD reports no rate in our observed state; it is `-deriv(drbd_peerdevice_outofsync_bytes[1m])`
//! in PromQL, and `drbdpool_peerdevice_sync_percent` gives the progress.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::store::docs::{NodeState, VolumeDoc};

/// Agent health, kept by the agent loop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentHealth {
    /// Unix seconds of the last reconcile pass that finished without error.
    pub last_reconcile_ok: Option<u64>,
    /// Reconcile passes (or volumes) that failed since the agent started (a counter).
    pub reconcile_errors: u64,
    /// False while the agent is shutting down or cannot reach the store.
    pub up: bool,
}

/// Everything `render` needs; the agent keeps one behind `Arc<Mutex<_>>` and replaces fields as it learns.
#[derive(Clone, Debug, Default)]
pub struct MetricsData {
    /// This node's name (label `node` of the node-level metrics).
    pub node: String,
    /// Last observed state of this node; None before the first reconcile.
    pub state: Option<NodeState>,
    /// Desired state, for volume names, store ids, minors and peer node ids.
    pub volumes: Vec<VolumeDoc>,
    pub health: AgentHealth,
}

// drbd-reactor's value sets, so every series exists with 0/1 as there.
use crate::drbd::words::{CONNECTIONS as CONNECTION_STATES, DISKS as DISK_STATES, REPLICATIONS as REPLICATION_STATES, ROLES};

/// Escape a label value: backslash, double quote and newline (exposition format 0.0.4).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// Metric families in first-use order; the format forbids interleaving samples of two families.
#[derive(Default)]
struct Families {
    order: Vec<&'static str>,
    fams: BTreeMap<&'static str, String>,
}

impl Families {
    fn sample(&mut self, name: &'static str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let body = self.fams.entry(name).or_insert_with(|| {
            self.order.push(name);
            format!("# HELP {name} {}\n# TYPE {name} {kind}\n", escape_help(help))
        });
        body.push_str(name);
        if !labels.is_empty() {
            body.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let _ = write!(body, "{k}=\"{}\"", escape_label(v));
            }
            body.push('}');
        }
        let _ = writeln!(body, " {}", fmt_value(value));
    }

    /// One series per known value (1 for the current one), like drbd-reactor with `enums = true`;
    /// a value outside the known set (e.g. a DRBD 8.4 word) gets its own series so nothing is lost.
    fn enum_samples(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], known: &[&str], current: &str) {
        let mut values: Vec<&str> = known.to_vec();
        if !current.is_empty() && !known.contains(&current) {
            values.push(current);
        }
        for v in values {
            let mut l = labels.to_vec();
            l.push((name, v));
            self.sample(name, "gauge", help, &l, (v == current) as u8 as f64);
        }
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for n in &self.order {
            out.push_str(&self.fams[n]);
        }
        out
    }
}

/// Render the exposition text for this node. Pure: same input, same text.
pub fn render(data: &MetricsData) -> String {
    let mut f = Families::default();
    let node = data.node.as_str();
    let h = &data.health;

    f.sample(
        "drbdpool_agent_up",
        "gauge",
        "1 if the drbdpool agent is running and can reach the store",
        &[("node", node)],
        h.up as u8 as f64,
    );
    if let Some(t) = h.last_reconcile_ok {
        f.sample(
            "drbdpool_agent_last_reconcile_success_timestamp_seconds",
            "gauge",
            "Unix time of the last reconcile pass that finished without error",
            &[("node", node)],
            t as f64,
        );
    }
    f.sample(
        "drbdpool_agent_reconcile_errors_total",
        "counter",
        "Reconcile errors since the agent started",
        &[("node", node)],
        h.reconcile_errors as f64,
    );

    let Some(st) = &data.state else {
        return f.finish();
    };
    f.sample(
        "drbdpool_agent_state_updated_timestamp_seconds",
        "gauge",
        "Unix time the agent last published this node's observed state",
        &[("node", node)],
        st.updated as f64,
    );
    for (storeid, sp) in &st.storages {
        let l = [("node", node), ("storage", storeid.as_str())];
        f.sample(
            "drbdpool_storage_size_bytes",
            "gauge",
            "Total space of the storage's backing pool on this node",
            &l,
            sp.total as f64,
        );
        f.sample(
            "drbdpool_storage_free_bytes",
            "gauge",
            "Free space of the storage's backing pool on this node",
            &l,
            sp.avail as f64,
        );
        f.sample(
            "drbdpool_storage_used_bytes",
            "gauge",
            "Used space of the storage's backing pool on this node",
            &l,
            sp.used as f64,
        );
    }

    f.sample("drbd_resource_resources", "gauge", "Number of resources", &[], st.volumes.len() as f64);

    let docs: BTreeMap<&str, &VolumeDoc> = data.volumes.iter().map(|v| (v.resource.as_str(), v)).collect();
    for (res, v) in &st.volumes {
        let doc = docs.get(res.as_str()).copied();
        let minor = doc.map(|d| d.minor.to_string()).unwrap_or_default();
        let name = res.as_str();

        if let Some(d) = doc {
            let vmid = d.vmid.to_string();
            f.sample(
                "drbdpool_volume_info",
                "gauge",
                "Proxmox volume behind a DRBD resource (always 1; join on name)",
                &[("name", name), ("storage", &d.storeid), ("volname", &d.volname), ("vmid", &vmid), ("minor", &minor)],
                1.0,
            );
        }
        f.sample(
            "drbdpool_volume_ready",
            "gauge",
            "1 if the local replica exists, has metadata and is up",
            &[("name", name)],
            v.ready as u8 as f64,
        );
        f.sample(
            "drbdpool_volume_reconcile_error",
            "gauge",
            "1 if the last reconcile of this volume failed (see drbdpool status)",
            &[("name", name)],
            v.error.is_some() as u8 as f64,
        );
        f.enum_samples("drbd_resource_role", "DRBD role of the resource", &[("name", name)], ROLES, &v.role);

        let dev = [("name", name), ("volume", "0"), ("minor", minor.as_str())];
        f.enum_samples("drbd_device_state", "DRBD device state", &dev, DISK_STATES, &v.disk);
        f.sample("drbd_device_open", "gauge", "Boolean if this device is opened", &dev, v.open as u8 as f64);
        let size_kib = if v.size_kib > 0 { v.size_kib } else { doc.map(|d| d.size_kib).unwrap_or(0) };
        f.sample("drbd_device_size_bytes", "gauge", "Device size in bytes", &dev, (size_kib * 1024) as f64);

        for p in &v.peers {
            let peer_id = doc.and_then(|d| d.replica(&p.node)).map(|r| r.node_id.to_string()).unwrap_or_default();
            let conn = [("name", name), ("conn_name", p.node.as_str()), ("peer_node_id", peer_id.as_str())];
            f.enum_samples("drbd_connection_state", "DRBD connection state", &conn, CONNECTION_STATES, &p.connection);
            let pd = [conn[0], conn[1], conn[2], ("volume", "0")];
            f.sample(
                "drbd_peerdevice_outofsync_bytes",
                "gauge",
                "Number of bytes currently out of sync with this peer, according to the bitmap that DRBD has for it",
                &pd,
                (p.out_of_sync_kib * 1024) as f64,
            );
            f.enum_samples(
                "drbdpool_peerdevice_replication_state",
                "DRBD replication state towards this peer",
                &pd,
                REPLICATION_STATES,
                &p.replication,
            );
            f.enum_samples(
                "drbdpool_peerdevice_disk_state",
                "Disk state of the peer's replica",
                &pd,
                DISK_STATES,
                &p.disk,
            );
            if let Some(pct) = p.sync_percent {
                f.sample(
                    "drbdpool_peerdevice_sync_percent",
                    "gauge",
                    "Progress of the running resync with this peer, in percent",
                    &pd,
                    pct,
                );
            }
        }
    }
    f.finish()
}

// ---- HTTP ----

/// Longest request head we read; a scrape is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends nothing useful for this long is dropped (the server handles one client at a time).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind the metrics address (an IP:port, e.g. `127.0.0.1:9943` or `[::]:9943`).
pub fn bind(addr: &str) -> Result<TcpListener> {
    let sa = SocketAddr::from_str(addr.trim()).map_err(|e| {
        Error::InvalidInput(format!(
            "metrics address '{addr}' is not IP:port ({e}); give e.g. 127.0.0.1:9943 or [::]:9943"
        ))
    })?;
    TcpListener::bind(sa).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another process listens there; drbd-reactor uses 9942) - pick another port"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                " (no local interface has this address) - use an address of this node"
            }
            std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges) - pick a port above 1024",
            _ => "",
        };
        Error::Conflict(format!("cannot listen for metrics on {sa}: {e}{hint}"))
    })
}

/// Serve GET /metrics on `addr` from `source` (rendered on each scrape), in one background thread.
pub fn serve(addr: &str, source: Arc<Mutex<MetricsData>>) -> Result<JoinHandle<()>> {
    let listener = bind(addr)?;
    serve_listener(listener, move || {
        // A panic elsewhere while holding the lock leaves plain data behind; still worth serving.
        let d = source.lock().unwrap_or_else(|p| p.into_inner());
        render(&d)
    })
}

/// Serve on an already bound listener (tests bind port 0 and read `local_addr`).
pub fn serve_listener<F>(listener: TcpListener, body: F) -> Result<JoinHandle<()>>
where
    F: Fn() -> String + Send + 'static,
{
    std::thread::Builder::new()
        .name("drbdpool-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = handle(s, &body) {
                            tracing::debug!("metrics: client dropped: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("metrics: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100)); // e.g. EMFILE: don't spin
                    }
                }
            }
        })
        .map_err(|e| Error::Other(anyhow::anyhow!("cannot start the metrics thread: {e}")))
}

/// Read the request head (bounded in size and time), answer, close.
fn handle(mut s: TcpStream, body: &dyn Fn() -> String) -> std::io::Result<()> {
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_done = loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if buf.len() >= MAX_REQUEST || Instant::now() >= deadline {
            break false;
        }
        match s.read(&mut chunk) {
            Ok(0) => break false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let (status, ctype, text) = if !head_done {
        if buf.len() >= MAX_REQUEST {
            ("431 Request Header Fields Too Large", "text/plain", "request too large\n".to_string())
        } else {
            ("400 Bad Request", "text/plain", "incomplete request\n".to_string())
        }
    } else {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        match (method, path) {
            ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body()),
            ("GET", _) => ("404 Not Found", "text/plain", "not found; metrics are at /metrics\n".to_string()),
            _ => ("405 Method Not Allowed", "text/plain", "only GET is supported\n".to_string()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(text.as_bytes())?;
    s.flush()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests;
