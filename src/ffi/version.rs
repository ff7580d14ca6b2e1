//! Library and ABI versions. Cargo.toml's `version` is the only source: the header's
//! `ISOCLIP_VERSION_*` and `ISOCLIP_ABI_VERSION` macros are generated from the same
//! `CARGO_PKG_VERSION_*` values (tests/c_header.rs), and a test checks that they agree.

use std::ffi::c_char;

/// The semver-compatible series: `y` for 0.y.z, `1000 * x` for x.y.z with x >= 1. A program
/// built against one ABI version runs against any library of the same ABI version.
const ABI_VERSION: u32 = abi_version(
    parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
    parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
);

const VERSION_C: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(s) => s,
    Err(_) => panic!("the package version holds no NUL"),
};

const fn abi_version(major: u32, minor: u32) -> u32 {
    if major == 0 {
        minor
    } else {
        major * 1000
    }
}

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    assert!(!b.is_empty(), "empty version component");
    let mut v: u32 = 0;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "version component is not a number");
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

/// The library's version, `"MAJOR.MINOR.PATCH"` (the same as `ISOCLIP_VERSION_STRING` in the
/// header the library was built with).
///
/// The string is static: valid for the life of the process, never freed. Thread-safety: any
/// thread. Never fails.
#[no_mangle]
pub extern "C" fn isoclip_version() -> *const c_char {
    VERSION_C.as_ptr()
}

/// The library's ABI version. Compare it with `ISOCLIP_ABI_VERSION` from the header at startup:
/// if they differ, the program was compiled against an incompatible header.
///
/// Thread-safety: any thread. Never fails.
#[no_mangle]
pub extern "C" fn isoclip_abi_version() -> u32 {
    ABI_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_cargo() {
        let (major, minor, patch) = (
            parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
            parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
            parse_u32(env!("CARGO_PKG_VERSION_PATCH")),
        );
        let v = format!("{major}.{minor}.{patch}");
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
        // SAFETY: a static NUL-terminated string.
        let c = unsafe { std::ffi::CStr::from_ptr(isoclip_version()) };
        assert_eq!(c.to_str().unwrap(), v);
        assert_eq!(abi_version(0, 3), 3);
        assert_eq!(abi_version(1, 4), 1000);
        assert_eq!(abi_version(2, 0), 2000);
        assert_eq!(isoclip_abi_version(), abi_version(major, minor));
    }
}
