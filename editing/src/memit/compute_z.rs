//! Step 1 (MEMIT Alg. 1, lines 2–5): z_i = h_i + δ_i, the residual leaving the
//! last edited layer at the subject's last token that makes the model say
//! request i's target. δ_i is ROME's v* optimisation with the residual in place
//! of the MLP output (its norm sets the weight decay and the clamp), run for
//! `chunk` requests at a time in one batch, so memory stays bounded for
//! thousands of requests; chunks hold requests of similar tail length (less
//! padding) and can run on several threads at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn_tensor::backend::Backend;
use engram_model::LanguageModel;
use serde::{Deserialize, Serialize};

use super::MemitHparams;
use crate::error::{EditError, Result};
use crate::rome::compute_v::{optimise_deltas, DeltaJob, DeltaOptions, DeltaResult, VStep};
use crate::rome::EditRequest;

/// One request's target residual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Z {
    /// `[d_model]`
    pub z: Vec<f32>,
    pub delta_norm: f32,
    pub z0_norm: f32,
    pub steps: Vec<VStep>,
}

/// z for every request at `hp`'s last layer. `templates` are the flat context
/// prefixes. Chunks of `chunk` requests are optimised on `workers` threads at
/// once (on the CPU backend one chunk keeps about one core busy; on a GPU use
/// 1). `progress(requests done, total)` returns false to cancel.
pub fn compute_zs<B: Backend>(
    lm: &LanguageModel<B>,
    requests: &[EditRequest],
    hp: &MemitHparams,
    templates: &[String],
    chunk: usize,
    workers: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Vec<Z>, f64)> {
    let start = Instant::now();
    let layer = hp.z_layer()?;
    // z₀ is read from each request's first row, which must be the bare prompt.
    if templates.first().map(String::as_str) != Some("{}") {
        return Err(EditError::Invalid(format!(
            "MEMIT's templates must start with \"{{}}\" (the bare prompt), not {:?}",
            templates.first()
        )));
    }
    let opts = hp.delta_options();
    let chunk = chunk.max(1);
    // Every request's rows first, so that a bad one is named before any optimisation.
    let mut all: Vec<DeltaJob> = Vec::with_capacity(requests.len());
    for (index, r) in requests.iter().enumerate() {
        let bad = |source: EditError| EditError::BadRequest {
            index,
            subject: r.subject.clone(),
            cause: Box::new(source),
        };
        let ids = lm
            .target_tokens(&r.prompt, &r.target)
            .map_err(|e| bad(e.into()))?;
        all.push(DeltaJob::new(lm, &r.prompt, &r.subject, &ids, templates).map_err(bad)?);
    }
    // A chunk's rows are padded to its longest tail (subject token onwards), so
    // requests are chunked in order of tail length; results return in request order.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| all[i].tail_len());
    let mut slots: Vec<Option<DeltaJob>> = all.into_iter().map(Some).collect();
    let parts: Vec<Vec<DeltaJob>> = order
        .chunks(chunk)
        .map(|c| c.iter().filter_map(|&i| slots[i].take()).collect())
        .collect();
    let total = requests.len();
    let workers = workers.clamp(1, parts.len().max(1));
    let results = if workers == 1 {
        let mut results = Vec::with_capacity(parts.len());
        let mut done = 0;
        for jobs in &parts {
            if !progress(done, total) {
                return Err(engram_model::Cancelled.into());
            }
            results.push(optimise_deltas(
                lm,
                jobs,
                layer,
                &opts,
                None,
                &mut |_, _| progress(done, total),
            )?);
            done += jobs.len();
        }
        results
    } else {
        parallel_chunks(lm, &parts, layer, &opts, workers, total, progress)?
    };
    let mut by_request: Vec<Option<DeltaResult>> = (0..total).map(|_| None).collect();
    for (&i, r) in order.iter().zip(results.into_iter().flatten()) {
        by_request[i] = Some(r);
    }
    let results: Vec<DeltaResult> = by_request.into_iter().flatten().collect();
    if results.len() != total {
        return Err(EditError::Invalid(format!(
            "z for {} of {total} requests",
            results.len()
        )));
    }
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let out: Vec<Z> = results
        .into_iter()
        .map(|r| Z {
            delta_norm: norm(&r.delta),
            z0_norm: norm(&r.resid0),
            z: r.resid0.iter().zip(&r.delta).map(|(a, b)| a + b).collect(),
            steps: r.steps,
        })
        .collect();
    progress(out.len(), total);
    Ok((out, start.elapsed().as_secs_f64()))
}

/// Optimise the chunks on `workers` threads, taking the next chunk as each
/// finishes; the calling thread reports progress and cancels. The first
/// failing chunk's error is returned (a cancellation only if nothing failed).
fn parallel_chunks<B: Backend>(
    lm: &LanguageModel<B>,
    parts: &[Vec<DeltaJob>],
    layer: usize,
    opts: &DeltaOptions,
    workers: usize,
    total: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<Vec<DeltaResult>>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let exited = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<Vec<DeltaResult>>>>> =
        parts.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= parts.len() || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = optimise_deltas(lm, &parts[i], layer, opts, None, &mut |_, _| {
                        !stop.load(Ordering::SeqCst)
                    });
                    if r.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    done.fetch_add(parts[i].len(), Ordering::SeqCst);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                }
                exited.fetch_add(1, Ordering::SeqCst);
            });
        }
        while exited.load(Ordering::SeqCst) < workers {
            if !progress(done.load(Ordering::SeqCst), total) {
                stop.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut out = Vec::with_capacity(parts.len());
    let mut cancelled = false;
    for slot in slots {
        match slot.into_inner().ok().flatten() {
            Some(Ok(r)) => out.push(r),
            Some(Err(EditError::Cancelled(_))) | None => cancelled = true,
            Some(Err(e)) => return Err(e),
        }
    }
    if cancelled {
        return Err(engram_model::Cancelled.into());
    }
    Ok(out)
}
