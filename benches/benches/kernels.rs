//! Single-core throughput baselines, printed in GB/s (10^9 bytes per second).
//!
//! `cargo bench -p benches --bench kernels` measures, per buffer size:
//! * `memcpy`        — `copy_from_slice` (bytes read = bytes written = size);
//! * `crc32`         — `crc32fast::hash` (what the allreduce parity check uses);
//! * `f32 add (ref)` — `acc[i] += x[i]`, the plain zip loop that pccl's aligned `f32` sum
//!   kernel reduces to; a reference for the kernel, not the kernel itself.
//!
//! TODO: pccl's reduce kernels (`collectives::reduce::reduce_into`) are crate-private and
//! no public API runs them without the network, so their throughput cannot be measured
//! from here; it is measured by the unit-test helper inside pccl (`collectives/reduce.rs`).
//!
//! `cargo bench -p benches -- --test` (as CI runs it) uses tiny sizes and a few
//! repetitions so it finishes in well under a second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::{fmt_size, gbps, median};

struct Plan {
    sizes: Vec<usize>,
    /// Minimum measuring time per (kernel, size).
    min_time: Duration,
    /// Minimum repetitions per (kernel, size).
    min_reps: usize,
}

fn plan() -> Plan {
    let test_mode = std::env::args().skip(1).any(|a| a == "--test");
    if test_mode {
        Plan {
            sizes: vec![4 << 10, 64 << 10],
            min_time: Duration::ZERO,
            min_reps: 3,
        }
    } else {
        Plan {
            sizes: vec![64 << 10, 1 << 20, 16 << 20, 128 << 20],
            min_time: Duration::from_millis(300),
            min_reps: 5,
        }
    }
}

/// Runs `f` until both `min_time` and `min_reps` are reached; the median repetition.
fn time(p: &Plan, mut f: impl FnMut()) -> Duration {
    f(); // warm caches and page in the buffers
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < p.min_reps || start.elapsed() < p.min_time {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    median(&samples).expect("at least one sample")
}

fn fill(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32)
        .collect()
}

fn main() {
    let p = plan();
    println!("single-core baselines, median repetition, GB/s = 1e9 bytes of buffer per second");
    println!(
        "{:>9} {:>12} {:>12} {:>14}",
        "size", "memcpy", "crc32", "f32 add (ref)"
    );
    for &bytes in &p.sizes {
        let n = bytes / 4;
        let src = fill(n, 1);
        let mut acc = fill(n, 2);
        let mut dst = vec![0f32; n];

        let t_copy = time(&p, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        });
        let src_bytes: &[u8] = bytemuck::cast_slice(&src);
        let t_crc = time(&p, || {
            black_box(crc32fast::hash(black_box(src_bytes)));
        });
        let t_add = time(&p, || {
            for (a, x) in acc.iter_mut().zip(black_box(&src)) {
                *a += *x;
            }
            black_box(&mut acc);
        });
        println!(
            "{:>9} {:>12.2} {:>12.2} {:>14.2}",
            fmt_size(bytes),
            gbps(bytes, t_copy),
            gbps(bytes, t_crc),
            gbps(bytes, t_add)
        );
    }
}
