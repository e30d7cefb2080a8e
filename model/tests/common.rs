use std::path::PathBuf;

use engram_model::device::Cpu;
use engram_model::LanguageModel;

/// `../shared` beside the repository, or `None` with a skip message.
pub fn shared(what: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
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
