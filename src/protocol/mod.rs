//! `drbdpool plugin <method>`: one JSON request on stdin, one JSON reply on
//! stdout (docs/PROTOCOL.md). This module holds the wire types, argument
//! parsing and the dispatch; the handlers live in the sub-modules.

pub mod activate;
mod args;
mod query;
pub mod scfg;
pub mod snapshot;
pub mod finish;
mod volume;
mod wait;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::invalid;
use crate::node::NodeHandle;
use crate::store::Store;

pub use args::Args;

pub const VERSION: u32 = 1;

/// Every method the helper answers, in the order of docs/PROTOCOL.md.
pub const METHODS: &[&str] = &[
    "activate_storage",
    "status",
    "alloc",
    "free",
    "list",
    "path",
    "activate",
    "deactivate",
    "size",
    "resize",
    "snapshot",
    "snapshot_delete",
    "snapshot_rollback",
    "rollback_is_possible",
    "snapshot_list",
    "has_feature",
    "create_base",
    "clone",
    "rename",
    "export_formats",
    "import_formats",
];

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Request {
    pub version: u32,
    pub storeid: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub scfg: Map<String, Value>,
    #[serde(default)]
    pub args: Map<String, Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub kind: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<ErrorBody>,
}

impl Reply {
    pub fn from_result(r: Result<Value>) -> Reply {
        match r {
            Ok(v) => Reply { version: VERSION, ok: true, result: Some(v), error: None },
            Err(e) => Reply {
                version: VERSION,
                ok: false,
                result: None,
                error: Some(ErrorBody { kind: e.kind().to_string(), message: e.to_string() }),
            },
        }
    }
}

/// Everything a handler works with.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub node: &'a dyn NodeHandle,
    /// Bound for waiting on other nodes' agents (alloc, free, resize).
    pub peer_timeout: Duration,
    /// How often the store is re-read while waiting.
    pub poll: Duration,
    /// When this call started (the deadlines of alloc and clone count from here); None: when
    /// the handler starts (a Ctx used for several calls).
    pub started: Option<Instant>,
    /// How long an alloc or clone may take before it gives up and rolls back, counted from
    /// `started` (lock waits included): `peer_timeout`, at most ALLOC_BUDGET.
    pub alloc_budget: Duration,
    /// Where alloc and clone wait for the replicas (see `Creation`).
    pub creation: Creation,
}

/// Where an alloc or a linked clone makes its replicas after it has recorded the volume.
/// PVE holds its storage lock (cluster-wide for shared storage: 10 s to get it, 60 s to run)
/// around `alloc_image` and `clone_image`, so every second a call spends waiting for replicas
/// is a second every other alloc in the cluster waits: three parallel clones were enough for
/// "got lock request timeout" with linstor-proxmox (issue 16, "Many at once").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creation {
    /// In the call: it returns once every replica is ready (UpToDate on thin backing).
    /// Library callers and the handler tests.
    Inline,
    /// The call decides and records under the lock, starts `drbdpool finish-create` detached
    /// (it makes the local replica, waits for the peers, skips the initial sync and marks the
    /// volume ready, or rolls it back), and returns; activation waits for `ready`. What
    /// `drbdpool plugin` does unless `DRBDPOOL_CREATE_INLINE=1`.
    Background,
}

/// The budget of a creation finished in the background (`drbdpool finish-create`): outside
/// PVE's lock it may wait longer than an inline alloc, since many creations queue on the same
/// nodes (the peers' agents make replicas one after the other), but it stays well below the
/// agents' `create_expiry` (300 s), after which they roll back a volume still `creating`.
pub const BACKGROUND_CREATE_BUDGET: Duration = Duration::from_secs(150);

/// The longest an alloc (or clone) works before it gives up, from the start of the call. The
/// Perl shim kills the helper after 55 s (`%TIMEOUT` in perl-shim/PVE/Storage/Custom/DRBDPool/Helper.pm)
/// and PVE's storage lock allows 60 s; a failed alloc still has to roll back after this (the
/// document marked `deleting`, the local replica removed), which takes seconds on a loaded node.
pub const ALLOC_BUDGET: Duration = Duration::from_secs(30);
/// A failed alloc removes its local replica itself only if it is still this soon after its
/// deadline; later it leaves that to this node's agent (the document says `deleting`), so the
/// call returns well inside the shim's limit. The removal itself (drbdadm down, lvremove) is
/// then the last step and starts at the latest ALLOC_BUDGET + ROLLBACK_ALLOWANCE into the call.
pub const ROLLBACK_ALLOWANCE: Duration = Duration::from_secs(10);

impl<'a> Ctx<'a> {
    /// Peer timeout from `DRBDPOOL_PEER_TIMEOUT_SECS`, else 45 s (PVE's storage lock allows 60 s);
    /// alloc and clone give up earlier (ALLOC_BUDGET).
    pub fn new(store: &'a Store, node: &'a dyn NodeHandle) -> Ctx<'a> {
        let peer_timeout = std::env::var("DRBDPOOL_PEER_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| *s >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(45));
        Ctx {
            store,
            node,
            peer_timeout,
            poll: Duration::from_millis(200),
            started: Some(Instant::now()),
            alloc_budget: peer_timeout.min(ALLOC_BUDGET),
            creation: Creation::Inline,
        }
    }
}

/// Parse the raw request; a malformed one is an `invalid-input` error.
pub fn parse_request(input: &[u8]) -> Result<Request> {
    let v: Value = serde_json::from_slice(input).map_err(|e| invalid!("the request is not valid JSON: {e}"))?;
    let version = v.get("version").and_then(Value::as_u64);
    match version {
        None => return Err(invalid!("the request has no numeric 'version' (this helper speaks version {VERSION})")),
        Some(n) if n > VERSION as u64 => {
            return Err(invalid!("request version {n} is newer than this helper's protocol version {VERSION}: upgrade drbdpool on this node"))
        }
        Some(0) => return Err(invalid!("request version 0 is not valid (this helper speaks version {VERSION})")),
        _ => {}
    }
    serde_json::from_value(v).map_err(|e| invalid!("malformed request: {e} (expected {{version, storeid, node, scfg, args}})"))
}

/// The other replica nodes of `doc`, seen from this node.
fn peers_of(ctx: &Ctx, doc: &crate::store::docs::VolumeDoc) -> Vec<String> {
    doc.replicas.iter().map(|r| r.node.clone()).filter(|n| n != ctx.node.name()).collect()
}

/// Run one method. The store id is checked for every method.
pub fn dispatch(ctx: &Ctx, method: &str, req: &Request) -> Result<Value> {
    crate::naming::check_storeid(&req.storeid)?;
    let sid = req.storeid.as_str();
    let own_args = own_volname(ctx, sid, &req.args)?;
    let a = Args::new(own_args.as_ref().unwrap_or(&req.args));
    match method {
        "activate_storage" => query::activate_storage(ctx, sid, &req.scfg),
        "status" => query::status(ctx, sid, &req.scfg),
        // A new volume under invalid resync properties: refused (activate_storage only logs them).
        "alloc" => scfg::parse_resync(&req.scfg).and_then(|_| volume::alloc(ctx, sid, &scfg::StorageCfg::parse(&req.scfg)?, &a)),
        "free" => volume::free(ctx, sid, &a),
        "list" => query::list(ctx, sid, &a),
        "path" => query::path(ctx, sid, &a),
        "activate" => activate::activate(ctx, sid, &a),
        "deactivate" => activate::deactivate(ctx, sid, &a),
        "size" => query::size(ctx, sid, &a),
        "resize" => volume::resize(ctx, sid, &a),
        "snapshot" => snapshot::snapshot(ctx, sid, &a),
        "snapshot_delete" => snapshot::snapshot_delete(ctx, sid, &a),
        "snapshot_rollback" => snapshot::snapshot_rollback(ctx, sid, &a),
        "rollback_is_possible" => snapshot::rollback_is_possible(ctx, sid, &a),
        "snapshot_list" => snapshot::snapshot_list(ctx, sid, &a),
        "has_feature" => query::has_feature(ctx, sid, &scfg::StorageCfg::parse(&req.scfg)?, &a),
        "create_base" => volume::create_base(ctx, sid, &a),
        "clone" => volume::clone(ctx, sid, &a),
        "rename" => volume::rename(ctx, sid, &a),
        "export_formats" | "import_formats" => query::formats(ctx, sid, &a),
        other => Err(invalid!("unknown method '{other}': known methods are {}", METHODS.join(", "))),
    }
}

/// A successful reply around a typed result, serialized without a Value tree.
#[derive(Serialize)]
struct TypedReply<'a, T: Serialize> {
    version: u32,
    ok: bool,
    result: &'a T,
}

/// What `dispatch_answer` gives: a whole successful reply already serialized, or a result.
pub enum Answer {
    Json(String),
    Value(Value),
}

/// `dispatch` for `drbdpool plugin`: `list` without roles (PVE's hot listing) comes back
/// as a whole reply serialized from typed entries, because at 10,000 volumes building a
/// Value tree costs as much as reading the index; every other answer as a Value.
pub fn dispatch_answer(ctx: &Ctx, method: &str, req: &Request) -> Result<Answer> {
    if method != "list" {
        return dispatch(ctx, method, req).map(Answer::Value);
    }
    crate::naming::check_storeid(&req.storeid)?;
    match query::listing(ctx, &req.storeid, &Args::new(&req.args))? {
        query::Listing::Plain(r) => serde_json::to_string(&TypedReply { version: VERSION, ok: true, result: &r })
            .map(Answer::Json)
            .map_err(|e| Error::Other(anyhow::anyhow!("cannot encode the list: {e}"))),
        query::Listing::WithRoles(v) => Ok(Answer::Value(v)),
    }
}

/// Parse, dispatch, and wrap into a reply: what `drbdpool plugin <method>` prints.
pub fn handle(ctx: &Ctx, method: &str, input: &[u8]) -> Reply {
    let r = parse_request(input).and_then(|req| dispatch(ctx, method, &req));
    if let Err(e) = &r {
        tracing::debug!("{method} failed: {} ({})", e, e.kind());
    }
    Reply::from_result(r)
}

/// PVE names a linked clone `<base>/<volname>` (naming::pve_volname); the handlers work
/// with the volume's own name. Returns the args with `volname` replaced by it (None: the
/// name was plain). The base part must be the volume's parent: a wrong one is `not-found`,
/// as PVE's other plugins answer for a name that does not exist.
fn own_volname(ctx: &Ctx, sid: &str, args: &Map<String, Value>) -> Result<Option<Map<String, Value>>> {
    let Some(Value::String(name)) = args.get("volname") else { return Ok(None) };
    let (Some(base), own) = crate::naming::split_pve_volname(name)? else { return Ok(None) };
    if let Some(doc) = ctx.store.volume(sid, own)? {
        if doc.parent.as_deref() != Some(base) {
            return Err(Error::NotFound(format!(
                "volume {sid}:{name} does not exist: {sid}:{own} is {} (see `drbdpool volume list`)",
                match &doc.parent {
                    Some(p) => format!("a linked clone of {p}, not of {base}"),
                    None => "not a linked clone".to_string(),
                }
            )));
        }
    }
    let mut m = args.clone();
    m.insert("volname".into(), Value::String(own.to_string()));
    Ok(Some(m))
}

/// Load a volume's document or fail with `not-found` naming it.
pub(crate) fn load(ctx: &Ctx, storeid: &str, volname: &str) -> Result<crate::store::docs::VolumeDoc> {
    crate::naming::parse_volname(volname)?;
    ctx.store.volume(storeid, volname)?.ok_or_else(|| not_found(storeid, volname))
}

/// `load`, and for a volume still `creating` (its alloc or clone has returned and its replicas
/// are made after the call, protocol::finish) wait for it to be `ready` first, bounded by the
/// peer timeout: a guest started, a template made or a disk resized right after `qm create`
/// waits here instead of being refused. Still `creating` at the end: the caller refuses as
/// before (activate's `decide` says how to find out why).
pub(crate) fn load_created(ctx: &Ctx, storeid: &str, volname: &str) -> Result<crate::store::docs::VolumeDoc> {
    use crate::store::docs::VolumeState;
    let doc = load(ctx, storeid, volname)?;
    if doc.state != VolumeState::Creating {
        return Ok(doc);
    }
    let name = format!("{storeid}:{volname}");
    let mut cur = doc.clone();
    let nodes: Vec<String> = doc.replicas.iter().map(|r| r.node.clone()).collect();
    wait::until_done(ctx.peer_timeout, ctx.poll, &format!("{name} to be created"), || {
        cur = load(ctx, storeid, volname)?;
        if cur.state != VolumeState::Creating || cur.resource != doc.resource {
            return Ok(Vec::new());
        }
        // Whose replica is not there yet (all of them there: the sync skip is left). Each node by
        // its agent's report; this node also by its kernel, since its agent leaves a creation that
        // a finisher here is doing alone and publishes it only once that is over.
        let pubd = wait::published(ctx.store, &nodes, &doc.resource)?;
        let local = ctx.node.name();
        let here = || -> Result<bool> {
            Ok(ctx.node.ops()?.kernel_view(&cur)?.is_some_and(|o| crate::drbd::observe::attached(&o.disk)))
        };
        let mut waiting = Vec::new();
        for (n, o) in &pubd {
            if o.as_ref().is_some_and(|o| o.ready && o.generation >= cur.generation) || (n == local && here()?) {
                continue;
            }
            waiting.push(n.clone());
        }
        Ok(if waiting.is_empty() { vec![format!("the initial-sync skip on {}", doc.replicas[0].node)] } else { waiting })
    })?;
    if cur.resource != doc.resource {
        return Err(Error::NotFound(format!("volume {name} was rolled back and allocated again while this call waited for it")));
    }
    Ok(cur)
}

fn not_found(storeid: &str, volname: &str) -> Error {
    Error::NotFound(format!("volume {storeid}:{volname} does not exist (see `drbdpool volume list`)"))
}

/// `Store::update_volume` of a volume that must still exist (gone: the error of `load`).
pub(crate) fn update(
    ctx: &Ctx,
    at: &crate::store::docs::VolumeDoc,
    f: impl FnOnce(&mut crate::store::docs::VolumeDoc) -> Result<crate::store::Change>,
) -> Result<crate::store::docs::VolumeDoc> {
    ctx.store.update_volume(at, f)?.ok_or_else(|| not_found(&at.storeid, &at.volname))
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
