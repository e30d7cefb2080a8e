//! FT-L, the fine-tuning baseline of the editing papers: one layer's MLP
//! output projection trained on the request (the target's tokens after the
//! prompt), with every weight kept within ±ε of its original value, an L∞
//! bound (Zhu et al. 2020, "Modifying Memories in Transformer Models"; ROME's
//! `baselines/ft`, EasyEdit's FT-L). The change is dense, so the ledger keeps
//! it as a dense entry.

use std::path::Path;
use std::time::Instant;

use burn_autodiff::Autodiff;
use burn_tensor::activation::log_softmax;
use burn_tensor::backend::Backend;
use burn_tensor::{Int, Tensor, TensorData};
use engram_model::{Batch, LanguageModel, NoHooks, Transformer};
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::rome::EditRequest;

/// FT-L's hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FtHparams {
    /// The trained MLP (one layer).
    pub layer: usize,
    pub num_steps: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// ε of the L∞ bound |W − W₀| ≤ ε, applied after every step; infinite where
    /// the file says `false` (plain FT, as AlphaEdit's Llama3 baseline).
    #[serde(deserialize_with = "bound")]
    pub norm_constraint: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Where the values come from.
    #[serde(default)]
    pub source: String,
}

impl FtHparams {
    /// The checked-in file (each says where its values come from).
    pub fn builtin(name: &str) -> Option<Self> {
        let text = match name {
            "demo" => include_str!("../../hparams/ft/demo.json"),
            "smollm2-135m" => include_str!("../../hparams/ft/smollm2-135m.json"),
            "gpt2-xl" => include_str!("../../hparams/ft/gpt2-xl.json"),
            "gpt-j-6b" => include_str!("../../hparams/ft/gpt-j-6b.json"),
            "llama3-8b" => include_str!("../../hparams/ft/llama3-8b.json"),
            _ => return None,
        };
        serde_json::from_str(text).ok()
    }

    pub fn load(path: &Path) -> Result<Self> {
        let hp: Self = crate::rome::load_json(path, "FT-L hyperparameters")?;
        hp.check()?;
        Ok(hp)
    }

    pub fn check(&self) -> Result<()> {
        if self.num_steps == 0 {
            return Err(EditError::Invalid("num_steps must be at least 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(EditError::Invalid(format!(
                "lr {} must be a finite number above 0",
                self.lr
            )));
        }
        if self.norm_constraint.is_nan() || self.norm_constraint <= 0.0 {
            return Err(EditError::Invalid(format!(
                "norm_constraint {} must be a number above 0, or false for no bound",
                self.norm_constraint
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(EditError::Invalid(format!(
                "weight_decay {} must be finite and at least 0",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

/// A finished FT-L edit: ΔW `[d_mlp][d_model]` of the layer's output projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FtEdit {
    pub request: EditRequest,
    pub layer: usize,
    /// Row-major `[d_mlp, d_model]`, each entry within ±`norm_constraint`.
    /// Written as base64 of its little-endian bytes (bit-exact, a quarter of
    /// a number list's size); a list of numbers is read too.
    #[serde(with = "packed_f32")]
    pub delta: Vec<f32>,
    /// Infinite (written `null`) where there was no bound.
    #[serde(deserialize_with = "bound")]
    pub norm_constraint: f64,
    /// The target's mean negative log-likelihood before each step, and after the last.
    pub losses: Vec<f32>,
    pub seconds: f64,
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| EditError::Invalid(format!("tensor data: {e:?}")))
}

/// Train layer `hp.layer`'s output projection so that the model continues
/// `req.prompt` with `req.target`: Adam on the target tokens' mean negative
/// log-likelihood, each weight clamped to W₀ ± ε after every step.
/// `progress(step, steps)` returns false to cancel.
pub fn ft_edit<B: Backend>(
    lm: &LanguageModel<B>,
    req: &EditRequest,
    hp: &FtHparams,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<FtEdit> {
    hp.check()?;
    let start = Instant::now();
    let n_layers = lm.model.config.n_layers;
    if hp.layer >= n_layers {
        return Err(EditError::Layer {
            layer: hp.layer,
            n_layers,
        });
    }
    req.template()?;
    let prompt = lm.encode_prompt(&req.prompt)?;
    let target = lm.target_tokens(&req.prompt, &req.target)?;
    // Input: prompt + target without its last token; the target's tokens are
    // read at the positions that predict them.
    let mut ids = prompt.clone();
    ids.extend_from_slice(&target[..target.len() - 1]);
    if ids.len() > lm.model.config.n_ctx {
        return Err(engram_model::ModelError::PromptTooLong {
            len: ids.len(),
            n_ctx: lm.model.config.n_ctx,
        }
        .into());
    }
    let batch = Batch::single(&ids);
    let (first, n_t) = (prompt.len() - 1, target.len());
    type Ad<B> = Autodiff<B>;
    let mut model: Transformer<Ad<B>> = Transformer::lift(&lm.model);
    let device = lm.model.device.clone();
    let w0 = host(lm.model.blocks[hp.layer].mlp.fc_out.weight.clone())?;
    let [d_mlp, d_model] = lm.model.blocks[hp.layer].mlp.fc_out.weight.dims();
    let vocab = lm.model.config.vocab_size;
    let want = Tensor::<Ad<B>, 2, Int>::from_data(
        TensorData::new(target.iter().map(|&t| t as i64).collect(), [n_t, 1]),
        &device,
    );
    let eps = hp.norm_constraint as f32;
    let (beta1, beta2, adam_eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut w = w0.clone();
    let (mut m, mut v) = (vec![0f32; w.len()], vec![0f32; w.len()]);
    let mut losses = Vec::with_capacity(hp.num_steps + 1);
    let loss_of = |model: &Transformer<Ad<B>>| -> Result<Tensor<Ad<B>, 1>> {
        let logits = model.forward(&batch, &mut NoHooks)?;
        // [n_t, vocab] at the positions that predict the target's tokens.
        let rows = logits
            .slice([0..1, first..first + n_t, 0..vocab])
            .reshape([n_t, vocab]);
        let picked = log_softmax(rows, 1).gather(1, want.clone());
        Ok(picked.mean().neg())
    };
    for step in 0..hp.num_steps {
        if !progress(step, hp.num_steps) {
            return Err(engram_model::Cancelled.into());
        }
        let wt =
            Tensor::<Ad<B>, 2>::from_data(TensorData::new(w.clone(), [d_mlp, d_model]), &device)
                .require_grad();
        model.blocks[hp.layer].mlp.fc_out.weight = wt.clone();
        let loss = loss_of(&model)?;
        let value = host(loss.clone().inner())?
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        if !value.is_finite() {
            return Err(EditError::NonFinite {
                what: "the FT-L loss",
                value,
                step,
            });
        }
        losses.push(value);
        let grads = loss.backward();
        let g = host(
            wt.grad(&grads)
                .ok_or_else(|| EditError::Invalid("the weight received no gradient".into()))?,
        )?;
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        let (lr, wd) = (hp.lr as f32, hp.weight_decay as f32);
        for i in 0..w.len() {
            let gi = g[i] + wd * w[i];
            m[i] = beta1 * m[i] + (1.0 - beta1) * gi;
            v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
            w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + adam_eps);
            // The L∞ bound around the original weight.
            w[i] = w[i].clamp(w0[i] - eps, w0[i] + eps);
        }
    }
    let wt = Tensor::<Ad<B>, 2>::from_data(TensorData::new(w.clone(), [d_mlp, d_model]), &device);
    model.blocks[hp.layer].mlp.fc_out.weight = wt;
    losses.push(
        host(loss_of(&model)?.inner())?
            .first()
            .copied()
            .unwrap_or(f32::NAN),
    );
    let delta: Vec<f32> = w.iter().zip(&w0).map(|(a, b)| a - b).collect();
    Ok(FtEdit {
        request: req.clone(),
        layer: hp.layer,
        delta,
        norm_constraint: hp.norm_constraint,
        losses,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// An L∞ bound: a number, or `false`/`null` for none (infinity).
fn bound<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Eps(f64),
        Off(bool),
    }
    match Option::<Bound>::deserialize(d)? {
        Some(Bound::Eps(e)) => Ok(e),
        Some(Bound::Off(false)) | None => Ok(f64::INFINITY),
        Some(Bound::Off(true)) => Err(serde::de::Error::custom(
            "norm_constraint: a number, or false for no bound",
        )),
    }
}

/// `Vec<f32>` as base64 of its little-endian bytes; reads a number list too.
mod packed_f32 {
    use base64::Engine;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        struct Packed;
        impl<'de> Visitor<'de> for Packed {
            type Value = Vec<f32>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("base64 of little-endian f32s, or a list of numbers")
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<Vec<f32>, E> {
                let bytes = B64
                    .decode(s)
                    .map_err(|e| E::custom(format!("delta: {e}")))?;
                if bytes.len() % 4 != 0 {
                    return Err(E::custom(format!(
                        "delta: {} bytes is not a whole number of f32s",
                        bytes.len()
                    )));
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(x) = seq.next_element::<f32>()? {
                    v.push(x);
                }
                Ok(v)
            }
        }
        d.deserialize_any(Packed)
    }
}
