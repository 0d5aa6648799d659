//! Real-TCP loopback tests, one binary (CONVENTIONS C13).

mod all_reduce;
mod common;
