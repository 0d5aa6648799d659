//! The benchmark's output: one table per world, every size's implementations side by side
//! (BENCHMARKS.md explains the columns).

use std::collections::BTreeMap;
use std::io::Write;

use benches::{busbw_factor, fmt_size, gbps};

use crate::Mode;
use crate::reports::Measured;

/// What a row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Impl {
    /// The blocking-thread TCP ring: the ceiling the ratios are taken against.
    Threads,
    /// The tokio TCP ring.
    Tokio,
    /// The hand-written blocking-thread ring all-reduce, with or without checksums.
    Bare {
        checksums: bool,
    },
    Gloo,
    /// pccl in one mode; `pass` counts earlier runs of the same mode in this world, so
    /// `--modes plain,http,plain,http` keeps all four rows, in the order they ran.
    Pccl {
        pass: usize,
        mode: Mode,
    },
}

impl Impl {
    fn label(self) -> String {
        match self {
            Self::Threads => "tcp ring (threads)".into(),
            Self::Tokio => "tcp ring (tokio)".into(),
            Self::Bare { checksums: false } => "bare all-reduce".into(),
            Self::Bare { checksums: true } => "bare + crc32".into(),
            Self::Gloo => "gloo".into(),
            Self::Pccl { pass, mode } => {
                let name = match mode {
                    Mode::Plain => "pccl".to_string(),
                    m => format!("pccl {}", m.name()),
                };
                if pass == 0 {
                    name
                } else {
                    format!("{name} #{}", pass + 1)
                }
            }
        }
    }

    fn is_ring(self) -> bool {
        matches!(self, Self::Threads | Self::Tokio)
    }

    /// Bytes one link carries per call: the whole buffer for a TCP ring stream,
    /// `2(n-1)/n` of it for a ring all-reduce.
    fn bus_factor(self, n: usize) -> f64 {
        if self.is_ring() { 1.0 } else { busbw_factor(n) }
    }
}

/// One world's results: per implementation, per size.
pub(crate) type World = BTreeMap<Impl, BTreeMap<usize, Measured>>;

pub(crate) fn print_header() {
    for line in [
        "busbw = bytes/time x 2(n-1)/n for the all-reduces, bytes/time per stream for the TCP rings;",
        "vs gloo, vs ceil (against tcp ring (threads)) and x plain are busbw ratios;",
        "CPU s/GB = user+system CPU of all n workers in the timed calls / (bus factor x bytes x iters),",
        "  CPU/gloo its ratio to gloo's; peak RSS = the largest VmHWM of one worker during the size,",
        "  over bufs = that minus 2 x size (the worker's own input and output buffers)",
    ] {
        println!("{line}");
    }
}

/// Prints world `n`'s table; `x_plain` adds the column comparing pccl modes to plain.
pub(crate) fn print_world(n: usize, sizes: &[usize], iters: usize, world: &World, x_plain: bool) {
    println!();
    println!("world {n}");
    println!(
        "{:>9}  {:<18} {:>10} {:>10} {:>7} {:>7}{} {:>8} {:>8} {:>12} {:>9}  {:>8}",
        "size",
        "impl",
        "median ms",
        "busbw GB/s",
        "vs gloo",
        "vs ceil",
        if x_plain { " x plain" } else { "" },
        "CPU s/GB",
        "CPU/gloo",
        "peak RSS MiB",
        "over bufs",
        "crc32"
    );
    for &bytes in sizes {
        let busbw = |i: Impl| {
            let m = world.get(&i)?.get(&bytes)?;
            Some(gbps(bytes, m.time) * i.bus_factor(n))
        };
        let cpu_per_gb = |i: Impl| {
            let m = world.get(&i)?.get(&bytes)?;
            let bus = i.bus_factor(n) * bytes as f64 * iters as f64;
            Some(m.cpu.as_secs_f64() / (bus / 1e9))
        };
        let ratio = |a: Option<f64>, b: Option<f64>, same: bool| match (a, b) {
            (Some(a), Some(b)) if !same && b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        for (&imp, per) in world {
            let Some(m) = per.get(&bytes) else { continue };
            let bw = busbw(imp);
            let cpu = cpu_per_gb(imp);
            let xp = match imp {
                // Against plain mode of the same pass (or the first, if it has none).
                Impl::Pccl { pass, .. } if x_plain => {
                    let plain = [pass, 0]
                        .map(|pass| Impl::Pccl {
                            pass,
                            mode: Mode::Plain,
                        })
                        .into_iter()
                        .find(|p| world.contains_key(p))
                        .unwrap_or(imp);
                    format!(" {:>7}", ratio(bw, busbw(plain), imp == plain))
                }
                _ if x_plain => format!(" {:>7}", "-"),
                _ => String::new(),
            };
            let rss_mib = m.rss_kib as f64 / 1024.0;
            let over = rss_mib - 2.0 * bytes as f64 / f64::from(1 << 20);
            println!(
                "{:>9}  {:<18} {:>10.3} {:>10.3} {:>7} {:>7}{xp} {:>8.3} {:>8} {:>12.1} {:>+9.1}  {:>8}",
                fmt_size(bytes),
                imp.label(),
                m.time.as_secs_f64() * 1e3,
                bw.unwrap_or(0.0),
                ratio(bw, busbw(Impl::Gloo), imp == Impl::Gloo),
                ratio(bw, busbw(Impl::Threads), imp == Impl::Threads),
                cpu.unwrap_or(0.0),
                ratio(cpu, cpu_per_gb(Impl::Gloo), imp == Impl::Gloo),
                rss_mib,
                over,
                m.crc.map_or_else(|| "-".into(), |c| format!("{c:08x}")),
            );
        }
    }
    let _ = std::io::stdout().flush();
}
