//! `libpccl`: PCCL 1.0's public C API over the `pccl` crate.
//!
//! An existing PCCL program compiles against `include/pccl.h` (generated from this crate
//! by cbindgen, see `cbindgen.toml` and `tests/header.rs`) and links against `libpccl.so`
//! or `libpccl.a` unchanged. Names, enum values and struct layouts are PCCL's, as PCCL 1.0
//! publishes them; additions come as new functions, never as changed
//! layouts.
//!
//! Rules every exported function follows:
//! - It runs its body inside the panic boundary (`panic.rs`): a Rust panic becomes
//!   `pcclInternalError` and never unwinds into C.
//! - Every communicator function answers `pcclNotInitialized` until `pcclInit` has run.
//!   As in PCCL 1.0, `pcclInit` itself, the master functions (`master.rs`) and
//!   `pcclGetBuildInfo` work without it; each of those installs the `PCCL_LOG` logger
//!   (`init.rs`), so whichever a program calls first, it logs as a Rust program does.
//! - Additions beyond PCCL 1.0 are marked "pccl extension" in their documentation
//!   (`pcclCommSetBindAddress`, `pcclCommSetRunSecret`, `pcclCommSetEncrypt`,
//!   `pcclMasterSetRunSecret`, `pcclMasterSetEncrypt`, `pcclMasterSetHttpAddress`,
//!   `pcclGetCommStats`). The run secret is also read from
//!   the environment (`secret.rs`) when a communicator or master is created; PCCL 1.0's
//!   structs are unchanged.
//! - It checks every pointer for NULL and alignment and every enum value it reads
//!   (`types.rs` explains how enums cross safely), answering `pcclInvalidArgument`.
//! - Outputs are written on success only.
//!
//! Style: functions taking pointers are `pub unsafe extern "C"` with a `# Safety` section
//! stating what the caller guarantees (validity, ownership, threads); that section is
//! part of the generated header. Functions without pointers (`pcclInit`) are safe.
//! Handles are boxes behind opaque pointers (`handle.rs`). Inside, every `unsafe` block
//! carries a `// SAFETY:` line.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_snake_case)]

mod panic;

pub mod build_info;
pub mod collectives;
pub mod comm;
pub mod handle;
pub mod init;
pub mod master;
pub mod reduce;
pub mod result;
mod secret;
pub mod shared_state;
pub mod stats;
pub mod types;

#[cfg(test)]
mod layout_tests;
