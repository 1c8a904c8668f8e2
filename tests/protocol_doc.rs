//! Replays every example of docs/PROTOCOL.md against the handlers (fake local
//! node pve1, fake agent on pve2, temp store) in document order, and compares
//! each reply with the documented one. `"<any>"` in a documented reply matches
//! any value (timestamps). Set DRBDPOOL_DOC_PRINT=1 to print the actual replies.

mod common;

use common::*;
use serde_json::Value;

struct Example {
    method: String,
    request: String,
    reply: String,
    line: usize,
}

fn examples(md: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = md.lines().enumerate();
    let mut pending: Option<(String, String, usize)> = None;
    while let Some((i, l)) = lines.next() {
        let info = l.trim();
        let Some(info) = info.strip_prefix("```json ") else { continue };
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        if let Some(m) = info.strip_prefix("request ") {
            assert!(pending.is_none(), "line {}: request without reply before it", i + 1);
            pending = Some((m.trim().to_string(), body, i + 1));
        } else if info == "reply" {
            let (method, request, line) = pending.take().unwrap_or_else(|| panic!("line {}: reply without request", i + 1));
            out.push(Example { method, request, reply: body, line });
        }
    }
    assert!(pending.is_none(), "a request without reply at the end");
    out
}

fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(s), _) if s == "<any>" => true,
        (Value::Object(a), Value::Object(b)) => a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|g| matches(v, g))),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| matches(x, y)),
        _ => want == got,
    }
}

#[test]
fn protocol_md_examples_replay() {
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let ex = examples(&md);
    let (_d, s) = store_with_nodes(&["pve1", "pve2"]);
    let _a = FakeAgents::spawn(&s, &["pve2"]);
    let n = FakeNode::new("pve1", &s);
    let c = ctx(&s, &n, 5000);
    let print = std::env::var_os("DRBDPOOL_DOC_PRINT").is_some();
    let mut seen = std::collections::BTreeSet::new();
    for e in &ex {
        let got = drbdpool::protocol::handle(&c, &e.method, e.request.as_bytes());
        let got = serde_json::to_value(&got).unwrap();
        if print {
            println!("--- {} (line {})\n{}", e.method, e.line, serde_json::to_string(&got).unwrap());
            continue;
        }
        let want: Value = serde_json::from_str(&e.reply).unwrap_or_else(|err| panic!("line {}: documented reply is not JSON: {err}", e.line));
        assert!(matches(&want, &got), "docs/PROTOCOL.md line {} ({}):\n documented: {want}\n actual:     {got}", e.line, e.method);
        seen.insert(e.method.clone());
    }
    if !print {
        for m in drbdpool::protocol::METHODS {
            assert!(seen.contains(*m), "docs/PROTOCOL.md has no example for {m}");
        }
    }
}
