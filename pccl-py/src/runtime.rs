//! How blocking calls run: the one threading policy of the module.
//!
//! Every blocking pccl call (connect, topology votes, all-reduce, shared-state sync,
//! waiting on the master) runs on a short-lived helper thread while the calling thread
//! waits for it **without the GIL**, in slices of at most [`SLICE`]. Between slices it
//! re-attaches and runs `Python::check_signals`, so Ctrl-C raises `KeyboardInterrupt`
//! within about [`SLICE`] instead of hanging, and other Python threads run meanwhile.
//!
//! The Python objects whose memory the call reads or writes travel with the work as
//! `Py<PyAny>` references and are dropped only when the work has ended, so nothing is
//! freed under a running op even if the caller was interrupted and moved on.
//!
//! Tokio runtimes are the core's: one per connected communicator and one per master,
//! created on their own threads. **Fork:** threads do not survive `fork()`, so a
//! communicator or master inherited by a forked child would wait forever. Each object
//! records the pid that created it and every call from another process raises
//! `InvalidUsageError`; create communicators after forking (e.g. in each
//! `multiprocessing` worker, or use the `spawn` start method).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::{check, invalid_usage};

/// Longest stretch a waiting caller goes without checking for signals.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// Python objects kept alive while a background op may touch their memory.
pub(crate) type KeepAlive = Vec<Py<PyAny>>;

/// Runs `work` on a helper thread and waits for it with the GIL released, checking for
/// signals between slices. A panic in `work` becomes an internal `PCCLError`. On a
/// signal the wait ends with the handler's exception and `work` finishes on its own.
pub(crate) fn blocking<R, F>(py: Python<'_>, keep: KeepAlive, work: F) -> PyResult<R>
where
    R: Send + 'static,
    F: FnOnce() -> pccl::Result<R> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("pccl-py-call".into())
        .spawn(move || {
            let out = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|p| {
                Err(pccl::Error::Internal(format!(
                    "panic in a pccl call: {}",
                    panic_message(&p)
                )))
            });
            // The work is over: its memory may be released now.
            drop(keep);
            let _ = tx.send(out);
        })
        .map_err(|e| crate::errors::internal(format!("cannot start a thread: {e}")))?;
    let mut rx = rx;
    loop {
        // The receiver moves in and out: `&Receiver` may not cross threads.
        let (step, back) = py.detach(move || (rx.recv_timeout(SLICE), rx));
        rx = back;
        match step {
            Ok(out) => return check(out),
            Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(crate::errors::internal(
                    "a pccl call ended without a result",
                ));
            }
        }
    }
}

/// Text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The process an object belongs to (see the module docs on fork).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner(u32);

impl Owner {
    pub(crate) fn current() -> Self {
        Self(std::process::id())
    }

    /// `InvalidUsageError` when called from a forked child.
    pub(crate) fn check(self, what: &str) -> PyResult<()> {
        if self.0 == std::process::id() {
            Ok(())
        } else {
            Err(invalid_usage(format!(
                "this {what} was created in process {} and cannot be used after fork(); \
                 create it in the child instead",
                self.0
            )))
        }
    }
}
