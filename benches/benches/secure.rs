//! Single-core cost of authenticated runs (`pccl::secure`), printed in GB/s (10^9 bytes
//! per second) so it can be set beside the ring's data rate.
//!
//! `cargo bench -p benches --bench secure` prints:
//!
//! 1. Frame protection per body size: `memcpy` (the baseline), then seal and open in
//!    authenticate-only mode (GMAC: AES-256-GCM with the body as associated data; the
//!    body is not touched) and in encrypted mode (AES-256-GCM in place), each including
//!    the header's tag, through AWS-LC (`aws-lc-rs`), which picks AES-NI/VAES +
//!    PCLMULQDQ/VPCLMULQDQ code at run time where the CPU has them. The last column times
//!    the same GMAC straight from `ring`, which hashes associated data one block per call:
//!    why the frame keys use AWS-LC.
//! 2. The handshake: one full three-message Noise handshake, both sides in this thread,
//!    for the control and the link pattern, in microseconds.
//!
//! `cargo bench -p benches --bench secure -- --test` (or `--quick`) uses small sizes and a
//! few repetitions so it finishes in about a second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::{fmt_size, gbps, median};
use pccl::PeerId;
use pccl::secure::{
    Binding, Handshake, MAX_MESSAGE_LEN, Protection, RecvKey, RunSecret, SendKey, Session,
    StaticKeypair,
};

struct Plan {
    sizes: Vec<usize>,
    min_time: Duration,
    min_reps: usize,
}

fn plan() -> Plan {
    let test_mode = std::env::args()
        .skip(1)
        .any(|a| a == "--test" || a == "--quick");
    if test_mode {
        Plan {
            sizes: vec![64 << 10],
            min_time: Duration::ZERO,
            min_reps: 3,
        }
    } else {
        Plan {
            sizes: vec![64 << 10, 1 << 20, 4 << 20, 16 << 20],
            min_time: Duration::from_millis(300),
            min_reps: 10,
        }
    }
}

/// Runs `f` until both `min_time` and `min_reps` are reached; the median repetition.
fn time(p: &Plan, mut f: impl FnMut()) -> Duration {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < p.min_reps || start.elapsed() < p.min_time {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    median(&samples).expect("at least one sample")
}

const BINDING: Binding = Binding {
    kind: 2,
    initiator: PeerId([1; 16]),
    responder: PeerId([2; 16]),
};

/// Both ends of a link handshake, run to completion in memory.
fn link(mode: Protection) -> (Session, Session) {
    let secret = RunSecret::new("benchmark secret of sufficient length").unwrap();
    let (a, b) = (
        StaticKeypair::generate().unwrap(),
        StaticKeypair::generate().unwrap(),
    );
    let i = Handshake::link_initiator(&secret, &a, b.public(), &BINDING, mode).unwrap();
    let r = Handshake::link_responder(&secret, &b, a.public(), &BINDING, mode).unwrap();
    run(i, r)
}

fn run(mut i: Handshake, mut r: Handshake) -> (Session, Session) {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    for turn in 0..3 {
        let (from, to) = if turn % 2 == 0 {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        let n = from.write_message(&mut buf).unwrap();
        to.read_message(&buf[..n]).unwrap();
    }
    (i.finish().unwrap(), r.finish().unwrap())
}

/// Seals then opens one frame per call; returns (seal, open) times.
fn frame_costs(p: &Plan, mode: Protection, bytes: usize) -> (Duration, Duration) {
    let (a, b) = link(mode);
    let (mut tx, mut rx): (SendKey, RecvKey) = (a.send, b.recv);
    let header = [7u8; 60];
    let mut body = vec![0x5au8; bytes];
    // Seal and open alternate (the receiver must see frames in order), so time each half
    // separately within one loop and take the medians.
    let mut seal_t = Vec::new();
    let mut open_t = Vec::new();
    let start = Instant::now();
    while seal_t.len() < p.min_reps + 1 || start.elapsed() < p.min_time {
        let t = Instant::now();
        let tags = tx.seal(&header, black_box(&mut body)).unwrap();
        let t1 = Instant::now();
        rx.open_header(&header, &tags.header).unwrap();
        rx.open_body(black_box(&mut body), &tags.body).unwrap();
        open_t.push(t1.elapsed());
        seal_t.push(t1 - t);
    }
    // The first repetition warms caches and pages; drop it.
    (
        median(&seal_t[1..]).expect("samples"),
        median(&open_t[1..]).expect("samples"),
    )
}

/// GMAC (AES-256-GCM, body as associated data) straight from `ring`, for comparison with
/// AWS-LC's (which the frame keys use).
fn ring_gmac_cost(p: &Plan, bytes: usize) -> Duration {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[3u8; 32]).unwrap());
    let body = vec![0x5au8; bytes];
    let mut n = 0u64;
    time(p, || {
        n += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        let nonce = Nonce::assume_unique_for_key(nonce);
        let tag = key.seal_in_place_separate_tag(nonce, Aad::from(black_box(&body[..])), &mut []);
        let _ = black_box(tag.unwrap());
    })
}

fn main() {
    let p = plan();
    println!("single-core frame protection, median repetition, GB/s = 1e9 body bytes per second");
    println!(
        "{:>9} {:>9} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "size", "memcpy", "auth seal", "auth open", "enc seal", "enc open", "ring gmac"
    );
    for &bytes in &p.sizes {
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        let t_copy = time(&p, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        });
        let (as_, ao) = frame_costs(&p, Protection::Authenticate, bytes);
        let (es, eo) = frame_costs(&p, Protection::Encrypt, bytes);
        let gmac = ring_gmac_cost(&p, bytes);
        println!(
            "{:>9} {:>9.2} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>9.2}",
            fmt_size(bytes),
            gbps(bytes, t_copy),
            gbps(bytes, as_),
            gbps(bytes, ao),
            gbps(bytes, es),
            gbps(bytes, eo),
            gbps(bytes, gmac)
        );
    }
    println!();
    println!("handshake, both sides in one thread, median repetition");
    let secret = RunSecret::new("benchmark secret of sufficient length").unwrap();
    let (a, b) = (
        StaticKeypair::generate().unwrap(),
        StaticKeypair::generate().unwrap(),
    );
    let mode = Protection::Authenticate;
    let t_control = time(&p, || {
        let i = Handshake::control_initiator(&secret, &a, &BINDING, mode).unwrap();
        let r = Handshake::control_responder(&secret, &BINDING, mode).unwrap();
        black_box(run(i, r));
    });
    let t_link = time(&p, || {
        let i = Handshake::link_initiator(&secret, &a, b.public(), &BINDING, mode).unwrap();
        let r = Handshake::link_responder(&secret, &b, a.public(), &BINDING, mode).unwrap();
        black_box(run(i, r));
    });
    println!(
        "  control (XNpsk0): {:>8.1} µs",
        t_control.as_secs_f64() * 1e6
    );
    println!("  link    (XKpsk0): {:>8.1} µs", t_link.as_secs_f64() * 1e6);
}
