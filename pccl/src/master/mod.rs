//! The master: a sans-IO state machine ([`state::MasterState`]), the pure shared-state
//! election it runs, and the tokio server that drives it.

mod election;
mod server;
pub mod state;
#[cfg(test)]
mod tests;

#[doc(hidden)]
pub use election::{designated_source, source_order};

use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use state::Timeouts;

/// Settings of a master.
///
/// Every wait of the master on one particular peer is bounded (docs/ARCHITECTURE.md §3,
/// "Deadlines"): a peer that misses a bound is evicted as if it had died, and the others
/// go on without it. Joint calls and ops a live peer has not made yet are not bounded:
/// they wait on the user's program.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// A peer silent for this long is dead (default 5 s; peers heartbeat every 500 ms).
    pub heartbeat_timeout: Duration,
    /// A connection that said hello must register within this, or it is closed
    /// (default 10 s; a peer registers right after its hello).
    pub registration_timeout: Duration,
    /// Every peer of a proposed ring must answer `P2pReady` within this, or it is
    /// evicted and the update fails, retryably, for the others (default 30 s; a peer's own
    /// dial gives up after 10 s and answers the failure).
    pub proposal_timeout: Duration,
    /// A peer asked to measure bandwidth must report within this plus
    /// `bandwidth_timeout_per_target` per link it tests, or it is evicted and the
    /// `optimize_topology` call fails, retryably, for the others (default 30 s).
    pub bandwidth_timeout: Duration,
    /// See `bandwidth_timeout` (default 1 s: ten times `BANDWIDTH_TEST_DURATION`).
    pub bandwidth_timeout_per_target: Duration,
    /// Once one member of a group has started a shared-state sync, every other member
    /// must have started it within this, or it is evicted and the sync goes on without it
    /// (default 300 s: generous, because members reach the call at their own pace).
    pub sync_report_timeout: Duration,
    /// Once the plans are out, every participant must finish its fetches within this plus
    /// the time its largest fetch takes at `sync_transfer_min_rate`, or it is evicted and
    /// the sync ends for the others without it (default 60 s).
    pub sync_transfer_timeout: Duration,
    /// The slowest transfer rate, in bytes/s, `sync_transfer_timeout` allows for
    /// (default 1 MiB/s).
    pub sync_transfer_min_rate: u64,
}

impl MasterConfig {
    /// Defaults with this listen address.
    pub fn new(listen: SocketAddr) -> Self {
        let t = Timeouts::default();
        Self {
            listen,
            heartbeat_timeout: t.heartbeat,
            registration_timeout: t.registration,
            proposal_timeout: t.proposal,
            bandwidth_timeout: t.bandwidth,
            bandwidth_timeout_per_target: t.bandwidth_per_target,
            sync_report_timeout: t.sync_report,
            sync_transfer_timeout: t.sync_transfer,
            sync_transfer_min_rate: t.sync_transfer_min_rate,
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        let floor = Duration::from_millis(100);
        for (d, what) in [
            (
                self.heartbeat_timeout,
                "heartbeat timeout must be at least 100 ms",
            ),
            (
                self.registration_timeout,
                "registration timeout must be at least 100 ms",
            ),
            (
                self.proposal_timeout,
                "proposal timeout must be at least 100 ms",
            ),
            (
                self.bandwidth_timeout,
                "bandwidth timeout must be at least 100 ms",
            ),
            (
                self.sync_report_timeout,
                "sync report timeout must be at least 100 ms",
            ),
            (
                self.sync_transfer_timeout,
                "sync transfer timeout must be at least 100 ms",
            ),
        ] {
            if d < floor {
                return Err(Error::InvalidArgument(what));
            }
        }
        if self.sync_transfer_min_rate == 0 {
            return Err(Error::InvalidArgument(
                "sync transfer minimum rate must be at least 1 byte/s",
            ));
        }
        Ok(())
    }

    /// The bounds the state machine applies.
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            heartbeat: self.heartbeat_timeout,
            registration: self.registration_timeout,
            proposal: self.proposal_timeout,
            bandwidth: self.bandwidth_timeout,
            bandwidth_per_target: self.bandwidth_timeout_per_target,
            sync_report: self.sync_report_timeout,
            sync_transfer: self.sync_transfer_timeout,
            sync_transfer_min_rate: self.sync_transfer_min_rate,
        }
    }
}

/// A running master. Dropping it stops it.
#[derive(Debug)]
pub struct MasterNode {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MasterNode {
    /// Binds the listener and starts serving on a background thread; returns at once.
    pub fn start(config: MasterConfig) -> Result<Self> {
        config.validate()?;
        let std = std::net::TcpListener::bind(config.listen)
            .map_err(|e| Error::InvalidUsage(format!("cannot listen on {}: {e}", config.listen)))?;
        std.set_nonblocking(true)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let addr = std
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let timeouts = config.timeouts();
        let thread = std::thread::Builder::new()
            .name("pccl-master".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(std) {
                        Ok(listener) => server::serve(listener, timeouts, stop_rx).await,
                        Err(e) => tracing::error!(error = %e, "cannot register listener"),
                    }
                });
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::info!(%addr, "master listening");
        Ok(Self {
            addr,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The address the master listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the master to stop; returns at once.
    pub fn interrupt(&self) {
        let _ = self.stop.send(true);
    }

    /// Blocks until the master has stopped (after [`interrupt`](Self::interrupt)).
    pub fn await_termination(&self) {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for MasterNode {
    fn drop(&mut self) {
        self.interrupt();
        self.await_termination();
    }
}
