//! The editing jobs: a typed request in, a typed report out, one
//! [`engram_model::Control`] for progress and cancel, and each edit stored as
//! a run. Nothing here prints or reads the environment; the CLI and the
//! workbench call the same functions.

pub mod evaluate;
pub mod ft;
pub mod memit;
pub mod rome;
pub mod setup;

use engram_datasets::{RunInfo, RunParams, RunStore, RunWriter};
use engram_model::burn_tensor::backend::Backend;

use crate::error::Result;
use crate::Ledger;

/// A run's parameters: the model as named and its hash, this version, the device.
pub(crate) fn run_params<B: Backend>(
    model: &str,
    model_hash: String,
    hyperparameters: serde_json::Value,
    record_ids: Vec<String>,
) -> RunParams {
    RunParams {
        model: model.to_string(),
        model_hash,
        hyperparameters,
        dataset: None,
        record_ids,
        seed: None,
        engram_version: env!("CARGO_PKG_VERSION").into(),
        device: device_name::<B>(),
    }
}

/// Store an edit as a run of `kind`: its tables (`write`), and the ledger
/// after it (`ledger.json`), so that the run can be applied again.
pub(crate) fn store_edit_run<B: Backend>(
    store: &RunStore,
    kind: &str,
    params: RunParams,
    ledger: &Ledger<B>,
    write: impl FnOnce(&RunWriter) -> Result<()>,
) -> Result<RunInfo> {
    let run = store.create(kind, params)?;
    write(&run)?;
    ledger.export(&run.dir().join("ledger.json"))?;
    Ok(run.finish()?)
}

/// `cpu`, else the backend's device as burn names it.
pub(crate) fn device_name<B: Backend>() -> String {
    let d = format!("{:?}", B::Device::default());
    if d.to_lowercase().contains("cpu") {
        "cpu".into()
    } else {
        d
    }
}
