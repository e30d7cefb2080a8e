//! Benchmarks printed by `engram bench`: figures measured side by side in one run.

use super::prelude::*;
use std::time::{Duration, Instant};

use engram_model::burn_tensor::backend::Backend;
use engram_model::{
    generate, ActivationCache, Batch, GenerateConfig, Hook, NoHooks, Result as ModelResult,
    Sampling,
};

/// Median wall time of `iters` runs of `f`, after one warm-up run.
pub fn median_time(iters: usize, mut f: impl FnMut() -> ModelResult<()>) -> ModelResult<Duration> {
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
) -> ModelResult<Vec<HookBenchRow>> {
    let input = Batch::uniform(&synthetic_rows(lm.model.config.vocab_size, batch, seq))?;
    let run = |hooks: &mut dyn Hook<B>| -> ModelResult<()> {
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
) -> ModelResult<Vec<ForwardBenchRow>> {
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

/// The CPU GEMM's rate on `[m, k] · [k, n]` (median of a few runs, this
/// process's threads), in GFLOP/s; `None` where the kernel is off. The benchmarks'
/// arithmetic floor is their FLOP count divided by this.
pub fn gemm_gflops(m: usize, n: usize, k: usize) -> Option<f64> {
    use engram_model::cpu::{enabled, sgemm};
    if !enabled() {
        return None;
    }
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut c = vec![0f32; m * n];
    let reps = ((2e9 / (2.0 * (m * n * k) as f64)) as usize).clamp(3, 200);
    let t = median_time(5, || {
        for _ in 0..reps {
            sgemm(m, n, k, &a, &b, None, &mut c);
        }
        Ok(())
    })
    .ok()?;
    Some(2.0 * (m * n * k) as f64 * reps as f64 / t.as_secs_f64() / 1e9)
}

/// The GEMM rate behind a benchmark's arithmetic floor, in GFLOP/s: on the CPU
/// backend the CPU kernel's ([`gemm_gflops`]); on a GPU backend burn's matmul of
/// `[m, k] · [k, n]` on that device in its float type (median of 5 timed runs
/// after a warm-up, each read back).
pub fn floor_gflops<B: Backend>(device: &B::Device, m: usize, n: usize, k: usize) -> Option<f64> {
    use engram_model::burn_tensor::{Distribution, Tensor};
    if engram_model::cpu::on_ndarray::<B>() {
        return gemm_gflops(m, n, k);
    }
    let a = Tensor::<B, 2>::random([m, k], Distribution::Uniform(-1.0, 1.0), device);
    let b = Tensor::<B, 2>::random([k, n], Distribution::Uniform(-1.0, 1.0), device);
    let reps = ((2e11 / (2.0 * (m * n * k) as f64)) as usize).clamp(3, 500);
    // Summed, so that a lazy (fusing) backend cannot drop an unread product.
    let t = median_time(5, || {
        let mut c = a.clone().matmul(b.clone());
        for _ in 1..reps {
            c = c + a.clone().matmul(b.clone());
        }
        let _ = c.sum().into_data();
        Ok(())
    })
    .ok()?;
    Some(2.0 * (m * n * k) as f64 * reps as f64 / t.as_secs_f64() / 1e9)
}

/// The causal trace of one fact by Engram's procedure, the earlier batched one
/// and (optionally) the naive one, measured in one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceBenchRow {
    pub tokens: usize,
    pub layers: usize,
    pub samples: usize,
    pub window: usize,
    pub threads: usize,
    /// `None` unless `--naive`.
    pub naive_ms: Option<f64>,
    pub batched_ms: f64,
    pub engram_ms: f64,
    /// Engram's procedure's FLOPs.
    pub gflop: f64,
    pub gemm_gflops: Option<f64>,
    /// FLOPs ÷ the GEMM's rate.
    pub floor_ms: Option<f64>,
    /// Largest difference between Engram's scores and the reference's (naive where run, else batched).
    pub max_abs_diff: f32,
    /// Where the CPU has AMX: the same two procedures with AMX off (the
    /// AVX-512 kernel alone), its GEMM rate, and the largest difference
    /// between Engram's scores on the two kernels.
    pub avx512: Option<Avx512Trace>,
}

/// [`TraceBenchRow`]'s runs on the AVX-512 kernel alone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Avx512Trace {
    pub batched_ms: f64,
    pub engram_ms: f64,
    pub gemm_gflops: Option<f64>,
    pub max_abs_diff: f32,
}

/// Largest difference between two traces' scores.
fn trace_diff(a: &engram_analysis::trace::FactTrace, b: &engram_analysis::trace::FactTrace) -> f32 {
    let mut d = (a.corrupted_prob - b.corrupted_prob).abs();
    for (ka, kb) in a.kinds.iter().zip(&b.kinds) {
        for (ra, rb) in ka.scores.iter().zip(&kb.scores) {
            for (x, y) in ra.iter().zip(rb) {
                d = d.max((x - y).abs());
            }
        }
    }
    d
}

/// FLOPs of [`engram_analysis::trace::trace_fact`]: the clean and corrupted
/// runs, then each restoration's positions `t..` from its first layer on.
fn trace_flops(
    c: &engram_model::ModelConfig,
    input: &engram_analysis::trace::TraceInput,
    cfg: &engram_analysis::trace::TraceConfig,
) -> f64 {
    use engram_analysis::trace::{window_layers, TraceKind};
    let (len, n) = (input.ids.len(), c.n_layers);
    let block = c.block_flops(len);
    let mut f = (1 + cfg.samples) as f64 * len as f64 * n as f64 * block;
    for &kind in &cfg.kinds {
        for layer in 0..n {
            let start = match kind {
                TraceKind::Hidden => layer + 1,
                _ => window_layers(kind, layer, cfg.window, n).start,
            };
            for t in input.subject.start..len {
                f += cfg.samples as f64 * ((len - t) * (n - start)) as f64 * block
                    + cfg.samples as f64 * c.unembed_flops();
            }
        }
    }
    f
}

pub fn trace_speed<B: Backend>(
    lm: &engram_model::LanguageModel<B>,
    fact: &engram_datasets::facts::UserFact,
    samples: usize,
    window: usize,
    naive: bool,
) -> Result<TraceBenchRow> {
    use engram_analysis::trace::{trace_batched, trace_fact, trace_naive, FactTrace, TraceConfig};
    let input = engram_analysis::jobs::trace::prepare(lm, fact)?;
    let cfg = TraceConfig {
        samples,
        window,
        ..TraceConfig::rome(0.1)
    };
    let timed =
        |f: &dyn Fn() -> std::result::Result<FactTrace, engram_analysis::trace::TraceError>| {
            let t = Instant::now();
            let r = f()?;
            Ok::<_, anyhow::Error>((r, t.elapsed().as_secs_f64() * 1e3))
        };
    // Warm-up (allocator, kernels), then one timed run of each.
    trace_fact(&lm.model, &input, &cfg, &mut |_, _| true)?;
    let (fast, engram_ms) = timed(&|| trace_fact(&lm.model, &input, &cfg, &mut |_, _| true))?;
    let (batched, batched_ms) =
        timed(&|| trace_batched(&lm.model, &input, &cfg, &mut |_, _| true))?;
    let (reference, naive_ms) = if naive {
        let (r, ms) = timed(&|| trace_naive(&lm.model, &input, &cfg, &mut |_, _| true))?;
        (r, Some(ms))
    } else {
        (batched, None)
    };
    let max_abs_diff = trace_diff(&fast, &reference);
    let c = &lm.model.config;
    let flops = trace_flops(c, &input, &cfg);
    // Restorations run in batches of hundreds of rows: the floor takes a large product's rate.
    let rate = floor_gflops::<B>(&lm.model.device, 1024, c.d_mlp, c.d_model);
    #[cfg(target_arch = "x86_64")]
    let avx512 = if engram_model::cpu::amx::enabled() {
        engram_model::cpu::amx::set_enabled(false);
        let runs = (|| {
            let (plain, engram_ms) =
                timed(&|| trace_fact(&lm.model, &input, &cfg, &mut |_, _| true))?;
            let (_, batched_ms) =
                timed(&|| trace_batched(&lm.model, &input, &cfg, &mut |_, _| true))?;
            Ok::<_, anyhow::Error>(Avx512Trace {
                batched_ms,
                engram_ms,
                gemm_gflops: gemm_gflops(1024, c.d_mlp, c.d_model),
                max_abs_diff: trace_diff(&fast, &plain),
            })
        })();
        engram_model::cpu::amx::set_enabled(true);
        Some(runs?)
    } else {
        None
    };
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = None;
    Ok(TraceBenchRow {
        tokens: input.ids.len(),
        layers: c.n_layers,
        samples,
        window,
        threads: rayon::current_num_threads(),
        naive_ms,
        batched_ms,
        engram_ms,
        gflop: flops / 1e9,
        gemm_gflops: rate,
        floor_ms: rate.map(|r| flops / r / 1e6),
        max_abs_diff,
        avx512,
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PatchBenchRow {
    pub tokens: usize,
    pub layers: usize,
    pub heads: usize,
    pub threads: usize,
    /// Exact patching of every resid_pre/attn_out/mlp_out position and every head.
    pub exact_ms: f64,
    pub exact_gflop: f64,
    pub exact_floor_ms: Option<f64>,
    /// Attribution patching of the same sites.
    pub attribution_ms: f64,
    pub attribution_gflop: f64,
    pub attribution_floor_ms: Option<f64>,
    /// Spearman's ρ of the estimates against the exact patches (resid/attn/mlp positions; heads).
    pub spearman: Option<f64>,
    pub spearman_heads: Option<f64>,
    pub sites: usize,
}

/// Exact against attribution patching of one fact, with the FLOPs of each:
/// a forward pass is `len` tokens through every block and the unembedding; the
/// exact sweep runs two forwards and then, per site and layer l, one row per
/// position (or head) through blocks l.. and the last position's unembedding;
/// attribution runs two forwards and one backward, counted as two forwards.
pub fn patch_speed<B: Backend>(
    lm: &engram_model::LanguageModel<B>,
    setup: &engram_analysis::jobs::patch::PatchSetup,
) -> Result<PatchBenchRow> {
    use engram_analysis::attribution::attribution_patch;
    use engram_analysis::jobs::patch::AttributionOutcome;
    use engram_analysis::patching::{patch_sweep, PatchSite};
    let m = &lm.model;
    let exact = || {
        patch_sweep(
            m,
            &setup.clean,
            &setup.corrupted,
            setup.answer,
            setup.wrong,
            &PatchSite::ALL,
        )
    };
    let attr = || attribution_patch(m, &setup.clean, &setup.corrupted, setup.answer, setup.wrong);
    // Warm-up, then one timed run of each.
    exact()?;
    attr()?;
    let t = Instant::now();
    let report = exact()?;
    let exact_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let estimate = attr()?;
    let attribution_ms = t.elapsed().as_secs_f64() * 1e3;
    let outcome = AttributionOutcome::new(estimate, &report, attribution_ms / 1e3);
    let c = &m.config;
    let (len, n, heads) = (setup.clean.len(), c.n_layers, c.n_heads);
    let block = c.block_flops(len);
    let forward = len as f64 * (n as f64 * block + c.unembed_flops());
    let mut exact_flops = 2.0 * forward;
    for site in PatchSite::ALL {
        let rows = if site == PatchSite::HeadOut {
            heads
        } else {
            len
        };
        for layer in 0..n {
            exact_flops += rows as f64 * ((len * (n - layer)) as f64 * block + c.unembed_flops());
        }
    }
    let attribution_flops = 4.0 * forward;
    let exact_rate = floor_gflops::<B>(&m.device, len * len, c.d_mlp, c.d_model);
    let attr_rate = floor_gflops::<B>(&m.device, len, c.d_mlp, c.d_model);
    Ok(PatchBenchRow {
        tokens: len,
        layers: n,
        heads,
        threads: rayon::current_num_threads(),
        exact_ms,
        exact_gflop: exact_flops / 1e9,
        exact_floor_ms: exact_rate.map(|r| exact_flops / r / 1e6),
        attribution_ms,
        attribution_gflop: attribution_flops / 1e9,
        attribution_floor_ms: attr_rate.map(|r| attribution_flops / r / 1e6),
        spearman: outcome.spearman.map(|r| r.0),
        spearman_heads: outcome.spearman_heads.map(|r| r.0),
        sites: outcome.spearman.map_or(0, |r| r.1),
    })
}

/// Benchmarks that print figures measured side by side.
#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub which: BenchCommand,
}

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// MEMIT: the time for N edits in one batch, split into z, keys and solve.
    Memit {
        model: PathBuf,
        /// Requests: CounterFact JSON or subject/prompt/target records (default for
        /// the demo model: its facts, each edited to another answer).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 1000)]
        n: usize,
        #[arg(long)]
        hparams: Option<String>,
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 100_000)]
        stats_tokens: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 16)]
        z_chunk: usize,
        /// Threads optimising z chunks at once (0: every core on the CPU, 1 on a GPU).
        #[arg(long, default_value_t = 0)]
        z_workers: usize,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// MEMIT's solve alone at given sizes (default GPT-2 XL's: d_mlp 6400,
    /// d_model 1600, 5 layers), on random keys and a random C (CPU, f64).
    MemitSolve {
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 6400)]
        d_mlp: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 1600)]
        d_model: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 1000)]
        n: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 5)]
        layers: usize,
    },
    /// ROME: key-statistics throughput (key vectors/s) and edit latency with statistics in memory.
    Edit {
        model: PathBuf,
        /// Default for the demo model: its first fact, edited to another city.
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        hparams: Option<String>,
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 20_000)]
        stats_tokens: usize,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Forward tokens/s (batch 1 x 64, 8 x 128) and generation tokens/s.
    Forward {
        model: PathBuf,
        #[command(flatten)]
        backend: BackendArgs,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 5)]
        iters: usize,
        /// Tokens generated per generation run.
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 32)]
        gen_tokens: usize,
        /// On the CPU, measure again with Engram's CPU kernels (AVX-512 or AVX2) off (burn's ops) and print the ratio.
        #[arg(long)]
        compare_burn: bool,
        #[arg(long)]
        json: bool,
    },
    /// Causal tracing of one fact: the naive path (one restoration per pass) vs Engram's.
    Trace {
        model: PathBuf,
        #[arg(long, default_value = "The Eiffel Tower is located in the city of")]
        prompt: String,
        #[arg(long, default_value = "The Eiffel Tower")]
        subject: String,
        #[arg(long, default_value = "Paris")]
        target: String,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 10)]
        samples: usize,
        /// Layers restored together for mlp and attn (ROME's 10).
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 10)]
        window: usize,
        /// Also time the naive procedure (one forward pass per restoration; slow).
        #[arg(long)]
        naive: bool,
        #[command(flatten)]
        backend: BackendArgs,
        #[arg(long)]
        json: bool,
    },
    /// Activation patching of one fact: exact (one forward per site) vs attribution
    /// patching (two forwards, one backward), with the rank correlation of the two.
    Patch {
        model: PathBuf,
        #[arg(long, default_value = "The Eiffel Tower is located in the city of")]
        prompt: String,
        #[arg(long, default_value = "The Eiffel Tower")]
        subject: String,
        #[arg(long, default_value = "Paris")]
        target: String,
        /// The corrupted subject (same token length as --subject).
        #[arg(long, default_value = "The Leaning Tower")]
        corrupt_subject: String,
        #[command(flatten)]
        backend: BackendArgs,
        #[arg(long)]
        json: bool,
    },
    /// The CPU GEMM's rate on `[m, k] · [k, n]`: the kernel on each instruction set
    /// the CPU has (AVX-512, AVX2) and, where it has AMX-BF16, the AMX path (bf16x6, f32 accuracy), side by side,
    /// with each one's largest difference from an f64 product on sampled entries.
    Gemm {
        /// Shapes as M,N,K (several allowed); default: SmolLM2's MLP products at 64 and 1024 rows.
        #[arg(long, value_delimiter = ';', default_values_t = [
            "64,1536,576".to_string(), "1024,1536,576".to_string(), "1024,576,1536".to_string()])]
        shape: Vec<String>,
    },
    /// Forward-pass cost of the hook mechanism: unhooked vs dyn no-op vs caching everything.
    Hooks {
        model: PathBuf,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 4)]
        batch: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 32)]
        seq: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 20)]
        iters: usize,
        #[arg(long)]
        json: bool,
    },
}

/// Run `engram bench …`.
pub(crate) fn run(a: BenchArgs) -> Result<()> {
    match a.which {
        BenchCommand::Forward {
            model,
            backend,
            iters,
            gen_tokens,
            compare_burn,
            json,
        } => backend.run(ForwardBenchJob {
            model,
            iters,
            gen_tokens,
            compare_burn,
            json,
            label: backend.label(),
        }),
        BenchCommand::Trace {
            model,
            prompt,
            subject,
            target,
            samples,
            window,
            naive,
            backend,
            json,
        } => backend.run(TraceBenchJob {
            model,
            fact: engram_datasets::facts::UserFact {
                subject,
                prompt,
                target,
                relation: None,
            },
            samples,
            window,
            naive,
            json,
            label: backend.label(),
        }),
        BenchCommand::Patch {
            model,
            prompt,
            subject,
            target,
            corrupt_subject,
            backend,
            json,
        } => backend.run(PatchBenchJob {
            model,
            fact: engram_datasets::facts::UserFact {
                subject,
                prompt,
                target,
                relation: None,
            },
            corrupt_subject,
            json,
            label: backend.label(),
        }),
        BenchCommand::MemitSolve {
            d_mlp,
            d_model,
            n,
            layers,
        } => {
            let times = engram_editing::jobs::memit::bench_solve(d_mlp, d_model, n, layers)?;
            let total: f64 = times.iter().sum();
            outln!(
                "bench memit-solve: d_mlp {d_mlp}, d_model {d_model}, {n} requests, {layers} layers, {} threads: \
                 {total:.1} s in all ({:.1} s per layer; f64 Cholesky of λC + K Kᵀ and {n} solves)",
                std::thread::available_parallelism().map_or(1, |p| p.get()),
                total / layers.max(1) as f64
            );
            Ok(())
        }
        BenchCommand::Memit {
            model,
            data,
            n,
            hparams,
            corpus,
            stats_tokens,
            z_chunk,
            z_workers,
            backend,
        } => backend.run(MemitBenchJob {
            model,
            data,
            n,
            hparams,
            corpus,
            stats_tokens,
            z_chunk,
            z_workers: engram_editing::jobs::setup::z_workers(z_workers, &backend.device),
            label: backend.label(),
        }),
        BenchCommand::Edit {
            model,
            prompt,
            subject,
            target,
            hparams,
            corpus,
            stats_tokens,
            backend,
        } => backend.run(EditBenchJob {
            model,
            prompt,
            subject,
            target,
            hparams,
            corpus,
            stats_tokens,
            label: backend.label(),
        }),
        BenchCommand::Hooks {
            model,
            batch,
            seq,
            iters,
            json,
        } => bench_hooks(&model, batch, seq, iters, json),
        BenchCommand::Gemm { shape } => bench_gemm(&shape),
    }
}

/// `engram bench gemm`: each shape on each instruction set this CPU has (AVX-512,
/// AVX2) and on AMX.
fn bench_gemm(shapes: &[String]) -> Result<()> {
    use engram_model::cpu::{enabled, isas, sgemm, with_isa};
    if !enabled() {
        anyhow::bail!(
            "the CPU GEMM is off here (neither AVX2/FMA nor AVX-512F, or ENGRAM_CPU_GEMM=burn)"
        );
    }
    outln!(
        "CPU GEMM, {} thread(s), GFLOP/s (median of 5 timings):",
        rayon::current_num_threads()
    );
    for text in shapes {
        let dims: Vec<usize> = text
            .split(',')
            .map(|d| d.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .ok()
            .filter(|d: &Vec<usize>| d.len() == 3 && d.iter().all(|&x| x > 0))
            .with_context(|| format!("--shape {text:?}: give M,N,K, three positive integers"))?;
        let (m, n, k) = (dims[0], dims[1], dims[2]);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let reps = ((2e9 / (2.0 * (m * n * k) as f64)) as usize).clamp(3, 200);
        let flop = 2.0 * (m * n * k) as f64 * reps as f64;
        // Largest |c - f64 product| over some entries, relative to the sum of |terms|.
        let error = |c: &[f32]| -> f64 {
            (0..m.min(8))
                .flat_map(|r| {
                    (0..n)
                        .step_by(n.div_ceil(64))
                        .map(move |j| (r * (m / 8).max(1) % m, j))
                })
                .map(|(r, j)| {
                    let (mut want, mut scale) = (0f64, 1f64);
                    for p in 0..k {
                        let t = f64::from(a[r * k + p]) * f64::from(b[p * n + j]);
                        want += t;
                        scale += t.abs();
                    }
                    (f64::from(c[r * n + j]) - want).abs() / scale
                })
                .fold(0.0, f64::max)
        };
        let mut c = vec![0f32; m * n];
        #[cfg(target_arch = "x86_64")]
        let amx_was = engram_model::cpu::amx::enabled();
        #[cfg(target_arch = "x86_64")]
        engram_model::cpu::amx::set_enabled(false);
        let mut line = format!("  {m} x {n} x {k}:");
        // The first (best) instruction set's rate is what AMX is compared with.
        let mut avx = 0.0;
        for (i, isa) in isas().into_iter().enumerate() {
            let t = with_isa(isa, || {
                median_time(5, || {
                    for _ in 0..reps {
                        sgemm(m, n, k, &a, &b, None, &mut c);
                    }
                    Ok(())
                })
            })
            .context("the instruction set went missing")??;
            let rate = flop / t.as_secs_f64() / 1e9;
            line += &format!(
                "{} {} {rate:.1} (error {:.1e})",
                if i == 0 { "" } else { ";" },
                isa.name(),
                error(&c)
            );
            if i == 0 {
                avx = rate;
            } else {
                line += &format!(", x{:.2} of {}", rate / avx, isas()[0].name());
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            use engram_model::cpu::amx::{available, sgemm_amx};
            if available() {
                let t = median_time(5, || {
                    for _ in 0..reps {
                        sgemm_amx((m, n, k), &a, &b, false, None, &mut c);
                    }
                    Ok(())
                })?;
                let amx = flop / t.as_secs_f64() / 1e9;
                line += &format!(
                    "; AMX bf16x6 {amx:.1} (error {:.1e}), x{:.2} of {}",
                    error(&c),
                    amx / avx,
                    isas()[0].name()
                );
            } else {
                line += "; AMX: not on this CPU";
            }
            engram_model::cpu::amx::set_enabled(amx_was);
        }
        outln!("{line}");
    }
    Ok(())
}

struct ForwardBenchJob {
    model: PathBuf,
    iters: usize,
    gen_tokens: usize,
    compare_burn: bool,
    json: bool,
    label: String,
}

impl BackendJob for ForwardBenchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let lm = load::<B>(&self.model, &device)?;
        let rows = forward_throughput(&lm, self.iters, self.gen_tokens)?;
        let compare = self.compare_burn && engram_model::cpu::enabled();
        let burn_rows = if compare {
            engram_model::cpu::set_enabled(false);
            let r = forward_throughput(&lm, self.iters, self.gen_tokens);
            engram_model::cpu::set_enabled(true);
            Some(r?)
        } else {
            if self.compare_burn {
                eprintln!("--compare-burn: the CPU kernels are not in use here (not the CPU backend, neither AVX2/FMA nor AVX-512F, or ENGRAM_CPU_GEMM=burn)");
            }
            None
        };
        if self.json {
            // The plain row list (what bench/torch_forward.py reads), or both lists.
            let out = match burn_rows {
                Some(b) => serde_json::json!({ "engram": rows, "burn_ops": b }),
                None => serde_json::to_value(&rows)?,
            };
            outln!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        outln!(
            "engram forward: {} ({}), {}, median of {} runs",
            self.model.display(),
            lm.model.config.arch.name(),
            self.label,
            self.iters
        );
        for (i, r) in rows.iter().enumerate() {
            out!(
                "  {:<34} batch {:>2} x {:>3}  {:>10.2} ms  {:>10.1} tokens/s",
                r.task,
                r.batch,
                r.seq,
                r.median_ms,
                r.tokens_per_s
            );
            match burn_rows.as_ref().and_then(|b| b.get(i)) {
                Some(b) => outln!(
                    "   burn ops {:>10.1} tokens/s  x{:.2}",
                    b.tokens_per_s,
                    r.tokens_per_s / b.tokens_per_s
                ),
                None => outln!(),
            }
        }
        Ok(())
    }
}

pub(crate) fn bench_hooks(
    model: &Path,
    batch: usize,
    seq: usize,
    iters: usize,
    as_json: bool,
) -> Result<()> {
    let lm = load::<engram_model::Cpu>(model, &Default::default())?;
    let seq = seq.min(lm.model.config.n_ctx);
    let rows = hook_overhead(&lm, batch, seq, iters)?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    outln!(
        "hook overhead: {} ({}), batch {batch} x {seq} tokens, median of {iters} runs, CPU",
        model.display(),
        lm.model.config.arch.name()
    );
    for r in rows {
        outln!(
            "  {:<30} {:>9.3} ms   x{:.3}",
            r.variant,
            r.median_ms,
            r.ratio_to_unhooked
        );
    }
    Ok(())
}

struct MemitBenchJob {
    model: PathBuf,
    data: Option<PathBuf>,
    n: usize,
    hparams: Option<String>,
    corpus: Option<PathBuf>,
    stats_tokens: usize,
    z_chunk: usize,
    z_workers: usize,
    label: String,
}

impl BackendJob for MemitBenchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_editing::Ledger;
        let requests = engram_editing::jobs::memit::bench_requests(
            &self.model,
            self.data.as_deref(),
            self.n,
            settings(),
        )?;
        if requests.len() < self.n {
            eprintln!("{} requests available of {} asked", requests.len(), self.n);
        }
        let mut lm = load::<B>(&self.model, &device)?;
        let hp = engram_editing::jobs::setup::resolve_memit_hparams(
            &self.model,
            self.hparams.as_deref(),
            settings(),
        )?;
        let mut ledger = Ledger::new(engram_model::source::model_hash(&lm.source)?);
        let (out, stats_seconds) = super::memit::memit_batch(
            &mut lm,
            &self.model,
            &mut ledger,
            requests,
            hp.clone(),
            (self.corpus.as_deref(), self.stats_tokens),
            (self.z_chunk, self.z_workers),
            None,
            None,
        )?;
        let t = out.times;
        let edit = t.z_seconds + t.keys_seconds + t.solve_seconds;
        outln!(
            "bench memit on {} ({}): {} edits in one batch over layers {:?}, z in chunks of {}",
            self.model.display(),
            self.label,
            t.requests,
            hp.layers,
            self.z_chunk
        );
        outln!(
            "  statistics (cached or collected): {:>9.1} s",
            stats_seconds
        );
        outln!(
            "  z (v* optimisation, batched):     {:>9.1} s  ({:.2} s per edit, {:.0}%)",
            t.z_seconds,
            t.z_seconds / t.requests.max(1) as f64,
            100.0 * t.z_seconds / edit.max(1e-9)
        );
        outln!(
            "  keys and residuals:               {:>9.1} s  ({:.0}%)",
            t.keys_seconds,
            100.0 * t.keys_seconds / edit.max(1e-9)
        );
        outln!(
            "  solve (f64 Cholesky, {} layers):   {:>9.1} s  ({:.0}%)",
            hp.layers.len(),
            t.solve_seconds,
            100.0 * t.solve_seconds / edit.max(1e-9)
        );
        outln!(
            "  edit total (z + keys + solve):    {:>9.1} s  ({:.2} s per edit)",
            edit,
            edit / t.requests.max(1) as f64
        );
        outln!(
            "  mean |z - h| before and after each layer: {:?}",
            out.residual_norms
        );
        Ok(())
    }
}

struct EditBenchJob {
    model: PathBuf,
    prompt: Option<String>,
    subject: Option<String>,
    target: Option<String>,
    hparams: Option<String>,
    corpus: Option<PathBuf>,
    stats_tokens: usize,
    label: String,
}

impl BackendJob for EditBenchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_editing::rome::compute_u::KeyCovariance;
        use engram_editing::rome::context::context_templates;
        use engram_editing::rome::{rome_edit, EditRequest};
        use engram_editing::stats::{collect_stats, StatsOptions};
        let a = self;
        let lm = load::<B>(&a.model, &device)?;
        let hp = engram_editing::jobs::setup::resolve_hparams(
            &a.model,
            a.hparams.as_deref(),
            settings(),
        )?;
        let layer = hp.layer()?;
        let request = match (a.prompt, a.subject, a.target) {
            (Some(prompt), Some(subject), Some(target)) => EditRequest {
                prompt,
                subject,
                target,
            },
            (None, None, None) if is_demo(&a.model) => {
                let case = engram_editing::jobs::setup::demo_eval_cases().swap_remove(0);
                EditRequest {
                    prompt: case.prompt,
                    subject: case.subject,
                    target: case.target_new,
                }
            }
            _ => bail!("give --prompt, --subject and --target (all three)"),
        };
        let (text, _) =
            engram_editing::jobs::setup::corpus_text(&a.model, a.corpus.as_deref(), settings())?;
        let opts = StatsOptions {
            max_tokens: a.stats_tokens,
            ..StatsOptions::new(layer)
        };
        let c = lm.model.config.clone();
        let stats_once = |label: &str| -> Result<(engram_editing::stats::LayerStats, f64)> {
            let t = Instant::now();
            let stats = collect_stats(
                &lm.model,
                &lm.tokenizer,
                &text,
                label,
                &opts,
                &mut |_, _| true,
            )?;
            Ok((stats, t.elapsed().as_secs_f64()))
        };
        // Statistics: Engram's, the plain loop (burn's matmul for kᵀk), and a bare
        // forward pass through the same blocks on rows of the same shape.
        let (stats, stats_s) = stats_once("bench")?;
        engram_model::cpu::set_workflow_paths(false);
        let plain = stats_once("bench");
        engram_model::cpu::set_workflow_paths(true);
        let (_, plain_s) = plain?;
        let rows = synthetic_rows(c.vocab_size, opts.batch_size, opts.seq_len.min(c.n_ctx));
        let batch = Batch::uniform(&rows)?;
        let ctx = lm.model.context(&batch)?;
        let fwd = median_time(3, || {
            let x = lm.model.embed(&batch, &mut NoHooks)?;
            let _ = lm
                .model
                .run_blocks(0..layer + 1, x, &ctx, &mut NoHooks)?
                .into_data();
            Ok(())
        })?;
        let fwd_tps = (batch.batch_size() * batch.seq_len()) as f64 / fwd.as_secs_f64();
        let t = Instant::now();
        let cov = KeyCovariance::new(&stats)?;
        let chol_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let templates = context_templates(
            &lm.model,
            &lm.tokenizer,
            &hp.context_template_length_params,
            0,
        )?;
        let templ_s = t.elapsed().as_secs_f64();
        let edit = || -> Result<(engram_editing::rome::RomeEdit, f64)> {
            let t = Instant::now();
            let e = rome_edit(&lm, &request, &hp, &cov, &templates, &mut |_, _| true)?;
            Ok((e, t.elapsed().as_secs_f64()))
        };
        let (_, first_s) = edit()?;
        let (e, edit_s) = edit()?;
        engram_model::cpu::set_workflow_paths(false);
        let burn = edit();
        engram_model::cpu::set_workflow_paths(true);
        let (e_burn, burn_s) = burn?;
        let max_diff =
            e.r.iter()
                .zip(&e_burn.r)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
        // The v* optimisation's arithmetic: per step, the tail rows through the
        // blocks above the edit and the picked positions through the unembedding,
        // forward and back (the input gradient costs what the forward does).
        let target_ids = lm.target_tokens(&request.prompt, &request.target)?;
        let job = engram_editing::rome::compute_v::DeltaJob::new(
            &lm,
            &request.prompt,
            &request.subject,
            &target_ids,
            &templates,
        )?;
        let longest = job.rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let positions = job.rows.len() * job.tail_len();
        let picks = job.prompt_lens.len() * target_ids.len() + 1;
        let step_flops = 2.0
            * (positions as f64 * (c.n_layers - layer - 1) as f64 * c.block_flops(longest)
                + picks as f64 * c.unembed_flops());
        let v_flops = step_flops * e.steps.len() as f64;
        let stats_flops = stats.key.tokens as f64
            * ((layer + 1) as f64 * c.block_flops(opts.seq_len / 2)
                + 2.0 * (c.d_mlp * c.d_mlp) as f64);
        let rate_v = floor_gflops::<B>(&device, positions, c.d_mlp, c.d_model);
        let rate_s = floor_gflops::<B>(
            &device,
            opts.batch_size * opts.seq_len.min(c.n_ctx),
            c.d_mlp,
            c.d_model,
        );
        let floor = |flops: f64, rate: Option<f64>| match rate {
            Some(r) => format!(
                "{:.1} GFLOP / {r:.1} GFLOP/s (GEMM) = {:.2} s",
                flops / 1e9,
                flops / r / 1e9
            ),
            None => "not measured (the CPU GEMM is off)".into(),
        };
        let keys = stats.key.tokens as f64;
        outln!(
            "bench edit on {} ({}), layer {layer}, d_mlp {}, {} thread(s)",
            a.model.display(),
            a.label,
            stats.dim,
            rayon::current_num_threads()
        );
        outln!(
            "statistics, {} key vectors: engram {:.2} s = {:.0} key vectors/s; plain loop (burn matmul for kᵀk) {:.2} s = {:.0}/s",
            stats.key.tokens,
            stats_s,
            keys / stats_s,
            plain_s,
            keys / plain_s
        );
        outln!(
            "  forward through blocks 0..={layer} ({} x {} rows): {:.0} tokens/s; statistics at {:.0}% of it",
            batch.batch_size(),
            batch.seq_len(),
            fwd_tps,
            100.0 * keys / stats_s / fwd_tps
        );
        outln!(
            "  arithmetic floor: {}; engram is x{:.2} the floor",
            floor(stats_flops, rate_s),
            rate_s.map_or(f64::NAN, |r| stats_s / (stats_flops / r / 1e9))
        );
        outln!(
            "  Cholesky of C: {chol_s:.2} s; {} prefixes generated once in {templ_s:.3} s",
            templates.len()
        );
        outln!(
            "edit with statistics in memory ({} v* steps, {} rows x {} tail positions): engram {:.3} s (first run {:.3} s); burn autodiff v* {:.3} s: x{:.2}",
            e.steps.len(),
            job.rows.len(),
            job.tail_len(),
            edit_s,
            first_s,
            burn_s,
            burn_s / edit_s
        );
        outln!(
            "  v* arithmetic floor: {}; the whole edit is x{:.2} the floor",
            floor(v_flops, rate_v),
            rate_v.map_or(f64::NAN, |r| edit_s / (v_flops / r / 1e9))
        );
        outln!(
            "  max |r(engram) - r(burn autodiff)|: {max_diff:.2e} ({} and {} v* steps)",
            e.steps.len(),
            e_burn.steps.len()
        );
        Ok(())
    }
}

struct TraceBenchJob {
    model: PathBuf,
    fact: engram_datasets::facts::UserFact,
    samples: usize,
    window: usize,
    naive: bool,
    json: bool,
    label: String,
}

impl BackendJob for TraceBenchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let lm = load::<B>(&self.model, &device)?;
        let row = trace_speed(&lm, &self.fact, self.samples, self.window, self.naive)?;
        if self.json {
            outln!("{}", serde_json::to_string_pretty(&row)?);
            return Ok(());
        }
        outln!(
            "causal trace, one fact ({} tokens x {} layers x 3 kinds, {} samples, window {}), {}, {} thread(s):",
            row.tokens,
            row.layers,
            row.samples,
            row.window,
            self.label,
            row.threads
        );
        if let Some(ms) = row.naive_ms {
            outln!(
                "  naive (one restoration per forward pass):     {ms:>10.1} ms  x{:.2} of engram",
                ms / row.engram_ms
            );
        }
        outln!(
            "  batched (every position, one batch per layer): {:>10.1} ms  x{:.2} of engram",
            row.batched_ms,
            row.batched_ms / row.engram_ms
        );
        outln!(
            "  engram (positions t.. from layer l, cached):   {:>10.1} ms",
            row.engram_ms
        );
        match (row.gemm_gflops, row.floor_ms) {
            (Some(rate), Some(floor)) => outln!(
                "  arithmetic floor: {:.1} GFLOP / {rate:.1} GFLOP/s (GEMM) = {floor:.1} ms; engram is x{:.2} the floor",
                row.gflop,
                row.engram_ms / floor
            ),
            _ => outln!("  arithmetic floor: not measured (the CPU GEMM is off)"),
        }
        outln!(
            "  max |engram - {}|: {:.2e}",
            if row.naive_ms.is_some() {
                "naive"
            } else {
                "batched"
            },
            row.max_abs_diff
        );
        if let Some(plain) = &row.avx512 {
            outln!("  the GEMMs above ran on AMX tiles (ENGRAM_CPU_GEMM=amx: bf16x6, f32 accuracy); with AMX off (AVX-512 only):");
            outln!(
                "  batched, AVX-512:                               {:>10.1} ms  x{:.2} of engram on AMX",
                plain.batched_ms,
                plain.batched_ms / row.engram_ms
            );
            outln!(
                "  engram, AVX-512:                                {:>10.1} ms  x{:.2} of engram on AMX",
                plain.engram_ms,
                plain.engram_ms / row.engram_ms
            );
            if let Some(rate) = plain.gemm_gflops {
                outln!(
                    "  AVX-512 GEMM {rate:.1} GFLOP/s: floor {:.1} ms",
                    row.gflop * 1e3 / rate
                );
            }
            outln!(
                "  max |engram on AMX - engram on AVX-512|: {:.2e}",
                plain.max_abs_diff
            );
        }
        Ok(())
    }
}

struct PatchBenchJob {
    model: PathBuf,
    fact: engram_datasets::facts::UserFact,
    corrupt_subject: String,
    json: bool,
    label: String,
}

impl BackendJob for PatchBenchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_analysis::jobs::patch::{prepare, Corruption};
        let lm = load::<B>(&self.model, &device)?;
        let f = &self.fact;
        let setup = prepare(
            &lm,
            &f.prompt,
            &f.subject,
            &f.target,
            &Corruption::Subject(self.corrupt_subject.clone()),
        )?;
        let row = patch_speed(&lm, &setup)?;
        if self.json {
            outln!("{}", serde_json::to_string_pretty(&row)?);
            return Ok(());
        }
        outln!(
            "activation patching, one fact ({} tokens x {} layers, {} heads; resid_pre, attn_out, mlp_out \
             per position and every head), {}, {} thread(s):",
            row.tokens,
            row.layers,
            row.heads,
            self.label,
            row.threads
        );
        let floor = |gflop: f64, ms: f64, floor: Option<f64>| match floor {
            Some(f) => format!(
                "{gflop:.2} GFLOP, floor {f:.1} ms, x{:.2} the floor",
                ms / f
            ),
            None => format!("{gflop:.2} GFLOP, floor not measured (the CPU GEMM is off)"),
        };
        outln!(
            "  exact (one row per site, blocks l..):        {:>10.1} ms  x{:.1} of attribution; {}",
            row.exact_ms,
            row.exact_ms / row.attribution_ms,
            floor(row.exact_gflop, row.exact_ms, row.exact_floor_ms)
        );
        outln!(
            "  attribution (2 forwards, 1 backward):        {:>10.1} ms; {}",
            row.attribution_ms,
            floor(
                row.attribution_gflop,
                row.attribution_ms,
                row.attribution_floor_ms
            )
        );
        if let Some(rho) = row.spearman {
            outln!(
                "  Spearman rho, estimate vs exact: {rho:.3} over {} position sites{}",
                row.sites,
                row.spearman_heads
                    .map(|h| format!(", {h:.3} over heads"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
}
