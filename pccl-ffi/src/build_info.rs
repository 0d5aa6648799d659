//! `pcclGetBuildInfo`.

use crate::handle::Out;
use crate::panic::ffi_boundary;
use crate::result::pcclResult_t;
use crate::types::pcclBuildInfo_t;

/// Writes facts about this build of the library to `*out`. This C library never accepts
/// CUDA memory, so `has_cuda_support` is false. Works before `pcclInit`, as in PCCL 1.0.
///
/// # Safety
///
/// `out` is NULL (`pcclInvalidArgument`) or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclGetBuildInfo(out: *mut pcclBuildInfo_t) -> pcclResult_t {
    ffi_boundary!(no_init, {
        let out = Out::new(out)?;
        // SAFETY: writable by the contract.
        unsafe {
            out.write(pcclBuildInfo_t {
                has_cuda_support: false,
            })
        };
        Ok(())
    })
}
