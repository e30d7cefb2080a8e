//! Edit: ROME's rank-one edit of one fact (Meng et al. 2022, §3) at the layer
//! Locate points to. Shows the prompt, paraphrases and neighbourhood prompts
//! before and after, the greedy continuation, the ledger (toggle, remove,
//! revert all) and "Save as new model". A MEMIT batch (Meng et al. 2023) is
//! pasted or loaded from a file, reviewed per request and reverted as a unit.

use std::path::PathBuf;

use eframe::egui::{self, RichText, Ui};

use crate::app::{need_model, panel_error, EngramApp};
use engram_editing::jobs::rome::ProbeKind;

use crate::editor::{BatchView, EditView, LedgerOp};
use crate::settings::PanelKind;
use crate::widgets::show_token;
use crate::worker::Command;

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    ui.heading("Edit a fact: ROME or FT-L");
    ui.label(
        RichText::new(
            "ROME: a rank-one update of the MLP output projection at one layer. FT-L: that projection fine-tuned on the request, each weight within ±ε (the papers' baseline). The checkpoint on disk is never changed.",
        )
        .weak(),
    );
    form(app, ui);
    let running = app.pending(PanelKind::Edit);
    ui.horizontal(|ui| {
        let l = ui.label("Method");
        let e = &mut app.settings.edit;
        egui::ComboBox::from_id_salt("edit_method")
            .selected_text(e.edit_method.clone())
            .show_ui(ui, |ui| {
                for m in ["rome", "ft-l"] {
                    ui.selectable_value(&mut e.edit_method, m.to_string(), m);
                }
            })
            .response
            .labelled_by(l.id);
        if ui
            .add_enabled(
                !running,
                egui::Button::new(RichText::new("Apply edit").strong()),
            )
            .on_hover_text("Compute the edit and apply it (progress and Cancel in the status bar)")
            .clicked()
        {
            let form = Box::new(app.settings.edit.clone());
            let command = if form.edit_method == "ft-l" {
                Command::EditFt(form)
            } else {
                Command::Edit(form)
            };
            app.submit(PanelKind::Edit, command);
        }
        if running {
            ui.spinner();
        }
    });
    panel_error(app, ui, PanelKind::Edit);
    if let Some(view) = app.results.edit.clone() {
        ui.add_space(8.0);
        result(ui, &view);
    }
    if let Some(view) = app.results.ft_edit.clone() {
        ui.add_space(8.0);
        ft_result(ui, &view);
    }
    ui.add_space(8.0);
    batch(app, ui);
    ui.add_space(8.0);
    evaluation(app, ui);
    ui.add_space(8.0);
    ledger(app, ui);
}

/// CounterFact evaluation: each case edited on fresh weights and scored, as
/// `engram eval counterfact` does; stored as an `eval` run.
fn evaluation(app: &mut EngramApp, ui: &mut Ui) {
    let running = app.pending(PanelKind::Edit);
    egui::CollapsingHeader::new(RichText::new("Evaluate: CounterFact").strong())
        .default_open(true)
        .show(ui, |ui| {
            ui.label(
                RichText::new(
                    "Each case edited on the original weights and scored before and after (ES, PS, NS and S as ROME's code; EasyEdit's accuracies).",
                )
                .weak(),
            );
            let e = &mut app.settings.edit;
            ui.horizontal(|ui| {
                let l = ui.label("Method");
                egui::ComboBox::from_id_salt("eval_method")
                    .selected_text(e.eval_method.clone())
                    .show_ui(ui, |ui| {
                        for m in ["r-rome", "rome", "ft-l", "memit", "alphaedit"] {
                            ui.selectable_value(&mut e.eval_method, m.to_string(), m);
                        }
                    })
                    .response
                    .labelled_by(l.id);
                let l = ui.label("Cases");
                ui.add(egui::DragValue::new(&mut e.eval_cases).range(1..=10_000))
                    .labelled_by(l.id);
                let l = ui.label("Data");
                ui.add(
                    egui::TextEdit::singleline(&mut e.eval_data)
                        .desired_width(300.0)
                        .hint_text("CounterFact JSON (empty: the demo facts)"),
                )
                .labelled_by(l.id);
            });
            if ui
                .add_enabled(!running, egui::Button::new(RichText::new("Evaluate").strong()))
                .on_hover_text("Edit and score each case (progress and Cancel in the status bar)")
                .clicked()
            {
                let form = Box::new(app.settings.edit.clone());
                app.submit(PanelKind::Edit, Command::Evaluate(form));
            }
            if let Some(v) = &app.results.eval {
                ui.label(
                    RichText::new(format!(
                        "{}: {} cases evaluated, {} skipped, {:.1} s{}; run {}",
                        v.method,
                        v.cases,
                        v.skipped,
                        v.seconds,
                        v.score.map(|s| format!(", S {s:.4}")).unwrap_or_default(),
                        v.run_id
                    ))
                    .strong(),
                );
                egui::Grid::new("eval_summary")
                    .striped(true)
                    .num_columns(3)
                    .show(ui, |ui| {
                        for h in ["metric", "mean [95% CI]", "n"] {
                            ui.label(RichText::new(h).strong());
                        }
                        ui.end_row();
                        for s in v.summary.iter().filter(|s| !s.metric.starts_with("pre_")) {
                            ui.label(&s.metric);
                            ui.label(format!("{:.4} [{:.4}, {:.4}]", s.mean, s.ci_low, s.ci_high));
                            ui.label(s.n.to_string());
                            ui.end_row();
                        }
                    });
            }
        });
}

/// MEMIT: a batch of requests, pasted or from a file, applied as one unit.
fn batch(app: &mut EngramApp, ui: &mut Ui) {
    let running = app.pending(PanelKind::Edit);
    egui::CollapsingHeader::new(RichText::new("Batch edit: MEMIT / AlphaEdit").strong())
        .default_open(true)
        .show(ui, |ui| {
            ui.label(
                RichText::new(
                    "Many facts at once, spread over the model's MEMIT layers (Meng et al. 2023); AlphaEdit (Fang et al. 2025) keeps each update in the null space of the preserved keys and of earlier AlphaEdit batches. One request per line: subject | prompt | target.",
                )
                .weak(),
            );
            let e = &mut app.settings.edit;
            let l = ui.label("Requests");
            ui.add(
                egui::TextEdit::multiline(&mut e.batch)
                    .desired_rows(3)
                    .desired_width(560.0)
                    .font(egui::TextStyle::Monospace),
            )
            .labelled_by(l.id);
            ui.horizontal(|ui| {
                let l = ui.label("or a file");
                ui.add(
                    egui::TextEdit::singleline(&mut e.batch_file)
                        .desired_width(380.0)
                        .hint_text("CSV/JSONL of subject, prompt, target, or CounterFact JSON"),
                )
                .labelled_by(l.id);
            });
            ui.horizontal(|ui| {
                let l = ui.label("Method");
                egui::ComboBox::from_id_salt("batch_method")
                    .selected_text(e.batch_method.clone())
                    .show_ui(ui, |ui| {
                        for m in ["memit", "alphaedit"] {
                            ui.selectable_value(&mut e.batch_method, m.to_string(), m);
                        }
                    })
                    .response
                    .labelled_by(l.id);
            });
            let run_label = if e.batch_method == "alphaedit" {
                "Run AlphaEdit"
            } else {
                "Run MEMIT"
            };
            if ui
                .add_enabled(
                    !running,
                    egui::Button::new(RichText::new(run_label).strong()),
                )
                .on_hover_text("Compute and apply the batch (progress and Cancel in the status bar)")
                .clicked()
            {
                let form = Box::new(app.settings.edit.clone());
                app.submit(PanelKind::Edit, Command::Memit(form));
            }
            if let Some(view) = app.results.batch.clone() {
                batch_result(app, ui, &view, running);
            }
        });
}

fn batch_result(app: &mut EngramApp, ui: &mut Ui, v: &BatchView, running: bool) {
    let applied = app
        .results
        .ledger
        .iter()
        .any(|e| e.batch == Some(v.batch) && e.applied);
    ui.label(
        RichText::new(format!(
            "MEMIT batch {}: {} requests over layers {:?} (λ {}); mean |z - h| {}; z {:.1} s, keys {:.1} s, solve {:.1} s{}",
            v.batch,
            v.rows.len(),
            v.layers,
            v.lambda,
            v.residual_norms
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" -> "),
            v.times.z_seconds,
            v.times.keys_seconds,
            v.times.solve_seconds,
            if applied { "" } else { " (reverted)" }
        ))
        .strong(),
    );
    if !v.null_space.is_empty() {
        let dims: Vec<String> = v
            .null_space
            .iter()
            .map(|(l, q, d)| format!("layer {l}: {q} of {d}"))
            .collect();
        ui.label(format!(
            "AlphaEdit: updates kept in the null spaces ({}); λ unused",
            dims.join(", ")
        ));
    }
    for w in &v.warnings {
        ui.label(RichText::new(format!("warning: {w}")).color(ui.visuals().warn_fg_color));
    }
    egui::Grid::new("batch_rows")
        .striped(true)
        .num_columns(4)
        .spacing([14.0, 4.0])
        .show(ui, |ui| {
            for h in [
                "prompt -> new target",
                "top-1 before",
                "top-1 after",
                "p(new target)",
            ] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for r in &v.rows {
                ui.label(format!("{} -> {:?}", r.prompt, r.target));
                ui.label(format!(
                    "'{}' {:.3}",
                    show_token(&r.before_top),
                    r.before_top_prob
                ));
                ui.label(format!(
                    "'{}' {:.3}",
                    show_token(&r.after_top),
                    r.after_top_prob
                ));
                ui.label(format!("{:.4} -> {:.4}", r.before_target, r.after_target));
                ui.end_row();
            }
        });
    let Some(&first) = v.ids.first() else {
        return;
    };
    let label = if applied {
        "Revert batch"
    } else {
        "Re-apply batch"
    };
    if ui
        .add_enabled(!running, egui::Button::new(label))
        .on_hover_text("All layers of the batch together")
        .clicked()
    {
        app.submit(
            PanelKind::Edit,
            Command::Ledger(LedgerOp::Set {
                id: first,
                applied: !applied,
            }),
        );
    }
}

fn form(app: &mut EngramApp, ui: &mut Ui) {
    let n_layers = app.card.as_ref().map_or(1, |c| c.n_layers);
    let has_file = app.card.as_ref().is_some_and(|c| c.rome.is_some());
    let trace_subject = app.settings.trace.subject.clone();
    let bar_prompt = app.settings.prompt.clone();
    let strongest = app
        .results
        .trace
        .as_ref()
        .and_then(crate::panels::locate::strongest_mlp_layer);
    let e = &mut app.settings.edit;
    egui::Grid::new("edit_form")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            let l = ui.label("Prompt");
            ui.horizontal(|ui| {
                ui.add(egui::TextEdit::singleline(&mut e.prompt).desired_width(380.0))
                    .labelled_by(l.id);
                if ui
                    .small_button("from Locate")
                    .on_hover_text("The prompt bar's prompt and the traced subject")
                    .clicked()
                {
                    e.prompt = bar_prompt.clone();
                    e.subject = trace_subject.clone();
                    if let Some((layer, _)) = strongest {
                        e.hparams.layer = layer;
                    }
                }
            });
            ui.end_row();
            let l = ui.label("Subject");
            ui.add(egui::TextEdit::singleline(&mut e.subject).desired_width(380.0))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("New target");
            ui.add(egui::TextEdit::singleline(&mut e.target).desired_width(380.0))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Paraphrases");
            ui.add(
                egui::TextEdit::multiline(&mut e.paraphrases)
                    .desired_rows(2)
                    .desired_width(380.0)
                    .hint_text("one prompt per line"),
            )
            .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Neighbourhood");
            ui.add(
                egui::TextEdit::multiline(&mut e.neighbours)
                    .desired_rows(2)
                    .desired_width(380.0)
                    .hint_text("other subjects' prompts, one per line: their answers should stay"),
            )
            .labelled_by(l.id);
            ui.end_row();
        });
    egui::CollapsingHeader::new("Layer and hyperparameters")
        .default_open(true)
        .show(ui, |ui| {
            let h = &mut e.hparams;
            egui::Grid::new("edit_hparams")
                .num_columns(3)
                .spacing([18.0, 4.0])
                .show(ui, |ui| {
                    ui.add(
                        egui::Slider::new(&mut h.layer, 0..=n_layers.saturating_sub(1))
                            .text("layer"),
                    );
                    ui.add(egui::Slider::new(&mut h.steps, 1..=100).text("v* steps"));
                    ui.add(
                        egui::Slider::new(&mut h.lr, 0.01..=2.0)
                            .logarithmic(true)
                            .text("lr"),
                    );
                    ui.end_row();
                    ui.add(
                        egui::Slider::new(&mut h.kl_factor, 0.0..=1.0)
                            .text("KL factor")
                            .fixed_decimals(4),
                    );
                    ui.add(
                        egui::Slider::new(&mut h.clamp_norm_factor, 0.5..=10.0)
                            .text("clamp |delta| / |v0|"),
                    );
                    ui.add(egui::Slider::new(&mut h.weight_decay, 0.0..=2.0).text("weight decay"));
                    ui.end_row();
                });
            ui.horizontal(|ui| {
                ui.label("Update key:");
                ui.radio_value(&mut h.original_key, false, "r-ROME consistent")
                    .on_hover_text("k* in numerator and denominator (Gupta et al. 2024)");
                ui.radio_value(&mut h.original_key, true, "ROME original");
            });
            ui.horizontal(|ui| {
                let l = ui.label("Statistics corpus");
                ui.add(
                    egui::TextEdit::singleline(&mut e.corpus)
                        .desired_width(320.0)
                        .hint_text("text file; empty = the demo corpus (demo model only)"),
                )
                .labelled_by(l.id);
                ui.add(egui::DragValue::new(&mut e.stats_tokens).range(1000..=10_000_000).prefix("tokens "));
            });
            if !has_file {
                ui.label(
                    RichText::new("This model has no checked-in ROME hyperparameters: the values are ROME's GPT-2 XL ones; pick the layer from Locate.")
                        .color(ui.visuals().warn_fg_color),
                );
            }
        });
}

fn result(ui: &mut Ui, v: &EditView) {
    let last = v.steps.last();
    ui.label(
        RichText::new(format!(
            "Edit #{} at layer {} ({:?} key): {} v* steps, final loss {:.4}, p(target) {:.4}; {} key vectors; {:.2} s",
            v.id,
            v.layer,
            v.key,
            v.steps.len(),
            last.map_or(f32::NAN, |s| s.total),
            last.map_or(f32::NAN, |s| s.target_prob),
            v.stats_tokens,
            v.seconds
        ))
        .strong(),
    );
    probes_grid(ui, &v.probes);
    ui.add_space(4.0);
    egui::Grid::new("edit_generations")
        .num_columns(2)
        .spacing([12.0, 4.0])
        .show(ui, |ui| {
            ui.label(RichText::new("before").weak());
            ui.label(RichText::new(&v.generation_before).monospace());
            ui.end_row();
            ui.label(RichText::new("after").weak());
            ui.label(RichText::new(&v.generation_after).monospace());
            ui.end_row();
        });
}

/// Each probe's top-1 before and after, and p(new target); a neighbour
/// whose answer moved is marked.
fn probes_grid(ui: &mut Ui, probes: &[engram_editing::jobs::rome::ProbeRow]) {
    egui::Grid::new("edit_probes")
        .striped(true)
        .num_columns(5)
        .spacing([14.0, 4.0])
        .show(ui, |ui| {
            for h in ["", "prompt", "top-1 before", "top-1 after", "p(new target)"] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for r in probes {
                ui.label(RichText::new(&r.kind).weak());
                ui.label(&r.prompt);
                ui.label(format!(
                    "'{}' {:.3}",
                    show_token(&r.before_top),
                    r.before_top_prob
                ));
                let moved = r.after_top != r.before_top;
                let after = format!("'{}' {:.3}", show_token(&r.after_top), r.after_top_prob);
                // A neighbour whose answer moved is a locality failure.
                let text = if r.kind == ProbeKind::Neighbour.name() && moved {
                    RichText::new(after).color(ui.visuals().error_fg_color)
                } else {
                    RichText::new(after)
                };
                ui.label(text);
                ui.label(format!("{:.4} -> {:.4}", r.before_target, r.after_target));
                ui.end_row();
            }
        });
}

/// A finished FT-L edit.
fn ft_result(ui: &mut Ui, v: &crate::editor::FtView) {
    let r = &v.report;
    ui.label(
        RichText::new(format!(
            "FT-L edit #{} at layer {}: target NLL {:.4} -> {:.4} in {} steps; max |dW| {:.2e}, |dW|_F {:.3}; {:.2} s",
            r.id,
            r.layer,
            r.losses.first().copied().unwrap_or(f32::NAN),
            r.losses.last().copied().unwrap_or(f32::NAN),
            r.losses.len().saturating_sub(1),
            r.delta_max,
            r.delta_fro,
            r.seconds
        ))
        .strong(),
    );
    probes_grid(ui, &r.probes);
}

fn ledger(app: &mut EngramApp, ui: &mut Ui) {
    ui.label(RichText::new("Ledger").strong());
    if app.results.ledger.is_empty() {
        ui.label(RichText::new("No edits yet.").weak());
    }
    let mut op = None;
    egui::Grid::new("edit_ledger")
        .striped(true)
        .num_columns(5)
        .spacing([12.0, 4.0])
        .show(ui, |ui| {
            for e in &app.results.ledger {
                let mut on = e.applied;
                if ui
                    .checkbox(&mut on, format!("#{}", e.id))
                    .on_hover_text("applied")
                    .changed()
                {
                    op = Some(LedgerOp::Set {
                        id: e.id,
                        applied: on,
                    });
                }
                match e.batch {
                    Some(b) => ui.label(format!(
                        "MEMIT batch {b}: {} requests ({} -> {:?}, …)",
                        e.n_requests, e.prompt, e.target
                    )),
                    None => ui.label(format!("{} -> {:?}", e.prompt, e.target)),
                };
                ui.label(format!("{} layer {}", e.method, e.layer));
                let what = if e.batch.is_some() {
                    "|z - h|"
                } else {
                    "|delta|"
                };
                let size = e.norms.map_or(String::new(), |n| {
                    format!(
                        ", |dW| {:.3} ({:.2}% of |W|)",
                        n.delta_fro,
                        100.0 * n.relative
                    )
                });
                ui.label(format!(
                    "{what} {:.2}{size}, {:.2} s",
                    e.delta_norm, e.seconds
                ))
                .on_hover_text("|dW|: the Frobenius norm of this entry's weight change");
                if ui.small_button("remove").clicked() {
                    op = Some(LedgerOp::Remove(e.id));
                }
                ui.end_row();
            }
        });
    let busy = app.pending(PanelKind::Edit);
    ui.horizontal(|ui| {
        if ui
            .add_enabled(
                !app.results.ledger.is_empty() && !busy,
                egui::Button::new("Revert all"),
            )
            .clicked()
        {
            op = Some(LedgerOp::RevertAll);
        }
    });
    if let Some(op) = op.filter(|_| !busy) {
        app.submit(PanelKind::Edit, Command::Ledger(op));
    }
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        let l = ui.label("Save as new model");
        ui.add(
            egui::TextEdit::singleline(&mut app.settings.edit.save_to)
                .desired_width(320.0)
                .hint_text("a new directory"),
        )
        .labelled_by(l.id);
        let can = !busy && !app.settings.edit.save_to.trim().is_empty();
        if ui
            .add_enabled(can, egui::Button::new("Save"))
            .on_hover_text("Writes a new checkpoint directory with the ledger; never overwrites")
            .clicked()
        {
            let out = PathBuf::from(app.settings.edit.save_to.trim());
            app.submit(PanelKind::Edit, Command::SaveModel(out));
        }
    });
    if let Some(p) = &app.results.saved {
        ui.label(RichText::new(format!("Saved: {}", p.display())).weak());
    }
}
