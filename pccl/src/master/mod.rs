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

/// Settings of a master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// A peer silent for this long is dead.
    pub heartbeat_timeout: Duration,
}

impl MasterConfig {
    /// Defaults with this listen address.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            heartbeat_timeout: Duration::from_secs(5),
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_timeout < Duration::from_millis(100) {
            return Err(Error::InvalidArgument(
                "heartbeat timeout must be at least 100 ms",
            ));
        }
        Ok(())
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
        let hb = config.heartbeat_timeout;
        let thread = std::thread::Builder::new()
            .name("pccl-master".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(std) {
                        Ok(listener) => server::serve(listener, hb, stop_rx).await,
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
