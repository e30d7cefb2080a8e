//! Publication figures (plotters, SVG or PNG by extension), drawn from stored
//! tables only, never from live state:
//! - causal-trace heatmaps, layers × tokens, subject tokens starred (ROME, Meng et al. 2022, Fig. 1);
//! - averaged indirect effect per layer with 95% confidence bands;
//! - the logit-lens grid (nostalgebraist 2020): top token and probability per layer and position;
//! - bar charts of edit metrics with confidence intervals.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};

/// One cell of a causal trace: the score after restoring `(token, layer)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceCell {
    pub fact: String,
    /// `hidden`, `mlp` or `attn`.
    pub kind: String,
    pub token_index: i64,
    pub token: String,
    pub is_subject: bool,
    pub layer: i64,
    pub score: f64,
}

/// One point of an averaged curve with its confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The series (e.g. `mlp`, `attn`, `hidden`).
    pub series: String,
    pub layer: i64,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// One logit-lens cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensCell {
    pub layer: i64,
    pub position: i64,
    pub input_token: String,
    pub top_token: String,
    pub prob: f64,
}

/// One bar: a metric's mean and interval, optionally per method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricBar {
    pub method: String,
    pub metric: String,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

fn err<E: std::fmt::Display>(e: E) -> DatasetError {
    DatasetError::Figure(e.to_string())
}

/// Render with the SVG or bitmap backend, chosen by the file extension.
macro_rules! render {
    ($path:expr, $size:expr, |$root:ident| $body:expr) => {{
        let path: &Path = $path;
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => {
                let $root = SVGBackend::new(path, $size).into_drawing_area();
                $body?;
                $root.present().map_err(err)
            }
            Some("png") => {
                let $root = BitMapBackend::new(path, $size).into_drawing_area();
                $body?;
                $root.present().map_err(err)
            }
            _ => Err(DatasetError::Figure(format!(
                "{}: use a .svg or .png file name",
                path.display()
            ))),
        }
    }};
}

/// White → `color` by `t ∈ [0, 1]`.
fn shade(color: RGBColor, t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |c: u8| (255.0 + (c as f64 - 255.0) * t).round() as u8;
    RGBColor(mix(color.0), mix(color.1), mix(color.2))
}

/// Attribution patching's estimates are drawn as `"{site} (attribution)"`.
const ATTRIBUTION: &str = " (attribution)";

fn kind_color(kind: &str) -> RGBColor {
    match kind.trim_end_matches(ATTRIBUTION) {
        "mlp" | "mlp_out" => RGBColor(0, 109, 44),
        "attn" | "attn_out" => RGBColor(165, 15, 21),
        _ => RGBColor(84, 39, 143),
    }
}

fn kind_title(kind: &str) -> String {
    if let Some(site) = kind.strip_suffix(ATTRIBUTION) {
        return format!("Attribution estimate of patching {site}");
    }
    match kind {
        "hidden" => "Restoring the hidden state".into(),
        "mlp" => "Restoring MLP outputs (window)".into(),
        "attn" => "Restoring attention outputs (window)".into(),
        "resid_pre" | "attn_out" | "mlp_out" => format!("Patching {kind} (clean into corrupted)"),
        other => format!("Restoring {other}"),
    }
}

/// Patching sites (`engram patch`) rather than trace kinds.
fn is_patch(kind: &str) -> bool {
    matches!(
        kind.trim_end_matches(ATTRIBUTION),
        "resid_pre" | "attn_out" | "mlp_out"
    )
}

/// Axis ticks are placed at every half unit; only a cell's centre (`i + 0.5`) gets a label.
fn centre_index(v: f64) -> Option<usize> {
    (v >= 0.0 && ((v - v.floor()) - 0.5).abs() <= 0.01).then(|| v.floor() as usize)
}

/// ROME-style heatmaps of one fact's trace, one panel per kind present.
pub fn trace_heatmaps(cells: &[TraceCell], path: &Path) -> Result<()> {
    let mut kinds: Vec<String> = Vec::new();
    for c in cells {
        if !kinds.contains(&c.kind) {
            kinds.push(c.kind.clone());
        }
    }
    if kinds.is_empty() {
        return Err(DatasetError::Figure("no trace cells to draw".into()));
    }
    let n_tokens = cells.iter().map(|c| c.token_index).max().unwrap_or(0) as usize + 1;
    // Room for the longest row label (token groups are long).
    let longest = cells
        .iter()
        .map(|c| c.token.trim().chars().count() + 1)
        .max()
        .unwrap_or(1) as u32;
    let label_w = (longest * 8 + 16).clamp(70, 220);
    let width = (340 + label_w) * kinds.len() as u32;
    let height = (140 + 26 * n_tokens as u32).max(320);
    render!(path, (width, height), |root| draw_traces(
        &root, cells, &kinds, n_tokens, label_w
    ))
}

fn draw_traces<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    cells: &[TraceCell],
    kinds: &[String],
    n_tokens: usize,
    label_w: u32,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    // Averaged runs hold indirect effects, single facts probabilities.
    let averaged = cells.first().is_some_and(|c| c.fact.starts_with("average"));
    let panels = root.split_evenly((1, kinds.len()));
    for (panel, kind) in panels.iter().zip(kinds) {
        let mine: Vec<&TraceCell> = cells.iter().filter(|c| &c.kind == kind).collect();
        let n_layers = mine.iter().map(|c| c.layer).max().unwrap_or(0) as usize + 1;
        let mut labels = vec![String::new(); n_tokens];
        for c in &mine {
            let i = c.token_index as usize;
            labels[i] = if c.is_subject {
                format!("{}*", c.token.trim())
            } else {
                c.token.trim().to_string()
            };
        }
        let (lo, hi) = mine
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
                (lo.min(c.score), hi.max(c.score))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        let color = kind_color(kind);
        let (plot, bar) = panel.split_horizontally(panel.dim_in_pixel().0 as i32 - 70);
        let mut chart = ChartBuilder::on(&plot)
            .caption(kind_title(kind), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..n_layers as f64, 0f64..n_tokens as f64)
            .map_err(err)?;
        let labels_for_axis = labels.clone();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(if is_patch(kind) {
                "patched layer"
            } else {
                "single restored layer"
            })
            .x_labels(n_layers.min(12))
            .x_label_formatter(&|v| format!("{}", v.floor() as i64))
            .y_labels(n_tokens * 2 + 1)
            .y_label_formatter(&|v| {
                // Row 0 (the first token) is drawn at the top.
                centre_index(*v)
                    .and_then(|row| labels_for_axis.get(n_tokens.saturating_sub(row + 1)))
                    .cloned()
                    .unwrap_or_default()
            })
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(mine.iter().map(|c| {
                let y = (n_tokens - 1 - c.token_index as usize) as f64;
                let x = c.layer as f64;
                Rectangle::new(
                    [(x, y), (x + 1.0, y + 1.0)],
                    shade(color, (c.score - lo) / span).filled(),
                )
            }))
            .map_err(err)?;
        // Colour bar.
        let steps = 50;
        let bar_area = bar.margin(52, 52, 10, 30);
        let (bw, bh) = bar_area.dim_in_pixel();
        for s in 0..steps {
            let t = s as f64 / (steps - 1) as f64;
            let y0 = bh as i32 - ((s + 1) * bh as usize / steps) as i32;
            let y1 = bh as i32 - (s * bh as usize / steps) as i32;
            bar_area
                .draw(&Rectangle::new(
                    [(0, y0), (bw as i32 / 2, y1)],
                    shade(color, t).filled(),
                ))
                .map_err(err)?;
        }
        let style = ("sans-serif", 12).into_font();
        // Labels go in the strip's own coordinates: the bar starts 52 px down.
        let strip_h = bar.dim_in_pixel().1 as i32;
        bar.draw(&Text::new(
            if is_patch(kind) {
                "recovery"
            } else if averaged {
                "indirect effect"
            } else {
                "p(answer)"
            }
            .to_string(),
            (2, 14),
            style.clone(),
        ))
        .map_err(err)?;
        bar.draw(&Text::new(format!("{hi:.3}"), (10, 34), style.clone()))
            .map_err(err)?;
        bar.draw(&Text::new(format!("{lo:.3}"), (10, strip_h - 48), style))
            .map_err(err)?;
    }
    Ok(())
}

/// Averaged indirect effect per layer, one line per series, with confidence bands.
pub fn effect_lines(points: &[CurvePoint], y_desc: &str, path: &Path) -> Result<()> {
    curve_lines(points, "Average indirect effect", y_desc, path)
}

/// Per-layer curves with confidence bands under any title (e.g. probing
/// accuracy, control and selectivity). Series other than mlp/attn take
/// colours from a fixed palette in order of appearance.
pub fn curve_lines(points: &[CurvePoint], title: &str, y_desc: &str, path: &Path) -> Result<()> {
    curves_over(points, title, "layer", y_desc, path)
}

/// [`curve_lines`] over any integer x (`CurvePoint::layer`), named `x_desc`,
/// e.g. the number of edits applied.
pub fn curves_over(
    points: &[CurvePoint],
    title: &str,
    x_desc: &str,
    y_desc: &str,
    path: &Path,
) -> Result<()> {
    if points.is_empty() {
        return Err(DatasetError::Figure("no points to draw".into()));
    }
    render!(path, (720, 440), |root| draw_lines(
        &root, points, title, x_desc, y_desc
    ))
}

fn series_color(name: &str, index: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(84, 39, 143),
        RGBColor(230, 97, 1),
        RGBColor(0, 109, 44),
        RGBColor(33, 102, 172),
        RGBColor(178, 24, 43),
        RGBColor(102, 102, 102),
    ];
    match name {
        "mlp" | "mlp_out" | "attn" | "attn_out" | "hidden" => kind_color(name),
        _ => PALETTE[index % PALETTE.len()],
    }
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[CurvePoint],
    title: &str,
    x_desc: &str,
    y_desc: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let mut series: Vec<String> = Vec::new();
    for p in points {
        if !series.contains(&p.series) {
            series.push(p.series.clone());
        }
    }
    let max_layer = points.iter().map(|p| p.layer).max().unwrap_or(0) as f64;
    let y_hi = points
        .iter()
        .map(|p| p.ci_high.max(p.mean))
        .fold(f64::NEG_INFINITY, f64::max);
    let y_lo = points
        .iter()
        .map(|p| p.ci_low.min(p.mean))
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let pad = ((y_hi - y_lo) * 0.08).max(1e-6);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_layer.max(1.0), (y_lo - pad)..(y_hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        // One tick per layer up to 12, so that no label repeats.
        .x_labels((max_layer as usize + 1).min(13))
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (index, name) in series.iter().enumerate() {
        let mut mine: Vec<&CurvePoint> = points.iter().filter(|p| &p.series == name).collect();
        mine.sort_by_key(|p| p.layer);
        let color = series_color(name, index);
        let mut band: Vec<(f64, f64)> = mine.iter().map(|p| (p.layer as f64, p.ci_high)).collect();
        band.extend(mine.iter().rev().map(|p| (p.layer as f64, p.ci_low)));
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                color.mix(0.18).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                mine.iter().map(|p| (p.layer as f64, p.mean)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        // Few points (e.g. checkpoints of an edit curve): mark each.
        if mine.len() <= 12 {
            chart
                .draw_series(
                    mine.iter()
                        .map(|p| Circle::new((p.layer as f64, p.mean), 3, color.filled())),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)
}

/// The logit-lens grid: rows are layers, columns positions; each cell shows the top token.
pub fn lens_grid(cells: &[LensCell], path: &Path) -> Result<()> {
    if cells.is_empty() {
        return Err(DatasetError::Figure("no lens cells to draw".into()));
    }
    let n_pos = cells.iter().map(|c| c.position).max().unwrap_or(0) as u32 + 1;
    let n_layers = cells.iter().map(|c| c.layer).max().unwrap_or(0) as u32 + 1;
    render!(path, (140 + 92 * n_pos, 110 + 24 * n_layers), |root| {
        draw_lens(&root, cells, n_pos as usize, n_layers as usize)
    })
}

fn draw_lens<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    cells: &[LensCell],
    n_pos: usize,
    n_layers: usize,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let mut inputs = vec![String::new(); n_pos];
    for c in cells {
        inputs[c.position as usize] = c.input_token.clone();
    }
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Logit lens: top token by layer and position",
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n_pos as f64, 0f64..n_layers as f64)
        .map_err(err)?;
    let inputs_axis = inputs.clone();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n_pos * 2 + 1)
        .x_label_formatter(&|v| {
            centre_index(*v)
                .and_then(|i| inputs_axis.get(i))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        })
        .y_labels(n_layers * 2 + 1)
        .y_label_formatter(&|v| centre_index(*v).map(|l| l.to_string()).unwrap_or_default())
        .y_desc("layer")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    let blue = RGBColor(33, 102, 172);
    chart
        .draw_series(cells.iter().map(|c| {
            let (x, y) = (c.position as f64, c.layer as f64);
            Rectangle::new([(x, y), (x + 1.0, y + 1.0)], shade(blue, c.prob).filled())
        }))
        .map_err(err)?;
    chart
        .draw_series(cells.iter().map(|c| {
            let color = if c.prob > 0.55 { WHITE } else { BLACK };
            let label: String = c.top_token.trim().chars().take(9).collect();
            Text::new(
                label,
                (c.position as f64 + 0.06, c.layer as f64 + 0.75),
                ("sans-serif", 11).into_font().color(&color),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// Grouped bars of metrics (x) by method (colour), with interval whiskers.
pub fn metric_bars(bars: &[MetricBar], path: &Path) -> Result<()> {
    if bars.is_empty() {
        return Err(DatasetError::Figure("no metrics to draw".into()));
    }
    render!(path, (760, 440), |root| draw_bars(&root, bars))
}

fn draw_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, bars: &[MetricBar]) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let mut metrics: Vec<String> = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for b in bars {
        if !metrics.contains(&b.metric) {
            metrics.push(b.metric.clone());
        }
        if !methods.contains(&b.method) {
            methods.push(b.method.clone());
        }
    }
    let y_hi = bars
        .iter()
        .map(|b| b.ci_high.max(b.mean))
        .fold(0.0, f64::max)
        * 1.1;
    let metrics_axis = metrics.clone();
    let mut chart = ChartBuilder::on(root)
        .caption("Edit metrics", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..metrics.len() as f64, 0f64..y_hi.max(1e-6))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(metrics.len() * 2 + 1)
        .x_label_formatter(&|v| {
            centre_index(*v)
                .and_then(|i| metrics_axis.get(i))
                .cloned()
                .unwrap_or_default()
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let width = 0.8 / methods.len() as f64;
    for (mi, method) in methods.iter().enumerate() {
        let color = palette[mi % palette.len()];
        let mine: Vec<&MetricBar> = bars.iter().filter(|b| &b.method == method).collect();
        let x0 = |b: &MetricBar| {
            metrics.iter().position(|m| m == &b.metric).unwrap_or(0) as f64
                + 0.1
                + mi as f64 * width
        };
        chart
            .draw_series(mine.iter().map(|b| {
                Rectangle::new(
                    [(x0(b), 0.0), (x0(b) + width * 0.9, b.mean)],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(method.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(mine.iter().map(|b| {
                let xc = x0(b) + width * 0.45;
                PathElement::new(vec![(xc, b.ci_low), (xc, b.ci_high)], BLACK.stroke_width(1))
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)
}
