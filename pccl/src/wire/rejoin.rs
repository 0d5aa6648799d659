//! `Rejoin`: what a peer tells a master after its control connection was lost, so that a
//! restarted master can rebuild the run from the peers (docs/ARCHITECTURE.md §14,
//! docs/PROTOCOL.md §3.5). Every collection is bounded before it is allocated.

use std::net::IpAddr;

use bytes::BufMut;

use super::codec::{Reader, WireError, put_bool, put_string};
use super::control::{
    FailReason, SyncRefusal, TensorReport, VoteKind, get_ip, get_op, get_refusal, get_result,
    get_tensors, get_topology, put_ip, put_op, put_result, put_tensors, put_topology,
};
use crate::types::{SyncStrategy, Topology};

/// Most ops a `Rejoin` may list, in flight or recently decided. A peer remembers the
/// verdicts of its last `MAX_REJOIN_OPS` ops; more tags in flight at once than this is
/// beyond any real program.
pub const MAX_REJOIN_OPS: usize = 4096;
/// Longest reason string in a rejoin.
const MAX_REASON: usize = 4096;

/// The answer to a joint call, as a peer last received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    PeersPending(bool),
    TopologyUpdated(Result<(), String>),
    VoteRejected(String),
}

/// A verdict this peer received: op (tag, epoch, seq) and its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpRecord {
    pub tag: u64,
    pub epoch: u64,
    pub seq: u32,
    pub failure: Option<FailReason>,
}

/// An op running here that has no verdict yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpClaim {
    pub tag: u64,
    pub epoch: u64,
    pub seq: u32,
    /// `None`: this peer's part still runs; `Some(failure)`: it ended (`OpDone` sent or due).
    pub done: Option<Option<FailReason>>,
}

/// Where this peer stands in a shared-state sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SyncClaim {
    /// No sync call in progress.
    #[default]
    Idle,
    /// A `SyncReport` was made and no plan has arrived.
    Reported {
        revision: u64,
        strategy: SyncStrategy,
        tensors: Vec<TensorReport>,
    },
    /// The plan of sync `round` (adopting `revision`) arrived; `done` once the fetches ended.
    Planned {
        round: u64,
        revision: u64,
        done: Option<bool>,
    },
}

/// The last sync refusal a peer received: the election's round, the peer's group epoch
/// when it arrived (the membership that election had), and the refusal itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalRecord {
    pub round: u64,
    pub epoch: u64,
    pub kind: SyncRefusal,
    pub reason: String,
}

/// A peer's re-registration: `Register`'s fields plus the run as this peer last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejoin {
    pub group: u32,
    pub p2p_port: u16,
    pub advertise_ip: Option<IpAddr>,
    /// Whether a committed topology included this peer.
    pub accepted: bool,
    /// The last committed topology (empty before any).
    pub topology: Topology,
    /// The highest epoch or proposal id this peer saw.
    pub max_seen: u64,
    /// The last joint call answered here (0: none), and its answer.
    pub call: u64,
    pub answer: Option<Answer>,
    /// A joint call made here and not answered yet.
    pub vote: Option<VoteKind>,
    /// The last verdicts received, oldest first.
    pub verdicts: Vec<OpRecord>,
    /// Ops in flight here.
    pub ops: Vec<OpClaim>,
    /// The last sync that succeeded here: (round, revision).
    pub synced: Option<(u64, u64)>,
    /// The last sync result received here: (round, result).
    pub result: Option<(u64, Result<(), String>)>,
    /// The last sync refusal received here.
    pub refused: Option<RefusalRecord>,
    pub sync: SyncClaim,
}

impl Rejoin {
    /// The highest id of any kind (epoch, proposal, call, sync round) this peer saw.
    pub fn highest_id(&self) -> u64 {
        let epochs = self.topology.group_epochs.iter().map(|(_, e)| *e);
        let round = match &self.sync {
            SyncClaim::Planned { round, .. } => *round,
            _ => 0,
        };
        epochs
            .chain([self.max_seen, self.call, round])
            .chain(self.synced.map(|s| s.0))
            .chain(self.result.as_ref().map(|r| r.0))
            .chain(self.refused.as_ref().map(|r| r.round.max(r.epoch)))
            .max()
            .unwrap_or(0)
    }

    pub(super) fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(self.group);
        out.put_u16_le(self.p2p_port);
        match self.advertise_ip {
            None => out.put_u8(0),
            Some(ip) => put_ip(out, ip),
        }
        put_bool(out, self.accepted);
        put_topology(out, &self.topology);
        out.put_u64_le(self.max_seen);
        out.put_u64_le(self.call);
        match &self.answer {
            None => out.put_u8(0),
            Some(Answer::PeersPending(p)) => {
                out.put_u8(1);
                put_bool(out, *p);
            }
            Some(Answer::TopologyUpdated(r)) => {
                out.put_u8(2);
                put_result(out, r);
            }
            Some(Answer::VoteRejected(why)) => {
                out.put_u8(3);
                put_string(out, why);
            }
        }
        out.put_u8(self.vote.map_or(0, |k| k as u8));
        out.put_u32_le(self.verdicts.len() as u32);
        for v in &self.verdicts {
            put_op(out, v.tag, v.epoch, v.seq, v.failure);
        }
        out.put_u32_le(self.ops.len() as u32);
        for o in &self.ops {
            match o.done {
                None => {
                    put_op(out, o.tag, o.epoch, o.seq, None);
                    out.put_u8(0);
                }
                Some(f) => {
                    put_op(out, o.tag, o.epoch, o.seq, f);
                    out.put_u8(1);
                }
            }
        }
        match self.synced {
            None => out.put_u8(0),
            Some((round, revision)) => {
                out.put_u8(1);
                out.put_u64_le(round);
                out.put_u64_le(revision);
            }
        }
        match &self.result {
            None => out.put_u8(0),
            Some((round, r)) => {
                out.put_u8(1);
                out.put_u64_le(*round);
                put_result(out, r);
            }
        }
        match &self.refused {
            None => out.put_u8(0),
            Some(f) => {
                out.put_u8(1);
                out.put_u64_le(f.round);
                out.put_u64_le(f.epoch);
                out.put_u8(f.kind as u8);
                put_string(out, &f.reason);
            }
        }
        match &self.sync {
            SyncClaim::Idle => out.put_u8(0),
            SyncClaim::Reported {
                revision,
                strategy,
                tensors,
            } => {
                out.put_u8(1);
                out.put_u64_le(*revision);
                out.put_u8(*strategy as u8);
                put_tensors(out, tensors);
            }
            SyncClaim::Planned {
                round,
                revision,
                done,
            } => {
                out.put_u8(2);
                out.put_u64_le(*round);
                out.put_u64_le(*revision);
                out.put_u8(match done {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                });
            }
        }
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let group = r.u32()?;
        let p2p_port = r.u16()?;
        let advertise_ip = match r.u8()? {
            0 => None,
            t => Some(get_ip(r, t)?),
        };
        let accepted = r.bool()?;
        let topology = get_topology(r)?;
        let max_seen = r.u64()?;
        let call = r.u64()?;
        let answer = match r.u8()? {
            0 => None,
            1 => Some(Answer::PeersPending(r.bool()?)),
            2 => Some(Answer::TopologyUpdated(get_result(r)?)),
            3 => Some(Answer::VoteRejected(r.string(MAX_REASON)?)),
            _ => return Err(WireError::InvalidValue("joint-call answer")),
        };
        let vote = match r.u8()? {
            0 => None,
            1 => Some(VoteKind::ArePeersPending),
            2 => Some(VoteKind::UpdateTopology),
            3 => Some(VoteKind::OptimizeTopology),
            _ => return Err(WireError::InvalidValue("vote kind")),
        };
        // An op is 21 bytes (tag, epoch, seq, failure); a claim one more.
        let n = r.len(MAX_REJOIN_OPS, 21)?;
        let mut verdicts = Vec::with_capacity(n);
        for _ in 0..n {
            let (tag, epoch, seq, failure) = get_op(r)?;
            verdicts.push(OpRecord {
                tag,
                epoch,
                seq,
                failure,
            });
        }
        let n = r.len(MAX_REJOIN_OPS, 22)?;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let (tag, epoch, seq, failure) = get_op(r)?;
            let done = match r.u8()? {
                0 if failure.is_none() => None,
                1 => Some(failure),
                _ => return Err(WireError::InvalidValue("op state")),
            };
            ops.push(OpClaim {
                tag,
                epoch,
                seq,
                done,
            });
        }
        let synced = match r.u8()? {
            0 => None,
            1 => Some((r.u64()?, r.u64()?)),
            _ => return Err(WireError::InvalidValue("last sync")),
        };
        let result = match r.u8()? {
            0 => None,
            1 => Some((r.u64()?, get_result(r)?)),
            _ => return Err(WireError::InvalidValue("last sync result")),
        };
        let refused = match r.u8()? {
            0 => None,
            1 => Some(RefusalRecord {
                round: r.u64()?,
                epoch: r.u64()?,
                kind: get_refusal(r)?,
                reason: r.string(MAX_REASON)?,
            }),
            _ => return Err(WireError::InvalidValue("last sync refusal")),
        };
        let sync = match r.u8()? {
            0 => SyncClaim::Idle,
            1 => {
                let revision = r.u64()?;
                let strategy =
                    SyncStrategy::from_u8(r.u8()?).ok_or(WireError::InvalidValue("strategy"))?;
                let tensors = get_tensors(r)?;
                SyncClaim::Reported {
                    revision,
                    strategy,
                    tensors,
                }
            }
            2 => SyncClaim::Planned {
                round: r.u64()?,
                revision: r.u64()?,
                done: match r.u8()? {
                    0 => None,
                    1 => Some(false),
                    2 => Some(true),
                    _ => return Err(WireError::InvalidValue("sync done")),
                },
            },
            _ => return Err(WireError::InvalidValue("sync state")),
        };
        Ok(Self {
            group,
            p2p_port,
            advertise_ip,
            accepted,
            topology,
            max_seen,
            call,
            answer,
            vote,
            verdicts,
            ops,
            synced,
            result,
            refused,
            sync,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::wire::ToMaster;
    use crate::wire::control::tests::{failure, tensor_report, topology};

    fn result() -> impl Strategy<Value = Result<(), String>> {
        any::<Option<String>>().prop_map(|s| s.map_or(Ok(()), Err))
    }

    fn answer() -> impl Strategy<Value = Option<Answer>> {
        prop_oneof![
            Just(None),
            any::<bool>().prop_map(|p| Some(Answer::PeersPending(p))),
            result().prop_map(|r| Some(Answer::TopologyUpdated(r))),
            ".{0,8}".prop_map(|s| Some(Answer::VoteRejected(s))),
        ]
    }

    fn sync() -> impl Strategy<Value = SyncClaim> {
        prop_oneof![
            Just(SyncClaim::Idle),
            (
                any::<u64>(),
                0u8..3,
                prop::collection::vec(tensor_report(), 0..3)
            )
                .prop_map(|(revision, s, tensors)| SyncClaim::Reported {
                    revision,
                    strategy: SyncStrategy::from_u8(s).unwrap(),
                    tensors,
                }),
            (any::<u64>(), any::<u64>(), any::<Option<bool>>()).prop_map(
                |(round, revision, done)| SyncClaim::Planned {
                    round,
                    revision,
                    done
                }
            ),
        ]
    }

    fn refused() -> impl Strategy<Value = Option<RefusalRecord>> {
        prop::option::of(
            (any::<u64>(), any::<u64>(), any::<bool>(), ".{0,8}").prop_map(
                |(round, epoch, k, reason)| RefusalRecord {
                    round,
                    epoch,
                    kind: if k {
                        SyncRefusal::InvalidUsage
                    } else {
                        SyncRefusal::NoSharedState
                    },
                    reason,
                },
            ),
        )
    }

    pub(crate) fn rejoin() -> impl Strategy<Value = Rejoin> {
        let op = || (any::<u64>(), any::<u64>(), any::<u32>(), failure());
        let claim = (op(), any::<bool>()).prop_map(|((tag, epoch, seq, f), done)| OpClaim {
            tag,
            epoch,
            seq,
            done: if done { Some(f) } else { None },
        });
        (
            (
                any::<u32>(),
                any::<u16>(),
                any::<Option<[u8; 4]>>(),
                any::<bool>(),
            ),
            topology(),
            (any::<u64>(), any::<u64>(), answer(), 0u8..4),
            prop::collection::vec(op(), 0..3),
            prop::collection::vec(claim, 0..3),
            (
                any::<Option<(u64, u64)>>(),
                any::<Option<u64>>(),
                result(),
                refused(),
                sync(),
            ),
        )
            .prop_map(
                |(
                    (group, p2p_port, ip, accepted),
                    topology,
                    (max_seen, call, answer, v),
                    verdicts,
                    ops,
                    (synced, result_round, res, refused, sync),
                )| Rejoin {
                    group,
                    p2p_port,
                    advertise_ip: ip.map(|o| IpAddr::V4(Ipv4Addr::from(o))),
                    accepted,
                    topology,
                    max_seen,
                    call,
                    answer,
                    vote: match v {
                        1 => Some(VoteKind::ArePeersPending),
                        2 => Some(VoteKind::UpdateTopology),
                        3 => Some(VoteKind::OptimizeTopology),
                        _ => None,
                    },
                    verdicts: verdicts
                        .into_iter()
                        .map(|(tag, epoch, seq, failure)| OpRecord {
                            tag,
                            epoch,
                            seq,
                            failure,
                        })
                        .collect(),
                    ops,
                    synced,
                    result: result_round.map(|r| (r, res)),
                    refused,
                    sync,
                },
            )
    }

    /// A tampered refusal kind in a claim is an error, not a default.
    #[test]
    fn a_claim_with_an_unknown_refusal_kind_is_refused() {
        let claim = Rejoin {
            refused: Some(RefusalRecord {
                round: 3,
                epoch: 5,
                kind: SyncRefusal::NoSharedState,
                reason: String::new(),
            }),
            ..Rejoin::default()
        };
        let mut buf = Vec::new();
        ToMaster::Rejoin(Box::new(claim)).encode(&mut buf);
        // The kind byte sits before the empty reason (u32 length) and the sync state byte.
        let at = buf.len() - 1 - 4 - 1;
        assert_eq!(buf[at], SyncRefusal::NoSharedState as u8);
        buf[at] = 7;
        assert_eq!(
            ToMaster::decode(&buf),
            Err(WireError::InvalidValue("refusal kind"))
        );
    }

    #[test]
    fn forged_op_count_is_bounded() {
        // A rejoin claiming 2^32-1 verdicts in a short frame fails before allocating.
        let mut buf = Vec::new();
        ToMaster::Rejoin(Box::default()).encode(&mut buf);
        // type, group, port, ip tag, accepted, empty topology (8), max_seen, call, answer,
        // vote: the verdict count follows.
        let at = 1 + 4 + 2 + 1 + 1 + 8 + 8 + 8 + 1 + 1;
        buf[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ToMaster::decode(&buf),
            Err(WireError::LengthTooLarge { .. })
        ));
    }
}
