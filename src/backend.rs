//! Choosing the backend at run time: `--device cpu|cuda[:N]` and `--dtype`.

use anyhow::{bail, Result};
use engram_model::burn_tensor::backend::Backend;
use engram_model::DeviceSpec;

/// Compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown dtype `{s}`; use f32, f16 or bf16"))
    }
}

/// Work that runs on whichever backend the user chose.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Run `job` on the backend for `device` and `dtype`.
pub fn with_backend<J: BackendJob>(device: DeviceSpec, dtype: Dtype, job: J) -> Result<J::Output> {
    match device {
        DeviceSpec::Cpu => {
            if dtype != Dtype::F32 {
                bail!("the CPU backend (ndarray) computes in f32 only; use --dtype f32, or --device cuda for {dtype:?}");
            }
            job.run::<engram_model::Cpu>(Default::default())
        }
        DeviceSpec::Cuda(index) => cuda(index, dtype, job),
    }
}

#[cfg(feature = "cuda")]
fn cuda<J: BackendJob>(index: usize, dtype: Dtype, job: J) -> Result<J::Output> {
    use engram_model::device::cuda_available;
    if !cuda_available() {
        bail!("CUDA was asked for, but no CUDA driver (libcuda) was found on this machine; use --device cpu");
    }
    // burn-cuda reports driver failures and out-of-memory by panicking; turn that into an error.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let device = burn_cuda::CudaDevice::new(index);
        match dtype {
            Dtype::F32 => job.run::<burn_cuda::Cuda<f32>>(device),
            Dtype::F16 => job.run::<burn_cuda::Cuda<half::f16>>(device),
            Dtype::BF16 => job.run::<burn_cuda::Cuda<half::bf16>>(device),
        }
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            bail!("CUDA device cuda:{index} failed: {msg}")
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda<J: BackendJob>(index: usize, _dtype: Dtype, _job: J) -> Result<J::Output> {
    bail!("cuda:{index} was asked for, but this build has no CUDA support; rebuild with `--features cuda`, or use --device cpu")
}
