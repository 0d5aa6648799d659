//! The ring engine driven without sockets (see `mem.rs`): n = 2..=4 ranks through
//! re-ordered, duplicate, corrupt, mismatched, stale and quantized frames and through a
//! neighbour vanishing. Every success is checked bit for bit across ranks and against a
//! reference computed here; every failure must reach every rank with the same error and
//! commit nothing. Each test is bounded by `mem::HANG`.

use std::sync::Arc;

use super::mem::{Fault, MemRing, Options, Outcome, rt};
use crate::collectives::schedule::Schedule;
use crate::error::Error;
use crate::quant::{Codec, Scratch};
use crate::types::{
    Collective, DataType, Quantization, QuantizationAlgorithm, ReduceDescriptor, ReduceOp,
};
use crate::wire::FailReason;

const TAG: u64 = 7;

/// Rank `r`'s input for op `k`: small integers, so sums in f32 are exact.
fn input_f32(r: usize, k: usize, count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((i * 7 + r * 13 + k * 5) % 31) as f32 - 15.0)
        .collect()
}

/// Rank `r`'s input for op `k` as smooth reals, for the quantized tests.
fn input_real(r: usize, k: usize, count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| (i as f32 * 0.37 + r as f32 * 1.3 + k as f32).sin() * (1.0 + r as f32))
        .collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// The exact result of a plain f32 op over these inputs.
fn reference_f32(op: ReduceOp, inputs: &[Vec<f32>]) -> Vec<u8> {
    let n = inputs.len();
    let out: Vec<f32> = (0..inputs[0].len())
        .map(|i| {
            let vals = inputs.iter().map(|x| x[i]);
            match op {
                ReduceOp::Sum => vals.sum(),
                ReduceOp::Avg => vals.sum::<f32>() / n as f32,
                ReduceOp::Max => vals.fold(f32::NEG_INFINITY, f32::max),
                ReduceOp::Min => vals.fold(f32::INFINITY, f32::min),
                ReduceOp::Prod => vals.product(),
            }
        })
        .collect();
    bytes(&out)
}

/// What the quantized ring computes, slice by slice, with the same codec: chunk `c`
/// starts at rank `c + 1`, each following rank combines its input into the frame, the
/// owner (rank `c`) divides for `Avg`; every rank's result is the decoding of the owner's
/// bytes.
fn reference_quantized(desc: &ReduceDescriptor, inputs: &[Vec<u8>], slice_elems: usize) -> Vec<u8> {
    let n = inputs.len();
    let size = desc.dtype.size();
    let codec = Codec::new(desc).expect("quantized");
    let mut s = Scratch::default();
    let sched = Schedule::new(Collective::AllReduce, n, 0, desc.count, slice_elems);
    let mut out = vec![0u8; desc.count * size];
    for c in 0..n {
        for k in 0..sched.slices(c) {
            let r = sched.slice(c, k);
            let b = r.start * size..r.end * size;
            let mut frame = vec![0u8; codec.frame_len(r.len())];
            codec.encode(&inputs[(c + 1) % n][b.clone()], &mut s, &mut frame);
            for g in 0..n - 1 {
                let rank = (c + g + 2) % n;
                let last = g == n - 2;
                let avg = (last && desc.op == ReduceOp::Avg).then_some(n);
                let mut next = vec![0u8; frame.len()];
                codec.combine(&frame, &inputs[rank][b.clone()], avg, &mut s, &mut next);
                frame = next;
            }
            out[b].copy_from_slice(codec.decode(&frame, r.len(), &mut s));
        }
    }
    out
}

/// Every live rank succeeded with exactly `want`.
fn assert_parity(outcomes: &[Option<Outcome>], want: &[u8], what: &str) {
    for (r, o) in outcomes.iter().enumerate() {
        let (bufs, res) = o
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: rank {r} vanished"));
        if let Err(e) = res {
            panic!("{what}: rank {r} failed: {e}");
        }
        let got = bufs.committed.as_deref().expect("a success commits");
        assert!(
            got == want,
            "{what}: rank {r}'s result differs from the reference"
        );
    }
}

/// Every live rank failed with the same error, chosen by `ok`, and committed nothing.
fn assert_failed(outcomes: &[Option<Outcome>], ok: impl Fn(&Error) -> bool, what: &str) {
    let mut live = 0;
    for (r, o) in outcomes.iter().enumerate() {
        let Some((bufs, res)) = o else { continue };
        live += 1;
        match res {
            Err(e) if ok(e) => {}
            other => panic!("{what}: rank {r} ended with {other:?}"),
        }
        assert!(
            bufs.committed.is_none(),
            "{what}: rank {r} committed a failed op"
        );
    }
    assert!(live >= 2, "{what}: fewer than two ranks took part");
}

fn lost(e: &Error) -> bool {
    matches!(e, Error::RankConnectionLost { .. })
}

fn mismatch(e: &Error) -> bool {
    matches!(e, Error::ArgumentMismatch(m) if m.contains("different counts"))
}

/// Runs `ops` plain f32 ops of one tag in a row (so the next op's frames arrive while the
/// last verdict is delivered) and checks each.
async fn plain_rounds(ring: &MemRing, n: usize, count: usize, ops: &[ReduceOp], what: &str) {
    for (k, &op) in ops.iter().enumerate() {
        let desc = ReduceDescriptor::new(count, DataType::F32, op).with_tag(TAG);
        let inputs: Vec<Vec<f32>> = (0..n).map(|r| input_f32(r, k, count)).collect();
        let out = ring
            .all_reduce(&vec![desc; n], inputs.iter().map(|x| bytes(x)).collect())
            .await;
        assert_parity(
            &out,
            &reference_f32(op, &inputs),
            &format!("{what} op {k} {op:?}"),
        );
    }
}

const OPS: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min];

#[test]
fn plain_ops_reach_parity_and_the_reference() {
    rt().block_on(async {
        for n in 2..=4 {
            for (conns, count) in [(1, 1000), (3, 1000), (2, 5), (2, 1)] {
                let ring = MemRing::new(Options {
                    conns,
                    ..Options::new(n)
                });
                plain_rounds(
                    &ring,
                    n,
                    count,
                    &OPS,
                    &format!("n={n} conns={conns} count={count}"),
                )
                .await;
            }
        }
    });
}

/// Results buffers of `STREAM_MIN_BYTES` or more are written with streaming stores
/// (`collectives/stream.rs`): an element count that leaves slices off 16-byte alignment,
/// and every rank still has the reference's bits.
#[test]
fn streamed_results_reach_parity_and_the_reference() {
    let count = crate::collectives::stream::STREAM_MIN_BYTES / 4 + 7;
    rt().block_on(async {
        let ring = MemRing::new(Options {
            conns: 2,
            slice_bytes: 256 << 10,
            ..Options::new(3)
        });
        plain_rounds(&ring, 3, count, &[ReduceOp::Sum, ReduceOp::Avg], "streamed").await;
    });
}

/// A rank sends its step-0 slices at most `window` ahead of the frames it has received
/// at the pace step (the last), so what a ring holds in flight is bounded whatever the
/// queues allow (docs/ARCHITECTURE.md §5, "Memory"). Seen on the wires: step-0 frames a
/// rank has sent never exceed the pace-step frames sent to it plus the window. With the
/// window removed, a rank fills its connection queues with step-0 slices first.
#[test]
fn step_0_slices_go_no_further_ahead_than_the_window() {
    use std::sync::Mutex;
    rt().block_on(async {
        for (n, conns) in [(2, 1), (3, 1), (4, 2)] {
            let count = 64 * 16 * n; // 64 slices of 16 floats per chunk
            let sched = Schedule::new(Collective::AllReduce, n, 0, count, 16);
            let pace = sched.pace_step().expect("an all-reduce is paced") as u16;
            let window = super::exchange::window(&sched, conns, 0, 64).expect("paced");
            // Per rank: step-0 frames it sent, pace-step frames sent to it, and the most
            // step-0 frames it had out beyond those.
            let seen = Arc::new(Mutex::new(vec![(0usize, 0usize, 0usize); n]));
            let tally = seen.clone();
            let ring = MemRing::new(Options {
                conns,
                fault: Arc::new(move |from, _, h| {
                    let mut t = tally.lock().unwrap();
                    if h.step == 0 {
                        t[from].0 += 1;
                    }
                    if h.step == pace {
                        t[(from + 1) % n].1 += 1;
                    }
                    let (sent, paced, _) = t[from];
                    t[from].2 = t[from].2.max(sent.saturating_sub(paced));
                    Fault::Pass
                }),
                ..Options::new(n)
            });
            plain_rounds(&ring, n, count, &[ReduceOp::Sum], &format!("n={n}")).await;
            for (r, &(sent, _, ahead)) in seen.lock().unwrap().iter().enumerate() {
                assert_eq!(sent, 64, "n={n}: rank {r} sent its whole first chunk");
                assert!(
                    ahead <= window,
                    "n={n}: rank {r} had {ahead} step-0 slices out, window {window}"
                );
            }
        }
    });
}

#[test]
fn reordered_frames_change_nothing() {
    let seed = 0x5eed_0001;
    println!("seed {seed:#x}");
    rt().block_on(async {
        for n in 2..=4 {
            let ring = MemRing::new(Options {
                conns: 3,
                shuffle: Some(seed + n as u64),
                ..Options::new(n)
            });
            plain_rounds(&ring, n, 2000, &OPS, &format!("n={n} shuffled")).await;
        }
    });
}

/// Runs one op with a fault on rank 0's link, checks that it failed everywhere as `ok`
/// says, then that the next op of the tag (whose frames must not be confused with the
/// failed one's) succeeds.
async fn fault_then_retry(n: usize, fault: Fault, ok: fn(&Error) -> bool, what: &str) {
    let count = 600;
    let ring = MemRing::new(Options {
        fault: Arc::new(move |from, index, _| {
            if from == 0 && index == 0 {
                fault.clone()
            } else {
                Fault::Pass
            }
        }),
        ..Options::new(n)
    });
    let desc = ReduceDescriptor::new(count, DataType::F32, ReduceOp::Sum).with_tag(TAG);
    let inputs: Vec<Vec<u8>> = (0..n).map(|r| bytes(&input_f32(r, 0, count))).collect();
    let out = ring.all_reduce(&vec![desc; n], inputs).await;
    assert_failed(&out, ok, what);
    plain_rounds(&ring, n, count, &[ReduceOp::Sum], &format!("{what}, retry")).await;
}

#[test]
fn a_duplicate_frame_is_a_mismatch_everywhere() {
    rt().block_on(async {
        for n in 2..=4 {
            fault_then_retry(n, Fault::Duplicate, mismatch, &format!("n={n} duplicate")).await;
        }
    });
}

#[test]
fn a_corrupt_frame_fails_the_op_everywhere() {
    rt().block_on(async {
        for n in 2..=4 {
            fault_then_retry(n, Fault::Corrupt, lost, &format!("n={n} corrupt")).await;
        }
    });
}

#[test]
fn a_frame_that_does_not_fit_the_schedule_is_a_mismatch() {
    let q = Quantization::new(QuantizationAlgorithm::MinMax, DataType::U8);
    // The second argument is the number of steps: the first step out of range.
    type Edit = fn(&mut crate::wire::DataHeader, u16);
    let edits: [(&str, Edit); 9] = [
        ("count", |h, _| h.count += 1),
        ("dtype", |h, _| h.dtype = DataType::I32),
        ("op", |h, _| h.op = ReduceOp::Max),
        ("offset", |h, _| h.offset += 4),
        ("len", |h, _| h.len -= 4),
        ("step", |h, steps| h.step = steps),
        ("slice", |h, _| h.slice = 10_000),
        ("collective", |h, _| h.kind = Collective::ReduceScatter),
        ("quantization", |_, _| {}),
    ];
    rt().block_on(async {
        for n in 2..=4 {
            for (what, edit) in edits {
                let fault = Arc::new(
                    move |from: usize, index: usize, h: &crate::wire::DataHeader| {
                        if from != 0 || index != 0 {
                            return Fault::Pass;
                        }
                        let mut h = *h;
                        edit(&mut h, 2 * (n as u16 - 1));
                        if what == "quantization" {
                            h.quant = Some(q);
                        }
                        Fault::Rehead(h)
                    },
                );
                let ring = MemRing::new(Options {
                    fault,
                    ..Options::new(n)
                });
                let desc = ReduceDescriptor::new(600, DataType::F32, ReduceOp::Sum).with_tag(TAG);
                let inputs = (0..n).map(|r| bytes(&input_f32(r, 0, 600))).collect();
                let out = ring.all_reduce(&vec![desc; n], inputs).await;
                assert_failed(&out, mismatch, &format!("n={n} bad {what}"));
                let failures = ring.world.failures.lock().unwrap().clone();
                assert_eq!(
                    failures.first(),
                    Some(&(1, FailReason::Mismatch)),
                    "n={n} bad {what}: rank 1 must be the first to see it"
                );
            }
        }
    });
}

#[test]
fn ranks_that_call_an_op_differently_all_fail_with_mismatch() {
    let q = Quantization::new(QuantizationAlgorithm::MinMax, DataType::U8);
    let base = ReduceDescriptor::new(600, DataType::F32, ReduceOp::Sum).with_tag(TAG);
    let others = [
        (
            "count",
            ReduceDescriptor::new(601, DataType::F32, ReduceOp::Sum).with_tag(TAG),
        ),
        (
            "op",
            ReduceDescriptor::new(600, DataType::F32, ReduceOp::Max).with_tag(TAG),
        ),
        ("quantization", base.with_quantization(q)),
    ];
    rt().block_on(async {
        for n in 2..=4 {
            for (what, other) in others {
                let ring = MemRing::new(Options::new(n));
                let mut descs = vec![base; n];
                descs[n - 1] = other;
                let inputs = descs
                    .iter()
                    .enumerate()
                    .map(|(r, d)| bytes(&input_f32(r, 0, d.count)))
                    .collect();
                let out = ring.all_reduce(&descs, inputs).await;
                assert_failed(&out, mismatch, &format!("n={n} other {what}"));
            }
        }
    });
}

#[test]
fn frames_of_an_old_epoch_or_seq_are_not_taken_as_the_current_ops() {
    rt().block_on(async {
        for n in 2..=4 {
            // Before every frame of seq >= 1, a copy named as the previous seq; before
            // every frame, a copy from the previous epoch. Taken, either is a duplicate.
            let ring = MemRing::new(Options {
                fault: Arc::new(|_, index, h| {
                    let mut stale = *h;
                    if index % 2 == 0 && h.seq >= 1 {
                        stale.seq -= 1;
                    } else {
                        stale.epoch -= 1;
                    }
                    Fault::Also(stale)
                }),
                ..Options::new(n)
            });
            assert_eq!(ring.topology().group_epoch(0), Some(1));
            plain_rounds(&ring, n, 700, &OPS, &format!("n={n} stale copies")).await;
        }
    });
}

#[test]
fn quantized_ops_reach_parity_and_the_codec_reference() {
    let seed = 0x5eed_0002;
    println!("seed {seed:#x}");
    let slice_bytes = 64;
    rt().block_on(async {
        for n in 2..=4 {
            for alg in [
                QuantizationAlgorithm::MinMax,
                QuantizationAlgorithm::ZeroPointScale,
            ] {
                let ring = MemRing::new(Options {
                    slice_bytes,
                    shuffle: Some(seed + n as u64),
                    ..Options::new(n)
                });
                for (k, op) in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max]
                    .into_iter()
                    .enumerate()
                {
                    let count = 900;
                    let desc = ReduceDescriptor::new(count, DataType::F32, op)
                        .with_tag(TAG)
                        .with_quantization(Quantization::new(alg, DataType::U8));
                    let inputs: Vec<Vec<u8>> =
                        (0..n).map(|r| bytes(&input_real(r, k, count))).collect();
                    let want = reference_quantized(&desc, &inputs, slice_bytes / 4);
                    let out = ring.all_reduce(&vec![desc; n], inputs).await;
                    assert_parity(&out, &want, &format!("n={n} {alg:?} {op:?}"));
                }
            }
        }
    });
}

#[test]
fn a_successor_that_is_gone_fails_the_op_with_peer_lost() {
    rt().block_on(async {
        for n in 2..=4 {
            let gone = n - 1;
            let ring = MemRing::new(Options {
                gone: vec![gone],
                ..Options::new(n)
            });
            let desc = ReduceDescriptor::new(600, DataType::F32, ReduceOp::Sum).with_tag(TAG);
            let inputs = (0..n).map(|r| bytes(&input_f32(r, 0, 600))).collect();
            let out = ring.all_reduce(&vec![desc; n], inputs).await;
            assert!(out[gone].is_none());
            if n == 2 {
                // One survivor: it alone reports, and its verdict still ends the op.
                let (bufs, res) = out[0].as_ref().expect("rank 0 ran");
                assert!(matches!(res, Err(e) if lost(e)), "n=2: {res:?}");
                assert!(bufs.committed.is_none());
            } else {
                assert_failed(&out, lost, &format!("n={n} successor gone"));
            }
            let failures = ring.world.failures.lock().unwrap().clone();
            assert_eq!(
                failures.first(),
                Some(&(gone - 1, FailReason::PeerLost)),
                "n={n}: the predecessor of the gone rank must report its link lost"
            );
        }
    });
}

#[test]
fn a_neighbour_vanishing_mid_op_ends_the_op_on_every_survivor() {
    rt().block_on(async {
        for n in 3..=4 {
            for after in [0, 5, 40] {
                let ring = MemRing::new(Options::vanishing(n, 1, after));
                let desc = ReduceDescriptor::new(2000, DataType::F32, ReduceOp::Sum).with_tag(TAG);
                let inputs = (0..n).map(|r| bytes(&input_f32(r, 0, 2000))).collect();
                let out = ring.all_reduce(&vec![desc; n], inputs).await;
                assert!(out[1].is_none(), "rank 1 vanished");
                assert_failed(
                    &out,
                    lost,
                    &format!("n={n} rank 1 vanished after {after} frames"),
                );
            }
        }
    });
}

/// A connection that fails with frames on it loses them, and the receiver cannot tell
/// which ops they belonged to. The sender can: even when the lost frame is its last one,
/// so it has already reported the op done, the op fails on every rank instead of leaving
/// the successor waiting for the frame forever.
#[test]
fn frames_lost_with_a_failed_connection_fail_the_op_everywhere() {
    rt().block_on(async {
        // 600 f32 in n chunks, slices of 16 f32: `slices` per chunk, and each rank sends
        // that many in each of its 2(n-1) steps. At n = 2 the last frame is a store that
        // nothing waits on, so the sender has reported the op done when it is lost.
        for (n, slices) in [(2, 19), (3, 13)] {
            let last = 2 * (n - 1) * slices - 1;
            for lost_at in [0, 20, last] {
                let ring = MemRing::new(Options {
                    conns: 1,
                    fault: Arc::new(move |from, index, _| {
                        if from == 0 && index == lost_at {
                            Fault::Lose
                        } else {
                            Fault::Pass
                        }
                    }),
                    ..Options::new(n)
                });
                let desc = ReduceDescriptor::new(600, DataType::F32, ReduceOp::Sum).with_tag(TAG);
                let inputs = (0..n).map(|r| bytes(&input_f32(r, 0, 600))).collect();
                let out = ring.all_reduce(&vec![desc; n], inputs).await;
                assert_failed(
                    &out,
                    lost,
                    &format!("n={n}: frame {lost_at} of rank 0 lost"),
                );
                let failures = ring.world.failures.lock().unwrap().clone();
                assert!(
                    failures.contains(&(0, FailReason::PeerLost)),
                    "n={n} lost at {lost_at}: the sender reports its closed link: {failures:?}"
                );
            }
        }
    });
}

/// A host whose successor never answers the dial: a peer that is frozen (SIGSTOP), not
/// dead, so its kernel accepts the connection and nothing more comes back.
struct SilentSuccessor {
    registry: crate::collectives::registry::Registry,
    bufs: crate::collectives::bufpool::BufPool,
}

impl super::RingHost for SilentSuccessor {
    fn me(&self) -> crate::types::PeerId {
        crate::types::PeerId([1; 16])
    }

    fn group(&self) -> u32 {
        0
    }

    fn slice_bytes(&self) -> usize {
        4096
    }

    fn registry(&self) -> &crate::collectives::registry::Registry {
        &self.registry
    }

    fn bufs(&self) -> &crate::collectives::bufpool::BufPool {
        &self.bufs
    }

    async fn pool(
        &self,
        _next: &crate::types::PeerEntry,
    ) -> crate::error::Result<Arc<crate::collectives::link::Pool>> {
        std::future::pending().await
    }

    fn report(&self, _key: crate::collectives::registry::OpKey, _failure: Option<FailReason>) {}
}

/// The master removed the successor this op is still dialling (it froze): the op ends at
/// once with `RankConnectionLost`, as every other op of the old membership does, instead
/// of waiting out the dial timeout (or the frozen peer's thaw) and holding the retry on the
/// new ring back that long.
#[test]
fn an_op_dialling_a_removed_successor_ends_at_the_removal() {
    use crate::types::{PeerEntry, PeerId, Topology};
    let entry = |b: u8| PeerEntry {
        id: PeerId([b; 16]),
        group: 0,
        p2p_addr: "127.0.0.1:9".parse().expect("address"),
        static_key: [0; 32],
    };
    let ring = |members: &[u8], epoch: u64| Topology {
        ring: members.iter().map(|b| entry(*b)).collect(),
        group_epochs: vec![(0, epoch)],
    };
    rt().block_on(async {
        let host = Arc::new(SilentSuccessor {
            registry: crate::collectives::registry::Registry::new(0, 1 << 20),
            bufs: crate::collectives::bufpool::BufPool::new(4096),
        });
        host.registry.set_topology(ring(&[1, 2, 3], 1));
        let desc = ReduceDescriptor::new(1000, DataType::F32, ReduceOp::Sum).with_tag(TAG);
        let started = super::start(&host, &desc).expect("start");
        let op = tokio::spawn(async move {
            let mut bufs = super::mem::Staged::new(bytes(&input_f32(0, 0, 1000)));
            super::run(started, &mut bufs, desc, Collective::AllReduce).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!op.is_finished(), "the op waits for its successor");
        // Peer 2 (our successor) is removed; peer 3 becomes the successor.
        host.registry.set_topology(ring(&[1, 3], 2));
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), op)
            .await
            .expect("the op ended at the removal, not at the dial timeout")
            .expect("op task");
        assert!(
            matches!(r, Err(Error::RankConnectionLost { tag: TAG, .. })),
            "{r:?}"
        );
    });
}
