//! Socket options, in one place: the only file that touches socket2.

use std::io::{self, IoSlice};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Flags of every vectored send: `MSG_NOSIGNAL` where the platform has it. A write to a
/// connection whose other end has gone raises `SIGPIPE`, which ends a host program that
/// left it at its default (C and C++ programs do); plain sends from `std` and tokio ask
/// the kernel not to, but `writev` cannot, so vectored writes go through `sendmsg`.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// Applies the options every pccl TCP connection uses.
///
/// `TCP_NODELAY` because control messages are small and latency-bound (PCCL 1.0 paid ~40 ms
/// of delayed-ACK per op without it); `TCP_USER_TIMEOUT` so unacknowledged data to a frozen
/// or partitioned peer fails the socket in bounded time instead of ~15 minutes.
pub(crate) fn tune(stream: &TcpStream, user_timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(user_timeout))?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = user_timeout;
    sock.set_keepalive(true)?;
    Ok(())
}

/// Ends both directions of a connection now, whoever else still holds its socket: the
/// other side reads the end at once.
pub(crate) fn shut_down(stream: &TcpStream) {
    let _ = SockRef::from(stream).shutdown(std::net::Shutdown::Both);
}

/// Sends what of `bufs` the socket takes now, in one `sendmsg` that never raises
/// `SIGPIPE` (`SEND_FLAGS`); `WouldBlock` when it takes nothing, after which
/// `stream.writable()` waits for room.
pub(crate) fn try_send_vectored(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    stream.try_io(Interest::WRITABLE, || {
        SockRef::from(stream).send_vectored_with_flags(bufs, SEND_FLAGS)
    })
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
#[allow(unsafe_code)] // signal masks and pending signals are reachable only through libc
mod tests {
    use std::time::Instant;

    use super::*;

    /// Blocks `SIGPIPE` on this thread while it lives, so that a raised one stays pending
    /// where `raised` sees it (Linux queues a blocked signal even when its action is to be
    /// ignored, as a Rust program's `SIGPIPE` is), and consumes it on the way out.
    struct Watch {
        set: libc::sigset_t,
        old: libc::sigset_t,
    }

    impl Watch {
        fn new() -> Self {
            // SAFETY: both sets are initialised by sigemptyset before use; the calls only
            // write into them and change this thread's mask.
            unsafe {
                let mut set = std::mem::zeroed::<libc::sigset_t>();
                let mut old = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGPIPE);
                assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old), 0);
                Self { set, old }
            }
        }

        /// Whether a `SIGPIPE` was raised since `new`; takes it off the pending set.
        fn raised(&self) -> bool {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `set` is a valid set; with a zero timeout sigtimedwait returns at
            // once, with the signal number if one was pending, else -1.
            unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &zero) == libc::SIGPIPE }
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            let _ = self.raised();
            // SAFETY: restores the mask saved in `new`.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
        }
    }

    /// Writes with `send` to a connection whose other end has closed until a write fails;
    /// returns that error and whether the writes raised `SIGPIPE`.
    fn write_to_hung_up(
        send: impl Fn(&TcpStream, &[IoSlice<'_>]) -> io::Result<usize>,
    ) -> (io::Error, bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // One thread: the writes, and so any SIGPIPE they raise, happen on this one.
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let ours = TcpStream::connect(l.local_addr().expect("addr"))
                .await
                .expect("dial");
            drop(l.accept().await.expect("accept").0);
            let watch = Watch::new();
            let data = [7u8; 1024];
            let deadline = Instant::now() + Duration::from_secs(10);
            let err = loop {
                assert!(
                    Instant::now() < deadline,
                    "writes to a closed peer kept succeeding"
                );
                match send(&ours, &[IoSlice::new(&data), IoSlice::new(&data)]) {
                    // The first writes succeed; the peer's reset makes a later one fail.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => break e,
                }
            };
            (err, watch.raised())
        })
    }

    #[test]
    fn a_vectored_write_to_a_hung_up_peer_fails_without_sigpipe() {
        let (err, raised) = write_to_hung_up(try_send_vectored);
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
        assert!(!raised, "a write to a hung-up peer raised SIGPIPE");
    }

    /// The check above can fail: a plain `writev`, which the data path used before,
    /// does raise `SIGPIPE` (and would end a C host that left it at its default).
    #[test]
    fn a_plain_writev_to_a_hung_up_peer_raises_sigpipe() {
        let (_, raised) = write_to_hung_up(|s, bufs| s.try_write_vectored(bufs));
        assert!(
            raised,
            "the watch did not see the SIGPIPE that writev raises"
        );
    }
}
