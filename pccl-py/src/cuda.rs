//! CUDA tensors, staged through pinned host memory (feature `cuda`).
//!
//! The core reads and writes host memory only. A CUDA tensor is copied to a page-locked
//! host buffer before an op (after a context synchronize, so pending kernels that write
//! it have finished) and copied back when the op has succeeded. The driver library is
//! opened at run time (cudarc's `dynamic-loading`), so this module builds without a CUDA
//! toolkit and [`is_available`] is simply false on a machine without a driver or GPU.
//! Torch allocates in each device's primary context; we use the same context.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{result, sys};

/// Whether a CUDA driver and at least one device are present. Never panics.
pub(crate) fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::panic::catch_unwind(|| {
            // SAFETY: only probes whether the driver library can be opened.
            let present = unsafe { sys::is_culib_present() };
            present && result::init().is_ok() && result::device::get_count().is_ok_and(|n| n > 0)
        })
        .unwrap_or(false)
    })
}

fn err(what: &str, e: impl std::fmt::Debug) -> pccl::Error {
    pccl::Error::Internal(format!("CUDA {what} failed: {e:?}"))
}

/// Runs `f`, turning a panic (e.g. a symbol missing from an old driver) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> pccl::Result<T>) -> pccl::Result<T> {
    if !is_available() {
        return Err(pccl::Error::InvalidUsage(
            "a CUDA tensor was given but no CUDA driver or device is available".into(),
        ));
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(err(what, crate::runtime::panic_message(&p))))
}

/// Makes device `ordinal`'s primary context current on this thread (retained once per
/// process and never released: torch keeps it alive anyway).
fn bind(ordinal: i32) -> pccl::Result<()> {
    static CONTEXTS: Mutex<Option<HashMap<i32, usize>>> = Mutex::new(None);
    let mut contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    let map = contexts.get_or_insert_with(HashMap::new);
    let ctx = match map.get(&ordinal) {
        Some(&c) => c,
        None => {
            let dev = result::device::get(ordinal).map_err(|e| err("cuDeviceGet", e))?;
            // SAFETY: `dev` was returned by cuDeviceGet.
            let ctx = unsafe { result::primary_ctx::retain(dev) }
                .map_err(|e| err("cuDevicePrimaryCtxRetain", e))?;
            map.insert(ordinal, ctx as usize);
            ctx as usize
        }
    };
    // SAFETY: `ctx` is a retained primary context that is never released.
    unsafe { result::ctx::set_current(ctx as sys::CUcontext) }
        .map_err(|e| err("cuCtxSetCurrent", e))
}

/// A page-locked host buffer.
#[derive(Debug)]
pub(crate) struct Pinned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain host memory owned by this value; nothing else aliases it.
unsafe impl Send for Pinned {}

impl Pinned {
    /// `len` uninitialised-then-zeroed bytes of pinned memory in `ordinal`'s context.
    pub(crate) fn new(ordinal: i32, len: usize) -> pccl::Result<Self> {
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        guarded("cuMemHostAlloc", || {
            bind(ordinal)?;
            // SAFETY: a fresh allocation of `len` bytes; zeroed below before any read.
            let ptr = unsafe { result::malloc_host(len, 0) }
                .map_err(|e| err("cuMemHostAlloc", e))? as *mut u8;
            // SAFETY: `ptr` points to `len` writable bytes just allocated.
            unsafe { std::ptr::write_bytes(ptr, 0, len) };
            Ok(Self { ptr, len })
        })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` owns `len` initialised bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from cuMemHostAlloc and is freed once.
            let _ = std::panic::catch_unwind(|| unsafe { result::free_host(self.ptr.cast()) });
        }
    }
}

/// Copies `dst.len()` bytes from device address `src` on `ordinal` into `dst`, after
/// every pending operation in the context has finished.
pub(crate) fn download(ordinal: i32, src: u64, dst: &mut Pinned) -> pccl::Result<()> {
    if dst.len == 0 {
        return Ok(());
    }
    guarded("download", || {
        bind(ordinal)?;
        result::ctx::synchronize().map_err(|e| err("cuCtxSynchronize", e))?;
        // SAFETY: `src` is the address of a live device tensor of at least `dst.len`
        // bytes (kept alive by the caller); `dst` owns that many host bytes.
        unsafe { sys::cuMemcpyDtoH_v2(dst.ptr.cast(), src, dst.len) }
            .result()
            .map_err(|e| err("cuMemcpyDtoH", e))
    })
}

/// Copies `src` to device address `dst` on `ordinal`; returns when the copy is complete.
pub(crate) fn upload(ordinal: i32, dst: u64, src: &[u8]) -> pccl::Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    guarded("upload", || {
        bind(ordinal)?;
        result::ctx::synchronize().map_err(|e| err("cuCtxSynchronize", e))?;
        // SAFETY: `dst` is the address of a live device tensor of at least `src.len()`
        // bytes (kept alive by the caller); `src` is readable host memory of that size.
        unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) }
            .result()
            .map_err(|e| err("cuMemcpyHtoD", e))?;
        result::ctx::synchronize().map_err(|e| err("cuCtxSynchronize", e))
    })
}
