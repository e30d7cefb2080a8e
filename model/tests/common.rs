use std::path::PathBuf;

use engram_model::device::Cpu;
use engram_model::LanguageModel;

/// `../shared` beside the repository (or `ENGRAM_SHARED`, for a test binary
/// carried to another machine), or `None` with a skip message.
pub fn shared(what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("ENGRAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP {what}: ../shared is absent (fixtures live there)");
        None
    }
}

pub const ARCHS: [&str; 4] = ["gpt2", "gptj", "gpt_neox", "llama"];

pub fn tiny(arch: &str) -> Option<(PathBuf, LanguageModel<Cpu>)> {
    let dir = shared(&format!("tiny {arch}"))?
        .join("fixtures/tiny")
        .join(arch);
    let lm = LanguageModel::<Cpu>::load(&dir, &Default::default()).expect("load tiny fixture");
    Some((dir, lm))
}

/// f32 and i64 tensors of a safetensors file, by name.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(path: &std::path::Path) -> Self {
        Self {
            bytes: std::fs::read(path).expect("read reference"),
        }
    }

    fn with_view<T>(
        &self,
        name: &str,
        f: impl FnOnce(&safetensors::tensor::TensorView<'_>) -> T,
    ) -> T {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("parse reference");
        let v = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference lacks {name}"));
        f(&v)
    }

    pub fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("parse reference");
        let mut n: Vec<String> = st.names().into_iter().map(String::from).collect();
        n.sort();
        n
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        self.with_view(name, |v| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (v.shape().to_vec(), data)
        })
    }

    pub fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        self.with_view(name, |v| {
            let data = v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            (v.shape().to_vec(), data)
        })
    }
}

/// Largest |a - b| - rtol·|b|; ≤ atol means allclose.
pub fn max_excess(a: &[f32], b: &[f32], rtol: f32) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() - rtol * y.abs())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Run the test `name` (its path in this binary) again in a child process
/// and pass its output through: burn keeps one float precision per device
/// for a whole process, so a test of a second precision needs a fresh one.
/// Returns true in the child, where the caller does the work.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn in_child_process(name: &str) -> bool {
    if std::env::var_os("ENGRAM_TEST_CHILD").is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--include-ignored", "--nocapture"])
        .env("ENGRAM_TEST_CHILD", "1")
        .output()
        .expect("run the test in a child process");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a child process:\n{stdout}"
    );
    false
}

/// Fix `dtype` as the float type of `device` for `B` before any tensor is made there.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn claim_precision<B: burn_tensor::backend::Backend>(
    device: &B::Device,
    dtype: burn_tensor::DType,
) {
    use burn_tensor::Element;
    burn_tensor::set_default_dtypes::<B>(device, dtype, <B::IntElem as Element>::dtype())
        .expect("a fresh device");
    let have: burn_tensor::DType = burn_tensor::get_device_settings::<B>(device)
        .float_dtype
        .into();
    assert_eq!(have, dtype);
}

/// The four tiny fixtures' logits on backend `B` against HF's: the largest
/// excess over a relative 1e-4 must stay within `atol`.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn tiny_parity<B: burn_tensor::backend::Backend>(device: B::Device, atol: f32, label: &str) {
    let Some(sh) = shared(&format!("{label} parity")) else {
        return;
    };
    for arch in ARCHS {
        let dir = sh.join("fixtures/tiny").join(arch);
        let lm = LanguageModel::<B>::load(&dir, &device).expect("load the fixture");
        let reference = Reference::open(&dir.join("reference.safetensors"));
        let (shape, ids) = reference.i64("input_ids");
        let rows: Vec<Vec<u32>> = ids
            .chunks(shape[1])
            .map(|r| r.iter().map(|&i| i as u32).collect())
            .collect();
        let got: Vec<f32> = lm
            .model
            .logits(&engram_model::Batch::uniform(&rows).expect("batch"))
            .expect("forward")
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("logits");
        let (_, want) = reference.f32("logits");
        let e = max_excess(&got, &want, 1e-4);
        eprintln!("{label} {arch}: max logit excess over rtol 1e-4: {e:.3e} (allowed {atol:e})");
        assert!(e <= atol, "{label} {arch}: logits differ from HF by {e}");
    }
}
