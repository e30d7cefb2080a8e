//! Open a model (directory, `.gguf`, hub id or `demo`) on a device, and read its card.

use eframe::egui::{self, RichText, Ui};
use engram_model::backend::Dtype;

use crate::app::{panel_error, EngramApp};
use crate::settings::PanelKind;

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    ui.heading("Open a model");
    ui.label(
        RichText::new(
            "A local HF directory (config.json + safetensors + tokenizer.json), a .gguf file \
             with a tokenizer.json beside it, a hub id such as openai-community/gpt2, or demo.",
        )
        .weak(),
    );
    ui.add_space(4.0);
    egui::Grid::new("open_form")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            ui.label("Model");
            ui.add(
                egui::TextEdit::singleline(&mut app.form.source)
                    .desired_width(420.0)
                    .hint_text("path, .gguf, hub id or demo"),
            );
            ui.end_row();
            ui.label("Run on");
            ui.horizontal(|ui| {
                egui::ComboBox::from_label("device")
                    .selected_text(app.form.device.clone())
                    .show_ui(ui, |ui| {
                        for d in ["cpu", "cuda:0", "cuda:1", "wgpu", "wgpu:cpu"] {
                            ui.selectable_value(&mut app.form.device, d.to_string(), d);
                        }
                    });
                ui.add_space(8.0);
                egui::ComboBox::from_label("dtype")
                    .selected_text(app.form.dtype.name())
                    .show_ui(ui, |ui| {
                        for d in Dtype::ALL {
                            ui.selectable_value(&mut app.form.dtype, d, d.name());
                        }
                    });
            });
            ui.end_row();
        });
    ui.horizontal(|ui| {
        let loading = app.pending(PanelKind::Model);
        if ui
            .add_enabled(!loading, egui::Button::new("Open"))
            .clicked()
        {
            app.open_model();
        }
        if ui
            .add_enabled(!loading, egui::Button::new("Open the demo model"))
            .clicked()
        {
            app.form.source = "demo".into();
            app.form.device = "cpu".into();
            app.form.dtype = Dtype::F32;
            app.open_model();
        }
        if loading {
            ui.spinner();
            ui.label("loading…");
        }
    });
    panel_error(app, ui, PanelKind::Model);
    ui.add_space(12.0);

    let Some(card) = app.card.clone() else {
        return;
    };
    ui.heading("Model card");
    egui::Grid::new("model_card")
        .num_columns(2)
        .striped(true)
        .spacing([16.0, 4.0])
        .show(ui, |ui| {
            let mut row = |k: &str, v: String| {
                ui.label(RichText::new(k).weak());
                ui.label(v);
                ui.end_row();
            };
            row("source", card.source.clone());
            row("path", card.path.display().to_string());
            row(
                "architecture",
                format!("{} (model_type {})", card.architecture, card.model_type),
            );
            row("parameters", format_count(card.parameters));
            row("layers", card.n_layers.to_string());
            row("d_model", card.d_model.to_string());
            row(
                "d_mlp",
                format!(
                    "{}{}",
                    card.d_mlp,
                    if card.gated_mlp { " (gated)" } else { "" }
                ),
            );
            row(
                "heads",
                format!(
                    "{} ({} key/value), d_head {}",
                    card.n_heads, card.n_kv_heads, card.d_head
                ),
            );
            row("vocabulary", card.vocab_size.to_string());
            row("context", card.n_ctx.to_string());
            row("positions", card.positions.clone());
            row("block", card.block.clone());
            row("hook points", card.hooks.len().to_string());
            row("device", format!("{} ({})", card.device, card.dtype));
            row("load time", format!("{:.2} s", card.load_seconds));
        });
    for w in &card.warnings {
        ui.colored_label(ui.visuals().warn_fg_color, format!("⚠ {w}"));
    }
    ui.add_space(8.0);
    egui::CollapsingHeader::new(format!("Hook points ({})", card.hooks.len()))
        .default_open(false)
        .show(ui, |ui| {
            for h in &card.hooks {
                ui.label(RichText::new(h).monospace());
            }
        });
}

/// 124439808 → "124.4 M".
pub fn format_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
