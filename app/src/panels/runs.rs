//! Runs: the run store as a researcher uses it. Every stored run (kind, time,
//! model, key parameters; unfinished and broken runs shown with what is
//! wrong), a run's tables (sortable) and figures, two runs compared, a table
//! or figure exported for a paper, a trace opened back on Locate and an edit's
//! ledger back on Edit. Tables are read on demand and cached here; nothing in
//! this panel touches a tensor.

use std::path::{Path, PathBuf};

use eframe::egui::{self, ColorImage, RichText, TextureHandle, Ui};
use egui_extras::{Column, TableBuilder};
use engram_datasets::export::{
    compare, curve, export_table, plot_run, series_name, Comparison, TableFormat,
};
use engram_datasets::polars::prelude::DataFrame;
use engram_datasets::{RunInfo, RunStore};

use crate::app::EngramApp;
use crate::session::{Token, TraceView};
use crate::settings::PanelKind;
use crate::worker::Command;

/// Rows of a table shown at most.
const MAX_ROWS: usize = 500;

/// The metrics drawn against edits when two eval runs are compared: the
/// edit's success, its neighbourhood, the score and the weights' drift.
const COMPARED_CURVES: [&str; 4] = ["ES", "NS", "S", "drift_relative"];

/// A table read for display: column names and rows of text.
#[derive(Debug, Clone, Default)]
pub struct ShownTable {
    pub run: String,
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub total_rows: usize,
    /// (column, descending)
    pub sort: Option<(usize, bool)>,
    pub error: Option<String>,
}

/// What the export form writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportKind {
    Parquet,
    #[default]
    Csv,
    Latex,
    Svg,
    Png,
}

impl ExportKind {
    const ALL: [ExportKind; 5] = [
        ExportKind::Parquet,
        ExportKind::Csv,
        ExportKind::Latex,
        ExportKind::Svg,
        ExportKind::Png,
    ];

    fn name(self) -> &'static str {
        match self {
            ExportKind::Parquet => "table as parquet",
            ExportKind::Csv => "table as CSV",
            ExportKind::Latex => "summary as LaTeX",
            ExportKind::Svg => "figure as SVG",
            ExportKind::Png => "figure as PNG",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            ExportKind::Parquet => "parquet",
            ExportKind::Csv => "csv",
            ExportKind::Latex => "tex",
            ExportKind::Svg => "svg",
            ExportKind::Png => "png",
        }
    }
}

/// The panel's state, kept between frames.
#[derive(Default)]
pub struct RunsState {
    /// The store's root as typed.
    pub root: String,
    pub runs: Option<Result<Vec<RunInfo>, String>>,
    /// (column, descending) of the runs list.
    pub sort: Option<(usize, bool)>,
    pub selected: Option<String>,
    pub compare_with: Option<String>,
    pub table: Option<ShownTable>,
    /// PNG figures of the selected (and compared) run, decoded once.
    figures: Vec<(PathBuf, Option<TextureHandle>)>,
    comparison: Option<(String, String, Result<Vec<Comparison>, String>)>,
    curves: Vec<(PathBuf, Option<TextureHandle>)>,
    pub export_kind: ExportKind,
    pub export_path: String,
    /// What the last export wrote, or why it failed.
    pub export_status: Option<(String, bool)>,
}

impl std::fmt::Debug for RunsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunsState")
            .field("root", &self.root)
            .field("selected", &self.selected)
            .finish()
    }
}

impl RunsState {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.display().to_string(),
            ..Self::default()
        }
    }

    fn store(&self) -> Result<RunStore, String> {
        RunStore::open(self.root.trim()).map_err(|e| e.to_string())
    }

    /// Read the store's catalogue again.
    pub fn refresh(&mut self) {
        self.runs = Some(
            self.store()
                .and_then(|s| s.list().map_err(|e| e.to_string())),
        );
    }

    fn find(&self, id: &str) -> Option<RunInfo> {
        match &self.runs {
            Some(Ok(runs)) => runs.iter().find(|r| r.id == id).cloned(),
            _ => None,
        }
    }

    /// Open the run `id` names (exactly, or a unique prefix or suffix), and
    /// compare it with `compare`; what cannot be found is said on the panel.
    pub fn open(&mut self, ctx: &egui::Context, id: &str, compare: Option<&str>) {
        self.refresh();
        let find = |id: &str| {
            self.store()
                .and_then(|s| s.find(id).map_err(|e| e.to_string()))
                .map(|r| r.id)
        };
        let (a, b) = (find(id), compare.map(find));
        match (a, b) {
            (Ok(a), None) => self.select(ctx, &a),
            (Ok(a), Some(Ok(b))) => {
                self.compare_with = Some(b);
                self.select(ctx, &a);
            }
            (Err(e), _) | (_, Some(Err(e))) => self.export_status = Some((e, true)),
        }
    }

    /// Open a run: its default table and its figures.
    pub fn select(&mut self, ctx: &egui::Context, id: &str) {
        self.selected = Some(id.to_string());
        self.table = None;
        self.export_status = None;
        let Some(run) = self.find(id) else { return };
        let table = engram_datasets::export::pick_table(&run, None).ok();
        if let Some(t) = table {
            self.show_table(&run, &t);
        }
        self.figures = png_files(&run.dir)
            .into_iter()
            .map(|p| {
                let tex = load_png(ctx, &p);
                (p, tex)
            })
            .collect();
        self.export_path = std::env::temp_dir()
            .join(format!("{}.{}", run.id, self.export_kind.extension()))
            .display()
            .to_string();
        self.update_comparison(ctx);
    }

    /// Read `name` of `run` for display.
    pub fn show_table(&mut self, run: &RunInfo, name: &str) {
        let mut shown = ShownTable {
            run: run.id.clone(),
            name: name.to_string(),
            ..Default::default()
        };
        match self
            .store()
            .and_then(|s| s.read_table(run, name).map_err(|e| e.to_string()))
        {
            Ok(df) => fill(&mut shown, &df),
            Err(e) => shown.error = Some(e),
        }
        self.table = Some(shown);
    }

    /// Compare the selected run with `compare_with`: summaries side by side,
    /// and eval runs' curves drawn together.
    fn update_comparison(&mut self, ctx: &egui::Context) {
        self.comparison = None;
        self.curves.clear();
        let (Some(a), Some(b)) = (
            self.selected.as_deref().and_then(|id| self.find(id)),
            self.compare_with.as_deref().and_then(|id| self.find(id)),
        ) else {
            return;
        };
        let Ok(store) = self.store() else { return };
        let rows = compare(&store, &a, &b, None).map_err(|e| e.to_string());
        self.comparison = Some((a.id.clone(), b.id.clone(), rows));
        let has_curve = |r: &RunInfo| r.tables.iter().any(|t| t == "curve");
        if has_curve(&a) && has_curve(&b) {
            let out = std::env::temp_dir().join(format!(
                "engram-compare-{}-{}-{}",
                std::process::id(),
                a.id,
                b.id
            ));
            // One figure per metric; a metric neither run has (the drift of a
            // run stored before it was recorded) is left out, not the rest.
            let runs = [a, b];
            for metric in COMPARED_CURVES {
                if let Ok(paths) = curve(&store, &runs, &[metric.to_string()], &[], &out) {
                    self.curves.extend(paths.into_iter().map(|p| {
                        let tex = load_png(ctx, &p);
                        (p, tex)
                    }));
                }
            }
        }
    }

    /// The compared eval runs' metric-against-edits figures.
    pub fn curve_figures(&self) -> impl Iterator<Item = &std::path::Path> {
        self.curves.iter().map(|(p, _)| p.as_path())
    }

    /// Write the selected run's table or figure as the form says.
    pub fn export(&mut self) {
        let result = (|| -> Result<PathBuf, String> {
            let id = self.selected.clone().ok_or("select a run first")?;
            let run = self.find(&id).ok_or("the run is gone; refresh")?;
            let store = self.store()?;
            let out = PathBuf::from(self.export_path.trim());
            if out.as_os_str().is_empty() {
                return Err("choose a file to write".into());
            }
            let table = self.table.as_ref().map(|t| t.name.clone());
            let table_format = match self.export_kind {
                ExportKind::Parquet => Some(TableFormat::Parquet),
                ExportKind::Csv => Some(TableFormat::Csv),
                ExportKind::Latex => Some(TableFormat::Latex),
                ExportKind::Svg | ExportKind::Png => None,
            };
            match table_format {
                Some(f) => export_table(&store, &run, table.as_deref(), f, Some(out)),
                None => plot_run(&store, &run, None, None, &out),
            }
            .map_err(|e| e.to_string())
        })();
        self.export_status = Some(match result {
            Ok(p) => (format!("wrote {}", p.display()), false),
            Err(e) => (e, true),
        });
    }
}

/// A DataFrame as text, at most [`MAX_ROWS`] rows.
fn fill(shown: &mut ShownTable, df: &DataFrame) {
    shown.columns = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    shown.total_rows = df.height();
    let n = df.height().min(MAX_ROWS);
    shown.rows = (0..n)
        .map(|i| {
            df.columns()
                .iter()
                .map(|c| match c.get(i) {
                    Ok(v) => match v {
                        engram_datasets::polars::prelude::AnyValue::String(s) => s.to_string(),
                        engram_datasets::polars::prelude::AnyValue::Float64(x) => {
                            format!("{x:.6}")
                        }
                        engram_datasets::polars::prelude::AnyValue::Float32(x) => {
                            format!("{x:.6}")
                        }
                        other => other.to_string(),
                    },
                    Err(e) => format!("({e})"),
                })
                .collect()
        })
        .collect();
}

fn png_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A PNG file as a texture; `None` where it cannot be read.
fn load_png(ctx: &egui::Context, path: &Path) -> Option<TextureHandle> {
    let img = image::open(path).ok()?.to_rgba8();
    let size = [img.width() as usize, img.height() as usize];
    let color = ColorImage::from_rgba_unmultiplied(size, img.as_raw());
    Some(ctx.load_texture(path.display().to_string(), color, Default::default()))
}

/// Two cells in order: numbers as numbers, else as text.
fn cmp_cells(x: &str, y: &str, descending: bool) -> std::cmp::Ordering {
    let o = match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(p), Ok(q)) => p.total_cmp(&q),
        _ => x.cmp(y),
    };
    if descending {
        o.reverse()
    } else {
        o
    }
}

/// Order rows by a column.
fn sort_rows(rows: &mut [Vec<String>], col: usize, descending: bool) {
    let cell = |r: &Vec<String>| r.get(col).cloned().unwrap_or_default();
    rows.sort_by(|a, b| cmp_cells(&cell(a), &cell(b), descending));
}

/// The parameters a run of `kind` is known by, in a few words.
fn key_params(r: &RunInfo) -> String {
    let h = &r.params.hyperparameters;
    let get = |k: &str| {
        h.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
    };
    let mut parts: Vec<String> = Vec::new();
    match r.kind.as_str() {
        "eval" => parts.push(series_name(r)),
        "edit" => {
            if let Some(m) = get("method") {
                parts.push(m);
            }
            if let Some(req) = h.get("request") {
                parts.push(format!(
                    "{} -> {}",
                    req.get("subject").and_then(|s| s.as_str()).unwrap_or(""),
                    req.get("target").and_then(|s| s.as_str()).unwrap_or("")
                ));
            }
        }
        "trace" => {
            for k in ["facts_traced", "samples", "noise_level"] {
                if let Some(v) = get(k) {
                    parts.push(format!("{k} {v}"));
                }
            }
        }
        _ => {
            for k in ["method", "action", "prompt", "label", "site"] {
                if let Some(v) = get(k) {
                    parts.push(v);
                }
            }
        }
    }
    if let Some(s) = get("shard").filter(|s| s != "null") {
        parts.push(format!("shard {s}"));
    }
    parts.join(", ")
}

fn status(r: &RunInfo) -> (String, bool) {
    match (&r.problem, r.finished) {
        (Some(p), _) => (format!("broken: {p}"), true),
        (None, true) => ("done".into(), false),
        (None, false) => ("unfinished: its writer did not finish".into(), true),
    }
}

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    ui.heading("Runs");
    ui.horizontal(|ui| {
        let label = ui.label("Run store");
        let edit = ui
            .add(egui::TextEdit::singleline(&mut app.runs.root).desired_width(420.0))
            .labelled_by(label.id);
        let refresh = ui.button("Refresh").clicked();
        if refresh || (edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter))) {
            app.runs.refresh();
        }
    });
    if app.runs.runs.is_none() {
        app.runs.refresh();
    }
    let runs = match &app.runs.runs {
        Some(Ok(r)) => r.clone(),
        Some(Err(e)) => {
            ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
            return;
        }
        None => Vec::new(),
    };
    if runs.is_empty() {
        ui.label(
            RichText::new(format!(
                "No runs in {} yet: a trace, an edit, a probe or an `engram` command stores one.",
                app.runs.root
            ))
            .weak(),
        );
        return;
    }
    let broken = runs.iter().filter(|r| r.problem.is_some()).count();
    ui.label(format!(
        "{} runs{}",
        runs.len(),
        if broken > 0 {
            format!(", {broken} broken")
        } else {
            String::new()
        }
    ));
    let ctx = ui.ctx().clone();
    let mut clicked: Option<String> = None;
    let mut compare_clicked: Option<String> = None;
    runs_table(app, ui, &runs, &mut clicked, &mut compare_clicked);
    if let Some(id) = clicked {
        app.runs.select(&ctx, &id);
    }
    if let Some(id) = compare_clicked {
        app.runs.compare_with = if app.runs.compare_with.as_deref() == Some(&id) {
            None
        } else {
            Some(id)
        };
        app.runs.update_comparison(&ctx);
    }
    ui.separator();
    let Some(run) = app
        .runs
        .selected
        .as_deref()
        .and_then(|id| runs.iter().find(|r| r.id == id))
        .cloned()
    else {
        if let Some((e, true)) = &app.runs.export_status {
            ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
        }
        ui.label(RichText::new("Open a run to see its tables and figures.").weak());
        return;
    };
    egui::ScrollArea::vertical()
        .id_salt("run_details")
        .auto_shrink([false, false])
        .show(ui, |ui| run_details(app, ui, &run));
}

fn runs_table(
    app: &mut EngramApp,
    ui: &mut Ui,
    runs: &[RunInfo],
    clicked: &mut Option<String>,
    compare_clicked: &mut Option<String>,
) {
    const HEADERS: [&str; 7] = [
        "id",
        "kind",
        "time (UTC)",
        "model",
        "status",
        "parameters",
        "tables",
    ];
    let mut rows: Vec<(Vec<String>, &RunInfo)> = runs
        .iter()
        .map(|r| {
            (
                vec![
                    r.id.clone(),
                    r.kind.clone(),
                    engram_datasets::store::utc_minutes(r.created),
                    Path::new(&r.params.model)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    status(r).0,
                    key_params(r),
                    r.tables.join(", "),
                ],
                r,
            )
        })
        .collect();
    match app.runs.sort {
        Some((col, desc)) => rows.sort_by(|(a, _), (b, _)| {
            let cell = |r: &Vec<String>| r.get(col).cloned().unwrap_or_default();
            cmp_cells(&cell(a), &cell(b), desc)
        }),
        // Newest first.
        None => rows.reverse(),
    }
    let selected = app.runs.selected.clone();
    let comparing = app.runs.compare_with.clone();
    let mut sort = app.runs.sort;
    egui::ScrollArea::vertical()
        .id_salt("runs_list")
        .max_height(240.0)
        .show(ui, |ui| {
            TableBuilder::new(ui)
                .id_salt("runs_table")
                .striped(true)
                .column(Column::exact(48.0))
                .column(Column::exact(76.0))
                .column(Column::initial(190.0).clip(true))
                .column(Column::initial(70.0).clip(true))
                .column(Column::initial(120.0).clip(true))
                .column(Column::initial(200.0).clip(true))
                .column(Column::initial(90.0).clip(true))
                .column(Column::initial(220.0).clip(true))
                .column(Column::remainder().clip(true))
                .header(20.0, |mut h| {
                    h.col(|_| {});
                    h.col(|_| {});
                    for (i, name) in HEADERS.iter().enumerate() {
                        h.col(|ui| {
                            let mark = match sort {
                                Some((c, true)) if c == i => " v",
                                Some((c, false)) if c == i => " ^",
                                _ => "",
                            };
                            if ui
                                .button(RichText::new(format!("{name}{mark}")).strong())
                                .on_hover_text("Sort by this column")
                                .clicked()
                            {
                                sort = match sort {
                                    Some((c, false)) if c == i => Some((i, true)),
                                    _ => Some((i, false)),
                                };
                            }
                        });
                    }
                })
                .body(|body| {
                    body.rows(20.0, rows.len(), |mut row| {
                        let (text, r) = &rows[row.index()];
                        row.col(|ui| {
                            let open = selected.as_deref() == Some(r.id.as_str());
                            if ui.selectable_label(open, "open").clicked() {
                                *clicked = Some(r.id.clone());
                            }
                        });
                        row.col(|ui| {
                            let on = comparing.as_deref() == Some(r.id.as_str());
                            if ui
                                .selectable_label(on, "compare")
                                .on_hover_text("Compare the open run with this one")
                                .clicked()
                            {
                                *compare_clicked = Some(r.id.clone());
                            }
                        });
                        for (i, t) in text.iter().enumerate() {
                            row.col(|ui| {
                                if i == 4 && status(r).1 {
                                    ui.label(RichText::new(t).color(ui.visuals().warn_fg_color));
                                } else {
                                    ui.label(t);
                                }
                            });
                        }
                    });
                });
        });
    app.runs.sort = sort;
}

fn run_details(app: &mut EngramApp, ui: &mut Ui, run: &RunInfo) {
    ui.horizontal(|ui| {
        ui.label(RichText::new(format!("Run {} ({})", run.id, run.kind)).strong());
        ui.label(
            RichText::new(run.dir.display().to_string())
                .weak()
                .monospace(),
        );
    });
    if let Some(p) = &run.problem {
        ui.label(RichText::new(format!("broken: {p}")).color(ui.visuals().error_fg_color));
    }
    ui.horizontal(|ui| {
        if run.kind == "trace"
            && run.problem.is_none()
            && ui
                .button("Open on Locate")
                .on_hover_text("Show this trace's first fact on the Locate panel")
                .clicked()
        {
            match trace_view(app, run) {
                Ok(view) => {
                    app.settings.prompt = view.prompt.clone();
                    app.results.trace = Some(view);
                    app.trace_cell = None;
                    app.settings.panel = PanelKind::Locate;
                }
                Err(e) => app.runs.export_status = Some((e, true)),
            }
        }
        let ledger = run.dir.join("ledger.json");
        if ledger.is_file()
            && ui
                .button("Open ledger on Edit")
                .on_hover_text("Apply this run's edits to the loaded model (its ledger)")
                .clicked()
        {
            app.submit(PanelKind::Edit, Command::ImportLedger(ledger));
            app.settings.panel = PanelKind::Edit;
        }
    });
    figures(ui, &app.runs.figures);
    comparison(app, ui);
    ui.separator();
    egui::CollapsingHeader::new("parameters")
        .id_salt(("run_params", &run.id))
        .show(ui, |ui| {
            let text = serde_json::to_string_pretty(&run.params).unwrap_or_default();
            egui::ScrollArea::vertical()
                .id_salt("params_scroll")
                .max_height(160.0)
                .show(ui, |ui| ui.label(RichText::new(text).monospace()));
        });
    // Table picker and the table.
    let current = app.runs.table.as_ref().map(|t| t.name.clone());
    let mut pick: Option<String> = None;
    ui.horizontal(|ui| {
        let label = ui.label("Table");
        egui::ComboBox::from_id_salt("run_table")
            .selected_text(current.clone().unwrap_or_default())
            .show_ui(ui, |ui| {
                for t in &run.tables {
                    if ui
                        .selectable_label(current.as_deref() == Some(t.as_str()), t)
                        .clicked()
                    {
                        pick = Some(t.clone());
                    }
                }
            })
            .response
            .labelled_by(label.id);
    });
    if let Some(t) = pick {
        app.runs.show_table(run, &t);
    }
    if let Some(table) = &mut app.runs.table {
        data_table(ui, table);
    }
    export_form(app, ui);
}

fn data_table(ui: &mut Ui, t: &mut ShownTable) {
    if let Some(e) = &t.error {
        ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
        return;
    }
    ui.label(
        RichText::new(format!(
            "{}: {} rows x {} columns{}",
            t.name,
            t.total_rows,
            t.columns.len(),
            if t.total_rows > t.rows.len() {
                format!(" (first {} shown)", t.rows.len())
            } else {
                String::new()
            }
        ))
        .weak(),
    );
    let mut sort = t.sort;
    egui::ScrollArea::horizontal()
        .id_salt("table_scroll")
        .show(ui, |ui| {
            let mut builder = TableBuilder::new(ui)
                .id_salt(("run_data", &t.run, &t.name))
                .striped(true)
                .max_scroll_height(220.0);
            for _ in &t.columns {
                builder = builder.column(Column::initial(110.0).at_least(40.0).clip(true));
            }
            builder
                .header(20.0, |mut h| {
                    for (i, c) in t.columns.iter().enumerate() {
                        h.col(|ui| {
                            if ui
                                .button(RichText::new(c).strong())
                                .on_hover_text("Sort by this column")
                                .clicked()
                            {
                                sort = match sort {
                                    Some((s, false)) if s == i => Some((i, true)),
                                    _ => Some((i, false)),
                                };
                            }
                        });
                    }
                })
                .body(|body| {
                    body.rows(18.0, t.rows.len(), |mut row| {
                        let r = &t.rows[row.index()];
                        for cell in r {
                            row.col(|ui| {
                                ui.label(cell);
                            });
                        }
                    });
                });
        });
    if sort != t.sort {
        if let Some((c, d)) = sort {
            sort_rows(&mut t.rows, c, d);
        }
        t.sort = sort;
    }
}

fn export_form(app: &mut EngramApp, ui: &mut Ui) {
    ui.horizontal(|ui| {
        let label = ui.label("Export to");
        let before = app.runs.export_kind;
        egui::ComboBox::from_id_salt("export_kind")
            .selected_text(app.runs.export_kind.name())
            .show_ui(ui, |ui| {
                for k in ExportKind::ALL {
                    ui.selectable_value(&mut app.runs.export_kind, k, k.name());
                }
            })
            .response
            .labelled_by(label.id);
        if before != app.runs.export_kind {
            let p = PathBuf::from(app.runs.export_path.trim());
            app.runs.export_path = p
                .with_extension(app.runs.export_kind.extension())
                .display()
                .to_string();
        }
        ui.add(egui::TextEdit::singleline(&mut app.runs.export_path).desired_width(360.0))
            .labelled_by(label.id);
        if ui.button("Export").clicked() {
            app.runs.export();
        }
    });
    if let Some((text, bad)) = &app.runs.export_status {
        let t = RichText::new(text);
        ui.label(if *bad {
            t.color(ui.visuals().error_fg_color)
        } else {
            t
        });
    }
}

fn comparison(app: &mut EngramApp, ui: &mut Ui) {
    let Some((a, b, rows)) = &app.runs.comparison else {
        return;
    };
    ui.separator();
    ui.label(RichText::new(format!("Comparing {a} with {b}")).strong());
    figures(ui, &app.runs.curves);
    match rows {
        Err(e) => {
            ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
        }
        Ok(rows) => {
            let cell = |s: &Option<engram_datasets::summary::MetricSummary>| match s {
                Some(s) => format!(
                    "{:.4} [{:.4}, {:.4}] n={}",
                    s.mean, s.ci_low, s.ci_high, s.n
                ),
                None => "-".into(),
            };
            egui::Grid::new("compare_grid")
                .striped(true)
                .num_columns(3)
                .show(ui, |ui| {
                    ui.strong("metric");
                    ui.strong(a);
                    ui.strong(b);
                    ui.end_row();
                    for r in rows {
                        ui.label(&r.metric);
                        ui.label(cell(&r.a));
                        ui.label(cell(&r.b));
                        ui.end_row();
                    }
                });
        }
    }
}

/// Figures in rows of as many columns as the width holds (300 to 400
/// points each), each scaled to its column.
fn figures(ui: &mut Ui, list: &[(PathBuf, Option<TextureHandle>)]) {
    const MIN_W: f32 = 300.0;
    const MAX_W: f32 = 400.0;
    const MAX_H: f32 = 260.0;
    if list.is_empty() {
        return;
    }
    let gap = ui.spacing().item_spacing.x;
    let width = ui.available_width();
    let cols = (((width + gap) / (MIN_W + gap)).floor() as usize).clamp(1, list.len());
    let col_w = ((width - gap * (cols - 1) as f32) / cols as f32).min(MAX_W);
    for row in list.chunks(cols) {
        ui.horizontal_top(|ui| {
            for (path, tex) in row {
                ui.vertical(|ui| {
                    ui.set_width(col_w);
                    ui.label(
                        RichText::new(
                            path.file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                        )
                        .weak(),
                    );
                    match tex {
                        Some(t) => {
                            let size = t.size_vec2();
                            let scale = (col_w / size.x).min(MAX_H / size.y).min(1.0);
                            ui.image((t.id(), size * scale));
                        }
                        None => {
                            ui.label("(not a readable PNG)");
                        }
                    }
                });
            }
        });
    }
}

/// A trace run's first fact as the Locate panel draws it.
fn trace_view(app: &EngramApp, run: &RunInfo) -> Result<TraceView, String> {
    use engram_datasets::table::{f64_column, str_column};
    let store = app.runs.store()?;
    let df = store.read_table(run, "trace").map_err(|e| e.to_string())?;
    let s = |c: &str| str_column(&df, c).map_err(|e| e.to_string());
    let f = |c: &str| f64_column(&df, c).map_err(|e| e.to_string());
    let (facts, kinds, tokens) = (s("fact")?, s("kind")?, s("token")?);
    let (token_index, layer, score) = (f("token_index")?, f("layer")?, f("score")?);
    let (clean, corrupted) = (f("clean_prob")?, f("corrupted_prob")?);
    let subject = s("is_subject")?;
    let first = facts.first().cloned().ok_or("the trace table is empty")?;
    let rows: Vec<usize> = (0..facts.len()).filter(|&i| facts[i] == first).collect();
    let n_tokens = rows
        .iter()
        .map(|&i| token_index[i] as usize + 1)
        .max()
        .unwrap_or(0);
    let n_layers = rows
        .iter()
        .map(|&i| layer[i] as usize + 1)
        .max()
        .unwrap_or(0);
    let mut kind_names: Vec<String> = Vec::new();
    let mut scores: Vec<Vec<Vec<f32>>> = Vec::new();
    let mut token_text = vec![String::new(); n_tokens];
    let mut subj: Vec<usize> = Vec::new();
    for &i in &rows {
        let k = match kind_names.iter().position(|k| *k == kinds[i]) {
            Some(k) => k,
            None => {
                kind_names.push(kinds[i].clone());
                scores.push(vec![vec![0.0; n_layers]; n_tokens]);
                kind_names.len() - 1
            }
        };
        let (t, l) = (token_index[i] as usize, layer[i] as usize);
        scores[k][t][l] = score[i] as f32;
        token_text[t] = tokens[i].clone();
        if subject[i] == "true" && !subj.contains(&t) {
            subj.push(t);
        }
    }
    let facts_table = store.read_table(run, "facts").map_err(|e| e.to_string())?;
    let prompts = str_column(&facts_table, "prompt").map_err(|e| e.to_string())?;
    let targets = str_column(&facts_table, "target").map_err(|e| e.to_string())?;
    let target = prompts
        .iter()
        .position(|p| *p == first)
        .and_then(|i| targets.get(i).cloned())
        .unwrap_or_default();
    let tok = |text: String| Token { id: 0, text };
    let i0 = rows[0];
    Ok(TraceView {
        prompt: first.clone(),
        tokens: token_text.into_iter().map(tok).collect(),
        subject: subj.iter().copied().min().unwrap_or(0)
            ..subj.iter().copied().max().map_or(0, |m| m + 1),
        target: tok(format!(" {target}")),
        predicted: tok(format!(" {target}")),
        clean_prob: clean[i0] as f32,
        corrupted_prob: corrupted[i0] as f32,
        noise_scale: run
            .params
            .hyperparameters
            .get("noise_scale")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN) as f32,
        kinds: kind_names.into_iter().zip(scores).collect(),
        run_id: run.id.clone(),
    })
}
