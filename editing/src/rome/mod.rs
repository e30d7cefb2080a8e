//! ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual
//! Associations in GPT", §3). One file per step of the method:
//!
//! 1. [`context`]: the prefixes the model writes itself, over which keys are averaged;
//! 2. [`compute_u`]: k*, the subject's key at the edited MLP, and u = C⁻¹k*;
//! 3. [`compute_v`]: v*, the MLP output that makes the model say the new target;
//! 4. [`update`]: the rank-one update that maps k* to v*, with r-ROME's
//!    consistent key (Gupta et al. 2024) by default and ROME's original as an option.

pub mod compute_u;
pub mod compute_v;
pub mod context;
pub mod update;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};

pub use update::{rome_edit, RomeEdit};

/// Which key the update's denominator and current output use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyChoice {
    /// r-ROME: the prefix-averaged k* in numerator and denominator.
    #[default]
    Consistent,
    /// ROME's code: the key of the unprefixed prompt in the denominator.
    Original,
}

impl KeyChoice {
    /// The method's name in ledgers and runs: `r-rome` or `rome`.
    pub fn method_name(self) -> &'static str {
        match self {
            KeyChoice::Consistent => "r-rome",
            KeyChoice::Original => "rome",
        }
    }
}

/// ROME's hyperparameters, as in its `hparams/ROME/*.json` files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RomeHparams {
    pub layers: Vec<usize>,
    /// Only `subject_last` is supported, as in every published ROME run.
    #[serde(default = "subject_last")]
    pub fact_token: String,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    pub v_loss_layer: usize,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    #[serde(default = "yes")]
    pub mom2_adjustment: bool,
    /// `(max tokens, count)` of the generated prefixes.
    #[serde(default = "length_params")]
    pub context_template_length_params: Vec<(usize, usize)>,
    #[serde(default)]
    pub key: KeyChoice,
    /// Where the checked-in values come from, and why.
    #[serde(default)]
    pub source: String,
}

/// A JSON file as `T`; errors name the file and what it should have been.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EditError::File {
        path: path.into(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| EditError::File {
        path: path.into(),
        message: format!("not {what}: {e}"),
    })
}

fn subject_last() -> String {
    "subject_last".into()
}
fn yes() -> bool {
    true
}
fn length_params() -> Vec<(usize, usize)> {
    vec![(5, 10), (10, 10)]
}

impl RomeHparams {
    pub fn load(path: &Path) -> Result<Self> {
        load_json(path, "ROME hyperparameters")
    }

    /// The checked-in hyperparameters for a known model name (`gpt2-xl`, `demo`, …).
    pub fn builtin(name: &str) -> Option<Self> {
        let text = match name {
            "gpt2-medium" => include_str!("../../hparams/rome/gpt2-medium.json"),
            "gpt2-large" => include_str!("../../hparams/rome/gpt2-large.json"),
            "gpt2-xl" => include_str!("../../hparams/rome/gpt2-xl.json"),
            "gpt-j-6b" => include_str!("../../hparams/rome/gpt-j-6b.json"),
            "demo" => include_str!("../../hparams/rome/demo.json"),
            "smollm2-135m" => include_str!("../../hparams/rome/smollm2-135m.json"),
            _ => return None,
        };
        serde_json::from_str(text).ok()
    }

    pub fn layer(&self) -> Result<usize> {
        match self.layers.as_slice() {
            [l] => Ok(*l),
            other => Err(EditError::Invalid(format!(
                "ROME edits one layer; hparams name {other:?}"
            ))),
        }
    }
}

/// One requested change: in `prompt`, which contains `subject`, the answer
/// becomes `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditRequest {
    pub prompt: String,
    pub subject: String,
    pub target: String,
}

impl EditRequest {
    /// The prompt with the subject's first occurrence as `{}` (ROME's form).
    pub fn template(&self) -> Result<String> {
        if self.subject.trim().is_empty() {
            return Err(EditError::Invalid("the subject is empty".into()));
        }
        if self.target.trim().is_empty() {
            return Err(EditError::Model(engram_model::ModelError::EmptyTarget));
        }
        match self.prompt.find(&self.subject) {
            Some(i) => Ok(format!(
                "{}{{}}{}",
                &self.prompt[..i],
                &self.prompt[i + self.subject.len()..]
            )),
            None => Err(EditError::Model(
                engram_model::ModelError::SubjectNotFound {
                    subject: self.subject.clone(),
                    prompt: self.prompt.clone(),
                },
            )),
        }
    }
}
