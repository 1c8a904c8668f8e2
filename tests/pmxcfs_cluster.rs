//! The tier-4 cluster harness itself (tests/pvecluster/mod.rs) on real corosync + QDevice + pmxcfs:
//! it comes up quorate, replicates, and a cut leaves the cut node without quorum and the other with it.

#[path = "pvecluster/mod.rs"]
mod pvecluster;

use std::time::{Duration, Instant};

use pvecluster::{secs, wait_until, Cluster, Opts};

#[test]
fn cluster_replicates_and_a_cut_splits_quorum() {
    let Some(c) = Cluster::start(Opts::default()) else { return };
    // A write on pve1 is readable on pve2.
    std::fs::write(c.path(1, "/etc/pve/priv/hello"), "from pve1").unwrap();
    let t = wait_until("pve1's write visible on pve2", Duration::from_secs(5), || {
        std::fs::read_to_string(c.path(2, "/etc/pve/priv/hello")).is_ok_and(|s| s == "from pve1")
    });
    eprintln!("replicated in {}", secs(t));
    // drbdpool runs inside the node with the store at its production path and the hostname as node name.
    let o = c.drbdpool(2, &["node", "add", "pve2", "--address", "10.213.0.2"], &[]);
    assert!(o.ok(), "{o}");
    assert!(c.path(1, "/etc/pve/priv/drbdpool/nodes/pve2.json").exists());

    let cut = Instant::now();
    c.cut(1);
    let t2 = wait_until("pve2 quorate alone (with the QDevice), pve1 not quorate", Duration::from_secs(60), || {
        c.quorum(2) == (true, 1) && !c.quorate(1)
    });
    eprintln!("quorum split {} after the cut; members on pve2: {:?}", secs(t2), c.members(2));
    assert!(std::fs::write(c.path(1, "/etc/pve/priv/x"), "x").is_err(), "pve1 without quorum must not write");
    c.heal(1);
    let t3 = wait_until("both quorate again", Duration::from_secs(60), || c.quorum(1) == (true, 2) && c.quorum(2) == (true, 2));
    eprintln!("quorate again {} after the heal (cut at {})", secs(t3), secs(cut.elapsed()));
}
