//! Authenticated runs: the run secret, the connection handshake that proves it, and the
//! frame protection that follows (SECURITY.md, "Authenticated mode (run secret)").
//!
//! The pieces, in the order a connection uses them:
//!
//! 1. [`RunSecret`]: the run's shared secret, reduced to a 32-byte Noise pre-shared key.
//!    Each peer also makes a [`StaticKeypair`] per run; the master learns its public half
//!    in the control handshake and lists it for the peer's id.
//! 2. [`Handshake`]: after the plain hellos, a sans-IO Noise handshake (three messages)
//!    bound to the connection kind and both ids ([`Binding`]); [`handshake`] drives one
//!    over a stream under a deadline. It yields a [`Session`].
//! 3. [`SendKey`] / [`RecvKey`]: AEAD frame protection (ChaCha20-Poly1305 to authenticate,
//!    AES-256-GCM to encrypt), in place, per direction,
//!    with a frame counter that refuses replayed, reordered and injected frames.
//!
//! Everything but `io.rs` is pure: no sockets, no clock. ([`EnvSecurity`] reads the
//! `PCCL_RUN_SECRET*`/`PCCL_ENCRYPT` variables through a lookup function; only its
//! `from_env` touches the process environment.) All primitives come from `snow`
//! (Noise: X25519, ChaCha20-Poly1305, BLAKE2s) and `ring` (AES-256-GCM,
//! ChaCha20-Poly1305, HKDF-SHA256).

mod env;
mod frames;
mod handshake;
mod io;
mod secret;
#[cfg(test)]
mod tests;

pub use env::{ENCRYPT_VAR, EnvError, EnvSecurity, SECRET_FILE_VAR, SECRET_VAR, encrypt_from_env};
pub use frames::{
    AuthError, FRAME_OVERHEAD, FrameTags, Protection, RecvKey, SealError, SendKey, TAG_LEN, Tag,
};
pub use handshake::{
    Binding, Handshake, HandshakeError, MAX_MESSAGE_LEN, PublicKey, Session, StaticKeypair,
};
pub use io::handshake;
pub use secret::{MAX_SECRET_LEN, MIN_SECRET_LEN, RunSecret, SecretError};
