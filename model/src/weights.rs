//! Memory-mapped safetensors checkpoints, single-file or sharded.
//!
//! Tensors are read straight from the map and converted to f32 one at a time,
//! so a checkpoint is never held in memory twice. Pickle files are refused.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{ModelError, Result};

/// A host-side tensor in f32 with its shape, ready to upload to a device.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Copy a device tensor back to the host as f32.
    pub fn from_tensor<B: burn_tensor::backend::Backend, const D: usize>(
        t: &burn_tensor::Tensor<B, D>,
    ) -> Result<HostTensor> {
        let shape = t.dims().to_vec();
        let data = t
            .to_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Data(format!("{e:?}")))?;
        Ok(HostTensor::new(shape, data))
    }

    /// Swap the two axes of a matrix.
    pub fn transpose(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor::new(vec![c, r], out)
    }

    /// Rows `[start, start + len)` of a matrix (or elements of a vector).
    pub fn rows(&self, start: usize, len: usize) -> HostTensor {
        let width: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = len;
        HostTensor::new(
            shape,
            self.data[start * width..(start + len) * width].to_vec(),
        )
    }

    /// Columns `[start, start + len)` of a matrix.
    pub fn cols(&self, start: usize, len: usize) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = Vec::with_capacity(r * len);
        for i in 0..r {
            out.extend_from_slice(&self.data[i * c + start..i * c + start + len]);
        }
        HostTensor::new(vec![r, len], out)
    }
}

/// Where tensors come from: a safetensors checkpoint, a GGUF file, or memory.
pub trait TensorSource {
    /// The tensor named `name` as f32, or a typed error naming it.
    fn tensor(&self, name: &str) -> Result<HostTensor>;
    /// Whether a tensor of this name exists.
    fn contains(&self, name: &str) -> bool;
    /// The file named in errors.
    fn origin(&self) -> &Path;

    /// The tensor, checked to have `shape`.
    fn tensor_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.tensor(name)?;
        if t.shape != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.origin().to_path_buf(),
                tensor: name.into(),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// A memory-mapped safetensors checkpoint (one file or an indexed set of shards).
pub struct SafetensorsCheckpoint {
    origin: PathBuf,
    shards: Vec<Shard>,
    /// tensor name → shard index
    names: HashMap<String, usize>,
}

impl SafetensorsCheckpoint {
    /// Open `model.safetensors` or `model.safetensors.index.json` in `dir`,
    /// or a single `.safetensors` file given directly.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::open_files(path, &[path.to_path_buf()]);
        }
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index.clone(),
                    source,
                })?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::MissingField {
                    path: index.clone(),
                    field: "weight_map".into(),
                })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for file in map.values() {
                let name = file.as_str().ok_or_else(|| ModelError::InvalidField {
                    path: index.clone(),
                    field: "weight_map".into(),
                    message: "shard names must be strings".into(),
                })?;
                let p = path.join(name);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            return Self::open_files(&index, &files);
        }
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Self::open_files(&single, std::slice::from_ref(&single));
        }
        for pickle in [
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
            "model.bin",
        ] {
            let p = path.join(pickle);
            if p.exists() {
                return Err(ModelError::PickleRefused { path: p });
            }
        }
        Err(ModelError::NoCheckpoint {
            path: path.to_path_buf(),
        })
    }

    fn open_files(origin: &Path, files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut names = HashMap::new();
        for path in files {
            if path
                .extension()
                .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
            {
                return Err(ModelError::PickleRefused { path: path.clone() });
            }
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the map is read-only and lives as long as `Shard`. A checkpoint
            // changed on disk while mapped is outside what Engram can guard against.
            #[allow(unsafe_code)]
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: header_problem(&map)
                        .unwrap_or_else(|| describe_safetensors_error(&e, map.len())),
                })?;
            for name in metadata.tensors().keys() {
                names.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path: path.clone(),
                map,
                header_len,
                metadata,
            });
        }
        Ok(Self {
            origin: origin.to_path_buf(),
            shards,
            names,
        })
    }

    /// All tensor names with their shapes, sorted by name.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .names
            .iter()
            .filter_map(|(n, &s)| {
                let info = self.shards[s].metadata.info(n)?;
                Some((n.clone(), info.shape.clone()))
            })
            .collect();
        v.sort();
        v
    }

    /// The data files behind this checkpoint.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file is {file_len} bytes, too short for a header"),
        E::InvalidHeaderLength => {
            format!("header length runs past the end of the file ({file_len} bytes); the file is truncated or not safetensors")
        }
        E::MetadataIncompleteBuffer => {
            format!("tensor data does not match the file size ({file_len} bytes); the file is truncated")
        }
        other => other.to_string(),
    }
}

/// What is wrong with a header the safetensors crate refused, named by
/// tensor where its own error does not: a name listed twice, or data
/// offsets past the end of the file. `None` leaves the crate's words.
fn header_problem(map: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Entries(Vec<(String, Option<(u64, u64)>)>);
    impl<'de> Visitor<'de> for &mut Entries {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a safetensors header object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
            while let Some(name) = m.next_key::<String>()? {
                let v: serde_json::Value = m.next_value()?;
                let offsets = v
                    .get("data_offsets")
                    .and_then(|o| Some((o.get(0)?.as_u64()?, o.get(1)?.as_u64()?)));
                self.0.push((name, offsets));
            }
            Ok(())
        }
    }
    let len = usize::try_from(u64::from_le_bytes(map.get(..8)?.try_into().ok()?)).ok()?;
    let header = map.get(8..8usize.checked_add(len)?)?;
    let mut entries = Entries(Vec::new());
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(&mut entries)
        .ok()?;
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = entries.0.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Some(format!("tensor `{name}` is listed twice in the header"));
    }
    let data = (map.len() - 8 - len) as u64;
    entries.0.iter().find_map(|(name, o)| {
        let (start, end) = (*o)?;
        (end > data || start > end).then(|| {
            format!(
                "tensor `{name}` (data bytes {start}..{end}) lies past the end of the data \
                 ({data} bytes); the file is truncated"
            )
        })
    })
}

impl TensorSource for SafetensorsCheckpoint {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let &shard_idx = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.origin.clone(),
                tensor: name.into(),
            })?;
        let shard = &self.shards[shard_idx];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: shard.path.clone(),
                tensor: name.into(),
            })?;
        let base = 8 + shard.header_len;
        let (start, end) = info.data_offsets;
        let bytes =
            shard
                .map
                .get(base + start..base + end)
                .ok_or_else(|| ModelError::Safetensors {
                    path: shard.path.clone(),
                    message: format!("tensor `{name}` lies past the end of the file"),
                })?;
        let data = decode(bytes, info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
            path: shard.path.clone(),
            tensor: name.into(),
            dtype: format!("{:?}", info.dtype),
        })?;
        Ok(HostTensor::new(info.shape.clone(), data))
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Little-endian floating-point bytes to f32; `None` for dtypes a model never stores weights in.
fn decode(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// Tensors held in memory, for tests and for models built in code.
#[derive(Default)]
pub struct MemorySource {
    pub tensors: HashMap<String, HostTensor>,
    pub origin: PathBuf,
}

impl TensorSource for MemorySource {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.origin.clone(),
                tensor: name.into(),
            })
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Write tensors as a safetensors file in `dtype` (F32, F16 or BF16), atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    dtype: Dtype,
) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let bytes: Vec<u8> = match dtype {
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
                _ => t.data.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            };
            (n.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let dtype = if matches!(dtype, Dtype::F16 | Dtype::BF16) {
        dtype
    } else {
        Dtype::F32
    };
    let views = encoded
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(dtype, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("{n}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
