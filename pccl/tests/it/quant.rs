//! Quantized all-reduce on loopback: bit parity across 2–5 peers for every algorithm ×
//! target type (random and adversarial data), accuracy against the documented bound,
//! byte counts, mismatch detection and argument validation.
//!
//! Random data is seeded (`PCCL_SEED` overrides; the seed is printed).

use half::{bf16, f16};
use pccl::quant::{self, TARGETS};
use pccl::{
    Communicator, DataType, Error, Quantization, QuantizationAlgorithm, ReduceDescriptor,
    ReduceInfo, ReduceOp, SliceBuffers,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{cluster_with, config, master, on_all};

const SEED: u64 = 0x0051_ce0f_7a11;

fn seed() -> u64 {
    let s = std::env::var("PCCL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    println!("seed = {s} (replay with PCCL_SEED={s})");
    s
}

fn ring_rank(comm: &Communicator) -> usize {
    let topo = comm.topology().unwrap();
    topo.ring.iter().position(|p| p.id == comm.id()).unwrap()
}

/// Communicators with tiny slices, so every chunk is cut into many slices.
fn small_slice_cluster(n: usize) -> (pccl::MasterNode, Vec<Communicator>) {
    let m = master();
    let addr = m.local_addr();
    let comms = cluster_with(n, |_| {
        let mut c = config(addr);
        c.slice_bytes = 256;
        c
    });
    (m, comms)
}

#[derive(Clone, Copy, Debug)]
enum Data {
    Random,
    /// The same value across each rank's whole buffer (so every chunk is constant).
    Constant,
    /// NaN and ±inf sprinkled in (these slices decode to NaN, on every peer alike).
    NonFinite,
    /// Magnitudes from 1e-38 to 1e38 side by side, some sums overflowing.
    Huge,
}

fn values(data: Data, rank: usize, count: usize, rng: &mut StdRng) -> Vec<f64> {
    (0..count)
        .map(|i| match data {
            Data::Random => rng.gen_range(-1.0..1.0) * (1.0 + rank as f64),
            Data::Constant => 0.75 + rank as f64,
            Data::NonFinite => match (i, rank) {
                (10, 0) => f64::NAN,
                (500, 1) => f64::INFINITY,
                (900, _) => f64::NEG_INFINITY,
                _ => rng.gen_range(-1.0..1.0),
            },
            Data::Huge => {
                let e = rng.gen_range(-38..=38);
                let v = rng.gen_range(1.0..3.4) * 10f64.powi(e);
                if i % 2 == 0 { v } else { -v }
            }
        })
        .collect()
}

fn encode(dtype: DataType, v: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * dtype.size());
    for &x in v {
        match dtype {
            DataType::F16 => out.extend(f16::from_f64(x).to_le_bytes()),
            DataType::Bf16 => out.extend(bf16::from_f64(x).to_le_bytes()),
            DataType::F32 => out.extend((x as f32).to_le_bytes()),
            _ => out.extend(x.to_le_bytes()),
        }
    }
    out
}

fn decode(dtype: DataType, b: &[u8]) -> Vec<f64> {
    b.chunks_exact(dtype.size())
        .map(|c| match dtype {
            DataType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f64(),
            DataType::Bf16 => bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            DataType::F32 => f64::from(f32::from_le_bytes(c.try_into().unwrap())),
            _ => f64::from_le_bytes(c.try_into().unwrap()),
        })
        .collect()
}

fn run(
    comm: &Communicator,
    dtype: DataType,
    op: ReduceOp,
    q: Option<Quantization>,
    send: &[u8],
    tag: u64,
) -> (Vec<u8>, Result<ReduceInfo, Error>) {
    let count = send.len() / dtype.size();
    let mut desc = ReduceDescriptor::new(count, dtype, op).with_tag(tag);
    if let Some(q) = q {
        desc = desc.with_quantization(q);
    }
    let mut recv = vec![0u8; send.len()];
    let r = comm.all_reduce_with(SliceBuffers::new(send, &mut recv).unwrap(), desc);
    (recv, r)
}

fn all_q() -> Vec<Quantization> {
    [
        QuantizationAlgorithm::MinMax,
        QuantizationAlgorithm::ZeroPointScale,
    ]
    .into_iter()
    .flat_map(|a| TARGETS.map(|t| Quantization::new(a, t)))
    .collect()
}

/// A loose accuracy check for `Sum` of random data: the documented per-quantization bound
/// over the widest partial range, `n` quantizations, plus the source type's rounding.
fn sum_tolerance(q: Quantization, dtype: DataType, n: usize, inputs: &[Vec<f64>], i: usize) -> f64 {
    // Partial sums of ranks' values in [-(1 + r), 1 + r) lie within ±n(n+1)/2.
    let r = (n * (n + 1) / 2) as f64;
    let eps = if dtype == DataType::F64 {
        2f64.powi(-53)
    } else {
        2f64.powi(-24)
    };
    let exact: f64 = inputs.iter().map(|v| v[i]).sum();
    let per = quant::error_bound(q, -r, r, r, eps);
    let src = match dtype {
        DataType::F16 => exact.abs() * 2f64.powi(-11) + 1e-7,
        DataType::Bf16 => exact.abs() * 2f64.powi(-8) + 1e-7,
        _ => 0.0,
    };
    n as f64 * per + src + 1e-9
}

fn parity(n: usize) {
    let (_m, comms) = small_slice_cluster(n);
    let base = seed();
    let results = on_all(&comms, |_, c| {
        let rank = ring_rank(c);
        let mut out = Vec::new();
        let mut tag = 0;
        let cases: Vec<(DataType, Data)> = [DataType::F32]
            .into_iter()
            .flat_map(|d| {
                [Data::Random, Data::Constant, Data::NonFinite, Data::Huge].map(|x| (d, x))
            })
            .chain([
                (DataType::F16, Data::Random),
                (DataType::Bf16, Data::Random),
                (DataType::F64, Data::Random),
                (DataType::F64, Data::Huge),
            ])
            .collect();
        for q in all_q() {
            for &(dtype, data) in &cases {
                for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max] {
                    if op != ReduceOp::Sum && !matches!(data, Data::Random) {
                        continue;
                    }
                    let count = 1000 + n;
                    let inputs: Vec<Vec<f64>> = (0..n)
                        .map(|r| {
                            let mut rr = StdRng::seed_from_u64(base ^ (tag << 8) ^ r as u64);
                            decode(dtype, &encode(dtype, &values(data, r, count, &mut rr)))
                        })
                        .collect();
                    let send = encode(dtype, &inputs[rank]);
                    let (recv, r) = run(c, dtype, op, Some(q), &send, tag);
                    let info = r.unwrap_or_else(|e| panic!("{q:?} {dtype:?} {data:?} {op:?}: {e}"));
                    assert_eq!(info.local_world_size as usize, n);
                    let got = decode(dtype, &recv);
                    let ctx = format!("n={n} {q:?} {dtype:?} {data:?} {op:?}");
                    match (data, op) {
                        (Data::Random, ReduceOp::Sum) => {
                            for (i, g) in got.iter().enumerate() {
                                let want: f64 = inputs.iter().map(|v| v[i]).sum();
                                let tol = sum_tolerance(q, dtype, n, &inputs, i);
                                assert!(
                                    (g - want).abs() <= tol,
                                    "{ctx} [{i}]: {g} vs {want} (tol {tol})"
                                );
                            }
                        }
                        (Data::Constant, _) if q.algorithm == QuantizationAlgorithm::MinMax => {
                            let want: f64 = (0..n).map(|r| 0.75 + r as f64).sum();
                            assert!(got.iter().all(|g| *g == want), "{ctx}: constant not exact");
                        }
                        (Data::NonFinite, _) => {
                            // The slices holding a NaN or ±inf decode to NaN; others are
                            // untouched (64-element slices: 256-byte slices of f32).
                            assert!(got[10].is_nan() && got[900].is_nan(), "{ctx}");
                            assert!(got[300].is_finite() && got[700].is_finite(), "{ctx}");
                        }
                        _ => {}
                    }
                    out.push((ctx, recv));
                    tag += 1;
                }
            }
        }
        out
    });
    for r in &results[1..] {
        for ((ctx, a), (_, b)) in results[0].iter().zip(r) {
            assert!(a == b, "{ctx}: peers differ");
        }
    }
}

#[test]
fn quant_parity_world_2() {
    parity(2);
}

#[test]
fn quant_parity_world_3() {
    parity(3);
}

#[test]
fn quant_parity_world_4() {
    parity(4);
}

#[test]
fn quant_parity_world_5() {
    parity(5);
}

#[test]
fn bytes_sent_shrink_by_the_type_ratio() {
    let m = master();
    let comms = crate::common::cluster(&m, 3);
    let count = 1 << 18;
    let infos = on_all(&comms, |_, c| {
        let send: Vec<u8> = (0..count)
            .flat_map(|i| (i as f32 * 1e-3).to_le_bytes())
            .collect();
        let (_, plain) = run(c, DataType::F32, ReduceOp::Sum, None, &send, 1);
        let mut per_target = Vec::new();
        for t in TARGETS {
            let q = Quantization::new(QuantizationAlgorithm::MinMax, t);
            let (_, r) = run(
                c,
                DataType::F32,
                ReduceOp::Sum,
                Some(q),
                &send,
                2 + t as u64,
            );
            per_target.push((t, r.unwrap()));
        }
        (plain.unwrap(), per_target)
    });
    for (plain, per) in infos {
        // 2(n-1) = 4 ring steps, one slice per chunk here: 4 frames of a chunk each.
        assert!(plain.tx_bytes >= 4 * (count as u64 * 4 / 3));
        for (t, info) in per {
            let ratio = info.tx_bytes as f64 / plain.tx_bytes as f64;
            let want = t.size() as f64 / 4.0;
            assert!(
                (ratio - want).abs() < 0.001,
                "{t:?}: tx {} vs {} unquantized (ratio {ratio}, want {want})",
                info.tx_bytes,
                plain.tx_bytes
            );
            // Exactly the codes plus the metadata of the 4 frames, each way.
            let meta = 4 * quant::META_LEN as u64;
            let size = t.size() as u64;
            assert_eq!(info.tx_bytes, plain.tx_bytes / 4 * size + meta, "{t:?}");
            assert_eq!(info.rx_bytes, plain.rx_bytes / 4 * size + meta, "{t:?}");
        }
    }
}

#[test]
fn mismatched_quantization_fails_everywhere() {
    let m = master();
    let comms = crate::common::cluster(&m, 3);
    let errs = on_all(&comms, |i, c| {
        let send: Vec<u8> = (0..5000).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let q = if i == 0 {
            Quantization::new(QuantizationAlgorithm::ZeroPointScale, DataType::U8)
        } else {
            Quantization::new(QuantizationAlgorithm::MinMax, DataType::U8)
        };
        run(c, DataType::F32, ReduceOp::Sum, Some(q), &send, 9).1
    });
    for e in errs {
        assert!(matches!(e, Err(Error::ArgumentMismatch(_))), "{e:?}");
    }
    // The run is still usable afterwards.
    let ok = on_all(&comms, |_, c| {
        let send: Vec<u8> = (0..100).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let q = Quantization::new(QuantizationAlgorithm::MinMax, DataType::U8);
        run(c, DataType::F32, ReduceOp::Sum, Some(q), &send, 10).1
    });
    assert!(ok.iter().all(Result::is_ok));
}

#[test]
fn unsupported_combinations_are_rejected_up_front() {
    let m = master();
    let comms = crate::common::cluster(&m, 2);
    let c = &comms[0];
    let u8q = Quantization::new(QuantizationAlgorithm::MinMax, DataType::U8);
    let cases = [
        (DataType::I32, ReduceOp::Sum, u8q),
        (DataType::U8, ReduceOp::Avg, u8q),
        (DataType::F32, ReduceOp::Prod, u8q),
        (
            DataType::F32,
            ReduceOp::Sum,
            Quantization::new(QuantizationAlgorithm::MinMax, DataType::F32),
        ),
        (
            DataType::F64,
            ReduceOp::Sum,
            Quantization::new(QuantizationAlgorithm::ZeroPointScale, DataType::I32),
        ),
    ];
    for (dtype, op, q) in cases {
        let send = vec![0u8; 16 * dtype.size()];
        let (_, r) = run(c, dtype, op, Some(q), &send, 1);
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "{dtype:?} {op:?} {q:?}: {r:?}"
        );
    }
}
