//! Compiles kernels/*.cu to PTX with nvcc when one is available (env NVCC, else `nvcc` on PATH);
//! otherwise the CUDA source alone is embedded and NVRTC compiles it at first use, for the
//! GPU that is actually there. Either way the crate builds on a machine with no CUDA at all.
//!
//! Generates `$OUT_DIR/kernels.rs` with `KERNEL_SOURCE` (always) and `PREBUILT_PTX`
//! (`Some(ptx)` only when nvcc succeeded).
//!
//! Also gives the shared library its soname, `libisoclip.so.MAJOR`, MAJOR being
//! `ISOCLIP_ABI_VERSION_MAJOR` from src/ffi/version.rs (the one place it is defined).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Oldest architecture the kernels need (mma.sync.m16n8k16 with f32 accumulation, cp.async).
/// PTX for compute_80 is JIT-compiled by the driver for any newer GPU (sm_90 H100/H200 too).
const PTX_ARCH: &str = "compute_80";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels/project.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=PATH");
    set_soname();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = Path::new("kernels/project.cu");

    let ptx = if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        find_nvcc().and_then(|nvcc| compile_with_nvcc(&nvcc, source, &out_dir))
    } else {
        None
    };

    let mut generated = String::from(
        "/// The CUDA source of every kernel, compiled by NVRTC at first use when there is no\n\
         /// prebuilt PTX.\npub const KERNEL_SOURCE: &str = include_str!(",
    );
    let abs_source = fs::canonicalize(source).expect("kernels/project.cu exists");
    generated.push_str(&format!("{:?});\n", abs_source.display().to_string()));
    generated.push_str(
        "/// PTX compiled by nvcc at build time (for compute_80 and newer), if nvcc was found.\n",
    );
    match ptx {
        Some(path) => generated.push_str(&format!(
            "pub const PREBUILT_PTX: Option<&str> = Some(include_str!({:?}));\n",
            path.display().to_string()
        )),
        None => generated.push_str("pub const PREBUILT_PTX: Option<&str> = None;\n"),
    }
    fs::write(out_dir.join("kernels.rs"), generated).expect("write kernels.rs");
}

/// The file that defines the ABI version, and the line build.rs reads from it.
const VERSION_RS: &str = "src/ffi/version.rs";
const ABI_MAJOR_ITEM: &str = "pub const ISOCLIP_ABI_VERSION_MAJOR: u32 = ";

/// `-Wl,-soname,libisoclip.so.MAJOR` for the cdylib on ELF targets.
fn set_soname() {
    println!("cargo:rerun-if-changed={VERSION_RS}");
    let source = fs::read_to_string(VERSION_RS).expect("src/ffi/version.rs is readable");
    let major: u32 = source
        .lines()
        .find_map(|l| l.strip_prefix(ABI_MAJOR_ITEM))
        .and_then(|rest| rest.strip_suffix(';'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{VERSION_RS} has no line `{ABI_MAJOR_ITEM}<integer>;`"));
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libisoclip.so.{major}");
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("nvcc"))
        .find(|candidate| candidate.is_file())
}

fn compile_with_nvcc(nvcc: &Path, source: &Path, out_dir: &Path) -> Option<PathBuf> {
    let out = out_dir.join("project.ptx");
    let status = Command::new(nvcc)
        .args(["-ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch={PTX_ARCH}"))
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) => {
            println!(
                "cargo:warning=nvcc ({}) failed with {s}; kernels will be compiled by NVRTC at run time",
                nvcc.display()
            );
            None
        }
        Err(e) => {
            println!(
                "cargo:warning=cannot run nvcc ({}): {e}; kernels will be compiled by NVRTC at run time",
                nvcc.display()
            );
            None
        }
    }
}
