//! `drbdpool plugin <method>`: the Perl shim's entry. Reads one request from
//! stdin, writes one reply to stdout; logs go to stderr only.

use std::cell::OnceCell;
use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::node::NodeOps;
use crate::protocol::{self, Answer, Ctx, Reply};
use crate::backend::{BackendSpec, Space};
use crate::store::docs::{VolumeDoc, VolumeObserved};
use crate::store::Store;

/// Builds the real node side only when a handler needs it: `status`, `path` and
/// `list` must answer in milliseconds and never run a tool.
pub struct LazyNode<'a> {
    name: String,
    store: &'a Store,
    inner: OnceCell<std::result::Result<Box<dyn NodeOps>, String>>,
}

impl<'a> LazyNode<'a> {
    pub fn new(store: &'a Store, name: String) -> Self {
        LazyNode { name, store, inner: OnceCell::new() }
    }
    fn get(&self) -> Result<&dyn NodeOps> {
        match self.inner.get_or_init(|| crate::node::local_node(self.store, &self.name).map_err(|e| e.to_string())) {
            Ok(b) => Ok(b.as_ref()),
            Err(e) => Err(Error::Other(anyhow::anyhow!("cannot set up the node side on {}: {e}", self.name))),
        }
    }
}

impl NodeOps for LazyNode<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn ensure_replica(&self, vol: &VolumeDoc) -> Result<VolumeObserved> {
        self.get()?.ensure_replica(vol)
    }
    fn remove_replica(&self, vol: &VolumeDoc) -> Result<()> {
        self.get()?.remove_replica(vol)
    }
    fn observe(&self, vol: &VolumeDoc) -> Result<Option<VolumeObserved>> {
        self.get()?.observe(vol)
    }
    fn kernel_view(&self, vol: &VolumeDoc) -> Result<Option<VolumeObserved>> {
        self.get()?.kernel_view(vol)
    }
    fn hold_creation(&self, vol: &VolumeDoc) -> Result<Option<Box<dyn std::any::Any>>> {
        self.get()?.hold_creation(vol)
    }
    fn promote(&self, vol: &VolumeDoc) -> Result<()> {
        self.get()?.promote(vol)
    }
    fn demote(&self, vol: &VolumeDoc) -> Result<()> {
        self.get()?.demote(vol)
    }
    fn grow_backing(&self, vol: &VolumeDoc) -> Result<()> {
        self.get()?.grow_backing(vol)
    }
    fn grow_drbd(&self, vol: &VolumeDoc) -> Result<()> {
        self.get()?.grow_drbd(vol)
    }
    fn skip_initial_sync(&self, vol: &VolumeDoc) -> Result<()> {
        self.get()?.skip_initial_sync(vol)
    }
    fn set_dual_primary(&self, vol: &VolumeDoc, on: bool) -> Result<()> {
        self.get()?.set_dual_primary(vol, on)
    }
    fn space(&self, b: &BackendSpec) -> Result<Space> {
        self.get()?.space(b)
    }
    fn snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.get()?.snapshot(vol, snap)
    }
    fn remove_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.get()?.remove_snapshot(vol, snap)
    }
    fn snapshot_path(&self, vol: &VolumeDoc, snap: &str) -> Result<Option<String>> {
        self.get()?.snapshot_path(vol, snap)
    }
    fn activate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<String> {
        self.get()?.activate_snapshot(vol, snap)
    }
    fn deactivate_snapshot(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.get()?.deactivate_snapshot(vol, snap)
    }
    fn rollback_source(&self, vol: &VolumeDoc, snap: &str) -> Result<()> {
        self.get()?.rollback_source(vol, snap)
    }
    fn discard_replica(&self, vol: &VolumeDoc) -> Result<()> {
        self.get()?.discard_replica(vol)
    }
}

/// Run one plugin call; returns the process exit code (0 ok, 1 error reply written).
pub fn run(method: &str, store_flag: Option<&std::path::Path>, node_flag: Option<&str>) -> i32 {
    let mut input = Vec::new();
    let (out, ok) = match std::io::stdin().read_to_end(&mut input) {
        Err(e) => encode(Reply::from_result(Err(crate::invalid!("cannot read the request from stdin: {e}")))),
        Ok(_) => match call(method, &input, store_flag, node_flag) {
            Ok(Answer::Json(json)) => (json, true),
            Ok(Answer::Value(v)) => encode(Reply::from_result(Ok(v))),
            Err(e) => encode(Reply::from_result(Err(e))),
        },
    };
    let mut so = std::io::stdout().lock();
    let _ = writeln!(so, "{out}");
    let _ = so.flush();
    // The process exits right after: freeing a 10,000-volume reply would only cost time.
    std::mem::forget(out);
    if ok { 0 } else { 1 }
}

fn encode(reply: Reply) -> (String, bool) {
    let out = serde_json::to_string(&reply).unwrap_or_else(|_| {
        r#"{"version":1,"ok":false,"error":{"kind":"internal","message":"cannot encode the reply"}}"#.to_string()
    });
    let ok = reply.ok;
    std::mem::forget(reply);
    (out, ok)
}

fn call(method: &str, input: &[u8], store_flag: Option<&std::path::Path>, node_flag: Option<&str>) -> Result<Answer> {
    let r = (|| {
        let req = protocol::parse_request(input)?;
        let node = super::node_name(node_flag, req.node.as_deref())?;
        let store = Store::open(Store::resolve_root(store_flag))?;
        let lazy = LazyNode::new(&store, node);
        let ctx = Ctx::new(&store, &lazy);
        protocol::dispatch_answer(&ctx, method, &req)
    })();
    if let Err(e) = &r {
        tracing::debug!("plugin {method}: {} error: {e}", e.kind());
    }
    r
}
