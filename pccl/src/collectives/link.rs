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

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::bufpool::BufPool;
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
        }
    }
}

/// The sending key of one protected connection, shared by everyone who queues frames on
/// it and by its writer, which seals its keepalives under the same lock, and only while
/// the queue is empty, so they too take their counter in the order they are written.
pub(crate) type Sealer = Arc<Mutex<SendKey>>;

/// One connection: its queue and, when protected, its key.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) queue: mpsc::Sender<OutFrame>,
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
    sealer: Option<&'a Sealer>,
}

impl Permit<'_> {
    /// Queues `frame`, sealed first when the connection is protected (an encrypted
    /// payload that others still share is encrypted in a copy from `bufs`). An error
    /// means the connection cannot carry another frame: the caller closes the pool.
    pub(crate) fn send(self, mut frame: OutFrame, bufs: &BufPool) -> Result<(), SealError> {
        let Some(sealer) = self.sealer else {
            self.room.send(frame);
            return Ok(());
        };
        let mut head = [0u8; DATA_HEADER_LEN];
        frame.header.encode(&mut &mut head[..]);
        let mut key = sealer.lock().unwrap_or_else(|e| e.into_inner());
        let tags = match key.protection() {
            Protection::Authenticate => key.seal_shared(&head, &frame.payload)?,
            Protection::Encrypt => {
                let mut body = match std::mem::take(&mut frame.payload).try_into_mut() {
                    Ok(mine) => mine,
                    Err(shared) => {
                        let mut copy = bufs.get(shared.len());
                        copy.extend_from_slice(&shared);
                        copy
                    }
                };
                let tags = key.seal(&head, &mut body);
                frame.payload = body.freeze();
                tags?
            }
        };
        frame.seal = Some(Seal { head, tags });
        self.room.send(frame);
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
    use super::*;

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
                vec![Connection { queue, sealer }],
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
