//! Opaque handles and pointer checks.
//!
//! A handle the C side holds (`pcclComm_t *`, `pcclMasterInstance_t *`) is a `Box` of the
//! Rust state behind it, cast to a pointer to a zero-sized, non-`repr(C)` struct that
//! cbindgen declares as an incomplete type. [`BoxCastable`] ties each such struct to its
//! Rust state, so a pointer can only be turned back into the type it was made from.
//! Every helper here rejects NULL and misaligned pointers with `pcclInvalidArgument`;
//! dangling pointers cannot be detected and are the caller's contract (see each
//! function's `# Safety`).

#![allow(non_camel_case_types)]

use std::ptr::NonNull;

use crate::result::pcclResult_t;

/// A communicator: a peer's handle on the run. Created by `pcclCreateCommunicator`,
/// freed by `pcclDestroyCommunicator`.
#[derive(Debug)]
pub struct pcclComm_t {
    _private: [u8; 0],
}

/// A master node. Created by `pcclCreateMaster`, freed by `pcclDestroyMaster`.
#[derive(Debug)]
pub struct pcclMasterInstanceState_t {
    _private: [u8; 0],
}

/// PCCL's name for a master handle.
pub type pcclMasterInstance_t = pcclMasterInstanceState_t;

/// Information about a rank. Declared for source compatibility; no function uses it yet.
#[derive(Debug)]
pub struct pcclRankInfo_t {
    _private: [u8; 0],
}

/// An opaque C handle type owning a `Box<Self::Rust>`.
///
/// # Safety
///
/// Implement it only for zero-sized marker structs that are never constructed, so a
/// pointer to one is always a pointer made by [`into_handle`].
pub(crate) unsafe trait BoxCastable {
    /// The Rust state behind the handle.
    type Rust;
}

/// Hands ownership of `value` to the C side.
pub(crate) fn into_handle<C: BoxCastable>(value: C::Rust) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// Borrows the state behind a handle.
///
/// # Safety
///
/// `ptr` is NULL or came from [`into_handle::<C>`] and has not been freed since, and no
/// call frees it while the borrow lives.
pub(crate) unsafe fn handle_ref<'a, C: BoxCastable>(
    ptr: *const C,
) -> Result<&'a C::Rust, pcclResult_t> {
    let ptr = checked(ptr.cast::<C::Rust>())?;
    // SAFETY: by the contract, a non-null `ptr` points to a live `C::Rust` in a Box we
    // made; we only hand out shared references (the states are `Sync`).
    Ok(unsafe { ptr.as_ref() })
}

/// Takes ownership of the state behind a handle back from the C side.
///
/// # Safety
///
/// As [`handle_ref`], and no other call uses the handle during or after this one.
pub(crate) unsafe fn take_handle<C: BoxCastable>(
    ptr: *mut C,
) -> Result<Box<C::Rust>, pcclResult_t> {
    let ptr = checked(ptr.cast_const().cast::<C::Rust>())?;
    // SAFETY: by the contract, the pointer came from `Box::into_raw` in `into_handle` and
    // this is its only owner from now on.
    Ok(unsafe { Box::from_raw(ptr.as_ptr()) })
}

/// Rejects NULL and misaligned pointers.
pub(crate) fn checked<T>(ptr: *const T) -> Result<NonNull<T>, pcclResult_t> {
    if !ptr.is_aligned() {
        return Err(pcclResult_t::pcclInvalidArgument);
    }
    NonNull::new(ptr.cast_mut()).ok_or(pcclResult_t::pcclInvalidArgument)
}

/// Reads a caller's input struct.
///
/// # Safety
///
/// `ptr` is NULL or points to a readable, initialised `T`.
pub(crate) unsafe fn read_in<T: Copy>(ptr: *const T) -> Result<T, pcclResult_t> {
    let ptr = checked(ptr)?;
    // SAFETY: non-null and aligned (checked); readable and initialised by the contract.
    Ok(unsafe { ptr.read() })
}

/// An output location checked up front, written once the call has its result.
#[derive(Debug)]
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// Checks a required output pointer.
    pub(crate) fn new(ptr: *mut T) -> Result<Self, pcclResult_t> {
        checked(ptr.cast_const()).map(Self)
    }

    /// Checks an optional (`NULLABLE`) output pointer: NULL means "not wanted".
    pub(crate) fn optional(ptr: *mut T) -> Result<Option<Self>, pcclResult_t> {
        if ptr.is_null() {
            Ok(None)
        } else {
            Self::new(ptr).map(Some)
        }
    }

    /// Stores `value`.
    ///
    /// # Safety
    ///
    /// The pointer given to `new` points to memory writable as a `T`.
    pub(crate) unsafe fn write(self, value: T) {
        // SAFETY: non-null and aligned (checked in `new`); writable by the contract. `write`
        // does not drop the old contents, which may be uninitialised.
        unsafe { self.0.as_ptr().write(value) }
    }
}
