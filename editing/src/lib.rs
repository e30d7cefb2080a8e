//! Editing facts in a transformer's weights.
//!
//! - [`stats`]: the second moment C = E[k kᵀ] of an MLP's keys over a text corpus;
//! - [`rome`]: ROME's rank-one edit (Meng et al. 2022), one file per step of §3;
//! - [`ledger`]: applied edits, reversible in any order, exportable;
//! - [`linalg`]: the f64 Cholesky solve behind u = C⁻¹k*.

pub mod error;
pub mod eval;
pub mod ledger;
pub mod linalg;
pub mod rome;
pub mod stats;

pub use error::{EditError, Result};
pub use ledger::{Edit, Ledger};
pub use rome::{EditRequest, KeyChoice, RomeHparams};
pub use stats::{LayerStats, StatsOptions};
