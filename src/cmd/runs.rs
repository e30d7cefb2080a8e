//! `engram runs …`: list, show, export, plot, compare, curve and merge stored
//! runs ([`engram_datasets::export`] and [`engram_datasets::merge`] do the work).

use super::prelude::*;

use engram_datasets::export::{
    compare as compare_runs, curve, export_table, plot_run, summary_of, TableFormat,
};
use engram_datasets::summary::MetricSummary;
use engram_datasets::RunStore;

/// How `runs export` writes a table.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Parquet,
    Csv,
    /// The table's metric summaries as a LaTeX table of means and 95% intervals.
    Latex,
}

impl From<FormatArg> for TableFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Parquet => TableFormat::Parquet,
            FormatArg::Csv => TableFormat::Csv,
            FormatArg::Latex => TableFormat::Latex,
        }
    }
}

fn list(store: &RunStore, json: bool) -> Result<()> {
    let runs = store.list()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        outln!("no runs in {}", store.root().display());
        return Ok(());
    }
    outln!(
        "{:<24} {:<18} {:<9} {:<40} tables",
        "id",
        "kind",
        "status",
        "model"
    );
    for r in runs {
        let status = match (&r.problem, r.finished) {
            (Some(_), _) => "broken",
            (None, true) => "done",
            (None, false) => "partial",
        };
        outln!(
            "{:<24} {:<18} {:<9} {:<40} {}",
            r.id,
            r.kind,
            status,
            r.params.model,
            r.tables.join(",")
        );
        if let Some(p) = &r.problem {
            outln!("    broken: {p}");
        }
    }
    Ok(())
}

fn show(store: &RunStore, id: &str, json: bool) -> Result<()> {
    let run = store.find(id)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(());
    }
    let status = match (&run.problem, run.finished) {
        (Some(p), _) => format!("broken: {p}"),
        (None, true) => "finished".into(),
        (None, false) => "partial: its writer did not finish".into(),
    };
    outln!("run     {} ({status})", run.id);
    outln!("kind    {}", run.kind);
    outln!("dir     {}", run.dir.display());
    if run.problem.is_none() {
        outln!("params  {}", serde_json::to_string_pretty(&run.params)?);
    }
    for t in &run.tables {
        let df = match store.read_table(&run, t) {
            Ok(df) => df,
            Err(e) => {
                outln!("\ntable {t}: {e}");
                continue;
            }
        };
        outln!("\ntable {t}: {} rows x {} columns", df.height(), df.width());
        outln!("{}", df.head(Some(8)));
        for s in summary_of(&df)? {
            outln!(
                "  {:<28} n={:<6} mean {:.4}  95% CI [{:.4}, {:.4}]",
                s.metric,
                s.n,
                s.mean,
                s.ci_low,
                s.ci_high
            );
        }
    }
    if run.problem.is_some() {
        bail!("run {} is broken", run.id);
    }
    Ok(())
}

fn compare(store: &RunStore, a: &str, b: &str, table: Option<&str>) -> Result<()> {
    let (ra, rb) = (store.find(a)?, store.find(b)?);
    let rows = compare_runs(store, &ra, &rb, table)?;
    let cell = |s: &Option<MetricSummary>| match s {
        Some(s) => format!(
            "{:.4} ± {:.4} (n={})",
            s.mean,
            (s.ci_high - s.ci_low) / 2.0,
            s.n
        ),
        None => "—".to_string(),
    };
    outln!(
        "{:<28} {:<32} {:<32}",
        "metric",
        format!("{} [{}]", ra.id, ra.kind),
        format!("{} [{}]", rb.id, rb.kind)
    );
    for r in rows {
        outln!("{:<28} {:<32} {:<32}", r.metric, cell(&r.a), cell(&r.b));
    }
    Ok(())
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
        #[arg(long, value_enum, default_value = "csv")]
        format: FormatArg,
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
        /// Of those, the metrics to draw as log10 (drift_relative, delta_fro:
        /// sequential ROME's drift outgrows the others' by orders of magnitude).
        #[arg(long, value_delimiter = ',')]
        log_y: Vec<String>,
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
        } => {
            let run = store.find(&id)?;
            let path = export_table(&store, &run, table.as_deref(), format.into(), out)?;
            outln!("wrote {}", path.display());
            Ok(())
        }
        RunsCommand::Plot {
            id,
            out,
            table,
            fact,
        } => {
            let run = store.find(&id)?;
            let path = plot_run(&store, &run, table.as_deref(), fact.as_deref(), &out)?;
            outln!("wrote {}", path.display());
            Ok(())
        }
        RunsCommand::Curve {
            ids,
            out,
            metrics,
            log_y,
        } => {
            let runs = ids
                .iter()
                .map(|id| store.find(id))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for p in curve(&store, &runs, &metrics, &log_y, &out)? {
                outln!("figure {}", p.display());
            }
            Ok(())
        }
        RunsCommand::Compare { a, b, table } => compare(&store, &a, &b, table.as_deref()),
        RunsCommand::Merge { ids } => {
            let first = store.find(ids.first().map_or("", String::as_str))?;
            let info = if first.kind == "trace" {
                engram_analysis::jobs::trace::merge_trace_shards(&store, &ids)?.info
            } else {
                engram_datasets::merge::merge_shards(&store, &ids)?
            };
            outln!(
                "merged {} shards into run {} ({})",
                ids.len(),
                info.id,
                info.dir.display()
            );
            Ok(())
        }
    }
}
