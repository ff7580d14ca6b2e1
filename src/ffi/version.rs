//! Library and ABI versions.
//!
//! Two independent numbers:
//! - the library version `MAJOR.MINOR.PATCH` comes from Cargo.toml alone (`isoclip_version()`,
//!   the header's `ISOCLIP_VERSION_*`);
//! - the ABI version is [`ISOCLIP_ABI_VERSION_MAJOR`].[`ISOCLIP_ABI_VERSION_MINOR`], defined
//!   here and nowhere else: cbindgen copies both constants into `include/isoclip.h`, build.rs
//!   reads the major from this file for the soname `libisoclip.so.MAJOR`, and
//!   `scripts/install.sh` names the installed file after both.
//!
//! The 1.x rule (from ABI 1.0 on):
//! - MAJOR changes only on a break: a function removed or its signature or meaning changed, a
//!   struct's existing fields changed, a status or constant renumbered. The soname changes with
//!   it, so a program linked against `libisoclip.so.1` never loads an incompatible library.
//! - MINOR counts additions: new functions, statuses, constants, and fields appended to a
//!   size-tagged struct (`isoclip_projection_stats`). A program built against ABI 1.m runs
//!   against any library of ABI 1.n with n >= m (`ISOCLIP_ABI_COMPATIBLE` in the header).
//! - Neither depends on the library version: a library release that changes no export keeps
//!   the ABI version.

use std::ffi::c_char;

/// The ABI major version: changes only on an incompatible change, together with the soname
/// (`libisoclip.so.1`). build.rs parses this line; keep it a plain integer literal.
pub const ISOCLIP_ABI_VERSION_MAJOR: u32 = 1;

/// The ABI minor version: incremented when exports are added (and reset to 0 when the major
/// changes).
pub const ISOCLIP_ABI_VERSION_MINOR: u32 = 0;

/// `MAJOR * 1000 + MINOR`, what `isoclip_abi_version()` returns.
const ABI_VERSION: u32 = ISOCLIP_ABI_VERSION_MAJOR * 1000 + ISOCLIP_ABI_VERSION_MINOR;

const VERSION_C: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(s) => s,
    Err(_) => panic!("the package version holds no NUL"),
};

/// The library's version, `"MAJOR.MINOR.PATCH"` (the same as `ISOCLIP_VERSION_STRING` in the
/// header the library was built with).
///
/// The string is static: valid for the life of the process, never freed. Thread-safety: any
/// thread. Never fails.
#[no_mangle]
pub extern "C" fn isoclip_version() -> *const c_char {
    VERSION_C.as_ptr()
}

/// The library's ABI version, `ISOCLIP_ABI_VERSION_MAJOR * 1000 + ISOCLIP_ABI_VERSION_MINOR`.
/// At startup check `ISOCLIP_ABI_COMPATIBLE(isoclip_abi_version())`: the same major as the
/// header the program was compiled with, and a minor at least as large (the library has every
/// function the program may call).
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
    fn library_version_comes_from_cargo_and_abi_version_from_the_constants() {
        // SAFETY: a static NUL-terminated string.
        let c = unsafe { std::ffi::CStr::from_ptr(isoclip_version()) };
        assert_eq!(c.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(isoclip_abi_version(), 1000);
        assert_eq!(isoclip_abi_version() / 1000, ISOCLIP_ABI_VERSION_MAJOR);
        assert_eq!(isoclip_abi_version() % 1000, ISOCLIP_ABI_VERSION_MINOR);
    }
}
