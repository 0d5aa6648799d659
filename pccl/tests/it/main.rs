//! Real-TCP loopback tests, one binary (CONVENTIONS C13).

mod all_reduce;
mod churn;
mod common;
mod grid;
