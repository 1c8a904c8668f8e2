//! The one seam for every external command (drbdadm, drbdsetup, lvm, losetup,
//! ha-manager, ...). Production code gets a `RealRunner`; tests get a
//! `RecordingRunner` that records each argv and replays scripted output, so
//! command sequences can be asserted exactly (testing tier 2).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// One command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment (the parent's environment is inherited).
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    /// Hard limit; the child is killed when it runs out.
    pub timeout: Duration,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd { program: program.into(), args: Vec::new(), env: Vec::new(), stdin: None, timeout: Duration::from_secs(30) }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// `program arg arg ...`, for logs and error messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

/// What a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(stdout: impl Into<String>) -> Self {
        Output { status: 0, stdout: stdout.into(), stderr: String::new() }
    }
    pub fn fail(status: i32, stderr: impl Into<String>) -> Self {
        Output { status, stdout: String::new(), stderr: stderr.into() }
    }
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

pub trait Runner: Send + Sync {
    /// Run the command and return its output whatever the exit status.
    /// Errors only when it could not be started or timed out.
    fn run(&self, cmd: &Cmd) -> Result<Output>;

    /// Run and turn a non-zero exit status into `Error::Tool` naming the command and its stderr.
    fn check(&self, cmd: &Cmd) -> Result<Output> {
        let out = self.run(cmd)?;
        if out.success() {
            Ok(out)
        } else {
            Err(Error::Tool(format!(
                "`{}` failed (exit {}): {}",
                cmd.display(),
                out.status,
                out.stderr.trim()
            )))
        }
    }
}

/// Runs commands for real, with a hard timeout.
#[derive(Clone, Debug, Default)]
pub struct RealRunner;

impl Runner for RealRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output> {
        tracing::debug!(cmd = %cmd.display(), "exec");
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args)
            .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        let mut child = c
            .spawn()
            .map_err(|e| Error::Tool(format!("cannot run `{}`: {e} (is it installed and in PATH?)", cmd.program)))?;
        if let Some(data) = &cmd.stdin {
            let mut sin = child.stdin.take().expect("stdin piped");
            let data = data.clone();
            std::thread::spawn(move || {
                let _ = sin.write_all(&data);
            });
        }
        // Drain pipes on threads so a chatty child cannot block on a full pipe.
        let mut so = child.stdout.take().expect("stdout piped");
        let mut se = child.stderr.take().expect("stderr piped");
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = so.read_to_end(&mut b);
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = se.read_to_end(&mut b);
            b
        });
        let start = Instant::now();
        // Back off from 1 ms to 10 ms: quick commands return at once, slow ones do not
        // cost hundreds of wake-ups a second (that shows on a slow single-CPU guest).
        let mut nap = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {
                    if start.elapsed() >= cmd.timeout {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(Error::Timeout(format!(
                            "`{}` did not finish within {:?} and was killed",
                            cmd.display(),
                            cmd.timeout
                        )));
                    }
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
                Err(e) => return Err(Error::Tool(format!("waiting for `{}`: {e}", cmd.display()))),
            }
        };
        tracing::debug!(cmd = %cmd.program, ms = start.elapsed().as_millis() as u64, "exec done");
        let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Ok(Output { status: code, stdout, stderr })
    }
}

/// Run a long-lived command (e.g. `drbdsetup events2`) and hand each stdout line
/// to `on_line` until it returns false or the command ends. The other half of
/// the seam: `Runner` is for commands that finish.
pub fn stream_lines(cmd: &Cmd, mut on_line: impl FnMut(&str) -> bool) -> Result<()> {
    use std::io::BufRead;
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let mut child = c
        .spawn()
        .map_err(|e| Error::Tool(format!("cannot run `{}`: {e} (is it installed and in PATH?)", cmd.program)))?;
    let out = child.stdout.take().expect("stdout piped");
    for line in std::io::BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if !on_line(&line) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// Records every command; answers from a script of (argv-prefix, output) rules,
/// first match wins, unmatched commands succeed with empty output.
#[derive(Clone, Default)]
pub struct RecordingRunner {
    inner: Arc<Mutex<Recording>>,
}

#[derive(Default)]
struct Recording {
    calls: Vec<Cmd>,
    rules: Vec<(Vec<String>, Output, bool)>, // (prefix, output, once)
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }
    /// Answer commands whose argv (program first) starts with `prefix`.
    pub fn on(&self, prefix: &[&str], out: Output) -> &Self {
        self.inner.lock().unwrap().rules.push((prefix.iter().map(|s| s.to_string()).collect(), out, false));
        self
    }
    /// Like `on`, but the rule is used only once (for sequences of different answers).
    pub fn once(&self, prefix: &[&str], out: Output) -> &Self {
        self.inner.lock().unwrap().rules.push((prefix.iter().map(|s| s.to_string()).collect(), out, true));
        self
    }
    /// Every argv run so far, as `program arg ...` strings.
    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().calls.iter().map(Cmd::display).collect()
    }
    pub fn cmds(&self) -> Vec<Cmd> {
        self.inner.lock().unwrap().calls.clone()
    }
    pub fn clear(&self) {
        self.inner.lock().unwrap().calls.clear();
    }
}

impl Runner for RecordingRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output> {
        let mut g = self.inner.lock().unwrap();
        g.calls.push(cmd.clone());
        let argv: Vec<&str> = std::iter::once(cmd.program.as_str()).chain(cmd.args.iter().map(String::as_str)).collect();
        let hit = g.rules.iter().position(|(p, _, _)| p.len() <= argv.len() && p.iter().zip(&argv).all(|(a, b)| a == b));
        match hit {
            Some(i) => {
                let out = g.rules[i].1.clone();
                if g.rules[i].2 {
                    g.rules.remove(i);
                }
                Ok(out)
            }
            None => Ok(Output::ok("")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_runner_captures_output_and_status() {
        let out = RealRunner.run(&Cmd::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"])).unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn real_runner_kills_on_timeout() {
        let err = RealRunner.run(&Cmd::new("sleep").arg("5").timeout(Duration::from_millis(100))).unwrap_err();
        assert_eq!(err.kind(), "timeout");
    }

    #[test]
    fn stream_lines_hands_over_each_line_and_stops_when_asked() {
        let mut got = Vec::new();
        stream_lines(&Cmd::new("sh").args(["-c", "echo a; echo b; sleep 30; echo c"]), |l| {
            got.push(l.to_string());
            got.len() < 2
        })
        .unwrap();
        assert_eq!(got, vec!["a", "b"]);
    }

    #[test]
    fn check_reports_command_and_stderr() {
        let r = RecordingRunner::new();
        r.on(&["lvs"], Output::fail(5, "Volume group \"x\" not found"));
        let e = r.check(&Cmd::new("lvs").arg("x")).unwrap_err().to_string();
        assert!(e.contains("`lvs x` failed (exit 5)") && e.contains("not found"), "{e}");
        assert_eq!(r.calls(), vec!["lvs x"]);
    }
}
