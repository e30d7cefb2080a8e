//! The FFN memory jobs (Geva et al. 2021/2022, LM-Debugger; knowledge neurons
//! after Dai et al. 2022) shared by the CLI and the workbench: next-token
//! probabilities under memory interventions, the memories behind a
//! prediction, a corpus search for each memory's trigger contexts, and
//! knowledge-neuron attribution with the effect of suppressing and
//! amplifying the neurons. Each can store itself as a `memories` run.

use engram_datasets::{RunInfo, RunStore};
use engram_model::burn_tensor::activation::softmax;
use engram_model::burn_tensor::backend::Backend;
use engram_model::hooks::{Activation, BlockSite, Hook};
use engram_model::{Batch, Control, HookPoint, LanguageModel};
use serde_json::{json, Map, Value};

use super::run_params;
use crate::error::{bail, AnalysisError, Result};
use crate::memories::{
    integrated_gradients, knowledge_neurons, top_k, top_memories, Attribution, Intervention,
    LayerMemories, MemoryHook, Setting, TokenScore, Trigger, TriggerSearch,
};

/// A table row of a `memories` run.
pub type Row = Map<String, Value>;

/// `v` as a row (an object; anything else becomes an empty row).
pub fn row(v: Value) -> Row {
    match v {
        Value::Object(m) => m,
        _ => Row::new(),
    }
}

/// Store `tables` as one `memories` run of `action` (values, top, lens, triggers, attribute).
pub fn store_memories_run<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    store: &RunStore,
    action: &str,
    params: Value,
    tables: &[(&str, &[Row])],
) -> Result<RunInfo> {
    let params = run_params(lm, model, json!({"action": action, "params": params}))?;
    let run = store.create("memories", params)?;
    for (name, rows) in tables {
        run.write_rows(name, rows)?;
    }
    Ok(run.finish()?)
}

/// The output distribution at `pos` with `hook` on the forward pass.
pub fn probs_at<B: Backend, H: Hook<B>>(
    lm: &LanguageModel<B>,
    ids: &[u32],
    pos: usize,
    hook: &mut H,
) -> Result<Vec<f32>> {
    if pos >= ids.len() {
        bail!("position {pos}: the prompt has {} tokens", ids.len());
    }
    let logits = lm.model.forward(&Batch::single(ids), hook)?;
    let v = logits.dims()[2];
    let p: Vec<f32> = softmax(logits, 2)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| AnalysisError::Invalid(format!("reading probabilities: {e:?}")))?;
    Ok(p[pos * v..(pos + 1) * v].to_vec())
}

/// What the memories behind a prediction are asked.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRequest {
    pub prompt: String,
    /// Read at the subject's last token (else `position`, else the last token).
    pub subject: Option<String>,
    pub position: Option<usize>,
    /// Report this answer's rank and probability.
    pub target: Option<String>,
    pub per_layer: usize,
    /// Tokens listed per memory.
    pub k: usize,
    pub interventions: Vec<Intervention>,
    /// Also continue the prompt greedily for this many tokens, without and
    /// with the interventions (which then act on every generated position too).
    pub generate: usize,
}

/// A greedy continuation without and with the interventions.
#[derive(Debug, Clone, PartialEq)]
pub struct Continuation {
    pub plain: String,
    pub intervened: String,
}

/// The memories behind a prediction, under the request's interventions.
#[derive(Debug, Clone)]
pub struct TopReport {
    pub ids: Vec<u32>,
    pub position: usize,
    pub target: Option<u32>,
    /// The next token's top 5 without and with the interventions.
    pub next_clean: Vec<TokenScore>,
    pub next_now: Vec<TokenScore>,
    pub layers: Vec<LayerMemories>,
    /// Where the request asked for one.
    pub continuation: Option<Continuation>,
}

/// Rank each layer's memories at the request's position by |aᵢ|·‖vᵢ‖.
pub fn top_memories_job<B: Backend>(lm: &LanguageModel<B>, req: &TopRequest) -> Result<TopReport> {
    let c = &lm.model.config;
    check_memories(
        c.n_layers,
        c.d_mlp,
        req.interventions.iter().map(|i| (i.layer, i.memory)),
    )?;
    let ids = lm.encode_prompt(&req.prompt)?;
    let position = match (req.position, req.subject.as_deref().map(str::trim)) {
        (Some(p), _) => p,
        (None, Some(s)) if !s.is_empty() => lm.tokenizer.subject_span(&req.prompt, s)?.1.end - 1,
        _ => ids.len() - 1,
    };
    if position >= ids.len() {
        bail!("--position {position}: the prompt has {} tokens", ids.len());
    }
    let target = match req.target.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Some(lm.target_tokens(&req.prompt, t)?[0]),
        _ => None,
    };
    let last = ids.len() - 1;
    let clean = probs_at(lm, &ids, last, &mut MemoryHook::new(&[], None))?;
    let now = probs_at(
        lm,
        &ids,
        last,
        &mut MemoryHook::new(&req.interventions, None),
    )?;
    let layers = top_memories(
        &lm.model,
        &ids,
        position,
        target,
        req.per_layer,
        req.k,
        MemoryHook::new(&req.interventions, None),
    )?;
    let continuation = match req.generate {
        0 => None,
        n => Some(continuation(lm, &ids, n, &req.interventions)?),
    };
    Ok(TopReport {
        ids,
        position,
        target,
        next_clean: top_k(&clean, 5, false),
        next_now: top_k(&now, 5, false),
        layers,
        continuation,
    })
}

/// Greedy continuations of `ids` (KV cache), unhooked and with the
/// interventions on every position, the prompt's and each generated one.
pub fn continuation<B: Backend>(
    lm: &LanguageModel<B>,
    ids: &[u32],
    max_new_tokens: usize,
    interventions: &[Intervention],
) -> Result<Continuation> {
    let cfg = engram_model::GenerateConfig {
        max_new_tokens,
        sampling: engram_model::Sampling::Greedy,
        stop_at_eos: true,
        kv_cache: true,
    };
    let prompts = [ids.to_vec()];
    let run = |hook: &mut MemoryHook| -> Result<String> {
        let out = engram_model::generate_hooked(&lm.model, &prompts, &cfg, hook, |_| true)?;
        Ok(lm
            .tokenizer
            .decode(out.first().map_or(&[][..], Vec::as_slice))?)
    };
    Ok(Continuation {
        plain: run(&mut MemoryHook::new(&[], None))?,
        intervened: run(&mut MemoryHook::new(interventions, None))?,
    })
}

/// Tokens with their scores, `"tok" 0.12, …`, as the stored tables write them.
pub fn token_list<B: Backend>(lm: &LanguageModel<B>, list: &[TokenScore]) -> String {
    list.iter()
        .map(|t| format!("{:?} {:.2}", lm.tokenizer.token_text(t.id), t.score))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Store a [`TopReport`] as a `memories` run (action `top`, table `memories`:
/// a row per listed memory).
pub fn store_top_run<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    store: &RunStore,
    req: &TopRequest,
    report: &TopReport,
) -> Result<RunInfo> {
    let mut rows = Vec::new();
    for l in &report.layers {
        for h in &l.memories {
            rows.push(row(json!({
                "layer": l.layer, "memory": h.memory, "coefficient": h.coefficient,
                "value_norm": h.value_norm, "score": h.score,
                "promotes": token_list(lm, &h.promotes),
                "target_rank_before": h.target_before.map(|s| s.rank),
                "target_prob_before": h.target_before.map(|s| s.prob),
                "target_rank_with": h.target_with.map(|s| s.rank),
                "target_prob_with": h.target_with.map(|s| s.prob),
            })));
        }
    }
    let interventions: Vec<Value> = req
        .interventions
        .iter()
        .map(|i| json!({"layer": i.layer, "memory": i.memory, "setting": format!("{:?}", i.setting)}))
        .collect();
    let continuations: Vec<Row> = report
        .continuation
        .iter()
        .flat_map(|c| {
            [
                row(json!({"interventions": false, "continuation": c.plain})),
                row(json!({"interventions": true, "continuation": c.intervened})),
            ]
        })
        .collect();
    let mut tables: Vec<(&str, &[Row])> = vec![("memories", &rows)];
    if !continuations.is_empty() {
        tables.push(("continuations", &continuations));
    }
    store_memories_run(
        lm,
        model,
        store,
        "top",
        json!({"prompt": req.prompt, "position": report.position, "target": req.target,
               "per_layer": req.per_layer, "interventions": interventions,
               "generate": req.generate}),
        &tables,
    )
}

/// Rows of a `values` table: each memory's norm and what it promotes and suppresses.
pub fn value_rows<B: Backend>(
    lm: &LanguageModel<B>,
    values: &[crate::memories::ValueProjection],
) -> Vec<Row> {
    values
        .iter()
        .map(|p| {
            row(json!({
                "layer": p.layer, "memory": p.memory, "norm": p.norm,
                "top": token_list(lm, &p.top), "bottom": token_list(lm, &p.bottom),
            }))
        })
        .collect()
}

/// Rows of a `fact_lens` table: the target's rank and probability entering
/// each block, after its attention and after its MLP.
pub fn fact_lens_rows(steps: &[crate::memories::FactStep]) -> Vec<Row> {
    steps
        .iter()
        .map(|s| {
            row(json!({
                "layer": s.layer, "rank_entering": s.entering.rank, "prob_entering": s.entering.prob,
                "rank_after_attn": s.after_attn.rank, "prob_after_attn": s.after_attn.prob,
                "rank_after_mlp": s.after_mlp.rank, "prob_after_mlp": s.after_mlp.prob,
            }))
        })
        .collect()
}

/// Rows of a `triggers` table: each memory's contexts, best first, the
/// triggering token apart.
pub fn trigger_rows<B: Backend>(lm: &LanguageModel<B>, report: &TriggerReport) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (li, &layer) in report.layers.iter().enumerate() {
        for (memory, list) in report.found[li].iter().enumerate() {
            for (rank, t) in list.iter().enumerate() {
                let (last, before) = t.context.split_last().unwrap_or((&0, &[]));
                rows.push(row(json!({
                    "layer": layer, "memory": memory, "rank": rank, "coefficient": t.coefficient,
                    "context": lm.tokenizer.decode(before)?, "token": lm.tokenizer.token_text(*last),
                })));
            }
        }
    }
    Ok(rows)
}

/// Rows of an `attributions` table: every prompt's, layer's and memory's attribution.
pub fn attribution_rows(report: &AttributionReport) -> Vec<Row> {
    let mut rows = Vec::new();
    for (pi, layers) in report.attributions.iter().enumerate() {
        for (layer, a) in layers.iter().enumerate() {
            for (memory, s) in a.scores.iter().enumerate() {
                rows.push(row(
                    json!({"prompt": pi, "layer": layer, "memory": memory, "attribution": s}),
                ));
            }
        }
    }
    rows
}

/// Every memory's best contexts in a corpus.
#[derive(Debug, Clone)]
pub struct TriggerReport {
    pub layers: Vec<usize>,
    /// `[layer][memory]`: best first.
    pub found: Vec<Vec<Vec<Trigger>>>,
    pub tokens_read: u64,
}

/// Stream `docs` in rows of `seq_len` tokens (8 rows a batch) and keep each
/// memory's `top_n` highest coefficients at `layers`, reading at most
/// `max_tokens`. Progress: `tokens` read.
pub fn search_triggers<B: Backend>(
    lm: &LanguageModel<B>,
    docs: &mut dyn Iterator<Item = Result<String>>,
    layers: &[usize],
    top_n: usize,
    max_tokens: usize,
    seq_len: usize,
    ctl: &Control,
) -> Result<TriggerReport> {
    if max_tokens == 0 || top_n == 0 {
        bail!("the search needs at least one token and one context per memory");
    }
    let seq_len = seq_len.clamp(2, lm.model.config.n_ctx);
    let mut search = TriggerSearch::new(&lm.model, layers, top_n)?;
    let mut batch: Vec<Vec<u32>> = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    let mut read = 0usize;
    'docs: for doc in docs {
        for id in lm.tokenizer.encode(&doc?)? {
            current.push(id);
            read += 1;
            if current.len() == seq_len {
                batch.push(std::mem::take(&mut current));
                if batch.len() == 8 {
                    search.feed(&lm.model, &batch)?;
                    batch.clear();
                    if !ctl.tick("tokens", read.min(max_tokens) as u64, max_tokens as u64) {
                        return Err(engram_model::Cancelled.into());
                    }
                }
            }
            if read >= max_tokens {
                break 'docs;
            }
        }
    }
    search.feed(&lm.model, &batch)?;
    let tokens_read = search.tokens;
    Ok(TriggerReport {
        layers: layers.to_vec(),
        found: search.finish(),
        tokens_read,
    })
}

/// One prompt's p(target) clean, with the knowledge neurons zeroed, and doubled.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronEffect {
    pub prompt: String,
    pub clean: f32,
    pub suppressed: f32,
    pub amplified: f32,
}

/// Attributions of a fact over its prompts, its knowledge neurons, and their effect.
#[derive(Debug, Clone)]
pub struct AttributionReport {
    /// `[prompt][layer]`
    pub attributions: Vec<Vec<Attribution>>,
    pub neurons: Vec<(usize, usize)>,
    pub effects: Vec<NeuronEffect>,
}

/// What knowledge-neuron attribution is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeRequest {
    pub prompts: Vec<String>,
    pub target: String,
    /// Integrated-gradients steps (zero baseline).
    pub steps: usize,
    /// Keep attributions above `t` × the prompt's largest.
    pub t: f32,
    /// Keep neurons shared by at least this share of the prompts.
    pub p: f32,
}

/// Integrated gradients of p(target) to every layer's coefficients at each
/// prompt's last token, the knowledge neurons, and p(target) with them zeroed
/// and doubled. Progress: `layers` done over all prompts.
pub fn attribute<B: Backend>(
    lm: &LanguageModel<B>,
    req: &AttributeRequest,
    ctl: &Control,
) -> Result<AttributionReport> {
    if req.prompts.is_empty() {
        bail!("give at least one prompt");
    }
    if req.steps == 0 {
        bail!("--steps 0: integrated gradients need at least one step");
    }
    let share = |x: f32| x > 0.0 && x <= 1.0;
    if !share(req.t) || !share(req.p) {
        bail!(
            "--t and --p are shares in (0, 1]; got t {} and p {}",
            req.t,
            req.p
        );
    }
    let n_layers = lm.model.config.n_layers;
    let total = (req.prompts.len() * n_layers) as u64;
    let mut attributions = Vec::with_capacity(req.prompts.len());
    for (pi, prompt) in req.prompts.iter().enumerate() {
        let ids = lm.encode_prompt(prompt)?;
        let tok = lm.target_tokens(prompt, &req.target)?[0];
        let mut layers = Vec::with_capacity(n_layers);
        for layer in 0..n_layers {
            if !ctl.tick("layers", (pi * n_layers + layer) as u64, total) {
                return Err(engram_model::Cancelled.into());
            }
            layers.push(integrated_gradients(
                &lm.model,
                &ids,
                ids.len() - 1,
                tok,
                layer,
                req.steps,
            )?);
        }
        attributions.push(layers);
    }
    let neurons = knowledge_neurons(&attributions, req.t, req.p);
    let mut effects = Vec::with_capacity(req.prompts.len());
    for prompt in &req.prompts {
        let ids = lm.encode_prompt(prompt)?;
        let tok = lm.target_tokens(prompt, &req.target)?[0] as usize;
        let last = ids.len() - 1;
        let zeroed = Intervention::each(&neurons, Setting::Zero);
        let clean = probs_at(lm, &ids, last, &mut MemoryHook::new(&[], Some(last)))?[tok];
        let suppressed = probs_at(lm, &ids, last, &mut MemoryHook::new(&zeroed, Some(last)))?[tok];
        let amplified = probs_at(lm, &ids, last, &mut ScaleHook::new(&neurons, last, 2.0))?[tok];
        effects.push(NeuronEffect {
            prompt: prompt.clone(),
            clean,
            suppressed,
            amplified,
        });
    }
    Ok(AttributionReport {
        attributions,
        neurons,
        effects,
    })
}

/// Multiplies chosen coefficients at one position by a factor.
struct ScaleHook {
    neurons: Vec<(usize, usize)>,
    position: usize,
    factor: f32,
}

impl ScaleHook {
    fn new(neurons: &[(usize, usize)], position: usize, factor: f32) -> Self {
        Self {
            neurons: neurons.to_vec(),
            position,
            factor,
        }
    }
}

impl<B: Backend> Hook<B> for ScaleHook {
    fn wants(&self, point: HookPoint) -> bool {
        point.site() == Some(BlockSite::MlpPost)
            && point
                .layer()
                .is_some_and(|l| self.neurons.iter().any(|&(nl, _)| nl == l))
    }

    // mlp.hook_post: [batch, seq, d_mlp]
    fn call(&mut self, point: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        let x = act.as_rank3()?;
        let [_, s, m] = x.dims();
        let layer = point.layer()?;
        let mut scale = vec![1f32; s * m];
        for &(l, i) in &self.neurons {
            if l == layer && i < m && self.position < s {
                scale[self.position * m + i] = self.factor;
            }
        }
        let scale = engram_model::burn_tensor::Tensor::<B, 3>::from_data(
            engram_model::burn_tensor::TensorData::new(scale, [1, s, m]),
            &x.device(),
        );
        Some(Activation::Rank3(x.clone() * scale))
    }
}

/// Every (layer, memory) names a memory of the model: layer below `n_layers`,
/// index below `d_mlp`.
pub fn check_memories(
    n_layers: usize,
    d_mlp: usize,
    memories: impl IntoIterator<Item = (usize, usize)>,
) -> Result<()> {
    for (layer, memory) in memories {
        if layer >= n_layers || memory >= d_mlp {
            bail!(
                "memory {layer}:{memory} does not exist: layers are 0..{}, memories 0..{} per layer",
                n_layers.saturating_sub(1),
                d_mlp.saturating_sub(1)
            );
        }
    }
    Ok(())
}
