//! Length-prefixed control frames over async streams, plain or sealed (docs/PROTOCOL.md
//! §1.3): sealed, the 4-byte length is the frame's header and is checked against its tag
//! before it sizes anything.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ConnectionError;
use super::sealed;
use crate::secure::{RecvKey, SendKey, TAG_LEN};
use crate::wire::check_control_len;

/// Reads one control frame body. `Ok(None)` is a clean close between frames; a close in
/// the middle of a frame is an error. The length is checked (and, with `key`, its tag)
/// before the body is allocated.
pub(crate) async fn read_control<R: AsyncRead + Unpin>(
    r: &mut R,
    key: Option<&mut RecvKey>,
) -> Result<Option<Vec<u8>>, ConnectionError> {
    if let Some(key) = key {
        let mut len = [0u8; 4];
        if !sealed::read_header(r, key, &mut len).await? {
            return Ok(None);
        }
        let len = check_control_len(u32::from_le_bytes(len))?;
        let mut body = vec![0u8; len];
        sealed::read_body(r, key, &mut body).await?;
        return Ok(Some(body));
    }
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ConnectionError::Closed)
            };
        }
        got += n;
    }
    let len = check_control_len(u32::from_le_bytes(len))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ConnectionError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(Some(body))
}

/// Writes one control frame: the body produced by `encode`, behind its length; with
/// `key`, sealed (`length ‖ tag ‖ body ‖ tag`), in one buffer and one write.
pub(crate) async fn write_control<W: AsyncWrite + Unpin>(
    w: &mut W,
    key: Option<&mut SendKey>,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<(), ConnectionError> {
    let pre = if key.is_some() { 4 + TAG_LEN } else { 4 };
    let mut buf = vec![0u8; pre];
    encode(&mut buf);
    let len = ((buf.len() - pre) as u32).to_le_bytes();
    buf[..4].copy_from_slice(&len);
    if let Some(key) = key {
        let tags = key
            .seal(&len, &mut buf[pre..])
            .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
        buf[4..pre].copy_from_slice(&tags.header);
        buf.extend_from_slice(&tags.body);
    }
    w.write_all(&buf).await?;
    Ok(())
}
