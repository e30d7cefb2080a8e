//! MEMIT: Mass-Editing Memory in a Transformer (Meng et al. 2023, §4). One file
//! per step of Algorithm 1:
//!
//! 1. [`compute_z`]: for every request, the residual z at the last edited layer
//!    that makes the model say the new target (ROME's v* optimisation, batched);
//! 2. [`compute_ks`]: each request's key at a layer, averaged over context
//!    prefixes, and the residual the model currently writes;
//! 3. [`update`]: per layer, from the first to the last, spread the remaining
//!    residual (R / (L − i)) and solve (λC + K Kᵀ) Δ = R Kᵀ in f64.
//!
//! A batch goes into the ledger as one entry per layer, applied and reverted
//! together.

pub mod compute_ks;
pub mod compute_z;
pub mod update;

use std::collections::HashMap;
use std::path::Path;

use burn_tensor::backend::Backend;
use engram_model::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::rome::compute_v::DeltaOptions;
use crate::rome::EditRequest;

pub use update::{apply_memit, MemitLayerEdit, MemitOutcome};

/// MEMIT's hyperparameters, as in its `hparams/MEMIT/*.json` files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemitHparams {
    /// The edited MLPs, in order; z is computed at the last.
    pub layers: Vec<usize>,
    /// Only `subject_last` is supported, as in every published MEMIT run.
    #[serde(default = "subject_last")]
    pub fact_token: String,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    /// Read for compatibility; the loss is taken at the final layer, as in
    /// every published file (where it is the last layer).
    pub v_loss_layer: usize,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    #[serde(default = "yes")]
    pub mom2_adjustment: bool,
    /// λ in (λC + K Kᵀ).
    pub mom2_update_weight: f64,
    /// `(max tokens, count)` of the generated prefixes.
    #[serde(default = "length_params")]
    pub context_template_length_params: Vec<(usize, usize)>,
    /// Where the checked-in values come from, and why.
    #[serde(default)]
    pub source: String,
}

fn subject_last() -> String {
    "subject_last".into()
}
fn yes() -> bool {
    true
}
fn length_params() -> Vec<(usize, usize)> {
    vec![(10, 5)]
}

impl MemitHparams {
    pub fn load(path: &Path) -> Result<Self> {
        let hp: Self = crate::rome::load_json(path, "MEMIT hyperparameters")?;
        hp.check().map_err(|e| EditError::File {
            path: path.into(),
            message: e.to_string(),
        })?;
        Ok(hp)
    }

    /// The checked-in hyperparameters for a known model name.
    pub fn builtin(name: &str) -> Option<Self> {
        let text = match name {
            "gpt2-xl" => include_str!("../../hparams/memit/gpt2-xl.json"),
            "gpt-j-6b" => include_str!("../../hparams/memit/gpt-j-6b.json"),
            "demo" => include_str!("../../hparams/memit/demo.json"),
            "smollm2-135m" => include_str!("../../hparams/memit/smollm2-135m.json"),
            _ => return None,
        };
        serde_json::from_str(text).ok()
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.layers.is_empty() {
            return Err(EditError::Invalid("\"layers\" is empty".into()));
        }
        if self.layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(EditError::Invalid(format!(
                "\"layers\" must increase: {:?}",
                self.layers
            )));
        }
        if self.fact_token != "subject_last" {
            return Err(EditError::Invalid(format!(
                "\"fact_token\" is {:?}; only \"subject_last\" is supported",
                self.fact_token
            )));
        }
        // λ = 0 would leave K Kᵀ alone, singular for fewer requests than d_mlp.
        let positive = [
            ("v_lr", self.v_lr),
            ("clamp_norm_factor", self.clamp_norm_factor),
            ("mom2_update_weight", self.mom2_update_weight),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(EditError::Invalid(format!(
                    "\"{name}\" is {v}; it must be a positive number"
                )));
            }
        }
        for (name, v) in [
            ("v_weight_decay", self.v_weight_decay),
            ("kl_factor", self.kl_factor),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(EditError::Invalid(format!(
                    "\"{name}\" is {v}; it must be zero or more"
                )));
            }
        }
        Ok(())
    }

    /// The layer z is computed at (the last edited one).
    pub fn z_layer(&self) -> Result<usize> {
        self.check()?;
        self.layers
            .last()
            .copied()
            .ok_or_else(|| EditError::Invalid("\"layers\" is empty".into()))
    }

    pub fn delta_options(&self) -> DeltaOptions {
        DeltaOptions {
            steps: self.v_num_grad_steps,
            lr: self.v_lr,
            weight_decay: self.v_weight_decay,
            clamp_norm_factor: self.clamp_norm_factor,
            kl_factor: self.kl_factor,
        }
    }
}

/// Check a batch before any work: each request on its own (subject in the
/// prompt, a target, within the context), then against the others. The same
/// prompt and subject with two different targets is an error naming both
/// requests (their keys are identical, so MEMIT could only average them).
/// Returns warnings: exact repeats (kept, they only weigh more) and one subject
/// asked several things (its key is shared, so those edits interfere).
pub fn check_batch<B: Backend>(
    lm: &LanguageModel<B>,
    requests: &[EditRequest],
) -> Result<Vec<String>> {
    let n_ctx = lm.model.config.n_ctx;
    for (index, r) in requests.iter().enumerate() {
        let bad = |source: EditError| EditError::BadRequest {
            index,
            subject: r.subject.clone(),
            cause: Box::new(source),
        };
        r.template().map_err(bad)?;
        let ids = lm
            .target_tokens(&r.prompt, &r.target)
            .map_err(|e| bad(e.into()))?;
        let (enc, _) = lm
            .tokenizer
            .subject_span(&r.prompt, &r.subject)
            .map_err(|e| bad(e.into()))?;
        let len = enc.ids.len() + ids.len();
        if len > n_ctx {
            return Err(bad(EditError::Model(
                engram_model::ModelError::PromptTooLong { len, n_ctx },
            )));
        }
    }
    let mut warnings = Vec::new();
    let mut by_prompt: HashMap<(&str, &str), usize> = HashMap::new();
    let mut by_subject: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        match by_prompt.get(&(r.prompt.as_str(), r.subject.as_str())) {
            Some(&j) if requests[j].target.trim() != r.target.trim() => {
                return Err(EditError::Conflict {
                    first: j,
                    second: i,
                    prompt: r.prompt.clone(),
                    first_target: requests[j].target.clone(),
                    second_target: r.target.clone(),
                })
            }
            Some(&j) => warnings.push(format!("request {i} repeats request {j}")),
            None => {
                by_prompt.insert((&r.prompt, &r.subject), i);
            }
        }
        by_subject.entry(r.subject.as_str()).or_default().push(i);
    }
    let mut shared: Vec<(&str, Vec<usize>)> = by_subject
        .into_iter()
        .filter(|(_, v)| {
            v.iter()
                .map(|&i| (&requests[i].prompt, &requests[i].target))
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        })
        .collect();
    shared.sort_by_key(|(_, v)| v[0]);
    for (subject, v) in shared {
        warnings.push(format!(
            "requests {v:?} all edit {subject:?}: they share its key, so their targets interfere"
        ));
    }
    Ok(warnings)
}
