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

/// Eigenvalues (ascending) and eigenvectors of the symmetric row-major
/// `n × n` matrix `a`: Householder reduction to tridiagonal form, then the QL
/// algorithm with implicit shifts (Wilkinson & Reinsch, Handbook for Automatic
/// Computation II, tred2/tql2). Vectors come back row-major with eigenvector
/// `j` in column `j`. O(n³); for AlphaEdit's null-space projector.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if a.len() != n * n {
        return Err(EditError::Invalid(format!(
            "matrix has {} entries, expected {n} x {n}",
            a.len()
        )));
    }
    if let Some(bad) = a.iter().find(|x| !x.is_finite()) {
        return Err(EditError::Invalid(format!(
            "the matrix holds {bad}; eigenvectors need finite entries"
        )));
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut v = a.to_vec();
    let (mut d, mut e) = (vec![0f64; n], vec![0f64; n]);
    tridiagonalize(&mut v, &mut d, &mut e, n);
    tridiagonal_ql(&mut v, &mut d, &mut e, n)?;
    // Ascending order, vectors moved with their values.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values: Vec<f64> = order.iter().map(|&i| d[i]).collect();
    let mut vectors = vec![0f64; n * n];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + new] = v[k * n + old];
        }
    }
    Ok((values, vectors))
}

/// Householder reduction of the symmetric `v` (overwritten by the
/// orthogonal transform) to tridiagonal form: diagonal `d`, subdiagonal `e`.
fn tridiagonalize(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| i * n + j;
    d.copy_from_slice(&v[at(n - 1, 0)..at(n - 1, 0) + n]);
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for x in d[..i].iter_mut() {
                *x /= scale;
                h += *x * *x;
            }
            let f = d[i - 1];
            let g = if f > 0.0 { -h.sqrt() } else { h.sqrt() };
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].fill(0.0);
            for j in 0..i {
                let f = d[j];
                v[at(j, i)] = f;
                let mut g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[at(k, i + 1)] * v[at(k, j)]).sum();
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// The QL algorithm with implicit shifts on the tridiagonal (`d`, `e`),
/// rotating the columns of `v` along.
fn tridiagonal_ql(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) -> Result<()> {
    let at = |i: usize, j: usize| i * n + j;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let (mut f, mut tst1) = (0f64, 0f64);
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > 60 {
                    return Err(EditError::Invalid(
                        "the eigenvalue iteration did not converge".into(),
                    ));
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in d[l + 2..n].iter_mut() {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1f64, 1f64, 1f64);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0f64, 0f64);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        let h = v[at(k, i + 1)];
                        v[at(k, i + 1)] = s * v[at(k, i)] + c * h;
                        v[at(k, i)] = c * v[at(k, i)] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
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

    #[test]
    fn eigenvectors_diagonalise_the_matrix() {
        // A rank-deficient PSD matrix (zero eigenvalues, as in a null space)
        // and a full one; A V = V Λ and Vᵀ V = I to 1e-9 of the scale.
        for (n, rank) in [(1, 1), (5, 2), (64, 64), (120, 30)] {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (n * 31 + rank) as u64;
            let x: Vec<f64> = (0..n * rank)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect();
            let mut a = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..rank).map(|k| x[i * rank + k] * x[j * rank + k]).sum();
                }
            }
            let (vals, vecs) = symmetric_eigen(&a, n).expect("eigen");
            assert!(vals.windows(2).all(|w| w[0] <= w[1]), "ascending");
            let scale = vals.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
            for j in 0..n {
                for i in 0..n {
                    let av: f64 = (0..n).map(|k| a[i * n + k] * vecs[k * n + j]).sum();
                    assert!((av - vals[j] * vecs[i * n + j]).abs() < 1e-9 * scale);
                    let dot: f64 = (0..n).map(|k| vecs[k * n + i] * vecs[k * n + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-9, "orthonormal {i} {j}: {dot}");
                }
            }
            let zeros = vals.iter().filter(|v| v.abs() < 1e-9 * scale).count();
            assert_eq!(
                zeros,
                n - rank.min(n),
                "null space of {n} x {n} rank {rank}"
            );
        }
    }
}
