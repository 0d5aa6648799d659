//! The panic boundary: no Rust panic crosses into C.
//!
//! Every exported function's body runs inside [`ffi_boundary!`]. A panic is caught there
//! and becomes `pcclInternalError` (the panic hook has already printed its message to
//! stderr). On current Rust a panic escaping an `extern "C"` function aborts the process;
//! a training job would rather get an error code and decide for itself.
//!
//! This relies on `panic = "unwind"` (the default): the workspace profiles must not set
//! `panic = "abort"`.

use crate::result::{FfiResult, pcclResult_t};

/// Runs `body` and turns its outcome into a result code, catching panics.
pub(crate) fn run_boundary(body: impl FnOnce() -> FfiResult) -> pcclResult_t {
    // AssertUnwindSafe: after a panic we only return a code. State shared across calls
    // sits behind mutexes whose poisoning every user tolerates (`into_inner`).
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => pcclResult_t::pcclSuccess,
        Ok(Err(code)) => code,
        Err(_) => pcclResult_t::pcclInternalError,
    }
}

/// Wraps an exported function's body: checks `pcclInit` (unless the body is marked
/// `no_init`: `pcclInit` itself, the master functions, `pcclGetBuildInfo`; those may come
/// first in a program and set the process up instead: `init::ensure_process_setup`),
/// catches panics, and maps `Err(code)` / `Ok(())` to the returned code.
/// Inside, `?` works on `FfiResult` and on `pccl::Result` values.
macro_rules! ffi_boundary {
    (no_init, $body:block) => {
        $crate::panic::run_boundary(|| -> $crate::result::FfiResult {
            $crate::init::ensure_process_setup();
            $body
        })
    };
    ($body:block) => {
        $crate::panic::run_boundary(|| -> $crate::result::FfiResult {
            $crate::init::require_init()?;
            $body
        })
    };
}

pub(crate) use ffi_boundary;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_internal_error() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = run_boundary(|| panic!("boom"));
        std::panic::set_hook(prev);
        assert_eq!(r, pcclResult_t::pcclInternalError);
        assert_eq!(run_boundary(|| Ok(())), pcclResult_t::pcclSuccess);
        assert_eq!(
            run_boundary(|| Err(pcclResult_t::pcclTooFewPeers)),
            pcclResult_t::pcclTooFewPeers
        );
    }
}
