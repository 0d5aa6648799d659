//! A minimal driver for hand-written scenarios: messages arrive instantly and every
//! output is collected per connection.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::{HB_INTERVAL, HB_TIMEOUT};
use crate::master::state::{ConnId, MasterState, Output, Timeouts};
use crate::types::{PeerId, Topology};
use crate::wire::{FromMaster, ToMaster, VoteKind};

/// A minimal driver for hand-written scenarios: messages arrive instantly and every
/// output is collected per connection.
pub(super) struct Harness {
    pub(super) m: MasterState,
    pub(super) base: Instant,
    pub(super) elapsed: Duration,
    pub(super) ids: BTreeMap<ConnId, PeerId>,
    pub(super) inbox: BTreeMap<ConnId, Vec<FromMaster>>,
    pub(super) closed: Vec<(ConnId, String)>,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with(MasterState::new(HB_TIMEOUT))
    }

    /// A harness whose master waits as long as `timeouts` says.
    pub(super) fn with_timeouts(timeouts: Timeouts) -> Self {
        Self::with(MasterState::with_timeouts(timeouts))
    }

    fn with(m: MasterState) -> Self {
        Self {
            m,
            base: Instant::now(),
            elapsed: Duration::ZERO,
            ids: BTreeMap::new(),
            inbox: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    /// `n` peers of group 0 on connections `0..n`, all accepted into the ring, with the
    /// phase changes of getting there already taken.
    pub(super) fn accepted(mut self, n: u64) -> Self {
        self.join(0, 0);
        self.take(0);
        for c in 1..n {
            self.join(c, 0);
        }
        if n > 1 {
            let new: Vec<u64> = (1..n).collect();
            self.update(&[0], &new);
        }
        let _ = self.m.take_observed();
        self
    }

    pub(super) fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    pub(super) fn drain(&mut self) {
        while let Some(o) = self.m.poll_output() {
            match o {
                Output::Send(c, msg) => {
                    assert!(
                        !self.closed.iter().any(|(d, _)| *d == c),
                        "sent {msg:?} to closed conn {c}"
                    );
                    self.inbox.entry(c).or_default().push(without_ids(msg));
                }
                Output::Close(c, why) => self.closed.push((c, why)),
            }
        }
    }

    /// Connects and registers a peer in `group` on connection `conn`.
    pub(super) fn join(&mut self, conn: ConnId, group: u32) -> PeerId {
        let id = PeerId([conn as u8 + 1; 16]);
        self.ids.insert(conn, id);
        let now = self.now();
        self.m
            .handle_connect(now, conn, id, IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.msg(
            conn,
            ToMaster::Register {
                group,
                p2p_port: 48149 + conn as u16,
                advertise_ip: None,
            },
        );
        id
    }

    /// Connects a peer on connection `conn` and re-registers it with `claim`, as after a
    /// master restart.
    pub(super) fn rejoin(&mut self, conn: ConnId, claim: crate::wire::Rejoin) -> PeerId {
        let id = PeerId([conn as u8 + 1; 16]);
        self.connect(conn, id);
        self.msg(conn, ToMaster::Rejoin(Box::new(claim)));
        id
    }

    /// Moves the clock on to `until` (since the start) in steps of at most the heartbeat
    /// interval; at each step the still-open connections of `live` heartbeat, then the
    /// master's timer fires if due.
    pub(super) fn run_until(&mut self, live: &[ConnId], until: Duration) {
        while self.elapsed < until {
            self.elapsed = (self.elapsed + HB_INTERVAL).min(until);
            for c in live {
                if !self.is_closed(*c) {
                    self.msg(*c, ToMaster::Heartbeat);
                }
            }
            if self.m.poll_timeout().is_some_and(|t| t <= self.now()) {
                let now = self.now();
                self.m.handle_timeout(now);
                self.drain();
            }
        }
    }

    /// Whether the master has closed (or the test disconnected) `conn`.
    pub(super) fn is_closed(&self, conn: ConnId) -> bool {
        self.closed.iter().any(|(c, _)| *c == conn)
    }

    /// Connects `conn` as `peer` without registering.
    pub(super) fn connect(&mut self, conn: ConnId, peer: PeerId) {
        self.ids.insert(conn, peer);
        let now = self.now();
        self.m
            .handle_connect(now, conn, peer, IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.drain();
    }

    pub(super) fn msg(&mut self, conn: ConnId, msg: ToMaster) {
        let now = self.now();
        self.m.handle_message(now, conn, msg);
        self.drain();
    }

    pub(super) fn disconnect(&mut self, conn: ConnId) {
        self.m.handle_disconnect(conn, "test");
        self.closed.push((conn, "test".into()));
        self.drain();
    }

    pub(super) fn take(&mut self, conn: ConnId) -> Vec<FromMaster> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// The messages of `conn` without heartbeat acks.
    pub(super) fn take_quiet(&mut self, conn: ConnId) -> Vec<FromMaster> {
        self.take(conn)
            .into_iter()
            .filter(|m| *m != FromMaster::HeartbeatAck)
            .collect()
    }

    pub(super) fn ring_ids(&self, conns: &[ConnId]) -> Vec<PeerId> {
        conns.iter().map(|c| self.ids[c]).collect()
    }

    /// Every peer in `conns` votes `kind`.
    pub(super) fn vote_all(&mut self, conns: &[ConnId], kind: VoteKind) {
        for c in conns {
            self.msg(*c, ToMaster::Vote(kind));
        }
    }

    /// The proposal id in a batch of messages.
    pub(super) fn proposal_in(msgs: &[FromMaster]) -> u64 {
        msgs.iter()
            .find_map(|m| match m {
                FromMaster::Propose { proposal, .. } => Some(*proposal),
                _ => None,
            })
            .expect("a Propose")
    }

    /// Brings `old` (accepted) and the waiting peers to a committed ring `old ++ new`.
    pub(super) fn update(&mut self, old: &[ConnId], new: &[ConnId]) {
        self.vote_all(old, VoteKind::UpdateTopology);
        let all: Vec<ConnId> = old.iter().chain(new).copied().collect();
        let mut id = None;
        for c in &all {
            let msgs = self.take_quiet(*c);
            id = Some(Self::proposal_in(&msgs));
        }
        for c in &all {
            self.msg(
                *c,
                ToMaster::P2pReady {
                    proposal: id.expect("proposed"),
                    ok: true,
                },
            );
        }
        assert_eq!(self.m.ring(), self.ring_ids(&all).as_slice());
        for c in old {
            let msgs = self.take_quiet(*c);
            assert!(matches!(msgs[0], FromMaster::Commit { .. }), "{msgs:?}");
            assert_eq!(
                msgs[1],
                FromMaster::TopologyUpdated {
                    call: 0,
                    result: Ok(())
                }
            );
        }
        for c in new {
            let msgs = self.take_quiet(*c);
            assert!(matches!(&msgs[..], [FromMaster::Commit { .. }]), "{msgs:?}");
        }
    }

    pub(super) fn commit_of(msgs: &[FromMaster]) -> Topology {
        msgs.iter()
            .rev()
            .find_map(|m| match m {
                FromMaster::Commit { topology, .. } => Some(topology.clone()),
                _ => None,
            })
            .expect("a Commit")
    }
}

/// `msg` with its joint-call id or sync round set to 0, so hand-written scenarios can
/// compare answers without counting calls (the ids have tests of their own, `restart.rs`).
fn without_ids(msg: FromMaster) -> FromMaster {
    match msg {
        FromMaster::PeersPending { pending, .. } => FromMaster::PeersPending { call: 0, pending },
        FromMaster::TopologyUpdated { result, .. } => {
            FromMaster::TopologyUpdated { call: 0, result }
        }
        FromMaster::VoteRejected { reason, .. } => FromMaster::VoteRejected { call: 0, reason },
        FromMaster::SyncResult { result, .. } => FromMaster::SyncResult { round: 0, result },
        other => other,
    }
}
