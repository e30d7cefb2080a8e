//! Small widgets shared by the panels: token chips, a colour scale and a
//! heatmap drawn with egui's painter.

use eframe::egui::{
    self, epaint::TextShape, Align2, Color32, CornerRadius, FontId, Pos2, Rect, Sense, Stroke,
    StrokeKind, Ui, Vec2,
};

use crate::session::Token;

/// A token as it reads on screen: spaces shown as `·`, control characters escaped.
pub fn show_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' => out.push('·'),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        out.push_str("<empty>");
    }
    out
}

/// Cut a label to `max` characters, marking the cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// The prompt's tokens as a row of chips; hovering shows the id.
pub fn token_chips(ui: &mut Ui, tokens: &[Token], highlight: &[usize]) {
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = Vec2::new(4.0, 4.0);
        for (i, t) in tokens.iter().enumerate() {
            let strong = highlight.contains(&i);
            let fill = if strong {
                ui.visuals().selection.bg_fill
            } else {
                ui.visuals().faint_bg_color
            };
            egui::Frame::new()
                .fill(fill)
                .stroke(ui.visuals().widgets.noninteractive.bg_stroke)
                .corner_radius(CornerRadius::same(4))
                .inner_margin(egui::Margin::symmetric(6, 2))
                .show(ui, |ui| {
                    ui.label(egui::RichText::new(show_token(&t.text)).monospace())
                        .on_hover_text(format!("position {i}, id {}", t.id));
                });
        }
    });
}

/// Viridis, sampled at five stops and interpolated; `v` in 0..=1.
pub fn viridis(v: f32) -> Color32 {
    const STOPS: [(f32, f32, f32); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = v * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let t = x - i as f32;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f32, q: f32| (p + (q - p) * t).round() as u8;
    Color32::from_rgb(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Black or white, whichever reads better on `bg`.
pub fn text_on(bg: Color32) -> Color32 {
    let l = 0.299 * bg.r() as f32 + 0.587 * bg.g() as f32 + 0.114 * bg.b() as f32;
    if l > 140.0 {
        Color32::BLACK
    } else {
        Color32::WHITE
    }
}

/// A grid of coloured cells with row and column labels.
pub struct Heatmap<'a> {
    pub rows: usize,
    pub cols: usize,
    /// Colour value in 0..=1 of cell (row, col); `None` leaves the cell blank.
    pub value: &'a dyn Fn(usize, usize) -> Option<f32>,
    /// Text written inside a cell.
    pub text: Option<&'a dyn Fn(usize, usize) -> String>,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    pub cell: Vec2,
    /// Column labels drawn vertically (narrow cells).
    pub vertical_col_labels: bool,
    /// Columns whose labels are marked (subject tokens).
    pub marked_cols: Vec<usize>,
    pub selected: Option<(usize, usize)>,
}

/// Where the pointer is, and what was clicked.
pub struct HeatmapResponse {
    pub response: egui::Response,
    pub hovered: Option<(usize, usize)>,
    pub clicked: Option<(usize, usize)>,
}

impl Heatmap<'_> {
    pub fn show(self, ui: &mut Ui) -> HeatmapResponse {
        let font = FontId::proportional(12.0);
        let mono = FontId::monospace(11.0);
        let text_color = ui.visuals().text_color();
        let weak = ui.visuals().weak_text_color();
        let row_w = if self.row_labels.is_empty() {
            0.0
        } else {
            self.row_labels
                .iter()
                .map(|l| {
                    ui.fonts_mut(|f| f.layout_no_wrap(l.clone(), font.clone(), text_color))
                        .size()
                        .x
                })
                .fold(0.0f32, f32::max)
                + 8.0
        };
        let col_h = if self.col_labels.is_empty() {
            2.0
        } else if self.vertical_col_labels {
            self.col_labels
                .iter()
                .map(|l| {
                    ui.fonts_mut(|f| f.layout_no_wrap(l.clone(), mono.clone(), text_color))
                        .size()
                        .x
                })
                .fold(0.0f32, f32::max)
                + 8.0
        } else {
            18.0
        };
        let grid = Vec2::new(
            self.cols as f32 * self.cell.x,
            self.rows as f32 * self.cell.y,
        );
        let size = Vec2::new(row_w + grid.x, grid.y + col_h);
        let (rect, response) = ui.allocate_exact_size(size, Sense::click());
        let painter = ui.painter_at(rect);
        let origin = Pos2::new(rect.min.x + row_w, rect.min.y);
        let cell_rect = |r: usize, c: usize| {
            Rect::from_min_size(
                origin + Vec2::new(c as f32 * self.cell.x, r as f32 * self.cell.y),
                self.cell,
            )
        };
        let bg = ui.visuals().extreme_bg_color;
        for r in 0..self.rows {
            for c in 0..self.cols {
                let cr = cell_rect(r, c).shrink(0.5);
                match (self.value)(r, c) {
                    Some(v) => {
                        let fill = viridis(v);
                        painter.rect_filled(cr, CornerRadius::same(2), fill);
                        if let Some(text) = self.text {
                            let label = text(r, c);
                            let max_chars = ((self.cell.x - 4.0) / 6.5).max(1.0) as usize;
                            painter.text(
                                cr.center(),
                                Align2::CENTER_CENTER,
                                clip(&label, max_chars),
                                mono.clone(),
                                text_on(fill),
                            );
                        }
                    }
                    None => {
                        painter.rect_filled(cr, CornerRadius::same(2), bg);
                    }
                }
            }
        }
        for (r, label) in self.row_labels.iter().enumerate() {
            let y = origin.y + (r as f32 + 0.5) * self.cell.y;
            painter.text(
                Pos2::new(origin.x - 6.0, y),
                Align2::RIGHT_CENTER,
                label,
                font.clone(),
                weak,
            );
        }
        let label_top = origin.y + grid.y + 4.0;
        for (c, label) in self.col_labels.iter().enumerate() {
            let x = origin.x + (c as f32 + 0.5) * self.cell.x;
            let marked = self.marked_cols.contains(&c);
            let color = if marked { text_color } else { weak };
            if self.vertical_col_labels {
                let galley = ui.fonts_mut(|f| f.layout_no_wrap(label.clone(), mono.clone(), color));
                let h = galley.size().y;
                let shape = TextShape::new(Pos2::new(x - h / 2.0, label_top), galley, color)
                    .with_angle(std::f32::consts::FRAC_PI_2);
                painter.add(shape);
            } else {
                // Sparse labels (layer numbers every few cells) may spill over narrow cells.
                let max_chars = ((self.cell.x.max(28.0) - 2.0) / 6.5).max(1.0) as usize;
                painter.text(
                    Pos2::new(x, label_top),
                    Align2::CENTER_TOP,
                    clip(label, max_chars),
                    mono.clone(),
                    color,
                );
            }
            if marked {
                let y = origin.y + grid.y + 1.5;
                painter.line_segment(
                    [
                        Pos2::new(x - self.cell.x / 2.0 + 2.0, y),
                        Pos2::new(x + self.cell.x / 2.0 - 2.0, y),
                    ],
                    Stroke::new(2.0, ui.visuals().selection.stroke.color),
                );
            }
        }
        if let Some((r, c)) = self.selected {
            if r < self.rows && c < self.cols {
                painter.rect_stroke(
                    cell_rect(r, c),
                    CornerRadius::same(2),
                    Stroke::new(2.0, text_color),
                    StrokeKind::Inside,
                );
            }
        }
        let at = |pos: Option<Pos2>| {
            let p = pos?;
            let rel = p - origin;
            if rel.x < 0.0 || rel.y < 0.0 {
                return None;
            }
            let (c, r) = (
                (rel.x / self.cell.x) as usize,
                (rel.y / self.cell.y) as usize,
            );
            (r < self.rows && c < self.cols).then_some((r, c))
        };
        let hovered = at(response.hover_pos());
        if let Some((r, c)) = hovered {
            painter.rect_stroke(
                cell_rect(r, c),
                CornerRadius::same(2),
                Stroke::new(1.5, weak),
                StrokeKind::Inside,
            );
        }
        let clicked = if response.clicked() {
            at(response.interact_pointer_pos())
        } else {
            None
        };
        HeatmapResponse {
            response,
            hovered,
            clicked,
        }
    }
}

/// A horizontal bar for a probability in a table cell.
pub fn prob_bar(ui: &mut Ui, p: f32) {
    let width = 120.0;
    let (rect, _) = ui.allocate_exact_size(Vec2::new(width, 14.0), Sense::hover());
    let painter = ui.painter();
    painter.rect_filled(rect, CornerRadius::same(2), ui.visuals().extreme_bg_color);
    let filled = Rect::from_min_size(
        rect.min,
        Vec2::new(width * p.clamp(0.0, 1.0), rect.height()),
    );
    painter.rect_filled(filled, CornerRadius::same(2), viridis(0.35 + 0.65 * p));
}
