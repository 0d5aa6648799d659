//! Checks from C that every struct and enum of `include/pccl.h` has the size, field
//! offsets and values of its Rust definition: compiles a probe with the C99 flags of the
//! C tests (and once as C++), runs it and compares its report with `size_of`/`offset_of!`.

use std::collections::BTreeSet;
use std::ffi::c_int;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::handle::pcclMasterInstance_t;
use crate::result::pcclResult_t;
use crate::types::*;

/// `(C name, Rust size, [(field, Rust offset)])` for a list of structs.
macro_rules! structs {
    ($($t:ident { $($f:ident),* $(,)? })*) => {
        vec![$((stringify!($t), size_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f))),*])),*]
    };
}

/// `(C enum name, Rust size of the enum and of its carrier, [(value name, value)])`.
macro_rules! enums {
    ($($t:ident / $raw:ty { $($v:ident),* $(,)? })*) => {
        vec![$((stringify!($t), size_of::<$t>(), size_of::<$raw>(), vec![$((stringify!($v), $t::$v as c_int)),*])),*]
    };
}

fn expected() -> (Vec<String>, Vec<String>) {
    let structs = structs! {
        ccoip_ipv4_address_t { data }
        ccoip_ipv6_address_t { data }
        ccoip_inet_address_t { protocol, ipv4, ipv6 }
        ccoip_socket_address_t { inet, port }
        pcclCommCreateParams_t { master_address, peer_group, p2p_connection_pool_size }
        pcclReduceInfo_t { local_world_size, tx_bytes, rx_bytes }
        pcclReduceOperandDescriptor_t { datatype, distribution_hint }
        pcclQuantizationOptions_t { quantized_datatype, algorithm }
        pcclReduceDescriptor_t { count, op, tag, src_descriptor, quantization_options }
        pcclReduceSingleDescriptor_t { sendbuf, recvbuf, descriptor }
        pcclAsyncReduceOp_t { comm, tag }
        pcclRankUuid_t { data }
        pcclTensorInfo_t { name, data, count, datatype, device_type, allow_content_inequality }
        pcclSharedState_t { revision, count, infos }
        pcclSharedStateSyncInfo_t { tx_bytes, rx_bytes }
        pcclBuildInfo_t { has_cuda_support }
    };
    let enums = enums! {
        pcclResult_t / pcclResult_t {
            pcclSuccess, pcclNotInitialized, pcclInternalError, pcclInvalidArgument,
            pcclInvalidUsage, pcclTooFewPeers, pcclMasterConnectionFailed,
            pcclRankConnectionFailed, pcclRankConnectionLost, pcclNoSharedStateAvailable,
            pcclPendingAsyncOps, pcclUpdateTopologyFailed, pcclTopologyOptimizationFailed,
        }
        pcclDataType_t / RawDataType {
            pcclUint8, pcclInt8, pcclInt16, pcclUint16, pcclUint32, pcclInt32, pcclUint64,
            pcclInt64, pcclFloat16, pcclBFloat16, pcclFloat, pcclDouble,
        }
        pcclDeviceType_t / RawDeviceType { pcclDeviceCpu, pcclDeviceCuda }
        pcclRedOp_t / RawRedOp { pcclSum, pcclAvg, pcclProd, pcclMax, pcclMin }
        pcclAttribute_t / RawAttribute {
            PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, PCCL_ATTRIBUTE_PEER_GROUP_WORLD_SIZE,
            PCCL_ATTRIBUTE_NUM_DISTINCT_PEER_GROUPS, PCCL_ATTRIBUTE_LARGEST_PEER_GROUP_WORLD_SIZE,
        }
        pcclSharedStateSyncStrategy_t / RawSyncStrategy {
            PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR,
            PCCL_SHARED_STATE_SYNC_STRATEGY_RECEIVE_ONLY,
            PCCL_SHARED_STATE_SYNC_STRATEGY_SEND_ONLY,
        }
        pcclDistributionHint_t / RawDistributionHint {
            pcclDistributionNone, pcclDistributionNormal, pcclDistributionUniform,
        }
        pcclQuantizationAlgorithm_t / RawQuantizationAlgorithm {
            pcclQuantNone, pcclQuantMinMax, pcclQuantZeroPointScale,
        }
        ccoip_inet_protocol_t / RawInetProtocol { inetIPv4, inetIPv6 }
    };
    // The probe's lines and the values Rust expects for them.
    let mut probe = Vec::new();
    let mut want = Vec::new();
    for (name, size, fields) in structs {
        probe.push(format!(
            "printf(\"size {name} %lu\\n\", (unsigned long)sizeof({name}));"
        ));
        want.push(format!("size {name} {size}"));
        for (field, offset) in fields {
            probe.push(format!(
                "printf(\"offset {name}.{field} %lu\\n\", (unsigned long)offsetof({name}, {field}));"
            ));
            want.push(format!("offset {name}.{field} {offset}"));
        }
    }
    for (name, size, raw_size, values) in enums {
        assert_eq!(
            size, raw_size,
            "{name}: the enum and its int carrier differ in size"
        );
        probe.push(format!(
            "printf(\"size {name} %lu\\n\", (unsigned long)sizeof({name}));"
        ));
        want.push(format!("size {name} {size}"));
        for (value, n) in values {
            probe.push(format!("printf(\"value {value} %d\\n\", (int){value});"));
            want.push(format!("value {value} {n}"));
        }
    }
    // Aliases PCCL programs use.
    let aliases = [
        (
            "pcclReduceOpDescriptor_t",
            size_of::<pcclReduceOpDescriptor_t>(),
        ),
        (
            "pcclMasterInstance_t *",
            size_of::<*mut pcclMasterInstance_t>(),
        ),
    ];
    for (name, size) in aliases {
        probe.push(format!(
            "printf(\"size {name} %lu\\n\", (unsigned long)sizeof({name}));"
        ));
        want.push(format!("size {name} {size}"));
    }
    for (name, value) in [
        ("CCOIP_PROTOCOL_PORT_MASTER", CCOIP_PROTOCOL_PORT_MASTER),
        (
            "CCOIP_PROTOCOL_PORT_SHARED_STATE",
            CCOIP_PROTOCOL_PORT_SHARED_STATE,
        ),
        ("CCOIP_PROTOCOL_PORT_P2P", CCOIP_PROTOCOL_PORT_P2P),
        (
            "CCOIP_PROTOCOL_PORT_BANDWIDTH_BENCHMARK",
            CCOIP_PROTOCOL_PORT_BANDWIDTH_BENCHMARK,
        ),
    ] {
        probe.push(format!("printf(\"value {name} %d\\n\", (int){name});"));
        want.push(format!("value {name} {value}"));
    }
    (probe, want)
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../include")
}

fn run_probe(compiler: &str, lang: &[&str], source: &str, dir: &Path) -> BTreeSet<String> {
    let src = dir.join(format!("probe-{compiler}.c"));
    let exe = dir.join(format!("probe-{compiler}"));
    std::fs::write(&src, source).unwrap();
    let out = Command::new(compiler)
        .args(lang)
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(include_dir())
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} failed on the layout probe:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn c_layouts_match_rust() {
    let (probe, want) = expected();
    let source = format!(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"pccl.h\"\n#include \"ccoip.h\"\n\
         #include \"ccoip_inet.h\"\nint main(void) {{\n{}\nreturn 0;\n}}\n",
        probe.join("\n")
    );
    let dir = std::env::temp_dir().join(format!("pccl-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let want: BTreeSet<String> = want.into_iter().collect();
    for (compiler, lang) in [
        ("gcc", &["-std=c99"][..]),
        ("g++", &["-x", "c++", "-std=c++11"][..]),
    ] {
        let got = run_probe(compiler, lang, &source, &dir);
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{compiler}: C and Rust disagree.\nRust expects: {missing:#?}\nC reports: {extra:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
