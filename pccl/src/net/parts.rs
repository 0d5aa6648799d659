//! Writing a frame that is several byte slices (a header, tags, a payload) as one run of
//! bytes, in as few system calls as the socket allows, from any byte of it on: a frame
//! that one thread began without waiting may be finished by another that waits.

use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

/// A position in the concatenation of some byte slices.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    parts: &'a [&'a [u8]],
    idx: usize,
    off: usize,
}

impl<'a> Parts<'a> {
    /// The bytes of `parts` after the first `skip`.
    pub(crate) fn new(parts: &'a [&'a [u8]], skip: usize) -> Self {
        let mut p = Self {
            parts,
            idx: 0,
            off: 0,
        };
        p.advance(skip);
        p
    }

    /// Every byte has been written.
    pub(crate) fn is_done(&self) -> bool {
        self.idx == self.parts.len()
    }

    /// The bytes still to write, as slices for one vectored write.
    fn slices(&self) -> Vec<IoSlice<'a>> {
        let mut v = Vec::with_capacity(self.parts.len() - self.idx);
        if let Some(first) = self.parts.get(self.idx) {
            v.push(IoSlice::new(&first[self.off..]));
            v.extend(self.parts[self.idx + 1..].iter().map(|p| IoSlice::new(p)));
        }
        v
    }

    /// Moves past `n` more bytes (and past empty slices, so `is_done` is exact).
    fn advance(&mut self, mut n: usize) {
        while self.idx < self.parts.len() {
            let left = self.parts[self.idx].len() - self.off;
            if n < left {
                self.off += n;
                return;
            }
            n -= left;
            self.idx += 1;
            self.off = 0;
        }
    }

    /// Accounts for a write that took `n` bytes; taking none is an error (the socket
    /// would never take the rest).
    fn wrote(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.advance(n);
        Ok(())
    }
}

/// A socket's write side that can be tried without waiting.
pub(crate) trait TryWrite: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl TryWrite for OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Self::try_write_vectored(self, bufs)
    }
}

/// Writes as much of `p` as `w` takes without waiting; returns the bytes written.
pub(crate) fn write_now(w: &dyn TryWrite, p: &mut Parts<'_>) -> io::Result<usize> {
    let mut total = 0;
    // Each round writes at least one byte, stops, or fails.
    while !p.is_done() {
        match w.try_write_vectored(&p.slices()) {
            Ok(n) => {
                p.wrote(n)?;
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Writes the rest of `p` to a socket shared with threads that try it without waiting
/// (`write_now`); the caller makes sure none does meanwhile.
pub(crate) async fn write_shared(w: &OwnedWriteHalf, p: &mut Parts<'_>) -> io::Result<()> {
    while !p.is_done() {
        match w.try_write_vectored(&p.slices()) {
            Ok(n) => p.wrote(n)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => w.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `parts` to a stream this task owns.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    let mut p = Parts::new(parts, 0);
    while !p.is_done() {
        let n = w.write_vectored(&p.slices()).await?;
        p.wrote(n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Takes at most `room` bytes in all, `per_call` at a time, then would block.
    #[derive(Debug)]
    struct Tight {
        room: Mutex<usize>,
        per_call: usize,
        got: Mutex<Vec<u8>>,
    }

    impl TryWrite for Tight {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            let mut take = (*room).min(self.per_call);
            if take == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            let mut got = self.got.lock().unwrap();
            for b in bufs {
                let k = b.len().min(take);
                got.extend_from_slice(&b[..k]);
                take -= k;
                n += k;
            }
            *room -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_frame_begun_without_waiting_is_finished_from_where_it_stopped() {
        let parts: [&[u8]; 4] = [b"head", b"", b"payload-bytes", b"tag"];
        let whole: Vec<u8> = parts.concat();
        for room in 0..=whole.len() {
            for per_call in [1, 3, 64] {
                let w = Tight {
                    room: Mutex::new(room),
                    per_call,
                    got: Mutex::new(Vec::new()),
                };
                let mut p = Parts::new(&parts, 0);
                let n = write_now(&w, &mut p).unwrap();
                assert_eq!(n, room);
                assert_eq!(p.is_done(), room == whole.len());
                // Whoever finishes starts again from the count alone.
                let rest = Parts::new(&parts, n);
                let mut tail = Vec::new();
                for s in rest.slices() {
                    tail.extend_from_slice(&s);
                }
                let mut all = w.got.into_inner().unwrap();
                all.extend_from_slice(&tail);
                assert_eq!(all, whole, "room {room}, {per_call} per call");
            }
        }
    }
}
