//! Kernel error bounds and special cases, and a pure simulation of the quantized ring.
//!
//! Property tests are seeded (`PCCL_SEED` overrides the seed; it is printed either way).

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use half::f16;

use super::*;
use crate::collectives::schedule::Schedule;
use crate::types::Collective;

const SEED: u64 = 0x9a4d_0c0d_e5ee_d006;

fn runner(cases: u32) -> TestRunner {
    let seed = std::env::var("PCCL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    println!("proptest seed = {seed} (replay with PCCL_SEED={seed})");
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    })
}

fn algs() -> [QuantizationAlgorithm; 2] {
    [
        QuantizationAlgorithm::MinMax,
        QuantizationAlgorithm::ZeroPointScale,
    ]
}

fn all_q() -> Vec<Quantization> {
    algs()
        .into_iter()
        .flat_map(|a| TARGETS.map(|t| Quantization::new(a, t)))
        .collect()
}

/// Values: a random centre and spread (spanning many magnitudes), optionally mixed with
/// zeros, with a random length.
fn values() -> impl Strategy<Value = Vec<f64>> {
    (
        -30i32..30,
        -30i32..30,
        any::<bool>(),
        prop::collection::vec(-1.0f64..1.0, 1..3000),
    )
        .prop_map(|(ce, se, zeros, unit)| {
            let centre = 2f64.powi(ce) * if ce % 2 == 0 { 1.0 } else { -0.37 };
            let spread = 2f64.powi(se);
            unit.iter()
                .enumerate()
                .map(|(i, u)| {
                    if zeros && i % 3 == 0 {
                        0.0
                    } else {
                        centre + u * spread
                    }
                })
                .collect()
        })
}

fn round_trip<W: Work>(q: Quantization, x: &[W]) -> Vec<W> {
    let mut frame = vec![0u8; frame_len(q, x.len())];
    quantize(q, x, &mut frame);
    let mut out = vec![W::ZERO; x.len()];
    dequantize(q, &frame, &mut out);
    out
}

fn check_bound<W: Work>(q: Quantization, x: &[W]) -> Result<(), TestCaseError> {
    let y = round_trip(q, x);
    let lo = x.iter().map(|v| v.to_f64()).fold(f64::INFINITY, f64::min);
    let hi = x
        .iter()
        .map(|v| v.to_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    for (i, (a, b)) in x.iter().zip(&y).enumerate() {
        let (a, b) = (a.to_f64(), b.to_f64());
        let bound = error_bound(q, lo, hi, a, W::EPS);
        prop_assert!(
            (a - b).abs() <= bound,
            "{q:?} element {i}: {a} -> {b}, error {} > bound {bound} (range [{lo}, {hi}])",
            (a - b).abs()
        );
    }
    Ok(())
}

#[test]
fn kernels_meet_the_documented_bound() {
    let mut r = runner(256);
    r.run(&values(), |v| {
        for q in all_q() {
            let x32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            check_bound(q, &x32)?;
            check_bound(q, &v)?;
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn scan_matches_naive() {
    let mut r = runner(128);
    r.run(&prop::collection::vec(any::<f32>(), 0..100), |v| {
        let (lo, hi, finite) = kernels::scan(&v);
        prop_assert_eq!(finite, v.iter().all(|x| x.is_finite()));
        if finite && !v.is_empty() {
            prop_assert_eq!(lo, v.iter().copied().fold(f32::INFINITY, f32::min));
            prop_assert_eq!(hi, v.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn constant_slices_and_zeros() {
    for q in all_q() {
        for c in [
            0.0f32,
            1.0,
            -3.25,
            1e-30,
            7e30,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
        ] {
            let x = vec![c; 77];
            let y = round_trip(q, &x);
            if q.algorithm == QuantizationAlgorithm::MinMax || c == 0.0 {
                assert_eq!(x, y, "{q:?} constant {c}");
            } else if kernels::levels(q.dtype).is_none() && c.abs() == f32::MAX {
                // Documented: a float target rounds a value within one of its ulps of MAX
                // up, and the dequantized value is ±inf, as a cast would be.
                assert!(y[0].is_infinite(), "{q:?} constant {c}: {}", y[0]);
            } else {
                let b = error_bound(q, c.into(), c.into(), c.into(), f32::EPSILON.into());
                assert!((y[0] - c).abs() as f64 <= b, "{q:?} constant {c}: {}", y[0]);
            }
        }
        // zero_point_scale keeps zeros exact inside a non-trivial range.
        if q.algorithm == QuantizationAlgorithm::ZeroPointScale {
            let x = [0.0f32, 3.7, -1.2, 0.0, 100.0, 0.0];
            let y = round_trip(q, &x);
            for i in [0, 3, 5] {
                assert_eq!(y[i], 0.0, "{q:?}");
            }
        }
    }
}

#[test]
fn non_finite_poisons_the_slice() {
    for q in all_q() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let x = [1.0f32, 2.0, bad, 4.0];
            let y = round_trip(q, &x);
            assert!(y.iter().all(|v| v.is_nan()), "{q:?} {bad}: {y:?}");
        }
        // A slice without them is unaffected.
        assert!(round_trip(q, &[1.0f32, 2.0]).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn huge_ranges_stay_finite_for_integer_targets() {
    for q in all_q() {
        for x in [
            vec![-f32::MAX, f32::MAX, 0.0, 1.0, -1e38, 3e38],
            vec![f32::MAX, f32::MAX * 0.999, 1.0],
            vec![-f32::MAX, -1.0],
        ] {
            let y = round_trip(q, &x);
            let int = kernels::levels(q.dtype).is_some();
            assert!(y.iter().all(|v| !v.is_nan()), "{q:?} {x:?} -> {y:?}");
            if int {
                assert!(y.iter().all(|v| v.is_finite()), "{q:?} {x:?} -> {y:?}");
                // Saturating regime: within twice the bound.
                let (lo, hi) = (-f64::from(f32::MAX), f64::from(f32::MAX));
                for (a, b) in x.iter().zip(&y) {
                    let bound = 2.0 * error_bound(q, lo, hi, (*a).into(), f32::EPSILON.into());
                    assert!(
                        (f64::from(*a) - f64::from(*b)).abs() <= bound,
                        "{q:?} {a} -> {b}"
                    );
                }
            }
        }
        let x = vec![-f64::MAX, f64::MAX, 0.5];
        let y = round_trip(q, &x);
        assert!(y.iter().all(|v| !v.is_nan()), "{q:?} f64 {y:?}");
    }
}

#[test]
fn i8_is_u8_shifted() {
    let x: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
    for a in algs() {
        let mut fu = vec![0u8; frame_len(Quantization::new(a, DataType::U8), x.len())];
        let mut fi = fu.clone();
        quantize(Quantization::new(a, DataType::U8), &x, &mut fu);
        quantize(Quantization::new(a, DataType::I8), &x, &mut fi);
        assert_eq!(fu[..META_LEN], fi[..META_LEN]);
        assert!(
            fu[META_LEN..]
                .iter()
                .zip(&fi[META_LEN..])
                .all(|(u, i)| *u == i ^ 0x80)
        );
    }
}

#[test]
fn validate_rejects_what_is_not_meaningful() {
    let q = Quantization::new(QuantizationAlgorithm::MinMax, DataType::U8);
    let d = |dtype, op| ReduceDescriptor::new(10, dtype, op).with_quantization(q);
    assert!(validate(&d(DataType::F32, ReduceOp::Sum)).is_ok());
    assert!(validate(&d(DataType::F16, ReduceOp::Max)).is_ok());
    assert!(validate(&d(DataType::I32, ReduceOp::Sum)).is_err());
    assert!(validate(&d(DataType::F32, ReduceOp::Prod)).is_err());
    let bad = ReduceDescriptor::new(10, DataType::F32, ReduceOp::Sum).with_quantization(
        Quantization::new(QuantizationAlgorithm::MinMax, DataType::F32),
    );
    assert!(matches!(validate(&bad), Err(Error::InvalidArgument(_))));
    let none = ReduceDescriptor::new(10, DataType::I32, ReduceOp::Prod)
        .with_quantization(Quantization::new(QuantizationAlgorithm::None, DataType::U8));
    assert_eq!(none.quantization, None);
    assert!(validate(&none).is_ok());
}

/// The ring, as a pure function over one slice: rank `c` (the chunk's index) quantizes its
/// values, each following rank combines and re-quantizes, the owner (the `n-1`-th) divides
/// for `Avg` and quantizes once; every rank's result is the decoding of those bytes.
/// Returns the result and, per element, the error budget tracked along the hops.
fn simulate_slice<W: Work>(
    q: Quantization,
    op: ReduceOp,
    inputs: &[Vec<W>],
    first: usize,
) -> (Vec<W>, Vec<f64>) {
    let n = inputs.len();
    let len = inputs[0].len();
    let mut frame = vec![0u8; frame_len(q, len)];
    let bound_of = |x: &[W], i: usize| {
        let lo = x.iter().map(|v| v.to_f64()).fold(f64::INFINITY, f64::min);
        let hi = x
            .iter()
            .map(|v| v.to_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        error_bound(q, lo, hi, x[i].to_f64(), W::EPS)
    };
    let x0 = &inputs[first];
    quantize(q, x0, &mut frame);
    let mut budget: Vec<f64> = (0..len).map(|i| bound_of(x0, i)).collect();
    let mut acc = vec![W::ZERO; len];
    for g in 0..n - 1 {
        let r = (first + g + 1) % n;
        dequantize(q, &frame, &mut acc);
        for (i, (a, &l)) in acc.iter_mut().zip(&inputs[r]).enumerate() {
            *a = match op {
                ReduceOp::Max => a.max_(l),
                ReduceOp::Min => a.min_(l),
                _ => *a + l,
            };
            if matches!(op, ReduceOp::Sum | ReduceOp::Avg) {
                budget[i] += W::EPS * a.to_f64().abs();
            }
        }
        if g == n - 2 && op == ReduceOp::Avg {
            let d = W::from_f64(n as f64);
            for (a, b) in acc.iter_mut().zip(budget.iter_mut()) {
                *a = *a / d;
                *b = *b / n as f64 + W::EPS * a.to_f64().abs();
            }
        }
        for (i, b) in budget.iter_mut().enumerate() {
            *b += bound_of(&acc, i);
        }
        quantize(q, &acc, &mut frame);
    }
    dequantize(q, &frame, &mut acc);
    (acc, budget)
}

fn ring_case<W: Work>(
    q: Quantization,
    op: ReduceOp,
    n: usize,
    count: usize,
    slice: usize,
    v: &[f64],
) -> Result<(), TestCaseError> {
    // Rank r's input: the random values, shifted and scaled per rank.
    let input = |r: usize| -> Vec<W> {
        (0..count)
            .map(|i| W::from_f64(v[(i + 7 * r) % v.len()] * (1.0 + r as f64 * 0.25)))
            .collect()
    };
    let inputs: Vec<Vec<W>> = (0..n).map(input).collect();
    let sched = Schedule::new(Collective::AllReduce, n, 0, count, slice);
    for c in 0..n {
        for k in 0..sched.slices(c) {
            let rg = sched.slice(c, k);
            let parts: Vec<Vec<W>> = inputs.iter().map(|x| x[rg.clone()].to_vec()).collect();
            // Chunk c starts at rank c + 1 (collectives/schedule.rs).
            let (got, budget) = simulate_slice(q, op, &parts, (c + 1) % n);
            for (j, i) in rg.enumerate() {
                let vals = (0..n).map(|r| inputs[r][i].to_f64());
                let exact = match op {
                    ReduceOp::Sum => vals.sum::<f64>(),
                    ReduceOp::Avg => vals.sum::<f64>() / n as f64,
                    ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                    _ => vals.fold(f64::INFINITY, f64::min),
                };
                let err = (got[j].to_f64() - exact).abs();
                prop_assert!(
                    err <= budget[j] * (1.0 + 1e-6),
                    "{q:?} {op:?} n={n} count={count} slice={slice} element {i}: got {}, \
                     exact {exact}, error {err} > bound {}",
                    got[j].to_f64(),
                    budget[j]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn simulated_ring_meets_the_composed_bound() {
    let mut r = runner(96);
    let ops = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min];
    r.run(
        &(2usize..=7, 1usize..400, 1usize..64, values(), 0usize..4),
        |(n, count, slice, v, op)| {
            for q in all_q() {
                ring_case::<f32>(q, ops[op], n, count, slice, &v)?;
                ring_case::<f64>(q, ops[op], n, count, slice, &v)?;
            }
            Ok(())
        },
    )
    .unwrap();
}

/// The codec the ring uses computes exactly what the simulation above does.
#[test]
fn codec_matches_the_simulation() {
    let x: Vec<f32> = (0..500).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
    let l: Vec<f32> = (0..500).map(|i| (i as f32 * 0.07).sin()).collect();
    for q in all_q() {
        for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max] {
            let desc = ReduceDescriptor::new(500, DataType::F32, op).with_quantization(q);
            let c = Codec::new(&desc).unwrap();
            let mut s = Scratch::default();
            let mut f0 = vec![0u8; c.frame_len(500)];
            c.encode(bytemuck::cast_slice(&x), &mut s, &mut f0);
            let mut f1 = f0.clone();
            let avg = (op == ReduceOp::Avg).then_some(2);
            c.combine(&f0, bytemuck::cast_slice(&l), avg, &mut s, &mut f1);
            let (want, _) = simulate_slice(q, op, &[x.clone(), l.clone()], 0);
            let got: Vec<f32> = bytemuck::pod_collect_to_vec(c.decode(&f1, 500, &mut s));
            assert_eq!(
                bytemuck::cast_slice::<f32, u32>(&got),
                bytemuck::cast_slice::<f32, u32>(&want),
                "{q:?} {op:?}"
            );
        }
    }
}

#[test]
fn half_sources_round_trip_through_f32() {
    let vals: Vec<f16> = (0..100)
        .map(|i| f16::from_f32(i as f32 * 0.5 - 20.0))
        .collect();
    let q = Quantization::new(QuantizationAlgorithm::MinMax, DataType::U16);
    let desc = ReduceDescriptor::new(100, DataType::F16, ReduceOp::Sum).with_quantization(q);
    let c = Codec::new(&desc).unwrap();
    let mut s = Scratch::default();
    let mut f = vec![0u8; c.frame_len(100)];
    c.encode(bytemuck::cast_slice(&vals), &mut s, &mut f);
    let back: Vec<f16> = bytemuck::pod_collect_to_vec(c.decode(&f, 100, &mut s));
    for (a, b) in vals.iter().zip(&back) {
        assert!((a.to_f32() - b.to_f32()).abs() <= 0.01, "{a} -> {b}");
    }
}
