//! `engram info`: a model's architecture, sizes, parameter count and ordered hook list.

use super::prelude::*;

/// Architecture, sizes, parameter count and hook points of a model.
#[derive(Args)]
pub(crate) struct InfoArgs {
    /// A local HF model directory (config.json + safetensors + tokenizer) or a .gguf file.
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn run(a: InfoArgs) -> Result<()> {
    let lm = load::<engram_model::Cpu>(&a.model, &Default::default())?;
    info(&a.model, &lm, a.json)
}

pub(crate) fn info<B: Backend>(model: &Path, lm: &LanguageModel<B>, as_json: bool) -> Result<()> {
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
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!("model         {}", model.display());
    outln!(
        "architecture  {} (model_type {})",
        c.arch.name(),
        c.model_type
    );
    outln!("parameters    {}", c.parameter_count());
    outln!("layers        {}", c.n_layers);
    outln!("d_model       {}", c.d_model);
    outln!(
        "d_mlp         {}{}",
        c.d_mlp,
        if c.gated_mlp { " (gated)" } else { "" }
    );
    outln!(
        "heads         {} ({} key/value), d_head {}",
        c.n_heads,
        c.n_kv_heads,
        c.d_head
    );
    outln!(
        "vocab         {} (tokenizer {})",
        c.vocab_size,
        lm.tokenizer.vocab_size()
    );
    outln!("context       {}", c.n_ctx);
    outln!("norm          {:?}, eps {}", c.norm, c.norm_eps);
    match c.rotary {
        Some(r) => outln!(
            "positions     rotary {:?}, dim {}, theta {}",
            r.style,
            r.dim,
            r.theta
        ),
        None => outln!("positions     learned"),
    }
    let block = if c.parallel_attn_mlp {
        "parallel attention + MLP"
    } else {
        "sequential"
    };
    outln!("block         {block}");
    outln!("hook points   {}", hooks.len());
    for h in hooks {
        outln!("  {h}");
    }
    Ok(())
}
