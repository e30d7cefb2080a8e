//! `engram memories …`: FFN key-value memories from the command line (Geva et
//! al. 2021/2022, LM-Debugger; knowledge neurons after Dai et al. 2022). Each
//! action prints its result and stores a `memories` run.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engram_analysis::memories::{
    fact_lens, integrated_gradients, knowledge_neurons, top_memories, value_index,
    value_projections, Intervention, MemoryHook, Setting, TokenScore, TriggerSearch,
};
use engram_datasets::{RunParams, RunStore};
use engram_model::device::Cpu;
use engram_model::LanguageModel;
use serde_json::{json, Map, Value};

type Row = Map<String, Value>;

fn row(v: Value) -> Row {
    match v {
        Value::Object(m) => m,
        _ => Row::new(),
    }
}

fn tokens(lm: &LanguageModel<Cpu>, list: &[TokenScore]) -> String {
    list.iter()
        .map(|t| format!("{:?} {:.2}", lm.tokenizer.token_text(t.id), t.score))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Store `tables` as one `memories` run; returns its id.
fn store_run(
    store: &RunStore,
    model: &Path,
    action: &str,
    params: Value,
    tables: &[(&str, &[Row])],
) -> Result<String> {
    let run = store.create(
        "memories",
        RunParams {
            model: model.display().to_string(),
            model_hash: crate::model_hash(model)?,
            hyperparameters: json!({"action": action, "params": params}),
            dataset: None,
            record_ids: vec![],
            seed: None,
            engram_version: env!("CARGO_PKG_VERSION").into(),
            device: "cpu".into(),
        },
    )?;
    for (name, rows) in tables {
        run.write_rows(name, rows)?;
    }
    let info = run.finish()?;
    println!("stored as run {} ({})", info.id, info.dir.display());
    Ok(info.id)
}

fn projection_rows(
    lm: &LanguageModel<Cpu>,
    v: &[engram_analysis::memories::ValueProjection],
) -> Vec<Row> {
    v.iter()
        .map(|p| {
            row(json!({
                "layer": p.layer, "memory": p.memory, "norm": p.norm,
                "top": tokens(lm, &p.top), "bottom": tokens(lm, &p.bottom),
            }))
        })
        .collect()
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
        println!("layer {} memory {} (|v| {:.3})", p.layer, p.memory, p.norm);
        println!("  promotes: {}", tokens(lm, &p.top));
        println!("  suppresses: {}", tokens(lm, &p.bottom));
    }
    let rows = projection_rows(lm, &v);
    store_run(
        store,
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
    for &layer in layers {
        let v = value_index(&lm.model, layer, k, &mut |done, total| {
            eprint!("\rlayer {layer}: {done}/{total} memories");
            true
        })?;
        rows.extend(projection_rows(lm, &v));
    }
    eprintln!();
    println!(
        "{} memories of {} layer(s) projected in {:.1} s",
        rows.len(),
        layers.len(),
        start.elapsed().as_secs_f64()
    );
    store_run(
        store,
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
}

/// `top`: the memories behind a prediction, layer by layer, optionally with
/// some switched off (`zero`) or boosted to the layer's max + 1 (`boost`).
pub fn top(
    lm: &LanguageModel<Cpu>,
    model: &Path,
    q: &TopQuery<'_>,
    store: &RunStore,
) -> Result<()> {
    let (ids, pos) = resolve_position(lm, q.prompt, q.subject, q.position)?;
    let target = match q.target {
        Some(t) => Some(lm.target_tokens(q.prompt, t)?[0]),
        None => None,
    };
    let mut iv: Vec<Intervention> = q
        .zero
        .iter()
        .map(|&(layer, memory)| Intervention {
            layer,
            memory,
            setting: Setting::Zero,
        })
        .collect();
    iv.extend(q.boost.iter().map(|&(layer, memory)| Intervention {
        layer,
        memory,
        setting: Setting::MaxPlus(1.0),
    }));
    iv.extend(q.set.iter().map(|&(layer, memory, v)| Intervention {
        layer,
        memory,
        setting: Setting::Value(v),
    }));
    if !iv.is_empty() {
        let before = lm.top_k(q.prompt, 5)?;
        let logits = lm.model.forward(
            &engram_model::Batch::single(&ids),
            &mut MemoryHook::new(&iv, None),
        )?;
        let v = logits.dims()[2];
        let probs: Vec<f32> = engram_model::burn_tensor::activation::softmax(logits, 2)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let last = &probs[(ids.len() - 1) * v..ids.len() * v];
        let after = engram_analysis::memories::top_k(last, 5, false);
        let show = |t: &[(String, f32)]| {
            t.iter()
                .map(|(s, p)| format!("{s:?} {p:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let b: Vec<(String, f32)> = before.iter().map(|t| (t.token.clone(), t.prob)).collect();
        let a: Vec<(String, f32)> = after
            .iter()
            .map(|t| (lm.tokenizer.token_text(t.id), t.score))
            .collect();
        println!("next token without interventions: {}", show(&b));
        println!("next token with {} intervention(s): {}", iv.len(), show(&a));
    }
    let hook = MemoryHook::new(&iv, None);
    let layers = top_memories(&lm.model, &ids, pos, target, q.per_layer, q.k, hook)?;
    println!(
        "position {pos} ({:?}); memories ranked by |coefficient| x |value|, with the tokens coefficient x value promotes",
        lm.tokenizer.token_text(ids[pos])
    );
    let mut rows = Vec::new();
    for l in &layers {
        let standing = |s: Option<engram_analysis::memories::TargetStanding>| {
            s.map(|s| format!(" target rank {} p {:.4};", s.rank, s.prob))
                .unwrap_or_default()
        };
        println!(
            "layer {}: before the MLP{} {}",
            l.layer,
            standing(l.target_before),
            tokens(lm, &l.before)
        );
        println!(
            "         after the MLP{} {}",
            standing(l.target_after),
            tokens(lm, &l.after)
        );
        for h in &l.memories {
            println!(
                "  memory {:>5} coef {:+.3} |v| {:.3}{}: {}",
                h.memory,
                h.coefficient,
                h.value_norm,
                h.target_with
                    .map(|s| format!(" -> target rank {} p {:.4}", s.rank, s.prob))
                    .unwrap_or_default(),
                tokens(lm, &h.promotes)
            );
            rows.push(row(json!({
                "layer": l.layer, "memory": h.memory, "coefficient": h.coefficient,
                "value_norm": h.value_norm, "score": h.score, "promotes": tokens(lm, &h.promotes),
                "target_rank_before": h.target_before.map(|s| s.rank),
                "target_prob_before": h.target_before.map(|s| s.prob),
                "target_rank_with": h.target_with.map(|s| s.rank),
                "target_prob_with": h.target_with.map(|s| s.prob),
            })));
        }
    }
    store_run(
        store,
        model,
        "top",
        json!({"prompt": q.prompt, "position": pos, "target": q.target, "per_layer": q.per_layer,
               "zero": q.zero, "boost": q.boost, "set": q.set}),
        &[("memories", &rows)],
    )?;
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
    println!(
        "{:>6} {:>16} {:>16} {:>16}",
        "layer", "entering", "after attn", "after MLP"
    );
    let mut rows = Vec::new();
    for s in &steps {
        let f = |x: engram_analysis::memories::TargetStanding| format!("#{} {:.4}", x.rank, x.prob);
        println!(
            "{:>6} {:>16} {:>16} {:>16}",
            s.layer,
            f(s.entering),
            f(s.after_attn),
            f(s.after_mlp)
        );
        rows.push(row(json!({
            "layer": s.layer, "rank_entering": s.entering.rank, "prob_entering": s.entering.prob,
            "rank_after_attn": s.after_attn.rank, "prob_after_attn": s.after_attn.prob,
            "rank_after_mlp": s.after_mlp.rank, "prob_after_mlp": s.after_mlp.prob,
        })));
    }
    match steps.iter().find(|s| s.after_mlp.rank == 0) {
        Some(s) => println!("{target:?} is first top-1 after layer {}", s.layer),
        None => println!("{target:?} never becomes top-1"),
    }
    store_run(
        store,
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
    let start = Instant::now();
    let seq_len = seq_len.clamp(2, lm.model.config.n_ctx);
    let mut search = TriggerSearch::new(&lm.model, layers, top_n)?;
    let mut batch: Vec<Vec<u32>> = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    let mut read = 0usize;
    let docs = engram_datasets::corpus::Corpus::open(corpus)?;
    'docs: for doc in docs {
        for id in lm.tokenizer.encode(&doc?)? {
            current.push(id);
            read += 1;
            if current.len() == seq_len {
                batch.push(std::mem::take(&mut current));
                if batch.len() == 8 {
                    search.feed(&lm.model, &batch)?;
                    batch.clear();
                    eprint!(
                        "\r{} tokens, {:.0} s",
                        search.tokens,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
            if read >= max_tokens {
                break 'docs;
            }
        }
    }
    search.feed(&lm.model, &batch)?;
    let tokens_read = search.tokens;
    eprintln!();
    let found = search.finish();
    println!(
        "{tokens_read} tokens of {} searched for {} layer(s) in {:.1} s",
        corpus.display(),
        layers.len(),
        start.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    for (li, &layer) in layers.iter().enumerate() {
        for (memory, list) in found[li].iter().enumerate() {
            for (rank, t) in list.iter().enumerate() {
                let (last, before) = t.context.split_last().unwrap_or((&0, &[]));
                let text = lm.tokenizer.decode(before)?;
                let token = lm.tokenizer.token_text(*last);
                if show.contains(&memory) {
                    println!(
                        "layer {layer} memory {memory} #{rank} {:+.3}: {text}[[{token}]]",
                        t.coefficient
                    );
                }
                rows.push(row(json!({
                    "layer": layer, "memory": memory, "rank": rank, "coefficient": t.coefficient,
                    "context": text, "token": token,
                })));
            }
        }
    }
    store_run(
        store,
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
    let n_layers = lm.model.config.n_layers;
    let mut all = Vec::new();
    let mut rows = Vec::new();
    for (pi, prompt) in prompts.iter().enumerate() {
        let ids = lm.encode_prompt(prompt)?;
        let tok = lm.target_tokens(prompt, target)?[0];
        let mut layers = Vec::with_capacity(n_layers);
        for layer in 0..n_layers {
            eprint!(
                "\rprompt {}/{}: layer {layer}/{n_layers}",
                pi + 1,
                prompts.len()
            );
            let a = integrated_gradients(&lm.model, &ids, ids.len() - 1, tok, layer, steps)?;
            for (memory, s) in a.scores.iter().enumerate() {
                rows.push(row(
                    json!({"prompt": pi, "layer": layer, "memory": memory, "attribution": s}),
                ));
            }
            layers.push(a);
        }
        all.push(layers);
    }
    eprintln!();
    let kn = knowledge_neurons(&all, t, p);
    println!(
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
    for prompt in prompts {
        let ids = lm.encode_prompt(prompt)?;
        let tok = lm.target_tokens(prompt, target)?[0];
        let last = ids.len() - 1;
        let prob_with = |setting: Option<Setting>| -> Result<f32> {
            let iv: Vec<Intervention> = match setting {
                None => Vec::new(),
                Some(s) => kn
                    .iter()
                    .map(|&(layer, memory)| Intervention {
                        layer,
                        memory,
                        setting: s,
                    })
                    .collect(),
            };
            let mut hook = MemoryHook::new(&iv, Some(last));
            let logits = lm
                .model
                .forward(&engram_model::Batch::single(&ids), &mut hook)?;
            let v = logits.dims()[2];
            let probs: Vec<f32> = engram_model::burn_tensor::activation::softmax(logits, 2)
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(probs[last * v + tok as usize])
        };
        let clean = prob_with(None)?;
        let zero = prob_with(Some(Setting::Zero))?;
        let doubled = amplified(lm, &ids, last, tok, &kn, 2.0)?;
        println!(
            "{prompt:?} -> {target:?}: p clean {clean:.4}, knowledge neurons suppressed {zero:.4}, amplified x2 {doubled:.4}"
        );
        effects.push(row(
            json!({"prompt": prompt, "clean": clean, "suppressed": zero, "amplified": doubled}),
        ));
    }
    let neurons: Vec<Row> = kn
        .iter()
        .map(|&(layer, memory)| row(json!({"layer": layer, "memory": memory})))
        .collect();
    store_run(
        store,
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

/// p(target) with the neurons' coefficients at `pos` multiplied by `factor`.
fn amplified(
    lm: &LanguageModel<Cpu>,
    ids: &[u32],
    pos: usize,
    target: u32,
    neurons: &[(usize, usize)],
    factor: f32,
) -> Result<f32> {
    use engram_model::hooks::{Activation, BlockSite};
    use engram_model::HookPoint;
    let m = lm.model.config.d_mlp;
    let points: Vec<HookPoint> = neurons
        .iter()
        .map(|&(l, _)| HookPoint::block(l, BlockSite::MlpPost))
        .collect();
    let neurons = neurons.to_vec();
    let mut hook = engram_model::fn_hook::<Cpu, _>(points, move |point, act: &Activation<Cpu>| {
        let x = act.as_rank3()?;
        let [_, s, _] = x.dims();
        let layer = point.layer()?;
        let mut scale = vec![1f32; s * m];
        for &(l, i) in &neurons {
            if l == layer && i < m {
                scale[pos * m + i] = factor;
            }
        }
        let scale = engram_model::burn_tensor::Tensor::<Cpu, 3>::from_data(
            engram_model::burn_tensor::TensorData::new(scale, [1, s, m]),
            &x.device(),
        );
        Some(Activation::Rank3(x.clone() * scale))
    });
    let logits = lm
        .model
        .forward(&engram_model::Batch::single(ids), &mut hook)?;
    let v = logits.dims()[2];
    let probs: Vec<f32> = engram_model::burn_tensor::activation::softmax(logits, 2)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(probs[pos * v + target as usize])
}
