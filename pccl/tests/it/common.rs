//! Helpers: a master and N communicators on loopback, built to a given world size.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pccl::{Attribute, Communicator, CommunicatorConfig, MasterConfig, MasterNode};

pub(crate) fn master() -> MasterNode {
    master_with(Duration::from_secs(5))
}

pub(crate) fn master_with(heartbeat_timeout: Duration) -> MasterNode {
    pccl::init_logging();
    let mut cfg = MasterConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.heartbeat_timeout = heartbeat_timeout;
    // These runs never restart their master: no need to hold the first peer back.
    cfg.startup_grace = Duration::ZERO;
    MasterNode::start(cfg).expect("master starts")
}

/// A socket whose source address is `ip` (any 127/8 address is local on Linux): a
/// stranger on another host, as far as the listener can tell.
pub(crate) fn connect_from(ip: &str, to: SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{ip}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.into()
}

pub(crate) fn config(master: SocketAddr) -> CommunicatorConfig {
    let mut c = CommunicatorConfig::new(master);
    c.bind_ip = "127.0.0.1".parse().unwrap();
    c.p2p_port = 0;
    c
}

/// Connects `n` communicators made from `make` and grows the run until all are accepted.
pub(crate) fn cluster_with(
    n: usize,
    make: impl Fn(usize) -> CommunicatorConfig,
) -> Vec<Communicator> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let cfg = make(i);
            std::thread::spawn(move || {
                let comm = Communicator::new(cfg).unwrap();
                comm.connect().unwrap();
                while comm.attribute(Attribute::GlobalWorldSize).unwrap() < n {
                    assert!(Instant::now() < deadline, "cluster did not form in time");
                    match comm.update_topology() {
                        Ok(()) | Err(pccl::Error::UpdateTopologyFailed(_)) => {}
                        Err(e) => panic!("update_topology: {e}"),
                    }
                }
                comm
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

pub(crate) fn cluster(master: &MasterNode, n: usize) -> Vec<Communicator> {
    let addr = master.local_addr();
    cluster_with(n, |_| config(addr))
}

/// Runs `f(rank, comm)` on every communicator in its own thread and collects the results.
pub(crate) fn on_all<T: Send>(
    comms: &[Communicator],
    f: impl Fn(usize, &Communicator) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let f = &f;
                s.spawn(move || f(i, c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Adds one newcomer made from `cfg` to the run: the accepted peers update the topology
/// until it is in. Returns the grown list.
pub(crate) fn grow(comms: Vec<Communicator>, cfg: CommunicatorConfig) -> Vec<Communicator> {
    let n = comms.len() + 1;
    let newcomer = std::thread::spawn(move || {
        let c = Communicator::new(cfg).unwrap();
        c.connect().unwrap();
        c
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    on_all(&comms, |_, c| {
        while c.attribute(Attribute::GlobalWorldSize).unwrap() < n {
            assert!(Instant::now() < deadline, "newcomer not admitted in time");
            match c.update_topology() {
                Ok(()) | Err(pccl::Error::UpdateTopologyFailed(_)) => {}
                Err(e) => panic!("update_topology: {e}"),
            }
        }
    });
    let mut comms = comms;
    comms.push(newcomer.join().unwrap());
    comms
}
