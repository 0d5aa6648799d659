//! The tokio driver around [`MasterState`] (docs/ARCHITECTURE.md §3): per-connection reader tasks
//! decode frames into one inbox; a single owner task feeds the state machine and writes
//! its outputs to per-connection writer queues. It only moves bytes.
//!
//! It also bounds what a stranger can hold: at most `max_unregistered` connections may be
//! accepted and not yet registered (in their hello, or between hello and `Register`);
//! the slots are shared fairly among source addresses (`net::slots`: a connection from a
//! lighter address evicts the heaviest address's oldest) and any other new connection is
//! closed at once (SECURITY.md §3). Registered peers do not count, so one address filling
//! those slots delays nobody else and never the run.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::Command;
use super::state::{ConnId, MasterState, Output, Timeouts};
use crate::net::sealed::{self, Secure};
use crate::net::slots::{Admit, FairSlots};
use crate::net::{self, ConnectionError};
use crate::secure::{RecvKey, SendKey};
use crate::types::PeerId;
use crate::wire::{ConnectionKind, FromMaster, Hello, ToMaster};

/// How long a new connection may take to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

enum Input {
    Connected {
        conn: ConnId,
        peer: PeerId,
        ip: IpAddr,
        /// The static key the peer proved (zeros in plain mode).
        static_key: [u8; 32],
        writer: mpsc::UnboundedSender<FromMaster>,
    },
    Message(ConnId, ToMaster),
    Disconnected(ConnId, String),
}

impl Input {
    fn conn(&self) -> ConnId {
        match self {
            Self::Connected { conn, .. } | Self::Message(conn, _) | Self::Disconnected(conn, _) => {
                *conn
            }
        }
    }
}

/// Bounds of the serving loop itself (the state machine's are in [`Timeouts`]).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Connections accepted but not yet registered, at most.
    pub(crate) max_unregistered: usize,
    /// Published count of those connections (for tests and operators).
    pub(crate) unregistered: Arc<AtomicUsize>,
    /// The run secret, if the run has one: every connection must prove it (SECURITY.md §6).
    pub(crate) secure: Option<Secure>,
    /// With `--http`: the observer that sees every input and output (`http::observe`).
    pub(crate) observer: Option<super::http::Shared>,
}

/// Runs the master until `command` says stop.
pub(crate) async fn serve(
    listener: TcpListener,
    timeouts: Timeouts,
    limits: Limits,
    mut command: watch::Receiver<Command>,
) {
    let master_id = PeerId::random();
    // Accepted connections that have not registered yet: each holds a slot of
    // `max_unregistered`, shared fairly among addresses (`net::slots`), until it
    // registers or goes.
    let mut unregistered: FairSlots<ConnId> = FairSlots::new(limits.max_unregistered);
    let mut refusals = net::Throttle::new(Duration::from_secs(1));
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Input>();
    let mut state = MasterState::with_timeouts(timeouts);
    let mut writers: HashMap<ConnId, mpsc::UnboundedSender<FromMaster>> = HashMap::new();
    let mut readers: HashMap<ConnId, JoinHandle<()>> = HashMap::new();
    let mut next_conn: ConnId = 0;
    // The master's start: the startup grace counts from here.
    state.handle_timeout(Instant::now().into_std());

    loop {
        let deadline = state
            .poll_timeout()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = command.changed() => match *command.borrow_and_update() {
                // A dropped sender (no owner left) stops the master too.
                _ if changed.is_err() => break,
                Command::Run => {}
                Command::Stop => break,
                Command::Crash => panic!("crash requested by a test"),
            },
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                next_conn += 1;
                let conn = next_conn;
                match unregistered.admit(conn, addr.ip()) {
                    Admit::Admitted => {}
                    Admit::Evicted(victim) => {
                        // Its address holds the most slots: it makes room for another.
                        let why = "evicted: unregistered while its address held the most slots";
                        tracing::debug!(conn = victim, why, "closing connection");
                        end_connection(victim, &mut writers, &mut readers);
                        state.handle_disconnect(victim, why);
                    }
                    Admit::Refused => {
                        // Dropping the stream closes it before anything is read or written.
                        drop(stream);
                        if let Some(n) = refusals.hit() {
                            tracing::warn!(
                                %addr,
                                refused = n,
                                limit = limits.max_unregistered,
                                "too many unregistered connections: new ones are closed at once"
                            );
                        }
                        continue;
                    }
                }
                let span = tracing::info_span!("conn", conn, %addr);
                let task = tokio::spawn(
                    connection(conn, stream, addr.ip(), master_id, limits.secure.clone(), inbox_tx.clone())
                        .instrument(span),
                );
                readers.insert(conn, task);
            }
            Some(input) = inbox.recv() => {
                if !readers.contains_key(&input.conn()) {
                    // Queued before its reader was aborted (closed or evicted): nothing
                    // of that connection is left to act on.
                    continue;
                }
                let now = Instant::now().into_std();
                if let Some(o) = &limits.observer {
                    observe_input(&mut o.lock().unwrap_or_else(|e| e.into_inner()), now, &input);
                }
                match input {
                    Input::Connected { conn, peer, ip, static_key, writer } => {
                        writers.insert(conn, writer);
                        state.handle_connect_keyed(now, conn, peer, ip, static_key);
                    }
                    Input::Message(conn, msg) => {
                        let register = matches!(msg, ToMaster::Register { .. } | ToMaster::Rejoin(_));
                        state.handle_message(now, conn, msg);
                        if register && state.is_registered(conn) {
                            unregistered.release(conn);
                        }
                    }
                    Input::Disconnected(conn, why) => {
                        writers.remove(&conn);
                        readers.remove(&conn);
                        unregistered.release(conn);
                        state.handle_disconnect(conn, &why);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // Check expiry against the clock, not only when the sleep fired: a busy inbox
        // must not postpone a heartbeat death.
        state.handle_timeout(Instant::now().into_std());
        let mut observer = limits
            .observer
            .as_ref()
            .map(|o| o.lock().unwrap_or_else(|e| e.into_inner()));
        let now = Instant::now().into_std();
        while let Some(out) = state.poll_output() {
            if let Some(o) = observer.as_mut() {
                o.on_output(now, &out);
            }
            match out {
                Output::Send(conn, msg) => {
                    if let Some(w) = writers.get(&conn) {
                        let _ = w.send(msg);
                    }
                }
                Output::Close(conn, why) => {
                    tracing::info!(conn, %why, "closing connection");
                    unregistered.release(conn);
                    end_connection(conn, &mut writers, &mut readers);
                }
            }
        }
        if let Some(o) = observer.as_mut() {
            o.after_step(now, &state);
        }
        drop(observer);
        limits
            .unregistered
            .store(unregistered.len(), Ordering::Relaxed);
    }
    for r in readers.values() {
        r.abort();
    }
}

/// Stops serving `conn`: no more writes, and its reader is aborted (whatever it had queued
/// in the inbox is dropped there, see `serve`).
fn end_connection(
    conn: ConnId,
    writers: &mut HashMap<ConnId, mpsc::UnboundedSender<FromMaster>>,
    readers: &mut HashMap<ConnId, JoinHandle<()>>,
) {
    writers.remove(&conn);
    if let Some(r) = readers.remove(&conn) {
        r.abort();
    }
}

/// Shows the observer an input before the state machine handles it.
fn observe_input(o: &mut super::http::Observer, now: std::time::Instant, input: &Input) {
    match input {
        Input::Connected { conn, peer, ip, .. } => o.on_connect(now, *conn, *peer, *ip),
        Input::Message(conn, msg) => o.on_message(now, *conn, msg),
        Input::Disconnected(conn, why) => o.on_disconnect(now, *conn, why),
    }
}

/// One peer's connection: handshake, then a writer task and a read loop.
async fn connection(
    conn: ConnId,
    mut stream: TcpStream,
    ip: IpAddr,
    master_id: PeerId,
    secure: Option<Secure>,
    inbox: mpsc::UnboundedSender<Input>,
) {
    let (peer, keys) = match handshake(&mut stream, master_id, secure.as_ref()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "rejected connection");
            // The owner forgets the connection (its task and its unregistered slot).
            let _ = inbox.send(Input::Disconnected(conn, e.to_string()));
            return;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let static_key = keys
        .as_ref()
        .and_then(|k| k.remote_static)
        .map_or([0; 32], |k| k.0);
    let (mut send, mut recv): (Option<SendKey>, Option<RecvKey>) = match keys {
        Some(k) => (Some(k.send), Some(k.recv)),
        None => (None, None),
    };
    let (wtx, mut wrx) = mpsc::unbounded_channel::<FromMaster>();
    if inbox
        .send(Input::Connected {
            conn,
            peer,
            ip,
            static_key,
            writer: wtx,
        })
        .is_err()
    {
        return;
    }
    // The writer ends when the owner drops our queue (close) or the socket fails.
    let writer = tokio::spawn(async move {
        while let Some(msg) = wrx.recv().await {
            if net::write_control(&mut wr, send.as_mut(), |b| msg.encode(b))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let why = loop {
        match net::read_control(&mut rd, recv.as_mut()).await {
            Ok(Some(body)) => match ToMaster::decode(&body) {
                Ok(msg) => {
                    if inbox.send(Input::Message(conn, msg)).is_err() {
                        break "master stopped".to_string();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable control frame");
                    break format!("protocol violation: {e}");
                }
            },
            Ok(None) => break "connection closed".to_string(),
            Err(e) => {
                if matches!(e, ConnectionError::Wire(_) | ConnectionError::Auth(_)) {
                    tracing::warn!(error = %e, "bad control frame");
                }
                break e.to_string();
            }
        }
    };
    writer.abort();
    let _ = inbox.send(Input::Disconnected(conn, why));
}

/// The hellos, then (with a run secret) the control handshake. A peer whose hello says
/// otherwise about holding a secret gets our hello, so it can tell its user which side
/// lacks one, and is closed.
async fn handshake(
    stream: &mut TcpStream,
    master_id: PeerId,
    secure: Option<&Secure>,
) -> Result<(PeerId, sealed::Keys), ConnectionError> {
    net::socket::tune(stream, net::USER_TIMEOUT)?;
    let (hello, theirs) = net::accept_hello(stream, HANDSHAKE_TIMEOUT).await?;
    if hello.kind != ConnectionKind::Control {
        return Err(ConnectionError::Handshake(format!(
            "expected a control connection, got {:?}",
            hello.kind
        )));
    }
    use tokio::io::AsyncWriteExt;
    let ours = Hello {
        kind: ConnectionKind::Control,
        peer: master_id,
    };
    let mine = secure.is_some();
    stream.write_all(&ours.encode_flagged(mine)).await?;
    if theirs != mine {
        return Err(ConnectionError::Handshake(if mine {
            "the peer has no run secret, and this master requires one".into()
        } else {
            "the peer has a run secret, and this master has none".into()
        }));
    }
    let Some(sec) = secure else {
        return Ok((hello.peer, None));
    };
    let session = sealed::respond(
        stream,
        sec,
        ConnectionKind::Control,
        hello.peer,
        master_id,
        None,
        HANDSHAKE_TIMEOUT,
    )
    .await?;
    if session.remote_static.is_none_or(|k| k.0 == [0; 32]) {
        return Err(ConnectionError::Handshake(
            "the peer proved no static key".into(),
        ));
    }
    Ok((hello.peer, Some(session)))
}
