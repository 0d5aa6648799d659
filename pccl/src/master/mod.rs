//! The master: a sans-IO state machine ([`state::MasterState`]), the pure shared-state
//! election it runs, and the tokio server that drives it.

#[doc(hidden)]
pub mod drive;
mod election;
pub mod http;
mod server;
pub mod state;
#[cfg(test)]
mod tests;

#[doc(hidden)]
pub use election::{designated_source, source_order};

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// After a restart, once the first peer of the old run re-registers, how long the
    /// master waits for the others that peer names before it rebuilds the run without
    /// the missing ones (default 5 s: peers retry every 0.5 s at most, so a live peer is
    /// back well within it; docs/ARCHITECTURE.md §14).
    pub recovery_window: Duration,
    /// How long a freshly started master holds back a lone first peer, so that the peers
    /// of a run whose master restarted re-register before a newcomer could start a new
    /// run (default 1 s, twice the peers' longest retry interval; 0 turns it off).
    pub startup_grace: Duration,
    /// The run secret (SECURITY.md §6): with one, only peers that prove they hold it can
    /// register, and every connection is authenticated. `None`: PCCL-compatible plain mode.
    pub secret: Option<crate::secure::RunSecret>,
    /// With a secret, payloads are encrypted too; peers must ask for the same.
    pub encrypt: bool,
    /// Connections that are accepted but have not registered yet (still in their hello,
    /// or between the hello and `Register`), at most; beyond this, new connections are
    /// closed at once with a (rate-limited) warning. Registered peers do not count
    /// (default 256: honest peers register within milliseconds of connecting, so only a
    /// join burst of more than this many at once would meet the bound).
    pub max_unregistered_connections: usize,
    /// Serve `/metrics`, `/api/run` and the dashboard on this address (README, "Watching
    /// a run"); `None` (the default): no HTTP listener, and no HTTP code runs. Bind
    /// loopback or a private network: the endpoints are read-only but unauthenticated.
    pub http: Option<SocketAddr>,
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
            recovery_window: t.recovery_window,
            startup_grace: Duration::from_secs(1),
            secret: None,
            encrypt: false,
            max_unregistered_connections: 256,
            http: None,
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
            (
                self.recovery_window,
                "recovery window must be at least 100 ms",
            ),
        ] {
            if d < floor {
                return Err(Error::InvalidArgument(what));
            }
        }
        if self.max_unregistered_connections == 0 {
            return Err(Error::InvalidArgument(
                "the bound on unregistered connections must be at least 1",
            ));
        }
        if self.sync_transfer_min_rate == 0 {
            return Err(Error::InvalidArgument(
                "sync transfer minimum rate must be at least 1 byte/s",
            ));
        }
        if self.encrypt && self.secret.is_none() {
            return Err(Error::InvalidArgument("encryption needs a run secret"));
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
            recovery_window: self.recovery_window,
            startup_grace: self.startup_grace,
        }
    }
}

/// What the owner of a [`MasterNode`] asks of its serving task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Run,
    Stop,
    /// Panic in the serving task (tests only: see [`MasterNode::crash_for_tests`]).
    Crash,
}

/// A running master. Dropping it stops it.
#[derive(Debug)]
pub struct MasterNode {
    addr: SocketAddr,
    /// Where the HTTP endpoints listen, when asked for.
    http_addr: Option<SocketAddr>,
    command: watch::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The panic message, once the serving thread has panicked.
    crashed: Arc<Mutex<Option<String>>>,
    /// Connections accepted and not registered yet, as the serving task last counted.
    unregistered: Arc<AtomicUsize>,
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
        let http = match config.http {
            None => None,
            Some(at) => {
                let l = std::net::TcpListener::bind(at).map_err(|e| {
                    Error::InvalidUsage(format!("cannot listen for http on {at}: {e}"))
                })?;
                l.set_nonblocking(true)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let a = l.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
                Some((l, a))
            }
        };
        let http_addr = http.as_ref().map(|(_, a)| *a);
        let observer = http
            .as_ref()
            .map(|_| Arc::new(Mutex::new(http::Observer::new(std::time::Instant::now()))));
        let (command, command_rx) = watch::channel(Command::Run);
        let timeouts = config.timeouts();
        let unregistered = Arc::new(AtomicUsize::new(0));
        let limits = server::Limits {
            max_unregistered: config.max_unregistered_connections,
            unregistered: unregistered.clone(),
            secure: config
                .secret
                .clone()
                .map(|s| crate::net::sealed::Secure::master(s, config.encrypt)),
            observer: observer.clone(),
        };
        crate::net::sealed::warn_if_exposed("master", addr, config.secret.is_some());
        let crashed = Arc::new(Mutex::new(None));
        let crash_slot = crashed.clone();
        let thread = std::thread::Builder::new()
            .name("pccl-master".into())
            .spawn(move || {
                // A panic here is a bug in the master; it must never pass unnoticed:
                // it is logged now and `await_termination` reports it.
                let run = catch_unwind(AssertUnwindSafe(|| {
                    rt.block_on(async move {
                        if let (Some((l, _)), Some(o)) = (http, observer) {
                            match tokio::net::TcpListener::from_std(l) {
                                Ok(l) => drop(tokio::spawn(http::serve(l, o))),
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot register the http listener")
                                }
                            }
                        }
                        match tokio::net::TcpListener::from_std(std) {
                            Ok(listener) => {
                                server::serve(listener, timeouts, limits, command_rx).await
                            }
                            Err(e) => tracing::error!(error = %e, "cannot register listener"),
                        }
                    });
                }));
                if let Err(payload) = run {
                    let what = panic_message(payload.as_ref());
                    tracing::error!(panic = %what, "the master crashed: its thread panicked");
                    *crash_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
                }
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::info!(%addr, "master listening");
        if let Some(a) = http_addr {
            tracing::info!(addr = %a, "master serving http (dashboard, /metrics, /api/run)");
        }
        Ok(Self {
            addr,
            http_addr,
            command,
            thread: Mutex::new(Some(thread)),
            crashed,
            unregistered,
        })
    }

    /// The address the master listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTP endpoints (`MasterConfig::http`), if they are served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// How many connections are accepted and not yet registered (bounded by
    /// `MasterConfig::max_unregistered_connections`). For tests of that bound.
    #[doc(hidden)]
    pub fn unregistered_connections(&self) -> usize {
        self.unregistered.load(Ordering::Relaxed)
    }

    /// Asks the master to stop; returns at once.
    pub fn interrupt(&self) {
        self.command.send_if_modified(|c| {
            let stop = *c == Command::Run;
            if stop {
                *c = Command::Stop;
            }
            stop
        });
    }

    /// Blocks until the master has stopped (after [`interrupt`](Self::interrupt), or
    /// because it crashed). `Err(Error::Internal)` if its thread panicked: the master
    /// stopped serving, and the message says why.
    pub fn await_termination(&self) -> Result<()> {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            // The thread catches its own panics, so `join` fails only if logging did.
            if let Err(payload) = h.join() {
                self.record_crash(panic_message(payload.as_ref()));
            }
        }
        match &*self.crashed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(what) => Err(Error::Internal(format!("the master crashed: {what}"))),
            None => Ok(()),
        }
    }

    /// Whether the master's thread has panicked (it then serves no more).
    pub fn has_crashed(&self) -> bool {
        self.crashed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Makes the serving task panic, so tests can check that a crash is reported.
    /// Reachable only from code linked into the process, never from the network.
    #[doc(hidden)]
    pub fn crash_for_tests(&self) {
        let _ = self.command.send(Command::Crash);
    }

    fn record_crash(&self, what: String) {
        let mut slot = self.crashed.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(what);
    }
}

impl Drop for MasterNode {
    fn drop(&mut self) {
        self.interrupt();
        // Already logged when it happened; the owner chose not to ask.
        let _ = self.await_termination();
    }
}

/// The message of a panic payload (`panic!` with a literal or with a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
