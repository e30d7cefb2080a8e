//! One file per `engram` command: its arguments, the call to the job, the printing.

pub(crate) mod bench;
pub(crate) mod completions;
pub(crate) mod edit;
pub(crate) mod eval;
pub(crate) mod help_markdown;
pub(crate) mod info;
pub(crate) mod lens;
pub(crate) mod memit;
pub(crate) mod memories;
pub(crate) mod patch;
pub(crate) mod probe;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod stats;
pub(crate) mod steer;
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
    /// The edit ledger (JSON): where it exists, its edits are applied first and
    /// this run's are added to it; never overwritten if another run changed it meanwhile.
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

    /// The ledger this run adds to: `--ledger`'s file continued (its edits
    /// applied to `lm`), else a new one. Checked before any work.
    pub(crate) fn ledger<B: engram_model::burn_tensor::backend::Backend>(
        &self,
        lm: &mut engram_model::LanguageModel<B>,
    ) -> anyhow::Result<(
        engram_editing::Ledger<B>,
        Option<engram_editing::ledger::LedgerFileState>,
    )> {
        let hash = engram_model::source::model_hash(&lm.source)?;
        let Some(path) = &self.ledger else {
            return Ok((engram_editing::Ledger::new(hash), None));
        };
        let (ledger, state) = engram_editing::Ledger::continue_file(path, &mut lm.model, &hash)?;
        if !ledger.edits().is_empty() {
            eprintln!(
                "continuing ledger {}: {} edit(s) applied first",
                path.display(),
                ledger.edits().len()
            );
        }
        Ok((ledger, Some(state)))
    }

    /// Write the ledger back and save the edited model where asked.
    pub(crate) fn write<B: engram_model::burn_tensor::backend::Backend>(
        &self,
        ledger: &engram_editing::Ledger<B>,
        state: Option<&engram_editing::ledger::LedgerFileState>,
        lm: &engram_model::LanguageModel<B>,
    ) -> anyhow::Result<()> {
        if let Some(state) = state {
            ledger.save_over(state)?;
            outln!(
                "ledger written to {} ({} edit(s))",
                state.path.display(),
                ledger.edits().len()
            );
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

/// Value parsers stating each numeric option's range; clap reports a value
/// outside it as a usage error (exit 2) naming the option, before any work.
pub(crate) mod range {
    fn whole(s: &str) -> Result<usize, String> {
        s.parse()
            .map_err(|_| format!("`{s}` is not a whole number"))
    }

    fn number(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("`{s}` is not a finite number")),
        }
    }

    /// 1 or more: counts, sizes, steps.
    pub(crate) fn positive(s: &str) -> Result<usize, String> {
        match whole(s)? {
            0 => Err("must be at least 1".into()),
            v => Ok(v),
        }
    }

    /// New tokens to generate: 0 to 1,048,576 (the model's context bounds it further).
    pub(crate) fn tokens(s: &str) -> Result<usize, String> {
        match whole(s)? {
            v if v > 1 << 20 => Err("must be at most 1048576".into()),
            v => Ok(v),
        }
    }

    /// Cross-validation folds: 2 to 100.
    pub(crate) fn folds(s: &str) -> Result<usize, String> {
        match whole(s)? {
            v if (2..=100).contains(&v) => Ok(v),
            _ => Err("must be from 2 to 100".into()),
        }
    }

    /// Sampling temperature: finite, at least 0 (0 is greedy).
    pub(crate) fn temperature(s: &str) -> Result<f32, String> {
        match number(s)? {
            v if v >= 0.0 => Ok(v as f32),
            _ => Err("must be at least 0 (0 is greedy)".into()),
        }
    }

    /// A probability mass to keep: above 0, at most 1.
    pub(crate) fn probability(s: &str) -> Result<f32, String> {
        match number(s)? {
            v if v > 0.0 && v <= 1.0 => Ok(v as f32),
            _ => Err("must be above 0 and at most 1".into()),
        }
    }

    /// A share: from 0 to 1.
    pub(crate) fn share(s: &str) -> Result<f32, String> {
        match number(s)? {
            v if (0.0..=1.0).contains(&v) => Ok(v as f32),
            _ => Err("must be from 0 to 1".into()),
        }
    }

    /// A finite number, at least 0.
    pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
        match number(s)? {
            v if v >= 0.0 => Ok(v),
            _ => Err("must be at least 0".into()),
        }
    }
}
