//! Llama (Touvron et al. 2023) and its kin: SmolLM/SmolLM2, Mistral, Qwen2.
//! RMSNorm, full rotary (half-split pairing, `rope_theta`), grouped-query
//! attention, and a SiLU-gated MLP. Qwen2 adds q/k/v biases.
//!
//! ```text
//! for each block: x = x + attn(rms_in x); x = x + down(silu(gate h) * up h), h = rms_post x
//! ```

use burn_tensor::backend::Backend;

use crate::config::{
    heads_rule, Architecture, HfConfig, ModelConfig, NormKind, Rotary, RotaryStyle,
};
use crate::error::Result;
use crate::layers::{Attention, Block, Mlp};
use crate::transformer::{Transformer, WeightLoader};

pub fn config(hf: &HfConfig) -> Result<ModelConfig> {
    let model_type = hf.string("model_type")?;
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_attention_heads")?;
    let d_head = match hf.opt_usize("head_dim")? {
        Some(h) => h,
        None => crate::config::derived_head_dim(d_model, n_heads)
            .ok_or_else(|| hf.invalid("num_attention_heads", &heads_rule(d_model, n_heads)))?,
    };
    hf.check_default_rope()?;
    let qwen = model_type == "qwen2";
    Ok(ModelConfig {
        arch: Architecture::Llama,
        model_type,
        vocab_size: hf.usize("vocab_size")?,
        d_model,
        n_layers: hf.usize("num_hidden_layers")?,
        n_heads,
        n_kv_heads: hf.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        d_head,
        d_mlp: hf.usize("intermediate_size")?,
        n_ctx: hf.usize("max_position_embeddings")?,
        norm: NormKind::RmsNorm,
        norm_eps: hf.f64_or("rms_norm_eps", 1e-6)?,
        act: hf.activation("hidden_act", "silu")?,
        gated_mlp: true,
        learned_positions: false,
        rotary: Some(Rotary {
            dim: d_head,
            theta: hf.rope_theta(10000.0)?,
            style: RotaryStyle::Half,
        }),
        parallel_attn_mlp: false,
        shared_block_norm: false,
        tied_embeddings: hf.bool_or("tie_word_embeddings", false)?,
        qkv_bias: qwen || hf.bool_or("attention_bias", false)?,
        attn_out_bias: !qwen && hf.bool_or("attention_bias", false)?,
        mlp_bias: hf.bool_or("mlp_bias", false)?,
        lm_head_bias: false,
        bos_token_id: hf.opt_token_id("bos_token_id")?,
        eos_token_id: hf.opt_token_id("eos_token_id")?,
        warnings: Vec::new(),
    })
}

pub fn load<B: Backend>(cfg: ModelConfig, w: &WeightLoader<'_, B>) -> Result<Transformer<B>> {
    let (d, m, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    let q_dim = cfg.n_heads * cfg.d_head;
    let kv_dim = cfg.n_kv_heads * cfg.d_head;
    let embed = w.tensor2("model.embed_tokens.weight", [v, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("model.layers.{l}");
        let a = format!("{b}.self_attn");
        blocks.push(Block {
            ln1: w.norm(&cfg, &format!("{b}.input_layernorm"))?,
            ln2: Some(w.norm(&cfg, &format!("{b}.post_attention_layernorm"))?),
            attn: Attention {
                q: w.linear(&format!("{a}.q_proj"), d, q_dim, cfg.qkv_bias)?,
                k: w.linear(&format!("{a}.k_proj"), d, kv_dim, cfg.qkv_bias)?,
                v: w.linear(&format!("{a}.v_proj"), d, kv_dim, cfg.qkv_bias)?,
                o: w.linear(&format!("{a}.o_proj"), q_dim, d, cfg.attn_out_bias)?,
            },
            mlp: Mlp {
                fc_in: w.linear(&format!("{b}.mlp.gate_proj"), d, m, cfg.mlp_bias)?,
                up: Some(w.linear(&format!("{b}.mlp.up_proj"), d, m, cfg.mlp_bias)?),
                fc_out: w.linear(&format!("{b}.mlp.down_proj"), m, d, cfg.mlp_bias)?,
                act: cfg.act,
            },
        });
    }
    let ln_final = w.norm(&cfg, "model.norm")?;
    let unembed = w.unembed(&cfg, "model.embed_tokens.weight", "lm_head.weight", None)?;
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
