//! Step 1: context prefixes. ROME averages the subject's key over prompts that
//! start with short texts the model writes itself ("{}" plus `count` samples of
//! up to `len` tokens per `(len, count)`, top-k 5, from the starts "The",
//! "Therefore", "Because", "I", "You"), each followed by ". {}" (" . {}" where the
//! tokenizer splits words on whitespace only). MEMIT uses the same starts with
//! its own lengths, and averages per group.

use burn_tensor::backend::Backend;
use engram_model::generate::{generate_with, GenerateConfig, Sampling};
use engram_model::{Tokenizer, Transformer};

use crate::error::Result;

/// ROME's starts (`rome_main.get_context_templates`).
pub const ROME_STARTS: [&str; 5] = ["The", "Therefore", "Because", "I", "You"];
/// MEMIT's starts (`memit_main.get_context_templates`): ROME's own.
pub const MEMIT_STARTS: [&str; 5] = ROME_STARTS;

/// `["{}", "<generated>. {}", …]` with ROME's starts. Starts the tokenizer
/// cannot spell (the demo model's word vocabulary has no "Therefore") are left
/// out, and their share of samples goes to the others. Seeded, so the same
/// model gives the same prefixes.
pub fn context_templates<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    length_params: &[(usize, usize)],
    seed: u64,
) -> Result<Vec<String>> {
    Ok(
        context_template_groups(model, tokenizer, &ROME_STARTS, length_params, seed)?
            .into_iter()
            .flatten()
            .collect(),
    )
}

/// The templates in groups: `["{}"]`, then one group per `(len, count)`.
/// MEMIT averages keys within each group, then over groups.
pub fn context_template_groups<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    start_words: &[&str],
    length_params: &[(usize, usize)],
    seed: u64,
) -> Result<Vec<Vec<String>>> {
    let mut starts: Vec<Vec<u32>> = Vec::new();
    for s in start_words {
        let ids = tokenizer.encode(s)?;
        if !ids.is_empty() && tokenizer.decode(&ids)?.trim() == *s {
            starts.push(ids);
        }
    }
    // "text." is one unknown word to a whitespace word-level tokenizer (the demo's).
    let glued = tokenizer.encode("The.")?;
    let sep = if tokenizer.decode(&glued)?.trim() == "The." {
        ". "
    } else {
        " . "
    };
    let mut out = vec![vec!["{}".to_string()]];
    if starts.is_empty() {
        return Ok(out);
    }
    for (i, &(len, count)) in length_params.iter().enumerate() {
        let prompts: Vec<Vec<u32>> = (0..count)
            .map(|j| starts[j % starts.len()].clone())
            .collect();
        if prompts.is_empty() {
            continue;
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let cfg = GenerateConfig {
            max_new_tokens: len.saturating_sub(longest).max(1),
            sampling: Sampling::Sample {
                temperature: 1.0,
                top_k: Some(5),
                top_p: None,
                seed: seed.wrapping_add(1000 * i as u64),
            },
            stop_at_eos: true,
            kv_cache: true,
        };
        let gens = generate_with(model, &prompts, &cfg, |_| true)?;
        let mut group = Vec::with_capacity(prompts.len());
        for (p, g) in prompts.iter().zip(gens) {
            let mut ids = p.clone();
            let eos = model.config.eos_token_id;
            ids.extend(g.into_iter().filter(|&t| Some(t) != eos));
            let text = tokenizer.decode(&ids)?.replace(['{', '}'], " ");
            group.push(format!("{}{sep}{{}}", text.trim_end()));
        }
        out.push(group);
    }
    Ok(out)
}
