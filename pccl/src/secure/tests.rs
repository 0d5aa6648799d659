//! The handshake and frame keys against the attacks of issue #12: wrong secret, wrong
//! binding, impersonation, replay, garbage; tampered, replayed, reordered, spliced and
//! reflected frames. Each test names the defence it leans on.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::types::PeerId;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn secret() -> RunSecret {
    RunSecret::new(SECRET).unwrap()
}

fn binding(kind: u8) -> Binding {
    Binding {
        kind,
        initiator: PeerId([1; 16]),
        responder: PeerId([2; 16]),
    }
}

/// The messages exchanged, and each side's outcome.
type Exchanged = (
    Vec<Vec<u8>>,
    Result<Session, HandshakeError>,
    Result<Session, HandshakeError>,
);

/// Runs two handshakes against each other in memory.
fn exchange(mut i: Handshake, mut r: Handshake) -> Exchanged {
    let mut msgs = Vec::new();
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    for turn in 0..3 {
        let (from, to) = if turn % 2 == 0 {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        let n = match from.write_message(&mut buf) {
            Ok(n) => n,
            Err(e) => return (msgs, Err(e), Err(HandshakeError::Closed)),
        };
        msgs.push(buf[..n].to_vec());
        if let Err(e) = to.read_message(&buf[..n]) {
            let (ri, rr) = if turn % 2 == 0 {
                (Err(HandshakeError::Closed), Err(e))
            } else {
                (Err(e), Err(HandshakeError::Closed))
            };
            return (msgs, ri, rr);
        }
    }
    (msgs, i.finish(), r.finish())
}

fn control_pair(
    si: &RunSecret,
    sr: &RunSecret,
    bi: Binding,
    br: Binding,
) -> (Handshake, Handshake, StaticKeypair) {
    let kp = StaticKeypair::generate().unwrap();
    let i = Handshake::control_initiator(si, &kp, &bi, Protection::Authenticate).unwrap();
    let r = Handshake::control_responder(sr, &br, Protection::Authenticate).unwrap();
    (i, r, kp)
}

struct Members {
    a: StaticKeypair,
    b: StaticKeypair,
}

fn members() -> Members {
    Members {
        a: StaticKeypair::generate().unwrap(),
        b: StaticKeypair::generate().unwrap(),
    }
}

/// A dials B; B expects A's listed key.
fn link_pair(m: &Members, mode_i: Protection, mode_r: Protection) -> (Handshake, Handshake) {
    let s = secret();
    let i = Handshake::link_initiator(&s, &m.a, m.b.public(), &binding(2), mode_i).unwrap();
    let r = Handshake::link_responder(&s, &m.b, m.a.public(), &binding(2), mode_r).unwrap();
    (i, r)
}

/// Both directions carry a frame sealed by one side and opened by the other.
fn assert_keys_match(a: &mut Session, b: &mut Session) {
    for (tx, rx) in [(&mut a.send, &mut b.recv), (&mut b.send, &mut a.recv)] {
        let mut body = b"payload".to_vec();
        let tags = tx.seal(b"head", &mut body).unwrap();
        rx.open_header(b"head", &tags.header).unwrap();
        rx.open_body(&mut body, &tags.body).unwrap();
        assert_eq!(body, b"payload");
    }
}

#[test]
fn control_handshake_succeeds_and_reports_the_peer_key() {
    let s = secret();
    let (i, r, kp) = control_pair(&s, &s, binding(1), binding(1));
    let (msgs, si, sr) = exchange(i, r);
    let (mut si, mut sr) = (si.unwrap(), sr.unwrap());
    assert_eq!(msgs.len(), 3);
    assert!(
        msgs.iter().all(|m| m.len() <= 64),
        "{:?}",
        msgs.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(sr.remote_static, Some(kp.public()));
    assert_eq!(si.remote_static, None);
    assert_keys_match(&mut si, &mut sr);
}

#[test]
fn link_handshake_succeeds() {
    let m = members();
    let (i, r) = link_pair(&m, Protection::Encrypt, Protection::Encrypt);
    let (_, si, sr) = exchange(i, r);
    let (mut si, mut sr) = (si.unwrap(), sr.unwrap());
    assert_eq!(sr.remote_static, Some(m.a.public()));
    assert_eq!(si.remote_static, Some(m.b.public()));
    assert_keys_match(&mut si, &mut sr);
}

#[test]
fn wrong_secret_is_rejected_on_the_first_message() {
    let other = RunSecret::new("another secret of enough length").unwrap();
    let (i, r, _) = control_pair(&other, &secret(), binding(1), binding(1));
    let (msgs, _, sr) = exchange(i, r);
    assert_eq!(msgs.len(), 1, "the listener must not answer");
    assert!(matches!(sr, Err(HandshakeError::Rejected)), "{sr:?}");

    let m = members();
    let i = Handshake::link_initiator(
        &other,
        &m.a,
        m.b.public(),
        &binding(2),
        Protection::Authenticate,
    )
    .unwrap();
    let r = Handshake::link_responder(
        &secret(),
        &m.b,
        m.a.public(),
        &binding(2),
        Protection::Authenticate,
    )
    .unwrap();
    let (msgs, _, sr) = exchange(i, r);
    assert_eq!(msgs.len(), 1);
    assert!(matches!(sr, Err(HandshakeError::Rejected)), "{sr:?}");
}

#[test]
fn a_binding_mismatch_is_rejected() {
    let s = secret();
    let b = binding(1);
    let variants = [
        Binding { kind: 3, ..b },
        Binding {
            initiator: PeerId([9; 16]),
            ..b
        },
        Binding {
            responder: PeerId([9; 16]),
            ..b
        },
    ];
    for other in variants {
        let (i, r, _) = control_pair(&s, &s, other, b);
        let (_, _, sr) = exchange(i, r);
        assert!(
            matches!(sr, Err(HandshakeError::Rejected)),
            "{other:?}: {sr:?}"
        );
    }
}

#[test]
fn a_member_cannot_open_a_link_as_another_member() {
    // C holds the run secret and its own key, claims A's id towards B; B expects A's key.
    let m = members();
    let c = StaticKeypair::generate().unwrap();
    let s = secret();
    let i = Handshake::link_initiator(&s, &c, m.b.public(), &binding(2), Protection::Authenticate)
        .unwrap();
    let r = Handshake::link_responder(
        &s,
        &m.b,
        m.a.public(),
        &binding(2),
        Protection::Authenticate,
    )
    .unwrap();
    let (msgs, _, sr) = exchange(i, r);
    assert_eq!(msgs.len(), 3);
    assert!(matches!(sr, Err(HandshakeError::WrongIdentity)), "{sr:?}");
}

#[test]
fn a_listener_without_the_listed_key_is_rejected() {
    // A dials "B" at an address a member C answers from: C lacks B's private key, so
    // the first message (keyed with B's public key) does not open.
    let m = members();
    let c = StaticKeypair::generate().unwrap();
    let s = secret();
    let i = Handshake::link_initiator(
        &s,
        &m.a,
        m.b.public(),
        &binding(2),
        Protection::Authenticate,
    )
    .unwrap();
    let r = Handshake::link_responder(&s, &c, m.a.public(), &binding(2), Protection::Authenticate)
        .unwrap();
    let (_, _, sr) = exchange(i, r);
    assert!(matches!(sr, Err(HandshakeError::Rejected)), "{sr:?}");
}

#[test]
fn a_replayed_transcript_yields_no_session() {
    // Capture a whole genuine handshake, then replay its messages to a fresh listener:
    // the first one is accepted (Noise's first message is replayable), but the listener
    // answers with a fresh ephemeral, so the captured third message no longer opens.
    let m = members();
    let (i, r) = link_pair(&m, Protection::Authenticate, Protection::Authenticate);
    let (msgs, si, sr) = exchange(i, r);
    assert!(si.is_ok() && sr.is_ok());
    let (_, mut r2) = link_pair(&m, Protection::Authenticate, Protection::Authenticate);
    r2.read_message(&msgs[0]).unwrap();
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let n = r2.write_message(&mut buf).unwrap();
    assert_ne!(&buf[..n], &msgs[1][..], "the answer must be fresh");
    assert!(matches!(
        r2.read_message(&msgs[2]),
        Err(HandshakeError::Rejected)
    ));
    assert!(matches!(r2.finish(), Err(HandshakeError::State(_))));

    // The same on the master's side.
    let s = secret();
    let (i, r, _) = control_pair(&s, &s, binding(1), binding(1));
    let (msgs, _, sr) = exchange(i, r);
    assert!(sr.is_ok());
    let mut r2 = Handshake::control_responder(&s, &binding(1), Protection::Authenticate).unwrap();
    r2.read_message(&msgs[0]).unwrap();
    r2.write_message(&mut buf).unwrap();
    assert!(matches!(
        r2.read_message(&msgs[2]),
        Err(HandshakeError::Rejected)
    ));
}

#[test]
fn an_initiator_refuses_an_answer_from_another_handshake() {
    let s = secret();
    let (i1, r1, _) = control_pair(&s, &s, binding(1), binding(1));
    let (msgs, _, _) = exchange(i1, r1);
    let (mut i2, _, _) = control_pair(&s, &s, binding(1), binding(1));
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    i2.write_message(&mut buf).unwrap();
    assert!(matches!(
        i2.read_message(&msgs[1]),
        Err(HandshakeError::Rejected)
    ));
    // Any later call fails too.
    assert!(matches!(
        i2.write_message(&mut buf),
        Err(HandshakeError::State(_))
    ));
}

#[test]
fn mode_mismatch_is_reported_on_both_sides() {
    let m = members();
    let (mut i, mut r) = link_pair(&m, Protection::Encrypt, Protection::Authenticate);
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let n = i.write_message(&mut buf).unwrap();
    r.read_message(&buf[..n]).unwrap();
    let n = r.write_message(&mut buf).unwrap();
    assert!(matches!(
        r.pending_error(),
        Some(HandshakeError::ModeMismatch {
            theirs: Protection::Encrypt,
            ..
        })
    ));
    let e = i.read_message(&buf[..n]).unwrap_err();
    assert!(
        matches!(
            e,
            HandshakeError::ModeMismatch {
                ours: Protection::Encrypt,
                theirs: Protection::Authenticate
            }
        ),
        "{e}"
    );
    assert!(matches!(
        r.finish(),
        Err(HandshakeError::ModeMismatch { .. })
    ));
}

#[test]
fn garbage_truncated_and_out_of_turn_messages_fail_cleanly() {
    let s = secret();
    let (mut i, _, _) = control_pair(&s, &s, binding(1), binding(1));
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let n = i.write_message(&mut buf).unwrap();
    let genuine = buf[..n].to_vec();
    for cut in 0..genuine.len() {
        let mut r =
            Handshake::control_responder(&s, &binding(1), Protection::Authenticate).unwrap();
        assert!(r.read_message(&genuine[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = genuine.clone();
    long.resize(MAX_MESSAGE_LEN + 1, 0);
    let mut r = Handshake::control_responder(&s, &binding(1), Protection::Authenticate).unwrap();
    assert!(matches!(
        r.read_message(&long),
        Err(HandshakeError::Malformed(_))
    ));
    let mut r = Handshake::control_responder(&s, &binding(1), Protection::Authenticate).unwrap();
    assert!(matches!(
        r.write_message(&mut buf),
        Err(HandshakeError::State(_))
    ));
    assert!(
        matches!(i.read_message(&genuine), Err(HandshakeError::Rejected)),
        "own message reflected"
    );
}

#[tokio::test]
async fn async_handshake_over_a_stream() {
    let m = members();
    let deadline = Duration::from_secs(5);
    let (mut a, mut b) = tokio::io::duplex(1024);
    let (i, r) = link_pair(&m, Protection::Encrypt, Protection::Encrypt);
    let (si, sr) = tokio::join!(
        handshake(&mut a, i, deadline),
        handshake(&mut b, r, deadline)
    );
    assert_keys_match(&mut si.unwrap(), &mut sr.unwrap());

    // Wrong secret: the listener rejects and hangs up; the dialler sees the close.
    let (mut a, mut b) = tokio::io::duplex(1024);
    let other = RunSecret::new("another secret of enough length").unwrap();
    let kp = StaticKeypair::generate().unwrap();
    let i =
        Handshake::control_initiator(&other, &kp, &binding(1), Protection::Authenticate).unwrap();
    let r = Handshake::control_responder(&secret(), &binding(1), Protection::Authenticate).unwrap();
    let listener = async move {
        let res = handshake(&mut b, r, deadline).await;
        drop(b);
        res
    };
    let (si, sr) = tokio::join!(handshake(&mut a, i, deadline), listener);
    assert!(matches!(sr, Err(HandshakeError::Rejected)), "{sr:?}");
    assert!(matches!(si, Err(HandshakeError::Closed)), "{si:?}");

    // Mode mismatch: both sides get the clear error, neither waits for the deadline.
    let (mut a, mut b) = tokio::io::duplex(1024);
    let (i, r) = link_pair(&m, Protection::Authenticate, Protection::Encrypt);
    let (si, sr) = tokio::join!(
        handshake(&mut a, i, deadline),
        handshake(&mut b, r, deadline)
    );
    assert!(
        matches!(si, Err(HandshakeError::ModeMismatch { .. })),
        "{si:?}"
    );
    assert!(
        matches!(sr, Err(HandshakeError::ModeMismatch { .. })),
        "{sr:?}"
    );
}

#[tokio::test]
async fn a_stranger_costs_bounded_time_and_reads() {
    use tokio::io::AsyncWriteExt;
    // Silent: the deadline ends it.
    let (_a, mut b) = tokio::io::duplex(1024);
    let r = Handshake::control_responder(&secret(), &binding(1), Protection::Authenticate).unwrap();
    let t = std::time::Instant::now();
    let res = handshake(&mut b, r, Duration::from_millis(100)).await;
    assert!(matches!(res, Err(HandshakeError::Timeout)), "{res:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // A huge length prefix is refused before any of it is read.
    let (mut a, mut b) = tokio::io::duplex(1024);
    a.write_all(&u16::MAX.to_le_bytes()).await.unwrap();
    let r = Handshake::control_responder(&secret(), &binding(1), Protection::Authenticate).unwrap();
    let res = handshake(&mut b, r, Duration::from_secs(5)).await;
    assert!(matches!(res, Err(HandshakeError::Malformed(_))), "{res:?}");
}

// ---- frames ----

/// Fresh keys for both ends of one direction, in `mode`.
fn keys(mode: Protection) -> (SendKey, RecvKey) {
    let m = members();
    let (i, r) = link_pair(&m, mode, mode);
    let (_, si, sr) = exchange(i, r);
    (si.unwrap().send, sr.unwrap().recv)
}

/// A sealed frame as it travels.
#[derive(Clone)]
struct Wire {
    header: Vec<u8>,
    body: Vec<u8>,
    tags: FrameTags,
}

fn seal(tx: &mut SendKey, header: &[u8], body: &[u8]) -> Wire {
    let mut b = body.to_vec();
    let tags = tx.seal(header, &mut b).unwrap();
    Wire {
        header: header.to_vec(),
        body: b,
        tags,
    }
}

fn open(rx: &mut RecvKey, w: &Wire) -> Result<Vec<u8>, AuthError> {
    rx.open_header(&w.header, &w.tags.header)?;
    let mut b = w.body.clone();
    rx.open_body(&mut b, &w.tags.body)?;
    Ok(b)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn frames_round_trip_in_both_modes() {
    for mode in [Protection::Authenticate, Protection::Encrypt] {
        let (mut tx, mut rx) = keys(mode);
        for len in [0, 1, 4 << 10, 8 << 20] {
            let body = pattern(len);
            let w = seal(&mut tx, b"a header", &body);
            match mode {
                Protection::Authenticate => assert_eq!(w.body, body, "sent as is"),
                // A 1-byte ciphertext equals its plaintext once in 256 keys (the keys are
                // fresh each run): only longer bodies can show encryption for certain.
                Protection::Encrypt if len >= 16 => assert_ne!(w.body, body, "encrypted"),
                Protection::Encrypt => {}
            }
            assert_eq!(open(&mut rx, &w).unwrap(), body, "{mode:?} {len}");
        }
        // An authenticate-only key also seals a shared (immutable) body.
        let body = pattern(100);
        match mode {
            Protection::Authenticate => {
                let tags = tx.seal_shared(b"h", &body).unwrap();
                let w = Wire {
                    header: b"h".to_vec(),
                    body: body.clone(),
                    tags,
                };
                assert_eq!(open(&mut rx, &w).unwrap(), body);
            }
            Protection::Encrypt => {
                assert_eq!(
                    tx.seal_shared(b"h", &body),
                    Err(SealError::NeedsMutableBody)
                );
            }
        }
    }
}

#[test]
fn tampered_frames_fail_and_break_the_key() {
    for mode in [Protection::Authenticate, Protection::Encrypt] {
        let edits: [fn(&mut Wire); 4] = [
            |w| w.header[3] ^= 1,
            |w| w.body[1000] ^= 0x80,
            |w| w.tags.header[0] ^= 1,
            |w| w.tags.body[15] ^= 1,
        ];
        for (k, edit) in edits.iter().enumerate() {
            let (mut tx, mut rx) = keys(mode);
            let mut w = seal(&mut tx, b"header!", &pattern(4096));
            edit(&mut w);
            assert_eq!(
                open(&mut rx, &w),
                Err(AuthError::BadTag),
                "{mode:?} edit {k}"
            );
            // Broken for good: even a genuine next frame is refused.
            let next = seal(&mut tx, b"header!", &pattern(10));
            assert_eq!(open(&mut rx, &next), Err(AuthError::Broken));
        }
    }
}

#[test]
fn replayed_reordered_spliced_and_reflected_frames_fail() {
    for mode in [Protection::Authenticate, Protection::Encrypt] {
        // Replay.
        let (mut tx, mut rx) = keys(mode);
        let f0 = seal(&mut tx, b"h0", &pattern(64));
        open(&mut rx, &f0).unwrap();
        assert_eq!(open(&mut rx, &f0), Err(AuthError::BadTag), "replay");

        // Reorder.
        let (mut tx, mut rx) = keys(mode);
        let f0 = seal(&mut tx, b"h0", &pattern(64));
        let f1 = seal(&mut tx, b"h1", &pattern(64));
        assert_eq!(open(&mut rx, &f1), Err(AuthError::BadTag), "reorder");
        let _ = f0;

        // A body moved to another frame of the same connection.
        let (mut tx, mut rx) = keys(mode);
        let f0 = seal(&mut tx, b"h", &pattern(64));
        let f1 = seal(&mut tx, b"h", &pattern(64));
        let spliced = Wire {
            body: f1.body.clone(),
            tags: FrameTags {
                body: f1.tags.body,
                ..f0.tags
            },
            ..f0
        };
        assert_eq!(
            open(&mut rx, &spliced),
            Err(AuthError::BadTag),
            "body from frame 1"
        );

        // A frame from another connection (same secret, same members, other handshake).
        let (mut tx_a, _) = keys(mode);
        let (_, mut rx_b) = keys(mode);
        let f = seal(&mut tx_a, b"h", &pattern(64));
        assert_eq!(
            open(&mut rx_b, &f),
            Err(AuthError::BadTag),
            "splice across connections"
        );

        // Reflected back to its sender's own receive key.
        let m = members();
        let (i, r) = link_pair(&m, mode, mode);
        let (_, si, _) = exchange(i, r);
        let mut si = si.unwrap();
        let f = seal(&mut si.send, b"h", &pattern(64));
        assert_eq!(
            open(&mut si.recv, &f),
            Err(AuthError::BadTag),
            "wrong direction"
        );
    }
}

#[test]
fn open_calls_must_alternate() {
    let (mut tx, mut rx) = keys(Protection::Authenticate);
    let w = seal(&mut tx, b"h", b"body");
    let mut b = w.body.clone();
    assert!(matches!(
        rx.open_body(&mut b, &w.tags.body),
        Err(AuthError::OutOfOrder(_))
    ));
    assert_eq!(
        rx.open_header(&w.header, &w.tags.header),
        Err(AuthError::Broken)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any single-bit flip anywhere in a frame (header, body, either tag) is caught, in
    /// both modes; the untouched frame opens.
    #[test]
    fn any_bit_flip_is_caught(
        encrypt in any::<bool>(),
        header in proptest::collection::vec(any::<u8>(), 1..80),
        body in proptest::collection::vec(any::<u8>(), 1..2000),
        at in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mode = if encrypt { Protection::Encrypt } else { Protection::Authenticate };
        let (mut tx, mut rx) = keys(mode);
        let w = seal(&mut tx, &header, &body);
        let total = header.len() + body.len() + 2 * TAG_LEN;
        let pos = at.index(total);
        let mut bad = w.clone();
        let byte = if pos < header.len() {
            &mut bad.header[pos]
        } else if pos < header.len() + body.len() {
            &mut bad.body[pos - header.len()]
        } else if pos < header.len() + body.len() + TAG_LEN {
            &mut bad.tags.header[pos - header.len() - body.len()]
        } else {
            &mut bad.tags.body[pos - header.len() - body.len() - TAG_LEN]
        };
        *byte ^= 1 << bit;
        prop_assert_eq!(open(&mut rx, &bad), Err(AuthError::BadTag));
        let (mut tx, mut rx) = keys(mode);
        let w = seal(&mut tx, &header, &body);
        prop_assert_eq!(open(&mut rx, &w).unwrap(), body);
    }
}
