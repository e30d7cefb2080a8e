//! Editing facts in a transformer's weights.
//!
//! - [`stats`]: the second moment C = E[k kᵀ] of an MLP's keys over a text corpus;
//! - [`rome`]: ROME's rank-one edit (Meng et al. 2022), one file per step of §3;
//! - [`memit`]: MEMIT's batched edit over several layers (Meng et al. 2023);
//! - [`ledger`]: applied edits, reversible in any order, exportable;
//! - [`linalg`]: the f64 Cholesky solves behind u = C⁻¹k* and MEMIT's update;
//! - [`jobs`]: ROME edits, MEMIT batches and evaluations as jobs that store runs.

pub mod alphaedit;
pub mod demo;
pub mod error;
pub mod eval;
pub mod ft;
pub mod jobs;
pub mod ledger;
pub mod linalg;
pub mod memit;
pub mod npz;
pub mod rome;
pub mod stats;

pub use error::{EditError, Result};
pub use ledger::{Edit, EditNorms, EditPayload, Ledger};
pub use memit::MemitHparams;
pub use rome::{EditRequest, KeyChoice, RomeHparams};
pub use stats::{LayerStats, StatsOptions};
