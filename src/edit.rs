//! `engram edit`, `engram memit` and `engram stats`: ROME and MEMIT from the
//! command line. Finds the checked-in hyperparameters for a model, the
//! statistics corpus (the demo corpus for the demo model, otherwise a text file
//! such as WikiText-2), and the on-disk statistics cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engram_editing::memit::update::LayerMom2;
use engram_editing::memit::MemitHparams;
use engram_editing::rome::compute_u::KeyCovariance;
use engram_editing::rome::{EditRequest, RomeHparams};
use engram_editing::stats::{cached_stats, cached_stats_layers, StatsOptions};
use engram_model::burn_tensor::backend::Backend;
use engram_model::LanguageModel;

/// Where layer statistics are cached: `$ENGRAM_STATS_DIR`, else
/// `$XDG_CACHE_HOME/engram/stats` or `~/.cache/engram/stats`.
pub fn stats_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ENGRAM_STATS_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("engram")
        .join("stats")
}

/// The checked-in hyperparameter name for a model path (both methods use it).
fn builtin_name(model: &Path) -> Option<&'static str> {
    let name = model.to_string_lossy().to_lowercase();
    if crate::hub::is_demo(model) {
        Some("demo")
    } else if name.contains("smollm2-135m") {
        Some("smollm2-135m")
    } else if name.contains("gpt2-xl") {
        Some("gpt2-xl")
    } else if name.contains("gpt-j-6b") {
        Some("gpt-j-6b")
    } else {
        None
    }
}

/// `--save DIR` is refused up front where DIR exists: saving never overwrites.
pub fn refuse_existing(save: Option<&Path>) -> Result<()> {
    if let Some(out) = save.filter(|o| o.exists()) {
        bail!(
            "--save {}: already exists; saving never overwrites",
            out.display()
        );
    }
    Ok(())
}

/// `--hparams`: a checked-in name, a JSON file, or (when absent) the model's own.
pub fn resolve_hparams(model: &Path, given: Option<&str>) -> Result<RomeHparams> {
    if let Some(g) = given {
        if let Some(h) = RomeHparams::builtin(g) {
            return Ok(h);
        }
        return RomeHparams::load(Path::new(g)).map_err(Into::into);
    }
    let guess = builtin_name(model).with_context(|| {
        format!(
            "no checked-in ROME hyperparameters for {}: pass --hparams NAME|FILE \
             (names: demo, smollm2-135m, gpt2-medium, gpt2-large, gpt2-xl, gpt-j-6b)",
            model.display()
        )
    })?;
    RomeHparams::builtin(guess).with_context(|| format!("hparams {guess}"))
}

/// The statistics text: `--corpus FILE`, or the demo corpus for the demo model.
pub fn corpus_text(model: &Path, corpus: Option<&Path>) -> Result<(String, String)> {
    match corpus {
        Some(p) => Ok((
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the statistics corpus {}", p.display()))?,
            p.display().to_string(),
        )),
        None if crate::hub::is_demo(model) => {
            Ok((crate::demo::demo_corpus_text(), "the demo corpus".into()))
        }
        None => bail!(
            "--corpus FILE is needed for the key statistics of {} (for example \
             ../shared/datasets/wikitext-2/valid.txt)",
            model.display()
        ),
    }
}

/// What every ROME edit at `hp`'s layer needs: C (cached on disk) factorised,
/// and the context prefixes the model writes.
pub fn rome_setup<B: Backend>(
    lm: &LanguageModel<B>,
    model: &Path,
    hp: &RomeHparams,
    corpus: Option<&Path>,
    max_tokens: usize,
) -> Result<(KeyCovariance, Vec<String>)> {
    let cov = key_covariance(lm, model, hp.layer()?, corpus, max_tokens, false)?;
    let templates = engram_editing::rome::context::context_templates(
        &lm.model,
        &lm.tokenizer,
        &hp.context_template_length_params,
        0,
    )?;
    Ok((cov, templates))
}

/// C at `layer` (cached on disk), factorised; prints progress to stderr.
pub fn key_covariance<B: Backend>(
    lm: &LanguageModel<B>,
    model: &Path,
    layer: usize,
    corpus: Option<&Path>,
    max_tokens: usize,
    quiet: bool,
) -> Result<KeyCovariance> {
    let start = std::time::Instant::now();
    let (cov, cached, name) =
        key_covariance_with(lm, model, layer, corpus, max_tokens, &mut |done, total| {
            if !quiet {
                eprint!("\rlayer {layer} statistics: {done}/{total} key vectors");
            }
            true
        })?;
    if !quiet {
        eprintln!(
            "\rlayer {layer} statistics: {} key vectors from {name}{} ({:.1} s)",
            cov.tokens,
            if cached { ", cached" } else { "" },
            start.elapsed().as_secs_f64()
        );
    }
    Ok(cov)
}

/// C at `layer` (cached on disk), factorised, reporting `progress(done, total)`
/// key vectors (false cancels). Also returns whether it came from the cache,
/// and the corpus's name.
pub fn key_covariance_with<B: Backend>(
    lm: &LanguageModel<B>,
    model: &Path,
    layer: usize,
    corpus: Option<&Path>,
    max_tokens: usize,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<(KeyCovariance, bool, String)> {
    let (text, name) = corpus_text(model, corpus)?;
    let hash = crate::lens::model_hash(model)?;
    let opts = StatsOptions {
        max_tokens,
        ..StatsOptions::new(layer)
    };
    let (stats, cached) = cached_stats(
        &stats_dir(),
        &lm.model,
        &lm.tokenizer,
        &text,
        &hash,
        &opts,
        progress,
    )?;
    Ok((KeyCovariance::new(&stats)?, cached, name))
}

/// Demo facts as CounterFact-style cases: the first phrasing is the rewrite
/// prompt, the other two the paraphrases, and the neighbourhood is up to five
/// other people with the same true attribute (as CounterFact picks them). The
/// new target is the relation's next answer.
pub fn demo_eval_cases() -> Vec<engram_editing::eval::EvalCase> {
    use engram_datasets::demo::{demo_facts, RELATIONS};
    let facts = demo_facts(crate::demo::DEMO_SUBJECTS, 0);
    facts
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let targets = RELATIONS
                .iter()
                .find(|r| r.id == f.relation)
                .map(|r| r.targets)
                .unwrap_or_default();
            let at = targets.iter().position(|t| *t == f.target).unwrap_or(0);
            let prompts = f.prompts();
            engram_editing::eval::EvalCase {
                case_id: i as u64,
                subject: f.subject.clone(),
                prompt: prompts[0].clone(),
                target_new: targets[(at + 1) % targets.len().max(1)].to_string(),
                target_true: f.target.clone(),
                paraphrases: prompts[1..].to_vec(),
                neighborhood: facts
                    .iter()
                    .filter(|g| {
                        g.subject != f.subject && g.relation == f.relation && g.target == f.target
                    })
                    .take(5)
                    .map(|g| g.prompts()[0].clone())
                    .collect(),
                neighborhood_target: f.target.clone(),
                generation_prompts: Vec::new(),
            }
        })
        .collect()
}

/// CounterFact records (either form) as evaluation cases.
pub fn counterfact_cases(path: &Path) -> Result<Vec<engram_editing::eval::EvalCase>> {
    let loaded =
        engram_datasets::facts::load_counterfact(path, engram_datasets::OnBadRecord::Skip)?;
    for e in &loaded.skipped {
        eprintln!("skipped record: {e}");
    }
    Ok(loaded
        .records
        .into_iter()
        .map(|c| engram_editing::eval::EvalCase {
            case_id: c.case_id,
            prompt: c.prompt(),
            subject: c.subject,
            target_new: c.target_new,
            target_true: c.target_true,
            paraphrases: c.paraphrase_prompts,
            neighborhood: c.neighborhood_prompts,
            neighborhood_target: c.neighborhood_target,
            generation_prompts: c.generation_prompts,
        })
        .collect())
}

/// `--hparams` for MEMIT: a checked-in name, a JSON file, or the model's own.
pub fn resolve_memit_hparams(model: &Path, given: Option<&str>) -> Result<MemitHparams> {
    if let Some(g) = given {
        if let Some(h) = MemitHparams::builtin(g) {
            return Ok(h);
        }
        return MemitHparams::load(Path::new(g)).map_err(Into::into);
    }
    let guess = builtin_name(model).with_context(|| {
        format!(
            "no checked-in MEMIT hyperparameters for {}: pass --hparams NAME|FILE \
             (names: demo, smollm2-135m, gpt2-xl, gpt-j-6b)",
            model.display()
        )
    })?;
    MemitHparams::builtin(guess).with_context(|| format!("MEMIT hparams {guess}"))
}

/// Threads for MEMIT's z chunks: `requested`, or where 0, every core on the
/// CPU (one chunk there keeps about one core busy) and 1 on a GPU.
pub fn z_workers(requested: usize, device: &engram_model::DeviceSpec) -> usize {
    match (requested, device) {
        (0, engram_model::DeviceSpec::Cpu) => {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }
        (0, _) => 1,
        (n, _) => n,
    }
}

/// What every MEMIT batch with `hp` needs: C of each edited layer (collected
/// together in one pass where not cached) and MEMIT's context prefixes in groups.
/// `progress(done, total)` key vectors; false cancels.
pub fn memit_setup<B: Backend>(
    lm: &LanguageModel<B>,
    model: &Path,
    hp: &MemitHparams,
    corpus: Option<&Path>,
    max_tokens: usize,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<(Vec<LayerMom2>, Vec<Vec<String>>)> {
    let (covs, _) = memit_covs(lm, model, hp, corpus, max_tokens, progress)?;
    let groups = engram_editing::rome::context::context_template_groups(
        &lm.model,
        &lm.tokenizer,
        &engram_editing::rome::context::MEMIT_STARTS,
        &hp.context_template_length_params,
        0,
    )?;
    Ok((covs, groups))
}

/// C of each of `hp.layers` (identity without `mom2_adjustment`), and the
/// corpus's name.
pub fn memit_covs<B: Backend>(
    lm: &LanguageModel<B>,
    model: &Path,
    hp: &MemitHparams,
    corpus: Option<&Path>,
    max_tokens: usize,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<(Vec<LayerMom2>, String)> {
    let d = lm.model.config.d_mlp;
    if !hp.mom2_adjustment {
        let covs = hp
            .layers
            .iter()
            .map(|&l| LayerMom2::identity(l, d))
            .collect();
        return Ok((covs, "identity".into()));
    }
    let (text, name) = corpus_text(model, corpus)?;
    let hash = crate::lens::model_hash(model)?;
    let opts = StatsOptions {
        max_tokens,
        ..StatsOptions::new(hp.layers[0])
    };
    let stats = cached_stats_layers(
        &stats_dir(),
        &lm.model,
        &lm.tokenizer,
        &text,
        &hash,
        &hp.layers,
        &opts,
        progress,
    )?;
    Ok((stats.iter().map(|(s, _)| LayerMom2::new(s)).collect(), name))
}

/// Edit requests from a file: CounterFact (the requested rewrite: its
/// `target_new`), or subject/prompt/target records (CSV, JSON, JSONL), where
/// the prompt contains the subject or `{}`.
pub fn load_requests(path: &Path) -> Result<Vec<EditRequest>> {
    let is_cf = !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        && engram_datasets::records::read_json_records(path)?
            .first()
            .is_some_and(|v| v.get("requested_rewrite").is_some() || v.get("target_new").is_some());
    if is_cf {
        return Ok(counterfact_cases(path)?
            .into_iter()
            .map(|c| EditRequest {
                prompt: c.prompt,
                subject: c.subject,
                target: c.target_new,
            })
            .collect());
    }
    let loaded = engram_datasets::facts::load_user_facts(path, engram_datasets::OnBadRecord::Fail)?;
    Ok(loaded
        .records
        .into_iter()
        .map(|f| EditRequest {
            prompt: f.prompt,
            subject: f.subject,
            target: f.target,
        })
        .collect())
}
