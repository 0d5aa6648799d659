//! The peer's side of the control connection: one task owns the socket to the master,
//! sends heartbeats and requests, and applies what the master says (topology, verdicts,
//! joint-call answers). If the master goes away or falls silent, the task re-dials it and
//! re-registers (`reconnect`, docs/ARCHITECTURE.md §14); calls fail only when that runs
//! out of time or the master refuses us.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::Shared;
use super::reconnect::{self, Memory};
use crate::collectives::registry::OpKey;
use crate::error::Error;
use crate::net;
use crate::shared_state::Plan;
use crate::types::{PeerId, Topology};
use crate::wire::{Answer, FailReason, FromMaster, SyncRefusal, ToMaster, VoteKind};

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

/// How a session on one control connection ended.
enum Ended {
    /// The communicator is closing.
    Closed(Error),
    /// The connection failed; a new master may be reached at the same address.
    Lost(String),
    /// The master will not take us back: the run goes on without us.
    Refused(String),
}

/// Runs the control connection until the master is lost for good or `stop` is set. A
/// lost connection is re-dialled for up to `master_reconnect_timeout`, and the peer
/// re-registers with whatever master answers (docs/ARCHITECTURE.md §14); meanwhile calls
/// that need the master wait.
pub(crate) async fn run(
    stream: TcpStream,
    keys: net::sealed::Keys,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    accepted: Option<oneshot::Sender<Result<(), Error>>>,
    mut stop: watch::Receiver<bool>,
    memory: Memory,
) {
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (bw_tx, mut bw_reports) = mpsc::unbounded_channel();
    let mut st = Control {
        shared: shared.clone(),
        accepted,
        vote: None,
        sync_plan: None,
        sync_result: None,
        ready_tx,
        bw_tx,
        memory,
    };
    let mut conn = (stream, keys);
    let failure = loop {
        let ended = session(
            &mut st,
            conn,
            &mut cmds,
            &mut ready,
            &mut bw_reports,
            &mut stop,
        )
        .await;
        let why = match ended {
            Ended::Closed(e) => break e,
            Ended::Refused(why) => {
                tracing::error!(%why, "the master refused to take this peer back");
                break Error::MasterConnectionFailed(format!(
                    "the master refused to take this peer back: {why}"
                ));
            }
            // A runtime shutting down for `close` ends the reader before this task sees
            // the stop: that is a close, not a lost master.
            Ended::Lost(_) if *stop.borrow() => break closed(),
            Ended::Lost(why) => why,
        };
        let limit = shared.config.master_reconnect_timeout;
        if limit.is_zero() {
            break Error::MasterConnectionFailed(why);
        }
        // A proposal dies with the master that made it.
        shared.gate.abandon_proposal();
        tracing::warn!(
            master = %shared.config.master,
            reason = %why,
            "lost the master; re-dialling it for up to {limit:?} (ops and transfers between peers go on)"
        );
        match redial(&mut st, &mut cmds, &mut stop, limit).await {
            Ok(c) => conn = c,
            Err(e) => break e,
        }
    };
    tracing::info!(error = %failure, "control connection ended");
    st.end(failure);
}

/// One control connection, until it ends.
async fn session(
    st: &mut Control,
    (stream, keys): (TcpStream, net::sealed::Keys),
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    ready: &mut mpsc::UnboundedReceiver<(u64, bool)>,
    bw_reports: &mut mpsc::UnboundedReceiver<Vec<(PeerId, u64)>>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let shared = st.shared.clone();
    let (rd, mut wr) = stream.into_split();
    let (mut send, recv) = match keys {
        Some(k) => (Some(k.send), Some(k.recv)),
        None => (None, None),
    };
    let (reader, mut msgs) = spawn_reader(rd, recv);
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat_interval);
    let mut last_heard = Instant::now();
    let ended = loop {
        let out = tokio::select! {
            _ = net::stopped(stop) => break Ended::Closed(closed()),
            cmd = cmds.recv() => match cmd {
                None => break Ended::Closed(closed()),
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
                    Some(Ok(FromMaster::RejoinRefused(why))) => break Ended::Refused(why),
                    Some(Ok(m)) => st.on_master(m),
                    Some(Err(e)) => break Ended::Lost(e),
                    None => break Ended::Lost("reader ended".into()),
                }
                last_heard = Instant::now();
                continue;
            }
            _ = heartbeat.tick() => {
                let silent = last_heard.elapsed();
                if silent > shared.config.master_timeout {
                    break Ended::Lost(format!("no word from the master for {silent:?}"));
                }
                // The stats ride on the heartbeat: no message of their own.
                ToMaster::HeartbeatStats(shared.stats.take_summary())
            }
        };
        let write = net::write_control(&mut wr, send.as_mut(), |b| out.encode(b));
        match tokio::time::timeout(shared.config.master_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Ended::Lost(e.to_string()),
            Err(_) => break Ended::Lost("writing to the master timed out".into()),
        }
    };
    reader.abort();
    ended
}

fn closed() -> Error {
    Error::InvalidUsage("the communicator is closed".into())
}

/// Re-dials the master until one answers and takes our `Rejoin`, or `limit` runs out.
/// Requests from API calls are recorded meanwhile (they go into the `Rejoin`).
async fn redial(
    st: &mut Control,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    stop: &mut watch::Receiver<bool>,
    limit: Duration,
) -> Result<(TcpStream, net::sealed::Keys), Error> {
    let shared = st.shared.clone();
    let lost_at = Instant::now();
    let deadline = lost_at + limit;
    let gave_up = || {
        Error::MasterConnectionFailed(format!(
            "the master at {} did not come back within {limit:?}",
            shared.config.master
        ))
    };
    for attempt in 0u32.. {
        let wait =
            reconnect::retry_delay(attempt).min(deadline.saturating_duration_since(Instant::now()));
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = net::stopped(stop) => return Err(closed()),
                cmd = cmds.recv() => match cmd {
                    None => return Err(closed()),
                    Some(cmd) => { let _ = st.on_cmd(cmd); }
                },
                _ = &mut sleep => break,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(gave_up());
        }
        let dial = tokio::time::timeout(
            left,
            super::dial_master_once(&shared.config, shared.me, shared.secure.as_ref()),
        );
        tokio::pin!(dial);
        let dialled = loop {
            tokio::select! {
                _ = net::stopped(stop) => return Err(closed()),
                cmd = cmds.recv() => match cmd {
                    None => return Err(closed()),
                    Some(cmd) => { let _ = st.on_cmd(cmd); }
                },
                r = &mut dial => break r,
            }
        };
        let (mut stream, mut keys) = match dialled {
            Err(_) => return Err(gave_up()),
            // A master that refuses our secret will not change its mind.
            Ok(Err(e @ Error::AuthenticationFailed(_))) => return Err(e),
            Ok(Err(e)) => {
                tracing::debug!(attempt, error = %e, "the master is not back yet");
                continue;
            }
            Ok(Ok(c)) => c,
        };
        let rejoin = ToMaster::Rejoin(Box::new(st.memory.rejoin(&shared.registry)));
        let write = net::write_control(&mut stream, keys.as_mut().map(|k| &mut k.send), |b| {
            rejoin.encode(b)
        });
        match tokio::time::timeout(shared.config.master_timeout, write).await {
            Ok(Ok(())) => {
                tracing::warn!(
                    master = %shared.config.master,
                    after = ?lost_at.elapsed(),
                    "reached the master again and re-registered"
                );
                return Ok((stream, keys));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "re-registration failed"),
            Err(_) => tracing::debug!("re-registration timed out"),
        }
    }
    Err(gave_up())
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
    /// What a `Rejoin` tells a restarted master.
    memory: Memory,
    /// Background tasks (dialling a proposed successor, bandwidth tests) answer here.
    ready_tx: mpsc::UnboundedSender<(u64, bool)>,
    bw_tx: mpsc::UnboundedSender<Vec<(PeerId, u64)>>,
}

impl Control {
    /// A request from an API call; returns what to send the master, if anything. It is
    /// recorded in `memory` too, so that it is not lost if the master is.
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
                self.memory.vote = Some(kind);
                ToMaster::Vote(kind)
            }
            Cmd::Sync {
                report,
                plan,
                result,
            } => {
                self.sync_plan = Some(plan);
                self.sync_result = Some(result);
                self.memory.sync_reported(&report);
                report
            }
            Cmd::SyncDone(ok) => {
                self.memory.sync_done(ok);
                ToMaster::SyncDone { ok }
            }
            Cmd::OpDone(key, failure) => {
                self.memory.op_done(key, failure);
                ToMaster::OpDone {
                    tag: key.tag,
                    epoch: key.epoch,
                    seq: key.seq,
                    failure,
                }
            }
        })
    }

    /// Applies one message from the master.
    fn on_master(&mut self, msg: FromMaster) {
        let shared = &self.shared;
        match msg {
            FromMaster::HeartbeatAck => {}
            FromMaster::Propose { proposal, topology } => {
                self.memory.saw_id(proposal);
                shared.gate.propose(Arc::new(topology.clone()));
                let shared = shared.clone();
                let ready_tx = self.ready_tx.clone();
                tokio::spawn(async move {
                    let ok = dial_successor(&shared, &topology).await;
                    let _ = ready_tx.send((proposal, ok));
                });
            }
            FromMaster::Commit { topology, call } => {
                shared.p2p.retain(|id| topology.contains(id));
                shared.gate.commit(Arc::new(topology.clone()));
                let me_in = topology.contains(shared.me);
                self.memory.committed(me_in, call, &topology.group_epochs);
                tracing::debug!(world = topology.ring.len(), "topology committed");
                shared.registry.set_topology(topology);
                if let Some(a) = self.accepted.take_if(|_| me_in) {
                    let _ = a.send(Ok(()));
                }
            }
            FromMaster::PeersPending { call, pending } => {
                self.memory.answered(call, Answer::PeersPending(pending));
                reply(&mut self.vote, Ok(VoteAnswer::PeersPending(pending)))
            }
            FromMaster::TopologyUpdated { call, result } => {
                self.memory
                    .answered(call, Answer::TopologyUpdated(result.clone()));
                match result {
                    Ok(()) => reply(&mut self.vote, Ok(VoteAnswer::TopologyUpdated)),
                    Err(why) => {
                        shared.gate.abandon_proposal();
                        reply(&mut self.vote, Err(Error::UpdateTopologyFailed(why)))
                    }
                }
            }
            FromMaster::VoteRejected { call, reason } => {
                self.memory
                    .answered(call, Answer::VoteRejected(reason.clone()));
                reply(&mut self.vote, Err(Error::InvalidUsage(reason)))
            }
            // Handled by the session (it ends it).
            FromMaster::RejoinRefused(_) => {}
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
                round,
                revision,
                fetch,
                serve,
            } => {
                self.memory.saw_id(round);
                self.memory.sync_planned(round, revision);
                if let Some(p) = self.sync_plan.take() {
                    let _ = p.send(Ok(Plan {
                        revision,
                        fetch,
                        serve,
                    }));
                }
            }
            FromMaster::SyncRefused {
                round,
                kind,
                reason,
            } => {
                self.memory.sync_refused(round, kind, &reason);
                let err = match kind {
                    SyncRefusal::InvalidUsage => Error::InvalidUsage(reason),
                    SyncRefusal::NoSharedState => Error::NoSharedStateAvailable(reason),
                };
                if let Some(p) = self.sync_plan.take() {
                    let _ = p.send(Err(err));
                }
                self.sync_result = None;
            }
            FromMaster::SyncResult { round, result } => {
                self.memory.sync_ended(round, result.clone());
                if let Some(p) = self.sync_plan.take() {
                    // A restarted master failed a sync whose plan we never got: the same
                    // error as every participant's (`shared_state::sync`).
                    let why = result.err().unwrap_or_else(|| "no plan arrived".into());
                    let _ = p.send(Err(Error::RankConnectionLost {
                        tag: 0,
                        reason: format!("shared-state sync failed: {why}"),
                    }));
                    self.sync_result = None;
                } else if let Some(r) = self.sync_result.take() {
                    let _ = r.send(result);
                }
            }
            FromMaster::OpVerdict {
                tag,
                epoch,
                seq,
                failure,
            } => {
                let key = OpKey { tag, epoch, seq };
                self.memory.verdict(key, failure);
                shared.registry.verdict(key, failure);
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
