//! The editing jobs: a typed request in, a typed report out, one
//! [`engram_model::Control`] for progress and cancel, and each edit stored as
//! a run. Nothing here prints or reads the environment; the CLI and the
//! workbench call the same functions.

pub mod evaluate;
pub mod memit;
pub mod rome;
pub mod setup;

use engram_model::burn_tensor::backend::Backend;

/// `cpu`, else the backend's device as burn names it.
pub(crate) fn device_name<B: Backend>() -> String {
    let d = format!("{:?}", B::Device::default());
    if d.to_lowercase().contains("cpu") {
        "cpu".into()
    } else {
        d
    }
}
