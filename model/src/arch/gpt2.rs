//! GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm sequential
//! blocks, `gelu_new` MLP, fused `c_attn`, Conv1D weights stored `[in, out]`.
//!
//! ```text
//! x = wte[ids] + wpe[pos]
//! for each block: x = x + attn(ln_1 x); x = x + mlp(ln_2 x)
//! logits = ln_f(x) · wteᵀ
//! ```

use burn_tensor::backend::Backend;

use crate::config::{Architecture, HfConfig, ModelConfig, NormKind};
use crate::error::Result;
use crate::layers::{Attention, Block, Mlp};
use crate::transformer::{Transformer, WeightLoader};

pub fn config(hf: &HfConfig) -> Result<ModelConfig> {
    let d_model = hf.usize("n_embd")?;
    let n_heads = hf.usize("n_head")?;
    Ok(ModelConfig {
        arch: Architecture::Gpt2,
        model_type: "gpt2".into(),
        vocab_size: hf.usize("vocab_size")?,
        d_model,
        n_layers: hf.usize("n_layer")?,
        n_heads,
        n_kv_heads: n_heads,
        d_head: d_model / n_heads.max(1),
        d_mlp: hf
            .opt_usize("n_inner")?
            .unwrap_or(d_model.saturating_mul(4)),
        n_ctx: hf.usize("n_positions")?,
        norm: NormKind::LayerNorm,
        norm_eps: hf.f64_or("layer_norm_epsilon", 1e-5)?,
        act: hf.activation("activation_function", "gelu_new")?,
        gated_mlp: false,
        learned_positions: true,
        rotary: None,
        parallel_attn_mlp: false,
        shared_block_norm: false,
        tied_embeddings: hf.bool_or("tie_word_embeddings", true)?,
        qkv_bias: true,
        attn_out_bias: true,
        mlp_bias: true,
        lm_head_bias: false,
        bos_token_id: hf.opt_token_id("bos_token_id")?,
        eos_token_id: hf.opt_token_id("eos_token_id")?,
        warnings: Vec::new(),
    })
}

pub fn load<B: Backend>(cfg: ModelConfig, w: &WeightLoader<'_, B>) -> Result<Transformer<B>> {
    let (d, m, v) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size);
    // GPT2LMHeadModel saves under `transformer.`; the original checkpoints do not.
    let wte = w.resolve(&["transformer.wte.weight".into(), "wte.weight".into()])?;
    let p = wte.strip_suffix("wte.weight").unwrap_or("").to_string();

    let embed = w.tensor2(&wte, [v, d])?;
    let pos_embed = Some(w.tensor2(&format!("{p}wpe.weight"), [cfg.n_ctx, d])?);
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let b = format!("{p}h.{l}");
        // c_attn: [d, 3d] with columns [q | k | v]
        let qkv = w.host(&format!("{b}.attn.c_attn.weight"), &[d, 3 * d])?;
        let qkv_b = w.host(&format!("{b}.attn.c_attn.bias"), &[3 * d])?;
        let part = |i: usize| {
            let bias = crate::layers::upload(&qkv_b.rows(i * d, d), w.device);
            w.linear_host(qkv.cols(i * d, d), Some(bias))
        };
        blocks.push(Block {
            ln1: w.norm(&cfg, &format!("{b}.ln_1"))?,
            ln2: Some(w.norm(&cfg, &format!("{b}.ln_2"))?),
            attn: Attention {
                q: part(0),
                k: part(1),
                v: part(2),
                o: w.conv1d(&format!("{b}.attn.c_proj"), d, d)?,
            },
            mlp: Mlp {
                fc_in: w.conv1d(&format!("{b}.mlp.c_fc"), d, m)?,
                up: None,
                fc_out: w.conv1d(&format!("{b}.mlp.c_proj"), m, d)?,
                act: cfg.act,
            },
        });
    }
    let ln_final = w.norm(&cfg, &format!("{p}ln_f"))?;
    let unembed = w.unembed(&cfg, &wte, "lm_head.weight", None)?;
    Ok(Transformer {
        config: cfg,
        embed,
        pos_embed,
        blocks,
        ln_final,
        unembed,
        device: w.device.clone(),
    })
}

/// The model's tensors under GPT-2 checkpoint names (Conv1D `[in, out]` layout),
/// for writing a HF-loadable checkpoint. The unembedding is written as `lm_head.weight`.
pub fn export<B: Backend>(
    model: &Transformer<B>,
) -> Result<Vec<(String, crate::weights::HostTensor)>> {
    use crate::weights::HostTensor;
    let host2 = |t: &burn_tensor::Tensor<B, 2>| HostTensor::from_tensor(t);
    let host1 = |t: &burn_tensor::Tensor<B, 1>| HostTensor::from_tensor(t);
    let missing =
        |what: &str| crate::error::ModelError::Data(format!("GPT-2 export: {what} has no bias"));
    let mut out = vec![("transformer.wte.weight".to_string(), host2(&model.embed)?)];
    if let Some(p) = &model.pos_embed {
        out.push(("transformer.wpe.weight".into(), host2(p)?));
    }
    for (l, b) in model.blocks.iter().enumerate() {
        let p = format!("transformer.h.{l}");
        for (name, norm) in [("ln_1", Some(&b.ln1)), ("ln_2", b.ln2.as_ref())] {
            let norm = norm.ok_or_else(|| missing(name))?;
            out.push((format!("{p}.{name}.weight"), host1(&norm.weight)?));
            out.push((
                format!("{p}.{name}.bias"),
                host1(norm.bias.as_ref().ok_or_else(|| missing(name))?)?,
            ));
        }
        let (q, k, v) = (
            host2(&b.attn.q.weight)?,
            host2(&b.attn.k.weight)?,
            host2(&b.attn.v.weight)?,
        );
        let d = q.shape[0];
        let mut fused = Vec::with_capacity(d * 3 * d);
        for row in 0..d {
            for t in [&q, &k, &v] {
                fused.extend_from_slice(&t.data[row * t.shape[1]..(row + 1) * t.shape[1]]);
            }
        }
        out.push((
            format!("{p}.attn.c_attn.weight"),
            HostTensor::new(vec![d, 3 * d], fused),
        ));
        let mut bias = Vec::new();
        for lin in [&b.attn.q, &b.attn.k, &b.attn.v] {
            bias.extend(host1(lin.bias.as_ref().ok_or_else(|| missing("attention"))?)?.data);
        }
        out.push((
            format!("{p}.attn.c_attn.bias"),
            HostTensor::new(vec![3 * d], bias),
        ));
        for (name, lin) in [
            ("attn.c_proj", &b.attn.o),
            ("mlp.c_fc", &b.mlp.fc_in),
            ("mlp.c_proj", &b.mlp.fc_out),
        ] {
            out.push((format!("{p}.{name}.weight"), host2(&lin.weight)?));
            out.push((
                format!("{p}.{name}.bias"),
                host1(lin.bias.as_ref().ok_or_else(|| missing(name))?)?,
            ));
        }
    }
    out.push((
        "transformer.ln_f.weight".into(),
        host1(&model.ln_final.weight)?,
    ));
    out.push((
        "transformer.ln_f.bias".into(),
        host1(
            model
                .ln_final
                .bias
                .as_ref()
                .ok_or_else(|| missing("ln_f"))?,
        )?,
    ));
    out.push((
        "lm_head.weight".into(),
        host2(&model.unembed.weight)?.transpose(),
    ));
    Ok(out)
}
