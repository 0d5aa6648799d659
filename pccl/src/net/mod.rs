//! The network seam: the only place the library opens sockets (docs/ARCHITECTURE.md §2).
//!
//! Dialling and accepting both end in a checked handshake; frames are read with their
//! lengths bounded before allocation.

mod framed;
pub(crate) mod parts;
pub(crate) mod sealed;
pub(crate) mod slots;
pub(crate) mod socket;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) use framed::{read_control, write_control};

use crate::wire::{HELLO_LEN, Hello, WireError};

/// Why a connection ended or could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The other side closed the connection.
    #[error("connection closed by the other side")]
    Closed,
    /// Nothing arrived for longer than the heartbeat timeout.
    #[error("no heartbeat for {0:?}")]
    HeartbeatTimeout(Duration),
    /// The handshake failed or named someone else.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The run-secret handshake failed (SECURITY.md §6).
    #[error("{0}")]
    Secure(#[from] crate::secure::HandshakeError),
    /// A sealed frame failed its authentication: the connection is closed.
    #[error("{0}")]
    Auth(#[from] crate::secure::AuthError),
    /// The other side sent bytes we could not decode.
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    /// A bounded wait ran out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The operating system reported an error.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// How long unacknowledged data may sit before the kernel fails the socket.
pub(crate) const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `addr` within `timeout` and tunes the socket.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectionError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectionError::Timeout(timeout))??;
    socket::tune(&stream, USER_TIMEOUT)?;
    Ok(stream)
}

/// Binds a listener on `ip`, on `port` or, when `scan` is set, on the first free port from
/// `port` upward. Bind is race-free: no `SO_REUSEPORT`, and any bind or listen error moves on
/// to the next port (PCCL 1.0 could hand one port to two peers started together).
pub(crate) fn listen(ip: IpAddr, port: u16, scan: u16) -> io::Result<TcpListener> {
    let mut last = None;
    for p in port..=port.saturating_add(scan) {
        let std = match std::net::TcpListener::bind(SocketAddr::new(ip, p)) {
            Ok(l) => l,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        std.set_nonblocking(true)?;
        return TcpListener::from_std(std);
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port")))
}

/// Sends our hello (flagged when we hold a run secret) and reads theirs, within
/// `timeout`: their hello and whether they hold one.
pub(crate) async fn handshake(
    stream: &mut TcpStream,
    ours: Hello,
    secured: bool,
    timeout: Duration,
) -> Result<(Hello, bool), ConnectionError> {
    let fut = async {
        stream.write_all(&ours.encode_flagged(secured)).await?;
        let mut buf = [0u8; HELLO_LEN];
        match stream.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ConnectionError::Handshake("closed during handshake".into()));
            }
            Err(e) => return Err(e.into()),
        }
        Hello::decode_flagged(&buf).map_err(|e| ConnectionError::Handshake(e.to_string()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectionError::Timeout(timeout))?
}

/// Reads the dialler's hello on an accepted connection, within `timeout`, before we say
/// anything: a stranger learns nothing and changes nothing. Returns whether the dialler
/// holds a run secret too.
pub(crate) async fn accept_hello(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(Hello, bool), ConnectionError> {
    let fut = async {
        let mut buf = [0u8; HELLO_LEN];
        stream.read_exact(&mut buf).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ConnectionError::Handshake("closed during handshake".into())
            } else {
                e.into()
            }
        })?;
        Hello::decode_flagged(&buf).map_err(|e| ConnectionError::Handshake(e.to_string()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectionError::Timeout(timeout))?
}

/// Resolves once the flag in `rx` is true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Logs a recurring refusal at most once per `every`, with how many went unlogged in
/// between: a stranger who opens connections in a loop must not flood the log, yet the
/// operator still sees that it happens and how often.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: Option<tokio::time::Instant>,
    quiet: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            quiet: 0,
        }
    }

    /// Counts one event; returns how many happened since the last one it let through
    /// (this one included) when this one should be logged, else `None`.
    pub(crate) fn hit(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        self.quiet += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.quiet))
    }
}
