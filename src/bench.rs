//! Benchmarks printed by `engram bench`: figures measured side by side in one run.

use std::time::{Duration, Instant};

use engram_model::burn_tensor::backend::Backend;
use engram_model::{
    generate, ActivationCache, Batch, GenerateConfig, Hook, LanguageModel, NoHooks, Result,
    Sampling,
};

/// Median wall time of `iters` runs of `f`, after one warm-up run.
pub fn median_time(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Deterministic token ids for benchmark inputs.
pub fn synthetic_rows(vocab: usize, batch: usize, seq: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..seq)
                .map(|i| ((i * 31 + b * 7 + 1) % vocab.max(1)) as u32)
                .collect()
        })
        .collect()
}

/// One row of the hook-overhead benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookBenchRow {
    pub variant: &'static str,
    pub median_ms: f64,
    pub ratio_to_unhooked: f64,
}

/// Forward-pass time unhooked, through a `dyn Hook` that wants nothing, and caching every activation.
pub fn hook_overhead<B: Backend>(
    lm: &LanguageModel<B>,
    batch: usize,
    seq: usize,
    iters: usize,
) -> Result<Vec<HookBenchRow>> {
    let input = Batch::uniform(&synthetic_rows(lm.model.config.vocab_size, batch, seq))?;
    let run = |hooks: &mut dyn Hook<B>| -> Result<()> {
        let logits = lm.model.forward(&input, hooks)?;
        // Reading the result back forces the computation to finish.
        let _ = logits.into_data();
        Ok(())
    };
    let plain = median_time(iters, || {
        let logits = lm.model.forward(&input, &mut NoHooks)?;
        let _ = logits.into_data();
        Ok(())
    })?;
    let dyn_none = median_time(iters, || run(&mut NoHooks))?;
    let cache_all = median_time(iters, || run(&mut ActivationCache::<B>::all()))?;
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

/// One row of the forward/generation benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ForwardBenchRow {
    pub task: String,
    pub batch: usize,
    pub seq: usize,
    pub median_ms: f64,
    pub tokens_per_s: f64,
}

/// Forward tokens/s at batch 1 × 64 and 8 × 128, and greedy generation tokens/s with the KV cache.
pub fn forward_throughput<B: Backend>(
    lm: &LanguageModel<B>,
    iters: usize,
    gen_tokens: usize,
) -> Result<Vec<ForwardBenchRow>> {
    let c = &lm.model.config;
    let mut rows = Vec::new();
    for (batch, seq) in [(1usize, 64usize), (8, 128)] {
        let seq = seq.min(c.n_ctx);
        let input = Batch::uniform(&synthetic_rows(c.vocab_size, batch, seq))?;
        let t = median_time(iters, || {
            let _ = lm.model.logits(&input)?.into_data();
            Ok(())
        })?;
        rows.push(ForwardBenchRow {
            task: "forward".into(),
            batch,
            seq,
            median_ms: t.as_secs_f64() * 1e3,
            tokens_per_s: (batch * seq) as f64 / t.as_secs_f64(),
        });
    }
    for batch in [1usize, 8] {
        let prompt_len = 16.min(c.n_ctx.saturating_sub(gen_tokens)).max(1);
        let prompts = synthetic_rows(c.vocab_size, batch, prompt_len);
        let cfg = GenerateConfig {
            max_new_tokens: gen_tokens,
            sampling: Sampling::Greedy,
            stop_at_eos: false,
            kv_cache: true,
        };
        let t = median_time(iters.div_ceil(4), || {
            generate(&lm.model, &prompts, &cfg).map(|_| ())
        })?;
        rows.push(ForwardBenchRow {
            task: format!("generate (prompt {prompt_len}, kv cache)"),
            batch,
            seq: gen_tokens,
            median_ms: t.as_secs_f64() * 1e3,
            tokens_per_s: (batch * gen_tokens) as f64 / t.as_secs_f64(),
        });
    }
    Ok(rows)
}

/// Naive vs Engram causal trace of one fact, measured in one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceBenchRow {
    pub tokens: usize,
    pub layers: usize,
    pub samples: usize,
    pub naive_ms: f64,
    pub engram_ms: f64,
    pub speedup: f64,
    /// Largest difference between the two paths' scores.
    pub max_abs_diff: f32,
}

pub fn trace_speed<B: Backend>(
    lm: &engram_model::LanguageModel<B>,
    fact: &engram_datasets::facts::UserFact,
    samples: usize,
) -> anyhow::Result<TraceBenchRow> {
    use engram_analysis::trace::{trace_fact, trace_naive, TraceConfig};
    let input = engram_analysis::jobs::trace::prepare(lm, fact)?;
    let cfg = TraceConfig {
        samples,
        ..TraceConfig::rome(0.1)
    };
    // Warm-up (allocator, kernels), then one timed run of each.
    trace_fact(&lm.model, &input, &cfg, &mut |_, _| true)?;
    let t = Instant::now();
    let fast = trace_fact(&lm.model, &input, &cfg, &mut |_, _| true)?;
    let engram_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let naive = trace_naive(&lm.model, &input, &cfg, &mut |_, _| true)?;
    let naive_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut max_abs_diff = 0f32;
    for (a, b) in fast.kinds.iter().zip(&naive.kinds) {
        for (ra, rb) in a.scores.iter().zip(&b.scores) {
            for (x, y) in ra.iter().zip(rb) {
                max_abs_diff = max_abs_diff.max((x - y).abs());
            }
        }
    }
    Ok(TraceBenchRow {
        tokens: input.ids.len(),
        layers: lm.model.config.n_layers,
        samples,
        naive_ms,
        engram_ms,
        speedup: naive_ms / engram_ms,
        max_abs_diff,
    })
}
