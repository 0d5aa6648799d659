//! The peer's side of the control connection: one task owns the socket to the master,
//! sends heartbeats and requests, and applies what the master says (topology, verdicts,
//! joint-call answers). If the master goes away or falls silent, every call fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::Shared;
use super::ops::OpKey;
use crate::error::Error;
use crate::net;
use crate::shared_state::Plan;
use crate::types::Topology;
use crate::wire::{FailReason, FromMaster, SyncRefusal, ToMaster, VoteKind};

/// The answer to a joint call.
#[derive(Debug)]
pub(crate) enum VoteAnswer {
    PeersPending(bool),
    TopologyUpdated,
}

/// Requests from API calls to the control task.
#[derive(Debug)]
pub(crate) enum Cmd {
    Vote(VoteKind, oneshot::Sender<Result<VoteAnswer, Error>>),
    OpDone(OpKey, Option<FailReason>),
    /// Report for a shared-state sync, with where to deliver the plan and the result.
    Sync {
        report: ToMaster,
        plan: oneshot::Sender<Result<Plan, Error>>,
        result: oneshot::Sender<Result<(), String>>,
    },
    SyncDone(bool),
}

/// Runs the control connection until the master is lost or `stop` is set.
pub(crate) async fn run(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut accepted: Option<oneshot::Sender<Result<(), Error>>>,
    mut stop: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (msg_tx, mut msgs) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let res = match net::read_control(&mut rd).await {
                Ok(Some(body)) => FromMaster::decode(&body).map_err(|e| e.to_string()),
                Ok(None) => Err("the master closed the connection".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let end = res.is_err();
            if msg_tx.send(res).is_err() || end {
                return;
            }
        }
    });
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<(u64, bool)>();
    let (bw_tx, mut bw_reports) = mpsc::unbounded_channel::<Vec<(crate::types::PeerId, u64)>>();
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat_interval);
    let mut last_heard = Instant::now();
    let mut vote: Option<oneshot::Sender<Result<VoteAnswer, Error>>> = None;
    let mut sync_plan: Option<oneshot::Sender<Result<Plan, Error>>> = None;
    let mut sync_result: Option<oneshot::Sender<Result<(), String>>> = None;

    let failure = loop {
        let out = tokio::select! {
            _ = net::stopped(&mut stop) => break Error::InvalidUsage("the communicator is closed".into()),
            cmd = cmds.recv() => match cmd {
                None => break Error::InvalidUsage("the communicator is closed".into()),
                Some(Cmd::Vote(kind, reply)) => {
                    if vote.is_some() {
                        let _ = reply.send(Err(Error::InvalidUsage("a joint call is already running".into())));
                        continue;
                    }
                    vote = Some(reply);
                    ToMaster::Vote(kind)
                }
                Some(Cmd::Sync { report, plan, result }) => {
                    sync_plan = Some(plan);
                    sync_result = Some(result);
                    report
                }
                Some(Cmd::SyncDone(ok)) => ToMaster::SyncDone { ok },
                Some(Cmd::OpDone(key, failure)) => ToMaster::OpDone {
                    tag: key.tag, epoch: key.epoch, seq: key.seq, failure,
                },
            },
            Some((proposal, ok)) = ready.recv() => ToMaster::P2pReady { proposal, ok },
            Some(results) = bw_reports.recv() => ToMaster::BandwidthReport { results },
            msg = msgs.recv() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => break Error::MasterConnectionFailed(e),
                    None => break Error::MasterConnectionFailed("reader ended".into()),
                };
                last_heard = Instant::now();
                match msg {
                    FromMaster::HeartbeatAck => {}
                    FromMaster::Propose { proposal, topology } => {
                        let shared = shared.clone();
                        let ready_tx = ready_tx.clone();
                        tokio::spawn(async move {
                            let ok = dial_successor(&shared, &topology).await;
                            let _ = ready_tx.send((proposal, ok));
                        });
                    }
                    FromMaster::Commit { topology } => {
                        shared.p2p.retain(|id| topology.contains(id));
                        let me_in = topology.contains(shared.me);
                        tracing::debug!(world = topology.ring.len(), "topology committed");
                        shared.registry.set_topology(topology);
                        if let Some(a) = accepted.take_if(|_| me_in) {
                            let _ = a.send(Ok(()));
                        }
                    }
                    FromMaster::PeersPending(p) => reply(&mut vote, Ok(VoteAnswer::PeersPending(p))),
                    FromMaster::TopologyUpdated(Ok(())) => reply(&mut vote, Ok(VoteAnswer::TopologyUpdated)),
                    FromMaster::TopologyUpdated(Err(why)) => reply(&mut vote, Err(Error::UpdateTopologyFailed(why))),
                    FromMaster::VoteRejected(why) => reply(&mut vote, Err(Error::InvalidUsage(why))),
                    FromMaster::MeasureBandwidth { targets } => {
                        let shared = shared.clone();
                        let bw_tx = bw_tx.clone();
                        tokio::spawn(async move {
                            let topology = shared.registry.topology();
                            let mut results = Vec::with_capacity(targets.len());
                            // One at a time, so tests of one peer do not share its uplink.
                            for t in targets {
                                let bps = match topology.ring.iter().find(|p| p.id == t) {
                                    Some(entry) => crate::topology::bandwidth::measure(shared.me, entry).await,
                                    None => 0,
                                };
                                results.push((t, bps));
                            }
                            let _ = bw_tx.send(results);
                        });
                    }
                    FromMaster::SyncPlan { revision, fetch } => {
                        if let Some(p) = sync_plan.take() {
                            let _ = p.send(Ok(Plan { revision, fetch }));
                        }
                    }
                    FromMaster::SyncRefused { kind, reason } => {
                        let err = match kind {
                            SyncRefusal::InvalidUsage => Error::InvalidUsage(reason),
                            SyncRefusal::NoSharedState => Error::NoSharedStateAvailable(reason),
                        };
                        if let Some(p) = sync_plan.take() {
                            let _ = p.send(Err(err));
                        }
                        sync_result = None;
                    }
                    FromMaster::SyncResult(res) => {
                        if let Some(r) = sync_result.take() {
                            let _ = r.send(res);
                        }
                    }
                    FromMaster::OpVerdict { tag, epoch, seq, failure } => {
                        shared.registry.verdict(OpKey { tag, epoch, seq }, failure);
                    }
                }
                continue;
            }
            _ = heartbeat.tick() => {
                let silent = last_heard.elapsed();
                if silent > shared.config.master_timeout {
                    break Error::MasterConnectionFailed(format!("no word from the master for {silent:?}"));
                }
                ToMaster::Heartbeat
            }
        };
        let write = net::write_control(&mut wr, |b| out.encode(b));
        match tokio::time::timeout(shared.config.master_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Error::MasterConnectionFailed(e.to_string()),
            Err(_) => {
                break Error::MasterConnectionFailed("writing to the master timed out".into());
            }
        }
    };
    tracing::info!(error = %failure, "control connection ended");
    reader.abort();
    shared.registry.fail_all(failure.clone());
    if let Some(v) = vote.take() {
        let _ = v.send(Err(failure.clone()));
    }
    if let Some(a) = accepted.take() {
        let _ = a.send(Err(failure));
    }
}

fn reply(
    vote: &mut Option<oneshot::Sender<Result<VoteAnswer, Error>>>,
    answer: Result<VoteAnswer, Error>,
) {
    match vote.take() {
        Some(v) => {
            let _ = v.send(answer);
        }
        None => tracing::warn!("the master answered a joint call we did not make"),
    }
}

/// Opens the pool to our successor in a proposed topology; true when it is ready.
async fn dial_successor(shared: &Shared, topology: &Topology) -> bool {
    let ring = topology.group_ring(shared.config.peer_group);
    let Some(pos) = ring.iter().position(|p| p.id == shared.me) else {
        return false;
    };
    if ring.len() < 2 {
        return true;
    }
    let next = ring[(pos + 1) % ring.len()];
    match shared.p2p.pool(next).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to the ring successor");
            false
        }
    }
}

/// Bounded exponential backoff for the first connection to the master.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(5))
}
