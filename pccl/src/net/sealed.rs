//! The run secret on the wire (SECURITY.md §6): what a side needs to take part in an
//! authenticated run ([`Secure`]), the Noise handshake that follows the hellos on every
//! connection, and sealed frames (`header ‖ tag ‖ body ‖ tag`, docs/PROTOCOL.md §1.3).
//!
//! Every read of a sealed frame checks the header's tag before it trusts anything in the
//! header (a length above all), and the body's tag before the body is used; a failure
//! breaks the connection's receive key, and the caller closes the connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::ConnectionError;
use super::parts::write_all;
use crate::secure::{
    self, Binding, Handshake, Protection, PublicKey, RecvKey, RunSecret, SendKey, Session,
    StaticKeypair, TAG_LEN, Tag,
};
use crate::types::{PeerEntry, PeerId};
use crate::wire::{ConnectionKind, Hello};
use tokio::net::TcpStream;

/// What one side of an authenticated run holds: the secret, the agreed protection, and
/// (a peer) its static key pair for this run.
#[derive(Clone, Debug)]
pub(crate) struct Secure {
    pub(crate) secret: RunSecret,
    pub(crate) mode: Protection,
    /// A peer's static key pair; `None` on the master, which has none.
    pub(crate) keypair: Option<StaticKeypair>,
}

impl Secure {
    /// The master's side: no static key.
    pub(crate) fn master(secret: RunSecret, encrypt: bool) -> Self {
        Self {
            secret,
            mode: mode(encrypt),
            keypair: None,
        }
    }

    /// A peer's side, with a fresh static key pair for this run.
    pub(crate) fn peer(secret: RunSecret, encrypt: bool) -> Result<Self, ConnectionError> {
        Ok(Self {
            secret,
            mode: mode(encrypt),
            keypair: Some(StaticKeypair::generate()?),
        })
    }

    fn keypair(&self) -> Result<&StaticKeypair, ConnectionError> {
        self.keypair
            .as_ref()
            .ok_or_else(|| ConnectionError::Handshake("no static key pair".into()))
    }
}

fn mode(encrypt: bool) -> Protection {
    if encrypt {
        Protection::Encrypt
    } else {
        Protection::Authenticate
    }
}

/// The sealing keys of one connection, `None` in plain mode.
pub(crate) type Keys = Option<Session>;

/// Dials side of the handshake, after the hellos. `responder` is the id the other side's
/// hello gave; `remote` is its listed static key (links), `None` towards the master.
pub(crate) async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sec: &Secure,
    kind: ConnectionKind,
    me: PeerId,
    responder: PeerId,
    remote: Option<[u8; 32]>,
    deadline: Duration,
) -> Result<Session, ConnectionError> {
    let binding = Binding {
        kind: kind as u8,
        initiator: me,
        responder,
    };
    let kp = sec.keypair()?;
    let hs = match remote {
        None => Handshake::control_initiator(&sec.secret, kp, &binding, sec.mode)?,
        Some(k) => Handshake::link_initiator(&sec.secret, kp, PublicKey(k), &binding, sec.mode)?,
    };
    Ok(secure::handshake(stream, hs, deadline).await?)
}

/// Accepting side of the handshake, after the hellos. `initiator` is the id the dialler's
/// hello claimed; `expected` its listed static key (links), `None` on the master.
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sec: &Secure,
    kind: ConnectionKind,
    initiator: PeerId,
    me: PeerId,
    expected: Option<[u8; 32]>,
    deadline: Duration,
) -> Result<Session, ConnectionError> {
    let binding = Binding {
        kind: kind as u8,
        initiator,
        responder: me,
    };
    let hs = match expected {
        None => Handshake::control_responder(&sec.secret, &binding, sec.mode)?,
        Some(k) => Handshake::link_responder(
            &sec.secret,
            sec.keypair()?,
            PublicKey(k),
            &binding,
            sec.mode,
        )?,
    };
    Ok(secure::handshake(stream, hs, deadline).await?)
}

/// Dials a `kind` link to `peer`'s listener: the hellos, then (in an authenticated run)
/// the link handshake, which proves that the listener holds the static key the master
/// listed for `peer` and proves ours to it. Every step is bounded by `deadline`.
pub(crate) async fn dial_link(
    peer: &PeerEntry,
    me: PeerId,
    kind: ConnectionKind,
    secure: Option<&Secure>,
    deadline: Duration,
) -> Result<(TcpStream, Keys), ConnectionError> {
    let addr = peer.p2p_addr;
    let expect = peer.id;
    let mut stream = super::connect(addr, deadline).await?;
    let hello = Hello { kind, peer: me };
    let (theirs, secured) =
        super::handshake(&mut stream, hello, secure.is_some(), deadline).await?;
    if theirs.peer != expect || theirs.kind != kind {
        return Err(ConnectionError::Handshake(format!(
            "{addr} answered as {} instead of {expect}",
            theirs.peer
        )));
    }
    let Some(sec) = secure else {
        return Ok((stream, None));
    };
    if !secured {
        return Err(ConnectionError::Handshake(format!(
            "{addr} answered without a run secret"
        )));
    }
    let keys = initiate(
        &mut stream,
        sec,
        kind,
        me,
        expect,
        Some(peer.static_key),
        deadline,
    )
    .await?;
    Ok((stream, Some(keys)))
}

/// Seals and writes one frame whose body we may change (encrypted in place when the
/// connection encrypts).
pub(crate) async fn write_frame(
    w: &mut TcpStream,
    key: &mut SendKey,
    header: &[u8],
    body: &mut [u8],
) -> Result<(), ConnectionError> {
    let tags = key.seal(header, body).map_err(seal_err)?;
    write_all(w, &[header, &tags.header, body, &tags.body]).await?;
    Ok(())
}

/// Seals and writes one frame whose body we may not change: authenticated as it is, or,
/// on an encrypting connection, encrypted in the copy `scratch`.
pub(crate) async fn write_frame_shared(
    w: &mut TcpStream,
    key: &mut SendKey,
    header: &[u8],
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), ConnectionError> {
    if key.protection() == Protection::Encrypt {
        scratch.clear();
        scratch.extend_from_slice(body);
        return write_frame(w, key, header, scratch).await;
    }
    let tags = key.seal_shared(header, body).map_err(seal_err)?;
    write_all(w, &[header, &tags.header, body, &tags.body]).await?;
    Ok(())
}

fn seal_err(e: secure::SealError) -> ConnectionError {
    ConnectionError::Handshake(e.to_string())
}

/// Reads a sealed frame's header (`header.len()` bytes) and its tag, and checks it.
/// `Ok(false)`: the connection closed cleanly before the frame's first byte.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    key: &mut RecvKey,
    header: &mut [u8],
) -> Result<bool, ConnectionError> {
    if !read_or_eof(r, header).await? {
        return Ok(false);
    }
    let mut tag: Tag = [0; TAG_LEN];
    read_all(r, &mut tag).await?;
    key.open_header(header, &tag)?;
    Ok(true)
}

/// Reads and checks (decrypts, when encrypting) the body of the frame whose header was
/// just read; `body` is exactly as long as the header says.
pub(crate) async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    key: &mut RecvKey,
    body: &mut [u8],
) -> Result<(), ConnectionError> {
    read_all(r, body).await?;
    read_tag_and_open(r, key, body).await
}

/// Reads the body's tag and opens `body`, which the caller has already read.
pub(crate) async fn read_tag_and_open<R: AsyncRead + Unpin>(
    r: &mut R,
    key: &mut RecvKey,
    body: &mut [u8],
) -> Result<(), ConnectionError> {
    let mut tag: Tag = [0; TAG_LEN];
    read_all(r, &mut tag).await?;
    key.open_body(body, &tag)?;
    Ok(())
}

/// Fills `buf`; `Ok(false)` if the stream ended before its first byte.
async fn read_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<bool, ConnectionError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(ConnectionError::Closed)
            };
        }
        got += n;
    }
    Ok(true)
}

async fn read_all<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ConnectionError> {
    r.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ConnectionError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Logs a warning when a listener without a run secret binds a non-loopback address.
pub(crate) fn warn_if_exposed(what: &str, addr: std::net::SocketAddr, secured: bool) {
    if !secured && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the {what} listens on a non-loopback address without a run secret: anyone who \
             can reach it can join the run (SECURITY.md §2, §4)"
        );
    }
}
