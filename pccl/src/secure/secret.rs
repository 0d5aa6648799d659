//! The run secret: parsed once, checked for length, and reduced at once to the 32-byte
//! Noise pre-shared key, so the raw secret never outlives the constructor and never
//! reaches a log (`Debug` prints no key material).

use std::fmt;
use std::io::Read;
use std::path::Path;

use ring::hkdf;
use zeroize::{Zeroize, Zeroizing};

/// Fewest bytes a secret may have (after trimming surrounding whitespace): 16 random bytes
/// are 128 bits, and a shorter string cannot hold 128 bits of entropy whatever its
/// alphabet. A hex secret needs 32 characters, a base64 one 22.
pub const MIN_SECRET_LEN: usize = 16;
/// Most bytes a secret may have; also the most a secret file is read for.
pub const MAX_SECRET_LEN: usize = 4096;

/// HKDF salt for the run secret: names the protocol and its version, so the same string
/// used as a secret elsewhere yields an unrelated key here.
const SECRET_SALT: &[u8] = b"pccl run secret v1";
/// HKDF info of the Noise pre-shared key (the only key drawn from the secret today).
const PSK_INFO: &[u8] = b"noise psk";

/// Why a run secret was refused. The messages never contain the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_LEN`] bytes after trimming whitespace.
    #[error(
        "the run secret is {len} bytes long; it needs at least {MIN_SECRET_LEN} random bytes \
         (128 bits): use e.g. 32 hex digits or 22 base64 characters"
    )]
    TooShort { len: usize },
    /// Longer than [`MAX_SECRET_LEN`] bytes: almost certainly the wrong file.
    #[error("the run secret is longer than {MAX_SECRET_LEN} bytes; is this the right file?")]
    TooLong,
    /// The secret file could not be read (the error names the path, not the content).
    #[error("cannot read the run secret file {path}: {reason}")]
    File { path: String, reason: String },
}

/// A run's shared secret, held only as the key derived from it.
///
/// Every master and peer of an authenticated run is given the same secret (a string or a
/// file's content). Surrounding ASCII whitespace is ignored, so a file ending in a newline
/// and the same string typed on a command line give the same key.
#[derive(Clone)]
pub struct RunSecret {
    psk: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for RunSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunSecret(..)")
    }
}

impl RunSecret {
    /// Checks `secret` and derives the run's Noise pre-shared key from it:
    /// `psk = HKDF-SHA256(salt = "pccl run secret v1", ikm = secret, info = "noise psk")`.
    /// HKDF-Extract turns any string with enough entropy into a uniform key.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, SecretError> {
        let secret = secret.as_ref().trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: secret.len() });
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(SecretError::TooLong);
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SECRET_SALT).extract(secret);
        let mut psk = Zeroizing::new([0u8; 32]);
        expand(&prk, &[PSK_INFO], &mut psk[..]);
        Ok(Self { psk })
    }

    /// Reads the secret from a file (at most [`MAX_SECRET_LEN`] bytes are read), as
    /// `PCCL_RUN_SECRET_FILE` and `--secret-file` name it.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let err = |reason: String| SecretError::File {
            path: path.display().to_string(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut buf = Zeroizing::new(Vec::new());
        // One byte more than allowed tells "too long" from "exactly at the limit".
        file.take(MAX_SECRET_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        Self::new(&buf[..])
    }

    /// A fresh secret for a new run: 32 random bytes (256 bits) as 64 hex digits.
    pub fn generate() -> String {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
        bytes.zeroize();
        hex
    }

    /// The Noise pre-shared key.
    pub(super) fn psk(&self) -> &[u8; 32] {
        &self.psk
    }
}

/// An HKDF output length, as ring's `KeyType` wants it.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand of `prk` with `info` into all of `out` (at most 255 hash lengths; every
/// caller asks for 32 bytes, so ring's length check cannot fail).
pub(super) fn expand(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 output of 32 bytes is within its limit");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_rules_and_trimming() {
        assert_eq!(
            RunSecret::new("short").unwrap_err(),
            SecretError::TooShort { len: 5 }
        );
        // 15 bytes plus whitespace is still too short: whitespace does not count.
        assert_eq!(
            RunSecret::new("  0123456789abcde\n").unwrap_err(),
            SecretError::TooShort { len: 15 }
        );
        assert_eq!(
            RunSecret::new(vec![b'a'; MAX_SECRET_LEN + 1]).unwrap_err(),
            SecretError::TooLong
        );
        let a = RunSecret::new("0123456789abcdef").unwrap();
        let b = RunSecret::new("0123456789abcdef\n").unwrap();
        let c = RunSecret::new("0123456789abcdeF").unwrap();
        assert_eq!(a.psk(), b.psk());
        assert_ne!(a.psk(), c.psk());
        assert_eq!(format!("{a:?}"), "RunSecret(..)");
    }

    #[test]
    fn file_and_generate() {
        let s = RunSecret::generate();
        assert_eq!(s.len(), 64);
        assert_ne!(s, RunSecret::generate());
        let dir = std::env::temp_dir().join(format!("pccl-secret-{}", std::process::id()));
        std::fs::write(&dir, format!("{s}\n")).unwrap();
        let from_file = RunSecret::from_file(&dir).unwrap();
        std::fs::write(&dir, vec![b'x'; MAX_SECRET_LEN + 10]).unwrap();
        let too_long = RunSecret::from_file(&dir).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(from_file.psk(), RunSecret::new(&s).unwrap().psk());
        assert_eq!(too_long, SecretError::TooLong);
        let missing = RunSecret::from_file(&dir).unwrap_err();
        assert!(matches!(missing, SecretError::File { .. }), "{missing}");
    }
}
