//! Choosing the backend at run time: a [`DeviceSpec`] (`cpu`, `cuda[:N]`) and a [`Dtype`].

use burn_tensor::backend::Backend;

use crate::{DeviceSpec, ModelError};

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
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| ModelError::Device(format!("unknown dtype `{s}`; use f32, f16 or bf16")))
    }
}

/// Work that runs on whichever backend the user chose.
pub trait BackendJob {
    type Output;
    type Error: From<ModelError>;
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output, Self::Error>;
}

/// Run `job` on the backend for `device` and `dtype`.
pub fn with_backend<J: BackendJob>(
    device: DeviceSpec,
    dtype: Dtype,
    job: J,
) -> Result<J::Output, J::Error> {
    match device {
        DeviceSpec::Cpu => {
            if dtype != Dtype::F32 {
                return Err(ModelError::Device(format!(
                    "the CPU backend (ndarray) computes in f32 only; use --dtype f32, or --device cuda for {dtype}"
                ))
                .into());
            }
            job.run::<crate::Cpu>(Default::default())
        }
        DeviceSpec::Cuda(index) => cuda(index, dtype, job),
    }
}

#[cfg(feature = "cuda")]
fn cuda<J: BackendJob>(index: usize, dtype: Dtype, job: J) -> Result<J::Output, J::Error> {
    if !crate::device::cuda_available() {
        return Err(ModelError::Device(
            "CUDA was asked for, but no CUDA driver (libcuda) was found on this machine; use --device cpu".into(),
        )
        .into());
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
            Err(ModelError::Device(format!("CUDA device cuda:{index} failed: {msg}")).into())
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda<J: BackendJob>(index: usize, _dtype: Dtype, _job: J) -> Result<J::Output, J::Error> {
    Err(ModelError::Device(format!(
        "cuda:{index} was asked for, but this build has no CUDA support; rebuild with `--features cuda`, or use --device cpu"
    ))
    .into())
}
