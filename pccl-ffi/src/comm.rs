//! Functions acting on a communicator: create, connect, topology, attributes, destroy.
//! The collectives are in `reduce.rs` and the shared-state sync in `shared_state.rs`.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::sync::{Arc, Mutex, MutexGuard};

use pccl::{AsyncReduce, Attribute, Communicator, CommunicatorConfig};

use crate::handle::{BoxCastable, Out, handle_ref, into_handle, pcclComm_t, read_in, take_handle};
use crate::panic::ffi_boundary;
use crate::reduce::RawBuffers;
use crate::result::{FfiResult, pcclResult_t};
use crate::types::{RawAttribute, ccoip_socket_address_t, pcclAttribute_t, pcclCommCreateParams_t};

/// The state behind a `pcclComm_t *`.
#[derive(Debug)]
pub(crate) struct CommState {
    peer: Mutex<Peer>,
    /// Async all-reduces started and not yet awaited, by tag.
    async_ops: Mutex<HashMap<u64, AsyncReduce<RawBuffers>>>,
}

/// The communicator and the settings it was made with. Until `pcclConnect` a setter may
/// replace the communicator by one with changed settings (it has no I/O yet, so nothing
/// is lost); from `pcclConnect` on it stays.
#[derive(Debug)]
struct Peer {
    comm: Arc<Communicator>,
    config: CommunicatorConfig,
    connect_called: bool,
}

impl CommState {
    fn peer(&self) -> MutexGuard<'_, Peer> {
        self.peer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The communicator. Cheap: calls hold their own reference, not the lock.
    pub(crate) fn comm(&self) -> Arc<Communicator> {
        self.peer().comm.clone()
    }

    /// Changes settings before `pcclConnect` (after it: `pcclInvalidUsage`) by replacing
    /// the communicator, which has no I/O yet. Settings that do not validate are
    /// `pcclInvalidArgument` (reason logged) and leave the old ones in place.
    fn reconfigure(&self, change: impl FnOnce(&mut CommunicatorConfig)) -> FfiResult {
        let mut peer = self.peer();
        if peer.connect_called {
            tracing::error!("pccl: settings must be changed before pcclConnect");
            return Err(pcclResult_t::pcclInvalidUsage);
        }
        let mut config = peer.config.clone();
        change(&mut config);
        let comm = Communicator::new(config.clone()).map_err(|e| {
            tracing::error!(error = %e, "pccl: communicator settings refused");
            pcclResult_t::from(e)
        })?;
        peer.comm = Arc::new(comm);
        peer.config = config;
        Ok(())
    }

    pub(crate) fn async_ops(&self) -> MutexGuard<'_, HashMap<u64, AsyncReduce<RawBuffers>>> {
        self.async_ops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// SAFETY: `pcclComm_t` is a zero-sized marker that is never constructed.
unsafe impl BoxCastable for pcclComm_t {
    type Rust = CommState;
}

/// Borrows a communicator handle (NULL or misaligned: `pcclInvalidArgument`).
///
/// # Safety
///
/// `comm` is NULL or a live handle from `pcclCreateCommunicator`.
pub(crate) unsafe fn comm_ref<'a>(comm: *const pcclComm_t) -> Result<&'a CommState, pcclResult_t> {
    // SAFETY: forwarded contract.
    unsafe { handle_ref(comm) }
}

/// Allocates a communicator; no I/O happens until `pcclConnect`.
///
/// `params->p2p_connection_pool_size` 0 means 1; more than 1024 is `pcclInvalidArgument`,
/// as are an unknown address protocol and port 0.
///
/// pccl extension: the run secret and the encryption switch are read from the
/// environment here (`PCCL_RUN_SECRET` or `PCCL_RUN_SECRET_FILE`, not both; `PCCL_ENCRYPT=1`;
/// SECURITY.md §6); a refused value (too short, unreadable file, both set, encryption
/// without a secret) is `pcclInvalidArgument` with the reason logged at error level.
/// `pcclCommSetRunSecret` and `pcclCommSetEncrypt` override them. On success `*comm_out` owns the
/// communicator: free it with `pcclDestroyCommunicator`. On failure `*comm_out` is
/// untouched.
///
/// # Safety
///
/// `params` is NULL or points to a readable `pcclCommCreateParams_t`; `comm_out` is NULL
/// or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclCreateCommunicator(
    params: *const pcclCommCreateParams_t,
    comm_out: *mut *mut pcclComm_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: readable by the contract.
        let params = unsafe { read_in(params)? };
        let out = Out::new(comm_out)?;
        let master = params
            .master_address
            .to_socket_addr()
            .ok_or(pcclResult_t::pcclInvalidArgument)?;
        let mut config = CommunicatorConfig::new(master);
        config.peer_group = params.peer_group;
        config.pool_size = (params.p2p_connection_pool_size as usize).max(1);
        let env = crate::secret::from_env()?;
        config.secret = env.secret;
        config.encrypt = env.encrypt;
        let comm = Arc::new(Communicator::new(config.clone())?);
        let state = CommState {
            peer: Mutex::new(Peer {
                comm,
                config,
                connect_called: false,
            }),
            async_ops: Mutex::new(HashMap::new()),
        };
        // SAFETY: writable by the contract.
        unsafe { out.write(into_handle(state)) };
        Ok(())
    })
}

/// pccl extension (not in PCCL 1.0): sets the address this peer's p2p listener binds,
/// which serves ring data, shared-state transfers and bandwidth tests from the other peers.
/// `address->port` is the first port tried (if it is taken, the next ones are, up to 1000
/// further); port 0 takes any free port. Without this call the listener binds `0.0.0.0`
/// from port 48150 on, as in PCCL 1.0. Bind a loopback or private address when the run's
/// hosts can reach it (see SECURITY.md, "Deployment advice"); the master gives the other
/// peers the address it sees this peer connect from, so that address must reach the
/// listener.
///
/// Call it after `pcclCreateCommunicator` and before `pcclConnect`; after `pcclConnect` it
/// is `pcclInvalidUsage`. NULL `comm` or `address` and an unknown address protocol are
/// `pcclInvalidArgument`. An address that cannot be bound fails `pcclConnect` with
/// `pcclInvalidUsage`.
///
/// # Safety
///
/// `comm` is NULL or a live handle; `address` is NULL or readable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclCommSetBindAddress(
    comm: *mut pcclComm_t,
    address: *const ccoip_socket_address_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contracts.
        let (state, address) = unsafe { (comm_ref(comm)?, read_in(address)?) };
        let address = address
            .to_socket_addr()
            .ok_or(pcclResult_t::pcclInvalidArgument)?;
        state.reconfigure(|config| {
            config.bind_ip = address.ip();
            config.p2p_port = address.port();
        })
    })
}

/// pccl extension (not in PCCL 1.0): sets the run secret (SECURITY.md §6), a
/// NUL-terminated string of at least 16 bytes after trimming surrounding whitespace (e.g.
/// 32 hex digits; at most 4096 bytes). It replaces a secret read from the environment by
/// `pcclCreateCommunicator`. With a secret every connection of this peer is authenticated;
/// the master and every other peer must hold the same one. The secret is never logged.
///
/// A peer whose secret the master does not share (or that has one when the master has
/// none, or none when it has one) fails `pcclConnect` with `pcclMasterConnectionFailed`
/// (PCCL 1.0 has no code for an authentication failure); the reason is logged.
///
/// Call it after `pcclCreateCommunicator` and before `pcclConnect`; after `pcclConnect` it
/// is `pcclInvalidUsage`. NULL `comm` or `secret` is `pcclInvalidArgument`, as is a secret
/// too short or too long (the reason is logged at error level).
///
/// # Safety
///
/// `comm` is NULL or a live handle; `secret` is NULL or a readable NUL-terminated string.
/// Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclCommSetRunSecret(
    comm: *mut pcclComm_t,
    secret: *const c_char,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        crate::handle::checked(secret)?;
        // SAFETY: non-null (checked) and a readable NUL-terminated string by the contract.
        let secret = unsafe { CStr::from_ptr(secret) };
        let secret = crate::secret::parse(secret.to_bytes())?;
        state.reconfigure(|config| config.secret = Some(secret))
    })
}

/// pccl extension (not in PCCL 1.0): with `encrypt` true, payloads are encrypted as well
/// as authenticated (SECURITY.md §6); the master must be set the same way. It replaces
/// `PCCL_ENCRYPT` read by `pcclCreateCommunicator`. Encryption needs a run secret: set it
/// first (`pcclCommSetRunSecret` or the environment); `true` without one is
/// `pcclInvalidArgument`.
///
/// Call it after `pcclCreateCommunicator` and before `pcclConnect`; after `pcclConnect` it
/// is `pcclInvalidUsage`. NULL `comm` is `pcclInvalidArgument`.
///
/// # Safety
///
/// `comm` is NULL or a live handle. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclCommSetEncrypt(comm: *mut pcclComm_t, encrypt: bool) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        state.reconfigure(|config| config.encrypt = encrypt)
    })
}

/// Leaves the run and frees the communicator: the master drops this peer, async
/// all-reduces still in flight fail and are awaited (their buffers are no longer touched
/// once this returns), and the communicator's threads are joined.
///
/// # Safety
///
/// `comm` is NULL (`pcclInvalidArgument`) or a live handle. No other call on it may run
/// concurrently or follow: the handle is dangling afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclDestroyCommunicator(comm: *mut pcclComm_t) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: by the contract this is the last use of the handle.
        let state = unsafe { take_handle(comm)? };
        state.comm().close();
        let ops: Vec<_> = state.async_ops().drain().map(|(_, op)| op).collect();
        for op in ops {
            // Failed by `close` above: returns promptly, after which the op's task no
            // longer holds the caller's buffers.
            let _ = op.wait();
        }
        drop(state);
        Ok(())
    })
}

/// `PCCL_MASTER_RECONNECT_TIMEOUT_S`: seconds (a decimal number, 0 turns reconnection
/// off) a connected peer keeps re-dialling a lost master; unset: the default (60 s).
fn reconnect_timeout_from_env() -> Result<Option<std::time::Duration>, pcclResult_t> {
    let Ok(raw) = std::env::var("PCCL_MASTER_RECONNECT_TIMEOUT_S") else {
        return Ok(None);
    };
    match raw.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=7.0 * 24.0 * 3600.0).contains(&s) => {
            Ok(Some(std::time::Duration::from_secs_f64(s)))
        }
        _ => {
            tracing::error!(
                value = %raw,
                "pccl: PCCL_MASTER_RECONNECT_TIMEOUT_S must be a number of seconds from 0 to 604800"
            );
            Err(pcclResult_t::pcclInvalidArgument)
        }
    }
}

/// Connects to the master and returns once this peer is accepted into the run (the
/// accepted peers admit it at their next `pcclUpdateTopology`). Blocks.
///
/// If the master is lost later, the peer re-dials it for `PCCL_MASTER_RECONNECT_TIMEOUT_S`
/// seconds (read here; default 60, 0: fail at once) and re-registers with a restarted
/// master; calls that need the master wait meanwhile, then fail with
/// `pcclMasterConnectionFailed`. A value that is not a number of seconds from 0 to 604800
/// is `pcclInvalidArgument`.
///
/// Returns `pcclMasterConnectionFailed` when the master cannot be reached, and
/// `pcclInvalidUsage` when called a second time. An authentication failure (SECURITY.md
/// §6: a different run secret than the master's, a secret on one side only, or a
/// different encryption setting) is also `pcclMasterConnectionFailed`, within the
/// handshake timeout (5 s), with the reason logged at error level.
///
/// # Safety
///
/// `comm` is NULL or a live handle. Thread-safe, but calling it more than once is an error.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclConnect(comm: *mut pcclComm_t) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        // PCCL 1.0's creation parameters keep their layout, so this pccl setting comes
        // from the environment (docs/ARCHITECTURE.md §14).
        if let Some(limit) = reconnect_timeout_from_env()? {
            state.reconfigure(|c| c.master_reconnect_timeout = limit)?;
        }
        let comm = {
            let mut peer = state.peer();
            peer.connect_called = true;
            peer.comm.clone()
        };
        comm.connect().inspect_err(|e| {
            if let pccl::Error::AuthenticationFailed(_) = e {
                tracing::error!(error = %e, "pccl: pcclConnect refused");
            }
        })?;
        Ok(())
    })
}

/// Joint call: admits every peer waiting to join. Every accepted peer must call it; it
/// blocks until all have. `pcclUpdateTopologyFailed` is retryable (call it again);
/// `pcclPendingAsyncOps` means async all-reduces must be awaited first.
///
/// # Safety
///
/// `comm` is NULL or a live, connected handle. Joint calls of one communicator are made
/// one at a time (from one thread at a time).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclUpdateTopology(comm: *mut pcclComm_t) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        state.comm().update_topology()?;
        Ok(())
    })
}

/// Joint call: whether peers are waiting to be accepted. Every accepted peer must call
/// it; all get the same answer. May run while async all-reduces are in flight on another
/// thread.
///
/// # Safety
///
/// `comm` is NULL or a live, connected handle; `pending_out` is NULL or writable (NULL:
/// `pcclInvalidArgument`). Joint calls of one communicator are made one at a time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclArePeersPending(
    comm: *const pcclComm_t,
    pending_out: *mut bool,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        let out = Out::new(pending_out)?;
        let pending = state.comm().are_peers_pending()?;
        // SAFETY: writable by the contract.
        unsafe { out.write(pending) };
        Ok(())
    })
}

/// Joint call: measures bandwidth between the peers and re-orders the ring to suit it.
/// Every accepted peer must call it. `pcclTopologyOptimizationFailed` leaves the old ring
/// in use.
///
/// # Safety
///
/// `comm` is NULL or a live, connected handle. Joint calls of one communicator are made
/// one at a time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclOptimizeTopology(comm: *const pcclComm_t) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        state.comm().optimize_topology()?;
        Ok(())
    })
}

/// Reads a world-size attribute into `*out`. An unknown `attribute` is
/// `pcclInvalidArgument`; before `pcclConnect` the call is `pcclInvalidUsage`.
///
/// # Safety
///
/// `comm` is NULL or a live handle; `out` is NULL or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclGetAttribute(
    comm: *const pcclComm_t,
    attribute: RawAttribute,
    out: *mut c_int,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        let out = Out::new(out)?;
        let attr = match attribute.get().ok_or(pcclResult_t::pcclInvalidArgument)? {
            pcclAttribute_t::PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE => Attribute::GlobalWorldSize,
            pcclAttribute_t::PCCL_ATTRIBUTE_PEER_GROUP_WORLD_SIZE => Attribute::PeerGroupWorldSize,
            pcclAttribute_t::PCCL_ATTRIBUTE_NUM_DISTINCT_PEER_GROUPS => {
                Attribute::NumDistinctPeerGroups
            }
            pcclAttribute_t::PCCL_ATTRIBUTE_LARGEST_PEER_GROUP_WORLD_SIZE => {
                Attribute::LargestPeerGroupWorldSize
            }
        };
        let value = state.comm().attribute(attr)?;
        // SAFETY: writable by the contract.
        unsafe { out.write(c_int::try_from(value).unwrap_or(c_int::MAX)) };
        Ok(())
    })
}
