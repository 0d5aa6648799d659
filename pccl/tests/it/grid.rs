//! The all-reduce grid: world size 1–5 × count {1, 3, n−1, 1000, 2^20+7} × every dtype ×
//! every op, against a reference computed locally, bit for bit across peers.
//!
//! Inputs are small integers, so every summation order gives the same value and the
//! reference is exact; `Avg` divides once, in the type's own precision, as the ring does.

use half::{bf16, f16};
use pccl::{DataType, ReduceDescriptor, ReduceOp, SliceBuffers};

use crate::common::{cluster, master, on_all};

/// The value rank `r` contributes at element `i` for `op`.
fn input(op: ReduceOp, r: usize, i: usize) -> f64 {
    match op {
        // Products stay small: factors of 1 and 2 over at most 5 ranks.
        ReduceOp::Prod => ((i + r) % 2 + 1) as f64,
        _ => ((i * 7 + r * 3) % 11) as f64,
    }
}

fn encode(dtype: DataType, v: f64, out: &mut Vec<u8>) {
    match dtype {
        DataType::U8 => out.push(v as u8),
        DataType::I8 => out.push(v as i8 as u8),
        DataType::U16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
        DataType::I16 => out.extend_from_slice(&(v as i16).to_le_bytes()),
        DataType::U32 => out.extend_from_slice(&(v as u32).to_le_bytes()),
        DataType::I32 => out.extend_from_slice(&(v as i32).to_le_bytes()),
        DataType::U64 => out.extend_from_slice(&(v as u64).to_le_bytes()),
        DataType::I64 => out.extend_from_slice(&(v as i64).to_le_bytes()),
        DataType::F16 => out.extend_from_slice(&f16::from_f64(v).to_le_bytes()),
        DataType::Bf16 => out.extend_from_slice(&bf16::from_f64(v).to_le_bytes()),
        DataType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        DataType::F64 => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// The expected result element: exact integer reduction, then `Avg`'s one division.
fn expected(dtype: DataType, op: ReduceOp, n: usize, i: usize, out: &mut Vec<u8>) {
    let vals = (0..n).map(|r| input(op, r, i));
    let v = match op {
        ReduceOp::Sum | ReduceOp::Avg => vals.sum::<f64>(),
        ReduceOp::Prod => vals.product(),
        ReduceOp::Max => vals.fold(f64::MIN, f64::max),
        ReduceOp::Min => vals.fold(f64::MAX, f64::min),
    };
    if op != ReduceOp::Avg {
        return encode(dtype, v, out);
    }
    match dtype {
        DataType::F16 => encode(dtype, f64::from(f16::from_f32(v as f32 / n as f32)), out),
        DataType::Bf16 => encode(dtype, f64::from(bf16::from_f32(v as f32 / n as f32)), out),
        DataType::F32 => encode(dtype, f64::from(v as f32 / n as f32), out),
        DataType::F64 => encode(dtype, v / n as f64, out),
        _ => encode(dtype, (v as u64 / n as u64) as f64, out),
    }
}

fn counts(n: usize) -> Vec<usize> {
    let mut c = vec![1, 3, 1000, (1 << 20) + 7];
    if n > 1 {
        c.push(n - 1);
    }
    c
}

fn run_grid(n: usize) {
    let m = master();
    let comms = cluster(&m, n);
    let results = on_all(&comms, |_, comm| {
        let topo = comm.topology().unwrap();
        let rank = topo.ring.iter().position(|p| p.id == comm.id()).unwrap();
        let mut crcs = Vec::new();
        for count in counts(n) {
            for dtype in DataType::ALL {
                for op in ReduceOp::ALL {
                    let mut send = Vec::with_capacity(count * dtype.size());
                    let mut want = Vec::with_capacity(count * dtype.size());
                    for i in 0..count {
                        encode(dtype, input(op, rank, i), &mut send);
                        expected(dtype, op, n, i, &mut want);
                    }
                    let mut recv = vec![0u8; send.len()];
                    let desc = ReduceDescriptor::new(count, dtype, op).with_tag(7);
                    let bufs = SliceBuffers::new(&send, &mut recv).unwrap();
                    match comm.all_reduce_with(bufs, desc) {
                        Err(pccl::Error::TooFewPeers) if n == 1 => continue,
                        Err(e) => panic!("n={n} count={count} {dtype:?} {op:?}: {e}"),
                        Ok(info) => assert_eq!(info.local_world_size as usize, n),
                    }
                    assert!(
                        recv == want,
                        "n={n} count={count} {dtype:?} {op:?}: wrong result"
                    );
                    crcs.push(crc32fast::hash(&recv));
                }
            }
        }
        crcs
    });
    for r in &results[1..] {
        assert_eq!(r, &results[0], "peers differ");
    }
}

#[test]
fn grid_world_1() {
    run_grid(1);
}

#[test]
fn grid_world_2() {
    run_grid(2);
}

#[test]
fn grid_world_3() {
    run_grid(3);
}

#[test]
fn grid_world_4() {
    run_grid(4);
}

#[test]
fn grid_world_5() {
    run_grid(5);
}
