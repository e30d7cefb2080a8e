//! One model configuration for every supported family, read from HF `config.json`.
//!
//! Each architecture file (`arch/*.rs`) maps its own HF field names onto
//! [`ModelConfig`]; this module holds the shared shape and the JSON helpers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The model families Engram implements, by HF `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Gpt2,
    GptJ,
    GptNeoX,
    /// Llama 2/3, SmolLM/SmolLM2, Mistral, Qwen2 (with `qkv_bias`).
    Llama,
}

/// Every `model_type` accepted in `config.json`.
pub const SUPPORTED_MODEL_TYPES: [&str; 6] =
    ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"];

impl Architecture {
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "gpt2" => Some(Self::Gpt2),
            "gptj" => Some(Self::GptJ),
            "gpt_neox" => Some(Self::GptNeoX),
            "llama" | "mistral" | "qwen2" => Some(Self::Llama),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::GptJ => "gptj",
            Self::GptNeoX => "gpt_neox",
            Self::Llama => "llama",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

/// The MLP's nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MlpActivation {
    /// Exact GELU, `x Φ(x)`.
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`).
    GeluTanh,
    Silu,
    Relu,
}

impl MlpActivation {
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" | "gelu_python" => Some(Self::GeluTanh),
            "silu" | "swish" => Some(Self::Silu),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotaryStyle {
    /// GPT-J: dimensions (2i, 2i+1) rotate together.
    Interleaved,
    /// GPT-NeoX and Llama: dimensions (i, i + r/2) rotate together.
    Half,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rotary {
    /// Number of leading dimensions of each head that rotate (even).
    pub dim: usize,
    pub theta: f64,
    pub style: RotaryStyle,
}

/// The architecture-independent description of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Architecture,
    /// The `model_type` string as found in `config.json`.
    pub model_type: String,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads; smaller than `n_heads` under grouped-query attention.
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    /// Maximum sequence length.
    pub n_ctx: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub act: MlpActivation,
    /// SiLU/GELU-gated MLP: `down(act(gate x) * up x)`.
    pub gated_mlp: bool,
    /// Learned absolute positions (GPT-2).
    pub learned_positions: bool,
    pub rotary: Option<Rotary>,
    /// Attention and MLP read the same residual and both add to it (GPT-J, NeoX).
    pub parallel_attn_mlp: bool,
    /// One norm feeds both attention and MLP (GPT-J).
    pub shared_block_norm: bool,
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    pub attn_out_bias: bool,
    pub mlp_bias: bool,
    pub lm_head_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Read `config.json` and map it through the family's own field names.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parse the text of a `config.json`; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let hf = HfConfig {
            value,
            path: path.to_path_buf(),
        };
        let model_type = hf.string("model_type")?;
        let cfg = match Architecture::from_model_type(&model_type) {
            Some(Architecture::Gpt2) => crate::arch::gpt2::config(&hf)?,
            Some(Architecture::GptJ) => crate::arch::gptj::config(&hf)?,
            Some(Architecture::GptNeoX) => crate::arch::neox::config(&hf)?,
            Some(Architecture::Llama) => crate::arch::llama::config(&hf)?,
            None => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: model_type,
                    supported: SUPPORTED_MODEL_TYPES.to_vec(),
                })
            }
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| ModelError::InvalidField {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden size", self.d_model),
            ("number of layers", self.n_layers),
            ("number of heads", self.n_heads),
            ("n_ctx", self.n_ctx),
        ] {
            if v == 0 {
                return Err(bad(field, "must be positive".into()));
            }
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} heads cannot be grouped into {} key/value heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if let Some(r) = self.rotary {
            if r.dim == 0 || r.dim % 2 != 0 || r.dim > self.d_head {
                return Err(bad(
                    "rotary dimension",
                    format!(
                        "{} must be even and at most the head size {}",
                        r.dim, self.d_head
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Number of parameters in the checkpoint this config describes (tied embeddings counted once).
    pub fn parameter_count(&self) -> usize {
        let (d, m, v) = (self.d_model, self.d_mlp, self.vocab_size);
        let kv = self.n_kv_heads * self.d_head;
        let q = self.n_heads * self.d_head;
        let norm = if self.norm == NormKind::LayerNorm {
            2 * d
        } else {
            d
        };
        let mut attn = d * q + 2 * d * kv + q * d;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.attn_out_bias {
            attn += d;
        }
        let mut mlp = if self.gated_mlp { 3 * d * m } else { 2 * d * m };
        if self.mlp_bias {
            mlp += m * if self.gated_mlp { 2 } else { 1 } + d;
        }
        let norms = if self.shared_block_norm {
            norm
        } else {
            2 * norm
        };
        let block = attn + mlp + norms;
        let mut total = v * d + self.n_layers * block + norm;
        if self.learned_positions {
            total += self.n_ctx * d;
        }
        if !self.tied_embeddings {
            total += d * v;
        }
        if self.lm_head_bias {
            total += v;
        }
        total
    }
}

/// A parsed HF `config.json` with typed, path-naming accessors.
pub struct HfConfig {
    value: Value,
    path: PathBuf,
}

impl HfConfig {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, field: &str) -> Option<&Value> {
        // Dotted names reach into nested objects, e.g. `rope_parameters.rope_theta`.
        let mut v = &self.value;
        for part in field.split('.') {
            v = v.get(part)?;
        }
        (!v.is_null()).then_some(v)
    }

    fn invalid(&self, field: &str, message: &str) -> ModelError {
        ModelError::InvalidField {
            path: self.path.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn missing(&self, field: &str) -> ModelError {
        ModelError::MissingField {
            path: self.path.clone(),
            field: field.into(),
        }
    }

    pub fn string(&self, field: &str) -> Result<String> {
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.invalid(field, "expected a string")),
        }
    }

    pub fn opt_string(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.invalid(field, "expected a string")),
        }
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?.ok_or_else(|| self.missing(field))
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.invalid(field, "expected a non-negative integer")),
        }
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(field, "expected a number")),
        }
    }

    pub fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(field)?.unwrap_or(default))
    }

    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.invalid(field, "expected true or false")),
        }
    }

    /// A token id that may be written as a number or a list (the first entry is taken).
    pub fn opt_token_id(&self, field: &str) -> Result<Option<u32>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(a.first().and_then(Value::as_u64).map(|n| n as u32)),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as u32))
                .ok_or_else(|| self.invalid(field, "expected a token id")),
        }
    }

    /// The MLP activation named by `field`, or `default` where absent.
    pub fn activation(&self, field: &str, default: &str) -> Result<MlpActivation> {
        let name = self
            .opt_string(field)?
            .unwrap_or_else(|| default.to_string());
        MlpActivation::from_hf(&name)
            .ok_or_else(|| self.invalid(field, &format!("unsupported activation `{name}`")))
    }

    /// `rope_theta`, at the top level (transformers 4) or under `rope_parameters` (5).
    pub fn rope_theta(&self, default: f64) -> Result<f64> {
        if let Some(t) = self.opt_f64("rope_parameters.rope_theta")? {
            return Ok(t);
        }
        self.f64_or("rope_theta", default)
    }

    /// Reject rope scaling schemes this implementation does not apply.
    pub fn check_default_rope(&self) -> Result<()> {
        for field in [
            "rope_parameters.rope_type",
            "rope_scaling.rope_type",
            "rope_scaling.type",
        ] {
            if let Some(kind) = self.opt_string(field)? {
                if kind != "default" {
                    return Err(
                        self.invalid(field, &format!("rope scaling `{kind}` is not supported"))
                    );
                }
            }
        }
        Ok(())
    }
}
