//! Dense symmetric positive-definite solves in f64 (Cholesky), for ROME's
//! u = C⁻¹k* and MEMIT's (λC + K Kᵀ)⁻¹K. ROME and MEMIT invert explicitly or
//! call `torch.linalg.solve`; a Cholesky solve is cheaper and better conditioned.
//! Large factorisations and multi-column solves are split over threads.

use crate::error::{EditError, Result};

/// Σ aᵢbᵢ with four accumulators, so that the compiler can vectorise it.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (mut s0, mut s1, mut s2, mut s3) = (0f64, 0f64, 0f64, 0f64);
    let chunks = n / 4;
    for c in 0..chunks {
        let i = 4 * c;
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for i in 4 * chunks..n {
        s0 += a[i] * b[i];
    }
    (s0 + s1) + (s2 + s3)
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16)
}

/// The lower Cholesky factor L of the row-major `n × n` matrix `a` (a = L Lᵀ).
/// Only the lower triangle of `a` is read. Column by column (left-looking):
/// once L[j][j] is known, the rows below it are independent.
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    if a.len() != n * n {
        return Err(EditError::Invalid(format!(
            "matrix has {} entries, expected {n} x {n}",
            a.len()
        )));
    }
    let mut l = vec![0f64; n * n];
    let workers = if n >= 512 { threads() } else { 1 };
    for j in 0..n {
        let s = a[j * n + j] - dot(&l[j * n..j * n + j], &l[j * n..j * n + j]);
        if s <= 0.0 || !s.is_finite() {
            return Err(EditError::NotPositiveDefinite { row: j, pivot: s });
        }
        let d = s.sqrt();
        l[j * n + j] = d;
        let (done, below) = l.split_at_mut((j + 1) * n);
        let lj = &done[j * n..j * n + j];
        let rows = n - j - 1;
        let fill = |chunk: &mut [f64], first: usize| {
            for (r, row) in chunk.chunks_mut(n).enumerate() {
                let i = first + r;
                row[j] = (a[i * n + j] - dot(&row[..j], lj)) / d;
            }
        };
        if workers > 1 && rows * j > 1 << 16 {
            let per = rows.div_ceil(workers);
            std::thread::scope(|sc| {
                for (c, chunk) in below[..rows * n].chunks_mut(per * n).enumerate() {
                    let fill = &fill;
                    sc.spawn(move || fill(chunk, j + 1 + c * per));
                }
            });
        } else {
            fill(&mut below[..rows * n], j + 1);
        }
    }
    Ok(l)
}

/// Solve (L Lᵀ) x = b given the factor from [`cholesky`].
pub fn cholesky_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0f64; n];
    for i in 0..n {
        y[i] = (b[i] - dot(&l[i * n..i * n + i], &y[..i])) / l[i * n + i];
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    x
}

/// Solve (L Lᵀ) X = B for `m` right-hand sides, each a row of `b`
/// (`[m][n]`, row-major); returns X in the same layout. Columns are split
/// over threads.
pub fn cholesky_solve_many(l: &[f64], n: usize, b: &[f64], m: usize) -> Vec<f64> {
    let mut out = b.to_vec();
    if m == 0 || n == 0 {
        return out;
    }
    // Lᵀ, so that back substitution also reads contiguous rows.
    let mut lt = vec![0f64; n * n];
    for i in 0..n {
        for k in 0..=i {
            lt[k * n + i] = l[i * n + k];
        }
    }
    let solve = |rhs: &mut [f64]| {
        for x in rhs.chunks_mut(n) {
            for i in 0..n {
                x[i] = (x[i] - dot(&l[i * n..i * n + i], &x[..i])) / l[i * n + i];
            }
            for i in (0..n).rev() {
                x[i] = (x[i] - dot(&lt[i * n + i + 1..(i + 1) * n], &x[i + 1..])) / lt[i * n + i];
            }
        }
    };
    let workers = threads().min(m);
    if workers > 1 && n * n * m > 1 << 20 {
        let per = m.div_ceil(workers);
        std::thread::scope(|sc| {
            for chunk in out.chunks_mut(per * n) {
                let solve = &solve;
                sc.spawn(move || solve(chunk));
            }
        });
    } else {
        solve(&mut out);
    }
    out
}

/// `a += Σ_r x_r x_rᵀ` over the rows of `x` (`[m][n]`), lower triangle only
/// (what [`cholesky`] reads), rows of `a` split over threads.
pub fn add_outer_lower(a: &mut [f64], n: usize, x: &[f64], m: usize) {
    let fill = |chunk: &mut [f64], first: usize| {
        for (r, row) in chunk.chunks_mut(n).enumerate() {
            let i = first + r;
            for v in x.chunks(n).take(m) {
                let vi = v[i];
                if vi == 0.0 {
                    continue;
                }
                for (a, &vj) in row[..=i].iter_mut().zip(&v[..=i]) {
                    *a += vi * vj;
                }
            }
        }
    };
    let workers = threads();
    if workers > 1 && n * n * m > 1 << 20 {
        // Row i costs ~i: give each thread an equal share of the triangle.
        let mut bounds = vec![0usize];
        let total = n * (n + 1) / 2;
        let mut acc = 0usize;
        for i in 0..n {
            acc += i + 1;
            if acc * workers >= total * bounds.len() && bounds.len() < workers {
                bounds.push(i + 1);
            }
        }
        bounds.push(n);
        bounds.dedup();
        std::thread::scope(|sc| {
            let mut rest: &mut [f64] = a;
            for w in bounds.windows(2) {
                let (chunk, tail) = rest.split_at_mut((w[1] - w[0]) * n);
                rest = tail;
                let fill = &fill;
                let first = w[0];
                sc.spawn(move || fill(chunk, first));
            }
        });
    } else {
        fill(a, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        let mut a = vec![0f64; n * n];
        let x: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7919) % 97) as f64 / 97.0 - 0.5)
            .collect();
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| x[i * n + k] * x[j * n + k]).sum::<f64>();
            }
            a[i * n + i] += 1.0;
        }
        a
    }

    #[test]
    fn solves_match_the_matrix() {
        for n in [3, 40, 600] {
            let a = spd(n);
            let l = cholesky(&a, n).expect("spd");
            let m = 3;
            let b: Vec<f64> = (0..n * m).map(|i| (i % 11) as f64 - 5.0).collect();
            let x = cholesky_solve_many(&l, n, &b, m);
            for r in 0..m {
                let one = cholesky_solve(&l, n, &b[r * n..(r + 1) * n]);
                for i in 0..n {
                    let ax: f64 = (0..n).map(|k| a[i * n + k] * x[r * n + k]).sum();
                    assert!(
                        (ax - b[r * n + i]).abs() < 1e-8,
                        "n {n}: {ax} vs {}",
                        b[r * n + i]
                    );
                    assert!((one[i] - x[r * n + i]).abs() < 1e-10);
                }
            }
        }
    }

    #[test]
    fn outer_products_fill_the_lower_triangle() {
        let n = 700;
        let m = 5;
        let x: Vec<f64> = (0..n * m).map(|i| ((i * 31) % 13) as f64 - 6.0).collect();
        let mut a = vec![0f64; n * n];
        add_outer_lower(&mut a, n, &x, m);
        for (i, j) in [(0, 0), (699, 0), (350, 349), (699, 699), (10, 3)] {
            let want: f64 = (0..m).map(|r| x[r * n + i] * x[r * n + j]).sum();
            assert_eq!(a[i * n + j], want);
        }
        assert_eq!(a[3 * n + 10], 0.0, "the upper triangle is left alone");
    }
}
