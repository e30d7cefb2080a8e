//! Token ids equal to the HF tokenizer's on `fixtures/tokenizers/*.json`.

use std::path::Path;

use engram_model::Tokenizer;

use crate::common::shared;

fn check_cases(tok: &Tokenizer, cases_file: &Path) -> usize {
    let text = std::fs::read_to_string(cases_file).expect("cases");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["add_special_tokens"], false);
    let cases = v["cases"].as_array().expect("cases");
    for case in cases {
        let s = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(tok.encode(s).expect("encode"), want, "ids for {s:?}");
    }
    cases.len()
}

#[test]
#[ignore = "needs ../shared"]
fn gpt2_tokenizer_json_matches_hf() {
    let Some(sh) = shared("gpt2 tokenizer") else {
        return;
    };
    let tok = Tokenizer::from_file(&sh.join("tokenizers/gpt2/tokenizer.json")).expect("load");
    assert_eq!(tok.vocab_size(), 50257);
    assert!(check_cases(&tok, &sh.join("fixtures/tokenizers/gpt2.json")) > 3);
}

#[test]
#[ignore = "needs ../shared"]
fn gpt2_vocab_merges_matches_hf() {
    let Some(sh) = shared("gpt2 vocab+merges") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("engram-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(sh.join("tokenizers/gpt2").join(f), dir.join(f)).expect("copy");
    }
    let tok = Tokenizer::from_dir(&dir).expect("load vocab+merges");
    check_cases(&tok, &sh.join("fixtures/tokenizers/gpt2.json"));
    assert_eq!(
        tok.decode(&tok.encode(" Paris café").expect("enc"))
            .expect("dec"),
        " Paris café"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[ignore = "needs ../shared"]
fn smollm2_tokenizer_matches_hf() {
    let Some(sh) = shared("smollm2 tokenizer") else {
        return;
    };
    let tok = Tokenizer::from_file(&sh.join("models/smollm2-135m-instruct/tokenizer.json"))
        .expect("load");
    assert!(check_cases(&tok, &sh.join("fixtures/tokenizers/smollm2.json")) > 3);
}

#[test]
#[ignore = "needs ../shared"]
fn subject_span_finds_the_subject_tokens() {
    let Some(sh) = shared("subject span") else {
        return;
    };
    let tok = Tokenizer::from_file(&sh.join("tokenizers/gpt2/tokenizer.json")).expect("load");
    let prompt = "The Eiffel Tower is located in the city of";
    let (enc, span) = tok.subject_span(prompt, "Eiffel Tower").expect("span");
    // HF: The | E | iff | el | Tower | is ...
    assert_eq!(span, 1..5);
    assert_eq!(
        tok.decode(&enc.ids[span.clone()]).expect("dec"),
        " Eiffel Tower"
    );
    assert!(matches!(
        tok.subject_span(prompt, "Louvre"),
        Err(engram_model::ModelError::SubjectNotFound { .. })
    ));
}

#[test]
#[ignore = "needs ../shared"]
fn target_tokens_follow_romes_leading_space_convention() {
    let Some((_, lm)) = crate::common::tiny("gpt2") else {
        return;
    };
    let prompt = "The Eiffel Tower is located in the city of";
    let spaced = lm.tokenizer.encode(" Paris").expect("encode");
    assert_eq!(lm.target_tokens(prompt, "Paris").expect("target"), spaced);
    assert_eq!(lm.target_tokens(prompt, " Paris").expect("target"), spaced);
    let multi = lm.target_tokens(prompt, "Rio de Janeiro").expect("target");
    assert_eq!(
        multi,
        lm.tokenizer.encode(" Rio de Janeiro").expect("encode")
    );
    assert!(multi.len() > 1);
    for empty in ["", "  "] {
        assert!(matches!(
            lm.target_tokens(prompt, empty),
            Err(engram_model::ModelError::EmptyTarget)
        ));
    }
}
