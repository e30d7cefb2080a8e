//! GPT-J (Wang & Komatsuzaki 2021): parallel attention and MLP reading one
//! LayerNorm, interleaved rotary on the first `rotary_dim` dims of each head,
//! no attention biases, an lm_head with bias.
//!
//! ```text
//! for each block: h = ln_1 x; x = x + attn(h) + mlp(h)
//! ```

use burn_tensor::backend::Backend;

use crate::config::{Architecture, HfConfig, ModelConfig, NormKind, Rotary, RotaryStyle};
use crate::error::Result;
use crate::layers::{Attention, Block, Mlp};
use crate::transformer::{Transformer, WeightLoader};

pub fn config(hf: &HfConfig) -> Result<ModelConfig> {
    let d_model = hf.usize("n_embd")?;
    let n_heads = hf.usize("n_head")?;
    let d_head = d_model / n_heads.max(1);
    Ok(ModelConfig {
        arch: Architecture::GptJ,
        model_type: "gptj".into(),
        vocab_size: hf.usize("vocab_size")?,
        d_model,
        n_layers: hf.usize("n_layer")?,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: hf
            .opt_usize("n_inner")?
            .unwrap_or(d_model.saturating_mul(4)),
        n_ctx: hf.usize("n_positions")?,
        norm: NormKind::LayerNorm,
        norm_eps: hf.f64_or("layer_norm_epsilon", 1e-5)?,
        act: hf.activation("activation_function", "gelu_new")?,
        gated_mlp: false,
        learned_positions: false,
        rotary: Some(Rotary {
            dim: hf.opt_usize("rotary_dim")?.unwrap_or(d_head),
            theta: 10000.0,
            style: RotaryStyle::Interleaved,
        }),
        parallel_attn_mlp: true,
        shared_block_norm: true,
        tied_embeddings: hf.bool_or("tie_word_embeddings", false)?,
        qkv_bias: false,
        attn_out_bias: false,
        mlp_bias: true,
        lm_head_bias: true,
        bos_token_id: hf.opt_token_id("bos_token_id")?,
        eos_token_id: hf.opt_token_id("eos_token_id")?,
        warnings: Vec::new(),
    })
}

pub fn load<B: Backend>(cfg: ModelConfig, w: &WeightLoader<'_, B>) -> Result<Transformer<B>> {
    let (d, m, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    let embed = w.tensor2("transformer.wte.weight", [v, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("transformer.h.{l}");
        blocks.push(Block {
            ln1: w.norm(&cfg, &format!("{b}.ln_1"))?,
            ln2: None,
            attn: Attention {
                q: w.linear(&format!("{b}.attn.q_proj"), d, d, false)?,
                k: w.linear(&format!("{b}.attn.k_proj"), d, d, false)?,
                v: w.linear(&format!("{b}.attn.v_proj"), d, d, false)?,
                o: w.linear(&format!("{b}.attn.out_proj"), d, d, false)?,
            },
            mlp: Mlp {
                fc_in: w.linear(&format!("{b}.mlp.fc_in"), d, m, true)?,
                up: None,
                fc_out: w.linear(&format!("{b}.mlp.fc_out"), m, d, true)?,
                act: cfg.act,
            },
        });
    }
    let ln_final = w.norm(&cfg, "transformer.ln_f")?;
    let unembed = w.unembed(
        &cfg,
        "transformer.wte.weight",
        "lm_head.weight",
        Some("lm_head.bias"),
    )?;
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
