//! Length-prefixed control frames over async streams.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ConnectionError;
use crate::wire::check_control_len;

/// Reads one control frame body. `Ok(None)` is a clean close between frames; a close in
/// the middle of a frame is an error. The length is checked before the body is allocated.
pub(crate) async fn read_control<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, ConnectionError> {
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

/// Writes one control frame: the body produced by `encode`, behind its length.
pub(crate) async fn write_control<W: AsyncWrite + Unpin>(
    w: &mut W,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<(), ConnectionError> {
    let mut buf = vec![0u8; 4];
    encode(&mut buf);
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&buf).await?;
    Ok(())
}
