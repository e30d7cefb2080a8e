//! Fused element-wise and attention kernels on the ndarray backend, each one pass
//! where burn's ops take several and allocate between them: RMSNorm/LayerNorm, SiLU
//! (and SiLU(gate) · up), rotary embeddings (Su et al., "RoFormer", 2021) and the
//! attention core `softmax(mask(q kᵀ / √d)) v` (Vaswani et al., 2017), which
//! `layers::Attention` runs fused where no hook wants the scores or the pattern, and
//! in three steps (scores, softmax, values) with the same arithmetic where one does.
//!
//! Each entry returns `None` where the fast paths are off or the tensors are not f32
//! ndarray tensors; the caller then runs the burn ops. Numerics follow those ops:
//! the same formulas in f32, with masked scores set to `f32::MIN` before the softmax.
//! Each kernel has an AVX-512 form (16 lanes, masked tails) and an AVX2/FMA form
//! (8 lanes), picked by the instruction set [`super::active`] names.
#![allow(unsafe_code)]

use burn_tensor::backend::Backend;
use burn_tensor::{Bool, Tensor};
use rayon::prelude::*;

use super::{active, bools, tensor, Host, Isa};
use crate::config::{NormKind, RotaryStyle};

/// Split rows over threads only when there are at least this many elements.
const PAR_MIN: usize = 1 << 15;

/// `silu(x) = x / (1 + exp(-x))`, element-wise.
pub fn silu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let isa = active()?;
    let h = Host::new(x)?;
    let mut out = h.data().into_owned();
    par_rows(&mut out, 4096, |chunk| silu_mul_on(isa, chunk, None));
    tensor(out, x.dims())
}

/// `silu(gate) · up`, the gated MLP's hidden activation, in one pass.
///
/// # Shapes
/// - gate, up: `[batch, pos, d_mlp]` → `[batch, pos, d_mlp]`
pub fn silu_mul<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    let isa = active()?;
    if gate.dims() != up.dims() {
        return None;
    }
    let (g, u) = (Host::new(gate)?, Host::new(up)?);
    let mut out = g.data().into_owned();
    let up = u.data();
    let chunk = 4096;
    let work = |(i, c): (usize, &mut [f32])| {
        let start = i * chunk;
        silu_mul_on(isa, c, Some(&up[start..start + c.len()]));
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(chunk).enumerate().for_each(work);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(work);
    }
    tensor(out, gate.dims())
}

/// LayerNorm or RMSNorm over the last axis, times `weight` (+ `bias`).
///
/// # Shapes
/// - x: `[batch, pos, d]`, weight/bias: `[d]` → `[batch, pos, d]`
pub fn norm<B: Backend>(
    x: &Tensor<B, 3>,
    kind: NormKind,
    eps: f64,
    weight: &Tensor<B, 1>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 3>> {
    let isa = active()?;
    let d = x.dims()[2];
    let (xh, wh) = (Host::new(x)?, Host::new(weight)?);
    let bh = match bias {
        Some(b) => Some(Host::new(b)?),
        None => None,
    };
    let w = wh.data();
    let b = bh.as_ref().map(Host::data);
    if d == 0 || w.len() != d || b.as_ref().is_some_and(|b| b.len() != d) {
        return None;
    }
    let mut out = xh.data().into_owned();
    let eps = eps as f32;
    par_rows(&mut out, d, |row| {
        norm_row_on(isa, row, kind, eps, &w, b.as_deref())
    });
    tensor(out, x.dims())
}

/// Rotate the first `rotary_dim` dimensions of each head by position.
///
/// # Shapes
/// - x: `[batch, pos, heads, d_head]`, cos/sin: `[batch, pos, 1, rotary_dim]` → x's shape
pub fn rotary<B: Backend>(
    x: &Tensor<B, 4>,
    style: RotaryStyle,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    active()?;
    let [b, s, h, d] = x.dims();
    let r = cos.dims()[3];
    if cos.dims() != [b, s, 1, r] || sin.dims() != cos.dims() || r > d || !r.is_multiple_of(2) {
        return None;
    }
    let (xh, ch, sh) = (Host::new(x)?, Host::new(cos)?, Host::new(sin)?);
    let (xs, cs, ss) = (xh.data(), ch.data(), sh.data());
    let mut out = vec![0f32; xs.len()];
    let per_pos = h * d;
    let work = |(p, o): (usize, &mut [f32])| {
        let (c, sn) = (&cs[p * r..(p + 1) * r], &ss[p * r..(p + 1) * r]);
        let x = &xs[p * per_pos..(p + 1) * per_pos];
        for head in 0..h {
            let (xr, or) = (
                &x[head * d..(head + 1) * d],
                &mut o[head * d..(head + 1) * d],
            );
            rotate_row(xr, or, c, sn, style);
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(per_pos).enumerate().for_each(work);
    } else {
        out.chunks_mut(per_pos).enumerate().for_each(work);
    }
    tensor(out, [b, s, h, d])
}

fn rotate_row(x: &[f32], out: &mut [f32], c: &[f32], s: &[f32], style: RotaryStyle) {
    let r = c.len();
    let half = r / 2;
    match style {
        RotaryStyle::Half => {
            for j in 0..half {
                out[j] = x[j] * c[j] + (-x[j + half]) * s[j];
            }
            for j in half..r {
                out[j] = x[j] * c[j] + x[j - half] * s[j];
            }
        }
        RotaryStyle::Interleaved => {
            for i in 0..half {
                let (e, o) = (x[2 * i], x[2 * i + 1]);
                out[2 * i] = e * c[2 * i] + (-o) * s[2 * i];
                out[2 * i + 1] = o * c[2 * i + 1] + e * s[2 * i + 1];
            }
        }
    }
    out[r..].copy_from_slice(&x[r..]);
}

/// Shapes of one attention call, checked once.
#[derive(Clone, Copy)]
struct Heads {
    /// The CPU has it (from [`active`]).
    isa: Isa,
    b: usize,
    s: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    dh: usize,
}

impl Heads {
    /// From q `[b, s, nh, dh]` and k/v `[b, t, nkv, dh]`.
    fn new(isa: Isa, q: [usize; 4], k: [usize; 4], v: [usize; 4]) -> Option<Self> {
        let [b, s, nh, dh] = q;
        let [kb, t, nkv, kdh] = k;
        let ok = kb == b && kdh == dh && v == k && nkv > 0 && nh.is_multiple_of(nkv);
        (ok && s > 0 && t > 0 && dh > 0).then_some(Self {
            isa,
            b,
            s,
            t,
            nh,
            nkv,
            dh,
        })
    }

    /// Masked, scaled scores of `task` = (batch, head) into `out` (`[s, t]`);
    /// `kt` is scratch of `dh * t`.
    fn scores(
        &self,
        task: usize,
        q: &[f32],
        k: &[f32],
        mask: &[bool],
        kt: &mut [f32],
        out: &mut [f32],
    ) {
        let Heads {
            s, t, nh, nkv, dh, ..
        } = *self;
        let (bi, head) = (task / nh, task % nh);
        let kv_head = head / (nh / nkv);
        // kᵀ for this head: [d_head, key_pos]
        for j in 0..t {
            let row = &k[((bi * t + j) * nkv + kv_head) * dh..][..dh];
            for (p, &x) in row.iter().enumerate() {
                kt[p * t + j] = x;
            }
        }
        // SAFETY: the CPU has `isa`; q, kt and out cover the strided indices.
        unsafe {
            super::gemm::sgemm_strided(
                self.isa,
                (s, t, dh),
                q.as_ptr().add((bi * s * nh + head) * dh),
                nh * dh,
                kt.as_ptr(),
                t,
                out.as_mut_ptr(),
                t,
            );
        }
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        for (row, m) in out
            .chunks_mut(t)
            .zip(mask[bi * s * t..(bi + 1) * s * t].chunks(t))
        {
            for (x, &off) in row.iter_mut().zip(m) {
                *x = if off { f32::MIN } else { *x * scale };
            }
        }
    }

    /// `z[batch, :, head, :] = pattern · v` for `task` = (batch, head); `pattern` is `[s, t]`.
    ///
    /// # Safety
    /// `z` points at `[b, s, nh, dh]` floats, and no other task writes this head.
    unsafe fn values(&self, task: usize, pattern: &[f32], v: &[f32], z: SyncPtr) {
        let Heads {
            s, t, nh, nkv, dh, ..
        } = *self;
        let (bi, head) = (task / nh, task % nh);
        let kv_head = head / (nh / nkv);
        super::gemm::sgemm_strided(
            self.isa,
            (s, dh, t),
            pattern.as_ptr(),
            t,
            v.as_ptr().add(bi * t * nkv * dh + kv_head * dh),
            nkv * dh,
            z.get().add((bi * s * nh + head) * dh),
            nh * dh,
        );
    }
}

/// The attention core for (grouped-query) heads: `z = softmax(mask(q kᵀ · scale)) v`,
/// with `scale = 1/√d_head` and masked scores set to `f32::MIN`. The same arithmetic as
/// [`attention_scores`], [`softmax`] and [`attention_values`] in turn, without
/// materializing the scores.
///
/// # Shapes
/// - q: `[batch, query_pos, head, d_head]`
/// - k, v: `[batch, key_pos, kv_head, d_head]`
/// - mask: `[batch, 1, query_pos, key_pos]`, true where attention is not allowed
/// - → z: `[batch, query_pos, head, d_head]`
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
) -> Option<Tensor<B, 4>> {
    let hd = Heads::new(active()?, q.dims(), k.dims(), v.dims())?;
    if mask.dims() != [hd.b, 1, hd.s, hd.t] {
        return None;
    }
    let (qh, kh, vh) = (Host::new(q)?, Host::new(k)?, Host::new(v)?);
    let masked = bools(mask)?;
    let (qs, ks, vs) = (qh.data(), kh.data(), vh.data());
    let mut out = vec![0f32; hd.b * hd.s * hd.nh * hd.dh];
    let z = SyncPtr(out.as_mut_ptr());
    (0..hd.b * hd.nh).into_par_iter().for_each_init(
        || (vec![0f32; hd.dh * hd.t], vec![0f32; hd.s * hd.t]),
        |(kt, scores), task| {
            hd.scores(task, &qs, &ks, &masked, kt, scores);
            for row in scores.chunks_mut(hd.t) {
                softmax_on(hd.isa, row);
            }
            // SAFETY: tasks write disjoint heads of `out`.
            unsafe { hd.values(task, scores, &vs, z) }
        },
    );
    tensor(out, [hd.b, hd.s, hd.nh, hd.dh])
}

/// Masked, scaled attention scores, as [`attention`] computes them.
///
/// # Shapes
/// - q, k, mask as in [`attention`] → `[batch, head, query_pos, key_pos]`
pub fn attention_scores<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
) -> Option<Tensor<B, 4>> {
    let hd = Heads::new(active()?, q.dims(), k.dims(), k.dims())?;
    if mask.dims() != [hd.b, 1, hd.s, hd.t] {
        return None;
    }
    let (qh, kh) = (Host::new(q)?, Host::new(k)?);
    let masked = bools(mask)?;
    let (qs, ks) = (qh.data(), kh.data());
    let mut out = vec![0f32; hd.b * hd.nh * hd.s * hd.t];
    out.par_chunks_mut(hd.s * hd.t).enumerate().for_each_init(
        || vec![0f32; hd.dh * hd.t],
        |kt, (task, scores)| hd.scores(task, &qs, &ks, &masked, kt, scores),
    );
    tensor(out, [hd.b, hd.nh, hd.s, hd.t])
}

/// Softmax over the last axis, as [`attention`] computes it.
pub fn softmax<B: Backend>(x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    let isa = active()?;
    let t = x.dims()[3];
    if t == 0 {
        return None;
    }
    let mut out = Host::new(x)?.data().into_owned();
    par_rows(&mut out, t, |row| softmax_on(isa, row));
    tensor(out, x.dims())
}

/// `z = pattern · v` per head, as [`attention`] computes it.
///
/// # Shapes
/// - pattern: `[batch, head, query_pos, key_pos]`, v: `[batch, key_pos, kv_head, d_head]`
/// - → z: `[batch, query_pos, head, d_head]`
pub fn attention_values<B: Backend>(
    pattern: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    let isa = active()?;
    let [b, nh, s, t] = pattern.dims();
    let [.., nkv, dh] = v.dims();
    let hd = Heads::new(isa, [b, s, nh, dh], v.dims(), v.dims())?;
    if hd.t != t || hd.nkv != nkv {
        return None;
    }
    let (ph, vh) = (Host::new(pattern)?, Host::new(v)?);
    let (ps, vs) = (ph.data(), vh.data());
    let mut out = vec![0f32; b * s * nh * dh];
    let z = SyncPtr(out.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each(|task| {
        // SAFETY: tasks write disjoint heads of `out`.
        unsafe { hd.values(task, &ps[task * s * t..(task + 1) * s * t], &vs, z) }
    });
    tensor(out, [b, s, nh, dh])
}

/// A pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only where tasks write disjoint elements of a buffer that outlives them.
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Run `f` over rows of `len` elements, on rayon's threads when the buffer is large.
fn par_rows(data: &mut [f32], len: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() >= PAR_MIN {
        data.par_chunks_mut(len).for_each(f);
    } else {
        data.chunks_mut(len).for_each(f);
    }
}

/// `x / (1 + exp(-x))` in place, times `up` where given, on `isa`.
fn silu_mul_on(isa: Isa, x: &mut [f32], up: Option<&[f32]>) {
    // SAFETY: `isa` came from `active()`, so the CPU has it.
    unsafe {
        match isa {
            Isa::Avx512 => silu_mul_avx512(x, up),
            Isa::Avx2 => silu_mul_avx2(x, up),
        }
    }
}

/// Softmax of one row in place, on `isa`.
fn softmax_on(isa: Isa, row: &mut [f32]) {
    // SAFETY: `isa` came from `active()`, so the CPU has it.
    unsafe {
        match isa {
            Isa::Avx512 => softmax_avx512(row),
            Isa::Avx2 => softmax_avx2(row),
        }
    }
}

/// `x / (1 + exp(-x))` in place, times `up` where given.
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(x: &mut [f32], up: Option<&[f32]>) {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < x.len() {
        let m = tail_mask(x.len() - i);
        let p = x.as_mut_ptr().add(i);
        let v = _mm512_maskz_loadu_ps(m, p);
        let mut y = _mm512_div_ps(
            v,
            _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))),
        );
        if let Some(u) = up {
            y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, u.as_ptr().add(i)));
        }
        _mm512_mask_storeu_ps(p, m, y);
        i += 16;
    }
}

/// Lanes `0..min(n, 16)` set.
#[inline(always)]
fn tail_mask(n: usize) -> u16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// `exp` on 16 lanes: `2^n · p(r)` with `x = n ln2 + r`, |r| ≤ ln2/2, and `p` the
/// degree-7 Taylor polynomial (truncation below 6e-9 relative). Overflow gives inf,
/// underflow 0, NaN stays NaN.
#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let xc = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
        _mm512_set1_ps(89.0),
    );
    let n =
        _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    // ln 2 split so that n · LN2_HI is exact.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_mask_mov_ps(_mm512_scalef_ps(p, n), nan, x)
}

/// Softmax of one row in place: `exp(x - max) / sum`.
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len();
    let p = row.as_mut_ptr();
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < n {
        let m = tail_mask(n - i);
        mx = _mm512_max_ps(
            mx,
            _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), m, p.add(i)),
        );
        i += 16;
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    let mut sum = _mm512_setzero_ps();
    i = 0;
    while i < n {
        let m = tail_mask(n - i);
        let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), max));
        let e = _mm512_maskz_mov_ps(m, e);
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(p.add(i), m, e);
        i += 16;
    }
    let total = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
    i = 0;
    while i < n {
        let m = tail_mask(n - i);
        _mm512_mask_storeu_ps(
            p.add(i),
            m,
            _mm512_div_ps(_mm512_maskz_loadu_ps(m, p.add(i)), total),
        );
        i += 16;
    }
}

/// Lanes `0..min(n, 8)` set, as AVX2's masked loads and stores read them.
#[target_feature(enable = "avx2,fma")]
unsafe fn mask8(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n.min(8) as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// [`exp16`] on 8 lanes: the same reduction and polynomial; `2^n` is built from
/// the exponent bits in two halves (`n` reaches -150 and 128, past one float's range).
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
    let xc = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-104.0)),
        _mm256_set1_ps(89.0),
    );
    let n = _mm256_round_ps::<0x08>(_mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let ni = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    let pow2 = |e: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            e,
            _mm256_set1_epi32(127),
        )))
    };
    let y = _mm256_mul_ps(_mm256_mul_ps(p, pow2(n1)), pow2(n2));
    _mm256_blendv_ps(y, x, nan)
}

/// [`silu_mul_avx512`] on 8 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(x: &mut [f32], up: Option<&[f32]>) {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < x.len() {
        let m = mask8(x.len() - i);
        let p = x.as_mut_ptr().add(i);
        let v = _mm256_maskload_ps(p, m);
        let mut y = _mm256_div_ps(
            v,
            _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))),
        );
        if let Some(u) = up {
            y = _mm256_mul_ps(y, _mm256_maskload_ps(u.as_ptr().add(i), m));
        }
        _mm256_maskstore_ps(p, m, y);
        i += 8;
    }
}

/// [`softmax_avx512`] on 8 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len();
    let p = row.as_mut_ptr();
    let neg = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut mx = neg;
    let mut i = 0;
    while i < n {
        let m = mask8(n - i);
        let v = _mm256_blendv_ps(neg, _mm256_maskload_ps(p.add(i), m), _mm256_castsi256_ps(m));
        mx = _mm256_max_ps(mx, v);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), mx);
    let max = _mm256_set1_ps(lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let mut sum = _mm256_setzero_ps();
    i = 0;
    while i < n {
        let m = mask8(n - i);
        let e = exp8(_mm256_sub_ps(_mm256_maskload_ps(p.add(i), m), max));
        let e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
        sum = _mm256_add_ps(sum, e);
        _mm256_maskstore_ps(p.add(i), m, e);
        i += 8;
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let total = _mm256_set1_ps(lanes.iter().sum());
    i = 0;
    while i < n {
        let m = mask8(n - i);
        _mm256_maskstore_ps(
            p.add(i),
            m,
            _mm256_div_ps(_mm256_maskload_ps(p.add(i), m), total),
        );
        i += 8;
    }
}

/// One row of LayerNorm or RMSNorm in place, compiled for `isa`'s vectors (the sums
/// keep 16 partial sums either way, so both give the same bits).
fn norm_row_on(isa: Isa, x: &mut [f32], kind: NormKind, eps: f32, w: &[f32], b: Option<&[f32]>) {
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(x: &mut [f32], kind: NormKind, eps: f32, w: &[f32], b: Option<&[f32]>) {
        norm_row(x, kind, eps, w, b);
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(x: &mut [f32], kind: NormKind, eps: f32, w: &[f32], b: Option<&[f32]>) {
        norm_row(x, kind, eps, w, b);
    }
    // SAFETY: `isa` came from `active()`, so the CPU has it.
    unsafe {
        match isa {
            Isa::Avx512 => avx512(x, kind, eps, w, b),
            Isa::Avx2 => avx2(x, kind, eps, w, b),
        }
    }
}

#[inline(always)]
fn norm_row(x: &mut [f32], kind: NormKind, eps: f32, w: &[f32], b: Option<&[f32]>) {
    let d = x.len() as f32;
    match kind {
        NormKind::RmsNorm => {
            let ms = sum16(x, |v| v * v) / d;
            let denom = (ms + eps).sqrt();
            for (v, &wi) in x.iter_mut().zip(w) {
                *v = *v / denom * wi;
            }
        }
        NormKind::LayerNorm => {
            let mean = sum16(x, |v| v) / d;
            let var = sum16(x, |v| (v - mean) * (v - mean)) / d;
            let denom = (var + eps).sqrt();
            for (v, &wi) in x.iter_mut().zip(w) {
                *v = (*v - mean) / denom * wi;
            }
        }
    }
    if let Some(b) = b {
        for (v, &bi) in x.iter_mut().zip(b) {
            *v += bi;
        }
    }
}

/// `Σ f(x)` over 16 lanes, so that it vectorizes.
#[inline(always)]
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            acc[l] += f(c[l]);
        }
    }
    let mut total: f32 = acc.iter().sum();
    for &v in chunks.remainder() {
        total += f(v);
    }
    total
}
