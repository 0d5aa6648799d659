//! `pcclGetCommStats` (pccl extension): a communicator's counters for C programs
//! (docs/ARCHITECTURE.md §13). The full snapshot, lists included, is
//! `Communicator::stats` in Rust and `comm.stats()` in Python; C gets the totals and the
//! latest figures in one fixed struct.

use crate::comm::comm_ref;
use crate::handle::{Out, pcclComm_t};
use crate::panic::ffi_boundary;
use crate::result::pcclResult_t;

/// pccl extension (not in PCCL 1.0): what a communicator has done since it was created,
/// as returned by `pcclGetCommStats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct pcclCommStats_t {
    /// All-reduces (blocking, async, batched) that succeeded here.
    pub all_reduce_completed: u64,
    /// All-reduces that failed here.
    pub all_reduce_failed: u64,
    /// Shared-state syncs that succeeded / failed here.
    pub shared_state_syncs_completed: u64,
    pub shared_state_syncs_failed: u64,
    /// Ops `pcclAllReduceMultipleWithRetry` ran again after a failure.
    pub retries: u64,
    /// Ring payload bytes sent / received, all neighbours together.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Tensor bytes shared-state syncs received / sent.
    pub shared_state_rx_bytes: u64,
    pub shared_state_tx_bytes: u64,
    /// Bus bandwidth (bytes/s) and duration (s) of the last successful all-reduce; 0
    /// before the first.
    pub last_busbw: f64,
    pub last_all_reduce_seconds: f64,
    /// Recoveries recorded (an all-reduce succeeding after one failed for a lost peer),
    /// at most the 32 latest, and the latest one's duration in seconds (0: none).
    pub recoveries: u64,
    pub last_recovery_seconds: f64,
    /// Reduce-scatters, all-gathers and broadcasts that succeeded / failed here.
    pub reduce_scatter_completed: u64,
    pub reduce_scatter_failed: u64,
    pub all_gather_completed: u64,
    pub all_gather_failed: u64,
    pub broadcast_completed: u64,
    pub broadcast_failed: u64,
}

/// pccl extension (not in PCCL 1.0): writes the communicator's counters to `*out`. Works
/// before `pcclConnect` too (all zeros). NULL `comm` or `out` is `pcclInvalidArgument`.
///
/// # Safety
///
/// `comm` is NULL or a live handle; `out` is NULL or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclGetCommStats(
    comm: *const pcclComm_t,
    out: *mut pcclCommStats_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        let out = Out::new(out)?;
        let s = state.comm().stats();
        let last = s.recent_all_reduces.last();
        let stats = pcclCommStats_t {
            all_reduce_completed: s.all_reduce.completed,
            all_reduce_failed: s.all_reduce.failed,
            shared_state_syncs_completed: s.shared_state_sync.completed,
            shared_state_syncs_failed: s.shared_state_sync.failed,
            retries: s.retries,
            tx_bytes: s.tx_bytes,
            rx_bytes: s.rx_bytes,
            shared_state_rx_bytes: s.shared_state_rx_bytes,
            shared_state_tx_bytes: s.shared_state_tx_bytes,
            last_busbw: last.map_or(0.0, |r| r.busbw),
            last_all_reduce_seconds: last.map_or(0.0, |r| r.seconds),
            recoveries: s.recovery_seconds.len() as u64,
            last_recovery_seconds: s.recovery_seconds.last().copied().unwrap_or(0.0),
            reduce_scatter_completed: s.reduce_scatter.completed,
            reduce_scatter_failed: s.reduce_scatter.failed,
            all_gather_completed: s.all_gather.completed,
            all_gather_failed: s.all_gather.failed,
            broadcast_completed: s.broadcast.completed,
            broadcast_failed: s.broadcast.failed,
        };
        // SAFETY: writable by the contract.
        unsafe { out.write(stats) };
        Ok(())
    })
}
