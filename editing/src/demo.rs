//! The demo model, reproduced from a seed (`engram train-demo`). A small
//! GPT-2 is trained with burn's autodiff on the demo fact corpus (fictional
//! people's city, language and profession, in three phrasings each, plus filler),
//! then saved as an ordinary HF checkpoint (f16 safetensors + config + tokenizer).

use std::path::Path;
use std::time::Instant;

use engram_datasets::demo::{demo_corpus, demo_facts, demo_records, DemoFact};
pub use engram_datasets::demo::{DEMO_FILLER, DEMO_SUBJECTS};
use engram_model::device::{Cpu, CpuAutodiff};
use engram_model::generate::Rng;
use engram_model::train::{train_lm, TrainConfig};
use engram_model::weights::{write_safetensors, HostTensor, MemorySource};
use engram_model::{LanguageModel, ModelConfig, Tokenizer, Transformer};
use serde_json::json;

use crate::error::{Context, Result};
pub const D_MODEL: usize = 128;
pub const N_LAYERS: usize = 4;
pub const N_HEADS: usize = 4;
pub const N_CTX: usize = 32;

/// What training produced, for the README and the closing note.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub facts: usize,
    pub prompts: usize,
    pub accuracy: f64,
    pub checkpoint_bytes: u64,
    pub train_seconds: f64,
    pub final_loss: f32,
    pub steps: usize,
}

fn vocab(sentences: &[String]) -> Vec<String> {
    let mut v: Vec<String> = ["<pad>", "<eos>", "<unk>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in sentences {
        for w in s.split_whitespace() {
            if !v.iter().any(|x| x == w) {
                v.push(w.to_string());
            }
        }
    }
    v
}

fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"}
    })
}

fn config_json(vocab: usize) -> serde_json::Value {
    json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab,
        "n_embd": D_MODEL,
        "n_layer": N_LAYERS,
        "n_head": N_HEADS,
        "n_positions": N_CTX,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 1,
        "pad_token_id": 0,
    })
}

/// GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/√(2L), norms at 1.
fn random_gpt2(cfg: &ModelConfig, seed: u64) -> MemorySource {
    let mut rng = Rng::new(seed);
    let mut normal = |n: usize, std: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
            })
            .collect()
    };
    let (d, m, v, c) = (cfg.d_model, cfg.d_mlp, cfg.vocab_size, cfg.n_ctx);
    let resid_std = 0.02 / (2.0 * cfg.n_layers as f32).sqrt();
    let mut t = std::collections::HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        t.insert(name, HostTensor::new(shape, data));
    };
    put(
        "transformer.wte.weight".into(),
        vec![v, d],
        normal(v * d, 0.02),
    );
    put(
        "transformer.wpe.weight".into(),
        vec![c, d],
        normal(c * d, 0.01),
    );
    for l in 0..cfg.n_layers {
        let p = format!("transformer.h.{l}");
        for ln in ["ln_1", "ln_2"] {
            put(format!("{p}.{ln}.weight"), vec![d], vec![1.0; d]);
            put(format!("{p}.{ln}.bias"), vec![d], vec![0.0; d]);
        }
        put(
            format!("{p}.attn.c_attn.weight"),
            vec![d, 3 * d],
            normal(3 * d * d, 0.02),
        );
        put(
            format!("{p}.attn.c_attn.bias"),
            vec![3 * d],
            vec![0.0; 3 * d],
        );
        put(
            format!("{p}.attn.c_proj.weight"),
            vec![d, d],
            normal(d * d, resid_std),
        );
        put(format!("{p}.attn.c_proj.bias"), vec![d], vec![0.0; d]);
        put(
            format!("{p}.mlp.c_fc.weight"),
            vec![d, m],
            normal(d * m, 0.02),
        );
        put(format!("{p}.mlp.c_fc.bias"), vec![m], vec![0.0; m]);
        put(
            format!("{p}.mlp.c_proj.weight"),
            vec![m, d],
            normal(m * d, resid_std),
        );
        put(format!("{p}.mlp.c_proj.bias"), vec![d], vec![0.0; d]);
    }
    put("transformer.ln_f.weight".into(), vec![d], vec![1.0; d]);
    put("transformer.ln_f.bias".into(), vec![d], vec![0.0; d]);
    put("lm_head.weight".into(), vec![v, d], normal(v * d, 0.02));
    MemorySource {
        tensors: t,
        origin: "random init".into(),
    }
}

/// Top-1 accuracy of `lm` on every phrasing of every fact.
pub fn fact_accuracy(lm: &LanguageModel<Cpu>, facts: &[DemoFact]) -> Result<(usize, usize)> {
    let (mut right, mut total) = (0, 0);
    for f in facts {
        let target = lm.tokenizer.encode(&f.target)?;
        for p in f.prompts() {
            let top = lm.top_k(&p, 1)?;
            total += 1;
            if top.first().map(|t| t.id) == target.first().copied() {
                right += 1;
            }
        }
    }
    Ok((right, total))
}

/// Train the demo model into `model_dir` and write its facts to `facts_path`.
pub fn train_demo(
    model_dir: &Path,
    facts_path: &Path,
    steps: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize, f32),
) -> Result<DemoReport> {
    let facts = demo_facts(DEMO_SUBJECTS, seed);
    let corpus = demo_corpus(&facts, DEMO_FILLER, seed);
    let records = demo_records(&facts);
    let vocab = vocab(&corpus);
    std::fs::create_dir_all(model_dir)
        .with_context(|| format!("creating {}", model_dir.display()))?;
    let tok_path = model_dir.join("tokenizer.json");
    let tok_text = serde_json::to_string(&tokenizer_json(&vocab)).context("tokenizer.json")?;
    std::fs::write(&tok_path, tok_text).with_context(|| tok_path.display().to_string())?;
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    let eos = 1u32;
    let encode = |lines: &[String]| -> Result<Vec<Vec<u32>>> {
        lines
            .iter()
            .map(|s| {
                let mut ids = tokenizer.encode(s)?;
                ids.push(eos);
                Ok(ids)
            })
            .collect()
    };
    let records = encode(&records)?;
    let sequences: Vec<Vec<u32>> = corpus
        .iter()
        .map(|s| {
            let mut ids = tokenizer.encode(s)?;
            ids.push(eos);
            Ok(ids)
        })
        .collect::<Result<_>>()?;
    // Short documents: every sentence once more after one or two random others,
    // so that facts are also read mid-sequence, after text (as ROME's context
    // prefixes put them).
    let mut rng = Rng::new(seed ^ 0xD0C5);
    let mut documents = Vec::with_capacity(sequences.len());
    for s in &sequences {
        let mut doc: Vec<u32> = Vec::new();
        for _ in 0..1 + rng.next_u64() % 2 {
            let other = &sequences[(rng.next_u64() % sequences.len() as u64) as usize];
            if doc.len() + other.len() - 1 + s.len() <= N_CTX {
                doc.extend_from_slice(&other[..other.len() - 1]);
            }
        }
        doc.extend_from_slice(s);
        documents.push(doc);
    }

    let config_text =
        serde_json::to_string_pretty(&config_json(vocab.len())).context("config.json")?;
    let cfg = ModelConfig::from_json_str(&config_text, &model_dir.join("config.json"))?;
    let init = random_gpt2(&cfg, seed);
    let device = Default::default();
    let mut model = Transformer::<CpuAutodiff>::from_source(cfg, &init, &device)?;
    // Phase 1 (a third of the steps): record lines only, so that the subject's
    // last token learns its attributes first. Phase 2: everything, records included.
    let phase1 = steps / 3;
    let mut all = sequences.clone();
    all.extend(records.iter().cloned());
    all.extend(documents);
    let phases = [(phase1, &records), (steps - phase1, &all)];
    let start = Instant::now();
    let mut losses = Vec::with_capacity(steps);
    for (i, (phase_steps, data)) in phases.into_iter().enumerate() {
        let train_cfg = TrainConfig {
            steps: phase_steps,
            batch_size: 32,
            lr: 3e-3,
            warmup: 100,
            weight_decay: 0.01,
            seed: seed + i as u64,
        };
        let offset = losses.len();
        losses.extend(train_lm(&mut model, data, &train_cfg, |step, loss| {
            progress(offset + step, steps, loss);
            true
        })?);
    }
    let train_seconds = start.elapsed().as_secs_f64();

    let tensors = engram_model::arch::gpt2::export(&model)?;
    let weights = model_dir.join("model.safetensors");
    write_safetensors(&weights, &tensors, safetensors::Dtype::F16)?;
    let config_path = model_dir.join("config.json");
    std::fs::write(&config_path, config_text).with_context(|| config_path.display().to_string())?;

    let lm = LanguageModel::<Cpu>::load(model_dir, &Default::default())?;
    let (right, total) = fact_accuracy(&lm, &facts)?;
    if let Some(parent) = facts_path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    let mut jsonl = String::new();
    for f in &facts {
        jsonl.push_str(&serde_json::to_string(&f.as_user_fact()).context("a demo fact")?);
        jsonl.push('\n');
    }
    std::fs::write(facts_path, jsonl).with_context(|| facts_path.display().to_string())?;
    Ok(DemoReport {
        facts: facts.len(),
        prompts: total,
        accuracy: right as f64 / total as f64,
        checkpoint_bytes: std::fs::metadata(&weights)
            .with_context(|| weights.display().to_string())?
            .len(),
        train_seconds,
        final_loss: losses.last().copied().unwrap_or(f32::NAN),
        steps,
    })
}
