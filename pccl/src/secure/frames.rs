//! Frame protection after the handshake: an AEAD under a per-connection, per-direction
//! key, with a frame counter in the nonce.
//!
//! A frame is a `header` (small, always readable: the receiver routes on it) and a `body`
//! (up to several MiB, sealed in place, never copied here). Frame `n` of a direction is
//! sealed with two AEAD calls under that direction's key:
//!
//! - header: nonce `(0, n)`, associated data = header, no plaintext. The receiver checks
//!   this tag before it trusts anything in the header (the body length above all), so a
//!   forged header cannot make it read or allocate anything.
//! - body, [`Protection::Authenticate`]: nonce `(1, n)`, associated data = body, no
//!   plaintext; the body goes out as it is and needs no write access. This is the AEAD's
//!   standard authentication-only use.
//! - body, [`Protection::Encrypt`]: nonce `(1, n)`, plaintext = body, encrypted in place.
//!
//! Both modes use AES-256-GCM from AWS-LC (`aws-lc-rs`; FIPS-validated, maintained by
//! AWS), whose AES-NI/VAES and (V)PCLMULQDQ code runs at ~25 GB/s for GMAC (associated
//! data only) and ~10 GB/s encrypting on one core here (`benches/benches/secure.rs`).
//! `ring` hashes GCM's associated data one 16-byte block per call (~1.5 GB/s) and its
//! ChaCha20-Poly1305 takes it at ~2 GB/s, which made authenticate-only mode cost 40–50 %
//! of a ring's bus bandwidth (BENCHMARKS.md). The two modes derive different keys
//! (`Protection::key_label`).
//!
//! On the wire: `header ‖ header tag ‖ body ‖ body tag` ([`FRAME_OVERHEAD`] bytes more than
//! today). The receiver expects exactly the next `n`: a replayed, reordered, dropped or
//! injected frame is sealed under another nonce and fails, and so does a body moved to
//! another frame (another `n`), another connection (another key) or the other direction
//! (the two directions have different keys). Header and body take separate tags rather
//! than one over `header ‖ body` so that neither side has to place them in one buffer,
//! and so that the header is checked before the body is read.
//!
//! Any failure breaks the receiving key for good: the connection must be closed, and a
//! broken key answers every later call with an error, so it cannot be probed further.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Bytes in one tag.
pub const TAG_LEN: usize = 16;
/// Bytes a protected frame adds to the plain one: the header's tag and the body's.
pub const FRAME_OVERHEAD: usize = 2 * TAG_LEN;

/// An authentication tag as it travels.
pub type Tag = [u8; TAG_LEN];

/// What the frame keys do to a body. Agreed in the handshake: both sides must ask for the
/// same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Every byte authenticated; bodies travel in the clear.
    Authenticate,
    /// Every byte authenticated; bodies encrypted too.
    Encrypt,
}

impl Protection {
    pub(super) fn to_byte(self) -> u8 {
        match self {
            Self::Authenticate => 0,
            Self::Encrypt => 1,
        }
    }

    pub(super) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Authenticate),
            1 => Some(Self::Encrypt),
            _ => None,
        }
    }

    /// Names the AEAD in the frame keys' derivation, so the two modes never share a key.
    pub(super) fn key_label(self) -> &'static str {
        match self {
            Self::Authenticate => "aes-256-gmac",
            Self::Encrypt => "aes-256-gcm",
        }
    }
}

/// The two tags of a sealed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameTags {
    /// Sent right after the header.
    pub header: Tag,
    /// Sent right after the body.
    pub body: Tag,
}

/// Why a frame could not be sealed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// [`SendKey::seal_shared`] on an encrypting key: the body must be writable.
    #[error("this connection encrypts: the frame body must be sealed in place")]
    NeedsMutableBody,
    /// 2^64 frames were sealed under this key (unreachable in practice; never wraps).
    #[error("the frame counter of this connection is exhausted")]
    Exhausted,
}

/// Why a received frame was refused. Every variant means: close the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The tag did not verify: the frame was altered, replayed, reordered, injected, or
    /// comes from another connection or direction.
    #[error("frame authentication failed (tampered, replayed, reordered or injected)")]
    BadTag,
    /// `open_header` and `open_body` were not called alternately.
    #[error("frame opened out of order: {0}")]
    OutOfOrder(&'static str),
    /// An earlier frame failed on this connection; nothing more is accepted.
    #[error("an earlier frame failed authentication on this connection")]
    Broken,
}

/// Nonce of part `part` (0: header, 1: body) of frame `n`: 4 bytes part, 8 bytes counter,
/// little-endian.
fn nonce(n: u64, part: u32) -> Nonce {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&part.to_le_bytes());
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes 32-byte keys"))
}

/// Seals the frames of one direction of one connection, in the order they are written.
pub struct SendKey {
    key: LessSafeKey,
    next: u64,
    mode: Protection,
}

impl fmt::Debug for SendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendKey")
            .field("next", &self.next)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl SendKey {
    pub(super) fn new(key: &[u8; 32], mode: Protection) -> Self {
        Self {
            key: aead_key(key),
            next: 0,
            mode,
        }
    }

    /// Whether bodies are encrypted.
    pub fn protection(&self) -> Protection {
        self.mode
    }

    /// Seals the next frame. With [`Protection::Encrypt`] the body is encrypted in place;
    /// otherwise it is left as it is. Frames must be written in the order they are sealed.
    pub fn seal(&mut self, header: &[u8], body: &mut [u8]) -> Result<FrameTags, SealError> {
        let n = self.take()?;
        let header = self.header_tag(n, header);
        let body = match self.mode {
            Protection::Authenticate => self.gmac(n, body),
            Protection::Encrypt => self
                .key
                .seal_in_place_separate_tag(nonce(n, 1), Aad::empty(), body)
                .expect("a frame body is far below the AEAD's length limit"),
        };
        Ok(FrameTags {
            header,
            body: tag(body),
        })
    }

    /// Seals the next frame of an authenticate-only connection without write access to
    /// the body (a shared, immutable payload buffer). Refused when the key encrypts.
    pub fn seal_shared(&mut self, header: &[u8], body: &[u8]) -> Result<FrameTags, SealError> {
        if self.mode == Protection::Encrypt {
            return Err(SealError::NeedsMutableBody);
        }
        let n = self.take()?;
        Ok(FrameTags {
            header: self.header_tag(n, header),
            body: tag(self.gmac(n, body)),
        })
    }

    fn take(&mut self) -> Result<u64, SealError> {
        let n = self.next;
        self.next = n.checked_add(1).ok_or(SealError::Exhausted)?;
        Ok(n)
    }

    fn header_tag(&self, n: u64, header: &[u8]) -> Tag {
        tag(self.gmac_part(n, 0, header))
    }

    fn gmac(&self, n: u64, body: &[u8]) -> aws_lc_rs::aead::Tag {
        self.gmac_part(n, 1, body)
    }

    fn gmac_part(&self, n: u64, part: u32, data: &[u8]) -> aws_lc_rs::aead::Tag {
        self.key
            .seal_in_place_separate_tag(nonce(n, part), Aad::from(data), &mut [])
            .expect("associated data is far below the AEAD's length limit")
    }
}

#[cfg(test)]
impl SendKey {
    /// Both ends of one direction under a fixed key, for tests elsewhere in the crate.
    pub(crate) fn pair_for_tests(mode: Protection) -> (Self, RecvKey) {
        let key = [7u8; 32];
        (Self::new(&key, mode), RecvKey::new(&key, mode))
    }
}

fn tag(t: aws_lc_rs::aead::Tag) -> Tag {
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(t.as_ref());
    out
}

/// What a [`RecvKey`] expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Header,
    Body,
    Broken,
}

/// Opens the frames of one direction of one connection, in the order they arrive.
pub struct RecvKey {
    key: LessSafeKey,
    next: u64,
    mode: Protection,
    expect: Expect,
}

impl fmt::Debug for RecvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvKey")
            .field("next", &self.next)
            .field("mode", &self.mode)
            .field("expect", &self.expect)
            .finish_non_exhaustive()
    }
}

impl RecvKey {
    pub(super) fn new(key: &[u8; 32], mode: Protection) -> Self {
        Self {
            key: aead_key(key),
            next: 0,
            mode,
            expect: Expect::Header,
        }
    }

    /// Whether bodies are encrypted.
    pub fn protection(&self) -> Protection {
        self.mode
    }

    /// Checks the header of the next frame against its tag. Only after `Ok` may anything
    /// in the header be used (to size the body read, for one).
    pub fn open_header(&mut self, header: &[u8], tag: &Tag) -> Result<(), AuthError> {
        self.ready(Expect::Header)?;
        let r = self.key.open_in_place_separate_tag(
            nonce(self.next, 0),
            Aad::from(header),
            tag,
            &mut [],
        );
        self.after(r.is_ok(), Expect::Body)
    }

    /// Checks (and, on an encrypting connection, decrypts in place) the body of the frame
    /// whose header was just opened. On `Err` the body's content is unspecified.
    pub fn open_body(&mut self, body: &mut [u8], tag: &Tag) -> Result<(), AuthError> {
        self.ready(Expect::Body)?;
        let n = nonce(self.next, 1);
        let ok = match self.mode {
            Protection::Authenticate => self
                .key
                .open_in_place_separate_tag(n, Aad::from(&*body), tag, &mut [])
                .is_ok(),
            Protection::Encrypt => self
                .key
                .open_in_place_separate_tag(n, Aad::empty(), tag, body)
                .is_ok(),
        };
        self.after(ok, Expect::Header)?;
        // The counter cannot wrap: the sender refuses to seal past u64::MAX.
        self.next = self.next.checked_add(1).ok_or(AuthError::Broken)?;
        Ok(())
    }

    fn ready(&mut self, want: Expect) -> Result<(), AuthError> {
        match self.expect {
            Expect::Broken => Err(AuthError::Broken),
            e if e == want => Ok(()),
            _ => {
                self.expect = Expect::Broken;
                Err(AuthError::OutOfOrder(match want {
                    Expect::Body => "a body before its header",
                    _ => "a header before the previous body",
                }))
            }
        }
    }

    fn after(&mut self, ok: bool, then: Expect) -> Result<(), AuthError> {
        if ok {
            self.expect = then;
            Ok(())
        } else {
            self.expect = Expect::Broken;
            Err(AuthError::BadTag)
        }
    }
}
