//! All-reduce correctness on loopback: results against a local reference, bit parity
//! across peers, every dtype and op, odd counts, concurrent tags, bad input.

use pccl::{Communicator, ReduceOp};

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
