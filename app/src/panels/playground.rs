//! The prompt playground: the prompt as token chips, the next-token table, and
//! generation (greedy or sampled) streamed token by token.

use eframe::egui::{self, RichText, Ui};
use egui_extras::{Column, TableBuilder};

use crate::app::{need_model, panel_error, EngramApp};
use crate::settings::PanelKind;
use crate::widgets::{prob_bar, show_token, token_chips};
use crate::worker::Command;

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| show_inner(app, ui));
}

fn show_inner(app: &mut EngramApp, ui: &mut Ui) {
    let running = app.pending(PanelKind::Playground);
    ui.horizontal(|ui| {
        ui.heading("Next token");
        if running {
            ui.spinner();
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            ui.add(egui::Slider::new(&mut app.settings.top_k, 1..=50).text("top-k shown"));
        });
    });
    panel_error(app, ui, PanelKind::Playground);
    let stale = app
        .results
        .next
        .as_ref()
        .is_some_and(|n| n.prompt != app.settings.prompt);
    if let Some(next) = &app.results.next {
        ui.label(RichText::new("Tokens").weak());
        token_chips(ui, &next.tokens, &[]);
        if stale {
            ui.label(RichText::new("The prompt has changed: press Enter or Run.").weak());
        }
        if let Some(best) = next.top.first() {
            ui.add_space(4.0);
            ui.label(
                RichText::new(format!(
                    "top-1: '{}'  p = {:.3}",
                    show_token(&best.token),
                    best.prob
                ))
                .size(16.0)
                .strong(),
            );
        }
        ui.add_space(6.0);
        let table = TableBuilder::new(ui)
            .id_salt("next_tokens")
            .striped(true)
            .column(Column::exact(40.0))
            .column(Column::initial(160.0).at_least(80.0))
            .column(Column::exact(130.0))
            .column(Column::exact(70.0))
            .column(Column::exact(70.0))
            .column(Column::remainder());
        table
            .header(20.0, |mut h| {
                for title in ["rank", "token", "probability", "p", "logit", "id"] {
                    h.col(|ui| {
                        ui.strong(title);
                    });
                }
            })
            .body(|mut body| {
                for (rank, t) in next.top.iter().enumerate() {
                    body.row(20.0, |mut row| {
                        row.col(|ui| {
                            ui.label(format!("{}", rank + 1));
                        });
                        row.col(|ui| {
                            ui.label(RichText::new(show_token(&t.token)).monospace());
                        });
                        row.col(|ui| prob_bar(ui, t.prob));
                        row.col(|ui| {
                            ui.label(format!("{:.4}", t.prob));
                        });
                        row.col(|ui| {
                            ui.label(format!("{:.2}", t.logit));
                        });
                        row.col(|ui| {
                            ui.label(RichText::new(t.id.to_string()).weak());
                        });
                    });
                }
            });
    } else if !running {
        ui.label("Press Enter in the prompt, or Run.");
    }

    ui.add_space(14.0);
    ui.separator();
    ui.heading("Generate");
    let g = &mut app.settings.generation;
    ui.horizontal_wrapped(|ui| {
        ui.add(egui::Slider::new(&mut g.max_new_tokens, 1..=256).text("new tokens"));
        ui.add(
            egui::Slider::new(&mut g.temperature, 0.0..=2.0)
                .text("temperature (0 = greedy)")
                .fixed_decimals(2),
        );
    });
    ui.horizontal_wrapped(|ui| {
        ui.add_enabled(
            g.temperature > 0.0,
            egui::Slider::new(&mut g.top_k, 0..=200).text("top-k (0 = off)"),
        );
        ui.add_enabled(
            g.temperature > 0.0,
            egui::Slider::new(&mut g.top_p, 0.05..=1.0).text("top-p"),
        );
        ui.add_enabled(
            g.temperature > 0.0,
            egui::DragValue::new(&mut g.seed).prefix("seed "),
        );
    });
    let params = *g;
    ui.horizontal(|ui| {
        let generating = app
            .jobs
            .iter()
            .any(|j| j.panel == PanelKind::Playground && j.handle.label.starts_with("Generating"));
        if ui
            .add_enabled(!generating, egui::Button::new("Generate"))
            .clicked()
        {
            let command = Command::Generate {
                prompt: app.settings.prompt.clone(),
                params,
            };
            app.submit(PanelKind::Playground, command);
        }
        if generating {
            ui.spinner();
        }
    });
    generation_output(app, ui);
    steer_section(app, ui);
}

fn generation_output(app: &EngramApp, ui: &mut Ui) {
    let (prompt, text) = match (&app.results.streaming, &app.results.generation) {
        (Some(s), _) => (app.settings.prompt.clone(), s.clone()),
        (None, Some(g)) => (g.prompt.clone(), g.text.clone()),
        (None, None) => return,
    };
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 0.0;
            ui.label(RichText::new(&prompt).monospace().weak());
            ui.label(RichText::new(&text).monospace().strong());
        });
    });
    if let (None, Some(g)) = (&app.results.streaming, &app.results.generation) {
        ui.label(RichText::new(format!("{} new tokens", g.new_tokens.len())).weak());
        token_chips(ui, &g.new_tokens, &[]);
    }
}

/// Steer: a contrastive vector at one layer's residual, and the prompt's greedy
/// continuation without and with it, side by side.
fn steer_section(app: &mut EngramApp, ui: &mut Ui) {
    let n_layers = app.card.as_ref().map_or(1, |c| c.n_layers);
    ui.add_space(8.0);
    egui::CollapsingHeader::new("Steer")
        .default_open(true)
        .show(ui, |ui| {
            ui.label(
                RichText::new(
                    "mean(positive) − mean(negative) of the last token's residual entering the layer, \
                     added × the coefficient at every position while generating (contrastive activation addition).",
                )
                .weak(),
            );
            let f = &mut app.settings.steer;
            ui.horizontal(|ui| {
                ui.vertical(|ui| {
                    let label = ui.label("Positive prompts (one per line)");
                    ui.add(egui::TextEdit::multiline(&mut f.positive).desired_rows(2).desired_width(380.0)).labelled_by(label.id);
                });
                ui.vertical(|ui| {
                    let label = ui.label("Negative prompts (one per line)");
                    ui.add(egui::TextEdit::multiline(&mut f.negative).desired_rows(2).desired_width(380.0)).labelled_by(label.id);
                });
            });
            f.layer = f.layer.min(n_layers.saturating_sub(1));
            ui.horizontal_wrapped(|ui| {
                ui.add(egui::Slider::new(&mut f.layer, 0..=n_layers.saturating_sub(1)).text("layer"));
                ui.add(egui::Slider::new(&mut f.coef, -12.0..=12.0).text("coefficient").fixed_decimals(1));
                ui.add(egui::Slider::new(&mut f.tokens, 1..=64).text("tokens"));
            });
            let running = app
                .jobs
                .iter()
                .any(|j| j.panel == PanelKind::Playground && j.handle.label.starts_with("Steering"));
            ui.horizontal(|ui| {
                if ui.add_enabled(!running, egui::Button::new("Apply steering")).clicked() {
                    let command = Command::Steer {
                        prompt: app.settings.prompt.clone(),
                        form: app.settings.steer.clone(),
                    };
                    app.submit(PanelKind::Playground, command);
                }
                if running {
                    ui.spinner();
                }
            });
            let Some(v) = &app.results.steer else { return };
            ui.label(
                RichText::new(format!(
                    "layer {}, |v| {:.3}, runs {} and {}",
                    v.layer, v.norm, v.vector_run, v.apply_run
                ))
                .weak(),
            );
            ui.columns(2, |cols| {
                for (col, (title, text)) in cols.iter_mut().zip([
                    ("without".to_string(), &v.before),
                    (format!("with coefficient {:.1}", v.coef), &v.after),
                ]) {
                    egui::Frame::group(col.style()).show(col, |ui| {
                        ui.set_width(ui.available_width());
                        ui.strong(title);
                        ui.horizontal_wrapped(|ui| {
                            ui.spacing_mut().item_spacing.x = 0.0;
                            ui.label(RichText::new(&v.prompt).monospace().weak());
                            ui.label(RichText::new(text.as_str()).monospace().strong());
                        });
                    });
                }
            });
        });
}
