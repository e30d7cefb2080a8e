//! Backends and devices: the CPU (ndarray) by default, CUDA behind the `cuda` feature.

use std::fmt;
use std::str::FromStr;

use crate::error::ModelError;

/// The CPU backend: ndarray, f32, threaded matmul.
pub type Cpu = burn_ndarray::NdArray<f32>;
/// The CPU backend with reverse-mode autodiff.
pub type CpuAutodiff = burn_autodiff::Autodiff<Cpu>;
/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn_cuda::Cuda<f32>;
/// The CUDA backend computing in bf16.
#[cfg(feature = "cuda")]
pub type CudaBf16 = burn_cuda::Cuda<half::bf16>;
/// The CUDA backend computing in f16.
#[cfg(feature = "cuda")]
pub type CudaF16 = burn_cuda::Cuda<half::f16>;

/// A device chosen on the command line: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    ModelError::Device(format!("unknown device `{s}`; use cpu, cuda or cuda:N"))
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

static LIBRARY_DIRS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Extra directories to look for `libcuda` in (a front end passes `LD_LIBRARY_PATH`'s).
pub fn add_library_dirs(dirs: impl IntoIterator<Item = std::path::PathBuf>) {
    if let Ok(mut d) = LIBRARY_DIRS.lock() {
        d.extend(dirs);
    }
}

/// Whether a CUDA driver library can be found, checked without loading it.
/// burn-cuda loads `libcuda` at run time and panics where it is absent.
pub fn cuda_available() -> bool {
    let mut dirs: Vec<std::path::PathBuf> =
        LIBRARY_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/nvidia/lib64",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/compat",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(d.into());
    }
    dirs.iter()
        .any(|d| d.join("libcuda.so.1").exists() || d.join("libcuda.so").exists())
}
