//! Moves handshake messages over a byte stream: each one a `u16` little-endian length and
//! that many bytes. Thin on purpose: the whole handshake runs under one deadline, a length
//! over [`MAX_MESSAGE_LEN`] is refused before anything more is read, and every message
//! lands in one fixed stack buffer, so a stranger costs bounded time and no allocation.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::handshake::{Handshake, HandshakeError, MAX_MESSAGE_LEN, Session};

/// Upper bound on messages per handshake (the patterns have three); bounds the loop even
/// if the state machine misbehaved.
const MAX_MESSAGES: usize = 3;

/// Runs `hs` to completion over `stream` within `deadline`.
pub async fn handshake<S>(
    stream: &mut S,
    hs: Handshake,
    deadline: Duration,
) -> Result<Session, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(deadline, drive(stream, hs))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

async fn drive<S>(stream: &mut S, mut hs: Handshake) -> Result<Session, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    for _ in 0..MAX_MESSAGES {
        if hs.is_finished() {
            break;
        }
        if hs.is_my_turn() {
            let n = hs.write_message(&mut buf)?;
            let len = u16::try_from(n).expect("MAX_MESSAGE_LEN fits a u16");
            stream.write_all(&len.to_le_bytes()).await?;
            stream.write_all(&buf[..n]).await?;
            stream.flush().await?;
            if let Some(e) = hs.pending_error() {
                return Err(e);
            }
        } else {
            let mut len = [0u8; 2];
            read_exact(stream, &mut len).await?;
            let len = u16::from_le_bytes(len) as usize;
            if len == 0 || len > MAX_MESSAGE_LEN {
                return Err(HandshakeError::Malformed("message length out of range"));
            }
            read_exact(stream, &mut buf[..len]).await?;
            hs.read_message(&buf[..len])?;
        }
    }
    hs.finish()
}

/// `read_exact`, with an end of stream reported as [`HandshakeError::Closed`].
async fn read_exact<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<(), HandshakeError> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HandshakeError::Closed),
        Err(e) => Err(e.into()),
    }
}
