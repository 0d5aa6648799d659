//! Scenarios of admission and joint calls: peers join through topology updates, a
//! death during a proposal fails the update, mismatched joint calls are rejected.

use std::time::Duration;

use super::harness::Harness;
use crate::master::state::ConnId;
use crate::wire::{FromMaster, ToMaster, VoteKind};
#[test]
fn two_peers_join_and_are_admitted() {
    let mut h = Harness::new();
    let a = h.join(0, 0);
    // The first peer is accepted alone.
    let t = Harness::commit_of(&h.take_quiet(0));
    assert_eq!(t.ring.len(), 1);
    assert_eq!(t.ring[0].id, a);
    let b = h.join(1, 0);
    assert_eq!(h.m.pending(), &[b]);
    assert!(h.take(1).is_empty(), "a waiting peer hears nothing yet");
    h.msg(0, ToMaster::Vote(VoteKind::ArePeersPending));
    assert_eq!(
        h.take_quiet(0),
        vec![FromMaster::PeersPending {
            call: 0,
            pending: true
        }]
    );
    h.update(&[0], &[1]);
    assert_eq!(h.m.ring(), &[a, b]);
    assert!(h.m.pending().is_empty());
    assert!(!h.m.proposal_in_flight());
    // Nobody waits any more.
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    expect_nobody_pending(&mut h, &[0, 1]);
}

#[test]
fn death_during_proposal_fails_the_update_then_it_succeeds() {
    let mut h = Harness::new();
    let a = h.join(0, 0);
    h.join(1, 0);
    h.update(&[0], &[1]);
    let c = h.join(2, 1);
    h.take(0);
    h.vote_all(&[0, 1], VoteKind::UpdateTopology);
    let id = Harness::proposal_in(&h.take_quiet(0));
    h.take(1);
    h.take(2);
    assert!(h.m.proposal_in_flight());
    h.msg(
        0,
        ToMaster::P2pReady {
            proposal: id,
            ok: true,
        },
    );
    h.msg(
        2,
        ToMaster::P2pReady {
            proposal: id,
            ok: true,
        },
    );
    h.disconnect(1);
    // The survivor's update fails (retryable) and it gets the ring without the dead peer.
    let msgs = h.take_quiet(0);
    assert!(
        msgs.contains(&FromMaster::TopologyUpdated {
            call: 0,
            result: Err(format!("peer {} left (test)", h.ids[&1]))
        }),
        "{msgs:?}"
    );
    let t = Harness::commit_of(&msgs);
    assert_eq!(t.ring.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a]);
    assert!(!h.m.proposal_in_flight());
    // The newcomer was not at fault: it still waits, and the retry admits it.
    assert_eq!(h.m.pending(), &[c]);
    assert!(h.take(2).is_empty(), "the newcomer is not told anything");
    h.update(&[0], &[2]);
    assert_eq!(h.m.ring(), &[a, c]);
}

#[test]
fn mismatched_joint_calls_are_rejected_for_everybody() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.join(1, 0);
    h.update(&[0], &[1]);
    h.msg(0, ToMaster::Vote(VoteKind::ArePeersPending));
    h.msg(1, ToMaster::Vote(VoteKind::UpdateTopology));
    for c in [0, 1] {
        let msgs = h.take_quiet(c);
        assert!(
            matches!(&msgs[..], [FromMaster::VoteRejected { .. }]),
            "{msgs:?}"
        );
    }
    assert!(h.closed.is_empty());
    assert_eq!(h.m.voters().count(), 0);
    // The next matching call works.
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    expect_nobody_pending(&mut h, &[0, 1]);
}

/// Each of `conns` got exactly one answer to its `ArePeersPending` call: nobody waits.
fn expect_nobody_pending(h: &mut Harness, conns: &[ConnId]) {
    let nobody = FromMaster::PeersPending {
        call: 0,
        pending: false,
    };
    expect_each(h, conns, &nobody);
}

/// Each of `conns` got exactly `want` (heartbeat acks aside).
fn expect_each(h: &mut Harness, conns: &[ConnId], want: &FromMaster) {
    for &c in conns {
        assert_eq!(h.take_quiet(c), vec![want.clone()], "conn {c}");
    }
}

/// A newcomer whose dial fails is turned away; however soon it registers again, it is
/// not proposed until its backoff (250 ms, then doubled) has passed, so the members'
/// joint calls in between see nobody pending and their run goes on.
#[test]
fn a_turned_away_newcomer_backs_off_before_its_next_proposal() {
    let mut h = Harness::new().accepted(2);
    let members = [0, 1];
    let c = h.join(2, 0);
    let mut conn = 2;
    for (failure, wait_ms) in [(1u32, 250u64), (2, 500), (3, 1000)] {
        h.vote_all(&members, VoteKind::UpdateTopology);
        let id = Harness::proposal_in(&h.take_quiet(conn));
        h.msg(
            conn,
            ToMaster::P2pReady {
                proposal: id,
                ok: false,
            },
        );
        assert!(
            h.is_closed(conn),
            "failure {failure}: the newcomer is turned away"
        );
        for m in members {
            let msgs = h.take_quiet(m);
            assert!(
                msgs.iter()
                    .any(|x| matches!(x, FromMaster::TopologyUpdated { result: Err(_), .. })),
                "{msgs:?}"
            );
        }
        // It registers again at once, under the same id, on a new connection.
        conn += 1;
        h.connect(conn, c);
        h.msg(
            conn,
            ToMaster::Register {
                group: 0,
                p2p_port: 40000,
                advertise_ip: None,
            },
        );
        assert_eq!(h.m.pending(), &[c]);
        // Inside its backoff it is not pending for the members, and an update proposes
        // nobody: it succeeds at once.
        h.elapsed += Duration::from_millis(wait_ms - 1);
        h.vote_all(&members, VoteKind::ArePeersPending);
        expect_nobody_pending(&mut h, &members);
        h.vote_all(&members, VoteKind::UpdateTopology);
        let updated = FromMaster::TopologyUpdated {
            call: 0,
            result: Ok(()),
        };
        expect_each(&mut h, &members, &updated);
        assert!(!h.m.proposal_in_flight());
        // Once it has passed, the newcomer is pending again.
        h.elapsed += Duration::from_millis(1);
        h.vote_all(&members, VoteKind::ArePeersPending);
        let pending = FromMaster::PeersPending {
            call: 0,
            pending: true,
        };
        expect_each(&mut h, &members, &pending);
    }
    // Admitted at last: a later failure would start over from the first backoff.
    let ids = [h.ids[&0], h.ids[&1]];
    h.update(&members, &[conn]);
    assert_eq!(h.m.ring(), &[ids[0], ids[1], c]);
}
