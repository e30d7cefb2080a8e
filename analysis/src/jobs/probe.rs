//! The probing job: per-layer linear probes on a labelled prompt set, with
//! control tasks (Hewitt & Liang 2019; [`crate::probe`]). Activations are collected once per
//! (model, hook, position, dataset) and cached on disk as safetensors chunks
//! (`layer.{l}`: `[rows, d_model]` f32, 32 prompts per chunk), so a second
//! probe reads them back without running the model; memory while collecting
//! is one chunk. Results go to the run store with a figure.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{bail, Context, Result};
use crate::probe::{collect_activations, probe_layer, regress_layer, LogisticOptions, ProbeTask};
use engram_datasets::figures::{curve_lines, CurvePoint};
use engram_datasets::summary::{mean_ci, MetricSummary};
use engram_datasets::{RunParams, RunStore};
use engram_model::hooks::BlockSite;
use engram_model::weights::{HostTensor, SafetensorsCheckpoint, TensorSource};
use engram_model::LanguageModel;
use engram_model::{Control, Settings};
use serde_json::{json, Value};

/// What `engram probe` is asked.
pub struct ProbeArgs<'a> {
    pub data: &'a Path,
    pub label: &'a str,
    pub text: &'a str,
    pub subject: Option<&'a str>,
    pub hook: &'a str,
    /// "last", "subject" (the subject's last token) or "every" (each token a sample).
    pub position: &'a str,
    pub control: bool,
    pub folds: usize,
    pub seed: u64,
    pub min_count: usize,
    /// A ridge probe of a numeric label (R² per layer) instead of classes.
    pub regress: bool,
    /// Probe every N-th layer only, from the K-th: a machine's share of a
    /// study spread over N (`engram runs merge` joins the shards).
    pub shard: Option<engram_datasets::merge::Shard>,
}

/// A hook site by its TransformerLens name, with or without `hook_`.
pub fn parse_site(name: &str) -> Result<BlockSite> {
    BlockSite::ALL
        .into_iter()
        .find(|s| s.name() == name || s.name() == format!("hook_{name}"))
        .filter(|s| {
            matches!(
                s,
                BlockSite::ResidPre
                    | BlockSite::Ln1Normalized
                    | BlockSite::AttnOut
                    | BlockSite::ResidMid
                    | BlockSite::Ln2Normalized
                    | BlockSite::MlpPre
                    | BlockSite::MlpPreLinear
                    | BlockSite::MlpPost
                    | BlockSite::MlpOut
                    | BlockSite::ResidPost
            )
        })
        .with_context(|| {
            format!("--hook {name}: use a residual-width or MLP site, e.g. resid_post, resid_pre, mlp_out, attn_out, mlp.hook_post")
        })
}

/// Records of a CSV file with a header, a JSON array or a JSON-lines file.
fn read_records(path: &Path) -> Result<Vec<Value>> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return Ok(engram_datasets::facts::read_csv_records(path)?);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON array", path.display()));
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))
        })
        .collect()
}

fn field(v: &Value, key: &str, i: usize, path: &Path) -> Result<String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        _ => bail!("{} record {i}: no field `{key}`", path.display()),
    }
}

fn fnv(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_bytes().iter().chain(&[0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// One layer's probing summary.
#[derive(Debug, Clone)]
pub struct LayerSummary {
    pub layer: usize,
    pub accuracy: MetricSummary,
    pub macro_f1: MetricSummary,
    pub control: MetricSummary,
    pub selectivity: MetricSummary,
    /// `[truth][predicted]` over the held-out folds.
    pub confusion: Vec<Vec<usize>>,
}

impl LayerSummary {
    /// `accuracy 0.912 [0.880, 0.944], macro-F1 …, control …, selectivity …`
    pub fn describe(&self) -> String {
        let [acc, low, high, f1, control, selectivity] = self.figures();
        format!(
            "accuracy {acc:.3} [{low:.3}, {high:.3}], macro-F1 {f1:.3}, control {control:.3}, selectivity {selectivity:.3}"
        )
    }

    /// Accuracy (R² for a regression) with its 95% interval, macro-F1 (MSE),
    /// control and selectivity means.
    pub fn figures(&self) -> [f64; 6] {
        [
            self.accuracy.mean,
            self.accuracy.ci_low,
            self.accuracy.ci_high,
            self.macro_f1.mean,
            self.control.mean,
            self.selectivity.mean,
        ]
    }
}

/// A finished probing run.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub samples: usize,
    pub classes: Vec<String>,
    pub skipped: usize,
    pub cached: bool,
    pub layers: Vec<LayerSummary>,
    pub run_id: String,
    pub run_dir: PathBuf,
    pub seconds: f64,
}

/// Probe every layer, store the run and its figure, and return the summary.
/// Activations are cached under `settings.activations`.
pub fn probe_report<B: engram_model::burn_tensor::backend::Backend>(
    lm: &LanguageModel<B>,
    model: &str,
    a: &ProbeArgs<'_>,
    store: &RunStore,
    settings: &Settings,
    ctl: &Control,
) -> Result<ProbeReport> {
    let start = Instant::now();
    let site = parse_site(a.hook)?;
    let records = read_records(a.data)?;
    // Samples: (ids, position, label name, group, word type).
    let mut samples = Vec::new();
    let mut skipped = 0usize;
    for (i, r) in records.iter().enumerate() {
        let text = field(r, a.text, i, a.data)?;
        let label = field(r, a.label, i, a.data)?;
        let subject = match a.subject {
            Some(k) => Some(field(r, k, i, a.data)?),
            None => None,
        };
        let group = subject.clone().unwrap_or_else(|| text.clone());
        if a.position == "every" {
            // Every token is a sample with its prompt's label; the prompt's
            // tokens share its group, so they stay in one fold.
            let ids = lm.encode_prompt(&text)?;
            for pos in 0..ids.len() {
                let word_type = ids[pos];
                samples.push((ids.clone(), pos, label.clone(), group.clone(), word_type));
            }
            continue;
        }
        let (ids, pos) = match (a.position, &subject) {
            ("last", _) => {
                let ids = lm.encode_prompt(&text)?;
                let p = ids.len() - 1;
                (ids, p)
            }
            ("subject", Some(s)) => match lm.tokenizer.subject_span(&text, s) {
                Ok((enc, span)) => (enc.ids, span.end - 1),
                Err(_) => {
                    skipped += 1;
                    continue;
                }
            },
            ("subject", None) => bail!("--position subject needs --subject COLUMN"),
            (other, _) => bail!("--position {other}: use last, subject or every"),
        };
        let word_type = ids[pos];
        samples.push((ids, pos, label, group, word_type));
    }
    // A continuous target: every sample's label read as a number.
    let targets: Vec<f64> = if a.regress {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.2.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .with_context(|| {
                        format!("sample {i}: `{}` = {:?} is not a number", a.label, s.2)
                    })
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    // Labels with at least `min_count` samples (classification only).
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &samples {
        *counts.entry(s.2.clone()).or_default() += 1;
    }
    let classes: Vec<String> = if a.regress {
        vec!["target".into()]
    } else {
        counts
            .iter()
            .filter(|(_, &c)| c >= a.min_count)
            .map(|(k, _)| k.clone())
            .collect()
    };
    if !a.regress {
        samples.retain(|s| classes.contains(&s.2));
    }
    if (!a.regress && classes.len() < 2) || samples.is_empty() {
        bail!(
            "fewer than two labels of `{}` have {} or more samples",
            a.label,
            a.min_count
        );
    }
    let labels: Vec<usize> = samples
        .iter()
        .map(|s| classes.iter().position(|c| *c == s.2).unwrap_or(0))
        .collect();
    let index = |v: Vec<String>| -> Vec<usize> {
        let mut names = v.clone();
        names.sort();
        names.dedup();
        v.iter()
            .map(|x| names.binary_search(x).unwrap_or(0))
            .collect()
    };
    let groups = index(samples.iter().map(|s| s.3.clone()).collect());
    let types: Vec<usize> = samples.iter().map(|s| s.4 as usize).collect();

    // Activations: cached chunks, or collect them now.
    let model_hash = engram_model::source::model_hash(&lm.source)?;
    let data_hash = engram_model::source::hash_files(&[a.data.to_path_buf()])?;
    let key = fnv(&[
        &model_hash,
        site.name(),
        a.position,
        &data_hash,
        a.label,
        a.text,
        a.subject.unwrap_or(""),
        &a.min_count.to_string(),
    ]);
    let dir = settings.activations.join(&key);
    let n_layers = lm.model.config.n_layers;
    let d = match site {
        BlockSite::MlpPre | BlockSite::MlpPreLinear | BlockSite::MlpPost => lm.model.config.d_mlp,
        _ => lm.model.config.d_model,
    };
    let chunk = 32usize;
    let meta = dir.join("meta.json");
    let cached = meta.is_file();
    if !cached {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let items: Vec<(Vec<u32>, usize)> = samples.iter().map(|s| (s.0.clone(), s.1)).collect();
        let mut pending: Vec<Vec<f32>> = vec![Vec::new(); n_layers];
        let mut k = 0usize;
        let write_chunk = |k: usize, pending: &mut Vec<Vec<f32>>| -> Result<()> {
            let tensors: Vec<(String, HostTensor)> = pending
                .iter_mut()
                .enumerate()
                .map(|(l, rows)| {
                    let n = rows.len() / d;
                    (
                        format!("layer.{l}"),
                        HostTensor::new(vec![n, d], std::mem::take(rows)),
                    )
                })
                .collect();
            engram_model::weights::write_safetensors(
                &dir.join(format!("chunk{k:05}.safetensors")),
                &tensors,
                safetensors::Dtype::F32,
            )?;
            Ok(())
        };
        for part in items.chunks(chunk) {
            collect_activations(
                &lm.model,
                part,
                site,
                chunk,
                &mut |layer, rows| {
                    pending[layer].extend_from_slice(rows);
                    Ok(())
                },
                &mut |_, _| true,
            )?;
            write_chunk(k, &mut pending)?;
            k += 1;
            if !ctl.tick(
                "activations",
                (k * chunk).min(items.len()) as u64,
                items.len() as u64,
            ) {
                return Err(engram_model::Cancelled.into());
            }
        }
        let m = json!({"samples": items.len(), "d_model": d, "n_layers": n_layers, "chunks": k,
                       "hook": site.name(), "position": a.position});
        engram_datasets::store::write_atomic(&meta, m.to_string().as_bytes())?;
    }
    let n_chunks = {
        let text = std::fs::read_to_string(&meta).with_context(|| meta.display().to_string())?;
        let m: Value = serde_json::from_str(&text).with_context(|| meta.display().to_string())?;
        m["chunks"].as_u64().unwrap_or(0) as usize
    };

    let task = ProbeTask {
        labels: &labels,
        n_classes: classes.len(),
        types: &types,
        groups: &groups,
        folds: a.folds,
        seed: a.seed,
        control: a.control,
        opts: LogisticOptions::default(),
    };
    let mut rows = Vec::new();
    let mut points = Vec::new();
    let mut layers = Vec::with_capacity(n_layers);
    for layer in 0..n_layers {
        if !ctl.tick("probing layers", layer as u64, n_layers as u64) {
            return Err(engram_model::Cancelled.into());
        }
        if a.shard.is_some_and(|s| !s.takes(layer)) {
            continue;
        }
        let mut x = Vec::with_capacity(samples.len() * d);
        for k in 0..n_chunks {
            let ck = SafetensorsCheckpoint::open(&dir.join(format!("chunk{k:05}.safetensors")))?;
            x.extend(ck.tensor(&format!("layer.{layer}"))?.data);
        }
        let probed = if a.regress {
            regress_layer(&x, d, layer, &targets, &task, 1.0)?
        } else {
            probe_layer::<B>(&x, d, layer, &task, &lm.model.device)?
        };
        let folds = &probed.folds;
        let acc: Vec<f64> = folds.iter().map(|f| f.accuracy).collect();
        let ctl: Vec<f64> = folds.iter().map(|f| f.control_accuracy).collect();
        let sel: Vec<f64> = folds
            .iter()
            .map(|f| f.accuracy - f.control_accuracy)
            .collect();
        let f1: Vec<f64> = folds.iter().map(|f| f.macro_f1).collect();
        let (ma, mc, ms, mf) = (
            mean_ci("accuracy", &acc),
            mean_ci("control", &ctl),
            mean_ci("selectivity", &sel),
            mean_ci("f1", &f1),
        );
        for (series, s) in [("accuracy", &ma), ("control", &mc), ("selectivity", &ms)] {
            if s.mean.is_finite() {
                points.push(CurvePoint {
                    series: series.into(),
                    layer: layer as i64,
                    mean: s.mean,
                    ci_low: s.ci_low,
                    ci_high: s.ci_high,
                });
            }
        }
        for f in folds {
            rows.push(if a.regress {
                json!({
                    "layer": layer, "hook": site.name(), "position": a.position, "fold": f.fold,
                    "r2": f.accuracy, "mse": f.macro_f1,
                    "control_r2": f.control_accuracy, "control_mse": f.control_f1,
                    "selectivity": f.accuracy - f.control_accuracy,
                })
            } else {
                json!({
                    "layer": layer, "hook": site.name(), "position": a.position, "fold": f.fold,
                    "accuracy": f.accuracy, "macro_f1": f.macro_f1,
                    "control_accuracy": f.control_accuracy, "control_f1": f.control_f1,
                    "selectivity": f.accuracy - f.control_accuracy, "majority": f.majority,
                })
            });
        }
        layers.push(LayerSummary {
            layer,
            accuracy: ma,
            macro_f1: mf,
            control: mc,
            selectivity: ms,
            confusion: probed.confusion,
        });
    }
    let title = format!("Probing `{}` at {} ({})", a.label, site.name(), a.position);
    let y = format!("accuracy ({}-fold mean, 95% CI)", a.folds);
    let run = store.create(
        "probe",
        RunParams {
            model: model.to_string(),
            model_hash,
            hyperparameters: json!({
                "label": a.label, "text": a.text, "subject": a.subject, "hook": site.name(),
                "position": a.position, "folds": a.folds, "grouped_by": a.subject.unwrap_or(a.text),
                "control": a.control, "min_count": a.min_count, "classes": classes,
                "shard": a.shard.map(|s| s.to_string()),
                "figure": {"title": title, "y": y},
                "probe": if a.regress {
                    "ridge, lambda 1.0, standardised features, closed form"
                } else {
                    "multinomial logistic, L2 1e-3, Adam lr 0.05, 300 full-batch steps, standardised features"
                },
            }),
            dataset: Some(a.data.display().to_string()),
            record_ids: vec![],
            seed: Some(a.seed),
            engram_version: env!("CARGO_PKG_VERSION").into(),
            device: super::device_name::<B>(),
        },
    )?;
    let rows: Vec<serde_json::Map<String, Value>> = rows
        .into_iter()
        .filter_map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect();
    run.write_rows("folds", &rows)?;
    run.write_rows("curve", &points)?;
    curve_lines(&points, &title, &y, &run.dir().join("probe.svg"))?;
    curve_lines(&points, &title, &y, &run.dir().join("probe.png"))?;
    let info = run.finish()?;
    Ok(ProbeReport {
        samples: samples.len(),
        classes,
        skipped,
        cached,
        layers,
        run_id: info.id,
        run_dir: info.dir,
        seconds: start.elapsed().as_secs_f64(),
    })
}
