//! What every edit job needs before it starts: the checked-in hyperparameters
//! for a model, the statistics corpus (the demo corpus for the demo model,
//! otherwise a text file such as WikiText-2), C from the on-disk statistics
//! cache (`Settings::stats`), the context prefixes, and edit requests and
//! evaluation cases read from files.

use std::path::{Path, PathBuf};

use engram_model::burn_tensor::backend::Backend;
use engram_model::source::is_demo;
use engram_model::{Control, LanguageModel, Settings};

use crate::error::{bail, Context, Result};
use crate::memit::update::LayerMom2;
use crate::memit::MemitHparams;
use crate::rome::compute_u::KeyCovariance;
use crate::rome::{EditRequest, RomeHparams};
use crate::stats::{cached_stats, cached_stats_layers, StatsOptions};

/// The checked-in hyperparameter name for a model path (both methods use it).
fn builtin_name(model: &Path, settings: &Settings) -> Option<&'static str> {
    let name = model.to_string_lossy().to_lowercase();
    if is_demo(model, settings) {
        Some("demo")
    } else if name.contains("smollm2-135m") {
        Some("smollm2-135m")
    } else if name.contains("gpt2-xl") {
        Some("gpt2-xl")
    } else if name.contains("gpt-j-6b") {
        Some("gpt-j-6b")
    } else if name.contains("llama-3-8b") || name.contains("llama3-8b") {
        Some("llama3-8b")
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

/// `--hparams` for `method` (ROME or MEMIT): a checked-in name (`names`), a
/// JSON file, or (when absent) the model's own.
fn resolve<H>(
    method: &str,
    names: &str,
    (model, given, settings): (&Path, Option<&str>, &Settings),
    builtin: fn(&str) -> Option<H>,
    load: fn(&Path) -> Result<H>,
) -> Result<H> {
    if let Some(g) = given {
        return match builtin(g) {
            Some(h) => Ok(h),
            None => load(Path::new(g)),
        };
    }
    let guess = builtin_name(model, settings).with_context(|| {
        format!(
            "no checked-in {method} hyperparameters for {}: pass --hparams NAME|FILE (names: {names})",
            model.display()
        )
    })?;
    builtin(guess).with_context(|| format!("{method} hparams {guess}"))
}

/// ROME's `--hparams`: a checked-in name, a JSON file, or the model's own.
pub fn resolve_hparams(
    model: &Path,
    given: Option<&str>,
    settings: &Settings,
) -> Result<RomeHparams> {
    resolve(
        "ROME",
        "demo, smollm2-135m, gpt2-medium, gpt2-large, gpt2-xl, gpt-j-6b",
        (model, given, settings),
        RomeHparams::builtin,
        RomeHparams::load,
    )
}

/// The statistics text: `--corpus FILE`, or the demo corpus for the demo model.
pub fn corpus_text(
    model: &Path,
    corpus: Option<&Path>,
    settings: &Settings,
) -> Result<(String, String)> {
    match corpus {
        Some(p) => Ok((
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the statistics corpus {}", p.display()))?,
            p.display().to_string(),
        )),
        None if is_demo(model, settings) => Ok((
            engram_datasets::demo::demo_corpus_text(),
            "the demo corpus".into(),
        )),
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
    hp: &RomeHparams,
    corpus: Option<&Path>,
    max_tokens: usize,
    settings: &Settings,
    ctl: &Control,
) -> Result<(KeyCovariance, Vec<String>)> {
    let cov = key_covariance(lm, hp.layer()?, corpus, max_tokens, settings, ctl)?;
    Ok((cov.covariance, rome_templates(lm, hp)?))
}

/// ROME's context prefixes, written by the model.
pub fn rome_templates<B: Backend>(lm: &LanguageModel<B>, hp: &RomeHparams) -> Result<Vec<String>> {
    crate::rome::context::context_templates(
        &lm.model,
        &lm.tokenizer,
        &hp.context_template_length_params,
        0,
    )
}

/// C at one layer, factorised, and where it came from.
#[derive(Debug)]
pub struct LayerCovariance {
    pub covariance: KeyCovariance,
    /// Read from the statistics cache rather than computed now.
    pub cached: bool,
    /// The corpus's name.
    pub corpus: String,
    pub seconds: f64,
}

/// C at `layer` (cached under `settings.stats`), factorised; progress is
/// `statistics` key vectors done of the total.
pub fn key_covariance<B: Backend>(
    lm: &LanguageModel<B>,
    layer: usize,
    corpus: Option<&Path>,
    max_tokens: usize,
    settings: &Settings,
    ctl: &Control,
) -> Result<LayerCovariance> {
    let start = std::time::Instant::now();
    let hash = engram_model::source::model_hash(&lm.source)?;
    if let Some(stats) = npz_stats(lm, &hash, layer, corpus)? {
        return Ok(LayerCovariance {
            covariance: KeyCovariance::new(&stats.0)?,
            cached: true,
            corpus: stats.1,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let (text, name) = corpus_text(&lm.source, corpus, settings)?;
    let opts = StatsOptions {
        max_tokens,
        ..StatsOptions::new(layer)
    };
    let (stats, cached) = cached_stats(
        &settings.stats,
        &lm.model,
        &lm.tokenizer,
        &text,
        &hash,
        &opts,
        &mut |done, total| ctl.tick("statistics", done, total),
    )?;
    Ok(LayerCovariance {
        covariance: KeyCovariance::new(&stats)?,
        cached,
        corpus: name,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Whether `--corpus` names ROME/MEMIT statistics files (an `.npz`, or a
/// folder of them) rather than text.
pub fn is_npz_source(corpus: &Path) -> bool {
    corpus.is_dir()
        || corpus
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// A layer's statistics from ROME's `.npz` files: the file itself, or in a
/// folder the one whose name holds `.{layer}.` and `mom2` (ROME's
/// `transformer.h.{layer}.mlp.c_proj_float32_mom2_100000.npz`). `None` where
/// `corpus` is text. The width must be the layer's key width.
pub fn npz_stats<B: Backend>(
    lm: &LanguageModel<B>,
    model_hash: &str,
    layer: usize,
    corpus: Option<&Path>,
) -> Result<Option<(crate::stats::LayerStats, String)>> {
    let Some(corpus) = corpus.filter(|c| is_npz_source(c)) else {
        return Ok(None);
    };
    let file = if corpus.is_dir() {
        let want = format!(".{layer}.");
        let mut found: Vec<PathBuf> = std::fs::read_dir(corpus)
            .with_context(|| format!("reading {}", corpus.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
                n.is_some_and(|n| n.contains(&want) && n.contains("mom2") && n.ends_with(".npz"))
            })
            .collect();
        found.sort();
        match found.len() {
            1 => found.remove(0),
            0 => bail!(
                "{}: no statistics file for layer {layer} (a name with \".{layer}.\" and \"mom2\", ending .npz)",
                corpus.display()
            ),
            _ => bail!(
                "{}: several statistics files for layer {layer}: {found:?}",
                corpus.display()
            ),
        }
    } else {
        corpus.to_path_buf()
    };
    let key = crate::stats::StatsKey {
        model_hash: model_hash.into(),
        layer,
        corpus_hash: format!("npz:{}", file.display()),
        tokens: 0,
    };
    let stats = crate::npz::stats_from_npz(&file, key)?;
    let d_mlp = lm.model.config.d_mlp;
    if stats.dim != d_mlp {
        bail!(
            "{}: statistics of width {}, but layer {layer}'s keys have {d_mlp}",
            file.display(),
            stats.dim
        );
    }
    let name = format!("{} ({} key vectors)", file.display(), stats.key.tokens);
    Ok(Some((stats, name)))
}

/// Demo facts as CounterFact-style cases: the first phrasing is the rewrite
/// prompt, the other two the paraphrases, and the neighbourhood is up to five
/// other people with the same true attribute (as CounterFact picks them). The
/// new target is the relation's next answer.
pub fn demo_eval_cases() -> Vec<crate::eval::EvalCase> {
    use engram_datasets::demo::{demo_facts, DEMO_SUBJECTS, RELATIONS};
    let facts = demo_facts(DEMO_SUBJECTS, 0);
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
            crate::eval::EvalCase {
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

/// CounterFact records (either form) as evaluation cases, and the records
/// skipped as malformed (each naming the record and field).
pub fn counterfact_cases(path: &Path) -> Result<(Vec<crate::eval::EvalCase>, Vec<String>)> {
    let loaded =
        engram_datasets::facts::load_counterfact(path, engram_datasets::OnBadRecord::Skip)?;
    let skipped = loaded.skipped.iter().map(|e| e.to_string()).collect();
    let cases = loaded
        .records
        .into_iter()
        .map(|c| crate::eval::EvalCase {
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
        .collect();
    Ok((cases, skipped))
}

/// MEMIT's `--hparams`: a checked-in name, a JSON file, or the model's own.
pub fn resolve_memit_hparams(
    model: &Path,
    given: Option<&str>,
    settings: &Settings,
) -> Result<MemitHparams> {
    resolve(
        "MEMIT",
        "demo, smollm2-135m, gpt2-xl, gpt-j-6b",
        (model, given, settings),
        MemitHparams::builtin,
        MemitHparams::load,
    )
}

/// AlphaEdit's hyperparameters for `model`: `given` (a checked-in name or a
/// JSON file), else the model's checked-in file.
pub fn resolve_alphaedit_hparams(
    model: &Path,
    given: Option<&str>,
    settings: &Settings,
) -> Result<crate::alphaedit::AlphaEditHparams> {
    resolve(
        "AlphaEdit",
        "demo, smollm2-135m, gpt2-xl, gpt-j-6b, llama3-8b",
        (model, given, settings),
        crate::alphaedit::AlphaEditHparams::builtin,
        crate::alphaedit::AlphaEditHparams::load,
    )
}

/// FT-L's hyperparameters for `model`: `given` (a checked-in name or a JSON
/// file), else the model's checked-in file.
pub fn resolve_ft_hparams(
    model: &Path,
    given: Option<&str>,
    settings: &Settings,
) -> Result<crate::ft::FtHparams> {
    resolve(
        "FT-L",
        "demo, smollm2-135m, gpt2-xl, gpt-j-6b, llama3-8b",
        (model, given, settings),
        crate::ft::FtHparams::builtin,
        crate::ft::FtHparams::load,
    )
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
    hp: &MemitHparams,
    corpus: Option<&Path>,
    max_tokens: usize,
    settings: &Settings,
    ctl: &Control,
) -> Result<(Vec<LayerMom2>, Vec<Vec<String>>)> {
    let (covs, _) = memit_covs(lm, hp, corpus, max_tokens, settings, ctl)?;
    let groups = crate::rome::context::context_template_groups(
        &lm.model,
        &lm.tokenizer,
        &crate::rome::context::MEMIT_STARTS,
        &hp.context_template_length_params,
        0,
    )?;
    Ok((covs, groups))
}

/// C of each of `hp.layers` (identity without `mom2_adjustment`), and the
/// corpus's name.
pub fn memit_covs<B: Backend>(
    lm: &LanguageModel<B>,
    hp: &MemitHparams,
    corpus: Option<&Path>,
    max_tokens: usize,
    settings: &Settings,
    ctl: &Control,
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
    let hash = engram_model::source::model_hash(&lm.source)?;
    if corpus.is_some_and(is_npz_source) {
        let mut covs = Vec::new();
        let mut names = Vec::new();
        for &layer in &hp.layers {
            let (stats, name) = npz_stats(lm, &hash, layer, corpus)?
                .with_context(|| format!("no statistics file for layer {layer}"))?;
            covs.push(LayerMom2::new(&stats));
            names.push(name);
        }
        return Ok((covs, names.join(", ")));
    }
    let (text, name) = corpus_text(&lm.source, corpus, settings)?;
    let first = *hp
        .layers
        .first()
        .context("the MEMIT hyperparameters name no layer")?;
    let opts = StatsOptions {
        max_tokens,
        ..StatsOptions::new(first)
    };
    let stats = cached_stats_layers(
        &settings.stats,
        &lm.model,
        &lm.tokenizer,
        &text,
        &hash,
        &hp.layers,
        &opts,
        &mut |done, total| ctl.tick("statistics", done, total),
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
            .0
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
