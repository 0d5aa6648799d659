//! Arbitrary bytes into every frame decoder: control messages in both directions, the
//! data-frame header and the ring-frame (data or keepalive) decoder, and the control
//! length prefix. Decoding must never panic, and what
//! decodes must re-encode to bytes that decode to the same encoding (docs/PROTOCOL.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pccl::wire::{
    DATA_HEADER_LEN, DataHeader, FromMaster, KEEPALIVE, RingFrame, ToMaster, check_control_len,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ToMaster::decode(data) {
        let mut once = Vec::new();
        msg.encode(&mut once);
        let again = ToMaster::decode(&once).expect("a re-encoded ToMaster decodes");
        let mut twice = Vec::new();
        again.encode(&mut twice);
        assert_eq!(once, twice, "ToMaster round trip changed the bytes");
    }
    if let Ok(msg) = FromMaster::decode(data) {
        let mut once = Vec::new();
        msg.encode(&mut once);
        let again = FromMaster::decode(&once).expect("a re-encoded FromMaster decodes");
        let mut twice = Vec::new();
        again.encode(&mut twice);
        assert_eq!(once, twice, "FromMaster round trip changed the bytes");
    }
    if let Some(head) = data.first_chunk::<DATA_HEADER_LEN>() {
        if let Ok(h) = DataHeader::decode(head) {
            let mut bytes = Vec::new();
            h.encode(&mut bytes);
            let bytes: &[u8; DATA_HEADER_LEN] = bytes[..].try_into().expect("header length");
            assert_eq!(
                DataHeader::decode(bytes).ok(),
                Some(h),
                "DataHeader round trip"
            );
        }
        match RingFrame::decode(head) {
            Ok(RingFrame::Data(h)) => assert_eq!(DataHeader::decode(head).ok(), Some(h)),
            Ok(RingFrame::Keepalive) => assert_eq!(head, &KEEPALIVE, "only one keepalive"),
            Err(_) => {}
        }
    }
    if let Some(len) = data.first_chunk::<4>() {
        let _ = check_control_len(u32::from_le_bytes(*len));
    }
});
