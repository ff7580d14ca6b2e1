//! Picking the backend for a run: `--device auto|cpu|cuda|cuda:N`.

use super::cpu::CpuBackend;
use super::Backend;
use crate::error::{Error, Result};

/// Which device the user asked for. A GPU index is a CUDA device ordinal as `nvidia-smi` numbers
/// them under the current `CUDA_VISIBLE_DEVICES`; `None` means every visible GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// The GPU(s) when usable, otherwise the CPU with a one-line notice.
    Auto(Option<usize>),
    Cpu,
    /// The GPU(s) or an error (`Error::DeviceUnavailable`).
    Cuda(Option<usize>),
}

impl Default for DeviceChoice {
    fn default() -> Self {
        DeviceChoice::Auto(None)
    }
}

impl DeviceChoice {
    /// `auto`, `cpu`, `cuda` (or `gpu`), and one GPU as `cuda:N` (or `gpu:N`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(DeviceChoice::Auto(None)),
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" | "gpu" => Some(DeviceChoice::Cuda(None)),
            _ => {
                let (kind, index) = s.split_once(':')?;
                if !matches!(kind, "cuda" | "gpu")
                    || index.is_empty()
                    || !index.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                index.parse().ok().map(|i| DeviceChoice::Cuda(Some(i)))
            }
        }
    }
    /// The spelling `parse` takes back (`auto` with an index prints as `auto:N`, which only
    /// the library makes).
    pub fn name(self) -> String {
        match self {
            DeviceChoice::Auto(None) => "auto".into(),
            DeviceChoice::Auto(Some(i)) => format!("auto:{i}"),
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda(None) => "cuda".into(),
            DeviceChoice::Cuda(Some(i)) => format!("cuda:{i}"),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DeviceChoice::parse(s)
            .ok_or_else(|| format!("unknown device '{s}' (auto, cpu, cuda or cuda:N)"))
    }
}

/// Opens the backend for `choice`. Returns it with an optional one-line notice for the user
/// (set when `Auto` fell back to the CPU, e.g. "no usable CUDA GPU (libcuda not found);
/// running on CPU"). `cpu_threads` sizes the CPU backend (`None`: every core); the CUDA backend
/// uses it for the shapes its kernels do not cover. `Cuda` without a usable GPU (or without the
/// GPU of the index asked for) is `Error::DeviceUnavailable` saying why. Never panics when CUDA
/// is absent.
pub fn select_backend(
    choice: DeviceChoice,
    cpu_threads: Option<usize>,
) -> Result<(Box<dyn Backend>, Option<String>)> {
    match choice {
        DeviceChoice::Cpu => Ok((Box::new(CpuBackend::new(cpu_threads)?), None)),
        DeviceChoice::Cuda(gpu) => match open_cuda(cpu_threads, gpu) {
            Ok(b) => Ok((b, None)),
            Err(why) => Err(Error::DeviceUnavailable(match gpu {
                None => {
                    format!("the CUDA device was requested but there is no usable CUDA GPU ({why})")
                }
                Some(i) => {
                    format!("the CUDA device cuda:{i} was requested but is not usable ({why})")
                }
            })),
        },
        DeviceChoice::Auto(gpu) => match open_cuda(cpu_threads, gpu) {
            Ok(b) => Ok((b, None)),
            Err(why) => Ok((
                Box::new(CpuBackend::new(cpu_threads)?),
                Some(match gpu {
                    None => format!("no usable CUDA GPU ({why}); running on CPU"),
                    Some(i) => format!("cuda:{i} is not usable ({why}); running on CPU"),
                }),
            )),
        },
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(
    cpu_threads: Option<usize>,
    gpu: Option<usize>,
) -> std::result::Result<Box<dyn Backend>, String> {
    super::cuda::CudaBackend::new(cpu_threads, gpu).map(|b| Box::new(b) as Box<dyn Backend>)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(
    _cpu_threads: Option<usize>,
    _gpu: Option<usize>,
) -> std::result::Result<Box<dyn Backend>, String> {
    Err(super::cuda::probe_libraries().unwrap_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print() {
        for c in [
            DeviceChoice::Auto(None),
            DeviceChoice::Cpu,
            DeviceChoice::Cuda(None),
            DeviceChoice::Cuda(Some(0)),
            DeviceChoice::Cuda(Some(12)),
        ] {
            assert_eq!(DeviceChoice::parse(&c.name()), Some(c));
            assert_eq!(c.name().parse::<DeviceChoice>(), Ok(c));
        }
        assert_eq!(
            DeviceChoice::parse("gpu:1"),
            Some(DeviceChoice::Cuda(Some(1)))
        );
        assert_eq!(DeviceChoice::default(), DeviceChoice::Auto(None));
        for bad in [
            "tpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cpu:0", "auto:1", "cuda:1:2",
        ] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn cpu_is_always_available_without_notice() {
        let (b, notice) = select_backend(DeviceChoice::Cpu, Some(1)).unwrap();
        assert!(b.describe().starts_with("cpu"), "{}", b.describe());
        assert!(notice.is_none());
    }

    #[test]
    fn auto_and_cuda_agree_on_whether_a_gpu_is_usable() {
        let (auto, notice) = select_backend(DeviceChoice::Auto(None), Some(1)).unwrap();
        match select_backend(DeviceChoice::Cuda(None), Some(1)) {
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

    #[test]
    fn a_gpu_index_that_is_not_there_is_named_in_the_error() {
        // No machine this runs on has 10000 GPUs: with or without CUDA the index is unusable.
        let e = select_backend(DeviceChoice::Cuda(Some(9999)), Some(1))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("the CUDA device cuda:9999 was requested but is not usable ("),
            "{e}"
        );
        let (b, notice) = select_backend(DeviceChoice::Auto(Some(9999)), Some(1)).unwrap();
        assert!(b.describe().starts_with("cpu"), "{}", b.describe());
        let notice = notice.expect("a notice when falling back");
        assert!(notice.starts_with("cuda:9999 is not usable ("), "{notice}");
        assert!(notice.ends_with("running on CPU"), "{notice}");
    }
}
