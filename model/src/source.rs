//! Where a model comes from: a local directory or `.gguf` file, `demo` (the
//! embedded demo checkpoint), or a Hugging Face hub id fetched through `hf-hub`
//! where the network and [`Settings::hub_offline`] allow (tests never do).
//! Also the content hash that keys runs, caches and ledgers by model.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::settings::Settings;
use crate::ModelError;

/// The demo checkpoint, compiled into every binary so that it opens from anywhere.
pub const DEMO_FILES: [(&str, &[u8]); 3] = [
    (
        "config.json",
        include_bytes!("../../app/assets/demo-model/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../app/assets/demo-model/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../app/assets/demo-model/tokenizer.json"),
    ),
];

fn repo_demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model")
}

/// A directory holding the demo model: the repository's copy where it is
/// present, otherwise the embedded bytes written once under `settings.cache`.
pub fn demo_model_dir(settings: &Settings) -> Result<PathBuf, ModelError> {
    let repo = repo_demo_dir();
    if repo.join("model.safetensors").is_file() {
        return Ok(repo);
    }
    let dir = settings.cache.join("demo-model");
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    for (name, bytes) in DEMO_FILES {
        let path = dir.join(name);
        let current = std::fs::metadata(&path).map(|m| m.len()).ok();
        if current != Some(bytes.len() as u64) {
            crate::save::write_file_atomic(&path, bytes)?;
        }
    }
    Ok(dir)
}

/// Whether `arg` names the demo model: `demo`, or a directory holding the
/// demo checkpoint's files (compared by content, so a copy anywhere counts).
pub fn is_demo(arg: &Path, _settings: &Settings) -> bool {
    if arg == Path::new("demo") {
        return true;
    }
    arg.is_dir()
        && DEMO_FILES.iter().all(|(name, bytes)| {
            let path = arg.join(name);
            std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64)
                && std::fs::read(&path).is_ok_and(|b| b == *bytes)
        })
}

/// Whether `arg` reads as a hub id rather than a path.
pub fn looks_like_hub_id(arg: &str) -> bool {
    let parts: Vec<&str> = arg.split('/').collect();
    !arg.starts_with('.')
        && !arg.starts_with('/')
        && !arg.starts_with('~')
        && !arg.ends_with(".gguf")
        && (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// A local path for `arg`: the path itself if it exists, `demo`'s directory,
/// else a hub download.
pub fn resolve_model(arg: &Path, settings: &Settings) -> Result<PathBuf, ModelError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    if arg == Path::new("demo") {
        return demo_model_dir(settings);
    }
    let text = arg.to_string_lossy();
    let not_found = |message: String| ModelError::Io {
        path: arg.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, message),
    };
    if !looks_like_hub_id(&text) {
        return Err(not_found("no such file or directory".into()));
    }
    if settings.hub_offline {
        return Err(not_found(
            "not a local path, and HF_HUB_OFFLINE is set, so the Hugging Face hub was not asked; \
             pass a local model directory instead (config.json + model.safetensors + tokenizer.json)"
                .into(),
        ));
    }
    download(&text).map_err(|e| {
        not_found(format!(
            "not a local path and could not be fetched from the Hugging Face hub \
             (offline?): {e}; pass a local model directory instead"
        ))
    })
}

fn download(id: &str) -> Result<PathBuf, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let api = hf_hub::api::sync::Api::new().map_err(|e| err(&e))?;
    let repo = api.model(id.to_string());
    let config = repo.get("config.json").map_err(|e| err(&e))?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or("hub cache path has no parent")?;
    repo.get("tokenizer.json")
        .or_else(|_| {
            repo.get("vocab.json")?;
            repo.get("merges.txt")
        })
        .map_err(|e| err(&e))?;
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| err(&e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&e))?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .ok_or("index has no weight_map")?
                .values()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(&s).map_err(|e| err(&e))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(|e| {
                format!("the repository has no model.safetensors (Engram refuses pickle checkpoints): {e}")
            })?;
        }
    }
    Ok(dir)
}

/// Content hash of a model: the file itself, or the weights, config and
/// tokenizer files in a directory.
pub fn model_hash(model: &Path) -> Result<String, ModelError> {
    let files: Vec<PathBuf> = if model.is_file() {
        vec![model.to_path_buf()]
    } else {
        std::fs::read_dir(model)
            .map_err(|e| ModelError::io(model, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|e| {
                        e == "safetensors" || e == "json" || e == "txt" || e == "gguf"
                    })
            })
            .collect()
    };
    hash_files(&files)
}

/// A content hash (FNV-1a, 64-bit) of files, in path order.
pub fn hash_files(paths: &[PathBuf]) -> Result<String, ModelError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut sorted = paths.to_vec();
    sorted.sort();
    for p in sorted {
        let file = File::open(&p).map_err(|e| ModelError::io(&p, e))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        loop {
            let buf = std::io::BufRead::fill_buf(&mut reader).map_err(|e| ModelError::io(&p, e))?;
            if buf.is_empty() {
                break;
            }
            for &b in buf {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            let n = buf.len();
            std::io::BufRead::consume(&mut reader, n);
        }
    }
    Ok(format!("fnv1a64:{h:016x}"))
}
