//! The connection handshake of an authenticated run: Noise with the run's pre-shared key,
//! sans-IO (byte messages in, byte messages out; [`super::io`] moves them).
//!
//! Two patterns, both with the PSK mixed in first (`psk0`) and the initiator's static key
//! sent, encrypted, in the third message:
//!
//! - control (peer → master), `Noise_XNpsk0_25519_ChaChaPoly_BLAKE2s`: the master holds no
//!   long-term key, so the PSK alone authenticates it; the peer proves its per-run static
//!   key, which the master records and hands to the other members with the topology.
//! - link (peer → peer: ring data, shared state, bandwidth tests),
//!   `Noise_XKpsk0_25519_ChaChaPoly_BLAKE2s`: the dialler knows the listener's static key
//!   from the topology, and the listener checks that the static key the dialler proves is
//!   the one the master listed for the id it claims. A member cannot act as another
//!   member without that member's private key; a stranger cannot pass the PSK.
//!
//! Why these: `psk0` makes the first message fail its tag for anyone without the secret,
//! so a stranger costs a listener at most one DH (the link pattern's `es`) and no
//! allocation. Three messages give the listener key confirmation before it accepts: the
//! third message is encrypted under keys that depend on the listener's fresh ephemeral, so
//! a replayed first message gets an answer but never a session. The prologue binds the
//! connection kind and both claimed ids ([`Binding`]), so a handshake made for one link
//! fails on any other. The first two messages also carry each side's [`Protection`], so
//! a run that mixes encrypting and non-encrypting peers fails with a clear error on both.

use snow::params::NoiseParams;
use zeroize::Zeroizing;

use super::frames::{Protection, RecvKey, SendKey};
use super::secret::{RunSecret, expand};
use crate::types::PeerId;

const CONTROL_PATTERN: &str = "Noise_XNpsk0_25519_ChaChaPoly_BLAKE2s";
const LINK_PATTERN: &str = "Noise_XKpsk0_25519_ChaChaPoly_BLAKE2s";

/// Largest handshake message either side accepts. The largest one sent is 64 bytes (the
/// third: a 32-byte key and two 16-byte tags); anything longer is refused unread.
pub const MAX_MESSAGE_LEN: usize = 128;

/// Version of the handshake payload (first byte of the first two messages' payloads).
const PAYLOAD_VERSION: u8 = 1;

/// Start of the prologue: names the protocol, so a transcript of anything else never fits.
const PROLOGUE_LABEL: &[u8; 14] = b"pccl-secure-v1";
const PROLOGUE_LEN: usize = PROLOGUE_LABEL.len() + 1 + 16 + 16;

/// HKDF info of the frame keys: this, the AEAD's name, then the direction.
const FRAME_KEY_LABEL: &[u8] = b"pccl frames v1 ";
const INITIATOR_TO_RESPONDER: &[u8] = b" initiator to responder";
const RESPONDER_TO_INITIATOR: &[u8] = b" responder to initiator";

/// Why a handshake failed. Every variant means: close the connection, change nothing.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A message failed its authentication. The other side does not hold this run's
    /// secret, or it holds another static key than the one expected, or it meant another
    /// connection (kind or ids); by design these look the same from here.
    #[error(
        "handshake rejected: the other side does not hold this run's secret, \
         or it claims another identity or connection kind"
    )]
    Rejected,
    /// The dialler proved a static key other than the one the master issued to the id it
    /// claims: a member trying to act as another member.
    #[error("handshake rejected: the static key does not belong to the claimed peer id")]
    WrongIdentity,
    /// Both hold the secret, but one side encrypts frames and the other does not.
    #[error(
        "both sides hold the run secret but disagree on encryption (we: {ours:?}, they: {theirs:?})"
    )]
    ModeMismatch {
        ours: Protection,
        theirs: Protection,
    },
    /// A message of the wrong size or layout (a stranger, or another protocol).
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// Called out of turn, after completion or after a failure.
    #[error("handshake misused: {0}")]
    State(&'static str),
    /// The other side closed the connection mid-handshake: it may hold another run secret
    /// (or none), or it refused our identity.
    #[error(
        "the other side closed the connection during the handshake \
         (does it hold the same run secret?)"
    )]
    Closed,
    /// The handshake did not complete within its deadline.
    #[error("handshake timed out")]
    Timeout,
    /// A socket error while moving handshake messages.
    #[error("i/o during the handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The local crypto provider failed (no randomness).
    #[error("local crypto failure: {0}")]
    Crypto(String),
}

/// A Curve25519 public key, as the master lists it for each member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// A peer's static key pair for one run: generated at start, never stored. Only its public
/// half leaves the process (in the control handshake, then the master's topology).
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// A fresh key pair from the OS's randomness.
    pub fn generate() -> Result<Self, HandshakeError> {
        let kp = snow::Builder::new(params(LINK_PATTERN))
            .generate_keypair()
            .map_err(|e| HandshakeError::Crypto(e.to_string()))?;
        let (Ok(private), Ok(public)) = (
            <[u8; 32]>::try_from(&kp.private[..]),
            <[u8; 32]>::try_from(&kp.public[..]),
        ) else {
            return Err(HandshakeError::Crypto("X25519 keys are 32 bytes".into()));
        };
        Ok(Self {
            private: Zeroizing::new(private),
            public: PublicKey(public),
        })
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }
}

/// What a connection is for, as both ends must agree: bound into the handshake's
/// prologue, so a mismatch fails it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The connection kind byte of the hello (`wire::ConnectionKind as u8`).
    pub kind: u8,
    /// The dialler's claimed id (its hello).
    pub initiator: PeerId,
    /// The listener's id (its hello; the master's own id on a control connection).
    pub responder: PeerId,
}

impl Binding {
    fn prologue(&self) -> [u8; PROLOGUE_LEN] {
        let mut p = [0u8; PROLOGUE_LEN];
        let (label, rest) = p.split_at_mut(PROLOGUE_LABEL.len());
        label.copy_from_slice(PROLOGUE_LABEL);
        rest[0] = self.kind;
        rest[1..17].copy_from_slice(&self.initiator.0);
        rest[17..].copy_from_slice(&self.responder.0);
        p
    }
}

/// The keys of an established connection.
#[derive(Debug)]
pub struct Session {
    /// Seals what we send.
    pub send: SendKey,
    /// Opens what we receive.
    pub recv: RecvKey,
    /// The static key the other side proved: on the master, the key to list for this
    /// peer; on a link, the expected one (already checked). `None` for a dialler of the
    /// master, which has no static key.
    pub remote_static: Option<PublicKey>,
}

/// The static keys a side starts with: its own pair, the other side's public key (link
/// dialler), the key the other side must prove (link listener).
struct Keys<'a> {
    local: Option<&'a StaticKeypair>,
    remote: Option<PublicKey>,
    expected: Option<PublicKey>,
}

fn params(pattern: &str) -> NoiseParams {
    pattern
        .parse()
        .expect("the pattern names are valid Noise names")
}

/// One side of one handshake. Call [`Self::write_message`] when
/// [`Self::is_my_turn`], [`Self::read_message`] otherwise, until [`Self::is_finished`];
/// then [`Self::finish`]. Any error is final: every later call fails too.
pub struct Handshake {
    noise: snow::HandshakeState,
    mode: Protection,
    /// The listener's check on a link: the static key listed for the claimed id.
    expected_remote: Option<PublicKey>,
    /// Messages written or read so far.
    step: u8,
    /// Set once a call fails, or when the modes disagree (the responder still owes its
    /// answer, so the initiator learns of the mismatch too).
    failed: Option<&'static str>,
    mismatch: Option<Protection>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.noise.is_initiator())
            .field("step", &self.step)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A peer dialling the master.
    pub fn control_initiator(
        secret: &RunSecret,
        local: &StaticKeypair,
        binding: &Binding,
        mode: Protection,
    ) -> Result<Self, HandshakeError> {
        let keys = Keys {
            local: Some(local),
            remote: None,
            expected: None,
        };
        Self::build(CONTROL_PATTERN, true, secret, keys, binding, mode)
    }

    /// The master accepting a peer; [`Session::remote_static`] is the peer's static key.
    pub fn control_responder(
        secret: &RunSecret,
        binding: &Binding,
        mode: Protection,
    ) -> Result<Self, HandshakeError> {
        let keys = Keys {
            local: None,
            remote: None,
            expected: None,
        };
        Self::build(CONTROL_PATTERN, false, secret, keys, binding, mode)
    }

    /// A peer dialling another member whose static key (`remote`) the master listed.
    pub fn link_initiator(
        secret: &RunSecret,
        local: &StaticKeypair,
        remote: PublicKey,
        binding: &Binding,
        mode: Protection,
    ) -> Result<Self, HandshakeError> {
        let keys = Keys {
            local: Some(local),
            remote: Some(remote),
            expected: None,
        };
        Self::build(LINK_PATTERN, true, secret, keys, binding, mode)
    }

    /// A peer accepting a member that claims `binding.initiator`, whose static key the
    /// master listed as `expected`.
    pub fn link_responder(
        secret: &RunSecret,
        local: &StaticKeypair,
        expected: PublicKey,
        binding: &Binding,
        mode: Protection,
    ) -> Result<Self, HandshakeError> {
        let keys = Keys {
            local: Some(local),
            remote: None,
            expected: Some(expected),
        };
        Self::build(LINK_PATTERN, false, secret, keys, binding, mode)
    }

    fn build(
        pattern: &str,
        initiator: bool,
        secret: &RunSecret,
        keys: Keys<'_>,
        binding: &Binding,
        mode: Protection,
    ) -> Result<Self, HandshakeError> {
        let prologue = binding.prologue();
        let crypto = |e: snow::Error| HandshakeError::Crypto(e.to_string());
        let mut b = snow::Builder::new(params(pattern))
            .psk(0, secret.psk())
            .map_err(crypto)?
            .prologue(&prologue)
            .map_err(crypto)?;
        if let Some(kp) = keys.local {
            b = b.local_private_key(&kp.private[..]).map_err(crypto)?;
        }
        let remote_bytes = keys.remote.map(|k| k.0);
        if let Some(r) = &remote_bytes {
            b = b.remote_public_key(r).map_err(crypto)?;
        }
        let noise = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(crypto)?;
        Ok(Self {
            noise,
            mode,
            expected_remote: keys.expected,
            step: 0,
            failed: None,
            mismatch: None,
        })
    }

    pub fn is_my_turn(&self) -> bool {
        self.failed.is_none() && !self.noise.is_handshake_finished() && self.noise.is_my_turn()
    }

    pub fn is_finished(&self) -> bool {
        self.failed.is_none() && self.mismatch.is_none() && self.noise.is_handshake_finished()
    }

    /// An error already certain while a message is still owed: the responder that sees a
    /// [`Protection`] mismatch answers first (so the initiator learns it too), then stops.
    pub fn pending_error(&self) -> Option<HandshakeError> {
        self.mismatch.map(|theirs| HandshakeError::ModeMismatch {
            ours: self.mode,
            theirs,
        })
    }

    fn check_usable(&self) -> Result<(), HandshakeError> {
        if let Some(why) = self.failed {
            return Err(HandshakeError::State(why));
        }
        if self.noise.is_handshake_finished() {
            return Err(HandshakeError::State("the handshake is already complete"));
        }
        Ok(())
    }

    /// Writes our next message into `out` and returns its length.
    pub fn write_message(
        &mut self,
        out: &mut [u8; MAX_MESSAGE_LEN],
    ) -> Result<usize, HandshakeError> {
        self.check_usable()?;
        if !self.noise.is_my_turn() {
            return Err(HandshakeError::State("not our turn to write"));
        }
        let payload = [PAYLOAD_VERSION, self.mode.to_byte()];
        // The first two messages carry the payload; the third none.
        let payload: &[u8] = if self.step < 2 { &payload } else { &[] };
        match self.noise.write_message(payload, out) {
            Ok(n) => {
                self.step += 1;
                Ok(n)
            }
            Err(e) => {
                self.failed = Some("a message could not be written");
                Err(HandshakeError::Crypto(e.to_string()))
            }
        }
    }

    /// Reads the other side's next message.
    pub fn read_message(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        self.check_usable()?;
        if let Some(e) = self.pending_error() {
            return Err(e);
        }
        if self.noise.is_my_turn() {
            return Err(HandshakeError::State("not our turn to read"));
        }
        let r = self.read_inner(msg);
        if r.is_err() {
            self.failed = Some("an earlier message failed");
        }
        r
    }

    fn read_inner(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(HandshakeError::Malformed("message too long"));
        }
        let mut payload = [0u8; MAX_MESSAGE_LEN];
        // snow checks lengths itself; any failure here is a bad tag or a short message.
        let n = self
            .noise
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Rejected)?;
        self.step += 1;
        let payload = &payload[..n];
        if self.step <= 2 {
            let [version, mode] = payload else {
                return Err(HandshakeError::Malformed("payload of the wrong size"));
            };
            if *version != PAYLOAD_VERSION {
                return Err(HandshakeError::Malformed("unknown handshake version"));
            }
            let theirs = Protection::from_byte(*mode)
                .ok_or(HandshakeError::Malformed("unknown protection mode"))?;
            if theirs != self.mode {
                if self.noise.is_initiator() {
                    return Err(HandshakeError::ModeMismatch {
                        ours: self.mode,
                        theirs,
                    });
                }
                self.mismatch = Some(theirs);
            }
        } else if !payload.is_empty() {
            return Err(HandshakeError::Malformed("unexpected payload"));
        }
        if let Some(expected) = self.expected_remote
            && self.noise.is_handshake_finished()
            && self.noise.get_remote_static() != Some(&expected.0[..])
        {
            return Err(HandshakeError::WrongIdentity);
        }
        Ok(())
    }

    /// The frame keys, once the handshake is complete.
    ///
    /// Key schedule: Noise's `Split()` yields one raw key per direction (`k1`
    /// initiator→responder, `k2` the other way; they depend on every DH and the PSK).
    /// Each frame key is `HKDF-SHA256(salt = handshake hash, ikm = k, info = "pccl frames
    /// v1 " ‖ AEAD name ‖ direction)`: the label keeps the frame keys apart from Noise's own
    /// use of `k` (and the two modes' AEADs apart from each other),
    /// and the handshake hash (the whole transcript, prologue included) as salt binds them
    /// to this very handshake. We derive from `Split()`, not from the handshake hash
    /// alone, because the hash holds no DH secret: any member could compute it.
    pub fn finish(mut self) -> Result<Session, HandshakeError> {
        if !self.is_finished() {
            return Err(self
                .pending_error()
                .unwrap_or(HandshakeError::State("the handshake is not complete")));
        }
        let remote_static = match self.noise.get_remote_static() {
            Some(k) => Some(PublicKey(k.try_into().map_err(|_| {
                HandshakeError::Crypto("X25519 keys are 32 bytes".into())
            })?)),
            None => None,
        };
        let (k1, k2) = self.noise.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, self.noise.get_handshake_hash());
        let derive = |k: &[u8; 32], info: &[u8]| {
            let mut out = Zeroizing::new([0u8; 32]);
            let aead = self.mode.key_label().as_bytes();
            expand(
                &salt.extract(k),
                &[FRAME_KEY_LABEL, aead, info],
                &mut out[..],
            );
            out
        };
        let i2r = derive(&k1, INITIATOR_TO_RESPONDER);
        let r2i = derive(&k2, RESPONDER_TO_INITIATOR);
        let (send, recv) = if self.noise.is_initiator() {
            (i2r, r2i)
        } else {
            (r2i, i2r)
        };
        Ok(Session {
            send: SendKey::new(&send, self.mode),
            recv: RecvKey::new(&recv, self.mode),
            remote_static,
        })
    }
}
