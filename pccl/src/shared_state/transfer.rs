//! Tensor transfer between peers during a sync: a receiver dials a holder's p2p listener
//! (connection kind `SharedState`), asks for tensors by name and reads each straight into
//! the user's memory, then checks its hash. A bad or truncated transfer falls back to the
//! next holder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TensorInfo;
use super::hash::tensor_hash;
use crate::net::{self, ConnectionError};
use crate::types::{PeerId, Topology};
use crate::wire::state::RESPONSE_LEN;
use crate::wire::{ConnectionKind, Fetch, Hello, StateRequest, StateResponse};

/// Bytes read per step; each step must finish within the stall timeout.
const PIECE: usize = 8 << 20;

/// Serves tensor requests on one connection until the receiver closes it, adding the
/// payload bytes to `sent` as they go (the sync may end before the receiver hangs up).
pub(crate) async fn serve(
    mut stream: TcpStream,
    tensors: &[TensorInfo<'_>],
    sent: &AtomicU64,
) -> Result<(), ConnectionError> {
    while let Some(body) = net::read_control(&mut stream).await? {
        let req = StateRequest::decode(&body)?;
        let found = tensors
            .iter()
            .find(|t| t.name == req.name && t.data.len() as u64 == req.len);
        match found {
            Some(t) => {
                stream
                    .write_all(&StateResponse::Ok(req.len).encode())
                    .await?;
                stream.write_all(t.data).await?;
                sent.fetch_add(req.len, Ordering::Relaxed);
            }
            None => stream.write_all(&StateResponse::Refused.encode()).await?,
        }
    }
    Ok(())
}

/// Fetches one tensor into `dest`, trying its holders in order. Returns the payload bytes
/// received (failed attempts included) and whether a verified copy arrived.
pub(crate) async fn fetch(
    me: PeerId,
    topology: &Topology,
    f: &Fetch,
    dest: &mut [u8],
    stall: Duration,
) -> (u64, bool) {
    let mut received = 0;
    for (holder, hash) in &f.sources {
        let Some(addr) = topology
            .ring
            .iter()
            .find(|p| p.id == *holder)
            .map(|p| p.p2p_addr)
        else {
            continue;
        };
        match fetch_from(me, *holder, addr, &f.name, dest, stall, &mut received).await {
            Ok(()) => {
                if tensor_hash(dest) == *hash {
                    return (received, true);
                }
                tracing::warn!(tensor = %f.name, %holder, "received tensor failed its hash check");
            }
            Err(e) => {
                tracing::warn!(tensor = %f.name, %holder, error = %e, "transfer failed, trying the next holder")
            }
        }
    }
    (received, false)
}

async fn fetch_from(
    me: PeerId,
    holder: PeerId,
    addr: std::net::SocketAddr,
    name: &str,
    dest: &mut [u8],
    stall: Duration,
    received: &mut u64,
) -> Result<(), ConnectionError> {
    let mut stream = net::connect(addr, stall).await?;
    let hello = Hello {
        kind: ConnectionKind::SharedState,
        peer: me,
    };
    let theirs = net::handshake(&mut stream, hello, stall).await?;
    if theirs.peer != holder {
        return Err(ConnectionError::Handshake(format!(
            "{addr} is not peer {holder}"
        )));
    }
    let req = StateRequest {
        name: name.to_string(),
        len: dest.len() as u64,
    };
    net::write_control(&mut stream, |b| req.encode(b)).await?;
    let mut head = [0u8; RESPONSE_LEN];
    timed(stall, stream.read_exact(&mut head)).await?;
    match StateResponse::decode(&head)? {
        StateResponse::Ok(len) if len == dest.len() as u64 => {}
        StateResponse::Ok(len) => {
            return Err(ConnectionError::Handshake(format!(
                "holder offered {len} bytes, expected {}",
                dest.len()
            )));
        }
        StateResponse::Refused => {
            return Err(ConnectionError::Handshake(
                "holder refused the request".into(),
            ));
        }
    }
    // A frozen holder must not stall us forever: every piece has a deadline.
    for piece in dest.chunks_mut(PIECE) {
        timed(stall, stream.read_exact(piece)).await?;
        *received += piece.len() as u64;
    }
    Ok(())
}

async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, ConnectionError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnectionError::Closed),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ConnectionError::Timeout(limit)),
    }
}
