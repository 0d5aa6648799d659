//! The running `MasterNode`: a panic of its thread is logged and reported by
//! `await_termination`, never swallowed; a clean stop is not an error.

use std::time::{Duration, Instant};

use crate::error::Error;
use crate::master::{MasterConfig, MasterNode};

fn start() -> MasterNode {
    MasterNode::start(MasterConfig::new(([127, 0, 0, 1], 0).into())).expect("master starts")
}

#[test]
fn a_crashed_master_is_reported_by_await_termination() {
    let master = start();
    let addr = master.local_addr();
    master.crash_for_tests();
    let end = master.await_termination();
    match &end {
        Err(Error::Internal(why)) => assert!(
            why.contains("the master crashed") && why.contains("crash requested by a test"),
            "unexpected message: {why}"
        ),
        other => panic!("await_termination after a crash returned {other:?}"),
    }
    assert!(master.has_crashed());
    // Asked again, it says the same: nobody can miss it.
    assert!(matches!(
        master.await_termination(),
        Err(Error::Internal(_))
    ));
    // The crashed master no longer listens (poll: the OS may take a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "a crashed master still accepts");
        std::thread::yield_now();
    }
}

#[test]
fn an_interrupted_master_ends_without_error() {
    let master = start();
    master.interrupt();
    assert!(master.await_termination().is_ok());
    assert!(!master.has_crashed());
    // A crash request after the stop finds nobody to crash.
    master.crash_for_tests();
    assert!(master.await_termination().is_ok());
}
