//! The facts of a backend that the store's documents carry: its kind and location (a
//! VolumeDoc's `backend`, copied from storage.cfg at alloc time, so agents need no
//! storage.cfg) and the free space an agent publishes (NodeState's `storages`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Lvmthin,
    Lvm,
    File,
}

/// Where a node keeps the backing device of a replica. Copied from the
/// storage's storage.cfg properties at alloc time, so agents need no storage.cfg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BackendSpec {
    pub kind: BackendKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinpool: Option<String>,
    /// Directory of sparse image files (file backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// Free space of one storage on one node, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Space {
    pub total: u64,
    pub avail: u64,
    pub used: u64,
}
