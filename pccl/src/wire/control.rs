//! Messages between a peer and the master. Every frame is `u32 length | u8 type | body`;
//! this module encodes and decodes bodies (type byte included), the framing lives in `net`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BufMut;

use super::codec::{Reader, WireError, put_bool, put_string};
use super::rejoin::Rejoin;
use super::stats::PeerSummary;
use crate::types::{DataType, PeerEntry, PeerId, SyncStrategy, Topology};

/// Largest control frame body we accept.
pub const MAX_CONTROL_FRAME: usize = 16 << 20;
/// Most peers a topology may list.
pub const MAX_PEERS: usize = 1 << 16;
/// Longest reason string.
const MAX_REASON: usize = 4096;
/// Most tensors a shared state may hold.
pub const MAX_TENSORS: usize = 1 << 16;
/// Longest tensor name.
pub const MAX_NAME: usize = 1024;

/// One tensor of a peer's shared state, as reported for the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorReport {
    pub name: String,
    pub dtype: DataType,
    pub count: u64,
    /// xxh3-128 of the tensor's bytes.
    pub hash: u128,
    pub allow_content_inequality: bool,
}

/// A tensor a peer must fetch, with the peers that hold it (the first is designated) and
/// the hash each holder reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub name: String,
    pub sources: Vec<(PeerId, u128)>,
}

/// A receiver a holder must serve in the current sync, and the tensors it may ask for:
/// indices into the holder's own `SyncReport` tensor list (docs/PROTOCOL.md §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serve {
    pub peer: PeerId,
    pub tensors: Vec<u32>,
}

/// Why the master refused a peer's part in a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SyncRefusal {
    /// Revision rule broken, layout differs, or a send-only peer lost the election.
    InvalidUsage = 1,
    /// Nobody holds a state to sync from.
    NoSharedState = 2,
}

/// Joint calls: every accepted peer asks, the master answers all at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VoteKind {
    ArePeersPending = 1,
    UpdateTopology = 2,
    OptimizeTopology = 3,
}

/// Why an op failed, as agreed by the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailReason {
    /// A participant died or left the group.
    PeerLost = 1,
    /// Participants called the op with different count, type or op.
    Mismatch = 2,
    /// A payload failed its checksum or a neighbour sent an impossible frame.
    Corrupt = 3,
}

/// Peer -> master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToMaster {
    /// Ask to join the run. `advertise_ip` None: use the address the master sees.
    Register {
        group: u32,
        p2p_port: u16,
        advertise_ip: Option<IpAddr>,
    },
    /// Liveness; the master answers with `HeartbeatAck`.
    Heartbeat,
    /// A heartbeat that also carries the peer's stats summary (docs/PROTOCOL.md §3.4);
    /// answered and timed exactly as `Heartbeat`.
    HeartbeatStats(PeerSummary),
    /// A joint call.
    Vote(VoteKind),
    /// Connections for a proposed topology are (or could not be) established.
    P2pReady { proposal: u64, ok: bool },
    /// Joint call of the group: our revision, strategy and tensor hashes.
    SyncReport {
        revision: u64,
        strategy: SyncStrategy,
        tensors: Vec<TensorReport>,
    },
    /// Our fetches for the sync finished (or failed).
    SyncDone { ok: bool },
    /// Measured throughput to each peer we were asked to test, bytes/s (0: failed).
    BandwidthReport { results: Vec<(PeerId, u64)> },
    /// This peer's part of op (tag, epoch, seq) finished; `reason` is set on failure.
    OpDone {
        tag: u64,
        epoch: u64,
        seq: u32,
        failure: Option<FailReason>,
    },
    /// Re-registration after the control connection was lost: everything this peer knows
    /// about the run, so a restarted master can rebuild it (docs/ARCHITECTURE.md §14).
    Rejoin(Box<Rejoin>),
}

/// Master -> peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromMaster {
    HeartbeatAck,
    /// Dial your ring neighbour in this topology, then answer `P2pReady`.
    Propose {
        proposal: u64,
        topology: Topology,
    },
    /// The topology in force from now on (after an accept, a death or a departure), and
    /// the id of the last joint call the master completed (a newcomer's starting point for
    /// re-registration, docs/ARCHITECTURE.md §14).
    Commit {
        topology: Topology,
        call: u64,
    },
    /// Result of joint call `call`, an `ArePeersPending` vote.
    PeersPending {
        call: u64,
        pending: bool,
    },
    /// Result of joint call `call`, an `UpdateTopology` (or `OptimizeTopology`) vote: Ok,
    /// or why it failed (retryable).
    TopologyUpdated {
        call: u64,
        result: Result<(), String>,
    },
    /// Final outcome of an op, the same for every survivor.
    OpVerdict {
        tag: u64,
        epoch: u64,
        seq: u32,
        failure: Option<FailReason>,
    },
    /// Joint call `call` could not be answered (peers asked for different things).
    VoteRejected {
        call: u64,
        reason: String,
    },
    /// The election's outcome for this peer in sync `round`: the revision to adopt, what
    /// to fetch, and (for a holder) the receivers it must serve in this sync, and nobody
    /// else.
    SyncPlan {
        round: u64,
        revision: u64,
        fetch: Vec<Fetch>,
        serve: Vec<Serve>,
    },
    /// This peer cannot take part in sync `round` (the election's number, as a plan's).
    SyncRefused {
        round: u64,
        kind: SyncRefusal,
        reason: String,
    },
    /// Final outcome of sync `round`, the same for every participant.
    SyncResult {
        round: u64,
        result: Result<(), String>,
    },
    /// Measure the throughput to these peers and report it.
    MeasureBandwidth {
        targets: Vec<PeerId>,
    },
    /// The master will not take this peer back (it runs a run this peer is not part of);
    /// the connection closes after it.
    RejoinRefused(String),
}

impl ToMaster {
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Self::Register {
                group,
                p2p_port,
                advertise_ip,
            } => {
                out.put_u8(1);
                out.put_u32_le(*group);
                out.put_u16_le(*p2p_port);
                match advertise_ip {
                    None => out.put_u8(0),
                    Some(ip) => put_ip(out, *ip),
                }
            }
            Self::Heartbeat => out.put_u8(2),
            Self::HeartbeatStats(summary) => {
                out.put_u8(9);
                summary.encode(out);
            }
            Self::Vote(kind) => {
                out.put_u8(3);
                out.put_u8(*kind as u8);
            }
            Self::P2pReady { proposal, ok } => {
                out.put_u8(4);
                out.put_u64_le(*proposal);
                put_bool(out, *ok);
            }
            Self::OpDone {
                tag,
                epoch,
                seq,
                failure,
            } => {
                out.put_u8(5);
                put_op(out, *tag, *epoch, *seq, *failure);
            }
            Self::SyncReport {
                revision,
                strategy,
                tensors,
            } => {
                out.put_u8(6);
                out.put_u64_le(*revision);
                out.put_u8(*strategy as u8);
                put_tensors(out, tensors);
            }
            Self::SyncDone { ok } => {
                out.put_u8(7);
                put_bool(out, *ok);
            }
            Self::BandwidthReport { results } => {
                out.put_u8(8);
                out.put_u32_le(results.len() as u32);
                for (peer, bps) in results {
                    out.put_slice(&peer.0);
                    out.put_u64_le(*bps);
                }
            }
            Self::Rejoin(rejoin) => {
                out.put_u8(10);
                rejoin.encode(out);
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            1 => {
                let group = r.u32()?;
                let p2p_port = r.u16()?;
                let advertise_ip = match r.u8()? {
                    0 => None,
                    t => Some(get_ip(&mut r, t)?),
                };
                Self::Register {
                    group,
                    p2p_port,
                    advertise_ip,
                }
            }
            2 => Self::Heartbeat,
            3 => Self::Vote(match r.u8()? {
                1 => VoteKind::ArePeersPending,
                2 => VoteKind::UpdateTopology,
                3 => VoteKind::OptimizeTopology,
                _ => return Err(WireError::InvalidValue("vote kind")),
            }),
            4 => Self::P2pReady {
                proposal: r.u64()?,
                ok: r.bool()?,
            },
            5 => {
                let (tag, epoch, seq, failure) = get_op(&mut r)?;
                Self::OpDone {
                    tag,
                    epoch,
                    seq,
                    failure,
                }
            }
            6 => {
                let revision = r.u64()?;
                let strategy =
                    SyncStrategy::from_u8(r.u8()?).ok_or(WireError::InvalidValue("strategy"))?;
                let tensors = get_tensors(&mut r)?;
                Self::SyncReport {
                    revision,
                    strategy,
                    tensors,
                }
            }
            7 => Self::SyncDone { ok: r.bool()? },
            8 => {
                let n = r.len(MAX_PEERS, 24)?;
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    results.push((PeerId(r.array()?), r.u64()?));
                }
                Self::BandwidthReport { results }
            }
            9 => Self::HeartbeatStats(PeerSummary::decode(&mut r)?),
            10 => Self::Rejoin(Box::new(Rejoin::decode(&mut r)?)),
            t => return Err(WireError::UnknownFrameType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl FromMaster {
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Self::HeartbeatAck => out.put_u8(1),
            Self::Propose { proposal, topology } => {
                out.put_u8(2);
                out.put_u64_le(*proposal);
                put_topology(out, topology);
            }
            Self::Commit { topology, call } => {
                out.put_u8(3);
                put_topology(out, topology);
                out.put_u64_le(*call);
            }
            Self::PeersPending { call, pending } => {
                out.put_u8(4);
                out.put_u64_le(*call);
                put_bool(out, *pending);
            }
            Self::TopologyUpdated { call, result } => {
                out.put_u8(5);
                out.put_u64_le(*call);
                put_result(out, result);
            }
            Self::OpVerdict {
                tag,
                epoch,
                seq,
                failure,
            } => {
                out.put_u8(6);
                put_op(out, *tag, *epoch, *seq, *failure);
            }
            Self::VoteRejected { call, reason } => {
                out.put_u8(7);
                out.put_u64_le(*call);
                put_string(out, reason);
            }
            Self::SyncPlan {
                round,
                revision,
                fetch,
                serve,
            } => {
                out.put_u8(8);
                out.put_u64_le(*round);
                out.put_u64_le(*revision);
                out.put_u32_le(fetch.len() as u32);
                for f in fetch {
                    put_string(out, &f.name);
                    out.put_u32_le(f.sources.len() as u32);
                    for (peer, hash) in &f.sources {
                        out.put_slice(&peer.0);
                        out.put_u128_le(*hash);
                    }
                }
                out.put_u32_le(serve.len() as u32);
                for s in serve {
                    out.put_slice(&s.peer.0);
                    out.put_u32_le(s.tensors.len() as u32);
                    for i in &s.tensors {
                        out.put_u32_le(*i);
                    }
                }
            }
            Self::SyncRefused {
                round,
                kind,
                reason,
            } => {
                out.put_u8(9);
                out.put_u64_le(*round);
                out.put_u8(*kind as u8);
                put_string(out, reason);
            }
            Self::MeasureBandwidth { targets } => {
                out.put_u8(11);
                out.put_u32_le(targets.len() as u32);
                for t in targets {
                    out.put_slice(&t.0);
                }
            }
            Self::SyncResult { round, result } => {
                out.put_u8(10);
                out.put_u64_le(*round);
                put_result(out, result);
            }
            Self::RejoinRefused(why) => {
                out.put_u8(12);
                put_string(out, why);
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            1 => Self::HeartbeatAck,
            2 => Self::Propose {
                proposal: r.u64()?,
                topology: get_topology(&mut r)?,
            },
            3 => Self::Commit {
                topology: get_topology(&mut r)?,
                call: r.u64()?,
            },
            4 => Self::PeersPending {
                call: r.u64()?,
                pending: r.bool()?,
            },
            5 => Self::TopologyUpdated {
                call: r.u64()?,
                result: get_result(&mut r)?,
            },
            6 => {
                let (tag, epoch, seq, failure) = get_op(&mut r)?;
                Self::OpVerdict {
                    tag,
                    epoch,
                    seq,
                    failure,
                }
            }
            7 => Self::VoteRejected {
                call: r.u64()?,
                reason: r.string(MAX_REASON)?,
            },
            8 => {
                let round = r.u64()?;
                let revision = r.u64()?;
                let n = r.len(MAX_TENSORS, 8)?;
                let mut fetch = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.string(MAX_NAME)?;
                    let m = r.len(MAX_PEERS, 32)?;
                    let mut sources = Vec::with_capacity(m);
                    for _ in 0..m {
                        sources.push((PeerId(r.array()?), u128::from_le_bytes(r.array()?)));
                    }
                    fetch.push(Fetch { name, sources });
                }
                let k = r.len(MAX_PEERS, 20)?;
                let mut serve = Vec::with_capacity(k);
                for _ in 0..k {
                    let peer = PeerId(r.array()?);
                    let m = r.len(MAX_TENSORS, 4)?;
                    let mut tensors = Vec::with_capacity(m);
                    for _ in 0..m {
                        tensors.push(u32::from_le_bytes(r.array()?));
                    }
                    serve.push(Serve { peer, tensors });
                }
                Self::SyncPlan {
                    round,
                    revision,
                    fetch,
                    serve,
                }
            }
            9 => Self::SyncRefused {
                round: r.u64()?,
                kind: get_refusal(&mut r)?,
                reason: r.string(MAX_REASON)?,
            },
            11 => {
                let n = r.len(MAX_PEERS, 16)?;
                let mut targets = Vec::with_capacity(n);
                for _ in 0..n {
                    targets.push(PeerId(r.array()?));
                }
                Self::MeasureBandwidth { targets }
            }
            10 => Self::SyncResult {
                round: r.u64()?,
                result: get_result(&mut r)?,
            },
            12 => Self::RejoinRefused(r.string(MAX_REASON)?),
            t => return Err(WireError::UnknownFrameType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// A `SyncReport`'s tensor list (also in `Rejoin`).
pub(super) fn put_tensors(out: &mut impl BufMut, tensors: &[TensorReport]) {
    out.put_u32_le(tensors.len() as u32);
    for t in tensors {
        put_string(out, &t.name);
        out.put_u8(t.dtype as u8);
        out.put_u64_le(t.count);
        out.put_u128_le(t.hash);
        put_bool(out, t.allow_content_inequality);
    }
}

pub(super) fn get_tensors(r: &mut Reader<'_>) -> Result<Vec<TensorReport>, WireError> {
    // name length + dtype + count + hash + flag
    let n = r.len(MAX_TENSORS, 4 + 1 + 8 + 16 + 1)?;
    let mut tensors = Vec::with_capacity(n);
    for _ in 0..n {
        tensors.push(TensorReport {
            name: r.string(MAX_NAME)?,
            dtype: DataType::from_u8(r.u8()?).ok_or(WireError::InvalidValue("data type"))?,
            count: r.u64()?,
            hash: u128::from_le_bytes(r.array()?),
            allow_content_inequality: r.bool()?,
        });
    }
    Ok(tensors)
}

pub(super) fn put_result(out: &mut impl BufMut, res: &Result<(), String>) {
    match res {
        Ok(()) => out.put_u8(0),
        Err(why) => {
            out.put_u8(1);
            put_string(out, why);
        }
    }
}

pub(super) fn get_result(r: &mut Reader<'_>) -> Result<Result<(), String>, WireError> {
    match r.u8()? {
        0 => Ok(Ok(())),
        1 => Ok(Err(r.string(MAX_REASON)?)),
        _ => Err(WireError::InvalidValue("result tag")),
    }
}

pub(super) fn get_refusal(r: &mut Reader<'_>) -> Result<SyncRefusal, WireError> {
    match r.u8()? {
        1 => Ok(SyncRefusal::InvalidUsage),
        2 => Ok(SyncRefusal::NoSharedState),
        _ => Err(WireError::InvalidValue("refusal kind")),
    }
}

pub(super) fn put_op(out: &mut impl BufMut, tag: u64, epoch: u64, seq: u32, f: Option<FailReason>) {
    out.put_u64_le(tag);
    out.put_u64_le(epoch);
    out.put_u32_le(seq);
    out.put_u8(f.map_or(0, |f| f as u8));
}

type OpKey = (u64, u64, u32, Option<FailReason>);

pub(super) fn get_op(r: &mut Reader<'_>) -> Result<OpKey, WireError> {
    let tag = r.u64()?;
    let epoch = r.u64()?;
    let seq = r.u32()?;
    let failure = match r.u8()? {
        0 => None,
        1 => Some(FailReason::PeerLost),
        2 => Some(FailReason::Mismatch),
        3 => Some(FailReason::Corrupt),
        _ => return Err(WireError::InvalidValue("failure reason")),
    };
    Ok((tag, epoch, seq, failure))
}

/// Set in a topology entry's address tag when the peer's static key follows its port.
const KEY_FLAG: u8 = 0x80;

pub(super) fn put_ip(out: &mut impl BufMut, ip: IpAddr) {
    put_ip_tagged(out, ip, 0);
}

fn put_ip_tagged(out: &mut impl BufMut, ip: IpAddr, flags: u8) {
    match ip {
        IpAddr::V4(v4) => {
            out.put_u8(4 | flags);
            out.put_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.put_u8(6 | flags);
            out.put_slice(&v6.octets());
        }
    }
}

pub(super) fn get_ip(r: &mut Reader<'_>, tag: u8) -> Result<IpAddr, WireError> {
    match tag {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
        _ => Err(WireError::InvalidValue("address family")),
    }
}

pub(super) fn put_topology(out: &mut impl BufMut, t: &Topology) {
    out.put_u32_le(t.ring.len() as u32);
    for p in &t.ring {
        out.put_slice(&p.id.0);
        out.put_u32_le(p.group);
        // A listed static key (authenticated runs) sets the address tag's high bit and
        // follows the port; without one the entry is byte-for-byte the plain one.
        let keyed = p.static_key != [0; 32];
        put_ip_tagged(out, p.p2p_addr.ip(), if keyed { KEY_FLAG } else { 0 });
        out.put_u16_le(p.p2p_addr.port());
        if keyed {
            out.put_slice(&p.static_key);
        }
    }
    out.put_u32_le(t.group_epochs.len() as u32);
    for (g, e) in &t.group_epochs {
        out.put_u32_le(*g);
        out.put_u64_le(*e);
    }
}

pub(super) fn get_topology(r: &mut Reader<'_>) -> Result<Topology, WireError> {
    // An entry is at least 16 + 4 + 1 + 4 + 2 bytes.
    let n = r.len(MAX_PEERS, 27)?;
    let mut ring = Vec::with_capacity(n);
    for _ in 0..n {
        let id = PeerId(r.array()?);
        let group = r.u32()?;
        let tag = r.u8()?;
        let ip = get_ip(r, tag & !KEY_FLAG)?;
        let port = r.u16()?;
        let static_key = if tag & KEY_FLAG != 0 {
            let k: [u8; 32] = r.array()?;
            if k == [0; 32] {
                return Err(WireError::InvalidValue("static key"));
            }
            k
        } else {
            [0; 32]
        };
        ring.push(PeerEntry {
            id,
            group,
            p2p_addr: SocketAddr::new(ip, port),
            static_key,
        });
    }
    let n = r.len(MAX_PEERS, 12)?;
    let mut group_epochs = Vec::with_capacity(n);
    for _ in 0..n {
        group_epochs.push((r.u32()?, r.u64()?));
    }
    Ok(Topology { ring, group_epochs })
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn topology() -> impl Strategy<Value = Topology> {
        let key = prop_oneof![Just([0u8; 32]), any::<[u8; 32]>()];
        let entry = (
            any::<[u8; 16]>(),
            any::<u32>(),
            any::<bool>(),
            any::<u16>(),
            key,
        )
            .prop_map(|(id, group, v6, port, static_key)| PeerEntry {
                id: PeerId(id),
                group,
                static_key,
                p2p_addr: if v6 {
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
                } else {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port)
                },
            });
        (
            prop::collection::vec(entry, 0..6),
            prop::collection::vec((any::<u32>(), any::<u64>()), 0..4),
        )
            .prop_map(|(ring, group_epochs)| Topology { ring, group_epochs })
    }

    pub(crate) fn failure() -> impl Strategy<Value = Option<FailReason>> {
        prop_oneof![
            Just(None),
            Just(Some(FailReason::PeerLost)),
            Just(Some(FailReason::Mismatch)),
            Just(Some(FailReason::Corrupt)),
        ]
    }

    pub(crate) fn tensor_report() -> impl Strategy<Value = TensorReport> {
        (
            ".{0,16}",
            0u8..12,
            any::<u64>(),
            any::<u128>(),
            any::<bool>(),
        )
            .prop_map(
                |(name, d, count, hash, allow_content_inequality)| TensorReport {
                    name,
                    dtype: DataType::from_u8(d).unwrap(),
                    count,
                    hash,
                    allow_content_inequality,
                },
            )
    }

    fn to_master() -> impl Strategy<Value = ToMaster> {
        prop_oneof![
            (any::<u32>(), any::<u16>(), any::<Option<[u8; 4]>>()).prop_map(|(g, p, ip)| {
                ToMaster::Register {
                    group: g,
                    p2p_port: p,
                    advertise_ip: ip.map(|o| IpAddr::V4(Ipv4Addr::from(o))),
                }
            }),
            Just(ToMaster::Heartbeat),
            (
                any::<[u64; 10]>(),
                proptest::collection::vec(any::<u32>(), 0..=super::super::stats::MAX_RECENT_OPS)
            )
                .prop_map(|(c, recent_op_micros)| ToMaster::HeartbeatStats(
                    PeerSummary {
                        reduces_ok: c[0],
                        reduces_failed: c[1],
                        retries: c[2],
                        tx_bytes: c[3],
                        rx_bytes: c[4],
                        syncs_ok: c[5],
                        syncs_failed: c[6],
                        sync_rx_bytes: c[7],
                        sync_tx_bytes: c[8],
                        busbw: c[9],
                        recent_op_micros,
                    }
                )),
            Just(ToMaster::Vote(VoteKind::ArePeersPending)),
            Just(ToMaster::Vote(VoteKind::UpdateTopology)),
            Just(ToMaster::Vote(VoteKind::OptimizeTopology)),
            prop::collection::vec((any::<[u8; 16]>(), any::<u64>()), 0..4).prop_map(|r| {
                ToMaster::BandwidthReport {
                    results: r.into_iter().map(|(p, b)| (PeerId(p), b)).collect(),
                }
            }),
            (any::<u64>(), any::<bool>())
                .prop_map(|(proposal, ok)| ToMaster::P2pReady { proposal, ok }),
            (
                any::<u64>(),
                0u8..3,
                prop::collection::vec(tensor_report(), 0..4)
            )
                .prop_map(|(revision, s, tensors)| ToMaster::SyncReport {
                    revision,
                    strategy: SyncStrategy::from_u8(s).unwrap(),
                    tensors
                }),
            any::<bool>().prop_map(|ok| ToMaster::SyncDone { ok }),
            crate::wire::rejoin::tests::rejoin().prop_map(|r| ToMaster::Rejoin(Box::new(r))),
            (any::<u64>(), any::<u64>(), any::<u32>(), failure()).prop_map(
                |(tag, epoch, seq, failure)| ToMaster::OpDone {
                    tag,
                    epoch,
                    seq,
                    failure
                }
            ),
        ]
    }

    fn from_master() -> impl Strategy<Value = FromMaster> {
        prop_oneof![
            Just(FromMaster::HeartbeatAck),
            (any::<u64>(), topology())
                .prop_map(|(proposal, topology)| FromMaster::Propose { proposal, topology }),
            (topology(), any::<u64>())
                .prop_map(|(topology, call)| FromMaster::Commit { topology, call }),
            (any::<u64>(), any::<bool>())
                .prop_map(|(call, pending)| FromMaster::PeersPending { call, pending }),
            (any::<u64>(), any::<Option<String>>()).prop_map(|(call, s)| {
                FromMaster::TopologyUpdated {
                    call,
                    result: s.map_or(Ok(()), Err),
                }
            }),
            (any::<u64>(), any::<u64>(), any::<u32>(), failure()).prop_map(
                |(tag, epoch, seq, failure)| FromMaster::OpVerdict {
                    tag,
                    epoch,
                    seq,
                    failure
                }
            ),
            (any::<u64>(), ".{0,20}")
                .prop_map(|(call, reason)| FromMaster::VoteRejected { call, reason }),
            ".{0,20}".prop_map(FromMaster::RejoinRefused),
            (
                any::<(u64, u64)>(),
                prop::collection::vec(
                    (
                        ".{0,12}",
                        prop::collection::vec((any::<[u8; 16]>(), any::<u128>()), 0..3)
                    ),
                    0..3
                ),
                prop::collection::vec(
                    (any::<[u8; 16]>(), prop::collection::vec(any::<u32>(), 0..4)),
                    0..3
                )
            )
                .prop_map(|((round, revision), f, s)| FromMaster::SyncPlan {
                    round,
                    revision,
                    fetch: f
                        .into_iter()
                        .map(|(name, s)| Fetch {
                            name,
                            sources: s.into_iter().map(|(p, h)| (PeerId(p), h)).collect()
                        })
                        .collect(),
                    serve: s
                        .into_iter()
                        .map(|(p, tensors)| Serve {
                            peer: PeerId(p),
                            tensors
                        })
                        .collect()
                }),
            (any::<u64>(), any::<bool>(), ".{0,12}").prop_map(|(round, k, reason)| {
                FromMaster::SyncRefused {
                    round,
                    kind: if k {
                        SyncRefusal::InvalidUsage
                    } else {
                        SyncRefusal::NoSharedState
                    },
                    reason,
                }
            }),
            (any::<u64>(), any::<Option<String>>()).prop_map(|(round, s)| {
                FromMaster::SyncResult {
                    round,
                    result: s.map_or(Ok(()), Err),
                }
            }),
            prop::collection::vec(any::<[u8; 16]>(), 0..4).prop_map(|t| {
                FromMaster::MeasureBandwidth {
                    targets: t.into_iter().map(PeerId).collect(),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn to_master_round_trips(m in to_master()) {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            prop_assert_eq!(ToMaster::decode(&buf), Ok(m));
            // Every strict prefix is rejected, never accepted or panicking.
            for cut in 0..buf.len() {
                prop_assert!(ToMaster::decode(&buf[..cut]).is_err());
            }
        }

        #[test]
        fn from_master_round_trips(m in from_master()) {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            prop_assert_eq!(FromMaster::decode(&buf), Ok(m));
            for cut in 0..buf.len() {
                prop_assert!(FromMaster::decode(&buf[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = ToMaster::decode(&bytes);
            let _ = FromMaster::decode(&bytes);
        }
    }

    #[test]
    fn forged_count_is_bounded() {
        // A commit claiming 2^32-1 peers in a 9-byte frame must fail without allocating.
        let mut buf = vec![3u8];
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        assert!(matches!(
            FromMaster::decode(&buf),
            Err(WireError::LengthTooLarge { .. })
        ));
    }
}
