//! Single-core throughput of pccl's quantize / dequantize kernels (`pccl::quant`).
//!
//! ```text
//! cargo run --release -p benches --bin quant_kernels [-- --quick]
//! ```
//!
//! For each algorithm × target type, on f32 input: `quantize` (range scan + codes, into a
//! metadata + codes frame) and `dequantize` (frame into f32). Sizes: 1 MiB (the ring's
//! default slice, what the all-reduce actually runs the kernels on) and 64 MiB (memory
//! bound). GB/s = 10^9 bytes **of f32** per second (input for quantize, output for
//! dequantize), median of repetitions, one thread. `--quick` runs tiny sizes (CI).

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::{fmt_size, gbps, median};
use pccl::quant::{self, TARGETS};
use pccl::{DataType, Quantization, QuantizationAlgorithm};

fn time(min_time: Duration, min_reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_reps || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    median(&samples).expect("at least one sample")
}

fn name(d: DataType) -> &'static str {
    match d {
        DataType::U8 => "u8",
        DataType::I8 => "i8",
        DataType::U16 => "u16",
        DataType::F16 => "f16",
        DataType::Bf16 => "bf16",
        _ => "?",
    }
}

fn main() {
    let quick = std::env::args()
        .skip(1)
        .any(|a| a == "--quick" || a == "--test");
    let (sizes, min_time, reps) = if quick {
        (vec![64 << 10], Duration::ZERO, 3)
    } else {
        (vec![1 << 20, 64 << 20], Duration::from_millis(300), 5)
    };
    println!("pccl::quant kernels, one thread, f32 input; GB/s = 1e9 bytes of f32 per second");
    println!(
        "{:>9} {:>16} {:>6} {:>14} {:>16}",
        "size", "algorithm", "into", "quantize GB/s", "dequantize GB/s"
    );
    for &bytes in &sizes {
        let n = bytes / 4;
        // Gradient-like values: mixed signs and magnitudes, no special values.
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761);
                (h as f32 / u32::MAX as f32 - 0.5) * 1e-2
            })
            .collect();
        let mut y = vec![0f32; n];
        for alg in [
            QuantizationAlgorithm::MinMax,
            QuantizationAlgorithm::ZeroPointScale,
        ] {
            for t in TARGETS {
                let q = Quantization::new(alg, t);
                let mut frame = vec![0u8; quant::frame_len(q, n)];
                let tq = time(min_time, reps, || {
                    quant::quantize(q, black_box(&x[..]), &mut frame);
                    black_box(&mut frame);
                });
                let td = time(min_time, reps, || {
                    quant::dequantize(q, black_box(&frame[..]), &mut y);
                    black_box(&mut y);
                });
                println!(
                    "{:>9} {:>16} {:>6} {:>14.2} {:>16.2}",
                    fmt_size(bytes),
                    format!("{alg:?}"),
                    name(t),
                    gbps(bytes, tq),
                    gbps(bytes, td)
                );
            }
        }
    }
}
