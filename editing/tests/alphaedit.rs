//! AlphaEdit's update against its paper's formula, its null-space guarantee,
//! and its reduction to MEMIT's update without the projection.

use engram_editing::alphaedit::{layer_update, null_space, NullSpace};
use engram_editing::memit::update::{layer_update as memit_update, LayerMom2};

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729 + 17) % 1009) as f32 / 1009.0 - 0.5)
        .collect()
}

fn rows(n: usize, width: usize, seed: usize) -> Vec<Vec<f32>> {
    values(n * width, seed)
        .chunks(width)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Δ = Σ_i u_i r_iᵀ as `[dim][d_model]`, in f64.
fn delta(u: &[f32], r: &[f32], n: usize, dim: usize, d_model: usize) -> Vec<f64> {
    let mut out = vec![0f64; dim * d_model];
    for i in 0..n {
        for a in 0..dim {
            for b in 0..d_model {
                out[a * d_model + b] += u[i * dim + a] as f64 * r[i * d_model + b] as f64;
            }
        }
    }
    out
}

/// C = K₀K₀ᵀ / m from `m` preserved keys of width `dim`.
fn preserved(dim: usize, m: usize) -> (Vec<Vec<f32>>, LayerMom2) {
    let k0 = rows(m, dim, 3);
    let mut mom2 = vec![0f64; dim * dim];
    for k in &k0 {
        for i in 0..dim {
            for j in 0..dim {
                mom2[i * dim + j] += k[i] as f64 * k[j] as f64 / m as f64;
            }
        }
    }
    let cov = LayerMom2 {
        layer: 0,
        dim,
        tokens: m as u64,
        mom2,
    };
    (k0, cov)
}

/// Gaussian elimination with partial pivoting: the general solve AlphaEdit's
/// code calls (`torch.linalg.solve`), for the reference.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize, m: usize) -> Vec<f64> {
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| a[x * n + c].abs().total_cmp(&a[y * n + c].abs()))
            .expect("rows");
        for j in 0..n {
            a.swap(c * n + j, p * n + j);
        }
        for j in 0..m {
            b.swap(c * m + j, p * m + j);
        }
        for r in c + 1..n {
            let f = a[r * n + c] / a[c * n + c];
            for j in c..n {
                a[r * n + j] -= f * a[c * n + j];
            }
            for j in 0..m {
                b[r * m + j] -= f * b[c * m + j];
            }
        }
    }
    for c in (0..n).rev() {
        for j in 0..m {
            let s: f64 = (c + 1..n).map(|k| a[c * n + k] * b[k * m + j]).sum();
            b[c * m + j] = (b[c * m + j] - s) / a[c * n + c];
        }
    }
    b
}

/// The paper's update: (P (K Kᵀ + K_p K_pᵀ) + L2·I) Δ = P K Rᵀ, solved as written.
#[test]
fn the_update_is_the_papers_solve_and_spares_the_preserved_keys() {
    let (dim, d_model, n, m) = (24, 6, 3, 10);
    let (k0, cov) = preserved(dim, m);
    let space = null_space(&cov, 1e-9).expect("null space");
    assert_eq!(space.rank, dim - m, "rank-{m} C in {dim} dimensions");
    let keys = rows(n, dim, 5);
    let earlier = rows(4, dim, 7);
    let targets = rows(n, d_model, 11);
    let (l2, share) = (0.5, 0.5);
    let (u, r) = layer_update(&space, l2, &keys, &earlier, &targets, share).expect("update");
    let ours = delta(&u, &r, n, dim, d_model);

    // P = U Uᵀ and A = K Kᵀ + K_p K_pᵀ, dense.
    let q = space.rank;
    let mut p = vec![0f64; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            p[i * dim + j] = (0..q)
                .map(|k| space.basis[i * q + k] * space.basis[j * q + k])
                .sum();
        }
    }
    let mut a = vec![0f64; dim * dim];
    for k in keys.iter().chain(&earlier) {
        for i in 0..dim {
            for j in 0..dim {
                a[i * dim + j] += k[i] as f64 * k[j] as f64;
            }
        }
    }
    let mut lhs = vec![0f64; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            lhs[i * dim + j] = (0..dim)
                .map(|k| p[i * dim + k] * a[k * dim + j])
                .sum::<f64>()
                + if i == j { l2 } else { 0.0 };
        }
    }
    // B = P K Rᵀ, [dim][d_model].
    let mut b = vec![0f64; dim * d_model];
    for (k, t) in keys.iter().zip(&targets) {
        for i in 0..dim {
            let pk: f64 = (0..dim).map(|j| p[i * dim + j] * k[j] as f64).sum();
            for c in 0..d_model {
                b[i * d_model + c] += pk * t[c] as f64 * share;
            }
        }
    }
    let reference = solve(lhs, b, dim, d_model);
    let scale = reference.iter().fold(0f64, |s, x| s.max(x.abs()));
    let diff = ours
        .iter()
        .zip(&reference)
        .fold(0f64, |s, (x, y)| s.max((x - y).abs()));
    assert!(diff < 1e-5 * scale, "max diff {diff:e} of {scale:e}");

    // Each preserved key's output moves by Δᵀk₀, which must vanish (1e-5 of
    // ‖Δ‖ ‖k₀‖: f32 factors).
    let norm = ours.iter().map(|x| x * x).sum::<f64>().sqrt();
    for k in &k0 {
        let kn = k.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        for c in 0..d_model {
            let moved: f64 = (0..dim).map(|i| ours[i * d_model + c] * k[i] as f64).sum();
            assert!(moved.abs() < 1e-5 * norm * kn, "Δᵀk₀ = {moved:e}");
        }
    }
}

/// Without the projection (P = I), without earlier keys and with L2 = λ, the
/// update is MEMIT's with C = I.
#[test]
fn without_the_projection_it_is_memits_update() {
    let (dim, d_model, n) = (16, 5, 4);
    let keys = rows(n, dim, 21);
    let targets = rows(n, d_model, 23);
    let lambda = 0.75;
    let (u, r) = layer_update(
        &NullSpace::identity(0, dim),
        lambda,
        &keys,
        &[],
        &targets,
        1.0 / 3.0,
    )
    .expect("alphaedit");
    let identity = LayerMom2::identity(0, dim);
    let (mu, mr) =
        memit_update(&identity.mom2, dim, lambda, &keys, &targets, 1.0 / 3.0).expect("memit");
    let diff = u
        .iter()
        .zip(&mu)
        .chain(r.iter().zip(&mr))
        .fold(0f32, |s, (a, b)| s.max((a - b).abs()));
    assert!(diff < 1e-6, "{diff:e}");
}

#[test]
fn a_threshold_below_every_eigenvalue_is_refused() {
    let (_, cov) = preserved(8, 20);
    let err = null_space(&cov, 1e-12).expect_err("full-rank C has no null space");
    assert!(
        err.to_string().contains("no eigenvalue of C is below"),
        "{err}"
    );
}

#[test]
fn alphaedit_hparams_are_checked_in_with_their_source() {
    use engram_editing::alphaedit::AlphaEditHparams;
    for (name, layers, l2) in [
        ("gpt2-xl", vec![13, 14, 15, 16, 17], 10.0),
        ("gpt-j-6b", vec![3, 4, 5, 6, 7, 8], 10.0),
        ("llama3-8b", vec![4, 5, 6, 7, 8], 10.0),
        ("demo", vec![0], 0.1),
        ("smollm2-135m", vec![1, 2, 3, 4, 5], 10.0),
    ] {
        let hp = AlphaEditHparams::builtin(name).unwrap_or_else(|| panic!("{name} parses"));
        hp.check().expect("in range");
        assert_eq!(hp.memit.layers, layers, "{name}");
        assert_eq!((hp.nullspace_threshold, hp.l2), (2e-2, l2), "{name}");
        assert!(
            hp.memit.source.contains("AlphaEdit"),
            "{name}: {}",
            hp.memit.source
        );
    }
}
