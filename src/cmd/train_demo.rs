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
    let start = std::time::Instant::now();
    let report = engram_editing::demo::train_demo(
        &a.out,
        &a.facts_out,
        a.steps,
        a.seed,
        &mut |step, steps, loss| {
            if step % 100 == 0 || step + 1 == steps {
                eprintln!(
                    "step {step:>5}/{steps}  loss {loss:.4}  ({:.0} s)",
                    start.elapsed().as_secs_f64()
                );
            }
        },
    )?;
    outln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
