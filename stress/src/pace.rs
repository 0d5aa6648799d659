//! The loopback fallback's bandwidth cap: `SO_MAX_PACING_RATE` on every TCP socket of this
//! process (docs/WAN.md: it caps one socket, even on 127.0.0.1).
//!
//! pccl opens its sockets itself and has no pacing setting, so the worker sweeps its own
//! file descriptors after every topology change and sets the option on each socket. A
//! peer's cap is split evenly over its connection pool.

use std::os::fd::RawFd;

/// Sets `SO_MAX_PACING_RATE` (bytes/s) on every socket this process holds; returns how
/// many took it.
pub(crate) fn pace_all_sockets(bytes_per_sec: u64) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let rate = bytes_per_sec.min(u64::from(u32::MAX - 1)) as u32;
    let mut n = 0;
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: setsockopt(2) on a descriptor of this process with a u32 that lives for
        // the call; a descriptor closed meanwhile only makes the call fail (EBADF/ENOTSOCK).
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_MAX_PACING_RATE,
                (&raw const rate).cast(),
                size_of::<u32>() as u32,
            )
        };
        if r == 0 {
            n += 1;
        }
    }
    n
}
