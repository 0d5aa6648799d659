//! Point-to-point bandwidth tests for `optimize_topology`: the measuring peer streams to a
//! target's p2p listener (connection kind `Benchmark`) for a fixed time; the target counts
//! the bytes and answers with the total, so the figure is what actually arrived.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::ConnectionError;
use crate::net::sealed::{self, Keys, Secure};
use crate::types::{PeerEntry, PeerId};
use crate::wire::ConnectionKind;

/// How long one point-to-point bandwidth test streams: `optimize_topology` spends at
/// least this per link it has no figure for yet.
pub const BANDWIDTH_TEST_DURATION: Duration = Duration::from_millis(100);
/// The receiving side gives up on a test after this long.
const SINK_LIMIT: Duration = Duration::from_secs(5);

/// Measures throughput to `target` in bytes per second (0 when the test fails).
pub(crate) async fn measure(me: PeerId, secure: Option<&Secure>, target: &PeerEntry) -> u64 {
    match try_measure(me, secure, target).await {
        Ok(bps) => bps,
        Err(e) => {
            tracing::warn!(to = %target.id, error = %e, "bandwidth test failed");
            0
        }
    }
}

/// Bytes per chunk the test streams; sealed, each chunk is one frame whose 4-byte header
/// is its length (docs/PROTOCOL.md §6).
const CHUNK: usize = 256 << 10;

async fn try_measure(
    me: PeerId,
    secure: Option<&Secure>,
    target: &PeerEntry,
) -> Result<u64, ConnectionError> {
    let kind = ConnectionKind::Benchmark;
    let (mut s, keys) = sealed::dial_link(target, me, kind, secure, SINK_LIMIT).await?;
    let (mut send, mut recv) = match keys {
        Some(k) => (Some(k.send), Some(k.recv)),
        None => (None, None),
    };
    let mut chunk = vec![0x5au8; CHUNK];
    let len = (CHUNK as u32).to_le_bytes();
    let start = Instant::now();
    while start.elapsed() < BANDWIDTH_TEST_DURATION {
        let write = async {
            match send.as_mut() {
                Some(k) => sealed::write_frame(&mut s, k, &len, &mut chunk).await,
                None => Ok(s.write_all(&chunk).await?),
            }
        };
        bounded(write).await?;
    }
    s.shutdown().await?;
    let mut total = [0u8; 8];
    let read = async {
        match recv.as_mut() {
            Some(k) => {
                if !sealed::read_header(&mut s, k, &mut total).await? {
                    return Err(ConnectionError::Closed);
                }
                sealed::read_body(&mut s, k, &mut []).await
            }
            None => Ok(s.read_exact(&mut total).await.map(|_| ())?),
        }
    };
    bounded(read).await?;
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    Ok((u64::from_le_bytes(total) as f64 / secs) as u64)
}

async fn bounded<T>(
    fut: impl Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    tokio::time::timeout(SINK_LIMIT, fut)
        .await
        .unwrap_or(Err(ConnectionError::Timeout(SINK_LIMIT)))
}

/// The target's side: counts bytes until the sender closes, then answers the total.
/// Sealed, it counts the bodies of authenticated frames only, each at most one chunk.
pub(crate) async fn sink(mut s: TcpStream, keys: Keys) -> Result<(), ConnectionError> {
    let (mut send, mut recv) = match keys {
        Some(k) => (Some(k.send), Some(k.recv)),
        None => (None, None),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    let counting = async {
        loop {
            if let Some(k) = recv.as_mut() {
                let mut len = [0u8; 4];
                if !sealed::read_header(&mut s, k, &mut len).await? {
                    return Ok::<_, ConnectionError>(());
                }
                let len = u32::from_le_bytes(len) as usize;
                if len > CHUNK {
                    return Err(ConnectionError::Handshake(format!(
                        "a {len}-byte bandwidth chunk is over {CHUNK}"
                    )));
                }
                sealed::read_body(&mut s, k, &mut buf[..len]).await?;
                total += len as u64;
                continue;
            }
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            total += n as u64;
        }
    };
    bounded(counting).await?;
    // A sender that stopped reading cannot hold the answer's write either.
    bounded(async {
        match send.as_mut() {
            Some(k) => sealed::write_frame(&mut s, k, &total.to_le_bytes(), &mut []).await,
            None => Ok(s.write_all(&total.to_le_bytes()).await?),
        }
    })
    .await
}
