//! Probe: per-layer linear probes with control tasks (Hewitt & Liang 2019).
//! Pick a labelled prompt set, a label, hook and position; the worker
//! collects (or reads cached) activations and fits the probes; the panel
//! draws accuracy, control and selectivity across layers, and a clicked
//! layer's confusion matrix. Each run is stored with its figure.

use eframe::egui::{self, Color32, Pos2, RichText, Sense, Stroke, Ui, Vec2};

use crate::app::{need_model, panel_error, EngramApp};
use crate::settings::PanelKind;
use crate::widgets::{clip, Heatmap};
use crate::worker::Command;

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    ui.heading("Probe layer activations");
    ui.label(
        RichText::new(
            "A logistic probe per layer, 5 folds grouped by subject, seed 0; control: each word type gets a random label.",
        )
        .weak(),
    );
    let p = &mut app.settings.probe;
    egui::Grid::new("probe_form")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            for (name, value, hint) in [
                (
                    "Data",
                    &mut p.data,
                    "JSON array or JSON lines of labelled prompts; `demo`: the demo relations",
                ),
                ("Label field", &mut p.label, "e.g. relation_id"),
                ("Text field", &mut p.text, "prompt"),
                (
                    "Subject field",
                    &mut p.subject,
                    "groups the folds; empty: the text",
                ),
                (
                    "Hook",
                    &mut p.hook,
                    "resid_post, resid_pre, mlp_out, attn_out, mlp.hook_post",
                ),
            ] {
                let l = ui.label(name);
                ui.add(
                    egui::TextEdit::singleline(value)
                        .desired_width(420.0)
                        .hint_text(hint),
                )
                .labelled_by(l.id);
                ui.end_row();
            }
        });
    ui.horizontal(|ui| {
        ui.label("Position:");
        ui.radio_value(&mut p.position, "last".to_string(), "last token");
        ui.radio_value(
            &mut p.position,
            "subject".to_string(),
            "subject's last token",
        );
        ui.checkbox(&mut p.control, "control task");
        ui.add(
            egui::DragValue::new(&mut p.min_count)
                .range(2..=10_000)
                .prefix("labels with >= "),
        );
    });
    let running = app.pending(PanelKind::Probe);
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!running, egui::Button::new("Run probe"))
            .clicked()
        {
            let command = Command::Probe(Box::new(app.settings.probe.clone()));
            app.submit(PanelKind::Probe, command);
        }
        if running {
            ui.spinner();
        }
    });
    panel_error(app, ui, PanelKind::Probe);
    let Some(view) = app.results.probe.clone() else {
        return;
    };
    let r = &view.report;
    ui.add_space(6.0);
    ui.label(
        RichText::new(format!(
            "`{}`: {} samples, {} labels; activations {}; {:.1} s",
            view.label,
            r.samples,
            r.classes.len(),
            if r.cached {
                "from the cache"
            } else {
                "collected"
            },
            r.seconds
        ))
        .strong(),
    );
    ui.label(
        RichText::new(format!(
            "Stored as run {}; figure: {}",
            r.run_id,
            r.run_dir.join("probe.png").display()
        ))
        .weak(),
    );
    curves(ui, r);
    ui.horizontal_wrapped(|ui| {
        ui.label("Layer:");
        for l in &r.layers {
            let text = format!("{}", l.layer);
            if ui
                .selectable_label(app.probe_layer == l.layer, text)
                .on_hover_text(format!(
                    "accuracy {:.3}, control {:.3}, selectivity {:.3}",
                    l.accuracy.mean, l.control.mean, l.selectivity.mean
                ))
                .clicked()
            {
                app.probe_layer = l.layer;
            }
        }
    });
    if let Some(l) = r.layers.iter().find(|l| l.layer == app.probe_layer) {
        ui.label(RichText::new(format!("Layer {}: {}", l.layer, l.describe())).strong());
        let n = r.classes.len();
        let conf = &l.confusion;
        let row_total: Vec<usize> = conf.iter().map(|row| row.iter().sum()).collect();
        let value = |i: usize, j: usize| Some(conf[i][j] as f32 / row_total[i].max(1) as f32);
        let text = |i: usize, j: usize| {
            if conf[i][j] == 0 {
                String::new()
            } else {
                conf[i][j].to_string()
            }
        };
        let cell = if n <= 12 { 34.0 } else { 18.0 };
        ui.label(RichText::new("Confusion (rows: truth, columns: predicted)").weak());
        Heatmap {
            rows: n,
            cols: n,
            value: &value,
            text: if n <= 12 { Some(&text) } else { None },
            row_labels: r.classes.iter().map(|c| clip(c, 14)).collect(),
            col_labels: r.classes.iter().map(|c| clip(c, 14)).collect(),
            cell: Vec2::new(cell, cell.min(24.0)),
            vertical_col_labels: true,
            marked_cols: vec![],
            selected: None,
        }
        .show(ui);
    }
}

/// Accuracy, control and selectivity across layers, with 95% bands.
fn curves(ui: &mut Ui, r: &engram_analysis::jobs::probe::ProbeReport) {
    let size = Vec2::new(ui.available_width().min(720.0), 220.0);
    let (resp, painter) = ui.allocate_painter(size, Sense::hover());
    let rect = resp.rect.shrink2(Vec2::new(36.0, 14.0));
    let visuals = ui.visuals();
    painter.rect_stroke(
        rect,
        0.0,
        visuals.widgets.noninteractive.bg_stroke,
        egui::StrokeKind::Inside,
    );
    let n = r.layers.len().max(2) - 1;
    let (lo, hi) = (-0.4f32, 1.0f32);
    let at = |layer: usize, v: f64| {
        let x = rect.left() + rect.width() * layer as f32 / n as f32;
        let y = rect.bottom() - rect.height() * ((v as f32).clamp(lo, hi) - lo) / (hi - lo);
        Pos2::new(x, y)
    };
    for tick in [0.0, 0.5, 1.0] {
        let y = at(0, tick).y;
        painter.line_segment(
            [Pos2::new(rect.left(), y), Pos2::new(rect.right(), y)],
            Stroke::new(0.5, visuals.weak_text_color()),
        );
        painter.text(
            Pos2::new(rect.left() - 4.0, y),
            egui::Align2::RIGHT_CENTER,
            format!("{tick:.1}"),
            egui::FontId::proportional(11.0),
            visuals.weak_text_color(),
        );
    }
    type Pick =
        fn(&engram_analysis::jobs::probe::LayerSummary) -> &engram_datasets::summary::MetricSummary;
    let series: [(&str, Color32, Pick); 3] = [
        ("accuracy", Color32::from_rgb(150, 110, 230), |l| {
            &l.accuracy
        }),
        ("control", Color32::from_rgb(230, 120, 40), |l| &l.control),
        ("selectivity", Color32::from_rgb(60, 170, 90), |l| {
            &l.selectivity
        }),
    ];
    for (k, (name, color, pick)) in series.iter().enumerate() {
        let pts: Vec<(Pos2, Pos2, Pos2)> = r
            .layers
            .iter()
            .filter(|l| pick(l).mean.is_finite())
            .map(|l| {
                let s = pick(l);
                (
                    at(l.layer, s.mean),
                    at(l.layer, s.ci_low),
                    at(l.layer, s.ci_high),
                )
            })
            .collect();
        for w in pts.windows(2) {
            painter.line_segment([w[0].0, w[1].0], Stroke::new(2.0, *color));
        }
        for (m, a, b) in &pts {
            painter.line_segment([*a, *b], Stroke::new(1.0, color.gamma_multiply(0.5)));
            painter.circle_filled(*m, 2.5, *color);
        }
        painter.text(
            Pos2::new(rect.right() - 90.0, rect.top() + 12.0 + 14.0 * k as f32),
            egui::Align2::LEFT_CENTER,
            *name,
            egui::FontId::proportional(12.0),
            *color,
        );
    }
    painter.text(
        Pos2::new(rect.center().x, rect.bottom() + 8.0),
        egui::Align2::CENTER_CENTER,
        format!("layer 0 .. {}", r.layers.len().saturating_sub(1)),
        egui::FontId::proportional(11.0),
        visuals.weak_text_color(),
    );
}
