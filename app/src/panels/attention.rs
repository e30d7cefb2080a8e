//! Attention patterns (`blocks.{l}.attn.hook_pattern`) for the current prompt:
//! one head large, with query rows and key columns, and every head of the layer
//! as thumbnails to pick from.

use eframe::egui::{self, RichText, Ui, Vec2};

use crate::app::{need_model, panel_error, EngramApp};
use crate::settings::PanelKind;
use crate::widgets::{show_token, Heatmap};

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    ui.horizontal(|ui| {
        ui.heading("Attention patterns");
        if app.pending(PanelKind::Attention) {
            ui.spinner();
        }
    });
    panel_error(app, ui, PanelKind::Attention);
    let Some(att) = app.results.attention.clone() else {
        if !app.pending(PanelKind::Attention) {
            ui.label("Press Enter in the prompt, or Run.");
        }
        return;
    };
    if att.prompt != app.settings.prompt {
        ui.label(RichText::new("The prompt has changed: press Enter or Run.").weak());
    }
    let n_layers = att.pattern.len();
    if n_layers == 0 || att.n_heads == 0 {
        return;
    }
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut app.attention_layer, 0..=n_layers - 1).text("layer"));
        ui.add(egui::Slider::new(&mut app.attention_head, 0..=att.n_heads - 1).text("head"));
    });
    let layer = app.attention_layer.min(n_layers - 1);
    let head = app.attention_head.min(att.n_heads - 1);
    let s = att.tokens.len();
    let labels: Vec<String> = att.tokens.iter().map(|t| show_token(&t.text)).collect();
    let data = &att.pattern[layer][head];
    let value = |q: usize, k: usize| (k <= q).then(|| data[q * s + k]);
    let cell = (420.0 / s as f32).clamp(14.0, 36.0);
    ui.label(
        RichText::new(format!(
            "blocks.{layer}.attn.hook_pattern, head {head}: rows are queries, columns keys"
        ))
        .weak(),
    );
    ui.horizontal_top(|ui| {
        let heat = Heatmap {
            rows: s,
            cols: s,
            value: &value,
            text: None,
            row_labels: labels.clone(),
            col_labels: labels.clone(),
            cell: Vec2::splat(cell),
            vertical_col_labels: true,
            marked_cols: vec![],
            selected: None,
        }
        .show(ui);
        if let Some((q, k)) = heat.hovered {
            let w = data[q * s + k];
            heat.response.on_hover_text_at_pointer(format!(
                "query {q} '{}' -> key {k} '{}': {w:.4}",
                labels[q], labels[k]
            ));
        }
        ui.add_space(16.0);
        ui.vertical(|ui| {
            ui.label(RichText::new(format!("all heads of layer {layer}")).weak());
            let thumb = (12.0 * 8.0 / s as f32).clamp(2.0, 8.0);
            for row in (0..att.n_heads).collect::<Vec<_>>().chunks(4) {
                ui.horizontal(|ui| {
                    for &h in row {
                        thumbnail(app, ui, &att.pattern[layer][h], s, h, head, thumb);
                    }
                });
            }
        });
    });
}

/// One head's pattern, small; a click selects the head.
fn thumbnail(
    app: &mut EngramApp,
    ui: &mut Ui,
    d: &[f32],
    s: usize,
    h: usize,
    selected: usize,
    size: f32,
) {
    let v = |q: usize, k: usize| (k <= q).then(|| d[q * s + k]);
    ui.vertical(|ui| {
        let heat = Heatmap {
            rows: s,
            cols: s,
            value: &v,
            text: None,
            row_labels: vec![],
            col_labels: vec![],
            cell: Vec2::splat(size),
            vertical_col_labels: false,
            marked_cols: vec![],
            selected: None,
        }
        .show(ui);
        let label = if h == selected {
            RichText::new(format!("head {h}")).strong()
        } else {
            RichText::new(format!("head {h}")).weak()
        };
        ui.label(label);
        if heat.response.clicked() {
            app.attention_head = h;
        }
    });
}
