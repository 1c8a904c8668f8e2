//! Failpoints: named places where a test can make the process die, to prove
//! that a crash between any two steps leaves a store the next call or the
//! agent completes or rolls back (docs/ARCHITECTURE.md, invariant 4).
//!
//! `DRBDPOOL_FAILPOINTS=name[=action][,name[=action]...]`, read once per process.
//! Actions:
//! - `exit` (default): print `drbdpool: failpoint <name> hit` on stderr and leave
//!   with exit code [`EXIT_CODE`] at once, without unwinding: no destructor
//!   runs, so locks stay held and temp files stay, exactly as after a SIGKILL.
//! - `sleep`: print the same line, then park forever (a test SIGKILLs the
//!   process, e.g. while it holds the cluster lock).
//! - `pause:MS`: print the same line, wait MS milliseconds, then go on: a window in
//!   which a test changes the world under a running call (the lab kills a peer
//!   between alloc's "peers ready" and its initial-sync skip, tests/vm/scenarios/crash_resync.py).
//!
//! Unset (production), `hit` costs one load of an initialized `OnceLock`.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Exit code of a process stopped at a failpoint (distinct from every error exit code).
pub const EXIT_CODE: i32 = 86;
pub const ENV: &str = "DRBDPOOL_FAILPOINTS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Exit,
    Sleep,
    Pause(u64),
}

/// Every failpoint compiled into drbdpool, in the order the operations pass them.
pub const ALL: &[&str] = &[
    "alloc.after-lock",
    "alloc.after-doc",
    "alloc.after-local-replica",
    "alloc.after-peers-ready",
    "alloc.after-skip-sync",
    "alloc.before-ready",
    "free.after-deleting",
    "free.after-local-remove",
    "free.before-doc-remove",
    "resize.after-doc",
    "resize.after-local-grow",
    "resize.before-drbd-grow",
    "activate.before-promote",
    "activate.after-promote",
    "snapshot.after-local",
    "snapshot.after-doc",
    "snapshot.after-peers",
    "snapshot-delete.after-doc",
    "snapshot-delete.after-local-remove",
    "rollback.after-mark",
    "rollback.after-discarded",
    "rollback.after-local-rollback",
    "rollback.before-clear",
    "agent.after-backing",
    "agent.after-resource-file",
    "agent.after-apply",
    "agent.before-publish",
    "agent.after-snapshot",
    "agent.after-discard",
    "replace.after-volume",
    "relocate.after-volume",
    "move.after-finish",
    "move.after-release-remove",
];

/// Parse the env value; unknown names are kept (a typo then simply never fires,
/// which `table` reports on stderr).
pub fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((n, "sleep")) => (n.trim().to_string(), Action::Sleep),
            Some((n, a)) if a.starts_with("pause:") => match a["pause:".len()..].parse() {
                Ok(ms) => (n.trim().to_string(), Action::Pause(ms)),
                // A malformed pause must not turn into a kill of the call under test.
                Err(_) => (n.trim().to_string(), Action::Pause(0)),
            },
            Some((n, _)) => (n.trim().to_string(), Action::Exit),
            None => (s.to_string(), Action::Exit),
        })
        .collect()
}

fn table() -> Option<&'static HashMap<String, Action>> {
    static T: OnceLock<Option<HashMap<String, Action>>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var(ENV).ok().filter(|v| !v.trim().is_empty())?;
        let t = parse(&v);
        for n in t.keys().filter(|n| !ALL.contains(&n.as_str())) {
            eprintln!("drbdpool: {ENV} names unknown failpoint {n:?} (known: {})", ALL.join(", "));
        }
        Some(t)
    })
    .as_ref()
}

/// Stop (or pause) the process here if the failpoint `name` is set.
pub fn hit(name: &str) {
    let Some(t) = table() else { return };
    let Some(a) = t.get(name) else { return };
    eprintln!("drbdpool: failpoint {name} hit ({a:?})");
    match a {
        Action::Exit => {
            use std::io::Write;
            let _ = std::io::stderr().flush();
            // _exit: no atexit handlers, no destructors, no buffered stdout: like a kill.
            unsafe { libc::_exit(EXIT_CODE) }
        }
        Action::Sleep => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        Action::Pause(ms) => std::thread::sleep(std::time::Duration::from_millis(*ms)),
    }
}

/// `failpoint!("alloc.after-doc")`: see the module docs.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::failpoint::hit($name)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_actions() {
        let t = parse(" alloc.after-doc , free.after-deleting=sleep,x=exit,y=pause:2500,z=pause:soon,,");
        assert_eq!(t.get("alloc.after-doc"), Some(&Action::Exit));
        assert_eq!(t.get("free.after-deleting"), Some(&Action::Sleep));
        assert_eq!(t.get("x"), Some(&Action::Exit));
        assert_eq!(t.get("y"), Some(&Action::Pause(2500)));
        assert_eq!(t.get("z"), Some(&Action::Pause(0)));
        assert_eq!(t.len(), 5);
        assert!(parse("").is_empty());
    }

    #[test]
    fn names_are_unique() {
        let mut v = ALL.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), ALL.len());
    }
}
