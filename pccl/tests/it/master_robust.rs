//! The master on loopback against layouts that once crashed it: two holders whose
//! `allow_content_inequality` tensors have different names, plus a RECEIVE_ONLY peer
//! matching one of them (this panicked the master's election in about 2 runs of 3,
//! depending on which holder sorts first, and later refused one holder while still naming
//! it as a source). Every peer must get the same answer, a refusal of the whole sync
//! (docs/ARCHITECTURE.md §6, "Outcomes"), no peer's state may change, the master must stay
//! up, and the run must go on: a later all-reduce agrees bit for bit.

use pccl::{Communicator, Error, ReduceOp, SharedState, SyncStrategy, TensorInfo};

use crate::common::{cluster, master, on_all};

/// What one peer's sync came to: success, or the error's result code and message.
fn outcome(r: &Result<pccl::SyncInfo, Error>) -> Result<(), (pccl::ResultCode, String)> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err((e.code(), e.to_string())),
    }
}

/// One peer's sync: its outcome and its `w` afterwards.
fn sync(rank: usize, c: &Communicator) -> (Result<pccl::SyncInfo, Error>, Vec<f32>) {
    let mut w = vec![1.5f32; 1000];
    let mut rng = vec![rank as u64 + 7; 4];
    // Ranks 0 and 1 hold the state with differently named inequality tensors; rank 2
    // receives only, with rank 0's layout.
    let (name, strategy) = match rank {
        0 => ("rng_a", SyncStrategy::EnforcePopular),
        1 => ("rng_b", SyncStrategy::EnforcePopular),
        _ => {
            w.fill(0.0);
            ("rng_a", SyncStrategy::ReceiveOnly)
        }
    };
    let mut state = SharedState {
        revision: 1,
        tensors: vec![
            TensorInfo::new("w", &mut w),
            TensorInfo::new(name, &mut rng).allowing_inequality(),
        ],
    };
    let r = c.sync_shared_state(&mut state, strategy);
    assert_eq!(state.revision, 1, "rank {rank}'s revision moved");
    drop(state);
    (r, w)
}

#[test]
fn holders_with_different_inequality_tensors_do_not_crash_the_master() {
    // Fresh peer ids each round, so the holders sort both ways across the rounds.
    for round in 0..4 {
        let m = master();
        let comms = cluster(&m, 3);
        let results = on_all(&comms, sync);
        let outcomes: Vec<_> = results.iter().map(|(r, _)| outcome(r)).collect();
        eprintln!("round {round}: {outcomes:?}");
        // Whichever way the ids sort, every peer gets the same clear InvalidUsage naming
        // the layout conflict, and nobody's tensor changed (rank 2 kept its zeros).
        for (rank, o) in outcomes.iter().enumerate() {
            assert_eq!(
                *o, outcomes[0],
                "round {round}: rank {rank} and rank 0 saw different outcomes"
            );
            let expected = if rank == 2 { 0.0 } else { 1.5 };
            assert!(
                results[rank].1.iter().all(|x| *x == expected),
                "round {round}: rank {rank}'s `w` changed"
            );
        }
        match &outcomes[0] {
            Err((code, msg)) => assert!(
                *code == pccl::ResultCode::InvalidUsage && msg.contains("layouts"),
                "round {round}: unclear failure {code:?} {msg}"
            ),
            Ok(()) => panic!("round {round}: a sync with two layouts succeeded"),
        }
        assert!(!m.has_crashed(), "round {round}: the master crashed");

        // The run goes on: an all-reduce succeeds everywhere with identical bits.
        let sums = on_all(&comms, |rank, c| {
            let send: Vec<f32> = (0..4096)
                .map(|i| (i as f32 * 0.37 + rank as f32).sin())
                .collect();
            let mut recv = vec![0f32; send.len()];
            c.all_reduce(&send, &mut recv, ReduceOp::Sum, 3)
                .expect("all-reduce after the sync");
            recv.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
        });
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "round {round}: all-reduce results differ between peers"
        );
        drop(comms);
        m.interrupt();
        assert!(
            m.await_termination().is_ok(),
            "round {round}: master ended badly"
        );
    }
}
