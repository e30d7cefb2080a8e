//! Memories: the FFN key-value memories behind a prediction (Geva et al.
//! 2022, LM-Debugger). Per layer, the residual read before and after the MLP
//! and the memories with the largest |coefficient| × |value|, with what each
//! promotes; switch memories off or boost them and the prompt re-runs; read a
//! memory's trigger contexts from a corpus; knowledge-neuron attributions
//! (Dai et al. 2022) as a layer × memory heatmap.

use std::path::PathBuf;

use eframe::egui::{self, RichText, Ui, Vec2};

use crate::app::{need_model, panel_error, EngramApp};
use crate::memories::{AttributionView, Scored};
use crate::settings::PanelKind;
use crate::widgets::{clip, show_token, Heatmap};
use crate::worker::Command;

fn tokens(list: &[Scored], probs: bool) -> String {
    list.iter()
        .map(|t| {
            if probs {
                format!("'{}' {:.3}", show_token(&t.text), t.score)
            } else {
                format!("'{}'", show_token(&t.text))
            }
        })
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    ui.heading("FFN memories");
    ui.label(
        RichText::new(
            "Each MLP adds coefficient x value over its memories. The prompt comes from the bar above; subject and answer from Locate.",
        )
        .weak(),
    );
    let mut rerun = false;
    egui::Grid::new("mem_form")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            let l = ui.label("Subject");
            ui.add(
                egui::TextEdit::singleline(&mut app.settings.trace.subject)
                    .desired_width(300.0)
                    .hint_text("read at its last token; empty: the last token"),
            )
            .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Answer");
            ui.add(egui::TextEdit::singleline(&mut app.settings.trace.target).desired_width(300.0))
                .labelled_by(l.id);
            ui.end_row();
        });
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut app.settings.memories.per_layer, 1..=20).text("memories per layer"));
        ui.add(egui::Slider::new(&mut app.settings.memories.continuation, 0..=40).text("continuation tokens"))
            .on_hover_text("Continue the prompt greedily, without and with the interventions (they act on every generated token)");
        let running = app.pending(PanelKind::Memories);
        if ui.add_enabled(!running, egui::Button::new("Find memories")).clicked() {
            rerun = true;
        }
        if ui
            .add_enabled(!running, egui::Button::new("Knowledge neurons"))
            .on_hover_text("Integrated gradients at the last token, zero baseline, 20 steps; neurons above 0.2 x max")
            .clicked()
        {
            let command = Command::Attribute {
                prompt: app.settings.prompt.clone(),
                target: app.settings.trace.target.clone(),
            };
            app.submit(PanelKind::Memories, command);
        }
        if running {
            ui.spinner();
        }
    });
    if !app.interventions.is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.label("Interventions:");
            for &(l, i, boost) in &app.interventions {
                ui.label(
                    RichText::new(format!("{l}:{i} {}", if boost { "boosted" } else { "off" }))
                        .monospace(),
                );
            }
            if ui.button("Clear").clicked() {
                app.interventions.clear();
                rerun = true;
            }
        });
    }
    panel_error(app, ui, PanelKind::Memories);
    if let Some(a) = app.results.attribution.clone() {
        attribution(ui, &a);
    }
    if let Some(t) = app.results.triggers.clone() {
        ui.add_space(6.0);
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.label(
                RichText::new(format!(
                    "Trigger contexts of memory {}:{} ({} tokens of {})",
                    t.layer, t.memory, t.tokens_read, t.corpus
                ))
                .strong(),
            );
            for (c, before, token) in &t.contexts {
                ui.horizontal(|ui| {
                    ui.label(RichText::new(format!("{c:+.3}")).monospace());
                    ui.label(clip(before, 90));
                    ui.label(RichText::new(show_token(token)).strong());
                });
            }
        });
    }
    if let Some(view) = app.results.memories.clone() {
        ui.add_space(6.0);
        ui.label(
            RichText::new(format!(
                "Position {} ('{}'). Next token: {}",
                view.position,
                show_token(&view.position_token),
                tokens(&view.next_clean, true)
            ))
            .strong(),
        );
        if !view.request.interventions.is_empty() {
            ui.label(
                RichText::new(format!(
                    "With the interventions: {}",
                    tokens(&view.next_now, true)
                ))
                .strong()
                .color(ui.visuals().warn_fg_color),
            );
        }
        if let Some((plain, intervened)) = &view.continuation {
            let with = !view.request.interventions.is_empty();
            egui::Grid::new("memories_continuation")
                .num_columns(2)
                .spacing([16.0, 4.0])
                .show(ui, |ui| {
                    ui.label(RichText::new("Continuation").weak());
                    if with {
                        ui.label(RichText::new("with the interventions").weak());
                    }
                    ui.end_row();
                    ui.label(RichText::new(clip(plain, 120)).monospace());
                    if with {
                        ui.label(
                            RichText::new(clip(intervened, 120))
                                .monospace()
                                .color(ui.visuals().warn_fg_color),
                        );
                    }
                    ui.end_row();
                });
        }
        let n = view.layers.len();
        for l in view.layers.iter().rev() {
            let moved = match (l.target_before, l.target_after) {
                (Some(b), Some(a)) => {
                    format!(", answer #{} {:.3} -> #{} {:.3}", b.0, b.1, a.0, a.1)
                }
                _ => String::new(),
            };
            egui::CollapsingHeader::new(format!("layer {}{moved}", l.layer))
                .id_salt(("mem_layer", l.layer))
                .default_open(n <= 6 || l.layer + 4 >= n)
                .show(ui, |ui| {
                    ui.label(format!("before the MLP: {}", tokens(&l.before, true)));
                    ui.label(format!("after the MLP:  {}", tokens(&l.after, true)));
                    egui::Grid::new(("mem_rows", l.layer))
                        .striped(true)
                        .num_columns(6)
                        .spacing([10.0, 3.0])
                        .show(ui, |ui| {
                            for m in &l.memories {
                                ui.label(
                                    RichText::new(format!("{}:{}", l.layer, m.memory)).monospace(),
                                );
                                ui.label(format!(
                                    "coef {:+.2}  |v| {:.2}",
                                    m.coefficient, m.value_norm
                                ));
                                ui.label(tokens(&m.promotes, false));
                                ui.label(
                                    m.target_with
                                        .map(|p| format!("answer alone {p:.3}"))
                                        .unwrap_or_default(),
                                );
                                ui.horizontal(|ui| {
                                    let key = (l.layer, m.memory);
                                    if ui
                                        .small_button(format!("off {}:{}", key.0, key.1))
                                        .clicked()
                                    {
                                        app.interventions.retain(|&(a, b, _)| (a, b) != key);
                                        app.interventions.push((key.0, key.1, false));
                                        rerun = true;
                                    }
                                    if ui
                                        .small_button(format!("boost {}:{}", key.0, key.1))
                                        .clicked()
                                    {
                                        app.interventions.retain(|&(a, b, _)| (a, b) != key);
                                        app.interventions.push((key.0, key.1, true));
                                        rerun = true;
                                    }
                                    if ui
                                        .small_button(format!("triggers {}:{}", key.0, key.1))
                                        .clicked()
                                    {
                                        let corpus = app.settings.memories.corpus.trim();
                                        let corpus =
                                            (!corpus.is_empty()).then(|| PathBuf::from(corpus));
                                        let command = Command::Triggers {
                                            corpus,
                                            layer: key.0,
                                            memory: key.1,
                                            max_tokens: app.settings.memories.max_tokens,
                                        };
                                        app.submit(PanelKind::Memories, command);
                                    }
                                });
                                ui.end_row();
                            }
                        });
                });
        }
    }
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        let l = ui.label("Trigger corpus");
        ui.add(
            egui::TextEdit::singleline(&mut app.settings.memories.corpus)
                .desired_width(320.0)
                .hint_text("a text file; empty: the demo corpus"),
        )
        .labelled_by(l.id);
        ui.add(
            egui::DragValue::new(&mut app.settings.memories.max_tokens)
                .range(1000..=5_000_000)
                .prefix("tokens "),
        );
    });
    if rerun {
        let command = app.memories_command();
        app.submit(PanelKind::Memories, command);
    }
}

fn attribution(ui: &mut Ui, a: &AttributionView) {
    ui.add_space(6.0);
    ui.label(
        RichText::new(format!(
            "Knowledge neurons of {:?} -> {:?}: {} found (t = 0.2 x max); p = {:.4}, with them off {:.4}",
            a.prompt,
            a.target,
            a.neurons.len(),
            a.prob,
            a.suppressed
        ))
        .strong(),
    );
    ui.label(
        a.neurons
            .iter()
            .map(|(l, i)| format!("{l}:{i}"))
            .collect::<Vec<_>>()
            .join("  "),
    );
    // Columns: memories in buckets of `per` (max over the bucket), at most 512.
    let m = a.scores.first().map_or(0, Vec::len);
    let per = m.div_ceil(512).max(1);
    let cols = m.div_ceil(per);
    let max = a
        .scores
        .iter()
        .flatten()
        .fold(0f32, |acc, &x| acc.max(x.abs()))
        .max(1e-12);
    let scores = &a.scores;
    let value = move |r: usize, c: usize| {
        let row = &scores[r];
        let v = row[c * per..((c + 1) * per).min(row.len())]
            .iter()
            .fold(0f32, |acc, &x| if x.abs() > acc.abs() { x } else { acc });
        Some(0.5 + 0.5 * v / max)
    };
    let heat = Heatmap {
        rows: a.scores.len(),
        cols,
        value: &value,
        text: None,
        row_labels: (0..a.scores.len()).map(|l| format!("layer {l}")).collect(),
        col_labels: (0..cols)
            .map(|c| {
                if c % 64 == 0 {
                    (c * per).to_string()
                } else {
                    String::new()
                }
            })
            .collect(),
        cell: Vec2::new(1.5, 14.0),
        vertical_col_labels: false,
        marked_cols: vec![],
        selected: None,
    }
    .show(ui);
    if let Some((r, c)) = heat.hovered {
        heat.response.on_hover_text_at_pointer(format!(
            "layer {r}, memories {}..{}",
            c * per,
            ((c + 1) * per).min(m)
        ));
    }
}
