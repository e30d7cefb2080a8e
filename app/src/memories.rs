//! The model side of the Memories panel (LM-Debugger's view, Geva et al.
//! 2022): the memories behind a prediction with interventions, a memory's
//! trigger contexts from a corpus, and knowledge-neuron attributions (Dai et
//! al. 2022). Runs on the worker thread.

use std::path::Path;

use engram_analysis::jobs::memories::{
    attribute as attribute_job, search_triggers, store_top_run, top_memories_job, AttributeRequest,
    TopRequest,
};
use engram_analysis::memories::{Intervention, Setting, TokenScore, Trigger};
use engram_model::burn_tensor::backend::Backend;
use engram_model::{Control, LanguageModel};

use crate::error::JobError;

/// What the panel asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoriesRequest {
    pub prompt: String,
    /// Read at the subject's last token; empty: the last token.
    pub subject: String,
    /// Report this answer's rank; empty: none.
    pub target: String,
    pub per_layer: usize,
    /// (layer, memory, boost): boost sets max + 1, otherwise the memory is switched off.
    pub interventions: Vec<(usize, usize, bool)>,
    /// Greedy continuation length (0: none); the interventions act on it too.
    pub generate: usize,
}

/// A token with its text and a score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub text: String,
    pub score: f32,
}

/// One memory as the panel lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRow {
    pub memory: usize,
    pub coefficient: f32,
    pub value_norm: f32,
    pub promotes: Vec<Scored>,
    /// p(target) with only this sub-update added to the residual before the MLP.
    pub target_with: Option<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    pub layer: usize,
    pub before: Vec<Scored>,
    pub after: Vec<Scored>,
    pub target_before: Option<(usize, f32)>,
    pub target_after: Option<(usize, f32)>,
    pub memories: Vec<MemoryRow>,
}

/// The memories view of one prompt, under the given interventions.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoriesView {
    pub request: MemoriesRequest,
    pub position: usize,
    pub position_token: String,
    /// Next-token distribution without and with the interventions.
    pub next_clean: Vec<Scored>,
    pub next_now: Vec<Scored>,
    pub layers: Vec<LayerRow>,
    /// The greedy continuation without and with the interventions.
    pub continuation: Option<(String, String)>,
    /// The stored `memories` run.
    pub run_id: String,
}

/// Trigger contexts of one memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggersView {
    pub layer: usize,
    pub memory: usize,
    /// (coefficient, context before, triggering token), best first.
    pub contexts: Vec<(f32, String, String)>,
    pub tokens_read: u64,
    pub corpus: String,
}

/// Knowledge-neuron attributions of a fact at the last token.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributionView {
    pub prompt: String,
    pub target: String,
    /// `[layer][memory]`
    pub scores: Vec<Vec<f32>>,
    pub neurons: Vec<(usize, usize)>,
    pub prob: f32,
    pub suppressed: f32,
}

fn scored<B: Backend>(lm: &LanguageModel<B>, list: &[TokenScore]) -> Vec<Scored> {
    list.iter()
        .map(|t| Scored {
            text: lm.tokenizer.token_text(t.id),
            score: t.score,
        })
        .collect()
}

fn interventions(list: &[(usize, usize, bool)]) -> Vec<Intervention> {
    let pick = |boost: bool| -> Vec<(usize, usize)> {
        list.iter()
            .filter(|&&(_, _, b)| b == boost)
            .map(|&(l, m, _)| (l, m))
            .collect()
    };
    let mut out = Intervention::each(&pick(false), Setting::Zero);
    out.extend(Intervention::each(&pick(true), Setting::MaxPlus(1.0)));
    out
}

/// The memories behind the request's prediction, stored as a `memories` run.
pub fn memories<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    req: &MemoriesRequest,
    store: &engram_datasets::RunStore,
) -> Result<MemoriesView, JobError> {
    let top = TopRequest {
        prompt: req.prompt.clone(),
        subject: Some(req.subject.clone()),
        position: None,
        target: Some(req.target.clone()),
        per_layer: req.per_layer,
        k: 6,
        interventions: interventions(&req.interventions),
        generate: req.generate,
    };
    let r = top_memories_job(lm, &top).map_err(JobError::from_lib)?;
    let run = store_top_run(lm, model, store, &top, &r).map_err(JobError::from_lib)?;
    let (layers, position) = (r.layers, r.position);
    let layers = layers
        .into_iter()
        .map(|l| LayerRow {
            layer: l.layer,
            before: scored(lm, &l.before),
            after: scored(lm, &l.after),
            target_before: l.target_before.map(|s| (s.rank, s.prob)),
            target_after: l.target_after.map(|s| (s.rank, s.prob)),
            memories: l
                .memories
                .iter()
                .map(|h| MemoryRow {
                    memory: h.memory,
                    coefficient: h.coefficient,
                    value_norm: h.value_norm,
                    promotes: scored(lm, &h.promotes),
                    target_with: h.target_with.map(|s| s.prob),
                })
                .collect(),
        })
        .collect();
    Ok(MemoriesView {
        request: req.clone(),
        position,
        position_token: lm.tokenizer.token_text(r.ids[position]),
        next_clean: scored(lm, &r.next_clean),
        next_now: scored(lm, &r.next_now),
        continuation: r.continuation.map(|c| (c.plain, c.intervened)),
        run_id: run.id,
        layers,
    })
}

/// One layer's trigger search: every memory's best contexts, the tokens
/// read and the corpus's name.
#[derive(Debug, Clone)]
pub struct LayerTriggers {
    pub best: Vec<Vec<Trigger>>,
    pub tokens_read: u64,
    pub corpus: String,
}

/// Search `corpus` (a text file; `None`: the demo corpus) for each memory's
/// highest coefficients at `layer`, reading at most `max_tokens`.
pub fn search_layer<B: Backend>(
    lm: &LanguageModel<B>,
    corpus: Option<&Path>,
    layer: usize,
    max_tokens: usize,
    ctl: &Control,
) -> Result<LayerTriggers, JobError> {
    let name = corpus.map_or_else(
        || "the demo corpus".to_string(),
        |c| c.display().to_string(),
    );
    let text = match corpus {
        Some(c) => {
            std::fs::read_to_string(c).map_err(|e| JobError::Failed(format!("{name}: {e}")))?
        }
        None => engram_datasets::demo::demo_corpus_text(),
    };
    let mut docs = text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| Ok(p.trim().to_string()));
    let seq = 64.min(lm.model.config.n_ctx);
    let report = search_triggers(lm, &mut docs, &[layer], 10, max_tokens, seq, ctl)
        .map_err(JobError::from_lib)?;
    Ok(LayerTriggers {
        best: report.found.into_iter().next().unwrap_or_default(),
        tokens_read: report.tokens_read,
        corpus: name,
    })
}

/// One memory's contexts from a layer's search.
pub fn triggers_view<B: Backend>(
    lm: &LanguageModel<B>,
    found: &LayerTriggers,
    layer: usize,
    memory: usize,
) -> Result<TriggersView, JobError> {
    let list = found.best.get(memory).ok_or_else(|| {
        JobError::Failed(format!("memory {memory} does not exist at layer {layer}"))
    })?;
    let contexts = list
        .iter()
        .map(|t| {
            let (last, before) = t.context.split_last().unwrap_or((&0, &[]));
            Ok((
                t.coefficient,
                lm.tokenizer.decode(before)?,
                lm.tokenizer.token_text(*last),
            ))
        })
        .collect::<Result<_, JobError>>()?;
    Ok(TriggersView {
        layer,
        memory,
        contexts,
        tokens_read: found.tokens_read,
        corpus: found.corpus.clone(),
    })
}

/// Integrated-gradients attributions at the last token for every layer, the
/// knowledge neurons (t = 0.2 × max), and p(target) with them switched off.
pub fn attribute<B: Backend>(
    lm: &LanguageModel<B>,
    prompt: &str,
    target: &str,
    ctl: &Control,
) -> Result<AttributionView, JobError> {
    let r = attribute_job(
        lm,
        &AttributeRequest {
            prompts: vec![prompt.to_string()],
            target: target.to_string(),
            steps: 20,
            t: 0.2,
            p: 0.7,
        },
        ctl,
    )
    .map_err(JobError::from_lib)?;
    let attrs = r.attributions.into_iter().next().unwrap_or_default();
    let effect = r.effects.first();
    Ok(AttributionView {
        prompt: prompt.to_string(),
        target: target.to_string(),
        prob: attrs.first().map_or(0.0, |a| a.prob),
        scores: attrs.into_iter().map(|a| a.scores).collect(),
        neurons: r.neurons,
        suppressed: effect.map_or(0.0, |e| e.suppressed),
    })
}
