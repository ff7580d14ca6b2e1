//! Library probing and kernel compilation (NVRTC at first use, cached per architecture).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

use super::plan::KERNEL_NAMES;

/// Environment variable naming extra include directories for NVRTC (`:`-separated). The
/// kernels include no header, so this is only a escape hatch for local experiments.
pub const INCLUDE_ENV: &str = "ISOCLIP_CUDA_INCLUDE";

/// `Err(reason)` when libcuda (or, without prebuilt PTX, libnvrtc) cannot be loaded.
pub fn probe_libraries() -> Result<(), String> {
    // SAFETY: the probe only tries to dlopen the library by its usual names and closes it
    // again; it runs no code from it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda not found".into());
    }
    if super::prebuilt_ptx().is_none() && !nvrtc_present() {
        return Err(
            "libnvrtc not found; it compiles the kernels at first use (install the CUDA \
             runtime/NVRTC libraries or add them to LD_LIBRARY_PATH)"
                .into(),
        );
    }
    Ok(())
}

/// Whether libnvrtc can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: as above, a dlopen/dlclose probe.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's `--gpu-architecture` string for a compute capability.
pub fn arch_name(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        // Cached forever, once per distinct architecture: a bounded leak.
        (ma, mi) => Box::leak(format!("sm_{ma}{mi}").into_boxed_str()),
    }
}

/// Compiles every kernel for `arch` ("sm_80", "sm_90", ...) with NVRTC and returns the PTX.
/// The caller must have checked `nvrtc_present` (cudarc panics when libnvrtc is missing).
pub fn compile_ptx_for_arch(arch: &'static str) -> Result<String, String> {
    if !nvrtc_present() {
        return Err("libnvrtc not found".into());
    }
    let include_paths = std::env::var(INCLUDE_ENV)
        .map(|v| {
            std::env::split_paths(&v)
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let opts = CompileOptions {
        arch: Some(arch),
        include_paths,
        options: vec!["--std=c++17".into()],
        name: Some("project.cu".into()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(super::kernel_source(), opts).map_err(|e| match e {
        CompileError::CompileError { nvrtc, log, .. } => format!(
            "NVRTC failed for {arch} ({nvrtc:?}):\n{}",
            log.to_string_lossy()
        ),
        other => format!("NVRTC failed for {arch}: {other:?}"),
    })?;
    let text = ptx.to_src();
    for name in KERNEL_NAMES {
        if !text.contains(&format!(".entry {name}(")) {
            return Err(format!("the PTX for {arch} lacks the kernel {name}"));
        }
    }
    Ok(text)
}

/// The PTX to load on a GPU of architecture `arch`: nvcc's when the build had it, else NVRTC's
/// (compiled once per architecture per process).
pub fn kernel_ptx_for_arch(arch: &'static str) -> Result<String, String> {
    if let Some(ptx) = super::prebuilt_ptx() {
        return Ok(ptx.to_owned());
    }
    static CACHE: OnceLock<Mutex<HashMap<&'static str, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ptx) = guard.get(arch) {
        return Ok(ptx.clone());
    }
    let ptx = compile_ptx_for_arch(arch)?;
    guard.insert(arch, ptx.clone());
    Ok(ptx)
}
