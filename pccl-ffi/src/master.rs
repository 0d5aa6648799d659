//! Functions acting on a master: create, run, interrupt, await termination, destroy.
//!
//! As in PCCL 1.0 none of them needs `pcclInit`: PCCL's own master program and its
//! Getting Started guide create and run a master without it.

use std::ffi::{CStr, c_char};
use std::sync::{Arc, Mutex};

use pccl::{MasterConfig, MasterNode};

use crate::handle::{BoxCastable, Out, handle_ref, into_handle, pcclMasterInstance_t, take_handle};
use crate::panic::ffi_boundary;
use crate::result::{FfiResult, pcclResult_t};
use crate::types::ccoip_socket_address_t;

/// The state behind a `pcclMasterInstance_t *`: the settings until `pcclRunMaster`, then
/// the running node.
#[derive(Debug)]
pub(crate) struct MasterState {
    phase: Mutex<Phase>,
}

#[derive(Debug)]
enum Phase {
    /// Not run yet: the settings, which the setters may still change.
    Created(Box<MasterConfig>),
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
            Phase::Created(_) => Err(pcclResult_t::pcclInvalidUsage),
        }
    }

    /// Changes the settings of a master not yet run (after `pcclRunMaster`:
    /// `pcclInvalidUsage`); settings that do not validate are `pcclInvalidArgument`
    /// (reason logged) and leave the old ones in place.
    fn reconfigure(&self, change: impl FnOnce(&mut MasterConfig)) -> FfiResult {
        let mut phase = self.phase();
        let Phase::Created(config) = &mut *phase else {
            tracing::error!("pccl: master settings must be changed before pcclRunMaster");
            return Err(pcclResult_t::pcclInvalidUsage);
        };
        let mut changed = (**config).clone();
        change(&mut changed);
        changed.validate().map_err(|e| {
            tracing::error!(error = %e, "pccl: master settings refused");
            pcclResult_t::from(e)
        })?;
        **config = changed;
        Ok(())
    }
}

/// Allocates a master that will listen on `listen_address` (port 0: any free port). No
/// I/O happens until `pcclRunMaster`. On success `*out` owns the master: free it with
/// `pcclDestroyMaster`. An unknown address protocol is `pcclInvalidArgument`. Like every
/// master function, it works without `pcclInit`, as in PCCL 1.0, and installs the
/// `PCCL_LOG` logger as `pcclInit` does.
///
/// pccl extension: the run secret and the encryption switch are read from the
/// environment here (`PCCL_RUN_SECRET` or `PCCL_RUN_SECRET_FILE`, not both; `PCCL_ENCRYPT=1`;
/// SECURITY.md §6); a refused value is `pcclInvalidArgument` with the reason logged at
/// error level. `pcclMasterSetRunSecret` and `pcclMasterSetEncrypt` override them.
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
        let mut config = MasterConfig::new(listen);
        let env = crate::secret::from_env()?;
        config.secret = env.secret;
        config.encrypt = env.encrypt;
        config.validate()?;
        let state = MasterState {
            phase: Mutex::new(Phase::Created(Box::new(config))),
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
        let Phase::Created(config) = &*phase else {
            return Err(pcclResult_t::pcclInvalidArgument);
        };
        *phase = Phase::Running(Arc::new(MasterNode::start((**config).clone())?));
        Ok(())
    })
}

/// pccl extension (not in PCCL 1.0): sets the run secret (SECURITY.md §6), a
/// NUL-terminated string of at least 16 bytes after trimming surrounding whitespace (at
/// most 4096). It replaces a secret read from the environment by `pcclCreateMaster`. With
/// a secret, only peers proving they hold the same one are admitted; a refused peer's
/// `pcclConnect` fails with `pcclMasterConnectionFailed`, and the master logs why. The
/// secret is never logged.
///
/// Call it after `pcclCreateMaster` and before `pcclRunMaster`; after it, it is
/// `pcclInvalidUsage`. NULL `master` or `secret` is `pcclInvalidArgument`, as is a
/// secret too short or too long (the reason is logged at error level).
///
/// # Safety
///
/// `master` is NULL or a live handle; `secret` is NULL or a readable NUL-terminated
/// string. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclMasterSetRunSecret(
    master: *mut pcclMasterInstance_t,
    secret: *const c_char,
) -> pcclResult_t {
    ffi_boundary!(no_init, {
        // SAFETY: forwarded contract.
        let state: &MasterState = unsafe { handle_ref(master)? };
        crate::handle::checked(secret)?;
        // SAFETY: non-null (checked) and a readable NUL-terminated string by the contract.
        let secret = unsafe { CStr::from_ptr(secret) };
        let secret = crate::secret::parse(secret.to_bytes())?;
        state.reconfigure(|config| config.secret = Some(secret))
    })
}

/// pccl extension (not in PCCL 1.0): with `encrypt` true, payloads are encrypted as well
/// as authenticated (SECURITY.md §6); peers must be set the same way. It replaces
/// `PCCL_ENCRYPT` read by `pcclCreateMaster`. Encryption needs a run secret: set it first;
/// `true` without one is `pcclInvalidArgument`.
///
/// Call it after `pcclCreateMaster` and before `pcclRunMaster`; after it, it is
/// `pcclInvalidUsage`. NULL `master` is `pcclInvalidArgument`.
///
/// # Safety
///
/// `master` is NULL or a live handle. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclMasterSetEncrypt(
    master: *mut pcclMasterInstance_t,
    encrypt: bool,
) -> pcclResult_t {
    ffi_boundary!(no_init, {
        // SAFETY: forwarded contract.
        let state: &MasterState = unsafe { handle_ref(master)? };
        state.reconfigure(|config| config.encrypt = encrypt)
    })
}

/// pccl extension (not in PCCL 1.0): serves the dashboard (`/`), `/metrics` (Prometheus)
/// and `/api/run` on `address` (README, "Watching a run"); port 0 picks a free port. Off
/// unless called. The endpoints are read-only and unauthenticated: bind loopback or a
/// private network. An address that cannot be bound makes `pcclRunMaster` fail with
/// `pcclInvalidUsage`.
///
/// Call it after `pcclCreateMaster` and before `pcclRunMaster`; after it, it is
/// `pcclInvalidUsage`. NULL `master` or `address`, or an unknown address protocol, is
/// `pcclInvalidArgument`.
///
/// # Safety
///
/// `master` is NULL or a live handle; `address` is NULL or readable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclMasterSetHttpAddress(
    master: *mut pcclMasterInstance_t,
    address: *const ccoip_socket_address_t,
) -> pcclResult_t {
    ffi_boundary!(no_init, {
        // SAFETY: forwarded contracts.
        let (state, address): (&MasterState, _) =
            unsafe { (handle_ref(master)?, crate::handle::read_in(address)?) };
        let address = address
            .to_socket_addr()
            .ok_or(pcclResult_t::pcclInvalidArgument)?;
        state.reconfigure(|config| config.http = Some(address))
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
