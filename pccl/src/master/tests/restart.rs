//! A restarted master rebuilds the run from the peers' `Rejoin` claims
//! (docs/ARCHITECTURE.md §14): the rule "highest epoch wins", ids that continue above
//! anything a peer saw, decisions some peers missed given again, the recovery window and
//! the startup grace. (The seeded simulator crashes the master at random points: `crash`.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::harness::Harness;
use crate::master::state::{SyncPhaseKind, Timeouts};
use crate::types::{PeerEntry, PeerId, Topology};
use crate::wire::{
    Answer, FromMaster, OpClaim, OpRecord, RefusalRecord, Rejoin, SyncClaim, SyncRefusal, ToMaster,
    VoteKind,
};

fn id(conn: u64) -> PeerId {
    PeerId([conn as u8 + 1; 16])
}

/// The topology `conns` (group 0) at `epoch`, as the harness's peers would list it.
fn view(conns: &[u64], epoch: u64) -> Topology {
    Topology {
        ring: conns
            .iter()
            .map(|c| PeerEntry {
                id: id(*c),
                group: 0,
                p2p_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 48149 + *c as u16),
                static_key: [0; 32],
            })
            .collect(),
        group_epochs: vec![(0, epoch)],
    }
}

fn claim(conn: u64, topology: Topology) -> Rejoin {
    Rejoin {
        group: 0,
        p2p_port: 48149 + conn as u16,
        accepted: true,
        max_seen: 7,
        topology,
        ..Rejoin::default()
    }
}

/// Claims of two members of ring [0, 1] at epoch 5, each edited by `edit`.
pub(super) fn two_peer_claims(edit: impl Fn(&mut Rejoin)) -> Vec<Rejoin> {
    (0..2)
        .map(|c| {
            let mut r = claim(c, view(&[0, 1], 5));
            edit(&mut r);
            r
        })
        .collect()
}

/// The success verdict of op (tag 9, epoch 5, seq 2) that only some peers received.
const VERDICT_9_5_2: FromMaster = FromMaster::OpVerdict {
    tag: 9,
    epoch: 5,
    seq: 2,
    failure: None,
};

/// A master whose recovery window is 2 s.
fn two_second_window() -> Harness {
    Harness::with_timeouts(Timeouts {
        recovery_window: Duration::from_secs(2),
        ..Timeouts::default()
    })
}

fn epoch_of(msgs: &[FromMaster]) -> u64 {
    Harness::commit_of(msgs).group_epoch(0).expect("group 0")
}

#[test]
fn an_intact_ring_keeps_its_epoch_and_later_ids_continue_above_every_claim() {
    let mut h = Harness::new();
    let claims = two_peer_claims(|_| {});
    h.rejoin(0, claims[0].clone());
    assert!(h.m.recovering(), "waits for the peer the claim names");
    assert!(h.take_quiet(0).is_empty());
    h.rejoin(1, claims[1].clone());
    assert!(!h.m.recovering());
    for c in 0..2 {
        assert_eq!(epoch_of(&h.take_quiet(c)), 5, "no re-wiring");
    }
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
    // A newcomer's admission allocates epochs above max_seen (7), never a seen one.
    h.join(2, 0);
    h.vote_all(&[0, 1], VoteKind::UpdateTopology);
    let msgs = h.take_quiet(0);
    let FromMaster::Propose { proposal, topology } = &msgs[0] else {
        panic!("{msgs:?}");
    };
    assert!(
        *proposal > 7 && topology.group_epoch(0).unwrap() > 7,
        "{msgs:?}"
    );
}

#[test]
fn a_missing_peer_is_dropped_after_the_window_with_a_new_epoch() {
    let mut h = two_second_window();
    h.rejoin(0, claim(0, view(&[0, 1, 2], 5)));
    h.rejoin(1, claim(1, view(&[0, 1, 2], 5)));
    assert!(h.m.recovering());
    h.run_until(&[0, 1], Duration::from_millis(1_900));
    assert!(h.m.recovering());
    h.run_until(&[0, 1], Duration::from_millis(2_100));
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
    let e = epoch_of(&h.take_quiet(0));
    assert!(e > 7, "a new epoch above every id seen: {e}");
    // The latecomer was removed: it is refused, as a peer evicted by a live master.
    h.rejoin(2, claim(2, view(&[0, 1, 2], 5)));
    assert!(matches!(
        &h.take_quiet(2)[..],
        [FromMaster::RejoinRefused(_)]
    ));
    assert!(h.is_closed(2));
}

#[test]
fn the_highest_epoch_wins_and_a_peer_it_removed_is_refused() {
    let mut h = Harness::new();
    // Peer 2 missed the commit that removed it (epoch 6); 0 and 1 saw it.
    h.rejoin(2, claim(2, view(&[0, 1, 2], 5)));
    h.rejoin(0, claim(0, view(&[0, 1], 6)));
    h.rejoin(1, claim(1, view(&[0, 1], 6)));
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
    assert_eq!(epoch_of(&h.take_quiet(0)), 6);
    assert!(matches!(
        &h.take_quiet(2)[..],
        [FromMaster::RejoinRefused(_)]
    ));
}

#[test]
fn a_verdict_one_peer_missed_is_given_again_and_seqs_go_on() {
    let mut h = Harness::new();
    let claims = two_peer_claims(|c| {
        if c.p2p_port == 48149 {
            // Peer 0 got the verdict of (tag 9, epoch 5, seq 2) ...
            c.verdicts = vec![OpRecord {
                tag: 9,
                epoch: 5,
                seq: 2,
                failure: None,
            }];
        } else {
            // ... peer 1 finished its part and waits for it.
            c.ops = vec![OpClaim {
                tag: 9,
                epoch: 5,
                seq: 2,
                done: Some(None),
            }];
        }
    });
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    let msgs = h.take_quiet(1);
    assert_eq!(
        msgs[0], VERDICT_9_5_2,
        "the verdict first, before the commit: {msgs:?}"
    );
    assert!(matches!(msgs[1], FromMaster::Commit { .. }));
    assert!(
        h.take_quiet(0)
            .iter()
            .all(|m| !matches!(m, FromMaster::OpVerdict { .. }))
    );
    // The tag's next op is seq 3 for both.
    both_finish_op_9_5_3(&mut h);
}

/// The old master's verdict reached peer 0 alone; peer 0 re-registers, then dies before
/// the run is rebuilt. Its claim leaves the ring, but the verdict it was told still
/// reaches the survivors, who had finished the op: they must not fail and retry an op
/// that succeeded (found by `pccl-stress`, a parity violation between a peer that
/// reported the op done and survivors that retried it in a smaller ring).
#[test]
fn a_verdict_only_a_peer_that_left_during_the_recovery_saw_is_given_again() {
    let mut h = two_second_window();
    let mut told = claim(0, view(&[0, 1, 2], 5));
    told.verdicts = vec![OpRecord {
        tag: 9,
        epoch: 5,
        seq: 2,
        failure: None,
    }];
    let waiting = |c: u64| {
        let mut r = claim(c, view(&[0, 1, 2], 5));
        r.ops = vec![OpClaim {
            tag: 9,
            epoch: 5,
            seq: 2,
            done: Some(None),
        }];
        r
    };
    h.rejoin(0, told);
    h.rejoin(1, waiting(1));
    h.disconnect(0);
    h.rejoin(2, waiting(2));
    // Peer 0 is named by every view but will not come back: the window ends the wait.
    h.run_until(&[1, 2], Duration::from_millis(2_100));
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(1), id(2)]);
    for c in [1, 2] {
        let msgs = h.take_quiet(c);
        assert_eq!(
            msgs[0], VERDICT_9_5_2,
            "peer {c}: the verdict first, before the commit: {msgs:?}"
        );
        assert!(epoch_of(&msgs) > 7, "a new epoch without peer 0");
        let verdicts = msgs
            .iter()
            .filter(|m| matches!(m, FromMaster::OpVerdict { .. }))
            .count();
        assert_eq!(verdicts, 1, "peer {c}: {msgs:?}");
    }
}

/// Found by the simulator with master crashes: the old master failed op (tag 9, epoch 5,
/// seq 2) at peer 1's report and told both; peer 0, which had not started that op yet,
/// lost the verdict in the crash. Its claim holds no op of tag 9 to match the verdict by,
/// yet it needs it: else its next op of the tag is seq 2, settled for peer 1, whose seq 3
/// would then wait on peer 0 for ever.
#[test]
fn a_verdict_of_an_op_one_peer_had_not_started_is_given_again() {
    let mut h = Harness::new();
    let failed = FromMaster::OpVerdict {
        tag: 9,
        epoch: 5,
        seq: 2,
        failure: Some(crate::wire::FailReason::Corrupt),
    };
    let claims = two_peer_claims(|c| {
        let seen = |seq| OpRecord {
            tag: 9,
            epoch: 5,
            seq,
            failure: None,
        };
        c.verdicts = vec![seen(0), seen(1)];
        if c.p2p_port == 48150 {
            c.verdicts.push(OpRecord {
                failure: Some(crate::wire::FailReason::Corrupt),
                ..seen(2)
            });
        }
    });
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    let msgs = h.take_quiet(0);
    let commit = msgs
        .iter()
        .position(|m| matches!(m, FromMaster::Commit { .. }));
    let verdict = msgs.iter().position(|m| *m == failed);
    assert!(
        commit.is_some() && verdict > commit,
        "the verdict after the commit: {msgs:?}"
    );
    assert_eq!(msgs.iter().filter(|m| **m == failed).count(), 1, "{msgs:?}");
    assert!(
        h.take_quiet(1)
            .iter()
            .all(|m| !matches!(m, FromMaster::OpVerdict { .. })),
        "peer 1 saw it"
    );
    both_finish_op_9_5_3(&mut h);
}

/// Peers 0 and 1 report op (tag 9, epoch 5, seq 3) done and both get its success: the
/// tag's counts agree after the recovery.
fn both_finish_op_9_5_3(h: &mut Harness) {
    for c in 0..2 {
        h.msg(
            c,
            ToMaster::OpDone {
                tag: 9,
                epoch: 5,
                seq: 3,
                failure: None,
            },
        );
    }
    for c in 0..2 {
        assert!(h.take_quiet(c).contains(&FromMaster::OpVerdict {
            tag: 9,
            epoch: 5,
            seq: 3,
            failure: None
        }));
    }
    assert!(h.closed.is_empty(), "{:?}", h.closed);
}

/// Found by the simulator with master crashes: peer 1, the only claimant so far, was
/// told that sync round 2 failed, and leaves during the recovery. The recovery must not
/// end there, empty, and lose that fact: peer 0, which served in round 2, comes back
/// later and must get the same failure, not a success of a round of its own.
#[test]
fn the_last_claimant_leaving_does_not_end_the_recovery() {
    let mut h = two_second_window();
    let failed: Result<(), String> = Err("the master restarted".into());
    let claims = two_peer_claims(|c| {
        if c.p2p_port == 48149 {
            c.sync = SyncClaim::Planned {
                round: 2,
                revision: 1,
                done: Some(true),
            };
        } else {
            c.result = Some((2, failed.clone()));
        }
    });
    h.rejoin(1, claims[1].clone());
    h.disconnect(1);
    assert!(h.m.recovering(), "the departed claim is held");
    h.rejoin(0, claims[0].clone());
    h.run_until(&[0], Duration::from_millis(2_100));
    assert!(!h.m.recovering());
    let msgs = h.take_quiet(0);
    assert!(
        msgs.contains(&FromMaster::SyncResult {
            round: 0,
            result: failed
        }),
        "{msgs:?}"
    );
}

#[test]
fn an_op_both_finished_is_decided_by_the_new_master() {
    let mut h = Harness::new();
    let claims = two_peer_claims(|c| {
        c.ops = vec![OpClaim {
            tag: 1,
            epoch: 5,
            seq: 0,
            done: Some(None),
        }];
    });
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    for c in 0..2 {
        assert!(h.take_quiet(c).contains(&FromMaster::OpVerdict {
            tag: 1,
            epoch: 5,
            seq: 0,
            failure: None
        }));
    }
}

#[test]
fn a_joint_call_answer_one_peer_missed_is_given_again() {
    let mut h = Harness::new();
    let claims = two_peer_claims(|c| {
        if c.p2p_port == 48149 {
            c.call = 4;
            c.answer = Some(Answer::PeersPending(true));
        } else {
            c.call = 3;
            c.vote = Some(VoteKind::ArePeersPending);
        }
    });
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    let msgs = h.take_quiet(1);
    assert!(
        msgs.contains(&FromMaster::PeersPending {
            call: 0,
            pending: true
        }),
        "{msgs:?}"
    );
    // Nothing waits on peer 0: its next call pairs with peer 1's next one.
    h.take_quiet(0);
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    assert_eq!(
        h.take_quiet(0),
        vec![FromMaster::PeersPending {
            call: 0,
            pending: false
        }]
    );
}

/// Claims of a sync round 2 (revision 4) that peer 0 got its plan of (`done` as given)
/// and peer 1, which reported, did not.
fn planned_and_reported(done: Option<bool>) -> Vec<Rejoin> {
    two_peer_claims(|c| {
        c.sync = if c.p2p_port == 48149 {
            SyncClaim::Planned {
                round: 2,
                revision: 4,
                done,
            }
        } else {
            SyncClaim::Reported {
                revision: 4,
                strategy: crate::types::SyncStrategy::EnforcePopular,
                tensors: Vec::new(),
            }
        };
    })
}

#[test]
fn a_sync_whose_plans_only_some_got_fails_for_all() {
    let mut h = Harness::new();
    let claims = planned_and_reported(Some(true));
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    for c in 0..2 {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, FromMaster::SyncResult { result: Err(_), .. })),
            "conn {c}: {msgs:?}"
        );
    }
}

/// Found by the simulator with master crashes: peer 0 had its plan and was fetching when
/// the master died; peer 1 had reported but got no plan, so the new master fails the
/// round for both. Peer 0's fetch ends after that and it sends `SyncDone`, as every
/// receiver does: stale, not a report of a sync it is not part of. Its next sync counts.
#[test]
fn a_sync_done_of_a_sync_the_recovery_failed_is_stale() {
    let mut h = Harness::new();
    let report = || ToMaster::SyncReport {
        revision: 4,
        strategy: crate::types::SyncStrategy::EnforcePopular,
        tensors: Vec::new(),
    };
    let claims = planned_and_reported(None);
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    h.msg(0, ToMaster::SyncDone { ok: true });
    assert!(h.closed.is_empty(), "{:?}", h.closed);
    for c in 0..2 {
        h.take_quiet(c);
        h.msg(c, report());
    }
    // The retry is planned; its `SyncDone`s count.
    for c in 0..2 {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, FromMaster::SyncPlan { .. })),
            "conn {c}: {msgs:?}"
        );
        h.msg(c, ToMaster::SyncDone { ok: true });
    }
    for c in 0..2 {
        assert!(h.take_quiet(c).contains(&FromMaster::SyncResult {
            round: 0,
            result: Ok(())
        }));
    }
    assert!(h.closed.is_empty(), "{:?}", h.closed);
}

#[test]
fn a_sync_result_one_peer_missed_is_given_again_and_history_follows() {
    let mut h = Harness::new();
    let claims = two_peer_claims(|c| {
        if c.p2p_port == 48149 {
            c.synced = Some((2, 4));
            c.result = Some((2, Ok(())));
        } else {
            c.synced = Some((1, 3));
            c.sync = SyncClaim::Planned {
                round: 2,
                revision: 4,
                done: Some(true),
            };
        }
    });
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    assert!(h.take_quiet(1).contains(&FromMaster::SyncResult {
        round: 0,
        result: Ok(())
    }));
    // Both took part in revision 4: the next sync must present 5, never less.
    let report = |revision| ToMaster::SyncReport {
        revision,
        strategy: crate::types::SyncStrategy::EnforcePopular,
        tensors: Vec::new(),
    };
    h.msg(0, report(5));
    h.msg(1, report(4));
    let msgs = h.take_quiet(1);
    assert!(
        msgs.iter()
            .any(|m| matches!(m, FromMaster::SyncRefused { .. })),
        "a revision going backwards is refused: {msgs:?}"
    );
}

#[test]
fn a_live_master_refuses_a_peer_it_does_not_know() {
    let mut h = Harness::new().accepted(2);
    h.rejoin(5, claim(5, view(&[0, 1, 5], 9)));
    assert!(matches!(
        &h.take_quiet(5)[..],
        [FromMaster::RejoinRefused(_)]
    ));
    assert!(h.is_closed(5));
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
}

#[test]
fn a_newcomer_during_recovery_waits_for_the_next_update() {
    let mut h = Harness::new();
    let claims = two_peer_claims(|_| {});
    h.rejoin(0, claims[0].clone());
    let n = h.join(4, 0);
    h.rejoin(1, claims[1].clone());
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
    assert_eq!(h.m.pending(), &[n]);
    h.update(&[0, 1], &[4]);
    assert_eq!(h.m.ring(), &[id(0), id(1), n]);
}

#[test]
fn the_startup_grace_holds_a_lone_first_peer_back() {
    let t = Timeouts {
        startup_grace: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let mut h = Harness::with_timeouts(t);
    h.m.handle_timeout(h.now());
    let a = h.join(0, 0);
    assert!(h.m.ring().is_empty());
    h.run_until(&[0], Duration::from_millis(900));
    assert!(h.m.ring().is_empty());
    h.run_until(&[0], Duration::from_millis(1_100));
    assert_eq!(h.m.ring(), &[a]);
}

#[test]
fn a_claim_with_absurd_ids_is_a_violation() {
    let mut h = Harness::new();
    let mut c = claim(0, view(&[0], 5));
    c.max_seen = u64::MAX;
    h.rejoin(0, c);
    assert!(h.is_closed(0));
    assert!(!h.m.recovering());
}

/// Issue #13, found by the simulator with master crashes: a newcomer that had been sent
/// a proposal re-registers as a newcomer (`accepted: false`); its claim must still push
/// the new master's ids above that proposal's, or a proposal of the new master reuses the
/// id and the newcomer's late `P2pReady` for the old one counts for the new one.
#[test]
fn issue_13_a_newcomers_claim_keeps_ids_above_the_proposal_it_saw() {
    let t = Timeouts {
        startup_grace: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let mut h = Harness::with_timeouts(t);
    h.m.handle_timeout(h.now());
    // The newcomer saw proposal 9 of the old master; the member saw nothing above 1.
    let newcomer = Rejoin {
        group: 0,
        p2p_port: 48150,
        max_seen: 9,
        ..Rejoin::default()
    };
    h.rejoin(1, newcomer);
    assert_eq!(h.m.pending(), &[id(1)], "waits as a newcomer");
    let mut member = claim(0, view(&[0], 1));
    member.max_seen = 1;
    member.vote = Some(VoteKind::UpdateTopology);
    h.rejoin(0, member);
    // Its update may have ended in a ring it did not see: the grace is waited out.
    h.run_until(&[0, 1], Duration::from_millis(1_100));
    assert!(!h.m.recovering());
    // The member's waiting update admits the newcomer with a fresh proposal.
    let msgs = h.take_quiet(1);
    let proposal = Harness::proposal_in(&msgs);
    assert!(
        proposal > 9,
        "proposal {proposal} reuses an id the newcomer saw"
    );
    let FromMaster::Propose { topology, .. } = &msgs[0] else {
        panic!("{msgs:?}");
    };
    assert!(topology.group_epoch(0).unwrap() > 9, "{topology:?}");
    // Its stale answer to the old proposal 9 cannot count for the new one.
    h.msg(
        1,
        ToMaster::P2pReady {
            proposal: 9,
            ok: true,
        },
    );
    h.msg(0, ToMaster::P2pReady { proposal, ok: true });
    assert_eq!(
        h.m.ring(),
        &[id(0)],
        "committed without the newcomer's own answer"
    );
    h.msg(1, ToMaster::P2pReady { proposal, ok: true });
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
}

/// Issue #13, found by the simulator with master crashes: the old master committed a ring
/// admitting peer 1; member 0 received that Commit but not the answer to its
/// `update_topology`, and peer 1 received nothing. Peer 1 comes back as a newcomer: it
/// must wait for the member's re-run update rather than be made a member (its first
/// joint call would then meet the member's re-voted update and both would be rejected).
#[test]
fn issue_13_a_newcomer_that_missed_its_commit_waits_for_the_rerun_update() {
    let t = Timeouts {
        startup_grace: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let mut h = Harness::with_timeouts(t);
    h.m.handle_timeout(h.now());
    let newcomer = Rejoin {
        group: 0,
        p2p_port: 48150,
        max_seen: 7,
        ..Rejoin::default()
    };
    h.rejoin(1, newcomer);
    let mut member = claim(0, view(&[0, 1], 6));
    member.call = 1;
    member.answer = Some(Answer::PeersPending(true));
    member.vote = Some(VoteKind::UpdateTopology);
    h.rejoin(0, member);
    h.run_until(&[0, 1], Duration::from_millis(1_100));
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(0)], "the newcomer is not a member yet");
    let msgs = h.take_quiet(0);
    let e = epoch_of(&msgs);
    assert!(e > 7, "the group moved to a new epoch: {e}");
    // The member's waiting update is the call that admits the newcomer now.
    let proposal = Harness::proposal_in(&msgs);
    assert_eq!(Harness::proposal_in(&h.take_quiet(1)), proposal);
    for c in 0..2 {
        h.msg(c, ToMaster::P2pReady { proposal, ok: true });
    }
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
    let msgs = h.take_quiet(0);
    assert!(
        msgs.contains(&FromMaster::TopologyUpdated {
            call: 0,
            result: Ok(())
        }),
        "{msgs:?}"
    );
    // From here both make the same calls: the next one pairs up.
    h.take_quiet(1);
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    for c in 0..2 {
        assert_eq!(
            h.take_quiet(c),
            vec![FromMaster::PeersPending {
                call: 0,
                pending: false
            }]
        );
    }
}

/// Issue #13, found by the simulator with master crashes: call 2 (an `update_topology`)
/// admitted peer 1, which got its Commit (its claim names call 2, with no answer: it did
/// not vote in it) and made its next call; member 0 missed the answer to call 2. The new
/// master must give member 0 that answer (`TopologyUpdated(Ok)`), not count its old vote
/// in a call with peer 1's next one.
#[test]
fn issue_13_the_answer_to_a_call_that_admitted_a_peer_is_given_again() {
    let mut h = Harness::new();
    let mut member = claim(0, view(&[0, 1], 6));
    member.call = 1;
    member.answer = Some(Answer::PeersPending(true));
    member.vote = Some(VoteKind::UpdateTopology);
    let mut newcomer = claim(1, view(&[0, 1], 6));
    newcomer.call = 2;
    newcomer.vote = Some(VoteKind::ArePeersPending);
    h.rejoin(0, member);
    h.rejoin(1, newcomer);
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
    let msgs = h.take_quiet(0);
    assert!(
        msgs.contains(&FromMaster::TopologyUpdated {
            call: 0,
            result: Ok(())
        }),
        "{msgs:?}"
    );
    h.take_quiet(1);
    // Member 0's next call pairs with the one peer 1 is waiting in.
    h.msg(0, ToMaster::Vote(VoteKind::ArePeersPending));
    for c in 0..2 {
        assert_eq!(
            h.take_quiet(c),
            vec![FromMaster::PeersPending {
                call: 0,
                pending: false
            }]
        );
    }
}

/// Issue #13, found by the simulator with master crashes: member 0 waits in an
/// `update_topology` whose Commit (ring [0, 1], epoch 4) it never received, and it
/// re-registers first with its older ring [0]. The recovery must not finish on that
/// claim alone and refuse member 1, which holds the newer ring: it waits for the startup
/// grace, by when every live peer is back, and the newest ring wins.
#[test]
fn issue_13_a_stale_claim_waiting_in_an_update_waits_for_the_grace() {
    let t = Timeouts {
        startup_grace: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let mut h = Harness::with_timeouts(t);
    h.m.handle_timeout(h.now());
    let mut stale = claim(0, view(&[0], 1));
    stale.call = 1;
    stale.answer = Some(Answer::PeersPending(true));
    stale.vote = Some(VoteKind::UpdateTopology);
    h.rejoin(0, stale);
    h.run_until(&[0], Duration::from_millis(300));
    assert!(h.m.recovering(), "a newer ring may be on its way");
    // Peer 1 was admitted by call 2 and holds the newer ring.
    let mut newer = claim(1, view(&[0, 1], 4));
    newer.call = 2;
    h.rejoin(1, newer);
    assert!(!h.is_closed(1), "{:?}", h.closed);
    h.run_until(&[0, 1], Duration::from_millis(900));
    assert!(h.m.recovering(), "the grace is not over");
    h.run_until(&[0, 1], Duration::from_millis(1_100));
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(0), id(1)]);
    let msgs = h.take_quiet(0);
    assert_eq!(epoch_of(&msgs), 4, "the newest ring, whole: kept as it was");
    assert!(
        msgs.contains(&FromMaster::TopologyUpdated {
            call: 0,
            result: Ok(())
        }),
        "member 0's update ended with that commit: {msgs:?}"
    );
    assert!(h.closed.is_empty(), "{:?}", h.closed);
}

/// Found by the fuzz driver once it could forge claims: a claim whose ring lists a peer
/// twice must not put it in the rebuilt ring twice (removing it later panicked the
/// master, which looked the second copy up after the first was gone).
#[test]
fn a_claim_listing_a_peer_twice_rebuilds_a_ring_with_it_once() {
    let mut h = Harness::new();
    let doubled = view(&[0, 0], 5);
    h.rejoin(0, claim(0, doubled));
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(0)]);
    h.disconnect(0);
    assert!(h.m.ring().is_empty());
}

/// Claims of a group whose sync round 3 was refused (every peer receive-only) while its
/// epoch was `refused_in`: peer 0 got the refusal and moved on to a joint call; peer 1's
/// claim still reports (its copy was lost in the crash, or it reports a later sync).
fn refused_and_reported(refused_in: u64) -> Vec<Rejoin> {
    two_peer_claims(|c| {
        if c.p2p_port == 48149 {
            c.refused = Some(RefusalRecord {
                round: 3,
                epoch: refused_in,
                kind: SyncRefusal::NoSharedState,
                reason: "all receive-only".into(),
            });
            c.vote = Some(VoteKind::ArePeersPending);
        } else {
            c.sync = SyncClaim::Reported {
                revision: 0,
                strategy: crate::types::SyncStrategy::ReceiveOnly,
                tensors: Vec::new(),
            };
        }
    })
}

/// Found by the simulator with master crashes: the old master refused sync round 3 to
/// both members of a group; peer 1's refusal was lost in the crash, and peer 0 went on to
/// a joint call. The refusal came in the epoch both still hold, so peer 1 was in that
/// election: it gets the same refusal, and the joint call can complete (before, peer 1
/// waited for an election and peer 0 for peer 1's vote, for ever).
#[test]
fn a_sync_refusal_one_member_lost_is_given_again() {
    let mut h = Harness::new();
    let claims = refused_and_reported(5);
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    let refusal = FromMaster::SyncRefused {
        round: 3,
        kind: SyncRefusal::NoSharedState,
        reason: "all receive-only".into(),
    };
    assert!(h.take_quiet(1).contains(&refusal));
    assert!(!h.take_quiet(0).contains(&refusal), "peer 0 had it");
    assert_eq!(h.m.sync_phase(0), SyncPhaseKind::Idle);
    h.msg(1, ToMaster::Vote(VoteKind::ArePeersPending));
    for c in 0..2 {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, FromMaster::PeersPending { .. })),
            "conn {c}: {msgs:?}"
        );
    }
}

/// The same claims, but the refusal came in an earlier epoch: the membership changed
/// since, so peer 1 may be a newcomer whose report is for a sync of its own. Its report
/// stands and waits for peer 0's.
#[test]
fn a_refusal_of_an_older_membership_is_not_given_to_a_report() {
    let mut h = Harness::new();
    let claims = refused_and_reported(4);
    h.rejoin(0, claims[0].clone());
    h.rejoin(1, claims[1].clone());
    assert!(
        h.take_quiet(1)
            .iter()
            .all(|m| !matches!(m, FromMaster::SyncRefused { .. }))
    );
    assert_eq!(h.m.sync_phase(0), SyncPhaseKind::Reporting);
}

/// An attacker's claim (or a corrupt one) whose sync refusal names a round beyond the ids
/// a master can count on from is closed as a violation; the honest member's recovery
/// goes on without it once the window ends.
#[test]
fn a_claim_with_a_refusal_round_out_of_range_is_closed() {
    let mut h = two_second_window();
    let claims = refused_and_reported(5);
    let mut forged = claims[0].clone();
    if let Some(f) = &mut forged.refused {
        f.round = u64::MAX;
    }
    h.rejoin(0, forged);
    assert!(
        h.closed
            .iter()
            .any(|(c, why)| *c == 0 && why.contains("out of range")),
        "{:?}",
        h.closed
    );
    h.rejoin(1, claims[1].clone());
    h.run_until(&[1], Duration::from_millis(2_100));
    assert!(!h.m.recovering());
    assert_eq!(h.m.ring(), &[id(1)]);
}
