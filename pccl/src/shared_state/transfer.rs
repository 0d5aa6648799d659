//! Tensor transfer between peers during a sync: a receiver dials a holder's p2p listener
//! (connection kind `SharedState`), asks for tensors by name and reads each into a staging
//! buffer, checks its hash there, and only then copies it into the user's memory. A bad or
//! truncated transfer falls back to the next holder; when none delivers, the user's tensor
//! was never written (docs/ARCHITECTURE.md §6, "A failed sync loses nothing"). A holder
//! serves only the receivers and tensors the master's plan names ([`Permits`]).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::TensorInfo;
use super::hash::tensor_hash;
use crate::net::sealed::{self, Keys, Secure};
use crate::net::{self, ConnectionError};
use crate::types::{PeerId, Topology};
use crate::wire::state::RESPONSE_LEN;
use crate::wire::{ConnectionKind, Fetch, Serve, StateRequest, StateResponse};

/// Bytes read per step; each step must finish within the stall timeout.
const PIECE: usize = 8 << 20;

/// Who may fetch what from this holder in the current sync: the (receiver, tensor index)
/// pairs of the master's plan (`SyncPlan.serve`), each served at most once, since a
/// receiver asks each of its sources for a tensor at most once. Dropped, with every
/// permission in it, when the sync ends.
#[derive(Debug, Default)]
pub(crate) struct Permits {
    designated: BTreeSet<PeerId>,
    left: Mutex<BTreeSet<(PeerId, usize)>>,
}

impl Permits {
    /// The permissions of `serve`; indices at or past `tensors` (no tensor of ours) are
    /// dropped with a warning.
    pub(crate) fn new(serve: &[Serve], tensors: usize) -> Self {
        let mut left = BTreeSet::new();
        for s in serve {
            for &i in &s.tensors {
                if (i as usize) < tensors {
                    left.insert((s.peer, i as usize));
                } else {
                    tracing::warn!(peer = %s.peer, index = i, "the master's plan names a tensor we do not have; ignored");
                }
            }
        }
        Self {
            designated: left.iter().map(|(p, _)| *p).collect(),
            left: Mutex::new(left),
        }
    }

    /// Whether the master designated `peer` as one of our receivers in this sync.
    pub(crate) fn designated(&self, peer: PeerId) -> bool {
        self.designated.contains(&peer)
    }

    /// Uses up `peer`'s permission to fetch our `index`-th tensor; false if it has none.
    fn take(&self, peer: PeerId, index: usize) -> bool {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.remove(&(peer, index))
    }
}

/// Serves the tensor requests of `from` (its identity was checked by the p2p gate) on
/// one connection until it closes it, adding the payload bytes to `sent` as they go (the
/// sync may end before the receiver hangs up). A peer the master did not designate is
/// closed at once and a request the plan does not permit is refused, each with a logged
/// reason and before any payload byte. Every read of a request and every piece written
/// has the transfer stall bound `stall`: a requester that goes silent is dropped.
pub(crate) async fn serve(
    mut stream: TcpStream,
    keys: Keys,
    from: PeerId,
    tensors: &[TensorInfo<'_>],
    permits: &Permits,
    stall: Duration,
    sent: &AtomicU64,
) -> Result<(), ConnectionError> {
    if !permits.designated(from) {
        tracing::warn!(%from, "shared-state connection refused: the master did not designate this peer as our receiver in this sync");
        return Ok(());
    }
    let (mut send, mut recv) = match keys {
        Some(k) => (Some(k.send), Some(k.recv)),
        None => (None, None),
    };
    // Encrypting needs a writable copy of each piece of the user's tensor.
    let mut scratch = Vec::new();
    loop {
        let read = net::read_control(&mut stream, recv.as_mut());
        let body = match tokio::time::timeout(stall, read).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::warn!(%from, ?stall, "shared-state requester went silent, dropped");
                return Err(ConnectionError::Timeout(stall));
            }
        };
        let req = StateRequest::decode(&body)?;
        let found = tensors
            .iter()
            .position(|t| t.name == req.name && t.data.len() as u64 == req.len);
        let t = match found {
            Some(i) if permits.take(from, i) => &tensors[i],
            other => {
                let why = if other.is_some() {
                    "the master did not designate this peer to fetch that tensor from us in this sync (or it was served already)"
                } else {
                    "no tensor of that name and length here"
                };
                tracing::warn!(%from, tensor = %req.name, why, "shared-state request refused");
                let refused = StateResponse::Refused.encode();
                stalled(stall, respond(&mut stream, send.as_mut(), &refused)).await?;
                return Ok(());
            }
        };
        let ok = StateResponse::Ok(req.len).encode();
        stalled(stall, respond(&mut stream, send.as_mut(), &ok)).await?;
        for piece in t.data.chunks(PIECE) {
            match send.as_mut() {
                // Sealed, each piece is a frame with an empty header (docs/PROTOCOL.md §5).
                Some(k) => {
                    let w = sealed::write_frame_shared(&mut stream, k, &[], piece, &mut scratch);
                    stalled(stall, w).await?;
                }
                None => timed(stall, stream.write_all(piece)).await?,
            }
            sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Most staging bytes held at once by one sync's fetches, in [`STAGING_UNIT`]s. A tensor
/// larger than this is staged alone, so a sync holds at most max(this, its largest
/// fetched tensor) of staging memory.
pub(crate) const STAGING_BUDGET_UNITS: u32 = 256;
/// The unit the staging budget is counted in.
const STAGING_UNIT: usize = 1 << 20;

/// A receiver holds its verified copies back until the master confirms the sync (see
/// [`Fetched::Held`]) when all it fetches in the sync totals at most this: up to this
/// much memory beyond the tensors themselves. A single tensor up to this size was staged
/// whole already, so holding it costs time, not a larger peak; past it, holding every
/// copy would double the memory of a large model, so copies go in as verified instead.
pub(crate) const HOLD_BUDGET: u64 = 1 << 30;

/// How a fetch ended.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// A verified copy, held back: it reaches the user's tensor only if the whole sync
    /// succeeds, so a failed sync leaves every receiver exactly as it was.
    Held(Vec<u8>),
    /// A verified copy, already in the user's tensor (the sync fetches more than
    /// [`HOLD_BUDGET`], so copies could not all be held back).
    Copied,
    /// No holder delivered a verified copy; the user's tensor is untouched.
    Failed,
}

/// Fetches one tensor, trying its holders in order. The bytes land in a staging buffer
/// (bounded by `staging`, see [`STAGING_BUDGET_UNITS`]) and count only once their hash
/// matches the holder's announced one; then, if `hold`, the verified copy is returned to
/// be applied when the sync succeeds, else it is copied into `dest` at once. `dest` holds
/// either its old bytes or a verified copy, never anything else. Returns the payload
/// bytes received (failed attempts included) and how the fetch ended.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch(
    me: PeerId,
    secure: Option<&Secure>,
    topology: &Topology,
    f: &Fetch,
    dest: &mut [u8],
    hold: bool,
    stall: Duration,
    staging: &Semaphore,
) -> (u64, Fetched) {
    let units = dest
        .len()
        .div_ceil(STAGING_UNIT)
        .min(STAGING_BUDGET_UNITS as usize) as u32;
    // The semaphore is never closed, so acquiring cannot fail; if it ever did, fetching
    // unbounded would be the wrong fallback.
    let Ok(_permit) = staging.acquire_many(units).await else {
        return (0, Fetched::Failed);
    };
    // Allocated per fetch and freed when it ends (or, held, when the sync ends), so no
    // staging memory outlives the sync.
    let mut stage = vec![0u8; dest.len()];
    let mut received = 0;
    for (holder, hash) in &f.sources {
        let Some(entry) = topology.ring.iter().find(|p| p.id == *holder) else {
            continue;
        };
        let got = fetch_from(me, secure, entry, &f.name, &mut stage, stall, &mut received);
        match got.await {
            Ok(()) => {
                if tensor_hash(&stage) == *hash {
                    if hold {
                        return (received, Fetched::Held(stage));
                    }
                    dest.copy_from_slice(&stage);
                    return (received, Fetched::Copied);
                }
                tracing::warn!(tensor = %f.name, %holder, "received tensor failed its hash check, trying the next holder");
            }
            Err(e) => {
                tracing::warn!(tensor = %f.name, %holder, error = %e, "transfer failed, trying the next holder")
            }
        }
    }
    tracing::warn!(tensor = %f.name, "no holder delivered a verified copy; the tensor keeps its bytes from before the sync");
    (received, Fetched::Failed)
}

async fn fetch_from(
    me: PeerId,
    secure: Option<&Secure>,
    holder: &crate::types::PeerEntry,
    name: &str,
    dest: &mut [u8],
    stall: Duration,
    received: &mut u64,
) -> Result<(), ConnectionError> {
    let kind = ConnectionKind::SharedState;
    let (mut stream, keys) = sealed::dial_link(holder, me, kind, secure, stall).await?;
    let (mut send, mut recv) = match keys {
        Some(k) => (Some(k.send), Some(k.recv)),
        None => (None, None),
    };
    let req = StateRequest {
        name: name.to_string(),
        len: dest.len() as u64,
    };
    net::write_control(&mut stream, send.as_mut(), |b| req.encode(b)).await?;
    let mut head = [0u8; RESPONSE_LEN];
    match recv.as_mut() {
        Some(k) => {
            let r = async {
                if !sealed::read_header(&mut stream, k, &mut head).await? {
                    return Err(ConnectionError::Closed);
                }
                sealed::read_body(&mut stream, k, &mut []).await
            };
            stalled(stall, r).await?;
        }
        None => {
            timed(stall, stream.read_exact(&mut head)).await?;
        }
    };
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
        match recv.as_mut() {
            Some(k) => {
                let r = async {
                    if !sealed::read_header(&mut stream, k, &mut []).await? {
                        return Err(ConnectionError::Closed);
                    }
                    sealed::read_body(&mut stream, k, piece).await
                };
                stalled(stall, r).await?;
            }
            None => {
                timed(stall, stream.read_exact(piece)).await?;
            }
        }
        *received += piece.len() as u64;
    }
    Ok(())
}

/// Writes a response: the fixed-size bytes as they are, or sealed as a frame's header
/// with an empty body.
async fn respond(
    stream: &mut TcpStream,
    key: Option<&mut crate::secure::SendKey>,
    response: &[u8],
) -> Result<(), ConnectionError> {
    match key {
        Some(k) => sealed::write_frame(stream, k, response, &mut []).await,
        None => Ok(stream.write_all(response).await?),
    }
}

/// Bounds a step that can fail with a [`ConnectionError`] by `limit`.
async fn stalled<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(ConnectionError::Timeout(limit)))
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

    /// The receiver the test holders are told to serve.
    const RECEIVER: PeerId = PeerId([0xab; 16]);

    /// A holder on loopback that answers the hello as `id` and serves `bytes` as tensor
    /// "t" (and `u`, 16 bytes), whatever hash was announced for it, to the peers of
    /// `serve` only, as one sync would.
    async fn holder_serving(id: PeerId, bytes: Vec<u8>, plan: Vec<Serve>) -> PeerEntry {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p2p_addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut bytes = bytes;
            let mut other = [7u8; 16];
            let t = [
                TensorInfo {
                    name: "t".into(),
                    data: &mut bytes,
                    dtype: DataType::U8,
                    device: Device::Cpu,
                    allow_content_inequality: false,
                },
                TensorInfo::new("u", &mut other[..]),
            ];
            let permits = Permits::new(&plan, t.len());
            while let Ok((mut s, _)) = l.accept().await {
                let mut hello = [0u8; HELLO_LEN];
                s.read_exact(&mut hello).await.unwrap();
                let from = crate::wire::Hello::decode(&hello).unwrap().peer;
                let ours = crate::wire::Hello {
                    kind: ConnectionKind::SharedState,
                    peer: id,
                };
                s.write_all(&ours.encode()).await.unwrap();
                let stall = Duration::from_secs(10);
                let _ = serve(s, None, from, &t, &permits, stall, &AtomicU64::new(0)).await;
            }
        });
        PeerEntry {
            id,
            group: 0,
            p2p_addr,
            static_key: [0; 32],
        }
    }

    /// A holder told to serve "t" to [`RECEIVER`].
    async fn holder(id: PeerId, bytes: Vec<u8>) -> PeerEntry {
        let plan = vec![Serve {
            peer: RECEIVER,
            tensors: vec![0],
        }];
        holder_serving(id, bytes, plan).await
    }

    async fn run_as(
        me: PeerId,
        holders: Vec<PeerEntry>,
        announced: u128,
        dest: &mut [u8],
    ) -> (u64, bool) {
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
        let (n, fetched) = fetch(me, None, &topology, &f, dest, false, stall, &staging).await;
        (n, matches!(fetched, Fetched::Copied))
    }

    async fn run(holders: Vec<PeerEntry>, announced: u128, dest: &mut [u8]) -> (u64, bool) {
        run_as(RECEIVER, holders, announced, dest).await
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
    async fn a_held_copy_leaves_the_destination_untouched_until_applied() {
        let honest = holder(PeerId::random(), good()).await;
        let f = Fetch {
            name: "t".into(),
            sources: vec![(honest.id, tensor_hash(&good()))],
        };
        let topology = Topology {
            ring: vec![honest],
            group_epochs: vec![(0, 1)],
        };
        let staging = Semaphore::new(STAGING_BUDGET_UNITS as usize);
        let before = vec![9u8; LEN];
        let mut dest = before.clone();
        let stall = Duration::from_secs(10);
        let (_, fetched) = fetch(
            RECEIVER, None, &topology, &f, &mut dest, true, stall, &staging,
        )
        .await;
        assert!(dest == before, "a held copy reached the destination early");
        match fetched {
            Fetched::Held(copy) => assert!(copy == good()),
            other => panic!("expected a held copy, got {other:?}"),
        }
        assert_eq!(staging.available_permits(), STAGING_BUDGET_UNITS as usize);
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

    /// The log lines written while a test runs.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The attack: a member the master did not designate asks a holder for a tensor; it
    /// gets no byte. The designated receiver gets the tensor once, and not a tensor it was
    /// not designated for.
    #[tokio::test]
    async fn only_the_designated_receiver_gets_only_its_tensors() {
        // The holder runs on this thread (a current-thread runtime): its log lands here.
        let logs = Logs::default();
        let sub = tracing_subscriber::fmt()
            .with_writer({
                let l = logs.clone();
                move || l.clone()
            })
            .with_ansi(false)
            .finish();
        let _log = tracing::subscriber::set_default(sub);
        let h = holder(PeerId::random(), good()).await;
        let stall = Duration::from_secs(10);
        let before = vec![9u8; LEN];
        let mut dest = before.clone();
        let intruder = PeerId::random();
        let (rx, ok) = run_as(intruder, vec![h.clone()], tensor_hash(&good()), &mut dest).await;
        assert!(!ok && rx == 0, "an undesignated peer received {rx} bytes");
        assert!(dest == before);
        assert!(
            logs.text()
                .contains("did not designate this peer as our receiver")
        );
        let mut rx = 0;
        let mut small = [0u8; 16];
        let r = fetch_from(RECEIVER, None, &h, "u", &mut small, stall, &mut rx).await;
        assert!(
            matches!(&r, Err(ConnectionError::Handshake(w)) if w.contains("refused")),
            "an undesignated tensor: {r:?}"
        );
        assert_eq!(rx, 0);
        assert!(logs.text().contains("shared-state request refused"));
        let (rx, ok) = run(vec![h.clone()], tensor_hash(&good()), &mut dest).await;
        assert!(ok && rx == LEN as u64 && dest == good());
        // Served once: asking again is refused.
        let (rx, ok) = run(vec![h], tensor_hash(&good()), &mut dest).await;
        assert!(!ok && rx == 0, "served twice");
    }

    /// A designated requester that connects and then says nothing is dropped after the
    /// stall bound, not waited on forever.
    #[tokio::test]
    async fn a_silent_requester_is_dropped_after_the_stall_bound() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut bytes = good();
        let t = [TensorInfo::new("t", &mut bytes[..])];
        let permits = Permits::new(
            &[Serve {
                peer: RECEIVER,
                tensors: vec![0],
            }],
            1,
        );
        let stall = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            serve(s, None, RECEIVER, &t, &permits, stall, &AtomicU64::new(0)),
        )
        .await
        .expect("serve waited past its stall bound");
        assert!(matches!(r, Err(ConnectionError::Timeout(_))), "{r:?}");
        assert!(started.elapsed() >= stall);
    }
}
