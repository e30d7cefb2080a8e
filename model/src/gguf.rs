//! GGUF checkpoints (llama.cpp's format): header, metadata, tensor table and
//! data, memory-mapped. Tensors are dequantized to f32 on request (F32, F16,
//! BF16, Q8_0, Q4_0, Q4_1) and served under HF names, with llama.cpp's
//! rotary row permutation of the Q and K projections undone, so that
//! `arch/llama.rs` loads a GGUF file exactly as it loads safetensors.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::config::{
    Architecture, Field, MlpActivation, ModelConfig, NormKind, Rotary, RotaryStyle,
};
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, TensorSource};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::UInt(v) => Some(*v),
            MetaValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(v) => Some(*v),
            MetaValue::UInt(v) => Some(*v as f64),
            MetaValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// ggml tensor types Engram can dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    /// The ggml type id written in the tensor table.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    /// Row-major shape (GGUF lists dimensions innermost first; this is reversed).
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte range in the file.
    pub range: (usize, usize),
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, GgufTensor>,
    /// Tensor names in the file's order.
    pub order: Vec<String>,
    /// Byte range of the metadata key/value section, for copying it verbatim.
    pub metadata_range: (usize, usize),
    /// Key/value pairs in that section.
    pub n_kv: usize,
    pub alignment: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> ModelError {
        ModelError::Gguf {
            path: self.path.to_path_buf(),
            message: format!(
                "{what} at byte {} (file is {} bytes)",
                self.pos,
                self.buf.len()
            ),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err("unexpected end of file")),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or_else(|| self.err(&format!("length {n} exceeds the file")))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::UInt(self.u8()? as u64),
            1 => MetaValue::Int(self.u8()? as i8 as i64),
            2 => MetaValue::UInt(self.u16()? as u64),
            3 => MetaValue::Int(self.u16()? as i16 as i64),
            4 => MetaValue::UInt(self.u32()? as u64),
            5 => MetaValue::Int(self.u32()? as i32 as i64),
            6 => MetaValue::Float(f32::from_bits(self.u32()?) as f64),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::String(self.string()?),
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::UInt(self.u64()?),
            11 => MetaValue::Int(self.u64()? as i64),
            12 => MetaValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(self.err(&format!("unknown metadata type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only map owned by the returned value; see weights.rs.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path,
        };
        let magic = c.take(4).map_err(|_| ModelError::Gguf {
            path: path.to_path_buf(),
            message: "file too short for a GGUF header".into(),
        })?;
        if magic != b"GGUF" {
            return Err(ModelError::Gguf {
                path: path.to_path_buf(),
                message: format!(
                    "bad magic {:?}, expected \"GGUF\"",
                    String::from_utf8_lossy(magic)
                ),
            });
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Gguf {
                path: path.to_path_buf(),
                message: format!("unsupported GGUF version {version} (2 and 3 are supported)"),
            });
        }
        let n_tensors = c.len()?;
        let n_kv = c.len()?;
        let metadata_start = c.pos;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let metadata_range = (metadata_start, c.pos);
        let mut table = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 4 {
                return Err(c.err(&format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.len()?);
            }
            let ty = c.u32()?;
            let offset = c.u64()?;
            table.push((name, dims, ty, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;

        let mut tensors = HashMap::with_capacity(n_tensors);
        let order: Vec<String> = table.iter().map(|t| t.0.clone()).collect();
        for (name, dims, ty, offset) in table {
            let ggml_type = GgmlType::from_id(ty).ok_or_else(|| ModelError::Gguf {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{name}` has ggml type {ty}, which Engram cannot dequantize \
                     (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
                ),
            })?;
            let n: usize = dims.iter().product();
            let (block, bytes) = ggml_type.block();
            if dims.first().is_some_and(|&d| d % block != 0) {
                return Err(ModelError::Gguf {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor `{name}`: row length {} is not a multiple of {block}",
                        dims[0]
                    ),
                });
            }
            let size = n / block * bytes;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start));
            let end = start
                .and_then(|s| s.checked_add(size))
                .filter(|&e| e <= map.len());
            let (Some(start), Some(end)) = (start, end) else {
                return Err(ModelError::Gguf {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor `{name}` (offset {offset}, {size} bytes) lies past the end of the file ({} bytes)",
                        map.len()
                    ),
                });
            };
            let shape: Vec<usize> = dims.into_iter().rev().collect();
            tensors.insert(
                name.clone(),
                GgufTensor {
                    name,
                    shape,
                    ggml_type,
                    range: (start, end),
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            order,
            metadata_range,
            n_kv,
            alignment,
        })
    }

    /// The raw bytes of a byte range of the file.
    pub fn bytes(&self, range: (usize, usize)) -> &[u8] {
        &self.map[range.0..range.1]
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A GGUF tensor by its own name, dequantized to f32.
    pub fn dequantize(&self, name: &str) -> Result<HostTensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })?;
        let bytes = &self.map[t.range.0..t.range.1];
        Ok(HostTensor::new(
            t.shape.clone(),
            dequantize(t.ggml_type, bytes),
        ))
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingField {
            path: self.path.clone(),
            field: key.into(),
        }
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta(key)
            .and_then(MetaValue::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.missing(key))
    }

    /// The model configuration from `{arch}.*` metadata.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self
            .meta("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| self.missing("general.architecture"))?
            .to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(ModelError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: arch,
                supported: vec!["llama", "qwen2"],
            });
        }
        let k = |s: &str| format!("{arch}.{s}");
        let d_model = self.meta_usize(&k("embedding_length"))?;
        let n_heads = self.meta_usize(&k("attention.head_count"))?;
        let n_kv_heads = self
            .meta_usize(&k("attention.head_count_kv"))
            .unwrap_or(n_heads);
        let d_head = match self.meta_usize(&k("attention.key_length")) {
            Ok(h) => h,
            Err(_) => crate::config::derived_head_dim(d_model, n_heads).ok_or_else(|| {
                ModelError::InvalidField {
                    path: self.path.clone(),
                    field: k("attention.head_count"),
                    message: crate::config::heads_rule(d_model, n_heads),
                }
            })?,
        };
        let vocab_size = match self.meta_usize(&k("vocab_size")) {
            Ok(v) => v,
            Err(_) => self
                .tensors
                .get("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
                .ok_or_else(|| self.missing(&k("vocab_size")))?,
        };
        let token = |key: &str| self.meta(key).and_then(MetaValue::as_u64).map(|v| v as u32);
        let qwen = arch == "qwen2";
        let mut cfg = ModelConfig {
            arch: Architecture::Llama,
            model_type: arch.clone(),
            vocab_size,
            d_model,
            n_layers: self.meta_usize(&k("block_count"))?,
            n_heads,
            n_kv_heads,
            d_head,
            d_mlp: self.meta_usize(&k("feed_forward_length"))?,
            n_ctx: self.meta_usize(&k("context_length"))?,
            norm: NormKind::RmsNorm,
            norm_eps: self
                .meta(&k("attention.layer_norm_rms_epsilon"))
                .and_then(MetaValue::as_f64)
                .unwrap_or(1e-5),
            act: MlpActivation::Silu,
            gated_mlp: true,
            learned_positions: false,
            rotary: Some(Rotary {
                dim: self
                    .meta_usize(&k("rope.dimension_count"))
                    .unwrap_or(d_head),
                theta: self
                    .meta(&k("rope.freq_base"))
                    .and_then(MetaValue::as_f64)
                    .unwrap_or(10000.0),
                style: RotaryStyle::Half,
            }),
            parallel_attn_mlp: false,
            shared_block_norm: false,
            tied_embeddings: !self.tensors.contains_key("output.weight"),
            qkv_bias: qwen || self.tensors.contains_key("blk.0.attn_q.bias"),
            attn_out_bias: self.tensors.contains_key("blk.0.attn_output.bias"),
            mlp_bias: self.tensors.contains_key("blk.0.ffn_up.bias"),
            lm_head_bias: false,
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_id: token("tokenizer.ggml.eos_token_id"),
            warnings: Vec::new(),
        };
        cfg.check(&self.path, &|f| gguf_key(&arch, f))?;
        Ok(cfg)
    }
}

/// The GGUF metadata key of a config value.
fn gguf_key(arch: &str, field: Field) -> String {
    let key = match field {
        Field::Vocab => "vocab_size",
        Field::Width => "embedding_length",
        Field::Layers => "block_count",
        Field::Heads => "attention.head_count",
        Field::KvHeads => "attention.head_count_kv",
        Field::HeadDim => "attention.key_length",
        Field::Mlp => "feed_forward_length",
        Field::Ctx => "context_length",
        Field::RotaryDim => "rope.dimension_count",
        Field::RopeTheta => "rope.freq_base",
        Field::NormEps => "attention.layer_norm_rms_epsilon",
        Field::Bos => return "tokenizer.ggml.bos_token_id".into(),
        Field::Eos => return "tokenizer.ggml.eos_token_id".into(),
    };
    format!("{arch}.{key}")
}

/// Dequantize ggml blocks to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let (block, size) = ty.block();
    let mut out = Vec::with_capacity(bytes.len() / size * block);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(f16)),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(size) {
                let d = f16(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(size) {
                let d = f16(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(size) {
                let (d, m) = (f16(&b[0..2]), f16(&b[2..4]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    out
}

/// Undo llama.cpp's permutation of Q/K rows: GGUF row `(h, 2b + a)` is HF row `(h, a·d/2 + b)`.
pub fn unpermute_rotary_rows(t: &HostTensor, n_heads: usize) -> HostTensor {
    let rows = t.shape[0];
    let width: usize = t.shape[1..].iter().product();
    let d_head = rows / n_heads;
    let half = d_head / 2;
    let mut out = vec![0f32; t.data.len()];
    for h in 0..n_heads {
        for a in 0..2 {
            for b in 0..half {
                let src = h * d_head + 2 * b + a;
                let dst = h * d_head + a * half + b;
                out[dst * width..(dst + 1) * width]
                    .copy_from_slice(&t.data[src * width..(src + 1) * width]);
            }
        }
    }
    HostTensor::new(t.shape.clone(), out)
}

/// A GGUF file served under HF tensor names.
pub struct GgufCheckpoint {
    pub file: GgufFile,
    pub config: ModelConfig,
}

impl GgufCheckpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = file.config()?;
        Ok(Self { file, config })
    }

    /// The GGUF name of an HF tensor name, and how many heads to un-permute it by.
    pub fn gguf_name(&self, hf: &str) -> Option<(String, Option<usize>)> {
        let permute = self.config.model_type == "llama";
        let fixed = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some((f.to_string(), None));
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, name) = rest.split_once('.')?;
        let (module, kind) = name.rsplit_once('.')?;
        let (g, heads) = match module {
            "input_layernorm" => ("attn_norm", None),
            "post_attention_layernorm" => ("ffn_norm", None),
            "self_attn.q_proj" => ("attn_q", permute.then_some(self.config.n_heads)),
            "self_attn.k_proj" => ("attn_k", permute.then_some(self.config.n_kv_heads)),
            "self_attn.v_proj" => ("attn_v", None),
            "self_attn.o_proj" => ("attn_output", None),
            "mlp.gate_proj" => ("ffn_gate", None),
            "mlp.up_proj" => ("ffn_up", None),
            "mlp.down_proj" => ("ffn_down", None),
            _ => return None,
        };
        Some((format!("blk.{layer}.{g}.{kind}"), heads))
    }
}

impl TensorSource for GgufCheckpoint {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let (g, heads) = self
            .gguf_name(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.file.path.clone(),
                tensor: name.into(),
            })?;
        let t = self.file.dequantize(&g).map_err(|e| match e {
            ModelError::MissingTensor { path, .. } => ModelError::MissingTensor {
                path,
                tensor: format!("{g} (for {name})"),
            },
            other => other,
        })?;
        Ok(match heads {
            Some(n) => unpermute_rotary_rows(&t, n),
            None => t,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.gguf_name(name)
            .is_some_and(|(g, _)| self.file.tensors.contains_key(&g))
    }

    fn origin(&self) -> &Path {
        &self.file.path
    }
}
