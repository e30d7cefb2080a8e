//! The GPU-style backend path end to end: a causal trace, a ROME edit and a
//! MEMIT batch on the demo model through `engram --device wgpu` (Vulkan;
//! Mesa's lavapipe in CI) equal the CPU backend's stored tables within the
//! stated tolerances. Compiled with `--features wgpu`; the device is
//! `ENGRAM_TEST_WGPU` (default `wgpu`).
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};
use std::process::Command;

use engram_datasets::polars::prelude::*;

const FACT: [&str; 6] = [
    "--prompt",
    "Quinford Belvale lives in the city of",
    "--subject",
    "Quinford Belvale",
    "--target",
    "Quarnholm",
];

fn device() -> String {
    std::env::var("ENGRAM_TEST_WGPU").unwrap_or_else(|_| "wgpu".into())
}

/// Run `engram ARGS --device DEVICE` with its runs under `runs`; the run's directory.
fn run(args: &[&str], device: &str, runs: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .args(["--device", device])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ENGRAM_RUNS", runs)
        .env("XDG_CACHE_HOME", runs.join("cache"))
        .output()
        .expect("run engram");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "engram {args:?} --device {device}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kind = args[0];
    let dir = runs.join(kind);
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the run store")
        .flatten()
        .map(|e| e.path())
        .collect();
    runs.sort();
    runs.pop().expect("a stored run")
}

/// The largest difference between the numeric columns of one table of two
/// runs; other columns must be equal.
fn max_diff(a: &Path, b: &Path, table: &str) -> f64 {
    let read = |d: &Path| {
        engram_datasets::store::read_parquet(&d.join(format!("{table}.parquet"))).expect("table")
    };
    let (x, y) = (read(a), read(b));
    assert_eq!(x.shape(), y.shape(), "{table}");
    let mut worst = 0f64;
    for (cx, cy) in x.columns().iter().zip(y.columns()) {
        if cx.dtype().is_numeric() {
            let fx = cx.cast(&DataType::Float64).expect("cast");
            let fy = cy.cast(&DataType::Float64).expect("cast");
            for (p, q) in fx
                .f64()
                .expect("f64")
                .iter()
                .zip(fy.f64().expect("f64").iter())
            {
                if let (Some(p), Some(q)) = (p, q) {
                    assert!(p.is_finite() == q.is_finite(), "{table}.{}", cx.name());
                    if p.is_finite() {
                        worst = worst.max((p - q).abs());
                    }
                }
            }
        } else {
            assert_eq!(
                cx.as_materialized_series(),
                cy.as_materialized_series(),
                "{table}.{}",
                cx.name()
            );
        }
    }
    worst
}

fn stores() -> (PathBuf, PathBuf, PathBuf) {
    let tmp = std::env::temp_dir().join(format!(
        "engram-wgpu-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    (tmp.clone(), tmp.join("cpu"), tmp.join("wgpu"))
}

/// A causal trace (10 samples, the noise drawn on the host from the same seed):
/// every restored probability within 1e-4.
#[test]
fn trace_on_wgpu_equals_the_cpu() {
    let (tmp, cpu, gpu) = stores();
    let mut args = vec!["trace", "demo"];
    args.extend(FACT);
    let (a, b) = (run(&args, "cpu", &cpu), run(&args, &device(), &gpu));
    let d = max_diff(&a, &b, "trace");
    eprintln!("trace: max |wgpu - cpu| over the trace table {d:.3e} (allowed 1e-4)");
    assert!(d <= 1e-4, "{d}");
    let _ = std::fs::remove_dir_all(tmp);
}

/// A ROME edit (statistics, v* by Adam, the rank-one update): the v* losses and
/// the probes' probabilities within 1e-3.
#[test]
fn rome_edit_on_wgpu_equals_the_cpu() {
    let (tmp, cpu, gpu) = stores();
    let args = [
        "edit",
        "demo",
        "--prompt",
        "Quinford Belvale lives in the city of",
        "--subject",
        "Quinford Belvale",
        "--target",
        "Belmoth",
    ];
    let (a, b) = (run(&args, "cpu", &cpu), run(&args, &device(), &gpu));
    for table in ["steps", "probes"] {
        let d = max_diff(&a, &b, table);
        eprintln!("ROME: max |wgpu - cpu| over {table} {d:.3e} (allowed 1e-3)");
        assert!(d <= 1e-3, "{table}: {d}");
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// A MEMIT batch of three requests: the requests table (probabilities before
/// and after) within 1e-3.
#[test]
fn memit_batch_on_wgpu_equals_the_cpu() {
    let (tmp, cpu, gpu) = stores();
    let args = ["memit", "demo", "--requests", "docs/data/demo-requests.csv"];
    let (a, b) = (run(&args, "cpu", &cpu), run(&args, &device(), &gpu));
    let d = max_diff(&a, &b, "requests");
    eprintln!("MEMIT: max |wgpu - cpu| over the requests table {d:.3e} (allowed 1e-3)");
    assert!(d <= 1e-3, "{d}");
    let _ = std::fs::remove_dir_all(tmp);
}

/// An adapter that is not there is one clear error naming the device, what
/// wgpu found and what is allowed, without the runtime's panic traces.
#[test]
fn a_missing_wgpu_adapter_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["run", "demo", "--prompt", "x", "--device", "wgpu:7"])
        .output()
        .expect("run engram");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("wgpu device wgpu:7 failed") && err.contains("`wgpu:cpu`"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
