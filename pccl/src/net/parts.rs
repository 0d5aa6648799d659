//! Writing a frame that is several byte slices (a header, tags, a payload) as one run of
//! bytes, in as few system calls as the socket allows, from any byte of it on: an op whose
//! wait for the socket was cut short goes on with its frame where it stopped.

use std::io::{self, IoSlice};

use tokio::net::TcpStream;

use super::socket::try_send_vectored;

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
    pub(crate) fn slices(&self) -> Vec<IoSlice<'a>> {
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
    pub(crate) fn wrote(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.advance(n);
        Ok(())
    }
}

/// Writes all of `parts` to a stream this task owns (`try_send_vectored`: never
/// `SIGPIPE`).
pub(crate) async fn write_all(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let mut p = Parts::new(parts, 0);
    while !p.is_done() {
        match try_send_vectored(stream, &p.slices()) {
            Ok(n) => p.wrote(n)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_begun_elsewhere_goes_on_from_where_it_stopped() {
        let parts: [&[u8]; 4] = [b"head", b"", b"payload-bytes", b"tag"];
        let whole: Vec<u8> = parts.concat();
        for skip in 0..=whole.len() {
            for step in [1, 3, 64] {
                let mut p = Parts::new(&parts, skip);
                let mut got = Vec::new();
                while !p.is_done() {
                    let mut n = 0;
                    for s in p.slices() {
                        let k = s.len().min(step - n);
                        got.extend_from_slice(&s[..k]);
                        n += k;
                    }
                    p.wrote(n).unwrap();
                }
                assert_eq!(got, whole[skip..], "skip {skip}, {step} at a time");
            }
        }
        assert!(
            Parts::new(&parts, 0).wrote(0).is_err(),
            "a write of nothing is an error"
        );
    }
}
