//! The collectives other than all-reduce on the in-memory ring (`mem.rs`), n = 2..=4:
//! reduce-scatter gives each rank its chunk of the all-reduce of the same inputs, bit for
//! bit (plain and quantized); all-gather and broadcast copy bits exactly (NaN payloads
//! included); ranks that call different collectives, roots or buffer shapes with one tag
//! all fail, and the next op of the tag succeeds; a rank vanishing mid-op fails the op on
//! every survivor. Each test is bounded by `mem::HANG`.

use super::mem::{Call, MemRing, Options, Outcome, rt};
use crate::error::Error;
use crate::types::{
    Collective, DataType, Quantization, QuantizationAlgorithm, ReduceDescriptor, ReduceOp,
};

const TAG: u64 = 11;

/// Rank `r`'s input: small integers in f32 for exact ops, smooth reals for quantized ones.
fn input(r: usize, count: usize, real: bool) -> Vec<u8> {
    let v: Vec<f32> = (0..count)
        .map(|i| {
            if real {
                (i as f32 * 0.31 + r as f32 * 1.7).sin() * (1.0 + r as f32)
            } else {
                ((i * 7 + r * 13) % 31) as f32 - 15.0
            }
        })
        .collect();
    bytemuck::cast_slice(&v).to_vec()
}

/// Raw f64 bit patterns, NaNs with payloads and negative zeros among them: a copy that
/// went through a float register or a reduce would change some.
fn raw_bits(r: usize, count: usize) -> Vec<u8> {
    (0..count as u64)
        .flat_map(|i| {
            let bits = match i % 4 {
                0 => 0x7ff0_0000_0000_0001 + i + r as u64, // signalling NaN payloads
                1 => 0x8000_0000_0000_0000,                // -0.0
                _ => i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (r as u64) << 7,
            };
            bits.to_le_bytes()
        })
        .collect()
}

/// Elements of chunk `c` of `count` over `n` ranks (the ring's split).
fn chunk(count: usize, n: usize, c: usize) -> std::ops::Range<usize> {
    let (base, rem) = (count / n, count % n);
    let start = c * base + c.min(rem);
    start..start + base + usize::from(c < rem)
}

fn committed(out: &[Option<Outcome>], what: &str) -> Vec<Vec<u8>> {
    out.iter()
        .enumerate()
        .map(|(r, o)| {
            let (bufs, res) = o
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: rank {r} vanished"));
            if let Err(e) = res {
                panic!("{what}: rank {r} failed: {e}");
            }
            bufs.committed.clone().expect("a success commits")
        })
        .collect()
}

/// Every live rank failed as `ok` says and committed nothing.
fn all_failed(out: &[Option<Outcome>], ok: impl Fn(usize, &Error) -> bool, what: &str) {
    let mut live = 0;
    for (r, o) in out.iter().enumerate() {
        let Some((bufs, res)) = o else { continue };
        live += 1;
        match res {
            Err(e) if ok(r, e) => {}
            other => panic!("{what}: rank {r} ended with {other:?}"),
        }
        assert!(bufs.committed.is_none(), "{what}: rank {r} committed");
    }
    assert!(live >= 2, "{what}: fewer than two ranks took part");
}

fn mismatch(e: &Error) -> bool {
    matches!(e, Error::ArgumentMismatch(m) if m.contains("different counts"))
}

fn all_reduce_calls(n: usize, desc: ReduceDescriptor, real: bool) -> Vec<Call> {
    (0..n)
        .map(|r| Call::all_reduce(desc, input(r, desc.count, real)))
        .collect()
}

fn reduce_scatter_calls(n: usize, desc: ReduceDescriptor, real: bool) -> Vec<Call> {
    (0..n)
        .map(|r| Call {
            kind: Collective::ReduceScatter,
            desc,
            input: input(r, desc.count, real),
            recv_len: chunk(desc.count, n, r).len() * 4,
        })
        .collect()
}

fn all_gather_calls(n: usize, count: usize) -> Vec<Call> {
    let desc = ReduceDescriptor::new(count, DataType::F64, ReduceOp::Sum).with_tag(TAG);
    (0..n)
        .map(|r| Call {
            kind: Collective::AllGather,
            desc,
            input: raw_bits(r, chunk(count, n, r).len()),
            recv_len: count * 8,
        })
        .collect()
}

fn broadcast_calls(n: usize, count: usize, root: usize) -> Vec<Call> {
    let desc = ReduceDescriptor::new(count, DataType::F64, ReduceOp::Sum).with_tag(TAG);
    (0..n)
        .map(|r| Call {
            kind: Collective::Broadcast { root: root as u32 },
            desc,
            input: raw_bits(r, count),
            recv_len: count * 8,
        })
        .collect()
}

/// Reduce-scatter leaves in rank r exactly chunk r of an all-reduce of the same inputs.
async fn reduce_scatter_matches_all_reduce(
    ring: &MemRing,
    n: usize,
    desc: ReduceDescriptor,
    what: &str,
) {
    let real = desc.quantization.is_some();
    let full = committed(&ring.run_calls(all_reduce_calls(n, desc, real)).await, what);
    let parts = committed(
        &ring.run_calls(reduce_scatter_calls(n, desc, real)).await,
        what,
    );
    for (r, part) in parts.iter().enumerate() {
        let c = chunk(desc.count, n, r);
        assert!(
            part[..] == full[0][c.start * 4..c.end * 4],
            "{what}: rank {r}'s chunk differs from the all-reduce's"
        );
    }
}

#[test]
fn reduce_scatter_gives_each_rank_its_all_reduce_chunk() {
    rt().block_on(async {
        for n in 2..=4 {
            for (conns, count, shuffle) in [(1, 250 * n, None), (3, 1001, Some(5)), (2, 7, None)] {
                let ring = MemRing::new(Options {
                    conns,
                    shuffle,
                    ..Options::new(n)
                });
                for op in ReduceOp::ALL {
                    let desc = ReduceDescriptor::new(count, DataType::F32, op).with_tag(TAG);
                    let what = format!("n={n} conns={conns} count={count} {op:?}");
                    reduce_scatter_matches_all_reduce(&ring, n, desc, &what).await;
                }
            }
        }
    });
}

/// Quantized, the owner quantizes its final value once and keeps its decoding, as in
/// the all-reduce: the chunks still match bit for bit.
#[test]
fn quantized_reduce_scatter_keeps_the_all_reduce_parity_rule() {
    rt().block_on(async {
        for n in 2..=4 {
            let ring = MemRing::new(Options {
                shuffle: Some(9),
                ..Options::new(n)
            });
            for alg in [
                QuantizationAlgorithm::MinMax,
                QuantizationAlgorithm::ZeroPointScale,
            ] {
                for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max] {
                    let desc = ReduceDescriptor::new(900, DataType::F32, op)
                        .with_tag(TAG)
                        .with_quantization(Quantization::new(alg, DataType::U8));
                    let what = format!("n={n} {alg:?} {op:?}");
                    reduce_scatter_matches_all_reduce(&ring, n, desc, &what).await;
                }
            }
        }
    });
}

#[test]
fn all_gather_and_broadcast_copy_bits_exactly() {
    rt().block_on(async {
        for n in 2..=4 {
            for (conns, count) in [(1, 300 * n), (3, 1001), (2, 5)] {
                let ring = MemRing::new(Options {
                    conns,
                    shuffle: Some(n as u64),
                    ..Options::new(n)
                });
                let what = format!("n={n} conns={conns} count={count}");
                let want: Vec<u8> = (0..n)
                    .flat_map(|r| raw_bits(r, chunk(count, n, r).len()))
                    .collect();
                for (r, got) in committed(&ring.run_calls(all_gather_calls(n, count)).await, &what)
                    .iter()
                    .enumerate()
                {
                    assert!(*got == want, "{what}: rank {r}'s all-gather differs");
                }
                for root in 0..n {
                    let out = ring.run_calls(broadcast_calls(n, count, root)).await;
                    for (r, got) in committed(&out, &what).iter().enumerate() {
                        assert!(
                            *got == raw_bits(root, count),
                            "{what}: rank {r}'s broadcast from {root} differs"
                        );
                    }
                }
            }
        }
    });
}

/// Results buffers large enough to be written with streaming stores
/// (`collectives/stream.rs`), the kept input included: the same exact bits.
#[test]
fn streamed_all_gather_and_broadcast_copy_bits_exactly() {
    let (n, count) = (3, crate::collectives::stream::STREAM_MIN_BYTES / 8 + 3);
    rt().block_on(async {
        let ring = MemRing::new(Options {
            conns: 2,
            slice_bytes: 256 << 10,
            ..Options::new(n)
        });
        let want: Vec<u8> = (0..n)
            .flat_map(|r| raw_bits(r, chunk(count, n, r).len()))
            .collect();
        let out = ring.run_calls(all_gather_calls(n, count)).await;
        for (r, got) in committed(&out, "streamed").iter().enumerate() {
            assert!(*got == want, "rank {r}'s all-gather differs");
        }
        let out = ring.run_calls(broadcast_calls(n, count, 1)).await;
        for (r, got) in committed(&out, "streamed").iter().enumerate() {
            assert!(*got == raw_bits(1, count), "rank {r}'s broadcast differs");
        }
    });
}

/// Rank n-1 calls something else than the others with the same tag: every rank fails,
/// and the next op of the tag, called alike, succeeds on every rank.
#[test]
fn ranks_calling_different_collectives_or_roots_all_fail() {
    rt().block_on(async {
        for n in 2..=4 {
            let count = 120 * n;
            let sum = ReduceDescriptor::new(count, DataType::F32, ReduceOp::Sum).with_tag(TAG);
            let differ: Vec<(&str, Call)> = vec![
                ("all-reduce", all_reduce_calls(n, sum, false).pop().unwrap()),
                (
                    "reduce-scatter",
                    reduce_scatter_calls(n, sum, false).pop().unwrap(),
                ),
                ("all-gather", {
                    let mut c = all_gather_calls(n, count).pop().unwrap();
                    c.desc.dtype = DataType::F32;
                    c.desc.count = count * 2;
                    c
                }),
                ("broadcast from 1", {
                    let mut c = broadcast_calls(n, count, 1).pop().unwrap();
                    c.desc.dtype = DataType::F32;
                    c.desc.count = count * 2;
                    c.recv_len = c.input.len();
                    c
                }),
            ];
            // Everyone else: broadcast from 0 of the same bytes (count*2 f32 = count f64),
            // or an all-reduce when rank n-1 broadcasts.
            for (what, odd) in differ {
                let ring = MemRing::new(Options::new(n));
                let mut calls = if what.starts_with("broadcast") {
                    all_reduce_calls(n, sum, false)
                } else {
                    broadcast_calls(n, count, 0)
                };
                *calls.last_mut().unwrap() = odd;
                let out = ring.run_calls(calls).await;
                all_failed(
                    &out,
                    |_, e| mismatch(e),
                    &format!("n={n} rank {} {what}", n - 1),
                );
                let want = broadcast_calls(n, count, 0)[0].input.clone();
                for got in committed(&ring.run_calls(broadcast_calls(n, count, 0)).await, what) {
                    assert!(got == want, "n={n} {what}: the retry differs");
                }
            }
            // Every rank calls a broadcast, but the roots differ.
            if n > 2 {
                let ring = MemRing::new(Options::new(n));
                let mut calls = broadcast_calls(n, count, 0);
                calls[1].kind = Collective::Broadcast { root: 1 };
                let out = ring.run_calls(calls).await;
                all_failed(&out, |_, e| mismatch(e), &format!("n={n} roots 0 and 1"));
            }
        }
    });
}

/// Buffers that do not fit the ring (sized for another world size), or a root past its
/// end, fail the op with `ArgumentMismatch` there and `Mismatch` everywhere else; the
/// tag's next op still pairs up.
#[test]
fn buffers_that_do_not_fit_the_ring_fail_the_op_everywhere() {
    rt().block_on(async {
        for n in 2..=4 {
            let count = 60 * n;
            let desc = ReduceDescriptor::new(count, DataType::F32, ReduceOp::Sum).with_tag(TAG);
            let mut wrong: Vec<(&str, Vec<Call>)> = Vec::new();
            let mut rs = reduce_scatter_calls(n, desc, false);
            rs[0].recv_len += 4;
            wrong.push(("reduce-scatter recv", rs));
            let mut ag = all_gather_calls(n, count);
            let short = ag[0].input.len() - 8;
            ag[0].input.truncate(short);
            wrong.push(("all-gather send", ag));
            let mut bc = broadcast_calls(n, count, 0);
            for c in &mut bc {
                c.kind = Collective::Broadcast { root: n as u32 };
            }
            wrong.push(("broadcast root", bc));
            for (what, calls) in wrong {
                let ring = MemRing::new(Options::new(n));
                let every = calls[0].kind == calls[1].kind
                    && matches!(calls[0].kind, Collective::Broadcast { .. });
                let out = ring.run_calls(calls).await;
                let what = format!("n={n} {what}");
                all_failed(
                    &out,
                    |r, e| match e {
                        e if !mismatch(e) => {
                            matches!(e, Error::ArgumentMismatch(_)) && (r == 0 || every)
                        }
                        e => mismatch(e) && r != 0,
                    },
                    &what,
                );
                let parts = committed(
                    &ring.run_calls(reduce_scatter_calls(n, desc, false)).await,
                    &what,
                );
                assert_eq!(parts.len(), n, "{what}: the retry");
            }
        }
    });
}

#[test]
fn a_rank_vanishing_mid_op_fails_every_kind_on_every_survivor() {
    rt().block_on(async {
        for n in 3..=4 {
            let count = 2000;
            let desc = ReduceDescriptor::new(count, DataType::F32, ReduceOp::Sum).with_tag(TAG);
            let ops: Vec<(&str, Vec<Call>)> = vec![
                ("reduce-scatter", reduce_scatter_calls(n, desc, false)),
                ("all-gather", all_gather_calls(n, count)),
                ("broadcast from 0", broadcast_calls(n, count, 0)),
                ("broadcast from 1", broadcast_calls(n, count, 1)),
            ];
            for (what, calls) in ops {
                for after in [0, 5, 40] {
                    let ring = MemRing::new(Options::vanishing(n, 1, after));
                    let out = ring.run_calls(calls.clone()).await;
                    assert!(out[1].is_none(), "rank 1 vanished");
                    all_failed(
                        &out,
                        |_, e| matches!(e, Error::RankConnectionLost { .. }),
                        &format!("n={n} {what}: rank 1 vanished after {after} frames"),
                    );
                }
            }
        }
    });
}
