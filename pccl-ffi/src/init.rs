//! `pcclInit`, the flag every communicator function checks, and the process set-up (the
//! logger, `SIGPIPE`).

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::panic::ffi_boundary;
use crate::result::{FfiResult, pcclResult_t};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// `Err(pcclNotInitialized)` until `pcclInit` has run.
pub(crate) fn require_init() -> FfiResult {
    if INITIALIZED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(pcclResult_t::pcclNotInitialized)
    }
}

/// Sets up the process once, from whichever function a program calls first (`pcclInit`
/// and the functions that work without it: the master functions and `pcclGetBuildInfo`):
///
/// * installs the stderr logger at the level in `PCCL_LOG` (default `warn`), so a
///   master-only program logs like a Rust one; a logger the host program installed first
///   wins;
/// * ignores `SIGPIPE` if the program left it at its default: a write to a socket whose
///   other end has gone raises it, and by default it ends the process. The library's
///   socket writes ask the kernel not to raise it (`MSG_NOSIGNAL`,
///   `pccl/src/net/socket.rs`), so a peer that dies costs an op, never the program;
///   ignoring it covers what that cannot: platforms without `MSG_NOSIGNAL` and the
///   library's other writes (its log, should stderr be a closed pipe). Rust and Python
///   programs ignore it at start-up already; a program that handles it keeps its handler.
pub(crate) fn ensure_process_setup() {
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        pccl::init_logging();
        ignore_sigpipe();
    });
}

/// Sets `SIGPIPE` to "ignore" when it is at its default disposition.
fn ignore_sigpipe() {
    // SAFETY: `sigaction` with a null new action only reads the current one into `now`, a
    // zeroed struct (valid for it); the second call installs `SIG_IGN`, which runs no code
    // of ours, with an empty mask. Both only touch the structs passed.
    unsafe {
        let mut now: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &raw mut now) != 0
            || now.sa_sigaction != libc::SIG_DFL
        {
            return;
        }
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&raw mut ignore.sa_mask);
        if libc::sigaction(libc::SIGPIPE, &raw const ignore, std::ptr::null_mut()) != 0 {
            tracing::warn!("cannot ignore SIGPIPE: a peer that hangs up may end this process");
        }
    }
}

/// Initialises the library. Must precede every communicator function, which otherwise
/// returns `pcclNotInitialized`; the master functions and `pcclGetBuildInfo` do not need
/// it (as in PCCL 1.0).
///
/// Installs a logger writing to stderr at the level in the `PCCL_LOG` environment variable
/// (default `warn`; `PCCL_LOG=debug` also logs the reason behind every error code), and
/// sets `SIGPIPE` to be ignored if the program left it at its default, so that a peer
/// hanging up never ends the process (the master functions and `pcclGetBuildInfo` do the
/// same when a program calls them first; a `SIGPIPE` handler of the program's own stays).
/// Thread-safe and idempotent: calling it again, from any thread, returns `pcclSuccess`.
#[unsafe(no_mangle)]
pub extern "C" fn pcclInit() -> pcclResult_t {
    ffi_boundary!(no_init, {
        ensure_process_setup();
        INITIALIZED.store(true, Ordering::Release);
        Ok(())
    })
}
