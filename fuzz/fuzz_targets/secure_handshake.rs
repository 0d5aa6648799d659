//! Arbitrary bytes as Noise handshake messages (pccl::secure), to every role: the master
//! and a peer listener reading a first or third message, diallers reading a second. None
//! may panic, and no input may complete a handshake: without the run secret (or with a
//! secret taken from the input, which is never the listener's) nothing authenticates.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pccl::PeerId;
use pccl::secure::{Binding, Handshake, MAX_MESSAGE_LEN, Protection, RunSecret, StaticKeypair};

struct Fixture {
    secret: RunSecret,
    a: StaticKeypair,
    b: StaticKeypair,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        secret: RunSecret::new("fuzzing secret, thirty-two bytes").unwrap(),
        a: StaticKeypair::generate().unwrap(),
        b: StaticKeypair::generate().unwrap(),
    })
}

const BINDING: Binding = Binding {
    kind: 2,
    initiator: PeerId([1; 16]),
    responder: PeerId([2; 16]),
};

/// Splits `data` into messages, each prefixed by its length byte.
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = (len as usize).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
        if out.len() == 3 {
            break;
        }
    }
    out
}

/// Plays `hs` against the given messages: writes when it is its turn, reads the next
/// message otherwise, until a failure or the messages run out.
fn play(mut hs: Handshake, msgs: &[&[u8]]) {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let mut msgs = msgs.iter();
    for _ in 0..4 {
        if hs.is_my_turn() {
            if hs.write_message(&mut buf).is_err() || hs.pending_error().is_some() {
                return;
            }
            continue;
        }
        let Some(m) = msgs.next() else { break };
        if hs.read_message(m).is_err() {
            assert!(hs.finish().is_err());
            return;
        }
    }
    assert!(!hs.is_finished(), "forged bytes completed a handshake");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mode = if which & 0x80 == 0 {
        Protection::Authenticate
    } else {
        Protection::Encrypt
    };
    let msgs = messages(rest);
    let s = &f.secret;
    let hs = match which & 0x7f {
        0 => Handshake::control_responder(s, &BINDING, mode),
        1 => Handshake::link_responder(s, &f.b, f.a.public(), &BINDING, mode),
        2 => Handshake::control_initiator(s, &f.a, &BINDING, mode),
        3 => Handshake::link_initiator(s, &f.a, f.b.public(), &BINDING, mode),
        4 => {
            // A dialler holding a secret taken from the input, against our listener: its
            // secret is almost surely wrong, and the listener must say so cleanly.
            let Some((secret, _)) = rest.split_at_checked(rest.len().min(64)) else {
                return;
            };
            let Ok(theirs) = RunSecret::new(secret) else {
                return;
            };
            let mut i =
                Handshake::link_initiator(&theirs, &f.a, f.b.public(), &BINDING, mode).unwrap();
            let mut r = Handshake::link_responder(s, &f.b, f.a.public(), &BINDING, mode).unwrap();
            let mut buf = [0u8; MAX_MESSAGE_LEN];
            let n = i.write_message(&mut buf).unwrap();
            if r.read_message(&buf[..n]).is_ok() {
                assert_eq!(secret.trim_ascii(), b"fuzzing secret, thirty-two bytes");
            }
            return;
        }
        _ => return,
    };
    play(hs.expect("handshakes build from valid keys"), &msgs);
});
