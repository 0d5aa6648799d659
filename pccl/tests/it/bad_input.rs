//! Bad input from the caller gets a clear error and leaves the run usable.

use std::time::Duration;

use pccl::{
    Communicator, DataType, Error, OwnedBuffers, ReduceDescriptor, ReduceOp, ResultCode,
    SliceBuffers,
};

use crate::common::{cluster, config, master, on_all};

#[test]
fn calls_before_connect_are_invalid_usage() {
    let m = master();
    let c = Communicator::new(config(m.local_addr())).unwrap();
    let mut out = [0f32; 4];
    let code = |r: Result<(), Error>| r.unwrap_err().code();
    assert_eq!(
        code(
            c.all_reduce(&[1f32; 4], &mut out, ReduceOp::Sum, 0)
                .map(drop)
        ),
        ResultCode::InvalidUsage
    );
    assert_eq!(code(c.update_topology()), ResultCode::InvalidUsage);
    assert_eq!(
        code(c.are_peers_pending().map(drop)),
        ResultCode::InvalidUsage
    );
    assert_eq!(
        code(c.attribute(pccl::Attribute::GlobalWorldSize).map(drop)),
        ResultCode::InvalidUsage
    );
}

#[test]
fn bad_config_and_unreachable_master() {
    let mut cfg = config("127.0.0.1:1".parse().unwrap());
    cfg.pool_size = 0;
    assert!(matches!(
        Communicator::new(cfg.clone()),
        Err(Error::InvalidArgument(_))
    ));
    cfg.pool_size = 1;
    cfg.connect_attempts = 1;
    let c = Communicator::new(cfg).unwrap();
    assert!(matches!(c.connect(), Err(Error::MasterConnectionFailed(_))));
}

#[test]
fn argument_errors_and_double_connect() {
    let m = master();
    let comms = cluster(&m, 2);
    let c = &comms[0];
    assert!(matches!(c.connect(), Err(Error::InvalidUsage(_))));
    let mut empty: [f32; 0] = [];
    assert!(matches!(
        c.all_reduce(&[], &mut empty, ReduceOp::Sum, 0),
        Err(Error::InvalidArgument(_))
    ));
    let mut short = [0f32; 9];
    assert!(matches!(
        c.all_reduce(&[0f32; 10], &mut short, ReduceOp::Sum, 0),
        Err(Error::InvalidArgument(_))
    ));
    let send = [0u8; 16];
    let mut recv = [0u8; 16];
    let desc = ReduceDescriptor::new(5, DataType::F32, ReduceOp::Sum);
    let bufs = SliceBuffers::new(&send, &mut recv).unwrap();
    assert!(matches!(
        c.all_reduce_with(bufs, desc),
        Err(Error::InvalidArgument(_))
    ));
    let mut ops: Vec<(OwnedBuffers, ReduceDescriptor)> = Vec::new();
    assert!(matches!(
        c.all_reduce_multiple_with_retry(&mut ops, 0),
        Err(Error::InvalidArgument(_))
    ));
    // The run is still fine afterwards.
    let res = on_all(&comms, |_, c| {
        let mut out = [0f32; 3];
        c.all_reduce(&[1f32, 2.0, 3.0], &mut out, ReduceOp::Sum, 0)
            .unwrap();
        out
    });
    assert_eq!(res[0], [2.0, 4.0, 6.0]);
    assert_eq!(res[0], res[1]);
}

#[test]
fn tag_reused_while_in_flight_is_rejected() {
    let m = master();
    let comms = cluster(&m, 2);
    let pending = comms[0]
        .all_reduce_async(
            OwnedBuffers::new(&[1f32; 8]),
            ReduceDescriptor::new(8, DataType::F32, ReduceOp::Sum).with_tag(5),
        )
        .unwrap();
    let mut out = [0f32; 8];
    let err = comms[0]
        .all_reduce(&[1f32; 8], &mut out, ReduceOp::Sum, 5)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUsage(_)), "{err}");
    assert!(matches!(
        comms[0].update_topology(),
        Err(Error::PendingAsyncOps)
    ));
    comms[1]
        .all_reduce(&[2f32; 8], &mut out, ReduceOp::Sum, 5)
        .unwrap();
    let (bufs, r) = pending.wait();
    r.unwrap();
    assert_eq!(bufs.recv, bytemuck::cast_slice::<f32, u8>(&[3f32; 8]));
    assert_eq!(out, [3f32; 8]);
}

#[test]
fn peers_disagreeing_on_type_or_count_fail_on_every_peer() {
    let m = master();
    let comms = cluster(&m, 3);
    for (dtype_b, count_b) in [(DataType::I32, 100), (DataType::F32, 200)] {
        let errs = on_all(&comms, |i, c| {
            let (dtype, count) = if i == 1 {
                (dtype_b, count_b)
            } else {
                (DataType::F32, 100)
            };
            let send = vec![0u8; count * 4];
            let mut recv = send.clone();
            let desc = ReduceDescriptor::new(count, dtype, ReduceOp::Sum).with_tag(3);
            c.all_reduce_with(SliceBuffers::new(&send, &mut recv).unwrap(), desc)
        });
        for e in errs {
            assert!(matches!(e, Err(Error::ArgumentMismatch(_))), "{e:?}");
        }
        // The same tag works again once everyone agrees.
        let res = on_all(&comms, |_, c| {
            let mut out = [0u32; 4];
            c.all_reduce(&[1u32; 4], &mut out, ReduceOp::Sum, 3)
                .unwrap();
            out
        });
        assert!(res.iter().all(|r| *r == [3; 4]));
    }
}

#[test]
fn closed_communicator_rejects_calls_and_leaves_the_run() {
    let m = master();
    let comms = cluster(&m, 2);
    comms[1].close();
    let mut out = [0f32; 2];
    assert!(matches!(
        comms[1].all_reduce(&[1f32; 2], &mut out, ReduceOp::Sum, 0),
        Err(Error::InvalidUsage(_))
    ));
    // The survivor sees the departure and is alone: too few peers.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match comms[0].all_reduce(&[1f32; 2], &mut out, ReduceOp::Sum, 0) {
            Err(Error::TooFewPeers) => break,
            Err(Error::RankConnectionLost { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(std::time::Instant::now() < end);
    }
}

#[test]
fn blocking_call_inside_a_runtime_is_an_error_not_a_panic() {
    let m = master();
    let comms = cluster(&m, 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt.block_on(async { comms[0].update_topology() });
    assert!(matches!(r, Err(Error::InvalidUsage(_))));
}
