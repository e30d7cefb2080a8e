//! The `engram` command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use engram::model::device::Cpu;
use engram::model::lm::top_k_from_logits;
use engram::model::{Batch, DeviceSpec, LanguageModel, TokenProb};
use serde_json::json;

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
        /// A local HF model directory (config.json + safetensors + tokenizer).
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The most likely next tokens after a prompt.
    Run {
        model: PathBuf,
        #[arg(long, required_unless_present = "ids")]
        prompt: Option<String>,
        /// Comma-separated token ids instead of a prompt.
        #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
        ids: Option<Vec<u32>>,
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print figures measured side by side.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
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

fn load(model: &Path, device: DeviceSpec) -> Result<LanguageModel<Cpu>> {
    if device != DeviceSpec::Cpu {
        bail!("device {device} is not available in this build; use --device cpu");
    }
    LanguageModel::<Cpu>::load(model, &Default::default())
        .with_context(|| format!("loading model from {}", model.display()))
}

fn main() -> std::process::ExitCode {
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
        Command::Info { model, json } => info(&model, json),
        Command::Run {
            model,
            prompt,
            ids,
            top_k,
            device,
            json,
        } => run(&model, prompt, ids, top_k, device, json),
        Command::Bench { which } => match which {
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

fn info(model: &Path, as_json: bool) -> Result<()> {
    let lm = load(model, DeviceSpec::Cpu)?;
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
    println!(
        "block         {}",
        if c.parallel_attn_mlp {
            "parallel attention + MLP"
        } else {
            "sequential"
        }
    );
    println!("hook points   {}", hooks.len());
    for h in hooks {
        println!("  {h}");
    }
    Ok(())
}

fn run(
    model: &Path,
    prompt: Option<String>,
    ids: Option<Vec<u32>>,
    top_k: usize,
    device: DeviceSpec,
    as_json: bool,
) -> Result<()> {
    let lm = load(model, device)?;
    let ids = match (ids, &prompt) {
        (Some(ids), _) => ids,
        (None, Some(p)) => lm.encode_prompt(p)?,
        (None, None) => bail!("give --prompt or --ids"),
    };
    let logits = lm.model.logits(&Batch::single(&ids))?;
    let last = engram::model::transformer::last_position(logits, &[ids.len() - 1]);
    let last: Vec<f32> = last
        .into_data()
        .into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let top: Vec<TokenProb> = top_k_from_logits(&last, top_k, |id| lm.tokenizer.token_text(id));
    if as_json {
        let v = json!({
            "prompt": prompt,
            "input_ids": ids,
            "input_tokens": ids.iter().map(|&i| lm.tokenizer.token_text(i)).collect::<Vec<_>>(),
            "top_k": top,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(p) = &prompt {
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
    Ok(())
}

fn bench_hooks(model: &Path, batch: usize, seq: usize, iters: usize, as_json: bool) -> Result<()> {
    let lm = load(model, DeviceSpec::Cpu)?;
    let seq = seq.min(lm.model.config.n_ctx);
    let rows = engram::bench::hook_overhead(&lm, batch, seq, iters)?;
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
