//! Authenticated and encrypted runs (SECURITY.md §6) on loopback: a run with a secret
//! all-reduces and syncs bit-identically in both modes; peers with no, another or a
//! differently-encrypting secret, and peers and masters that differ on having one, fail
//! `connect` with `AuthenticationFailed` within seconds and leave the run as it was;
//! raw-socket strangers (with a guessed secret or none) and a member claiming another
//! member's id cannot open any link of a peer's listener. Frames altered on the wire:
//! `tamper.rs`.

use std::time::{Duration, Instant};

use pccl::secure::{Binding, Handshake, Protection, PublicKey, RunSecret, StaticKeypair};
use pccl::wire::{ConnectionKind, HELLO_LEN, Hello};
use pccl::{
    Attribute, Communicator, CommunicatorConfig, Error, MasterConfig, MasterNode, PeerId, ReduceOp,
    SharedState, SyncStrategy, TensorInfo,
};

use crate::common::{cluster_with, config, on_all};

const SECRET: &str = "8d3f0c5e9a1b47e2b6c4d8f0a2e4c6b8";
const OTHER: &str = "00000000000000000000000000000000ffff";

fn secret(s: &str) -> RunSecret {
    RunSecret::new(s).expect("a valid secret")
}

fn master(secret_str: Option<&str>, encrypt: bool) -> MasterNode {
    pccl::init_logging();
    let mut cfg = MasterConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.secret = secret_str.map(secret);
    cfg.encrypt = encrypt;
    MasterNode::start(cfg).expect("master starts")
}

fn peer(m: &MasterNode, secret_str: Option<&str>, encrypt: bool) -> CommunicatorConfig {
    let mut c = config(m.local_addr());
    c.secret = secret_str.map(secret);
    c.encrypt = encrypt;
    c.handshake_timeout = Duration::from_secs(2);
    c
}

/// Every peer all-reduces `count` f32s seeded by its ring rank and `salt`; the sums are
/// small integers, so exact, and every peer's bytes must be the same.
pub(crate) fn exact_sum(
    comms: &[Communicator],
    count: usize,
    tag: u64,
    salt: u32,
) -> Result<(), Error> {
    let n = comms.len();
    let results = on_all(comms, |_, c| {
        let r = rank(c);
        let send: Vec<f32> = (0..count)
            .map(|i| ((i as u32 ^ salt) % 97 + r as u32) as f32)
            .collect();
        let mut recv = vec![0f32; count];
        c.all_reduce(&send, &mut recv, ReduceOp::Sum, tag)
            .map(|_| recv)
    });
    let mut ok = Vec::new();
    for r in results {
        ok.push(r?);
    }
    let want: Vec<f32> = (0..count)
        .map(|i| {
            let base = (i as u32 ^ salt) % 97;
            (0..n as u32).map(|r| (base + r) as f32).sum()
        })
        .collect();
    for r in &ok {
        assert!(
            bytemuck::cast_slice::<f32, u8>(r) == bytemuck::cast_slice::<f32, u8>(&want),
            "a result is not exact"
        );
    }
    Ok(())
}

pub(crate) fn rank(c: &Communicator) -> usize {
    let t = c.topology().unwrap();
    t.ring.iter().position(|p| p.id == c.id()).unwrap()
}

/// Syncs a two-tensor state: peers of even rank hold `seed`'s content, the others zeros;
/// the majority wins and every peer must end with identical bytes.
fn sync_all(comms: &[Communicator], seed: u32) -> u64 {
    let out = on_all(comms, |_, c| {
        let r = rank(c);
        let (mut w, mut b): (Vec<f32>, Vec<u64>) = if r.is_multiple_of(2) {
            (
                (0..300_000)
                    .map(|i| (i as f32 * 0.5).sin() + seed as f32)
                    .collect(),
                (0..1001).map(|i| i * u64::from(seed)).collect(),
            )
        } else {
            (vec![0.0; 300_000], vec![0; 1001])
        };
        let mut st = SharedState {
            revision: u64::from(seed),
            tensors: vec![TensorInfo::new("w", &mut w), TensorInfo::new("b", &mut b)],
        };
        let info = c
            .sync_shared_state(&mut st, SyncStrategy::EnforcePopular)
            .expect("sync");
        (
            bytemuck::cast_slice::<f32, u8>(&w).to_vec(),
            b,
            info.rx_bytes,
        )
    });
    for o in &out[1..] {
        assert!(
            o.0 == out[0].0 && o.1 == out[0].1,
            "the synced bytes differ"
        );
    }
    assert!(
        out.iter().all(|o| o.0 != vec![0u8; o.0.len()]),
        "the majority content won"
    );
    out.iter().map(|o| o.2).sum()
}

#[test]
fn authenticated_and_encrypted_runs_are_exact_and_bit_identical() {
    for encrypt in [false, true] {
        let m = master(Some(SECRET), encrypt);
        let comms = cluster_with(3, |_| {
            let mut c = peer(&m, Some(SECRET), encrypt);
            c.slice_bytes = 256 << 10;
            c
        });
        // Several frames per ring step, keepalives between ops, concurrent tags.
        exact_sum(&comms, 1_000_003, 1, 7).unwrap();
        exact_sum(&comms, 5, 2, 1).unwrap();
        let received = sync_all(&comms, 3);
        assert!(received > 0, "the zeroed peer fetched over a sealed link");
        // Bandwidth tests run over sealed links too; the run goes on after them.
        on_all(&comms, |_, c| c.optimize_topology().unwrap());
        exact_sum(&comms, 4099, 3, 9).unwrap();
    }
}

/// `connect` fails with `AuthenticationFailed` naming the cause, quickly, and the run
/// neither sees the peer pending nor grows.
fn refused(m: &MasterNode, comms: &[Communicator], cfg: CommunicatorConfig, says: &str) {
    let start = Instant::now();
    let c = Communicator::new(cfg).unwrap();
    let err = c.connect().expect_err("connect must fail");
    let took = start.elapsed();
    assert!(
        matches!(&err, Error::AuthenticationFailed(w) if w.contains(says)),
        "expected AuthenticationFailed saying {says:?}, got {err}"
    );
    assert_eq!(err.code(), pccl::ResultCode::MasterConnectionFailed);
    assert!(took < Duration::from_secs(3), "connect took {took:?}");
    let pending = on_all(comms, |_, c| c.are_peers_pending().unwrap());
    assert!(pending.iter().all(|p| !p), "the refused peer is pending");
    let until = Instant::now() + Duration::from_secs(3);
    while m.unregistered_connections() != 0 {
        assert!(
            Instant::now() < until,
            "the refused connection is still held"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in comms {
        assert_eq!(
            c.attribute(Attribute::GlobalWorldSize).unwrap(),
            comms.len()
        );
    }
}

#[test]
fn peers_without_the_secret_or_with_other_settings_are_refused_at_connect() {
    let m = master(Some(SECRET), false);
    let comms = cluster_with(2, |_| peer(&m, Some(SECRET), false));
    refused(&m, &comms, peer(&m, None, false), "this peer has none");
    refused(
        &m,
        &comms,
        peer(&m, Some(OTHER), false),
        "different run secret",
    );
    refused(
        &m,
        &comms,
        peer(&m, Some(SECRET), true),
        "disagree on encryption",
    );
    exact_sum(&comms, 1000, 1, 3).unwrap();

    // A master without a secret refuses a peer that has one, and says so.
    let plain = master(None, false);
    let plain_comms = cluster_with(2, |_| peer(&plain, None, false));
    refused(
        &plain,
        &plain_comms,
        peer(&plain, Some(SECRET), false),
        "the master has none",
    );
    exact_sum(&plain_comms, 1000, 1, 3).unwrap();
}

/// What a raw-socket stranger tries after a hello that claims `claimed`.
#[derive(Clone, Copy, Debug)]
enum Stranger {
    /// A plain (unflagged) hello, as a PCCL 1.0 peer would send.
    Plain,
    /// A flagged hello followed by bytes that are no Noise message.
    Garbage,
    /// The link handshake with a guessed (wrong) secret.
    WrongSecret,
    /// The link handshake with the right secret but its own static key: a member of the
    /// run opening a link as another member.
    Impersonator,
}

/// Runs one stranger against `target`'s listener; returns the bytes the listener sent
/// after its hello (or all it sent, if it never answered the hello) and whether the
/// stranger's side of the handshake completed.
fn stranger(
    target: &pccl::PeerEntry,
    claimed: PeerId,
    kind: ConnectionKind,
    how: Stranger,
) -> (usize, bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(target.p2p_addr)
            .await
            .unwrap();
        let hello = Hello {
            kind,
            peer: claimed,
        };
        let flagged = !matches!(how, Stranger::Plain);
        s.write_all(&hello.encode_flagged(flagged)).await.unwrap();
        let read_rest = |mut s: tokio::net::TcpStream| async move {
            let mut got = 0;
            let mut buf = [0u8; 4096];
            let end = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::time::timeout_at(end, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return got,
                    Ok(Ok(n)) => got += n,
                    Err(_) => panic!("the listener kept a stranger's connection open"),
                }
            }
        };
        if matches!(how, Stranger::Plain) {
            return (read_rest(s).await, false);
        }
        let mut theirs = [0u8; HELLO_LEN];
        if s.read_exact(&mut theirs).await.is_err() {
            return (0, false);
        }
        let completed = match how {
            Stranger::Garbage => {
                let mut junk = vec![0x40u8, 0];
                junk.extend([0xa5; 64]);
                s.write_all(&junk).await.unwrap();
                false
            }
            _ => {
                let key = if matches!(how, Stranger::WrongSecret) {
                    secret(OTHER)
                } else {
                    secret(SECRET)
                };
                let binding = Binding {
                    kind: kind as u8,
                    initiator: claimed,
                    responder: target.id,
                };
                let hs = Handshake::link_initiator(
                    &key,
                    &StaticKeypair::generate().unwrap(),
                    PublicKey(target.static_key),
                    &binding,
                    Protection::Authenticate,
                )
                .unwrap();
                pccl::secure::handshake(&mut s, hs, Duration::from_secs(5))
                    .await
                    .is_ok()
            }
        };
        (read_rest(s).await, completed)
    })
}

#[test]
fn strangers_and_impersonators_cannot_open_any_link() {
    let m = master(Some(SECRET), false);
    let comms = cluster_with(3, |_| peer(&m, Some(SECRET), false));
    let topo = comms[0].topology().unwrap();
    let target = &topo.ring[1];
    // The target's ring predecessor: the one id its listener takes ring data from.
    let pred = topo.ring[0].id;
    let other = topo.ring[2].id;
    for kind in [
        ConnectionKind::P2p,
        ConnectionKind::SharedState,
        ConnectionKind::Benchmark,
    ] {
        let claimed = if kind == ConnectionKind::P2p {
            pred
        } else {
            other
        };
        for how in [
            Stranger::Plain,
            Stranger::Garbage,
            Stranger::WrongSecret,
            Stranger::Impersonator,
        ] {
            let (bytes, completed) = stranger(target, claimed, kind, how);
            // Only the impersonator, who holds the secret, gets as far as sending its last
            // handshake message; the listener then refuses it all the same.
            assert_eq!(
                completed,
                matches!(how, Stranger::Impersonator),
                "{kind:?} {how:?}"
            );
            match how {
                // Refused before the hello is answered.
                Stranger::Plain => assert_eq!(bytes, 0, "{kind:?} {how:?}"),
                // The first message fails the PSK: nothing is answered.
                Stranger::Garbage | Stranger::WrongSecret => {
                    assert_eq!(bytes, 0, "{kind:?} {how:?}")
                }
                // The impersonator's third message proves a key that is not the one
                // listed for the id it claims: the listener closes, nothing is served.
                Stranger::Impersonator => assert_eq!(bytes, 0, "{kind:?} {how:?}"),
            }
        }
    }
    // The run goes on, exact and bit-identical.
    exact_sum(&comms, 100_000, 1, 5).unwrap();
    sync_all(&comms, 4);
}
