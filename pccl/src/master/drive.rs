//! Drives [`MasterState`] with inputs read from arbitrary bytes: the logic of the
//! `master_state` fuzz target, also run over seeded random bytes by a unit test (so CI
//! exercises it without cargo-fuzz) and used by the property test's adversarial peers to
//! make up messages. It checks that no input sequence panics the master and that one
//! input never makes it queue more outputs than its state can justify.
//!
//! Public only for the fuzz crate, which links pccl as a library; not part of the API.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::state::{ConnId, MasterState, Output, Timeouts};
use crate::types::{DataType, PeerEntry, PeerId, SyncStrategy, Topology};
use crate::wire::{
    Answer, FailReason, OpClaim, OpRecord, RefusalRecord, Rejoin, SyncClaim, SyncRefusal,
    TensorReport, ToMaster, VoteKind,
};

/// Connections and peer ids are drawn from small sets, so that inputs collide: the same
/// connection registers twice, two connections claim one id, messages name real peers.
const CONNS: u8 = 6;
const IDS: u8 = 8;

/// Reads the input bytes; past their end it reads zeros, so every sequence is complete.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A small number below `n` (> 0): small values are the ones that match real state.
    pub fn below(&mut self, n: u8) -> u8 {
        self.u8() % n
    }

    /// Mostly a small number, sometimes an extreme one (0, MAX, MAX-1).
    pub fn u64(&mut self) -> u64 {
        match self.u8() {
            250 => u64::MAX,
            251 => u64::MAX - 1,
            b => u64::from(b % 8),
        }
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

/// One of the few peer ids inputs use.
pub fn peer_id(i: u8) -> PeerId {
    let mut id = [0u8; 16];
    id[0] = 0xA0;
    id[15] = i;
    PeerId(id)
}

/// Any well-formed `ToMaster`, with values from small sets so that they often name real
/// groups, proposals, ops and tensors; `known` are peer ids that may appear in reports.
pub fn message(b: &mut Bytes<'_>, known: &[PeerId]) -> ToMaster {
    let pick_peer = |b: &mut Bytes<'_>| {
        let i = b.u8();
        match known.get(usize::from(i) % (known.len() + 1)) {
            Some(p) => *p,
            None => peer_id(i),
        }
    };
    match b.below(10) {
        0 => ToMaster::Heartbeat,
        9 => ToMaster::Rejoin(Box::new(rejoin(b, known))),
        1 => ToMaster::Register {
            group: u32::from(b.below(3)),
            p2p_port: u16::from(b.u8()),
            advertise_ip: b
                .bool()
                .then(|| IpAddr::V4(Ipv4Addr::new(10, 0, 0, b.u8()))),
        },
        2 => ToMaster::Vote(match b.below(3) {
            0 => VoteKind::ArePeersPending,
            1 => VoteKind::UpdateTopology,
            _ => VoteKind::OptimizeTopology,
        }),
        3 => ToMaster::P2pReady {
            proposal: b.u64(),
            ok: b.bool(),
        },
        4 => {
            let n = b.below(4);
            let tensors = (0..n)
                .map(|_| TensorReport {
                    name: ["a", "b", "c", ""][usize::from(b.below(4))].to_string(),
                    dtype: DataType::ALL[usize::from(b.below(DataType::ALL.len() as u8))],
                    count: b.u64(),
                    hash: u128::from(b.below(3)),
                    allow_content_inequality: b.bool(),
                })
                .collect();
            ToMaster::SyncReport {
                revision: b.u64(),
                strategy: SyncStrategy::from_u8(b.below(3)).unwrap_or_default(),
                tensors,
            }
        }
        5 => ToMaster::SyncDone { ok: b.bool() },
        6 => {
            let n = b.below(4);
            let results = (0..n).map(|_| (pick_peer(b), b.u64())).collect();
            ToMaster::BandwidthReport { results }
        }
        _ => ToMaster::OpDone {
            tag: b.u64(),
            epoch: b.u64(),
            seq: b.u64() as u32,
            failure: match b.below(4) {
                0 => Some(FailReason::PeerLost),
                1 => Some(FailReason::Mismatch),
                2 => Some(FailReason::Corrupt),
                _ => None,
            },
        },
    }
}

/// A re-registration (docs/ARCHITECTURE.md §14) naming small ids and known peers, so
/// that claims often agree, conflict or name real state.
fn rejoin(b: &mut Bytes<'_>, known: &[PeerId]) -> Rejoin {
    let pick_peer = |b: &mut Bytes<'_>| {
        let i = b.u8();
        known
            .get(usize::from(i) % (known.len() + 1))
            .copied()
            .unwrap_or_else(|| peer_id(i))
    };
    let ring = (0..b.below(4))
        .map(|_| PeerEntry {
            id: pick_peer(b),
            group: u32::from(b.below(2)),
            p2p_addr: (Ipv4Addr::new(10, 0, 0, b.u8()), 48149).into(),
            static_key: [0; 32],
        })
        .collect();
    let group_epochs = (0..b.below(3)).map(|g| (u32::from(g), b.u64())).collect();
    let failure = |b: &mut Bytes<'_>| match b.below(3) {
        0 => Some(FailReason::PeerLost),
        _ => None,
    };
    Rejoin {
        group: u32::from(b.below(2)),
        p2p_port: u16::from(b.u8()),
        advertise_ip: None,
        accepted: b.bool(),
        topology: Topology { ring, group_epochs },
        max_seen: b.u64(),
        call: b.u64(),
        answer: match b.below(4) {
            0 => None,
            1 => Some(Answer::PeersPending(b.bool())),
            2 => Some(Answer::TopologyUpdated(Ok(()))),
            _ => Some(Answer::VoteRejected("fuzz".into())),
        },
        vote: match b.below(4) {
            0 => Some(VoteKind::ArePeersPending),
            1 => Some(VoteKind::UpdateTopology),
            2 => Some(VoteKind::OptimizeTopology),
            _ => None,
        },
        verdicts: (0..b.below(3))
            .map(|_| OpRecord {
                tag: b.u64(),
                epoch: b.u64(),
                seq: b.u64() as u32,
                failure: failure(b),
            })
            .collect(),
        ops: (0..b.below(3))
            .map(|_| OpClaim {
                tag: b.u64(),
                epoch: b.u64(),
                seq: b.u64() as u32,
                done: b.bool().then(|| failure(b)),
            })
            .collect(),
        synced: b.bool().then(|| (b.u64(), b.u64())),
        result: b.bool().then(|| (b.u64(), Ok(()))),
        refused: b.bool().then(|| RefusalRecord {
            round: b.u64(),
            epoch: b.u64(),
            kind: SyncRefusal::NoSharedState,
            reason: "fuzz".into(),
        }),
        sync: match b.below(3) {
            0 => SyncClaim::Idle,
            1 => SyncClaim::Reported {
                revision: b.u64(),
                strategy: SyncStrategy::EnforcePopular,
                tensors: Vec::new(),
            },
            _ => SyncClaim::Planned {
                round: b.u64(),
                revision: b.u64(),
                done: match b.below(3) {
                    0 => None,
                    1 => Some(false),
                    _ => Some(true),
                },
            },
        },
    }
}

/// Runs the master over the inputs `data` encodes: connects, messages (made up by
/// [`message`] or decoded from raw frame bytes as the server would), disconnects, clock
/// advances (the clock never goes back) and master crashes (a fresh master). Panics if the master panics or if one
/// input queues more outputs than [`output_bound`] allows.
pub fn drive(data: &[u8]) {
    let mut b = Bytes::new(data);
    let base = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut master = MasterState::new(Duration::from_secs(1));
    let mut live: Vec<(ConnId, PeerId)> = Vec::new();
    while !b.is_empty() {
        let now = base + elapsed;
        let bound = output_bound(&master, live.len());
        match b.below(7) {
            0 => {
                let conn = ConnId::from(b.below(CONNS));
                let id = peer_id(b.below(IDS));
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, b.u8()));
                // The server never reuses a connection number; neither do we.
                if !live.iter().any(|(c, _)| *c == conn) {
                    live.push((conn, id));
                    master.handle_connect(now, conn, id, ip);
                }
            }
            1 | 2 => {
                let conn = ConnId::from(b.below(CONNS));
                let known: Vec<PeerId> = live.iter().map(|(_, p)| *p).collect();
                master.handle_message(now, conn, message(&mut b, &known));
            }
            3 => {
                let conn = ConnId::from(b.below(CONNS));
                let len = usize::from(b.u8());
                if let Ok(msg) = ToMaster::decode(b.take(len)) {
                    master.handle_message(now, conn, msg);
                }
            }
            4 => {
                let conn = ConnId::from(b.below(CONNS));
                live.retain(|(c, _)| *c != conn);
                master.handle_disconnect(conn, "fuzz");
            }
            5 => {
                elapsed += Duration::from_millis(u64::from(b.u8()) * 20);
                master.handle_timeout(base + elapsed);
            }
            _ => {
                // The master crashes and a fresh one starts (docs/ARCHITECTURE.md §14):
                // every connection is gone; the peers re-dial and claim what they saw.
                master = MasterState::with_timeouts(Timeouts {
                    heartbeat: Duration::from_secs(1),
                    startup_grace: Duration::from_secs(1),
                    ..Timeouts::default()
                });
                master.handle_timeout(now);
                live.clear();
            }
        }
        let mut n = 0usize;
        while let Some(out) = master.poll_output() {
            n += 1;
            if let Output::Close(conn, _) = out {
                live.retain(|(c, _)| *c != conn);
            }
        }
        assert!(
            n <= bound,
            "one input queued {n} outputs (bound {bound} for this state)"
        );
    }
}

/// The most outputs one input may queue in this state: a message to each connection per
/// open op or group, plus a few per connection (a commit, a proposal, a sync plan, a
/// close), never more.
pub fn output_bound(master: &MasterState, conns: usize) -> usize {
    let ops = master.op_votes().count();
    8 * (conns + 1) * (ops + 4)
}
