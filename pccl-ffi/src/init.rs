//! `pcclInit` and the flag every communicator function checks.

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
        pccl::init_logging();
        INITIALIZED.store(true, Ordering::Release);
        Ok(())
    })
}
