//! Scenarios of op votes: verdicts when a peer dies silently, when one reports a
//! failure, and when a peer reports before it is accepted.

use super::harness::Harness;
use super::{HB_INTERVAL, HB_TIMEOUT};
use crate::wire::{FailReason, FromMaster, ToMaster};
#[test]
fn silent_peer_dies_and_op_votes_complete_without_it() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.join(1, 0);
    h.join(2, 0);
    h.update(&[0], &[1, 2]);
    let epoch = h.m.topology().group_epoch(0).expect("group 0");
    // Peers 0 and 1 finish op (tag 5, seq 0); peer 2 is silent from now on.
    for c in [0, 1] {
        h.msg(
            c,
            ToMaster::OpDone {
                tag: 5,
                epoch,
                seq: 0,
                failure: None,
            },
        );
    }
    assert_eq!(h.m.op_votes().count(), 1);
    // Time passes; the live peers keep heartbeating, the silent one does not.
    let mut dead = false;
    for _ in 0..20 {
        h.elapsed += HB_INTERVAL;
        h.msg(0, ToMaster::Heartbeat);
        h.msg(1, ToMaster::Heartbeat);
        if h.m.poll_timeout().is_some_and(|t| t <= h.now()) {
            let now = h.now();
            h.m.handle_timeout(now);
            h.drain();
        }
        if !h.closed.is_empty() {
            dead = true;
            break;
        }
    }
    assert!(dead, "the silent peer was never declared dead");
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.closed[0].0, 2);
    assert!(h.elapsed >= HB_TIMEOUT);
    assert_eq!(h.m.ring(), h.ring_ids(&[0, 1]).as_slice());
    // The op of the old membership is gone (survivors abort it on the new epoch)...
    assert_eq!(h.m.op_votes().count(), 0);
    let t = Harness::commit_of(&h.take_quiet(0));
    let new_epoch = t.group_epoch(0).expect("group 0");
    assert!(new_epoch > epoch);
    assert_eq!(Harness::commit_of(&h.take_quiet(1)), t);
    // ...and its retry completes with the survivors alone.
    for c in [0, 1] {
        h.msg(
            c,
            ToMaster::OpDone {
                tag: 5,
                epoch: new_epoch,
                seq: 0,
                failure: None,
            },
        );
    }
    let verdict = FromMaster::OpVerdict {
        tag: 5,
        epoch: new_epoch,
        seq: 0,
        failure: None,
    };
    assert_eq!(h.take_quiet(0), vec![verdict.clone()]);
    assert_eq!(h.take_quiet(1), vec![verdict]);
    assert!(h.take(2).is_empty(), "nothing goes to the dead peer");
}

#[test]
fn an_op_failure_fails_everyone_at_once() {
    let mut h = Harness::new();
    h.join(0, 1);
    h.join(1, 1);
    h.update(&[0], &[1]);
    let epoch = h.m.topology().group_epoch(1).expect("group 1");
    h.msg(
        1,
        ToMaster::OpDone {
            tag: 0,
            epoch,
            seq: 0,
            failure: Some(FailReason::Corrupt),
        },
    );
    let verdict = FromMaster::OpVerdict {
        tag: 0,
        epoch,
        seq: 0,
        failure: Some(FailReason::Corrupt),
    };
    assert_eq!(h.take_quiet(0), vec![verdict.clone()]);
    assert_eq!(h.take_quiet(1), vec![verdict]);
    // The late success report of the other peer is stale and ignored.
    h.msg(
        0,
        ToMaster::OpDone {
            tag: 0,
            epoch,
            seq: 0,
            failure: None,
        },
    );
    assert!(h.take(0).is_empty() && h.take(1).is_empty());
    assert!(h.closed.is_empty());
    assert_eq!(h.m.op_votes().count(), 0);
}

#[test]
fn op_done_before_acceptance_closes_the_connection() {
    let mut h = Harness::new();
    let a = h.join(0, 0);
    h.join(1, 0);
    assert_eq!(h.m.pending().len(), 1);
    h.msg(
        1,
        ToMaster::OpDone {
            tag: 0,
            epoch: 1,
            seq: 0,
            failure: None,
        },
    );
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.closed[0].0, 1);
    assert!(
        h.closed[0].1.contains("protocol violation"),
        "{:?}",
        h.closed
    );
    assert!(h.m.pending().is_empty());
    assert_eq!(h.m.ring(), &[a]);
    // Its later messages are ignored and nothing is ever sent to it.
    h.msg(1, ToMaster::Heartbeat);
    assert!(h.take(1).is_empty());
}
