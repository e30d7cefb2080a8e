//! Choosing the backend at run time: a [`DeviceSpec`] (`cpu`, `cuda[:N]`,
//! `wgpu[:…]`) and a [`Dtype`].

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
        DeviceSpec::Wgpu(adapter) => wgpu(adapter, dtype, job),
    }
}

/// Make `dtype` the float type of `device` for backend `B`. burn keeps one
/// setting per device for the whole process, shared by the precisions of one
/// backend family (its device type), and fixed by the first tensor made there;
/// a second precision on a device already in use is refused rather than
/// silently computed in the first one.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn claim_dtype<B: Backend>(
    device: &B::Device,
    spec: DeviceSpec,
    dtype: Dtype,
) -> Result<(), ModelError> {
    use burn_tensor::{DType, Element};
    let want = match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
    };
    // Already set (to this or another type) is fine here; the check below tells which.
    let _ = burn_tensor::set_default_dtypes::<B>(device, want, <B::IntElem as Element>::dtype());
    let have: DType = burn_tensor::get_device_settings::<B>(device)
        .float_dtype
        .into();
    if have != want {
        return Err(ModelError::Device(format!(
            "{spec} already computes in {have:?} in this process (burn keeps one precision per \
             device); restart to use {dtype} there"
        )));
    }
    Ok(())
}

/// The panic message of a backend that reports failures by panicking.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown failure".into())
}

/// The first panic raised inside the GPU runtime (cubecl, wgpu), often on one
/// of its own threads, where `catch_unwind` on ours sees only a closed channel.
/// Such panics are kept for the error the job returns instead of printed;
/// every other panic prints as before.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn backend_panic() -> &'static std::sync::Mutex<Option<String>> {
    static FIRST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let runtime = info
                .location()
                .is_some_and(|l| l.file().contains("cubecl") || l.file().contains("wgpu"));
            if !runtime {
                return previous(info);
            }
            if let Ok(mut first) = FIRST.lock() {
                first.get_or_insert_with(|| panic_text(info.payload()));
            }
        }));
    });
    &FIRST
}

/// What failed: the runtime's own first panic where there was one, else `payload`.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn failure(payload: &(dyn std::any::Any + Send)) -> String {
    backend_panic()
        .lock()
        .ok()
        .and_then(|mut f| f.take())
        .unwrap_or_else(|| panic_text(payload))
}

#[cfg(feature = "wgpu")]
fn wgpu<J: BackendJob>(
    adapter: crate::device::WgpuAdapter,
    dtype: Dtype,
    job: J,
) -> Result<J::Output, J::Error> {
    let spec = DeviceSpec::Wgpu(adapter);
    if dtype == Dtype::BF16 {
        return Err(ModelError::Device(format!(
            "{spec} computes in f32 or f16; wgpu has no bf16 (use --dtype f16, or --device cuda for bf16)"
        ))
        .into());
    }
    // cubecl reports a missing adapter or a lost device by panicking; turn that into an error.
    backend_panic();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let device = crate::device::wgpu_device(adapter);
        match dtype {
            Dtype::F16 => {
                use burn_tensor::DType;
                if !<crate::device::WgpuF16 as Backend>::supports_dtype(&device, DType::F16) {
                    return Err(ModelError::Device(format!(
                        "{spec}: this adapter has no f16 support; use --dtype f32"
                    ))
                    .into());
                }
                claim_dtype::<crate::device::WgpuF16>(&device, spec, dtype)?;
                job.run::<crate::device::WgpuF16>(device)
            }
            _ => {
                claim_dtype::<crate::device::Wgpu>(&device, spec, dtype)?;
                job.run::<crate::device::Wgpu>(device)
            }
        }
    }));
    outcome.unwrap_or_else(|payload| {
        Err(ModelError::Device(format!(
            "wgpu device {spec} failed: {}. `wgpu` takes the best adapter, `wgpu:N` the N-th \
             discrete GPU, `wgpu:integrated[:N]` an integrated one, `wgpu:cpu` a software one \
             (Debian: `apt install mesa-vulkan-drivers` for lavapipe)",
            failure(&*payload)
        ))
        .into())
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu<J: BackendJob>(
    adapter: crate::device::WgpuAdapter,
    _dtype: Dtype,
    _job: J,
) -> Result<J::Output, J::Error> {
    Err(ModelError::Device(format!(
        "{} was asked for, but this build has no wgpu support; rebuild with `--features wgpu`, or use --device cpu",
        DeviceSpec::Wgpu(adapter)
    ))
    .into())
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
    backend_panic();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let device = burn_cuda::CudaDevice::new(index);
        let spec = DeviceSpec::Cuda(index);
        match dtype {
            Dtype::F32 => {
                claim_dtype::<burn_cuda::Cuda<f32>>(&device, spec, dtype)?;
                job.run::<burn_cuda::Cuda<f32>>(device)
            }
            Dtype::F16 => {
                claim_dtype::<burn_cuda::Cuda<half::f16>>(&device, spec, dtype)?;
                job.run::<burn_cuda::Cuda<half::f16>>(device)
            }
            Dtype::BF16 => {
                claim_dtype::<burn_cuda::Cuda<half::bf16>>(&device, spec, dtype)?;
                job.run::<burn_cuda::Cuda<half::bf16>>(device)
            }
        }
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => Err(ModelError::Device(format!(
            "CUDA device cuda:{index} failed: {}",
            failure(&*payload)
        ))
        .into()),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda<J: BackendJob>(index: usize, _dtype: Dtype, _job: J) -> Result<J::Output, J::Error> {
    Err(ModelError::Device(format!(
        "cuda:{index} was asked for, but this build has no CUDA support; rebuild with `--features cuda`, or use --device cpu"
    ))
    .into())
}
