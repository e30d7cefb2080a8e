//! Save a model whose MLP output projections were replaced (by weight edits) as
//! a new checkpoint directory in its source's format. Untouched tensors are
//! copied byte for byte; replaced ones are written in the source tensor's dtype
//! (safetensors) or as F32 (GGUF, where the rest stays quantized). Config,
//! tokenizer and other small files are copied. The directory is written beside
//! its destination and renamed into place, so it appears whole or not at all;
//! an existing path is never overwritten.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, GgufCheckpoint};
use crate::weights::HostTensor;

/// A replaced MLP output projection, `[d_mlp, d_model]` as `Mlp::fc_out` holds it.
pub struct Replaced {
    pub layer: usize,
    pub weight: HostTensor,
}

/// The checkpoint names an MLP output weight may have, and whether the
/// checkpoint stores it `[out, in]` (Linear) rather than `[in, out]` (Conv1D).
pub fn mlp_out_names(cfg: &ModelConfig, layer: usize) -> (Vec<String>, bool) {
    match cfg.arch {
        Architecture::Gpt2 => (
            vec![
                format!("transformer.h.{layer}.mlp.c_proj.weight"),
                format!("h.{layer}.mlp.c_proj.weight"),
            ],
            false,
        ),
        Architecture::GptJ => (
            vec![format!("transformer.h.{layer}.mlp.fc_out.weight")],
            true,
        ),
        Architecture::GptNeoX => (
            vec![format!("gpt_neox.layers.{layer}.mlp.dense_4h_to_h.weight")],
            true,
        ),
        Architecture::Llama => (
            vec![format!("model.layers.{layer}.mlp.down_proj.weight")],
            true,
        ),
    }
}

/// Files copied beside the weights: configs, tokenizers, licences.
fn is_side_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.is_file()
        && name != "model.safetensors.index.json"
        && (matches!(ext.as_str(), "json" | "txt" | "model" | "md") || name.starts_with("LICENSE"))
}

/// Write `source` (a HF directory or a `.gguf` file) with `replaced` weights and
/// `extra` files (name, bytes) as the new directory `out`. Returns the path to
/// load: `out` itself, or `out/model.gguf`.
pub fn save_checkpoint(
    source: &Path,
    cfg: &ModelConfig,
    replaced: &[Replaced],
    extra: &[(String, Vec<u8>)],
    out: &Path,
) -> Result<PathBuf> {
    if out.exists() {
        return Err(ModelError::OutputExists { path: out.into() });
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ModelError::Data(format!("{}: not a directory name", out.display())))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let written = write_into(source, cfg, replaced, extra, &tmp);
    let written = written.and_then(|model| {
        std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))?;
        Ok(model.map_or_else(|| out.to_path_buf(), |m| out.join(m)))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Fill `dir`; returns the model file's name inside it, if not the directory itself.
fn write_into(
    source: &Path,
    cfg: &ModelConfig,
    replaced: &[Replaced],
    extra: &[(String, Vec<u8>)],
    dir: &Path,
) -> Result<Option<&'static str>> {
    let is_gguf = source.is_file()
        && source
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let side_dir = if is_gguf {
        source.parent().unwrap_or(Path::new("."))
    } else {
        source
    };
    let entries = std::fs::read_dir(side_dir).map_err(|e| ModelError::io(side_dir, e))?;
    for p in entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_side_file(p))
    {
        if let Some(n) = p.file_name() {
            std::fs::copy(&p, dir.join(n)).map_err(|e| ModelError::io(&p, e))?;
        }
    }
    for (n, bytes) in extra {
        let p = dir.join(n);
        std::fs::write(&p, bytes).map_err(|e| ModelError::io(&p, e))?;
    }
    if is_gguf {
        write_gguf(source, replaced, &dir.join("model.gguf"))?;
        Ok(Some("model.gguf"))
    } else {
        write_safetensors(source, cfg, replaced, &dir.join("model.safetensors"))?;
        Ok(None)
    }
}

fn encode(t: &HostTensor, dtype: Dtype, path: &Path, name: &str) -> Result<Vec<u8>> {
    Ok(match dtype {
        Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => t
            .data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => t
            .data
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                path: path.into(),
                tensor: name.into(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// Every tensor of the source checkpoint (one file or shards) into one file.
fn write_safetensors(
    source: &Path,
    cfg: &ModelConfig,
    replaced: &[Replaced],
    out: &Path,
) -> Result<()> {
    let ckpt = crate::weights::SafetensorsCheckpoint::open(source)?;
    let maps: Vec<(PathBuf, memmap2::Mmap)> = ckpt
        .files()
        .iter()
        .map(|p| {
            let f = File::open(p).map_err(|e| ModelError::io(*p, e))?;
            // SAFETY: read-only map, dropped before this function returns.
            #[allow(unsafe_code)]
            let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(*p, e))?;
            Ok((p.to_path_buf(), m))
        })
        .collect::<Result<_>>()?;
    let files: Vec<(PathBuf, SafeTensors<'_>)> = maps
        .iter()
        .map(|(p, m)| {
            SafeTensors::deserialize(m)
                .map(|st| (p.clone(), st))
                .map_err(|e| ModelError::Safetensors {
                    path: p.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    // Replacement bytes, keyed by checkpoint name.
    let mut new_bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for r in replaced {
        let (names, out_in) = mlp_out_names(cfg, r.layer);
        let found = names.iter().find_map(|n| {
            files
                .iter()
                .find_map(|(p, st)| st.tensor(n).ok().map(|v| (n.clone(), p, v)))
        });
        let Some((name, path, view)) = found else {
            return Err(ModelError::MissingTensor {
                path: source.into(),
                tensor: names.first().cloned().unwrap_or_default(),
            });
        };
        let w = if out_in {
            r.weight.transpose()
        } else {
            r.weight.clone()
        };
        if w.shape != view.shape() {
            return Err(ModelError::ShapeMismatch {
                path: path.clone(),
                tensor: name,
                expected: view.shape().to_vec(),
                found: w.shape,
            });
        }
        let bytes = encode(&w, view.dtype(), path, &name)?;
        new_bytes.push((name, view.dtype(), w.shape, bytes));
    }
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for (_, st) in &files {
        for (name, view) in st.tensors() {
            if !new_bytes.iter().any(|(n, ..)| *n == name) {
                views.push((name, view));
            }
        }
    }
    for (name, dtype, shape, bytes) in &new_bytes {
        let v =
            TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| ModelError::Safetensors {
                path: out.into(),
                message: format!("{name}: {e}"),
            })?;
        views.push((name.clone(), v));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::serialize_to_file(views, None, out).map_err(|e| ModelError::Safetensors {
        path: out.into(),
        message: e.to_string(),
    })
}

/// The GGUF file with its metadata and untouched tensors copied verbatim and the
/// replaced ones as F32.
fn write_gguf(source: &Path, replaced: &[Replaced], out: &Path) -> Result<()> {
    let ckpt = GgufCheckpoint::open(source)?;
    let file = &ckpt.file;
    let mut new_data: Vec<(String, Vec<u8>)> = Vec::new();
    for r in replaced {
        let (names, _) = mlp_out_names(&ckpt.config, r.layer);
        let hf = names.first().cloned().unwrap_or_default();
        let g = ckpt
            .gguf_name(&hf)
            .map(|(g, _)| g)
            .filter(|g| file.tensors.contains_key(g))
            .ok_or_else(|| ModelError::MissingTensor {
                path: source.into(),
                tensor: hf.clone(),
            })?;
        // GGUF rows are the HF `[out, in]` rows.
        let w = r.weight.transpose();
        if file.tensors[&g].shape != w.shape {
            return Err(ModelError::ShapeMismatch {
                path: source.into(),
                expected: file.tensors[&g].shape.clone(),
                tensor: g,
                found: w.shape,
            });
        }
        new_data.push((g, encode(&w, Dtype::F32, source, &hf)?));
    }
    let io = |e: std::io::Error| ModelError::io(out, e);
    let mut w = BufWriter::new(File::create(out).map_err(io)?);
    let align = file.alignment;
    let mut pos = 0usize;
    let put = |w: &mut BufWriter<File>, b: &[u8], pos: &mut usize| -> Result<()> {
        w.write_all(b).map_err(io)?;
        *pos += b.len();
        Ok(())
    };
    put(&mut w, b"GGUF", &mut pos)?;
    put(&mut w, &file.version.to_le_bytes(), &mut pos)?;
    put(&mut w, &(file.order.len() as u64).to_le_bytes(), &mut pos)?;
    put(&mut w, &(file.n_kv as u64).to_le_bytes(), &mut pos)?;
    put(&mut w, file.bytes(file.metadata_range), &mut pos)?;
    // Tensor table, with offsets recomputed for the new sizes.
    let mut layout: Vec<(&[u8], usize)> = Vec::new();
    let mut offset = 0usize;
    for name in &file.order {
        let t = &file.tensors[name];
        let (ty, data): (GgmlType, &[u8]) = match new_data.iter().find(|(n, _)| n == name) {
            Some((_, bytes)) => (GgmlType::F32, bytes),
            None => (t.ggml_type, file.bytes(t.range)),
        };
        put(&mut w, &(name.len() as u64).to_le_bytes(), &mut pos)?;
        put(&mut w, name.as_bytes(), &mut pos)?;
        put(&mut w, &(t.shape.len() as u32).to_le_bytes(), &mut pos)?;
        for d in t.shape.iter().rev() {
            put(&mut w, &(*d as u64).to_le_bytes(), &mut pos)?;
        }
        put(&mut w, &ty.id().to_le_bytes(), &mut pos)?;
        put(&mut w, &(offset as u64).to_le_bytes(), &mut pos)?;
        layout.push((data, offset));
        offset = (offset + data.len()).div_ceil(align) * align;
    }
    let data_start = pos.div_ceil(align) * align;
    put(&mut w, &vec![0u8; data_start - pos], &mut pos)?;
    for (data, off) in layout {
        let at = data_start + off;
        put(&mut w, &vec![0u8; at - pos], &mut pos)?;
        put(&mut w, data, &mut pos)?;
    }
    w.flush().map_err(io)?;
    w.into_inner()
        .map_err(|e| ModelError::io(out, e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// Write `bytes` to `path` whole: a temporary file unique to this process and
/// call beside it, fsync, then a rename over `path`.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}
