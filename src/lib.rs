//! drbdpool: the control plane joining DRBD (data path) and the Proxmox cluster
//! file system (cluster state). See docs/ARCHITECTURE.md for the map.

pub mod error;
pub mod failpoint;
pub mod fsio;
pub mod exec;
pub mod naming;
pub mod placement;
pub mod node;
pub mod ha;
pub mod doctor;
pub mod fence;
pub mod membership;
pub mod replace;
pub mod relocate;
pub mod recover;
pub mod check;
pub mod store;
pub mod protocol;
pub mod backend;
pub mod drbd;
pub mod agent;
pub mod cli;
pub mod metrics;
