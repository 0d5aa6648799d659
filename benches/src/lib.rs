//! Benchmarks for pccl: shared helpers of the `allreduce` binary and the `kernels` bench.
//!
//! * `cargo run --release -p benches --bin allreduce` — ring all-reduce on loopback, one
//!   OS process per rank, beside a raw-TCP ring ceiling measured in the same run.
//! * `cargo bench -p benches` — pccl's reduce kernel per data type and op, beside
//!   single-core baselines (memcpy, crc32, f32 add loop).
//!
//! Throughput is always reported in GB/s with 1 GB = 10^9 bytes.

use std::time::Duration;

/// Parses a byte count: `4096`, `4K`/`4KiB`, `16M`/`16MiB`, `1G`/`1GiB` (binary units).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mul: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// `1 MiB`, `4 KiB`, `100 B`: the largest binary unit that divides `bytes` exactly.
pub fn fmt_size(bytes: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (m, u) in UNITS {
        if bytes >= m && bytes / m * m == bytes {
            return format!("{} {u}", bytes / m);
        }
    }
    format!("{bytes} B")
}

/// `n` communicators in this process (each with its own runtime, so the path is the same
/// as between processes), their p2p listeners on 127.0.0.1, all accepted into the run of
/// the master at `addr`; bounded by 60 s.
pub fn loopback_cluster(
    addr: std::net::SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<pccl::Communicator>> {
    loopback_cluster_with(addr, n, |_| {})
}

/// [`loopback_cluster`] with each peer's config adjusted by `configure` first (a run
/// secret, for one).
pub fn loopback_cluster_with(
    addr: std::net::SocketAddr,
    n: usize,
    configure: impl Fn(&mut pccl::CommunicatorConfig) + Clone + Send + 'static,
) -> anyhow::Result<Vec<pccl::Communicator>> {
    use pccl::{Attribute, Communicator, CommunicatorConfig};
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let configure = configure.clone();
            std::thread::spawn(move || -> anyhow::Result<Communicator> {
                let mut cfg = CommunicatorConfig::new(addr);
                cfg.bind_ip = "127.0.0.1".parse()?;
                cfg.p2p_port = 0;
                cfg.connect_attempts = 20;
                configure(&mut cfg);
                let c = Communicator::new(cfg)?;
                c.connect()?;
                let end = std::time::Instant::now() + Duration::from_secs(60);
                while c.attribute(Attribute::GlobalWorldSize)? < n {
                    anyhow::ensure!(std::time::Instant::now() < end, "the cluster did not form");
                    let _ = c.update_topology();
                }
                Ok(c)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("connect thread"))
        .collect()
}

/// Median of `v` (mean of the two middle values for an even count); `None` if empty.
pub fn median(v: &[Duration]) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2
    })
}

/// `bytes / t` in GB/s (10^9 bytes per second).
pub fn gbps(bytes: usize, t: Duration) -> f64 {
    let secs = t.as_secs_f64();
    if secs <= 0.0 {
        return f64::INFINITY;
    }
    bytes as f64 / secs / 1e9
}

/// The bus-bandwidth factor of a ring all-reduce over `n` ranks: each link carries
/// `2(n-1)/n` times the buffer, so `busbw = algbw * 2(n-1)/n` is comparable to link speed.
pub fn busbw_factor(n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    2.0 * (n as f64 - 1.0) / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_trip() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(fmt_size(128 << 20), "128 MiB");
        assert_eq!(fmt_size(4096), "4 KiB");
        assert_eq!(fmt_size(100), "100 B");
    }

    #[test]
    fn median_and_rates() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), Some(ms(2)));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Some(Duration::from_micros(2500))
        );
        assert_eq!(median(&[]), None);
        assert!((gbps(1_000_000_000, Duration::from_secs(1)) - 1.0).abs() < 1e-12);
        assert!((busbw_factor(2) - 1.0).abs() < 1e-12);
        assert!((busbw_factor(4) - 1.5).abs() < 1e-12);
    }
}
