//! The MEMIT batch job (Meng et al. 2023): check the requests, take C of each
//! edited layer and the context prefixes, optimise every request's z in
//! chunks, spread the update over the layers into the ledger as one batch,
//! probe each request before and after, and store it all as a `memit` run
//! (table `requests`), with the time split into z, keys and solve.

use std::path::Path;
use std::time::Instant;

use engram_datasets::{RunInfo, RunStore};
use engram_model::burn_tensor::backend::Backend;
use engram_model::{Control, LanguageModel, Settings};
use serde::{Deserialize, Serialize};

use super::rome::probe;
use crate::error::{bail, Result};
use crate::memit::compute_z::compute_zs;
use crate::memit::update::{LayerMom2, Solver};
use crate::memit::{apply_memit, check_batch, MemitHparams};
use crate::rome::EditRequest;
use crate::Ledger;

/// What a MEMIT batch is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct MemitRequest {
    pub requests: Vec<EditRequest>,
    pub hparams: MemitHparams,
    /// Requests per z optimisation chunk.
    pub z_chunk: usize,
    /// Threads optimising z chunks at once.
    pub z_workers: usize,
    /// AlphaEdit instead of MEMIT: the null-space threshold and L2 term.
    pub alphaedit: Option<AlphaEditOptions>,
}

/// AlphaEdit's two settings beyond MEMIT's (its `nullspace_threshold`, `L2`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaEditOptions {
    pub threshold: f64,
    pub l2: f64,
}

/// Timings of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemitTimes {
    pub requests: usize,
    pub z_seconds: f64,
    pub keys_seconds: f64,
    pub solve_seconds: f64,
    pub total_seconds: f64,
}

/// One request before and after; a row of `requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRow {
    pub subject: String,
    pub prompt: String,
    pub target: String,
    pub before_top: String,
    pub before_top_prob: f64,
    pub after_top: String,
    pub after_top_prob: f64,
    pub before_target: f64,
    pub after_target: f64,
}

/// A finished, applied and stored batch.
#[derive(Debug, Clone, PartialEq)]
pub struct MemitReport {
    pub run: RunInfo,
    /// The ledger batch; `ids` are its entries (one per layer).
    pub batch: usize,
    pub ids: Vec<usize>,
    pub layers: Vec<usize>,
    pub lambda: f64,
    pub rows: Vec<BatchRow>,
    /// What [`check_batch`] warned of (repeats, a subject asked several things).
    pub warnings: Vec<String>,
    /// Mean |z − h| before each layer and after the last.
    pub residual_norms: Vec<f32>,
    pub times: MemitTimes,
    /// AlphaEdit: `(layer, null-space dimension, key dimension)` per layer.
    pub null_space: Vec<(usize, usize, usize)>,
}

/// Check, compute and apply one MEMIT batch into `ledger` with C of each
/// layer (`covs`) and the prefix `groups` given, and store it. Progress: `z`
/// requests, then `update` layers.
#[allow(clippy::too_many_arguments)]
pub fn run_memit<B: Backend>(
    lm: &mut LanguageModel<B>,
    model: &str,
    ledger: &mut Ledger<B>,
    req: &MemitRequest,
    covs: &[LayerMom2],
    groups: &[Vec<String>],
    store: &RunStore,
    ctl: &Control,
) -> Result<MemitReport> {
    let start = Instant::now();
    let requests = &req.requests;
    if requests.is_empty() {
        bail!("the batch has no requests");
    }
    if req.z_chunk == 0 {
        bail!("--z-chunk 0: optimise at least one request per chunk");
    }
    let warnings: Vec<String> = check_batch(lm, requests)?
        .into_iter()
        .map(|w| w.to_string())
        .collect();
    let hp = &req.hparams;
    let before = requests
        .iter()
        .map(|r| probe(lm, &r.prompt, &r.target))
        .collect::<Result<Vec<_>>>()?;
    let flat: Vec<String> = groups.iter().flatten().cloned().collect();
    let (zs, z_seconds) = compute_zs(
        lm,
        requests,
        hp,
        &flat,
        req.z_chunk,
        req.z_workers,
        &mut |done, total| ctl.tick("z", done as u64, total as u64),
    )?;
    let spaces = match req.alphaedit {
        Some(a) => {
            ctl.tick("null spaces", 0, covs.len() as u64);
            covs.iter()
                .map(|c| crate::alphaedit::null_space(c, a.threshold))
                .collect::<std::result::Result<Vec<_>, _>>()?
        }
        None => Vec::new(),
    };
    let solver = match req.alphaedit {
        Some(a) => Solver::AlphaEdit {
            spaces: &spaces,
            l2: a.l2,
        },
        None => Solver::Memit,
    };
    let null_space: Vec<(usize, usize, usize)> =
        spaces.iter().map(|s| (s.layer, s.rank, s.dim)).collect();
    let out = apply_memit(
        lm,
        ledger,
        requests,
        &zs,
        hp,
        covs,
        groups,
        &solver,
        &mut |i, n| ctl.tick("update", i as u64 + 1, n as u64),
    )?;
    let rows = requests
        .iter()
        .zip(before)
        .map(|(r, b)| {
            let a = probe(lm, &r.prompt, &r.target)?;
            Ok(BatchRow {
                subject: r.subject.clone(),
                prompt: r.prompt.clone(),
                target: r.target.clone(),
                before_top: b.top,
                before_top_prob: b.top_prob,
                after_top: a.top,
                after_top_prob: a.top_prob,
                before_target: b.target_prob,
                after_target: a.target_prob,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let times = MemitTimes {
        requests: requests.len(),
        z_seconds,
        keys_seconds: out.keys_seconds,
        solve_seconds: out.solve_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    };
    let params = super::run_params::<B>(
        model,
        ledger.base_model_hash.clone(),
        serde_json::json!({
            "method": solver.method(),
            "alphaedit": req.alphaedit.map(|a| serde_json::json!({
                "nullspace_threshold": a.threshold,
                "L2": a.l2,
                "null_space": null_space,
            })),
            "hparams": hp,
            "z_chunk": req.z_chunk,
            "residual_norms": out.residual_norms,
            "warnings": warnings,
            "times": times,
            "context_templates": groups,
        }),
        requests.iter().map(|r| r.prompt.clone()).collect(),
    );
    let run = super::store_edit_run(store, solver.method(), params, ledger, |run| {
        run.write_rows("requests", &rows)?;
        Ok(())
    })?;
    Ok(MemitReport {
        run,
        batch: out.batch,
        ids: out.ids.clone(),
        layers: hp.layers.clone(),
        lambda: hp.mom2_update_weight,
        rows,
        warnings,
        residual_norms: out.residual_norms.clone(),
        times,
        null_space,
    })
}

/// Requests for the demo model: its facts, each edited to the relation's next answer.
pub fn demo_requests() -> Vec<EditRequest> {
    super::setup::demo_eval_cases()
        .into_iter()
        .map(|c| EditRequest {
            prompt: c.prompt,
            subject: c.subject,
            target: c.target_new,
        })
        .collect()
}

/// The requests of `data` (or the demo's), first `n`, one per subject (as
/// `engram eval --method memit` picks them: a subject's requests share a key).
pub fn bench_requests(
    model: &Path,
    data: Option<&Path>,
    n: usize,
    settings: &Settings,
) -> Result<Vec<EditRequest>> {
    let all = match data {
        Some(p) => super::setup::load_requests(p)?,
        None if engram_model::source::is_demo(model, settings) => demo_requests(),
        None => bail!(
            "--data FILE (CounterFact JSON or requests) is needed for {}",
            model.display()
        ),
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in all {
        if out.len() >= n {
            break;
        }
        if seen.insert(r.subject.clone()) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Time MEMIT's per-layer solve at the given sizes: C = E[k kᵀ] of random
/// keys plus a ridge, n random request keys and residuals, `layers` times.
/// Returns each layer's seconds.
pub fn bench_solve(d_mlp: usize, d_model: usize, n: usize, layers: usize) -> Result<Vec<f64>> {
    use crate::memit::update::layer_update;
    // A well-conditioned SPD C: I + B Bᵀ / m with B of 64 random columns (uniform in [-1, 1]).
    let mut rng = engram_model::generate::Rng::new(7);
    let mut unit = move || (rng.next_f64() * 2.0 - 1.0) as f32;
    let m = 64;
    let b: Vec<f64> = (0..d_mlp * m).map(|_| f64::from(unit())).collect();
    let mut c = vec![0f64; d_mlp * d_mlp];
    for i in 0..d_mlp {
        for j in 0..=i {
            let s: f64 = (0..m).map(|k| b[i * m + k] * b[j * m + k]).sum::<f64>() / m as f64;
            c[i * d_mlp + j] = s;
            c[j * d_mlp + i] = s;
        }
        c[i * d_mlp + i] += 1.0;
    }
    let keys: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..d_mlp).map(|_| unit()).collect())
        .collect();
    let targets: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..d_model).map(|_| unit()).collect())
        .collect();
    let mut times = Vec::new();
    for l in 0..layers {
        let t = Instant::now();
        layer_update(
            &c,
            d_mlp,
            20000.0,
            &keys,
            &targets,
            1.0 / (layers - l) as f64,
        )?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}
