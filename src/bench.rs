//! Benchmarks printed by `engram bench`: figures measured side by side in one run.

use std::time::{Duration, Instant};

use engram_model::device::Cpu;
use engram_model::{ActivationCache, Batch, Hook, LanguageModel, NoHooks, Result};

/// Median wall time of `iters` runs of `f`, after one warm-up run.
pub fn median_time(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// One row of the hook-overhead benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookBenchRow {
    pub variant: &'static str,
    pub median_ms: f64,
    pub ratio_to_unhooked: f64,
}

/// Forward-pass time unhooked, through a `dyn Hook` that wants nothing, and caching every activation.
pub fn hook_overhead(
    lm: &LanguageModel<Cpu>,
    batch: usize,
    seq: usize,
    iters: usize,
) -> Result<Vec<HookBenchRow>> {
    let vocab = lm.model.config.vocab_size as u32;
    let rows: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..seq)
                .map(|i| ((i * 31 + b * 7 + 1) as u32) % vocab)
                .collect()
        })
        .collect();
    let input = Batch::uniform(&rows)?;
    let run = |hooks: &mut dyn Hook<Cpu>| -> Result<()> {
        let logits = lm.model.forward(&input, hooks)?;
        // Force the computation to finish.
        let _ = logits.into_data();
        Ok(())
    };
    let plain = median_time(iters, || {
        let logits = lm.model.forward(&input, &mut NoHooks)?;
        let _ = logits.into_data();
        Ok(())
    })?;
    let dyn_none = median_time(iters, || run(&mut NoHooks))?;
    let cache_all = median_time(iters, || run(&mut ActivationCache::<Cpu>::all()))?;
    let base = plain.as_secs_f64();
    Ok([
        ("unhooked (NoHooks, static)", plain),
        ("dyn Hook wanting nothing", dyn_none),
        ("ActivationCache, every hook", cache_all),
    ]
    .into_iter()
    .map(|(variant, t)| HookBenchRow {
        variant,
        median_ms: t.as_secs_f64() * 1e3,
        ratio_to_unhooked: t.as_secs_f64() / base,
    })
    .collect())
}
