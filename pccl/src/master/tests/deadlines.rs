//! The deadline table: for each wait on one peer, a peer that keeps its connection alive
//! with heartbeats but never answers is evicted exactly at its deadline (not a step
//! before), with the reason, and the others get their answer without it. Every change of
//! phase these evictions cause is checked against the transition tables.

use std::time::Duration;

use super::harness::Harness;
use crate::master::state::{
    Observed, SYNC_TRANSITIONS, SyncPhaseKind, TOPOLOGY_TRANSITIONS, Timeouts, TopologyPhaseKind,
    allowed,
};
use crate::types::{DataType, PeerId, SyncStrategy};
use crate::wire::{FromMaster, TensorReport, ToMaster, VoteKind};

/// Distinct bounds, so a deadline computed from the wrong one fails its test.
const T: Timeouts = Timeouts {
    heartbeat: Duration::from_secs(1),
    registration: Duration::from_millis(3_100),
    proposal: Duration::from_millis(2_300),
    bandwidth: Duration::from_millis(2_700),
    bandwidth_per_target: Duration::from_millis(400),
    sync_report: Duration::from_millis(4_300),
    sync_transfer: Duration::from_millis(3_300),
    sync_transfer_min_rate: 1_000,
    recovery_window: Duration::from_millis(5_100),
    startup_grace: Duration::ZERO,
};
const JUST: Duration = Duration::from_millis(1);

/// `n` accepted peers of group 0 on connections `0..n`.
fn cluster(n: u64) -> Harness {
    Harness::with_timeouts(T).accepted(n)
}

/// Every change of phase since the last call is a row of the tables.
fn check_transitions(h: &mut Harness) -> Vec<Observed> {
    let seen = h.m.take_observed();
    for o in &seen {
        let ok = match *o {
            Observed::Topology(from, to) => allowed(TOPOLOGY_TRANSITIONS, from, to),
            Observed::Sync(_, from, to) => allowed(SYNC_TRANSITIONS, from, to),
        };
        assert!(ok, "{o:?} is not in the transition tables");
    }
    seen
}

/// The reason `conn` was closed with, if it was.
fn close_reason(h: &Harness, conn: u64) -> Option<&str> {
    h.closed
        .iter()
        .find(|(c, _)| *c == conn)
        .map(|(_, r)| r.as_str())
}

/// Runs to one step before `deadline`, checks `conn` is still open, then to the deadline
/// and checks it was closed for a reason containing `why`.
fn evicted_exactly_at(h: &mut Harness, live: &[u64], conn: u64, deadline: Duration, why: &str) {
    h.run_until(live, deadline - JUST);
    assert!(
        !h.is_closed(conn),
        "conn {conn} closed before its deadline: {:?}",
        close_reason(h, conn)
    );
    h.run_until(live, deadline);
    let reason = close_reason(h, conn).expect("evicted at the deadline");
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
}

fn ready(h: &mut Harness, conn: u64, proposal: u64) {
    h.msg(conn, ToMaster::P2pReady { proposal, ok: true });
}

#[test]
fn a_member_silent_on_a_proposal_is_evicted_and_the_update_retries_without_it() {
    // Ring 0, 1, 2 accepted; 3 waits. The proposal goes to all four; 2 never answers.
    let mut h = cluster(3);
    h.join(3, 0);
    let ids = h.ring_ids(&[0, 1, 3]);
    let live = [0, 1, 2, 3];
    h.vote_all(&[0, 1, 2], VoteKind::UpdateTopology);
    let start = h.elapsed;
    let id = Harness::proposal_in(&h.take_quiet(0));
    for c in [0, 1, 3] {
        ready(&mut h, c, id);
    }
    evicted_exactly_at(
        &mut h,
        &live,
        2,
        start + T.proposal,
        "did not answer topology proposal",
    );
    assert_eq!(
        check_transitions(&mut h),
        [
            Observed::Topology(TopologyPhaseKind::Idle, TopologyPhaseKind::Proposing),
            Observed::Topology(TopologyPhaseKind::Proposing, TopologyPhaseKind::Idle)
        ]
    );
    // The others: a retryable failure, then the retry admits the newcomer without 2.
    for c in [0, 1] {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, FromMaster::TopologyUpdated { result: Err(_), .. })),
            "{msgs:?}"
        );
    }
    assert_eq!(h.m.pending(), &[ids[2]], "the newcomer waits for the retry");
    h.take(3);
    h.update(&[0, 1], &[3]);
    assert_eq!(h.m.ring(), ids.as_slice());
}

#[test]
fn a_newcomer_silent_on_a_proposal_is_evicted_and_the_others_commit_on_retry() {
    let mut h = cluster(2);
    h.join(2, 0);
    h.join(3, 0);
    let live = [0, 1, 2, 3];
    h.vote_all(&[0, 1], VoteKind::UpdateTopology);
    let start = h.elapsed;
    let id = Harness::proposal_in(&h.take_quiet(0));
    for c in [1, 2, 3] {
        h.take(c);
    }
    for c in [0, 1, 2] {
        ready(&mut h, c, id);
    }
    evicted_exactly_at(
        &mut h,
        &live,
        3,
        start + T.proposal,
        "did not answer topology proposal",
    );
    check_transitions(&mut h);
    assert_eq!(h.m.pending(), &[h.ids[&2]]);
    let why = format!(
        "newcomer {} left (did not answer topology proposal {id} within {:?})",
        h.ids[&3], T.proposal
    );
    for c in [0, 1] {
        assert_eq!(
            h.take_quiet(c),
            [FromMaster::TopologyUpdated {
                call: 0,
                result: Err(why.clone())
            }]
        );
    }
    h.take(2);
    h.update(&[0, 1], &[2]);
    assert_eq!(h.m.ring(), h.ring_ids(&[0, 1, 2]).as_slice());
}

#[test]
fn a_peer_silent_on_its_bandwidth_tests_is_evicted_after_its_scaled_deadline() {
    let mut h = cluster(3);
    let live = [0, 1, 2];
    h.vote_all(&live, VoteKind::OptimizeTopology);
    let start = h.elapsed;
    for c in live {
        let msgs = h.take_quiet(c);
        let [FromMaster::MeasureBandwidth { targets }] = &msgs[..] else {
            panic!("{msgs:?}")
        };
        assert_eq!(targets.len(), 2);
        if c != 2 {
            let results = targets.iter().map(|t| (*t, 1_000)).collect();
            h.msg(c, ToMaster::BandwidthReport { results });
        }
    }
    // Two links to test: the base bound plus two per-target allowances.
    let deadline = start + T.bandwidth + 2 * T.bandwidth_per_target;
    evicted_exactly_at(&mut h, &live, 2, deadline, "bandwidth tests");
    assert_eq!(
        check_transitions(&mut h),
        [
            Observed::Topology(TopologyPhaseKind::Idle, TopologyPhaseKind::Measuring),
            Observed::Topology(TopologyPhaseKind::Measuring, TopologyPhaseKind::Idle)
        ]
    );
    for c in [0, 1] {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter().any(|m| matches!(m,
                FromMaster::TopologyUpdated { call: 0, result: Err(why) } if why.contains("bandwidth tests in time"))),
            "{msgs:?}"
        );
    }
    // The retry needs no new tests (0 <-> 1 is measured) and succeeds.
    h.vote_all(&[0, 1], VoteKind::OptimizeTopology);
    for c in [0, 1] {
        assert_eq!(
            h.take_quiet(c),
            [FromMaster::TopologyUpdated {
                call: 0,
                result: Ok(())
            }]
        );
    }
}

fn report(hash: u128, count: u64) -> ToMaster {
    ToMaster::SyncReport {
        revision: 1,
        strategy: SyncStrategy::EnforcePopular,
        tensors: vec![TensorReport {
            name: "w".into(),
            dtype: DataType::F32,
            count,
            hash,
            allow_content_inequality: false,
        }],
    }
}

#[test]
fn a_member_that_never_reports_its_shared_state_is_evicted_and_the_sync_goes_on() {
    let mut h = cluster(3);
    let live = [0, 1, 2];
    h.msg(0, report(7, 4));
    let first = h.elapsed;
    // A later report does not move the deadline: it counts from the first.
    h.run_until(&live, first + Duration::from_secs(1));
    h.msg(1, report(7, 4));
    evicted_exactly_at(
        &mut h,
        &live,
        2,
        first + T.sync_report,
        "did not report its shared state",
    );
    assert_eq!(
        check_transitions(&mut h),
        [
            Observed::Sync(0, SyncPhaseKind::Idle, SyncPhaseKind::Reporting),
            Observed::Sync(0, SyncPhaseKind::Reporting, SyncPhaseKind::Transferring)
        ]
    );
    for c in [0, 1] {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, FromMaster::SyncPlan { fetch, .. } if fetch.is_empty())),
            "{msgs:?}"
        );
        h.msg(c, ToMaster::SyncDone { ok: true });
    }
    for c in [0, 1] {
        assert_eq!(
            h.take_quiet(c),
            [FromMaster::SyncResult {
                round: 0,
                result: Ok(())
            }]
        );
    }
}

#[test]
fn a_participant_that_never_finishes_its_fetch_is_evicted_after_its_scaled_deadline() {
    let mut h = cluster(3);
    let live = [0, 1, 2];
    // 500 f32 = 2,000 bytes to fetch at 1,000 bytes/s: two seconds on top of the bound.
    h.msg(0, report(7, 500));
    h.msg(1, report(7, 500));
    h.msg(2, report(9, 500));
    let start = h.elapsed;
    let msgs = h.take_quiet(2);
    assert!(
        msgs.iter()
            .any(|m| matches!(m, FromMaster::SyncPlan { fetch, .. } if fetch.len() == 1)),
        "{msgs:?}"
    );
    for c in [0, 1] {
        h.take(c);
        h.msg(c, ToMaster::SyncDone { ok: true });
    }
    let deadline = start + T.sync_transfer + Duration::from_secs(2);
    evicted_exactly_at(&mut h, &live, 2, deadline, "shared-state sync");
    assert_eq!(
        check_transitions(&mut h),
        [
            Observed::Sync(0, SyncPhaseKind::Idle, SyncPhaseKind::Reporting),
            Observed::Sync(0, SyncPhaseKind::Reporting, SyncPhaseKind::Transferring),
            Observed::Sync(0, SyncPhaseKind::Transferring, SyncPhaseKind::Idle)
        ]
    );
    for c in [0, 1] {
        let msgs = h.take_quiet(c);
        // The eviction: a new ring without 2, then the one result of the sync.
        let t = Harness::commit_of(&msgs);
        assert!(!t.contains(h.ids[&2]));
        assert_eq!(
            msgs.last(),
            Some(&FromMaster::SyncResult {
                round: 0,
                result: Ok(())
            }),
            "{msgs:?}"
        );
    }
    assert_eq!(h.m.sync_phase(0), SyncPhaseKind::Idle);
}

#[test]
fn a_connection_that_only_heartbeats_is_closed_at_the_registration_deadline() {
    let mut h = Harness::with_timeouts(T);
    h.join(0, 0);
    h.connect(1, PeerId([0xAA; 16]));
    let start = h.elapsed;
    // Registered in time: kept; never registered: closed exactly at the deadline.
    h.connect(2, PeerId([0xBB; 16]));
    h.run_until(&[0, 1, 2], start + T.registration / 2);
    h.msg(
        2,
        ToMaster::Register {
            group: 0,
            p2p_port: 1,
            advertise_ip: None,
        },
    );
    evicted_exactly_at(
        &mut h,
        &[0, 1, 2],
        1,
        start + T.registration,
        "did not register",
    );
    assert!(!h.is_closed(2) && !h.is_closed(0));
    h.run_until(&[0, 2], start + 3 * T.registration);
    assert!(!h.is_closed(2) && !h.is_closed(0));
    assert_eq!(h.m.pending(), &[PeerId([0xBB; 16])]);
}

#[test]
fn joint_calls_and_ops_a_live_peer_has_not_made_yet_have_no_deadline() {
    // PCCL semantics: the user's loop may be slow. Nothing is evicted for it.
    let mut h = cluster(2);
    h.msg(0, ToMaster::Vote(VoteKind::UpdateTopology));
    let epoch = h.m.topology().group_epoch(0).expect("group 0");
    h.msg(
        0,
        ToMaster::OpDone {
            tag: 1,
            epoch,
            seq: 0,
            failure: None,
        },
    );
    h.run_until(&[0, 1], h.elapsed + Duration::from_secs(600));
    assert!(h.closed.is_empty(), "{:?}", h.closed);
    assert_eq!(h.m.voters().count(), 1);
    assert_eq!(h.m.op_votes().count(), 1);
}
