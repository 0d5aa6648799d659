//! Gives `libpccl.so` its SONAME, as a shared library installed system-wide needs: programs
//! linked against it record `libpccl.so.<compat>` and keep loading any later build of the
//! same line, and `scripts/install` names the file and its symlinks to match.
//!
//! The compatible line follows Cargo's semver rule: `MAJOR` from 1.0 on, `0.MINOR` before
//! (0.1.x releases are compatible with each other, 0.2.0 is not). README "Installing the C
//! library" lists the installed names.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("set by cargo");
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").expect("set by cargo");
    let compat = if major == "0" {
        format!("0.{minor}")
    } else {
        major
    };
    // ELF platforms only: macOS names dylibs with -install_name, Windows has no SONAME.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly" | "illumos"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpccl.so.{compat}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
