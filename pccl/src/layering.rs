//! Pins the library's layering: every top-level module of `pccl/src` may name (through
//! `crate::…` paths) only modules of a strictly lower layer, so dependencies point one way
//! and there are no import cycles. A new module must be given a layer here; a new upward
//! path fails the test with the file, the line and the two layers.
//!
//! Test code (`#[cfg(test)]` modules and the files they declare) is exempt: a test may
//! check a low layer against a higher one (the quantizer's tests replay the ring schedule).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of lower layers only.
const LAYERS: &[(&str, u32)] = &[
    // Vocabulary: ids, types, descriptors.
    ("types", 0),
    ("error", 1),
    // Pure codecs: quantization kernels, then the wire format that carries them.
    ("quant", 2),
    ("wire", 3),
    // The run secret, handshake and frame keys (pure but for a stream shim); `net` uses it.
    ("secure", 3),
    // Sockets and settings.
    ("net", 4),
    ("config", 4),
    // Link tests and the ring solver; the ring engine, which talks to the world only
    // through `collectives::ring::RingHost`.
    ("topology", 5),
    ("collectives", 5),
    // The master; shared-state sync, over its `SyncHost` seam.
    ("master", 6),
    ("shared_state", 6),
    // The communicator: owns the sockets and implements both seams.
    ("comm", 7),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The files `mod name;` declares from `file`, in either layout.
fn declared(file: &Path, name: &str) -> [PathBuf; 2] {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let dir = file.parent().expect("file has a folder");
    let base = if stem == "mod" || stem == "lib" {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    [
        base.join(format!("{name}.rs")),
        base.join(name).join("mod.rs"),
    ]
}

/// The lines of `text` outside `#[cfg(test)]` inline modules, with their numbers, and the
/// names of test modules declared as files.
fn non_test_lines(text: &str) -> (Vec<(usize, &str)>, Vec<String>) {
    let mut lines = Vec::new();
    let mut test_files = Vec::new();
    let mut iter = text.lines().enumerate();
    while let Some((i, line)) = iter.next() {
        if line.trim() != "#[cfg(test)]" {
            lines.push((i + 1, line));
            continue;
        }
        let Some((_, next)) = iter.next() else { break };
        let next = next.trim();
        let Some(rest) = next
            .strip_prefix("mod ")
            .or_else(|| next.strip_prefix("pub(crate) mod "))
        else {
            continue; // a test-only item other than a module: skip its first line only
        };
        if let Some(name) = rest.strip_suffix(';') {
            test_files.push(name.trim().to_string());
            continue;
        }
        // An inline test module: skip to its closing brace.
        let mut depth = next.matches('{').count() as i64 - next.matches('}').count() as i64;
        while depth > 0 {
            let Some((_, l)) = iter.next() else { break };
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
        }
    }
    (lines, test_files)
}

/// The modules a line names through `crate::`, or the reason it cannot be checked.
fn crate_paths(line: &str) -> Vec<Result<&str, &'static str>> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `pccl_crate::`
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if rest.starts_with('{') {
            found.push(Err(
                "a grouped `crate::{…}` import: name one module per path",
            ));
        } else if name.starts_with(|c: char| c.is_uppercase()) {
            found.push(Err(
                "a path through the crate root's re-exports hides the module: name it",
            ));
        } else {
            found.push(Ok(name));
        }
    }
    found
}

#[test]
fn dependencies_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    // First pass: files that only tests declare are exempt, and so is every file a test
    // module's folder holds (its submodules are tests too: they may drive the real
    // higher-layer code they test against).
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("readable source"))
        .collect();
    let mut exempt: HashSet<PathBuf> = HashSet::new();
    for (file, text) in files.iter().zip(&texts) {
        for name in non_test_lines(text).1 {
            exempt.extend(declared(file, &name));
        }
    }
    let mut violations = Vec::new();
    let mut checked = 0;
    for (file, text) in files.iter().zip(&texts) {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.iter().next().and_then(|p| p.to_str()).unwrap_or("");
        // The crate root re-exports everything; binaries are separate crates.
        let in_test_folder = exempt
            .iter()
            .any(|e| e.ends_with("mod.rs") && e.parent().is_some_and(|d| file.starts_with(d)));
        if rel == Path::new("lib.rs") || first == "bin" || exempt.contains(file) || in_test_folder {
            continue;
        }
        let module = first.trim_end_matches(".rs");
        let Some(own) = layer(module) else {
            violations.push(format!(
                "module `{module}` has no layer: add it to LAYERS in pccl/src/layering.rs"
            ));
            continue;
        };
        for (n, line) in non_test_lines(text).0 {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for path in crate_paths(line) {
                checked += 1;
                let used = match path {
                    Ok(used) => used,
                    Err(why) => {
                        violations.push(format!("{}:{n}: {why}", rel.display()));
                        continue;
                    }
                };
                if used == module {
                    continue;
                }
                match layer(used) {
                    Some(l) if l < own => {}
                    Some(l) => violations.push(format!(
                        "{}:{n}: `{module}` (layer {own}) uses `crate::{used}` (layer {l}); \
                         dependencies must point to lower layers",
                        rel.display()
                    )),
                    None => violations.push(format!(
                        "{}:{n}: uses `crate::{used}`, which has no layer in LAYERS",
                        rel.display()
                    )),
                }
            }
        }
    }
    assert!(
        checked > 50,
        "found only {checked} crate paths: is the scan broken?"
    );
    assert!(
        violations.is_empty(),
        "layering violations:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn the_scanner_sees_what_it_must() {
    let text = "use crate::wire::X;\n#[cfg(test)]\nmod tests {\n    use crate::comm::Y;\n}\n\
                let a = crate::quant::f(); // crate::comm in a comment\nuse crate::{a, b};\n\
                use crate::Communicator;\n#[cfg(test)]\nmod mem;\n";
    let (lines, test_files) = non_test_lines(text);
    let paths: Vec<_> = lines.iter().flat_map(|(_, l)| crate_paths(l)).collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert_eq!(paths[0], Ok("wire"));
    assert_eq!(paths[1], Ok("quant"));
    assert!(paths[2].is_err() && paths[3].is_err());
    assert_eq!(test_files, vec!["mem".to_string()]);
}
