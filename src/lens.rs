//! `engram lens`: the logit lens for one prompt, printed and stored as a run.

use std::path::Path;

use anyhow::Result;
use engram_analysis::lens::{logit_lens, LensSite};
use engram_datasets::figures::LensCell;
use engram_datasets::{RunParams, RunStore};
use engram_model::device::Cpu;
use engram_model::LanguageModel;

/// Decode every layer's residual at every position; store the top token per cell.
pub fn run_lens(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    prompt: &str,
    site: LensSite,
    store: &RunStore,
) -> Result<String> {
    let ids = lm.encode_prompt(prompt)?;
    let lens = logit_lens(&lm.model, &ids, site)?;
    let mut cells = Vec::new();
    for (position, &id) in ids.iter().enumerate() {
        for (layer, top) in lens.top_k(position, 1).into_iter().enumerate() {
            let (tok, prob) = top[0];
            cells.push(LensCell {
                layer: layer as i64,
                position: position as i64,
                input_token: lm.tokenizer.token_text(id),
                top_token: lm.tokenizer.token_text(tok),
                prob: prob as f64,
            });
        }
    }
    let params = RunParams {
        model: model.display().to_string(),
        model_hash: model_hash(model)?,
        hyperparameters: serde_json::json!({"prompt": prompt, "site": format!("{site:?}")}),
        dataset: None,
        record_ids: vec![],
        seed: None,
        engram_version: env!("CARGO_PKG_VERSION").into(),
        device: "cpu".into(),
    };
    let run = store.create("lens", params)?;
    run.write_rows("lens", &cells)?;
    let info = run.finish()?;

    let n_layers = lm.model.config.n_layers;
    println!("logit lens ({site:?}), top token per layer (rows) and position (columns):");
    print!("{:>6}", "");
    for &id in &ids {
        print!(" {:>12}", clip(&lm.tokenizer.token_text(id)));
    }
    println!();
    for layer in 0..n_layers {
        print!("{layer:>6}");
        for position in 0..ids.len() {
            let c = &cells[position * n_layers + layer];
            print!(
                " {:>12}",
                clip(&format!("{}:{:.2}", c.top_token.trim(), c.prob))
            );
        }
        println!();
    }
    println!("stored as run {} ({})", info.id, info.dir.display());
    Ok(info.id)
}

/// Content hash of a model: the file itself, or the weights, config and tokenizer in a directory.
pub fn model_hash(model: &Path) -> Result<String> {
    let resolved = crate::hub::resolve_model(model)?;
    let model = resolved.as_path();
    let files: Vec<std::path::PathBuf> = if model.is_file() {
        vec![model.to_path_buf()]
    } else {
        std::fs::read_dir(model)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|e| {
                        e == "safetensors" || e == "json" || e == "txt" || e == "gguf"
                    })
            })
            .collect()
    };
    Ok(engram_datasets::store::hash_files(&files)?)
}

fn clip(s: &str) -> String {
    s.chars().take(12).collect()
}
