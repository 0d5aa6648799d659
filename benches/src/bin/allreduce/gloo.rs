//! gloo in the same run (issue #14), parent side: finds a Python that can import torch
//! with gloo, and runs one world of `n` gloo workers (`benches/gloo_worker.py`, embedded
//! here) that report like the pccl workers, so the same reduction applies.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::Opts;
use crate::measure::{worker_args, world_budget};
use crate::reports::{Measured, Reports};
use crate::workers::{Workers, wait_timeout};

const SCRIPT: &str = include_str!("../../../gloo_worker.py");

/// Chooses the Python for gloo: `--python`, else `$PCCL_BENCH_PYTHON`, else the
/// repository's `.venv/bin/python` (where `pccl-py/scripts/setup.sh` installs torch, as
/// `pccl-py/scripts/test.sh` uses it), else `python3` on `PATH`.
pub(crate) fn python(flag: Option<&str>) -> PathBuf {
    if let Some(p) = flag {
        return p.into();
    }
    if let Some(p) = std::env::var_os("PCCL_BENCH_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// `Ok` when `python` imports numpy and torch with gloo; else one line saying why not.
pub(crate) fn probe(python: &Path) -> Result<(), String> {
    let check = "import numpy, torch.distributed as d; \
                 assert d.is_gloo_available(), 'torch was built without gloo'";
    let mut child = Command::new(python)
        .args(["-c", check])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let status = wait_timeout(&mut child, Duration::from_secs(120));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let err = reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!(
            "{} cannot import torch with gloo ({s}): {}",
            python.display(),
            err.lines().last().unwrap_or("no message")
        )),
        None => Err(format!(
            "{} took over 120 s to import torch",
            python.display()
        )),
    }
}

/// One world of gloo all-reduces: `n` Python workers, a `tcp://` rendezvous on loopback.
pub(crate) fn gloo_world(o: &Opts, n: usize, python: &Path) -> Result<BTreeMap<usize, Measured>> {
    // Free now; the race with another process taking it before rank 0 binds is accepted.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("pick a rendezvous port")?
        .port();
    // Importing torch takes seconds: a minute more than the Rust workers get.
    let budget = world_budget(o, n) + Duration::from_secs(60);
    let deadline = Instant::now() + budget;
    // Loopback only, like the others; one compute thread per process, like torch_backend.py.
    let env = [
        ("GLOO_SOCKET_IFNAME", "lo".into()),
        ("OMP_NUM_THREADS", "1".into()),
    ];
    let mut workers = Workers::spawn_program(python, n, &env, |rank| {
        let mut a: Vec<String> = vec!["-u".into(), "-c".into(), SCRIPT.into()];
        a.extend(["--init".into(), format!("tcp://127.0.0.1:{port}")]);
        a.extend(worker_args(o, n, rank, budget + Duration::from_secs(30)));
        a
    })?;
    let mut reports = Reports::new(n, o.iters);
    workers.collect(deadline, |w, line| reports.line(w, line))?;
    workers.finish(Duration::from_secs(10))?;
    reports.summarize(&o.sizes, true)
}
