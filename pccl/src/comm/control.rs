//! The peer's side of the control connection: one task owns the socket to the master,
//! sends heartbeats and requests, and applies what the master says (topology, verdicts,
//! joint-call answers). If the master goes away or falls silent, every call fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::Shared;
use crate::collectives::registry::OpKey;
use crate::error::Error;
use crate::net;
use crate::shared_state::Plan;
use crate::types::{PeerId, Topology};
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
    keys: net::sealed::Keys,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    accepted: Option<oneshot::Sender<Result<(), Error>>>,
    mut stop: watch::Receiver<bool>,
) {
    let (rd, mut wr) = stream.into_split();
    let (mut send, recv) = match keys {
        Some(k) => (Some(k.send), Some(k.recv)),
        None => (None, None),
    };
    let (reader, mut msgs) = spawn_reader(rd, recv);
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (bw_tx, mut bw_reports) = mpsc::unbounded_channel();
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat_interval);
    let mut last_heard = Instant::now();
    let mut st = Control {
        shared: shared.clone(),
        accepted,
        vote: None,
        sync_plan: None,
        sync_result: None,
        ready_tx,
        bw_tx,
    };

    let failure = loop {
        let out = tokio::select! {
            _ = net::stopped(&mut stop) => break Error::InvalidUsage("the communicator is closed".into()),
            cmd = cmds.recv() => match cmd {
                None => break Error::InvalidUsage("the communicator is closed".into()),
                Some(cmd) => match st.on_cmd(cmd) {
                    Some(out) => out,
                    None => continue,
                },
            },
            Some((proposal, ok)) = ready.recv() => ToMaster::P2pReady { proposal, ok },
            Some(results) = bw_reports.recv() => {
                shared.stats.record_links(&results);
                ToMaster::BandwidthReport { results }
            }
            msg = msgs.recv() => {
                match msg {
                    Some(Ok(m)) => st.on_master(m),
                    Some(Err(e)) => break Error::MasterConnectionFailed(e),
                    None => break Error::MasterConnectionFailed("reader ended".into()),
                }
                last_heard = Instant::now();
                continue;
            }
            _ = heartbeat.tick() => {
                let silent = last_heard.elapsed();
                if silent > shared.config.master_timeout {
                    break Error::MasterConnectionFailed(format!("no word from the master for {silent:?}"));
                }
                // The stats ride on the heartbeat: no message of their own.
                ToMaster::HeartbeatStats(shared.stats.take_summary())
            }
        };
        let write = net::write_control(&mut wr, send.as_mut(), |b| out.encode(b));
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
    st.end(failure);
}

/// Reads and decodes the master's messages on a task of its own; the first error (or
/// the master closing) is the last item.
fn spawn_reader(
    mut rd: OwnedReadHalf,
    mut key: Option<crate::secure::RecvKey>,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Result<FromMaster, String>>,
) {
    let (msg_tx, msgs) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let res = match net::read_control(&mut rd, key.as_mut()).await {
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
    (reader, msgs)
}

/// What the control task remembers between messages: who waits for which answer.
struct Control {
    shared: Arc<Shared>,
    /// `connect` waits here until a committed topology includes us.
    accepted: Option<oneshot::Sender<Result<(), Error>>>,
    /// The joint call in flight, at most one.
    vote: Option<oneshot::Sender<Result<VoteAnswer, Error>>>,
    sync_plan: Option<oneshot::Sender<Result<Plan, Error>>>,
    sync_result: Option<oneshot::Sender<Result<(), String>>>,
    /// Background tasks (dialling a proposed successor, bandwidth tests) answer here.
    ready_tx: mpsc::UnboundedSender<(u64, bool)>,
    bw_tx: mpsc::UnboundedSender<Vec<(PeerId, u64)>>,
}

impl Control {
    /// A request from an API call; returns what to send the master, if anything.
    fn on_cmd(&mut self, cmd: Cmd) -> Option<ToMaster> {
        Some(match cmd {
            Cmd::Vote(kind, reply) => {
                if self.vote.is_some() {
                    let _ = reply.send(Err(Error::InvalidUsage(
                        "a joint call is already running".into(),
                    )));
                    return None;
                }
                self.vote = Some(reply);
                ToMaster::Vote(kind)
            }
            Cmd::Sync {
                report,
                plan,
                result,
            } => {
                self.sync_plan = Some(plan);
                self.sync_result = Some(result);
                report
            }
            Cmd::SyncDone(ok) => ToMaster::SyncDone { ok },
            Cmd::OpDone(key, failure) => ToMaster::OpDone {
                tag: key.tag,
                epoch: key.epoch,
                seq: key.seq,
                failure,
            },
        })
    }

    /// Applies one message from the master.
    fn on_master(&mut self, msg: FromMaster) {
        let shared = &self.shared;
        match msg {
            FromMaster::HeartbeatAck => {}
            FromMaster::Propose { proposal, topology } => {
                shared.gate.propose(Arc::new(topology.clone()));
                let shared = shared.clone();
                let ready_tx = self.ready_tx.clone();
                tokio::spawn(async move {
                    let ok = dial_successor(&shared, &topology).await;
                    let _ = ready_tx.send((proposal, ok));
                });
            }
            FromMaster::Commit { topology } => {
                shared.p2p.retain(|id| topology.contains(id));
                shared.gate.commit(Arc::new(topology.clone()));
                let me_in = topology.contains(shared.me);
                tracing::debug!(world = topology.ring.len(), "topology committed");
                shared.registry.set_topology(topology);
                if let Some(a) = self.accepted.take_if(|_| me_in) {
                    let _ = a.send(Ok(()));
                }
            }
            FromMaster::PeersPending(p) => reply(&mut self.vote, Ok(VoteAnswer::PeersPending(p))),
            FromMaster::TopologyUpdated(Ok(())) => {
                reply(&mut self.vote, Ok(VoteAnswer::TopologyUpdated))
            }
            FromMaster::TopologyUpdated(Err(why)) => {
                shared.gate.abandon_proposal();
                reply(&mut self.vote, Err(Error::UpdateTopologyFailed(why)))
            }
            FromMaster::VoteRejected(why) => reply(&mut self.vote, Err(Error::InvalidUsage(why))),
            FromMaster::MeasureBandwidth { targets } => {
                let shared = shared.clone();
                let bw_tx = self.bw_tx.clone();
                tokio::spawn(async move {
                    let topology = shared.registry.topology();
                    let mut results = Vec::with_capacity(targets.len());
                    // One at a time, so tests of one peer do not share its uplink.
                    for t in targets {
                        let bps = match topology.ring.iter().find(|p| p.id == t) {
                            Some(entry) => {
                                crate::topology::bandwidth::measure(
                                    shared.me,
                                    shared.secure.as_ref(),
                                    entry,
                                )
                                .await
                            }
                            None => 0,
                        };
                        results.push((t, bps));
                    }
                    let _ = bw_tx.send(results);
                });
            }
            FromMaster::SyncPlan {
                revision,
                fetch,
                serve,
            } => {
                if let Some(p) = self.sync_plan.take() {
                    let _ = p.send(Ok(Plan {
                        revision,
                        fetch,
                        serve,
                    }));
                }
            }
            FromMaster::SyncRefused { kind, reason } => {
                let err = match kind {
                    SyncRefusal::InvalidUsage => Error::InvalidUsage(reason),
                    SyncRefusal::NoSharedState => Error::NoSharedStateAvailable(reason),
                };
                if let Some(p) = self.sync_plan.take() {
                    let _ = p.send(Err(err));
                }
                self.sync_result = None;
            }
            FromMaster::SyncResult(res) => {
                if let Some(r) = self.sync_result.take() {
                    let _ = r.send(res);
                }
            }
            FromMaster::OpVerdict {
                tag,
                epoch,
                seq,
                failure,
            } => {
                shared.registry.verdict(OpKey { tag, epoch, seq }, failure);
            }
        }
    }

    /// The connection is gone: every op and every waiting call fails with `failure`.
    fn end(mut self, failure: Error) {
        self.shared.registry.fail_all(failure.clone());
        if let Some(v) = self.vote.take() {
            let _ = v.send(Err(failure.clone()));
        }
        if let Some(a) = self.accepted.take() {
            let _ = a.send(Err(failure));
        }
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
