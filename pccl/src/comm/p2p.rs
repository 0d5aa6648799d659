//! Peer-to-peer data connections. Each peer dials `pool_size` connections to its ring
//! successor and reads frames from the connections its predecessor dialled, so every
//! connection carries data one way and nobody races to dial. Inbound connections of every
//! kind pass the gate (`gate.rs`) before anything is answered or read past the hello.
//!
//! A ring connection may sit idle for minutes between training steps, but a silent one
//! must not live forever: the dialler sends a keepalive frame on a connection that has
//! carried nothing for `KEEPALIVE_INTERVAL`, and the acceptor closes a connection on which
//! nothing has arrived for `p2p_idle_timeout` while it was waiting to read
//! (docs/PROTOCOL.md §4.1). Keepalives go only on idle connections, so the data path is
//! unchanged while frames flow.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::gate::Gate;
use crate::collectives::bufpool::BufPool;
use crate::collectives::link::{Connection, Line, Pool};
use crate::collectives::registry::{ConnId, Registry};
use crate::error::Error;
use crate::net::sealed::{self, Secure};
use crate::net::slots::{SharedSlots, Slot};
use crate::net::{self, ConnectionError};
use crate::secure::RecvKey;
use crate::shared_state::StateDoor;
use crate::types::{PeerEntry, PeerId};
use crate::wire::{ConnectionKind, DATA_HEADER_LEN, Hello, KEEPALIVE, RingFrame};

/// How long a p2p dial or handshake may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A ring connection that has carried nothing for this long gets a keepalive. Part of the
/// protocol: an acceptor's idle timeout must be well above it (docs/PROTOCOL.md §4.1).
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// The p2p side of a communicator.
#[derive(Debug)]
pub(crate) struct P2p {
    me: PeerId,
    pool_size: usize,
    pools: Mutex<HashMap<PeerId, Arc<Pool>>>,
    /// Serialises dials so two ops never open two pools to one peer.
    dialing: tokio::sync::Mutex<()>,
    /// The run secret and our key pair, in an authenticated run.
    secure: Option<Secure>,
}

impl P2p {
    pub(crate) fn new(me: PeerId, pool_size: usize, secure: Option<Secure>) -> Self {
        Self {
            me,
            secure,
            pool_size: pool_size.max(1),
            pools: Mutex::new(HashMap::new()),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// The open pool to `peer`, dialling it first if there is none.
    pub(crate) async fn pool(&self, peer: &PeerEntry) -> Result<Arc<Pool>, Error> {
        if let Some(p) = self.existing(peer.id) {
            return Ok(p);
        }
        let _guard = self.dialing.lock().await;
        if let Some(p) = self.existing(peer.id) {
            return Ok(p);
        }
        let pool = Arc::new(
            self.dial(peer)
                .await
                .map_err(|e| Error::RankConnectionFailed {
                    peer: peer.id,
                    reason: e.to_string(),
                })?,
        );
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.id, pool.clone());
        Ok(pool)
    }

    fn existing(&self, peer: PeerId) -> Option<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.get(&peer).filter(|p| !p.is_closed()).cloned()
    }

    /// Closes pools to peers no longer in `keep`.
    pub(crate) fn retain(&self, keep: impl Fn(PeerId) -> bool) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, pool| {
                let k = keep(*id) && !pool.is_closed();
                if !k {
                    pool.close();
                }
                k
            });
    }

    async fn dial(&self, peer: &PeerEntry) -> Result<Pool, ConnectionError> {
        let mut streams = Vec::with_capacity(self.pool_size);
        let dials = (0..self.pool_size).map(|_| {
            sealed::dial_link(
                peer,
                self.me,
                ConnectionKind::P2p,
                self.secure.as_ref(),
                DIAL_TIMEOUT,
            )
        });
        for s in futures::future::join_all(dials).await {
            streams.push(s?);
        }
        let (closed, _) = watch::channel(false);
        let mut writers = Vec::with_capacity(streams.len());
        for (stream, keys) in streams {
            let span = tracing::debug_span!("p2p-writer", to = %peer.id);
            let (rd, wr) = stream.into_split();
            let line = Arc::new(Line::new(Arc::new(wr), keys.map(|k| k.send)));
            let writer = Writer { line: line.clone() };
            tokio::spawn(writer.run(rd, closed.clone()).instrument(span));
            writers.push(Connection::Socket(line));
        }
        tracing::debug!(to = %peer.id, n = writers.len(), "p2p pool open");
        Ok(Pool::new(writers, closed))
    }
}

/// The task that watches one ring connection the ops write (link.rs, [`Line`]): it writes
/// a keepalive while the line is idle, and when the successor hangs up or the pool is
/// closed it closes the line (which shuts the socket down).
struct Writer {
    line: Arc<Line>,
}

impl Writer {
    async fn run(self, mut rd: OwnedReadHalf, closed: watch::Sender<bool>) {
        // The acceptor never writes after its hello: the read side ending means it closed
        // the connection (it refused us, or we left its topology), so the pool is closed at
        // once and the next op dials afresh instead of losing its first frames to a dead
        // socket.
        let hung_up = async move {
            let mut byte = [0u8; 1];
            let _ = rd.read(&mut byte).await;
        };
        tokio::pin!(hung_up);
        let mut closed_rx = closed.subscribe();
        let mut due = Instant::now() + KEEPALIVE_INTERVAL;
        loop {
            let keepalive = async {
                tokio::time::sleep_until(due).await;
                self.line.keepalive(&KEEPALIVE, KEEPALIVE_INTERVAL).await
            };
            let sent = tokio::select! {
                r = keepalive => r,
                _ = net::stopped(&mut closed_rx) => break,
                _ = &mut hung_up => {
                    tracing::debug!("the successor closed a ring connection");
                    break;
                }
            };
            match sent {
                Ok(Ok(())) => due = Instant::now() + KEEPALIVE_INTERVAL,
                Ok(Err(next)) => due = Instant::from_std(next),
                Err(e) => {
                    tracing::debug!(error = %e, "p2p keepalive failed");
                    break;
                }
            }
        }
        self.line.close();
        let _ = closed.send(true);
    }
}

/// Binds the p2p listener: on `port` exactly, or scanning upward from it.
pub(crate) fn bind(ip: IpAddr, port: u16, scan: u16) -> Result<TcpListener, Error> {
    net::listen(ip, port, scan)
        .map_err(|e| Error::InvalidUsage(format!("cannot bind a p2p listener on {ip}: {e}")))
}

/// What the listener's tasks share.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) me: PeerId,
    /// The run secret and our key pair, in an authenticated run: every inbound link must
    /// prove the static key listed for the id it claims.
    pub(crate) secure: Option<Secure>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) bufs: Arc<BufPool>,
    pub(crate) door: Arc<StateDoor>,
    /// Bounds the hello and the identity wait of every inbound connection.
    pub(crate) handshake_timeout: Duration,
    /// Largest data frame payload a predecessor sends: our slice plus quantization metadata.
    pub(crate) max_payload: usize,
    /// One slot per connection that is not identified yet, shared fairly among source
    /// addresses (`net::slots`).
    pub(crate) pending: Arc<SharedSlots>,
    /// A ring connection on which nothing arrives for this long, while we wait to read
    /// it, is closed.
    pub(crate) idle_timeout: Duration,
    /// How many ring connections were closed for silence (for tests and operators).
    pub(crate) idle_closed: Arc<AtomicU64>,
}

/// Accepts p2p connections until `stop`; each is identified and admitted by the gate
/// (docs/PROTOCOL.md §1.2), then served by its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_conn = 0u64;
    let mut refusals = net::Throttle::new(Duration::from_secs(1));
    loop {
        let (stream, addr) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "p2p accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = net::stopped(&mut stop) => return,
        };
        let Some((slot, eviction)) = inbound.pending.take(addr.ip()) else {
            drop(stream);
            // Rate-limited: a stranger opening connections in a loop must not flood the log.
            if let Some(n) = refusals.hit() {
                tracing::warn!(
                    %addr,
                    refused = n,
                    "too many unidentified p2p connections: new ones are closed at once"
                );
            }
            continue;
        };
        next_conn += 1;
        let conn = ConnId(next_conn);
        let inbound = inbound.clone();
        let stop = stop.clone();
        let span = tracing::debug_span!("p2p-reader", %addr);
        tokio::spawn(
            async move {
                tokio::select! {
                    served = serve_inbound(stream, addr, conn, slot, &inbound, stop) => {
                        if let Err(e) = served {
                            tracing::warn!(error = %e, "p2p connection dropped");
                        }
                    }
                    () = eviction.wait() => {
                        tracing::debug!("unidentified p2p connection evicted for one from a lighter address");
                    }
                }
                inbound.registry.drop_conn(conn);
            }
            .instrument(span),
        );
    }
}

async fn serve_inbound(
    mut stream: TcpStream,
    addr: SocketAddr,
    conn: ConnId,
    slot: Slot,
    inbound: &Inbound,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    net::socket::tune(&stream, net::USER_TIMEOUT)?;
    let deadline = Instant::now() + inbound.handshake_timeout;
    let (hello, secured) = net::accept_hello(&mut stream, inbound.handshake_timeout).await?;
    let from = hello.peer;
    if secured != inbound.secure.is_some() {
        // Every member of a run agrees on holding the secret: this is no member.
        let why = if secured {
            "it offers a run secret and this peer has none"
        } else {
            "it has no run secret and this run requires one"
        };
        tracing::warn!(claimed = %from, kind = ?hello.kind, %addr, why, "p2p connection refused");
        return Ok(());
    }
    let listed = match inbound
        .gate
        .admit(from, hello.kind, addr.ip(), deadline)
        .await
    {
        Ok(key) => key,
        Err(why) => {
            // Nothing was answered or read beyond the hello: a refused dialler learns
            // nothing.
            tracing::warn!(claimed = %from, kind = ?hello.kind, %addr, why, "p2p connection refused");
            return Ok(());
        }
    };
    let ours = Hello {
        kind: hello.kind,
        peer: inbound.me,
    };
    stream.write_all(&ours.encode_flagged(secured)).await?;
    let keys = match &inbound.secure {
        None => None,
        Some(sec) => {
            // The dialler must prove the static key the master listed for the id it
            // claims; until it has, nothing is read or served and the slot is held.
            let left = deadline.saturating_duration_since(Instant::now());
            match sealed::respond(
                &mut stream,
                sec,
                hello.kind,
                from,
                inbound.me,
                Some(listed),
                left,
            )
            .await
            {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(claimed = %from, kind = ?hello.kind, %addr, error = %e, "p2p connection refused: link handshake failed");
                    return Ok(());
                }
            }
        }
    };
    drop(slot);
    match hello.kind {
        ConnectionKind::Benchmark => crate::topology::bandwidth::sink(stream, keys).await,
        ConnectionKind::SharedState => {
            if !inbound.door.hand(from, stream, keys) {
                tracing::debug!(%from, "shared-state request outside a sync, closed");
            }
            Ok(())
        }
        _ => {
            // An idle ring connection stays open while its peer is in the run and keeps
            // it alive; once the peer leaves the topology, or the connection falls
            // silent, it is closed (its early frames go with it).
            let mut known = inbound.gate.watch();
            let quiet = Quiet::new();
            let mut key = keys.map(|k| k.recv);
            tokio::select! {
                r = read_loop(&mut stream, key.as_mut(), from, conn, inbound, &quiet) => {
                    if matches!(r, Err(ConnectionError::Auth(_))) {
                        inbound.registry.link_failed(from);
                    }
                    r
                }
                _ = net::stopped(&mut stop) => Ok(()),
                _ = known.wait_for(|k| !k.contains(from)) => {
                    tracing::debug!(%from, "ring connection of a peer that left, closed");
                    Ok(())
                }
                _ = quiet.expired(inbound.idle_timeout) => {
                    inbound.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        %from,
                        %addr,
                        idle = ?inbound.idle_timeout,
                        "ring connection silent for too long (no frame, no keepalive), closed"
                    );
                    Ok(())
                }
            }
        }
    }
}

/// When a ring connection last gave us a byte, for its idle deadline. Shared by the read
/// loop, which stamps it, and the watchdog racing it; while the loop hands a frame to the
/// registry (which may hold it back for minutes when the early-frame buffer is full) we are
/// not waiting on the peer, and the clock is paused.
struct Quiet {
    start: Instant,
    /// Milliseconds from `start` to the last byte; `PAUSED` while not reading.
    last_ms: AtomicU64,
}

impl Quiet {
    const PAUSED: u64 = u64::MAX;

    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Something arrived (or we start waiting again): the idle clock restarts.
    fn heard(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(Self::PAUSED - 1);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn pause(&self) {
        self.last_ms.store(Self::PAUSED, Ordering::Relaxed);
    }

    /// Resolves once we have waited `limit` without a byte.
    async fn expired(&self, limit: Duration) {
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            if last == Self::PAUSED {
                tokio::time::sleep(limit).await;
                continue;
            }
            let due = self.start + Duration::from_millis(last) + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

async fn read_loop(
    stream: &mut TcpStream,
    mut key: Option<&mut RecvKey>,
    from: PeerId,
    conn: ConnId,
    inbound: &Inbound,
    quiet: &Quiet,
) -> Result<(), ConnectionError> {
    let mut head = [0u8; DATA_HEADER_LEN];
    loop {
        if let Some(k) = key.as_deref_mut() {
            // Sealed: the header's tag is checked before anything in it is trusted.
            if !sealed::read_header(stream, k, &mut head).await? {
                return Ok(());
            }
        } else {
            match stream.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        quiet.heard();
        let header = match RingFrame::decode(&head)? {
            RingFrame::Data(h) => h,
            RingFrame::Keepalive => {
                if let Some(k) = key.as_deref_mut() {
                    sealed::read_body(stream, k, &mut []).await?;
                }
                continue;
            }
        };
        let len = header.len as usize;
        if len > inbound.max_payload {
            return Err(ConnectionError::Handshake(format!(
                "a {len}-byte frame is larger than our slice size allows"
            )));
        }
        let mut payload = inbound.bufs.get(len);
        while payload.len() < len {
            let n = (&mut *stream)
                .take((len - payload.len()) as u64)
                .read_buf(&mut payload)
                .await?;
            if n == 0 {
                return Err(ConnectionError::Closed);
            }
            quiet.heard();
        }
        let crc_ok = match key.as_deref_mut() {
            // A failed tag: the frame was altered, replayed, reordered or injected. The
            // link is closed (the caller logs why); the op fails as on a lost link. The
            // tag covers every byte, so a sealed frame carries no CRC (crc = 0).
            Some(k) => {
                sealed::read_tag_and_open(stream, k, &mut payload).await?;
                true
            }
            None => header.verify(&payload).is_ok(),
        };
        if !crc_ok {
            tracing::warn!(%from, tag = header.tag, "payload checksum mismatch");
        }
        quiet.pause();
        inbound
            .registry
            .deliver_on(conn, header, payload, from, crc_ok)
            .await;
        quiet.heard();
    }
}
