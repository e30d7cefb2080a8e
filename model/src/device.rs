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
