//! Child processes: spawn, signal, reap, and never leave one behind.
//!
//! Every child runs in its own process group and is registered in `GROUPS`; dropping a
//! [`Proc`], the panic hook and the SIGINT/SIGTERM thread all kill whole groups with
//! SIGKILL (which also ends stopped processes). Children also get `PR_SET_PDEATHSIG`, so a
//! harness killed with -9 takes them along, and workers exit on stdin EOF.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Process groups of live children.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Cleanup to run when the harness is interrupted or panics (WAN teardown).
static ON_ABORT: Mutex<Option<Box<dyn Fn() + Send>>> = Mutex::new(None);

fn groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `sig` to one process.
pub(crate) fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// SIGKILLs every registered group (idempotent; safe from a panic hook or signal thread).
pub(crate) fn kill_all() {
    for g in groups().iter() {
        signal(-*g, libc::SIGKILL);
    }
}

/// Registers what to undo when the harness dies abnormally.
pub(crate) fn set_on_abort(f: Option<Box<dyn Fn() + Send>>) {
    *ON_ABORT.lock().unwrap_or_else(|e| e.into_inner()) = f;
}

fn run_on_abort() {
    if let Some(f) = ON_ABORT.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        f();
    }
}

/// Installs the panic hook and the SIGINT/SIGTERM thread. Call once, before any spawn.
pub(crate) fn install_guards() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        run_on_abort();
        prev(info);
    }));
    std::thread::spawn(|| {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("pccl-stress: no signal thread: {e}");
                return;
            }
        };
        let which = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return "none";
            };
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        });
        if which == "none" {
            return;
        }
        eprintln!("pccl-stress: {which}: killing every child and tearing down");
        kill_all();
        run_on_abort();
        std::process::exit(130);
    });
}

/// A running child with its own process group.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) pid: i32,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` in a new process group. Each stdout line goes to `lines` as
    /// `(tag, line)`; stderr is appended to `stderr_to`, so a restarted master or a
    /// slot's next peer keeps the log of the one before.
    pub(crate) fn spawn(
        mut cmd: Command,
        tag: u32,
        lines: Sender<(u32, String)>,
        stderr_to: &std::path::Path,
    ) -> Result<Self> {
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_to)
            .with_context(|| format!("opening {}", stderr_to.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .process_group(0);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between
        // fork and exec. The death signal fires when the spawning thread ends: every spawn
        // happens on the harness's main thread, which lives as long as the harness.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("spawning a child")?;
        let pid = child.id() as i32;
        groups().push(pid);
        let out = child.stdout.take().context("child stdout")?;
        let stdin = child.stdin.take();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if lines.send((tag, line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            pid,
            stdin,
            status: None,
        })
    }

    pub(crate) fn signal(&self, sig: i32) -> bool {
        self.status.is_none() && signal(self.pid, sig)
    }

    /// The exit status, once the child has ended (reaps it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        if let Ok(Some(st)) = self.child.try_wait() {
            // Once reaped, the pid (and group id) may be reused: stop signalling it. Our
            // children never fork (`ip netns exec` execs), and the final /proc scan would
            // catch anything left in the group.
            self.status = Some(st);
            groups().retain(|g| *g != self.pid);
        }
        self.status
    }

    /// Kills the whole group and reaps the child, waiting at most `limit`.
    pub(crate) fn kill(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        signal(-self.pid, libc::SIGKILL);
        self.wait(limit)
    }

    /// Waits at most `limit` for the child to end.
    pub(crate) fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill(Duration::from_secs(5));
    }
}

/// Processes whose command line contains `token` (our run id), other than us.
pub(crate) fn leftovers(token: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(token) {
            out.push((pid, cmd));
        }
    }
    out
}

/// A describable exit status.
pub(crate) fn describe(st: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}
