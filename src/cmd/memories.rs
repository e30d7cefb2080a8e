//! `engram memories …`: FFN key-value memories from the command line (Geva et
//! al. 2021/2022, LM-Debugger; knowledge neurons after Dai et al. 2022). Each
//! action calls the analysis jobs, prints their result and stores a
//! `memories` run.

use std::path::Path;
use std::time::Instant;

use super::prelude::*;
use anyhow::{bail, Context, Result};
use engram_analysis::jobs::memories::{
    attribute as attribute_job, attribution_rows, fact_lens_rows, row, search_triggers,
    store_memories_run, store_top_run, token_list, top_memories_job, trigger_rows, value_rows,
    AttributeRequest, Row, TopRequest,
};
use engram_analysis::memories::{
    fact_lens, value_index, value_projections, Intervention, Setting, TokenScore,
};
use engram_datasets::RunStore;
use engram_model::device::Cpu;
use engram_model::LanguageModel;
use serde_json::json;

fn tokens(lm: &LanguageModel<Cpu>, list: &[TokenScore]) -> String {
    token_list(lm, list)
}

/// Store `tables` as one `memories` run and say so.
fn store_run(
    store: &RunStore,
    lm: &LanguageModel<Cpu>,
    model: &Path,
    action: &str,
    params: serde_json::Value,
    tables: &[(&str, &[Row])],
) -> Result<String> {
    let info = store_memories_run(
        lm,
        &model.display().to_string(),
        store,
        action,
        params,
        tables,
    )?;
    outln!("stored as run {} ({})", info.id, info.dir.display());
    Ok(info.id)
}

/// `values`: what chosen memories promote and suppress.
pub fn values(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    layer: usize,
    memories: &[usize],
    k: usize,
    store: &RunStore,
) -> Result<()> {
    let v = value_projections(&lm.model, layer, memories, k)?;
    for p in &v {
        outln!("layer {} memory {} (|v| {:.3})", p.layer, p.memory, p.norm);
        outln!("  promotes: {}", tokens(lm, &p.top));
        outln!("  suppresses: {}", tokens(lm, &p.bottom));
    }
    let rows = value_rows(lm, &v);
    store_run(
        store,
        lm,
        model,
        "values",
        json!({"layer": layer, "memories": memories, "k": k, "projection": "W_U · final-norm direction of v"}),
        &[("values", &rows)],
    )?;
    Ok(())
}

/// `index`: every memory of the chosen layers, one table.
pub fn index(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    layers: &[usize],
    k: usize,
    store: &RunStore,
) -> Result<()> {
    let start = Instant::now();
    let mut rows = Vec::new();
    let ctl = crate::stderr_control();
    for &layer in layers {
        let stage = format!("layer {layer} memories");
        let v = value_index(&lm.model, layer, k, &mut |done, total| {
            ctl.tick(&stage, done as u64, total as u64);
            true
        })?;
        rows.extend(value_rows(lm, &v));
    }
    outln!(
        "{} memories of {} layer(s) projected in {:.1} s",
        rows.len(),
        layers.len(),
        start.elapsed().as_secs_f64()
    );
    store_run(
        store,
        lm,
        model,
        "index",
        json!({"layers": layers, "k": k}),
        &[("values", &rows)],
    )?;
    Ok(())
}

/// Parse `L:i,L:i` into (layer, memory) pairs.
pub fn parse_memories(text: &str) -> Result<Vec<(usize, usize)>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (l, i) = s
                .trim()
                .split_once(':')
                .with_context(|| format!("`{s}`: write memories as LAYER:INDEX"))?;
            Ok((
                l.parse().with_context(|| format!("`{s}`: bad layer"))?,
                i.parse()
                    .with_context(|| format!("`{s}`: bad memory index"))?,
            ))
        })
        .collect()
}

/// Parse `L:i=v,L:i=v` into (layer, memory, value) settings.
pub fn parse_settings(text: &str) -> Result<Vec<(usize, usize, f32)>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (mem, v) = s
                .trim()
                .split_once('=')
                .with_context(|| format!("`{s}`: write LAYER:INDEX=VALUE"))?;
            let (l, i) = parse_memories(mem)?
                .first()
                .copied()
                .with_context(|| format!("`{s}`: write LAYER:INDEX=VALUE"))?;
            let v: f32 = v
                .trim()
                .parse()
                .with_context(|| format!("`{s}`: bad value"))?;
            if !v.is_finite() {
                bail!("`{s}`: the value must be finite");
            }
            Ok((l, i, v))
        })
        .collect()
}

/// Where to read: `position`, else the subject's last token, else the last token.
fn resolve_position(
    lm: &LanguageModel<Cpu>,
    prompt: &str,
    subject: Option<&str>,
    position: Option<usize>,
) -> Result<(Vec<u32>, usize)> {
    let ids = lm.encode_prompt(prompt)?;
    let pos = match (position, subject) {
        (Some(p), _) => p,
        (None, Some(s)) => lm.tokenizer.subject_span(prompt, s)?.1.end - 1,
        (None, None) => ids.len() - 1,
    };
    if pos >= ids.len() {
        bail!("--position {pos}: the prompt has {} tokens", ids.len());
    }
    Ok((ids, pos))
}

/// What `top` is asked.
pub struct TopQuery<'a> {
    pub prompt: &'a str,
    pub subject: Option<&'a str>,
    pub target: Option<&'a str>,
    pub position: Option<usize>,
    pub per_layer: usize,
    pub k: usize,
    pub zero: Vec<(usize, usize)>,
    pub boost: Vec<(usize, usize)>,
    /// Coefficients set to a value: (layer, memory, value).
    pub set: Vec<(usize, usize, f32)>,
    /// Greedy continuation length, without and with the interventions (0: none).
    pub generate: usize,
}

/// `top`: the memories behind a prediction, layer by layer, optionally with
/// some switched off (`zero`) or boosted to the layer's max + 1 (`boost`).
pub fn top(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    q: &TopQuery<'_>,
    store: &RunStore,
) -> Result<()> {
    let mut interventions = Intervention::each(&q.zero, Setting::Zero);
    interventions.extend(Intervention::each(&q.boost, Setting::MaxPlus(1.0)));
    interventions.extend(q.set.iter().map(|&(layer, memory, v)| Intervention {
        layer,
        memory,
        setting: Setting::Value(v),
    }));
    let n_interventions = interventions.len();
    let req = TopRequest {
        prompt: q.prompt.to_string(),
        subject: q.subject.map(String::from),
        position: q.position,
        target: q.target.map(String::from),
        per_layer: q.per_layer,
        k: q.k,
        interventions,
        generate: q.generate,
    };
    let r = top_memories_job(lm, &req)?;
    let pos = r.position;
    if n_interventions > 0 {
        let show = |t: &[TokenScore]| {
            t.iter()
                .map(|t| format!("{:?} {:.4}", lm.tokenizer.token_text(t.id), t.score))
                .collect::<Vec<_>>()
                .join(", ")
        };
        outln!("next token without interventions: {}", show(&r.next_clean));
        outln!(
            "next token with {n_interventions} intervention(s): {}",
            show(&r.next_now)
        );
    }
    outln!(
        "position {pos} ({:?}); memories ranked by |coefficient| x |value|, with the tokens coefficient x value promotes",
        lm.tokenizer.token_text(r.ids[pos])
    );
    for l in &r.layers {
        let standing = |s: Option<engram_analysis::memories::TargetStanding>| {
            s.map(|s| format!(" target rank {} p {:.4};", s.rank, s.prob))
                .unwrap_or_default()
        };
        outln!(
            "layer {}: before the MLP{} {}",
            l.layer,
            standing(l.target_before),
            tokens(lm, &l.before)
        );
        outln!(
            "         after the MLP{} {}",
            standing(l.target_after),
            tokens(lm, &l.after)
        );
        for h in &l.memories {
            outln!(
                "  memory {:>5} coef {:+.3} |v| {:.3}{}: {}",
                h.memory,
                h.coefficient,
                h.value_norm,
                h.target_with
                    .map(|s| format!(" -> target rank {} p {:.4}", s.rank, s.prob))
                    .unwrap_or_default(),
                tokens(lm, &h.promotes)
            );
        }
    }
    if let Some(c) = &r.continuation {
        outln!("continuation without interventions: {:?}", c.plain);
        outln!(
            "continuation with {n_interventions} intervention(s):  {:?}",
            c.intervened
        );
    }
    let info = store_top_run(lm, &model.display().to_string(), store, &req, &r)?;
    outln!("stored as run {} ({})", info.id, info.dir.display());
    Ok(())
}

/// `lens`: the target's rank entering each block, after attention, after the MLP.
pub fn lens(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    prompt: &str,
    target: &str,
    position: Option<usize>,
    store: &RunStore,
) -> Result<()> {
    let (ids, pos) = resolve_position(lm, prompt, None, position)?;
    let t = lm.target_tokens(prompt, target)?[0];
    let steps = fact_lens(&lm.model, &ids, pos, t)?;
    outln!(
        "{:>6} {:>16} {:>16} {:>16}",
        "layer",
        "entering",
        "after attn",
        "after MLP"
    );
    for s in &steps {
        let f = |x: engram_analysis::memories::TargetStanding| format!("#{} {:.4}", x.rank, x.prob);
        outln!(
            "{:>6} {:>16} {:>16} {:>16}",
            s.layer,
            f(s.entering),
            f(s.after_attn),
            f(s.after_mlp)
        );
    }
    let rows = fact_lens_rows(&steps);
    match steps.iter().find(|s| s.after_mlp.rank == 0) {
        Some(s) => outln!("{target:?} is first top-1 after layer {}", s.layer),
        None => outln!("{target:?} never becomes top-1"),
    }
    store_run(
        store,
        lm,
        model,
        "lens",
        json!({"prompt": prompt, "target": target, "position": pos}),
        &[("fact_lens", &rows)],
    )?;
    Ok(())
}

/// `triggers`: stream a corpus and keep each memory's top contexts.
#[allow(clippy::too_many_arguments)]
pub fn triggers(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    corpus: &Path,
    layers: &[usize],
    top_n: usize,
    max_tokens: usize,
    seq_len: usize,
    show: &[usize],
    store: &RunStore,
) -> Result<()> {
    let c = &lm.model.config;
    engram_analysis::jobs::memories::check_memories(
        c.n_layers,
        c.d_mlp,
        layers
            .iter()
            .flat_map(|&l| show.iter().map(move |&m| (l, m))),
    )?;
    let start = Instant::now();
    let mut docs = engram_datasets::corpus::Corpus::open(corpus)?
        .map(|d| d.map_err(engram_analysis::AnalysisError::from));
    let report = search_triggers(
        lm,
        &mut docs,
        layers,
        top_n,
        max_tokens,
        seq_len,
        &crate::stderr_control(),
    )?;
    let tokens_read = report.tokens_read;
    let seq_len = seq_len.clamp(2, lm.model.config.n_ctx);
    outln!(
        "{tokens_read} tokens of {} searched for {} layer(s) in {:.1} s",
        corpus.display(),
        layers.len(),
        start.elapsed().as_secs_f64()
    );
    let rows = trigger_rows(lm, &report)?;
    for r in rows.iter().filter(|r| {
        r.get("memory")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|m| show.contains(&(m as usize)))
    }) {
        let text = |k: &str| r.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
        let num = |k: &str| {
            r.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        let int = |k: &str| r.get(k).map(ToString::to_string).unwrap_or_default();
        outln!(
            "layer {} memory {} #{} {:+.3}: {}[[{}]]",
            int("layer"),
            int("memory"),
            int("rank"),
            num("coefficient"),
            text("context"),
            text("token")
        );
    }
    store_run(
        store,
        lm,
        model,
        "triggers",
        json!({"corpus": corpus.display().to_string(), "layers": layers, "top": top_n,
               "tokens": tokens_read, "seq_len": seq_len}),
        &[("triggers", &rows)],
    )?;
    Ok(())
}

/// `attribute`: knowledge neurons of a fact over its prompts, then the effect
/// of suppressing (zero) and amplifying (×2) them on each prompt.
#[allow(clippy::too_many_arguments)]
pub fn attribute(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    prompts: &[String],
    target: &str,
    steps: usize,
    t: f32,
    p: f32,
    store: &RunStore,
) -> Result<()> {
    let start = Instant::now();
    let r = attribute_job(
        lm,
        &AttributeRequest {
            prompts: prompts.to_vec(),
            target: target.to_string(),
            steps,
            t,
            p,
        },
        &crate::stderr_control(),
    )?;
    let rows = attribution_rows(&r);
    let kn = r.neurons;
    outln!(
        "{} knowledge neuron(s) (t = {t} x max, shared by >= {:.0}% of {} prompt(s); IG, zero baseline, {steps} steps) in {:.1} s: {}",
        kn.len(),
        p * 100.0,
        prompts.len(),
        start.elapsed().as_secs_f64(),
        kn.iter()
            .map(|(l, i)| format!("{l}:{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut effects = Vec::new();
    for e in &r.effects {
        outln!(
            "{:?} -> {target:?}: p clean {:.4}, knowledge neurons suppressed {:.4}, amplified x2 {:.4}",
            e.prompt, e.clean, e.suppressed, e.amplified
        );
        effects.push(row(
            json!({"prompt": e.prompt, "clean": e.clean, "suppressed": e.suppressed, "amplified": e.amplified}),
        ));
    }
    let neurons: Vec<Row> = kn
        .iter()
        .map(|&(layer, memory)| row(json!({"layer": layer, "memory": memory})))
        .collect();
    store_run(
        store,
        lm,
        model,
        "attribute",
        json!({"prompts": prompts, "target": target, "steps": steps, "t": t, "p": p,
               "baseline": "zero", "method": "integrated gradients (Dai et al. 2022)"}),
        &[
            ("attributions", &rows),
            ("neurons", &neurons),
            ("effects", &effects),
        ],
    )?;
    Ok(())
}

/// FFN key-value memories: values, top memories, triggers, knowledge neurons (CPU).
#[derive(Args)]
pub(crate) struct MemoriesArgs {
    /// The run store (default: $ENGRAM_RUNS, else ./runs).
    #[arg(long, global = true)]
    pub runs: Option<PathBuf>,
    #[command(subcommand)]
    pub which: MemoriesCommand,
}

#[derive(Subcommand)]
pub(crate) enum MemoriesCommand {
    /// What memories promote and suppress: top/bottom tokens of W_U · dir(v).
    Values {
        model: PathBuf,
        #[arg(long)]
        layer: usize,
        /// Memory indices, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        memory: Vec<usize>,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 10)]
        k: usize,
    },
    /// Every memory's projection for some layers (default: all), as one table.
    Index {
        model: PathBuf,
        #[arg(long, value_delimiter = ',')]
        layer: Vec<usize>,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 10)]
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
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 5)]
        per_layer: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 8)]
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
        /// Also continue the prompt greedily for N tokens, without and with the
        /// interventions (applied at every generated position too).
        #[arg(long, default_value_t = 0)]
        generate: usize,
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
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 10)]
        top: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = usize::MAX)]
        max_tokens: usize,
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 128)]
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
        #[arg(value_parser = crate::cmd::range::positive, long, default_value_t = 20)]
        steps: usize,
        /// Keep neurons above this share of a prompt's largest attribution.
        #[arg(value_parser = crate::cmd::range::share, long, default_value_t = 0.2)]
        t: f32,
        /// ... found for at least this share of the prompts.
        #[arg(value_parser = crate::cmd::range::share, long, default_value_t = 0.7)]
        p: f32,
    },
}

pub(crate) fn memories(runs: Option<PathBuf>, which: MemoriesCommand) -> Result<()> {
    use self as m;
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
            generate,
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
                generate,
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

/// Run `engram memories …`.
pub(crate) fn run(a: MemoriesArgs) -> Result<()> {
    memories(a.runs, a.which)
}
