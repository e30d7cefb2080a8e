//! Steering-vector jobs: build a vector from two prompt sets and store it as a
//! `steer` run (`vector.safetensors`, a `vector` table, the prompts in the
//! params); apply one during greedy generation and store the continuations
//! with and without it as a `steer-apply` run.

use std::path::Path;

use engram_datasets::{RunInfo, RunStore};
use engram_model::burn_tensor::backend::Backend;
use engram_model::{generate_hooked, GenerateConfig, HookPoint, LanguageModel, NoHooks, Sampling};
use serde::{Deserialize, Serialize};

use super::run_params;
use crate::error::{AnalysisError, Result};
use crate::steer::{build_vector, Reduce, Steer, SteeringVector};

/// The tensor name inside `vector.safetensors`.
pub const TENSOR: &str = "steering_vector";

#[derive(Debug, Clone, PartialEq)]
pub struct BuildRequest {
    pub positive: Vec<String>,
    pub negative: Vec<String>,
    pub point: HookPoint,
    pub reduce: Reduce,
}

#[derive(Debug, Clone)]
pub struct BuildReport {
    pub run: RunInfo,
    pub vector: SteeringVector,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ValueRow {
    index: i64,
    value: f64,
}

/// Build the vector and store it.
pub fn run_build<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    req: &BuildRequest,
    store: &RunStore,
) -> Result<BuildReport> {
    let vector = build_vector(lm, &req.positive, &req.negative, req.point, req.reduce)?;
    let params = run_params(
        lm,
        model,
        serde_json::json!({
            "point": req.point.to_string(),
            "reduce": req.reduce,
            "positive": req.positive,
            "negative": req.negative,
            "norm": vector.norm(),
        }),
    )?;
    let run = store.create("steer", params)?;
    let le: Vec<u8> = vector.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes = safetensors::serialize(
        [(
            TENSOR,
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![vector.values.len()],
                &le,
            )
            .map_err(|e| AnalysisError::Invalid(format!("the vector as safetensors: {e}")))?,
        )],
        None,
    )
    .map_err(|e| AnalysisError::Invalid(format!("the vector as safetensors: {e}")))?;
    engram_datasets::store::write_atomic(&run.dir().join("vector.safetensors"), &bytes)?;
    let rows: Vec<ValueRow> = vector
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| ValueRow {
            index: i as i64,
            value: f64::from(*v),
        })
        .collect();
    run.write_rows("vector", &rows)?;
    Ok(BuildReport {
        run: run.finish()?,
        vector,
    })
}

/// A stored vector: a `steer` run's directory or its `vector.safetensors` file.
/// The hook point comes from the run's params, or is `point` for a bare file.
pub fn load_vector(path: &Path, point: Option<HookPoint>) -> Result<SteeringVector> {
    let bad = |message: String| AnalysisError::Invalid(format!("{}: {message}", path.display()));
    let (file, point) = if path.is_dir() {
        let params = std::fs::read_to_string(path.join("params.json"))
            .map_err(|e| bad(format!("params.json: {e}")))?;
        let params: serde_json::Value =
            serde_json::from_str(&params).map_err(|e| bad(format!("params.json: {e}")))?;
        let stored = params["params"]["hyperparameters"]["point"]
            .as_str()
            .ok_or_else(|| bad("not a steer run (its params name no hook point)".into()))?
            .parse::<HookPoint>()
            .map_err(|e| bad(format!("its hook point: {e}")))?;
        (path.join("vector.safetensors"), point.unwrap_or(stored))
    } else {
        let point = point.ok_or_else(|| {
            bad("a bare vector file needs its hook point (--point blocks.L.hook_resid_pre)".into())
        })?;
        (path.to_path_buf(), point)
    };
    let bytes = std::fs::read(&file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let t = st
        .tensor(TENSOR)
        .map_err(|_| bad(format!("no tensor named {TENSOR:?}")))?;
    if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 1 {
        return Err(bad(format!(
            "{TENSOR} must be a 1-d F32 tensor, not {:?} {:?}",
            t.dtype(),
            t.shape()
        )));
    }
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("entry {i} is not finite")));
    }
    Ok(SteeringVector { point, values })
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApplyRequest {
    pub vector: SteeringVector,
    pub coef: f32,
    pub prompt: String,
    pub max_new_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub run: RunInfo,
    /// The greedy continuation without and with the vector.
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContinuationRow {
    coef: f64,
    prompt: String,
    continuation: String,
}

/// Greedy continuations of `prompt` without and with the vector; stored.
pub fn run_apply<B: Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    req: &ApplyRequest,
    store: &RunStore,
) -> Result<ApplyReport> {
    if !req.coef.is_finite() {
        return Err(AnalysisError::Invalid(format!(
            "coefficient {} is not a finite number",
            req.coef
        )));
    }
    let c = &lm.model.config;
    let HookPoint::Block { layer, .. } = req.vector.point else {
        return Err(AnalysisError::Invalid(format!(
            "{} is not a block's hook point",
            req.vector.point
        )));
    };
    if layer >= c.n_layers {
        return Err(AnalysisError::Invalid(format!(
            "the vector sits at {}, past this model's {} layers",
            req.vector.point, c.n_layers
        )));
    }
    let ids = lm.encode_prompt(&req.prompt)?;
    // The width the point has on this model (d_model for the residual and the
    // block outputs, d_mlp at mlp.hook_post): a vector of another width would
    // be skipped by the hook, so it is refused here.
    let point = req.vector.point;
    let mut cache = engram_model::ActivationCache::<B>::new(move |p| p == point);
    lm.model
        .forward(&engram_model::Batch::single(&ids), &mut cache)?;
    let width = cache.rank3(point).map(|a| a.dims()[2]);
    if width != Some(req.vector.values.len()) {
        return Err(AnalysisError::Invalid(format!(
            "the vector ({} values at {point}) does not fit this model: the activation there is {}",
            req.vector.values.len(),
            width.map_or("not [batch, position, width]".into(), |w| format!(
                "{w} wide"
            ))
        )));
    }
    let cfg = GenerateConfig {
        max_new_tokens: req.max_new_tokens,
        sampling: Sampling::Greedy,
        stop_at_eos: true,
        kv_cache: true,
    };
    let prompts = std::slice::from_ref(&ids);
    let plain = generate_hooked(&lm.model, prompts, &cfg, &mut NoHooks, |_| true)?;
    let mut steer = Steer::<B>::new(&req.vector, req.coef, &lm.model.device);
    let steered = generate_hooked(&lm.model, prompts, &cfg, &mut steer, |_| true)?;
    let text = |t: &[Vec<u32>]| {
        lm.tokenizer
            .decode(t.first().map_or(&[][..], Vec::as_slice))
    };
    let (before, after) = (text(&plain)?, text(&steered)?);
    let params = run_params(
        lm,
        model,
        serde_json::json!({
            "point": req.vector.point.to_string(),
            "coef": req.coef,
            "norm": req.vector.norm(),
            "prompt": req.prompt,
            "max_new_tokens": req.max_new_tokens,
        }),
    )?;
    let run = store.create("steer-apply", params)?;
    let rows =
        [(0.0, &before), (f64::from(req.coef), &after)].map(|(coef, text)| ContinuationRow {
            coef,
            prompt: req.prompt.clone(),
            continuation: text.clone(),
        });
    run.write_rows("continuations", &rows)?;
    Ok(ApplyReport {
        run: run.finish()?,
        before,
        after,
    })
}
