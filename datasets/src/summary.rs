//! Means with 95% confidence intervals (Student's t), and LaTeX tables of them.

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A metric summarised over cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub metric: String,
    pub n: i64,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

/// Mean and 95% interval of `values` (NaNs ignored). Where every value lies
/// in [0, 1] (rates, probabilities) the interval is clipped to [0, 1].
pub fn mean_ci(metric: &str, values: &[f64]) -> MetricSummary {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    let mean = if n == 0 {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / n as f64
    };
    let half = if n < 2 {
        0.0
    } else {
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        t975(n - 1) * (var / n as f64).sqrt()
    };
    let (mut low, mut high) = (mean - half, mean + half);
    if n > 0 && v.iter().all(|x| (0.0..=1.0).contains(x)) {
        (low, high) = (low.max(0.0), high.min(1.0));
    }
    MetricSummary {
        metric: metric.into(),
        n: n as i64,
        mean,
        ci_low: low,
        ci_high: high,
    }
}

/// Summaries of every numeric (or boolean) column of a table, except those named in `skip`.
pub fn summarize(df: &DataFrame, skip: &[&str]) -> Result<Vec<MetricSummary>> {
    let mut out = Vec::new();
    for c in df.columns() {
        let name = c.name().as_str();
        if skip.contains(&name) {
            continue;
        }
        let dt = c.dtype();
        if !(dt.is_primitive_numeric() || dt == &DataType::Boolean) {
            continue;
        }
        let f = c.cast(&DataType::Float64)?;
        let values: Vec<f64> = f.f64()?.iter().flatten().collect();
        out.push(mean_ci(name, &values));
    }
    Ok(out)
}

/// A LaTeX `tabular` of metric, n and mean ± half-interval (the interval
/// itself where clipping made it lopsided).
pub fn latex_table(rows: &[MetricSummary], caption: &str) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\textbackslash{}")
            .replace('_', "\\_")
            .replace('%', "\\%")
            .replace('&', "\\&")
    };
    let mut t = String::new();
    t.push_str("\\begin{table}[t]\n\\centering\n\\begin{tabular}{lrr}\n\\toprule\n");
    t.push_str("Metric & $n$ & Mean $\\pm$ 95\\% CI \\\\\n\\midrule\n");
    for r in rows {
        let (below, above) = (r.mean - r.ci_low, r.ci_high - r.mean);
        let spread = if (below - above).abs() <= 1e-12 * (1.0 + below.abs()) {
            format!("$\\pm$ {:.4}", above)
        } else {
            format!("[{:.4}, {:.4}]", r.ci_low, r.ci_high)
        };
        t.push_str(&format!(
            "{} & {} & {:.4} {} \\\\\n",
            esc(&r.metric),
            r.n,
            r.mean,
            spread
        ));
    }
    t.push_str("\\bottomrule\n\\end{tabular}\n");
    t.push_str(&format!("\\caption{{{}}}\n\\end{{table}}\n", esc(caption)));
    t
}
