//! GPT-NeoX / Pythia (Black et al. 2022): rotary on the first `rotary_pct` of
//! each head (half-split pairing), a fused `query_key_value` laid out per head
//! as `[q | k | v]`, and parallel attention + MLP when `use_parallel_residual`.
//!
//! ```text
//! parallel:   x = x + attn(ln_in x) + mlp(ln_post x)
//! sequential: x = x + attn(ln_in x); x = x + mlp(ln_post x)
//! ```

use burn_tensor::backend::Backend;

use crate::config::{Architecture, HfConfig, ModelConfig, NormKind, Rotary, RotaryStyle};
use crate::error::Result;
use crate::layers::{upload, Attention, Block, Mlp};
use crate::transformer::{Transformer, WeightLoader};
use crate::weights::HostTensor;

pub fn config(hf: &HfConfig) -> Result<ModelConfig> {
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_attention_heads")?;
    let d_head = d_model / n_heads.max(1);
    let pct = match hf.opt_f64("rope_parameters.partial_rotary_factor")? {
        Some(p) => p,
        None => hf.f64_or("rotary_pct", 0.25)?,
    };
    hf.check_default_rope()?;
    Ok(ModelConfig {
        arch: Architecture::GptNeoX,
        model_type: "gpt_neox".into(),
        vocab_size: hf.usize("vocab_size")?,
        d_model,
        n_layers: hf.usize("num_hidden_layers")?,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: hf.usize("intermediate_size")?,
        n_ctx: hf.usize("max_position_embeddings")?,
        norm: NormKind::LayerNorm,
        norm_eps: hf.f64_or("layer_norm_eps", 1e-5)?,
        act: hf.activation("hidden_act", "gelu")?,
        gated_mlp: false,
        learned_positions: false,
        rotary: Some(Rotary {
            dim: (d_head as f64 * pct) as usize,
            theta: hf.rope_theta(hf.f64_or("rotary_emb_base", 10000.0)?)?,
            style: RotaryStyle::Half,
        }),
        parallel_attn_mlp: hf.bool_or("use_parallel_residual", true)?,
        shared_block_norm: false,
        tied_embeddings: hf.bool_or("tie_word_embeddings", false)?,
        qkv_bias: hf.bool_or("attention_bias", true)?,
        attn_out_bias: hf.bool_or("attention_bias", true)?,
        mlp_bias: true,
        lm_head_bias: false,
        bos_token_id: hf.opt_token_id("bos_token_id")?,
        eos_token_id: hf.opt_token_id("eos_token_id")?,
        warnings: Vec::new(),
    })
}

/// Rows of the fused `[n_heads * 3 * d_head, ...]` weight belonging to part `j` (0 q, 1 k, 2 v).
fn split_heads(fused: &HostTensor, n_heads: usize, d_head: usize, j: usize) -> HostTensor {
    let mut parts = Vec::with_capacity(n_heads);
    for h in 0..n_heads {
        parts.push(fused.rows((h * 3 + j) * d_head, d_head));
    }
    let mut shape = parts[0].shape.clone();
    shape[0] = n_heads * d_head;
    HostTensor::new(shape, parts.into_iter().flat_map(|p| p.data).collect())
}

pub fn load<B: Backend>(cfg: ModelConfig, w: &WeightLoader<'_, B>) -> Result<Transformer<B>> {
    let (d, m, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    let (nh, dh) = (cfg.n_heads, cfg.d_head);
    let embed = w.tensor2("gpt_neox.embed_in.weight", [v, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("gpt_neox.layers.{l}");
        let qkv_w = w.host(
            &format!("{b}.attention.query_key_value.weight"),
            &[3 * d, d],
        )?;
        let qkv_b = if cfg.qkv_bias {
            Some(w.host(&format!("{b}.attention.query_key_value.bias"), &[3 * d])?)
        } else {
            None
        };
        let part = |j: usize| {
            let weight = split_heads(&qkv_w, nh, dh, j).transpose();
            let bias = qkv_b
                .as_ref()
                .map(|bb| upload(&split_heads(bb, nh, dh, j), w.device));
            w.linear_host(weight, bias)
        };
        blocks.push(Block {
            ln1: w.norm(&cfg, &format!("{b}.input_layernorm"))?,
            ln2: Some(w.norm(&cfg, &format!("{b}.post_attention_layernorm"))?),
            attn: Attention {
                q: part(0),
                k: part(1),
                v: part(2),
                o: w.linear(&format!("{b}.attention.dense"), d, d, cfg.attn_out_bias)?,
            },
            mlp: Mlp {
                fc_in: w.linear(&format!("{b}.mlp.dense_h_to_4h"), d, m, true)?,
                up: None,
                fc_out: w.linear(&format!("{b}.mlp.dense_4h_to_h"), m, d, true)?,
                act: cfg.act,
            },
        });
    }
    let ln_final = w.norm(&cfg, "gpt_neox.final_layer_norm")?;
    let unembed = w.unembed(&cfg, "gpt_neox.embed_in.weight", "embed_out.weight", None)?;
    Ok(Transformer {
        config: cfg,
        embed,
        pos_embed: None,
        blocks,
        ln_final,
        unembed,
        device: w.device.clone(),
    })
}
