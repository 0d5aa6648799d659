//! Reduce-scatter, all-gather and broadcast over real sockets with 2-4 peers: ranks as
//! the ring orders them, results against the all-reduce of the same inputs and across
//! peers bit for bit (every dtype and op), concurrent tags of mixed kinds, quantized
//! reduce-scatter, mismatched and misfit calls, and a peer killed mid-op: every survivor
//! fails with the same error and the retry on the new ring succeeds.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use pccl::{
    Attribute, Collective, Communicator, DataType, Error, OwnedBuffers, Quantization,
    QuantizationAlgorithm, ReduceDescriptor, ReduceOp, SliceBuffers,
};

use crate::common::{cluster, master, on_all};

/// `vals` as `dtype` elements, native-endian bytes.
fn encode(dtype: DataType, vals: impl Iterator<Item = i64>) -> Vec<u8> {
    vals.flat_map(|v| match dtype {
        DataType::U8 | DataType::I8 => vec![v as u8],
        DataType::I16 | DataType::U16 => (v as i16).to_ne_bytes().to_vec(),
        DataType::U32 | DataType::I32 => (v as i32).to_ne_bytes().to_vec(),
        DataType::U64 | DataType::I64 => v.to_ne_bytes().to_vec(),
        DataType::F16 => half::f16::from_f64(v as f64 * 0.25).to_ne_bytes().to_vec(),
        DataType::Bf16 => half::bf16::from_f64(v as f64 * 0.25).to_ne_bytes().to_vec(),
        DataType::F32 => (v as f32 * 0.37).to_ne_bytes().to_vec(),
        DataType::F64 => (v as f64 * 0.37).to_ne_bytes().to_vec(),
    })
    .collect()
}

/// Peer `r`'s input of op `k`.
fn input(dtype: DataType, r: usize, k: usize, count: usize) -> Vec<u8> {
    encode(
        dtype,
        (0..count).map(|i| ((i * 7 + r * 13 + k * 5) % 23) as i64 - 9),
    )
}

/// `count` elements cut into `n` chunks as the ring cuts them.
fn chunk(count: usize, n: usize, c: usize) -> std::ops::Range<usize> {
    let (base, rem) = (count / n, count % n);
    let start = c * base + c.min(rem);
    start..start + base + usize::from(c < rem)
}

fn world(c: &Communicator) -> usize {
    c.attribute(Attribute::PeerGroupWorldSize).unwrap()
}

/// Ranks are ring positions, 0..n, one per peer.
fn ranks(comms: &[Communicator]) -> Vec<usize> {
    let ranks: Vec<usize> = comms.iter().map(|c| c.rank().unwrap()).collect();
    let ring = comms[0].topology().unwrap();
    for (c, r) in comms.iter().zip(&ranks) {
        assert_eq!(ring.ring[*r].id, c.id(), "rank is the ring position");
    }
    let mut sorted = ranks.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..comms.len()).collect::<Vec<_>>());
    ranks
}

#[test]
fn every_kind_with_two_to_four_peers() {
    for n in 2..=4 {
        let m = master();
        let comms = cluster(&m, n);
        let ranks = ranks(&comms);
        let count = 1000 * n + 3;
        let out = on_all(&comms, |i, c| {
            let r = ranks[i];
            assert_eq!(c.rank().unwrap(), r);
            // Reduce-scatter of equal blocks: rank r gets block r of the all-reduce.
            let send: Vec<f32> = (0..4 * n).map(|j| (j * 3 + r) as f32).collect();
            let mut block = [0f32; 4];
            c.reduce_scatter(&send, &mut block, ReduceOp::Sum, 1)
                .unwrap();
            let want: Vec<f32> = (0..4)
                .map(|j| (0..n).map(|q| ((4 * r + j) * 3 + q) as f32).sum())
                .collect();
            assert_eq!(block.to_vec(), want, "n={n} rank {r}'s block");
            // All-gather: block q of the result is rank q's input.
            let mine: Vec<u64> = (0..count as u64).map(|j| j ^ (r as u64) << 40).collect();
            let mut all = vec![0u64; n * count];
            let info = c.all_gather(&mine, &mut all, 2).unwrap();
            assert_eq!(info.local_world_size as usize, n);
            for q in 0..n {
                let want: Vec<u64> = (0..count as u64).map(|j| j ^ (q as u64) << 40).collect();
                assert_eq!(all[q * count..(q + 1) * count], want[..], "n={n} block {q}");
            }
            // Broadcast from every root.
            let mut got = Vec::new();
            for root in 0..n {
                let mut buf: Vec<f64> = (0..count).map(|j| (j * (r + 1)) as f64 / 3.0).collect();
                c.broadcast(&mut buf, root, 3).unwrap();
                let want: Vec<f64> = (0..count).map(|j| (j * (root + 1)) as f64 / 3.0).collect();
                assert!(buf == want, "n={n} broadcast from {root}");
                got.push(buf);
            }
            (block, all, got)
        });
        for o in &out[1..] {
            assert!(o.1 == out[0].1 && o.2 == out[0].2, "n={n}: peers differ");
        }
    }
}

/// Every dtype and op: rank r's reduce-scatter is chunk r of the all-reduce of the same
/// inputs, bit for bit; uneven counts split as the all-reduce splits them.
#[test]
fn reduce_scatter_matches_the_all_reduce_for_every_dtype_and_op() {
    let m = master();
    let comms = cluster(&m, 3);
    let ranks = ranks(&comms);
    let out = on_all(&comms, |i, c| {
        let r = ranks[i];
        let mut tag = 10;
        let mut chunks = Vec::new();
        for dtype in DataType::ALL {
            for op in ReduceOp::ALL {
                for count in [300, 301] {
                    tag += 1;
                    let desc = ReduceDescriptor::new(count, dtype, op).with_tag(tag);
                    let send = input(dtype, r, tag as usize, count);
                    let mut full = vec![0u8; send.len()];
                    let bufs = SliceBuffers::new(&send, &mut full).unwrap();
                    c.all_reduce_with(bufs, desc).unwrap();
                    let own = chunk(count, 3, r);
                    let size = dtype.size();
                    let mut part = vec![0u8; own.len() * size];
                    let bufs = SliceBuffers::sized(&send, &mut part);
                    c.collective_with(bufs, desc, Collective::ReduceScatter)
                        .unwrap();
                    assert!(
                        part[..] == full[own.start * size..own.end * size],
                        "{dtype:?} {op:?} count {count}: rank {r}'s chunk"
                    );
                    chunks.push((r, full));
                }
            }
        }
        chunks
    });
    for o in &out[1..] {
        for (a, b) in o.iter().zip(&out[0]) {
            assert!(a.1 == b.1, "peers' all-reduces differ");
        }
    }
}

#[test]
fn quantized_reduce_scatter_matches_the_quantized_all_reduce() {
    let m = master();
    let comms = cluster(&m, 3);
    let ranks = ranks(&comms);
    on_all(&comms, |i, c| {
        let r = ranks[i];
        for (k, alg) in [
            QuantizationAlgorithm::MinMax,
            QuantizationAlgorithm::ZeroPointScale,
        ]
        .into_iter()
        .enumerate()
        {
            let count = 30_000;
            let send: Vec<f32> = (0..count)
                .map(|j| (j as f32 * 0.01 + r as f32).sin() * 4.0)
                .collect();
            let desc = ReduceDescriptor::new(count, DataType::F32, ReduceOp::Avg)
                .with_tag(k as u64)
                .with_quantization(Quantization::new(alg, DataType::U8));
            let mut full = vec![0f32; count];
            let bufs = SliceBuffers::new(
                bytemuck::cast_slice(&send),
                bytemuck::cast_slice_mut(&mut full),
            )
            .unwrap();
            c.all_reduce_with(bufs, desc).unwrap();
            let own = chunk(count, 3, r);
            let mut part = vec![0f32; own.len()];
            let bufs = SliceBuffers::sized(
                bytemuck::cast_slice(&send),
                bytemuck::cast_slice_mut(&mut part),
            );
            c.collective_with(bufs, desc, Collective::ReduceScatter)
                .unwrap();
            assert!(
                bytemuck::cast_slice::<f32, u8>(&part)
                    == bytemuck::cast_slice::<f32, u8>(&full[own]),
                "{alg:?}: rank {r}'s chunk differs from the quantized all-reduce's"
            );
        }
    });
}

/// Four kinds at once, each on its own tag, all in flight together.
#[test]
fn concurrent_tags_of_every_kind() {
    let m = master();
    let comms = cluster(&m, 3);
    let ranks = ranks(&comms);
    let out = on_all(&comms, |i, c| {
        let r = ranks[i];
        let count = 60_000;
        let send: Vec<f32> = (0..count).map(|j| ((j + r) % 17) as f32).collect();
        let f32_desc =
            |op, count, tag| ReduceDescriptor::new(count, DataType::F32, op).with_tag(tag);
        let own = chunk(count, 3, r);
        let handles = [
            c.collective_async(
                OwnedBuffers::new(&send),
                f32_desc(ReduceOp::Sum, count, 1),
                Collective::AllReduce,
            ),
            c.collective_async(
                OwnedBuffers::with_recv(&send, own.len()),
                f32_desc(ReduceOp::Sum, count, 2),
                Collective::ReduceScatter,
            ),
            c.collective_async(
                OwnedBuffers::with_recv(&send[own.clone()], count),
                f32_desc(ReduceOp::Sum, count, 3),
                Collective::AllGather,
            ),
            c.collective_async(
                OwnedBuffers::new(&send),
                f32_desc(ReduceOp::Sum, count, 4),
                Collective::Broadcast { root: 2 },
            ),
        ]
        .map(Result::unwrap);
        let res: Vec<Vec<u8>> = handles
            .into_iter()
            .map(|h| {
                let (b, res) = h.wait();
                res.unwrap();
                b.recv
            })
            .collect();
        let full: &[f32] = bytemuck::cast_slice(&res[0]);
        assert_eq!(res[1], bytemuck::cast_slice::<f32, u8>(&full[own]).to_vec());
        res
    });
    for o in &out[1..] {
        assert!(
            o[0] == out[0][0] && o[2] == out[0][2] && o[3] == out[0][3],
            "peers differ"
        );
    }
    // The all-gather rebuilt everyone's input from its own chunks; the broadcast is rank
    // 2's input.
    let rank2 = ranks.iter().position(|r| *r == 2).unwrap();
    let send2: Vec<f32> = (0..60_000).map(|j| ((j + 2) % 17) as f32).collect();
    assert_eq!(
        out[rank2][3],
        bytemuck::cast_slice::<f32, u8>(&send2).to_vec()
    );
    let mut gathered = Vec::new();
    for q in 0..3 {
        let send_q: Vec<f32> = (0..60_000).map(|j| ((j + q) % 17) as f32).collect();
        gathered.extend_from_slice(&send_q[chunk(60_000, 3, q)]);
    }
    assert_eq!(
        out[0][2],
        bytemuck::cast_slice::<f32, u8>(&gathered).to_vec()
    );
}

fn mismatch(e: &Error) -> bool {
    matches!(e, Error::ArgumentMismatch(m) if m.contains("different"))
}

/// Retries a corrected call until it succeeds. A peer that receives a failure verdict
/// before it has started the failed op starts it with the tag's next seq and so pairs its
/// first (wrong) call with the others' first retry (docs/ARCHITECTURE.md §4): one more
/// `Mismatch` is then expected, never a hang.
fn settle<T>(what: &str, mut call: impl FnMut() -> pccl::Result<T>) -> T {
    for _ in 0..4 {
        match call() {
            Ok(v) => return v,
            Err(e) if mismatch(&e) => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: the corrected call kept failing");
}

/// A peer that calls another collective, or buffers that do not fit the ring, fail the
/// op on every peer, and the corrected call on the same tag succeeds.
#[test]
fn mismatched_and_misfit_calls_fail_everywhere_then_the_tag_works() {
    let m = master();
    let comms = cluster(&m, 3);
    let ranks = ranks(&comms);
    on_all(&comms, |i, c| {
        let r = ranks[i];
        let send = vec![1f32; 300];
        // Rank 0 all-gathers, the others all-reduce 300 elements. A peer that called
        // correctly may pair its first call with the others' retry and succeed at once.
        let mut all = [0f32; 300];
        let res = if r == 0 {
            c.all_gather(&send[..100], &mut [0f32; 300], 5)
        } else {
            c.all_reduce(&send, &mut all, ReduceOp::Sum, 5)
        };
        match &res {
            Err(e) if mismatch(e) => {
                settle("all-reduce after a mismatch", || {
                    c.all_reduce(&send, &mut all, ReduceOp::Sum, 5)
                });
            }
            Ok(_) if r != 0 => {}
            _ => panic!("rank {r}: {res:?}"),
        }
        assert_eq!(all, [3f32; 300]);
        // Rank 1's receive buffer is sized for another world size.
        let mut part = vec![0f32; if r == 1 { 150 } else { 100 }];
        let res = c.reduce_scatter(&send, &mut part, ReduceOp::Sum, 6);
        match (&res, r) {
            (Err(Error::ArgumentMismatch(m)), 1) => assert!(m.contains("reduce-scatter"), "{m}"),
            (Err(e), 0 | 2) if mismatch(e) => {}
            (Ok(_), 0 | 2) => {}
            _ => panic!("rank {r}: {res:?}"),
        }
        if res.is_err() {
            part = vec![0f32; 100];
            settle("reduce-scatter after a misfit", || {
                c.reduce_scatter(&send, &mut part, ReduceOp::Sum, 6)
            });
        }
        assert_eq!(part, [3f32; 100]);
        // A root that is not a rank fails on every peer, before any frame moves.
        let res = c.broadcast(&mut [0u8; 10], 3, 7);
        assert!(
            matches!(res, Err(Error::ArgumentMismatch(_))),
            "rank {r}: {res:?}"
        );
        let mut buf = [r as u8; 10];
        settle("broadcast after a bad root", || c.broadcast(&mut buf, 2, 7));
        assert_eq!(buf, [2u8; 10]);
        // Quantizing a copy is refused before the op starts.
        let q = ReduceDescriptor::new(300, DataType::F32, ReduceOp::Sum)
            .with_tag(8)
            .with_quantization(Quantization::new(
                QuantizationAlgorithm::MinMax,
                DataType::U8,
            ));
        let mut all = vec![0f32; 300];
        let bufs = SliceBuffers::sized(
            bytemuck::cast_slice(&send[..100]),
            bytemuck::cast_slice_mut(&mut all),
        );
        let res = c.collective_with(bufs, q, Collective::AllGather);
        assert!(matches!(res, Err(Error::InvalidArgument(_))), "{res:?}");
    });
}

/// The kinds killed mid-op: every peer starts the op, and one is dropped right after it
/// started its part. Every survivor fails with `RankConnectionLost`; the retry, sized for the
/// new ring from `rank()` and the world size, succeeds and agrees bit for bit.
fn killed_mid_op(kind: Collective) {
    let m = master();
    let mut comms = cluster(&m, 4);
    let victim_rank = 1;
    let at = comms
        .iter()
        .position(|c| c.rank().unwrap() == victim_rank)
        .unwrap();
    let victim = comms.remove(at);
    let per_rank = 1 << 20;
    let started = Barrier::new(4);
    // Every rank's buffers for world size `n` at rank `r`: (send, recv element counts).
    let op = |c: &Communicator, tag: u64| {
        let (n, r) = (world(c), c.rank().unwrap());
        let all: Vec<f32> = (0..n * per_rank).map(|j| ((j + r) % 29) as f32).collect();
        let desc = |count| ReduceDescriptor::new(count, DataType::F32, ReduceOp::Sum).with_tag(tag);
        let (bufs, desc) = match kind {
            Collective::ReduceScatter => {
                (OwnedBuffers::with_recv(&all, per_rank), desc(n * per_rank))
            }
            Collective::AllGather => (
                OwnedBuffers::with_recv(&all[r * per_rank..(r + 1) * per_rank], n * per_rank),
                desc(n * per_rank),
            ),
            _ => (OwnedBuffers::new(&all), desc(n * per_rank)),
        };
        c.collective_async(bufs, desc, kind).unwrap()
    };
    let results = std::thread::scope(|s| {
        s.spawn(|| {
            // The survivors' ops are running (waiting for ours): join in and die at once,
            // long before our megabytes are through.
            started.wait();
            let h = op(&victim, 7);
            drop(victim);
            let (_, r) = h.wait();
            assert!(r.is_err(), "the killed peer's op cannot succeed");
        });
        on_all(&comms, |_, c| {
            let h = op(c, 7);
            started.wait();
            let (_, first) = h.wait();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut tries = 0;
            let out = loop {
                tries += 1;
                assert!(
                    tries <= 20 && Instant::now() < deadline,
                    "the retry never succeeded"
                );
                let (b, r) = op(c, 7).wait();
                match r {
                    Ok(info) => break (b.recv, info.local_world_size, c.rank().unwrap()),
                    Err(Error::RankConnectionLost { .. }) => continue,
                    Err(e) => panic!("retry: {e}"),
                }
            };
            (first, out)
        })
    });
    for (first, (_, world, _)) in &results {
        assert!(
            matches!(first, Err(Error::RankConnectionLost { tag: 7, .. })),
            "{kind:?}: a survivor ended with {first:?}"
        );
        assert_eq!(*world, 3, "{kind:?}: the retry ran on the new ring");
    }
    let mut ranks: Vec<usize> = results.iter().map(|(_, o)| o.2).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, [0, 1, 2]);
    match kind {
        Collective::ReduceScatter => {
            for (_, (recv, _, r)) in &results {
                let got: &[f32] = bytemuck::cast_slice(recv);
                for (j, v) in got.iter().enumerate() {
                    let e = r * per_rank + j;
                    let want: usize = (0..3).map(|q| (e + q) % 29).sum();
                    assert_eq!(*v, want as f32, "{kind:?} rank {r} element {j}");
                }
            }
        }
        _ => {
            for (_, o) in &results[1..] {
                assert!(o.0 == results[0].1.0, "{kind:?}: survivors differ");
            }
        }
    }
    if let Collective::Broadcast { root } = kind {
        let (recv, _, _) = &results[0].1;
        let want: Vec<f32> = (0..3 * per_rank)
            .map(|j| ((j + root as usize) % 29) as f32)
            .collect();
        assert!(
            recv[..] == *bytemuck::cast_slice::<f32, u8>(&want),
            "broadcast content"
        );
    }
}

#[test]
fn reduce_scatter_with_a_peer_killed_mid_op() {
    killed_mid_op(Collective::ReduceScatter);
}

#[test]
fn all_gather_with_a_peer_killed_mid_op() {
    killed_mid_op(Collective::AllGather);
}

#[test]
fn broadcast_with_a_peer_killed_mid_op() {
    killed_mid_op(Collective::Broadcast { root: 2 });
}
