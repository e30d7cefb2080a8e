//! GGUF: the real SmolLM2 Q4_1 checkpoint against HF transformers' outputs
//! (weights dequantized to f32), hand-made blocks, and malformed files.

use std::path::{Path, PathBuf};

use engram_model::device::Cpu;
use engram_model::gguf::{dequantize, unpermute_rotary_rows, GgmlType};
use engram_model::weights::HostTensor;
use engram_model::{ActivationCache, Batch, HookPoint, LanguageModel, ModelError, Transformer};

use crate::common::{shared, Reference};

fn smollm2() -> Option<(PathBuf, LanguageModel<Cpu>)> {
    let sh = shared("SmolLM2 GGUF")?;
    let path = sh.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm = LanguageModel::<Cpu>::load(&path, &Default::default()).expect("load GGUF");
    Some((sh, lm))
}

/// Last-position logits within 2e-3 (the fixture's stated tolerance) for all six prompts;
/// `blocks.15.mlp.hook_post` and residual norms checked alongside.
#[test]
#[ignore = "needs ../shared"]
fn smollm2_gguf_matches_hf_reference() {
    let Some((sh, lm)) = smollm2() else { return };
    let c = &lm.model.config;
    assert_eq!(
        (c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.n_kv_heads),
        (30, 576, 1536, 9, 3)
    );
    assert!(c.tied_embeddings);
    let reference = Reference::open(&sh.join("fixtures/smollm2/reference.safetensors"));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sh.join("fixtures/smollm2/reference.json")).expect("json"),
    )
    .expect("json");
    let prompts = meta["prompts"].as_array().expect("prompts");
    assert_eq!(prompts.len(), 6);
    for p in prompts {
        let key = p["key"].as_str().expect("key");
        let text = p["prompt"].as_str().expect("prompt");
        let (_, ids) = reference.i64(&format!("{key}.input_ids"));
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        assert_eq!(
            lm.encode_prompt(text).expect("encode"),
            ids,
            "{key} tokenization"
        );

        let mut cache = ActivationCache::<Cpu>::new(|p| {
            p == HookPoint::mlp_post(15) || p.site() == Some(engram_model::BlockSite::ResidPre)
        });
        let logits = lm
            .model
            .forward(&Batch::single(&ids), &mut cache)
            .expect("forward");
        let s = ids.len();
        let v = c.vocab_size;
        let all: Vec<f32> = logits.into_data().into_vec().expect("v");
        let last = &all[(s - 1) * v..s * v];
        let (_, want) = reference.f32(&format!("{key}.last_logits"));
        let diff = last
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 2e-3, "{key}: last logits differ from HF by {diff}");

        let post = cache
            .get(HookPoint::mlp_post(15))
            .expect("hook")
            .to_vec()
            .expect("v");
        let d_mlp = c.d_mlp;
        let (_, want_post) = reference.f32(&format!("{key}.mlp_post_l15_last"));
        let scale = want_post.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let diff = post[(s - 1) * d_mlp..]
            .iter()
            .zip(&want_post)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 1e-3 * scale.max(1.0),
            "{key}: blocks.15.mlp.hook_post differs by {diff}"
        );

        let (_, norms) = reference.f32(&format!("{key}.resid_pre_norms"));
        for layer in 0..c.n_layers {
            let r = cache
                .get(HookPoint::resid_pre(layer))
                .expect("resid")
                .to_vec()
                .expect("v");
            for pos in 0..s {
                let n = r[pos * c.d_model..(pos + 1) * c.d_model]
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>()
                    .sqrt();
                let want = norms[layer * s + pos];
                assert!(
                    (n - want).abs() <= 1e-3 * want.max(1.0),
                    "{key} layer {layer} pos {pos}: |resid| {n} vs {want}"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs ../shared"]
fn smollm2_knows_the_eiffel_tower() {
    let Some((_, lm)) = smollm2() else { return };
    let top = lm
        .top_k("The Eiffel Tower is located in the city of", 5)
        .expect("top-k");
    assert_eq!(top[0].token, " Paris");
    assert!(
        (top[0].prob - 0.70155).abs() < 0.005,
        "p(Paris) = {}",
        top[0].prob
    );
}

#[test]
fn dequantizes_hand_made_blocks() {
    let d = half::f16::from_f32(0.5).to_le_bytes();
    let m = half::f16::from_f32(-1.0).to_le_bytes();
    // Q8_0: d, then 32 signed bytes.
    let mut q8 = d.to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
    assert_eq!(dequantize(GgmlType::Q8_0, &q8), want);
    // Q4_1: d, m, 16 bytes; low nibbles are elements 0..16, high nibbles 16..32.
    let mut q41 = d.to_vec();
    q41.extend_from_slice(&m);
    q41.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
    let out = dequantize(GgmlType::Q4_1, &q41);
    for i in 0..16 {
        assert_eq!(out[i], i as f32 * 0.5 - 1.0);
        assert_eq!(out[16 + i], (15 - i) as f32 * 0.5 - 1.0);
    }
    // Q4_0: d, 16 bytes, values (q - 8) · d.
    let mut q40 = d.to_vec();
    q40.extend((0..16u8).map(|i| i | (i << 4)));
    let out = dequantize(GgmlType::Q4_0, &q40);
    assert_eq!(out[3], (3.0 - 8.0) * 0.5);
    assert_eq!(out[19], (3.0 - 8.0) * 0.5);
}

#[test]
fn unpermute_inverts_llama_cpp_permutation() {
    // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(w.shape)
    let (n_heads, d_head, width) = (3, 8, 2);
    let rows = n_heads * d_head;
    let hf: Vec<f32> = (0..rows * width).map(|i| i as f32).collect();
    let mut permuted = vec![0f32; hf.len()];
    for h in 0..n_heads {
        for a in 0..2 {
            for b in 0..d_head / 2 {
                let src = h * d_head + a * (d_head / 2) + b; // [h, a, b]
                let dst = h * d_head + b * 2 + a; // [h, b, a]
                permuted[dst * width..(dst + 1) * width]
                    .copy_from_slice(&hf[src * width..(src + 1) * width]);
            }
        }
    }
    let back = unpermute_rotary_rows(&HostTensor::new(vec![rows, width], permuted), n_heads);
    assert_eq!(back.data, hf);
}

/// A minimal GGUF v3 writer for malformed-file tests.
fn write_gguf(path: &Path, magic: &[u8; 4], arch: &str, tensor: (&str, u32, u64, usize)) {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(magic);
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, arch);
    let (name, ty, offset, data_len) = tensor;
    s(&mut b, name);
    b.extend(1u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(vec![0u8; data_len]);
    std::fs::write(path, b).expect("write gguf");
}

fn load_err(name: &str, magic: &[u8; 4], arch: &str, tensor: (&str, u32, u64, usize)) -> String {
    let path = std::env::temp_dir().join(format!("engram-{name}-{}.gguf", std::process::id()));
    write_gguf(&path, magic, arch, tensor);
    let err = Transformer::<Cpu>::from_gguf(&path, &Default::default()).expect_err("must fail");
    std::fs::remove_file(&path).ok();
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    assert!(!matches!(err, ModelError::Io { .. }), "{err:?}");
    msg
}

#[test]
fn malformed_gguf_files_give_clear_errors() {
    let msg = load_err("magic", b"GGUX", "llama", ("token_embd.weight", 0, 0, 128));
    assert!(msg.contains("bad magic"), "{msg}");
    let msg = load_err(
        "quant",
        b"GGUF",
        "llama",
        ("blk.0.ffn_up.weight", 99, 0, 128),
    );
    assert!(
        msg.contains("blk.0.ffn_up.weight") && msg.contains("ggml type 99"),
        "{msg}"
    );
    let msg = load_err(
        "offset",
        b"GGUF",
        "llama",
        ("token_embd.weight", 0, 4096, 128),
    );
    assert!(
        msg.contains("token_embd.weight") && msg.contains("past the end"),
        "{msg}"
    );
    let msg = load_err("arch", b"GGUF", "mamba", ("token_embd.weight", 0, 0, 128));
    assert!(msg.contains("mamba") && msg.contains("llama"), "{msg}");
}

#[test]
#[ignore = "needs ../shared"]
fn smollm2_greedy_generation_cache_agrees() {
    let Some((_, lm)) = smollm2() else { return };
    let prompt = lm
        .encode_prompt("The capital of France is")
        .expect("encode");
    let cfg = |kv_cache| engram_model::GenerateConfig {
        max_new_tokens: 6,
        sampling: engram_model::Sampling::Greedy,
        stop_at_eos: true,
        kv_cache,
    };
    let a =
        engram_model::generate(&lm.model, std::slice::from_ref(&prompt), &cfg(true)).expect("gen");
    let b =
        engram_model::generate(&lm.model, std::slice::from_ref(&prompt), &cfg(false)).expect("gen");
    assert_eq!(a, b);
    let text = lm.tokenizer.decode(&a[0]).expect("decode");
    assert!(text.contains("Paris"), "{text:?}");
}

/// A llama GGUF header with these u32 metadata values and one small tensor:
/// enough for `GgufCheckpoint::open` to read and check its config.
fn write_llama_meta(path: &Path, meta: &[(&str, u32)]) {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((meta.len() as u64 + 1).to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    for (k, v) in meta {
        s(&mut b, k);
        b.extend(4u32.to_le_bytes()); // uint32
        b.extend(v.to_le_bytes());
    }
    s(&mut b, "token_embd.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(64u64.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(vec![0u8; 64 * 32 * 4]);
    std::fs::write(path, b).expect("write gguf");
}

#[test]
fn gguf_metadata_with_impossible_shapes_is_refused_naming_the_key() {
    let base = [
        ("llama.embedding_length", 64),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.feed_forward_length", 128),
        ("llama.context_length", 64),
        ("llama.rope.dimension_count", 16),
    ];
    let path = std::env::temp_dir().join(format!("engram-meta-{}.gguf", std::process::id()));
    write_llama_meta(&path, &base);
    let ckpt = engram_model::gguf::GgufCheckpoint::open(&path).expect("the base header is valid");
    assert_eq!((ckpt.config.vocab_size, ckpt.config.d_head), (32, 16));
    for (key, value, rule) in [
        ("llama.attention.head_count", 0, "0 heads do not divide"),
        (
            "llama.attention.head_count",
            5,
            "do not divide the width 64",
        ),
        ("llama.attention.head_count_kv", 0, "do not divide"),
        (
            "llama.attention.head_count_kv",
            3,
            "do not divide the 4 query heads",
        ),
        ("llama.rope.dimension_count", 0, "must be even, positive"),
        ("llama.rope.dimension_count", 7, "must be even"),
        ("llama.context_length", 0, "plausible range"),
        ("llama.block_count", 0, "plausible range"),
    ] {
        let meta: Vec<(&str, u32)> = base
            .iter()
            .map(|&(k, v)| (k, if k == key { value } else { v }))
            .collect();
        write_llama_meta(&path, &meta);
        let err = match engram_model::gguf::GgufCheckpoint::open(&path) {
            Ok(_) => panic!("{key} = {value} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&path.display().to_string()) && err.contains(key) && err.contains(rule),
            "{key} = {value}: {err}"
        );
    }
    std::fs::remove_file(&path).ok();
}
