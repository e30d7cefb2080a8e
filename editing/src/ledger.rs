//! The edit ledger: every edit with its request, vectors, norms, losses and time.
//! Edits are toggled in any order; a layer's weight is always recomputed from its
//! original matrix plus the applied edits in id order, so reverting every edit
//! gives back the original weights bit for bit. The checkpoint on disk is never
//! touched. A ledger exports to JSON and re-applies to the same base model,
//! checked by its content hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_tensor::backend::Backend;
use burn_tensor::{Tensor, TensorData};
use engram_model::save::{save_checkpoint, Replaced};
use engram_model::weights::HostTensor;
use engram_model::{LanguageModel, Transformer};
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::rome::RomeEdit;

/// The ledger's name inside a saved checkpoint directory.
pub const LEDGER_FILE: &str = "engram-ledger.json";

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    pub id: usize,
    pub method: String,
    pub applied: bool,
    pub edit: RomeEdit,
}

/// The ledger as written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerFile {
    pub format: String,
    pub base_model_hash: String,
    pub edits: Vec<Edit>,
}

/// Applied and available edits of one model, with the original matrices.
pub struct Ledger<B: Backend> {
    pub base_model_hash: String,
    edits: Vec<Edit>,
    /// Layer → the original `[d_mlp, d_model]` output projection.
    originals: BTreeMap<usize, Tensor<B, 2>>,
}

impl<B: Backend> Ledger<B> {
    pub fn new(base_model_hash: impl Into<String>) -> Self {
        Self {
            base_model_hash: base_model_hash.into(),
            edits: Vec::new(),
            originals: BTreeMap::new(),
        }
    }

    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    /// Add `edit` to the ledger and apply it. Returns its id.
    pub fn push(&mut self, model: &mut Transformer<B>, edit: RomeEdit) -> Result<usize> {
        let layer = edit.layer;
        let n_layers = model.config.n_layers;
        if layer >= n_layers {
            return Err(EditError::Layer { layer, n_layers });
        }
        let [d_mlp, d_model] = model.blocks[layer].mlp.fc_out.weight.dims();
        if edit.u.len() != d_mlp || edit.r.len() != d_model {
            return Err(EditError::Invalid(format!(
                "edit vectors are {} x {}, layer {layer} is {d_mlp} x {d_model}",
                edit.u.len(),
                edit.r.len()
            )));
        }
        let id = self.edits.iter().map(|e| e.id + 1).max().unwrap_or(0);
        self.edits.push(Edit {
            id,
            method: "rome".into(),
            applied: true,
            edit,
        });
        self.rebuild(model, layer);
        Ok(id)
    }

    /// Apply or revert one edit.
    pub fn set_applied(&mut self, model: &mut Transformer<B>, id: usize, on: bool) -> Result<()> {
        let e = self
            .edits
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or(EditError::NoSuchEdit(id))?;
        e.applied = on;
        let layer = e.edit.layer;
        self.rebuild(model, layer);
        Ok(())
    }

    /// Revert every edit: each edited layer gets its original tensor back.
    pub fn revert_all(&mut self, model: &mut Transformer<B>) {
        for e in &mut self.edits {
            e.applied = false;
        }
        for (&layer, w) in &self.originals {
            model.blocks[layer].mlp.fc_out.weight = w.clone();
        }
    }

    /// Drop an edit from the ledger (reverting it first).
    pub fn remove(&mut self, model: &mut Transformer<B>, id: usize) -> Result<Edit> {
        let i = self
            .edits
            .iter()
            .position(|e| e.id == id)
            .ok_or(EditError::NoSuchEdit(id))?;
        let e = self.edits.remove(i);
        self.rebuild(model, e.edit.layer);
        Ok(e)
    }

    /// W = W₀ + Σ u rᵀ over the applied edits at `layer`, in id order.
    fn rebuild(&mut self, model: &mut Transformer<B>, layer: usize) {
        let w0 = self
            .originals
            .entry(layer)
            .or_insert_with(|| model.blocks[layer].mlp.fc_out.weight.clone())
            .clone();
        let on: Vec<&RomeEdit> = self
            .edits
            .iter()
            .filter(|e| e.applied && e.edit.layer == layer)
            .map(|e| &e.edit)
            .collect();
        let w = if on.is_empty() {
            w0
        } else {
            let [d_mlp, d_model] = w0.dims();
            let n = on.len();
            let device = &model.device;
            // U: [d_mlp, n], R: [n, d_model]
            let mut u = vec![0f32; d_mlp * n];
            for (j, e) in on.iter().enumerate() {
                for (i, x) in e.u.iter().enumerate() {
                    u[i * n + j] = *x;
                }
            }
            let r: Vec<f32> = on.iter().flat_map(|e| e.r.iter().copied()).collect();
            let u = Tensor::<B, 2>::from_data(TensorData::new(u, [d_mlp, n]), device);
            let r = Tensor::<B, 2>::from_data(TensorData::new(r, [n, d_model]), device);
            w0 + u.matmul(r)
        };
        model.blocks[layer].mlp.fc_out.weight = w;
    }

    pub fn to_file(&self) -> LedgerFile {
        LedgerFile {
            format: "engram-ledger-v1".into(),
            base_model_hash: self.base_model_hash.clone(),
            edits: self.edits.clone(),
        }
    }

    /// Write the ledger as JSON, atomically.
    pub fn export(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| EditError::File {
            path: path.into(),
            message: e.to_string(),
        };
        let text = serde_json::to_string_pretty(&self.to_file())
            .map_err(|e| EditError::Invalid(e.to_string()))?;
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Save the model as it stands (applied edits in its weights) as the new
    /// checkpoint directory `out`, with this ledger as `engram-ledger.json`.
    /// The source checkpoint is only read. Returns the path to load.
    pub fn save(&self, lm: &LanguageModel<B>, out: &Path) -> Result<PathBuf> {
        let mut replaced = Vec::new();
        for &layer in self.originals.keys() {
            if self
                .edits
                .iter()
                .any(|e| e.applied && e.edit.layer == layer)
            {
                let w = &lm.model.blocks[layer].mlp.fc_out.weight;
                replaced.push(Replaced {
                    layer,
                    weight: HostTensor::from_tensor(w)?,
                });
            }
        }
        let text = serde_json::to_vec_pretty(&self.to_file())
            .map_err(|e| EditError::Invalid(e.to_string()))?;
        let extra = vec![(LEDGER_FILE.to_string(), text)];
        Ok(save_checkpoint(
            &lm.source,
            &lm.model.config,
            &replaced,
            &extra,
            out,
        )?)
    }

    /// Read a ledger and apply its applied edits to `model`, whose content hash
    /// must be the ledger's base.
    pub fn import(path: &Path, model: &mut Transformer<B>, model_hash: &str) -> Result<Self> {
        let bad = |message: String| EditError::File {
            path: path.into(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: LedgerFile =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a ledger: {e}")))?;
        if file.base_model_hash != model_hash {
            return Err(EditError::WrongBase {
                expected: file.base_model_hash,
                found: model_hash.into(),
            });
        }
        let mut ledger = Self::new(model_hash);
        let layers: Vec<usize> = file.edits.iter().map(|e| e.edit.layer).collect();
        for e in &file.edits {
            let [d_mlp, d_model] = model
                .blocks
                .get(e.edit.layer)
                .ok_or(EditError::Layer {
                    layer: e.edit.layer,
                    n_layers: model.config.n_layers,
                })?
                .mlp
                .fc_out
                .weight
                .dims();
            if e.edit.u.len() != d_mlp || e.edit.r.len() != d_model {
                return Err(bad(format!("edit {} does not fit this model", e.id)));
            }
        }
        ledger.edits = file.edits;
        for layer in layers {
            ledger.rebuild(model, layer);
        }
        Ok(ledger)
    }
}
