//! Steering vectors: activation addition (Turner et al. 2023, arXiv 2308.10248)
//! with a contrastive vector (Rimsky et al. 2024, "Steering Llama 2 via
//! Contrastive Activation Addition"). The vector is the mean of a hook point's
//! activations over positive prompts minus their mean over negative ones; it is
//! added, times a coefficient, at every position that point sees: a forward
//! pass, or every step of a generation (the prompt first, then each new token).

use burn_tensor::backend::Backend;
use burn_tensor::{Tensor, TensorData};
use engram_model::{Activation, ActivationCache, Batch, Hook, HookPoint, LanguageModel};

use crate::error::{AnalysisError, Result};

/// How one prompt's activations become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduce {
    /// The last token's (CAA's answer position).
    Last,
    /// The mean over the prompt's tokens.
    Mean,
}

/// A steering vector at one hook point.
#[derive(Debug, Clone, PartialEq)]
pub struct SteeringVector {
    pub point: HookPoint,
    /// The activation's width (`d_model` for the residual and block outputs).
    pub values: Vec<f32>,
}

impl SteeringVector {
    pub fn norm(&self) -> f32 {
        self.values.iter().map(|v| v * v).sum::<f32>().sqrt()
    }
}

/// The mean over `prompts` of each prompt's reduced activation at `point`, in f64.
pub fn mean_activation<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[String],
    point: HookPoint,
    reduce: Reduce,
) -> Result<Vec<f64>> {
    if prompts.is_empty() {
        return Err(AnalysisError::Invalid(
            "a steering vector needs at least one prompt on each side".into(),
        ));
    }
    let mut sum: Vec<f64> = Vec::new();
    for prompt in prompts {
        let ids = lm.encode_prompt(prompt)?;
        let mut cache = ActivationCache::<B>::new(move |p| p == point);
        lm.model.forward(&Batch::single(&ids), &mut cache)?;
        let act = cache.rank3(point).ok_or_else(|| {
            AnalysisError::Invalid(format!(
                "{point} is not a [batch, position, width] activation: steer at a residual or a block output"
            ))
        })?;
        let [_, s, d] = act.dims();
        let data: Vec<f32> = act
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| AnalysisError::Invalid(format!("reading {point}: {e:?}")))?;
        if sum.is_empty() {
            sum = vec![0.0; d];
        }
        let rows: Vec<&[f32]> = match reduce {
            Reduce::Last => vec![&data[(s - 1) * d..s * d]],
            Reduce::Mean => data.chunks(d).collect(),
        };
        for row in &rows {
            for (acc, v) in sum.iter_mut().zip(*row) {
                *acc += f64::from(*v) / rows.len() as f64;
            }
        }
    }
    let n = prompts.len() as f64;
    Ok(sum.into_iter().map(|v| v / n).collect())
}

/// mean(positive) − mean(negative) at `point`.
pub fn build_vector<B: Backend>(
    lm: &LanguageModel<B>,
    positive: &[String],
    negative: &[String],
    point: HookPoint,
    reduce: Reduce,
) -> Result<SteeringVector> {
    let pos = mean_activation(lm, positive, point, reduce)?;
    let neg = mean_activation(lm, negative, point, reduce)?;
    Ok(SteeringVector {
        point,
        values: pos.iter().zip(&neg).map(|(a, b)| (a - b) as f32).collect(),
    })
}

/// Adds `coef × vector` at its point, at every position the point sees.
pub struct Steer<B: Backend> {
    point: HookPoint,
    /// `[1, 1, width]`
    add: Tensor<B, 3>,
}

impl<B: Backend> Steer<B> {
    pub fn new(vector: &SteeringVector, coef: f32, device: &B::Device) -> Self {
        let d = vector.values.len();
        let scaled: Vec<f32> = vector.values.iter().map(|v| v * coef).collect();
        Self {
            point: vector.point,
            add: Tensor::from_data(TensorData::new(scaled, [1, 1, d]), device),
        }
    }
}

impl<B: Backend> Hook<B> for Steer<B> {
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }
    fn call(&mut self, _: HookPoint, act: &Activation<B>) -> Option<Activation<B>> {
        let x = act.as_rank3()?;
        (x.dims()[2] == self.add.dims()[2]).then(|| Activation::Rank3(x.clone() + self.add.clone()))
    }
}
