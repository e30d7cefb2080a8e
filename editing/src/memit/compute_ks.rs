//! Step 2 (MEMIT Alg. 1, lines 7–9): at layer l, each request's key k_i (the
//! input of the MLP's output projection, `blocks.{l}.mlp.hook_post`, at the
//! subject's last token) averaged within each group of context prefixes and then
//! over groups, as MEMIT's `compute_ks` does; and the residual h_i the model
//! currently writes at the last edited layer (`blocks.{L}.hook_resid_post`) in
//! the plain prompt.

use burn_tensor::backend::Backend;
use engram_model::hooks::BlockSite;
use engram_model::LanguageModel;

use crate::error::Result;
use crate::rome::compute_u::{activations_at, fill_template, subject_rows};
use crate::rome::EditRequest;

/// Rows per forward pass.
const ROWS: usize = 64;

/// The activation at `site` of `layer` for each text's subject, in chunks.
fn at_subjects<B: Backend>(
    lm: &LanguageModel<B>,
    texts: &[((String, usize), &str)],
    layer: usize,
    site: BlockSite,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for part in texts.chunks(ROWS) {
        let mut rows = Vec::with_capacity(part.len());
        for (text, subject) in part {
            rows.extend(subject_rows(lm, std::slice::from_ref(text), subject)?);
        }
        out.extend(activations_at(lm, &rows, layer, site)?);
    }
    Ok(out)
}

/// `[requests][d_mlp]`: keys at `layer`, averaged per template group, then over groups.
pub fn compute_ks<B: Backend>(
    lm: &LanguageModel<B>,
    requests: &[EditRequest],
    groups: &[Vec<String>],
    layer: usize,
) -> Result<Vec<Vec<f32>>> {
    let flat: Vec<&String> = groups.iter().flatten().collect();
    let texts: Vec<((String, usize), &str)> = requests
        .iter()
        .flat_map(|r| {
            flat.iter()
                .map(move |t| (fill_template(t, &r.prompt), r.subject.as_str()))
        })
        .collect();
    let keys = at_subjects(lm, &texts, layer, BlockSite::MlpPost)?;
    let per = flat.len();
    Ok(keys
        .chunks(per.max(1))
        .map(|ks| {
            let d = ks[0].len();
            let mut mean = vec![0f32; d];
            let mut at = 0;
            let used: Vec<&Vec<String>> = groups.iter().filter(|g| !g.is_empty()).collect();
            for g in &used {
                let w = 1.0 / (g.len() * used.len()) as f32;
                for k in &ks[at..at + g.len()] {
                    mean.iter_mut().zip(k).for_each(|(m, x)| *m += w * x);
                }
                at += g.len();
            }
            mean
        })
        .collect())
}

/// `[requests][d_model]`: the residual leaving `layer` at the subject's last
/// token of each plain prompt.
pub fn current_zs<B: Backend>(
    lm: &LanguageModel<B>,
    requests: &[EditRequest],
    layer: usize,
) -> Result<Vec<Vec<f32>>> {
    let texts: Vec<((String, usize), &str)> = requests
        .iter()
        .map(|r| ((r.prompt.clone(), 0), r.subject.as_str()))
        .collect();
    at_subjects(lm, &texts, layer, BlockSite::ResidPost)
}
