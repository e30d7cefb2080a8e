//! Linear probes on layer activations (Alain & Bengio 2016) with control tasks
//! (Hewitt & Liang 2019): a multinomial logistic-regression probe (L2, full
//! batch, Adam on standardised features, a fixed number of steps so that a
//! seed fixes every number) and a ridge probe for continuous targets (closed
//! form); k folds grouped so that a group (a subject) never sits on both
//! sides; a control task that gives every word type a random label drawn from
//! the task's label distribution. Selectivity = task − control accuracy.

use burn_tensor::activation::softmax;
use burn_tensor::backend::Backend;
use burn_tensor::{Int, Tensor, TensorData};
use engram_model::hooks::{BlockSite, HookPoint};
use engram_model::{ActivationCache, Batch, ModelError, Transformer};

type Result<T> = std::result::Result<T, ModelError>;

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| ModelError::Data(format!("{e:?}")))
}

/// The generator the sampler uses (SplitMix64), so a seed means the same everywhere.
pub use engram_model::generate::Rng;

/// A draw in `0..n`.
fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// The fold of each sample: groups are shuffled with `seed` and dealt to
/// `k` folds in turn, so every sample of a group lands in the same fold.
pub fn grouped_folds(groups: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut distinct: Vec<usize> = groups.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut rng = Rng::new(seed);
    for i in (1..distinct.len()).rev() {
        let j = below(&mut rng, i + 1);
        distinct.swap(i, j);
    }
    let k = k.max(2);
    let fold_of: std::collections::HashMap<usize, usize> = distinct
        .iter()
        .enumerate()
        .map(|(i, &g)| (g, i % k))
        .collect();
    groups.iter().map(|g| fold_of[g]).collect()
}

/// Hewitt & Liang's control task: each word type gets one label, drawn from
/// the empirical distribution of `labels`.
pub fn control_labels(types: &[usize], labels: &[usize], seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ 0xC0_17_20_1A);
    let mut assigned: std::collections::HashMap<usize, usize> = Default::default();
    let mut order: Vec<usize> = types.to_vec();
    order.sort_unstable();
    order.dedup();
    for t in order {
        let draw = labels[below(&mut rng, labels.len())];
        assigned.insert(t, draw);
    }
    types.iter().map(|t| assigned[t]).collect()
}

/// Accuracy and macro-F1 over the classes present in `truth` or `pred`.
pub fn accuracy_f1(truth: &[usize], pred: &[usize]) -> (f64, f64) {
    let n = truth.len().max(1) as f64;
    let acc = truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / n;
    let mut classes: Vec<usize> = truth.iter().chain(pred).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    let f1s: Vec<f64> = classes
        .iter()
        .map(|&c| {
            let tp = truth
                .iter()
                .zip(pred)
                .filter(|(t, p)| **t == c && **p == c)
                .count() as f64;
            let fp = truth
                .iter()
                .zip(pred)
                .filter(|(t, p)| **t != c && **p == c)
                .count() as f64;
            let fneg = truth
                .iter()
                .zip(pred)
                .filter(|(t, p)| **t == c && **p != c)
                .count() as f64;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fneg)
            }
        })
        .collect();
    (acc, f1s.iter().sum::<f64>() / f1s.len().max(1) as f64)
}

/// Options of the logistic probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogisticOptions {
    pub l2: f32,
    pub steps: usize,
    pub lr: f32,
}

impl Default for LogisticOptions {
    fn default() -> Self {
        Self {
            l2: 1e-3,
            steps: 300,
            lr: 0.05,
        }
    }
}

/// Mean and standard deviation of each column over `rows` of `x` (`[n, d]`).
fn standardiser(x: &[f32], d: usize, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0f64; d];
    for &r in rows {
        for j in 0..d {
            mean[j] += f64::from(x[r * d + j]);
        }
    }
    let n = rows.len().max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d];
    for &r in rows {
        for j in 0..d {
            let e = f64::from(x[r * d + j]) - mean[j];
            var[j] += e * e;
        }
    }
    (
        mean.iter().map(|&m| m as f32).collect(),
        var.iter()
            .map(|&v| ((v / n).sqrt().max(1e-6)) as f32)
            .collect(),
    )
}

fn gather<B: Backend>(
    x: &[f32],
    d: usize,
    rows: &[usize],
    stats: &(Vec<f32>, Vec<f32>),
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        for j in 0..d {
            out.push((x[r * d + j] - stats.0[j]) / stats.1[j]);
        }
    }
    Tensor::from_data(TensorData::new(out, [rows.len(), d]), device)
}

/// Fit a multinomial logistic probe on `train` rows of `x` (`[n, d]`) and
/// return its predictions for `test` rows.
#[allow(clippy::too_many_arguments)]
pub fn logistic_probe<B: Backend>(
    x: &[f32],
    d: usize,
    labels: &[usize],
    n_classes: usize,
    train: &[usize],
    test: &[usize],
    opts: LogisticOptions,
    device: &B::Device,
) -> Result<Vec<usize>> {
    let stats = standardiser(x, d, train);
    let xt = gather::<B>(x, d, train, &stats, device);
    let n = train.len().max(1);
    let c = n_classes.max(2);
    let mut onehot = vec![0f32; n * c];
    for (i, &r) in train.iter().enumerate() {
        onehot[i * c + labels[r]] = 1.0;
    }
    let y = Tensor::<B, 2>::from_data(TensorData::new(onehot, [n, c]), device);
    let mut w = Tensor::<B, 2>::zeros([d, c], device);
    let mut b = Tensor::<B, 2>::zeros([1, c], device);
    let (mut mw, mut vw) = (w.zeros_like(), w.zeros_like());
    let (mut mb, mut vb) = (b.zeros_like(), b.zeros_like());
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let xtt = xt.clone().transpose();
    for step in 1..=opts.steps {
        let p = softmax(xt.clone().matmul(w.clone()) + b.clone(), 1);
        let err = (p - y.clone()).div_scalar(n as f32);
        let gw = xtt.clone().matmul(err.clone()) + w.clone().mul_scalar(opts.l2);
        let gb = err.sum_dim(0);
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        mw = mw.mul_scalar(b1) + gw.clone().mul_scalar(1.0 - b1);
        vw = vw.mul_scalar(b2) + gw.square().mul_scalar(1.0 - b2);
        mb = mb.mul_scalar(b1) + gb.clone().mul_scalar(1.0 - b1);
        vb = vb.mul_scalar(b2) + gb.square().mul_scalar(1.0 - b2);
        w = w
            - (mw.clone().div_scalar(c1) / (vw.clone().div_scalar(c2).sqrt().add_scalar(eps)))
                .mul_scalar(opts.lr);
        b = b
            - (mb.clone().div_scalar(c1) / (vb.clone().div_scalar(c2).sqrt().add_scalar(eps)))
                .mul_scalar(opts.lr);
    }
    if test.is_empty() {
        return Ok(Vec::new());
    }
    let xs = gather::<B>(x, d, test, &stats, device);
    let pred: Tensor<B, 2, Int> = (xs.matmul(w) + b).argmax(1);
    Ok(pred
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

/// Ridge regression on `train` rows (standardised features, intercept
/// unpenalised), predicting `test` rows. Closed form by an f64 Cholesky solve.
pub fn ridge_probe(
    x: &[f32],
    d: usize,
    y: &[f64],
    train: &[usize],
    test: &[usize],
    lambda: f64,
) -> Result<Vec<f64>> {
    let stats = standardiser(x, d, train);
    let z = |r: usize, j: usize| f64::from((x[r * d + j] - stats.0[j]) / stats.1[j]);
    let ymean = train.iter().map(|&r| y[r]).sum::<f64>() / train.len().max(1) as f64;
    let mut a = vec![0f64; d * d];
    let mut rhs = vec![0f64; d];
    for &r in train {
        for i in 0..d {
            let zi = z(r, i);
            rhs[i] += zi * (y[r] - ymean);
            for j in 0..=i {
                a[i * d + j] += zi * z(r, j);
            }
        }
    }
    for i in 0..d {
        a[i * d + i] += lambda;
        for j in 0..i {
            a[j * d + i] = a[i * d + j];
        }
    }
    // Cholesky: A = L Lᵀ.
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s <= 0.0 {
            return Err(ModelError::Data(
                "the ridge system is not positive definite".into(),
            ));
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    let mut w = rhs;
    for i in 0..d {
        let mut s = w[i];
        for k in 0..i {
            s -= a[i * d + k] * w[k];
        }
        w[i] = s / a[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = w[i];
        for k in i + 1..d {
            s -= a[k * d + i] * w[k];
        }
        w[i] = s / a[i * d + i];
    }
    Ok(test
        .iter()
        .map(|&r| ymean + (0..d).map(|j| z(r, j) * w[j]).sum::<f64>())
        .collect())
}

/// One fold's scores at one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldScore {
    pub layer: usize,
    pub fold: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub control_accuracy: f64,
    pub control_f1: f64,
    /// Accuracy of always answering the training folds' most common label.
    pub majority: f64,
}

/// What a layer's probing needs besides its activations.
pub struct ProbeTask<'a> {
    pub labels: &'a [usize],
    pub n_classes: usize,
    /// Word type of each sample (for the control task).
    pub types: &'a [usize],
    /// Grouping for the folds (e.g. the subject).
    pub groups: &'a [usize],
    pub folds: usize,
    pub seed: u64,
    pub control: bool,
    pub opts: LogisticOptions,
}

/// One layer's probe: the folds' scores and the confusion matrix of the
/// task probe's held-out predictions over all folds (`[truth][predicted]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerProbe {
    pub folds: Vec<FoldScore>,
    pub confusion: Vec<Vec<usize>>,
}

/// Probe one layer's activations `x` (`[n, d]`) with k grouped folds.
pub fn probe_layer<B: Backend>(
    x: &[f32],
    d: usize,
    layer: usize,
    task: &ProbeTask<'_>,
    device: &B::Device,
) -> Result<LayerProbe> {
    let n = task.labels.len();
    if x.len() != n * d {
        return Err(ModelError::Data(format!(
            "{} activations for {n} samples of width {d}",
            x.len()
        )));
    }
    let fold_of = grouped_folds(task.groups, task.folds, task.seed);
    let control = control_labels(task.types, task.labels, task.seed);
    let mut out = Vec::new();
    let c = task.n_classes.max(1);
    let mut confusion = vec![vec![0usize; c]; c];
    for fold in 0..task.folds.max(2) {
        let test: Vec<usize> = (0..n).filter(|&i| fold_of[i] == fold).collect();
        let train: Vec<usize> = (0..n).filter(|&i| fold_of[i] != fold).collect();
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let truth: Vec<usize> = test.iter().map(|&i| task.labels[i]).collect();
        let pred = logistic_probe::<B>(
            x,
            d,
            task.labels,
            task.n_classes,
            &train,
            &test,
            task.opts,
            device,
        )?;
        let (accuracy, macro_f1) = accuracy_f1(&truth, &pred);
        for (&t, &p) in truth.iter().zip(&pred) {
            if t < c && p < c {
                confusion[t][p] += 1;
            }
        }
        let (control_accuracy, control_f1) = if task.control {
            let ctruth: Vec<usize> = test.iter().map(|&i| control[i]).collect();
            let cpred = logistic_probe::<B>(
                x,
                d,
                &control,
                task.n_classes,
                &train,
                &test,
                task.opts,
                device,
            )?;
            accuracy_f1(&ctruth, &cpred)
        } else {
            (f64::NAN, f64::NAN)
        };
        let mut counts = vec![0usize; task.n_classes.max(1)];
        for &i in &train {
            counts[task.labels[i]] += 1;
        }
        let major = (0..counts.len()).max_by_key(|&c| counts[c]).unwrap_or(0);
        let majority = truth.iter().filter(|&&t| t == major).count() as f64 / truth.len() as f64;
        out.push(FoldScore {
            layer,
            fold,
            accuracy,
            macro_f1,
            control_accuracy,
            control_f1,
            majority,
        });
    }
    Ok(LayerProbe {
        folds: out,
        confusion,
    })
}

/// Where to read each prompt's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbePosition {
    Last,
    /// The subject's last token (the caller resolves it per prompt).
    Given,
}

/// Activations of `site` at every layer for `items` (token ids, position),
/// in batches of `batch`; `sink(layer, rows)` receives each batch's rows
/// (`[rows, d_model]` flattened), so nothing grows with the dataset here.
pub fn collect_activations<B: Backend>(
    model: &Transformer<B>,
    items: &[(Vec<u32>, usize)],
    site: BlockSite,
    batch: usize,
    sink: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<()> {
    let n_layers = model.config.n_layers;
    let pad = model.config.eos_token_id.unwrap_or(0);
    for (k, chunk) in items.chunks(batch.max(1)).enumerate() {
        if !progress(k * batch.max(1), items.len()) {
            return Err(engram_model::Cancelled.into());
        }
        let rows: Vec<Vec<u32>> = chunk.iter().map(|(ids, _)| ids.clone()).collect();
        let b = Batch::right_padded(&rows, pad);
        let mut cache = ActivationCache::<B>::new(move |p| p.site() == Some(site));
        model.forward(&b, &mut cache)?;
        let s = b.seq_len();
        for layer in 0..n_layers {
            let point = HookPoint::block(layer, site);
            let t = cache
                .rank3(point)
                .ok_or_else(|| ModelError::UnknownHook(point.to_string()))?;
            let d = t.dims()[2];
            let a = host(t)?;
            let mut out = Vec::with_capacity(chunk.len() * d);
            for (r, (_, pos)) in chunk.iter().enumerate() {
                let base = (r * s + pos) * d;
                out.extend_from_slice(&a[base..base + d]);
            }
            sink(layer, &out)?;
        }
    }
    progress(items.len(), items.len());
    Ok(())
}

/// R² of `pred` against `truth` (1 − SSE / SST around the truth's mean).
pub fn r_squared(truth: &[f64], pred: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len().max(1) as f64;
    let sst: f64 = truth.iter().map(|t| (t - mean) * (t - mean)).sum();
    let sse: f64 = truth.iter().zip(pred).map(|(t, p)| (t - p) * (t - p)).sum();
    if sst <= 0.0 {
        f64::NAN
    } else {
        1.0 - sse / sst
    }
}

/// Ridge probes of a continuous target with the same grouped folds; the
/// control gives each word type one target drawn from the targets. In the
/// returned scores `accuracy` holds R² and `macro_f1` the test MSE (the
/// `control_*` fields likewise); `majority` is NaN and `confusion` empty.
pub fn regress_layer(
    x: &[f32],
    d: usize,
    layer: usize,
    y: &[f64],
    task: &ProbeTask<'_>,
    lambda: f64,
) -> Result<LayerProbe> {
    let n = y.len();
    if x.len() != n * d {
        return Err(ModelError::Data(format!(
            "{} activations for {n} samples of width {d}",
            x.len()
        )));
    }
    let fold_of = grouped_folds(task.groups, task.folds, task.seed);
    let pick = control_labels(task.types, &(0..n).collect::<Vec<_>>(), task.seed);
    let control: Vec<f64> = pick.iter().map(|&i| y[i]).collect();
    let mse = |t: &[f64], p: &[f64]| {
        t.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / t.len().max(1) as f64
    };
    let mut folds = Vec::new();
    for fold in 0..task.folds.max(2) {
        let test: Vec<usize> = (0..n).filter(|&i| fold_of[i] == fold).collect();
        let train: Vec<usize> = (0..n).filter(|&i| fold_of[i] != fold).collect();
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let truth: Vec<f64> = test.iter().map(|&i| y[i]).collect();
        let pred = ridge_probe(x, d, y, &train, &test, lambda)?;
        let (control_accuracy, control_f1) = if task.control {
            let ct: Vec<f64> = test.iter().map(|&i| control[i]).collect();
            let cp = ridge_probe(x, d, &control, &train, &test, lambda)?;
            (r_squared(&ct, &cp), mse(&ct, &cp))
        } else {
            (f64::NAN, f64::NAN)
        };
        folds.push(FoldScore {
            layer,
            fold,
            accuracy: r_squared(&truth, &pred),
            macro_f1: mse(&truth, &pred),
            control_accuracy,
            control_f1,
            majority: f64::NAN,
        });
    }
    Ok(LayerProbe {
        folds,
        confusion: Vec::new(),
    })
}
