//! The benchmark's child processes, parent side: spawns `n` copies of this binary in a
//! worker mode (or `n` gloo workers under Python), turns their stdout into one stream of `(worker, line)`, and ends them
//! cleanly (`EXIT`, bounded wait) or, on every other path, kills and reaps them on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use pccl::secure::{ENCRYPT_VAR, SECRET_FILE_VAR, SECRET_VAR};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Child processes of one run. Dropping it kills and reaps every child still running.
pub(crate) struct Workers {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    lines: mpsc::Receiver<(usize, Option<String>)>,
    done: Vec<bool>,
}

impl Workers {
    /// Starts `n` workers with `args(rank)`; each gets `env` and none of the caller's
    /// run-secret variables (`PCCL_RUN_SECRET*`, `PCCL_ENCRYPT`), so a mode is exactly what
    /// the benchmark asked for.
    pub(crate) fn spawn(
        n: usize,
        env: &[(&'static str, String)],
        args: impl Fn(usize) -> Vec<String>,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locate own executable")?;
        Self::spawn_program(&exe, n, env, args)
    }

    /// [`Workers::spawn`], running `program` instead of this binary.
    pub(crate) fn spawn_program(
        exe: &Path,
        n: usize,
        env: &[(&'static str, String)],
        args: impl Fn(usize) -> Vec<String>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let mut w = Self {
            children: Vec::with_capacity(n),
            stdins: Vec::with_capacity(n),
            lines: rx,
            done: vec![false; n],
        };
        for i in 0..n {
            let mut cmd = Command::new(exe);
            for v in [SECRET_VAR, SECRET_FILE_VAR, ENCRYPT_VAR] {
                cmd.env_remove(v);
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            cmd.args(args(i))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if std::env::var_os("PCCL_LOG").is_none() {
                // Peers leaving at the end are expected; keep their warnings out of the table.
                cmd.env("PCCL_LOG", "error");
            }
            // On error `w` drops here and reaps the children spawned so far.
            let mut child = cmd
                .spawn()
                .with_context(|| format!("spawn worker {}", exe.display()))?;
            let stdout = child.stdout.take();
            w.stdins.push(child.stdin.take());
            w.children.push(child);
            let stdout = stdout.ok_or_else(|| anyhow!("worker stdout not piped"))?;
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("worker-{i}-stdout"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send((i, Some(line))).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send((i, None));
                })
                .context("spawn reader thread")?;
        }
        Ok(w)
    }

    /// The next stdout line of any worker (`None`: that worker closed its stdout).
    pub(crate) fn next(&self, deadline: Instant) -> Result<(usize, Option<String>)> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(left)
            .map_err(|_| anyhow!("timed out waiting for the workers"))
    }

    /// Feeds every line to `f` until all workers have printed `DONE`.
    pub(crate) fn collect(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(usize, &str) -> Result<()>,
    ) -> Result<()> {
        while self.done.iter().any(|d| !d) {
            let (w, line) = self.next(deadline)?;
            match line {
                Some(l) if l == "DONE" => self.done[w] = true,
                Some(l) => f(w, &l)?,
                None if !self.done[w] => {
                    let status = self.wait_one(w, Duration::from_secs(2));
                    bail!("worker {w} exited before finishing ({status}); see its stderr above");
                }
                None => {}
            }
        }
        Ok(())
    }

    pub(crate) fn send_all(&mut self, line: &str) -> Result<()> {
        for (i, s) in self.stdins.iter_mut().enumerate() {
            let s = s
                .as_mut()
                .ok_or_else(|| anyhow!("worker {i} stdin closed"))?;
            writeln!(s, "{line}")
                .and_then(|()| s.flush())
                .with_context(|| format!("write to worker {i}"))?;
        }
        Ok(())
    }

    /// Describes how worker `w` ended, waiting at most `timeout` for it.
    fn wait_one(&mut self, w: usize, timeout: Duration) -> String {
        match wait_timeout(&mut self.children[w], timeout) {
            Some(s) => s.to_string(),
            None => "still running".into(),
        }
    }

    /// Tells every worker to exit, then waits (bounded) for clean exits.
    pub(crate) fn finish(mut self, timeout: Duration) -> Result<()> {
        let _ = self.send_all("EXIT");
        self.stdins.clear();
        let deadline = Instant::now() + timeout;
        for (i, c) in self.children.iter_mut().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_timeout(c, left) {
                Some(s) if s.success() => {}
                Some(s) => bail!("worker {i} exited with {s}"),
                None => bail!("worker {i} did not exit within {timeout:?}"),
            }
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Polls `c` until it exits or `timeout` passes.
pub(crate) fn wait_timeout(c: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match c.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}
