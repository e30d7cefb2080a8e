//! The decoder-only transformer: embeddings, a stack of blocks, the final norm
//! and the unembedding, with one forward pass that calls every hook point.
//!
//! The pass is also exposed in pieces ([`Transformer::embed`],
//! [`Transformer::run_blocks`], [`Transformer::unembed`]) so that causal tracing
//! can reuse a shared prefix and ROME can optimise from one layer onwards.

use std::ops::Range;
use std::path::Path;

use burn_tensor::backend::Backend;
use burn_tensor::{Int, Tensor, TensorData};

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::hooks::{at3, Activation, Hook, HookPoint, NoHooks};
use crate::layers::{upload, Block, ForwardCtx, LayerKv, Linear, Norm};
use crate::weights::{HostTensor, SafetensorsCheckpoint, TensorSource};

/// A batch of token ids with padding and positions, ready for [`Transformer::forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch][pos]` token ids; every row has the same length.
    pub ids: Vec<Vec<u32>>,
    /// `[batch][pos]` false at padding.
    pub keep: Vec<Vec<bool>>,
    /// `[batch][pos]` position ids.
    pub positions: Vec<Vec<usize>>,
}

impl Batch {
    /// One unpadded sequence.
    pub fn single(ids: &[u32]) -> Self {
        Self {
            ids: vec![ids.to_vec()],
            keep: vec![vec![true; ids.len()]],
            positions: vec![(0..ids.len()).collect()],
        }
    }

    /// Sequences of equal length, unpadded.
    pub fn uniform(rows: &[Vec<u32>]) -> Result<Self> {
        let len = rows.first().map_or(0, Vec::len);
        if let Some(r) = rows.iter().find(|r| r.len() != len) {
            return Err(ModelError::RaggedBatch {
                first: len,
                other: r.len(),
            });
        }
        Ok(Self {
            ids: rows.to_vec(),
            keep: rows.iter().map(|r| vec![true; r.len()]).collect(),
            positions: rows.iter().map(|r| (0..r.len()).collect()).collect(),
        })
    }

    /// Pad on the right with `pad`; position ids count from 0 in every row.
    pub fn right_padded(rows: &[Vec<u32>], pad: u32) -> Self {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut b = Self {
            ids: vec![],
            keep: vec![],
            positions: vec![],
        };
        for r in rows {
            let mut ids = r.clone();
            ids.resize(len, pad);
            b.ids.push(ids);
            b.keep.push((0..len).map(|i| i < r.len()).collect());
            b.positions.push((0..len).collect());
        }
        b
    }

    /// Pad on the left with `pad` (for generation); positions start at 0 at each row's first real token.
    pub fn left_padded(rows: &[Vec<u32>], pad: u32) -> Self {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut b = Self {
            ids: vec![],
            keep: vec![],
            positions: vec![],
        };
        for r in rows {
            let n_pad = len - r.len();
            let mut ids = vec![pad; n_pad];
            ids.extend_from_slice(r);
            b.ids.push(ids);
            b.keep.push((0..len).map(|i| i >= n_pad).collect());
            b.positions
                .push((0..len).map(|i| i.saturating_sub(n_pad)).collect());
        }
        b
    }

    pub fn batch_size(&self) -> usize {
        self.ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Index of the last real token of each row.
    pub fn last_positions(&self) -> Vec<usize> {
        self.keep
            .iter()
            .map(|k| k.iter().rposition(|&x| x).unwrap_or(0))
            .collect()
    }
}

/// Keys and values of every layer for the tokens run so far (generation).
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerKv<B>>,
    /// `[batch][key]` false at padding.
    pub keep: Vec<Vec<bool>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            keep: Vec::new(),
        }
    }

    /// Tokens cached per row.
    pub fn len(&self) -> usize {
        self.keep.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A transformer language model on backend `B`.
#[derive(Debug, Clone)]
pub struct Transformer<B: Backend> {
    pub config: ModelConfig,
    /// `[vocab, d_model]`
    pub embed: Tensor<B, 2>,
    /// `[n_ctx, d_model]`, learned positions only
    pub pos_embed: Option<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub ln_final: Norm<B>,
    /// `[d_model, vocab]`
    pub unembed: Linear<B>,
    pub device: B::Device,
}

impl<B: Backend> Transformer<B> {
    /// Load `config.json` and the safetensors checkpoint from a HF model directory.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = SafetensorsCheckpoint::open(dir)?;
        Self::from_source(config, &ckpt, device)
    }

    /// Load a GGUF file (llama family), dequantized to the compute dtype.
    pub fn from_gguf(path: &Path, device: &B::Device) -> Result<Self> {
        let ckpt = crate::gguf::GgufCheckpoint::open(path)?;
        let config = ckpt.config.clone();
        Self::from_source(config, &ckpt, device)
    }

    /// Build from a config and any tensor source, by the family's checkpoint names.
    pub fn from_source(
        config: ModelConfig,
        src: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        let w = WeightLoader { src, device };
        match config.arch {
            Architecture::Gpt2 => crate::arch::gpt2::load(config, &w),
            Architecture::GptJ => crate::arch::gptj::load(config, &w),
            Architecture::GptNeoX => crate::arch::neox::load(config, &w),
            Architecture::Llama => crate::arch::llama::load(config, &w),
        }
    }

    /// Every hook point of this model, in the order the forward pass calls them.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let mut v = vec![HookPoint::Embed];
        if self.pos_embed.is_some() {
            v.push(HookPoint::PosEmbed);
        }
        for (layer, block) in self.blocks.iter().enumerate() {
            for site in Block::<B>::sites(&self.config, block.ln2.is_some()) {
                v.push(HookPoint::block(layer, site));
            }
        }
        v.push(HookPoint::LnFinal);
        v
    }

    /// Check a batch against the vocabulary and context.
    pub fn validate(&self, batch: &Batch) -> Result<()> {
        let len = batch.seq_len();
        if batch.batch_size() == 0 || len == 0 {
            return Err(ModelError::EmptyPrompt);
        }
        for row in &batch.ids {
            if row.len() != len {
                return Err(ModelError::RaggedBatch {
                    first: len,
                    other: row.len(),
                });
            }
            for (position, &id) in row.iter().enumerate() {
                if id as usize >= self.config.vocab_size {
                    return Err(ModelError::TokenOutOfRange {
                        id,
                        position,
                        vocab: self.config.vocab_size,
                    });
                }
            }
        }
        let max_pos = batch.positions.iter().flatten().max().copied().unwrap_or(0);
        if len > self.config.n_ctx || max_pos >= self.config.n_ctx {
            return Err(ModelError::PromptTooLong {
                len: len.max(max_pos + 1),
                n_ctx: self.config.n_ctx,
            });
        }
        if batch.keep.len() != batch.batch_size()
            || batch.positions.len() != batch.batch_size()
            || batch.keep.iter().any(|k| k.len() != len)
            || batch.positions.iter().any(|p| p.len() != len)
        {
            return Err(ModelError::RaggedBatch {
                first: len,
                other: 0,
            });
        }
        Ok(())
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - returns `[batch, pos, vocab]`
    pub fn forward<H: Hook<B> + ?Sized>(
        &self,
        batch: &Batch,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        let ctx = self.context(batch)?;
        let x = self.embed(batch, hooks)?;
        let x = self.run_blocks(0..self.config.n_layers, x, &ctx, hooks)?;
        match self.unembed(x, hooks) {
            Err(ModelError::NonFinite { what, .. }) => Err(self.first_non_finite(batch, what)),
            other => other,
        }
    }

    /// Where a forward pass that ended non-finite first went so: the pass
    /// again, unhooked, checking every hook point (only on that failure path).
    fn first_non_finite(&self, batch: &Batch, what: String) -> ModelError {
        struct Finder(Option<HookPoint>);
        impl<B: Backend> Hook<B> for Finder {
            fn wants(&self, _: HookPoint) -> bool {
                self.0.is_none()
            }
            fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
                let finite = match act {
                    Activation::Rank3(t) => all_finite(t),
                    Activation::Rank4(t) => all_finite(t),
                };
                if !finite {
                    self.0 = Some(point);
                }
                None
            }
        }
        let mut finder = Finder(None);
        let _ = self.context(batch).and_then(|ctx| {
            let x = self.embed(batch, &mut finder)?;
            self.run_blocks(0..self.config.n_layers, x, &ctx, &mut finder)
        });
        let point = match finder.0 {
            Some(p) => p.to_string(),
            None => "ln_final, after the hooks' replacements (unhooked, the pass is finite)".into(),
        };
        ModelError::NonFinite { point, what }
    }

    /// The forward pass with no hooks.
    pub fn logits(&self, batch: &Batch) -> Result<Tensor<B, 3>> {
        self.forward(batch, &mut NoHooks)
    }

    /// Validate `batch` and build its mask and rotary tables.
    pub fn context(&self, batch: &Batch) -> Result<ForwardCtx<B>> {
        self.validate(batch)?;
        Ok(ForwardCtx::new(
            &self.config,
            &batch.positions,
            &batch.keep,
            &self.device,
        ))
    }

    /// Token (and learned position) embeddings: the residual stream entering block 0.
    ///
    /// # Shapes
    /// - returns `[batch, pos, d_model]`
    pub fn embed<H: Hook<B> + ?Sized>(&self, batch: &Batch, hooks: &mut H) -> Result<Tensor<B, 3>> {
        let (b, s) = (batch.batch_size(), batch.seq_len());
        let d = self.config.d_model;
        let ids: Vec<i64> = batch.ids.iter().flatten().map(|&i| i as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [b * s]), &self.device);
        let tok = self.embed.clone().select(0, ids).reshape([b, s, d]);
        // [batch, pos, d_model]
        let tok = at3(hooks, HookPoint::Embed, tok)?;
        match &self.pos_embed {
            None => Ok(tok),
            Some(table) => {
                let pos: Vec<i64> = batch
                    .positions
                    .iter()
                    .flatten()
                    .map(|&p| p as i64)
                    .collect();
                let pos =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(pos, [b * s]), &self.device);
                // [batch, pos, d_model]
                let pe = at3(
                    hooks,
                    HookPoint::PosEmbed,
                    table.clone().select(0, pos).reshape([b, s, d]),
                )?;
                Ok(tok + pe)
            }
        }
    }

    /// Run blocks `layers` on a residual stream.
    ///
    /// # Shapes
    /// - x: `[batch, pos, d_model]` → `[batch, pos, d_model]`
    pub fn run_blocks<H: Hook<B> + ?Sized>(
        &self,
        layers: Range<usize>,
        mut x: Tensor<B, 3>,
        ctx: &ForwardCtx<B>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        if layers.end > self.blocks.len() {
            return Err(ModelError::LayerOutOfRange {
                layer: layers.end,
                n_layers: self.blocks.len(),
            });
        }
        for layer in layers {
            x = self.blocks[layer].forward(layer, x, &self.config, ctx, None, hooks)?;
        }
        Ok(x)
    }

    /// Run blocks `layers` on new tokens over cached keys and values (`kv[layer]`,
    /// extended in place). `ctx` is built from the new tokens' positions and the
    /// keep mask of every key, cached ones first.
    ///
    /// # Shapes
    /// - x: `[batch, new_pos, d_model]` → `[batch, new_pos, d_model]`
    pub fn run_blocks_cached<H: Hook<B> + ?Sized>(
        &self,
        layers: Range<usize>,
        mut x: Tensor<B, 3>,
        ctx: &ForwardCtx<B>,
        kv: &mut [LayerKv<B>],
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        if layers.end > self.blocks.len() || layers.end > kv.len() {
            return Err(ModelError::LayerOutOfRange {
                layer: layers.end,
                n_layers: self.blocks.len().min(kv.len()),
            });
        }
        for layer in layers {
            x = self.blocks[layer].forward(
                layer,
                x,
                &self.config,
                ctx,
                Some(&mut kv[layer]),
                hooks,
            )?;
        }
        Ok(x)
    }

    /// [`Self::forward_cached`] up to the last block: the residual stream, for
    /// callers that unembed only some positions.
    ///
    /// # Shapes
    /// - returns `[batch, new_pos, d_model]`
    pub fn forward_cached_residual<H: Hook<B> + ?Sized>(
        &self,
        step: &Batch,
        cache: &mut KvCache<B>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        self.validate(step)?;
        if cache.keep.is_empty() {
            cache.keep = vec![Vec::new(); step.batch_size()];
            cache.layers = vec![LayerKv::default(); self.config.n_layers];
        }
        if cache.keep.len() != step.batch_size() {
            return Err(ModelError::RaggedBatch {
                first: cache.keep.len(),
                other: step.batch_size(),
            });
        }
        let total = cache.len() + step.seq_len();
        if total > self.config.n_ctx {
            return Err(ModelError::PromptTooLong {
                len: total,
                n_ctx: self.config.n_ctx,
            });
        }
        for (all, new) in cache.keep.iter_mut().zip(&step.keep) {
            all.extend_from_slice(new);
        }
        let ctx = ForwardCtx::new(&self.config, &step.positions, &cache.keep, &self.device);
        let mut x = self.embed(step, hooks)?;
        for (layer, kv) in cache.layers.iter_mut().enumerate() {
            x = self.blocks[layer].forward(layer, x, &self.config, &ctx, Some(kv), hooks)?;
        }
        Ok(x)
    }

    /// Run new tokens on top of a key/value cache, which is extended in place.
    /// `step.keep` covers only the new tokens; positions continue each row's sequence.
    ///
    /// # Shapes
    /// - returns `[batch, new_pos, vocab]`
    pub fn forward_cached<H: Hook<B> + ?Sized>(
        &self,
        step: &Batch,
        cache: &mut KvCache<B>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        let x = self.forward_cached_residual(step, cache, hooks)?;
        self.unembed(x, hooks)
    }

    /// Final norm and unembedding.
    ///
    /// # Shapes
    /// - x: `[batch, pos, d_model]` → `[batch, pos, vocab]`
    pub fn unembed<H: Hook<B> + ?Sized>(
        &self,
        x: Tensor<B, 3>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 3>> {
        let normed = at3(hooks, HookPoint::LnFinal, self.ln_final.forward(x))?;
        // One reduction over [batch, seq, d_model]: NaN never leaves as a probability.
        if !all_finite(&normed) {
            return Err(ModelError::NonFinite {
                point: HookPoint::LnFinal.to_string(),
                what: "NaN or infinity in the final residual".into(),
            });
        }
        Ok(self.unembed.forward(normed))
    }

    /// Next-token probabilities at the last real position of each row.
    ///
    /// # Shapes
    /// - returns `[batch, vocab]`
    pub fn next_token_probs(&self, batch: &Batch) -> Result<Tensor<B, 2>> {
        let logits = self.logits(batch)?;
        Ok(last_position(logits, &batch.last_positions()))
            .map(|l| burn_tensor::activation::softmax(l, 1))
    }
}

/// Pick position `positions[i]` of row `i`.
///
/// # Shapes
/// - x: `[batch, pos, d]` → `[batch, d]`
pub fn last_position<B: Backend>(x: Tensor<B, 3>, positions: &[usize]) -> Tensor<B, 2> {
    let [_, _, d] = x.dims();
    let rows: Vec<Tensor<B, 2>> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| x.clone().slice([i..i + 1, p..p + 1, 0..d]).reshape([1, d]))
        .collect();
    Tensor::cat(rows, 0)
}

/// Uploads checkpoint tensors by name, with the shape checks every family needs.
pub struct WeightLoader<'a, B: Backend> {
    pub src: &'a dyn TensorSource,
    pub device: &'a B::Device,
}

impl<B: Backend> WeightLoader<'_, B> {
    /// The first of `names` that the checkpoint holds (for optional prefixes).
    pub fn resolve(&self, names: &[String]) -> Result<String> {
        names
            .iter()
            .find(|n| self.src.contains(n))
            .cloned()
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.src.origin().to_path_buf(),
                tensor: names.first().cloned().unwrap_or_default(),
            })
    }

    /// A tensor of the checkpoint, checked for shape and for NaN or infinity.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.src.tensor_shaped(name, shape)?;
        let bad = t.data.iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            return Err(ModelError::NonFiniteWeights {
                path: self.src.origin().to_path_buf(),
                tensor: name.into(),
                count: bad,
                total: t.data.len(),
            });
        }
        Ok(t)
    }

    pub fn tensor1(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        Ok(upload(&self.host(name, &[len])?, self.device))
    }

    pub fn tensor2(&self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        Ok(upload(&self.host(name, &shape)?, self.device))
    }

    /// A HF `nn.Linear` (weight `[out, in]`), stored transposed as `[in, out]`.
    pub fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let w = self
            .host(&format!("{prefix}.weight"), &[d_out, d_in])?
            .transpose();
        self.linear_from(w, prefix, d_out, bias)
    }

    /// A GPT-2 `Conv1D` (weight already `[in, out]`).
    pub fn conv1d(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear<B>> {
        let w = self.host(&format!("{prefix}.weight"), &[d_in, d_out])?;
        self.linear_from(w, prefix, d_out, true)
    }

    /// A linear map from an `[in, out]` host weight and the optional `{prefix}.bias`.
    pub fn linear_from(
        &self,
        w: HostTensor,
        prefix: &str,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>> {
        let bias = if bias {
            Some(self.tensor1(&format!("{prefix}.bias"), d_out)?)
        } else {
            None
        };
        Ok(self.linear_host(w, bias))
    }

    pub fn linear_host(&self, w: HostTensor, bias: Option<Tensor<B, 1>>) -> Linear<B> {
        Linear {
            weight: upload(&w, self.device),
            bias,
        }
    }

    /// A norm with `{prefix}.weight` and, for LayerNorm, `{prefix}.bias`.
    pub fn norm(&self, cfg: &ModelConfig, prefix: &str) -> Result<Norm<B>> {
        let d = cfg.d_model;
        let bias = match cfg.norm {
            crate::config::NormKind::LayerNorm => Some(self.tensor1(&format!("{prefix}.bias"), d)?),
            crate::config::NormKind::RmsNorm => None,
        };
        Ok(Norm {
            kind: cfg.norm,
            eps: cfg.norm_eps,
            weight: self.tensor1(&format!("{prefix}.weight"), d)?,
            bias,
        })
    }

    /// The unembedding: `{name}` as `[vocab, d_model]`, or the token embedding `embed_name` when tied.
    pub fn unembed(
        &self,
        cfg: &ModelConfig,
        embed_name: &str,
        name: &str,
        bias: Option<&str>,
    ) -> Result<Linear<B>> {
        // Stored contiguous as [d_model, vocab], also when tied: a strided view
        // of the embedding costs a copy in every matmul on the CPU backend.
        let weight = if cfg.tied_embeddings && !self.src.contains(name) {
            upload::<B, 2>(
                &self
                    .host(embed_name, &[cfg.vocab_size, cfg.d_model])?
                    .transpose(),
                self.device,
            )
        } else {
            upload::<B, 2>(
                &self.host(name, &[cfg.vocab_size, cfg.d_model])?.transpose(),
                self.device,
            )
        };
        let bias = match bias {
            Some(b) => Some(self.tensor1(b, cfg.vocab_size)?),
            None => None,
        };
        Ok(Linear { weight, bias })
    }
}

/// Whether every element of `t` is finite (one reduction and one read).
pub fn all_finite<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    use burn_tensor::ElementConversion;
    t.clone()
        .is_finite()
        .all()
        .int()
        .into_scalar()
        .elem::<i64>()
        == 1
}
