//! Pins the phase transitions: each scenario drives the master through one input at a
//! time and checks the exact changes of phase it makes against the expected ones and
//! against the tables in `master::state` (`TOPOLOGY_TRANSITIONS`, `SYNC_TRANSITIONS`);
//! together the scenarios must reach every row of both tables, so a row that nothing
//! can take, or a change that no row allows, fails here.

use std::collections::BTreeSet;

use super::harness::Harness;
use crate::master::state::{
    Observed, SYNC_TRANSITIONS, SyncPhaseKind as S, TOPOLOGY_TRANSITIONS, TopologyPhaseKind as T,
    allowed,
};
use crate::types::{DataType, PeerId, SyncStrategy};
use crate::wire::{FromMaster, TensorReport, ToMaster, VoteKind};

use Observed::{Sync, Topology};

/// Records, per input, the changes of phase it made.
struct Recorder {
    h: Harness,
    seen: Vec<Observed>,
}

impl Recorder {
    /// `n` peers of group 0, all accepted, nothing recorded yet.
    fn cluster(n: u64) -> Self {
        let h = Harness::new().accepted(n);
        Self {
            h,
            seen: Vec::new(),
        }
    }

    /// Feeds one message and checks the changes of phase it makes.
    fn step(&mut self, conn: u64, msg: ToMaster, want: &[Observed]) {
        let what = format!("{msg:?} from conn {conn}");
        self.h.msg(conn, msg);
        self.expect(&what, want);
    }

    fn disconnect(&mut self, conn: u64, want: &[Observed]) {
        self.h.disconnect(conn);
        self.expect(&format!("disconnect of conn {conn}"), want);
    }

    fn expect(&mut self, what: &str, want: &[Observed]) {
        let got = self.h.m.take_observed();
        assert_eq!(got, want, "phase changes on {what}");
        for o in &got {
            assert!(
                in_table(*o),
                "{o:?} on {what} is not in the transition tables"
            );
        }
        self.seen.extend(got);
    }

    fn proposal(&mut self, conns: &[u64]) -> u64 {
        let mut id = 0;
        for c in conns {
            id = Harness::proposal_in(&self.h.take_quiet(*c));
        }
        id
    }
}

fn in_table(o: Observed) -> bool {
    match o {
        Topology(from, to) => allowed(TOPOLOGY_TRANSITIONS, from, to),
        Sync(_, from, to) => allowed(SYNC_TRANSITIONS, from, to),
    }
}

fn ready(proposal: u64, ok: bool) -> ToMaster {
    ToMaster::P2pReady { proposal, ok }
}

fn update_commits() -> Vec<Observed> {
    let mut r = Recorder::cluster(1);
    r.h.join(1, 0);
    r.step(
        0,
        ToMaster::Vote(VoteKind::UpdateTopology),
        &[Topology(T::Idle, T::Proposing)],
    );
    let id = r.proposal(&[0, 1]);
    r.step(0, ready(id, true), &[]);
    r.step(1, ready(id, true), &[Topology(T::Proposing, T::Idle)]);
    assert_eq!(r.h.m.ring().len(), 2);
    r.seen
}

fn failed_dial_aborts() -> Vec<Observed> {
    let mut r = Recorder::cluster(1);
    r.h.join(1, 0);
    r.step(
        0,
        ToMaster::Vote(VoteKind::UpdateTopology),
        &[Topology(T::Idle, T::Proposing)],
    );
    let id = r.proposal(&[0, 1]);
    r.step(1, ready(id, false), &[Topology(T::Proposing, T::Idle)]);
    assert_eq!(r.h.m.ring().len(), 1);
    r.seen
}

/// Every peer of `conns` reports `bps(from, to)` for the targets it was asked to test;
/// the last report makes the changes `last`.
fn measure(r: &mut Recorder, conns: &[u64], bps: impl Fn(u64, u64) -> u64, last: &[Observed]) {
    let ids: Vec<PeerId> = r.h.ring_ids(conns);
    for (k, c) in conns.iter().enumerate() {
        let msgs = r.h.take_quiet(*c);
        let [FromMaster::MeasureBandwidth { targets }] = &msgs[..] else {
            panic!("{msgs:?}")
        };
        let results = targets
            .iter()
            .map(|t| {
                let to = conns[ids.iter().position(|p| p == t).expect("a member")];
                (*t, bps(*c, to))
            })
            .collect();
        let want = if k + 1 == conns.len() { last } else { &[] };
        r.step(*c, ToMaster::BandwidthReport { results }, want);
    }
}

fn optimize_rewires() -> Vec<Observed> {
    let mut r = Recorder::cluster(4);
    let all = [0, 1, 2, 3];
    for c in all {
        let want: &[Observed] = if c == 3 {
            &[Topology(T::Idle, T::Measuring)]
        } else {
            &[]
        };
        r.step(c, ToMaster::Vote(VoteKind::OptimizeTopology), want);
    }
    let fast = [(0, 2), (2, 1), (1, 3), (3, 0)];
    let bps = |a, b| {
        if fast.contains(&(a, b)) {
            1_000_000_000
        } else {
            1_000
        }
    };
    measure(&mut r, &all, bps, &[Topology(T::Measuring, T::Proposing)]);
    let id = r.proposal(&all);
    for c in all {
        let want: &[Observed] = if c == 3 {
            &[Topology(T::Proposing, T::Idle)]
        } else {
            &[]
        };
        r.step(c, ready(id, true), want);
    }
    r.seen
}

fn optimize_already_best() -> Vec<Observed> {
    let mut r = Recorder::cluster(3);
    let all = [0, 1, 2];
    r.h.vote_all(&all[..2], VoteKind::OptimizeTopology);
    r.step(
        2,
        ToMaster::Vote(VoteKind::OptimizeTopology),
        &[Topology(T::Idle, T::Measuring)],
    );
    measure(
        &mut r,
        &all,
        |_, _| 1_000,
        &[Topology(T::Measuring, T::Idle)],
    );
    for c in all {
        assert_eq!(
            r.h.take_quiet(c),
            vec![FromMaster::TopologyUpdated {
                call: 0,
                result: Ok(())
            }]
        );
    }
    r.seen
}

fn death_while_measuring() -> Vec<Observed> {
    let mut r = Recorder::cluster(3);
    r.h.vote_all(&[0, 1], VoteKind::OptimizeTopology);
    r.step(
        2,
        ToMaster::Vote(VoteKind::OptimizeTopology),
        &[Topology(T::Idle, T::Measuring)],
    );
    r.disconnect(2, &[Topology(T::Measuring, T::Idle)]);
    r.seen
}

fn report(revision: u64, strategy: SyncStrategy, hash: u128) -> ToMaster {
    ToMaster::SyncReport {
        revision,
        strategy,
        tensors: vec![TensorReport {
            name: "w".into(),
            dtype: DataType::F32,
            count: 4,
            hash,
            allow_content_inequality: false,
        }],
    }
}

/// A restarted master rebuilds the transfer both peers report in progress, and ends it.
fn transfer_resumed_after_restart() -> Vec<Observed> {
    let mut r = Recorder {
        h: Harness::new(),
        seen: Vec::new(),
    };
    let claims = super::restart::two_peer_claims(|c| {
        c.sync = crate::wire::SyncClaim::Planned {
            round: 3,
            revision: 1,
            done: None,
        };
    });
    let mut claims = claims.into_iter();
    r.h.rejoin(0, claims.next().unwrap());
    r.expect("the first rejoin", &[]);
    r.h.rejoin(1, claims.next().unwrap());
    r.expect("the last rejoin", &[Sync(0, S::Idle, S::Transferring)]);
    r.step(0, ToMaster::SyncDone { ok: true }, &[]);
    r.step(
        1,
        ToMaster::SyncDone { ok: true },
        &[Sync(0, S::Transferring, S::Idle)],
    );
    r.seen
}

fn sync_transfers() -> Vec<Observed> {
    let mut r = Recorder::cluster(3);
    let e = SyncStrategy::EnforcePopular;
    r.step(0, report(1, e, 7), &[Sync(0, S::Idle, S::Reporting)]);
    r.step(1, report(1, e, 7), &[]);
    r.step(
        2,
        report(1, e, 9),
        &[Sync(0, S::Reporting, S::Transferring)],
    );
    r.step(0, ToMaster::SyncDone { ok: true }, &[]);
    r.step(1, ToMaster::SyncDone { ok: true }, &[]);
    r.step(
        2,
        ToMaster::SyncDone { ok: true },
        &[Sync(0, S::Transferring, S::Idle)],
    );
    for c in 0..3 {
        let msgs = r.h.take_quiet(c);
        assert_eq!(
            msgs.last(),
            Some(&FromMaster::SyncResult {
                round: 0,
                result: Ok(())
            }),
            "{msgs:?}"
        );
    }
    r.seen
}

fn sync_refused_for_all() -> Vec<Observed> {
    let mut r = Recorder::cluster(2);
    let rx = SyncStrategy::ReceiveOnly;
    r.step(0, report(1, rx, 7), &[Sync(0, S::Idle, S::Reporting)]);
    r.step(1, report(1, rx, 7), &[Sync(0, S::Reporting, S::Idle)]);
    r.seen
}

/// A named scenario returning the phase changes it made.
type Scenario = (&'static str, fn() -> Vec<Observed>);

#[test]
fn every_phase_change_is_in_the_tables_and_every_row_is_reachable() {
    let scenarios: [Scenario; 8] = [
        ("update commits", update_commits),
        ("failed dial aborts", failed_dial_aborts),
        ("optimize re-wires", optimize_rewires),
        (
            "optimize finds the ring already best",
            optimize_already_best,
        ),
        ("death while measuring", death_while_measuring),
        ("sync transfers", sync_transfers),
        ("sync refused for all", sync_refused_for_all),
        (
            "transfer resumed after a restart",
            transfer_resumed_after_restart,
        ),
    ];
    let mut topology = BTreeSet::new();
    let mut sync = BTreeSet::new();
    for (name, run) in scenarios {
        eprintln!("scenario: {name}");
        for o in run() {
            match o {
                Topology(from, to) => topology.insert((from, to)),
                Sync(_, from, to) => sync.insert((from, to)),
            };
        }
    }
    for row in TOPOLOGY_TRANSITIONS {
        assert!(
            topology.contains(&(row.from, row.to)),
            "no scenario takes {:?} -> {:?} ({})",
            row.from,
            row.to,
            row.on
        );
    }
    for row in SYNC_TRANSITIONS {
        assert!(
            sync.contains(&(row.from, row.to)),
            "no scenario takes {:?} -> {:?} ({})",
            row.from,
            row.to,
            row.on
        );
    }
}
