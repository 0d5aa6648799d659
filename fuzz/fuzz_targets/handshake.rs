//! Arbitrary bytes into the connection handshake decoder. It must never panic, and a
//! `Hello` that decodes must re-encode to exactly the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pccl::wire::{HELLO_LEN, Hello};

fuzz_target!(|data: &[u8]| {
    if let Some(buf) = data.first_chunk::<HELLO_LEN>() {
        if let Ok(hello) = Hello::decode(buf) {
            assert_eq!(&hello.encode(), buf, "Hello round trip changed the bytes");
        }
    }
});
