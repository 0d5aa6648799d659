//! Scenarios of `optimize_topology`: measuring missing links, re-wiring for the
//! bottleneck, and a death during the bandwidth tests.

use super::harness::Harness;
use crate::types::PeerId;
use crate::wire::{FromMaster, ToMaster, VoteKind};
#[test]
fn optimize_topology_measures_missing_links_and_rewires_for_the_bottleneck() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.take(0);
    for c in 1..4 {
        h.join(c, 0);
    }
    h.update(&[0], &[1, 2, 3]);
    let ids = h.ring_ids(&[0, 1, 2, 3]);
    // Fast links only along 0 -> 2 -> 1 -> 3 -> 0.
    let fast = [(0, 2), (2, 1), (1, 3), (3, 0)];
    h.vote_all(&[0, 1, 2, 3], VoteKind::OptimizeTopology);
    for c in 0..4u64 {
        let msgs = h.take_quiet(c);
        let [FromMaster::MeasureBandwidth { targets }] = &msgs[..] else {
            panic!("{msgs:?}")
        };
        assert_eq!(targets.len(), 3);
        let results = targets
            .iter()
            .map(|t| {
                let to = ids.iter().position(|p| p == t).unwrap() as u64;
                (
                    *t,
                    if fast.contains(&(c, to)) {
                        1_000_000_000
                    } else {
                        10_000_000
                    },
                )
            })
            .collect();
        h.msg(c, ToMaster::BandwidthReport { results });
    }
    let mut id = None;
    for c in 0..4 {
        id = Some(Harness::proposal_in(&h.take_quiet(c)));
    }
    for c in 0..4 {
        h.msg(
            c,
            ToMaster::P2pReady {
                proposal: id.unwrap(),
                ok: true,
            },
        );
    }
    let want: Vec<PeerId> = [0, 2, 1, 3].iter().map(|i| ids[*i]).collect();
    assert_eq!(h.m.ring(), want.as_slice());
    for c in 0..4 {
        let msgs = h.take_quiet(c);
        assert_eq!(
            msgs.last(),
            Some(&FromMaster::TopologyUpdated {
                call: 0,
                result: Ok(())
            }),
            "{msgs:?}"
        );
    }
    // Everything is measured now: a second call tests nothing and keeps the ring.
    h.vote_all(&[0, 1, 2, 3], VoteKind::OptimizeTopology);
    for c in 0..4 {
        assert_eq!(
            h.take_quiet(c),
            vec![FromMaster::TopologyUpdated {
                call: 0,
                result: Ok(())
            }]
        );
    }
    assert_eq!(h.m.ring(), want.as_slice());
}

#[test]
fn a_death_during_bandwidth_tests_fails_the_optimisation_for_survivors() {
    let mut h = Harness::new();
    h.join(0, 0);
    h.take(0);
    h.join(1, 0);
    h.join(2, 0);
    h.update(&[0], &[1, 2]);
    h.vote_all(&[0, 1, 2], VoteKind::OptimizeTopology);
    for c in 0..3 {
        h.take_quiet(c);
    }
    h.disconnect(2);
    for c in 0..2 {
        let msgs = h.take_quiet(c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, FromMaster::TopologyUpdated { result: Err(_), .. })),
            "{msgs:?}"
        );
    }
    // The next joint call works.
    h.vote_all(&[0, 1], VoteKind::ArePeersPending);
    assert_eq!(
        h.take_quiet(0),
        vec![FromMaster::PeersPending {
            call: 0,
            pending: false
        }]
    );
}
