//! `engram train-demo`: the embedded demo model, trained again from its seed.

use super::prelude::*;

/// Train the embedded demo model from its seed (CPU).
#[derive(Args)]
pub(crate) struct TrainDemoArgs {
    #[arg(long, default_value = "app/assets/demo-model")]
    pub out: PathBuf,
    #[arg(long, default_value = "datasets/demo/facts.jsonl")]
    pub facts_out: PathBuf,
    #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 3000)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub(crate) fn run(a: TrainDemoArgs) -> Result<()> {
    // A bar (or count lines off a terminal) over the steps; the loss in its stage name
    // every 500 steps, and on the last.
    let ctl = stderr_control();
    let mut stage = String::from("training");
    let report = engram_editing::demo::train_demo(
        &a.out,
        &a.facts_out,
        a.steps,
        a.seed,
        &mut |step, steps, loss| {
            if step % 500 == 0 || step + 1 == steps {
                stage = format!("training (loss {loss:.3})");
            }
            ctl.tick(&stage, step as u64 + 1, steps as u64);
        },
    )?;
    outln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
