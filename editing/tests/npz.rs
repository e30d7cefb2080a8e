//! ROME/MEMIT's `.npz` statistics files. The fixtures in `tests/data` were
//! written by numpy 2.4 (`numpy.savez`, as ROME's `layer_stats` saves, and
//! `numpy.savez_compressed`) from the demo model's layer-0 statistics as
//! `engram stats export demo --layer 0` computes them (the whole demo corpus,
//! 15223 key vectors), not by this crate.

use std::path::{Path, PathBuf};

use engram_editing::npz::{read_npz, stats_from_npz, stats_to_npz, NpyArray};
use engram_editing::rome::compute_u::KeyCovariance;
use engram_editing::rome::{rome_edit, EditRequest};
use engram_editing::stats::{collect_stats, StatsKey, StatsOptions};

use super::{demo, facts, hparams, new_target, request, setup};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn key(layer: usize) -> StatsKey {
    StatsKey {
        model_hash: "demo".into(),
        layer,
        corpus_hash: "npz".into(),
        tokens: 0,
    }
}

/// numpy's file holds Engram's Σ k kᵀ (to f32) and count, and a ROME edit
/// with it equals the edit with Engram's own statistics from the same keys.
#[test]
fn numpy_statistics_give_the_same_rome_edit() {
    let lm = demo();
    let settings = engram_model::Settings::under(std::env::temp_dir());
    let (text, _) =
        engram_editing::jobs::setup::corpus_text(Path::new("demo"), None, &settings).expect("text");
    let ours = collect_stats(
        &lm.model,
        &lm.tokenizer,
        &text,
        "demo",
        &StatsOptions::new(0),
        &mut |_, _| true,
    )
    .expect("stats");
    let theirs = stats_from_npz(&data("demo-layer0-mom2.npz"), key(0)).expect("numpy's file");
    assert_eq!(theirs.key.tokens, ours.key.tokens);
    assert_eq!(theirs.dim, ours.dim);
    let scale = ours.sum_outer.iter().fold(0f64, |m, x| m.max(x.abs()));
    let worst = ours
        .sum_outer
        .iter()
        .zip(&theirs.sum_outer)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-6 * scale,
        "Σ k kᵀ differs by {worst:e} of {scale:e}"
    );

    let (_, templates) = setup();
    let f = &facts()[2];
    let req: EditRequest = request(f, &new_target(f, 1));
    let edit = |stats| {
        let cov = KeyCovariance::new(stats).expect("C");
        rome_edit(&lm, &req, &hparams(), &cov, templates, &mut |_, _| true).expect("edit")
    };
    let (a, b) = (edit(&ours), edit(&theirs));
    for (x, y, what) in [(&a.u, &b.u, "u"), (&a.r, &b.r, "r")] {
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = x
            .iter()
            .zip(y.iter())
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "{what} differs by {diff:e} of {scale:e}"
        );
    }
}

/// A compressed (deflated) member reads, with numpy's values.
#[test]
fn a_compressed_npz_reads() {
    let arrays = read_npz(&data("small-compressed-mom2.npz")).expect("read");
    let Some(NpyArray::F32 { shape, data }) = arrays.get("mom2.mom2") else {
        panic!("{arrays:?}");
    };
    assert_eq!(shape, &vec![4, 4]);
    // The values numpy printed when it wrote the file (kᵀk of a seeded 7 x 4 k).
    let want = [
        7.332_758_4,
        1.270_362_6,
        1.907_146_6,
        -0.266_001_34,
        1.270_362_6,
        3.773_470_6,
        0.339_155_67,
        0.500_446_2,
        1.907_146_6,
        0.339_155_67,
        5.216_037_3,
        3.069_366_5,
        -0.266_001_34,
        0.500_446_2,
        3.069_366_5,
        3.505_860_8,
    ];
    assert_eq!(data.as_slice(), want.as_slice());
    assert_eq!(
        arrays.get("mom2.count"),
        Some(&NpyArray::I64 {
            shape: vec![],
            data: vec![7]
        })
    );
}

/// What Engram writes reads back; a damaged file names the member at fault.
#[test]
fn written_files_read_back_and_damage_is_named() {
    let stats = engram_editing::LayerStats {
        key: StatsKey {
            tokens: 3,
            ..key(2)
        },
        dim: 2,
        sum_outer: vec![1.5, -0.25, -0.25, 4.0],
    };
    let bytes = stats_to_npz(&stats);
    let path = std::env::temp_dir().join(format!("engram-npz-{}.npz", std::process::id()));
    std::fs::write(&path, &bytes).expect("write");
    let back = stats_from_npz(&path, key(2)).expect("read");
    assert_eq!((back.dim, back.key.tokens), (2, 3));
    assert_eq!(back.sum_outer, stats.sum_outer);
    // Flip one byte of mom2.mom2's data: its CRC-32 no longer matches.
    let mut bad = bytes.clone();
    let at = bytes
        .windows(b"mom2.mom2.npy".len())
        .position(|w| w == b"mom2.mom2.npy")
        .expect("member")
        + 13
        + 64
        + 4;
    bad[at] ^= 0xFF;
    std::fs::write(&path, &bad).expect("write");
    let err = stats_from_npz(&path, key(2)).expect_err("damaged");
    assert!(err.to_string().contains("CRC-32"), "{err}");
    std::fs::write(&path, b"not a zip").expect("write");
    let err = stats_from_npz(&path, key(2)).expect_err("not zip");
    assert!(err.to_string().contains("not a zip archive"), "{err}");
    let _ = std::fs::remove_file(&path);
}
