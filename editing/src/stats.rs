//! Layer statistics (ROME §3.1, "layer_stats"): the uncentred second moment
//! C = E[k kᵀ] of an MLP's keys k (`blocks.{l}.mlp.hook_post`, the input of the
//! output projection), streamed over a text corpus. Only blocks up to the
//! edited one run; each batch's kᵀk is one GEMM (Engram's on the CPU, the
//! device's elsewhere) in f32, flushed into an f64 accumulator, so memory stays
//! at d_mlp² beyond the model. Results are cached on disk, keyed by the model's content
//! hash, the layer, the corpus hash and the token count.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn_tensor::backend::Backend;
use burn_tensor::Tensor;
use engram_model::hooks::{Activation, BlockSite};
use engram_model::{fn_hook, Batch, HookPoint, Tokenizer, Transformer};
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};

/// How much text to read and how to batch it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsOptions {
    pub layer: usize,
    /// Stop after this many key vectors (tokens).
    pub max_tokens: usize,
    /// Tokens per row (at most the model's context).
    pub seq_len: usize,
    pub batch_size: usize,
}

impl StatsOptions {
    pub fn new(layer: usize) -> Self {
        Self {
            layer,
            max_tokens: 100_000,
            seq_len: 256,
            batch_size: 8,
        }
    }
}

/// What the statistics were computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsKey {
    pub model_hash: String,
    pub layer: usize,
    pub corpus_hash: String,
    pub tokens: u64,
}

/// The accumulated second moment of one layer's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    pub key: StatsKey,
    /// d_mlp
    pub dim: usize,
    /// Row-major `[dim, dim]`: Σ k kᵀ over `key.tokens` vectors.
    pub sum_outer: Vec<f64>,
}

impl LayerStats {
    /// E[k kᵀ], row-major `[dim, dim]`.
    pub fn mom2(&self) -> Vec<f64> {
        let n = self.key.tokens.max(1) as f64;
        self.sum_outer.iter().map(|v| v / n).collect()
    }

    /// The cache file for `key` under `dir`.
    pub fn cache_path(dir: &Path, key: &StatsKey) -> PathBuf {
        let model = key.model_hash.replace([':', '/'], "_");
        let corpus = key.corpus_hash.replace([':', '/'], "_");
        dir.join(model).join(format!(
            "layer{}-{corpus}-{}tok.mom2",
            key.layer, key.tokens
        ))
    }

    /// Write atomically: a JSON header line, then the f64 entries (little endian).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| EditError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // A name of its own, so two writers of one layer never share a file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("mom2.{}-{n}.partial", std::process::id()));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        let header =
            serde_json::json!({ "format": "engram-mom2-v1", "dim": self.dim, "key": self.key });
        writeln!(f, "{header}").map_err(io)?;
        for v in &self.sum_outer {
            f.write_all(&v.to_le_bytes()).map_err(io)?;
        }
        f.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bad = |message: String| EditError::File {
            path: path.to_path_buf(),
            message,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| bad(e.to_string()))?;
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no header line".into()))?;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[..nl]).map_err(|e| bad(format!("header: {e}")))?;
        if header["format"] != "engram-mom2-v1" {
            return Err(bad("not an engram statistics file".into()));
        }
        let dim = header["dim"]
            .as_u64()
            .ok_or_else(|| bad("header has no dim".into()))? as usize;
        let key: StatsKey = serde_json::from_value(header["key"].clone())
            .map_err(|e| bad(format!("header key: {e}")))?;
        let body = &bytes[nl + 1..];
        if body.len() != dim * dim * 8 {
            return Err(bad(format!(
                "truncated: {} bytes of data, expected {} for {dim} x {dim} f64",
                body.len(),
                dim * dim * 8
            )));
        }
        let sum_outer = body
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(Self {
            key,
            dim,
            sum_outer,
        })
    }
}

/// FNV-1a 64 of the corpus text, as `fnv1a64:<hex>`.
pub fn corpus_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

/// Token rows of `seq_len` from `text`, tokenised paragraph by paragraph.
fn token_rows(
    tokenizer: &Tokenizer,
    text: &str,
    seq_len: usize,
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut rows = Vec::new();
    let mut current: Vec<u32> = Vec::with_capacity(seq_len);
    let mut total = 0usize;
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        for id in tokenizer.encode(para)? {
            current.push(id);
            total += 1;
            if current.len() == seq_len {
                rows.push(std::mem::replace(&mut current, Vec::with_capacity(seq_len)));
            }
            if total >= max_tokens {
                break;
            }
        }
        if total >= max_tokens {
            break;
        }
    }
    if current.len() > 1 {
        rows.push(current);
    }
    Ok(rows)
}

/// Collect the key second moment of `opts.layer` over `text`. `progress(tokens
/// done, tokens planned)` returns false to cancel.
pub fn collect_stats<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    text: &str,
    model_hash: &str,
    opts: &StatsOptions,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<LayerStats> {
    let rows = corpus_rows(model, tokenizer, text, opts)?;
    let key = StatsKey {
        model_hash: model_hash.into(),
        layer: opts.layer,
        corpus_hash: corpus_hash(text),
        tokens: 0,
    };
    collect_rows(model, &rows, key, opts.batch_size, progress)
}

/// The corpus cut into rows of `opts.seq_len` tokens (at most the context).
fn corpus_rows<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    text: &str,
    opts: &StatsOptions,
) -> Result<Vec<Vec<u32>>> {
    let seq_len = opts.seq_len.clamp(2, model.config.n_ctx);
    token_rows(tokenizer, text, seq_len, opts.max_tokens)
}

/// Σ k kᵀ over `rows`; `key.tokens` is set to the vectors read.
fn collect_rows<B: Backend>(
    model: &Transformer<B>,
    rows: &[Vec<u32>],
    key: StatsKey,
    batch_size: usize,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<LayerStats> {
    let mut out = collect_layers(model, rows, vec![key], batch_size, progress)?;
    out.pop()
        .ok_or_else(|| EditError::Invalid("no statistics collected".into()))
}

/// Σ k kᵀ of several layers in one pass over `rows` (one key per layer).
fn collect_layers<B: Backend>(
    model: &Transformer<B>,
    rows: &[Vec<u32>],
    mut keys: Vec<StatsKey>,
    batch_size: usize,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<Vec<LayerStats>> {
    let n_layers = model.config.n_layers;
    if let Some(k) = keys.iter().find(|k| k.layer >= n_layers) {
        return Err(EditError::Layer {
            layer: k.layer,
            n_layers,
        });
    }
    if rows.is_empty() {
        return Err(EditError::Invalid(
            "the statistics corpus has no text".into(),
        ));
    }
    let Some(top) = keys.iter().map(|k| k.layer).max() else {
        return Ok(Vec::new());
    };
    let planned: u64 = rows.iter().map(|r| r.len() as u64).sum();
    let dim = model.config.d_mlp;
    let mut sums = vec![vec![0f64; dim * dim]; keys.len()];
    let mut done = 0u64;
    let points: Vec<HookPoint> = keys
        .iter()
        .map(|k| HookPoint::block(k.layer, BlockSite::MlpPost))
        .collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        if !progress(done, planned) {
            return Err(engram_model::Cancelled.into());
        }
        // Rows of one chunk share a length, except perhaps the corpus's last row.
        let groups: Vec<Vec<Vec<u32>>> = {
            let mut g: Vec<Vec<Vec<u32>>> = Vec::new();
            for r in chunk {
                match g.last_mut() {
                    Some(last) if last[0].len() == r.len() => last.push(r.clone()),
                    _ => g.push(vec![r.clone()]),
                }
            }
            g
        };
        for rows in groups {
            let batch = Batch::uniform(&rows)?;
            let mut seen: Vec<Option<Tensor<B, 3>>> = vec![None; points.len()];
            let mut hook = fn_hook::<B, _>(points.clone(), |p, act: &Activation<B>| {
                if let Some(i) = points.iter().position(|q| *q == p) {
                    seen[i] = act.as_rank3().cloned();
                }
                None
            });
            let ctx = model.context(&batch)?;
            let x = model.embed(&batch, &mut hook)?;
            model.run_blocks(0..top + 1, x, &ctx, &mut hook)?;
            drop(hook);
            let mut n = 0;
            for ((k, sum), point) in seen.into_iter().zip(&mut sums).zip(&points) {
                let Some(k) = k else {
                    return Err(EditError::Invalid(format!("no activation at {point}")));
                };
                // [batch, pos, d_mlp] -> [n, d_mlp]; kᵀk: [d_mlp, d_mlp]
                let [b, s, d] = k.dims();
                n = b * s;
                let k = k.reshape([b * s, d]);
                let fast = engram_model::cpu::workflow_paths()
                    .then(|| engram_model::cpu::gram(&k))
                    .flatten();
                let v: Vec<f32> = match fast {
                    Some(v) => v,
                    None => k
                        .clone()
                        .transpose()
                        .matmul(k)
                        .into_data()
                        .convert::<f32>()
                        .into_vec()
                        .map_err(|e| EditError::Invalid(format!("reading statistics: {e:?}")))?,
                };
                for (acc, x) in sum.iter_mut().zip(&v) {
                    *acc += f64::from(*x);
                }
            }
            done += n as u64;
        }
    }
    progress(done, planned);
    Ok(keys
        .iter_mut()
        .zip(sums)
        .map(|(key, sum)| {
            key.tokens = done;
            LayerStats {
                key: key.clone(),
                dim,
                sum_outer: sum,
            }
        })
        .collect())
}

/// The statistics of every layer in `layers`, each from the cache under `dir`
/// where it is there; the missing ones are collected together in one pass and
/// cached. `opts.layer` is ignored. Also says which came from the cache.
#[allow(clippy::too_many_arguments)]
pub fn cached_stats_layers<B: Backend>(
    dir: &Path,
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    text: &str,
    model_hash: &str,
    layers: &[usize],
    opts: &StatsOptions,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<Vec<(LayerStats, bool)>> {
    let rows = corpus_rows(model, tokenizer, text, opts)?;
    let planned: u64 = rows.iter().map(|r| r.len() as u64).sum();
    let corpus = corpus_hash(text);
    let mut out: Vec<Option<(LayerStats, bool)>> = vec![None; layers.len()];
    let mut missing = Vec::new();
    for (i, &layer) in layers.iter().enumerate() {
        let key = StatsKey {
            model_hash: model_hash.into(),
            layer,
            corpus_hash: corpus.clone(),
            tokens: planned,
        };
        let path = LayerStats::cache_path(dir, &key);
        if path.is_file() {
            let stats = LayerStats::load(&path)?;
            if stats.key != key || stats.dim != model.config.d_mlp {
                return Err(EditError::StatsMismatch {
                    what: format!("{:?}", stats.key),
                    expected: format!("{key:?}"),
                });
            }
            out[i] = Some((stats, true));
        } else {
            missing.push((i, key));
        }
    }
    if !missing.is_empty() {
        let keys = missing.iter().map(|(_, k)| k.clone()).collect();
        let collected = collect_layers(model, &rows, keys, opts.batch_size, progress)?;
        for ((i, key), mut stats) in missing.into_iter().zip(collected) {
            // The token count is part of the key: the planned count is looked up.
            stats.key.tokens = key.tokens;
            stats.save(&LayerStats::cache_path(dir, &stats.key))?;
            out[i] = Some((stats, false));
        }
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| EditError::Invalid("statistics missing".into())))
        .collect()
}

/// Load the statistics from the cache under `dir`, or collect and cache them.
#[allow(clippy::too_many_arguments)]
pub fn cached_stats<B: Backend>(
    dir: &Path,
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    text: &str,
    model_hash: &str,
    opts: &StatsOptions,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<(LayerStats, bool)> {
    let mut one = cached_stats_layers(
        dir,
        model,
        tokenizer,
        text,
        model_hash,
        &[opts.layer],
        opts,
        progress,
    )?;
    one.pop()
        .ok_or_else(|| EditError::Invalid("no statistics collected".into()))
}
