//! `#[repr(C)]` mirrors of PCCL 1.0's public enums and structs, in its field order.
//!
//! # How enum values cross the boundary
//!
//! PCCL's enums are plain C enums, so the header declares them as such
//! (`typedef enum pcclRedOp_t { pcclSum = 0, ... } pcclRedOp_t;`), generated from the Rust
//! enums below. A C caller can still pass any `int` where such an enum is expected, and
//! turning an out-of-range value into a Rust enum is undefined behaviour. So no parameter
//! or struct field on the Rust side has a Rust enum type: each has a `#[repr(transparent)]`
//! newtype over `c_int` (`RawRedOp`, ...), which `cbindgen.toml` renames to the C enum's
//! name and leaves out of the header. The C side sees the PCCL signature; the Rust side
//! reads an `int` and validates it (`RawRedOp::get`), answering `pcclInvalidArgument` for
//! unknown values. A C enum whose values fit in `int` has the size and calling convention
//! of `int`, which the layout test checks from C.
//!
//! Results go the other way (Rust to C), so functions return the Rust enum
//! [`pcclResult_t`](crate::result::pcclResult_t) directly.
//!
//! `bool` fields are Rust `bool`: C's `_Bool` only ever holds 0 or 1 in a valid program.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

use crate::handle::pcclComm_t;

/// PCCL's `CCOIP_PROTOCOL_PORT_MASTER`: the master's default port.
pub const CCOIP_PROTOCOL_PORT_MASTER: u16 = 48148;
/// PCCL's `CCOIP_PROTOCOL_PORT_SHARED_STATE`.
pub const CCOIP_PROTOCOL_PORT_SHARED_STATE: u16 = 48149;
/// PCCL's `CCOIP_PROTOCOL_PORT_P2P`: the first port a peer tries for its p2p listener.
pub const CCOIP_PROTOCOL_PORT_P2P: u16 = 48150;
/// PCCL's `CCOIP_PROTOCOL_PORT_BANDWIDTH_BENCHMARK`.
pub const CCOIP_PROTOCOL_PORT_BANDWIDTH_BENCHMARK: u16 = 48151;

/// Declares the `c_int` carrier of a C enum (the enum itself is written out plainly
/// because cbindgen does not expand macros), with a checked conversion.
macro_rules! raw_enum {
    ($raw:ident => $name:ident [$($variant:ident),* $(,)?]) => {
        #[doc = concat!("A `", stringify!($name), "` as the C caller passed it: any `int`.")]
        #[repr(transparent)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $raw(pub c_int);

        impl $raw {
            /// The enum value, if the raw value names one.
            pub fn get(self) -> Option<$name> {
                [$($name::$variant),*].into_iter().find(|v| *v as c_int == self.0)
            }
        }

        impl From<$name> for $raw {
            fn from(v: $name) -> Self {
                Self(v as c_int)
            }
        }
    };
}

/// Element types (PCCL's numbering; note that `pcclInt16` comes before `pcclUint16`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pcclDataType_t {
    pcclUint8 = 0,
    pcclInt8 = 1,
    pcclInt16 = 2,
    pcclUint16 = 3,
    pcclUint32 = 4,
    pcclInt32 = 5,
    pcclUint64 = 6,
    pcclInt64 = 7,
    pcclFloat16 = 8,
    pcclBFloat16 = 9,
    pcclFloat = 10,
    pcclDouble = 11,
}

raw_enum!(RawDataType => pcclDataType_t [pcclUint8, pcclInt8, pcclInt16, pcclUint16, pcclUint32, pcclInt32, pcclUint64, pcclInt64, pcclFloat16, pcclBFloat16, pcclFloat, pcclDouble]);

/// Where a tensor's memory lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pcclDeviceType_t {
    pcclDeviceCpu = 0,
    /// Not supported by this build (see `pcclGetBuildInfo`): calls answer
    /// `pcclInvalidArgument`.
    pcclDeviceCuda = 1,
}

raw_enum!(RawDeviceType => pcclDeviceType_t [pcclDeviceCpu, pcclDeviceCuda]);

/// Reduction operations.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pcclRedOp_t {
    pcclSum = 0,
    /// Sum divided by the number of peers that took part (integer division for integers).
    pcclAvg = 1,
    pcclProd = 2,
    pcclMax = 3,
    pcclMin = 4,
}

raw_enum!(RawRedOp => pcclRedOp_t [pcclSum, pcclAvg, pcclProd, pcclMax, pcclMin]);

/// Attributes readable with `pcclGetAttribute`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pcclAttribute_t {
    /// Accepted peers in the whole run.
    PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE = 1,
    /// Accepted peers in this communicator's peer group.
    PCCL_ATTRIBUTE_PEER_GROUP_WORLD_SIZE = 2,
    /// Number of distinct peer groups among accepted peers.
    PCCL_ATTRIBUTE_NUM_DISTINCT_PEER_GROUPS = 3,
    /// Size of the largest peer group.
    PCCL_ATTRIBUTE_LARGEST_PEER_GROUP_WORLD_SIZE = 4,
}

raw_enum!(RawAttribute => pcclAttribute_t [PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, PCCL_ATTRIBUTE_PEER_GROUP_WORLD_SIZE, PCCL_ATTRIBUTE_NUM_DISTINCT_PEER_GROUPS, PCCL_ATTRIBUTE_LARGEST_PEER_GROUP_WORLD_SIZE]);

/// How a peer takes part in `pcclSynchronizeSharedState`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pcclSharedStateSyncStrategy_t {
    /// Vote with our content; receive what differs from the popular content.
    PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR = 0,
    /// Never send, do not vote; receive the popular content.
    PCCL_SHARED_STATE_SYNC_STRATEGY_RECEIVE_ONLY = 1,
    /// Never receive; our content must win, else the sync fails and nothing is written.
    PCCL_SHARED_STATE_SYNC_STRATEGY_SEND_ONLY = 2,
}

raw_enum!(RawSyncStrategy => pcclSharedStateSyncStrategy_t [PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR, PCCL_SHARED_STATE_SYNC_STRATEGY_RECEIVE_ONLY, PCCL_SHARED_STATE_SYNC_STRATEGY_SEND_ONLY]);

/// A hint about the distribution of the values reduced (accepted, currently unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pcclDistributionHint_t {
    pcclDistributionNone = 0,
    pcclDistributionNormal = 1,
    pcclDistributionUniform = 2,
}

raw_enum!(RawDistributionHint => pcclDistributionHint_t [pcclDistributionNone, pcclDistributionNormal, pcclDistributionUniform]);

/// Quantisation algorithms for all-reduce traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pcclQuantizationAlgorithm_t {
    pcclQuantNone = 0,
    pcclQuantMinMax = 1,
    pcclQuantZeroPointScale = 2,
}

raw_enum!(RawQuantizationAlgorithm => pcclQuantizationAlgorithm_t [pcclQuantNone, pcclQuantMinMax, pcclQuantZeroPointScale]);

/// Which member of `ccoip_inet_address_t` holds the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ccoip_inet_protocol_t {
    inetIPv4 = 0,
    inetIPv6 = 1,
}

raw_enum!(RawInetProtocol => ccoip_inet_protocol_t [inetIPv4, inetIPv6]);

/// An IPv4 address, most significant byte first (`{127, 0, 0, 1}`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ccoip_ipv4_address_t {
    pub data: [u8; 4],
}

/// An IPv6 address, most significant byte first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ccoip_ipv6_address_t {
    pub data: [u8; 16],
}

/// An IP address; `protocol` says whether `ipv4` or `ipv6` holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ccoip_inet_address_t {
    pub protocol: RawInetProtocol,
    pub ipv4: ccoip_ipv4_address_t,
    pub ipv6: ccoip_ipv6_address_t,
}

/// An IP address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ccoip_socket_address_t {
    pub inet: ccoip_inet_address_t,
    pub port: u16,
}

/// Settings for `pcclCreateCommunicator`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclCommCreateParams_t {
    /// Where the master listens.
    pub master_address: ccoip_socket_address_t,
    /// Collectives and shared-state syncs span one peer group.
    pub peer_group: u32,
    /// TCP connections to each ring neighbour (0 means 1; at most 1024).
    pub p2p_connection_pool_size: u32,
}

/// What a finished all-reduce reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pcclReduceInfo_t {
    /// Peers of the group that took part.
    pub local_world_size: u32,
    /// Payload bytes this peer sent.
    pub tx_bytes: u64,
    /// Payload bytes this peer received.
    pub rx_bytes: u64,
}

/// The element type of the buffers and a hint about their values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclReduceOperandDescriptor_t {
    pub datatype: RawDataType,
    pub distribution_hint: RawDistributionHint,
}

/// How all-reduce traffic is quantised. `pcclQuantNone` sends the source type (full
/// precision; `quantized_datatype` is then ignored). `pcclQuantMinMax` and
/// `pcclQuantZeroPointScale` send each slice as `quantized_datatype` (pcclUint8, pcclInt8,
/// pcclUint16, pcclFloat16 or pcclBFloat16) with its scale and offset, for float sources and
/// sum, avg, max or min; other combinations return `pcclInvalidArgument`. Every peer still
/// ends with the same bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclQuantizationOptions_t {
    pub quantized_datatype: RawDataType,
    pub algorithm: RawQuantizationAlgorithm,
}

/// What one all-reduce does. Every peer must pass the same descriptor for the same op.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclReduceDescriptor_t {
    /// Elements in each buffer (at least 1).
    pub count: usize,
    pub op: RawRedOp,
    /// Names the op; concurrent ops of one peer need distinct tags.
    pub tag: u64,
    pub src_descriptor: pcclReduceOperandDescriptor_t,
    pub quantization_options: pcclQuantizationOptions_t,
}

/// One op of `pcclAllReduceMultipleWithRetry`. `sendbuf == recvbuf` reduces in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclReduceSingleDescriptor_t {
    pub sendbuf: *mut c_void,
    pub recvbuf: *mut c_void,
    pub descriptor: pcclReduceDescriptor_t,
}

/// PCCL's name for `pcclReduceSingleDescriptor_t`.
pub type pcclReduceOpDescriptor_t = pcclReduceSingleDescriptor_t;

/// An all-reduce started by `pcclAllReduceAsync`, named by its communicator and tag.
/// A plain value: copying it is fine, but only one `pcclAwaitAsyncReduce` per op succeeds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclAsyncReduceOp_t {
    pub comm: *mut pcclComm_t,
    pub tag: u64,
}

/// A peer's 128-bit identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pcclRankUuid_t {
    pub data: [u8; 16],
}

/// One tensor of the shared state. `data` holds `count` elements of `datatype`; the
/// tensors of one state must not overlap.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclTensorInfo_t {
    /// NUL-terminated UTF-8 key, unique in the state; peers match tensors by it.
    pub name: *const c_char,
    pub data: *mut c_void,
    pub count: usize,
    pub datatype: RawDataType,
    pub device_type: RawDeviceType,
    /// Whether peers may hold different content (it is then never transferred).
    pub allow_content_inequality: bool,
}

/// The state every peer of a group keeps identical: a revision and its tensors.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct pcclSharedState_t {
    /// Must advance by exactly one per step; updated by the sync when content is received.
    pub revision: u64,
    /// Number of entries in `infos`.
    pub count: usize,
    pub infos: *mut pcclTensorInfo_t,
}

/// What a shared-state sync moved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pcclSharedStateSyncInfo_t {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// Facts about this build of the library.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pcclBuildInfo_t {
    /// Whether CUDA tensors are accepted. Always false for this C library.
    pub has_cuda_support: bool,
}

impl ccoip_socket_address_t {
    /// The address as a Rust socket address; `None` for an unknown protocol.
    pub(crate) fn to_socket_addr(self) -> Option<std::net::SocketAddr> {
        let ip = match self.inet.protocol.get()? {
            ccoip_inet_protocol_t::inetIPv4 => std::net::IpAddr::from(self.inet.ipv4.data),
            ccoip_inet_protocol_t::inetIPv6 => std::net::IpAddr::from(self.inet.ipv6.data),
        };
        Some(std::net::SocketAddr::new(ip, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PCCL 1.0's numbers, written out once more on purpose, for every enum.
    #[test]
    fn enum_numbers_are_pccl_s() {
        fn check<E: Copy + std::fmt::Debug + PartialEq>(
            get: impl Fn(c_int) -> Option<E>,
            n: c_int,
        ) {
            for v in 0..n {
                assert!(get(v).is_some(), "{v} must be valid");
            }
            assert_eq!(get(-1), None);
            assert_eq!(get(n), None);
        }
        check(|v| RawDataType(v).get(), 12);
        check(|v| RawDeviceType(v).get(), 2);
        check(|v| RawRedOp(v).get(), 5);
        check(|v| RawSyncStrategy(v).get(), 3);
        check(|v| RawDistributionHint(v).get(), 3);
        check(|v| RawQuantizationAlgorithm(v).get(), 3);
        check(|v| RawInetProtocol(v).get(), 2);
        assert_eq!(RawAttribute(0).get(), None);
        assert_eq!(RawAttribute(5).get(), None);
        for v in 1..=4 {
            assert_eq!(RawAttribute(v).get().map(|a| a as c_int), Some(v));
        }
        for v in 0..12 {
            assert_eq!(RawDataType(v).get().map(|a| a as c_int), Some(v));
        }
        assert_eq!(pcclDataType_t::pcclInt16 as c_int, 2);
        assert_eq!(pcclDataType_t::pcclUint16 as c_int, 3);
        assert_eq!(pcclDataType_t::pcclDouble as c_int, 11);
        assert_eq!(pcclRedOp_t::pcclMin as c_int, 4);
        assert_eq!(pcclDeviceType_t::pcclDeviceCuda as c_int, 1);
        assert_eq!(
            pcclSharedStateSyncStrategy_t::PCCL_SHARED_STATE_SYNC_STRATEGY_SEND_ONLY as c_int,
            2
        );
        assert_eq!(
            pcclQuantizationAlgorithm_t::pcclQuantZeroPointScale as c_int,
            2
        );
        assert_eq!(pcclDistributionHint_t::pcclDistributionUniform as c_int, 2);
        assert_eq!(ccoip_inet_protocol_t::inetIPv6 as c_int, 1);
    }

    #[test]
    fn socket_addresses_convert() {
        let mut a = ccoip_socket_address_t {
            inet: ccoip_inet_address_t {
                protocol: ccoip_inet_protocol_t::inetIPv4.into(),
                ipv4: ccoip_ipv4_address_t {
                    data: [127, 0, 0, 1],
                },
                ipv6: ccoip_ipv6_address_t::default(),
            },
            port: CCOIP_PROTOCOL_PORT_MASTER,
        };
        assert_eq!(a.to_socket_addr(), Some("127.0.0.1:48148".parse().unwrap()));
        a.inet.protocol = ccoip_inet_protocol_t::inetIPv6.into();
        a.inet.ipv6.data[15] = 1;
        assert_eq!(a.to_socket_addr(), Some("[::1]:48148".parse().unwrap()));
        a.inet.protocol = RawInetProtocol(2);
        assert_eq!(a.to_socket_addr(), None);
    }
}
