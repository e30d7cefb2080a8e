//! Bad input gives a typed error naming the file, tensor or field: never a panic.

use std::path::{Path, PathBuf};

use engram_model::device::Cpu;
use engram_model::{LanguageModel, ModelError};

use crate::common::shared;

/// A writable copy of a tiny fixture directory.
fn scratch(arch: &str, tag: &str) -> Option<PathBuf> {
    let src = shared(tag)?.join("fixtures/tiny").join(arch);
    let dir = std::env::temp_dir().join(format!("engram-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy");
        let mut perm = std::fs::metadata(dir.join(f)).expect("meta").permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(dir.join(f), perm).expect("perm");
    }
    Some(dir)
}

fn load(dir: &Path) -> Result<LanguageModel<Cpu>, ModelError> {
    LanguageModel::<Cpu>::load(dir, &Default::default())
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
    f(v.as_object_mut().expect("object"));
    std::fs::write(&p, serde_json::to_string(&v).expect("ser")).expect("write");
}

/// Rewrite model.safetensors through `f`, which maps (name, dtype, shape, bytes) to a new entry or drops it.
fn rewrite_tensors(
    dir: &Path,
    f: impl Fn(
        &str,
        safetensors::Dtype,
        &[usize],
        &[u8],
    ) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut owned = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(entry) = f(&name, view.dtype(), view.shape(), view.data()) {
            owned.push((name, entry));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &p).expect("write");
}

#[test]
#[ignore = "needs ../shared"]
fn truncated_safetensors_names_the_file() {
    let Some(dir) = scratch("gpt2", "truncated") else {
        return;
    };
    let p = dir.join("model.safetensors");
    let len = std::fs::metadata(&p).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let err = load(&dir).expect_err("truncated file must fail");
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn header_length_past_eof_names_the_file() {
    let Some(dir) = scratch("gpt2", "header") else {
        return;
    };
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(dir.join("model.safetensors"), bytes).expect("write");
    let err = load(&dir).expect_err("bad header must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("header length"),
        "{msg}"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn missing_tensor_is_named() {
    let Some(dir) = scratch("llama", "missing") else {
        return;
    };
    rewrite_tensors(&dir, |n, d, s, b| {
        (n != "model.layers.1.mlp.up_proj.weight").then(|| (d, s.to_vec(), b.to_vec()))
    });
    let err = load(&dir).expect_err("missing tensor must fail");
    assert!(
        matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "model.layers.1.mlp.up_proj.weight"),
        "{err:?}"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn shape_mismatch_is_named() {
    let Some(dir) = scratch("gpt2", "shape") else {
        return;
    };
    edit_config(&dir, |c| {
        c.insert("n_inner".into(), 128.into());
    });
    let err = load(&dir).expect_err("shape mismatch must fail");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err:?}");
    assert!(
        msg.contains("transformer.h.0.mlp.c_fc.weight") && msg.contains("[64, 256]"),
        "{msg}"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn unsupported_dtype_is_named() {
    let Some(dir) = scratch("gpt2", "dtype") else {
        return;
    };
    rewrite_tensors(&dir, |n, d, s, b| {
        if n == "transformer.ln_f.weight" {
            Some((safetensors::Dtype::I32, s.to_vec(), b.to_vec()))
        } else {
            Some((d, s.to_vec(), b.to_vec()))
        }
    });
    let err = load(&dir).expect_err("int weights must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("transformer.ln_f.weight") && msg.contains("I32"),
        "{msg}"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn f16_and_bf16_checkpoints_load_close_to_f32() {
    let Some(dir) = scratch("llama", "halfprec") else {
        return;
    };
    let f32_model = load(&dir).expect("f32");
    let prompt = "The city of";
    let base = f32_model.next_logits(prompt).expect("logits");
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        rewrite_tensors(&dir, |_, d, s, b| {
            assert!(matches!(
                d,
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
            ));
            let vals: Vec<f32> = match d {
                safetensors::Dtype::F32 => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::F16 => b
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                _ => b
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            };
            let out: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => vals
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => vals
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            Some((dtype, s.to_vec(), out))
        });
        let half_model = load(&dir).expect("half-precision checkpoint");
        let got = half_model.next_logits(prompt).expect("logits");
        let diff = got
            .iter()
            .zip(&base)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // Rounding weights to 11 (f16) or 8 (bf16) mantissa bits moves logits a little, not a lot.
        let bound = if dtype == safetensors::Dtype::F16 {
            0.02
        } else {
            0.15
        };
        eprintln!("{dtype:?} checkpoint: max logit change {diff}");
        assert!(
            diff > 0.0 && diff < bound,
            "{dtype:?}: max logit change {diff}"
        );
    }
}

#[test]
#[ignore = "needs ../shared"]
fn config_missing_field_is_named() {
    let Some(dir) = scratch("gpt2", "field") else {
        return;
    };
    edit_config(&dir, |c| {
        c.remove("n_embd");
    });
    let err = load(&dir).expect_err("missing field must fail");
    assert!(
        matches!(&err, ModelError::MissingField { field, .. } if field == "n_embd"),
        "{err:?}"
    );
    assert!(err.to_string().contains("config.json"));
}

#[test]
#[ignore = "needs ../shared"]
fn unknown_model_type_lists_supported() {
    let Some(dir) = scratch("gpt2", "mtype") else {
        return;
    };
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "mamba".into());
    });
    let msg = load(&dir).expect_err("unsupported").to_string();
    assert!(
        msg.contains("mamba") && msg.contains("gpt_neox") && msg.contains("llama"),
        "{msg}"
    );
}

#[test]
fn pickle_checkpoint_is_refused() {
    let dir = std::env::temp_dir().join(format!("engram-pickle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    std::fs::write(dir.join("config.json"), r#"{"model_type":"gpt2","n_embd":8,"n_head":2,"n_layer":1,"n_positions":8,"vocab_size":10}"#)
        .expect("write");
    std::fs::write(dir.join("pytorch_model.bin"), b"PK\x03\x04 not really").expect("write");
    let err = load(&dir).expect_err("pickle must be refused");
    assert!(matches!(err, ModelError::PickleRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("pytorch_model.bin"));
}

#[test]
#[ignore = "needs ../shared"]
fn empty_and_too_long_prompts_are_errors() {
    let Some((_, lm)) = crate::common::tiny("gpt2") else {
        return;
    };
    assert!(matches!(lm.top_k("", 5), Err(ModelError::EmptyPrompt)));
    let long = "word ".repeat(200);
    match lm.top_k(&long, 5) {
        Err(ModelError::PromptTooLong { len, n_ctx }) => assert!(len > n_ctx && n_ctx == 64),
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}

#[test]
#[ignore = "needs ../shared"]
fn token_out_of_vocab_is_an_error() {
    let Some((_, lm)) = crate::common::tiny("gpt2") else {
        return;
    };
    let err = lm
        .model
        .logits(&engram_model::Batch::single(&[1, 2, 9999]))
        .expect_err("oov");
    assert!(
        matches!(
            err,
            ModelError::TokenOutOfRange {
                id: 9999,
                position: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A checkpoint split into shards with `model.safetensors.index.json` loads to the same model.
#[test]
#[ignore = "needs ../shared"]
fn sharded_checkpoint_loads_identically() {
    let Some(dir) = scratch("llama", "sharded") else {
        return;
    };
    let single = load(&dir).expect("single file");
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = chunk
            .iter()
            .map(|n| (n.clone(), st.tensor(n).expect("tensor")))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).expect("write shard");
        for n in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::remove_file(dir.join("model.safetensors")).expect("remove single");
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    let sharded = load(&dir).expect("sharded");
    let prompt = "The old river";
    assert_eq!(
        single.next_logits(prompt).expect("a"),
        sharded.next_logits(prompt).expect("b")
    );
}

/// One config edit on a fixture, and the words its load error must carry.
fn config_case(
    arch: &str,
    tag: &str,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Option<String> {
    let dir = scratch(arch, tag)?;
    edit_config(&dir, f);
    let err = load(&dir).expect_err("an inconsistent config must fail at load");
    let msg = err.to_string();
    assert!(msg.contains("config.json"), "{msg}");
    Some(msg)
}

#[test]
#[ignore = "needs ../shared"]
fn inconsistent_shapes_are_refused_at_load_naming_key_and_rule() {
    use serde_json::json;
    let cases: Vec<(&str, &str, &str, serde_json::Value, &str)> = vec![
        (
            "gpt2",
            "h5",
            "n_head",
            json!(5),
            "do not divide the width 64",
        ),
        (
            "gptj",
            "jh5",
            "n_head",
            json!(5),
            "do not divide the width 64",
        ),
        (
            "gpt2",
            "h0",
            "n_head",
            json!(0),
            "outside the plausible range",
        ),
        (
            "gpt_neox",
            "nh3",
            "num_attention_heads",
            json!(3),
            "do not divide",
        ),
        (
            "llama",
            "lh6",
            "num_attention_heads",
            json!(6),
            "do not divide the width 64",
        ),
        (
            "llama",
            "kv3",
            "num_key_value_heads",
            json!(3),
            "do not divide the 4 query heads",
        ),
        (
            "llama",
            "kv0",
            "num_key_value_heads",
            json!(0),
            "do not divide",
        ),
        (
            "llama",
            "theta0",
            "rope_theta",
            json!(0.0),
            "finite base above 1",
        ),
        ("gptj", "rot3", "rotary_dim", json!(3), "must be even"),
        (
            "gptj",
            "rot99",
            "rotary_dim",
            json!(99),
            "at most the head size 16",
        ),
        (
            "gpt2",
            "ctx",
            "n_positions",
            json!(1_000_000_000_000u64),
            "plausible range",
        ),
        ("gpt2", "vocab0", "vocab_size", json!(0), "plausible range"),
        ("llama", "eps", "rms_norm_eps", json!(-1.0), "at least 0"),
    ];
    for (arch, tag, key, value, rule) in cases {
        let Some(msg) = config_case(arch, tag, |c| {
            c.insert(key.into(), value.clone());
            if tag == "lh6" {
                // Without an explicit head size, the width must split evenly.
                c.remove("head_dim");
            }
            if key == "rope_theta" {
                // transformers 5 writes it under rope_parameters, which wins.
                c.remove("rope_parameters");
            }
        }) else {
            return;
        };
        assert!(
            msg.contains(&format!("`{key}`")) && msg.contains(rule),
            "{arch} {key}={value}: {msg}"
        );
    }
}

#[test]
#[ignore = "needs ../shared"]
fn special_token_ids_outside_the_vocabulary_are_dropped_with_a_warning() {
    let Some(dir) = scratch("llama", "eos") else {
        return;
    };
    edit_config(&dir, |c| {
        c.insert("eos_token_id".into(), 9999.into());
    });
    let lm = load(&dir).expect("loads");
    let c = &lm.model.config;
    assert_eq!(c.eos_token_id, None);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("`eos_token_id` 9999"));
}

#[test]
#[ignore = "needs ../shared"]
fn nan_weights_are_named_at_load() {
    let Some(dir) = scratch("gpt2", "nanw") else {
        return;
    };
    rewrite_tensors(&dir, |name, dtype, shape, bytes| {
        let mut b = bytes.to_vec();
        if name.ends_with("h.1.mlp.c_proj.weight") && dtype == safetensors::Dtype::F32 {
            b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Some((dtype, shape.to_vec(), b))
    });
    let msg = load(&dir).expect_err("NaN weights").to_string();
    assert!(
        msg.contains("h.1.mlp.c_proj.weight") && msg.contains("1 NaN or infinite values"),
        "{msg}"
    );
}
