//! `engram memit` and `engram bench memit`: MEMIT (Meng et al. 2023) from the
//! command line. A batch of requests is checked, its z vectors optimised in
//! chunks, and the update spread over the hyperparameters' layers into a
//! ledger; the timing is split into z, keys and solve.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use engram_editing::memit::compute_z::compute_zs;
use engram_editing::memit::{apply_memit, check_batch, MemitHparams, MemitOutcome};
use engram_editing::rome::EditRequest;
use engram_editing::Ledger;
use engram_model::burn_tensor::backend::Backend;
use engram_model::LanguageModel;

/// Where the statistics come from and how z is batched.
pub struct MemitRun<'a> {
    pub model: &'a Path,
    pub hp: &'a MemitHparams,
    pub corpus: Option<&'a Path>,
    pub stats_tokens: usize,
    pub z_chunk: usize,
    /// Threads optimising z chunks at once.
    pub z_workers: usize,
}

/// Timings of one batch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MemitTimes {
    pub requests: usize,
    pub stats_seconds: f64,
    pub z_seconds: f64,
    pub keys_seconds: f64,
    pub solve_seconds: f64,
    pub total_seconds: f64,
}

/// Check, compute and apply one MEMIT batch of `requests` into `ledger`,
/// printing progress to stderr.
pub fn memit_batch<B: Backend>(
    lm: &mut LanguageModel<B>,
    ledger: &mut Ledger<B>,
    requests: &[EditRequest],
    run: &MemitRun<'_>,
) -> Result<(MemitOutcome, MemitTimes)> {
    let start = Instant::now();
    if requests.is_empty() {
        bail!("no requests to edit");
    }
    for w in check_batch(lm, requests)? {
        eprintln!("warning: {w}");
    }
    let t = Instant::now();
    let layers = run.hp.layers.clone();
    let (covs, groups) = crate::edit::memit_setup(
        lm,
        run.model,
        run.hp,
        run.corpus,
        run.stats_tokens,
        &mut |done, total| {
            eprint!("\rlayers {layers:?} statistics: {done}/{total} key vectors");
            true
        },
    )?;
    eprintln!();
    let stats_seconds = t.elapsed().as_secs_f64();
    let flat: Vec<String> = groups.iter().flatten().cloned().collect();
    let z_start = Instant::now();
    let (zs, z_seconds) = compute_zs(
        lm,
        requests,
        run.hp,
        &flat,
        run.z_chunk,
        run.z_workers,
        &mut |done, total| {
            eprint!(
                "\rz: {done}/{total} requests, {:.0} s",
                z_start.elapsed().as_secs_f64()
            );
            true
        },
    )?;
    eprintln!();
    let n_layers = run.hp.layers.len();
    let out = apply_memit(
        lm,
        ledger,
        requests,
        &zs,
        run.hp,
        &covs,
        &groups,
        &mut |i, n| {
            eprint!("\rupdate: layer {}/{n}", i + 1);
            true
        },
    )?;
    eprintln!("\rupdate: {n_layers} layers done");
    let times = MemitTimes {
        requests: requests.len(),
        stats_seconds,
        z_seconds,
        keys_seconds: out.keys_seconds,
        solve_seconds: out.solve_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    };
    Ok((out, times))
}

/// Requests for the demo model: its facts, each edited to the relation's next answer.
pub fn demo_requests() -> Vec<EditRequest> {
    crate::edit::demo_eval_cases()
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
pub fn bench_requests(model: &Path, data: Option<&PathBuf>, n: usize) -> Result<Vec<EditRequest>> {
    let all = match data {
        Some(p) => crate::edit::load_requests(p)?,
        None if crate::hub::is_demo(model) => demo_requests(),
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
    if out.len() < n {
        eprintln!("{} requests available of {n} asked", out.len());
    }
    Ok(out)
}

/// Time MEMIT's per-layer solve at the given sizes: C = E[k kᵀ] of random
/// keys plus a ridge, n random request keys and residuals, `layers` times.
pub fn bench_solve(d_mlp: usize, d_model: usize, n: usize, layers: usize) -> Result<()> {
    use engram_editing::memit::update::layer_update;
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
    let total: f64 = times.iter().sum();
    println!(
        "bench memit-solve: d_mlp {d_mlp}, d_model {d_model}, {n} requests, {layers} layers, {} threads: \
         {total:.1} s in all ({:.1} s per layer; f64 Cholesky of λC + K Kᵀ and {n} solves)",
        std::thread::available_parallelism().map_or(1, |p| p.get()),
        total / layers.max(1) as f64
    );
    Ok(())
}
