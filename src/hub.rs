//! MODEL arguments: a local directory or `.gguf` file, or a Hugging Face hub id
//! (`openai-community/gpt2`, `gpt2-xl`) fetched and cached through `hf-hub`
//! where the network allows. Tests never reach this code's network path.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Whether `arg` reads as a hub id rather than a path.
pub fn looks_like_hub_id(arg: &str) -> bool {
    let parts: Vec<&str> = arg.split('/').collect();
    !arg.starts_with('.')
        && !arg.starts_with('/')
        && !arg.starts_with('~')
        && !arg.ends_with(".gguf")
        && (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Whether `arg` names the demo model: `demo`, or the directory it resolves to.
pub fn is_demo(arg: &Path) -> bool {
    arg == Path::new("demo")
        || crate::demo::demo_model_dir()
            .ok()
            .zip(std::fs::canonicalize(arg).ok())
            .is_some_and(|(d, a)| std::fs::canonicalize(d).ok() == Some(a))
}

/// A local path for `arg`: the path itself if it exists, else a hub download.
/// `demo` names the embedded demo model.
pub fn resolve_model(arg: &Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    if arg == Path::new("demo") {
        return crate::demo::demo_model_dir();
    }
    let text = arg.to_string_lossy();
    if !looks_like_hub_id(&text) {
        bail!("{}: no such file or directory", arg.display());
    }
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0") {
        bail!(
            "{text} is not a local path, and HF_HUB_OFFLINE is set, so the Hugging Face hub was not asked; \
             pass a local model directory instead (config.json + model.safetensors + tokenizer.json)"
        );
    }
    download(&text).with_context(|| {
        format!(
            "{text} is not a local path and could not be fetched from the Hugging Face hub \
             (offline?); pass a local model directory instead"
        )
    })
}

fn download(id: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::Api::new()?;
    let repo = api.model(id.to_string());
    let config = repo.get("config.json")?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .context("hub cache path has no parent")?;
    let _ = repo.get("tokenizer.json").or_else(|_| {
        repo.get("vocab.json")?;
        repo.get("merges.txt")
    })?;
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .context("index has no weight_map")?
                .values()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(&s)?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").context(
                "the repository has no model.safetensors (Engram refuses pickle checkpoints)",
            )?;
        }
    }
    Ok(dir)
}
