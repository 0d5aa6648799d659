//! Socket options, in one place: the only file that touches socket2.

use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

/// Applies the options every pccl TCP connection uses.
///
/// `TCP_NODELAY` because control messages are small and latency-bound (PCCL 1.0 paid ~40 ms
/// of delayed-ACK per op without it); `TCP_USER_TIMEOUT` so unacknowledged data to a frozen
/// or partitioned peer fails the socket in bounded time instead of ~15 minutes.
pub(crate) fn tune(stream: &TcpStream, user_timeout: Duration) -> std::io::Result<()> {
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
