//! PLACEHOLDER so the core branch compiles: the `node` engineer owns the real
//! agent (reconcile loop, LocalNode). The integrator takes their version.

use crate::error::{Error, Result};

pub struct AgentOpts {
    pub store: crate::store::Store,
    pub node: String,
    pub once: bool,
    pub interval: std::time::Duration,
}

pub fn run(_opts: AgentOpts) -> Result<()> {
    Err(Error::Other(anyhow::anyhow!("agent not built")))
}

pub fn local_node(_store: &crate::store::Store, _node: &str) -> Result<Box<dyn crate::node::NodeOps>> {
    Err(Error::Other(anyhow::anyhow!("agent not built")))
}
