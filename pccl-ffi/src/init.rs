//! `pcclInit`, the flag every communicator function checks, and the logger.

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

/// Installs the stderr logger at the level in `PCCL_LOG` (default `warn`), once per
/// process. Every function that a program may call first runs it (`pcclInit` and the
/// functions that work without it: the master functions and `pcclGetBuildInfo`), so a
/// master-only program logs like a Rust one. A logger the host program installed first
/// wins.
pub(crate) fn ensure_logging() {
    static LOGGING: Once = Once::new();
    LOGGING.call_once(pccl::init_logging);
}

/// Initialises the library. Must precede every communicator function, which otherwise
/// returns `pcclNotInitialized`; the master functions and `pcclGetBuildInfo` do not need
/// it (as in PCCL 1.0).
///
/// Installs a logger writing to stderr at the level in the `PCCL_LOG` environment variable
/// (default `warn`; `PCCL_LOG=debug` also logs the reason behind every error code).
/// Thread-safe and idempotent: calling it again, from any thread, returns `pcclSuccess`.
#[unsafe(no_mangle)]
pub extern "C" fn pcclInit() -> pcclResult_t {
    ffi_boundary!(no_init, {
        ensure_logging();
        INITIALIZED.store(true, Ordering::Release);
        Ok(())
    })
}
