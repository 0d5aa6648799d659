//! What every worker measures about itself per size, child side: the wall time of each
//! timed iteration (`T bytes iter nanos`), the CPU time (user + system, all threads) spent
//! inside the timed iterations (`CPU bytes nanos`) and the peak resident set while the
//! size ran (`RSS bytes kib`). The gloo worker (`benches/gloo_worker.py`) prints the same
//! lines the same way.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;

/// User + system CPU time of this process so far, all threads (`getrusage(RUSAGE_SELF)`,
/// microsecond resolution, so summing per-iteration differences stays accurate).
fn cpu_now() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable rusage; getrusage only writes into it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage returned 0, so it filled `ru` (and zeroed() made it valid anyway).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Peak resident set of this process in KiB (`VmHWM`), 0 when unknown.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One size's measurements; `start` it before the size's buffers are allocated.
pub(crate) struct SizeMeter {
    bytes: usize,
    cpu: Duration,
}

/// Taken by [`SizeMeter::begin`] just before a timed iteration.
pub(crate) struct Mark {
    wall: Instant,
    cpu: Duration,
}

impl SizeMeter {
    /// Resets the peak-RSS mark to the current RSS (`/proc/self/clear_refs`, "5"), so the
    /// peak reported for this size is this size's. Where the kernel refuses, the reported
    /// peak is the peak since the process started: still an upper bound.
    pub(crate) fn start(bytes: usize) -> Self {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Self {
            bytes,
            cpu: Duration::ZERO,
        }
    }

    pub(crate) fn begin() -> Mark {
        Mark {
            cpu: cpu_now(),
            wall: Instant::now(),
        }
    }

    /// Ends timed iteration `k` begun at `m`: prints its `T` line, adds its CPU time.
    pub(crate) fn end(&mut self, m: Mark, k: usize) -> Result<()> {
        let dt = m.wall.elapsed();
        self.cpu += cpu_now().saturating_sub(m.cpu);
        let out = std::io::stdout();
        writeln!(out.lock(), "T {} {k} {}", self.bytes, dt.as_nanos())?;
        Ok(())
    }

    /// Prints the size's `CPU` and `RSS` lines.
    pub(crate) fn finish(self) -> Result<()> {
        let out = std::io::stdout();
        let mut out = out.lock();
        writeln!(out, "CPU {} {}", self.bytes, self.cpu.as_nanos())?;
        writeln!(out, "RSS {} {}", self.bytes, peak_rss_kib())?;
        Ok(())
    }
}
