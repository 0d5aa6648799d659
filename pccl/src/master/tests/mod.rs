//! Tests of the master's state machine: a seeded cluster simulator with invariant checks
//! after every step (the property test), plus hand-written scenarios by subject and a
//! test that pins the phase transitions.
//!
//! Layout: `sim` (the simulated cluster), `peer_model` (its peers), `invariants` (its
//! checks), `property` (the seeded random runs), `harness` (the scenario driver), `admission`, `ops`, `optimize`
//! and `phases` (scenarios), `deadlines` (each bounded wait evicts a peer that misses it), `sync_plans` (seeded
//! shared-state syncs: fetch lists, serve lists and the layout rule agree),
//! `node` (the running node: crash reporting), `restart` (a restarted master rebuilds the
//! run from the peers' `Rejoin` claims).

use std::time::Duration;

const HB_TIMEOUT: Duration = Duration::from_secs(1);
/// Peers heartbeat four times per timeout, as a real peer does with default settings.
const HB_INTERVAL: Duration = Duration::from_millis(250);

type Res = Result<(), String>;

/// Fails the current run with a formatted message (the run then reports seed and trace).
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

mod admission;
mod crash;
mod deadlines;
mod drive;
mod harness;
mod invariants;
mod node;
mod ops;
mod optimize;
mod peer_model;
mod phases;
mod property;
mod restart;
mod sim;
mod sync_model;
mod sync_plans;
