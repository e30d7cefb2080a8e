//! Backends and devices: the CPU (ndarray) by default, CUDA behind the `cuda`
//! feature, and wgpu (Vulkan, Metal; lavapipe in CI) behind the `wgpu` feature.

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

/// The wgpu backend (Vulkan on Linux and Windows, Metal on macOS).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn_wgpu::Wgpu<f32>;
/// The wgpu backend computing in f16, where the adapter supports it.
#[cfg(feature = "wgpu")]
pub type WgpuF16 = burn_wgpu::Wgpu<half::f16>;

/// Which wgpu adapter: the best one wgpu finds, the N-th discrete or
/// integrated GPU, or a software adapter (such as Mesa's lavapipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    Best,
    Discrete(usize),
    Integrated(usize),
    Software,
}

/// A device chosen on the command line: `cpu`, `cuda[:N]`, or
/// `wgpu[:N|:integrated[:N]|:cpu]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Wgpu(WgpuAdapter),
}

const DEVICES: &str = "cpu, cuda, cuda:N, wgpu, wgpu:N, wgpu:integrated[:N] or wgpu:cpu";

impl FromStr for DeviceSpec {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let unknown = || ModelError::Device(format!("unknown device `{s}`; use {DEVICES}"));
        let index = |n: &str| n.parse::<usize>().map_err(|_| unknown());
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" => Ok(DeviceSpec::Wgpu(WgpuAdapter::Best)),
            "wgpu:cpu" => Ok(DeviceSpec::Wgpu(WgpuAdapter::Software)),
            "wgpu:integrated" => Ok(DeviceSpec::Wgpu(WgpuAdapter::Integrated(0))),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    Ok(DeviceSpec::Cuda(index(n)?))
                } else if let Some(n) = s.strip_prefix("wgpu:integrated:") {
                    Ok(DeviceSpec::Wgpu(WgpuAdapter::Integrated(index(n)?)))
                } else if let Some(n) = s.strip_prefix("wgpu:") {
                    Ok(DeviceSpec::Wgpu(WgpuAdapter::Discrete(index(n)?)))
                } else {
                    Err(unknown())
                }
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Best) => f.write_str("wgpu"),
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(n)) => write!(f, "wgpu:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Integrated(n)) => write!(f, "wgpu:integrated:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Software) => f.write_str("wgpu:cpu"),
        }
    }
}

/// The burn device for a wgpu adapter.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(adapter: WgpuAdapter) -> burn_wgpu::WgpuDevice {
    use burn_wgpu::WgpuDevice;
    match adapter {
        WgpuAdapter::Best => WgpuDevice::DefaultDevice,
        WgpuAdapter::Discrete(n) => WgpuDevice::DiscreteGpu(n),
        WgpuAdapter::Integrated(n) => WgpuDevice::IntegratedGpu(n),
        WgpuAdapter::Software => WgpuDevice::Cpu,
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
