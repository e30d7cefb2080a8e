use std::path::Path;

use engram_datasets::figures::{
    effect_lines, lens_grid, metric_bars, trace_heatmaps, CurvePoint, LensCell, MetricBar,
    TraceCell,
};
use engram_datasets::table::from_frame;
use engram_datasets::{RunParams, RunStore};

use crate::scratch;

fn check_svg(path: &Path, must_contain: &[&str]) {
    let text = std::fs::read_to_string(path).expect("svg");
    assert!(
        text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "not an SVG document"
    );
    for s in must_contain {
        assert!(text.contains(s), "{} lacks {s:?}", path.display());
    }
}

fn check_png(path: &Path) {
    let bytes = std::fs::read(path).expect("png");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(bytes[16..20].try_into().expect("w")),
        u32::from_be_bytes(bytes[20..24].try_into().expect("h")),
    );
    assert!(w >= 200 && h >= 200, "{w}x{h}");
    assert!(bytes.len() > 5_000, "suspiciously small PNG");
}

/// Every figure is drawn from tables read back from the store.
#[test]
fn figures_from_stored_runs_are_valid_svg_and_png() {
    let dir = scratch("figures");
    let store = RunStore::open(dir.join("runs")).expect("store");
    let run = store.create("trace", RunParams::default()).expect("run");
    let tokens = ["The", " Eiff", "el", " Tower", " is", " in"];
    let mut cells = Vec::new();
    for kind in ["hidden", "mlp", "attn"] {
        for (t, tok) in tokens.iter().enumerate() {
            for layer in 0..12 {
                let score = if (1..4).contains(&t) && kind == "mlp" {
                    0.5 - (layer as f64 - 5.0).abs() * 0.05
                } else {
                    0.05 + 0.01 * t as f64
                };
                cells.push(TraceCell {
                    fact: "f0".into(),
                    kind: kind.into(),
                    token_index: t as i64,
                    token: tok.to_string(),
                    is_subject: (1..4).contains(&t),
                    layer,
                    score,
                });
            }
        }
    }
    run.write_rows("trace", &cells).expect("trace");
    let curve: Vec<CurvePoint> = (0..12)
        .flat_map(|l| {
            ["mlp", "attn"].map(|s| CurvePoint {
                series: s.into(),
                layer: l,
                mean: 0.1 + (l as f64) * 0.01,
                ci_low: 0.05,
                ci_high: 0.2 + (l as f64) * 0.01,
            })
        })
        .collect();
    run.write_rows("effects", &curve).expect("effects");
    let lens: Vec<LensCell> = (0..6)
        .flat_map(|l| {
            (0..4).map(move |p| LensCell {
                layer: l,
                position: p,
                input_token: format!("tok{p}"),
                top_token: format!(" Paris{l}"),
                prob: l as f64 / 6.0,
            })
        })
        .collect();
    run.write_rows("lens", &lens).expect("lens");
    let bars = vec![
        MetricBar {
            method: "ROME".into(),
            metric: "ES".into(),
            mean: 0.98,
            ci_low: 0.95,
            ci_high: 1.0,
        },
        MetricBar {
            method: "ROME".into(),
            metric: "PS".into(),
            mean: 0.8,
            ci_low: 0.7,
            ci_high: 0.9,
        },
        MetricBar {
            method: "MEMIT".into(),
            metric: "ES".into(),
            mean: 0.9,
            ci_low: 0.85,
            ci_high: 0.95,
        },
        MetricBar {
            method: "MEMIT".into(),
            metric: "PS".into(),
            mean: 0.85,
            ci_low: 0.8,
            ci_high: 0.9,
        },
    ];
    run.write_rows("metrics", &bars).expect("metrics");
    let info = run.finish().expect("finish");

    let stored_cells: Vec<TraceCell> =
        from_frame(&store.read_table(&info, "trace").expect("t")).expect("rows");
    let stored_curve: Vec<CurvePoint> =
        from_frame(&store.read_table(&info, "effects").expect("t")).expect("rows");
    let stored_lens: Vec<LensCell> =
        from_frame(&store.read_table(&info, "lens").expect("t")).expect("rows");
    let stored_bars: Vec<MetricBar> =
        from_frame(&store.read_table(&info, "metrics").expect("t")).expect("rows");
    for ext in ["svg", "png"] {
        let p = dir.join(format!("trace.{ext}"));
        trace_heatmaps(&stored_cells, &p).expect("trace figure");
        let e = dir.join(format!("effects.{ext}"));
        effect_lines(&stored_curve, "indirect effect on p(answer)", &e).expect("effects figure");
        let l = dir.join(format!("lens.{ext}"));
        lens_grid(&stored_lens, &l).expect("lens figure");
        let b = dir.join(format!("bars.{ext}"));
        metric_bars(&stored_bars, &b).expect("bars figure");
        if ext == "svg" {
            check_svg(
                &p,
                &["Tower*", "Restoring MLP outputs", "single restored layer"],
            );
            check_svg(&e, &["layer", "mlp", "attn"]);
            check_svg(&l, &["Paris5", "tok3"]);
            check_svg(&b, &["ROME", "MEMIT", "ES", "PS"]);
        } else {
            for f in [&p, &e, &l, &b] {
                check_png(f);
            }
        }
    }
    if let Ok(out) = std::env::var("ENGRAM_FIGURE_DIR") {
        for f in ["trace.png", "effects.png", "lens.png", "bars.png"] {
            std::fs::copy(dir.join(f), Path::new(&out).join(f)).expect("copy figure");
        }
    }
    assert!(trace_heatmaps(&stored_cells, &dir.join("x.pdf")).is_err());
}
