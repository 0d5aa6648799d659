//! Tensor transfer between peers during a sync: a receiver dials a holder's p2p listener
//! (connection kind `SharedState`), asks for tensors by name and reads each into a staging
//! buffer, checks its hash there, and only then copies it into the user's memory. A bad or
//! truncated transfer falls back to the next holder; when none delivers, the user's tensor
//! was never written (docs/ARCHITECTURE.md §6, "A failed sync loses nothing").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

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

/// Most staging bytes held at once by one sync's fetches, in [`STAGING_UNIT`]s. A tensor
/// larger than this is staged alone, so a sync holds at most max(this, its largest
/// fetched tensor) of staging memory.
pub(crate) const STAGING_BUDGET_UNITS: u32 = 256;
/// The unit the staging budget is counted in.
const STAGING_UNIT: usize = 1 << 20;

/// Fetches one tensor into `dest`, trying its holders in order. The bytes land in a
/// staging buffer (bounded by `staging`, see [`STAGING_BUDGET_UNITS`]) and reach `dest`
/// only once their hash matches the holder's announced one: `dest` holds either its
/// old bytes or a verified copy, never anything else. Returns the payload bytes received
/// (failed attempts included) and whether a verified copy arrived.
pub(crate) async fn fetch(
    me: PeerId,
    topology: &Topology,
    f: &Fetch,
    dest: &mut [u8],
    stall: Duration,
    staging: &Semaphore,
) -> (u64, bool) {
    let units = dest
        .len()
        .div_ceil(STAGING_UNIT)
        .min(STAGING_BUDGET_UNITS as usize) as u32;
    // The semaphore is never closed, so acquiring cannot fail; if it ever did, fetching
    // unbounded would be the wrong fallback.
    let Ok(_permit) = staging.acquire_many(units).await else {
        return (0, false);
    };
    // Allocated per fetch and freed when it ends, so no staging memory outlives the sync.
    let mut stage = vec![0u8; dest.len()];
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
        match fetch_from(me, *holder, addr, &f.name, &mut stage, stall, &mut received).await {
            Ok(()) => {
                if tensor_hash(&stage) == *hash {
                    dest.copy_from_slice(&stage);
                    return (received, true);
                }
                tracing::warn!(tensor = %f.name, %holder, "received tensor failed its hash check, trying the next holder");
            }
            Err(e) => {
                tracing::warn!(tensor = %f.name, %holder, error = %e, "transfer failed, trying the next holder")
            }
        }
    }
    tracing::warn!(tensor = %f.name, "no holder delivered a verified copy; the tensor keeps its bytes from before the sync");
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

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::types::{DataType, Device, PeerEntry};
    use crate::wire::HELLO_LEN;

    /// A holder on loopback that answers the hello as `id` and serves `bytes` as tensor
    /// "t", whatever hash was announced for it.
    async fn holder(id: PeerId, bytes: Vec<u8>) -> PeerEntry {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p2p_addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut bytes = bytes;
            while let Ok((mut s, _)) = l.accept().await {
                let mut hello = [0u8; HELLO_LEN];
                s.read_exact(&mut hello).await.unwrap();
                let ours = Hello {
                    kind: ConnectionKind::SharedState,
                    peer: id,
                };
                s.write_all(&ours.encode()).await.unwrap();
                let t = [TensorInfo {
                    name: "t".into(),
                    data: &mut bytes,
                    dtype: DataType::U8,
                    device: Device::Cpu,
                    allow_content_inequality: false,
                }];
                let _ = serve(s, &t, &AtomicU64::new(0)).await;
            }
        });
        PeerEntry {
            id,
            group: 0,
            p2p_addr,
        }
    }

    async fn run(holders: Vec<PeerEntry>, announced: u128, dest: &mut [u8]) -> (u64, bool) {
        let f = Fetch {
            name: "t".into(),
            sources: holders.iter().map(|h| (h.id, announced)).collect(),
        };
        let topology = Topology {
            ring: holders,
            group_epochs: vec![(0, 1)],
        };
        let staging = Semaphore::new(STAGING_BUDGET_UNITS as usize);
        let stall = Duration::from_secs(10);
        fetch(PeerId::random(), &topology, &f, dest, stall, &staging).await
    }

    /// 3 pieces and a bit, so the staging buffer is filled over several reads.
    const LEN: usize = 3 * PIECE + 12_345;

    fn good() -> Vec<u8> {
        (0..LEN).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_failing_their_hash_never_reach_the_destination() {
        let mut lie = good();
        lie[2 * PIECE + 7] ^= 1;
        let liar = holder(PeerId::random(), lie).await;
        let before = vec![9u8; LEN];
        let mut dest = before.clone();
        let (rx, ok) = run(vec![liar], tensor_hash(&good()), &mut dest).await;
        assert!(!ok);
        assert_eq!(rx, LEN as u64, "the whole lie was received");
        assert!(dest == before, "unverified bytes reached the destination");
    }

    #[tokio::test]
    async fn after_a_liar_the_next_holder_delivers_the_verified_copy() {
        let mut lie = good();
        lie[0] ^= 0x80;
        let liar = holder(PeerId::random(), lie).await;
        let honest = holder(PeerId::random(), good()).await;
        let mut dest = vec![9u8; LEN];
        let (rx, ok) = run(vec![liar, honest], tensor_hash(&good()), &mut dest).await;
        assert!(ok);
        assert_eq!(rx, 2 * LEN as u64);
        assert!(dest == good());
    }
}
