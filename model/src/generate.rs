//! Text generation: greedy or sampled (temperature, top-k, top-p, seed), with a
//! key/value cache, stopping at EOS or after N tokens. Prompts of different
//! lengths run as one left-padded batch.

use burn_tensor::backend::Backend;

use crate::error::{ModelError, Result};
use crate::hooks::{Hook, NoHooks};
use crate::transformer::{last_position, Batch, KvCache, Transformer};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop a row at the model's EOS token (which is kept in the output).
    pub stop_at_eos: bool,
    /// Reuse keys and values; without it every step re-runs the whole sequence.
    pub kv_cache: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            sampling: Sampling::Greedy,
            stop_at_eos: true,
            kv_cache: true,
        }
    }
}

/// A small, seeded generator (SplitMix64): the same seed gives the same tokens everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Sampling {
    /// Each setting within its range: temperature finite and ≥ 0, top-k ≥ 1,
    /// top-p in (0, 1].
    pub fn check(self) -> Result<()> {
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = self
        else {
            return Ok(());
        };
        let bad = |option: &str, message: String| {
            Err(ModelError::InvalidOption {
                option: option.into(),
                message,
            })
        };
        if !(temperature.is_finite() && temperature >= 0.0) {
            return bad(
                "temperature",
                format!("{temperature} must be finite and at least 0 (0 is greedy)"),
            );
        }
        if top_k == Some(0) {
            return bad("top-k", "0 keeps no token; give at least 1".into());
        }
        if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad(
                "top-p",
                format!("{p} is outside (0, 1]: the probability mass to keep"),
            );
        }
        Ok(())
    }
}

/// Choose a token from one row of logits.
pub fn choose(logits: &[f32], sampling: Sampling, rng: &mut Rng) -> Result<u32> {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    let Sampling::Sample {
        temperature,
        top_k,
        top_p,
        ..
    } = sampling
    else {
        return Ok(argmax());
    };
    sampling.check()?;
    if temperature == 0.0 {
        return Ok(argmax());
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = top_k {
        order.truncate(k.max(1));
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature as f64).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if let Some(p) = top_p {
        // Keep the smallest prefix whose mass reaches p.
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                mass += q;
                mass >= p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= z);
    }
    let mut u = rng.next_f64();
    for (i, &q) in probs.iter().enumerate() {
        if u < q {
            return Ok(order[i] as u32);
        }
        u -= q;
    }
    Ok(order[probs.len() - 1] as u32)
}

/// Continue each prompt; returns the new tokens of each row (EOS included where hit).
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
) -> Result<Vec<Vec<u32>>> {
    generate_with(model, prompts, cfg, |_| true)
}

/// [`generate`], calling `on_step` with every row's new tokens after each step;
/// generation stops early (keeping what it has) when `on_step` returns false.
/// This is how a caller streams tokens and cancels.
pub fn generate_with<B: Backend>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
    on_step: impl FnMut(&[Vec<u32>]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    generate_hooked(model, prompts, cfg, &mut NoHooks, on_step)
}

/// [`generate_with`] through `hooks`, the same hooks a forward pass takes. With the
/// KV cache a hook sees each step's new positions only: the (left-padded) prompts
/// at the first step, then one position per row; what it replaces enters the
/// cache, so later steps attend to the replaced keys and values. Without the
/// cache it sees every position at every step.
pub fn generate_hooked<B: Backend, H: Hook<B> + ?Sized>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
    hooks: &mut H,
    mut on_step: impl FnMut(&[Vec<u32>]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::EmptyPrompt);
    }
    cfg.sampling.check()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let n_ctx = model.config.n_ctx;
    if longest.saturating_add(cfg.max_new_tokens) > n_ctx {
        return Err(ModelError::InvalidOption {
            option: "generate".into(),
            message: format!(
                "{} new tokens after a {longest}-token prompt exceed the model's context of {n_ctx}; \
                 at most {} fit",
                cfg.max_new_tokens,
                n_ctx.saturating_sub(longest)
            ),
        });
    }
    // Padding is masked out, so any in-vocabulary id will do.
    let pad = model
        .config
        .eos_token_id
        .filter(|&e| (e as usize) < model.config.vocab_size)
        .unwrap_or(0);
    let n = prompts.len();
    let seed = match cfg.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut rngs: Vec<Rng> = (0..n)
        .map(|i| Rng::new(seed.wrapping_add(i as u64)))
        .collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done = vec![false; n];

    let mut full = Batch::left_padded(prompts, pad);
    let mut cache = KvCache::<B>::new();
    let mut step = full.clone();
    let vocab = model.config.vocab_size;
    for _ in 0..cfg.max_new_tokens {
        let logits = if cfg.kv_cache {
            model.forward_cached(&step, &mut cache, hooks)?
        } else {
            model.forward(&full, hooks)?
        };
        let s = logits.dims()[1];
        let last: Vec<f32> = last_position(logits, &vec![s - 1; n])
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| ModelError::Data(format!("{e:?}")))?;
        let mut next = Vec::with_capacity(n);
        for i in 0..n {
            let tok = if done[i] {
                pad
            } else {
                choose(
                    &last[i * vocab..(i + 1) * vocab],
                    cfg.sampling,
                    &mut rngs[i],
                )?
            };
            if !done[i] {
                out[i].push(tok);
                done[i] = cfg.stop_at_eos && Some(tok) == model.config.eos_token_id;
            }
            next.push(tok);
        }
        if !on_step(&out) || done.iter().all(|&d| d) {
            break;
        }
        let positions: Vec<usize> = full
            .positions
            .iter()
            .map(|p| p.last().map_or(0, |l| l + 1))
            .collect();
        step = Batch {
            ids: next.iter().map(|&t| vec![t]).collect(),
            keep: vec![vec![true]; n],
            positions: positions.iter().map(|&p| vec![p]).collect(),
        };
        for i in 0..n {
            full.ids[i].push(next[i]);
            full.keep[i].push(true);
            full.positions[i].push(positions[i]);
        }
    }
    Ok(out)
}
