//! The ring's outgoing side, as the ring engine sees it: the connections to its ring
//! successor, plus one flag that says the set is closed.
//!
//! The op writes its frames to the sockets itself ([`Pool::send`]), on the thread that made
//! each payload a moment before, while it is still in that core's cache, and with no
//! hand-off to another thread per frame (docs/ARCHITECTURE.md §5, "Writes"). A plain
//! step-0 slice is written straight from the caller's send buffer ([`Payload::Input`]):
//! nothing copies it in user space. Several ops may share a connection, so each takes the
//! connection's [`Line`] for one frame at a time: the bytes of two frames never
//! interleave. A socket that takes nothing now makes the op wait for it to drain, among
//! the op's other waits, so the op keeps taking its frames meanwhile; what it has written
//! of a frame is kept with the line, so the op resumes where it stopped.
//!
//! On a protected connection (a run secret, docs/PROTOCOL.md §1.3) a frame is sealed by
//! the op that holds the line, right before its first byte is written, so the order the
//! key's counter is taken in is the order frames are written in, which the receiver checks.
//! The connection's writer task writes keepalives only while it holds the idle line.
//!
//! Tests drain connections in memory instead ([`Connection::Queue`]): a bounded queue of
//! frames per connection.

use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
#[cfg(test)]
use tokio::sync::mpsc;
use tokio::sync::{Notify, watch};

use super::bufpool::BufPool;
use crate::net::parts::Parts;
use crate::secure::{FrameTags, Protection, SealError, SendKey};
use crate::wire::{DATA_HEADER_LEN, DataHeader};

/// Where a frame's payload is.
#[derive(Debug)]
pub(crate) enum Payload {
    /// A buffer of its own (a received frame reduced or stored, a quantized slice).
    Owned(Bytes),
    /// These bytes of the caller's send buffer (a plain step-0 slice).
    Input(Range<usize>),
}

/// One frame the op owes its successor.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) header: DataHeader,
    pub(crate) payload: Payload,
    /// Set when the op takes the line of a protected connection for it.
    seal: Option<Seal>,
}

/// What sealing adds to a frame: it goes out as `head ‖ tags.header ‖ payload ‖
/// tags.body`, the header bytes exactly as they were authenticated, encoded once.
#[derive(Debug)]
struct Seal {
    head: [u8; DATA_HEADER_LEN],
    tags: FrameTags,
}

impl Outgoing {
    pub(crate) fn new(header: DataHeader, payload: Payload) -> Self {
        Self {
            header,
            payload,
            seal: None,
        }
    }

    /// Payload bytes, out of `input` (the caller's send buffer) for an input slice.
    fn body<'a>(&'a self, input: &'a [u8]) -> &'a [u8] {
        match &self.payload {
            Payload::Owned(b) => b,
            Payload::Input(r) => &input[r.clone()],
        }
    }

    /// The payload in a buffer of its own, copied into a pooled one if it is an input slice.
    fn take_owned(&mut self, input: &[u8], bufs: &BufPool) -> Bytes {
        match std::mem::replace(&mut self.payload, Payload::Owned(Bytes::new())) {
            Payload::Owned(b) => b,
            Payload::Input(r) => bufs.copy_of(&input[r]).freeze(),
        }
    }

    /// Seals the frame under `key` (an encrypted payload in a buffer of its own, copied
    /// from `bufs` if others share it).
    fn seal(&mut self, key: &mut SendKey, input: &[u8], bufs: &BufPool) -> Result<(), SealError> {
        let mut head = [0u8; DATA_HEADER_LEN];
        self.header.encode(&mut &mut head[..]);
        let tags = match key.protection() {
            Protection::Authenticate => key.seal_shared(&head, self.body(input))?,
            Protection::Encrypt => {
                let mut mine = self
                    .take_owned(input, bufs)
                    .try_into_mut()
                    .unwrap_or_else(|shared| bufs.copy_of(&shared));
                let tags = key.seal(&head, &mut mine);
                self.payload = Payload::Owned(mine.freeze());
                tags?
            }
        };
        self.seal = Some(Seal { head, tags });
        Ok(())
    }

    /// The frame's wire form: `header ‖ payload` plain, `head ‖ tag ‖ payload ‖ tag`
    /// sealed; `head` holds the encoded header of a plain frame.
    fn parts<'a>(&'a self, input: &'a [u8], head: &'a mut [u8; DATA_HEADER_LEN]) -> [&'a [u8]; 4] {
        let body = self.body(input);
        match &self.seal {
            Some(s) => [&s.head, &s.tags.header, body, &s.tags.body],
            None => {
                self.header.encode(&mut &mut head[..]);
                [&head[..], body, &[], &[]]
            }
        }
    }
}

/// A frame as an in-memory connection carries it (tests).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub(crate) header: DataHeader,
    pub(crate) payload: Bytes,
}

/// The sending key of one protected connection.
pub(crate) type Sealer = Mutex<SendKey>;

/// A socket's write side, as a line writes it: tried without waiting, and waited on.
pub(crate) trait Socket: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Resolves once the socket may take more.
    fn writable(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>>;
    /// Ends the connection in both directions now, whoever still holds the socket.
    fn shut_down(&self);
}

impl Socket for tokio::net::tcp::OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        crate::net::socket::try_send_vectored(self.as_ref(), bufs)
    }

    fn writable(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
        Box::pin(Self::writable(self))
    }

    fn shut_down(&self) {
        crate::net::socket::shut_down(self.as_ref());
    }
}

/// Who holds a line: an op's [`Lease`], or the writer task for a keepalive.
type Holder = u64;

/// The keepalive writer's holder id; leases count up from 1.
const KEEPALIVE: Holder = 0;

/// One connection's socket and the right to write it. Whoever writes holds the line for
/// one whole frame: an op from the first byte (or the seal) of its frame to the last,
/// across its waits for the socket; the writer task for a keepalive. Only the holder
/// seals, so the key's counter order is the write order.
#[derive(Debug)]
pub(crate) struct Line {
    socket: Arc<dyn Socket>,
    sealer: Option<Sealer>,
    state: Mutex<LineState>,
    /// Woken when the line is let go or closed.
    free: Notify,
}

#[derive(Debug)]
struct LineState {
    holder: Option<Holder>,
    /// Bytes of the holder's frame written so far; `started` once it is sealed or its
    /// first byte is out: from then on only its holder may go on writing the line.
    written: usize,
    started: bool,
    /// The connection failed or was closed: nobody writes it any more.
    closed: bool,
    /// When the last frame or keepalive was written whole.
    last_sent: Instant,
}

impl Line {
    pub(crate) fn new(socket: Arc<dyn Socket>, sealer: Option<SendKey>) -> Self {
        Self {
            socket,
            sealer: sealer.map(Mutex::new),
            state: Mutex::new(LineState {
                holder: None,
                written: 0,
                started: false,
                closed: false,
                last_sent: Instant::now(),
            }),
            free: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `who` holds the line; fails once the line is closed.
    async fn take(&self, who: Holder) -> Result<(), SendError> {
        loop {
            let notified = self.free.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return Err(SendError::Closed);
                }
                match st.holder {
                    None => {
                        st.holder = Some(who);
                        return Ok(());
                    }
                    Some(h) if h == who => return Ok(()),
                    Some(_) => {}
                }
            }
            notified.await;
        }
    }

    /// `who` wrote its frame whole and lets the line go.
    fn done(&self, who: Holder) {
        let mut st = self.lock();
        if st.holder == Some(who) {
            (st.holder, st.written, st.started) = (None, 0, false);
            st.last_sent = Instant::now();
        }
        drop(st);
        self.free.notify_waiters();
    }

    /// Lets go of a line `who` may hold; `true` if it held it with a frame begun, which
    /// can never be finished now.
    fn abandon(&self, who: Holder) -> bool {
        let mut st = self.lock();
        if st.holder != Some(who) {
            return false;
        }
        let broken = st.started;
        (st.holder, st.written, st.started) = (None, 0, false);
        drop(st);
        self.free.notify_waiters();
        broken
    }

    /// Writes `frame` whole while `who` holds the line, from where an earlier attempt of
    /// the same holder stopped (an op's wait for the socket may be cut short by its other
    /// waits). Seals it first on a protected connection.
    async fn write(
        &self,
        frame: &mut Outgoing,
        input: &[u8],
        bufs: &BufPool,
    ) -> Result<(), SendError> {
        if let Some(sealer) = &self.sealer
            && frame.seal.is_none()
        {
            self.lock().started = true; // the counter is taken: this frame must go next
            frame.seal(
                &mut sealer.lock().unwrap_or_else(|e| e.into_inner()),
                input,
                bufs,
            )?;
        }
        let mut head = [0u8; DATA_HEADER_LEN];
        self.write_held(&frame.parts(input, &mut head)).await
    }

    /// Writes `parts` while holding the line, resuming after the bytes already written.
    async fn write_held(&self, parts: &[&[u8]]) -> Result<(), SendError> {
        let mut rest = Parts::new(parts, self.lock().written);
        while !rest.is_done() {
            match self.socket.try_write_vectored(&rest.slices()) {
                Ok(n) => {
                    rest.wrote(n)?;
                    let mut st = self.lock();
                    st.written += n;
                    st.started = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.socket.writable().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The writer claims the idle line for a keepalive: only when nobody holds it and
    /// nothing has gone out for `interval`. `Err` says when to look again.
    fn claim_idle(&self, interval: Duration) -> Result<(), Instant> {
        let mut st = self.lock();
        let now = Instant::now();
        if st.holder.is_some() {
            // A frame is on its way: it is the keepalive, and resets the clock.
            return Err(now + interval);
        }
        let due = st.last_sent + interval;
        if now < due {
            return Err(due);
        }
        st.holder = Some(KEEPALIVE);
        Ok(())
    }

    /// Writes a keepalive (`frame`: the bare keepalive bytes, sealed here on a protected
    /// connection) if the line has been idle for `interval`; else says when to look again.
    pub(crate) async fn keepalive(
        &self,
        frame: &[u8],
        interval: Duration,
    ) -> Result<Result<(), Instant>, SendError> {
        if let Err(due) = self.claim_idle(interval) {
            return Ok(Err(due));
        }
        let wire = match &self.sealer {
            None => frame.to_vec(),
            Some(sealer) => {
                let mut key = sealer.lock().unwrap_or_else(|e| e.into_inner());
                let tags = key.seal(frame, &mut [])?;
                [frame, &tags.header[..], &tags.body[..]].concat()
            }
        };
        self.write_held(&[&wire]).await?;
        self.done(KEEPALIVE);
        Ok(Ok(()))
    }

    /// The connection ended: nobody writes it any more, whoever waits for it fails, and
    /// the successor sees the end now, not when the last op lets go of the pool.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.socket.shut_down();
        self.free.notify_waiters();
    }
}

/// One connection to the successor.
#[derive(Debug)]
pub(crate) enum Connection {
    /// A socket the op writes itself.
    Socket(Arc<Line>),
    /// A bounded queue drained in memory (tests).
    #[cfg(test)]
    Queue(mpsc::Sender<OutFrame>),
}

impl Connection {
    fn line(&self) -> Option<&Line> {
        match self {
            Self::Socket(line) => Some(line),
            #[cfg(test)]
            Self::Queue(_) => None,
        }
    }
}

/// The connections to one successor.
#[derive(Debug)]
pub(crate) struct Pool {
    conns: Vec<Connection>,
    /// Turned true when any connection fails, or to close them all.
    closed: watch::Sender<bool>,
}

/// Why a frame could not be sent: the connection cannot carry another one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("the connection is closed")]
    Closed,
    #[error("cannot seal a frame: {0}")]
    Seal(#[from] SealError),
    #[error("cannot write a frame: {0}")]
    Io(#[from] io::Error),
}

/// One op's right to take the lines of a [`Pool`]. Dropped, it lets go of any line it
/// still holds; if that line carries a frame it began and cannot finish now (the op
/// ended early), the pool is closed: the successor would read the next frame's bytes as
/// the rest of this one.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    who: Holder,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut broken = false;
        for line in self.pool.conns.iter().filter_map(Connection::line) {
            broken |= line.abandon(self.who);
        }
        if broken {
            tracing::debug!("an op ended with a frame half written: closing the pool");
            self.pool.close();
        }
    }
}

impl Pool {
    /// A pool over these connections (at least one), sharing one closed flag.
    pub(crate) fn new(conns: Vec<Connection>, closed: watch::Sender<bool>) -> Self {
        debug_assert!(!conns.is_empty());
        Self { conns, closed }
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub(crate) fn size(&self) -> usize {
        self.conns.len()
    }

    /// A lease for one op.
    pub(crate) fn lease(&self) -> Lease<'_> {
        static NEXT: AtomicU64 = AtomicU64::new(KEEPALIVE + 1);
        Lease {
            pool: self,
            who: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Sends `frame` on connection `index % size`, waiting for its line and its socket;
    /// `input` is the caller's send buffer (for [`Payload::Input`]). Cancelled (the op
    /// turned to another event), the lease keeps the line and the next call with the
    /// same frame goes on where this one stopped. On success the frame's own buffer is
    /// back in `bufs`.
    pub(crate) async fn send(
        &self,
        lease: &Lease<'_>,
        index: usize,
        frame: &mut Outgoing,
        input: &[u8],
        bufs: &BufPool,
    ) -> Result<(), SendError> {
        match &self.conns[index % self.conns.len()] {
            Connection::Socket(line) => {
                line.take(lease.who).await?;
                line.write(frame, input, bufs).await?;
                line.done(lease.who);
                if let Payload::Owned(b) =
                    std::mem::replace(&mut frame.payload, Payload::Input(0..0))
                {
                    bufs.recycle(b);
                }
                Ok(())
            }
            #[cfg(test)]
            Connection::Queue(queue) => {
                let room = queue.reserve().await.map_err(|_| SendError::Closed)?;
                room.send(OutFrame {
                    header: frame.header,
                    payload: frame.take_owned(input, bufs),
                });
                Ok(())
            }
        }
    }

    pub(crate) fn close(&self) {
        // Stored even when nobody watches yet (`send` would drop it).
        self.closed.send_replace(true);
    }

    /// Resolves once the pool is closed.
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::{TAG_LEN, Tag};
    use crate::wire::RingFrame;

    /// A socket that takes a pseudo-random number of bytes per call, often none, and is
    /// "writable" again after a yield.
    #[derive(Debug)]
    struct Fickle {
        state: Mutex<(u64, Vec<u8>)>,
    }

    impl Fickle {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                state: Mutex::new((0x9e37_79b9_7f4a_7c15, Vec::new())),
            })
        }
    }

    impl Socket for Fickle {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut st = self.state.lock().unwrap();
            st.0 ^= st.0 << 13;
            st.0 ^= st.0 >> 7;
            st.0 ^= st.0 << 17;
            let mut take = match st.0 % 4 {
                0 => 0,
                1 => (st.0 >> 8) as usize % 100,
                _ => (st.0 >> 8) as usize % 5000,
            };
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(take);
                st.1.extend_from_slice(&b[..k]);
                (take, n) = (take - k, n + k);
            }
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }

        fn writable(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
            Box::pin(async {
                tokio::task::yield_now().await;
                Ok(())
            })
        }

        fn shut_down(&self) {}
    }

    /// Takes `room` bytes, then never again.
    #[derive(Debug)]
    struct Stuck {
        room: Mutex<usize>,
    }

    impl Socket for Stuck {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            let n = bufs.iter().map(|b| b.len()).sum::<usize>().min(*room);
            *room -= n;
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }

        fn writable(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
            Box::pin(std::future::pending())
        }

        fn shut_down(&self) {}
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Reads `n` bytes off `wire` at `at`.
    fn take<'a>(wire: &'a [u8], at: &mut usize, n: usize) -> &'a [u8] {
        *at += n;
        &wire[*at - n..*at]
    }

    /// Ops on several threads share one connection whose socket often takes only part of
    /// a frame, and their waits for it are cut short at random: every frame arrives whole
    /// and in each op's order, plain, authenticated and encrypted (every sealed frame
    /// opens in write order: sealing goes with holding the line), whether its payload
    /// was its own or the caller's input.
    #[test]
    fn ops_sharing_a_connection_never_interleave_frames() {
        const OPS: usize = 4;
        const FRAMES: usize = 150;
        let rt = rt();
        for mode in [
            None,
            Some(Protection::Authenticate),
            Some(Protection::Encrypt),
        ] {
            let (send, mut recv) = match mode {
                Some(m) => {
                    let (s, r) = SendKey::pair_for_tests(m);
                    (Some(s), Some(r))
                }
                None => (None, None),
            };
            let socket = Fickle::new();
            let line = Arc::new(Line::new(socket.clone(), send));
            let pool = Arc::new(Pool::new(
                vec![Connection::Socket(line)],
                watch::channel(false).0,
            ));
            let bufs = Arc::new(BufPool::new(1 << 20));
            let ops: Vec<_> = (0..OPS)
                .map(|t| {
                    let (pool, bufs) = (pool.clone(), bufs.clone());
                    rt.spawn(async move {
                        let input = vec![t as u8; 6000];
                        let lease = pool.lease();
                        for i in 0..FRAMES {
                            let len = 1 + (i * 997) % 6000;
                            let mut header = DataHeader::sample(len as u32);
                            (header.tag, header.slice) = (t as u64, i as u32);
                            let payload = if i % 2 == 0 {
                                Payload::Input(6000 - len..6000)
                            } else {
                                Payload::Owned(vec![t as u8; len].into())
                            };
                            let mut frame = Outgoing::new(header, payload);
                            loop {
                                tokio::select! {
                                    r = pool.send(&lease, 0, &mut frame, &input, &bufs) => {
                                        r.unwrap();
                                        break;
                                    }
                                    () = tokio::task::yield_now() => {}
                                }
                            }
                        }
                    })
                })
                .collect();
            rt.block_on(async {
                for op in ops {
                    op.await.unwrap();
                }
            });
            assert!(!pool.is_closed());
            let wire = std::mem::take(&mut socket.state.lock().unwrap().1);
            let mut next = [0u32; OPS];
            let mut at = 0;
            while at < wire.len() {
                let head: [u8; DATA_HEADER_LEN] =
                    take(&wire, &mut at, DATA_HEADER_LEN).try_into().unwrap();
                if let Some(r) = &mut recv {
                    let tag: Tag = take(&wire, &mut at, TAG_LEN).try_into().unwrap();
                    r.open_header(&head, &tag).unwrap();
                }
                let RingFrame::Data(h) = RingFrame::decode(&head).unwrap() else {
                    panic!("{mode:?}: not a data frame at byte {at}");
                };
                let mut body = take(&wire, &mut at, h.len as usize).to_vec();
                if let Some(r) = &mut recv {
                    let tag: Tag = take(&wire, &mut at, TAG_LEN).try_into().unwrap();
                    r.open_body(&mut body, &tag).unwrap();
                }
                let t = h.tag as usize;
                assert_eq!(h.slice, next[t], "{mode:?}: op {t}'s frames in order");
                next[t] += 1;
                assert!(
                    body.iter().all(|&b| b == t as u8),
                    "{mode:?}: frame {} of op {t} whole",
                    h.slice
                );
            }
            assert_eq!(next, [FRAMES as u32; OPS], "{mode:?}: every frame arrived");
        }
    }

    /// An op that ends with a frame half written closes the pool (the successor could
    /// not tell its bytes from the next frame's); one that ends holding an untouched line
    /// lets it go, and the next op uses it.
    #[test]
    fn an_op_that_leaves_a_frame_half_written_closes_the_pool() {
        let rt = rt();
        for (room, closes) in [(10, true), (0, false)] {
            let line = Arc::new(Line::new(
                Arc::new(Stuck {
                    room: Mutex::new(room),
                }),
                None,
            ));
            let pool = Pool::new(
                vec![Connection::Socket(line.clone())],
                watch::channel(false).0,
            );
            let bufs = BufPool::new(1 << 20);
            rt.block_on(async {
                let lease = pool.lease();
                let mut frame = Outgoing::new(
                    DataHeader::sample(100),
                    Payload::Owned(vec![1u8; 100].into()),
                );
                let sent = pool.send(&lease, 0, &mut frame, &[], &bufs);
                let waited = tokio::time::timeout(Duration::from_millis(50), sent).await;
                assert!(waited.is_err(), "the socket never drains");
            });
            assert_eq!(pool.is_closed(), closes, "{room} bytes written");
            assert!(line.lock().holder.is_none(), "the line is let go");
        }
    }
}
