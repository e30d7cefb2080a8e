//! One file per `engram` command: its arguments, the call to the job, the printing.

pub(crate) mod bench;
pub(crate) mod edit;
pub(crate) mod eval;
pub(crate) mod info;
pub(crate) mod lens;
pub(crate) mod memit;
pub(crate) mod memories;
pub(crate) mod patch;
pub(crate) mod probe;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod trace;
pub(crate) mod train_demo;

/// What every command file uses.
pub(crate) mod prelude {
    pub(crate) use std::path::{Path, PathBuf};

    pub(crate) use anyhow::{bail, Context, Result};
    pub(crate) use clap::{Args, Subcommand, ValueEnum};
    pub(crate) use engram_model::backend::{with_backend, BackendJob, Dtype};
    pub(crate) use engram_model::burn_tensor::backend::Backend;
    pub(crate) use engram_model::{DeviceSpec, LanguageModel};
    pub(crate) use serde_json::json;

    pub(crate) use crate::{
        is_demo, load, model_hash, parse_shard, settings, stderr_control, DtypeArg, KeyArg,
    };
}
