//! Facts: run a fact set (the demo facts, ROME's known_1000, CounterFact, or a
//! user CSV/JSONL) through the model, see which facts it knows, and send one to
//! the prompt. This is the job that shows progress and Cancel at work.

use std::path::PathBuf;

use eframe::egui::{self, RichText, Ui};
use egui_extras::{Column, TableBuilder};

use crate::app::{need_model, panel_error, EngramApp};
use crate::settings::PanelKind;
use crate::widgets::show_token;

/// The demo model's own fact list, in the repository.
pub fn demo_facts_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../datasets/demo/facts.jsonl"
    ))
}

fn known_1000_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/datasets/known_1000.json"
    ))
}

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    ui.heading("Facts the model knows");
    if app.settings.facts_path.is_empty() {
        app.settings.facts_path = demo_facts_path().display().to_string();
    }
    ui.horizontal(|ui| {
        ui.label("Fact set");
        ui.add(
            egui::TextEdit::singleline(&mut app.settings.facts_path)
                .desired_width(460.0)
                .hint_text("known_1000.json, CounterFact, or CSV/JSONL of subject,prompt,target"),
        );
    });
    ui.horizontal(|ui| {
        if ui.button("Demo facts").clicked() {
            app.settings.facts_path = demo_facts_path().display().to_string();
        }
        let known = known_1000_path();
        if known.is_file() && ui.button("known_1000").clicked() {
            app.settings.facts_path = known.display().to_string();
        }
        ui.add(egui::Slider::new(&mut app.settings.facts_limit, 1..=2000).text("at most"));
        let running = app.pending(PanelKind::Facts);
        if ui
            .add_enabled(!running, egui::Button::new("Check facts"))
            .clicked()
        {
            app.check_facts();
        }
        if running {
            ui.spinner();
        }
    });
    panel_error(app, ui, PanelKind::Facts);
    let Some(report) = app.results.facts.clone() else {
        return;
    };
    let right = report.checked.iter().filter(|c| c.correct).count();
    let n = report.checked.len();
    ui.add_space(6.0);
    ui.label(
        RichText::new(format!(
            "{right} of {n} facts right at top-1 ({:.1}%){}{}",
            100.0 * right as f64 / n.max(1) as f64,
            if report.partial {
                ", stopped early"
            } else {
                ""
            },
            if report.skipped.is_empty() {
                String::new()
            } else {
                format!(", {} records skipped", report.skipped.len())
            }
        ))
        .strong(),
    );
    let mut use_prompt = None;
    let mut locate: Option<engram_datasets::facts::UserFact> = None;
    TableBuilder::new(ui)
        .id_salt("facts_table")
        .striped(true)
        .column(Column::exact(44.0))
        .column(Column::initial(320.0).at_least(120.0).clip(true))
        .column(Column::initial(110.0).clip(true))
        .column(Column::initial(110.0).clip(true))
        .column(Column::exact(70.0))
        .column(Column::exact(70.0))
        .column(Column::remainder().at_least(110.0))
        .header(20.0, |mut h| {
            for t in [
                "known",
                "prompt",
                "target",
                "predicted",
                "p(pred)",
                "p(target)",
                "",
            ] {
                h.col(|ui| {
                    ui.strong(t);
                });
            }
        })
        .body(|body| {
            body.rows(20.0, report.checked.len(), |mut row| {
                let c = &report.checked[row.index()];
                row.col(|ui| {
                    let (mark, color) = if c.correct {
                        ("yes", egui::Color32::from_rgb(80, 180, 100))
                    } else {
                        ("no", ui.visuals().error_fg_color)
                    };
                    ui.label(RichText::new(mark).color(color));
                });
                row.col(|ui| {
                    ui.label(&c.fact.prompt);
                });
                row.col(|ui| {
                    ui.label(RichText::new(&c.fact.target).monospace());
                });
                row.col(|ui| {
                    ui.label(RichText::new(show_token(&c.predicted.text)).monospace());
                });
                row.col(|ui| {
                    ui.label(format!("{:.3}", c.predicted_prob));
                });
                row.col(|ui| {
                    ui.label(format!("{:.3}", c.target_prob));
                });
                row.col(|ui| {
                    if ui
                        .small_button("use")
                        .on_hover_text("Use as the prompt")
                        .clicked()
                    {
                        use_prompt = Some(c.fact.prompt.clone());
                    }
                    if ui
                        .small_button("locate")
                        .on_hover_text("Causal trace of this fact")
                        .clicked()
                    {
                        locate = Some(c.fact.clone());
                    }
                });
            });
        });
    if let Some(f) = locate {
        app.settings.prompt = f.prompt;
        app.settings.trace.subject = f.subject;
        app.settings.trace.target = f.target;
        app.settings.panel = PanelKind::Locate;
        app.run_active();
        return;
    }
    if let Some(p) = use_prompt {
        app.settings.prompt = p;
        app.settings.panel = PanelKind::Playground;
        app.run_active();
    }
}
