//! `drbdpool plugin <method>`: the Perl shim's entry. Reads one request from
//! stdin, writes one reply to stdout; logs go to stderr only.

use std::io::{Read, Write};

use crate::error::Result;
use crate::node::LazyNode;
use crate::protocol::{self, Answer, Ctx, Reply};
use crate::store::Store;

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
        let mut ctx = Ctx::new(&store, &lazy);
        // Inside PVE's storage lock: record the volume, make the replicas after the call.
        if std::env::var("DRBDPOOL_CREATE_INLINE").map_or(true, |v| v != "1") {
            ctx.creation = protocol::Creation::Background;
        }
        protocol::dispatch_answer(&ctx, method, &req)
    })();
    if let Err(e) = &r {
        tracing::debug!("plugin {method}: {} error: {e}", e.kind());
    }
    r
}
