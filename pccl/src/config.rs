//! Communicator settings, checked by `validate` before anything starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::secure::RunSecret;
use crate::wire::MAX_SLICE_BYTES;

/// Default master port (PCCL's `CCOIP_PROTOCOL_PORT_MASTER`).
pub const DEFAULT_MASTER_PORT: u16 = 48148;
/// First port a peer tries for its p2p listener.
pub const DEFAULT_P2P_PORT: u16 = 48150;

/// The shortest `p2p_idle_timeout`: three keepalive intervals, so a late keepalive or
/// two never closes an honest connection.
const MIN_P2P_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest `master_reconnect_timeout` (a week: longer is a configuration mistake).
const MAX_RECONNECT_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings of one communicator.
#[derive(Clone, Debug)]
pub struct CommunicatorConfig {
    /// Where the master listens.
    pub master: SocketAddr,
    /// Collectives and shared-state syncs span one peer group.
    pub peer_group: u32,
    /// TCP connections to each ring neighbour; one op is striped over all of them.
    pub pool_size: usize,
    /// Address the p2p listener binds.
    pub bind_ip: IpAddr,
    /// First port tried for the p2p listener (0: any free port).
    pub p2p_port: u16,
    /// Address other peers should dial; `None`: the address the master sees us from.
    pub advertise_ip: Option<IpAddr>,
    /// How often we tell the master we are alive.
    pub heartbeat_interval: Duration,
    /// How long the master may stay silent before we give up on it.
    pub master_timeout: Duration,
    /// Largest pipeline slice in bytes. Must be the same on every peer of a run.
    pub slice_bytes: usize,
    /// Bytes of frames we hold for ops that have not started here yet.
    pub max_buffered_bytes: usize,
    /// Frames we hold for ops that have not started here yet (docs/PROTOCOL.md §4).
    pub max_buffered_frames: usize,
    /// How long an inbound p2p-listener connection may take to send its hello and be
    /// identified as a peer of the run (docs/PROTOCOL.md §1.1).
    pub handshake_timeout: Duration,
    /// Inbound connections on the p2p listener that are not yet identified; beyond this,
    /// new ones are closed at once.
    pub max_pending_connections: usize,
    /// A ring connection to our p2p listener on which nothing (no frame, no keepalive) has
    /// arrived for this long is closed, as if its peer had gone; honest diallers send a
    /// keepalive on every connection idle for a second (docs/PROTOCOL.md §4.1), so only a
    /// stuck or dead one meets it. At least 3 s (default 30 s).
    pub p2p_idle_timeout: Duration,
    /// Threads of the communicator's runtime.
    pub worker_threads: usize,
    /// How many times `connect` tries to reach the master.
    pub connect_attempts: u32,
    /// When the control connection to an accepted (or waiting) peer's master is lost, how
    /// long the communicator keeps re-dialling the same address, with a bounded, jittered
    /// backoff, and re-registers with whatever master answers (docs/ARCHITECTURE.md §14).
    /// Calls that need the master wait meanwhile; when it runs out they fail with
    /// `MasterConnectionFailed`. Zero: fail at once, as PCCL 1.0 does (default 60 s).
    pub master_reconnect_timeout: Duration,
    /// The run secret (SECURITY.md §6): with one, every connection is authenticated and
    /// only peers holding the same secret take part. `None`: PCCL-compatible plain mode.
    pub secret: Option<RunSecret>,
    /// With a secret, also encrypt every payload (SECURITY.md §6). Must match the master.
    pub encrypt: bool,
}

impl CommunicatorConfig {
    /// Defaults for a communicator of `peer_group` talking to `master`.
    pub fn new(master: SocketAddr) -> Self {
        Self {
            master,
            peer_group: 0,
            pool_size: 1,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            p2p_port: DEFAULT_P2P_PORT,
            advertise_ip: None,
            heartbeat_interval: Duration::from_millis(500),
            master_timeout: Duration::from_secs(5),
            slice_bytes: 1 << 20,
            max_buffered_bytes: 1 << 30,
            max_buffered_frames: 4096,
            handshake_timeout: Duration::from_secs(5),
            max_pending_connections: 64,
            p2p_idle_timeout: Duration::from_secs(30),
            worker_threads: 2,
            connect_attempts: 5,
            master_reconnect_timeout: Duration::from_secs(60),
            secret: None,
            encrypt: false,
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.pool_size == 0 || self.pool_size > 1024 {
            return Err(Error::InvalidArgument(
                "pool size must be between 1 and 1024",
            ));
        }
        if self.slice_bytes < 8 || self.slice_bytes > MAX_SLICE_BYTES {
            return Err(Error::InvalidArgument(
                "slice size must be between 8 bytes and 64 MiB",
            ));
        }
        if self.heartbeat_interval.is_zero() || self.master_timeout <= self.heartbeat_interval {
            return Err(Error::InvalidArgument(
                "the master timeout must exceed the heartbeat interval",
            ));
        }
        if self.max_buffered_frames == 0 || self.max_pending_connections == 0 {
            return Err(Error::InvalidArgument(
                "the early-frame and pending-connection bounds must be at least 1",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "the handshake timeout must be positive",
            ));
        }
        if self.p2p_idle_timeout < MIN_P2P_IDLE_TIMEOUT {
            return Err(Error::InvalidArgument(
                "the p2p idle timeout must be at least 3 s (three keepalive intervals)",
            ));
        }
        if self.worker_threads == 0 {
            return Err(Error::InvalidArgument(
                "at least one worker thread is needed",
            ));
        }
        if self.master_reconnect_timeout > MAX_RECONNECT_TIMEOUT {
            return Err(Error::InvalidArgument(
                "the master reconnect timeout must be at most a week",
            ));
        }
        if self.master.port() == 0 {
            return Err(Error::InvalidArgument("the master address needs a port"));
        }
        if self.encrypt && self.secret.is_none() {
            return Err(Error::InvalidArgument("encryption needs a run secret"));
        }
        Ok(())
    }
}
