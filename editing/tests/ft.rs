//! FT-L on the demo model: the bound holds, the target rises, the ledger
//! applies and reverts the dense change bit for bit.

use engram_editing::ft::{ft_edit, FtHparams};
use engram_editing::Ledger;

use super::{demo, facts, new_target, out_proj_bits, request};

#[test]
fn ft_l_keeps_its_bound_raises_the_target_and_reverts_bit_for_bit() {
    let mut lm = demo();
    let hp = FtHparams::builtin("demo").expect("demo FT-L hparams");
    let f = &facts()[4];
    let target = new_target(f, 1);
    let req = request(f, &target);
    let p = |lm: &engram_model::LanguageModel<engram_model::Cpu>| {
        let id = lm.target_tokens(&req.prompt, &req.target).expect("target")[0];
        engram_model::lm::prob_of(&lm.next_logits(&req.prompt).expect("logits"), id)
    };
    let before = p(&lm);
    let edit = ft_edit(&lm, &req, &hp, &mut |_, _| true).expect("FT-L");
    eprintln!("FT-L losses {:?}", edit.losses);
    let eps = hp.norm_constraint as f32;
    let worst = edit.delta.iter().fold(0f32, |m, x| m.max(x.abs()));
    // f32 rounding of W₀ ± ε may add an ulp of the weight.
    assert!(worst <= eps * (1.0 + 1e-3), "|ΔW|∞ {worst} > ε {eps}");
    assert!(
        edit.losses.last() < edit.losses.first(),
        "{:?}",
        edit.losses
    );
    let original = out_proj_bits(&lm.model, hp.layer);
    let mut ledger = Ledger::new("demo");
    let id = ledger.push_ft(&mut lm.model, edit).expect("push");
    let after = p(&lm);
    assert!(after > before, "p(target) {before} -> {after}");
    let entry = &ledger.edits()[0];
    assert_eq!(entry.method, "ft-l");
    assert!(entry.norms.is_some_and(|n| n.delta_fro > 0.0));
    ledger.set_applied(&mut lm.model, id, false).expect("off");
    assert_eq!(out_proj_bits(&lm.model, hp.layer), original);
    // Export and import keep the dense entry.
    let path = std::env::temp_dir().join(format!("engram-ft-ledger-{}.json", std::process::id()));
    ledger.set_applied(&mut lm.model, id, true).expect("on");
    let applied = out_proj_bits(&lm.model, hp.layer);
    ledger.export(&path).expect("export");
    let mut fresh = demo();
    Ledger::<engram_model::Cpu>::import(&path, &mut fresh.model, "demo").expect("import");
    assert_eq!(out_proj_bits(&fresh.model, hp.layer), applied);
    // The change is packed (base64 of its bytes), not a list of numbers; a
    // ledger of an older engram, with the list, still imports bit for bit.
    let text = std::fs::read_to_string(&path).expect("ledger");
    let mut file: serde_json::Value = serde_json::from_str(&text).expect("json");
    let delta = &mut file["edits"][0]["edit"]["delta"];
    assert!(delta.is_string(), "the delta is packed");
    *delta = serde_json::json!(ledger.edits()[0].edit.dense().expect("dense"));
    std::fs::write(&path, serde_json::to_vec(&file).expect("json")).expect("write");
    let mut old = demo();
    Ledger::<engram_model::Cpu>::import(&path, &mut old.model, "demo").expect("import a list");
    assert_eq!(out_proj_bits(&old.model, hp.layer), applied);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_checked_in_ft_hparams_parse_and_say_where_they_come_from() {
    for name in ["demo", "smollm2-135m", "gpt2-xl", "gpt-j-6b", "llama3-8b"] {
        let hp = FtHparams::builtin(name).unwrap_or_else(|| panic!("{name} is checked in"));
        hp.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!hp.source.is_empty(), "{name} says where it comes from");
    }
    let bound = |name| {
        FtHparams::builtin(name)
            .expect("checked in")
            .norm_constraint
    };
    assert_eq!(bound("gpt2-xl"), 5e-4);
    assert_eq!(bound("gpt-j-6b"), 5e-5);
    // AlphaEdit's Llama3 baseline is plain FT: `"norm_constraint": false`.
    assert!(bound("llama3-8b").is_infinite());
    let parse = |v: &str| {
        serde_json::from_str::<FtHparams>(&format!(
            r#"{{"layer": 0, "num_steps": 1, "lr": 0.1, "norm_constraint": {v}}}"#
        ))
    };
    assert!(parse("true").is_err(), "true is not a bound");
    assert!(parse("null")
        .expect("null: no bound")
        .norm_constraint
        .is_infinite());
    let zero = parse("0").expect("parses");
    assert!(zero.check().is_err(), "a zero bound is refused");
}
