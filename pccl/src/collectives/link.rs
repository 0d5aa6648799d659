//! The ring's outgoing side, as the ring engine sees it: the connections to its ring
//! successor, each a bounded queue of frames, plus one flag that says the set is closed.
//!
//! Whoever owns the sockets (the communicator's p2p module) creates a [`Pool`] from the
//! sending ends and drains each receiving end into a socket; tests drain them in memory.
//! The bounded queues are the back-pressure: a ring that runs ahead of its slowest
//! connection waits in [`Pool::reserve`].

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::wire::DataHeader;

/// One frame to send.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub(crate) header: DataHeader,
    pub(crate) payload: Bytes,
}

/// The connections to one successor.
#[derive(Debug)]
pub(crate) struct Pool {
    writers: Vec<mpsc::Sender<OutFrame>>,
    /// Turned true when any connection fails, or to close them all.
    closed: watch::Sender<bool>,
}

impl Pool {
    /// A pool over these connection queues (at least one), sharing one closed flag.
    pub(crate) fn new(writers: Vec<mpsc::Sender<OutFrame>>, closed: watch::Sender<bool>) -> Self {
        debug_assert!(!writers.is_empty());
        Self { writers, closed }
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub(crate) fn size(&self) -> usize {
        self.writers.len()
    }

    /// Waits for room on connection `index % size`; fails if that connection is gone.
    pub(crate) async fn reserve(
        &self,
        index: usize,
    ) -> Result<mpsc::Permit<'_, OutFrame>, mpsc::error::SendError<()>> {
        self.writers[index % self.writers.len()].reserve().await
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
