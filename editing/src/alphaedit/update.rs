//! Step 2 (AlphaEdit eq. 15 and its code's solve): per layer, with K the
//! batch's keys, R = (z − h)/(L − i) its share of the residual, K_p the keys of
//! earlier batches still applied and U the null-space basis:
//! Δ = U (Uᵀ(K Kᵀ + K_p K_pᵀ)U + L2·I)⁻¹ Uᵀ K Rᵀ, in f64 by Cholesky. In the
//! ledger it is stored as MEMIT's is, as factors Δ = Σ_i u_i r_iᵀ with
//! u_i = U (…)⁻¹ Uᵀ k_i.

use super::project::NullSpace;
use crate::error::{EditError, Result};
use crate::linalg::{add_outer_lower, cholesky, cholesky_solve_many};

/// The factors of one layer's update: `([n][dim], [n][d_model])`. `earlier`
/// holds K_p's rows (`[m][dim]`).
pub fn layer_update(
    space: &NullSpace,
    l2: f64,
    keys: &[Vec<f32>],
    earlier: &[Vec<f32>],
    targets: &[Vec<f32>],
    share: f64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, d, q) = (keys.len(), space.dim, space.rank);
    if targets.len() != n {
        return Err(EditError::Invalid(format!(
            "{n} keys but {} targets",
            targets.len()
        )));
    }
    if let Some(k) = keys.iter().chain(earlier).find(|k| k.len() != d) {
        return Err(EditError::Invalid(format!(
            "a key has {} entries, the null space lives in {d}",
            k.len()
        )));
    }
    let flat =
        |rows: &[Vec<f32>]| -> Vec<f64> { rows.iter().flatten().map(|&x| f64::from(x)).collect() };
    let uk = space.coords(&flat(keys), n);
    let up = space.coords(&flat(earlier), earlier.len());
    // M = Uᵀ(K Kᵀ + K_p K_pᵀ)U + L2·I, lower triangle.
    let mut m = vec![0f64; q * q];
    for i in 0..q {
        m[i * q + i] = l2;
    }
    add_outer_lower(&mut m, q, &uk, n);
    add_outer_lower(&mut m, q, &up, earlier.len());
    let l = cholesky(&m, q)?;
    drop(m);
    let solved = cholesky_solve_many(&l, q, &uk, n);
    let u: Vec<f32> = space.lift(&solved, n).iter().map(|&x| x as f32).collect();
    crate::memit::update::factors(u, targets, share, "the AlphaEdit update")
}
