use std::path::PathBuf;

use engram_datasets::corpus::Corpus;
use engram_datasets::facts::{load_counterfact, load_known, load_user_facts, load_zsre};
use engram_datasets::{DatasetError, OnBadRecord};

use crate::{scratch, shared};

#[test]
#[ignore = "needs ../shared"]
fn counterfact_easyedit_form_loads() {
    let Some(sh) = shared("counterfact") else {
        return;
    };
    let cf = load_counterfact(&sh.join("datasets/counterfact-val.json"), OnBadRecord::Fail)
        .expect("load");
    assert_eq!(cf.records.len(), 1919);
    let first = &cf.records[0];
    assert_eq!(first.case_id, 10);
    assert_eq!(first.prompt(), "BBC One, by");
    assert_eq!(first.prompt_template, "{}, by");
    assert_eq!(
        (first.target_new.as_str(), first.target_true.as_str()),
        ("Sega", "BBC")
    );
    assert_eq!(first.paraphrase_prompts.len(), 1);
    assert_eq!(
        first.neighborhood_prompts,
        vec!["BBC Radio, by".to_string()]
    );
}

#[test]
fn counterfact_rome_form_loads() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/counterfact-rome-sample.json");
    let cf = load_counterfact(&path, OnBadRecord::Fail).expect("load");
    assert_eq!(cf.records.len(), 3);
    let c = &cf.records[0];
    assert_eq!(c.prompt(), "The mother tongue of Ana Lucia Ferreira is");
    assert_eq!(c.target_new, "Dutch");
    assert_eq!(c.target_true, "Portuguese");
    assert_eq!(c.neighborhood_target, "Portuguese");
    assert_eq!(c.relation_id.as_deref(), Some("P103"));
    assert_eq!(
        (c.paraphrase_prompts.len(), c.neighborhood_prompts.len()),
        (2, 2)
    );
    assert_eq!(c.generation_prompts.len(), 1);
    assert!(cf.records[2].attribute_prompts.is_empty());
}

#[test]
#[ignore = "needs ../shared"]
fn known_1000_and_zsre_load() {
    let Some(sh) = shared("known/zsre") else {
        return;
    };
    let known = load_known(&sh.join("datasets/known_1000.json"), OnBadRecord::Fail).expect("known");
    assert_eq!(known.records.len(), 1209);
    assert_eq!(known.records[0].subject, "Vinson Massif");
    assert_eq!(known.records[0].relation_id, "P30");
    let zsre = load_zsre(
        &sh.join("datasets/zsre_mend_train-1k.json"),
        OnBadRecord::Fail,
    )
    .expect("zsre");
    assert_eq!(zsre.records.len(), 1000);
    assert_eq!(zsre.records[0].alt, "unmanned aircraft");
    assert_eq!(zsre.records[0].answers, vec!["uniform".to_string()]);
    // Two records of this split have no new answer; they load but are not edit requests.
    let not_editable: Vec<u64> = zsre
        .records
        .iter()
        .filter(|r| !r.is_editable())
        .map(|r| r.case_id)
        .collect();
    assert_eq!(not_editable.len(), 2);
    assert!(not_editable.contains(&534));
}

#[test]
#[ignore = "needs ../shared"]
fn user_facts_from_csv_and_jsonl() {
    let dir = scratch("user");
    let csv = dir.join("facts.csv");
    std::fs::write(
        &csv,
        "subject,prompt,target\nEiffel Tower,\"The {} is in\",Paris\nMount Fuji,Mount Fuji is in,Japan\n",
    )
    .expect("write");
    let facts = load_user_facts(&csv, OnBadRecord::Fail).expect("csv");
    assert_eq!(facts.records.len(), 2);
    assert_eq!(facts.records[0].prompt, "The Eiffel Tower is in");
    let jsonl = dir.join("facts.jsonl");
    std::fs::write(&jsonl, "{\"subject\":\"Nile\",\"prompt\":\"The Nile flows into the\",\"target\":\"Mediterranean\"}\n").expect("write");
    assert_eq!(
        load_user_facts(&jsonl, OnBadRecord::Fail)
            .expect("jsonl")
            .records[0]
            .target,
        "Mediterranean"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn bad_records_name_file_record_and_field() {
    let dir = scratch("bad");
    let path = dir.join("cf.json");
    std::fs::write(
        &path,
        r#"[{"case_id": 1, "prompt": "A, by", "subject": "A", "target_new": "X", "ground_truth": "Y"},
            {"case_id": 2, "prompt": "B, by", "subject": "B", "ground_truth": "Y"},
            {"case_id": 3, "prompt": "C, by", "subject": "Zed", "target_new": "X", "ground_truth": "Y"}]"#,
    )
    .expect("write");
    let err = load_counterfact(&path, OnBadRecord::Fail).expect_err("record 1 lacks target_new");
    match &err {
        DatasetError::Record { index, field, .. } => {
            assert_eq!((*index, field.as_str()), (1, "target_new"))
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("cf.json") && msg.contains("record 1") && msg.contains("target_new"),
        "{msg}"
    );

    let loaded = load_counterfact(&path, OnBadRecord::Skip).expect("skip mode");
    assert_eq!(loaded.records.len(), 1);
    assert_eq!(loaded.skipped.len(), 2);
    assert!(
        loaded.skipped[1].to_string().contains("record 2")
            && loaded.skipped[1].to_string().contains("subject")
    );

    std::fs::write(dir.join("broken.json"), "[{\"case_id\": 1,").expect("write");
    let err =
        load_counterfact(&dir.join("broken.json"), OnBadRecord::Skip).expect_err("broken JSON");
    assert!(err.to_string().contains("broken.json"), "{err}");
}

#[test]
#[ignore = "needs ../shared"]
fn corpus_streams_wikitext_documents() {
    let Some(sh) = shared("wikitext") else { return };
    let mut corpus = Corpus::open(&sh.join("datasets/wikitext-2/valid.txt")).expect("open");
    let first = corpus.next().expect("a document").expect("ok");
    assert!(
        first.starts_with("= Homarus gammarus ="),
        "{}",
        &first[..40]
    );
    assert!(first.contains("European lobster"));
    let rest = corpus.count();
    assert!(rest > 40, "only {rest} more documents");

    let dir = scratch("corpus");
    std::fs::write(
        dir.join("plain.txt"),
        "first para line\nstill first\n\nsecond para\n\n\nthird\n",
    )
    .expect("write");
    let docs: Vec<String> = Corpus::open(&dir.join("plain.txt"))
        .expect("open")
        .map(|d| d.expect("ok"))
        .collect();
    assert_eq!(
        docs,
        vec!["first para line\nstill first", "second para", "third"]
    );
}

#[test]
#[ignore = "needs ../shared"]
fn fact_sets_of_every_kind_load_as_subject_prompt_target() {
    use engram_datasets::facts::load_fact_set;
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo/facts.jsonl");
    let facts = load_fact_set(&demo, OnBadRecord::Fail).expect("demo facts");
    assert_eq!(facts.records.len(), 450);
    assert_eq!(facts.records[0].target, "Quarnholm");
    let Some(sh) = shared("known/counterfact fact sets") else {
        return;
    };
    let known =
        load_fact_set(&sh.join("datasets/known_1000.json"), OnBadRecord::Fail).expect("known");
    let raw = load_known(&sh.join("datasets/known_1000.json"), OnBadRecord::Fail).expect("known");
    assert_eq!(known.records.len(), raw.records.len());
    assert_eq!(known.records[0].target, raw.records[0].attribute);
    assert_eq!(known.records[0].prompt, raw.records[0].prompt);
    let cf_path = sh.join("datasets/counterfact-val.json");
    let cf = load_fact_set(&cf_path, OnBadRecord::Fail).expect("counterfact");
    let raw = load_counterfact(&cf_path, OnBadRecord::Fail).expect("counterfact");
    assert_eq!(cf.records[3].target, raw.records[3].target_true);
    assert_eq!(cf.records[3].prompt, raw.records[3].prompt());
}
