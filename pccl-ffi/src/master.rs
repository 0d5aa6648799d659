//! Functions acting on a master: create, run, interrupt, await termination, destroy.
//!
//! As in PCCL 1.0 none of them needs `pcclInit`: PCCL's own master program and its
//! Getting Started guide create and run a master without it.

use std::sync::{Arc, Mutex};

use pccl::{MasterConfig, MasterNode};

use crate::handle::{BoxCastable, Out, handle_ref, into_handle, pcclMasterInstance_t, take_handle};
use crate::panic::ffi_boundary;
use crate::result::pcclResult_t;
use crate::types::ccoip_socket_address_t;

/// The state behind a `pcclMasterInstance_t *`: the settings until `pcclRunMaster`, then
/// the running node.
#[derive(Debug)]
pub(crate) struct MasterState {
    config: MasterConfig,
    phase: Mutex<Phase>,
}

#[derive(Debug)]
enum Phase {
    Created,
    /// Shared so that awaiting termination need not hold the lock.
    Running(Arc<MasterNode>),
}

// SAFETY: `pcclMasterInstanceState_t` is a zero-sized marker that is never constructed.
unsafe impl BoxCastable for pcclMasterInstance_t {
    type Rust = MasterState;
}

impl MasterState {
    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running node; `pcclInvalidUsage` if it was never run.
    fn node(&self) -> Result<Arc<MasterNode>, pcclResult_t> {
        match &*self.phase() {
            Phase::Running(node) => Ok(node.clone()),
            Phase::Created => Err(pcclResult_t::pcclInvalidUsage),
        }
    }
}

/// Allocates a master that will listen on `listen_address` (port 0: any free port). No
/// I/O happens until `pcclRunMaster`. On success `*out` owns the master: free it with
/// `pcclDestroyMaster`. An unknown address protocol is `pcclInvalidArgument`. Like every
/// master function, it works without `pcclInit`, as in PCCL 1.0, and installs the
/// `PCCL_LOG` logger as `pcclInit` does.
///
/// # Safety
///
/// `out` is NULL (`pcclInvalidArgument`) or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclCreateMaster(
    listen_address: ccoip_socket_address_t,
    out: *mut *mut pcclMasterInstance_t,
) -> pcclResult_t {
    ffi_boundary!(no_init, {
        let out = Out::new(out)?;
        let listen = listen_address
            .to_socket_addr()
            .ok_or(pcclResult_t::pcclInvalidArgument)?;
        let config = MasterConfig::new(listen);
        config.validate()?;
        let state = MasterState {
            config,
            phase: Mutex::new(Phase::Created),
        };
        // SAFETY: writable by the contract.
        unsafe { out.write(into_handle(state)) };
        Ok(())
    })
}

/// Binds the listen address and starts serving on a background thread; returns at once.
/// Running a master a second time is `pcclInvalidArgument`; an address that cannot be
/// bound is `pcclInvalidUsage`.
///
/// # Safety
///
/// `master` is NULL or a live handle. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclRunMaster(master: *mut pcclMasterInstance_t) -> pcclResult_t {
    ffi_boundary!(no_init, {
        // SAFETY: forwarded contract.
        let state = unsafe { handle_ref(master)? };
        let mut phase = state.phase();
        if matches!(*phase, Phase::Running(_)) {
            return Err(pcclResult_t::pcclInvalidArgument);
        }
        *phase = Phase::Running(Arc::new(MasterNode::start(state.config.clone())?));
        Ok(())
    })
}

/// Asks a running master to stop; returns at once. Idempotent. A master that was never
/// run is `pcclInvalidUsage`.
///
/// # Safety
///
/// `master` is NULL or a live handle. Thread-safe: may be called while another thread
/// waits in `pcclMasterAwaitTermination`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclInterruptMaster(master: *mut pcclMasterInstance_t) -> pcclResult_t {
    ffi_boundary!(no_init, {
        // SAFETY: forwarded contract.
        let state = unsafe { handle_ref(master)? };
        state.node()?.interrupt();
        Ok(())
    })
}

/// Blocks until the master has stopped (after `pcclInterruptMaster`, from this or another
/// thread). A master that was never run is `pcclInvalidUsage`; a master that crashed
/// (its thread panicked: a bug, logged when it happened) is `pcclInternalError`.
///
/// # Safety
///
/// `master` is NULL or a live handle. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclMasterAwaitTermination(
    master: *mut pcclMasterInstance_t,
) -> pcclResult_t {
    ffi_boundary!(no_init, {
        // SAFETY: forwarded contract.
        let state = unsafe { handle_ref(master)? };
        state.node()?.await_termination()?;
        Ok(())
    })
}

/// Frees a master. A master still running is interrupted and awaited first.
///
/// # Safety
///
/// `master` is NULL (`pcclInvalidArgument`) or a live handle. No other call on it may run
/// concurrently or follow: the handle is dangling afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclDestroyMaster(master: *mut pcclMasterInstance_t) -> pcclResult_t {
    ffi_boundary!(no_init, {
        // SAFETY: by the contract this is the last use of the handle.
        let state = unsafe { take_handle(master)? };
        // Dropping a `MasterNode` interrupts it and joins its thread.
        drop(state);
        Ok(())
    })
}
