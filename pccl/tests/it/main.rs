//! Real-TCP loopback tests, one binary.

mod all_reduce;
mod bad_input;
mod churn;
mod collectives;
mod common;
mod dashboard;
mod grid;
mod handshake;
mod hostile;
mod master_deadlines;
mod master_http;
mod master_restart;
mod master_robust;
mod quant;
mod secure;
mod send_sync;
mod shared_state;
mod shared_state_liar;
mod tamper;
mod topology;
