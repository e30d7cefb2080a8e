//! AlphaEdit: null-space constrained knowledge editing (Fang et al., ICLR 2025,
//! arXiv 2410.02355; code jianghoucheng/AlphaEdit). MEMIT's first two steps are
//! unchanged (z at the last edited layer, keys averaged over prefixes); each
//! layer's update is confined to the null space of the preserved knowledge:
//!
//! 1. [`project`]: U, an orthonormal basis of the eigenvectors of the preserved
//!    keys' second moment C = E[k kᵀ] whose eigenvalues fall below the
//!    threshold (AlphaEdit's default 2e-2); P = U Uᵀ.
//! 2. [`update`]: AlphaEdit solves (P (K Kᵀ + K_p K_pᵀ) + L2·I) Δ = P K Rᵀ,
//!    with K_p the keys of earlier batches. Its solution lies in range(P), so it
//!    equals U (Uᵀ(K Kᵀ + K_p K_pᵀ)U + L2·I)⁻¹ Uᵀ K Rᵀ: a symmetric
//!    positive-definite system in the null space's coordinates, solved in f64
//!    by Cholesky (never an inverse).
//!
//! The keys of a batch, read again after it is applied, join K_p while the
//! batch stays applied in the ledger, so reverting a batch also takes its keys
//! out of the running sum.

pub mod project;
pub mod update;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::memit::MemitHparams;

pub use project::{null_space, NullSpace};
pub use update::layer_update;

/// AlphaEdit's hyperparameters: MEMIT's, plus the null-space threshold and the
/// L2 term, as in its `hparams/AlphaEdit/*.json` files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlphaEditHparams {
    #[serde(flatten)]
    pub memit: MemitHparams,
    /// Eigenvalues of C below this span the null space (AlphaEdit: 2e-2).
    pub nullspace_threshold: f64,
    /// The ridge term added to the projected system (AlphaEdit's `L2`).
    #[serde(rename = "L2")]
    pub l2: f64,
}

impl AlphaEditHparams {
    /// The checked-in files: AlphaEdit's own for GPT-2 XL, GPT-J and
    /// Llama3-8B, and Engram's MEMIT layers with AlphaEdit's threshold and L2
    /// for the demo and SmolLM2.
    pub fn builtin(name: &str) -> Option<Self> {
        let text = match name {
            "gpt2-xl" => include_str!("../../hparams/alphaedit/gpt2-xl.json"),
            "gpt-j-6b" => include_str!("../../hparams/alphaedit/gpt-j-6b.json"),
            "llama3-8b" => include_str!("../../hparams/alphaedit/llama3-8b.json"),
            "demo" => include_str!("../../hparams/alphaedit/demo.json"),
            "smollm2-135m" => include_str!("../../hparams/alphaedit/smollm2-135m.json"),
            _ => return None,
        };
        serde_json::from_str(text).ok()
    }

    pub fn load(path: &Path) -> Result<Self> {
        let hp: Self = crate::rome::load_json(path, "AlphaEdit hyperparameters")?;
        hp.check()?;
        Ok(hp)
    }

    /// MEMIT's checks, and the threshold and L2 within their ranges.
    pub fn check(&self) -> Result<()> {
        self.memit.check()?;
        if !(self.nullspace_threshold.is_finite() && self.nullspace_threshold > 0.0) {
            return Err(EditError::Invalid(format!(
                "nullspace_threshold {} must be a finite number above 0",
                self.nullspace_threshold
            )));
        }
        if !(self.l2.is_finite() && self.l2 > 0.0) {
            return Err(EditError::Invalid(format!(
                "L2 {} must be a finite number above 0 (it keeps the system positive definite)",
                self.l2
            )));
        }
        Ok(())
    }
}
