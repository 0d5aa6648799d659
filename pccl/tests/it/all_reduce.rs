//! All-reduce correctness on loopback: results against a local reference, bit parity
//! across peers, every dtype and op, odd counts, concurrent tags, bad input.

use pccl::{Communicator, DataType, OwnedBuffers, ReduceDescriptor, ReduceOp};

use crate::common::{cluster, master, on_all};

fn ring_rank(comm: &Communicator) -> usize {
    let topo = comm.topology().unwrap();
    topo.ring.iter().position(|p| p.id == comm.id()).unwrap()
}

#[test]
fn two_peers_sum_f32() {
    let m = master();
    let comms = cluster(&m, 2);
    let results = on_all(&comms, |_, c| {
        let r = ring_rank(c) as f32;
        let send: Vec<f32> = (0..1000).map(|i| i as f32 + r).collect();
        let mut recv = vec![0f32; 1000];
        let info = c.all_reduce(&send, &mut recv, ReduceOp::Sum, 0).unwrap();
        assert_eq!(info.local_world_size, 2);
        recv
    });
    for (i, v) in results[0].iter().enumerate() {
        assert_eq!(*v, (2 * i + 1) as f32);
    }
    assert_eq!(results[0], results[1]);
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

#[test]
fn concurrent_tags_with_async_handles() {
    let m = master();
    let comms = cluster(&m, 3);
    let results = on_all(&comms, |_, c| {
        let r = ring_rank(c) as f32;
        let handles: Vec<_> = (0..8u64)
            .map(|tag| {
                let send: Vec<f32> = (0..5000)
                    .map(|i| (i % 13) as f32 + r + tag as f32)
                    .collect();
                let desc = ReduceDescriptor::new(5000, DataType::F32, ReduceOp::Sum).with_tag(tag);
                c.all_reduce_async(OwnedBuffers::new(&send), desc).unwrap()
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let tag = h.tag();
                let (bufs, r) = h.wait();
                r.unwrap();
                let out = f32s(&bufs.recv);
                for (i, v) in out.iter().enumerate() {
                    assert_eq!(*v, 3.0 * ((i % 13) as f32 + tag as f32) + 3.0, "tag {tag}");
                }
                out
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn multiple_with_retry_in_place_and_send_untouched() {
    let m = master();
    let comms = cluster(&m, 3);
    let results = on_all(&comms, |_, c| {
        let mut ops: Vec<_> = (0..10u64)
            .map(|tag| {
                let send: Vec<f64> = (0..777).map(|i| (i as f64) * 0.5 + tag as f64).collect();
                (
                    OwnedBuffers::new(&send),
                    ReduceDescriptor::new(777, DataType::F64, ReduceOp::Avg).with_tag(tag),
                )
            })
            .collect();
        let originals: Vec<Vec<u8>> = ops.iter().map(|(b, _)| b.send.clone()).collect();
        let info = c.all_reduce_multiple_with_retry(&mut ops, 3).unwrap();
        assert_eq!(info.local_world_size, 3);
        assert!(info.tx_bytes > 0 && info.rx_bytes > 0);
        for ((b, _), orig) in ops.iter().zip(&originals) {
            assert_eq!(&b.send, orig, "send buffer modified");
            assert_eq!(b.recv, b.send, "average of equal inputs is the input");
        }
        // In place: the buffer becomes the sum.
        let mut buf: Vec<i32> = (0..100).map(|i| i - 50).collect();
        c.all_reduce_in_place(&mut buf, ReduceOp::Sum, 11).unwrap();
        for (i, v) in buf.iter().enumerate() {
            assert_eq!(*v, 3 * (i as i32 - 50));
        }
        ops.into_iter().map(|(b, _)| b.recv).collect::<Vec<_>>()
    });
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1], results[2]);
}

#[test]
fn a_peer_leaving_mid_batch_fails_its_ops_and_the_retry_succeeds() {
    // The leaver takes part in the batch's first ops (one at a time, as the survivors run
    // it with `max_in_flight` 1), then leaves abruptly while the survivors are mid-batch.
    const LEAVER_OPS: u64 = 15;
    const BATCH: u64 = 40;
    let m = master();
    let mut comms = cluster(&m, 3);
    let leaver = comms.pop().unwrap();
    let (done_by_leaver, results) = std::thread::scope(|s| {
        let leaving = s.spawn(|| {
            let mut done = 0;
            for tag in 0..LEAVER_OPS {
                let mut out = vec![0f32; 20000];
                if leaver
                    .all_reduce(&vec![1f32; 20000], &mut out, ReduceOp::Sum, tag)
                    .is_err()
                {
                    break;
                }
                done += 1;
            }
            drop(leaver);
            done
        });
        let r = on_all(&comms, |_, c| {
            let mut ops: Vec<_> = (0..BATCH)
                .map(|tag| {
                    (
                        OwnedBuffers::new(&vec![1f32; 20000]),
                        ReduceDescriptor::new(20000, DataType::F32, ReduceOp::Sum).with_tag(tag),
                    )
                })
                .collect();
            let info = c.all_reduce_multiple_with_retry(&mut ops, 1).unwrap();
            assert_eq!(info.local_world_size, 2);
            ops.into_iter()
                .map(|(b, _)| f32s(&b.recv))
                .collect::<Vec<_>>()
        });
        (leaving.join().unwrap(), r)
    });
    // Nothing failed while all three were there.
    assert_eq!(
        done_by_leaver, LEAVER_OPS,
        "the leaver's ops failed before it left"
    );
    assert_eq!(results[0], results[1], "survivors differ");
    for (tag, op) in results[0].iter().enumerate() {
        assert!(op.iter().all(|v| *v == op[0]), "op {tag} is not uniform");
    }
    // Ops run in tag order, one at a time: the leaver could finish op t + 1 only once the
    // survivors had sent their part of it, which they do after finishing op t with all
    // three. So every op before the leaver's last one summed three inputs; its last one
    // three or two (the leaver may leave before the survivors received all of it, and the
    // retry runs it again without the leaver); every later op, retried or not, two. A retry
    // that re-ran finished ops, or dropped a failed one, breaks this.
    let sums: Vec<f32> = results[0].iter().map(|op| op[0]).collect();
    let with_three = sums.iter().take_while(|v| **v == 3.0).count() as u64;
    assert!(
        with_three == LEAVER_OPS || with_three == LEAVER_OPS - 1,
        "expected the first {} or {LEAVER_OPS} ops with three peers: {sums:?}",
        LEAVER_OPS - 1
    );
    assert!(
        sums[with_three as usize..].iter().all(|v| *v == 2.0),
        "after the leave every op has two peers: {sums:?}"
    );
}

#[test]
fn one_op_striped_over_a_pool_with_tiny_slices() {
    let m = master();
    let addr = m.local_addr();
    for (pool, slice) in [(4, 64), (16, 1000)] {
        let comms = crate::common::cluster_with(3, |_| {
            let mut c = crate::common::config(addr);
            c.pool_size = pool;
            c.slice_bytes = slice;
            c
        });
        let results = on_all(&comms, |_, c| {
            let r = ring_rank(c) as u64;
            let send: Vec<u64> = (0..10_001u64).map(|i| i * 3 + r).collect();
            let mut recv = vec![0u64; send.len()];
            c.all_reduce(&send, &mut recv, ReduceOp::Sum, 2).unwrap();
            for (i, v) in recv.iter().enumerate() {
                assert_eq!(*v, 9 * i as u64 + 3);
            }
            recv
        });
        assert_eq!(results[0], results[1]);
        assert_eq!(results[1], results[2]);
    }
}

#[test]
fn an_async_handle_outliving_its_communicator_ends_with_an_error() {
    let m = master();
    let mut comms = cluster(&m, 2);
    let c = comms.pop().unwrap();
    let mut h = c
        .all_reduce_async(
            OwnedBuffers::new(&[1f32; 64]),
            ReduceDescriptor::new(64, DataType::F32, ReduceOp::Sum).with_tag(9),
        )
        .unwrap();
    assert!(
        h.wait_timeout(std::time::Duration::from_millis(50))
            .is_none()
    );
    drop(c);
    let (bufs, r) = h.wait();
    assert!(r.is_err());
    assert_eq!(bufs.send, bytemuck::cast_slice::<f32, u8>(&[1f32; 64]));
}
