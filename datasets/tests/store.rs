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

/// A run whose params.json is missing or invalid is listed with what is
/// wrong, `find` returns it too, and a corrupt table's error names its file.
#[test]
fn broken_runs_are_listed_with_their_problem() {
    let dir = scratch("broken");
    let store = RunStore::open(dir.join("runs")).expect("store");
    let good = store.create("eval", RunParams::default()).expect("create");
    good.write_rows("cases", &rows()).expect("rows");
    let good = good.finish().expect("finish");
    let missing = dir.join("runs/eval/20990101T000000Z-aaaaaa");
    std::fs::create_dir_all(&missing).expect("dir");
    let invalid = dir.join("runs/trace/20990101T000000Z-bbbbbb");
    std::fs::create_dir_all(&invalid).expect("dir");
    std::fs::write(invalid.join("params.json"), "{ not json").expect("write");
    let listed = store.list().expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let m = store
        .find("aaaaaa")
        .expect("the missing-params run is found");
    assert!(
        m.problem
            .as_deref()
            .is_some_and(|p| p.contains("params.json")),
        "{m:?}"
    );
    assert_eq!(m.kind, "eval");
    let i = store
        .find("bbbbbb")
        .expect("the invalid-params run is found");
    assert!(
        i.problem.as_deref().is_some_and(|p| p.contains("invalid")),
        "{i:?}"
    );
    assert!(store.find(&good.id).expect("good").problem.is_none());
    // A corrupt table names its file.
    let table = good.dir.join("cases.parquet");
    std::fs::write(&table, b"PAR1 this is not parquet").expect("corrupt");
    let err = store.read_table(&good, "cases").expect_err("corrupt");
    assert!(err.to_string().contains("cases.parquet"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A table exported as CSV keeps its header and rows; as LaTeX, its summaries.
#[test]
fn tables_export_as_csv_and_latex() {
    use engram_datasets::export::{export_table, TableFormat};
    let dir = scratch("export");
    let store = RunStore::open(dir.join("runs")).expect("store");
    let run = store.create("eval", RunParams::default()).expect("create");
    let slim: Vec<(i64, f64)> = rows().iter().map(|r| (r.case_id, r.efficacy)).collect();
    #[derive(Serialize)]
    struct Slim {
        case_id: i64,
        efficacy: f64,
    }
    let slim: Vec<Slim> = slim
        .into_iter()
        .map(|(case_id, efficacy)| Slim { case_id, efficacy })
        .collect();
    run.write_rows("cases", &slim).expect("rows");
    let run = run.finish().expect("finish");
    let csv = export_table(
        &store,
        &run,
        None,
        TableFormat::Csv,
        Some(dir.join("c.csv")),
    )
    .expect("csv");
    let text = std::fs::read_to_string(csv).expect("read");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("case_id,efficacy"));
    assert_eq!(lines.count(), 25);
    let tex = export_table(
        &store,
        &run,
        None,
        TableFormat::Latex,
        Some(dir.join("c.tex")),
    )
    .expect("latex");
    let text = std::fs::read_to_string(tex).expect("read");
    let mean = slim.iter().map(|r| r.efficacy).sum::<f64>() / 25.0;
    assert!(
        text.contains("efficacy") && text.contains(&format!("{mean:.4}")),
        "{text}"
    );
    assert!(!text.contains("case\\_id"), "ids are not metrics: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
