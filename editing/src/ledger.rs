//! The edit ledger: every edit with its request, vectors, norms, losses and time.
//! Edits are toggled in any order; a layer's weight is always recomputed from its
//! original matrix plus the applied edits in id order, so reverting every edit
//! gives back the original weights bit for bit. A MEMIT batch is one entry per
//! layer sharing a batch number; toggling or removing any of them acts on all. The checkpoint on disk is never
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
use crate::memit::MemitLayerEdit;
use crate::rome::{EditRequest, RomeEdit};

/// The ledger's name inside a saved checkpoint directory.
pub const LEDGER_FILE: &str = "engram-ledger.json";

/// A ledger file as [`Ledger::continue_file`] found it (`None`: absent).
#[derive(Debug, Clone)]
pub struct LedgerFileState {
    pub path: PathBuf,
    seen: Option<Vec<u8>>,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    pub id: usize,
    /// "rome", "r-rome" or "memit".
    pub method: String,
    pub applied: bool,
    /// Entries of one MEMIT batch share this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    pub edit: EditPayload,
    /// The size of the change when it was made (the early sign of collapse
    /// under sequential editing; ENCORE, arXiv 2502.01636).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norms: Option<EditNorms>,
}

/// ‖ΔW‖_F of an entry, and relative to the layer's weight when it was applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EditNorms {
    pub delta_fro: f64,
    pub weight_fro: f64,
    /// `delta_fro / weight_fro`.
    pub relative: f64,
}

impl EditNorms {
    /// ‖ΔW‖_F of a dense change.
    pub fn dense(delta: &[f32], weight_fro: f64) -> Self {
        let delta_fro = delta
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        Self {
            delta_fro,
            weight_fro,
            relative: delta_fro / weight_fro,
        }
    }

    /// ‖Σ u_i r_iᵀ‖_F from the factors (`rank` rows of `u` and `r`), in f64:
    /// Σ_ij (u_i·u_j)(r_i·r_j).
    pub fn of(rank: usize, u: &[f32], r: &[f32], weight_fro: f64) -> Self {
        let (du, dr) = (u.len() / rank.max(1), r.len() / rank.max(1));
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum()
        };
        let mut sq = 0.0;
        for i in 0..rank {
            for j in 0..rank {
                sq += dot(&u[i * du..(i + 1) * du], &u[j * du..(j + 1) * du])
                    * dot(&r[i * dr..(i + 1) * dr], &r[j * dr..(j + 1) * dr]);
            }
        }
        let delta_fro = sq.max(0.0).sqrt();
        Self {
            delta_fro,
            weight_fro,
            relative: delta_fro / weight_fro,
        }
    }
}

/// What an entry changes: a rank-one ROME edit, one layer of a MEMIT or
/// AlphaEdit batch, or a dense FT-L change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EditPayload {
    Rome(RomeEdit),
    Memit(MemitLayerEdit),
    Dense(crate::ft::FtEdit),
}

impl EditPayload {
    pub fn layer(&self) -> usize {
        match self {
            Self::Rome(e) => e.layer,
            Self::Memit(e) => e.layer,
            Self::Dense(e) => e.layer,
        }
    }

    pub fn requests(&self) -> &[EditRequest] {
        match self {
            Self::Rome(e) => std::slice::from_ref(&e.request),
            Self::Memit(e) => &e.requests,
            Self::Dense(e) => std::slice::from_ref(&e.request),
        }
    }

    /// `(rank, u [rank][d_mlp], r [rank][d_model])`: the update is Σ u_i r_iᵀ
    /// (rank 0 for a dense change, see [`Self::dense`]).
    pub fn factors(&self) -> (usize, &[f32], &[f32]) {
        match self {
            Self::Rome(e) => (1, &e.u, &e.r),
            Self::Memit(e) => (e.requests.len(), &e.u, &e.r),
            Self::Dense(_) => (0, &[], &[]),
        }
    }

    /// A dense change, `[d_mlp, d_model]` row-major (FT-L).
    pub fn dense(&self) -> Option<&[f32]> {
        match self {
            Self::Dense(e) => Some(&e.delta),
            _ => None,
        }
    }

    pub fn seconds(&self) -> f64 {
        match self {
            Self::Rome(e) => e.seconds,
            Self::Memit(e) => e.seconds,
            Self::Dense(e) => e.seconds,
        }
    }
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

    /// Add a ROME edit to the ledger and apply it. Returns its id.
    pub fn push(&mut self, model: &mut Transformer<B>, edit: RomeEdit) -> Result<usize> {
        let method = edit.key.method_name();
        self.push_entry(model, method, None, EditPayload::Rome(edit))
    }

    /// Add an FT-L change to the ledger and apply it. Returns its id.
    pub fn push_ft(
        &mut self,
        model: &mut Transformer<B>,
        edit: crate::ft::FtEdit,
    ) -> Result<usize> {
        self.push_entry(model, "ft-l", None, EditPayload::Dense(edit))
    }

    /// A batch number for [`Self::push_memit`], unused so far.
    pub fn next_batch(&self) -> usize {
        self.edits
            .iter()
            .filter_map(|e| e.batch.map(|b| b + 1))
            .max()
            .unwrap_or(0)
    }

    /// Add one layer of MEMIT batch `batch` and apply it. Returns its id.
    pub fn push_memit(
        &mut self,
        model: &mut Transformer<B>,
        edit: MemitLayerEdit,
        batch: usize,
    ) -> Result<usize> {
        self.push_batch_layer(model, "memit", edit, batch)
    }

    /// Add one layer of a batch edit (`method` "memit" or "alphaedit") and
    /// apply it. Returns its id.
    pub fn push_batch_layer(
        &mut self,
        model: &mut Transformer<B>,
        method: &str,
        edit: MemitLayerEdit,
        batch: usize,
    ) -> Result<usize> {
        self.push_entry(model, method, Some(batch), EditPayload::Memit(edit))
    }

    /// AlphaEdit's K_p at `layer`: the keys of every applied AlphaEdit entry
    /// there, one row per key. A reverted or removed batch drops out.
    pub fn alphaedit_keys(&self, layer: usize) -> Vec<Vec<f32>> {
        self.edits
            .iter()
            .filter(|e| e.applied && e.method == "alphaedit")
            .filter_map(|e| match &e.edit {
                EditPayload::Memit(m) if m.layer == layer && !m.cache_keys.is_empty() => {
                    let width = m.cache_keys.len() / m.requests.len().max(1);
                    Some(m.cache_keys.chunks(width.max(1)).map(<[f32]>::to_vec))
                }
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Record an AlphaEdit entry's keys (`[n][d_mlp]`, flat).
    pub fn set_cache_keys(&mut self, id: usize, keys: Vec<f32>) -> Result<()> {
        match self
            .edits
            .iter_mut()
            .find(|e| e.id == id)
            .map(|e| &mut e.edit)
        {
            Some(EditPayload::Memit(m)) => {
                m.cache_keys = keys;
                Ok(())
            }
            _ => Err(EditError::Invalid(format!("no batch entry {id}"))),
        }
    }

    fn push_entry(
        &mut self,
        model: &mut Transformer<B>,
        method: &str,
        batch: Option<usize>,
        edit: EditPayload,
    ) -> Result<usize> {
        let layer = edit.layer();
        let n_layers = model.config.n_layers;
        if layer >= n_layers {
            return Err(EditError::Layer { layer, n_layers });
        }
        let [d_mlp, d_model] = model.blocks[layer].mlp.fc_out.weight.dims();
        let (rank, u, r) = edit.factors();
        if u.len() != rank * d_mlp || r.len() != rank * d_model {
            return Err(EditError::Invalid(format!(
                "edit vectors are {} and {} long, layer {layer} is {d_mlp} x {d_model} (rank {rank})",
                u.len(),
                r.len()
            )));
        }
        if let Some(d) = edit.dense().filter(|d| d.len() != d_mlp * d_model) {
            return Err(EditError::Invalid(format!(
                "a dense change of {} entries, layer {layer} is {d_mlp} x {d_model}",
                d.len()
            )));
        }
        let id = self.edits.iter().map(|e| e.id + 1).max().unwrap_or(0);
        let weight_fro = {
            use burn_tensor::ElementConversion;
            let w = model.blocks[layer].mlp.fc_out.weight.clone();
            f64::from(w.powf_scalar(2.0).sum().into_scalar().elem::<f32>()).sqrt()
        };
        let norms = Some(match edit.dense() {
            Some(d) => EditNorms::dense(d, weight_fro),
            None => EditNorms::of(rank, u, r, weight_fro),
        });
        self.edits.push(Edit {
            id,
            method: method.into(),
            applied: true,
            batch,
            edit,
            norms,
        });
        self.rebuild(model, layer);
        Ok(id)
    }

    /// Ids of the entries that act together with `id` (its batch, or itself).
    fn unit(&self, id: usize) -> Result<Vec<usize>> {
        let e = self
            .edits
            .iter()
            .find(|e| e.id == id)
            .ok_or(EditError::NoSuchEdit(id))?;
        Ok(match e.batch {
            Some(b) => self
                .edits
                .iter()
                .filter(|x| x.batch == Some(b))
                .map(|x| x.id)
                .collect(),
            None => vec![id],
        })
    }

    /// Apply or revert one edit (a MEMIT batch as a whole).
    pub fn set_applied(&mut self, model: &mut Transformer<B>, id: usize, on: bool) -> Result<()> {
        let unit = self.unit(id)?;
        let mut layers = Vec::new();
        for e in self.edits.iter_mut().filter(|e| unit.contains(&e.id)) {
            e.applied = on;
            layers.push(e.edit.layer());
        }
        layers.sort_unstable();
        layers.dedup();
        for layer in layers {
            self.rebuild(model, layer);
        }
        Ok(())
    }

    /// How far the edited layers have moved from their originals, over every
    /// layer the ledger has touched: `(‖W − W₀‖_F, ‖W − W₀‖_F / ‖W₀‖_F)`, the
    /// norms taken over all those layers' entries together (f64 sums). `None`
    /// before any edit. Sequential edits that pile up show here as a growing
    /// drift (the collapse signal of ENCORE, arXiv 2502.01636).
    pub fn drift(&self, model: &Transformer<B>) -> Option<(f64, f64)> {
        if self.originals.is_empty() {
            return None;
        }
        let (mut diff, mut base) = (0f64, 0f64);
        for (&layer, w0) in &self.originals {
            let sq = |t: Tensor<B, 2>| -> Option<f64> {
                let v = t.into_data().convert::<f32>().into_vec::<f32>().ok()?;
                Some(v.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
            };
            diff += sq(model.blocks[layer].mlp.fc_out.weight.clone() - w0.clone())?;
            base += sq(w0.clone())?;
        }
        Some((
            diff.sqrt(),
            diff.sqrt() / base.sqrt().max(f64::MIN_POSITIVE),
        ))
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

    /// Drop an edit from the ledger (a MEMIT batch as a whole), reverting it.
    pub fn remove(&mut self, model: &mut Transformer<B>, id: usize) -> Result<Vec<Edit>> {
        let unit = self.unit(id)?;
        let (gone, kept): (Vec<Edit>, Vec<Edit>) = std::mem::take(&mut self.edits)
            .into_iter()
            .partition(|e| unit.contains(&e.id));
        self.edits = kept;
        let mut layers: Vec<usize> = gone.iter().map(|e| e.edit.layer()).collect();
        layers.sort_unstable();
        layers.dedup();
        for layer in layers {
            self.rebuild(model, layer);
        }
        Ok(gone)
    }

    /// W = W₀ + Σ u rᵀ over the applied edits at `layer`, in id order.
    fn rebuild(&mut self, model: &mut Transformer<B>, layer: usize) {
        let w0 = self
            .originals
            .entry(layer)
            .or_insert_with(|| model.blocks[layer].mlp.fc_out.weight.clone())
            .clone();
        let on: Vec<(usize, &[f32], &[f32])> = self
            .edits
            .iter()
            .filter(|e| e.applied && e.edit.layer() == layer)
            .map(|e| e.edit.factors())
            .filter(|(rank, _, _)| *rank > 0)
            .collect();
        let dense: Vec<&[f32]> = self
            .edits
            .iter()
            .filter(|e| e.applied && e.edit.layer() == layer)
            .filter_map(|e| e.edit.dense())
            .collect();
        let w0 = if dense.is_empty() {
            w0
        } else {
            // Dense changes summed in f32 in id order, then added once.
            let [d_mlp, d_model] = w0.dims();
            let mut sum = vec![0f32; d_mlp * d_model];
            for d in &dense {
                for (s, x) in sum.iter_mut().zip(d.iter()) {
                    *s += x;
                }
            }
            w0 + Tensor::<B, 2>::from_data(TensorData::new(sum, [d_mlp, d_model]), &model.device)
        };
        let w = if on.is_empty() {
            w0
        } else {
            let [d_mlp, d_model] = w0.dims();
            let n: usize = on.iter().map(|(rank, _, _)| rank).sum();
            let device = &model.device;
            // U: [d_mlp, n], R: [n, d_model]
            let mut u = vec![0f32; d_mlp * n];
            let mut j = 0;
            for (rank, us, _) in &on {
                for row in us.chunks(d_mlp).take(*rank) {
                    for (i, x) in row.iter().enumerate() {
                        u[i * n + j] = *x;
                    }
                    j += 1;
                }
            }
            let r: Vec<f32> = on.iter().flat_map(|(_, _, r)| r.iter().copied()).collect();
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

    /// Write the ledger as JSON, whole: a temporary file unique to this
    /// process, then a rename.
    pub fn export(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(&self.to_file())
            .map_err(|e| EditError::Invalid(e.to_string()))?;
        Ok(engram_model::save::write_file_atomic(path, &text)?)
    }

    /// Continue the ledger file at `path`: its edits applied to `model` if it
    /// exists, else a new ledger. Checked before any work: not a directory, a
    /// folder to write into, the same base model. [`Ledger::save_over`] later
    /// refuses to overwrite what another process wrote meanwhile.
    pub fn continue_file(
        path: &Path,
        model: &mut Transformer<B>,
        model_hash: &str,
    ) -> Result<(Self, LedgerFileState)> {
        let bad = |message: String| EditError::File {
            path: path.into(),
            message,
        };
        if path.is_dir() {
            return Err(bad("is a directory; give a file name for the ledger".into()));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(bad(format!("folder {} does not exist", parent.display())));
        }
        let seen = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(bad(e.to_string())),
        };
        let ledger = match &seen {
            Some(bytes) => Self::from_bytes(path, bytes, model, model_hash)?,
            None => Self::new(model_hash),
        };
        let state = LedgerFileState {
            path: path.to_path_buf(),
            seen,
        };
        Ok((ledger, state))
    }

    /// Add entries read back from `path` (a ledger, a journal) and apply the
    /// applied ones, after checking that each fits `model` and that no id
    /// repeats one already here.
    pub fn extend(
        &mut self,
        path: &Path,
        model: &mut Transformer<B>,
        edits: Vec<Edit>,
    ) -> Result<()> {
        let bad = |message: String| EditError::File {
            path: path.into(),
            message,
        };
        for e in &edits {
            let [d_mlp, d_model] = model
                .blocks
                .get(e.edit.layer())
                .ok_or(EditError::Layer {
                    layer: e.edit.layer(),
                    n_layers: model.config.n_layers,
                })?
                .mlp
                .fc_out
                .weight
                .dims();
            let (rank, u, r) = e.edit.factors();
            if u.len() != rank * d_mlp || r.len() != rank * d_model {
                return Err(bad(format!("edit {} does not fit this model", e.id)));
            }
            if u.iter().chain(r).any(|x| !x.is_finite()) {
                return Err(bad(format!("edit {} has a non-finite factor", e.id)));
            }
            if let Some(d) = e.edit.dense() {
                if d.len() != d_mlp * d_model || d.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!("dense edit {} does not fit this model", e.id)));
                }
            }
            if matches!(e.edit, EditPayload::Memit(_)) && e.batch.is_none() {
                return Err(bad(format!("MEMIT edit {} has no batch", e.id)));
            }
        }
        let mut seen: std::collections::HashSet<usize> = self.edits.iter().map(|e| e.id).collect();
        if let Some(e) = edits.iter().find(|e| !seen.insert(e.id)) {
            return Err(bad(format!("edit id {} appears twice", e.id)));
        }
        let layers: std::collections::BTreeSet<usize> =
            edits.iter().map(|e| e.edit.layer()).collect();
        self.edits.extend(edits);
        for layer in layers {
            self.rebuild(model, layer);
        }
        Ok(())
    }

    /// Write this ledger over the file [`Ledger::continue_file`] read, under
    /// an advisory lock (`FILE.lock`), refusing if the file changed since.
    pub fn save_over(&self, state: &LedgerFileState) -> Result<()> {
        let path = &state.path;
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".lock");
        let lock_path = PathBuf::from(lock_name);
        let io = |p: &Path, e: std::io::Error| EditError::File {
            path: p.into(),
            message: e.to_string(),
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        lock.lock().map_err(|e| io(&lock_path, e))?;
        let now = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(path, e)),
        };
        if now != state.seen {
            return Err(EditError::LedgerChanged {
                path: path.clone(),
                was: if state.seen.is_some() {
                    "read"
                } else {
                    "found absent"
                },
            });
        }
        self.export(path)
        // The lock is released when `lock` is dropped.
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
                .any(|e| e.applied && e.edit.layer() == layer)
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
        let bytes = std::fs::read(path).map_err(|e| EditError::File {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::from_bytes(path, &bytes, model, model_hash)
    }

    /// [`Ledger::import`] of a ledger's bytes; `path` names it in errors.
    fn from_bytes(
        path: &Path,
        bytes: &[u8],
        model: &mut Transformer<B>,
        model_hash: &str,
    ) -> Result<Self> {
        let bad = |message: String| EditError::File {
            path: path.into(),
            message,
        };
        let file: LedgerFile =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a ledger: {e}")))?;
        if file.base_model_hash != model_hash {
            return Err(EditError::WrongBase {
                expected: file.base_model_hash,
                found: model_hash.into(),
            });
        }
        let mut ledger = Self::new(model_hash);
        ledger.extend(path, model, file.edits)?;
        Ok(ledger)
    }
}
