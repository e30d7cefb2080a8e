//! The `engram` command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use engram_model::backend::{with_backend, BackendJob, Dtype};
use engram_model::burn_tensor::backend::Backend;
use engram_model::lm::top_k_from_logits;
use engram_model::{
    generate, Batch, DeviceSpec, GenerateConfig, LanguageModel, Sampling, TokenProb,
};
use serde_json::json;

// Tensor work allocates and frees many large buffers; glibc returns them to the
// OS each time (page faults on every reuse), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "engram",
    version,
    about = "Locate and edit facts in transformer language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, sizes, parameter count and hook points of a model.
    Info {
        /// A local HF model directory (config.json + safetensors + tokenizer) or a .gguf file.
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The most likely next tokens after a prompt, and optionally a generated continuation.
    Run(RunArgs),
    /// Benchmarks that print figures measured side by side.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// The logit lens for a prompt: each layer's residual decoded; stored as a `lens` run.
    Lens {
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Which residual stream: pre, mid or post.
        #[arg(long, default_value = "post")]
        site: String,
        #[arg(long)]
        runs: Option<PathBuf>,
    },
    /// Causal tracing (ROME): corrupt the subject, restore one state at a time; stored as a run.
    Trace(TraceArgs),
    /// Activation patching (clean into corrupted) for one fact; stored as a `patch` run.
    Patch(PatchArgs),
    /// ROME: rewrite one fact (never the checkpoint on disk); optionally export the ledger.
    Edit(EditArgs),
    /// MEMIT: rewrite a batch of facts over several layers; optionally export the ledger or save.
    Memit(MemitArgs),
    /// Edit each case on fresh weights and score it (CounterFact conventions; stored as a run).
    Eval(EvalArgs),
    /// Linear probes per layer with control tasks; stored as a `probe` run with its figure (CPU).
    Probe {
        model: PathBuf,
        /// Labelled prompts: CSV with a header, a JSON array (e.g. known_1000.json) or JSON lines.
        #[arg(long)]
        data: PathBuf,
        /// The label field (e.g. relation_id).
        #[arg(long)]
        label: String,
        /// The text field.
        #[arg(long, default_value = "prompt")]
        text: String,
        /// The subject field: groups the folds, and `--position subject` reads its last token.
        #[arg(long)]
        subject: Option<String>,
        /// The hook site, e.g. resid_post, resid_pre, mlp_out, attn_out, mlp.hook_post.
        #[arg(long, default_value = "resid_post")]
        hook: String,
        /// last, subject (the subject's last token) or every (each token a sample).
        #[arg(long, default_value = "last")]
        position: String,
        /// Also fit Hewitt & Liang's control task and report selectivity.
        #[arg(long)]
        control: bool,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep labels with at least this many samples.
        #[arg(long, default_value_t = 30)]
        min_count: usize,
        /// The label is a number: fit ridge probes and report R² per layer.
        #[arg(long)]
        regress: bool,
        #[arg(long)]
        runs: Option<PathBuf>,
    },
    /// FFN key-value memories: values, top memories, triggers, knowledge neurons (CPU).
    Memories {
        /// The run store (default: $ENGRAM_RUNS, else ./runs).
        #[arg(long, global = true)]
        runs: Option<PathBuf>,
        #[command(subcommand)]
        which: MemoriesCommand,
    },
    /// Train the embedded demo model from its seed (CPU).
    TrainDemo {
        #[arg(long, default_value = "app/assets/demo-model")]
        out: PathBuf,
        #[arg(long, default_value = "datasets/demo/facts.jsonl")]
        facts_out: PathBuf,
        #[arg(long, default_value_t = 3000)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Stored runs: list, show, export, plot, compare.
    Runs {
        /// The run store (default: $ENGRAM_RUNS, else ./runs).
        #[arg(long, global = true)]
        runs: Option<PathBuf>,
        #[command(subcommand)]
        which: RunsCommand,
    },
}

#[derive(Subcommand)]
enum MemoriesCommand {
    /// What memories promote and suppress: top/bottom tokens of W_U · dir(v).
    Values {
        model: PathBuf,
        #[arg(long)]
        layer: usize,
        /// Memory indices, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        memory: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
    /// Every memory's projection for some layers (default: all), as one table.
    Index {
        model: PathBuf,
        #[arg(long, value_delimiter = ',')]
        layer: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
    /// The memories behind a prediction, per layer (LM-Debugger's view).
    Top {
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Read at the subject's last token (default: the last token).
        #[arg(long)]
        subject: Option<String>,
        /// Report this answer's rank and probability.
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        position: Option<usize>,
        #[arg(long, default_value_t = 5)]
        per_layer: usize,
        #[arg(long, default_value_t = 8)]
        k: usize,
        /// Switch memories off: LAYER:INDEX,…
        #[arg(long, default_value = "")]
        zero: String,
        /// Set memories to the layer's largest coefficient + 1: LAYER:INDEX,…
        #[arg(long, default_value = "")]
        boost: String,
        /// Set memories' coefficients to values: LAYER:INDEX=VALUE,…
        #[arg(long, default_value = "")]
        set: String,
    },
    /// The target's rank entering each block, after attention and after the MLP.
    Lens {
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long)]
        target: String,
        #[arg(long)]
        position: Option<usize>,
    },
    /// Stream a corpus and keep each memory's highest-coefficient contexts.
    Triggers {
        model: PathBuf,
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, value_delimiter = ',', required = true)]
        layer: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[arg(long, default_value_t = usize::MAX)]
        max_tokens: usize,
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// Print these memories' contexts.
        #[arg(long, value_delimiter = ',')]
        show: Vec<usize>,
    },
    /// Knowledge neurons (Dai et al. 2022) of a fact, and the effect of suppressing/amplifying them.
    Attribute {
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// More prompts of the same fact.
        #[arg(long)]
        also: Vec<String>,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Keep neurons above this share of a prompt's largest attribution.
        #[arg(long, default_value_t = 0.2)]
        t: f32,
        /// ... found for at least this share of the prompts.
        #[arg(long, default_value_t = 0.7)]
        p: f32,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Every run with its kind, status, model and tables.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A run's params, tables and metric summaries.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a table as parquet or CSV, or its summary as a LaTeX table of means ± 95% CI.
    Export {
        id: String,
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Draw a stored table as a figure (.svg or .png by extension).
    Plot {
        id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        table: Option<String>,
        /// For traces of several facts: which fact.
        #[arg(long)]
        fact: Option<String>,
    },
    /// Metric against number of edits: each eval run's `curve` table as one
    /// series (named by its method), one figure per metric (edits-ES.png, …).
    Curve {
        ids: Vec<String>,
        /// The directory for the figures.
        #[arg(long)]
        out: PathBuf,
        /// Metrics to draw.
        #[arg(long, value_delimiter = ',', default_value = "ES,PS,NS,S")]
        metrics: Vec<String>,
    },
    /// Metric summaries of two runs side by side.
    Compare {
        a: String,
        b: String,
        #[arg(long)]
        table: Option<String>,
    },
    /// Join the runs of a study's shards (`--shard K/N`) into one run.
    Merge {
        /// The shards' runs, each shard once, in any order.
        #[arg(required = true, num_args = 2..)]
        ids: Vec<String>,
    },
}

#[derive(Args)]
struct PatchArgs {
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    subject: String,
    #[arg(long)]
    target: String,
    /// Corrupt by putting this subject (same token length) in place of --subject.
    #[arg(long, required_unless_present = "corrupted_prompt")]
    corrupt_subject: Option<String>,
    /// Or give the whole corrupted prompt (same token length).
    #[arg(long, conflicts_with = "corrupt_subject")]
    corrupted_prompt: Option<String>,
    /// Comma-separated: resid_pre, attn_out, mlp_out, head_out.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resid_pre,attn_out,mlp_out,head_out"
    )]
    sites: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    #[arg(long)]
    runs: Option<PathBuf>,
}

#[derive(Args)]
struct EditArgs {
    model: PathBuf,
    /// The prompt, containing the subject, e.g. "The Eiffel Tower is located in the city of".
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    subject: String,
    /// The new answer, e.g. Rome.
    #[arg(long)]
    target: String,
    /// Paraphrases of the prompt to probe before and after (repeatable).
    #[arg(long = "also")]
    also: Vec<String>,
    /// Prompts about other subjects whose answers should not move (repeatable).
    #[arg(long = "neighbour")]
    neighbour: Vec<String>,
    /// Greedy tokens to generate after the prompt, before and after the edit.
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// The run store (default: $ENGRAM_RUNS, else ./runs).
    #[arg(long)]
    runs: Option<PathBuf>,
    /// Checked-in hyperparameters (demo, smollm2-135m, gpt2-xl, ...) or a JSON file.
    #[arg(long)]
    hparams: Option<String>,
    /// Edit this layer instead of the hyperparameters' one.
    #[arg(long)]
    layer: Option<usize>,
    /// The update's key: consistent (r-ROME) or original (ROME's code).
    #[arg(long, value_enum, default_value = "consistent")]
    key: KeyArg,
    /// Text for the key statistics (default for the demo model: its corpus).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Key vectors for the statistics.
    #[arg(long, default_value_t = 100_000)]
    stats_tokens: usize,
    /// Write the edit ledger (JSON) here.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Save the edited model as this new checkpoint directory (never overwritten).
    #[arg(long)]
    save: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: engram_model::DeviceSpec,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchArg {
    Counterfact,
    Zsre,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConventionArg {
    Rome,
    Easyedit,
}

#[derive(Args)]
struct EvalArgs {
    benchmark: BenchArg,
    model: PathBuf,
    /// CounterFact JSON (ROME's or EasyEdit's form) or zsRE JSON (MEND's form).
    /// Default for the demo model with counterfact: its facts.
    #[arg(long)]
    data: Option<PathBuf>,
    /// zsRE only: which target the edit teaches and how metrics are named
    /// (rome: answers[0], zsre_efficacy/_paraphrase/_specificity; easyedit: alt,
    /// easyedit_reliability/_generalization/_locality).
    #[arg(long, value_enum, default_value = "rome")]
    convention: ConventionArg,
    /// Tokens generated per prompt for the generation-entropy fluency measure
    /// (ROME's top-5 sampling). Default: 100 with --sequential, else off (0).
    #[arg(long)]
    fluency_tokens: Option<usize>,
    /// Append each finished case to this JSON-lines file and skip the cases
    /// already in it: an interrupted run picks up where it stopped.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Evaluate this many usable cases (cases the edit refuses are skipped and counted).
    #[arg(long, default_value_t = 50)]
    n: usize,
    /// rome (ROME's code: the plain prompt's key in the update), r-rome (the
    /// consistent key, Gupta et al. 2024) or memit.
    #[arg(long, value_enum, default_value = "r-rome")]
    method: MethodArg,
    #[arg(long)]
    hparams: Option<String>,
    /// ROME's key, overriding the one --method implies.
    #[arg(long, value_enum)]
    key: Option<KeyArg>,
    /// Keep every edit applied (sequential editing) instead of reverting after
    /// each case; with memit, batches are applied cumulatively.
    #[arg(long)]
    sequential: bool,
    /// Skip cases whose subject an earlier case edits (MEMIT always does), so
    /// that ROME runs take the same cases as MEMIT runs.
    #[arg(long)]
    distinct_subjects: bool,
    /// Evaluate exactly the cases of this earlier run (its case ids, in order),
    /// e.g. ROME on a MEMIT run's cases.
    #[arg(long)]
    cases_from: Option<String>,
    /// Take every N-th case, starting at the K-th: this machine's share of a
    /// study spread over N (a Slurm array task, an indexed job). `--n` is the
    /// whole study's; `engram runs merge` joins the shards' runs.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<engram_datasets::merge::Shard>,
    /// MEMIT: requests per batch (default: all --n cases in one batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Numbers of edits at which every case edited so far is scored again
    /// (the metric-against-edits curve), e.g. 1,10,50,100,200.
    #[arg(long, value_delimiter = ',')]
    checkpoints: Vec<usize>,
    /// MEMIT: requests per z optimisation batch.
    #[arg(long, default_value_t = 16)]
    z_chunk: usize,
    /// MEMIT: threads optimising z chunks at once (0: every core on the CPU, 1 on a GPU).
    #[arg(long, default_value_t = 0)]
    z_workers: usize,
    /// MEMIT: a JSON-lines cache of z vectors, reused by later runs.
    #[arg(long)]
    z_cache: Option<PathBuf>,
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    stats_tokens: usize,
    #[arg(long)]
    runs: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: engram_model::DeviceSpec,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
}

#[derive(Args)]
struct TraceArgs {
    model: PathBuf,
    /// A fact set: known_1000.json, CounterFact, or CSV/JSONL of subject,prompt,target.
    #[arg(long, required_unless_present = "prompt")]
    facts: Option<PathBuf>,
    /// Trace this many facts the model gets right (skipping the others).
    #[arg(long)]
    n: Option<usize>,
    /// One fact: the prompt, its subject and the expected answer.
    #[arg(long, conflicts_with = "facts", requires_all = ["subject", "target"])]
    prompt: Option<String>,
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// Comma-separated: hidden, mlp, attn.
    #[arg(long, value_delimiter = ',', default_value = "hidden,mlp,attn")]
    kind: Vec<String>,
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// MLP/attention layers restored together. 0: ROME's 10 on models of 28+
    /// layers, the same share of depth (10/48) on shallower ones.
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Noise scale ν: `3sigma` (3 x the std of the subjects' token embeddings, ROME), `Ksigma`, or a number.
    #[arg(long, default_value = "3sigma")]
    noise: String,
    /// Uniform noise in [-ν, ν] instead of Gaussian.
    #[arg(long)]
    uniform: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The reference path: one restoration per forward pass.
    #[arg(long)]
    naive: bool,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    #[arg(long)]
    runs: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    model: PathBuf,
    #[arg(long, required_unless_present = "ids")]
    prompt: Option<String>,
    /// Comma-separated token ids instead of a prompt.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    ids: Option<Vec<u32>>,
    /// Rows of the next-token table.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Generate this many tokens after the prompt.
    #[arg(long)]
    generate: Option<usize>,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    sample_top_k: Option<usize>,
    /// Nucleus sampling: the smallest set of tokens with this much probability.
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Re-run the whole sequence each step instead of caching keys and values.
    #[arg(long)]
    no_kv_cache: bool,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MethodArg {
    Rome,
    RRome,
    Memit,
}

impl MethodArg {
    fn name(self) -> &'static str {
        match self {
            Self::Rome => "rome",
            Self::RRome => "r-rome",
            Self::Memit => "memit",
        }
    }
}

#[derive(Args)]
struct MemitArgs {
    model: PathBuf,
    /// Requests: CounterFact JSON (its requested rewrites) or subject/prompt/target
    /// records (CSV with a header, JSON, JSON lines).
    #[arg(long)]
    requests: PathBuf,
    /// Use the first N requests.
    #[arg(long)]
    n: Option<usize>,
    /// Checked-in hyperparameters (demo, smollm2-135m, gpt2-xl, gpt-j-6b) or a JSON file.
    #[arg(long)]
    hparams: Option<String>,
    /// Edit these layers instead of the hyperparameters' (comma-separated, increasing).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// λ, the weight of the key statistics.
    #[arg(long)]
    lambda: Option<f64>,
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    stats_tokens: usize,
    /// Requests per z optimisation batch.
    #[arg(long, default_value_t = 16)]
    z_chunk: usize,
    /// Threads optimising z chunks at once (0: every core on the CPU, 1 on a GPU).
    #[arg(long, default_value_t = 0)]
    z_workers: usize,
    /// Show the top answers before and after for this many requests.
    #[arg(long, default_value_t = 5)]
    show: usize,
    #[arg(long)]
    ledger: Option<PathBuf>,
    #[arg(long)]
    save: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: engram_model::DeviceSpec,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyArg {
    Consistent,
    Original,
}

impl From<KeyArg> for engram_editing::KeyChoice {
    fn from(k: KeyArg) -> Self {
        match k {
            KeyArg::Consistent => Self::Consistent,
            KeyArg::Original => Self::Original,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DtypeArg> for Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::BF16,
        }
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// MEMIT: the time for N edits in one batch, split into z, keys and solve.
    Memit {
        model: PathBuf,
        /// Requests: CounterFact JSON or subject/prompt/target records (default for
        /// the demo model: its facts, each edited to another answer).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long)]
        hparams: Option<String>,
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        stats_tokens: usize,
        #[arg(long, default_value_t = 16)]
        z_chunk: usize,
        /// Threads optimising z chunks at once (0: every core on the CPU, 1 on a GPU).
        #[arg(long, default_value_t = 0)]
        z_workers: usize,
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
    },
    /// MEMIT's solve alone at given sizes (default GPT-2 XL's: d_mlp 6400,
    /// d_model 1600, 5 layers), on random keys and a random C (CPU, f64).
    MemitSolve {
        #[arg(long, default_value_t = 6400)]
        d_mlp: usize,
        #[arg(long, default_value_t = 1600)]
        d_model: usize,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 5)]
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
        #[arg(long, default_value_t = 20_000)]
        stats_tokens: usize,
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
    },
    /// Forward tokens/s (batch 1 x 64, 8 x 128) and generation tokens/s.
    Forward {
        model: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Tokens generated per generation run.
        #[arg(long, default_value_t = 32)]
        gen_tokens: usize,
        /// On the CPU, measure again with Engram's AVX-512 kernels off (burn's ops) and print the ratio.
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
        #[arg(long, default_value_t = 10)]
        samples: usize,
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
        #[arg(long)]
        json: bool,
    },
    /// Forward-pass cost of the hook mechanism: unhooked vs dyn no-op vs caching everything.
    Hooks {
        model: PathBuf,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        seq: usize,
        #[arg(long, default_value_t = 20)]
        iters: usize,
        #[arg(long)]
        json: bool,
    },
}

mod bench;
mod memories;
mod runs;

/// Where runs, caches and the demo model live, from the environment, once.
fn settings() -> &'static engram_model::Settings {
    static SETTINGS: std::sync::OnceLock<engram_model::Settings> = std::sync::OnceLock::new();
    SETTINGS.get_or_init(|| engram_model::Settings::from_vars(|k| std::env::var_os(k)))
}

/// Whether `model` names the demo model.
fn is_demo(model: &Path) -> bool {
    engram_model::source::is_demo(model, settings())
}

/// The content hash of the model `arg` names.
fn model_hash(arg: &Path) -> Result<String> {
    let path = engram_model::source::resolve_model(arg, settings())?;
    Ok(engram_model::source::model_hash(&path)?)
}

/// A job handle that shows progress on stderr, one line per stage.
fn stderr_control() -> engram_model::Control {
    engram_model::Control::with_sink(|p| {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}: {}/{}   ", p.stage, p.done, p.total);
        if p.done >= p.total {
            let _ = writeln!(err);
        }
    })
}

fn parse_shard(text: &str) -> std::result::Result<engram_datasets::merge::Shard, String> {
    engram_datasets::merge::Shard::parse(text).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    // `engram ... | head` ends quietly, as Unix tools do, rather than
    // panicking in `println!` on the closed pipe.
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if std::env::var("ENGRAM_CPU_GEMM").as_deref() == Ok("burn") {
        engram_model::cpu::set_enabled(false);
    }
    if let Some(p) = std::env::var_os("LD_LIBRARY_PATH") {
        engram_model::device::add_library_dirs(std::env::split_paths(&p));
    }
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { model, json } => {
            let lm = load::<engram_model::Cpu>(&model, &Default::default())?;
            info(&model, &lm, json)
        }
        Command::Run(args) => {
            let (device, dtype) = (args.device, args.dtype.into());
            with_backend(device, dtype, RunJob(args))
        }
        Command::Lens {
            model,
            prompt,
            site,
            runs,
        } => {
            use engram_analysis::lens::LensSite;
            let site = match site.as_str() {
                "pre" => LensSite::Pre,
                "mid" => LensSite::Mid,
                "post" => LensSite::Post,
                other => bail!("unknown --site {other:?}: use pre, mid or post"),
            };
            let lm = load::<engram_model::Cpu>(&model, &Default::default())?;
            let root = runs.unwrap_or_else(|| settings().runs.clone());
            let store = engram_datasets::RunStore::open(root)?;
            let req = engram_analysis::jobs::lens::LensRequest { prompt, site };
            let report = engram_analysis::jobs::lens::run_lens(
                &lm,
                &model.display().to_string(),
                &req,
                &store,
            )?;
            print_lens(&report, site);
            Ok(())
        }
        Command::Memories { runs, which } => memories(runs, which),
        Command::Probe {
            model,
            data,
            label,
            text,
            subject,
            hook,
            position,
            control,
            folds,
            seed,
            min_count,
            regress,
            runs,
        } => {
            let lm = load::<engram_model::Cpu>(&model, &Default::default())?;
            let store =
                engram_datasets::RunStore::open(runs.unwrap_or_else(|| settings().runs.clone()))?;
            let args = engram_analysis::jobs::probe::ProbeArgs {
                data: &data,
                label: &label,
                text: &text,
                subject: subject.as_deref(),
                hook: &hook,
                position: &position,
                control,
                folds,
                seed,
                min_count,
                regress,
            };
            run_probe(&lm, &model, &args, &store)
        }
        Command::Trace(args) => {
            let (device, dtype) = (args.device, args.dtype.into());
            with_backend(device, dtype, TraceJob(args))
        }
        Command::Edit(args) => {
            let (device, dtype) = (args.device, args.dtype.into());
            with_backend(device, dtype, EditJob(args))
        }
        Command::Eval(args) => {
            let (device, dtype) = (args.device, args.dtype.into());
            with_backend(device, dtype, EvalJob(args))
        }
        Command::Memit(args) => {
            let (device, dtype) = (args.device, args.dtype.into());
            with_backend(device, dtype, MemitJob(args))
        }
        Command::Patch(args) => {
            let (device, dtype) = (args.device, args.dtype.into());
            with_backend(device, dtype, PatchJob(args))
        }
        Command::TrainDemo {
            out,
            facts_out,
            steps,
            seed,
        } => {
            let start = std::time::Instant::now();
            let report = engram_editing::demo::train_demo(
                &out,
                &facts_out,
                steps,
                seed,
                &mut |step, steps, loss| {
                    if step % 100 == 0 || step + 1 == steps {
                        eprintln!(
                            "step {step:>5}/{steps}  loss {loss:.4}  ({:.0} s)",
                            start.elapsed().as_secs_f64()
                        );
                    }
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Runs { runs, which } => {
            let store =
                engram_datasets::RunStore::open(runs.unwrap_or_else(|| settings().runs.clone()))?;
            match which {
                RunsCommand::List { json } => runs::list(&store, json),
                RunsCommand::Show { id, json } => runs::show(&store, &id, json),
                RunsCommand::Export {
                    id,
                    format,
                    table,
                    out,
                } => runs::export(&store, &id, &format, table.as_deref(), out),
                RunsCommand::Plot {
                    id,
                    out,
                    table,
                    fact,
                } => runs::plot(&store, &id, table.as_deref(), fact.as_deref(), &out),
                RunsCommand::Curve { ids, out, metrics } => {
                    for p in runs::curve(&store, &ids, &metrics, &out)? {
                        println!("figure {}", p.display());
                    }
                    Ok(())
                }
                RunsCommand::Compare { a, b, table } => {
                    runs::compare(&store, &a, &b, table.as_deref())
                }
                RunsCommand::Merge { ids } => {
                    let info = engram_datasets::merge::merge_shards(&store, &ids)?;
                    println!(
                        "merged {} shards into run {} ({})",
                        ids.len(),
                        info.id,
                        info.dir.display()
                    );
                    Ok(())
                }
            }
        }
        Command::Bench { which } => match which {
            BenchCommand::Forward {
                model,
                device,
                dtype,
                iters,
                gen_tokens,
                compare_burn,
                json,
            } => with_backend(
                device,
                dtype.into(),
                ForwardBenchJob {
                    model,
                    iters,
                    gen_tokens,
                    compare_burn,
                    json,
                    label: format!("{device} {:?}", Dtype::from(dtype)),
                },
            ),
            BenchCommand::Trace {
                model,
                prompt,
                subject,
                target,
                samples,
                device,
                dtype,
                json,
            } => with_backend(
                device,
                dtype.into(),
                TraceBenchJob {
                    model,
                    fact: engram_datasets::facts::UserFact {
                        subject,
                        prompt,
                        target,
                        relation: None,
                    },
                    samples,
                    json,
                    label: format!("{device} {:?}", Dtype::from(dtype)),
                },
            ),
            BenchCommand::MemitSolve {
                d_mlp,
                d_model,
                n,
                layers,
            } => {
                let times = engram_editing::jobs::memit::bench_solve(d_mlp, d_model, n, layers)?;
                let total: f64 = times.iter().sum();
                println!(
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
                device,
                dtype,
            } => with_backend(
                device,
                dtype.into(),
                MemitBenchJob {
                    model,
                    data,
                    n,
                    hparams,
                    corpus,
                    stats_tokens,
                    z_chunk,
                    z_workers: engram_editing::jobs::setup::z_workers(z_workers, &device),
                    label: format!("{device} {:?}", Dtype::from(dtype)),
                },
            ),
            BenchCommand::Edit {
                model,
                prompt,
                subject,
                target,
                hparams,
                corpus,
                stats_tokens,
                device,
                dtype,
            } => with_backend(
                device,
                dtype.into(),
                EditBenchJob {
                    model,
                    prompt,
                    subject,
                    target,
                    hparams,
                    corpus,
                    stats_tokens,
                    label: format!("{device} {:?}", Dtype::from(dtype)),
                },
            ),
            BenchCommand::Hooks {
                model,
                batch,
                seq,
                iters,
                json,
            } => bench_hooks(&model, batch, seq, iters, json),
        },
    }
}

fn memories(runs: Option<PathBuf>, which: MemoriesCommand) -> Result<()> {
    use crate::memories as m;
    let store = engram_datasets::RunStore::open(runs.unwrap_or_else(|| settings().runs.clone()))?;
    let cpu = |model: &Path| load::<engram_model::Cpu>(model, &Default::default());
    match which {
        MemoriesCommand::Values {
            model,
            layer,
            memory,
            k,
        } => m::values(&cpu(&model)?, &model, layer, &memory, k, &store),
        MemoriesCommand::Index { model, layer, k } => {
            let lm = cpu(&model)?;
            let layers = if layer.is_empty() {
                (0..lm.model.config.n_layers).collect()
            } else {
                layer
            };
            m::index(&lm, &model, &layers, k, &store)
        }
        MemoriesCommand::Top {
            model,
            prompt,
            subject,
            target,
            position,
            per_layer,
            k,
            zero,
            boost,
            set,
        } => {
            let q = m::TopQuery {
                prompt: &prompt,
                subject: subject.as_deref(),
                target: target.as_deref(),
                position,
                per_layer,
                k,
                zero: m::parse_memories(&zero)?,
                boost: m::parse_memories(&boost)?,
                set: m::parse_settings(&set)?,
            };
            m::top(&cpu(&model)?, &model, &q, &store)
        }
        MemoriesCommand::Lens {
            model,
            prompt,
            target,
            position,
        } => m::lens(&cpu(&model)?, &model, &prompt, &target, position, &store),
        MemoriesCommand::Triggers {
            model,
            corpus,
            layer,
            top,
            max_tokens,
            seq_len,
            show,
        } => m::triggers(
            &cpu(&model)?,
            &model,
            &corpus,
            &layer,
            top,
            max_tokens,
            seq_len,
            &show,
            &store,
        ),
        MemoriesCommand::Attribute {
            model,
            prompt,
            also,
            target,
            steps,
            t,
            p,
        } => {
            let prompts: Vec<String> = std::iter::once(prompt).chain(also).collect();
            m::attribute(
                &cpu(&model)?,
                &model,
                &prompts,
                &target,
                steps,
                t,
                p,
                &store,
            )
        }
    }
}

fn load<B: Backend>(model: &Path, device: &B::Device) -> Result<LanguageModel<B>> {
    let path = engram_model::source::resolve_model(model, settings())?;
    LanguageModel::<B>::load(&path, device)
        .with_context(|| format!("loading model from {}", path.display()))
}

fn info<B: Backend>(model: &Path, lm: &LanguageModel<B>, as_json: bool) -> Result<()> {
    let c = &lm.model.config;
    let hooks: Vec<String> = lm
        .model
        .hook_points()
        .iter()
        .map(|h| h.to_string())
        .collect();
    if as_json {
        let v = json!({
            "path": model,
            "config": c,
            "parameters": c.parameter_count(),
            "tokenizer_vocab": lm.tokenizer.vocab_size(),
            "hooks": hooks,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model         {}", model.display());
    println!(
        "architecture  {} (model_type {})",
        c.arch.name(),
        c.model_type
    );
    println!("parameters    {}", c.parameter_count());
    println!("layers        {}", c.n_layers);
    println!("d_model       {}", c.d_model);
    println!(
        "d_mlp         {}{}",
        c.d_mlp,
        if c.gated_mlp { " (gated)" } else { "" }
    );
    println!(
        "heads         {} ({} key/value), d_head {}",
        c.n_heads, c.n_kv_heads, c.d_head
    );
    println!(
        "vocab         {} (tokenizer {})",
        c.vocab_size,
        lm.tokenizer.vocab_size()
    );
    println!("context       {}", c.n_ctx);
    println!("norm          {:?}, eps {}", c.norm, c.norm_eps);
    match c.rotary {
        Some(r) => println!(
            "positions     rotary {:?}, dim {}, theta {}",
            r.style, r.dim, r.theta
        ),
        None => println!("positions     learned"),
    }
    let block = if c.parallel_attn_mlp {
        "parallel attention + MLP"
    } else {
        "sequential"
    };
    println!("block         {block}");
    println!("hook points   {}", hooks.len());
    for h in hooks {
        println!("  {h}");
    }
    Ok(())
}

struct RunJob(RunArgs);

impl BackendJob for RunJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let lm = load::<B>(&a.model, &device)?;
        let ids = match (a.ids, &a.prompt) {
            (Some(ids), _) => ids,
            (None, Some(p)) => lm.encode_prompt(p)?,
            (None, None) => bail!("give --prompt or --ids"),
        };
        let logits = lm.model.logits(&Batch::single(&ids))?;
        let last = engram_model::transformer::last_position(logits, &[ids.len() - 1]);
        let last: Vec<f32> = last
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let top: Vec<TokenProb> =
            top_k_from_logits(&last, a.top_k, |id| lm.tokenizer.token_text(id));

        let generated = match a.generate {
            None => None,
            Some(n) => {
                let sampling = match (a.temperature, a.sample_top_k, a.top_p) {
                    (None, None, None) => Sampling::Greedy,
                    (t, k, p) => Sampling::Sample {
                        temperature: t.unwrap_or(1.0),
                        top_k: k,
                        top_p: p,
                        seed: a.seed,
                    },
                };
                let cfg = GenerateConfig {
                    max_new_tokens: n,
                    sampling,
                    stop_at_eos: true,
                    kv_cache: !a.no_kv_cache,
                };
                let out = generate(&lm.model, std::slice::from_ref(&ids), &cfg)?;
                let new = out.into_iter().next().unwrap_or_default();
                Some((lm.tokenizer.decode(&new)?, new))
            }
        };

        if a.json {
            let v = json!({
                "prompt": a.prompt,
                "input_ids": ids,
                "input_tokens": ids.iter().map(|&i| lm.tokenizer.token_text(i)).collect::<Vec<_>>(),
                "top_k": top,
                "generated": generated.as_ref().map(|(text, ids)| json!({"text": text, "ids": ids})),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        if let Some(p) = &a.prompt {
            println!("prompt: {p:?} ({} tokens)", ids.len());
        }
        println!(
            "{:>4}  {:<20} {:>8}  {:>9}  {:>9}",
            "rank", "token", "id", "prob", "logit"
        );
        for (rank, t) in top.iter().enumerate() {
            println!(
                "{:>4}  {:<20} {:>8}  {:>9.6}  {:>9.4}",
                rank + 1,
                format!("{:?}", t.token),
                t.id,
                t.prob,
                t.logit
            );
        }
        if let Some((text, _)) = generated {
            println!("generated: {text:?}");
        }
        Ok(())
    }
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
        let rows = bench::forward_throughput(&lm, self.iters, self.gen_tokens)?;
        let compare = self.compare_burn && engram_model::cpu::enabled();
        let burn_rows = if compare {
            engram_model::cpu::set_enabled(false);
            let r = bench::forward_throughput(&lm, self.iters, self.gen_tokens);
            engram_model::cpu::set_enabled(true);
            Some(r?)
        } else {
            if self.compare_burn {
                eprintln!("--compare-burn: the CPU kernels are not in use here (not the CPU backend, no AVX-512F, or ENGRAM_CPU_GEMM=burn)");
            }
            None
        };
        if self.json {
            // The plain row list (what bench/torch_forward.py reads), or both lists.
            let out = match burn_rows {
                Some(b) => serde_json::json!({ "engram": rows, "burn_ops": b }),
                None => serde_json::to_value(&rows)?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        println!(
            "engram forward: {} ({}), {}, median of {} runs",
            self.model.display(),
            lm.model.config.arch.name(),
            self.label,
            self.iters
        );
        for (i, r) in rows.iter().enumerate() {
            print!(
                "  {:<34} batch {:>2} x {:>3}  {:>10.2} ms  {:>10.1} tokens/s",
                r.task, r.batch, r.seq, r.median_ms, r.tokens_per_s
            );
            match burn_rows.as_ref().and_then(|b| b.get(i)) {
                Some(b) => println!(
                    "   burn ops {:>10.1} tokens/s  x{:.2}",
                    b.tokens_per_s,
                    r.tokens_per_s / b.tokens_per_s
                ),
                None => println!(),
            }
        }
        Ok(())
    }
}

fn bench_hooks(model: &Path, batch: usize, seq: usize, iters: usize, as_json: bool) -> Result<()> {
    let lm = load::<engram_model::Cpu>(model, &Default::default())?;
    let seq = seq.min(lm.model.config.n_ctx);
    let rows = bench::hook_overhead(&lm, batch, seq, iters)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "hook overhead: {} ({}), batch {batch} x {seq} tokens, median of {iters} runs, CPU",
        model.display(),
        lm.model.config.arch.name()
    );
    for r in rows {
        println!(
            "  {:<30} {:>9.3} ms   x{:.3}",
            r.variant, r.median_ms, r.ratio_to_unhooked
        );
    }
    Ok(())
}

struct EditJob(EditArgs);

impl BackendJob for EditJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_editing::jobs::rome::{check_request, run_rome, RomeRequest};
        use engram_editing::jobs::setup::{key_covariance, rome_templates};
        use engram_editing::rome::EditRequest;
        use engram_editing::Ledger;
        let a = self.0;
        engram_editing::jobs::setup::refuse_existing(a.save.as_deref())?;
        let mut hparams = engram_editing::jobs::setup::resolve_hparams(
            &a.model,
            a.hparams.as_deref(),
            settings(),
        )?;
        if let Some(l) = a.layer {
            hparams.layers = vec![l];
        }
        hparams.key = a.key.into();
        let req = RomeRequest {
            request: EditRequest {
                prompt: a.prompt.clone(),
                subject: a.subject.clone(),
                target: a.target.clone(),
            },
            hparams,
            paraphrases: a.also.clone(),
            neighbours: a.neighbour.clone(),
            generate_tokens: a.generate,
        };
        check_request(&req)?;
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let mut lm = load::<B>(&a.model, &device)?;
        let layer = req.hparams.layer()?;
        let ctl = stderr_control();
        let cov = key_covariance(
            &lm,
            layer,
            a.corpus.as_deref(),
            a.stats_tokens,
            settings(),
            &ctl,
        )?;
        eprintln!(
            "layer {layer} statistics: {} key vectors from {}{} ({:.1} s)",
            cov.covariance.tokens,
            cov.corpus,
            if cov.cached { ", cached" } else { "" },
            cov.seconds
        );
        let templates = rome_templates(&lm, &req.hparams)?;
        let mut ledger = Ledger::new(engram_model::source::model_hash(&lm.source)?);
        let r = run_rome(
            &mut lm,
            &a.model.display().to_string(),
            &mut ledger,
            &req,
            &cov.covariance,
            &templates,
            &store,
            &ctl,
        )?;
        for (i, s) in r.steps.iter().enumerate() {
            println!(
                "v* step {i:>2}: loss {:.4} = nll {:.4} + kl {:.4} + decay {:.4}; p(target) {:.4}",
                s.total, s.nll, s.kl, s.weight_decay, s.target_prob
            );
        }
        println!(
            "layer {}, key {:?}: |k*| {:.3}, |v0| {:.3}, |v* - v0| {:.3}, {} key vectors, {:.2} s",
            r.layer, r.key, r.k_star_norm, r.v0_norm, r.delta_norm, r.stats_tokens, r.seconds
        );
        for when in ["before", "after"] {
            for p in &r.probes {
                let (top, prob, target) = if when == "before" {
                    (&p.before_top, p.before_top_prob, p.before_target)
                } else {
                    (&p.after_top, p.after_top_prob, p.after_target)
                };
                println!(
                    "{when:>6}  {:<10} {:?} -> {top:?} {prob:.4}; p({:?}) {target:.4}",
                    p.kind, p.prompt, r.request.target
                );
            }
        }
        if a.generate > 0 {
            println!("before: {}", r.generation_before);
            println!(" after: {}", r.generation_after);
        }
        println!("stored as run {} ({})", r.run.id, r.run.dir.display());
        if let Some(path) = &a.ledger {
            ledger.export(path)?;
            println!("ledger written to {}", path.display());
        }
        if let Some(out) = &a.save {
            let path = ledger.save(&lm, out)?;
            println!("edited model saved as {}", path.display());
        }
        Ok(())
    }
}

struct MemitJob(MemitArgs);

impl BackendJob for MemitJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_editing::Ledger;
        let a = self.0;
        engram_editing::jobs::setup::refuse_existing(a.save.as_deref())?;
        let mut requests = engram_editing::jobs::setup::load_requests(&a.requests)?;
        if let Some(n) = a.n {
            requests.truncate(n);
        }
        let mut lm = load::<B>(&a.model, &device)?;
        let mut hp = engram_editing::jobs::setup::resolve_memit_hparams(
            &a.model,
            a.hparams.as_deref(),
            settings(),
        )?;
        if !a.layers.is_empty() {
            hp.layers = a.layers.clone();
        }
        if let Some(l) = a.lambda {
            hp.mom2_update_weight = l;
        }
        let shown: Vec<_> = requests.iter().take(a.show).cloned().collect();
        let show = |lm: &LanguageModel<B>, when: &str| -> Result<()> {
            for r in &shown {
                let top = lm.top_k(&r.prompt, 3)?;
                let cells: Vec<String> = top
                    .iter()
                    .map(|t| format!("{:?} {:.4}", t.token, t.prob))
                    .collect();
                println!("{when:>6}  {:?} -> {}", r.prompt, cells.join(", "));
            }
            Ok(())
        };
        show(&lm, "before")?;
        let mut ledger = Ledger::new(engram_model::source::model_hash(&lm.source)?);
        let z_workers = engram_editing::jobs::setup::z_workers(a.z_workers, &a.device);
        let (r, stats_seconds) = memit_batch(
            &mut lm,
            &a.model,
            &mut ledger,
            requests.clone(),
            hp.clone(),
            (a.corpus.as_deref(), a.stats_tokens),
            (a.z_chunk, z_workers),
        )?;
        let (out, t) = (&r, r.times);
        show(&lm, "after")?;
        println!(
            "MEMIT: {} requests over layers {:?} (λ {}): mean |z - h| {}",
            requests.len(),
            hp.layers,
            hp.mom2_update_weight,
            out.residual_norms
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" -> ")
        );
        println!(
            "time: statistics {:.1} s, z {:.1} s, keys {:.1} s, solve {:.1} s, total {:.1} s",
            stats_seconds, t.z_seconds, t.keys_seconds, t.solve_seconds, t.total_seconds
        );
        println!("stored as run {} ({})", r.run.id, r.run.dir.display());
        if let Some(path) = &a.ledger {
            ledger.export(path)?;
            println!("ledger written to {}", path.display());
        }
        if let Some(out) = &a.save {
            let path = ledger.save(&lm, out)?;
            println!("edited model saved as {}", path.display());
        }
        Ok(())
    }
}

/// One MEMIT batch from the command line: C of each layer and the prefixes,
/// then the batch job, stored as a run. Also returns the statistics' seconds.
fn memit_batch<B: Backend>(
    lm: &mut LanguageModel<B>,
    model: &Path,
    ledger: &mut engram_editing::Ledger<B>,
    requests: Vec<engram_editing::EditRequest>,
    hparams: engram_editing::MemitHparams,
    (corpus, stats_tokens): (Option<&Path>, usize),
    (z_chunk, z_workers): (usize, usize),
) -> Result<(engram_editing::jobs::memit::MemitReport, f64)> {
    use engram_editing::jobs::memit::{run_memit, MemitRequest};
    if requests.is_empty() {
        bail!("no requests to edit");
    }
    if z_chunk == 0 {
        bail!("--z-chunk 0: optimise at least one request per chunk");
    }
    for w in engram_editing::memit::check_batch(lm, &requests)? {
        eprintln!("warning: {w}");
    }
    let store = engram_datasets::RunStore::open(settings().runs.clone())?;
    let ctl = stderr_control();
    let t = std::time::Instant::now();
    let (covs, groups) = engram_editing::jobs::setup::memit_setup(
        lm,
        &hparams,
        corpus,
        stats_tokens,
        settings(),
        &ctl,
    )?;
    let stats_seconds = t.elapsed().as_secs_f64();
    let req = MemitRequest {
        requests,
        hparams,
        z_chunk,
        z_workers,
    };
    let report = run_memit(
        lm,
        &model.display().to_string(),
        ledger,
        &req,
        &covs,
        &groups,
        &store,
        &ctl,
    )?;
    Ok((report, stats_seconds))
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
        let (out, stats_seconds) = memit_batch(
            &mut lm,
            &self.model,
            &mut ledger,
            requests,
            hp.clone(),
            (self.corpus.as_deref(), self.stats_tokens),
            (self.z_chunk, self.z_workers),
        )?;
        let t = out.times;
        let edit = t.z_seconds + t.keys_seconds + t.solve_seconds;
        println!(
            "bench memit on {} ({}): {} edits in one batch over layers {:?}, z in chunks of {}",
            self.model.display(),
            self.label,
            t.requests,
            hp.layers,
            self.z_chunk
        );
        println!(
            "  statistics (cached or collected): {:>9.1} s",
            stats_seconds
        );
        println!(
            "  z (v* optimisation, batched):     {:>9.1} s  ({:.2} s per edit, {:.0}%)",
            t.z_seconds,
            t.z_seconds / t.requests.max(1) as f64,
            100.0 * t.z_seconds / edit.max(1e-9)
        );
        println!(
            "  keys and residuals:               {:>9.1} s  ({:.0}%)",
            t.keys_seconds,
            100.0 * t.keys_seconds / edit.max(1e-9)
        );
        println!(
            "  solve (f64 Cholesky, {} layers):   {:>9.1} s  ({:.0}%)",
            hp.layers.len(),
            t.solve_seconds,
            100.0 * t.solve_seconds / edit.max(1e-9)
        );
        println!(
            "  edit total (z + keys + solve):    {:>9.1} s  ({:.2} s per edit)",
            edit,
            edit / t.requests.max(1) as f64
        );
        println!(
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
        use std::time::Instant;
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
        let t = Instant::now();
        let stats = collect_stats(
            &lm.model,
            &lm.tokenizer,
            &text,
            "bench",
            &opts,
            &mut |_, _| true,
        )?;
        let stats_s = t.elapsed().as_secs_f64();
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
        let mut times = Vec::new();
        let mut steps = 0;
        for _ in 0..2 {
            let t = Instant::now();
            let e = rome_edit(&lm, &request, &hp, &cov, &templates, &mut |_, _| true)?;
            times.push(t.elapsed().as_secs_f64());
            steps = e.steps.len();
        }
        println!(
            "bench edit on {} ({}), layer {layer}, d_mlp {}",
            a.model.display(),
            a.label,
            stats.dim
        );
        println!(
            "statistics: {} key vectors in {:.2} s = {:.0} key vectors/s; Cholesky of C {:.2} s",
            stats.key.tokens,
            stats_s,
            stats.key.tokens as f64 / stats_s,
            chol_s
        );
        println!(
            "edit with statistics in memory: {:.3} s, then {:.3} s ({} v* steps, {} prefixes; prefixes generated once in {:.3} s)",
            times[0],
            times[1],
            steps,
            templates.len(),
            templ_s
        );
        Ok(())
    }
}

struct EvalJob(EvalArgs);

impl BackendJob for EvalJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_datasets::summary::mean_ci;
        use engram_editing::eval::rome_score;
        use engram_editing::jobs::evaluate::{
            evaluate, evaluate_memit, zsre_cases, BenchCase, EvalOptions, MemitSetup,
            ZsreConvention,
        };
        use engram_editing::Ledger;
        let a = self.0;
        if a.method != MethodArg::Memit && (a.batch.is_some() || a.z_cache.is_some()) {
            bail!("--batch and --z-cache are for --method memit");
        }
        let conv = match a.convention {
            ConventionArg::Rome => ZsreConvention::Rome,
            ConventionArg::Easyedit => ZsreConvention::EasyEdit,
        };
        let bench = match a.benchmark {
            BenchArg::Counterfact => "counterfact",
            BenchArg::Zsre => "zsre",
        };
        let mut lm = load::<B>(&a.model, &device)?;
        let cf = |v: Vec<engram_editing::eval::EvalCase>| -> Vec<BenchCase> {
            v.into_iter().map(BenchCase::CounterFact).collect()
        };
        let skipped_records = |skipped: Vec<String>| {
            for e in skipped {
                eprintln!("skipped record: {e}");
            }
        };
        let cases = match (a.benchmark, &a.data) {
            (BenchArg::Counterfact, Some(p)) => {
                let (cases, skipped) = engram_editing::jobs::setup::counterfact_cases(p)?;
                skipped_records(skipped);
                cf(cases)
            }
            (BenchArg::Counterfact, None) if is_demo(&a.model) => {
                cf(engram_editing::jobs::setup::demo_eval_cases())
            }
            (BenchArg::Zsre, Some(p)) => {
                let (cases, skipped) = zsre_cases(p, conv)?;
                skipped_records(skipped);
                cases
            }
            (_, None) => bail!(
                "--data FILE ({bench} JSON) is needed for {}",
                a.model.display()
            ),
        };
        // --cases-from RUN: exactly that run's cases, in its order.
        let cases = match &a.cases_from {
            Some(id) => {
                let store = engram_datasets::RunStore::open(
                    a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
                )?;
                let run = store.find(id)?;
                let ids: Vec<u64> = run
                    .params
                    .record_ids
                    .iter()
                    .filter_map(|r| r.trim_matches('"').parse().ok())
                    .collect();
                if ids.is_empty() {
                    bail!("run {id} lists no case ids");
                }
                let picked: Vec<BenchCase> = ids
                    .iter()
                    .filter_map(|i| cases.iter().find(|c| c.id() == *i).cloned())
                    .collect();
                if picked.len() != ids.len() {
                    bail!(
                        "{} of run {id}'s {} cases are not in this data",
                        ids.len() - picked.len(),
                        ids.len()
                    );
                }
                picked
            }
            None => cases,
        };
        let (cases, n) = match a.shard {
            Some(shard) => {
                if a.sequential || a.method == MethodArg::Memit || a.journal.is_some() {
                    bail!(
                        "--shard {shard}: shards edit on fresh weights, one case at a time (ROME or r-ROME, \
                         not --sequential, --method memit or --journal), so that their runs join into the unsharded one"
                    );
                }
                (shard.select(cases), shard.share_of(a.n))
            }
            None => (cases, a.n),
        };
        let hash = model_hash(&a.model)?;
        let mut ledger = Ledger::new(hash.clone());
        let opts = EvalOptions {
            n,
            sequential: a.sequential,
            checkpoints: a.checkpoints.clone(),
            distinct_subjects: a.distinct_subjects || a.method == MethodArg::Memit,
            fluency_tokens: a.fluency_tokens.unwrap_or(
                if a.sequential && a.method != MethodArg::Memit {
                    100
                } else {
                    0
                },
            ),
            journal: a.journal.clone(),
        };
        let (out, hparams, stats_tokens, templates) = if a.method == MethodArg::Memit {
            if opts.fluency_tokens > 0 {
                bail!("--fluency-tokens is measured for ROME runs only so far");
            }
            let hp = engram_editing::jobs::setup::resolve_memit_hparams(
                &a.model,
                a.hparams.as_deref(),
                settings(),
            )?;
            let (covs, groups) = engram_editing::jobs::setup::memit_setup(
                &lm,
                &hp,
                a.corpus.as_deref(),
                a.stats_tokens,
                settings(),
                &stderr_control(),
            )?;
            let setup = MemitSetup {
                hp: &hp,
                covs: &covs,
                groups: &groups,
                batch: a.batch.unwrap_or(a.n),
                z_chunk: a.z_chunk,
                z_workers: engram_editing::jobs::setup::z_workers(a.z_workers, &a.device),
                z_cache: a.z_cache.clone(),
                model_hash: hash.clone(),
            };
            let start = std::time::Instant::now();
            let out = evaluate_memit(&mut lm, &mut ledger, &cases, &setup, &opts, &mut |what| {
                eprintln!("[{:.0} s] {what}", start.elapsed().as_secs_f64())
            })?;
            let tokens = covs.first().map_or(0, |c| c.tokens);
            (
                out,
                serde_json::to_value(&hp)?,
                tokens,
                serde_json::to_value(&groups)?,
            )
        } else {
            let mut hp = engram_editing::jobs::setup::resolve_hparams(
                &a.model,
                a.hparams.as_deref(),
                settings(),
            )?;
            hp.key = match (a.key, a.method) {
                (Some(k), _) => k.into(),
                (None, MethodArg::Rome) => engram_editing::KeyChoice::Original,
                (None, _) => engram_editing::KeyChoice::Consistent,
            };
            let (cov, templates) = engram_editing::jobs::setup::rome_setup(
                &lm,
                &hp,
                a.corpus.as_deref(),
                a.stats_tokens,
                settings(),
                &stderr_control(),
            )?;
            let out = evaluate(
                &mut lm,
                &mut ledger,
                &cases,
                &hp,
                &cov,
                &templates,
                &opts,
                &mut |done, skipped, secs| {
                    eprint!("\r{done} of {n} cases evaluated, {skipped} skipped, {secs:.0} s")
                },
            )?;
            eprintln!();
            (
                out,
                serde_json::to_value(&hp)?,
                cov.tokens,
                serde_json::to_value(&templates)?,
            )
        };
        for note in &out.notes {
            eprintln!("{note}");
        }
        if out.rows.is_empty() {
            bail!("no case could be edited ({} skipped)", out.skipped.len());
        }
        let summary: Vec<_> = out
            .metrics
            .iter()
            .map(|name| {
                let values: Vec<f64> = out
                    .rows
                    .iter()
                    .filter_map(|r| r.get(name).and_then(serde_json::Value::as_f64))
                    .collect();
                mean_ci(name, &values)
            })
            .collect();
        for s in &summary {
            println!(
                "{:<28} {:>8.4}  [{:.4}, {:.4}]  n={}",
                s.metric, s.mean, s.ci_low, s.ci_high, s.n
            );
        }
        let get = |n: &str| summary.iter().find(|s| s.metric == n).map(|s| s.mean);
        let score = match (get("ES"), get("PS"), get("NS")) {
            (Some(es), Some(ps), Some(ns)) => {
                let s = rome_score(es, ps, ns);
                println!("S (harmonic mean of ES, PS, NS): {s:.4}");
                Some(s)
            }
            _ => None,
        };
        println!(
            "{} cases evaluated, {} skipped, {:.1} s{}",
            out.rows.len(),
            out.skipped.len(),
            out.seconds,
            if a.sequential { " (sequential)" } else { "" }
        );
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let conventions = match (a.benchmark, conv) {
            (BenchArg::Counterfact, _) => {
                "ES/PS/NS/EM/PM/NM as ROME's code; easyedit_* token accuracies as EasyEdit"
            }
            (BenchArg::Zsre, ZsreConvention::Rome) => {
                "zsre_* token accuracies as ROME/MEMIT's code (target answers[0])"
            }
            (BenchArg::Zsre, ZsreConvention::EasyEdit) => {
                "easyedit_* token accuracies as EasyEdit (target alt)"
            }
        };
        let params = engram_datasets::RunParams {
            model: a.model.display().to_string(),
            model_hash: hash,
            hyperparameters: serde_json::json!({
                "method": a.method.name(),
                "benchmark": bench,
                "conventions": conventions,
                "hparams": hparams,
                "context_templates": templates,
                "sequential": a.sequential,
                "batch": a.batch,
                "checkpoints": a.checkpoints,
                "distinct_subjects": opts.distinct_subjects,
                "cases_from": a.cases_from,
                "fluency_tokens": opts.fluency_tokens,
                "stats_tokens": stats_tokens,
                "skipped": out.skipped,
                "S": score,
                "shard": a.shard.map(|s| s.to_string()),
            }),
            dataset: a.data.as_ref().map(|d| d.display().to_string()),
            record_ids: out
                .rows
                .iter()
                .map(|r| {
                    r.get("case_id")
                        .map(ToString::to_string)
                        .unwrap_or_default()
                })
                .collect(),
            seed: Some(0),
            engram_version: env!("CARGO_PKG_VERSION").into(),
            device: format!("{device:?}"),
        };
        let run = store.create("eval", params)?;
        run.write_rows("cases", &out.rows)?;
        run.write_rows("summary", &summary)?;
        if !out.curve.is_empty() {
            for c in &out.curve {
                println!(
                    "after {:>5} edits: {}",
                    c.get("edits")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0),
                    ["ES", "PS", "NS", "S"]
                        .iter()
                        .filter_map(|m| c
                            .get(*m)
                            .and_then(serde_json::Value::as_f64)
                            .map(|v| format!("{m} {v:.4}")))
                        .collect::<Vec<_>>()
                        .join("  ")
                );
            }
            run.write_rows("curve", &out.curve)?;
        }
        let info = run.finish()?;
        println!(
            "run {} in {}",
            info.id,
            store.root().join("eval").join(&info.id).display()
        );
        Ok(())
    }
}

struct TraceJob(TraceArgs);

impl BackendJob for TraceJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_analysis::jobs::trace::{
            peak, run_trace, NoiseLevel, TraceOptions, TraceRequest,
        };
        use engram_analysis::trace::TraceKind;
        let a = self.0;
        let kinds = a
            .kind
            .iter()
            .map(|k| {
                TraceKind::from_name(k.trim())
                    .with_context(|| format!("unknown --kind {k:?}: use hidden, mlp or attn"))
            })
            .collect::<Result<Vec<_>>>()?;
        let noise =
            match a.noise.strip_suffix("sigma") {
                Some(m) => NoiseLevel::Spread {
                    multiple: m.parse().with_context(|| {
                        format!("--noise {:?}: expected e.g. 3sigma or 0.1", a.noise)
                    })?,
                },
                None => NoiseLevel::Fixed(a.noise.parse().with_context(|| {
                    format!("--noise {:?}: expected e.g. 3sigma or 0.1", a.noise)
                })?),
            };
        let (facts, dataset) = match (&a.facts, &a.prompt) {
            (Some(path), _) => {
                let loaded = engram_datasets::facts::load_fact_set(
                    path,
                    engram_datasets::OnBadRecord::Skip,
                )?;
                for e in &loaded.skipped {
                    eprintln!("skipped record: {e}");
                }
                (loaded.records, Some(path.clone()))
            }
            (None, Some(prompt)) => {
                let fact = engram_datasets::facts::UserFact {
                    subject: a.subject.clone().unwrap_or_default(),
                    prompt: prompt.clone(),
                    target: a.target.clone().unwrap_or_default(),
                    relation: None,
                };
                (vec![fact], None)
            }
            (None, None) => bail!("give --facts FILE, or --prompt, --subject and --target"),
        };
        let lm = load::<B>(&a.model, &device)?;
        let opts = TraceOptions {
            kinds,
            samples: a.samples,
            window: a.window,
            noise,
            uniform: a.uniform,
            seed: a.seed,
            n: a.n.unwrap_or(usize::MAX),
            naive: a.naive,
            ..TraceOptions::default()
        };
        let store = engram_datasets::RunStore::open(
            a.runs.clone().unwrap_or_else(|| settings().runs.clone()),
        )?;
        let req = TraceRequest {
            facts,
            options: opts.clone(),
            noise_subjects: Vec::new(),
            dataset,
        };
        let started = std::time::Instant::now();
        let run = run_trace(
            &lm,
            &a.model.display().to_string(),
            &req,
            &store,
            &stderr_control(),
        )?;
        eprintln!();
        eprintln!(
            "noise: {} with scale {:.4}{}",
            if a.uniform { "uniform" } else { "gaussian" },
            run.noise_scale,
            match noise {
                NoiseLevel::Spread { multiple } => format!(
                    " ({multiple} x the embedding std of {} subjects)",
                    req.facts.len()
                ),
                NoiseLevel::Fixed(_) => String::new(),
            }
        );
        println!(
            "traced {} facts, skipped {} (the model did not predict the target, or bad input), in {:.1} s",
            run.traced,
            run.skipped,
            started.elapsed().as_secs_f64()
        );
        for kind in &opts.kinds {
            if let Some(p) = peak(&run.effects, *kind) {
                println!(
                    "{:>6}: average indirect effect at the last subject token peaks at layer {} ({:+.4})",
                    kind.name(),
                    p.layer,
                    p.effect
                );
            }
        }
        println!("run {} in {}", run.info.id, run.info.dir.display());
        for f in &run.figures {
            println!("figure {}", f.display());
        }
        Ok(())
    }
}

struct TraceBenchJob {
    model: PathBuf,
    fact: engram_datasets::facts::UserFact,
    samples: usize,
    json: bool,
    label: String,
}

impl BackendJob for TraceBenchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let lm = load::<B>(&self.model, &device)?;
        let row = bench::trace_speed(&lm, &self.fact, self.samples)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&row)?);
        } else {
            println!(
                "causal trace, one fact ({} tokens x {} layers x 3 kinds, {} samples), {}:",
                row.tokens, row.layers, row.samples, self.label
            );
            println!(
                "  naive (one restoration per forward pass): {:>9.1} ms",
                row.naive_ms
            );
            println!(
                "  engram (batched, prefix reuse):           {:>9.1} ms",
                row.engram_ms
            );
            println!(
                "  speed-up: x{:.2}   max |difference|: {:.2e}",
                row.speedup, row.max_abs_diff
            );
        }
        Ok(())
    }
}

struct PatchJob(PatchArgs);

impl BackendJob for PatchJob {
    type Output = ();
    type Error = anyhow::Error;
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        use engram_analysis::jobs::patch::{prepare, run_patch, Corruption};
        use engram_analysis::patching::PatchSite;
        let a = self.0;
        let sites = a
            .sites
            .iter()
            .map(|s| {
                PatchSite::ALL
                    .into_iter()
                    .find(|x| x.name() == s.trim())
                    .with_context(|| {
                        format!("unknown site {s:?}: use resid_pre, attn_out, mlp_out or head_out")
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let corruption = match (&a.corrupt_subject, &a.corrupted_prompt) {
            (Some(s), _) => Corruption::Subject(s.clone()),
            (None, Some(p)) => Corruption::Prompt(p.clone()),
            (None, None) => bail!("give --corrupt-subject or --corrupted-prompt"),
        };
        let lm = load::<B>(&a.model, &device)?;
        let setup = prepare(&lm, &a.prompt, &a.subject, &a.target, &corruption)?;
        let root = a.runs.unwrap_or_else(|| settings().runs.clone());
        let store = engram_datasets::RunStore::open(root)?;
        let (info, report) = run_patch(
            &lm,
            &a.model.display().to_string(),
            &store,
            &a.subject,
            &setup,
            &sites,
        )?;
        println!(
            "clean:     {:?}  logit diff {:+.4}",
            setup.clean_prompt, report.clean_logit_diff
        );
        println!(
            "corrupted: {:?}  logit diff {:+.4}  ({:?} vs {:?})",
            setup.corrupted_prompt,
            report.corrupted_logit_diff,
            lm.tokenizer.token_text(setup.answer),
            lm.tokenizer.token_text(setup.wrong)
        );
        for s in &report.sites {
            let best = s
                .recovery
                .iter()
                .enumerate()
                .flat_map(|(l, row)| row.iter().enumerate().map(move |(i, &r)| (l, i, r)))
                .max_by(|x, y| x.2.total_cmp(&y.2));
            if let Some((layer, i, r)) = best {
                let what = if s.site == PatchSite::HeadOut {
                    format!("head {i}")
                } else {
                    format!("position {i} {:?}", lm.tokenizer.token_text(setup.clean[i]))
                };
                println!(
                    "{:>9}: best recovery {r:+.3} at layer {layer}, {what}",
                    s.site.name()
                );
            }
        }
        println!("run {} in {}", info.id, info.dir.display());
        Ok(())
    }
}

/// The lens grid: top token per layer (rows) and position (columns).
fn print_lens(
    report: &engram_analysis::jobs::lens::LensReport,
    site: engram_analysis::lens::LensSite,
) {
    let clip = |s: &str| -> String { s.chars().take(12).collect() };
    println!("logit lens ({site:?}), top token per layer (rows) and position (columns):");
    print!("{:>6}", "");
    for t in &report.tokens {
        print!(" {:>12}", clip(t));
    }
    println!();
    for layer in 0..report.n_layers {
        print!("{layer:>6}");
        for position in 0..report.tokens.len() {
            if let Some(c) = report.cell(position, layer) {
                print!(
                    " {:>12}",
                    clip(&format!("{}:{:.2}", c.top_token.trim(), c.prob))
                );
            }
        }
        println!();
    }
    println!(
        "stored as run {} ({})",
        report.run.id,
        report.run.dir.display()
    );
}

/// `engram probe`: probe, store, and print the per-layer table.
fn run_probe(
    lm: &LanguageModel<engram_model::Cpu>,
    model: &Path,
    a: &engram_analysis::jobs::probe::ProbeArgs<'_>,
    store: &engram_datasets::RunStore,
) -> Result<()> {
    let r = engram_analysis::jobs::probe::probe_report(
        lm,
        &model.display().to_string(),
        a,
        store,
        settings(),
        &stderr_control(),
    )?;
    println!(
        "{} samples, {} labels of `{}` with >= {} samples ({} records skipped: subject not found)",
        r.samples,
        r.classes.len(),
        a.label,
        a.min_count,
        r.skipped
    );
    println!(
        "activations {}",
        if r.cached {
            "read from the cache"
        } else {
            "collected and cached"
        }
    );
    println!(
        "{:>6} {:>18} {:>10} {:>18} {:>12}",
        "layer",
        if a.regress {
            "R² [95% CI]"
        } else {
            "accuracy [95% CI]"
        },
        if a.regress { "MSE" } else { "macro-F1" },
        "control",
        "selectivity"
    );
    for l in &r.layers {
        println!(
            "{:>6} {:>7.3} [{:.3},{:.3}] {:>10.3} {:>18.3} {:>12.3}",
            l.layer,
            l.accuracy.mean,
            l.accuracy.ci_low,
            l.accuracy.ci_high,
            l.macro_f1.mean,
            l.control.mean,
            l.selectivity.mean
        );
    }
    println!(
        "{:.1} s; stored as run {} ({}), figure probe.svg / probe.png",
        r.seconds,
        r.run_id,
        r.run_dir.display()
    );
    Ok(())
}
