//! Locate: ROME's causal trace of one fact (Meng et al. 2022, §2.1). The
//! subject's embeddings are corrupted with noise; each heatmap shows the
//! answer's probability when one clean state (hidden, or an MLP / attention
//! window) is restored at a (token, layer). Subject tokens are starred.

use eframe::egui::{self, RichText, Ui, Vec2};

use crate::app::{need_model, panel_error, EngramApp};
use crate::session::TraceView;
use crate::settings::PanelKind;
use crate::widgets::{show_token, Heatmap};

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    ui.heading("Locate a fact: causal tracing");
    ui.label(
        RichText::new(
            "The prompt comes from the bar above. Pick a fact on the Facts panel (locate), or type one.",
        )
        .weak(),
    );
    let r = &mut app.settings.trace;
    egui::Grid::new("trace_form")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            let l = ui.label("Subject");
            ui.add(egui::TextEdit::singleline(&mut r.subject).desired_width(300.0))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Answer");
            ui.add(egui::TextEdit::singleline(&mut r.target).desired_width(300.0))
                .labelled_by(l.id);
            ui.end_row();
        });
    ui.horizontal_wrapped(|ui| {
        ui.add(egui::Slider::new(&mut r.samples, 1..=50).text("noisy samples"));
        ui.add(
            egui::Slider::new(&mut r.window, 0..=20)
                .text("window")
                .custom_formatter(|v, _| {
                    if v < 0.5 {
                        "auto".into()
                    } else {
                        format!("{v:.0}")
                    }
                }),
        )
        .on_hover_text(
            "MLP/attention layers restored together; auto is ROME's 10, scaled for shallow models",
        );
        ui.add(
            egui::Slider::new(&mut r.noise_multiple, 0.0..=10.0)
                .text("noise (x embedding std)")
                .fixed_decimals(1),
        );
        ui.checkbox(&mut r.uniform, "uniform noise");
    });
    let running = app.pending(PanelKind::Locate);
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!running, egui::Button::new("Trace"))
            .clicked()
        {
            app.run_active();
        }
        if running {
            ui.spinner();
        }
    });
    panel_error(app, ui, PanelKind::Locate);
    patch_section(app, ui);
    let Some(view) = app.results.trace.clone() else {
        return;
    };
    ui.add_space(6.0);
    ui.label(
        RichText::new(format!(
            "'{}': clean p = {:.4}, corrupted p = {:.4} (noise scale {:.3}); the model predicts '{}'",
            show_token(&view.target.text),
            view.clean_prob,
            view.corrupted_prob,
            view.noise_scale,
            show_token(&view.predicted.text)
        ))
        .strong(),
    );
    if view.predicted.id != view.target.id {
        ui.label(
            RichText::new(
                "The model does not predict this answer: ROME would skip this fact. Shown anyway.",
            )
            .color(ui.visuals().warn_fg_color),
        );
    }
    if let Some((layer, effect)) = strongest_mlp_layer(&view) {
        // A window that restores under 10% of what was lost is no location.
        let lost = view.clean_prob - view.corrupted_prob;
        if effect > 0.1 * lost {
            ui.label(format!(
                "Strongest MLP window at the last subject token: layer {layer} \
                 (indirect effect {effect:+.4}). ROME would edit there."
            ));
        } else {
            ui.label(
                RichText::new(format!(
                    "No MLP window at the last subject token restores the answer \
                     (best: layer {layer}, {effect:+.4}): the fact is not recalled there."
                ))
                .color(ui.visuals().warn_fg_color),
            );
        }
    }
    if ui
        .button("Edit this fact ->")
        .on_hover_text("Open the Edit panel with this prompt, subject and the strongest MLP layer")
        .clicked()
    {
        let e = &mut app.settings.edit;
        e.prompt = view.prompt.clone();
        e.subject = app.settings.trace.subject.clone();
        if let Some((layer, _)) = strongest_mlp_layer(&view) {
            e.hparams.layer = layer;
        }
        app.settings.panel = PanelKind::Edit;
    }
    ui.add_space(6.0);
    ui.horizontal_top(|ui| {
        for (k, (kind, scores)) in view.kinds.iter().enumerate() {
            ui.vertical(|ui| {
                ui.label(RichText::new(title(kind)).strong());
                heatmap(app, ui, &view, k, scores);
            });
            ui.add_space(12.0);
        }
    });
    if let Some((k, t, l)) = app.trace_cell {
        if let Some((kind, scores)) = view.kinds.get(k) {
            if let Some(p) = scores.get(t).and_then(|row| row.get(l)) {
                ui.add_space(8.0);
                egui::Frame::group(ui.style()).show(ui, |ui| {
                    ui.label(format!(
                        "{kind}, token {t} ('{}'), layer {l}: restored p = {p:.4}, indirect effect = {:+.4}",
                        view.tokens.get(t).map(|x| show_token(&x.text)).unwrap_or_default(),
                        p - view.corrupted_prob
                    ));
                });
            }
        }
    }
}

fn title(kind: &str) -> &'static str {
    match kind {
        "hidden" => "single restored layer (hidden state)",
        "mlp" => "restored MLP window",
        _ => "restored attention window",
    }
}

fn heatmap(app: &mut EngramApp, ui: &mut Ui, view: &TraceView, k: usize, scores: &[Vec<f32>]) {
    let n_layers = scores.first().map_or(0, Vec::len);
    // Colour spans corrupted .. clean, as in ROME's figures.
    let lo = view.corrupted_prob;
    let hi = view.clean_prob.max(lo + 1e-6);
    let value = |t: usize, l: usize| Some((scores[t][l] - lo) / (hi - lo));
    let labels: Vec<String> = view
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let star = if view.subject.contains(&i) { "*" } else { "" };
            format!("{}{star}", show_token(&t.text))
        })
        .collect();
    // Three maps side by side, each with ~90 px of token labels, fit the panel.
    let room = (app_width(ui) / 3.0 - 110.0).max(120.0);
    let cell = Vec2::new((room / n_layers.max(1) as f32).clamp(4.0, 28.0), 20.0);
    let selected = app
        .trace_cell
        .filter(|(kk, _, _)| *kk == k)
        .map(|(_, t, l)| (t, l));
    let heat = Heatmap {
        rows: view.tokens.len(),
        cols: n_layers,
        value: &value,
        text: None,
        row_labels: labels.clone(),
        col_labels: (0..n_layers)
            .map(|l| {
                if l % 5 == 0 {
                    l.to_string()
                } else {
                    String::new()
                }
            })
            .collect(),
        cell,
        vertical_col_labels: false,
        marked_cols: vec![],
        selected,
    }
    .show(ui);
    if let Some((t, l)) = heat.hovered {
        heat.response.on_hover_text_at_pointer(format!(
            "'{}' layer {l}: p = {:.4}",
            labels[t], scores[t][l]
        ));
    }
    if let Some((t, l)) = heat.clicked {
        app.trace_cell = Some((k, t, l));
    }
}

/// The layer whose MLP window restores most at the last subject token, and its effect.
pub fn strongest_mlp_layer(view: &TraceView) -> Option<(usize, f32)> {
    let (_, scores) = view.kinds.iter().find(|(k, _)| k == "mlp")?;
    let last = view.subject.end.checked_sub(1)?;
    scores
        .get(last)?
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(l, &p)| (l, p - view.corrupted_prob))
}

/// The panel's width at the heatmap row (the scroll area gives unbounded width).
fn app_width(ui: &Ui) -> f32 {
    ui.clip_rect().width()
}

/// Activation patching (TransformerLens style): each clean activation put into
/// the corrupted run, one at a time; how much of the clean logit difference
/// it recovers, per site, layer and position (or head), with attribution
/// patching's estimate of the same beside it. Stored as a run.
fn patch_section(app: &mut EngramApp, ui: &mut Ui) {
    let running = app.pending(PanelKind::Locate);
    egui::CollapsingHeader::new(RichText::new("Activation patching").strong())
        .default_open(false)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                let l = ui.label("Corrupted subject");
                ui.add(
                    egui::TextEdit::singleline(&mut app.settings.trace.corrupt_subject)
                        .desired_width(240.0)
                        .hint_text("another subject of the same token length"),
                )
                .labelled_by(l.id);
                for (label, hover, exact) in [
                    (
                        "Patch",
                        "Patch clean activations into the corrupted run, one site at a time, \
                         and estimate every site by attribution patching",
                        true,
                    ),
                    (
                        "Attribution only",
                        "Estimate every site at once by attribution patching \
                         (two forward passes and one backward)",
                        false,
                    ),
                ] {
                    if ui
                        .add_enabled(!running, egui::Button::new(label))
                        .on_hover_text(hover)
                        .clicked()
                    {
                        let command = crate::worker::Command::Patch {
                            prompt: app.settings.prompt.clone(),
                            request: app.settings.trace.clone(),
                            exact,
                        };
                        app.submit(PanelKind::Locate, command);
                    }
                }
            });
            let Some(p) = app.results.patch.clone() else {
                return;
            };
            ui.label(
                RichText::new(format!(
                    "'{}' vs '{}': logit difference {:+.3} clean, {:+.3} on {:?}; run {}",
                    show_token(&p.answer),
                    show_token(&p.corrupted_answer),
                    p.clean_logit_diff,
                    p.corrupted_logit_diff,
                    p.corrupted_prompt,
                    p.run_id
                ))
                .strong(),
            );
            let timing = match (p.exact_seconds, p.spearman) {
                (Some(exact), Some(rho)) => format!(
                    "exact patching {exact:.2} s; attribution patching {:.2} s, \
                     Spearman rho {rho:.3} against exact over resid/attn/mlp",
                    p.attribution_seconds
                ),
                _ => format!("attribution patching {:.2} s", p.attribution_seconds),
            };
            ui.label(RichText::new(timing).weak());
            // One row per site: the exact recovery, then the estimate, on one colour scale.
            for (site, estimate) in &p.attribution {
                let exact = p.sites.iter().find(|(s, _)| s == site).map(|(_, r)| r);
                ui.horizontal(|ui| {
                    if let Some(rec) = exact {
                        recovery_map(ui, &p, site, rec, "recovery");
                    }
                    recovery_map(ui, &p, site, estimate, "attribution estimate");
                });
            }
        });
}

/// One site's recovery grid, layers × positions (or heads), clamped to 0..1.
fn recovery_map(
    ui: &mut Ui,
    p: &crate::session::PatchView,
    site: &str,
    rec: &[Vec<f32>],
    what: &str,
) {
    let layers = rec.len();
    let cols = rec.first().map_or(0, Vec::len);
    let value = |r: usize, c: usize| {
        rec.get(r)
            .and_then(|row| row.get(c))
            .map(|v| v.clamp(0.0, 1.0))
    };
    let col_labels: Vec<String> = if site == "head_out" {
        (0..cols).map(|h| format!("h{h}")).collect()
    } else {
        p.tokens.iter().map(|t| show_token(t)).collect()
    };
    ui.vertical(|ui| {
        ui.label(RichText::new(format!("{site}: {what}")).weak());
        Heatmap {
            rows: layers,
            cols,
            value: &value,
            text: None,
            row_labels: (0..layers).map(|l| format!("L{l}")).collect(),
            col_labels,
            cell: Vec2::new(22.0, 16.0),
            vertical_col_labels: true,
            marked_cols: Vec::new(),
            selected: None,
        }
        .show(ui);
    });
}
