//! What a stored run shows and exports, for the CLI's `engram runs` and the
//! workbench's Runs panel alike: a run's default table, metric summaries,
//! tables exported as parquet, CSV or LaTeX, its figure drawn as SVG or PNG,
//! two runs' summaries side by side, and eval runs' metric-against-edits curves.

use std::path::{Path, PathBuf};

use polars::prelude::DataFrame;

use crate::error::{DatasetError, Result};
use crate::figures::{
    curves_over, effect_lines, lens_grid, metric_bars, trace_heatmaps, CurvePoint, LensCell,
    MetricBar, TraceCell,
};
use crate::store::{write_atomic, write_csv, RunInfo, RunStore};
use crate::summary::{latex_table, summarize, MetricSummary};
use crate::table::from_frame;

/// Columns that identify rows rather than measure anything.
pub const ID_COLUMNS: [&str; 9] = [
    "case_id",
    "known_id",
    "layer",
    "token_index",
    "position",
    "fact",
    "index",
    "seed",
    "n",
];

/// Tables with a figure, in the order one is picked.
pub const PLOTTABLE: [&str; 4] = ["effects", "trace", "lens", "metrics"];

fn store_err(message: String) -> DatasetError {
    DatasetError::Store(message)
}

/// The table a command acts on: `table`, else `cases` or `summary`, else the first.
pub fn pick_table(run: &RunInfo, table: Option<&str>) -> Result<String> {
    match table {
        Some(t) => Ok(t.to_string()),
        None => run
            .tables
            .iter()
            .find(|t| *t == "cases" || *t == "summary")
            .or_else(|| run.tables.first())
            .cloned()
            .ok_or_else(|| store_err(format!("run {} has no tables", run.id))),
    }
}

/// Mean and 95% interval of every measured column of `df`.
pub fn summary_of(df: &DataFrame) -> Result<Vec<MetricSummary>> {
    summarize(df, &ID_COLUMNS)
}

/// How a table is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Parquet,
    Csv,
    /// The table's metric summaries as a LaTeX `table`.
    Latex,
}

impl TableFormat {
    pub const ALL: [TableFormat; 3] = [TableFormat::Parquet, TableFormat::Csv, TableFormat::Latex];

    pub fn name(self) -> &'static str {
        match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Csv => "csv",
            TableFormat::Latex => "latex",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Csv => "csv",
            TableFormat::Latex => "tex",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| {
                store_err(format!(
                    "unknown format {text:?}: use parquet, csv or latex"
                ))
            })
    }
}

/// Export `table` of `run` to `out` (default `<run>-<table>.<ext>` here); returns the path.
pub fn export_table(
    store: &RunStore,
    run: &RunInfo,
    table: Option<&str>,
    format: TableFormat,
    out: Option<PathBuf>,
) -> Result<PathBuf> {
    let name = pick_table(run, table)?;
    let out =
        out.unwrap_or_else(|| PathBuf::from(format!("{}-{name}.{}", run.id, format.extension())));
    let mut df = store.read_table(run, &name)?;
    match format {
        TableFormat::Parquet => {
            let src = run.dir.join(format!("{name}.parquet"));
            let bytes = std::fs::read(&src).map_err(|e| DatasetError::io(&src, e))?;
            write_atomic(&out, &bytes)?;
        }
        TableFormat::Csv => write_csv(&mut df, &out)?,
        TableFormat::Latex => {
            let caption = format!(
                "{} ({}), table {name}, run {}",
                run.kind, run.params.model, run.id
            );
            write_atomic(&out, latex_table(&summary_of(&df)?, &caption).as_bytes())?;
        }
    }
    Ok(out)
}

/// The table a run's figure is drawn from: `table`, else the first plottable one.
pub fn plot_table(run: &RunInfo, table: Option<&str>) -> Result<String> {
    match table {
        Some(t) => Ok(t.to_string()),
        None => PLOTTABLE
            .into_iter()
            .find(|t| run.tables.iter().any(|x| x == t))
            .map(String::from)
            .ok_or_else(|| {
                store_err(format!(
                    "run {} has no plottable table (trace, effects, lens, metrics); tables: {}",
                    run.id,
                    run.tables.join(", ")
                ))
            }),
    }
}

/// Draw the run's figure from `table` (or the first plottable) into `out`
/// (SVG or PNG by extension); `fact` picks a trace run's fact. Returns the path.
pub fn plot_run(
    store: &RunStore,
    run: &RunInfo,
    table: Option<&str>,
    fact: Option<&str>,
    out: &Path,
) -> Result<PathBuf> {
    let name = plot_table(run, table)?;
    if let (Some(f), false) = (fact, matches!(name.as_str(), "trace" | "average")) {
        return Err(store_err(format!(
            "fact {f:?}: table {name:?} of run {} has no facts to pick; facts are picked in trace tables",
            run.id
        )));
    }
    let df = store.read_table(run, &name)?;
    match name.as_str() {
        "trace" | "average" => {
            let mut cells: Vec<TraceCell> = from_frame(&df)?;
            let mut facts: Vec<String> = cells.iter().map(|c| c.fact.clone()).collect();
            facts.dedup();
            let want = fact
                .map(String::from)
                .or_else(|| facts.first().cloned())
                .unwrap_or_default();
            cells.retain(|c| c.fact == want);
            if cells.is_empty() {
                return Err(store_err(format!(
                    "run {} has no trace cells for fact {want:?}; its facts: {}",
                    run.id,
                    facts
                        .iter()
                        .take(10)
                        .map(|f| format!("{f:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            trace_heatmaps(&cells, out)?
        }
        "effects" => effect_lines(
            &from_frame::<CurvePoint>(&df)?,
            "average indirect effect",
            out,
        )?,
        "lens" => lens_grid(&from_frame::<LensCell>(&df)?, out)?,
        "metrics" => metric_bars(&from_frame::<MetricBar>(&df)?, out)?,
        other => {
            return Err(store_err(format!(
            "no figure for table {other:?}; plottable tables are trace, effects, lens and metrics"
        )))
        }
    }
    Ok(out.to_path_buf())
}

/// One metric of two runs side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub metric: String,
    pub a: Option<MetricSummary>,
    pub b: Option<MetricSummary>,
}

/// The summaries of two runs' tables (`table`, else each run's default), metric by metric.
pub fn compare(
    store: &RunStore,
    a: &RunInfo,
    b: &RunInfo,
    table: Option<&str>,
) -> Result<Vec<Comparison>> {
    let (ta, tb) = (pick_table(a, table)?, pick_table(b, table)?);
    let sa = summary_of(&store.read_table(a, &ta)?)?;
    let sb = summary_of(&store.read_table(b, &tb)?)?;
    let mut names: Vec<String> = sa.iter().map(|s| s.metric.clone()).collect();
    for s in &sb {
        if !names.contains(&s.metric) {
            names.push(s.metric.clone());
        }
    }
    Ok(names
        .into_iter()
        .map(|n| Comparison {
            a: sa.iter().find(|s| s.metric == n).cloned(),
            b: sb.iter().find(|s| s.metric == n).cloned(),
            metric: n,
        })
        .collect())
}

/// Metric against number of edits: each eval run's `curve` table (from
/// `engram eval --checkpoints`) as a series named by its method (and
/// `sequential` where set), one figure per metric, `out/edits-<metric>.png`.
/// A metric the curve lacks but the `cases` table has per edit (`delta_fro`,
/// `delta_relative`, `edit_seconds`, …) is drawn from there against
/// `edits_applied`, averaged over the cases that share a value (a batch).
/// The metrics in `log10` are drawn as log10 of their values (for a drift
/// that grows by orders of magnitude under one method and not another);
/// values at or below 0 are left out of those. Returns the paths.
pub fn curve(
    store: &RunStore,
    runs: &[RunInfo],
    metrics: &[String],
    log10: &[String],
    out: &Path,
) -> Result<Vec<PathBuf>> {
    if let Some(m) = log10.iter().find(|m| !metrics.contains(m)) {
        return Err(store_err(format!(
            "{m} is to be drawn on a log scale but is not among the metrics drawn ({})",
            metrics.join(",")
        )));
    }
    if runs.is_empty() {
        return Err(store_err("name at least one eval run".into()));
    }
    type Rows = Vec<serde_json::Map<String, serde_json::Value>>;
    // (name, curve rows, cases rows where the run has them)
    let mut series: Vec<(String, Rows, Option<Rows>)> = Vec::new();
    for run in runs {
        if !run.tables.iter().any(|t| t == "curve") {
            return Err(store_err(format!(
                "run {} has no curve table: run `engram eval` with --checkpoints",
                run.id
            )));
        }
        let rows = from_frame(&store.read_table(run, "curve")?)?;
        let cases = if run.tables.iter().any(|t| t == "cases") {
            Some(from_frame(&store.read_table(run, "cases")?)?)
        } else {
            None
        };
        series.push((series_name(run), rows, cases));
    }
    std::fs::create_dir_all(out).map_err(|e| DatasetError::io(out, e))?;
    let mut paths = Vec::new();
    for metric in metrics {
        let mut points: Vec<CurvePoint> = Vec::new();
        for (name, rows, cases) in &series {
            let point = |x: i64, y: f64| CurvePoint {
                series: name.clone(),
                layer: x,
                mean: y,
                ci_low: y,
                ci_high: y,
            };
            let from_curve: Vec<CurvePoint> = rows
                .iter()
                .filter_map(|r| {
                    let x = r.get("edits")?.as_i64()?;
                    Some(point(x, r.get(metric.as_str())?.as_f64()?))
                })
                .collect();
            if !from_curve.is_empty() {
                points.extend(from_curve);
                continue;
            }
            // Per edit, from the cases: the mean over the cases at each count.
            let mut by_x: std::collections::BTreeMap<i64, (f64, usize)> = Default::default();
            for r in cases.iter().flatten() {
                let x = r.get("edits_applied").and_then(|v| v.as_i64());
                let y = r.get(metric.as_str()).and_then(|v| v.as_f64());
                if let (Some(x), Some(y)) = (x, y.filter(|y| y.is_finite())) {
                    let e = by_x.entry(x).or_default();
                    e.0 += y;
                    e.1 += 1;
                }
            }
            points.extend(by_x.into_iter().map(|(x, (s, n))| point(x, s / n as f64)));
        }
        if points.is_empty() {
            return Err(store_err(format!("no run's curve has {metric}")));
        }
        let name = if log10.contains(metric) {
            points.retain(|p| p.mean > 0.0);
            for p in &mut points {
                p.mean = p.mean.log10();
                (p.ci_low, p.ci_high) = (p.mean, p.mean);
            }
            if points.is_empty() {
                return Err(store_err(format!(
                    "{metric} has no value above 0 to take log10 of"
                )));
            }
            format!("log10 {metric}")
        } else {
            metric.clone()
        };
        let path = out.join(format!("edits-{metric}.png"));
        curves_over(
            &points,
            &format!("{name} against edits applied"),
            "edits applied",
            &name,
            &path,
        )?;
        paths.push(path);
    }
    Ok(paths)
}

/// An eval run's series name: its method, with `sequential` or its batch size.
pub fn series_name(run: &RunInfo) -> String {
    let h = &run.params.hyperparameters;
    let method = h
        .get("method")
        .and_then(|m| m.as_str())
        .unwrap_or("?")
        .to_string();
    let batch = h.get("batch").and_then(|b| b.as_u64());
    match (h.get("sequential").and_then(|s| s.as_bool()), batch) {
        (Some(true), Some(b)) => format!("{method} (batches of {b})"),
        (Some(true), None) => format!("{method} (sequential)"),
        _ => method,
    }
}
