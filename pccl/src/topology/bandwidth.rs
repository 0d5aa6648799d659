//! Point-to-point bandwidth tests for `optimize_topology`: the measuring peer streams to a
//! target's p2p listener (connection kind `Benchmark`) for a fixed time; the target counts
//! the bytes and answers with the total, so the figure is what actually arrived.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{self, ConnectionError};
use crate::types::{PeerEntry, PeerId};
use crate::wire::{ConnectionKind, Hello};

/// How long one point-to-point bandwidth test streams: `optimize_topology` spends at
/// least this per link it has no figure for yet.
pub const BANDWIDTH_TEST_DURATION: Duration = Duration::from_millis(100);
/// The receiving side gives up on a test after this long.
const SINK_LIMIT: Duration = Duration::from_secs(5);

/// Measures throughput to `target` in bytes per second (0 when the test fails).
pub(crate) async fn measure(me: PeerId, target: &PeerEntry) -> u64 {
    match try_measure(me, target).await {
        Ok(bps) => bps,
        Err(e) => {
            tracing::warn!(to = %target.id, error = %e, "bandwidth test failed");
            0
        }
    }
}

async fn try_measure(me: PeerId, target: &PeerEntry) -> Result<u64, ConnectionError> {
    let mut s = net::connect(target.p2p_addr, SINK_LIMIT).await?;
    let hello = Hello {
        kind: ConnectionKind::Benchmark,
        peer: me,
    };
    let theirs = net::handshake(&mut s, hello, SINK_LIMIT).await?;
    if theirs.peer != target.id {
        return Err(ConnectionError::Handshake(format!(
            "{} is not {}",
            target.p2p_addr, target.id
        )));
    }
    let chunk = vec![0x5au8; 256 << 10];
    let start = Instant::now();
    while start.elapsed() < BANDWIDTH_TEST_DURATION {
        tokio::time::timeout(SINK_LIMIT, s.write_all(&chunk))
            .await
            .map_err(|_| ConnectionError::Timeout(SINK_LIMIT))??;
    }
    s.shutdown().await?;
    let mut total = [0u8; 8];
    tokio::time::timeout(SINK_LIMIT, s.read_exact(&mut total))
        .await
        .map_err(|_| ConnectionError::Timeout(SINK_LIMIT))??;
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    Ok((u64::from_le_bytes(total) as f64 / secs) as u64)
}

/// The target's side: counts bytes until the sender closes, then answers the total.
pub(crate) async fn sink(mut s: TcpStream) -> Result<(), ConnectionError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total: u64 = 0;
    let counting = async {
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            total += n as u64;
        }
    };
    tokio::time::timeout(SINK_LIMIT, counting)
        .await
        .map_err(|_| ConnectionError::Timeout(SINK_LIMIT))??;
    s.write_all(&total.to_le_bytes()).await?;
    Ok(())
}
