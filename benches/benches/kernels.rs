//! Single-core throughput of pccl's reduce kernel and of the baselines it is judged by,
//! printed in GB/s (10^9 bytes per second).
//!
//! `cargo bench -p benches --bench kernels` prints three tables:
//!
//! 1. Baselines per buffer size: `memcpy` (`copy_from_slice`), `crc32` (`crc32fast::hash`,
//!    what the all-reduce parity checks use) and `f32 add (ref)` (`acc[i] += x[i]`, the
//!    plain zip loop the kernel's aligned `f32` sum reduces to).
//! 2. The reduce kernel itself, `pccl::kernels::reduce_into` (the function the ring runs on
//!    every received slice), for every data type and op at 1, 8 and 64 MiB, on buffers
//!    aligned for the type, plus `sum` with the accumulator one byte off alignment (the
//!    kernel's bounce-buffer path, taken for slices of network buffers and C pointers).
//!    `avg` is not a column: the kernel sums for it (the division happens once, after the
//!    last hop). GB/s counts the accumulator's bytes: the kernel reads both buffers and
//!    writes one, so memory traffic is three times that.
//!
//! 3. Result stores (`pccl::kernels::store_results`): 1 MiB frames copied one after the
//!    other into a results buffer (128 MiB, far beyond the caches, so each pass finds it
//!    cold), ordinary copy against the streaming stores the ring uses for such buffers.
//!
//! Inputs are positive normal floats (small integers for integer types) and, for `prod`,
//! all ones: the accumulator never becomes subnormal (which would time the FPU's slow path,
//! not the kernel) however many repetitions run.
//!
//! `cargo bench -p benches --bench kernels -- --test` (or `--quick`) uses tiny sizes and a
//! few repetitions so it finishes in about a second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::{fmt_size, gbps, median};
use pccl::kernels::{reduce_into, store_results};
use pccl::{DataType, ReduceOp};

struct Plan {
    /// Sizes of the baseline table and of the kernel table.
    sizes: Vec<usize>,
    reduce_sizes: Vec<usize>,
    /// Minimum measuring time per (kernel, size).
    min_time: Duration,
    /// Minimum repetitions per (kernel, size).
    min_reps: usize,
}

fn plan() -> Plan {
    let test_mode = std::env::args()
        .skip(1)
        .any(|a| a == "--test" || a == "--quick");
    if test_mode {
        Plan {
            sizes: vec![4 << 10, 64 << 10],
            reduce_sizes: vec![64 << 10],
            min_time: Duration::ZERO,
            min_reps: 3,
        }
    } else {
        Plan {
            sizes: vec![64 << 10, 1 << 20, 16 << 20, 128 << 20],
            reduce_sizes: vec![1 << 20, 8 << 20, 64 << 20],
            min_time: Duration::from_millis(200),
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
    baselines(&p);
    println!();
    kernel(&p);
    println!();
    stores(&p);
}

/// Frames copied into a large results buffer, as the ring stores what it receives.
fn stores(p: &Plan) {
    let (frame, total) = match p.min_time.is_zero() {
        true => (64 << 10, 1 << 20),
        false => (1 << 20, 128 << 20),
    };
    println!(
        "result stores: {} frames into a {} results buffer, one thread, median pass,\n\
         GB/s = 1e9 bytes of results per second",
        fmt_size(frame),
        fmt_size(total)
    );
    println!("{:>10} {:>10}", "copy", "streamed");
    let src: Vec<u8> = (0..frame).map(|i| (i * 7 + 1) as u8).collect();
    let mut dst = vec![0u8; total];
    let mut row = Vec::new();
    for stream in [false, true] {
        let t = time(p, || {
            for out in dst.chunks_mut(frame) {
                store_results(black_box(out), black_box(&src), stream);
            }
        });
        row.push(gbps(total, t));
    }
    println!("{:>10.2} {:>10.2}", row[0], row[1]);
}

fn baselines(p: &Plan) {
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

        let t_copy = time(p, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        });
        let src_bytes: &[u8] = bytemuck::cast_slice(&src);
        let t_crc = time(p, || {
            black_box(crc32fast::hash(black_box(src_bytes)));
        });
        let t_add = time(p, || {
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

/// `n` elements of `dtype` as bytes: positive normal values (1 ≤ x < 2 for floats, 1..=100
/// for integers), or all ones.
fn elements(dtype: DataType, n: usize, ones: bool, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * dtype.size());
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..n {
        // xorshift64: cheap, deterministic, good enough to defeat constant folding.
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        let r = if ones { 0 } else { z };
        let small = if ones { 1 } else { 1 + r % 100 };
        match dtype {
            DataType::U8 | DataType::I8 => out.push(small as u8),
            DataType::I16 | DataType::U16 => out.extend((small as u16).to_le_bytes()),
            DataType::U32 | DataType::I32 => out.extend((small as u32).to_le_bytes()),
            DataType::U64 | DataType::I64 => out.extend(small.to_le_bytes()),
            // Exponent of 1.0, random mantissa: [1, 2).
            DataType::F16 => out.extend((0x3c00 | (r & 0x3ff) as u16).to_le_bytes()),
            DataType::Bf16 => out.extend((0x3f80 | (r & 0x7f) as u16).to_le_bytes()),
            DataType::F32 => out.extend((0x3f80_0000 | (r & 0x7f_ffff) as u32).to_le_bytes()),
            DataType::F64 => out.extend((0x3ff0_0000_0000_0000 | (r >> 12)).to_le_bytes()),
        }
    }
    out
}

/// `b` in 8-byte aligned storage (zero-padded to whole words).
fn aligned(b: &[u8]) -> Vec<u64> {
    let mut v = vec![0u64; b.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..b.len()].copy_from_slice(b);
    v
}

fn name(d: DataType) -> String {
    format!("{d:?}").to_lowercase()
}

fn kernel(p: &Plan) {
    println!(
        "pccl::kernels::reduce_into (the ring's reduce kernel), one thread, median repetition,\n\
         GB/s = 1e9 bytes of accumulator per second; `sum +1B`: accumulator misaligned by 1 byte"
    );
    println!(
        "{:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "dtype", "size", "sum", "prod", "max", "min", "sum +1B"
    );
    let ops = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min];
    for dtype in DataType::ALL {
        for &bytes in &p.reduce_sizes {
            let n = bytes / dtype.size();
            let values = aligned(&elements(dtype, n, false, 1));
            let values: &[u8] = &bytemuck::cast_slice(&values)[..bytes];
            let ones = aligned(&elements(dtype, n, true, 2));
            let ones: &[u8] = &bytemuck::cast_slice(&ones)[..bytes];
            let start = elements(dtype, n, false, 3);
            // 8-byte aligned (every type's alignment), one spare byte so that `[1..]` is
            // the misaligned accumulator.
            let mut store = vec![0u64; bytes / 8 + 1];
            let acc: &mut [u8] = bytemuck::cast_slice_mut(&mut store);
            let mut row = Vec::new();
            for op in ops {
                let local = if op == ReduceOp::Prod { ones } else { values };
                acc[..bytes].copy_from_slice(&start);
                let t = time(p, || {
                    reduce_into(op, dtype, black_box(&mut acc[..bytes]), black_box(local));
                });
                row.push(gbps(bytes, t));
            }
            acc[1..=bytes].copy_from_slice(&start);
            let t = time(p, || {
                let a = black_box(&mut acc[1..=bytes]);
                reduce_into(ReduceOp::Sum, dtype, a, black_box(values));
            });
            row.push(gbps(bytes, t));
            let cols: Vec<String> = row.iter().map(|g| format!("{g:>9.2}")).collect();
            println!(
                "{:>6} {:>7} {}",
                name(dtype),
                fmt_size(bytes),
                cols.join(" ")
            );
        }
    }
}
