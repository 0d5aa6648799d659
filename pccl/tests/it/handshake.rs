//! Hostile or broken connections on any listening port are dropped; the run continues.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pccl::wire::{ConnectionKind, HELLO_LEN, Hello};
use pccl::{Communicator, PeerId, ReduceOp};

use crate::common::{cluster, master, on_all};

/// Waits until the server closes `s`, failing after `limit`.
fn assert_closed(mut s: TcpStream, limit: Duration) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(_) => {}
        }
        assert!(Instant::now() < end, "server kept a bad connection open");
    }
}

fn still_works(comms: &[Communicator]) {
    let res = on_all(comms, |_, c| {
        let mut out = [0i64; 5];
        c.all_reduce(&[1i64, 2, 3, 4, 5], &mut out, ReduceOp::Sum, 0)
            .unwrap();
        out
    });
    let n = comms.len() as i64;
    assert!(res.iter().all(|r| *r == [n, 2 * n, 3 * n, 4 * n, 5 * n]));
}

/// `claim`: an id the listener serves `kind` to (strangers are refused before the hello
/// is answered).
fn hostile(addr: SocketAddr, kind: ConnectionKind, claim: PeerId) {
    // Garbage instead of a hello.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed(s, Duration::from_secs(3));
    // Our magic, a wrong version.
    let mut hello = Hello {
        kind,
        peer: PeerId([9; 16]),
    }
    .encode();
    hello[4] = 0xFF;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello).unwrap();
    assert_closed(s, Duration::from_secs(3));
    // A valid hello, then a length prefix far beyond any bound.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&Hello { kind, peer: claim }.encode()).unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    s.read_exact(&mut theirs).unwrap();
    s.write_all(&[0xFF; 64]).unwrap();
    assert_closed(s, Duration::from_secs(3));
}

#[test]
fn master_port_survives_garbage_bad_handshakes_and_huge_lengths() {
    let m = master();
    let comms = cluster(&m, 2);
    // A half-open connection that never says anything is dropped after the handshake timeout.
    let silent = TcpStream::connect(m.local_addr()).unwrap();
    hostile(m.local_addr(), ConnectionKind::Control, PeerId([8; 16]));
    still_works(&comms);
    assert_closed(silent, Duration::from_secs(8));
    still_works(&comms);
}

#[test]
fn p2p_port_survives_garbage_bad_handshakes_and_huge_lengths() {
    let m = master();
    let comms = cluster(&m, 3);
    let ring = comms[0].topology().unwrap().ring.clone();
    let addr = ring[0].p2p_addr;
    let silent = TcpStream::connect(addr).unwrap();
    // On loopback every peer has the same address: claiming the predecessor's id gets
    // past the gate to the frame reader.
    hostile(addr, ConnectionKind::P2p, ring[ring.len() - 1].id);
    still_works(&comms);
    assert_closed(silent, Duration::from_secs(8));
    still_works(&comms);
}
