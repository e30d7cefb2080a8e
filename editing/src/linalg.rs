//! Dense symmetric positive-definite solves in f64 (Cholesky), for u = C⁻¹k*.
//! ROME inverts C explicitly; a solve is cheaper and better conditioned.

use crate::error::{EditError, Result};

/// The lower Cholesky factor L of the row-major `n × n` matrix `a` (a = L Lᵀ).
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    if a.len() != n * n {
        return Err(EditError::Invalid(format!(
            "matrix has {} entries, expected {n} x {n}",
            a.len()
        )));
    }
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            let dot: f64 = ri.iter().zip(rj).map(|(x, y)| x * y).sum();
            let s = a[i * n + j] - dot;
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return Err(EditError::NotPositiveDefinite { row: i, pivot: s });
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Solve (L Lᵀ) x = b given the factor from [`cholesky`].
pub fn cholesky_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0f64; n];
    for i in 0..n {
        let dot: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (b[i] - dot) / l[i * n + i];
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        let dot: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - dot) / l[i * n + i];
    }
    x
}
