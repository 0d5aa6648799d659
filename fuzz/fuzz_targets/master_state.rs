//! Arbitrary input sequences into the master's state machine: connects, messages (made
//! up from the bytes or decoded from raw frames), disconnects and clock advances. It
//! must never panic, and one input must never queue more outputs than its state justifies
//! (see `pccl::master::drive`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pccl::master::drive::drive(data);
});
