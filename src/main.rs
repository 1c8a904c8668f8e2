//! drbdpool: DRBD-replicated LVM-thin storage for small Proxmox VE clusters.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

use drbdpool::cli;
use drbdpool::error::Result;
use drbdpool::store::Store;

const AFTER_HELP: &str = "\
Examples:
  drbdpool status
  drbdpool volume show drbdpool:vm-100-disk-0
  drbdpool node add pve1 --address 10.10.10.1
  echo '{\"version\":1,\"storeid\":\"dp\",\"args\":{}}' | drbdpool plugin status

Exit codes:
  0  success
  1  internal error (or: `plugin` wrote an error reply; read its error.kind)
  2  invalid input (nothing was changed)
  3  not found
  4  refused: unsafe now (replica not UpToDate, volume in use, ...)
  5  conflict (already exists, range exhausted)
  6  timeout (lock, peer agent, tool)
  7  an external tool failed
  8  the cluster store could not be read or written
  9  `check` found problems (each line says what to do)";

#[derive(Parser)]
#[command(
    name = "drbdpool",
    version,
    about = "DRBD-replicated storage for small Proxmox VE clusters",
    long_about = "drbdpool joins DRBD (the data path) and the Proxmox cluster file system (the cluster state).\n\
The Perl storage plugin calls `drbdpool plugin <method>`; people use `status`, `volume` and `node`;\n\
systemd runs `drbdpool agent` on every node.",
    after_help = AFTER_HELP
)]
struct Opts {
    /// Cluster store directory [default: /etc/pve/priv/drbdpool]
    #[arg(long, global = true, env = "DRBDPOOL_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    /// This node's name [default: uname -n]
    #[arg(long, global = true, env = "DRBDPOOL_NODE", value_name = "NAME")]
    node: Option<String>,
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One PVE storage plugin call: JSON request on stdin, JSON reply on stdout (docs/PROTOCOL.md)
    #[command(after_help = "Example:\n  echo '{\"version\":1,\"storeid\":\"dp\",\"node\":\"pve1\",\"scfg\":{},\"args\":{\"volname\":\"vm-100-disk-0\"}}' | drbdpool plugin path\n\nExit code 0 with {\"ok\":true,...}; 1 with {\"ok\":false,\"error\":{kind,message}}.")]
    Plugin {
        /// activate_storage, status, alloc, free, list, path, activate, deactivate, size, resize, snapshot, ...
        method: String,
    },
    /// Every volume with each replica's role, disk, connections and sync progress
    #[command(after_help = "Examples:\n  drbdpool status\n  drbdpool status --json | jq '.volumes[] | select(.state != \"ready\")'\n  drbdpool status --watch        # resync progress with rate and ETA")]
    Status {
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every 2 s (or --interval) with resync rate and ETA, until Ctrl-C
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws with --watch
        #[arg(long, default_value_t = 2.0, value_name = "S", requires = "watch")]
        interval: f64,
    },
    /// Volumes in the store
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Nodes that can hold replicas
    #[command(subcommand)]
    Node(NodeCmd),
    /// Verify the store and this node's replicas: duplicates, leaks, missing replicas, stuck volumes, stale locks
    #[command(after_help = "Examples:\n  drbdpool check\n  drbdpool check --cluster --json\n\nExit code 0: no findings; 9: findings (one per line, each saying what to do).")]
    Check {
        #[arg(long)]
        json: bool,
        /// Check the store only, not this node's DRBD resources and backing devices
        #[arg(long)]
        cluster: bool,
        /// Report volumes in `creating`/`deleting` for longer than this [default: create expiry + 60 s]
        #[arg(long, value_name = "S")]
        stuck_after: Option<f64>,
    },
    /// Reconcile this node's replicas with the store (run by systemd on every node)
    #[command(after_help = "Examples:\n  drbdpool agent                 # run forever (drbdpool-agent.service)\n  drbdpool agent --once -v       # one reconcile round, verbose")]
    Agent {
        /// One round, then exit
        #[arg(long)]
        once: bool,
        /// Seconds between rounds (the store is polled: pmxcfs has no cross-node notification)
        #[arg(long, default_value_t = 1.0, value_name = "S")]
        interval: f64,
        /// Serve Prometheus metrics (drbd-reactor names) on this IP:port, e.g. 127.0.0.1:9943 [default: off]
        #[arg(long, env = "DRBDPOOL_METRICS_ADDR", value_name = "IP:PORT")]
        metrics_addr: Option<String>,
    },
    /// Check this node and the cluster set-up: DRBD versions, QDevice, replication network, LVM filter
    #[command(after_help = "Exit code 0 when nothing failed (warnings allowed), 1 when a check failed.")]
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Bring HA node-affinity rules in line with where good replicas are (the agent does this every 10 s)
    #[command(after_help = "Examples:\n  drbdpool ha-sync\n  DRBDPOOL_HA_DIR=/etc/pve/ha drbdpool ha-sync")]
    HaSync,
    /// DRBD's fence-peer handler (2-node resources): record the peer outdated in the store
    #[command(hide = true)]
    FencePeer {
        /// DRBD resource [default: $DRBD_RESOURCE, set by DRBD]
        #[arg(long, env = "DRBD_RESOURCE")]
        resource: String,
    },
    /// The second half of an alloc or linked clone, started detached by `plugin alloc`/`clone`
    /// (outside PVE's storage lock): make the replicas, mark the volume ready, or roll it back
    #[command(hide = true)]
    FinishCreate {
        storeid: String,
        volname: String,
        /// The DRBD resource the call recorded (a volume of the same name made later is left alone)
        resource: String,
        #[arg(long, value_name = "MS")]
        budget_ms: u64,
    },
    /// DRBD's unfence handler: DRBD 9 `unfence-peer` on the fencing node (peer from $DRBD_PEER_NODE_ID),
    /// 8.4 `after-resync-target` on the resynced node itself: drop the outdated mark of the now UpToDate replica
    #[command(hide = true, alias = "after-resync-target")]
    UnfencePeer {
        #[arg(long, env = "DRBD_RESOURCE")]
        resource: String,
        #[arg(long, env = "DRBD_PEER_NODE_ID")]
        peer_node_id: Option<u8>,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// All volumes of every drbdpool storage
    #[command(after_help = "Example:\n  drbdpool volume list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// One volume's desired and observed state (secret hidden)
    #[command(after_help = "Examples:\n  drbdpool volume show drbdpool:vm-100-disk-0\n  drbdpool volume show vm-100-disk-0")]
    Show {
        /// storeid:volname, or a volname that exists in one storage only
        id: String,
    },
    /// Move one replica of a volume to another node while the guest keeps running
    #[command(after_help = "Examples:\n  drbdpool volume move dp:vm-100-disk-0 --from pve1 --to pve3 --dry-run\n  drbdpool volume move dp:vm-100-disk-0 --from pve1 --to pve3 --wait\n\n\
TO gets a new replica, synced in full from an UpToDate one; FROM's replica is removed only once TO's is\n\
UpToDate. DRBD 9: FROM stays connected meanwhile (a guest may keep running there; FROM's replica goes\n\
once it has left). DRBD 8.4 (two nodes per resource): FROM leaves the resource at once, its data kept\n\
until TO is UpToDate, so FROM must not be in use (migrate the guest first) and the staying replica must\n\
be UpToDate. The agents carry the move out; a crash or kill of this command stops nothing.")]
    Move {
        id: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Show what would move, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Wait until the move is over, printing the sync's progress
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Change how many replicas a volume has (DRBD 9: 1 to 3; DRBD 8.4 takes exactly 2)
    #[command(after_help = "Examples:\n  drbdpool volume replicas dp:vm-100-disk-0 3 --wait\n  drbdpool volume replicas dp:vm-100-disk-0 2\n\n\
A new replica goes to the node with the most room that holds none (and that the storage's `nodes` list\n\
allows) and syncs in full from an UpToDate one. Dropping takes a replica that is not in use, the ones\n\
not UpToDate first; the last UpToDate replica always stays.")]
    Replicas {
        id: String,
        count: usize,
        /// Show what would change, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Wait until new replicas are UpToDate and dropped ones removed
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Disaster recovery: accept this node's Consistent/Outdated replica as the good copy
    #[command(after_help = "Example (on pve2, after pve1 with the newest data was lost for good):\n  drbdpool volume force-primary dp:vm-100-disk-0 --node pve2 --yes\n\n\
Runs on NODE itself. Refused while another replica may be reachable (DRBD connected, online in the\n\
membership, or its agent reported within 150 s), and without --yes (it then says what would be given up).\n\
The other replicas are marked outdated in the store first: drbdpool never activates them until they have\n\
resynced from NODE.")]
    ForcePrimary {
        id: String,
        /// The node whose data becomes the good copy: this node
        #[arg(long)]
        node: String,
        /// Accept that what the other replicas wrote after their last sync with NODE is given up
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Register a node (or change its replication address)
    #[command(after_help = "Example:\n  drbdpool node add pve1 --address 10.10.10.1")]
    Add {
        name: String,
        /// Replication address on the DRBD network (IPv4 or IPv6, no port)
        #[arg(long)]
        address: String,
    },
    /// Registered nodes and when their agent last reported
    List {
        #[arg(long)]
        json: bool,
    },
    /// Unregister a node (refused while it holds replicas)
    Remove { name: String },
    /// Move every replica off a live node (maintenance, retiring it), while guests keep running
    #[command(after_help = "Examples:\n  drbdpool node evacuate pve2 --dry-run\n  drbdpool node evacuate pve2 --wait\n\n\
Each replica on NODE moves to the node with the most room that holds none of that volume (and that the\n\
storage's `nodes` list allows), as `volume move` does. Refused when nothing can move; a volume that\n\
cannot (no room, no UpToDate copy elsewhere, DRBD 8.4 with its guest on NODE) is named.\n\
Exit code 0: every replica moves; 9: some were left as they are (each line says why).")]
    Evacuate {
        node: String,
        /// Show what would move, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Wait until every move is over, printing the syncs' progress
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Give the replicas of a node that is gone for good to another node (full sync from a survivor)
    #[command(after_help = "Examples:\n  drbdpool node replace pve1 pve3 --dry-run\n  drbdpool node replace pve1 pve3 --wait\n\n\
Refused while OLD may be alive (online in the membership, its agent reported within 150 s, or DRBD still\n\
connected to it). A volume with no UpToDate replica outside OLD is left as it is and named.\n\
Exit code 0: every volume moved; 9: some were left as they are (each line says why).")]
    Replace {
        old: String,
        new: String,
        /// Show what would move, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Wait until NEW's replicas are UpToDate, printing the sync's progress
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `volume move` and `node evacuate`: record, report, optionally wait; exit 9 if a volume was left.
fn relocate(o: &Opts, store: &Store, target: drbdpool::relocate::Target, dry_run: bool, wait: bool, json: bool) -> Result<()> {
    let here = cli::node_name(o.node.as_deref(), None)?;
    let max_hosts = drbdpool::node::LocalNode::from_env(store, &here)?.max_hosts()?;
    let p = drbdpool::relocate::relocate(store, max_hosts, target, dry_run)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"dry_run": dry_run, "moves": p.moves, "replicas": p.resizes, "under_way": p.under_way, "skipped": p.skipped}))
                .unwrap()
        );
    } else {
        print!("{}", drbdpool::relocate::render(&p, dry_run));
    }
    if wait && !dry_run {
        let mut ids: Vec<(String, String)> = p.moves.iter().map(|m| (m.storeid.clone(), m.volname.clone())).collect();
        for v in &p.under_way {
            if let Some((s, n)) = v.split_once(':') {
                ids.push((s.to_string(), n.to_string()));
            }
        }
        for r in p.resizes.iter().filter(|r| r.add) {
            cli::wait_synced(store, &r.node, std::slice::from_ref(&r.resource), !json)?;
        }
        ids.extend(p.resizes.iter().filter(|r| !r.add).map(|r| (r.storeid.clone(), r.volname.clone())).take(1));
        cli::wait_moved(store, &ids, !json)?;
    }
    if !p.skipped.is_empty() {
        std::process::exit(9);
    }
    Ok(())
}

fn open_store(o: &Opts) -> Result<Store> {
    Store::open(Store::resolve_root(o.store.as_deref()))
}

fn run(o: &Opts) -> Result<()> {
    let out = match &o.cmd {
        Cmd::Plugin { .. } => unreachable!(),
        Cmd::Status { json, watch, interval } => {
            let s = open_store(o)?;
            if *watch {
                if !(interval.is_finite() && *interval >= 0.1) {
                    return Err(drbdpool::invalid!("--interval must be at least 0.1 seconds"));
                }
                cli::status_watch(&s, Duration::from_secs_f64(*interval))?;
            }
            if *json {
                serde_json::to_string_pretty(&cli::status_json(&s)?).unwrap()
            } else {
                cli::status_table(&s)?
            }
        }
        Cmd::Volume(VolumeCmd::List { json }) => cli::volume_list(&open_store(o)?, *json)?,
        Cmd::Volume(VolumeCmd::Show { id }) => cli::volume_show(&open_store(o)?, id)?,
        Cmd::Volume(VolumeCmd::ForcePrimary { id, node, yes, json }) => {
            let store = open_store(o)?;
            drbdpool::naming::check_node_name(node)?;
            let vol = cli::find_volume(&store, id)?;
            let here = cli::node_name(o.node.as_deref(), None)?;
            let local = drbdpool::node::LocalNode::from_env(&store, &here)?;
            let out = drbdpool::recover::force_primary(&store, &local, &vol, node, *yes)?;
            if *json {
                serde_json::to_string_pretty(&out).unwrap()
            } else {
                drbdpool::recover::render(&out).trim_end().to_string()
            }
        }
        Cmd::Volume(VolumeCmd::Move { id, from, to, dry_run, wait, json }) => {
            let store = open_store(o)?;
            let vol = cli::find_volume(&store, id)?;
            let target = drbdpool::relocate::Target::Volume { resource: &vol.resource, from, to };
            return relocate(o, &store, target, *dry_run, *wait, *json);
        }
        Cmd::Volume(VolumeCmd::Replicas { id, count, dry_run, wait, json }) => {
            let store = open_store(o)?;
            let vol = cli::find_volume(&store, id)?;
            return relocate(o, &store, drbdpool::relocate::Target::Replicas { resource: &vol.resource, count: *count }, *dry_run, *wait, *json);
        }
        Cmd::Node(NodeCmd::Evacuate { node, dry_run, wait, json }) => {
            let store = open_store(o)?;
            return relocate(o, &store, drbdpool::relocate::Target::Evacuate { node }, *dry_run, *wait, *json);
        }
        Cmd::Node(NodeCmd::Add { name, address }) => cli::node_add(&open_store(o)?, name, address)?,
        Cmd::Node(NodeCmd::List { json }) => cli::node_list(&open_store(o)?, *json)?,
        Cmd::Node(NodeCmd::Remove { name }) => cli::node_remove(&open_store(o)?, name)?,
        Cmd::Node(NodeCmd::Replace { old, new, dry_run, wait, json }) => {
            let store = open_store(o)?;
            let p = drbdpool::replace::replace(&store, old, new, *dry_run)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"dry_run": dry_run, "old": old, "new": new, "moves": p.moves, "skipped": p.skipped})).unwrap());
            } else {
                print!("{}", drbdpool::replace::render(&p, old, new, *dry_run));
            }
            if *wait && !*dry_run {
                cli::wait_synced(&store, new, &p.moves.iter().map(|m| m.resource.clone()).collect::<Vec<_>>(), !*json)?;
            }
            if !p.skipped.is_empty() {
                std::process::exit(9);
            }
            return Ok(());
        }
        Cmd::Check { json, cluster, stuck_after } => {
            let store = open_store(o)?;
            let node = if *cluster { None } else { Some(cli::node_name(o.node.as_deref(), None)?) };
            let stuck_after = match stuck_after {
                Some(s) if s.is_finite() && *s >= 0.0 => Duration::from_secs_f64(*s),
                Some(_) => return Err(drbdpool::invalid!("--stuck-after must be a number of seconds >= 0")),
                None => drbdpool::check::default_stuck_after(),
            };
            let opts = drbdpool::check::CheckOpts { node: node.clone(), stuck_after, lock_lifetime: drbdpool::store::lock::lifetime() };
            let findings = drbdpool::check::check(&store, &opts)?;
            let out = if *json {
                serde_json::to_string_pretty(&serde_json::json!({"ok": findings.is_empty(), "node": node, "findings": findings})).unwrap()
            } else {
                drbdpool::check::render(&findings)
            };
            println!("{out}");
            if !findings.is_empty() {
                std::process::exit(9);
            }
            return Ok(());
        }
        Cmd::Agent { once, interval, metrics_addr } => {
            if !(interval.is_finite() && *interval > 0.0) {
                return Err(drbdpool::invalid!("--interval must be a positive number of seconds"));
            }
            let store = open_store(o)?;
            let node = cli::node_name(o.node.as_deref(), None)?;
            drbdpool::agent::run(drbdpool::agent::AgentOpts { store, node, once: *once, interval: Duration::from_secs_f64(*interval), metrics_addr: metrics_addr.clone() })?;
            return Ok(());
        }
        Cmd::Doctor { json } => {
            let store = open_store(o).ok();
            let (text, failed) = cli::doctor(store.as_ref(), *json)?;
            print!("{text}");
            if failed {
                std::process::exit(1);
            }
            return Ok(());
        }
        Cmd::HaSync => cli::ha_sync(&open_store(o)?)?,
        Cmd::FencePeer { resource } => {
            let store = open_store(o)?;
            let node = cli::node_name(o.node.as_deref(), None)?;
            let d = drbdpool::fence::fence_peer(&store, &node, resource);
            // DRBD logs the exit code; the reason goes to the journal via stderr.
            eprintln!("drbdpool fence-peer: {}", d.message);
            std::process::exit(d.exit);
        }
        Cmd::FinishCreate { storeid, volname, resource, budget_ms } => {
            let store = open_store(o)?;
            let node = cli::node_name(o.node.as_deref(), None)?;
            let lazy = drbdpool::node::lazy::LazyNode::new(&store, node);
            let mut ctx = drbdpool::protocol::Ctx::new(&store, &lazy);
            ctx.alloc_budget = Duration::from_millis(*budget_ms);
            drbdpool::protocol::finish::run(&ctx, storeid, volname, resource)?;
            return Ok(());
        }
        Cmd::UnfencePeer { resource, peer_node_id } => {
            let store = open_store(o)?;
            let node = cli::node_name(o.node.as_deref(), None)?;
            if let Some(n) = drbdpool::fence::unfence(&store, &node, resource, *peer_node_id, Duration::from_secs(10))? {
                eprintln!("drbdpool: {resource}: {n} is UpToDate again; outdated mark removed");
            }
            return Ok(());
        }
    };
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn main() {
    let o = Opts::parse();
    let level = match o.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_target(false).init();
    if let Cmd::Plugin { method } = &o.cmd {
        std::process::exit(cli::plugin::run(method, o.store.as_deref(), o.node.as_deref()));
    }
    if let Err(e) = run(&o) {
        eprintln!("drbdpool: {e}");
        std::process::exit(e.exit_code());
    }
}
