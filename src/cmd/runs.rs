//! `engram runs …`: list, show, export, plot and compare stored runs.

use super::prelude::*;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engram_datasets::figures::{
    curves_over, effect_lines, lens_grid, metric_bars, trace_heatmaps, CurvePoint, LensCell,
    MetricBar, TraceCell,
};
use engram_datasets::polars::prelude::DataFrame;
use engram_datasets::store::write_csv;
use engram_datasets::summary::{latex_table, summarize, MetricSummary};
use engram_datasets::table::from_frame;
use engram_datasets::{RunInfo, RunStore};

/// Columns that identify rows rather than measure anything.
const ID_COLUMNS: [&str; 9] = [
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

pub fn list(store: &RunStore, json: bool) -> Result<()> {
    let runs = store.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs in {}", store.root().display());
        return Ok(());
    }
    println!(
        "{:<24} {:<18} {:<9} {:<40} tables",
        "id", "kind", "status", "model"
    );
    for r in runs {
        let status = if r.finished { "done" } else { "partial" };
        println!(
            "{:<24} {:<18} {:<9} {:<40} {}",
            r.id,
            r.kind,
            status,
            r.params.model,
            r.tables.join(",")
        );
    }
    Ok(())
}

/// The table a command acts on: `--table`, else the run's only or first table.
fn pick_table(run: &RunInfo, table: Option<&str>) -> Result<String> {
    match table {
        Some(t) => Ok(t.to_string()),
        None => run
            .tables
            .iter()
            .find(|t| *t == "cases" || *t == "summary")
            .or_else(|| run.tables.first())
            .cloned()
            .with_context(|| format!("run {} has no tables", run.id)),
    }
}

fn summary_of(df: &DataFrame) -> Result<Vec<MetricSummary>> {
    Ok(summarize(df, &ID_COLUMNS)?)
}

pub fn show(store: &RunStore, id: &str, json: bool) -> Result<()> {
    let run = store.find(id)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(());
    }
    println!(
        "run     {} ({})",
        run.id,
        if run.finished {
            "finished"
        } else {
            "partial: its writer did not finish"
        }
    );
    println!("kind    {}", run.kind);
    println!("dir     {}", run.dir.display());
    println!("params  {}", serde_json::to_string_pretty(&run.params)?);
    for t in &run.tables {
        let df = store.read_table(&run, t)?;
        println!("\ntable {t}: {} rows x {} columns", df.height(), df.width());
        println!("{}", df.head(Some(8)));
        for s in summary_of(&df)? {
            println!(
                "  {:<28} n={:<6} mean {:.4}  95% CI [{:.4}, {:.4}]",
                s.metric, s.n, s.mean, s.ci_low, s.ci_high
            );
        }
    }
    Ok(())
}

pub fn export(
    store: &RunStore,
    id: &str,
    format: &str,
    table: Option<&str>,
    out: Option<PathBuf>,
) -> Result<()> {
    let run = store.find(id)?;
    let name = pick_table(&run, table)?;
    let mut df = store.read_table(&run, &name)?;
    let ext = match format {
        "parquet" => "parquet",
        "csv" => "csv",
        "latex" => "tex",
        other => bail!("unknown format {other:?}: use parquet, csv or latex"),
    };
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{}-{name}.{ext}", run.id)));
    match format {
        "parquet" => {
            let bytes = std::fs::read(run.dir.join(format!("{name}.parquet")))?;
            engram_datasets::store::write_atomic(&out, &bytes)?;
        }
        "csv" => write_csv(&mut df, &out)?,
        _ => {
            let caption = format!(
                "{} ({}), table {name}, run {}",
                run.kind, run.params.model, run.id
            );
            engram_datasets::store::write_atomic(
                &out,
                latex_table(&summary_of(&df)?, &caption).as_bytes(),
            )?;
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

pub fn plot(
    store: &RunStore,
    id: &str,
    table: Option<&str>,
    fact: Option<&str>,
    out: &Path,
) -> Result<()> {
    let run = store.find(id)?;
    let name = match table {
        Some(t) => t.to_string(),
        None => ["effects", "trace", "lens", "metrics"]
            .into_iter()
            .find(|t| run.tables.iter().any(|x| x == t))
            .map(String::from)
            .with_context(|| {
                format!(
                    "run {} has no plottable table (trace, effects, lens, metrics); tables: {}",
                    run.id,
                    run.tables.join(", ")
                )
            })?,
    };
    let df = store.read_table(&run, &name)?;
    match name.as_str() {
        "trace" | "average" => {
            let mut cells: Vec<TraceCell> = from_frame(&df)?;
            let first = cells.first().map(|c| c.fact.clone()).unwrap_or_default();
            let want = fact.map(String::from).unwrap_or(first);
            cells.retain(|c| c.fact == want);
            if cells.is_empty() {
                bail!("run {} has no trace cells for fact {want:?}", run.id);
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
        other => bail!(
            "no figure for table {other:?}; plottable tables are trace, effects, lens and metrics"
        ),
    }
    println!("wrote {}", out.display());
    Ok(())
}

pub fn compare(store: &RunStore, a: &str, b: &str, table: Option<&str>) -> Result<()> {
    let (ra, rb) = (store.find(a)?, store.find(b)?);
    let (ta, tb) = (pick_table(&ra, table)?, pick_table(&rb, table)?);
    let sa = summary_of(&store.read_table(&ra, &ta)?)?;
    let sb = summary_of(&store.read_table(&rb, &tb)?)?;
    let cell = |s: Option<&MetricSummary>| match s {
        Some(s) => format!(
            "{:.4} ± {:.4} (n={})",
            s.mean,
            (s.ci_high - s.ci_low) / 2.0,
            s.n
        ),
        None => "—".to_string(),
    };
    println!(
        "{:<28} {:<32} {:<32}",
        "metric",
        format!("{} [{}]", ra.id, ra.kind),
        format!("{} [{}]", rb.id, rb.kind)
    );
    let mut names: Vec<&str> = sa.iter().map(|s| s.metric.as_str()).collect();
    for s in &sb {
        if !names.contains(&s.metric.as_str()) {
            names.push(&s.metric);
        }
    }
    for n in names {
        println!(
            "{:<28} {:<32} {:<32}",
            n,
            cell(sa.iter().find(|s| s.metric == n)),
            cell(sb.iter().find(|s| s.metric == n))
        );
    }
    Ok(())
}

/// Metric against number of edits: each run's `curve` table (from `engram eval
/// --checkpoints`) as a series named by its method (and `sequential` where
/// set), one figure per metric, `out/edits-<metric>.png`. Returns the paths.
pub fn curve(
    store: &RunStore,
    ids: &[String],
    metrics: &[String],
    out: &Path,
) -> Result<Vec<PathBuf>> {
    if ids.is_empty() {
        bail!("name at least one eval run");
    }
    let mut series: Vec<(String, Vec<serde_json::Map<String, serde_json::Value>>)> = Vec::new();
    for id in ids {
        let run = store.find(id)?;
        if !run.tables.iter().any(|t| t == "curve") {
            bail!(
                "run {} has no curve table: run `engram eval` with --checkpoints",
                run.id
            );
        }
        let rows = from_frame(&store.read_table(&run, "curve")?)?;
        let h = &run.params.hyperparameters;
        let method = h
            .get("method")
            .and_then(|m| m.as_str())
            .unwrap_or("?")
            .to_string();
        let batch = h.get("batch").and_then(|b| b.as_u64());
        let name = match (h.get("sequential").and_then(|s| s.as_bool()), batch) {
            (Some(true), Some(b)) => format!("{method} (batches of {b})"),
            (Some(true), None) => format!("{method} (sequential)"),
            _ => method,
        };
        series.push((name, rows));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut paths = Vec::new();
    for metric in metrics {
        let points: Vec<CurvePoint> = series
            .iter()
            .flat_map(|(name, rows)| {
                rows.iter().filter_map(move |r| {
                    let x = r.get("edits")?.as_i64()?;
                    let y = r.get(metric.as_str())?.as_f64()?;
                    Some(CurvePoint {
                        series: name.clone(),
                        layer: x,
                        mean: y,
                        ci_low: y,
                        ci_high: y,
                    })
                })
            })
            .collect();
        if points.is_empty() {
            bail!("no run's curve has {metric}");
        }
        let path = out.join(format!("edits-{metric}.png"));
        curves_over(
            &points,
            &format!("{metric} against edits applied"),
            "edits applied",
            metric,
            &path,
        )?;
        paths.push(path);
    }
    Ok(paths)
}

/// Stored runs: list, show, export, plot, compare, curve, merge.
#[derive(Args)]
pub(crate) struct RunsArgs {
    /// The run store (default: $ENGRAM_RUNS, else ./runs).
    #[arg(long, global = true)]
    pub runs: Option<PathBuf>,
    #[command(subcommand)]
    pub which: RunsCommand,
}

#[derive(Subcommand)]
pub(crate) enum RunsCommand {
    /// Every run with its kind, status, model and tables.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A run's params, tables and metric summaries.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a table as parquet or CSV, or its summary as a LaTeX table of means ± 95% CI.
    Export {
        id: String,
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Draw a stored table as a figure (.svg or .png by extension).
    Plot {
        id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        table: Option<String>,
        /// For traces of several facts: which fact.
        #[arg(long)]
        fact: Option<String>,
    },
    /// Metric against number of edits: each eval run's `curve` table as one
    /// series (named by its method), one figure per metric (edits-ES.png, …).
    Curve {
        ids: Vec<String>,
        /// The directory for the figures.
        #[arg(long)]
        out: PathBuf,
        /// Metrics to draw.
        #[arg(long, value_delimiter = ',', default_value = "ES,PS,NS,S")]
        metrics: Vec<String>,
    },
    /// Metric summaries of two runs side by side.
    Compare {
        a: String,
        b: String,
        #[arg(long)]
        table: Option<String>,
    },
    /// Join the runs of a study's shards (`--shard K/N`) into one run.
    Merge {
        /// The shards' runs, each shard once, in any order.
        #[arg(required = true, num_args = 2..)]
        ids: Vec<String>,
    },
}

/// Run `engram runs …`.
pub(crate) fn run(a: RunsArgs) -> Result<()> {
    let store = engram_datasets::RunStore::open(a.runs.unwrap_or_else(|| settings().runs.clone()))?;
    match a.which {
        RunsCommand::List { json } => list(&store, json),
        RunsCommand::Show { id, json } => show(&store, &id, json),
        RunsCommand::Export {
            id,
            format,
            table,
            out,
        } => export(&store, &id, &format, table.as_deref(), out),
        RunsCommand::Plot {
            id,
            out,
            table,
            fact,
        } => plot(&store, &id, table.as_deref(), fact.as_deref(), &out),
        RunsCommand::Curve { ids, out, metrics } => {
            for p in curve(&store, &ids, &metrics, &out)? {
                println!("figure {}", p.display());
            }
            Ok(())
        }
        RunsCommand::Compare { a, b, table } => compare(&store, &a, &b, table.as_deref()),
        RunsCommand::Merge { ids } => {
            let info = engram_datasets::merge::merge_shards(&store, &ids)?;
            println!(
                "merged {} shards into run {} ({})",
                ids.len(),
                info.id,
                info.dir.display()
            );
            Ok(())
        }
    }
}
