//! A transformer with its tokenizer: prompts in, next-token tables out.

use std::path::{Path, PathBuf};

use burn_tensor::backend::Backend;
use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::transformer::{Batch, Transformer};

/// One candidate next token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenProb {
    pub id: u32,
    pub token: String,
    pub prob: f32,
    pub logit: f32,
}

/// A model and tokenizer loaded from one directory.
#[derive(Debug, Clone)]
pub struct LanguageModel<B: Backend> {
    pub model: Transformer<B>,
    pub tokenizer: Tokenizer,
    pub source: PathBuf,
}

impl<B: Backend> LanguageModel<B> {
    /// Load a HF model directory (`config.json`, safetensors, tokenizer), or a
    /// `.gguf` file with a `tokenizer.json` beside it (or a directory holding
    /// `model.gguf` and `tokenizer.json`).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        if dir.is_file()
            && dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let model = Transformer::from_gguf(dir, device)?;
            let tokenizer = Tokenizer::from_dir(dir.parent().unwrap_or(Path::new(".")))?;
            return Ok(Self {
                model,
                tokenizer,
                source: dir.to_path_buf(),
            });
        }
        if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        // A directory saved from a GGUF model holds `model.gguf` and no config.json.
        let gguf = dir.join("model.gguf");
        if !dir.join("config.json").exists() && gguf.is_file() {
            return Self::load(&gguf, device);
        }
        let model = Transformer::from_dir(dir, device)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        Ok(Self {
            model,
            tokenizer,
            source: dir.to_path_buf(),
        })
    }

    /// Token ids of a prompt, checked to be non-empty and to fit the context.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        let ids = self.tokenizer.encode(prompt)?;
        if ids.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        if ids.len() > self.model.config.n_ctx {
            return Err(ModelError::PromptTooLong {
                len: ids.len(),
                n_ctx: self.model.config.n_ctx,
            });
        }
        Ok(ids)
    }

    /// The token ids of `target` as a continuation of `prompt`. ROME's convention:
    /// a target without leading whitespace is read as `" " + target`. The ids are
    /// what tokenizing prompt and target together adds after the prompt's own ids.
    pub fn target_tokens(&self, prompt: &str, target: &str) -> Result<Vec<u32>> {
        if target.trim().is_empty() {
            return Err(ModelError::EmptyTarget);
        }
        let spaced = if target.starts_with(char::is_whitespace) {
            target.to_string()
        } else {
            format!(" {target}")
        };
        let head = self.tokenizer.encode(prompt)?;
        let whole = self.tokenizer.encode(&format!("{prompt}{spaced}"))?;
        let ids = if whole.len() > head.len() && whole[..head.len()] == head[..] {
            whole[head.len()..].to_vec()
        } else {
            self.tokenizer.encode(&spaced)?
        };
        if ids.is_empty() {
            return Err(ModelError::EmptyTarget);
        }
        if let Some(unk) = self.tokenizer.unk_id().filter(|u| ids.contains(u)) {
            return Err(ModelError::UnknownTarget {
                target: target.into(),
                unk: self.tokenizer.token_text(unk),
            });
        }
        Ok(ids)
    }

    /// Logits `[vocab]` after the last token of `prompt`.
    pub fn next_logits(&self, prompt: &str) -> Result<Vec<f32>> {
        let ids = self.encode_prompt(prompt)?;
        let logits = self.model.logits(&Batch::single(&ids))?;
        let last = crate::transformer::last_position(logits, &[ids.len() - 1]);
        last.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Data(format!("{e:?}")))
    }

    /// The `k` most likely next tokens with probabilities.
    pub fn top_k(&self, prompt: &str, k: usize) -> Result<Vec<TokenProb>> {
        let logits = self.next_logits(prompt)?;
        Ok(top_k_from_logits(&logits, k, |id| {
            self.tokenizer.token_text(id)
        }))
    }
}

/// Softmax probability (in f64) of token `id`; 0 outside the vocabulary.
pub fn prob_of(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits
        .get(id as usize)
        .map_or(0.0, |&l| ((l as f64 - max).exp() / z) as f32)
}

/// Softmax in f64 and the `k` best entries, best first.
pub fn top_k_from_logits(logits: &[f32], k: usize, name: impl Fn(u32) -> String) -> Vec<TokenProb> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.into_iter()
        .take(k)
        .map(|i| TokenProb {
            id: i as u32,
            token: name(i as u32),
            prob: ((logits[i] as f64 - max).exp() / z) as f32,
            logit: logits[i],
        })
        .collect()
}
