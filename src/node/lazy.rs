//! `LazyNode`: the plugin's handle on this node. It builds the real node side
//! (`local_node`) only when a handler needs it: `status`, `path` and `list` must
//! answer in milliseconds and never run a tool, and they must answer even where the
//! node side cannot be set up (e.g. a wrong `DRBDPOOL_DRBD`).

use std::cell::OnceCell;

use super::{local_node, NodeHandle, NodeOps};
use crate::error::{Error, Result};
use crate::store::Store;

pub struct LazyNode<'a> {
    name: String,
    store: &'a Store,
    inner: OnceCell<std::result::Result<Box<dyn NodeOps>, String>>,
}

impl<'a> LazyNode<'a> {
    pub fn new(store: &'a Store, name: String) -> Self {
        LazyNode { name, store, inner: OnceCell::new() }
    }
}

impl NodeHandle for LazyNode<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn ops(&self) -> Result<&dyn NodeOps> {
        match self.inner.get_or_init(|| local_node(self.store, &self.name).map_err(|e| e.to_string())) {
            Ok(b) => Ok(b.as_ref()),
            Err(e) => Err(Error::Other(anyhow::anyhow!("cannot set up the node side on {}: {e}", self.name))),
        }
    }
}
