//! Hook points: the golden ordered list, observation, replacement, shape checks.

use burn_tensor::Tensor;
use engram_model::device::Cpu;
use engram_model::{fn_hook, Activation, ActivationCache, Batch, HookPoint, ModelError, NoHooks};

use crate::common::{tiny, ARCHS};

/// TransformerLens names, in call order, for block `l` of each family.
fn golden_block(arch: &str, l: usize) -> Vec<String> {
    let sites: &[&str] = match arch {
        "gpt2" => &[
            "hook_resid_pre",
            "ln1.hook_normalized",
            "attn.hook_q",
            "attn.hook_k",
            "attn.hook_v",
            "attn.hook_attn_scores",
            "attn.hook_pattern",
            "attn.hook_z",
            "hook_attn_out",
            "hook_resid_mid",
            "ln2.hook_normalized",
            "mlp.hook_pre",
            "mlp.hook_post",
            "hook_mlp_out",
            "hook_resid_post",
        ],
        "gptj" => &[
            "hook_resid_pre",
            "ln1.hook_normalized",
            "attn.hook_q",
            "attn.hook_k",
            "attn.hook_v",
            "attn.hook_rot_q",
            "attn.hook_rot_k",
            "attn.hook_attn_scores",
            "attn.hook_pattern",
            "attn.hook_z",
            "hook_attn_out",
            "mlp.hook_pre",
            "mlp.hook_post",
            "hook_mlp_out",
            "hook_resid_post",
        ],
        "gpt_neox" => &[
            "hook_resid_pre",
            "ln1.hook_normalized",
            "attn.hook_q",
            "attn.hook_k",
            "attn.hook_v",
            "attn.hook_rot_q",
            "attn.hook_rot_k",
            "attn.hook_attn_scores",
            "attn.hook_pattern",
            "attn.hook_z",
            "hook_attn_out",
            "ln2.hook_normalized",
            "mlp.hook_pre",
            "mlp.hook_post",
            "hook_mlp_out",
            "hook_resid_post",
        ],
        "llama" => &[
            "hook_resid_pre",
            "ln1.hook_normalized",
            "attn.hook_q",
            "attn.hook_k",
            "attn.hook_v",
            "attn.hook_rot_q",
            "attn.hook_rot_k",
            "attn.hook_attn_scores",
            "attn.hook_pattern",
            "attn.hook_z",
            "hook_attn_out",
            "hook_resid_mid",
            "ln2.hook_normalized",
            "mlp.hook_pre",
            "mlp.hook_pre_linear",
            "mlp.hook_post",
            "hook_mlp_out",
            "hook_resid_post",
        ],
        _ => unreachable!(),
    };
    sites.iter().map(|s| format!("blocks.{l}.{s}")).collect()
}

/// The golden list of a model of `arch` with `n_layers` blocks: listed and
/// called in this order, and each name parses back to itself.
fn check_golden_hooks(arch: &str, n_layers: usize, lm: &engram_model::LanguageModel<Cpu>) {
    let mut golden = vec!["hook_embed".to_string()];
    if arch == "gpt2" {
        golden.push("hook_pos_embed".into());
    }
    for l in 0..n_layers {
        golden.extend(golden_block(arch, l));
    }
    golden.push("ln_final.hook_normalized".into());

    let listed: Vec<String> = lm
        .model
        .hook_points()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(listed, golden, "{arch}: hook_points()");

    // The order the forward pass actually calls them in.
    let mut cache = ActivationCache::<Cpu>::all();
    lm.model
        .forward(&Batch::single(&[1, 2, 3]), &mut cache)
        .expect("forward");
    let called: Vec<String> = cache.points().iter().map(|p| p.to_string()).collect();
    assert_eq!(called, golden, "{arch}: call order");

    for name in &golden {
        assert_eq!(&name.parse::<HookPoint>().expect("parse").to_string(), name);
    }
}

#[test]
#[ignore = "needs ../shared"]
fn golden_ordered_hook_list() {
    for arch in ARCHS {
        let Some((_, lm)) = tiny(arch) else { return };
        check_golden_hooks(arch, 3, &lm);
    }
}

/// The same golden list on the demo model in this repository (a 4-layer GPT-2).
#[test]
fn golden_ordered_hook_list_of_the_demo_model() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../app/assets/demo-model");
    let lm = engram_model::LanguageModel::<Cpu>::load(&dir, &Default::default()).expect("demo");
    assert_eq!(lm.model.config.n_layers, 4);
    check_golden_hooks("gpt2", 4, &lm);
}

#[test]
#[ignore = "needs ../shared"]
fn observing_changes_nothing() {
    let Some((_, lm)) = tiny("llama") else { return };
    let batch = Batch::single(&[5, 9, 200, 3]);
    let plain: Vec<f32> = lm
        .model
        .forward(&batch, &mut NoHooks)
        .expect("fwd")
        .into_data()
        .into_vec()
        .expect("v");
    let mut cache = ActivationCache::<Cpu>::all();
    let hooked: Vec<f32> = lm
        .model
        .forward(&batch, &mut cache)
        .expect("fwd")
        .into_data()
        .into_vec()
        .expect("v");
    assert_eq!(plain, hooked);
    assert_eq!(cache.len(), lm.model.hook_points().len());
}

#[test]
#[ignore = "needs ../shared"]
fn replacing_mlp_out_equals_zeroing_the_mlp_weights() {
    for arch in ARCHS {
        let Some((_, lm)) = tiny(arch) else { return };
        let batch = Batch::single(&[7, 8, 9, 10, 11]);
        let layer = 1;
        let mut zero = fn_hook::<Cpu, _>([HookPoint::mlp_out(layer)], |_, act| {
            act.as_rank3().map(|t| Activation::Rank3(t.zeros_like()))
        });
        let hooked: Vec<f32> = lm
            .model
            .forward(&batch, &mut zero)
            .expect("fwd")
            .into_data()
            .into_vec()
            .expect("v");

        let mut ablated = lm.model.clone();
        let out = &mut ablated.blocks[layer].mlp.fc_out;
        out.weight = out.weight.zeros_like();
        out.bias = out.bias.as_ref().map(Tensor::zeros_like);
        let direct: Vec<f32> = ablated
            .logits(&batch)
            .expect("fwd")
            .into_data()
            .into_vec()
            .expect("v");

        let unhooked: Vec<f32> = lm
            .model
            .logits(&batch)
            .expect("fwd")
            .into_data()
            .into_vec()
            .expect("v");
        let moved = hooked
            .iter()
            .zip(&unhooked)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(moved > 1e-3, "{arch}: the replacement had no effect");
        let diff = hooked
            .iter()
            .zip(&direct)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "{arch}: replaced vs ablated differ by {diff}");
    }
}

#[test]
#[ignore = "needs ../shared"]
fn replacement_with_wrong_shape_is_an_error() {
    let Some((_, lm)) = tiny("gpt2") else { return };
    let point = HookPoint::resid_pre(0);
    let mut bad = fn_hook::<Cpu, _>([point], |_, act| {
        act.as_rank3()
            .map(|t| Activation::Rank3(t.clone().narrow(2, 0, 3)))
    });
    let err = lm
        .model
        .forward(&Batch::single(&[1, 2]), &mut bad)
        .expect_err("shape");
    assert!(
        matches!(&err, ModelError::HookShape { point, .. } if point == "blocks.0.hook_resid_pre"),
        "{err:?}"
    );
}

#[test]
fn unknown_hook_names_are_errors() {
    assert!(ActivationCache::<Cpu>::with_names(&["blocks.0.hook_nope"]).is_err());
    assert!("blocks.x.hook_resid_pre".parse::<HookPoint>().is_err());
    assert_eq!(
        "blocks.12.mlp.hook_post"
            .parse::<HookPoint>()
            .expect("parse"),
        HookPoint::mlp_post(12)
    );
}
