//! Picking the backend for a run: `--device auto|cpu|cuda`.

use super::cpu::CpuBackend;
use super::Backend;
use crate::error::{Error, Result};

/// Which device the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// The GPU when one is usable, otherwise the CPU with a one-line notice.
    #[default]
    Auto,
    Cpu,
    /// The GPU or an error (`Error::DeviceUnavailable`).
    Cuda,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(DeviceChoice::Auto),
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" | "gpu" => Some(DeviceChoice::Cuda),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DeviceChoice::parse(s).ok_or_else(|| format!("unknown device '{s}' (auto, cpu or cuda)"))
    }
}

/// Opens the backend for `choice`. Returns it with an optional one-line notice for the user
/// (set when `Auto` fell back to the CPU, e.g. "no usable CUDA GPU (libcuda not found);
/// running on CPU"). `cpu_threads` sizes the CPU backend (`None`: every core); the CUDA backend
/// uses it for the shapes its kernels do not cover. `Cuda` without a usable GPU is
/// `Error::DeviceUnavailable` saying why. Never panics when CUDA is absent.
pub fn select_backend(
    choice: DeviceChoice,
    cpu_threads: Option<usize>,
) -> Result<(Box<dyn Backend>, Option<String>)> {
    match choice {
        DeviceChoice::Cpu => Ok((Box::new(CpuBackend::new(cpu_threads)?), None)),
        DeviceChoice::Cuda => match open_cuda(cpu_threads) {
            Ok(b) => Ok((b, None)),
            Err(why) => Err(Error::DeviceUnavailable(format!(
                "the CUDA device was requested but there is no usable CUDA GPU ({why})"
            ))),
        },
        DeviceChoice::Auto => match open_cuda(cpu_threads) {
            Ok(b) => Ok((b, None)),
            Err(why) => Ok((
                Box::new(CpuBackend::new(cpu_threads)?),
                Some(format!("no usable CUDA GPU ({why}); running on CPU")),
            )),
        },
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(cpu_threads: Option<usize>) -> std::result::Result<Box<dyn Backend>, String> {
    super::cuda::CudaBackend::new(cpu_threads).map(|b| Box::new(b) as Box<dyn Backend>)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_cpu_threads: Option<usize>) -> std::result::Result<Box<dyn Backend>, String> {
    Err(super::cuda::probe_libraries().unwrap_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print() {
        for c in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda] {
            assert_eq!(DeviceChoice::parse(c.name()), Some(c));
            assert_eq!(c.name().parse::<DeviceChoice>(), Ok(c));
        }
        assert!("tpu".parse::<DeviceChoice>().unwrap_err().contains("tpu"));
    }

    #[test]
    fn cpu_is_always_available_without_notice() {
        let (b, notice) = select_backend(DeviceChoice::Cpu, Some(1)).unwrap();
        assert!(b.describe().starts_with("cpu"), "{}", b.describe());
        assert!(notice.is_none());
    }

    #[test]
    fn auto_and_cuda_agree_on_whether_a_gpu_is_usable() {
        let (auto, notice) = select_backend(DeviceChoice::Auto, Some(1)).unwrap();
        match select_backend(DeviceChoice::Cuda, Some(1)) {
            Ok((cuda, n)) => {
                // A usable GPU: both pick it, silently.
                assert!(n.is_none() && notice.is_none());
                assert!(cuda.describe().starts_with("cuda:"), "{}", cuda.describe());
                assert!(auto.describe().starts_with("cuda:"));
            }
            Err(e) => {
                // No GPU (CI): auto falls back with a one-line notice, cuda fails clearly.
                assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
                assert!(e.to_string().contains("no usable CUDA GPU"), "{e}");
                let notice = notice.expect("a notice when falling back");
                assert!(notice.ends_with("running on CPU"), "{notice}");
                assert!(!notice.contains('\n'));
                assert!(auto.describe().starts_with("cpu"));
            }
        }
    }
}
