//! Analysis tests, in one binary. Tests that need `../shared` skip where it is absent.

use std::path::PathBuf;

use engram_analysis::lens::{logit_lens, LensSite};
use engram_model::device::Cpu;
use engram_model::{Batch, LanguageModel};

fn tiny(arch: &str) -> Option<LanguageModel<Cpu>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/tiny")
        .join(arch);
    if !dir.is_dir() {
        eprintln!("SKIP: ../shared is absent");
        return None;
    }
    Some(LanguageModel::load(&dir, &Default::default()).expect("load"))
}

/// The lens at the last layer's resid_post is the model's own output distribution.
#[test]
fn lens_at_last_layer_equals_model_output() {
    for arch in ["gpt2", "llama", "gpt_neox"] {
        let Some(lm) = tiny(arch) else { return };
        let ids = lm
            .encode_prompt("The river runs through the old town")
            .expect("encode");
        let lens = logit_lens(&lm.model, &ids, LensSite::Post).expect("lens");
        assert_eq!(lens.probs.len(), lm.model.config.n_layers);
        let probs = lm
            .model
            .next_token_probs(&Batch::single(&ids))
            .expect("probs");
        let want: Vec<f32> = probs.into_data().into_vec().expect("v");
        let got = &lens.probs[lm.model.config.n_layers - 1][ids.len() - 1];
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "{arch}: {diff}");
        // resid_pre of layer l+1 is resid_post of layer l.
        let pre = logit_lens(&lm.model, &ids, LensSite::Pre).expect("lens");
        assert_eq!(pre.probs[1], lens.probs[0]);
    }
}

#[test]
fn first_top1_layer_reads_ranks() {
    let Some(lm) = tiny("gpt2") else { return };
    let ids = lm.encode_prompt("The river").expect("encode");
    let lens = logit_lens(&lm.model, &ids, LensSite::Post).expect("lens");
    let last = ids.len() - 1;
    let top_final = lens.top_k(last, 1)[lm.model.config.n_layers - 1][0].0;
    let ranks = lens.rank_by_layer(last, top_final);
    assert_eq!(*ranks.last().expect("ranks"), 0);
    let first = lens
        .first_top1_layer(last, top_final)
        .expect("top-1 at the end");
    assert!(ranks[first..].iter().all(|&r| r == 0));
    assert!(first == 0 || ranks[first - 1] != 0);
    assert!(logit_lens(&tiny("gptj").expect("gptj").model, &ids, LensSite::Mid).is_err());
}
