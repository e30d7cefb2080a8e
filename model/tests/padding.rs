//! Padded batches equal their rows run alone (right padding, and left padding with shifted positions).

use engram_model::Batch;

use crate::common::{tiny, ARCHS};

#[test]
#[ignore = "needs ../shared"]
fn padded_batches_equal_unbatched_rows() {
    for arch in ARCHS {
        let Some((_, lm)) = tiny(arch) else { return };
        let rows = vec![vec![11u32, 12, 13, 14, 15, 16], vec![21u32, 22, 23]];
        let alone: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| {
                lm.model
                    .logits(&Batch::single(r))
                    .expect("fwd")
                    .into_data()
                    .into_vec()
                    .expect("v")
            })
            .collect();
        let v = lm.model.config.vocab_size;
        for (name, batch) in [
            ("right", Batch::right_padded(&rows, 0)),
            ("left", Batch::left_padded(&rows, 0)),
        ] {
            let out: Vec<f32> = lm
                .model
                .logits(&batch)
                .expect("fwd")
                .into_data()
                .into_vec()
                .expect("v");
            let s = batch.seq_len();
            for (i, row) in rows.iter().enumerate() {
                for (j, keep) in batch.keep[i].iter().enumerate() {
                    if !keep {
                        continue;
                    }
                    let pos = batch.positions[i][j];
                    let got = &out[(i * s + j) * v..][..v];
                    let want = &alone[i][pos * v..][..v];
                    let diff = got
                        .iter()
                        .zip(want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(
                        diff < 1e-4,
                        "{arch} {name}-padded row {i} pos {pos}: {diff}"
                    );
                    assert!(pos < row.len());
                }
            }
        }
    }
}
