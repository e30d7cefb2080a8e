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

    pub(crate) use super::{BackendArgs, EditOutput};
    pub(crate) use crate::{is_demo, load, parse_shard, settings, stderr_control, KeyArg};
}

/// Where an edit's results go: `--ledger FILE` and `--save NEW_DIR`.
#[derive(clap::Args)]
pub(crate) struct EditOutput {
    /// Write the edit ledger (JSON) here.
    #[arg(long)]
    pub ledger: Option<std::path::PathBuf>,
    /// Save the edited model as this new checkpoint directory (never overwritten).
    #[arg(long)]
    pub save: Option<std::path::PathBuf>,
}

impl EditOutput {
    /// Refuse an existing `--save` directory before any work.
    pub(crate) fn refuse_existing(&self) -> anyhow::Result<()> {
        Ok(engram_editing::jobs::setup::refuse_existing(
            self.save.as_deref(),
        )?)
    }

    /// Export the ledger and save the edited model where asked.
    pub(crate) fn write<B: engram_model::burn_tensor::backend::Backend>(
        &self,
        ledger: &engram_editing::Ledger<B>,
        lm: &engram_model::LanguageModel<B>,
    ) -> anyhow::Result<()> {
        if let Some(path) = &self.ledger {
            ledger.export(path)?;
            outln!("ledger written to {}", path.display());
        }
        if let Some(out) = &self.save {
            let path = ledger.save(lm, out)?;
            outln!("edited model saved as {}", path.display());
        }
        Ok(())
    }
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
