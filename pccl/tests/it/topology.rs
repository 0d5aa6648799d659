//! `optimize_topology` on loopback: real bandwidth tests, a consistent ring afterwards,
//! and collectives that still give bit-identical results.

use pccl::{Error, ReduceOp};

use crate::common::{cluster, master, on_all};

#[test]
fn optimize_topology_measures_and_keeps_the_run_working() {
    let m = master();
    let comms = cluster(&m, 4);
    let t = std::time::Instant::now();
    let r = on_all(&comms, |_, c| c.optimize_topology());
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    // Each peer streamed to its 3 group mates, one test after another: the tests ran.
    let took = t.elapsed();
    eprintln!("first optimize_topology: {took:?}");
    assert!(
        took >= pccl::BANDWIDTH_TEST_DURATION * 3,
        "no bandwidth tests ran ({took:?})"
    );
    let rings: Vec<Vec<_>> = comms
        .iter()
        .map(|c| c.topology().unwrap().ring.iter().map(|p| p.id).collect())
        .collect();
    assert!(
        rings.iter().all(|r| *r == rings[0]),
        "peers disagree on the ring"
    );
    // Everything is measured: the second call tests nothing and is quick.
    let t = std::time::Instant::now();
    on_all(&comms, |_, c| c.optimize_topology().unwrap());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    let out = on_all(&comms, |i, c| {
        let mut recv = vec![0f64; 3001];
        c.all_reduce(&vec![i as f64 + 0.25; 3001], &mut recv, ReduceOp::Sum, 4)
            .unwrap();
        recv
    });
    assert!(out.iter().all(|o| *o == out[0] && o[0] == 7.0));
    // Alone, optimising is trivially fine; with an async op in flight it is refused.
    let h = comms[0]
        .all_reduce_async(
            pccl::OwnedBuffers::new(&[1u8; 8]),
            pccl::ReduceDescriptor::new(8, pccl::DataType::U8, ReduceOp::Max).with_tag(1),
        )
        .unwrap();
    assert!(matches!(
        comms[0].optimize_topology(),
        Err(Error::PendingAsyncOps)
    ));
    on_all(&comms[1..], |_, c| {
        let mut out = [0u8; 8];
        c.all_reduce(&[1u8; 8], &mut out, ReduceOp::Max, 1).unwrap();
    });
    h.wait().1.unwrap();
}
