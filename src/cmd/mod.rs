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
    pub(crate) use engram_model::backend::BackendJob;
    pub(crate) use engram_model::burn_tensor::backend::Backend;
    pub(crate) use engram_model::LanguageModel;
    pub(crate) use serde_json::json;

    pub(crate) use super::BackendArgs;
    pub(crate) use crate::{is_demo, load, parse_shard, settings, stderr_control, KeyArg};
}

/// Where a command runs: `--device cpu|cuda[:N]` and `--dtype`.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct BackendArgs {
    #[arg(long, default_value = "cpu")]
    pub device: engram_model::DeviceSpec,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: crate::DtypeArg,
}

impl BackendArgs {
    /// Run `job` on this backend.
    pub(crate) fn run<J>(self, job: J) -> anyhow::Result<J::Output>
    where
        J: engram_model::backend::BackendJob<Error = anyhow::Error>,
    {
        engram_model::backend::with_backend(self.device, self.dtype.into(), job)
    }

    /// `cpu F32`, `cuda:0 BF16`: how benchmarks name the backend.
    pub(crate) fn label(self) -> String {
        format!(
            "{} {:?}",
            self.device,
            engram_model::backend::Dtype::from(self.dtype)
        )
    }
}
