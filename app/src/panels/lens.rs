//! The logit lens (nostalgebraist 2020): every layer's residual stream decoded
//! through the final norm and unembedding, as a layer × position grid of the
//! top token and its probability. Hover a cell for its top-k.

use eframe::egui::{self, RichText, Ui, Vec2};

use crate::app::{need_model, panel_error, EngramApp};
use crate::session::LensGrid;
use crate::settings::{LensSiteChoice, PanelKind};
use crate::widgets::{show_token, Heatmap};

pub fn show(app: &mut EngramApp, ui: &mut Ui) {
    if need_model(app, ui) {
        return;
    }
    ui.horizontal(|ui| {
        ui.heading("Logit lens");
        ui.add_space(12.0);
        let before = app.settings.lens_site;
        let parallel = app
            .card
            .as_ref()
            .is_some_and(|c| c.block.starts_with("parallel"));
        ui.selectable_value(
            &mut app.settings.lens_site,
            LensSiteChoice::Pre,
            "resid_pre",
        );
        ui.add_enabled_ui(!parallel, |ui| {
            ui.selectable_value(
                &mut app.settings.lens_site,
                LensSiteChoice::Mid,
                "resid_mid",
            )
            .on_disabled_hover_text("parallel blocks have no resid_mid");
        });
        ui.selectable_value(
            &mut app.settings.lens_site,
            LensSiteChoice::Post,
            "resid_post",
        );
        if app.settings.lens_site != before {
            app.request_auto_run();
        }
        if app.pending(PanelKind::Lens) {
            ui.spinner();
        }
    });
    panel_error(app, ui, PanelKind::Lens);
    let Some(grid) = app.results.lens.clone() else {
        if !app.pending(PanelKind::Lens) {
            ui.label("Press Enter in the prompt, or Run.");
        }
        return;
    };
    if grid.prompt != app.settings.prompt {
        ui.label(RichText::new("The prompt has changed: press Enter or Run.").weak());
    }
    ui.label(summary(&grid));
    ui.add_space(6.0);

    let n_layers = grid.cells.len();
    let n_pos = grid.tokens.len();
    let value = |r: usize, c: usize| grid.cells[r][c].first().map(|(_, p)| *p);
    let text = |r: usize, c: usize| {
        grid.cells[r][c]
            .first()
            .map(|(t, _)| show_token(&t.text))
            .unwrap_or_default()
    };
    let prefix = match grid.site {
        engram_analysis::lens::LensSite::Pre => "pre",
        engram_analysis::lens::LensSite::Mid => "mid",
        engram_analysis::lens::LensSite::Post => "post",
    };
    let heat = Heatmap {
        rows: n_layers,
        cols: n_pos,
        value: &value,
        text: Some(&text),
        row_labels: (0..n_layers).map(|l| format!("{prefix} {l}")).collect(),
        col_labels: grid.tokens.iter().map(|t| show_token(&t.text)).collect(),
        cell: Vec2::new(78.0, 22.0),
        vertical_col_labels: false,
        marked_cols: vec![],
        selected: app.lens_selected,
    }
    .show(ui);
    if let Some((r, c)) = heat.hovered {
        heat.response
            .on_hover_ui_at_pointer(|ui| cell_details(ui, &grid, r, c));
    }
    if let Some(cell) = heat.clicked {
        app.lens_selected = Some(cell);
    }
    if let Some((r, c)) = app.lens_selected {
        if r < n_layers && c < n_pos {
            ui.add_space(8.0);
            egui::Frame::group(ui.style()).show(ui, |ui| cell_details(ui, &grid, r, c));
        }
    }
}

/// The sentence under the heading: where the final answer first appears.
pub fn summary(grid: &LensGrid) -> String {
    let tok = show_token(&grid.final_token.text);
    match grid.first_top1_layer {
        Some(l) => format!("The model's prediction '{tok}' is top-1 from layer {l} on."),
        None => format!("The model's prediction '{tok}' is never top-1 in the lens."),
    }
}

fn cell_details(ui: &mut Ui, grid: &LensGrid, layer: usize, pos: usize) {
    let input = grid
        .tokens
        .get(pos)
        .map(|t| show_token(&t.text))
        .unwrap_or_default();
    ui.strong(format!("layer {layer}, position {pos} ('{input}')"));
    egui::Grid::new(("lens_cell", layer, pos))
        .num_columns(2)
        .show(ui, |ui| {
            for (t, p) in &grid.cells[layer][pos] {
                ui.label(RichText::new(show_token(&t.text)).monospace());
                ui.label(format!("{p:.4}"));
                ui.end_row();
            }
        });
}
