//! The analysis jobs: a typed request in, a typed report out, one
//! [`engram_model::Control`] for progress and cancel, every report stored as a
//! run. Nothing here prints or reads the environment; the CLI and the
//! workbench call the same functions.

pub mod lens;
pub mod memories;
pub mod patch;
pub mod probe;
pub mod steer;
pub mod trace;

use engram_datasets::RunParams;
use engram_model::burn_tensor::backend::Backend;
use engram_model::LanguageModel;

use crate::error::Result;

/// A run's parameters: the model as the user named it, its content hash, this
/// version, and the backend's device.
pub(crate) fn run_params<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    hyperparameters: serde_json::Value,
) -> Result<RunParams> {
    Ok(RunParams {
        model: model.to_string(),
        model_hash: engram_model::source::model_hash(&lm.source)?,
        hyperparameters,
        dataset: None,
        record_ids: vec![],
        seed: None,
        engram_version: env!("CARGO_PKG_VERSION").into(),
        device: device_name::<B>(),
    })
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
