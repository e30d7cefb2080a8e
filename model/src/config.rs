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
    /// What [`ModelConfig::check`] let through but a researcher should know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Upper bounds of plausibility: beyond any released model, small enough
/// that a typo is caught before it becomes an allocation.
const MAX_VOCAB: usize = 1 << 24;
const MAX_WIDTH: usize = 1 << 17;
const MAX_MLP: usize = 1 << 20;
const MAX_LAYERS: usize = 1 << 12;
const MAX_CTX: usize = 1 << 24;

/// `width / heads` where the heads split the width evenly.
pub(crate) fn derived_head_dim(width: usize, heads: usize) -> Option<usize> {
    (heads > 0 && width.is_multiple_of(heads)).then(|| width / heads)
}

/// The rule a head count breaks when it does not divide the width.
pub(crate) fn heads_rule(width: usize, heads: usize) -> String {
    format!("{heads} heads do not divide the width {width}: each head needs a whole share")
}

/// The config values [`ModelConfig::check`] judges, named per format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Vocab,
    Width,
    Layers,
    Heads,
    KvHeads,
    HeadDim,
    Mlp,
    Ctx,
    RotaryDim,
    RopeTheta,
    NormEps,
    Bos,
    Eos,
}

impl Field {
    /// The `config.json` key of this value for `arch`.
    pub fn hf_key(self, arch: Architecture) -> &'static str {
        use Architecture::*;
        match (self, arch) {
            (Field::Vocab, _) => "vocab_size",
            (Field::Bos, _) => "bos_token_id",
            (Field::Eos, _) => "eos_token_id",
            (Field::Width, Gpt2 | GptJ) => "n_embd",
            (Field::Width, _) => "hidden_size",
            (Field::Layers, Gpt2 | GptJ) => "n_layer",
            (Field::Layers, _) => "num_hidden_layers",
            (Field::Heads, Gpt2 | GptJ) => "n_head",
            (Field::Heads, _) => "num_attention_heads",
            (Field::KvHeads, Llama) => "num_key_value_heads",
            (Field::KvHeads, Gpt2 | GptJ) => "n_head",
            (Field::KvHeads, GptNeoX) => "num_attention_heads",
            (Field::HeadDim, Llama) => "head_dim",
            (Field::HeadDim, Gpt2 | GptJ) => "n_head",
            (Field::HeadDim, GptNeoX) => "num_attention_heads",
            (Field::Mlp, Gpt2 | GptJ) => "n_inner",
            (Field::Mlp, _) => "intermediate_size",
            (Field::Ctx, Gpt2 | GptJ) => "n_positions",
            (Field::Ctx, _) => "max_position_embeddings",
            (Field::RotaryDim, GptJ) => "rotary_dim",
            (Field::RotaryDim, GptNeoX) => "rotary_pct",
            (Field::RotaryDim, _) => "head_dim",
            (Field::RopeTheta, GptNeoX) => "rotary_emb_base",
            (Field::RopeTheta, _) => "rope_theta",
            (Field::NormEps, Gpt2 | GptJ) => "layer_norm_epsilon",
            (Field::NormEps, GptNeoX) => "layer_norm_eps",
            (Field::NormEps, Llama) => "rms_norm_eps",
        }
    }
}

impl ModelConfig {
    /// Multiply-adds × 2 of one block for one token attending to `keys` keys:
    /// the q/k/v/o projections, the MLP's two (gated: three) matrices, and the
    /// attention scores and mix. The arithmetic floor of the benchmarks counts these.
    pub fn block_flops(&self, keys: usize) -> f64 {
        let (d, q, kv) = (
            self.d_model as f64,
            (self.n_heads * self.d_head) as f64,
            (self.n_kv_heads * self.d_head) as f64,
        );
        let mlp_mats = if self.gated_mlp { 3.0 } else { 2.0 };
        let proj = d * q + 2.0 * d * kv + q * d + mlp_mats * d * self.d_mlp as f64;
        2.0 * (proj + 2.0 * keys as f64 * q)
    }

    /// Multiply-adds × 2 of the unembedding of one position.
    pub fn unembed_flops(&self) -> f64 {
        2.0 * (self.d_model * self.vocab_size) as f64
    }

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
        let mut cfg = cfg;
        let arch = cfg.arch;
        cfg.check(path, &|f| f.hf_key(arch).to_string())?;
        Ok(cfg)
    }

    /// Check the shape this config describes, once, at load, whatever the
    /// source: `key` names each [`Field`] as the file spells it, so an error
    /// names the file, the key and the rule. Special token ids outside the
    /// vocabulary are dropped with a note in [`ModelConfig::warnings`]
    /// (HF's tiny test models carry GPT-2's 50256 with 512 tokens).
    pub fn check(&mut self, path: &Path, key: &dyn Fn(Field) -> String) -> Result<()> {
        let bad = |field: Field, message: String| ModelError::InvalidField {
            path: path.to_path_buf(),
            field: key(field),
            message,
        };
        for (field, v, max) in [
            (Field::Vocab, self.vocab_size, MAX_VOCAB),
            (Field::Width, self.d_model, MAX_WIDTH),
            (Field::Layers, self.n_layers, MAX_LAYERS),
            (Field::Heads, self.n_heads, MAX_WIDTH),
            (Field::HeadDim, self.d_head, MAX_WIDTH),
            (Field::Mlp, self.d_mlp, MAX_MLP),
            (Field::Ctx, self.n_ctx, MAX_CTX),
        ] {
            if v == 0 || v > max {
                return Err(bad(
                    field,
                    format!("{v} is outside the plausible range 1..={max}"),
                ));
            }
        }
        if self.arch != Architecture::Llama && self.n_heads * self.d_head != self.d_model {
            return Err(bad(Field::Heads, heads_rule(self.d_model, self.n_heads)));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(
                Field::KvHeads,
                format!(
                    "{} key/value heads do not divide the {} query heads",
                    self.n_kv_heads, self.n_heads
                ),
            ));
        }
        if let Some(r) = self.rotary {
            if r.dim == 0 || r.dim % 2 != 0 || r.dim > self.d_head {
                return Err(bad(
                    Field::RotaryDim,
                    format!(
                        "{} rotary dimensions: must be even, positive and at most the head size {}",
                        r.dim, self.d_head
                    ),
                ));
            }
            if !(r.theta.is_finite() && r.theta > 1.0) {
                return Err(bad(
                    Field::RopeTheta,
                    format!("{} must be a finite base above 1", r.theta),
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0 && self.norm_eps < 1.0) {
            return Err(bad(
                Field::NormEps,
                format!("{} must be finite, at least 0 and below 1", self.norm_eps),
            ));
        }
        let vocab = self.vocab_size;
        for (field, id) in [
            (Field::Bos, &mut self.bos_token_id),
            (Field::Eos, &mut self.eos_token_id),
        ] {
            if let Some(t) = id.filter(|&t| t as usize >= vocab) {
                self.warnings.push(format!(
                    "{}: `{}` {t} is outside the vocabulary of {vocab} tokens; ignored \
                     (padding uses token 0, generation does not stop early)",
                    path.display(),
                    key(field)
                ));
                *id = None;
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

    pub(crate) fn invalid(&self, field: &str, message: &str) -> ModelError {
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
