use engram_datasets::facts::KnownFact;
use engram_datasets::store::read_parquet;
use engram_datasets::summary::{latex_table, mean_ci, summarize};
use engram_datasets::table::{from_frame, to_frame};
use engram_datasets::{RunParams, RunStore};
use serde::{Deserialize, Serialize};

use crate::scratch;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CaseRow {
    case_id: i64,
    subject: String,
    efficacy: f64,
    success: bool,
    paraphrases: Vec<String>,
}

fn rows() -> Vec<CaseRow> {
    (0..25)
        .map(|i| CaseRow {
            case_id: i,
            subject: format!("subject {i}"),
            efficacy: (i as f64 * 0.37).sin().abs(),
            success: i % 3 != 0,
            paraphrases: vec![format!("p{i}"), "[not json".into()],
        })
        .collect()
}

#[test]
fn rows_roundtrip_through_parquet() {
    let dir = scratch("roundtrip");
    let store = RunStore::open(dir.join("runs")).expect("store");
    let params = RunParams {
        model: "m".into(),
        seed: Some(3),
        hyperparameters: serde_json::json!({"layer": 17}),
        ..Default::default()
    };
    let run = store.create("eval-test", params.clone()).expect("run");
    let original = rows();
    let mut df = to_frame(&original).expect("frame");
    let path = run.write_table("cases", &mut df).expect("write");
    let info = run.finish().expect("finish");

    let back = read_parquet(&path).expect("read");
    assert!(
        back.equals_missing(&df),
        "DataFrame changed through parquet"
    );
    let typed: Vec<CaseRow> = from_frame(&back).expect("rows");
    assert_eq!(typed, original);

    let listed = store.list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].params, params);
    assert_eq!(listed[0].tables, vec!["cases".to_string()]);
    assert!(listed[0].finished);
    let found = store
        .find(&info.id[info.id.len() - 6..])
        .expect("find by short id");
    assert_eq!(
        store.read_table(&found, "cases").expect("read").height(),
        25
    );
}

#[test]
fn known_facts_roundtrip_as_typed_rows() {
    let facts = vec![KnownFact {
        known_id: 7,
        subject: "Vinson Massif".into(),
        attribute: "Antarctica".into(),
        template: "{} is located in the continent".into(),
        prediction: " of Antarctica.".into(),
        prompt: "Vinson Massif is located in the continent of".into(),
        relation_id: "P30".into(),
    }];
    let df = to_frame(&facts).expect("frame");
    assert_eq!(df.get_column_names()[0].as_str(), "known_id");
    let back: Vec<KnownFact> = from_frame(&df).expect("rows");
    assert_eq!(back, facts);
}

/// A writer killed mid-table leaves only its temporary file: nothing partial is listed.
#[test]
fn killed_writer_leaves_store_readable() {
    let dir = scratch("killed");
    let store = RunStore::open(dir.join("runs")).expect("store");
    let run = store.create("trace", RunParams::default()).expect("run");
    run.write_rows("complete", &rows()).expect("write");
    // What a kill during `write_table("partial", ..)` leaves behind.
    std::fs::write(
        run.dir().join(".partial.parquet.tmp-4242"),
        b"PAR1\x00\x01half a table",
    )
    .expect("write");
    let id = run.id().to_string();
    drop(run); // never finished

    let listed = store.list().expect("list");
    let info = listed.iter().find(|r| r.id == id).expect("run listed");
    assert_eq!(info.tables, vec!["complete".to_string()]);
    assert!(!info.finished);
    assert!(store.read_table(info, "partial").is_err());
    assert_eq!(
        store.read_table(info, "complete").expect("read").height(),
        25
    );
}

#[test]
fn summaries_and_latex() {
    let s = mean_ci("x", &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(s.mean, 2.5);
    // sd = 1.2910, se = 0.6455, t(3) = 3.182
    assert!((s.ci_high - 2.5 - 3.182 * 0.645_497).abs() < 1e-4, "{s:?}");
    // A rate's interval stays inside [0, 1]; other values are not clipped.
    // 9 of 10: se 0.1, t(9) 2.262, so 0.9 ± 0.226 before clipping.
    let mut hits = vec![1.0; 9];
    hits.push(0.0);
    let rate = mean_ci("rate", &hits);
    assert_eq!(rate.ci_high, 1.0, "{rate:?}");
    assert!((rate.ci_low - (0.9 - 0.2262)).abs() < 1e-3, "{rate:?}");
    let wide = mean_ci("x", &[1.0, 1.0, 1.0, 0.0, 2.0]);
    assert!(wide.ci_high > 1.0 && wide.ci_low < 0.5, "{wide:?}");
    let tex = latex_table(&[rate], "rates");
    assert!(tex.contains("rate & 10 & 0.9000 [0.6738, 1.0000]"), "{tex}");
    let df = to_frame(&rows()).expect("frame");
    let sums = summarize(&df, &["case_id"]).expect("summary");
    let names: Vec<&str> = sums.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, vec!["efficacy", "success"]);
    let success = &sums[1];
    assert!((success.mean - 16.0 / 25.0).abs() < 1e-12);
    let tex = latex_table(&sums, "ROME on counterfact_val");
    assert!(
        tex.contains("\\begin{tabular}") && tex.contains("success & 25 & 0.6400 $\\pm$"),
        "{tex}"
    );
    assert!(tex.contains("counterfact\\_val"));
}
