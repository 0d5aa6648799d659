//! The ring's outgoing side, as the ring engine sees it: the connections to its ring
//! successor, each a bounded queue of frames, plus one flag that says the set is closed.
//!
//! Whoever owns the sockets (the communicator's p2p module) creates a [`Pool`] from the
//! sending ends and drains each receiving end into a socket; tests drain them in memory.
//! The bounded queues are the back-pressure: a ring that runs ahead of its slowest
//! connection waits in [`Pool::reserve`].
//!
//! On a protected connection (a run secret, docs/PROTOCOL.md §1.3) a frame is sealed as it
//! is queued, by the thread that made its payload a moment before: the MAC (or the
//! encryption) reads the payload while it is still in that core's cache, where the
//! connection's writer, on another thread, would fetch it from memory first. Sealing
//! takes the connection's [`Sealer`] lock and queues the frame before letting go, so the
//! queue's order is the key's counter order, which the receiver checks.
//!
//! For the same reason, and to spare a hand-off to the writer per frame, the thread that
//! queues a frame writes it to the socket itself when nothing is queued or being written
//! ahead of it and the socket takes it without waiting ([`Line`]; docs/ARCHITECTURE.md §5,
//! "Writes"). Only what the socket does not take at once goes through the queue, and a
//! step-0 slice is then the only payload copied out of the caller's buffer
//! ([`Permit::send_slice`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::bufpool::BufPool;
use crate::net::parts::{Parts, TryWrite, write_now};
use crate::secure::{FrameTags, Protection, SealError, SendKey};
use crate::wire::{DATA_HEADER_LEN, DataHeader};

/// One frame to send.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub(crate) header: DataHeader,
    pub(crate) payload: Bytes,
    /// Set as the frame is queued on a protected connection (the payload then encrypted,
    /// if the connection encrypts).
    pub(crate) seal: Option<Seal>,
    /// Bytes of the frame's wire form already written to the socket by the thread that
    /// queued it: the writer sends the rest.
    pub(crate) written: usize,
}

/// What sealing adds to a frame. The writer sends `head ‖ tags.header ‖ payload ‖
/// tags.body`: the header bytes go out exactly as they were authenticated, encoded once.
#[derive(Debug)]
pub(crate) struct Seal {
    pub(crate) head: [u8; DATA_HEADER_LEN],
    pub(crate) tags: FrameTags,
}

impl OutFrame {
    /// A frame not sealed yet.
    pub(crate) fn new(header: DataHeader, payload: Bytes) -> Self {
        Self {
            header,
            payload,
            seal: None,
            written: 0,
        }
    }

    /// The frame's wire form, in parts; `head` holds the encoded header of a plain frame.
    pub(crate) fn parts<'a>(&'a self, head: &'a mut [u8; DATA_HEADER_LEN]) -> [&'a [u8]; 4] {
        wire_parts(&self.header, self.seal.as_ref(), &self.payload, head)
    }
}

/// A frame's wire form: `header ‖ payload` plain, `head ‖ tag ‖ payload ‖ tag` sealed.
fn wire_parts<'a>(
    header: &DataHeader,
    seal: Option<&'a Seal>,
    payload: &'a [u8],
    head: &'a mut [u8; DATA_HEADER_LEN],
) -> [&'a [u8]; 4] {
    match seal {
        Some(s) => [&s.head, &s.tags.header, payload, &s.tags.body],
        None => {
            header.encode(&mut &mut head[..]);
            [&head[..], payload, &[], &[]]
        }
    }
}

/// The sending key of one protected connection, shared by everyone who queues frames on
/// it and by its writer, which seals its keepalives under the same lock, and only once it
/// holds the idle line ([`Line::claim_idle`]), so they too take their counter in the order
/// they are written.
pub(crate) type Sealer = Arc<Mutex<SendKey>>;

/// The socket of one connection, shared by its writer task and the threads that queue
/// frames on it. Whoever writes holds the line: a queuing thread for one non-blocking
/// write under the lock, and only while nothing is queued or being written (else its
/// frame would overtake them); the writer from taking a frame off the queue until it has
/// written all of it. So the bytes of two frames never interleave, and frames go out in
/// the order they were queued. Lock order: a connection's [`Sealer`], then its line.
#[derive(Debug)]
pub(crate) struct Line {
    socket: Arc<dyn TryWrite>,
    state: Mutex<LineState>,
}

#[derive(Debug)]
struct LineState {
    /// Frames sent into the queue and not yet taken by the writer.
    queued: usize,
    /// The writer is writing something it took.
    busy: bool,
    /// The writer has stopped: nobody writes any more.
    closed: bool,
    /// When the last frame or keepalive was written whole.
    last_sent: Instant,
}

impl LineState {
    fn free(&self) -> bool {
        self.queued == 0 && !self.busy && !self.closed
    }
}

impl Line {
    pub(crate) fn new(socket: Arc<dyn TryWrite>) -> Self {
        Self {
            socket,
            state: Mutex::new(LineState {
                queued: 0,
                busy: false,
                closed: false,
                last_sent: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer took a frame off the queue and writes it now.
    pub(crate) fn take(&self) {
        let mut st = self.lock();
        st.queued = st.queued.saturating_sub(1);
        st.busy = true;
    }

    /// The writer claims the idle line for a keepalive: only when nothing is queued or
    /// being written and nothing has gone out for `interval`. `Err` says when the next
    /// one may be due.
    pub(crate) fn claim_idle(&self, interval: Duration) -> Result<(), Instant> {
        let mut st = self.lock();
        let now = Instant::now();
        if !st.free() {
            // A frame is on its way: it is the keepalive, and resets the clock.
            return Err(now + interval);
        }
        let due = st.last_sent + interval;
        if now < due {
            return Err(due);
        }
        st.busy = true;
        Ok(())
    }

    /// The writer wrote all of what it took or claimed.
    pub(crate) fn done(&self) {
        let mut st = self.lock();
        st.busy = false;
        st.last_sent = Instant::now();
    }

    /// The writer stopped: frames queued from now on are dropped with the queue.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }
}

/// One connection: its queue, its socket (none where tests drain the queue in memory)
/// and, when protected, its key.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) queue: mpsc::Sender<OutFrame>,
    pub(crate) line: Option<Arc<Line>>,
    pub(crate) sealer: Option<Sealer>,
}

/// The connections to one successor.
#[derive(Debug)]
pub(crate) struct Pool {
    conns: Vec<Connection>,
    /// Turned true when any connection fails, or to close them all.
    closed: watch::Sender<bool>,
}

/// Room for one frame on one connection of a [`Pool`].
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    room: mpsc::Permit<'a, OutFrame>,
    line: Option<&'a Line>,
    sealer: Option<&'a Sealer>,
}

/// A frame's payload as the sender holds it.
enum Body<'a> {
    Owned(Bytes),
    /// Part of the caller's buffer: copied only if it must wait in the queue.
    Borrowed(&'a [u8]),
}

impl Body<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Owned(b) => b,
            Body::Borrowed(s) => s,
        }
    }

    fn into_owned(self, bufs: &BufPool) -> Bytes {
        match self {
            Body::Owned(b) => b,
            Body::Borrowed(s) => {
                let mut copy = bufs.get(s.len());
                copy.extend_from_slice(s);
                copy.freeze()
            }
        }
    }
}

/// Why a frame could not be sent: the connection cannot carry another one, and the
/// caller closes the pool.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("cannot seal a frame: {0}")]
    Seal(#[from] SealError),
    #[error("cannot write a frame: {0}")]
    Io(#[from] std::io::Error),
}

impl Permit<'_> {
    /// Sends `frame`, sealed first when the connection is protected (an encrypted
    /// payload that others still share is encrypted in a copy from `bufs`).
    pub(crate) fn send(self, frame: OutFrame, bufs: &BufPool) -> Result<(), SendError> {
        self.send_body(frame.header, Body::Owned(frame.payload), bufs)
    }

    /// Sends a frame whose payload is `payload`, a part of the caller's buffer: copied
    /// only when the socket does not take the whole frame at once, or to be encrypted.
    pub(crate) fn send_slice(
        self,
        header: DataHeader,
        payload: &[u8],
        bufs: &BufPool,
    ) -> Result<(), SendError> {
        self.send_body(header, Body::Borrowed(payload), bufs)
    }

    fn send_body(
        self,
        header: DataHeader,
        body: Body<'_>,
        bufs: &BufPool,
    ) -> Result<(), SendError> {
        let Some(sealer) = self.sealer else {
            return self.deliver(header, None, body, bufs);
        };
        let mut head = [0u8; DATA_HEADER_LEN];
        header.encode(&mut &mut head[..]);
        // Held until the frame is written or queued: counter order is write order.
        let mut key = sealer.lock().unwrap_or_else(|e| e.into_inner());
        let (tags, body) = match key.protection() {
            Protection::Authenticate => (key.seal_shared(&head, body.bytes())?, body),
            Protection::Encrypt => {
                let mut mine = match body.into_owned(bufs).try_into_mut() {
                    Ok(mine) => mine,
                    Err(shared) => {
                        let mut copy = bufs.get(shared.len());
                        copy.extend_from_slice(&shared);
                        copy
                    }
                };
                let tags = key.seal(&head, &mut mine)?;
                (tags, Body::Owned(mine.freeze()))
            }
        };
        self.deliver(header, Some(Seal { head, tags }), body, bufs)
    }

    /// Writes the frame now if the line is free and the socket takes it whole; else
    /// queues it, with what was written of it.
    fn deliver(
        self,
        header: DataHeader,
        seal: Option<Seal>,
        body: Body<'_>,
        bufs: &BufPool,
    ) -> Result<(), SendError> {
        let mut written = 0;
        let mut line = self.line.map(|l| (l, l.lock()));
        if let Some((l, st)) = &mut line
            && st.free()
        {
            let mut head = [0u8; DATA_HEADER_LEN];
            let parts = wire_parts(&header, seal.as_ref(), body.bytes(), &mut head);
            let mut rest = Parts::new(&parts, 0);
            written = write_now(&*l.socket, &mut rest)?;
            if rest.is_done() {
                st.last_sent = Instant::now();
                drop(line);
                if let Body::Owned(b) = body {
                    bufs.recycle(b);
                }
                return Ok(());
            }
        }
        if let Some((_, st)) = &mut line {
            st.queued += 1;
        }
        self.room.send(OutFrame {
            header,
            payload: body.into_owned(bufs),
            seal,
            written,
        });
        Ok(())
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

    /// Waits for room on connection `index % size`; fails if that connection is gone.
    pub(crate) async fn reserve(
        &self,
        index: usize,
    ) -> Result<Permit<'_>, mpsc::error::SendError<()>> {
        let conn = &self.conns[index % self.conns.len()];
        Ok(Permit {
            room: conn.queue.reserve().await?,
            line: conn.line.as_deref(),
            sealer: conn.sealer.as_ref(),
        })
    }

    pub(crate) fn close(&self) {
        let _ = self.closed.send(true);
    }

    /// Resolves once the pool is closed.
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, IoSlice};

    use super::*;
    use crate::wire::RingFrame;

    /// A socket that takes a pseudo-random number of bytes per call, often none.
    #[derive(Debug)]
    struct Fickle {
        state: Mutex<(u64, Vec<u8>)>,
    }

    impl TryWrite for Fickle {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut st = self.state.lock().unwrap();
            st.0 ^= st.0 << 13;
            st.0 ^= st.0 >> 7;
            st.0 ^= st.0 << 17;
            let mut take = match st.0 % 4 {
                0 => return Err(io::ErrorKind::WouldBlock.into()),
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
    }

    /// Threads write frames straight to a socket that often takes only part of one, and
    /// queue the rest for a writer: every frame arrives whole, each thread's in the order
    /// it sent them, whether its payload was its own or borrowed.
    #[test]
    fn direct_writes_and_the_writer_never_interleave_frames() {
        const THREADS: usize = 4;
        const FRAMES: usize = 300;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let socket = Arc::new(Fickle {
            state: Mutex::new((0x9e37_79b9_7f4a_7c15, Vec::new())),
        });
        let line = Arc::new(Line::new(socket.clone()));
        let (queue, mut rx) = mpsc::channel::<OutFrame>(4);
        let pool = Arc::new(Pool::new(
            vec![Connection {
                queue,
                line: Some(line.clone()),
                sealer: None,
            }],
            watch::channel(false).0,
        ));
        let bufs = Arc::new(BufPool::new(1 << 20));
        let writer = {
            let (line, socket) = (line.clone(), socket.clone());
            rt.spawn(async move {
                while let Some(f) = rx.recv().await {
                    line.take();
                    let mut head = [0u8; DATA_HEADER_LEN];
                    let parts = f.parts(&mut head);
                    let mut rest = Parts::new(&parts, f.written);
                    while !rest.is_done() {
                        write_now(&*socket, &mut rest).unwrap();
                        tokio::task::yield_now().await;
                    }
                    line.done();
                }
            })
        };
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pool, bufs) = (pool.clone(), bufs.clone());
                rt.spawn(async move {
                    for i in 0..FRAMES {
                        let body = vec![t as u8; 1 + (i * 997) % 6000];
                        let mut header = DataHeader::sample(body.len() as u32);
                        (header.tag, header.slice) = (t as u64, i as u32);
                        let room = pool.reserve(0).await.unwrap();
                        if i % 2 == 0 {
                            room.send_slice(header, &body, &bufs).unwrap();
                        } else {
                            room.send(OutFrame::new(header, body.into()), &bufs).unwrap();
                        }
                    }
                })
            })
            .collect();
        rt.block_on(async {
            for p in producers {
                p.await.unwrap();
            }
        });
        drop(pool);
        rt.block_on(writer).unwrap();
        let wire = std::mem::take(&mut socket.state.lock().unwrap().1);
        let mut next = [0u32; THREADS];
        let mut at = 0;
        while at < wire.len() {
            let head: [u8; DATA_HEADER_LEN] = wire[at..at + DATA_HEADER_LEN].try_into().unwrap();
            let RingFrame::Data(h) = RingFrame::decode(&head).unwrap() else {
                panic!("not a data frame at byte {at}");
            };
            let t = h.tag as usize;
            assert_eq!(h.slice, next[t], "thread {t}'s frames in order");
            next[t] += 1;
            at += DATA_HEADER_LEN;
            let body = &wire[at..at + h.len as usize];
            assert!(body.iter().all(|&b| b == t as u8), "frame {} of {t} whole", h.slice);
            at += h.len as usize;
        }
        assert_eq!(next, [FRAMES as u32; THREADS], "every frame arrived");
    }

    /// Ops on several threads queue frames on one protected connection at once: the
    /// receiver opens every frame in queue order, because sealing (which takes the next
    /// counter) and queuing happen under one lock.
    #[test]
    fn frames_sealed_on_many_threads_open_in_queue_order() {
        const THREADS: usize = 4;
        const FRAMES: usize = 200;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for mode in [Protection::Authenticate, Protection::Encrypt] {
            let (send, mut recv) = SendKey::pair_for_tests(mode);
            let (queue, mut rx) = mpsc::channel(4);
            let sealer = Some(Arc::new(Mutex::new(send)));
            let pool = Arc::new(Pool::new(
                vec![Connection {
                    queue,
                    line: None,
                    sealer,
                }],
                watch::channel(false).0,
            ));
            let bufs = Arc::new(BufPool::new(4096));
            for t in 0..THREADS {
                let (pool, bufs) = (pool.clone(), bufs.clone());
                rt.spawn(async move {
                    for i in 0..FRAMES {
                        let payload = Bytes::from(vec![t as u8; 64 + i]);
                        let frame =
                            OutFrame::new(DataHeader::sample(payload.len() as u32), payload);
                        let room = pool.reserve(0).await.unwrap();
                        room.send(frame, &bufs).unwrap();
                    }
                });
            }
            rt.block_on(async {
                for _ in 0..THREADS * FRAMES {
                    let f = rx.recv().await.unwrap();
                    let seal = f.seal.expect("sealed as queued");
                    let mut head = [0u8; DATA_HEADER_LEN];
                    f.header.encode(&mut &mut head[..]);
                    assert_eq!(seal.head, head, "the sealed header bytes are the header's");
                    recv.open_header(&seal.head, &seal.tags.header).unwrap();
                    let mut body = f.payload.to_vec();
                    recv.open_body(&mut body, &seal.tags.body).unwrap();
                    assert_eq!(body.len(), f.header.len as usize);
                    assert!(
                        body.iter().all(|&b| b == body[0]),
                        "{mode:?}: plaintext back"
                    );
                }
            });
        }
    }
}
