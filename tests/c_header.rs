//! The committed C header is exactly what the pinned cbindgen generates from src/ffi/ today, with
//! version macros taken from Cargo.toml; every export is declared and behind the panic guard.
//!
//! `ISOCLIP_REGEN_HEADER=1 cargo test --test c_header` (scripts/regen-header.sh) rewrites it.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    root().join("include/isoclip.h")
}

/// Macros cbindgen cannot derive from Rust items: the library version from Cargo.toml, the ABI
/// checks built on the `ISOCLIP_ABI_VERSION_MAJOR`/`_MINOR` constants of src/ffi/version.rs
/// (which cbindgen exports), and the initialiser of the size-tagged stats struct.
fn version_macros() -> String {
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
    let minor: u32 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap();
    let patch: u32 = env!("CARGO_PKG_VERSION_PATCH").parse().unwrap();
    format!(
        "\n/* Version of this header's library release, from Cargo.toml. The library's own:\n \
         * isoclip_version(). */\n\
         #define ISOCLIP_VERSION_MAJOR {major}\n\
         #define ISOCLIP_VERSION_MINOR {minor}\n\
         #define ISOCLIP_VERSION_PATCH {patch}\n\
         #define ISOCLIP_VERSION_STRING \"{}\"\n\
         /* The ABI this header describes: ISOCLIP_ABI_VERSION_MAJOR changes only on an incompatible\n \
         * change (with the soname, libisoclip.so.MAJOR); ISOCLIP_ABI_VERSION_MINOR counts additions.\n \
         * isoclip_abi_version() returns the library's MAJOR * 1000 + MINOR. */\n\
         #define ISOCLIP_ABI_VERSION (ISOCLIP_ABI_VERSION_MAJOR * 1000 + ISOCLIP_ABI_VERSION_MINOR)\n\
         /* Whether a library of ABI version `v` (isoclip_abi_version()) runs a program compiled\n \
         * with this header: the same major, and at least this minor. */\n\
         #define ISOCLIP_ABI_COMPATIBLE(v) \\\n    \
         ((v) / 1000 == ISOCLIP_ABI_VERSION_MAJOR && (v) >= ISOCLIP_ABI_VERSION)\n\
         /* Initialiser of isoclip_projection_stats: sets struct_size, zeroes the counts. */\n\
         #define ISOCLIP_PROJECTION_STATS_INIT {{sizeof(isoclip_projection_stats), 0, 0}}\n",
        env!("CARGO_PKG_VERSION"),
    )
}

fn generate() -> String {
    let mut config = cbindgen::Config::from_file(root().join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn committed_header_is_up_to_date() {
    let want = generate();
    if std::env::var_os("ISOCLIP_REGEN_HEADER").is_some() {
        std::fs::create_dir_all(header_path().parent().unwrap()).unwrap();
        std::fs::write(header_path(), &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(header_path()).unwrap_or_default();
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(have.lines().count().min(want.lines().count()));
        panic!(
            "include/isoclip.h is stale (first difference at line {}: have {:?}, want {:?}); \
             run scripts/regen-header.sh and commit the header",
            line + 1,
            have.lines().nth(line).unwrap_or("<end>"),
            want.lines().nth(line).unwrap_or("<end>")
        );
    }
}

fn header_define(header: &str, name: &str) -> String {
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} is not defined in the header"))
        .trim()
        .to_string()
}

#[test]
fn version_macros_and_functions_come_from_cargo() {
    let header = std::fs::read_to_string(header_path()).unwrap();
    let major = header_define(&header, "ISOCLIP_VERSION_MAJOR");
    let minor = header_define(&header, "ISOCLIP_VERSION_MINOR");
    let patch = header_define(&header, "ISOCLIP_VERSION_PATCH");
    assert_eq!(major, env!("CARGO_PKG_VERSION_MAJOR"));
    assert_eq!(minor, env!("CARGO_PKG_VERSION_MINOR"));
    assert_eq!(patch, env!("CARGO_PKG_VERSION_PATCH"));
    assert_eq!(
        header_define(&header, "ISOCLIP_VERSION_STRING"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
    let abi_major: u32 = header_define(&header, "ISOCLIP_ABI_VERSION_MAJOR")
        .parse()
        .unwrap();
    let abi_minor: u32 = header_define(&header, "ISOCLIP_ABI_VERSION_MINOR")
        .parse()
        .unwrap();
    assert_eq!(
        abi_major * 1000 + abi_minor,
        isoclip::ffi::version::isoclip_abi_version()
    );
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(isoclip::ffi::version::isoclip_version()) };
    assert_eq!(v.to_str().unwrap(), format!("{major}.{minor}.{patch}"));
}

/// Every exported (`#[no_mangle]`) `extern "C"` function of src/ffi/: (name, body). Callbacks
/// the library hands to the C runtime (a `pthread_atfork` handler) are not exports.
fn exports() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("src/ffi")).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        let mut rest = src.as_str();
        while let Some(m) = rest.find("#[no_mangle]") {
            rest = &rest[m..];
            let i = rest
                .find("extern \"C\" fn ")
                .expect("#[no_mangle] is followed by an extern \"C\" fn");
            let after = &rest[i + "extern \"C\" fn ".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let end = after
                .find("\n}\n")
                .expect("a function ends with `}` alone on a line");
            out.push((name, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out.sort();
    out
}

#[test]
fn every_export_is_declared_and_guarded() {
    let header = std::fs::read_to_string(header_path()).unwrap();
    let exports = exports();
    assert!(exports.len() >= 40, "found only {} exports", exports.len());
    // Functions that only return a constant cannot panic.
    let constant = ["isoclip_version", "isoclip_abi_version"];
    for (name, body) in &exports {
        assert!(
            name.starts_with("isoclip_"),
            "{name}: exports are prefixed isoclip_"
        );
        assert!(
            header.contains(&format!(" {name}(")) || header.contains(&format!("*{name}(")),
            "{name} is not declared in include/isoclip.h"
        );
        let guarded = [
            "guard(",
            "guard_infallible(",
            "catch_unwind(",
            "catch_quietly(",
            "set_option(",
        ]
        .iter()
        .any(|g| body.contains(g));
        assert!(
            guarded || constant.contains(&name.as_str()),
            "{name} does not run its body behind the panic guard"
        );
    }
}
