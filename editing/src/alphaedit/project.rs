//! Step 1 (AlphaEdit §3.2, eq. 6–8): the null space of the preserved keys.
//! C = E[k kᵀ] over the statistics corpus stands for K₀K₀ᵀ; its eigenvectors
//! with eigenvalue below the threshold span the directions the preserved keys
//! (almost) never take, and an update confined to them leaves K₀'s outputs as
//! they were. AlphaEdit takes an SVD of C; C is symmetric positive
//! semi-definite, so its eigen-decomposition is the same thing.

use crate::error::{EditError, Result};
use crate::linalg::symmetric_eigen;
use crate::memit::update::LayerMom2;

/// An orthonormal basis U (`[dim][q]`, row-major) of the null space; P = U Uᵀ.
#[derive(Debug, Clone, PartialEq)]
pub struct NullSpace {
    pub layer: usize,
    pub dim: usize,
    /// The null space's dimension q.
    pub rank: usize,
    pub basis: Vec<f64>,
    pub threshold: f64,
    /// C's largest eigenvalue, to judge the threshold against.
    pub max_eigenvalue: f64,
}

impl NullSpace {
    /// The whole space (P = I): AlphaEdit without the projection.
    pub fn identity(layer: usize, dim: usize) -> Self {
        let mut basis = vec![0f64; dim * dim];
        for i in 0..dim {
            basis[i * dim + i] = 1.0;
        }
        Self {
            layer,
            dim,
            rank: dim,
            basis,
            threshold: f64::INFINITY,
            max_eigenvalue: f64::NAN,
        }
    }

    /// Uᵀ x for each row of `x` (`[n][dim]` → `[n][q]`).
    pub fn coords(&self, x: &[f64], n: usize) -> Vec<f64> {
        let (d, q) = (self.dim, self.rank);
        let mut out = vec![0f64; n * q];
        for (row, o) in x.chunks(d).take(n).zip(out.chunks_mut(q)) {
            for (i, &xi) in row.iter().enumerate() {
                if xi == 0.0 {
                    continue;
                }
                for (oj, &u) in o.iter_mut().zip(&self.basis[i * q..(i + 1) * q]) {
                    *oj += xi * u;
                }
            }
        }
        out
    }

    /// U y for each row of `y` (`[n][q]` → `[n][dim]`).
    pub fn lift(&self, y: &[f64], n: usize) -> Vec<f64> {
        let (d, q) = (self.dim, self.rank);
        let mut out = vec![0f64; n * d];
        for (row, o) in y.chunks(q).take(n).zip(out.chunks_mut(d)) {
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = row
                    .iter()
                    .zip(&self.basis[i * q..(i + 1) * q])
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
        out
    }
}

/// The null space of `cov`: eigenvectors of C with eigenvalue below `threshold`.
pub fn null_space(cov: &LayerMom2, threshold: f64) -> Result<NullSpace> {
    let d = cov.dim;
    // `LayerMom2` keeps the lower triangle reliable; mirror it.
    let mut c = cov.mom2.clone();
    for i in 0..d {
        for j in 0..i {
            c[j * d + i] = c[i * d + j];
        }
    }
    let (values, vectors) = symmetric_eigen(&c, d)?;
    let rank = values.iter().take_while(|&&v| v < threshold).count();
    if rank == 0 {
        return Err(EditError::Invalid(format!(
            "layer {}: no eigenvalue of C is below the null-space threshold {threshold} \
             (the smallest is {:.3e}); an AlphaEdit update would be zero",
            cov.layer,
            values.first().copied().unwrap_or(f64::NAN)
        )));
    }
    // Ascending values: the first `rank` columns span the null space.
    let mut basis = vec![0f64; d * rank];
    for i in 0..d {
        basis[i * rank..(i + 1) * rank].copy_from_slice(&vectors[i * d..i * d + rank]);
    }
    Ok(NullSpace {
        layer: cov.layer,
        dim: d,
        rank,
        basis,
        threshold,
        max_eigenvalue: values.last().copied().unwrap_or(0.0),
    })
}
