//! Real-TCP loopback tests, one binary (CONVENTIONS C13).

mod all_reduce;
mod bad_input;
mod churn;
mod common;
mod grid;
mod handshake;
mod quant;
mod send_sync;
mod shared_state;
mod topology;
